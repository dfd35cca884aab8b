#include "data/dataset.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "data/corpus.h"
#include "data/hash.h"

namespace resona::data {

using nlohmann::json;

std::string shard_file_name(size_t shard) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "shard_%05zu.bin", shard);
  return buf;
}

void write_dataset_index(const std::string& dir, const DatasetIndex& x) {
  json shards = json::array();
  for (const ShardEntry& s : x.shards) {
    shards.push_back({{"file", s.file},
                      {"num_tokens", s.num_tokens},
                      {"num_docs", s.num_docs},
                      {"checksum", hex64(s.checksum)},
                      {"source_hash", hex64(s.source_hash)}});
  }
  json j = {{"format", kDatasetFormat},
            {"version", kDatasetIndexVersion},
            {"tokenizer",
             {{"path", x.tokenizer_path},
              {"hash", hex64(x.tokenizer_hash)},
              {"vocab_size", x.vocab_size},
              {"bos_id", x.bos_id},
              {"eos_id", x.eos_id},
              {"pad_id", x.pad_id}}},
            {"dtype", token_dtype_name(x.dtype)},
            {"source",
             {{"file", x.source_file},
              {"bytes", x.source_bytes},
              {"documents", x.source_documents},
              {"settings", x.source_settings}}},
            {"num_tokens", x.num_tokens},
            {"num_docs", x.num_docs},
            {"dropped_docs", x.dropped_docs},
            {"shards", shards}};
  const std::string path = dir + "/" + kDatasetIndexFile;
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    RESONA_CHECK(f.good()) << tmp << ": cannot create";
    f << j.dump(1) << "\n";
    f.flush();
    RESONA_CHECK(f.good()) << tmp << ": write failed";
  }
  RESONA_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0)
      << "renaming " << tmp << " to " << path << " failed";
}

namespace {

// Reads key `k` of object `o` as T, with an error naming the file and key path.
template <class T>
T field(const json& o, const char* k, const std::string& file, const std::string& where) {
  auto it = o.find(k);
  RESONA_CHECK(it != o.end()) << file << ": corrupted dataset index: missing key " << where << k;
  try {
    return it->get<T>();
  } catch (const json::exception& e) {
    RESONA_FAIL() << file << ": corrupted dataset index: key " << where << k
                  << " has the wrong type (" << it->type_name() << ")";
  }
  return T();
}

}  // namespace

DatasetIndex read_dataset_index(const std::string& dir) {
  const std::string file = dir + "/" + kDatasetIndexFile;
  std::shared_ptr<const std::string> text;
  try {
    text = read_file_bytes(file);
  } catch (const Error& e) {
    RESONA_FAIL() << file
                  << ": no dataset index (run `resona prepare-data`, or it was interrupted): "
                  << e.what();
  }
  json j;
  try {
    j = json::parse(*text);
  } catch (const json::exception& e) {
    RESONA_FAIL() << file
                  << ": truncated or corrupted dataset index (not valid JSON): " << e.what();
  }
  RESONA_CHECK(j.is_object()) << file << ": corrupted dataset index: not a JSON object";
  RESONA_CHECK(field<std::string>(j, "format", file, "") == kDatasetFormat)
      << file << ": not a token dataset index (format is not \"" << kDatasetFormat << "\")";
  const int version = field<int>(j, "version", file, "");
  RESONA_CHECK(version == kDatasetIndexVersion) << file << ": dataset index version " << version
                                                << ", this build reads " << kDatasetIndexVersion;

  DatasetIndex x;
  RESONA_CHECK(j.contains("tokenizer") && j["tokenizer"].is_object())
      << file << ": corrupted dataset index: missing object tokenizer";
  const json& t = j["tokenizer"];
  x.tokenizer_path = field<std::string>(t, "path", file, "tokenizer.");
  x.tokenizer_hash =
      parse_hex64(field<std::string>(t, "hash", file, "tokenizer."), file + ": tokenizer.hash");
  x.vocab_size = field<int>(t, "vocab_size", file, "tokenizer.");
  x.bos_id = field<int>(t, "bos_id", file, "tokenizer.");
  x.eos_id = field<int>(t, "eos_id", file, "tokenizer.");
  x.pad_id = field<int>(t, "pad_id", file, "tokenizer.");
  const std::string dtype = field<std::string>(j, "dtype", file, "");
  RESONA_CHECK(dtype == "uint16" || dtype == "uint32")
      << file << ": corrupted dataset index: dtype '" << dtype << "'";
  x.dtype = dtype == "uint16" ? TokenDType::kUint16 : TokenDType::kUint32;
  RESONA_CHECK(j.contains("source") && j["source"].is_object())
      << file << ": corrupted dataset index: missing object source";
  const json& s = j["source"];
  x.source_file = field<std::string>(s, "file", file, "source.");
  x.source_bytes = field<uint64_t>(s, "bytes", file, "source.");
  x.source_documents = field<uint64_t>(s, "documents", file, "source.");
  x.source_settings = field<std::string>(s, "settings", file, "source.");
  x.num_tokens = field<uint64_t>(j, "num_tokens", file, "");
  x.num_docs = field<uint64_t>(j, "num_docs", file, "");
  x.dropped_docs = field<uint64_t>(j, "dropped_docs", file, "");
  RESONA_CHECK(j.contains("shards") && j["shards"].is_array())
      << file << ": corrupted dataset index: missing array shards";
  uint64_t tokens = 0, docs = 0;
  for (size_t i = 0; i < j["shards"].size(); ++i) {
    const json& e = j["shards"][i];
    const std::string where = "shards[" + std::to_string(i) + "].";
    RESONA_CHECK(e.is_object()) << file << ": corrupted dataset index: " << where
                                << " is not an object";
    ShardEntry se;
    se.file = field<std::string>(e, "file", file, where);
    RESONA_CHECK(!se.file.empty() && se.file.find('/') == std::string::npos)
        << file << ": corrupted dataset index: " << where << "file '" << se.file << "'";
    se.num_tokens = field<uint64_t>(e, "num_tokens", file, where);
    se.num_docs = field<uint64_t>(e, "num_docs", file, where);
    se.checksum = parse_hex64(field<std::string>(e, "checksum", file, where),
                              file + ": " + where + "checksum");
    se.source_hash = parse_hex64(field<std::string>(e, "source_hash", file, where),
                                 file + ": " + where + "source_hash");
    tokens += se.num_tokens;
    docs += se.num_docs;
    x.shards.push_back(se);
  }
  RESONA_CHECK(tokens == x.num_tokens && docs == x.num_docs)
      << file << ": corrupted dataset index: the shards add up to " << tokens << " tokens and "
      << docs << " documents, the totals say " << x.num_tokens << " and " << x.num_docs;
  return x;
}

