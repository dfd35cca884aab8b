// The pieces every FLA-style backbone is assembled from: the residual blocks, the SwiGLU
// MLP, the gated head norm, the short convolution, RoPE, a few small composed functions,
// and the causal LM around a stack of blocks.
//
//   pre-norm block (GLA, DeltaNet, RetNet; FLA's GLABlock):
//     h   = x + attn(attn_norm(x))
//     out = h + mlp(mlp_norm(h))               mlp = down(silu(gate(h)) * up(h))
//   mixer block (Mamba, Mamba2; FLA's MambaBlock): out = x + mixer(norm(x))
//   causal LM:  logits = final_norm(blocks(E[ids])) W^T,  W = E when tied, else lm_head
//
// Parameter names are FLA's (Hugging Face's): the GLA/DeltaNet/RetNet families live
// under "model." with "model.norm"; the Mamba families under "backbone." with
// "backbone.norm_f" (FLA copied Hugging Face's Mamba); untied heads are "lm_head.weight".
//
// Initialisation is FLA's _init_weights: Linear and Conv1d weights ~ normal(0, 0.02),
// biases 0, embeddings ~ normal(0, 0.02), norm weights 1; layers with other rules
// (Mamba's A_log, D, dt_proj, conv1d) say so in their headers.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "core/rng.h"
#include "core/tensor.h"
#include "models/config.h"
#include "models/language_model.h"
#include "models/module.h"
#include "models/resona.h"

namespace resona::models {

// ---- small composed functions (no new ops: built from ops/elementwise.h, ops/reduce.h) ----

// log(sigmoid(x)) = -softplus(-x) (softplus switches to the identity above 20, so this is
// exact to float precision for x < -20 too).
Tensor logsigmoid(const Tensor& x);
// x / sqrt(sum_k x_k^2 + eps) over the last dim (FLA's l2norm, eps 1e-6).
Tensor l2_normalize(const Tensor& x, double eps = 1e-6);
// x / sum_k x_k over the last dim (DeltaNet's qk_norm 'sum').
Tensor sum_normalize(const Tensor& x);
// elu(x) + 1 = relu(x) + exp(-relu(-x)) (DeltaNet's qk_activation 'elu').
Tensor elu_plus_one(const Tensor& x);

// FLA's GatedMLP width: int(hidden * ratio * 2/3) rounded up to a multiple of 256.
int64_t fla_intermediate_size(int64_t hidden, int64_t ratio);

// Per-head key and value sizes of an attention-like layer (GLA, DeltaNet, RetNet): the
// key width hidden * expand_k and the value width hidden * expand_v, each split over
// num_heads. Throws naming the section's key ("model.gla.expand_k",
// "model.gla.num_heads") when a width is not a positive whole number or the heads do
// not divide it.
struct HeadSizes {
  int64_t head_k, head_v;
};
HeadSizes head_sizes(int64_t hidden, double expand_k, double expand_v, int64_t num_heads,
                     const std::string& section);

// The initial bias of Mamba's (and Mamba2's) step size: n values softplus^-1(dt) =
// dt + log(1 - exp(-dt)), dt = max(exp(U(log dt_min, log dt_max)), floor), so that
// softplus(bias) starts log-uniform in [dt_min, dt_max]. float32 [n].
Tensor dt_bias_init(int64_t n, double dt_min, double dt_max, double floor, Generator& gen);

// ---- modules ----

// A module mapping a sequence to a sequence of the same shape: x [B, T, D] -> [B, T, D].
// Token mixers (attn / mixer) and whole blocks both are.
class SequenceModule : public Module {
 public:
  virtual Tensor forward(const Tensor& x) const = 0;
};

// SwiGLU: down(silu(gate(x)) * up(x)), no biases (FLA's GatedMLP). The down projection
// writes into the residual stream and may use its own std (`out_std`).
class GatedMLP : public Module {
 public:
  GatedMLP(int64_t hidden, int64_t intermediate, Generator& gen, double init_std, double out_std);
  Tensor forward(const Tensor& x) const;  // [..., D] -> [..., D]
  int64_t intermediate_size() const { return intermediate_; }

