#include "train/optimizer.h"

#include <cmath>
#include <unordered_map>
#include <unordered_set>

#include "autograd/grad_mode.h"
#include "ops/elementwise.h"

namespace resona::train {

namespace {

bool is_cpu_real(const Tensor& t) {
  return t.device().is_cpu() && (t.dtype() == DType::kFloat32 || t.dtype() == DType::kFloat64);
}

void check_param(const char* who, const std::string& name, const Tensor& p) {
  RESONA_CHECK(p.defined()) << who << ": parameter '" << name << "' is undefined";
  RESONA_CHECK(!p.device().is_cuda())
      << who << ": parameter '" << name << "' (" << p.describe()
      << ") is on CUDA; the CUDA optimizer update is not implemented yet";
  RESONA_CHECK(is_cpu_real(p)) << who << ": parameter '" << name << "' (" << p.describe()
                               << ") must be a CPU float32/float64 tensor";
  RESONA_CHECK(p.is_contiguous()) << who << ": parameter '" << name << "' (" << p.describe()
                                  << ") must be contiguous";
}

// The gradient of `p` as a contiguous tensor of p's dtype and shape (undefined if none).
Tensor readable_grad(const char* who, const std::string& name, const Tensor& p) {
  Tensor g = p.grad();
  if (!g.defined()) return g;
  RESONA_CHECK(!g.device().is_cuda())
      << who << ": the gradient of '" << name << "' is on CUDA; the CUDA optimizer update is "
      << "not implemented yet";
  RESONA_CHECK(g.shape() == p.shape() && g.dtype() == p.dtype())
      << who << ": the gradient of '" << name << "' is " << g.describe() << ", expected "
      << shape_str(p.shape()) << " " << dtype_name(p.dtype());
  if (!g.is_contiguous()) {
    NoGradGuard no_grad;
    g = g.contiguous();
  }
  return g;
}

template <class T>
void adamw_update(T* p, const T* g, T* m, T* v, int64_t n, double lr, double wd, double beta1,
                  double beta2, double eps, double bc1, double bc2) {
  // Computed in T (float32 updates float32 state, as torch's foreach path); the scalar
  // factors are formed in double first.
  const T decay = static_cast<T>(1.0 - lr * wd);
  const T b1 = static_cast<T>(beta1), one_b1 = static_cast<T>(1.0 - beta1);
  const T b2 = static_cast<T>(beta2), one_b2 = static_cast<T>(1.0 - beta2);
  const T step_size = static_cast<T>(lr / bc1);
  const T inv_sqrt_bc2 = static_cast<T>(1.0 / std::sqrt(bc2));
  const T eps_t = static_cast<T>(eps);
  for (int64_t i = 0; i < n; ++i) {
    const T gi = g[i];
    m[i] = b1 * m[i] + one_b1 * gi;
    v[i] = b2 * v[i] + one_b2 * gi * gi;
    const T denom = std::sqrt(v[i]) * inv_sqrt_bc2 + eps_t;
    p[i] = p[i] * decay - step_size * m[i] / denom;
  }
}

template <class T>
double sum_squares(const T* g, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(g[i]) * static_cast<double>(g[i]);
  return s;
}

}  // namespace

void AdamWConfig::validate() const {
  RESONA_CHECK(lr >= 0 && std::isfinite(lr)) << "AdamW: lr must be finite and >= 0, got " << lr;
  RESONA_CHECK(beta1 >= 0 && beta1 < 1) << "AdamW: beta1 must be in [0, 1), got " << beta1;
  RESONA_CHECK(beta2 >= 0 && beta2 < 1) << "AdamW: beta2 must be in [0, 1), got " << beta2;
  RESONA_CHECK(eps > 0) << "AdamW: eps must be positive, got " << eps;
  RESONA_CHECK(weight_decay >= 0) << "AdamW: weight_decay must be >= 0, got " << weight_decay;
}

AdamW::AdamW(NamedTensors params, const AdamWConfig& cfg) : params_(std::move(params)), cfg_(cfg) {
  cfg_.validate();
  std::unordered_set<std::string> names;
  std::unordered_set<const TensorImpl*> impls;
  slots_.reserve(params_.size());
  for (auto& [name, p] : params_) {
    check_param("AdamW", name, p);
    RESONA_CHECK(names.insert(name).second)
        << "AdamW: parameter name '" << name << "' appears twice";
    RESONA_CHECK(impls.insert(p.impl()).second)
        << "AdamW: parameter '" << name << "' is the same tensor as an earlier one";
    Slot s;
    s.exp_avg = zeros(p.shape(), p.dtype());
    s.exp_avg_sq = zeros(p.shape(), p.dtype());
    s.decay = !cfg_.decay_only_matrices || p.dim() >= 2;
    slots_.push_back(std::move(s));
  }
}

void AdamW::set_lr(double lr) {
  RESONA_CHECK(lr >= 0 && std::isfinite(lr)) << "AdamW: lr must be finite and >= 0, got " << lr;
  cfg_.lr = lr;
}

void AdamW::step() {
  ++step_;
  const double t = static_cast<double>(step_);
  const double bc1 = 1.0 - std::pow(cfg_.beta1, t);
  const double bc2 = 1.0 - std::pow(cfg_.beta2, t);
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& [name, p] = params_[i];
    check_param("AdamW", name, p);
    Tensor g = readable_grad("AdamW", name, p);
    if (!g.defined()) continue;
    Slot& s = slots_[i];
    const double wd = s.decay ? cfg_.weight_decay : 0.0;
    if (p.dtype() == DType::kFloat32) {
      adamw_update<float>(p.data<float>(), g.data<float>(), s.exp_avg.data<float>(),
                          s.exp_avg_sq.data<float>(), p.numel(), cfg_.lr, wd, cfg_.beta1,
                          cfg_.beta2, cfg_.eps, bc1, bc2);
    } else if (p.dtype() == DType::kFloat64) {
      adamw_update<double>(p.data<double>(), g.data<double>(), s.exp_avg.data<double>(),
                           s.exp_avg_sq.data<double>(), p.numel(), cfg_.lr, wd, cfg_.beta1,
                           cfg_.beta2, cfg_.eps, bc1, bc2);
    } else {
      RESONA_FAIL() << "AdamW: no update for " << p.describe();
    }
  }
}

