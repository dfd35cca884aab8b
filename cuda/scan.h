// Diagonal linear recurrence on the GPU (ops/scan.h has the op's contract), behind plain
// params (no CUDA or framework headers):
//
//   h_t = a_t * h_{t-1} + b_t          a, b, h: [B, T, D]   h_{-1} = h0 [B, D] (zeros if null)
//   backward:  g_t = d_h_t + a_{t+1} g_{t+1},  d_b_t = g_t,  d_a_t = g_t h_{t-1},  d_h0 = a_0 g_0
//
// Parallel over B, D and time: T is cut into chunks of kLinearScanChunk steps, one thread
// per (b, chunk, d) with d fastest (coalesced rows of D channels). Three passes each way:
//   1. every chunk but the last (first, backward) scans itself from a zero state and
//      stores its end state and the product of its decays, [B, chunks, D] float32 each;
//   2. one thread per (b, d) walks the chunks in order and turns those into the state
//      entering every chunk (forward) or the gradient entering it from the right (backward);
//   3. every chunk scans again from its carry and writes the outputs.
// Arithmetic and carries in float32 for float32 and bfloat16; the outputs are rounded
// once. The chunking depends on T alone, so results are bit-identical run to run. Inputs
// are contiguous; outputs are contiguous and overwritten.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/elementwise.h"  // KernelDType

namespace resona::cuda {

constexpr int64_t kLinearScanChunk = 64;  // time steps per thread

struct LinearScanFwdParams {
  KernelDType dtype;  // of a, b, h
  int64_t B, T, D;
  const void* a;    // [B, T, D] contiguous
  const void* b;    // [B, T, D] contiguous
  const void* h0;   // [B, D] contiguous, or nullptr for zeros
  bool h0_float32;  // h0 is float32 (else `dtype`)
  void* h;          // [B, T, D] contiguous, out
  void* scratch;    // linear_scan_scratch_bytes(B, T, D) bytes
};
const char* linear_scan_fwd_cuda(const LinearScanFwdParams& p, void* stream);

struct LinearScanBwdParams {
  KernelDType dtype;  // of a, h, d_h, d_a, d_b
  int64_t B, T, D;
  const void* a;    // [B, T, D] contiguous
  const void* h;    // [B, T, D] contiguous: forward's output; read only for d_a
  const void* h0;   // [B, D] contiguous, or nullptr for zeros; read only for d_a
  bool h0_float32;  // h0 and d_h0 are float32 (else `dtype`)
  const void* d_h;  // [B, T, D] contiguous
  void* d_a;        // [B, T, D], or nullptr when not wanted
  void* d_b;        // [B, T, D], or nullptr
  void* d_h0;       // [B, D] in h0's dtype, or nullptr
  void* scratch;    // linear_scan_scratch_bytes(B, T, D) bytes
};
const char* linear_scan_bwd_cuda(const LinearScanBwdParams& p, void* stream);

// Scratch of either direction: two float32 [B, chunks, D] buffers.
size_t linear_scan_scratch_bytes(int64_t B, int64_t T, int64_t D);

}  // namespace resona::cuda
