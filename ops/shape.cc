#include "ops/shape.h"

#include <algorithm>
#include <string>

#include "autograd/function.h"
#include "autograd/grad_mode.h"
#include "core/dispatch.h"
#include "core/strided_loop.h"
#include "ops/elementwise.h"

namespace resona {
namespace {

Shape infer_shape(const Tensor& x, const Shape& shape) {
  Shape out = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      RESONA_CHECK(infer < 0) << "reshape of " << x.describe() << " to " << shape_str(shape)
                              << ": only one dim may be -1";
      infer = static_cast<int64_t>(i);
    } else {
      RESONA_CHECK(out[i] >= 0) << "reshape of " << x.describe() << " to " << shape_str(shape)
                                << ": negative size";
      known *= out[i];
    }
  }
  if (infer >= 0) {
    RESONA_CHECK(known > 0 && x.numel() % known == 0)
        << "reshape of " << x.describe() << " to " << shape_str(shape)
        << ": the -1 dim cannot be inferred";
    out[infer] = x.numel() / known;
  }
  RESONA_CHECK(shape_numel(out) == x.numel())
      << "reshape of " << x.describe() << " (" << x.numel() << " elements) to " << shape_str(shape)
      << " (" << shape_numel(out) << " elements)";
  return out;
}

// Copies `src` (any strides and dtype, on its device) into a new contiguous tensor of
// `dtype` on the same device.
Tensor copy_contiguous(const Tensor& src, DType dtype) {
  Tensor out = empty(src.shape(), dtype, src.device());
  copy_into(out, src);
  return out;
}

struct ReshapeOp {
  static constexpr const char* kName = "reshape";
  struct Saved {
    Shape in_shape;
  };
  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, const Shape& shape, bool view_only) {
    Shape out = infer_shape(x, shape);
    ctx.saved.in_shape = x.shape();
    if (x.is_contiguous()) return make_view(x, out, contiguous_strides(out), x.offset());
    RESONA_CHECK(!view_only) << "view of non-contiguous " << x.describe() << " as "
                             << shape_str(shape) << " (use reshape(), which copies)";
    Tensor c = copy_contiguous(x, x.dtype());
    return make_view(c, out, contiguous_strides(out), 0);
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    return {reshape(d, ctx.saved.in_shape)};
  }
};

struct PermuteOp {
  static constexpr const char* kName = "permute";
  struct Saved {
    Shape inverse;
  };
  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, const Shape& dims) {
    const int64_t nd = x.dim();
    RESONA_CHECK(static_cast<int64_t>(dims.size()) == nd)
        << "permute of " << x.describe() << " with " << shape_str(dims) << ": need " << nd
        << " dims";
    Shape shape(nd), strides(nd), inverse(nd, -1);
    for (int64_t i = 0; i < nd; ++i) {
      int64_t d = wrap_dim("permute", dims[i], x, nd);
      RESONA_CHECK(inverse[d] < 0)
          << "permute of " << x.describe() << ": dims " << shape_str(dims) << " repeat " << d;
      inverse[d] = i;
      shape[i] = x.shape()[d];
      strides[i] = x.strides()[d];
    }
    ctx.saved.inverse = inverse;
    return make_view(x, shape, strides, x.offset());
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    return {permute(d, ctx.saved.inverse)};
  }
};

struct SliceOp {
  static constexpr const char* kName = "slice";
  struct Saved {
    Shape in_shape;
    int64_t dim = 0, start = 0, end = 0, step = 1;
  };
  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, int64_t dim, int64_t start, int64_t end,
                        int64_t step) {
    RESONA_CHECK(x.dim() > 0) << "slice of a 0-D tensor " << x.describe();
    dim = wrap_dim("slice", dim, x, x.dim());
    RESONA_CHECK(step > 0) << "slice of " << x.describe() << ": step must be positive, got "
                           << step;
    const int64_t n = x.shape()[dim];
    if (start < 0) start += n;
    if (end < 0) end += n;
    start = std::clamp<int64_t>(start, 0, n);
    end = std::clamp<int64_t>(end, start, n);
    Shape shape = x.shape(), strides = x.strides();
    shape[dim] = (end - start + step - 1) / step;
    strides[dim] *= step;
    ctx.saved = {x.shape(), dim, start, end, step};
    return make_view(x, shape, strides, x.offset() + start * x.strides()[dim]);
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    const Saved& s = ctx.saved;
    Tensor g = zeros(s.in_shape, d.dtype(), d.device());
    Tensor window = g.detach().slice(s.dim, s.start, s.end, s.step);
    window.copy_(d);
    return {g};
  }
};

