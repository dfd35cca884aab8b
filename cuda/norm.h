// rms_norm and layer_norm over the last dim D of contiguous rows, on the GPU. Plain
// params; this header includes no CUDA header.
//
//   forward, per row:   layer_norm mu = mean_j x_j (rms_norm mu = 0),
//                       r = 1 / sqrt(mean_j (x_j - mu)^2 + eps),
//                       y_j = (x_j - mu) r w_j (+ b_j);  mu and r saved in float32
//   backward, per row:  g_j = d_y_j w_j, xhat_j = (x_j - mu) r,
//                       d_x_j = r (g_j - mean(g) - xhat_j mean(g xhat))  (rms: no mean(g))
//   backward, columns:  d_w_j = sum_rows d_y_j xhat_j, d_b_j = sum_rows d_y_j, in two
//                       fixed-order stages (kNormColumnRows rows per partial sum, then the
//                       partials in order): deterministic, no atomics.
// float32 arithmetic for bfloat16 storage; one warp per row up to D = 1024, one block
// per row beyond.
#pragma once

#include <cstdint>

#include "cuda/elementwise.h"  // KernelDType

namespace resona::cuda {

struct NormFwdParams {
  KernelDType dtype;  // of x, w, b and y
  bool layer;         // layer_norm (else rms_norm)
  int64_t rows, d;
  float eps;
  const void* x;
  const void* w;  // [d] or null
  const void* b;  // [d] or null (layer_norm only)
  void* y;
  float* mean;  // [rows], layer_norm only
  float* rstd;  // [rows]
};
const char* norm_fwd_cuda(const NormFwdParams& p, void* stream);

// Rows summed into one partial by the column stage.
inline constexpr int64_t kNormColumnRows = 128;
inline int64_t norm_column_chunks(int64_t rows) {
  return rows <= 0 ? 1 : (rows + kNormColumnRows - 1) / kNormColumnRows;
}

struct NormBwdParams {
  KernelDType dtype;
  bool layer;
  int64_t rows, d;
  const void* x;
  const void* w;  // or null
  const float* mean;
  const float* rstd;
  const void* dy;
  void* dx;        // [rows, d] or null when not wanted
  void* dw;        // [d] or null
  void* db;        // [d] or null
  float* partial;  // workspace [2, norm_column_chunks(rows), d] when dw or db, else null
};
// Both return nullptr on success, else a message naming what failed.
const char* norm_bwd_cuda(const NormBwdParams& p, void* stream);

}  // namespace resona::cuda
