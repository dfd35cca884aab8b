// Recurrence ops (the parallel-scan family). Each takes an optional initial state and
// returns its final state, so long sequences can be processed in pieces and models can
// generate recurrently: running [0, T) in one call equals running [0, t) then [t, T) with
// the first call's final state as the second's initial state. States are float32 (or
// float64) whatever the input dtype. All inputs must share one dtype (float32 or float64 on
// the CPU); any strides are accepted (non-contiguous inputs are copied once). Backward
// computes only the gradients asked for, h0's included; outputs whose gradient is absent
// count as zero. Forward and backward of each op are in ops/scan.cc, ops/selective_scan.cc,
// ops/gla.cc and ops/delta_rule.cc, each with its backward formulas in its header comment.
//
// On CUDA, all four ops take float32 or bfloat16 inputs and compute in float32 with
// float32 states. Outputs come back in the input dtype, except the final states (h_T of
// selective_scan, S_T of gla and delta_rule), which are float32 whatever the input dtype;
// h0 may be float32 or the input dtype (d_h0 takes h0's dtype), so a final state seeds the
// next call unrounded.
// linear_scan has no separate final state: under bfloat16, h[:, T-1] is the rounded output,
// so running in pieces matches one run up to that rounding.
//
// 1. Diagonal linear recurrence, as a parallel scan over T:
//      h_t = a_t * h_{t-1} + b_t,   h_{-1} = h0 (zeros when undefined)
//    a, b: [B, T, D];  h0: [B, D];  returns h [B, T, D] (final state: h[:, T-1]).
//    Backward: d_b_t = g_t with g_t = d_h_t + a_{t+1} g_{t+1} (a reverse scan),
//    d_a_t = g_t * h_{t-1}, d_h0 = a_0 g_0.
//
// 2. Mamba's selective scan with the discretisation fused in:
//      h_t = exp(delta_t A) * h_{t-1} + (delta_t B_t) x_t     h: [B, D, N]
//      y_t = C_t . h_t + D_skip * x_t
//    x, delta: [B, T, D] (delta already positive, e.g. softplus(dt_proj(.) + bias));
//    A: [D, N] (negative); B, C: [B, T, N]; D_skip: [D] or undefined; h0: [B, D, N] or
//    undefined. Returns {y [B, T, D], h_T [B, D, N]}. The [B, T, D, N] states are never
//    stored: forward saves the state every 32 steps and backward recomputes the states
//    in between, one 32-step chunk at a time.
//
// 3. Gated linear attention with a matrix state, chunked (intra-chunk attention-like
//    products plus an inter-chunk state recurrence):
//      S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T        S: [B, H, K, V]
//      o_t = scale * S_t^T q_t
//    q, k: [B, T, H, K]; v: [B, T, H, V]; g (log decay, <= 0): [B, T, H, K] per key
//    channel (GLA), or [B, T, H] one scalar per head (Mamba2/SSD; RetNet passes the
//    constant log gamma_h, broadcast to [B, T, H]); h0: [B, H, K, V] or undefined. Returns
//    {o [B, T, H, V], S_T [B, H, K, V]}. Any K and V (GLA at hidden 600 has K = 75,
//    V = 150). g <= 0 is what keeps the chunked form free of overflow however strong the
//    decay (g around -5 per step or stronger is fine); the result does not depend on the
//    chunk length beyond rounding.
//
// 4. The delta rule (DeltaNet), chunked with the WY representation:
//      S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T   S: [B, H, K, V]
//      o_t = scale * S_t^T q_t
//    (the transpose of the S_{t-1}(I - beta k k^T) + beta v k^T form), q, k: [B, T, H, K]
//    (callers L2-normalise k for stability); v: [B, T, H, V]; beta: [B, T, H] in (0, 1);
//    h0: [B, H, K, V] or undefined. Returns {o, S_T}. Backward recomputes the chunk
//    states and the WY matrices, one sequence at a time.
#pragma once

#include "core/tensor.h"

namespace resona {

Tensor linear_scan(const Tensor& a, const Tensor& b, const Tensor& h0 = Tensor());

struct RecurrentOutput {
  Tensor out;          // y or o
  Tensor final_state;  // h_T or S_T
};

RecurrentOutput selective_scan(const Tensor& x, const Tensor& delta, const Tensor& A,
                               const Tensor& B, const Tensor& C, const Tensor& D_skip = Tensor(),
                               const Tensor& h0 = Tensor());

struct ChunkOptions {
  int64_t chunk = 64;  // C >= 1: chunk length of the chunked algorithms (C >= T: one chunk)
  double scale = 0;    // the scale of o; 0: K^-1/2
};

RecurrentOutput gla(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                    const Tensor& h0 = Tensor(), const ChunkOptions& opt = {});

RecurrentOutput delta_rule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                           const Tensor& h0 = Tensor(), const ChunkOptions& opt = {});

}  // namespace resona
