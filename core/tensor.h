// Tensor: a strided view (shape, strides in elements, offset in elements) of a Storage,
// plus the autograd fields. Tensor is a cheap handle (shared_ptr to TensorImpl); copying
// a Tensor aliases it. Views share storage; contiguous() copies only when needed.
//
// Differentiable methods (reshape, permute, slice, ..., and the arithmetic operators)
// are declared here and defined in ops/, which records them on the autograd graph.
// core itself only builds raw views (make_view) and copies bytes.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/dtype.h"
#include "core/storage.h"

namespace resona {

namespace autograd {
class Node;
}

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

class Tensor;

struct AutogradMeta {
  bool requires_grad = false;
  std::shared_ptr<autograd::Node> grad_fn;  // null for leaves
  int output_nr = 0;                        // which output of grad_fn this is
  std::shared_ptr<class TensorImpl> grad;   // accumulated gradient of a leaf
  // Run after a leaf's gradient is accumulated during backward (used to start
  // gradient communication while backward continues).
  std::vector<std::function<void(Tensor&)>> post_accumulate_hooks;
};

class TensorImpl {
 public:
  TensorImpl(Storage storage, Shape shape, Shape strides, int64_t offset, DType dtype)
      : storage_(std::move(storage)),
        shape_(std::move(shape)),
        strides_(std::move(strides)),
        offset_(offset),
        dtype_(dtype) {}

  Storage storage_;
  Shape shape_;
  Shape strides_;
  int64_t offset_ = 0;
  DType dtype_;
  std::unique_ptr<AutogradMeta> autograd_;  // created on first use
  std::string name_;                        // optional, for error messages and parameters
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- metadata ----
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return checked()->shape_; }
  const Shape& strides() const { return checked()->strides_; }
  int64_t offset() const { return checked()->offset_; }
  int64_t dim() const { return static_cast<int64_t>(shape().size()); }
  // Negative dims count from the end; out of range throws naming the tensor.
  int64_t size(int64_t d) const;
  int64_t stride(int64_t d) const;
  int64_t numel() const { return shape_numel(shape()); }
  DType dtype() const { return checked()->dtype_; }
  Device device() const { return checked()->storage_->device(); }
  size_t element_size() const { return dtype_size(dtype()); }
  size_t nbytes() const { return numel() * element_size(); }
  bool is_contiguous() const;
  const Storage& storage() const { return checked()->storage_; }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool is_same(const Tensor& o) const { return impl_ == o.impl_; }
  bool shares_storage(const Tensor& o) const { return storage().get() == o.storage().get(); }
  // "x [2, 3] float32 cpu" (with the name if one was set), for error messages.
  std::string describe() const;
  const std::string& name() const { return checked()->name_; }
  Tensor& set_name(std::string n) {
    checked()->name_ = std::move(n);
    return *this;
  }

  // Pointer to element [0, ..., 0] (storage + offset). Checks the element type.
  template <class T>
  T* data() const {
    RESONA_CHECK(DTypeOf<T>::value == dtype())
        << "data<" << dtype_name(DTypeOf<T>::value) << ">() on " << describe();
    return static_cast<T*>(raw_data());
  }
  void* raw_data() const;

  // Single element as double/int64 (copies to host if needed). Tensor must have one element.
  double item() const;
  int64_t item_int() const;
  // Copies all elements to a host vector (any device, any strides), converting to T.
  template <class T>
  std::vector<T> to_vector() const;

  // ---- autograd ----
  bool requires_grad() const;
  Tensor& set_requires_grad(bool r);
  bool is_leaf() const;
  Tensor grad() const;  // undefined if none accumulated
  void set_grad(const Tensor& g);
  const std::shared_ptr<autograd::Node>& grad_fn() const;
  int output_nr() const;
  AutogradMeta& autograd_meta();  // creates it if needed
  const AutogradMeta* autograd_meta_if_any() const { return checked()->autograd_.get(); }
  // A new handle to the same data with no autograd history.
  Tensor detach() const;
  // Runs reverse-mode differentiation from this tensor (a scalar unless `grad` given).
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;

