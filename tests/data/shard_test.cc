// Token shards and dataset indexes: round trips, and every kind of damage refused with
// a message naming the file.
#include "data/shard.h"

#include <cstring>
#include <filesystem>

#include "data/dataset.h"
#include "data/hash.h"
#include "tests/data/data_paths.h"

namespace resona::testing {
namespace {

using namespace resona::data;
namespace fs = std::filesystem;

ShardMeta meta16() {
  ShardMeta m;
  m.dtype = TokenDType::kUint16;
  m.vocab_size = 32000;
  m.eos_id = 2;
  m.tokenizer_hash = 0x1234;
  m.source_hash = 0x5678;
  return m;
}

// Three documents: [5, 6, 7], [], [31999, 0, 1, 2, 3].
const std::vector<int32_t> kTokens = {5, 6, 7, 31999, 0, 1, 2, 3};
const std::vector<uint64_t> kOffsets = {0, 3, 3, 8};

TEST_CASE("hash64: deterministic, sensitive to every byte and to length") {
  const std::string a = "The quick brown fox jumps over the lazy dog";
  CHECK(hash64(a) == hash64(a));
  CHECK(hash64(a, 1) != hash64(a, 2));
  for (size_t i = 0; i < a.size(); ++i) {
    std::string b = a;
    b[i] ^= 1;
    CHECK(hash64(b) != hash64(a));
  }
  CHECK(hash64(std::string("ab")) != hash64(std::string("ab\0", 3)));
  CHECK(parse_hex64(hex64(0x0123456789abcdefull), "x") == 0x0123456789abcdefull);
}

TEST_CASE("shard: round trip, uint16 and uint32") {
  const std::string dir = fresh_temp_dir("shard_rt");
  for (TokenDType dt : {TokenDType::kUint16, TokenDType::kUint32}) {
    INFO(token_dtype_name(dt));
    ShardMeta m = meta16();
    m.dtype = dt;
    if (dt == TokenDType::kUint32) m.vocab_size = 100000;
    std::vector<int32_t> tokens = kTokens;
    if (dt == TokenDType::kUint32) tokens[3] = 99999;
    const std::string path = dir + "/s.bin";
    const ShardInfo w = write_shard(path, m, tokens, kOffsets);
    CHECK(w.num_tokens == 8);
    CHECK(w.num_docs == 3);
    CHECK(fs::file_size(path) == w.file_bytes);
    auto r = ShardReader::open(path);
    CHECK(r->info().checksum == w.checksum);
    CHECK(r->info().meta.source_hash == 0x5678);
    CHECK(r->info().meta.tokenizer_hash == 0x1234);
    CHECK(r->info().meta.eos_id == 2);
    CHECK(r->info().meta.dtype == dt);
    REQUIRE(r->num_docs() == 3);
    CHECK(r->doc_tokens(0) == std::vector<int32_t>{5, 6, 7});
    CHECK(r->doc_tokens(1).empty());
    CHECK(r->doc_tokens(2) == std::vector<int32_t>(tokens.begin() + 3, tokens.end()));
    CHECK(r->token(3) == tokens[3]);
    // No temporary files left behind.
    int files = 0;
    for (auto& e : fs::directory_iterator(dir)) files += e.is_regular_file();
    CHECK(files == 1);
  }
  CHECK(token_dtype_for_vocab(32000) == TokenDType::kUint16);
  CHECK(token_dtype_for_vocab(65536) == TokenDType::kUint16);
  CHECK(token_dtype_for_vocab(128256) == TokenDType::kUint32);
}

TEST_CASE("shard: ids outside the vocabulary are refused when writing") {
  const std::string path = fresh_temp_dir("shard_bad_id") + "/s.bin";
  check_throws_with([&] { write_shard(path, meta16(), {1, 32000}, {0, 2}); }, {path, "32000"});
  check_throws_with([&] { write_shard(path, meta16(), {1, 2}, {0, 1}); }, {path, "offsets"});
  CHECK(!fs::exists(path));
}

TEST_CASE("shard: truncated shards are refused, naming the file") {
  const std::string dir = fresh_temp_dir("shard_trunc");
  const std::string good = dir + "/good.bin";
  const ShardInfo w = write_shard(good, meta16(), kTokens, kOffsets);
  const std::string bytes = slurp(good);
  // Cut inside the header, inside the token ids, inside the document index, and one byte short.
  for (size_t keep :
       {size_t{0}, size_t{40}, size_t{64 + 6}, size_t{64 + 16 + 8}, bytes.size() - 1}) {
    INFO("kept " << keep << " of " << bytes.size() << " bytes");
    const std::string path = dir + "/cut_" + std::to_string(keep) + ".bin";
    spit(path, bytes.substr(0, keep));
    check_throws_with([&] { ShardReader::open(path); }, {path, "truncated"});
    check_throws_with([&] { ShardReader::open(path, /*verify=*/false); }, {path, "truncated"});
  }
  CHECK(w.file_bytes == bytes.size());
}

TEST_CASE("shard: corrupted bytes are refused, naming the file") {
  const std::string dir = fresh_temp_dir("shard_corrupt");
  const std::string good = dir + "/good.bin";
  write_shard(good, meta16(), kTokens, kOffsets);
  const std::string bytes = slurp(good);
  auto corrupt = [&](const std::string& name, size_t at, unsigned char x) {
    std::string b = bytes;
    b[at] = static_cast<char>(b[at] ^ x);
    const std::string path = dir + "/" + name + ".bin";
    spit(path, b);
    return path;
  };
  // A token id (still inside the vocabulary): only the checksum sees it.
  const std::string tok = corrupt("token", 64 + 2, 0x01);
  check_throws_with([&] { ShardReader::open(tok); }, {tok, "checksum"});
  // The document index: offset of document 1 made larger than that of document 2.
  const std::string idx = corrupt("index", 64 + 16 + 8, 0x40);
  check_throws_with([&] { ShardReader::open(idx); }, {idx, "checksum"});
  check_throws_with([&] { ShardReader::open(idx, /*verify=*/false); }, {idx, "document index"});
  // Header fields.
  const std::string magic = corrupt("magic", 0, 0x20);
  check_throws_with([&] { ShardReader::open(magic); }, {magic, "magic"});
  const std::string version = corrupt("version", 8, 0x02);
  check_throws_with([&] { ShardReader::open(version); }, {version, "version"});
  const std::string count = corrupt("count", 40, 0x01);
  check_throws_with([&] { ShardReader::open(count); }, {count});
  const std::string vocab = corrupt("vocab", 17, 0x01);  // vocab 32000 -> 31744: header checksum
  check_throws_with([&] { ShardReader::open(vocab); }, {vocab, "checksum"});
  // An id at or above the vocabulary size, with a matching checksum (a bad writer).
  {
    std::string b = bytes;
    const uint16_t big = 40000;
    std::memcpy(&b[64], &big, 2);
    const uint64_t sum = hash64(b.data() + 64, b.size() - 64, hash64(b.data(), 56));
    std::memcpy(&b[56], &sum, 8);
    const std::string path = dir + "/oov.bin";
    spit(path, b);
    check_throws_with([&] { ShardReader::open(path); }, {path, "40000", "vocabulary"});
  }
}

// A dataset folder with two shards and its index, as prepare-data writes it.
std::string make_dataset(const std::string& dir) {
  DatasetIndex x;
  x.tokenizer_path = "tok.model";
  x.tokenizer_hash = 0x1234;
  x.vocab_size = 32000;
  x.bos_id = 1;
  x.eos_id = 2;
  x.dtype = TokenDType::kUint16;
  x.source_file = "in.txt";
  x.source_settings = "test";
  const ShardInfo a = write_shard(dir + "/" + shard_file_name(0), meta16(), kTokens, kOffsets);
  const ShardInfo b = write_shard(dir + "/" + shard_file_name(1), meta16(), {9, 8}, {0, 2});
  x.shards = {{shard_file_name(0), a.num_tokens, a.num_docs, a.checksum, 0x5678},
              {shard_file_name(1), b.num_tokens, b.num_docs, b.checksum, 0x5678}};
  x.num_tokens = 10;
  x.num_docs = 4;
  x.source_documents = 4;
  write_dataset_index(dir, x);
  return dir;
}

TEST_CASE("dataset: documents across shards") {
  const std::string dir = make_dataset(fresh_temp_dir("ds"));
  auto ds = TokenDataset::open(dir);
  REQUIRE(ds->num_docs() == 4);
  CHECK(ds->num_tokens() == 10);
  CHECK(ds->doc_tokens(0) == std::vector<int32_t>{5, 6, 7});
  CHECK(ds->doc_tokens(1).empty());
  CHECK(ds->doc_size(2) == 5);
  CHECK(ds->doc_tokens(3) == std::vector<int32_t>{9, 8});
  CHECK(ds->eos_id() == 2);
  CHECK(ds->fingerprint() == TokenDataset::open(dir)->fingerprint());
  const DatasetIndex x = read_dataset_index(dir);
  CHECK(x.shards.size() == 2);
  CHECK(x.tokenizer_hash == 0x1234);
}

TEST_CASE("dataset: a truncated or corrupted index or shard is refused, naming the file") {
  const std::string dir = make_dataset(fresh_temp_dir("ds_bad"));
  const std::string index = dir + "/index.json";
  const std::string text = slurp(index);

  spit(index, text.substr(0, text.size() / 2));
  check_throws_with([&] { TokenDataset::open(dir); }, {index, "truncated or corrupted"});
  std::string wrong = text;
  wrong.replace(wrong.find("\"num_docs\": 3"), 13, "\"num_docs\": 4");
  spit(index, wrong);
  check_throws_with([&] { TokenDataset::open(dir); }, {index, "add up"});
  std::string bad_type = text;
  bad_type.replace(bad_type.find("\"num_tokens\": 10"), 16, "\"num_tokens\": \"x\"");
  spit(index, bad_type);
  check_throws_with([&] { TokenDataset::open(dir); }, {index, "num_tokens"});
  std::filesystem::remove(index);
  check_throws_with([&] { TokenDataset::open(dir); }, {index});
  spit(index, text);
  CHECK_NOTHROW(TokenDataset::open(dir));

  // A shard cut short, then one replaced by a valid shard with other content.
  const std::string s1 = dir + "/" + shard_file_name(1);
  const std::string s1_bytes = slurp(s1);
  spit(s1, s1_bytes.substr(0, s1_bytes.size() - 8));
  check_throws_with([&] { TokenDataset::open(dir); }, {s1, "truncated"});
  write_shard(s1, meta16(), {9, 7}, {0, 2});
  check_throws_with([&] { TokenDataset::open(dir); }, {s1, "does not match", index});
  std::filesystem::remove(s1);
  check_throws_with([&] { TokenDataset::open(dir); }, {s1});
}

}  // namespace
}  // namespace resona::testing
