// RetNet's multi-scale retention (Sun et al. 2023), FLA's MultiScaleRetention
// (fla/layers/multiscale_retention.py) inside FLA's pre-norm block and model.
//
// Per head h (K = hidden*expand_k/H, V = hidden*expand_v/H), for x [B, T, D]:
//   q = RoPE(W_q x),  k = RoPE(W_k x)      [B, T, H, K]
//   v = W_v x                              [B, T, H, V]
//   gamma_h = 1 - 2^(-5-h)                 fixed decay, h = 0..H-1
//   S_t = gamma_h S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t K^-1/2
//     (ops gla() with the scalar-per-head log decay g = log gamma_h, as FLA runs
//      retention through chunk_simple_gla with g_gamma)
//   out = W_o( RMSNorm_head(o) * swish(W_g x) )      (no output gate: W_o RMSNorm_head(o))
//
// Parameters (FLA's names, under model.layers.{i}.attn): q_proj [K*H, D],
// k_proj [K*H, D], v_proj [V*H, D], g_proj [V*H, D], o_proj [D, V*H],
// g_norm_swish_gate [V] (g_norm [V] without the output gate). RoPE has none.
// At hidden 600, H = 8, expand_v 2, MLP ratio 2 (1024 wide): 4,724,550 parameters per
// block; 24 blocks with tied embeddings: 132,589,800.
//
// RoPE at an odd head size: with 8 heads at hidden 600, K = 75. FLA's RotaryEmbedding
// refuses an odd rotary dimension (and its kernel a rotary dimension above K), so FLA
// itself cannot run this configuration; the paper's head count is not stated. We rotate
// the first 74 channels as 37 pairs (i, i+37) with theta_i = base^(-2i/75) and pass the
// 75th through, which is what FLA's formulas give for the channels they can rotate.
#pragma once

#include <memory>
#include <vector>

#include "models/blocks.h"

namespace resona::models {

class MultiScaleRetention : public SequenceModule {
 public:
  MultiScaleRetention(const ModelConfig& cfg, Generator& gen);
  Tensor forward(const Tensor& x) const override;  // [B, T, D] -> [B, T, D]

  // log gamma_h = log(1 - 2^(-5-h)) for h = 0..H-1.
  static std::vector<double> log_decays(int64_t num_heads);

 private:
  RetNetSection opt_;
  int64_t hidden_, num_heads_, head_k_, head_v_;
  Linear q_proj_, k_proj_, v_proj_;
  std::unique_ptr<Linear> g_proj_;
  Linear o_proj_;
  std::unique_ptr<GatedRMSNorm> g_norm_swish_gate_;
  std::unique_ptr<RMSNorm> g_norm_;
  RotaryEmbedding rotary_;
  mutable Tensor log_decay_;  // [1, 1, H] in the last input's dtype, on its device
};

// Throws naming the key when the `model.retnet` settings do not fit hidden_size.
void validate_retnet_config(const ModelConfig& cfg);

// The RetNet language model: pre-norm blocks of MultiScaleRetention + SwiGLU.
std::unique_ptr<LanguageModel> build_retnet(const ModelConfig& cfg, Generator& gen);

}  // namespace resona::models
