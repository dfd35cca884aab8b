#include "core/tensor.h"

#include <cstring>
#include <sstream>

#include "core/dispatch.h"
#include "core/strided_loop.h"

namespace resona {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat64:
      return "float64";
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kInt32:
      return "int32";
    case DType::kInt64:
      return "int64";
  }
  return "unknown";
}

DType dtype_from_name(const std::string& name) {
  for (DType t :
       {DType::kFloat32, DType::kFloat64, DType::kBFloat16, DType::kInt32, DType::kInt64}) {
    if (name == dtype_name(t)) return t;
  }
  RESONA_FAIL() << "unknown dtype '" << name
                << "' (expected float32, float64, bfloat16, int32 or int64)";
  return DType::kFloat32;
}

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}

namespace detail {
std::string shape_mismatch_message(const char* name, const std::string& got,
                                   const std::string& expected) {
  return std::string(name) + " has shape " + got + ", expected " + expected;
}
}  // namespace detail

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int i = static_cast<int>(s.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= std::max<int64_t>(s[i], 1);
  }
  return st;
}

int64_t wrap_dim(const char* op, int64_t dim, int64_t ndim) {
  int64_t lo = ndim == 0 ? -1 : -ndim, hi = ndim == 0 ? 0 : ndim - 1;
  RESONA_CHECK(dim >= lo && dim <= hi)
      << op << ": dim " << dim << " out of range for a " << ndim << "-D tensor";
  return dim < 0 ? dim + std::max<int64_t>(ndim, 1) : dim;
}

int64_t wrap_dim(const char* op, int64_t dim, const Tensor& x, int64_t ndim) {
  if (ndim < 0) ndim = x.dim();
  const int64_t n = std::max<int64_t>(ndim, 1);              // a 0-D tensor takes dim 0 or -1
  if (dim >= -n && dim < n) return dim < 0 ? dim + n : dim;  // no message built
  return wrap_dim((std::string(op) + " of " + x.describe()).c_str(), dim, ndim);
}

int64_t Tensor::size(int64_t d) const {
  // wrap_dim lets a 0-D tensor take dim 0 (for reductions); it has no size to read.
  RESONA_CHECK(dim() > 0) << "size(" << d << ") of 0-D tensor " << describe();
  return shape()[wrap_dim(("size() of " + describe()).c_str(), d, dim())];
}

