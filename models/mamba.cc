#include "models/mamba.h"

#include <cmath>
#include <vector>

#include "autograd/grad_mode.h"
#include "ops/elementwise.h"
#include "ops/scan.h"
#include "ops/shape.h"

namespace resona::models {

void validate_mamba_config(const ModelConfig& cfg) {
  const MambaSection& m = cfg.mamba;
  RESONA_CHECK(m.time_step_min <= m.time_step_max)
      << "model.mamba.time_step_min " << m.time_step_min << " must be <= time_step_max "
      << m.time_step_max;
}

int64_t MambaMixer::time_step_rank(const ModelConfig& cfg) {
  return cfg.mamba.time_step_rank > 0 ? cfg.mamba.time_step_rank : (cfg.hidden_size + 15) / 16;
}

namespace {
const ModelConfig& validated(const ModelConfig& cfg) {
  validate_mamba_config(cfg);
  return cfg;
}

}  // namespace

MambaMixer::MambaMixer(const ModelConfig& cfg, Generator& gen)
    : opt_(validated(cfg).mamba),
      hidden_(cfg.hidden_size),
      inner_(opt_.expand * cfg.hidden_size),
      rank_(time_step_rank(cfg)),
      state_(opt_.state_size),
      in_proj_(hidden_, 2 * inner_, gen, {.bias = opt_.use_bias, .init_std = cfg.init_std}),
      conv1d_(inner_, opt_.conv_kernel, opt_.use_conv_bias, /*silu=*/true, gen,
              {ConvInit::kTorchDefault, 0}),
      x_proj_(inner_, rank_ + 2 * state_, gen, {.bias = false, .init_std = cfg.init_std}),
      dt_proj_(rank_, inner_, gen, {.bias = true, .init_std = cfg.init_std}),
      out_proj_(inner_, hidden_, gen, {.bias = opt_.use_bias, .init_std = cfg.init_std}) {
  {
    NoGradGuard no_grad;
    const double s = std::pow(static_cast<double>(rank_), -0.5) * opt_.time_step_scale;
    Tensor w = dt_proj_.weight();
    if (opt_.time_step_init_scheme == "random") {
      w.copy_(gen.uniform(w.shape(), -s, s, w.dtype()));
    } else if (opt_.time_step_init_scheme == "constant") {
      w.fill_(s);
    } else {
      RESONA_FAIL() << "model.mamba.time_step_init_scheme: unknown '" << opt_.time_step_init_scheme
                    << "'";
    }
    Tensor b = dt_proj_.bias();
    b.copy_(
        dt_bias_init(inner_, opt_.time_step_min, opt_.time_step_max, opt_.time_step_floor, gen));
  }
  std::vector<double> a_log(inner_ * state_);
  for (int64_t d = 0; d < inner_; ++d) {
    for (int64_t n = 0; n < state_; ++n)
      a_log[d * state_ + n] = std::log(static_cast<double>(n + 1));
  }
  // FLA's registration order: conv1d, in_proj, x_proj, dt_proj, A_log, D, out_proj.
  register_module("conv1d", conv1d_);
  register_module("in_proj", in_proj_);
  register_module("x_proj", x_proj_);
  register_module("dt_proj", dt_proj_);
  A_log_ = register_parameter("A_log", from_vector_as(a_log, {inner_, state_}, DType::kFloat32));
  D_ = register_parameter("D", ones({inner_}));
  register_module("out_proj", out_proj_);
}

Tensor MambaMixer::forward(const Tensor& x) const {
  RESONA_CHECK(x.dim() == 3 && x.size(2) == hidden_)
      << "MambaMixer: x " << x.describe() << " must be [B, T, " << hidden_ << "]";
  std::vector<Tensor> xz = split(in_proj_.forward(x), {inner_, inner_}, 2);
  Tensor xi = conv1d_.forward(xz[0].contiguous());  // silu(conv1d(xi))
  Tensor z = xz[1];
  std::vector<Tensor> dbc = split(x_proj_.forward(xi), {rank_, state_, state_}, 2);
  Tensor delta = softplus(dt_proj_.forward(dbc[0].contiguous()));  // [B, T, di]
  Tensor A = neg(exp(A_log_));                                     // [di, N]
  Tensor y = selective_scan(xi, delta, A, dbc[1].contiguous(), dbc[2].contiguous(), D_).out;
  return out_proj_.forward(y * silu(z));
}

std::unique_ptr<LanguageModel> build_mamba(const ModelConfig& cfg, Generator& gen) {
  validate_mamba_config(cfg);
  return build_causal_lm<MixerBlock, MambaMixer>(cfg, gen, CausalLMLayout{"backbone", "norm_f"});
}

}  // namespace resona::models