struct ExpandOp {
  static constexpr const char* kName = "expand";
  struct Saved {
    Shape in_shape;
  };
  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, const Shape& shape_in) {
    const int64_t nd = static_cast<int64_t>(shape_in.size());
    RESONA_CHECK(nd >= x.dim()) << "expand of " << x.describe() << " to " << shape_str(shape_in)
                                << ": fewer dims than the tensor";
    Shape shape(nd), strides(nd, 0);
    const int64_t lead = nd - x.dim();
    for (int64_t i = 0; i < nd; ++i) {
      int64_t want = shape_in[i];
      if (i < lead) {
        RESONA_CHECK(want >= 0) << "expand of " << x.describe() << " to " << shape_str(shape_in)
                                << ": -1 in a new leading dim";
        shape[i] = want;
        continue;
      }
      int64_t have = x.shape()[i - lead];
      if (want == -1) want = have;
      RESONA_CHECK(want >= 0) << "expand of " << x.describe() << " to " << shape_str(shape_in)
                              << ": negative size " << want << " in dim " << i;
      RESONA_CHECK(have == want || have == 1)
          << "expand of " << x.describe() << " to " << shape_str(shape_in) << ": dim " << i
          << " has size " << have << ", which is neither " << want << " nor 1";
      shape[i] = want;
      strides[i] = have == want ? x.strides()[i - lead] : 0;
    }
    ctx.saved.in_shape = x.shape();
    return make_view(x, shape, strides, x.offset());
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    return {sum_to(d, ctx.saved.in_shape)};
  }
};

struct SqueezeOp {
  static constexpr const char* kName = "squeeze";
  struct Saved {
    Shape in_shape;
  };
  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, int64_t dim) {
    dim = wrap_dim("squeeze", dim, x, x.dim());
    RESONA_CHECK(x.dim() > 0 && x.shape()[dim] == 1)
        << "squeeze of dim " << dim << " of " << x.describe() << ": its size is not 1";
    Shape shape = x.shape(), strides = x.strides();
    shape.erase(shape.begin() + dim);
    strides.erase(strides.begin() + dim);
    ctx.saved.in_shape = x.shape();
    return make_view(x, shape, strides, x.offset());
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    return {reshape(d, ctx.saved.in_shape)};
  }
};

struct UnsqueezeOp {
  static constexpr const char* kName = "unsqueeze";
  struct Saved {
    Shape in_shape;
  };
  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, int64_t dim) {
    dim = wrap_dim("unsqueeze", dim, x, x.dim() + 1);
    Shape shape = x.shape(), strides = x.strides();
    int64_t st = dim < x.dim() ? x.strides()[dim] * x.shape()[dim] : 1;
    shape.insert(shape.begin() + dim, 1);
    strides.insert(strides.begin() + dim, st);
    ctx.saved.in_shape = x.shape();
    return make_view(x, shape, strides, x.offset());
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    return {reshape(d, ctx.saved.in_shape)};
  }
};

struct ContiguousOp {
  static constexpr const char* kName = "contiguous";
  struct Saved {};
  static Tensor forward(Ctx<Saved>&, const Tensor& x) { return copy_contiguous(x, x.dtype()); }
  static Grads backward(Ctx<Saved>&, const Tensor& d) { return {d}; }
};

struct CastOp {
  static constexpr const char* kName = "cast";
  struct Saved {
    DType in_dtype;
  };
  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, DType dtype) {
    ctx.saved.in_dtype = x.dtype();
    if (ctx.requires_grad) {
      RESONA_CHECK(is_floating(dtype)) << "cast of " << x.describe() << " (which requires grad) to "
                                       << dtype_name(dtype) << ": gradients need a float type";
    }
    return copy_contiguous(x, dtype);
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) { return {cast(d, ctx.saved.in_dtype)}; }
};

struct ToDeviceOp {
  static constexpr const char* kName = "to_device";
  struct Saved {
    Device in_device;
  };
  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, Device device) {
    ctx.saved.in_device = x.device();
    Tensor src = x.is_contiguous() ? x : copy_contiguous(x, x.dtype());
    Tensor out = empty(x.shape(), x.dtype(), device);
    copy_into(out, src);
    return out;
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    return {to_device(d, ctx.saved.in_device)};
  }
};