int64_t Tensor::stride(int64_t d) const {
  RESONA_CHECK(dim() > 0) << "stride(" << d << ") of 0-D tensor " << describe();
  return strides()[wrap_dim(("stride() of " + describe()).c_str(), d, dim())];
}

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;  // no element to be out of place
  const Shape& sh = shape();
  const Shape& st = strides();
  int64_t expected = 1;
  for (int i = static_cast<int>(sh.size()) - 1; i >= 0; --i) {
    if (sh[i] == 1) continue;
    if (st[i] != expected) return false;
    expected *= sh[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  char* base = static_cast<char*>(storage()->data());
  return base == nullptr ? nullptr : base + offset() * static_cast<int64_t>(element_size());
}

std::string Tensor::describe() const {
  if (!defined()) return "<undefined tensor>";
  std::ostringstream os;
  if (!impl_->name_.empty()) os << impl_->name_ << " ";
  os << shape_str(shape()) << " " << dtype_name(dtype()) << " " << device().str();
  return os.str();
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  Tensor host = device().is_cpu() ? *this : copy_to(*this, dtype(), Device::cpu());
  std::vector<T> out(host.numel());
  if (out.empty()) return out;
  Tensor dst = from_blob(out.data(), host.shape(), DTypeOf<T>::value, Device::cpu());
  copy_into(dst, host);
  return out;
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int32_t> Tensor::to_vector<int32_t>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;
template std::vector<bfloat16> Tensor::to_vector<bfloat16>() const;

double Tensor::item() const {
  RESONA_CHECK(numel() == 1) << "item() needs a one-element tensor, got " << describe();
  return to_vector<double>()[0];
}

int64_t Tensor::item_int() const {
  RESONA_CHECK(numel() == 1) << "item_int() needs a one-element tensor, got " << describe();
  return to_vector<int64_t>()[0];
}

// ---- autograd fields ----

AutogradMeta& Tensor::autograd_meta() {
  TensorImpl* t = checked();
  if (!t->autograd_) t->autograd_ = std::make_unique<AutogradMeta>();
  return *t->autograd_;
}

bool Tensor::requires_grad() const {
  const AutogradMeta* m = autograd_meta_if_any();
  return m != nullptr && (m->requires_grad || m->grad_fn != nullptr);
}

Tensor& Tensor::set_requires_grad(bool r) {
  RESONA_CHECK(!r || is_floating(dtype()))
      << "only floating-point tensors can require grad, got " << describe();
  RESONA_CHECK(is_leaf()) << "set_requires_grad on a non-leaf tensor " << describe()
                          << " (use detach() first)";
  autograd_meta().requires_grad = r;
  return *this;
}

bool Tensor::is_leaf() const {
  const AutogradMeta* m = autograd_meta_if_any();
  return m == nullptr || m->grad_fn == nullptr;
}

Tensor Tensor::grad() const {
  const AutogradMeta* m = autograd_meta_if_any();
  return (m && m->grad) ? Tensor(m->grad) : Tensor();
}

void Tensor::set_grad(const Tensor& g) {
  if (g.defined()) {
    RESONA_CHECK(g.shape() == shape() && g.dtype() == dtype() && g.device() == device())
        << "set_grad: gradient " << g.describe() << " does not match " << describe();
  }
  autograd_meta().grad = g.impl_ptr();
}

const std::shared_ptr<autograd::Node>& Tensor::grad_fn() const {
  static const std::shared_ptr<autograd::Node> none;
  const AutogradMeta* m = autograd_meta_if_any();
  return m ? m->grad_fn : none;
}

int Tensor::output_nr() const {
  const AutogradMeta* m = autograd_meta_if_any();
  return m ? m->output_nr : 0;
}

Tensor Tensor::detach() const {
  const TensorImpl* t = checked();
  auto impl =
      std::make_shared<TensorImpl>(t->storage_, t->shape_, t->strides_, t->offset_, t->dtype_);
  impl->name_ = t->name_;
  return Tensor(std::move(impl));
}

// ---- construction ----

Tensor empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) {
    RESONA_CHECK(d >= 0) << "negative dimension in shape " << shape_str(shape);
  }
  auto storage = std::make_shared<StorageImpl>(shape_numel(shape) * dtype_size(dtype), device);
  return Tensor(
      std::make_shared<TensorImpl>(std::move(storage), shape, contiguous_strides(shape), 0, dtype));
}

Tensor zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  backend_for(device).memset_zero(t.raw_data(), t.nbytes(), device.index);
  return t;
}

Tensor full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor host = empty(shape, dtype, Device::cpu());
  dispatch_all("full", dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T v = convert<T>(value);
    T* p = host.data<T>();
    for (int64_t i = 0, n = host.numel(); i < n; ++i) p[i] = v;
  });
  return device.is_cpu() ? host : copy_to(host, dtype, device);
}

Tensor ones(const Shape& shape, DType dtype, Device device) {
  return full(shape, 1.0, dtype, device);
}

Tensor scalar_tensor(double value, DType dtype, Device device) {
  return full({}, value, dtype, device);
}

Tensor arange(int64_t n, DType dtype, Device device) {
  RESONA_CHECK(n >= 0) << "arange(" << n << "): the length must be non-negative";
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<double>(i);
  return copy_to(from_vector(v, {n}), dtype, device);
}

