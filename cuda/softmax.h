// softmax and log_softmax along the last dim of contiguous rows, on the GPU. Plain
// params; this header includes no CUDA header.
//
//   forward:   m = max_j x_j,  s = sum_j exp(x_j - m)       (one online pass over the row)
//              softmax y_j = exp(x_j - m) / s,  log_softmax y_j = x_j - (m + log s)
//   backward:  softmax d_x = y * (d_y - sum(d_y * y)),  log_softmax d_x = d_y - exp(y) sum(d_y)
//
// float32 arithmetic for bfloat16 storage; each row's sums run in a fixed order
// (deterministic). When the pointers of a call sit at the same offset from a 16-byte
// boundary, rows take 16-byte accesses: a warp per row up to 1024 elements and a block
// of 256 up to 8192, the row held in registers (read once, written once); a block of
// 512 per longer row (read twice). Otherwise a warp or block per row with scalar
// accesses.
#pragma once

#include <cstdint>

#include "cuda/elementwise.h"  // KernelDType

namespace resona::cuda {

struct SoftmaxParams {
  KernelDType dtype;
  bool log;         // log_softmax
  int64_t rows, n;  // rows of n contiguous elements
  const void* x;
  void* y;
};
const char* softmax_fwd_cuda(const SoftmaxParams& p, void* stream);

struct SoftmaxBwdParams {
  KernelDType dtype;
  bool log;
  int64_t rows, n;
  const void* y;  // the forward's output
  const void* dy;
  void* dx;
};
// Both return nullptr on success, else a message naming what failed.
const char* softmax_bwd_cuda(const SoftmaxBwdParams& p, void* stream);

}  // namespace resona::cuda
