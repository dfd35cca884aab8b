// Strided copies with dtype conversion, and fills, on the GPU (no CUDA or framework
// headers). Used by core's copy_into and Tensor::fill_ through the CUDA DeviceBackend
// (cuda/backend.cc), so that every view of a CUDA tensor can be copied, converted and
// filled in place.
//
//   copy_fwd:  dst[i] = convert(src[i])   any strides on both sides (stride 0 in src
//                                         broadcasts), any of the five dtypes each side
//   fill_fwd:  dst[i] = value             value given as the element's bit pattern
//
// Conversions are core/dispatch.h's convert<To, From>: a plain C++ cast, except that
// bfloat16 goes through float32 (rounded to nearest even); same-dtype copies move bits.
#pragma once

#include <cstdint>

#include "cuda/elementwise.h"

namespace resona::cuda {

// Numbering shared with core/dtype.h's DType (static_asserts in cuda/backend.cc).
enum class CopyDType : int32_t {
  kFloat32 = 0,
  kFloat64 = 1,
  kBFloat16 = 2,
  kInt32 = 3,
  kInt64 = 4
};

struct CopyParams {
  CopyDType dst_dtype;
  CopyDType src_dtype;
  int64_t n = 0;        // elements
  StridedDims<2> dims;  // operands: dst, src
  void* dst = nullptr;  // element [0, ..., 0]
  const void* src = nullptr;
};

struct FillParams {
  int32_t elem_size = 4;  // bytes: 2, 4 or 8
  uint64_t bits = 0;      // the value's bit pattern in the low elem_size bytes
  int64_t n = 0;
  StridedDims<1> dims;
  void* dst = nullptr;
};

// Launch on `stream` (a cudaStream_t; null = the current device's default stream).
// Return nullptr on success, else a message naming what is unsupported or failed.
const char* copy_fwd_cuda(const CopyParams& p, void* stream);
const char* fill_fwd_cuda(const FillParams& p, void* stream);

}  // namespace resona::cuda
