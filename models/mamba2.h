// Mamba2's SSD mixer (Dao and Gu 2024), FLA's Mamba2 layer (fla/layers/mamba2.py, the
// torch reference being its torch_forward) inside FLA's Mamba2Block and Mamba2Model:
// no MLP, parameters under "backbone.".
//
// With inner width di = expand * D, heads H = di / P (head size P), G groups, state N,
// for x [B, T, D]:
//   [z, xBC, dt] = in_proj(x)                   [B, T, di], [B, T, di + 2GN], [B, T, H]
//   xBC = silu(conv1d(xBC));  [x, B, C] = xBC   [B, T, di], [B, T, G*N], [B, T, G*N]
//   delta = softplus(dt + dt_bias)              [B, T, H]
//   A = -exp(A_log)                             [H], one scalar per head
//   per head h (group g = h / (H/G), as mamba_ssm's kernels; FLA's torch_forward tiles
//   the groups instead, which differs only for G > 1):
//     S_t = exp(delta_t A_h) S_{t-1} + B_t (delta_t x_t)^T       S: [N, P]
//     y_t = S_t^T C_t + D_h x_t
//   (ops gla() with q = C, k = B, v = delta * x, scalar log decay delta * A, scale 1)
//   out = out_proj( RMSNormGated(y, z) )   norm_before_gate false: rmsnorm(y * silu(z)) * w
//
// Parameters (FLA's names, under backbone.layers.{i}): norm [D], mixer.in_proj
// [2di + 2GN + H, D], mixer.conv1d.weight [di + 2GN, 1, 4] + bias, mixer.dt_bias [H],
// mixer.A_log [H], mixer.D [H], mixer.norm.weight [di], mixer.out_proj [D, di].
//
// Initialisation (FLA's Mamba2PreTrainedModel._init_weights): in_proj, conv1d ~
// normal(0, init_std), biases 0; dt_bias = inv_softplus(dt) with dt log-uniform in
// [dt_min, dt_max], floored; A_log = log U(A_init_min, A_init_max) (Mamba2Config's
// A_init_range (1, 16); FLA's layer draws U(0, 16)); D = 1; norm weight 1; out_proj
// kaiming-uniform U(+-1/sqrt(di)) / sqrt(num_layers) with rescale_prenorm_residual (the
// default), else normal(0, init_std).
//
// FLA's head_dim 64 does not divide di = 1200 at hidden 600 (its config would make 18
// heads of 64 = 1152 channels and fail); configs/wikitext103/mamba2.yaml uses 60.
#pragma once

#include <memory>

#include "models/blocks.h"

namespace resona::models {

class Mamba2Mixer : public SequenceModule {
 public:
  Mamba2Mixer(const ModelConfig& cfg, Generator& gen);
  Tensor forward(const Tensor& x) const override;  // [B, T, D] -> [B, T, D]

 private:
  Mamba2Section opt_;
  int64_t hidden_, inner_, heads_, head_dim_, groups_, state_, conv_dim_;
  Linear in_proj_;
  ShortConvolution conv1d_;
  Tensor dt_bias_, A_log_, D_;
  GatedRMSNorm norm_;
  Linear out_proj_;
};

// Throws naming the key when the `model.mamba2` settings do not fit hidden_size.
void validate_mamba2_config(const ModelConfig& cfg);

// The Mamba2 language model: norm + Mamba2Mixer blocks, no MLP.
std::unique_ptr<LanguageModel> build_mamba2(const ModelConfig& cfg, Generator& gen);

}  // namespace resona::models