 private:
  int64_t intermediate_;
  Linear gate_proj_, up_proj_, down_proj_;
};

// RMSNorm with a swish gate, weight [D] shared by the heads it is applied to:
//   norm_before_gate (FLA's FusedRMSNormGated):   y = rmsnorm(x) * w * silu(g)
//   otherwise       (Mamba2's RMSNormGated):      y = rmsnorm(x * silu(g)) * w
class GatedRMSNorm : public Module {
 public:
  GatedRMSNorm(int64_t dim, double eps, bool norm_before_gate);
  Tensor forward(const Tensor& x, const Tensor& g) const;  // x, g [..., D] -> [..., D]

 private:
  double eps_;
  bool norm_before_gate_;
  Tensor weight_;
};

// A causal depthwise convolution over time with kernel W (FLA's ShortConvolution and
// Mamba's conv1d, both an nn.Conv1d(D, D, W, groups=D)): weight [D, 1, W] as PyTorch
// stores it, bias [D] optional, then SiLU or nothing.
//   y[t, d] = act(bias[d] + sum_j weight[d, 0, j] x[t - (W-1) + j, d])
struct ConvInit {
  // kNormal: weight ~ normal(0, std), bias 0 (FLA's _init_weights for nn.Conv1d).
  // kTorchDefault: nn.Conv1d.reset_parameters: weight and bias ~ U(-1/sqrt(W), 1/sqrt(W))
  // (fan_in = W for a depthwise conv), which FLA's Mamba leaves in place.
  enum Kind { kNormal, kTorchDefault } kind = kNormal;
  double std = 0.02;
};
class ShortConvolution : public Module {
 public:
  ShortConvolution(int64_t dim, int64_t kernel, bool bias, bool silu, Generator& gen,
                   ConvInit init);
  Tensor forward(const Tensor& x) const;  // [B, T, D] -> [B, T, D]

 private:
  int64_t dim_, kernel_;
  bool silu_;
  Tensor weight_, bias_;
};

// Rotary position embedding, GPT-NeoX layout (FLA's RotaryEmbedding, interleaved=False):
// with R = floor(K/2) and theta_i = base^(-2i/K), channel pairs (i, i+R) of position t are
// rotated by t*theta_i:
//   y_i = x_i cos - x_{i+R} sin,   y_{i+R} = x_i sin + x_{i+R} cos,   i < R
// An odd K leaves its last channel as is (FLA refuses odd K; RetNet at hidden 600 with 8
// heads has K = 75, see models/retnet.h). No parameters.
class RotaryEmbedding {
 public:
  explicit RotaryEmbedding(int64_t head_dim, double base = 10000.0);
  Tensor forward(const Tensor& x) const;  // x [B, T, H, K] -> [B, T, H, K]

 private:
  int64_t head_dim_;
  double base_;
  // cos and sin [T', 1, R] for the longest T' seen, in the last input's dtype and on its
  // device, so that steady-state steps neither recompute nor copy them.
  mutable Tensor cos_, sin_;
};

// A residual block of the backbone: x [B, T, D] -> [B, T, D]. Blocks listed in
// model.resona.layers own a Resona layer (models/resona.h, registered as "resona"), whose
// term alpha * o is added to the mixer's output; it reads the forward pass's ResonaInputs.
class Block : public Module {
 public:
  virtual Tensor forward(const Tensor& x, const ResonaInputs& in) const = 0;
  const ResonaLayer* resona() const { return resona_.get(); }  // null without Resona

 protected:
  // Builds the Resona layer when cfg lists `layer`, drawing its weights from a generator
  // of its own (derived from gen's seed and `layer`; gen does not advance).
  void maybe_add_resona(const ModelConfig& cfg, int64_t layer, Generator& gen);
  // y + alpha * o (x: the normed block input the mixer saw), or y without Resona.
  Tensor mix_resona(const Tensor& x, const Tensor& y, const ResonaInputs& in) const;

