// A tokenized dataset: one folder holding `index.json` and the token shards it lists
// (`shard_00000.bin`, ... in the format of shard.h). `resona prepare-data` writes one
// such folder per split (OUT/train, OUT/valid, OUT/test).
//
// index.json (written last and atomically, so a folder with an index is complete):
//   {"format": "resona-token-shards", "version": 1,
//    "tokenizer": {"path", "hash" (16 hex digits), "vocab_size", "bos_id", "eos_id", "pad_id"},
//    "dtype": "uint16" | "uint32",
//    "source": {"file", "bytes", "settings", "documents"},
//    "num_tokens", "num_docs", "dropped_docs",
//    "shards": [{"file", "num_tokens", "num_docs", "checksum", "source_hash"}, ...]}
//
// Opening checks the index (a missing, truncated or malformed index is an error naming
// it), opens every shard (with `verify`, checksums too) and checks that each shard's
// header agrees with its entry: a shard replaced, truncated or corrupted since the
// index was written is refused, naming the shard.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/shard.h"

namespace resona::data {

inline constexpr const char* kDatasetIndexFile = "index.json";
inline constexpr const char* kDatasetFormat = "resona-token-shards";
inline constexpr int kDatasetIndexVersion = 1;

struct ShardEntry {
  std::string file;  // relative to the dataset folder
  uint64_t num_tokens = 0;
  uint64_t num_docs = 0;
  uint64_t checksum = 0;
  uint64_t source_hash = 0;
};

struct DatasetIndex {
  std::string tokenizer_path;
  uint64_t tokenizer_hash = 0;
  int vocab_size = 0, bos_id = -1, eos_id = -1, pad_id = -1;
  TokenDType dtype = TokenDType::kUint16;
  std::string source_file;
  uint64_t source_bytes = 0;
  uint64_t source_documents = 0;  // documents the reader produced, dropped ones included
  std::string source_settings;
  uint64_t num_tokens = 0, num_docs = 0, dropped_docs = 0;
  std::vector<ShardEntry> shards;
};

std::string shard_file_name(size_t shard);  // "shard_00007.bin"
void write_dataset_index(const std::string& dir, const DatasetIndex& index);
DatasetIndex read_dataset_index(const std::string& dir);

class TokenDataset {
 public:
  static std::shared_ptr<const TokenDataset> open(const std::string& dir, bool verify = true);

  const std::string& dir() const { return dir_; }
  const DatasetIndex& index() const { return index_; }
  uint64_t num_docs() const { return index_.num_docs; }
  uint64_t num_tokens() const { return index_.num_tokens; }
  int vocab_size() const { return index_.vocab_size; }
  int eos_id() const { return index_.eos_id; }
  int bos_id() const { return index_.bos_id; }
  // Identifies the exact token content (a hash of the shards' checksums); loader
  // positions are tied to it.
  uint64_t fingerprint() const { return fingerprint_; }

  uint64_t doc_size(uint64_t d) const;
  // Tokens [begin, begin + count) of document d (within it).
  void copy_doc(uint64_t d, uint64_t begin, uint64_t count, int32_t* out) const;
  std::vector<int32_t> doc_tokens(uint64_t d) const;
  const std::vector<std::unique_ptr<ShardReader>>& shards() const { return shards_; }

 private:
  TokenDataset() = default;
  // Global document d -> (shard, document within it).
  std::pair<size_t, uint64_t> locate(uint64_t d) const;

  std::string dir_;
  DatasetIndex index_;
  std::vector<std::unique_ptr<ShardReader>> shards_;
  std::vector<uint64_t> first_doc_;  // first global document of each shard, plus the total
  uint64_t fingerprint_ = 0;
};

}  // namespace resona::data