struct ConcatOp {
  static constexpr const char* kName = "concat";
  struct Saved {
    int64_t dim = 0;
    std::vector<int64_t> sizes;
  };
  static Tensor forward(Ctx<Saved>& ctx, const std::vector<Tensor>& xs, int64_t dim) {
    RESONA_CHECK(!xs.empty()) << "concat of an empty list";
    const Tensor& first = xs[0];
    RESONA_CHECK(first.dim() > 0) << "concat of 0-D tensor " << first.describe();
    dim = wrap_dim("concat", dim, first, first.dim());
    Shape shape = first.shape();
    shape[dim] = 0;
    for (size_t i = 0; i < xs.size(); ++i) {
      const Tensor& x = xs[i];
      RESONA_CHECK(x.dim() == first.dim())
          << "concat: input " << i << " " << x.describe() << " has a different rank than input 0 "
          << first.describe();
      check_same_device("concat", {&first, &x});
      check_same_dtype("concat", {&first, &x});
      for (int64_t d = 0; d < x.dim(); ++d) {
        RESONA_CHECK(d == dim || x.shape()[d] == first.shape()[d])
            << "concat along dim " << dim << ": input " << i << " " << x.describe()
            << " differs from input 0 " << first.describe() << " in dim " << d;
      }
      shape[dim] += x.shape()[dim];
      ctx.saved.sizes.push_back(x.shape()[dim]);
    }
    ctx.saved.dim = dim;
    Tensor out = empty(shape, first.dtype(), first.device());
    int64_t at = 0;
    for (const Tensor& x : xs) {
      Tensor window = out.slice(dim, at, at + x.shape()[dim]);
      window.copy_(x);
      at += x.shape()[dim];
    }
    return out;
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    Grads g;
    int64_t at = 0;
    for (size_t i = 0; i < ctx.saved.sizes.size(); ++i) {
      int64_t n = ctx.saved.sizes[i];
      if (ctx.needs(i))
        g.push_back(slice(d, ctx.saved.dim, at, at + n));
      else
        g.emplace_back();
      at += n;
    }
    return g;
  }
};

struct SplitOp {
  static constexpr const char* kName = "split";
  struct Saved {
    int64_t dim = 0;
  };
  static std::vector<Tensor> forward(Ctx<Saved>& ctx, const Tensor& x,
                                     const std::vector<int64_t>& sizes, int64_t dim) {
    RESONA_CHECK(x.dim() > 0) << "split of 0-D tensor " << x.describe();
    dim = wrap_dim("split", dim, x, x.dim());
    int64_t total = 0;
    for (int64_t s : sizes) {
      RESONA_CHECK(s >= 0) << "split of " << x.describe() << ": negative size in "
                           << shape_str(sizes);
      total += s;
    }
    RESONA_CHECK(total == x.shape()[dim])
        << "split of " << x.describe() << " along dim " << dim << " into " << shape_str(sizes)
        << ": sizes add up to " << total << ", not " << x.shape()[dim];
    ctx.saved.dim = dim;
    std::vector<Tensor> out;
    int64_t at = 0;
    for (int64_t s : sizes) {
      out.push_back(x.slice(dim, at, at + s));
      at += s;
    }
    return out;
  }
  static Grads backward(Ctx<Saved>& ctx, const std::vector<Tensor>& d) {
    return {concat(d, ctx.saved.dim)};
  }
};

void check_in_place(const char* op, const Tensor& dst) {
  RESONA_CHECK(!(GradMode::enabled() && dst.requires_grad()))
      << op << ": in-place update of " << dst.describe()
      << ", which requires grad, while grad mode is on (wrap it in NoGradGuard)";
}

}  // namespace

Tensor reshape(const Tensor& x, const Shape& shape) { return apply<ReshapeOp>(x, shape, false); }
Tensor permute(const Tensor& x, const Shape& dims) { return apply<PermuteOp>(x, dims); }
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step) {
  return apply<SliceOp>(x, dim, start, end, step);
}
Tensor expand(const Tensor& x, const Shape& shape) { return apply<ExpandOp>(x, shape); }
Tensor squeeze(const Tensor& x, int64_t dim) { return apply<SqueezeOp>(x, dim); }
Tensor unsqueeze(const Tensor& x, int64_t dim) { return apply<UnsqueezeOp>(x, dim); }
Tensor contiguous(const Tensor& x, bool force_copy) {
  if (x.is_contiguous() && !force_copy) return x;
  return apply<ContiguousOp>(x);
}
Tensor cast(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  return apply<CastOp>(x, dtype);
}
Tensor to_device(const Tensor& x, Device device) {
  if (x.device() == device) return x;
  return apply<ToDeviceOp>(x, device);
}
Tensor concat(const std::vector<Tensor>& xs, int64_t dim) { return apply<ConcatOp>(xs, dim); }
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  return apply<SplitOp>(x, sizes, dim);
}
std::vector<Tensor> split(const Tensor& x, int64_t size, int64_t dim) {
  RESONA_CHECK(size > 0) << "split of " << x.describe() << ": piece size must be positive, got "
                         << size;
  const int64_t n = x.size(dim);
  std::vector<int64_t> sizes;
  for (int64_t at = 0; at < n; at += size) sizes.push_back(std::min(size, n - at));
  return split(x, sizes, dim);
}

