// Reductions on the GPU, behind plain params (no CUDA or framework headers).
//
// The input is a contiguous tensor seen as [A, R, C]; each output element (a, c) reduces
// the R elements x[a, 0..R, c]:
//
//   kSum        sum_r x
//   kMean       sum_r x / R
//   kMax        max_r x, and the first r holding it (a NaN counts as the maximum)
//   kLogsumexp  m + log(sum_r exp(x - m)),  m = max_r x (NaNs skipped for m, as the CPU's
//               std::max); m itself when it is not finite
//
// C = 1 reduces contiguous rows; A = 1 reduces the outer dim of [R, C] without a
// transpose. Accumulation is float32 for float32 and bfloat16 inputs. Deterministic: a
// block of bx * by = 256 threads covers bx columns; its threads step through the rows of
// their column (thread y takes rows y, y + by, ...), and the by partial results are
// combined in a fixed tree. Long reductions are split into `chunks` pieces whose
// partial states go to a workspace and are reduced by a second launch of the same
// kernel; the split depends only on (A, R, C), never on the device. No atomics.
//
// Contiguous rows (C = 1) that are not split into chunks take a faster kernel: each row
// is reduced by reduce_row_threads(A, R, C) threads (one warp, or a block of 256), with
// 16-byte loads of the row's 16-byte-aligned body and scalar loads of its unaligned head
// and tail; the threads' partial states are combined by warp shuffles (and, for a block,
// once more across its warps) in a fixed order.
//
// max_bwd:  d_x[a, r, c] = (r == index[a, c]) ? d_out[a, c] : 0   (every element written)
// sum_bwd:  d_x[a, r, c] = scale * d_out[a, c]   (sum: scale 1, mean: 1 / R; every element
//           written; rows of d_x of >= 32 elements take 16-byte stores)
#pragma once

#include <cstdint>

#include "cuda/elementwise.h"

namespace resona::cuda {

enum class ReduceKernelKind : int32_t { kSum = 0, kMean = 1, kMax = 2, kLogsumexp = 3 };

// How a reduction of [A, R, C] is cut into blocks: bx columns by `by` row-threads each,
// `chunks` pieces of `chunk_rows` rows along R.
struct ReduceShape {
  int32_t bx = 1, by = 256;
  int64_t col_tiles = 1;
  int64_t chunks = 1;
  int64_t chunk_rows = 0;
};

inline ReduceShape reduce_shape(int64_t A, int64_t R, int64_t C) {
  constexpr int64_t kThreads = 256;
  constexpr int64_t kTargetBlocks = 1024;  // enough to fill any current GPU a few times
  constexpr int64_t kMinRowsPerThread = 16;
  ReduceShape s;
  int32_t bx = 1;
  while (bx < 32 && bx < C) bx *= 2;
  s.bx = bx;
  s.by = static_cast<int32_t>(kThreads / bx);
  s.col_tiles = (C + bx - 1) / bx;
  const int64_t base = A * s.col_tiles;
  int64_t chunks = 1;
  if (base > 0 && base < kTargetBlocks) {
    chunks = (kTargetBlocks + base - 1) / base;
    const int64_t most = R / (s.by * kMinRowsPerThread);  // keep every thread busy
    if (chunks > most) chunks = most;
    if (chunks < 1) chunks = 1;
  }
  s.chunk_rows = chunks == 1 ? R : (R + chunks - 1) / chunks;
  s.chunks = s.chunk_rows == 0 ? 1 : (R + s.chunk_rows - 1) / s.chunk_rows;
  return s;
}

// Threads per row of the contiguous-rows kernel for [A, R, C], 0 where the general kernel
// runs (C > 1, or R split into chunks): a warp per row when there are many rows or the
// rows are short, else a block of 256 per row.
inline int32_t reduce_row_threads(int64_t A, int64_t R, int64_t C) {
  if (C != 1 || reduce_shape(A, R, C).chunks > 1) return 0;
  return (A >= 2048 || R <= 1024) ? 32 : 256;
}

// Bytes of workspace reduce_fwd_cuda needs for [A, R, C] (0: none).
inline int64_t reduce_workspace_bytes(int64_t A, int64_t R, int64_t C) {
  const ReduceShape s = reduce_shape(A, R, C);
  constexpr int64_t kStateBytes = 16;  // float value, float sum, int64 index
  return s.chunks > 1 ? A * s.chunks * C * kStateBytes : 0;
}

struct ReduceParams {
  ReduceKernelKind kind;
  KernelDType dtype;
  int64_t A = 1, R = 1, C = 1;
  const void* x = nullptr;    // contiguous [A, R, C]
  void* out = nullptr;        // [A, C] of dtype; may be null for kMax (argmax)
  int64_t* index = nullptr;   // kMax: [A, C] first maximising r; may be null
  void* workspace = nullptr;  // reduce_workspace_bytes(A, R, C) bytes, 16-byte aligned
};

struct MaxBwdParams {
  KernelDType dtype;
  int64_t A = 1, R = 1, C = 1;
  const void* d_out = nullptr;     // contiguous [A, C]
  const int64_t* index = nullptr;  // contiguous [A, C]
  void* d_x = nullptr;             // contiguous [A, R, C], fully overwritten
};

struct SumBwdParams {
  KernelDType dtype;
  int64_t A = 1, R = 1, C = 1;
  float scale = 1.f;            // d_x = scale * d_out, computed in float32
  const void* d_out = nullptr;  // contiguous [A, C]
  void* d_x = nullptr;          // contiguous [A, R, C], fully overwritten
};

// Launch on `stream` (a cudaStream_t; null = the current device's default stream).
// Return nullptr on success, else a message naming what is unsupported or failed.
const char* reduce_fwd_cuda(const ReduceParams& p, void* stream);
const char* max_bwd_cuda(const MaxBwdParams& p, void* stream);
const char* sum_bwd_cuda(const SumBwdParams& p, void* stream);

}  // namespace resona::cuda
