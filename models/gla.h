// Gated linear attention (Yang et al. 2024), FLA's GatedLinearAttention
// (fla/layers/gla.py) inside FLA's GLA block and model.
//
// Per head (K = hidden*expand_k/H, V = hidden*expand_v/H), for x [B, T, D]:
//   q = W_q x,  k = W_k x         [B, T, H, K]      (short conv + SiLU first if enabled)
//   v = W_v x                      [B, T, H, V]
//   log alpha_t = logsigmoid(W_gk2 W_gk1 x + b) / gate_logit_normalizer     [B, T, H, K]
//   S_t = diag(alpha_t) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t K^-1/2       (ops gla())
//   out = W_o( RMSNorm_head(o) * swish(W_g x) )         (no output gate: W_o RMSNorm_head(o))
//
// Parameters (FLA's names, under model.layers.{i}.attn):
//   q_proj [K*H, D], k_proj [K*H, D], v_proj [V*H, D], g_proj [V*H, D] (output gate),
//   gk_proj.0 [r, D], gk_proj.1 [K*H, r] + bias [K*H] (r = gate_low_rank_dim),
//   o_proj [D, V*H], g_norm_swish_gate [V] (g_norm [V] without the output gate),
//   q_conv1d/k_conv1d/v_conv1d [., 1, W] with use_short_conv.
// At hidden 600, H = 4: K = 75, V = 150, 1,454,850 parameters per attention layer and
// 4,681,650 per block (MLP 1792 wide); 24 blocks with tied embeddings: 131,560,200.
#pragma once

#include <memory>

#include "models/blocks.h"

namespace resona::models {

class GatedLinearAttention : public SequenceModule {
 public:
  GatedLinearAttention(const ModelConfig& cfg, Generator& gen);
  Tensor forward(const Tensor& x) const override;  // [B, T, D] -> [B, T, D]

 private:
  GlaSection opt_;
  int64_t hidden_, num_heads_, head_k_, head_v_;
  Linear q_proj_, k_proj_, v_proj_;
  std::unique_ptr<Linear> g_proj_;
  std::unique_ptr<ShortConvolution> q_conv1d_, k_conv1d_, v_conv1d_;
  ModuleList<Linear> gk_proj_;  // "gk_proj.0", "gk_proj.1", as FLA's nn.Sequential
  Linear o_proj_;
  std::unique_ptr<GatedRMSNorm> g_norm_swish_gate_;  // with the output gate
  std::unique_ptr<RMSNorm> g_norm_;                  // without it
};

// Throws naming the key when the `model.gla` settings do not fit hidden_size.
void validate_gla_config(const ModelConfig& cfg);

// The GLA language model: pre-norm blocks of GatedLinearAttention + SwiGLU.
std::unique_ptr<LanguageModel> build_gla(const ModelConfig& cfg, Generator& gen);

}  // namespace resona::models
