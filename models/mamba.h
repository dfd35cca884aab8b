// Mamba's selective SSM mixer (Gu and Dao 2024), FLA's Mamba layer (fla/layers/mamba.py,
// the torch reference being its slow_forward) inside FLA's MambaBlock and MambaModel,
// which copy Hugging Face's Mamba: no MLP, parameters under "backbone.".
//
// With inner width di = expand * D, state size N and dt rank r, for x [B, T, D]:
//   [xi, z] = in_proj(x)                        [B, T, di] each
//   xi = silu(conv1d(xi))                       causal depthwise, width 4, with bias
//   [dr, B, C] = x_proj(xi)                     [B, T, r], [B, T, N], [B, T, N]
//   delta = softplus(dt_proj(dr))               [B, T, di] (dt_proj has the bias b_dt)
//   A = -exp(A_log)                             [di, N]
//   h_t = exp(delta_t A) * h_{t-1} + delta_t B_t x_t,  y_t = C_t . h_t + D * x_t
//                                               (ops selective_scan())
//   out = out_proj(y * silu(z))
//
// Parameters (FLA's names, under backbone.layers.{i}): norm [D], mixer.in_proj [2di, D],
// mixer.conv1d.weight [di, 1, 4] + bias [di], mixer.x_proj [r+2N, di],
// mixer.dt_proj [di, r] + bias [di], mixer.A_log [di, N], mixer.D [di],
// mixer.out_proj [D, di]; backbone.embeddings, backbone.norm_f, lm_head when untied.
//
// Initialisation, as FLA's MambaPreTrainedModel._init_weights leaves it: in_proj, x_proj,
// out_proj ~ normal(0, init_std); conv1d weight and bias ~ U(-1/2, 1/2) (PyTorch's
// default for nn.Conv1d with fan_in 4, which FLA does not override for Mamba);
// dt_proj.weight ~ U(-s, s) with s = r^-1/2 * time_step_scale ("random"; "constant": s);
// dt_proj.bias = inv_softplus(dt), dt = max(exp(U(log dt_min, log dt_max)), dt_floor),
// so that softplus(bias) starts at dt; A_log[d, n] = log(n + 1) (S4D-real); D = 1.
//
// Parameter count at the paper's shape (D 600, 48 layers, di 1200, N 16, r 38):
//   per layer  in_proj 1,440,000 + conv1d 6,000 + x_proj 84,000 + dt_proj 46,800
//              + A_log 19,200 + D 1,200 + out_proj 720,000 + norm 600 = 2,317,800
//   48 layers 111,254,400, final norm 600, embeddings 19,200,000:
//   130,455,000 with tied embeddings (149,655,000 untied).
// The paper's table says "140M" (and 157M at hidden 640, where we get 146,770,560). No
// setting of FLA's Mamba at vocabulary 32,000 gives 140M, while the same table's GLA,
// DeltaNet and RetNet counts match vocabulary 32,000 tied exactly. Both of the paper's
// Mamba numbers would fit a tied vocabulary of about 48,000-49,500 (or an untied one of
// about 24,000) instead, which no tokenizer the paper names has; GPT-2's 50,257 tied
// gives 141.4M. We keep FLA's shapes and vocabulary 32,000; the difference is the paper's.
#pragma once

#include <memory>

#include "models/blocks.h"

namespace resona::models {

class MambaMixer : public SequenceModule {
 public:
  MambaMixer(const ModelConfig& cfg, Generator& gen);
  Tensor forward(const Tensor& x) const override;  // [B, T, D] -> [B, T, D]

  // dt rank with "auto" (0) resolved: ceil(hidden / 16).
  static int64_t time_step_rank(const ModelConfig& cfg);

 private:
  MambaSection opt_;
  int64_t hidden_, inner_, rank_, state_;
  Linear in_proj_;
  ShortConvolution conv1d_;
  Linear x_proj_, dt_proj_;
  Tensor A_log_, D_;
  Linear out_proj_;
};

// Throws naming the key when the `model.mamba` settings are inconsistent.
void validate_mamba_config(const ModelConfig& cfg);

// The Mamba language model: norm + MambaMixer blocks, no MLP.
std::unique_ptr<LanguageModel> build_mamba(const ModelConfig& cfg, Generator& gen);

}  // namespace resona::models