 private:
  std::unique_ptr<ResonaLayer> resona_;
};

// Pre-norm block: attn_norm, attn, mlp_norm, mlp (in this order, as FLA registers them).
class PrenormBlock : public Block {
 public:
  // Takes ownership of `attn`; draws the MLP's weights from `gen` (after attn's); adds
  // the Resona layer when block `layer` has one.
  PrenormBlock(std::unique_ptr<SequenceModule> attn, const ModelConfig& cfg, int64_t layer,
               Generator& gen);
  Tensor forward(const Tensor& x, const ResonaInputs& in) const override;

 private:
  RMSNorm attn_norm_;
  std::unique_ptr<SequenceModule> attn_;
  RMSNorm mlp_norm_;
  GatedMLP mlp_;
};

// Mixer block (Mamba): norm, mixer; no MLP.
class MixerBlock : public Block {
 public:
  MixerBlock(std::unique_ptr<SequenceModule> mixer, const ModelConfig& cfg, int64_t layer,
             Generator& gen);
  Tensor forward(const Tensor& x, const ResonaInputs& in) const override;

 private:
  RMSNorm norm_;
  std::unique_ptr<SequenceModule> mixer_;
};

// Builds block `layer` (0-based) drawing its weights from `gen`.
using BlockFactory = std::function<std::unique_ptr<Block>(int64_t layer, Generator&)>;

// embeddings -> layers -> final norm (Hugging Face's "model" / "backbone").
class Backbone : public Module {
 public:
  Backbone(const ModelConfig& cfg, Generator& gen, const std::string& final_norm_name,
           const BlockFactory& make_block);
  // ids [B, T] -> hidden [B, T, D]; chunk_ids: the offline retrieval of the Resona
  // layers (int32 [B, NQ, top_k]) or undefined.
  Tensor forward(const Tensor& ids, const Tensor& chunk_ids = Tensor()) const;
  const Embedding& embeddings() const { return embeddings_; }
  const ModuleList<Block>& layers() const { return layers_; }

 private:
  Embedding embeddings_;
  ModuleList<Block> layers_;
  RMSNorm norm_;
};

// Where a family keeps its backbone and final norm in FLA's parameter names.
struct CausalLMLayout {
  std::string backbone = "model";   // "model" (GLA, DeltaNet, RetNet) or "backbone" (Mamba)
  std::string final_norm = "norm";  // "norm" or "norm_f"
};

class CausalLM : public LanguageModel {
 public:
  // Draws the embedding, then every block in order, then (untied) lm_head from `gen`.
  CausalLM(const ModelConfig& cfg, Generator& gen, const CausalLMLayout& layout,
           const BlockFactory& make_block);
  Tensor hidden_states(const Tensor& ids, const Tensor& chunk_ids = Tensor()) const override;
  Tensor logits(const Tensor& hidden) const override;
  const ModelConfig& config() const override { return cfg_; }
  const Backbone& backbone() const { return backbone_; }

 private:
  ModelConfig cfg_;
  Backbone backbone_;
  std::unique_ptr<Linear> lm_head_;  // untied only
};

// A CausalLM of cfg.num_hidden_layers blocks BlockT(Mixer(cfg, g), cfg, layer, g): the
// families' build functions (PrenormBlock for GLA, DeltaNet, RetNet; MixerBlock for Mamba).
template <class BlockT, class Mixer>
std::unique_ptr<LanguageModel> build_causal_lm(const ModelConfig& cfg, Generator& gen,
                                               const CausalLMLayout& layout) {
  return std::make_unique<CausalLM>(cfg, gen, layout, [&cfg](int64_t layer, Generator& g) {
    return std::make_unique<BlockT>(std::make_unique<Mixer>(cfg, g), cfg, layer, g);
  });
}

// Linear layers without bias at the model's init_std (the attention projections).
inline LinearOptions no_bias(const ModelConfig& cfg) {
  return {.bias = false, .init_std = cfg.init_std};
}

}  // namespace resona::models
