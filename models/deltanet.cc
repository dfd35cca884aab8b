#include "models/deltanet.h"

#include "ops/elementwise.h"
#include "ops/scan.h"

namespace resona::models {

void validate_deltanet_config(const ModelConfig& cfg) {
  const DeltaNetSection& d = cfg.deltanet;
  head_sizes(cfg.hidden_size, d.expand_k, d.expand_v, d.num_heads, "model.deltanet");
}

namespace {
const ModelConfig& validated(const ModelConfig& cfg) {
  validate_deltanet_config(cfg);
  return cfg;
}
}  // namespace

DeltaNet::DeltaNet(const ModelConfig& cfg, Generator& gen)
    : opt_(validated(cfg).deltanet),
      hidden_(cfg.hidden_size),
      num_heads_(opt_.num_heads),
      head_k_(
          head_sizes(hidden_, opt_.expand_k, opt_.expand_v, num_heads_, "model.deltanet").head_k),
      head_v_(
          head_sizes(hidden_, opt_.expand_k, opt_.expand_v, num_heads_, "model.deltanet").head_v),
      q_proj_(hidden_, head_k_ * num_heads_, gen, no_bias(cfg)),
      k_proj_(hidden_, head_k_ * num_heads_, gen, no_bias(cfg)),
      v_proj_(hidden_, head_v_ * num_heads_, gen, no_bias(cfg)),
      o_proj_(head_v_ * num_heads_, hidden_, gen, no_bias(cfg)) {
  const int64_t key_dim = head_k_ * num_heads_, value_dim = head_v_ * num_heads_;
  register_module("q_proj", q_proj_);
  register_module("k_proj", k_proj_);
  register_module("v_proj", v_proj_);
  if (opt_.use_beta) {
    b_proj_ = std::make_unique<Linear>(hidden_, num_heads_, gen, no_bias(cfg));
    register_module("b_proj", *b_proj_);
  }
  if (opt_.use_short_conv) {
    const ConvInit init{ConvInit::kNormal, cfg.init_std};
    const bool qk_silu = opt_.qk_activation == "silu";
    q_conv1d_ = std::make_unique<ShortConvolution>(key_dim, opt_.conv_size, opt_.conv_bias, qk_silu,
                                                   gen, init);
    k_conv1d_ = std::make_unique<ShortConvolution>(key_dim, opt_.conv_size, opt_.conv_bias, qk_silu,
                                                   gen, init);
    v_conv1d_ = std::make_unique<ShortConvolution>(value_dim, opt_.conv_size, opt_.conv_bias,
                                                   /*silu=*/true, gen, init);
    register_module("q_conv1d", *q_conv1d_);
    register_module("k_conv1d", *k_conv1d_);
    register_module("v_conv1d", *v_conv1d_);
  }
  if (opt_.use_gate) {
    g_proj_ = std::make_unique<Linear>(hidden_, value_dim, gen, no_bias(cfg));
    register_module("g_proj", *g_proj_);
    o_norm_gated_ = std::make_unique<GatedRMSNorm>(head_v_, cfg.resolved_norm_eps(),
                                                   /*norm_before_gate=*/true);
    register_module("o_norm", *o_norm_gated_);
  } else {
    o_norm_ = std::make_unique<RMSNorm>(head_v_, cfg.resolved_norm_eps());
    register_module("o_norm", *o_norm_);
  }
  register_module("o_proj", o_proj_);
}

Tensor DeltaNet::qk_activation(const Tensor& x) const {
  const std::string& a = opt_.qk_activation;
  if (a == "silu") return silu(x);
  if (a == "relu") return relu(x);
  if (a == "elu") return elu_plus_one(x);
  if (a == "identity") return x;
  RESONA_FAIL() << "model.deltanet.qk_activation: unknown '" << a << "'";
  return Tensor();
}

Tensor DeltaNet::forward(const Tensor& x) const {
  RESONA_CHECK(x.dim() == 3 && x.size(2) == hidden_)
      << "DeltaNet: x " << x.describe() << " must be [B, T, " << hidden_ << "]";
  const int64_t B = x.size(0), T = x.size(1), H = num_heads_;
  const bool qk_silu = opt_.qk_activation == "silu";
  Tensor q = q_proj_.forward(x), k = k_proj_.forward(x), v = v_proj_.forward(x);
  if (q_conv1d_) {
    // The convolutions apply SiLU to q and k only when qk_activation is silu.
    q = q_conv1d_->forward(q);
    k = k_conv1d_->forward(k);
    v = v_conv1d_->forward(v);
  } else {
    if (qk_silu) {
      q = silu(q);
      k = silu(k);
    }
    v = silu(v);
  }
  q = q.reshape({B, T, H, head_k_});
  k = k.reshape({B, T, H, head_k_});
  v = v.reshape({B, T, H, head_v_});
  if (!qk_silu) {
    q = qk_activation(q);
    k = qk_activation(k);
  }
  if (opt_.qk_norm == "l2") {
    q = l2_normalize(q);
    k = l2_normalize(k);
  } else if (opt_.qk_norm == "sum") {
    q = sum_normalize(q);
    k = sum_normalize(k);
  } else {
    RESONA_FAIL() << "model.deltanet.qk_norm: unknown '" << opt_.qk_norm << "'";
  }
  Tensor beta =
      b_proj_ ? sigmoid(b_proj_->forward(x)) : full({B, T, H}, 1.0, x.dtype(), x.device());
  if (opt_.allow_neg_eigval) beta = beta * 2.0;
  Tensor o = delta_rule(q, k, v, beta, Tensor(), {.chunk = opt_.chunk_size, .scale = 0}).out;
  if (g_proj_) {
    o = o_norm_gated_->forward(o, g_proj_->forward(x).reshape({B, T, H, head_v_}));
  } else {
    o = o_norm_->forward(o);
  }
  return o_proj_.forward(o.reshape({B, T, H * head_v_}));
}

std::unique_ptr<LanguageModel> build_deltanet(const ModelConfig& cfg, Generator& gen) {
  validate_deltanet_config(cfg);
  return build_causal_lm<PrenormBlock, DeltaNet>(cfg, gen, CausalLMLayout{"model", "norm"});
}

}  // namespace resona::models
