// rms_norm and layer_norm over the last dim D of contiguous rows, on the GPU. Plain
// params; this header includes no CUDA header.
//
//   forward, per row:   layer_norm mu = mean_j x_j (rms_norm mu = 0),
//                       r = 1 / sqrt(mean_j (x_j - mu)^2 + eps),
//                       y_j = (x_j - mu) r w_j (+ b_j);  mu and r saved in float32
//   backward, per row:  g_j = d_y_j w_j, xhat_j = (x_j - mu) r,
//                       d_x_j = r (g_j - mean(g) - xhat_j mean(g xhat))  (rms: no mean(g))
//   backward, columns:  d_w_j = sum_rows d_y_j xhat_j, d_b_j = sum_rows d_y_j, in two
//                       fixed-order stages: the rows are cut into norm_column_chunks(rows)
//                       chunks of norm_chunk_rows(rows) consecutive rows, each chunk's sum
//                       is written to partial[0 / 1][chunk][j], then the partials are added
//                       in chunk order. Deterministic, no atomics; the chunking depends on
//                       the row count only.
// float32 arithmetic for bfloat16 storage. When D is a multiple of the 16-byte vector
// (4 float32, 8 bfloat16), the row fits the register plan (D <= 8192 float32, 16384
// bfloat16) and every pointer is 16-byte aligned, rows are held in registers and moved
// with 16-byte accesses (one warp per row up to 256 vectors, one block beyond), and the
// backward computes d_x and the chunk partials of d_w / d_b in one pass over x and d_y.
// Otherwise a scalar path (one warp or block per row, strided) runs, with the column sums
// in a separate pass.
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

// Column-sum chunking: at most kNormMaxChunks partial rows (so the second stage reads
// little next to x and d_y), at least kNormMinChunkRows rows per chunk.
inline constexpr int64_t kNormMaxChunks = 512;
inline constexpr int64_t kNormMinChunkRows = 8;
inline int64_t norm_chunk_rows(int64_t rows) {
  const int64_t even = (rows + kNormMaxChunks - 1) / kNormMaxChunks;
  return even > kNormMinChunkRows ? even : kNormMinChunkRows;
}
inline int64_t norm_column_chunks(int64_t rows) {
  if (rows <= 0) return 1;
  const int64_t len = norm_chunk_rows(rows);
  return (rows + len - 1) / len;
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
