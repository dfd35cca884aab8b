#include "models/mamba2.h"

#include <cmath>
#include <vector>

#include "autograd/grad_mode.h"
#include "ops/elementwise.h"
#include "ops/scan.h"
#include "ops/shape.h"

namespace resona::models {

void validate_mamba2_config(const ModelConfig& cfg) {
  const Mamba2Section& m = cfg.mamba2;
  const int64_t inner = m.expand * cfg.hidden_size;
  RESONA_CHECK(inner % m.head_dim == 0)
      << "model.mamba2.head_dim: " << m.head_dim << " does not divide the inner width " << inner
      << " (= expand " << m.expand << " * hidden_size " << cfg.hidden_size << ")";
  const int64_t heads = inner / m.head_dim;
  RESONA_CHECK(heads % m.n_groups == 0) << "model.mamba2.n_groups: " << m.n_groups
                                        << " groups do not divide the " << heads << " heads";
  RESONA_CHECK(m.A_init_min <= m.A_init_max)
      << "model.mamba2.A_init_min " << m.A_init_min << " must be <= A_init_max " << m.A_init_max;
  RESONA_CHECK(m.time_step_min <= m.time_step_max)
      << "model.mamba2.time_step_min " << m.time_step_min << " must be <= time_step_max "
      << m.time_step_max;
}

namespace {
const ModelConfig& validated(const ModelConfig& cfg) {
  validate_mamba2_config(cfg);
  return cfg;
}
}  // namespace

Mamba2Mixer::Mamba2Mixer(const ModelConfig& cfg, Generator& gen)
    : opt_(validated(cfg).mamba2),
      hidden_(cfg.hidden_size),
      inner_(opt_.expand * cfg.hidden_size),
      heads_(inner_ / opt_.head_dim),
      head_dim_(opt_.head_dim),
      groups_(opt_.n_groups),
      state_(opt_.state_size),
      conv_dim_(inner_ + 2 * groups_ * state_),
      in_proj_(hidden_, inner_ + conv_dim_ + heads_, gen,
               {.bias = opt_.use_bias, .init_std = cfg.init_std}),
      conv1d_(conv_dim_, opt_.conv_kernel, opt_.use_conv_bias, /*silu=*/true, gen,
              {ConvInit::kNormal, cfg.init_std}),
      norm_(inner_, cfg.resolved_norm_eps(), opt_.norm_before_gate),
      out_proj_(inner_, hidden_, gen, {.bias = opt_.use_bias, .init_std = cfg.init_std}) {
  if (opt_.rescale_prenorm_residual) {
    // kaiming_uniform(a = sqrt(5)) has bound 1/sqrt(fan_in); then / sqrt(num_layers).
    NoGradGuard no_grad;
    const double bound = 1.0 / std::sqrt(static_cast<double>(inner_)) /
                         std::sqrt(static_cast<double>(cfg.num_layers));
    Tensor w = out_proj_.weight();
    w.copy_(gen.uniform(w.shape(), -bound, bound, w.dtype()));
  }
  Tensor a = gen.uniform({heads_}, opt_.A_init_min, opt_.A_init_max, DType::kFloat64);
  std::vector<double> a_log = a.to_vector<double>();
  for (double& v : a_log) v = std::log(v);

  // FLA's registration order: conv1d, in_proj, dt_bias, A_log, norm, D, out_proj.
  register_module("conv1d", conv1d_);
  register_module("in_proj", in_proj_);
  dt_bias_ = register_parameter(
      "dt_bias",
      dt_bias_init(heads_, opt_.time_step_min, opt_.time_step_max, opt_.time_step_floor, gen));
  A_log_ = register_parameter("A_log", from_vector_as(a_log, {heads_}, DType::kFloat32));
  register_module("norm", norm_);
  D_ = register_parameter("D", ones({heads_}));
  register_module("out_proj", out_proj_);
}

Tensor Mamba2Mixer::forward(const Tensor& x) const {
  RESONA_CHECK(x.dim() == 3 && x.size(2) == hidden_)
      << "Mamba2Mixer: x " << x.describe() << " must be [B, T, " << hidden_ << "]";
  const int64_t B = x.size(0), T = x.size(1), H = heads_, P = head_dim_, G = groups_, N = state_;
  std::vector<Tensor> parts = split(in_proj_.forward(x), {inner_, conv_dim_, H}, 2);
  Tensor z = parts[0].contiguous();
  Tensor xbc = conv1d_.forward(parts[1].contiguous());  // silu(conv1d(.))
  std::vector<Tensor> xs_b_c = split(xbc, {inner_, G * N, G * N}, 2);
  Tensor delta = softplus(parts[2].contiguous() + dt_bias_);  // [B, T, H]
  Tensor A = neg(exp(A_log_));                                // [H]
  Tensor log_decay = delta * A;                               // [B, T, H], <= 0
  Tensor xh = xs_b_c[0].contiguous().reshape({B, T, H, P});
  Tensor v = xh * delta.unsqueeze(3);  // delta_t x_t
  // B and C per group -> per head: head h reads group h / (H/G).
  auto per_head = [&](const Tensor& t) {
    return t.contiguous()
        .reshape({B, T, G, 1, N})
        .expand({B, T, G, H / G, N})
        .reshape({B, T, H, N});
  };
  Tensor o = gla(per_head(xs_b_c[2]), per_head(xs_b_c[1]), v, log_decay, Tensor(),
                 {.chunk = opt_.chunk_size, .scale = 1.0})
                 .out;  // [B, T, H, P]
  Tensor y = (o + xh * D_.reshape({H, 1})).reshape({B, T, inner_});
  return out_proj_.forward(norm_.forward(y, z));
}

std::unique_ptr<LanguageModel> build_mamba2(const ModelConfig& cfg, Generator& gen) {
  validate_mamba2_config(cfg);
  return build_causal_lm<MixerBlock, Mamba2Mixer>(cfg, gen, CausalLMLayout{"backbone", "norm_f"});
}

}  // namespace resona::models
