#include "models/retnet.h"

#include <cmath>

#include "ops/elementwise.h"
#include "ops/scan.h"

namespace resona::models {

void validate_retnet_config(const ModelConfig& cfg) {
  const RetNetSection& r = cfg.retnet;
  const HeadSizes hs =
      head_sizes(cfg.hidden_size, r.expand_k, r.expand_v, r.num_heads, "model.retnet");
  RESONA_CHECK(hs.head_k >= 2)
      << "model.retnet.num_heads: RoPE needs a head key size of at least 2, got " << hs.head_k;
}

namespace {
const ModelConfig& validated(const ModelConfig& cfg) {
  validate_retnet_config(cfg);
  return cfg;
}
}  // namespace

std::vector<double> MultiScaleRetention::log_decays(int64_t num_heads) {
  std::vector<double> g(num_heads);
  for (int64_t h = 0; h < num_heads; ++h) {
    g[h] = std::log1p(-std::exp2(-5.0 - static_cast<double>(h)));
  }
  return g;
}

MultiScaleRetention::MultiScaleRetention(const ModelConfig& cfg, Generator& gen)
    : opt_(validated(cfg).retnet),
      hidden_(cfg.hidden_size),
      num_heads_(opt_.num_heads),
      head_k_(head_sizes(hidden_, opt_.expand_k, opt_.expand_v, num_heads_, "model.retnet").head_k),
      head_v_(head_sizes(hidden_, opt_.expand_k, opt_.expand_v, num_heads_, "model.retnet").head_v),
      q_proj_(hidden_, head_k_ * num_heads_, gen, no_bias(cfg)),
      k_proj_(hidden_, head_k_ * num_heads_, gen, no_bias(cfg)),
      v_proj_(hidden_, head_v_ * num_heads_, gen, no_bias(cfg)),
      o_proj_(head_v_ * num_heads_, hidden_, gen, no_bias(cfg)),
      rotary_(head_k_, opt_.rope_theta) {
  register_module("q_proj", q_proj_);
  register_module("k_proj", k_proj_);
  register_module("v_proj", v_proj_);
  if (opt_.use_output_gate) {
    g_proj_ = std::make_unique<Linear>(hidden_, head_v_ * num_heads_, gen, no_bias(cfg));
    register_module("g_proj", *g_proj_);
  }
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

Tensor MultiScaleRetention::forward(const Tensor& x) const {
  RESONA_CHECK(x.dim() == 3 && x.size(2) == hidden_)
      << "MultiScaleRetention: x " << x.describe() << " must be [B, T, " << hidden_ << "]";
  const int64_t B = x.size(0), T = x.size(1), H = num_heads_;
  Tensor q = rotary_.forward(q_proj_.forward(x).reshape({B, T, H, head_k_}));
  Tensor k = rotary_.forward(k_proj_.forward(x).reshape({B, T, H, head_k_}));
  Tensor v = v_proj_.forward(x).reshape({B, T, H, head_v_});
  // The constant decay as the op's scalar-per-head log gate, [B, T, H].
  if (!log_decay_.defined() || log_decay_.dtype() != x.dtype() ||
      log_decay_.device() != x.device()) {
    log_decay_ = from_vector_as(log_decays(H), {1, 1, H}, x.dtype());
    if (!x.device().is_cpu()) log_decay_ = log_decay_.to(x.device());
  }
  Tensor g = log_decay_.expand({B, T, H}).contiguous();
  Tensor o = gla(q, k, v, g, Tensor(), {.chunk = opt_.chunk_size, .scale = 0}).out;
  if (g_proj_) {
    o = g_norm_swish_gate_->forward(o, g_proj_->forward(x).reshape({B, T, H, head_v_}));
  } else {
    o = g_norm_->forward(o);
  }
  return o_proj_.forward(o.reshape({B, T, H * head_v_}));
}

std::unique_ptr<LanguageModel> build_retnet(const ModelConfig& cfg, Generator& gen) {
  validate_retnet_config(cfg);
  return build_causal_lm<PrenormBlock, MultiScaleRetention>(cfg, gen,
                                                            CausalLMLayout{"model", "norm"});
}

}  // namespace resona::models
