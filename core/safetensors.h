// The safetensors format (https://github.com/huggingface/safetensors), read and written
// byte for byte as the reference implementation does, so that PyTorch users can load
// our checkpoints and we can load theirs:
//
//   [8 bytes]  N, the header length, unsigned little-endian
//   [N bytes]  JSON object, padded with spaces so that 8 + N is a multiple of 8:
//              {"__metadata__": {"key": "value", ...},            (optional, str -> str)
//               "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]},
//               ...}
//   [rest]     the data section: each tensor's elements, row-major, little-endian, at
//              [begin, end) relative to the start of the data section
//
// Dtypes: F32, F64, BF16, I32, I64 (the ones Resona has). Reading checks everything
// before using it and refuses a file with resona::Error naming the file and the
// problem: a short file, a header length past the end, a header that is not a JSON
// object, unknown dtypes or keys, negative or non-integer dims, offsets that disagree
// with shape and dtype, data ranges that overlap, leave gaps, run past the end or leave
// trailing bytes, and duplicate names. A file is loaded completely or not at all.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace resona {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;
using SafetensorsMetadata = std::map<std::string, std::string>;

// "F32", "F64", "BF16", "I32", "I64".
const char* safetensors_dtype_name(DType t);

// Writes `tensors` (any device, any strides; names unique and not "__metadata__") in the
// given order, their data contiguous and in order. Atomic: the bytes go to path + ".tmp",
// which is fsync'd and renamed over `path`, so a reader sees the old file or the new one.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const SafetensorsMetadata& metadata = {});
// The same bytes as save_safetensors writes, in memory.
std::string serialize_safetensors(const NamedTensors& tensors,
                                  const SafetensorsMetadata& metadata = {});

// What the header says about one tensor. Offsets are relative to the data section.
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kFloat32;
  Shape shape;
  uint64_t begin = 0, end = 0;
};

// A validated header. Entries are in the order of their data (for files we and the
// reference implementation write, also the order of the header).
struct SafetensorsHeader {
  SafetensorsMetadata metadata;
  std::vector<SafetensorsEntry> entries;
  uint64_t data_start = 0;  // 8 + N: where the data section starts in the file
};

struct SafetensorsFile {
  std::string source;  // the path (or the name given to parse_safetensors), for errors
  SafetensorsMetadata metadata;
  NamedTensors tensors;  // contiguous CPU tensors owning their memory, in data order

  bool contains(const std::string& name) const;
  // The tensor called `name`; throws naming the file when there is none.
  const Tensor& get(const std::string& name) const;
};

// Reads and validates the whole file (header and data size) before returning.
SafetensorsFile load_safetensors(const std::string& path);
// Parses a complete file image of `size` bytes; `source` names it in errors. Never reads
// outside [data, data + size).
SafetensorsFile parse_safetensors(const void* data, size_t size,
                                  const std::string& source = "<memory>");
// Reads and validates only the header (names, dtypes, shapes), checking it against the
// file's size; no tensor data is read.
SafetensorsHeader read_safetensors_header(const std::string& path);

}  // namespace resona
