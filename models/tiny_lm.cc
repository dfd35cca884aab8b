#include "models/tiny_lm.h"

#include <algorithm>
#include <cmath>

#include "autograd/grad_mode.h"
#include "ops/elementwise.h"
#include "ops/loss.h"
#include "ops/matmul.h"
#include "ops/reduce.h"
#include "ops/shape.h"

namespace resona::models {

int64_t TinyLMConfig::resolved_mlp_hidden() const {
  if (mlp_hidden > 0) return mlp_hidden;
  int64_t h = (8 * d_model + 2) / 3;  // ceil(8/3 * D)
  return (h + 31) / 32 * 32;
}

void TinyLMConfig::validate() const {
  RESONA_CHECK(vocab_size > 0) << "TinyLMConfig.vocab_size must be positive, got " << vocab_size;
  RESONA_CHECK(d_model > 0) << "TinyLMConfig.d_model must be positive, got " << d_model;
  RESONA_CHECK(n_layers > 0) << "TinyLMConfig.n_layers must be positive, got " << n_layers;
  RESONA_CHECK(window >= 1) << "TinyLMConfig.window must be >= 1, got " << window;
  RESONA_CHECK(mlp_hidden >= 0) << "TinyLMConfig.mlp_hidden must be >= 0, got " << mlp_hidden;
  RESONA_CHECK(norm_eps > 0) << "TinyLMConfig.norm_eps must be positive, got " << norm_eps;
  RESONA_CHECK(init_std > 0) << "TinyLMConfig.init_std must be positive, got " << init_std;
}

namespace {
const TinyLMConfig& validated(const TinyLMConfig& cfg) {
  cfg.validate();
  return cfg;
}
double residual_std(const TinyLMConfig& cfg) {
  return cfg.init_std / std::sqrt(2.0 * static_cast<double>(cfg.n_layers));
}
}  // namespace

// ---- WindowMixer ----

WindowMixer::WindowMixer(int64_t d_model, int64_t window, Generator& gen, double out_std)
    : d_model_(d_model),
      window_(window),
      proj_(window * d_model, d_model, gen, {.bias = false, .init_std = out_std}) {
  register_module("proj", proj_);
}

Tensor WindowMixer::forward(const Tensor& x) const {
  RESONA_CHECK(x.dim() == 3 && x.size(2) == d_model_)
      << "WindowMixer: x " << x.describe() << " must be [B, T, " << d_model_ << "]";
  const int64_t B = x.size(0), T = x.size(1), W = window_;
  if (W == 1) return proj_.forward(x);
  // xp [B, W-1+T, D]: W-1 zero steps in front, so x_{t-j} is row t + W-1-j of xp.
  Tensor pad = zeros({B, W - 1, d_model_}, x.dtype(), x.device());
  Tensor xp = concat({pad, x}, 1);
  std::vector<Tensor> shifted;
  shifted.reserve(W);
  for (int64_t j = 0; j < W; ++j) shifted.push_back(xp.slice(1, W - 1 - j, W - 1 - j + T));
  Tensor u = concat(shifted, 2);  // [B, T, W*D]
  return proj_.forward(u);
}

// ---- TinyBlock ----

TinyBlock::TinyBlock(const TinyLMConfig& cfg, Generator& gen)
    : mixer_norm_(cfg.d_model, cfg.norm_eps),
      mixer_(cfg.d_model, cfg.window, gen, residual_std(cfg)),
      mlp_norm_(cfg.d_model, cfg.norm_eps),
      mlp_(cfg.d_model, cfg.resolved_mlp_hidden(), gen, cfg.init_std, residual_std(cfg)) {
  register_module("mixer_norm", mixer_norm_);
  register_module("mixer", mixer_);
  register_module("mlp_norm", mlp_norm_);
  register_module("mlp", mlp_);
}

Tensor TinyBlock::forward(const Tensor& h) const {
  Tensor x = h + mixer_.forward(mixer_norm_.forward(h));
  return x + mlp_.forward(mlp_norm_.forward(x));
}

// ---- TinyLMModel ----

TinyLMModel::TinyLMModel(const TinyLMConfig& cfg, Generator& gen)
    : embeddings_(cfg.vocab_size, cfg.d_model, gen, cfg.init_std),
      norm_(cfg.d_model, cfg.norm_eps) {
  register_module("embeddings", embeddings_);
  for (int64_t l = 0; l < cfg.n_layers; ++l) {
    layers_.push_back(std::make_unique<TinyBlock>(cfg, gen));
  }
  register_module("layers", layers_);
  register_module("norm", norm_);
}

Tensor TinyLMModel::forward(const Tensor& ids) const {
  Tensor h = embeddings_.forward(ids);
  for (size_t l = 0; l < layers_.size(); ++l) h = layers_[l].forward(h);
  return norm_.forward(h);
}

// ---- TinyLM ----

namespace {

TinyLMConfig from_model_config(const ModelConfig& c) {
  RESONA_CHECK(c.name == "tiny") << "TinyLM built from a config for model '" << c.name << "'";
  RESONA_CHECK(c.tie_embeddings) << "model.tie_embeddings: the tiny model always ties its "
                                    "lm_head to the embeddings";
  TinyLMConfig t;
  t.vocab_size = c.vocab_size;
  t.d_model = c.hidden_size;
  t.n_layers = c.num_layers;
  t.window = c.tiny.window;
  t.mlp_hidden = c.intermediate_size;
  t.norm_eps = c.resolved_norm_eps();
  t.init_std = c.init_std;
  return t;
}

ModelConfig to_model_config(const TinyLMConfig& t) {
  ModelConfig c;
  c.name = "tiny";
  c.vocab_size = t.vocab_size;
  c.hidden_size = t.d_model;
  c.num_layers = t.n_layers;
  c.tiny.window = t.window;
  c.intermediate_size = t.resolved_mlp_hidden();
  c.norm_eps = t.norm_eps;
  c.init_std = t.init_std;
  return c;
}

}  // namespace

TinyLM::TinyLM(const TinyLMConfig& cfg, Generator& gen)
    : cfg_(validated(cfg)), model_cfg_(to_model_config(cfg_)), model_(cfg_, gen) {
  register_module("model", model_);
  name_parameters();
}

TinyLM::TinyLM(const ModelConfig& cfg, Generator& gen) : TinyLM(from_model_config(cfg), gen) {
  model_cfg_ = cfg;
}

Tensor TinyLM::hidden_states(const Tensor& ids, const Tensor& chunk_ids) const {
  RESONA_CHECK(ids.dim() == 2 && (ids.dtype() == DType::kInt64 || ids.dtype() == DType::kInt32))
      << "TinyLM: ids " << ids.describe() << " must be int32/int64 [B, T]";
  RESONA_CHECK(!chunk_ids.defined()) << "TinyLM: the tiny model has no Resona layers";
  return model_.forward(ids);
}

Tensor TinyLM::logits(const Tensor& h) const { return linear(h, model_.embeddings().weight()); }

Tensor TinyLM::loss(const Tensor& ids) const {
  RESONA_CHECK(ids.dim() == 2 && ids.size(1) >= 2)
      << "TinyLM.loss: ids " << ids.describe() << " must be [B, T] with T >= 2";
  const int64_t B = ids.size(0), T = ids.size(1);
  Tensor inputs = ids.slice(1, 0, T - 1).contiguous();
  Tensor targets = ids.slice(1, 1, T).contiguous().reshape({B * (T - 1)});
  Tensor logits = forward(inputs).reshape({B * (T - 1), cfg_.vocab_size});
  return cross_entropy(logits, targets);
}

std::vector<int64_t> TinyLM::generate_greedy(const std::vector<int64_t>& prompt, int64_t n) const {
  RESONA_CHECK(!prompt.empty()) << "TinyLM.generate_greedy: empty prompt";
  RESONA_CHECK(n >= 0) << "TinyLM.generate_greedy: n must be >= 0, got " << n;
  NoGradGuard no_grad;
  std::vector<int64_t> out = prompt;
  const int64_t ctx = receptive_field();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t len = std::min<int64_t>(ctx, static_cast<int64_t>(out.size()));
    std::vector<int64_t> window(out.end() - len, out.end());
    Tensor logits = forward(from_vector<int64_t>(window, {1, len}));  // [1, len, V]
    out.push_back(argmax(logits.select(0, 0).select(0, len - 1), 0).item_int());
  }
  return out;
}

}  // namespace resona::models