template <class T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape) {
  RESONA_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape))
      << "from_vector: " << values.size() << " values for shape " << shape_str(shape);
  Tensor t = empty(shape, DTypeOf<T>::value);
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(T));
  return t;
}
template Tensor from_vector<float>(const std::vector<float>&, const Shape&);
template Tensor from_vector<double>(const std::vector<double>&, const Shape&);
template Tensor from_vector<int32_t>(const std::vector<int32_t>&, const Shape&);
template Tensor from_vector<int64_t>(const std::vector<int64_t>&, const Shape&);
template Tensor from_vector<bfloat16>(const std::vector<bfloat16>&, const Shape&);

Tensor from_vector_as(const std::vector<double>& values, const Shape& shape, DType dtype) {
  return copy_to(from_vector(values, shape), dtype, Device::cpu());
}

Tensor copy_to(const Tensor& src, DType dtype, Device device) {
  if (src.dtype() == dtype && src.device() == device) return src;
  Tensor out = empty(src.shape(), dtype, device);
  if (src.device() == device || src.dtype() == dtype) {
    copy_into(out, src);
    return out;
  }
  // Convert on whichever side is the CPU, then move.
  if (src.device().is_cpu()) {
    copy_into(out, copy_to(src, dtype, src.device()));
  } else {
    copy_into(out, copy_to(src, src.dtype(), device));
  }
  return out;
}

Tensor empty_like(const Tensor& t) { return empty(t.shape(), t.dtype(), t.device()); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), t.dtype(), t.device()); }

Tensor make_view(const Tensor& base, Shape shape, Shape strides, int64_t offset) {
  RESONA_CHECK(shape.size() == strides.size())
      << "make_view: shape " << shape_str(shape) << " and strides " << shape_str(strides)
      << " differ in rank";
  int64_t lo = offset, hi = offset;
  bool empty_view = false;
  for (size_t d = 0; d < shape.size(); ++d) {
    RESONA_CHECK(shape[d] >= 0) << "make_view: negative size in " << shape_str(shape);
    if (shape[d] == 0) empty_view = true;
    int64_t span = (shape[d] - 1) * strides[d];
    (span < 0 ? lo : hi) += span;
  }
  const int64_t capacity =
      static_cast<int64_t>(base.storage()->nbytes() / dtype_size(base.dtype()));
  RESONA_CHECK(empty_view || (lo >= 0 && hi < capacity))
      << "make_view: view " << shape_str(shape) << " strides " << shape_str(strides) << " offset "
      << offset << " reaches outside the storage of " << base.describe() << " (" << capacity
      << " elements)";
  auto impl = std::make_shared<TensorImpl>(base.storage(), std::move(shape), std::move(strides),
                                           offset, base.dtype());
  return Tensor(std::move(impl));
}

void move_to_device_in_place(const Tensor& t, Device device) {
  RESONA_CHECK(t.is_leaf()) << "move_to_device_in_place: " << t.describe()
                            << " has autograd history";
  if (t.device() == device) return;
  Tensor moved = copy_to(t.detach(), t.dtype(), device);  // contiguous on `device`
  TensorImpl* impl = t.impl();
  impl->storage_ = moved.storage();
  impl->strides_ = contiguous_strides(impl->shape_);
  impl->offset_ = 0;
  if (impl->autograd_) impl->autograd_->grad.reset();
}

Tensor from_blob(void* data, const Shape& shape, DType dtype, Device device,
                 std::function<void()> release) {
  size_t nbytes = shape_numel(shape) * dtype_size(dtype);
  auto storage = std::make_shared<StorageImpl>(
      data, nbytes, device, release ? std::move(release) : [] {});
  return Tensor(
      std::make_shared<TensorImpl>(std::move(storage), shape, contiguous_strides(shape), 0, dtype));
}

