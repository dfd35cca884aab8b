// Elementwise kernels on the GPU, behind plain params (no CUDA or framework headers).
//
// binary: out[i] = a[i] (op) b[i] over n contiguous elements of one dtype, with float32
// arithmetic for bfloat16 storage. Operands may also be single-element (broadcast scalar).
#pragma once

#include <cstdint>

namespace resona::cuda {

// Numbering shared with ops/elementwise.h's BinaryKind.
enum class BinaryKernelKind : int32_t { kAdd = 0, kSub = 1, kMul = 2, kDiv = 3, kPow = 4 };
enum class KernelDType : int32_t { kFloat32 = 0, kBFloat16 = 1 };

struct BinaryParams {
  BinaryKernelKind kind;
  KernelDType dtype;
  int64_t n;               // elements of out
  const void* a;
  const void* b;
  void* out;
  bool a_scalar;           // a has one element, broadcast over out
  bool b_scalar;
};

// Launches on `stream` (a cudaStream_t; null = the current device's default stream).
// Returns nullptr on success, else a message naming what is unsupported or failed.
const char* binary_fwd_cuda(const BinaryParams& p, void* stream);

}  // namespace resona::cuda