void AdamW::zero_grad() {
  std::vector<Tensor> ps;
  ps.reserve(params_.size());
  for (auto& [name, p] : params_) ps.push_back(p);
  train::zero_grad(ps);
}

NamedTensors AdamW::named_state() const {
  NamedTensors out;
  out.reserve(2 * params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back(params_[i].first + ".exp_avg", slots_[i].exp_avg);
    out.emplace_back(params_[i].first + ".exp_avg_sq", slots_[i].exp_avg_sq);
  }
  return out;
}

void AdamW::load_state(const NamedTensors& state, int64_t step_count) {
  RESONA_CHECK(step_count >= 0) << "AdamW.load_state: step count must be >= 0, got " << step_count;
  std::unordered_map<std::string, const Tensor*> by_name;
  for (const auto& [name, t] : state) {
    RESONA_CHECK(by_name.emplace(name, &t).second)
        << "AdamW.load_state: '" << name << "' appears twice";
  }
  RESONA_CHECK(state.size() == 2 * params_.size())
      << "AdamW.load_state: " << state.size() << " tensors for " << params_.size()
      << " parameters (expected " << 2 * params_.size() << ")";
  // Validate everything first, so that a bad state is refused before anything changes.
  std::vector<std::pair<Tensor*, const Tensor*>> copies;
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& [name, p] = params_[i];
    for (auto [suffix, dst] : {std::pair{".exp_avg", &slots_[i].exp_avg},
                               std::pair{".exp_avg_sq", &slots_[i].exp_avg_sq}}) {
      const std::string key = name + suffix;
      auto it = by_name.find(key);
      RESONA_CHECK(it != by_name.end()) << "AdamW.load_state: missing '" << key << "'";
      const Tensor& src = *it->second;
      RESONA_CHECK(src.defined() && src.shape() == p.shape())
          << "AdamW.load_state: '" << key << "' is "
          << (src.defined() ? src.describe() : std::string("undefined")) << ", expected shape "
          << shape_str(p.shape());
      copies.emplace_back(dst, &src);
    }
  }
  NoGradGuard no_grad;
  for (auto& [dst, src] : copies) dst->copy_(*src);
  step_ = step_count;
}

void zero_grad(const std::vector<Tensor>& params) {
  NoGradGuard no_grad;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (g.defined()) g.zero_();
  }
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  RESONA_CHECK(max_norm > 0) << "clip_grad_norm: max_norm must be positive, got " << max_norm;
  double sq = 0.0;
  std::vector<Tensor> grads;
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    const std::string name = p.name().empty() ? "#" + std::to_string(i) : p.name();
    Tensor g = readable_grad("clip_grad_norm", name, p);
    if (!g.defined()) continue;
    if (g.dtype() == DType::kFloat32) {
      sq += sum_squares(g.data<float>(), g.numel());
    } else if (g.dtype() == DType::kFloat64) {
      sq += sum_squares(g.data<double>(), g.numel());
    } else {
      RESONA_FAIL() << "clip_grad_norm: gradient of '" << name << "' is " << g.describe()
                    << "; float32/float64 only";
    }
    grads.push_back(p.grad());
  }
  const double norm = std::sqrt(sq);
  if (std::isfinite(norm) && norm > max_norm) {
    const double scale = max_norm / (norm + 1e-6);
    NoGradGuard no_grad;
    for (Tensor& g : grads) mul_(g, scale);
  }
  return norm;
}

double clip_grad_norm(const NamedTensors& params, double max_norm) {
  std::vector<Tensor> ps;
  ps.reserve(params.size());
  for (const auto& [name, p] : params) ps.push_back(p);
  return clip_grad_norm(ps, max_norm);
}

}  // namespace resona::train
