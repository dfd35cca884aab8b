// Causal depthwise conv1d kernels on the GPU (ops/conv.h has the op's contract), behind
// plain params (no CUDA or framework headers). Channels last, W in 2..8:
//
//   y[b, t, d]     = bias[d] + sum_j w[d, j] * x[b, t - (W-1) + j, d]      (x < 0 is zero)
//   d_x[b, s, d]   = sum_j w[d, j] * d_y[b, s + (W-1) - j, d]              (d_y >= T is zero)
//   d_w[d, j]      = sum_{b, t} d_y[b, t, d] * x[b, t - (W-1) + j, d]
//   d_bias[d]      = sum_{b, t} d_y[b, t, d]
//
// Threads run over d (coalesced), each walking a chunk of time steps with a sliding
// window of W values in registers; arithmetic in float32 for float32 and bfloat16.
// d_w and d_bias: a deterministic two-stage reduction over B*T, stage 1 one float32
// partial per (b, time chunk) summed in time order, stage 2 the partials summed in
// chunk order; the chunking depends only on (B, T), so the result is bit-identical run
// to run. Outputs are contiguous and overwritten.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/elementwise.h"  // KernelDType

namespace resona::cuda {

constexpr int64_t kConvMinWidth = 2;
constexpr int64_t kConvMaxWidth = 8;

struct CausalConv1dFwdParams {
  KernelDType dtype;  // of x, w, bias, y, w_t
  int64_t B, T, D, W;
  const void* x;
  int64_t x_strides[3];  // [B, T, D], elements, any
  const void* w;
  int64_t w_strides[2];  // [D, W], any
  const void* bias;      // [D] or nullptr
  int64_t bias_stride;
  void* y;    // [B, T, D] contiguous
  void* w_t;  // [W, D] contiguous: w transposed, written here and saved for backward
};
const char* causal_conv1d_fwd_cuda(const CausalConv1dFwdParams& p, void* stream);

struct CausalConv1dBwdParams {
  KernelDType dtype;
  int64_t B, T, D, W;
  const void* d_y;
  int64_t d_y_strides[3];  // any
  const void* x;           // needed for d_w
  int64_t x_strides[3];
  const void* w_t;  // [W, D] contiguous, needed for d_x
  void* d_x;        // [B, T, D] contiguous, or nullptr when not wanted
  void* d_w;        // [D, W] contiguous, or nullptr
  void* d_bias;     // [D], or nullptr
  void* scratch;    // causal_conv1d_bwd_scratch_bytes(p) bytes (float partials)
};
size_t causal_conv1d_bwd_scratch_bytes(const CausalConv1dBwdParams& p);
const char* causal_conv1d_bwd_cuda(const CausalConv1dBwdParams& p, void* stream);

}  // namespace resona::cuda
