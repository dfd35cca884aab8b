// TinyLM: a small causal language model built only from the core ops, small enough to
// train on a CPU in minutes (the `resona demo` model and the end-to-end tests).
//
//   h_0 = E[ids]                                            E: [V, D] (tied with lm_head)
//   for each layer l:
//     h += WindowMixer(RMSNorm(h))       u_t = [x_t, x_{t-1}, ..., x_{t-W+1}]  (zeros
//                                         before t = 0);  out_t = W_mix u_t
//     h += SwiGLU(RMSNorm(h))            down(silu(gate(x)) * up(x))
//   logits = RMSNorm(h) E^T                                 [B, T, V]
//
// The window mixer is a causal token mixer of fixed width W (a dense causal convolution
// over W steps); stacking L layers gives a receptive field of L*(W-1)+1 tokens. It
// stands in for the recurrent layers of the real models, which are built elsewhere.
//
// Parameter names follow FLA/Hugging Face: "model.embeddings.weight",
// "model.layers.0.mixer_norm.weight", "model.layers.0.mixer.proj.weight",
// "model.layers.0.mlp_norm.weight", "model.layers.0.mlp.{gate,up,down}_proj.weight",
// "model.norm.weight"; the tied lm_head has no parameter of its own (as HF omits it).
//
// Initialisation: every projection and the embedding ~ normal(0, init_std); the two
// projections that write into the residual stream (mixer.proj, mlp.down_proj) use
// init_std / sqrt(2 L), as GPT-2 and FLA's prenorm-residual rescaling do, so the
// residual stream's variance does not grow with depth; norm weights 1.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "models/blocks.h"
#include "models/language_model.h"
#include "models/module.h"

namespace resona::models {

struct TinyLMConfig {
  int64_t vocab_size = 256;  // bytes
  int64_t d_model = 128;
  int64_t n_layers = 4;
  int64_t window = 4;      // W: tokens t-W+1..t feed the mixer at t
  int64_t mlp_hidden = 0;  // 0: 8/3 * d_model rounded up to a multiple of 32 (SwiGLU)
  double norm_eps = 1e-6;
  double init_std = 0.02;

  // mlp_hidden with the default applied.
  int64_t resolved_mlp_hidden() const;
  // Throws naming the field when a value is out of range.
  void validate() const;
};

class WindowMixer : public Module {
 public:
  // Its one projection writes into the residual stream: initialised with std `out_std`.
  WindowMixer(int64_t d_model, int64_t window, Generator& gen, double out_std);
  // x [B, T, D] -> [B, T, D]; output t depends on x_{t-W+1..t} only.
  Tensor forward(const Tensor& x) const;

 private:
  int64_t d_model_, window_;
  Linear proj_;  // [D, W*D]; column block j multiplies x_{t-j}
};

class TinyBlock : public Module {
 public:
  TinyBlock(const TinyLMConfig& cfg, Generator& gen);
  Tensor forward(const Tensor& h) const;  // [B, T, D] -> [B, T, D]

 private:
  RMSNorm mixer_norm_;
  WindowMixer mixer_;
  RMSNorm mlp_norm_;
  GatedMLP mlp_;  // SwiGLU
};

// The backbone: embeddings -> blocks -> final norm (HF's "model").
class TinyLMModel : public Module {
 public:
  TinyLMModel(const TinyLMConfig& cfg, Generator& gen);
  Tensor forward(const Tensor& ids) const;  // ids [B, T] -> hidden [B, T, D]
  const Embedding& embeddings() const { return embeddings_; }

 private:
  Embedding embeddings_;
  ModuleList<TinyBlock> layers_;
  RMSNorm norm_;
};

class TinyLM : public LanguageModel {
 public:
  // Draws every initial weight from `gen`, in construction order.
  TinyLM(const TinyLMConfig& cfg, Generator& gen);
  // From the run config's `model:` section (name "tiny").
  TinyLM(const ModelConfig& cfg, Generator& gen);

  Tensor hidden_states(const Tensor& ids, const Tensor& chunk_ids = Tensor()) const override;
  Tensor logits(const Tensor& hidden) const override;  // tied: h E^T
  const ModelConfig& config() const override { return model_cfg_; }
  // Mean next-token cross-entropy: position t predicts ids[:, t+1]. ids [B, T], T >= 2.
  Tensor loss(const Tensor& ids) const;
  // Greedy continuation: appends `n` tokens to `prompt` (non-empty), each the argmax of
  // the logits at the last position, computed over the last receptive_field() tokens.
  std::vector<int64_t> generate_greedy(const std::vector<int64_t>& prompt, int64_t n) const;

  // How many past tokens (the current one included) can influence a logit.
  int64_t receptive_field() const { return cfg_.n_layers * (cfg_.window - 1) + 1; }
  const TinyLMConfig& tiny_config() const { return cfg_; }

 private:
  TinyLMConfig cfg_;
  ModelConfig model_cfg_;  // the same settings in the run config's terms
  TinyLMModel model_;
};

}  // namespace resona::models