// ---- Tensor methods ----

Tensor Tensor::reshape(const Shape& shape) const { return resona::reshape(*this, shape); }
Tensor Tensor::view(const Shape& shape) const { return apply<ReshapeOp>(*this, shape, true); }
Tensor Tensor::permute(const Shape& dims) const { return resona::permute(*this, dims); }
Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  d0 = wrap_dim("transpose", d0, *this, dim());
  d1 = wrap_dim("transpose", d1, *this, dim());
  Shape dims(dim());
  for (int64_t i = 0; i < dim(); ++i) dims[i] = i;
  if (dim() > 0) std::swap(dims[d0], dims[d1]);  // a 0-D tensor's only "dim" is itself
  return resona::permute(*this, dims);
}
Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  return resona::slice(*this, d, start, end, step);
}
Tensor Tensor::select(int64_t d, int64_t index) const {
  RESONA_CHECK(dim() > 0) << "select on a 0-D tensor " << describe();
  d = wrap_dim("select", d, *this, dim());
  const int64_t n = shape()[d];
  RESONA_CHECK(index >= -n && index < n)
      << "select: index " << index << " out of range for dim " << d << " of " << describe();
  if (index < 0) index += n;
  return resona::squeeze(resona::slice(*this, d, index, index + 1), d);
}
Tensor Tensor::expand(const Shape& shape) const { return resona::expand(*this, shape); }
Tensor Tensor::squeeze(int64_t d) const { return resona::squeeze(*this, d); }
Tensor Tensor::unsqueeze(int64_t d) const { return resona::unsqueeze(*this, d); }
Tensor Tensor::flatten(int64_t start_dim, int64_t end_dim) const {
  if (dim() == 0) return reshape({1});
  start_dim = wrap_dim("flatten", start_dim, *this, dim());
  end_dim = wrap_dim("flatten", end_dim, *this, dim());
  RESONA_CHECK(start_dim <= end_dim)
      << "flatten of " << describe() << ": start_dim " << start_dim << " after end_dim " << end_dim;
  Shape s;
  for (int64_t i = 0; i < start_dim; ++i) s.push_back(shape()[i]);
  int64_t m = 1;
  for (int64_t i = start_dim; i <= end_dim; ++i) m *= shape()[i];
  s.push_back(m);
  for (int64_t i = end_dim + 1; i < dim(); ++i) s.push_back(shape()[i]);
  return reshape(s);
}
Tensor Tensor::contiguous() const { return resona::contiguous(*this); }
Tensor Tensor::to(DType dtype) const { return resona::cast(*this, dtype); }
Tensor Tensor::to(Device device) const { return resona::to_device(*this, device); }
Tensor Tensor::clone() const { return resona::contiguous(*this, /*force_copy=*/true); }

Tensor& Tensor::fill_(double value) {
  check_in_place("fill_", *this);
  if (device().is_cpu()) {
    dispatch_all("fill_", dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      T v = convert<T>(value);
      T* p = data<T>();
      strided_loop<1>(
          shape(), {strides()},
          [&](const std::array<int64_t, 1>& off, int64_t n, const std::array<int64_t, 1>& st) {
            for (int64_t i = 0; i < n; ++i) p[off[0] + i * st[0]] = v;
          });
    });
    return *this;
  }
  if (numel() == 0) return *this;
  const char* err = backend_for(device()).strided_fill(shape(), raw_data(), dtype(), strides(),
                                                       value, device().index);
  RESONA_CHECK(err == nullptr) << "fill_ of " << describe() << ": " << err;
  return *this;
}

Tensor& Tensor::zero_() {
  if (is_contiguous()) {
    check_in_place("zero_", *this);
    backend_for(device()).memset_zero(raw_data(), nbytes(), device().index);
    return *this;
  }
  return fill_(0.0);
}

Tensor& Tensor::copy_(const Tensor& src) {
  check_in_place("copy_", *this);
  Tensor s = src.detach();
  if (s.shape() != shape()) s = resona::expand(s, shape());
  copy_into(*this, s);  // any strides, dtypes and devices
  return *this;
}

}  // namespace resona
