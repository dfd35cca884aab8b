// Mamba's selective scan on the GPU (ops/scan.h has the op's contract), behind plain
// params (no CUDA or framework headers). Per channel d and state n, a_t = exp(delta_t[d]
// A[d, n]) and u_t = delta_t[d] x_t[d]:
//
//   h_t[d, n] = a_t h_{t-1}[d, n] + u_t B_t[n]          h_{-1} = h0 (zeros if null)
//   y_t[d]    = sum_n C_t[n] h_t[d, n] + D_skip[d] x_t[d]
//   x, delta, y: [B, T, D]   A: [D, N]   B, C: [B, T, N]   D_skip: [D]   h0, h_T: [B, D, N]
//
// One thread per (b, time chunk, d), d fastest, holding h[d, 0..N) in registers (N <=
// kSelectiveScanMaxN); the [B, T, D, N] states never reach device memory. Time is cut into
// chunks of kSelectiveScanChunk steps:
//   forward   1. every chunk but the last scans from a zero state: its own end state and
//               the sum of its delta (its decay product is exp(A[d, n] sum delta));
//             2. one thread per (b, n, d) walks the chunks: the state entering each chunk,
//               written to `checkpoints` [B, chunks, N, D] float32 (saved for backward);
//             3. every chunk scans again from its checkpoint and writes y (and h_T).
//   backward  the same three passes in reverse for g_t = dL/dh_t (g_t = C_t d_y_t +
//             a_{t+1} g_{t+1}, entering the last chunk as d_h_T), then each chunk recomputes
//             its states from its checkpoint in sub-chunks short enough to sit in registers
//             and walks them in reverse (ops/selective_scan.cc has the gradient formulas).
// Arithmetic, states and carries in float32 for float32 and bfloat16 storage; outputs are
// rounded once; h_T is float32 whatever the input dtype.
//
// Deterministic reductions (no atomics): d_B_t, d_C_t sum over d: each block sums its
// channels per step in a fixed order into [B, T, blocks, 2N] partials, then one thread per
// (b, t, n) sums the blocks in order. d_A, d_D_skip sum over (b, t): each thread sums its
// chunk, then one thread per (d, n) sums the (b, chunk) partials in order. The chunking
// depends on the shape alone, so results are bit-identical run to run.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/elementwise.h"  // KernelDType

namespace resona::cuda {

constexpr int64_t kSelectiveScanChunk = 32;  // time steps per thread and per checkpoint
constexpr int64_t kSelectiveScanMaxN = 64;   // largest state size N

struct SelectiveScanFwdParams {
  KernelDType dtype;  // of x, delta, A, B, C, D_skip, y
  int64_t B, T, D, N;
  const void* x;       // [B, T, D] contiguous
  const void* delta;   // [B, T, D] contiguous
  const void* A;       // [D, N] contiguous
  const void* Bm;      // [B, T, N] contiguous
  const void* Cm;      // [B, T, N] contiguous
  const void* D_skip;  // [D], or nullptr
  const void* h0;      // [B, D, N] contiguous, or nullptr for zeros
  bool h0_float32;     // h0 is float32 (else `dtype`)
  void* y;             // [B, T, D] contiguous, out
  float* h_T;          // [B, D, N] float32, out
  float* checkpoints;  // [B, chunks, N, D] float32, out: the state entering each chunk
  void* scratch;       // selective_scan_fwd_scratch_bytes(p) bytes
};
size_t selective_scan_fwd_scratch_bytes(const SelectiveScanFwdParams& p);
const char* selective_scan_fwd_cuda(const SelectiveScanFwdParams& p, void* stream);

struct SelectiveScanBwdParams {
  KernelDType dtype;  // of the inputs, d_y and every gradient but d_h0
  int64_t B, T, D, N;
  const void* x;  // the forward's inputs, contiguous
  const void* delta;
  const void* A;
  const void* Bm;
  const void* Cm;
  const void* D_skip;        // or nullptr
  const float* checkpoints;  // [B, chunks, N, D]: from the forward
  const void* d_y;           // [B, T, D] contiguous
  const float* d_h_T;        // [B, D, N] float32 contiguous, or nullptr for zeros
  void* d_x;                 // [B, T, D], or nullptr when not wanted
  void* d_delta;             // [B, T, D], or nullptr
  void* d_A;                 // [D, N], or nullptr
  void* d_B;                 // [B, T, N], or nullptr
  void* d_C;                 // [B, T, N], or nullptr
  void* d_D_skip;            // [D], or nullptr (needs D_skip)
  void* d_h0;                // [B, D, N], or nullptr
  bool d_h0_float32;         // d_h0 is float32 (else `dtype`)
  void* scratch;             // selective_scan_bwd_scratch_bytes(p) bytes
};
size_t selective_scan_bwd_scratch_bytes(const SelectiveScanBwdParams& p);
const char* selective_scan_bwd_cuda(const SelectiveScanBwdParams& p, void* stream);

}  // namespace resona::cuda
