// Dropout kernels on the GPU (ops/dropout.h has the op's contract), behind plain params
// (no CUDA or framework headers).
//
//   out[i] = keep(i) ? in[i] * scale : 0,   keep(i) = (word(seed, offset + i) >> 8) >= threshold
//
// with word() the device Philox of cuda/philox.cuh (equal to Generator::word_at) and
// threshold = ceil(p * 2^24): the CPU's test uint_to_unit_float(word) >= p in integers,
// so the CUDA mask equals the CPU mask for the same (seed, offset, p). i is the
// row-major position in the logical shape; `in` may have any strides, out is contiguous.
// float32: one float multiply per kept element, as the CPU (bit-identical results);
// bfloat16: the product in float32, rounded once. Backward is the same kernel on d_y.
#pragma once

#include <cstdint>

#include "cuda/elementwise.h"  // KernelDType

namespace resona::cuda {

constexpr int kDropoutMaxDims = 8;

struct DropoutParams {
  KernelDType dtype;
  int64_t n;  // numel
  int32_t ndim;
  int64_t shape[kDropoutMaxDims];
  int64_t in_strides[kDropoutMaxDims];  // elements
  bool in_contiguous;                   // then shape/in_strides are not read
  uint64_t seed, offset;
  uint32_t threshold;  // ceil(p * 2^24), in 0..2^24
  float scale;         // float(1 / (1 - p))
  const void* in;
  void* out;
};
const char* dropout_fwd_cuda(const DropoutParams& p, void* stream);
// The backward regenerates the forward's mask: the same map applied to d_y.
const char* dropout_bwd_cuda(const DropoutParams& p, void* stream);

// out[i] = Generator::word_at(seed, offset + i) for i < n (tests the device Philox).
struct PhiloxWordsParams {
  uint64_t seed, offset;
  int64_t n;
  uint32_t* out;
};
const char* philox_words_cuda(const PhiloxWordsParams& p, void* stream);

}  // namespace resona::cuda
