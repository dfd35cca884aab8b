#include "train/optimizer.h"

#include <cmath>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "autograd/grad_mode.h"
#include "cuda/adamw.h"
#include "ops/device_util.h"
#include "ops/elementwise.h"

namespace resona::train {

namespace {

bool is_cpu_real(const Tensor& t) {
  return t.device().is_cpu() && (t.dtype() == DType::kFloat32 || t.dtype() == DType::kFloat64);
}

void check_param(const char* who, const std::string& name, const Tensor& p) {
  RESONA_CHECK(p.defined()) << who << ": parameter '" << name << "' is undefined";
  if (p.device().is_cuda()) {
    RESONA_CHECK(p.dtype() == DType::kFloat32)
        << who << ": CUDA parameter '" << name << "' (" << p.describe()
        << ") must be float32 (master weights; keep bfloat16 copies outside the optimizer)";
    RESONA_CHECK(p.is_contiguous())
        << who << ": parameter '" << name << "' (" << p.describe() << ") must be contiguous";
    return;
  }
  RESONA_CHECK(is_cpu_real(p)) << who << ": parameter '" << name << "' (" << p.describe()
                               << ") must be a CPU float32/float64 tensor";
  RESONA_CHECK(p.is_contiguous()) << who << ": parameter '" << name << "' (" << p.describe()
                                  << ") must be contiguous";
}

// A CUDA gradient the fused kernels can read in place: float32 or bfloat16, contiguous,
// p's shape, on `device`.
void check_cuda_grad(const char* who, const std::string& name, const Tensor& g, const Shape& shape,
                     Device device) {
  RESONA_CHECK(g.device() == device)
      << who << ": the gradient of '" << name << "' is " << g.describe() << ", expected it on "
      << device.str() << " (CUDA tensors of one call must share a GPU)";
  RESONA_CHECK(g.shape() == shape) << who << ": the gradient of '" << name << "' is "
                                   << g.describe() << ", expected shape " << shape_str(shape);
  RESONA_CHECK(g.dtype() == DType::kFloat32 || g.dtype() == DType::kBFloat16)
      << who << ": the gradient of '" << name << "' is " << g.describe()
      << "; CUDA gradients must be float32 or bfloat16";
  RESONA_CHECK(g.is_contiguous()) << who << ": the gradient of '" << name << "' (" << g.describe()
                                  << ") must be contiguous";
}

// Device copies of multi-tensor tables, reused while the same table comes back (the
// steady state of training: the same parameters and gradient buffers every step), so
// that a step uploads nothing. An upload is a synchronous copy; reuse costs a compare.
// The few most recent tables are kept (AdamW's and clip_grad_norm's differ).
class DeviceTables {
 public:
  const cuda::MultiTensorEntry* get(const std::vector<cuda::MultiTensorEntry>& table,
                                    Device device) {
    std::lock_guard<std::mutex> lock(mu_);
    const size_t bytes = table.size() * sizeof(cuda::MultiTensorEntry);
    ++clock_;
    for (Item& it : items_) {
      if (it.device == device && it.host.size() == table.size() &&
          std::memcmp(it.host.data(), table.data(), bytes) == 0) {
        it.last_use = clock_;
        return static_cast<const cuda::MultiTensorEntry*>(it.dev.raw_data());
      }
    }
    if (items_.size() >= kMaxItems) {
      size_t oldest = 0;
      for (size_t i = 1; i < items_.size(); ++i) {
        if (items_[i].last_use < items_[oldest].last_use) oldest = i;
      }
      items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(oldest));
    }
    const int64_t words = static_cast<int64_t>(bytes / 8);
    Item it{table, empty({words}, DType::kInt64, device), clock_, device};
    Tensor host = from_blob(const_cast<cuda::MultiTensorEntry*>(table.data()), {words},
                            DType::kInt64, Device::cpu());
    copy_into(it.dev, host);
    items_.push_back(std::move(it));
    return static_cast<const cuda::MultiTensorEntry*>(items_.back().dev.raw_data());
  }

