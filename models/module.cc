#include "models/module.h"

#include <algorithm>

#include "autograd/grad_mode.h"
#include "ops/elementwise.h"
#include "ops/index.h"
#include "ops/matmul.h"
#include "ops/norm.h"

namespace resona::models {

// ---- Module ----

void Module::check_new_name(const std::string& name) const {
  RESONA_CHECK(!name.empty() && name.find('.') == std::string::npos)
      << "module: name '" << name << "' must be non-empty and contain no dot";
  for (const Entry& e : entries_) {
    RESONA_CHECK(e.name != name) << "module: '" << name << "' is registered twice";
  }
}

Tensor Module::register_parameter(const std::string& name, Tensor t) {
  check_new_name(name);
  RESONA_CHECK(t.defined()) << "module: parameter '" << name << "' is an undefined tensor";
  RESONA_CHECK(is_floating(t.dtype()))
      << "module: parameter '" << name << "' must be floating point, got " << t.describe();
  RESONA_CHECK(t.is_leaf()) << "module: parameter '" << name << "' must be a leaf tensor, got "
                            << t.describe() << " with a grad_fn";
  t.set_requires_grad(true);
  entries_.push_back({name, t, nullptr});
  return t;
}

void Module::add_child(const std::string& name, Module* m) {
  check_new_name(name);
  RESONA_CHECK(m != nullptr && m != this) << "module: child '" << name << "' is invalid";
  entries_.push_back({name, Tensor(), m});
  children_.emplace_back(name, m);
}

void Module::collect(const std::string& prefix, NamedTensors& out,
                     std::vector<const TensorImpl*>& seen) const {
  for (const Entry& e : entries_) {
    std::string full = prefix.empty() ? e.name : prefix + "." + e.name;
    if (e.child) {
      e.child->collect(full, out, seen);
    } else if (std::find(seen.begin(), seen.end(), e.param.impl()) == seen.end()) {
      seen.push_back(e.param.impl());
      out.emplace_back(std::move(full), e.param);
    }
  }
}

NamedTensors Module::named_parameters(const std::string& prefix) const {
  NamedTensors out;
  std::vector<const TensorImpl*> seen;
  collect(prefix, out, seen);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

Tensor Module::parameter(const std::string& dotted_name) const {
  for (auto& [name, t] : named_parameters()) {
    if (name == dotted_name) return t;
  }
  RESONA_FAIL() << "module: no parameter named '" << dotted_name << "'";
  return Tensor();
}

void Module::name_parameters(const std::string& prefix) {
  for (auto& [name, t] : named_parameters(prefix)) t.set_name(name);
}

void Module::set_training(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->set_training(on);
}

// ---- initialisation ----

namespace {
void check_initialisable(const char* what, const Tensor& t) {
  RESONA_CHECK(t.defined()) << what << ": undefined tensor";
  RESONA_CHECK(t.device().is_cpu() &&
               (t.dtype() == DType::kFloat32 || t.dtype() == DType::kFloat64))
      << what << ": " << t.describe() << " must be a CPU float32/float64 tensor";
}
}  // namespace

void init_normal(Tensor& t, Generator& gen, double std, double mean) {
  check_initialisable("init_normal", t);
  Tensor values = gen.normal(t.shape(), mean, std, t.dtype());
  NoGradGuard no_grad;
  t.copy_(values);
}

void init_zeros(Tensor& t) {
  check_initialisable("init_zeros", t);
  NoGradGuard no_grad;
  t.zero_();
}

void init_ones(Tensor& t) {
  check_initialisable("init_ones", t);
  NoGradGuard no_grad;
  t.fill_(1.0);
}

// ---- layers ----

Linear::Linear(int64_t in_features, int64_t out_features, Generator& gen, LinearOptions opt)
    : in_(in_features), out_(out_features) {
  RESONA_CHECK(in_features > 0 && out_features > 0)
      << "Linear: sizes must be positive, got in=" << in_features << " out=" << out_features;
  weight_ = register_parameter("weight", empty({out_features, in_features}, opt.dtype));
  init_normal(weight_, gen, opt.init_std);
  if (opt.bias) {
    bias_ = register_parameter("bias", empty({out_features}, opt.dtype));
    init_zeros(bias_);
  }
}

Tensor Linear::forward(const Tensor& x) const {
  RESONA_CHECK(x.dim() >= 1 && x.size(-1) == in_)
      << "Linear(" << in_ << " -> " << out_ << "): input " << x.describe() << " must end in "
      << in_;
  return linear(x, weight_, bias_);
}

Embedding::Embedding(int64_t num_embeddings, int64_t dim, Generator& gen, double init_std,
                     DType dtype) {
  RESONA_CHECK(num_embeddings > 0 && dim > 0)
      << "Embedding: sizes must be positive, got " << num_embeddings << " x " << dim;
  weight_ = register_parameter("weight", empty({num_embeddings, dim}, dtype));
  init_normal(weight_, gen, init_std);
}

Tensor Embedding::forward(const Tensor& ids) const { return embedding(weight_, ids); }

RMSNorm::RMSNorm(int64_t dim, double eps, DType dtype) : eps_(eps) {
  RESONA_CHECK(dim > 0) << "RMSNorm: dim must be positive, got " << dim;
  RESONA_CHECK(eps > 0) << "RMSNorm: eps must be positive, got " << eps;
  weight_ = register_parameter("weight", empty({dim}, dtype));
  init_ones(weight_);
}

Tensor RMSNorm::forward(const Tensor& x) const { return rms_norm(x, weight_, eps_); }

void Module::to(Device device) {
  for (auto& [name, p] : named_parameters()) move_to_device_in_place(p, device);
}

// ---- mixed precision ----

namespace {
// Converts a leaf parameter's data to `dtype` in place (as core's move_to_device_in_place
// moves it): every handle to it, the layer's member included, sees the new storage and
// dtype. Its gradient, if any, is dropped.
void convert_in_place(const Tensor& t, DType dtype) {
  RESONA_CHECK(t.is_leaf()) << "MixedPrecision: parameter " << t.describe()
                            << " has autograd history";
  if (t.dtype() == dtype) return;
  Tensor converted = empty(t.shape(), dtype, t.device());
  copy_into(converted, t);
  TensorImpl* impl = t.impl();
  impl->storage_ = converted.storage();
  impl->strides_ = converted.strides();
  impl->offset_ = 0;
  impl->dtype_ = dtype;
  if (impl->autograd_) impl->autograd_->grad.reset();
}
}  // namespace

MixedPrecision::MixedPrecision(Module& model, DType compute_dtype) : compute_dtype_(compute_dtype) {
  RESONA_CHECK(is_floating(compute_dtype))
      << "MixedPrecision: the compute dtype must be floating point, got "
      << dtype_name(compute_dtype);
  compute_ = model.named_parameters();
  for (const auto& [name, p] : compute_) {
    RESONA_CHECK(p.dtype() == DType::kFloat32)
        << "MixedPrecision: master weights are float32, but parameter " << p.describe() << " is "
        << dtype_name(p.dtype());
    active_ = active_ || p.dtype() != compute_dtype;
  }
  if (!active_) {
    masters_ = compute_;
    return;
  }
  for (const auto& [name, p] : compute_) {
    Tensor master = empty(p.shape(), DType::kFloat32, p.device());
    copy_into(master, p);
    master.set_requires_grad(true);
    master.set_name(p.name().empty() ? name : p.name());
    masters_.emplace_back(name, master);
    convert_in_place(p, compute_dtype);
  }
}

void MixedPrecision::accumulate_grads() {
  if (!active_) return;
  NoGradGuard no_grad;
  for (size_t i = 0; i < compute_.size(); ++i) {
    Tensor& p = compute_[i].second;
    Tensor g = p.grad();
    if (!g.defined()) continue;
    Tensor& master = masters_[i].second;
    Tensor g32 = empty(g.shape(), DType::kFloat32, g.device());
    copy_into(g32, g);
    Tensor mg = master.grad();
    if (mg.defined()) {
      mg.copy_(mg + g32);
    } else {
      master.set_grad(g32);
    }
    p.set_grad(Tensor());
  }
}

void MixedPrecision::refresh() {
  if (!active_) return;
  for (size_t i = 0; i < compute_.size(); ++i) copy_into(compute_[i].second, masters_[i].second);
}

}  // namespace resona::models
