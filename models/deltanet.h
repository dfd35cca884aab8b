// DeltaNet (Schlag et al. 2021; Yang et al. 2024b), FLA's DeltaNet layer
// (fla/layers/delta_net.py) inside FLA's pre-norm block and model.
//
// Per head (K = hidden*expand_k/H, V = hidden*expand_v/H), for x [B, T, D], defaults:
//   q = l2norm(silu(conv_q(W_q x))),  k = l2norm(silu(conv_k(W_k x)))   [B, T, H, K]
//   v = silu(conv_v(W_v x))                                              [B, T, H, V]
//   beta = sigmoid(W_b x)                                                [B, T, H]
//   S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,
//   o_t = S_t^T q_t K^-1/2                                          (ops delta_rule())
//   out = W_o RMSNorm_head(o)                 (use_gate: W_o(RMSNorm_head(o) * swish(W_g x)))
// conv_* are causal depthwise convolutions of width 4 without bias. FLA normalises q and
// k inside its kernel (use_qk_l2norm_in_kernel); here l2_normalize() composes it from
// elementwise ops and a sum (eps 1e-6, as FLA's l2norm) before the op.
// Other settings: qk_activation relu / elu (elu+1) / identity replaces the SiLU on q and
// k (v keeps it); qk_norm 'sum' divides by the sum instead; without the short conv the
// activations are applied to the projections directly; allow_neg_eigval doubles beta.
//
// Parameters (FLA's names, under model.layers.{i}.attn):
//   q_proj [K*H, D], k_proj [K*H, D], v_proj [V*H, D], b_proj [H, D] (use_beta),
//   q_conv1d/k_conv1d [K*H, 1, W], v_conv1d [V*H, 1, W] (use_short_conv), g_proj [V*H, D]
//   (use_gate), o_norm [V], o_proj [D, V*H].
// At hidden 600, H = 4: K = V = 150; 4,676,550 parameters per block; 24 blocks with tied
// embeddings: 131,437,800. FLA's DeltaNetConfig defaults to 16 heads, which does not
// divide 600; the layer's default 4 is ours.
#pragma once

#include <memory>

#include "models/blocks.h"

namespace resona::models {

class DeltaNet : public SequenceModule {
 public:
  DeltaNet(const ModelConfig& cfg, Generator& gen);
  Tensor forward(const Tensor& x) const override;  // [B, T, D] -> [B, T, D]

 private:
  Tensor qk_activation(const Tensor& x) const;  // without the short conv, or non-SiLU

  DeltaNetSection opt_;
  int64_t hidden_, num_heads_, head_k_, head_v_;
  Linear q_proj_, k_proj_, v_proj_;
  std::unique_ptr<Linear> b_proj_;
  std::unique_ptr<ShortConvolution> q_conv1d_, k_conv1d_, v_conv1d_;
  std::unique_ptr<Linear> g_proj_;
  std::unique_ptr<GatedRMSNorm> o_norm_gated_;  // use_gate
  std::unique_ptr<RMSNorm> o_norm_;             // otherwise
  Linear o_proj_;
};

// Throws naming the key when the `model.deltanet` settings do not fit hidden_size.
void validate_deltanet_config(const ModelConfig& cfg);

// The DeltaNet language model: pre-norm blocks of DeltaNet + SwiGLU.
std::unique_ptr<LanguageModel> build_deltanet(const ModelConfig& cfg, Generator& gen);

}  // namespace resona::models