 private:
  static constexpr size_t kMaxItems = 8;
  struct Item {
    std::vector<cuda::MultiTensorEntry> host;
    Tensor dev;
    uint64_t last_use = 0;
    Device device;
  };
  std::mutex mu_;
  std::vector<Item> items_;
  uint64_t clock_ = 0;
};

DeviceTables& device_tables() {
  static DeviceTables* t = new DeviceTables();  // never destroyed: outlives the backend
  return *t;
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
    s.exp_avg = zeros(p.shape(), p.dtype(), p.device());
    s.exp_avg_sq = zeros(p.shape(), p.dtype(), p.device());
    s.decay = (!cfg_.decay_only_matrices || p.dim() >= 2) &&
              (cfg_.decay_embeddings || name.find("embeddings") == std::string::npos);
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
  std::vector<cuda::MultiTensorEntry> table;  // CUDA parameters with a gradient
  Device cuda_device;
  std::string first_cuda;
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& [name, p] = params_[i];
    check_param("AdamW", name, p);
    if (p.device().is_cuda()) {
      if (first_cuda.empty()) {
        cuda_device = p.device();
        first_cuda = name;
      }
      RESONA_CHECK(p.device() == cuda_device)
          << "AdamW: parameter '" << name << "' (" << p.describe() << ") is on another GPU than '"
          << first_cuda << "'; one optimizer updates the parameters of one GPU";
      Tensor g = p.grad();
      if (!g.defined() || p.numel() == 0) continue;
      check_cuda_grad("AdamW", name, g, p.shape(), cuda_device);
      Slot& s = slots_[i];
      cuda::MultiTensorEntry e{};
      e.param = p.data<float>();
      e.grad = g.raw_data();
      e.exp_avg = s.exp_avg.data<float>();
      e.exp_avg_sq = s.exp_avg_sq.data<float>();
      e.n = p.numel();
      e.grad_bf16 = g.dtype() == DType::kBFloat16;
      e.decay = s.decay;
      table.push_back(e);
      continue;
    }
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
  if (!table.empty()) {
    cuda::AdamWStepParams sp{};
    sp.total_chunks = cuda::multi_tensor_layout(table.data(), static_cast<int64_t>(table.size()));
    sp.entries = device_tables().get(table, cuda_device);
    sp.count = static_cast<int64_t>(table.size());
    // The scalars as adamw_update forms them: in double, then rounded to float32.
    sp.b1 = static_cast<float>(cfg_.beta1);
    sp.one_b1 = static_cast<float>(1.0 - cfg_.beta1);
    sp.b2 = static_cast<float>(cfg_.beta2);
    sp.one_b2 = static_cast<float>(1.0 - cfg_.beta2);
    sp.step_size = static_cast<float>(cfg_.lr / bc1);
    sp.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
    sp.eps = static_cast<float>(cfg_.eps);
    sp.decay = static_cast<float>(1.0 - cfg_.lr * cfg_.weight_decay);
    const char* err = cuda::adamw_step_cuda(sp, launch_stream());
    RESONA_CHECK(err == nullptr) << "AdamW: CUDA step over " << table.size()
                                 << " parameters (first '" << first_cuda << "'): " << err;
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

namespace {

std::string param_label(const Tensor& p, size_t i) {
  return p.name().empty() ? "#" + std::to_string(i) : p.name();
}

// The first CUDA gradient's index, or -1 when every gradient is on the CPU.
int64_t first_cuda_grad(const std::vector<Tensor>& params) {
  for (size_t i = 0; i < params.size(); ++i) {
    Tensor g = params[i].defined() ? params[i].grad() : Tensor();
    if (g.defined() && g.device().is_cuda()) return static_cast<int64_t>(i);
  }
  return -1;
}

// CUDA: the norm as a float64 device scalar; gradients scaled on the device.
Tensor clip_grad_norm_cuda(const std::vector<Tensor>& params, double max_norm, int64_t first) {
  const Device device = params[first].grad().device();
  const std::string first_name = param_label(params[first], first);
  std::vector<cuda::MultiTensorEntry> table;
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    Tensor g = p.grad();
    if (!g.defined()) continue;
    const std::string name = param_label(p, i);
    RESONA_CHECK(g.device().is_cuda())
        << "clip_grad_norm: the gradient of '" << name << "' (" << g.describe()
        << ") is on the CPU but that of '" << first_name << "' is on CUDA; clip them separately";
    check_cuda_grad("clip_grad_norm", name, g, p.shape(), device);
    if (g.numel() == 0) continue;
    cuda::MultiTensorEntry e{};
    e.grad = g.raw_data();
    e.n = g.numel();
    e.grad_bf16 = g.dtype() == DType::kBFloat16;
    table.push_back(e);
  }
  cuda::GradClipParams cp{};
  cp.count = static_cast<int64_t>(table.size());
  cp.total_chunks = cuda::multi_tensor_layout(table.data(), cp.count);
  cp.entries = table.empty() ? nullptr : device_tables().get(table, device);
  Tensor partial = empty({std::max<int64_t>(cp.total_chunks, 1)}, DType::kFloat32, device);
  Tensor norm = empty({}, DType::kFloat64, device);
  Tensor scale = empty({1}, DType::kFloat32, device);
  cp.partial = partial.data<float>();
  cp.norm = norm.data<double>();
  cp.scale = scale.data<float>();
  cp.max_norm = max_norm;
  cp.apply = true;
  const char* err = cuda::grad_clip_cuda(cp, launch_stream());
  RESONA_CHECK(err == nullptr) << "clip_grad_norm: CUDA reduction over " << table.size()
                               << " gradients: " << err;
  return norm;
}

}  // namespace

Tensor clip_grad_norm_tensor(const std::vector<Tensor>& params, double max_norm) {
  RESONA_CHECK(max_norm > 0) << "clip_grad_norm: max_norm must be positive, got " << max_norm;
  const int64_t first = first_cuda_grad(params);
  if (first >= 0) return clip_grad_norm_cuda(params, max_norm, first);
  return scalar_tensor(clip_grad_norm(params, max_norm), DType::kFloat64);
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  RESONA_CHECK(max_norm > 0) << "clip_grad_norm: max_norm must be positive, got " << max_norm;
  const int64_t first = first_cuda_grad(params);
  if (first >= 0) return clip_grad_norm_cuda(params, max_norm, first).item();
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
