// Token shards: one file per shard, memory-mapped for reading.
//
// Layout (little-endian), all offsets in bytes:
//
//   0   char[8]  magic "RSNSHARD"
//   8   u32      format version (1)
//   12  u32      bytes per token id: 2 (uint16) or 4 (uint32)
//   16  u32      vocabulary size (every id is below it)
//   20  i32      EOS id of the tokenizer (-1 if none)
//   24  u64      tokenizer hash (hash64 of the .model file)
//   32  u64      source hash (hash64 of the documents' source text and the reader's
//                settings; lets `prepare-data` recognise a shard it can skip)
//   40  u64      number of tokens N
//   48  u64      number of documents D
//   56  u64      checksum: hash64(body, seed = hash64(bytes 0..56)), body = all bytes after 64
//   64           N token ids, then zero padding to a multiple of 8 bytes
//   ...          D + 1 u64 document offsets (in tokens): 0 = o_0 <= o_1 <= ... <= o_D = N;
//                document d is tokens [o_d, o_{d+1})
//
// The file size is exactly 64 + align8(N * bytes) + 8 (D + 1). Opening a shard always
// checks magic, version, sizes and offsets; with `verify` (the default) it also checks
// the checksum and that every id is below the vocabulary size. Every failure is an
// error that names the file and says what is wrong.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace resona::data {

enum class TokenDType : uint32_t { kUint16 = 2, kUint32 = 4 };
// uint16 when every id fits (vocab <= 65536), else uint32.
TokenDType token_dtype_for_vocab(int64_t vocab_size);
const char* token_dtype_name(TokenDType t);

inline constexpr char kShardMagic[8] = {'R', 'S', 'N', 'S', 'H', 'A', 'R', 'D'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderBytes = 64;

struct ShardMeta {
  TokenDType dtype = TokenDType::kUint16;
  uint32_t vocab_size = 0;
  int32_t eos_id = -1;
  uint64_t tokenizer_hash = 0;
  uint64_t source_hash = 0;
};

struct ShardInfo {
  ShardMeta meta;
  uint64_t num_tokens = 0;
  uint64_t num_docs = 0;
  uint64_t checksum = 0;
  uint64_t file_bytes = 0;
};

// Writes a shard atomically (a temporary file in the same folder, fsync'd, then
// renamed over `path`). `doc_offsets` has one more entry than there are documents,
// starts at 0 and ends at tokens.size(). Ids must be in [0, meta.vocab_size).
ShardInfo write_shard(const std::string& path, const ShardMeta& meta,
                      const std::vector<int32_t>& tokens, const std::vector<uint64_t>& doc_offsets);

class ShardReader {
 public:
  static std::unique_ptr<ShardReader> open(const std::string& path, bool verify = true);
  ~ShardReader();
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;

  const std::string& path() const { return path_; }
  const ShardInfo& info() const { return info_; }
  uint64_t num_tokens() const { return info_.num_tokens; }
  uint64_t num_docs() const { return info_.num_docs; }
  uint64_t doc_begin(uint64_t d) const { return offsets_[d]; }
  uint64_t doc_end(uint64_t d) const { return offsets_[d + 1]; }
  uint64_t doc_size(uint64_t d) const { return offsets_[d + 1] - offsets_[d]; }
  int32_t token(uint64_t i) const;
  // Tokens [begin, begin + count) of the shard (not checked against num_tokens in hot
  // paths: callers index through doc_begin/doc_end).
  void copy_tokens(uint64_t begin, uint64_t count, int32_t* out) const;
  std::vector<int32_t> doc_tokens(uint64_t d) const;

 private:
  ShardReader() = default;

  std::string path_;
  ShardInfo info_;
  const unsigned char* map_ = nullptr;
  size_t map_bytes_ = 0;
  const void* tokens_ = nullptr;
  const uint64_t* offsets_ = nullptr;
};

}  // namespace resona::data
