// Chunked gated linear attention (ops/scan.h has the op's contract) on the GPU, behind
// plain params (no CUDA or framework headers).
//
//   S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T      S: [K, V] per (b, h), S_{-1} = h0
//   o_t = scale * S_t^T q_t
//
// Chunks of C <= 64 steps; inside chunk n (rows i < L, start state S0 = states[n]):
//   G_i  = g_{t0} + ... + g_{t0+i}                      (kept in log2 units, exp2)
//   o_i  = scale (q_i * exp(G_i))^T S0 + sum_{j<=i} A_ij v_j
//   A_ij = scale sum_c q_ic k_jc exp(G_ic - G_jc)
//   S_end = diag(exp(G_last)) S0 + (k * exp(G_last - G))^T v
// A is formed so that no factor overflows whatever the decay: the chunk is cut into
// sub-chunks of 16 rows; across sub-chunks (J < I) exp(G_i - G_j) is the product of
// exp(G_i - G_{16I}), exp(G_{16I} - G_{16(J+1)}) and exp(G_{16(J+1)} - G_j), each <= 1;
// inside a sub-chunk whose gates spread at most 40 over its rows (every channel) it is
// exp(G_i - G_{16I}) exp(G_{16I} - G_j), the second factor <= e^40; inside any other
// sub-chunk each pair takes exp(G_i - G_j) directly (FLA's secondary chunking).
//
// Forward: (1) per (b, h, chunk), the chunk's own state term U_n = (k * exp(G_last -
// G))^T v and its decay exp(G_last) per key; then per state element, the chunks in order,
// S <- diag(exp(G_last)) S + U_n, writing each chunk's start state to `states` (float32,
// kept for backward) and S_T; (2) per (b, h, chunk): A (kept for backward), then o.
// Backward, with d_S the gradient of the chunk's end state:
//   (1) per (b, h, chunk), W_n = scale (q * exp(G))^T d_o; then per state element, chunks
//       in reverse: d_S entering chunk n is saved, d_S <- diag(exp(G_last)) d_S + W_n;
//       d_h0 = d_S of chunk 0
//   (2) per (b, h, chunk), with the forward's A:
//       d_v  = A^T d_o + (k * exp(G_last - G)) d_S,   d_A = scale tril(d_o v^T)
//   (3) per (b, h, chunk, key tile):
//       d_q  = scale (d_o S0^T) * exp(G) + sum_{j<=i} d_A_ij k_j * exp(G_i - G_j)
//       d_k  = (v d_S^T) * exp(G_last - G) + sum_{i>=j} d_A_ij q_i * exp(G_i - G_j)
//       d_G  = q * d_q - k * d_k, plus on the last row exp(G_last) * rowsum(S0 * d_S)
//              + colsum(k * (v d_S^T) * exp(G_last - G));  d_g = reverse cumsum of d_G
//   (4) a per-head gate: d_g summed over the K channels in channel order.
// Every sum has a fixed order (no atomics): results are bit-identical run to run.
// float32 states and accumulation for float32 and bfloat16 storage; the dense chunk
// products (q S0, A v, d_o v^T, A^T d_o, k d_S, d_o S0^T, v d_S^T) run on tensor cores
// with their operands rounded to TF32; the chunks' state terms U_n and W_n on tensor cores
// to float32 accuracy (3xTF32); the rest (A, the intra-chunk d_q / d_k, the state
// recurrences) in float32. Inputs may have any element strides; outputs are contiguous
// and overwritten.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/elementwise.h"  // KernelDType

namespace resona::cuda {

inline constexpr int64_t kGlaMaxChunk = 64;  // C in 1..64
inline constexpr int64_t kGlaMaxK = 256;     // key channels held per chunk in shared memory

// One [B, T, H, N] input: element (b, t, h, c) at data + sum of index * stride. A per-head
// gate [B, T, H] is passed with stride 0 along the channel dim.
struct GlaInput {
  const void* data;
  int64_t strides[4];
};

struct GlaFwdParams {
  KernelDType dtype;  // of q, k, v, g and o
  int64_t B, T, H, K, V;
  int64_t C;  // chunk length, 1..kGlaMaxChunk
  float scale;
  GlaInput q, k;    // [B, T, H, K]
  GlaInput v;       // [B, T, H, V]
  GlaInput g;       // [B, T, H, K] log decay (<= 0)
  const float* h0;  // [B, H, K, V] contiguous, or nullptr for zeros
  void* o;          // [B, T, H, V] contiguous
  float* S_T;       // [B, H, K, V] contiguous
  float* states;    // [B, H, NC, K, V], NC = ceil(T / C): the state entering each chunk
  float* decay;     // [B, H, NC, K] contiguous scratch: exp(G_last) per chunk and key
  float* A;         // [B, H, NC, 64, 64] contiguous: each chunk's A (scale included, TF32-
                    // rounded, zeros above the diagonal and past L), kept for backward; or
                    // nullptr when no backward follows
};
const char* gla_fwd_cuda(const GlaFwdParams& p, void* stream);

struct GlaBwdParams {
  KernelDType dtype;  // of q, k, v, g, d_o and d_q, d_k, d_v, d_g
  int64_t B, T, H, K, V, C;
  float scale;
  bool scalar_gate;  // g (and d_g) is [B, T, H]
  GlaInput q, k, v, g;
  GlaInput d_o;         // [B, T, H, V]
  const float* states;  // forward's [B, H, NC, K, V]
  const float* A;       // forward's [B, H, NC, 64, 64]; required when d_v is wanted
  const float* d_S_T;   // [B, H, K, V] contiguous
  void* d_q;            // [B, T, H, K] contiguous, or nullptr when not wanted
  void* d_k;            // same
  void* d_v;            // [B, T, H, V] contiguous, or nullptr
  void* d_g;            // g's shape, contiguous, or nullptr
  float* d_h0;          // [B, H, K, V] contiguous, or nullptr
  void* scratch;        // gla_bwd_scratch_bytes(p) bytes
};
size_t gla_bwd_scratch_bytes(const GlaBwdParams& p);
const char* gla_bwd_cuda(const GlaBwdParams& p, void* stream);

}  // namespace resona::cuda
