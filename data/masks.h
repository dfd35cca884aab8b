// Retrieval mask files: the chunk ids the Resona layers retrieve for each row of a
// dataset, computed offline by `resona precompute-masks` and read by training with
// model.resona.mask_source: offline (../shared/DESIGN.md, "File formats").
//
// Layout (little-endian), offsets in bytes:
//
//   0    char[8]  magic "RSNMASKS"
//   8    u32      format version (1)
//   12   u32      chunk size c
//   16   u32      top-k
//   20   u32      query block b
//   24   u32      sequence length T
//   28   u32      rows R
//   32   char[16] encoder ("lexical" or "embedding"), zero padded
//   48   u32      encoder dimension (lexical: hashed feature size; embedding: D)
//   52   u32      encoder n-gram (lexical; 0 otherwise)
//   56   u64      source hash: what the rows were read from (dataset fingerprint and the
//                 loader settings, or the task's arrays), so masks of other data are refused
//   64   u64      checksum: hash64 of the ids
//   72   i32      ids [R, NQ, top_k], NQ = ceil(T / b): chunk ids, -1 for none
//
// Row r holds the retrieval of the r-th row the loader yields in an (unshuffled) epoch.
// Files are written atomically (temporary file, fsync, rename). Reading checks magic,
// version, the exact file size and the checksum; every failure names the file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace resona::data {

inline constexpr char kMaskMagic[8] = {'R', 'S', 'N', 'M', 'A', 'S', 'K', 'S'};
inline constexpr uint32_t kMaskVersion = 1;
inline constexpr size_t kMaskHeaderBytes = 72;

struct MaskHeader {
  uint32_t chunk = 0, top_k = 0, query_block = 0, seq_len = 0, rows = 0;
  std::string encoder;  // at most 15 characters
  uint32_t encoder_dim = 0, encoder_ngram = 0;
  uint64_t source_hash = 0;

  int64_t query_blocks() const { return (int64_t{seq_len} + query_block - 1) / query_block; }
  int64_t ids_per_row() const { return query_blocks() * top_k; }
  bool same_settings(const MaskHeader& o) const;  // every field but rows
  std::string describe() const;
};

struct MaskFile {
  MaskHeader header;
  std::vector<int32_t> ids;  // [rows, NQ, top_k]
  const int32_t* row(int64_t r) const { return ids.data() + r * header.ids_per_row(); }
};

void write_masks(const std::string& path, const MaskHeader& header,
                 const std::vector<int32_t>& ids);
MaskFile read_masks(const std::string& path);

}  // namespace resona::data