void copy_into(const Tensor& dst, const Tensor& src) {
  RESONA_CHECK(dst.shape() == src.shape())
      << "copy: destination " << dst.describe() << " and source " << src.describe()
      << " differ in shape";
  if (dst.numel() == 0) return;
  if (dst.device().is_cpu() && src.device().is_cpu()) {
    dispatch_all("copy", dst.dtype(), [&](auto dtag) {
      using D = typename decltype(dtag)::type;
      dispatch_all("copy", src.dtype(), [&](auto stag) {
        using S = typename decltype(stag)::type;
        D* d = static_cast<D*>(dst.raw_data());
        const S* s = static_cast<const S*>(src.raw_data());
        strided_loop<2>(
            dst.shape(), {dst.strides(), src.strides()},
            [&](const std::array<int64_t, 2>& off, int64_t n, const std::array<int64_t, 2>& step) {
              D* dp = d + off[0];
              const S* sp = s + off[1];
              if (step[0] == 1 && step[1] == 1) {
                for (int64_t i = 0; i < n; ++i) dp[i] = convert<D>(sp[i]);
              } else {
                for (int64_t i = 0; i < n; ++i) dp[i * step[0]] = convert<D>(sp[i * step[1]]);
              }
            });
      });
    });
    return;
  }
  if (dst.device() == src.device()) {  // one device other than the CPU: its kernel
    const char* err =
        backend_for(dst.device())
            .strided_copy(dst.shape(), dst.raw_data(), dst.dtype(), dst.strides(), src.raw_data(),
                          src.dtype(), src.strides(), dst.device().index);
    RESONA_CHECK(err == nullptr) << "copy from " << src.describe() << " into " << dst.describe()
                                 << ": " << err;
    return;
  }
  // Across devices the backends move contiguous bytes of one dtype: convert and compact
  // on the host side, and on the device side through a contiguous temporary there.
  if (src.device().is_cpu() && (!src.is_contiguous() || src.dtype() != dst.dtype())) {
    Tensor staged = empty(src.shape(), dst.dtype());
    copy_into(staged, src);
    copy_into(dst, staged);
    return;
  }
  if (!dst.device().is_cpu() && !dst.is_contiguous()) {
    Tensor staged = empty(dst.shape(), dst.dtype(), dst.device());
    copy_into(staged, src);
    copy_into(dst, staged);
    return;
  }
  if (!src.device().is_cpu() && !src.is_contiguous()) {
    Tensor staged = empty(src.shape(), src.dtype(), src.device());
    copy_into(staged, src);
    copy_into(dst, staged);
    return;
  }
  if (src.dtype() != dst.dtype() || !dst.is_contiguous()) {
    // To the host: move src's bytes, then convert and scatter there. Between two
    // devices: convert on the source device, then move.
    const bool to_host = dst.device().is_cpu();
    Tensor staged = empty(src.shape(), to_host ? src.dtype() : dst.dtype(),
                          to_host ? Device::cpu() : src.device());
    copy_into(staged, src);
    copy_into(dst, staged);
    return;
  }
  Device dev = dst.device().is_cpu() ? src.device() : dst.device();
  backend_for(dev).copy(dst.raw_data(), dst.device(), src.raw_data(), src.device(), dst.nbytes());
}

void check_same_device(const char* op, std::initializer_list<const Tensor*> ts) {
  const Tensor* first = nullptr;
  for (const Tensor* t : ts) {
    if (!t->defined()) continue;
    if (first == nullptr) {
      first = t;
      continue;
    }
    RESONA_CHECK(t->device() == first->device())
        << op << ": tensors on different devices: " << first->describe() << " and "
        << t->describe();
  }
}

void check_same_dtype(const char* op, std::initializer_list<const Tensor*> ts) {
  const Tensor* first = nullptr;
  for (const Tensor* t : ts) {
    if (!t->defined()) continue;
    if (first == nullptr) {
      first = t;
      continue;
    }
    RESONA_CHECK(t->dtype() == first->dtype())
        << op << ": dtype mismatch: " << first->describe() << " and " << t->describe();
  }
}

void check_floating(const char* op, const Tensor& t) {
  RESONA_CHECK(is_floating(t.dtype()))
      << op << ": expected a floating-point tensor, got " << t.describe();
}

}  // namespace resona
