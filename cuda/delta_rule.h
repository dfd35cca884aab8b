// The chunked delta rule (DeltaNet) on the GPU, behind plain params (no CUDA or framework
// headers); ops/scan.h has the op's contract and ops/delta_rule.cc the CPU path and the
// backward formulas, which these kernels follow step for step.
//
//   S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T     S: [K, V] per (b, h)
//   o_t = scale * S_t^T q_t
//
// Per chunk of L <= C rows (C <= kDeltaMaxChunk) with state S0 at its start:
//   N = (I + tril(diag(beta) k k^T, -1))^-1,  T = N diag(beta),  W = T k,  U = T v
//   V' = U - W S0,   o = scale (q S0 + tril(q k^T) V'),   S_end = S0 + k^T V'
//
// Forward: (1) per (b, h, chunk) in parallel, N by forward substitution, W, U and
// P = tril(q k^T); (2) per (b, h, column tile of V), the chunks in order carrying that
// tile of S, writing V' and each chunk's start state; (3) per (b, h, chunk, tile of 64 or
// 80 columns of V) in parallel, o from the chunk's start state, P and V'.
// A forward run for a backward keeps W, P, V', N and G = k k^T in a buffer the backward
// takes (DeltaRuleFwdParams::kept), so the backward does not repeat (1) or recompute V'.
// Backward: (2) per (b, h, V tile) the chunks in reverse, d_V' = scale P^T d_o + k d_S and
// d_S <- d_S + scale q^T d_o - W^T d_V' (the columns of d_S are independent, as those of S
// are in the forward), writing d_V' and the gradient of each chunk's end state; (3) per
// (b, h, chunk) in parallel, the gradient of v and a part of beta's from d_V' and V' (with
// the chunk's Y = N^T d_V', d_P, d_P^T and Z + Z^T for the next step), then per (b, h,
// chunk, d_q or d_k, 64 or 80 columns of K) those of q and k from the start state, the
// end-state gradient, V', Y and those matrices (with the rest of beta's), and the parts
// of d_beta added. Every sum runs in a fixed order (no atomics): results are
// bit-identical run to run.
//
// Storage: q, k, v, beta, o and the gradients of q, k, v, beta in float32 or bfloat16
// (KernelDType), sums and states in float32; h0 and d_h0 in float32 or the inputs' dtype.
// The products run on tensor cores in 3xTF32 (float32 accuracy) under float32 storage and
// as one TF32 product under bfloat16 storage (its error is a fraction of the bfloat16
// rounding of the outputs: tools/precision/delta_rule_tf32). Inputs and d_o may have any
// strides (elements); outputs are contiguous and overwritten. Scratch: float32 buffers laid
// out [B*H, NC, C, .] (NC = ceil(T / C)).
//
// Limits: the WY, recurrence and V-gradient kernels hold a chunk's operands in shared
// memory, so K is bounded by the device (up to 272 in float32 and 288 in bfloat16 on 227
// KiB; V is not bounded); a larger K is refused by name (the CPU path has no bound). The
// recurrences' column-tile width (16, 32 or 48 columns of V per block) is picked per shape
// from the device's occupancy; RESONA_DELTA_RULE_STATE_COLS=16|32|48 forces one (the tests
// run each).
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/elementwise.h"  // KernelDType

namespace resona::cuda {

constexpr int64_t kDeltaMaxChunk = 64;

// Inputs shared by forward and backward. Strides are in elements and may be anything
// (slices of a fused projection, transposes, broadcasts).
struct DeltaRuleInputs {
  KernelDType dtype;     // of q, k, v, beta (and o, d_o, d_q, d_k, d_v, d_beta)
  KernelDType h0_dtype;  // of h0 and d_h0: float32 or dtype
  int64_t B, T, H, K, V;
  int64_t C;  // chunk length, 1..kDeltaMaxChunk
  float scale;
  const void* q;
  int64_t q_strides[4];  // [B, T, H, K]
  const void* k;
  int64_t k_strides[4];  // [B, T, H, K]
  const void* v;
  int64_t v_strides[4];  // [B, T, H, V]
  const void* beta;
  int64_t beta_strides[3];  // [B, T, H]
  const void* h0;           // [B, H, K, V], or nullptr for zeros
  int64_t h0_strides[4];
};

// W, P, V', N and G of every chunk (float32), written by a forward for its backward.
size_t delta_rule_kept_bytes(const DeltaRuleInputs& in);

struct DeltaRuleFwdParams {
  DeltaRuleInputs in;
  void* o;        // [B, T, H, V] contiguous, in.dtype
  float* S_T;     // [B, H, K, V] contiguous
  float* states;  // [B, H, NC, K, V] contiguous: the state at the start of each chunk
  float* kept;    // delta_rule_kept_bytes(in) bytes, 16-byte aligned, for a backward; or
                  // nullptr (no backward: W, P and V' live in the scratch)
  void* scratch;  // delta_rule_fwd_scratch_bytes(p) bytes (depends on kept), 16-byte aligned
};
size_t delta_rule_fwd_scratch_bytes(const DeltaRuleFwdParams& p);
const char* delta_rule_fwd_cuda(const DeltaRuleFwdParams& p, void* stream);

struct DeltaRuleBwdParams {
  DeltaRuleInputs in;
  const float* states;  // from the forward
  const float* kept;    // from the forward (DeltaRuleFwdParams::kept)
  const void* d_o;      // [B, T, H, V], in.dtype
  int64_t d_o_strides[4];
  const float* d_S_T;  // [B, H, K, V] contiguous
  // Contiguous outputs, nullptr when not wanted; d_h0 in in.h0_dtype.
  void* d_q;      // [B, T, H, K]
  void* d_k;      // [B, T, H, K]
  void* d_v;      // [B, T, H, V]
  void* d_beta;   // [B, T, H]
  void* d_h0;     // [B, H, K, V]
  void* scratch;  // delta_rule_bwd_scratch_bytes(p) bytes, 16-byte aligned
};
size_t delta_rule_bwd_scratch_bytes(const DeltaRuleBwdParams& p);
const char* delta_rule_bwd_cuda(const DeltaRuleBwdParams& p, void* stream);

}  // namespace resona::cuda
