#include "models/blocks.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "autograd/grad_mode.h"
#include "ops/conv.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "ops/norm.h"
#include "ops/reduce.h"
#include "ops/shape.h"

namespace resona::models {

// ---- composed functions ----

Tensor logsigmoid(const Tensor& x) { return neg(softplus(neg(x))); }

Tensor l2_normalize(const Tensor& x, double eps) {
  return x * rsqrt(sum(x * x, {-1}, /*keepdim=*/true) + eps);
}

Tensor sum_normalize(const Tensor& x) { return x / sum(x, {-1}, /*keepdim=*/true); }

Tensor elu_plus_one(const Tensor& x) { return relu(x) + exp(neg(relu(neg(x)))); }

int64_t fla_intermediate_size(int64_t hidden, int64_t ratio) {
  // int(hidden * ratio * 2 / 3) in Python floats; exact in integers for these sizes.
  const int64_t raw = hidden * ratio * 2 / 3;
  return (raw + 255) / 256 * 256;
}

namespace {

// hidden * expand as an integer, or an error naming `key`.
int64_t expanded_width(int64_t hidden, double expand, const std::string& key) {
  const double w = static_cast<double>(hidden) * expand;
  const double rounded = std::round(w);
  RESONA_CHECK(rounded >= 1 && std::abs(w - rounded) <= 1e-9 * std::max(1.0, w))
      << key << ": hidden_size " << hidden << " * " << expand << " = " << w
      << " must be a positive whole number";
  return static_cast<int64_t>(rounded);
}

void check_heads_divide(int64_t width, int64_t heads, const std::string& heads_key,
                        const char* what) {
  RESONA_CHECK(heads >= 1 && width % heads == 0)
      << heads_key << ": " << heads << " heads do not divide the " << what << " " << width;
}

}  // namespace

HeadSizes head_sizes(int64_t hidden, double expand_k, double expand_v, int64_t num_heads,
                     const std::string& section) {
  const int64_t key_dim = expanded_width(hidden, expand_k, section + ".expand_k");
  const int64_t value_dim = expanded_width(hidden, expand_v, section + ".expand_v");
  check_heads_divide(key_dim, num_heads, section + ".num_heads", "key width");
  check_heads_divide(value_dim, num_heads, section + ".num_heads", "value width");
  return {key_dim / num_heads, value_dim / num_heads};
}

Tensor dt_bias_init(int64_t n, double dt_min, double dt_max, double floor, Generator& gen) {
  std::vector<double> u = gen.uniform({n}, 0.0, 1.0, DType::kFloat64).to_vector<double>();
  std::vector<double> out(n);
  for (int64_t i = 0; i < n; ++i) {
    const double dt =
        std::max(std::exp(u[i] * (std::log(dt_max) - std::log(dt_min)) + std::log(dt_min)), floor);
    out[i] = dt + std::log(-std::expm1(-dt));
  }
  return from_vector_as(out, {n}, DType::kFloat32);
}

// ---- GatedMLP ----

GatedMLP::GatedMLP(int64_t hidden, int64_t intermediate, Generator& gen, double init_std,
                   double out_std)
    : intermediate_(intermediate),
      gate_proj_(hidden, intermediate, gen, {.bias = false, .init_std = init_std}),
      up_proj_(hidden, intermediate, gen, {.bias = false, .init_std = init_std}),
      down_proj_(intermediate, hidden, gen, {.bias = false, .init_std = out_std}) {
  register_module("gate_proj", gate_proj_);
  register_module("up_proj", up_proj_);
  register_module("down_proj", down_proj_);
}

Tensor GatedMLP::forward(const Tensor& x) const {
  return down_proj_.forward(silu(gate_proj_.forward(x)) * up_proj_.forward(x));
}

// ---- GatedRMSNorm ----

GatedRMSNorm::GatedRMSNorm(int64_t dim, double eps, bool norm_before_gate)
    : eps_(eps), norm_before_gate_(norm_before_gate) {
  RESONA_CHECK(dim > 0) << "GatedRMSNorm: dim must be positive, got " << dim;
  RESONA_CHECK(eps > 0) << "GatedRMSNorm: eps must be positive, got " << eps;
  weight_ = register_parameter("weight", empty({dim}));
  init_ones(weight_);
}

Tensor GatedRMSNorm::forward(const Tensor& x, const Tensor& g) const {
  RESONA_CHECK(x.shape() == g.shape() && x.size(-1) == weight_.size(0))
      << "GatedRMSNorm: x " << x.describe() << " and gate " << g.describe()
      << " must have the same shape, ending in " << weight_.size(0);
  if (norm_before_gate_) return rms_norm(x, weight_, eps_) * silu(g);
  return rms_norm(x * silu(g), weight_, eps_);
}

// ---- ShortConvolution ----

ShortConvolution::ShortConvolution(int64_t dim, int64_t kernel, bool bias, bool silu,
                                   Generator& gen, ConvInit init)
    : dim_(dim), kernel_(kernel), silu_(silu) {
  RESONA_CHECK(dim > 0 && kernel >= 2 && kernel <= 8)
      << "ShortConvolution: dim " << dim << " must be positive and kernel " << kernel
      << " in 2..8 (ops/conv.h)";
  weight_ = register_parameter("weight", empty({dim, 1, kernel}));
  if (bias) bias_ = register_parameter("bias", empty({dim}));
  switch (init.kind) {
    case ConvInit::kNormal:
      init_normal(weight_, gen, init.std);
      if (bias) init_zeros(bias_);
      break;
    case ConvInit::kTorchDefault: {
      const double bound = 1.0 / std::sqrt(static_cast<double>(kernel));
      NoGradGuard no_grad;
      weight_.copy_(gen.uniform(weight_.shape(), -bound, bound, weight_.dtype()));
      if (bias) bias_.copy_(gen.uniform(bias_.shape(), -bound, bound, bias_.dtype()));
      break;
    }
    default:
      RESONA_FAIL() << "ShortConvolution: unknown init kind " << static_cast<int>(init.kind);
  }
}

Tensor ShortConvolution::forward(const Tensor& x) const {
  RESONA_CHECK(x.dim() == 3 && x.size(2) == dim_)
      << "ShortConvolution(" << dim_ << "): x " << x.describe() << " must be [B, T, " << dim_
      << "]";
  Tensor y = causal_conv1d(x.contiguous(), weight_.reshape({dim_, kernel_}), bias_);
  return silu_ ? silu(y) : y;
}

// ---- RotaryEmbedding ----

RotaryEmbedding::RotaryEmbedding(int64_t head_dim, double base) : head_dim_(head_dim), base_(base) {
  RESONA_CHECK(head_dim >= 2) << "RotaryEmbedding: head_dim must be >= 2, got " << head_dim;
  RESONA_CHECK(base > 0) << "RotaryEmbedding: base must be positive, got " << base;
}

Tensor RotaryEmbedding::forward(const Tensor& x) const {
  RESONA_CHECK(x.dim() == 4 && x.size(3) == head_dim_)
      << "RotaryEmbedding(" << head_dim_ << "): x " << x.describe() << " must be [B, T, H, "
      << head_dim_ << "]";
  const int64_t T = x.size(1), K = head_dim_, R = K / 2;
  if (!cos_.defined() || cos_.size(0) < T || cos_.dtype() != x.dtype() ||
      cos_.device() != x.device()) {
    // Angles as FLA computes them: positions and inverse frequencies in float32, their
    // product in float32, then cos/sin.
    std::vector<double> cos_v(T * R), sin_v(T * R);
    for (int64_t i = 0; i < R; ++i) {
      const float inv_freq = static_cast<float>(
          1.0 / std::pow(base_, static_cast<double>(2 * i) / static_cast<double>(K)));
      for (int64_t t = 0; t < T; ++t) {
        const float angle = static_cast<float>(t) * inv_freq;
        cos_v[t * R + i] = std::cos(static_cast<double>(angle));
        sin_v[t * R + i] = std::sin(static_cast<double>(angle));
      }
    }
    cos_ = from_vector_as(cos_v, {T, 1, R}, x.dtype());  // broadcasts over B and H
    sin_ = from_vector_as(sin_v, {T, 1, R}, x.dtype());
    if (!x.device().is_cpu()) {
      cos_ = cos_.to(x.device());
      sin_ = sin_.to(x.device());
    }
  }
  const Tensor cos_t = cos_.slice(0, 0, T), sin_t = sin_.slice(0, 0, T);
  Tensor x1 = x.slice(3, 0, R), x2 = x.slice(3, R, 2 * R);
  std::vector<Tensor> parts = {x1 * cos_t - x2 * sin_t, x1 * sin_t + x2 * cos_t};
  if (K > 2 * R) parts.push_back(x.slice(3, 2 * R, K));
  return concat(parts, 3);
}

// ---- blocks ----

void Block::maybe_add_resona(const ModelConfig& cfg, int64_t layer, Generator& gen) {
  if (!has_resona(cfg, layer)) return;
  // Its own stream (the model's seed and the layer, mixed by splitmix64), so that the
  // backbone's weights do not depend on where Resona is attached.
  uint64_t z = gen.seed() ^ (0x5245534f4e41ULL + 0x9e3779b97f4a7c15ULL * (layer + 1));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  Generator resona_gen(z ^ (z >> 31));
  resona_ = std::make_unique<ResonaLayer>(cfg, resona_gen);
  register_module("resona", *resona_);
}

Tensor Block::mix_resona(const Tensor& x, const Tensor& y, const ResonaInputs& in) const {
  return resona_ ? y + resona_->forward(x, in) : y;
}

PrenormBlock::PrenormBlock(std::unique_ptr<SequenceModule> attn, const ModelConfig& cfg,
                           int64_t layer, Generator& gen)
    : attn_norm_(cfg.hidden_size, cfg.resolved_norm_eps()),
      attn_(std::move(attn)),
      mlp_norm_(cfg.hidden_size, cfg.resolved_norm_eps()),
      mlp_(cfg.hidden_size,
           cfg.intermediate_size > 0
               ? cfg.intermediate_size
               : fla_intermediate_size(cfg.hidden_size, cfg.resolved_hidden_ratio()),
           gen, cfg.init_std, cfg.init_std) {
  RESONA_CHECK(attn_ != nullptr) << "PrenormBlock: no attention layer";
  register_module("attn_norm", attn_norm_);
  register_module("attn", *attn_);
  register_module("mlp_norm", mlp_norm_);
  register_module("mlp", mlp_);
  maybe_add_resona(cfg, layer, gen);
}

Tensor PrenormBlock::forward(const Tensor& x, const ResonaInputs& in) const {
  Tensor xn = attn_norm_.forward(x);
  Tensor h = x + mix_resona(xn, attn_->forward(xn), in);
  return h + mlp_.forward(mlp_norm_.forward(h));
}

MixerBlock::MixerBlock(std::unique_ptr<SequenceModule> mixer, const ModelConfig& cfg, int64_t layer,
                       Generator& gen)
    : norm_(cfg.hidden_size, cfg.resolved_norm_eps()), mixer_(std::move(mixer)) {
  RESONA_CHECK(mixer_ != nullptr) << "MixerBlock: no mixer";
  register_module("norm", norm_);
  register_module("mixer", *mixer_);
  maybe_add_resona(cfg, layer, gen);
}

Tensor MixerBlock::forward(const Tensor& x, const ResonaInputs& in) const {
  Tensor xn = norm_.forward(x);
  return x + mix_resona(xn, mixer_->forward(xn), in);
}

// ---- Backbone and CausalLM ----

Backbone::Backbone(const ModelConfig& cfg, Generator& gen, const std::string& final_norm_name,
                   const BlockFactory& make_block)
    : embeddings_(cfg.vocab_size, cfg.hidden_size, gen, cfg.init_std),
      norm_(cfg.hidden_size, cfg.resolved_norm_eps()) {
  register_module("embeddings", embeddings_);
  for (int64_t l = 0; l < cfg.num_layers; ++l) layers_.push_back(make_block(l, gen));
  register_module("layers", layers_);
  register_module(final_norm_name, norm_);
}

Tensor Backbone::forward(const Tensor& ids, const Tensor& chunk_ids) const {
  Tensor h = embeddings_.forward(ids);
  const ResonaInputs in{.embeddings = h, .ids = ids, .chunk_ids = chunk_ids};
  for (size_t l = 0; l < layers_.size(); ++l) h = layers_[l].forward(h, in);
  return norm_.forward(h);
}

CausalLM::CausalLM(const ModelConfig& cfg, Generator& gen, const CausalLMLayout& layout,
                   const BlockFactory& make_block)
    : cfg_(cfg), backbone_(cfg, gen, layout.final_norm, make_block) {
  register_module(layout.backbone, backbone_);
  if (!cfg.tie_embeddings) {
    lm_head_ = std::make_unique<Linear>(cfg.hidden_size, cfg.vocab_size, gen,
                                        LinearOptions{.bias = false, .init_std = cfg.init_std});
    register_module("lm_head", *lm_head_);
  }
  name_parameters();
}

Tensor CausalLM::hidden_states(const Tensor& ids, const Tensor& chunk_ids) const {
  RESONA_CHECK(ids.dim() == 2 && (ids.dtype() == DType::kInt64 || ids.dtype() == DType::kInt32))
      << cfg_.name << ": ids " << ids.describe() << " must be int32/int64 [B, T]";
  return backbone_.forward(ids, chunk_ids);
}

Tensor CausalLM::logits(const Tensor& h) const {
  return lm_head_ ? lm_head_->forward(h) : linear(h, backbone_.embeddings().weight());
}

}  // namespace resona::models
