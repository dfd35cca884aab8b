#include "models/gla.h"

#include "ops/elementwise.h"
#include "ops/scan.h"

namespace resona::models {

void validate_gla_config(const ModelConfig& cfg) {
  const GlaSection& g = cfg.gla;
  head_sizes(cfg.hidden_size, g.expand_k, g.expand_v, g.num_heads, "model.gla");
}

namespace {
const ModelConfig& validated(const ModelConfig& cfg) {
  validate_gla_config(cfg);
  return cfg;
}
}  // namespace

GatedLinearAttention::GatedLinearAttention(const ModelConfig& cfg, Generator& gen)
    : opt_(validated(cfg).gla),
      hidden_(cfg.hidden_size),
      num_heads_(opt_.num_heads),
      head_k_(head_sizes(hidden_, opt_.expand_k, opt_.expand_v, num_heads_, "model.gla").head_k),
      head_v_(head_sizes(hidden_, opt_.expand_k, opt_.expand_v, num_heads_, "model.gla").head_v),
      q_proj_(hidden_, head_k_ * num_heads_, gen, no_bias(cfg)),
      k_proj_(hidden_, head_k_ * num_heads_, gen, no_bias(cfg)),
      v_proj_(hidden_, head_v_ * num_heads_, gen, no_bias(cfg)),
      o_proj_(head_v_ * num_heads_, hidden_, gen, no_bias(cfg)) {
  const int64_t key_dim = head_k_ * num_heads_, value_dim = head_v_ * num_heads_;
  register_module("q_proj", q_proj_);
  register_module("k_proj", k_proj_);
  register_module("v_proj", v_proj_);
  if (opt_.use_output_gate) {
    g_proj_ = std::make_unique<Linear>(hidden_, value_dim, gen, no_bias(cfg));
    register_module("g_proj", *g_proj_);
  }
  if (opt_.use_short_conv) {
    const ConvInit init{ConvInit::kNormal, cfg.init_std};
    q_conv1d_ = std::make_unique<ShortConvolution>(key_dim, opt_.conv_size, opt_.conv_bias,
                                                   /*silu=*/true, gen, init);
    k_conv1d_ = std::make_unique<ShortConvolution>(key_dim, opt_.conv_size, opt_.conv_bias,
                                                   /*silu=*/true, gen, init);
    v_conv1d_ = std::make_unique<ShortConvolution>(value_dim, opt_.conv_size, opt_.conv_bias,
                                                   /*silu=*/true, gen, init);
    register_module("q_conv1d", *q_conv1d_);
    register_module("k_conv1d", *k_conv1d_);
    register_module("v_conv1d", *v_conv1d_);
  }
  gk_proj_.push_back(std::make_unique<Linear>(hidden_, opt_.gate_low_rank_dim, gen, no_bias(cfg)));
  gk_proj_.push_back(std::make_unique<Linear>(
      opt_.gate_low_rank_dim, key_dim, gen, LinearOptions{.bias = true, .init_std = cfg.init_std}));
  register_module("gk_proj", gk_proj_);
  register_module("o_proj", o_proj_);
  if (opt_.use_output_gate) {
    g_norm_swish_gate_ = std::make_unique<GatedRMSNorm>(head_v_, cfg.resolved_norm_eps(),
                                                        /*norm_before_gate=*/true);
    register_module("g_norm_swish_gate", *g_norm_swish_gate_);
  } else {
    g_norm_ = std::make_unique<RMSNorm>(head_v_, cfg.resolved_norm_eps());
    register_module("g_norm", *g_norm_);
  }
}

Tensor GatedLinearAttention::forward(const Tensor& x) const {
  RESONA_CHECK(x.dim() == 3 && x.size(2) == hidden_)
      << "GatedLinearAttention: x " << x.describe() << " must be [B, T, " << hidden_ << "]";
  const int64_t B = x.size(0), T = x.size(1), H = num_heads_;
  Tensor q = q_proj_.forward(x), k = k_proj_.forward(x), v = v_proj_.forward(x);
  if (q_conv1d_) {
    q = q_conv1d_->forward(q);
    k = k_conv1d_->forward(k);
    v = v_conv1d_->forward(v);
  }
  Tensor gk = gk_proj_[1].forward(gk_proj_[0].forward(x));
  q = q.reshape({B, T, H, head_k_});
  k = k.reshape({B, T, H, head_k_});
  v = v.reshape({B, T, H, head_v_});
  // log alpha <= 0: logsigmoid(.) / normalizer (FLA's gate_logit_normalizer)
  Tensor log_alpha =
      logsigmoid(gk.reshape({B, T, H, head_k_})) * (1.0 / opt_.gate_logit_normalizer);
  Tensor o = gla(q, k, v, log_alpha, Tensor(), {.chunk = opt_.chunk_size, .scale = 0}).out;
  if (g_proj_) {
    Tensor g = g_proj_->forward(x).reshape({B, T, H, head_v_});
    o = g_norm_swish_gate_->forward(o, g);
  } else {
    o = g_norm_->forward(o);
  }
  return o_proj_.forward(o.reshape({B, T, H * head_v_}));
}

std::unique_ptr<LanguageModel> build_gla(const ModelConfig& cfg, Generator& gen) {
  validate_gla_config(cfg);
  return build_causal_lm<PrenormBlock, GatedLinearAttention>(cfg, gen,
                                                             CausalLMLayout{"model", "norm"});
}

}  // namespace resona::models