std::shared_ptr<const TokenDataset> TokenDataset::open(const std::string& dir, bool verify) {
  std::shared_ptr<TokenDataset> ds(new TokenDataset());
  ds->dir_ = dir;
  ds->index_ = read_dataset_index(dir);
  const std::string index_file = dir + "/" + kDatasetIndexFile;
  uint64_t fp = hash64(kDatasetFormat);
  uint64_t first = 0;
  for (const ShardEntry& e : ds->index_.shards) {
    const std::string path = dir + "/" + e.file;
    auto r = ShardReader::open(path, verify);
    const ShardInfo& h = r->info();
    RESONA_CHECK(h.num_tokens == e.num_tokens && h.num_docs == e.num_docs &&
                 h.checksum == e.checksum)
        << path << ": does not match " << index_file << " (" << h.num_tokens << " tokens, "
        << h.num_docs << " documents, checksum " << hex64(h.checksum) << " in the shard; "
        << e.num_tokens << ", " << e.num_docs << ", " << hex64(e.checksum)
        << " in the index): replaced or corrupted";
    RESONA_CHECK(h.meta.tokenizer_hash == ds->index_.tokenizer_hash &&
                 static_cast<int>(h.meta.vocab_size) == ds->index_.vocab_size &&
                 h.meta.dtype == ds->index_.dtype)
        << path << ": tokenizer or dtype differs from " << index_file;
    ds->first_doc_.push_back(first);
    first += h.num_docs;
    fp = hash_combine(fp, h.checksum);
    ds->shards_.push_back(std::move(r));
  }
  ds->first_doc_.push_back(first);
  ds->fingerprint_ = fp;
  return ds;
}

std::pair<size_t, uint64_t> TokenDataset::locate(uint64_t d) const {
  RESONA_CHECK(d < index_.num_docs) << dir_ << ": document " << d << " of " << index_.num_docs;
  // The last shard whose first document is <= d.
  size_t s = std::upper_bound(first_doc_.begin(), first_doc_.end() - 1, d) - first_doc_.begin() - 1;
  // Empty shards share their first document with the next one: move past them.
  while (d - first_doc_[s] >= shards_[s]->num_docs()) ++s;
  return {s, d - first_doc_[s]};
}

uint64_t TokenDataset::doc_size(uint64_t d) const {
  auto [s, i] = locate(d);
  return shards_[s]->doc_size(i);
}

void TokenDataset::copy_doc(uint64_t d, uint64_t begin, uint64_t count, int32_t* out) const {
  auto [s, i] = locate(d);
  const ShardReader& r = *shards_[s];
  RESONA_CHECK(begin + count <= r.doc_size(i))
      << dir_ << ": tokens [" << begin << ", " << begin + count << ") of document " << d << " ("
      << r.doc_size(i) << " tokens)";
  r.copy_tokens(r.doc_begin(i) + begin, count, out);
}

std::vector<int32_t> TokenDataset::doc_tokens(uint64_t d) const {
  std::vector<int32_t> out(doc_size(d));
  copy_doc(d, 0, out.size(), out.data());
  return out;
}

}  // namespace resona::data