  // ---- differentiable views (defined in ops/view.cc) ----
  Tensor reshape(const Shape& shape) const;  // view when possible, else copy
  Tensor view(const Shape& shape) const;     // must be expressible as a view
  Tensor permute(const Shape& dims) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor select(int64_t dim, int64_t index) const;  // slice + squeeze
  Tensor expand(const Shape& shape) const;
  Tensor squeeze(int64_t dim) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;
  Tensor contiguous() const;  // itself when already contiguous
  Tensor to(DType dtype) const;
  Tensor to(Device device) const;
  Tensor clone() const;

  // ---- in-place (refused on tensors that need grad while grad mode is on) ----
  Tensor& fill_(double value);
  Tensor& zero_();
  Tensor& copy_(const Tensor& src);  // src broadcast to this shape, any dtype/device

 private:
  TensorImpl* checked() const {
    RESONA_CHECK(impl_ != nullptr) << "use of an undefined tensor";
    return impl_.get();
  }
  std::shared_ptr<TensorImpl> impl_;
};

// ---- construction (core/tensor.cc) ----
Tensor empty(const Shape& shape, DType dtype = DType::kFloat32, Device device = Device::cpu());
Tensor zeros(const Shape& shape, DType dtype = DType::kFloat32, Device device = Device::cpu());
Tensor ones(const Shape& shape, DType dtype = DType::kFloat32, Device device = Device::cpu());
Tensor full(const Shape& shape, double value, DType dtype = DType::kFloat32,
            Device device = Device::cpu());
Tensor scalar_tensor(double value, DType dtype = DType::kFloat32, Device device = Device::cpu());
Tensor arange(int64_t n, DType dtype = DType::kInt64, Device device = Device::cpu());
// Copies host values into a new CPU tensor of the given shape (numel must match).
template <class T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape);
Tensor from_vector_as(const std::vector<double>& values, const Shape& shape, DType dtype);
Tensor empty_like(const Tensor& t);
Tensor zeros_like(const Tensor& t);

// A raw view of `base`'s storage with new geometry (no autograd record). Checks that
// the view stays inside the storage.
Tensor make_view(const Tensor& base, Shape shape, Shape strides, int64_t offset);
// Elementwise copy with dtype conversion and any strides, same shape, any devices: on one
// device through its backend's strided_copy (core/storage.h); across devices the bytes
// move contiguously, converted and compacted on the host or through a device temporary.
void copy_into(const Tensor& dst, const Tensor& src);

// A copy of `src` with the given dtype on the given device (`src` itself when both
// already match). Not recorded by autograd; ops/shape.h's cast and to_device are.
Tensor copy_to(const Tensor& src, DType dtype, Device device);

// Moves a leaf tensor's data to `device` in place: every handle to it (a module's
// parameter and the layer's own member alike) sees the new storage. Its gradient, if
// any, is dropped. Refused for tensors with autograd history.
void move_to_device_in_place(const Tensor& t, Device device);

// Wraps memory owned elsewhere as a tensor (e.g. a memory-mapped file).
Tensor from_blob(void* data, const Shape& shape, DType dtype, Device device,
                 std::function<void()> release = {});

// Operators (defined in ops/): broadcasting arithmetic, recorded by autograd.
Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a);
Tensor operator+(const Tensor& a, double b);
Tensor operator-(const Tensor& a, double b);
Tensor operator*(const Tensor& a, double b);
Tensor operator/(const Tensor& a, double b);
Tensor operator*(double a, const Tensor& b);

// Checks shared by ops: same device and dtype for all, naming the op and tensors.
void check_same_device(const char* op, std::initializer_list<const Tensor*> ts);
void check_same_dtype(const char* op, std::initializer_list<const Tensor*> ts);
void check_floating(const char* op, const Tensor& t);
// Normalises a possibly negative dim against `ndim`, naming the op in the error.
int64_t wrap_dim(const char* op, int64_t dim, int64_t ndim);
// The same against x's rank (or `ndim` when given, e.g. x.dim() + 1 for unsqueeze),
// naming the op and the tensor: "slice of x [2, 3] float32 cpu: dim 5 out of range".
int64_t wrap_dim(const char* op, int64_t dim, const Tensor& x, int64_t ndim = -1);

}  // namespace resona
