#include "ops/elementwise.h"

#include <array>
#include <cmath>

#include "autograd/function.h"
#include "autograd/grad_mode.h"
#include "core/dispatch.h"
#include "core/strided_loop.h"
#include "cuda/elementwise.h"
#include "ops/device_util.h"
#include "ops/reduce.h"

namespace resona {

// ---------------------------------------------------------------- broadcasting helpers

Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    RESONA_CHECK(da == db || da == 1 || db == 1)
        << op << ": shapes " << shape_str(a) << " and " << shape_str(b)
        << " cannot be broadcast together (dim " << i << ": " << da << " vs " << db << ")";
    out[i] = da == 1 ? db : da;
  }
  return out;
}

namespace {

// Strides of `t` seen through broadcasting to `out_shape` (0 along stretched dims).
Shape broadcast_strides(const Tensor& t, const Shape& out_shape) {
  Shape st(out_shape.size(), 0);
  const size_t lead = out_shape.size() - t.shape().size();
  for (size_t i = 0; i < t.shape().size(); ++i) {
    st[lead + i] = t.shape()[i] == 1 ? 0 : t.strides()[i];
  }
  return st;
}

const char* binary_name(BinaryKind k) {
  switch (k) {
    case BinaryKind::kAdd:
      return "add";
    case BinaryKind::kSub:
      return "sub";
    case BinaryKind::kMul:
      return "mul";
    case BinaryKind::kDiv:
      return "div";
    case BinaryKind::kPow:
      return "pow";
  }
  return "?";
}

template <BinaryKind K, class T>
inline T binary_apply(T a, T b) {
  if constexpr (K == BinaryKind::kAdd) return a + b;
  if constexpr (K == BinaryKind::kSub) return a - b;
  if constexpr (K == BinaryKind::kMul) return a * b;
  if constexpr (K == BinaryKind::kDiv) return a / b;
  if constexpr (K == BinaryKind::kPow) return std::pow(a, b);
}

template <BinaryKind K, class T>
void binary_cpu(const Tensor& out, const Tensor& a, const Tensor& b) {
  const Shape& shape = out.shape();
  T* o = out.data<T>();
  const T* pa = a.data<T>();
  const T* pb = b.data<T>();
  strided_loop<3>(
      shape, {out.strides(), broadcast_strides(a, shape), broadcast_strides(b, shape)},
      [&](const std::array<int64_t, 3>& off, int64_t n, const std::array<int64_t, 3>& st) {
        T* op = o + off[0];
        const T* ap = pa + off[1];
        const T* bp = pb + off[2];
        if (st[0] == 1 && st[1] == 1 && st[2] == 1) {
          for (int64_t i = 0; i < n; ++i) op[i] = binary_apply<K>(ap[i], bp[i]);
        } else if (st[0] == 1 && st[1] == 1 && st[2] == 0) {
          const T bv = *bp;
          for (int64_t i = 0; i < n; ++i) op[i] = binary_apply<K>(ap[i], bv);
        } else {
          for (int64_t i = 0; i < n; ++i)
            op[i * st[0]] = binary_apply<K>(ap[i * st[1]], bp[i * st[2]]);
        }
      });
}

// ---------------------------------------------------------------- CUDA plumbing

// The kernels number the kinds as the ops do.
#define RESONA_SAME_BINARY_(k) \
  static_assert(static_cast<int>(BinaryKind::k) == static_cast<int>(cuda::BinaryKernelKind::k))
RESONA_SAME_BINARY_(kAdd);
RESONA_SAME_BINARY_(kSub);
RESONA_SAME_BINARY_(kMul);
RESONA_SAME_BINARY_(kDiv);
RESONA_SAME_BINARY_(kPow);
#undef RESONA_SAME_BINARY_
#define RESONA_SAME_UNARY_(k) \
  static_assert(static_cast<int>(UnaryKind::k) == static_cast<int>(cuda::UnaryKernelKind::k))
RESONA_SAME_UNARY_(kNeg);
RESONA_SAME_UNARY_(kExp);
RESONA_SAME_UNARY_(kLog);
RESONA_SAME_UNARY_(kSqrt);
RESONA_SAME_UNARY_(kRsqrt);
RESONA_SAME_UNARY_(kAbs);
RESONA_SAME_UNARY_(kSigmoid);
RESONA_SAME_UNARY_(kTanh);
RESONA_SAME_UNARY_(kSilu);
RESONA_SAME_UNARY_(kGelu);
RESONA_SAME_UNARY_(kSoftplus);
RESONA_SAME_UNARY_(kRelu);
RESONA_SAME_UNARY_(kAddScalar);
RESONA_SAME_UNARY_(kMulScalar);
RESONA_SAME_UNARY_(kPowScalar);
#undef RESONA_SAME_UNARY_

// The kernel's view of K operands of one shape (operand 0 the output), or an error
// naming the op and `t` when more than cuda::kMaxDims dims remain after merging.
template <int K>
cuda::StridedDims<K> kernel_dims(const char* op, const Tensor& t, const Shape& shape,
                                 const std::array<Shape, K>& strides) {
  const int64_t* st[K];
  for (int k = 0; k < K; ++k) st[k] = strides[k].data();
  cuda::StridedDims<K> d;
  RESONA_CHECK(cuda::make_strided_dims<K>(static_cast<int>(shape.size()), shape.data(), st, d))
      << op << " on CUDA: " << t.describe() << " has more than " << cuda::kMaxDims
      << " dims after merging the contiguous ones";
  return d;
}

void check_launch(const char* op, const Tensor& t, const char* err) {
  RESONA_CHECK(err == nullptr) << op << " on CUDA (" << t.describe() << "): " << err;
}

// A view written in place must not visit an element twice (a stride-0 dim would make
// threads race on it).
void check_writable(const char* op, const Tensor& dst) {
  for (int64_t d = 0; d < dst.dim(); ++d) {
    RESONA_CHECK(dst.shape()[d] <= 1 || dst.strides()[d] != 0)
        << op << " on CUDA: " << dst.describe() << " is broadcast (stride 0) along dim " << d
        << " and cannot be written in place";
  }
}

template <BinaryKind K>
Tensor binary_forward(const Tensor& a, const Tensor& b) {
  const char* op = binary_name(K);
  check_same_device(op, {&a, &b});
  check_same_dtype(op, {&a, &b});
  check_floating(op, a);
  Shape shape = broadcast_shapes(op, a.shape(), b.shape());
  Tensor out = empty(shape, a.dtype(), a.device());
  if (a.device().is_cuda()) {
    cuda::BinaryParams p;
    p.kind = static_cast<cuda::BinaryKernelKind>(K);
    p.dtype = cuda_kernel_dtype(op, a);
    p.n = out.numel();
    p.dims = kernel_dims<3>(
        op, out, shape, {out.strides(), broadcast_strides(a, shape), broadcast_strides(b, shape)});
    p.a = a.raw_data();
    p.b = b.raw_data();
    p.out = out.raw_data();
    check_launch(op, out, cuda::binary_fwd_cuda(p, launch_stream()));
    return out;
  }
  dispatch_floating(op, a.dtype(),
                    [&](auto tag) { binary_cpu<K, typename decltype(tag)::type>(out, a, b); });
  return out;
}

template <BinaryKind K>
struct BinaryOp {
  static constexpr const char* kName = K == BinaryKind::kAdd   ? "add"
                                       : K == BinaryKind::kSub ? "sub"
                                       : K == BinaryKind::kMul ? "mul"
                                       : K == BinaryKind::kDiv ? "div"
                                                               : "pow";
  struct Saved {
    Tensor a, b, out;
    Shape a_shape, b_shape;
  };
  static Tensor forward(Ctx<Saved>& ctx, const Tensor& a, const Tensor& b) {
    Tensor out = binary_forward<K>(a, b);
    if (ctx.requires_grad) {
      ctx.saved.a_shape = a.shape();
      ctx.saved.b_shape = b.shape();
      if constexpr (K == BinaryKind::kMul || K == BinaryKind::kDiv || K == BinaryKind::kPow) {
        ctx.saved.a = a;
        ctx.saved.b = b;
      }
      if constexpr (K == BinaryKind::kPow) ctx.saved.out = out;
    }
    return out;
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    const Saved& s = ctx.saved;
    Tensor da, db;
    if constexpr (K == BinaryKind::kAdd) {
      if (ctx.needs(0)) da = sum_to(d, s.a_shape);
      if (ctx.needs(1)) db = sum_to(d, s.b_shape);
    } else if constexpr (K == BinaryKind::kSub) {
      if (ctx.needs(0)) da = sum_to(d, s.a_shape);
      if (ctx.needs(1)) db = sum_to(neg(d), s.b_shape);
    } else if constexpr (K == BinaryKind::kMul) {
      if (ctx.needs(0)) da = sum_to(mul(d, s.b), s.a_shape);
      if (ctx.needs(1)) db = sum_to(mul(d, s.a), s.b_shape);
    } else if constexpr (K == BinaryKind::kDiv) {
      Tensor q = div(d, s.b);
      if (ctx.needs(0)) da = sum_to(q, s.a_shape);
      if (ctx.needs(1)) db = sum_to(neg(mul(q, div(s.a, s.b))), s.b_shape);
    } else {  // pow: d/da = b a^(b-1), d/db = a^b log a
      if (ctx.needs(0)) da = sum_to(mul(d, mul(s.b, pow(s.a, add(s.b, -1.0)))), s.a_shape);
      if (ctx.needs(1)) db = sum_to(mul(d, mul(s.out, log(s.a))), s.b_shape);
    }
    return {da, db};
  }
};

// ---------------------------------------------------------------- unary

constexpr const char* unary_name(UnaryKind k) {
  switch (k) {
    case UnaryKind::kNeg:
      return "neg";
    case UnaryKind::kExp:
      return "exp";
    case UnaryKind::kLog:
      return "log";
    case UnaryKind::kSqrt:
      return "sqrt";
    case UnaryKind::kRsqrt:
      return "rsqrt";
    case UnaryKind::kAbs:
      return "abs";
    case UnaryKind::kSigmoid:
      return "sigmoid";
    case UnaryKind::kTanh:
      return "tanh";
    case UnaryKind::kSilu:
      return "silu";
    case UnaryKind::kGelu:
      return "gelu";
    case UnaryKind::kSoftplus:
      return "softplus";
    case UnaryKind::kRelu:
      return "relu";
    case UnaryKind::kAddScalar:
      return "add";
    case UnaryKind::kMulScalar:
      return "mul";
    case UnaryKind::kPowScalar:
      return "pow";
  }
  return "?";
}

// Whether backward reads the input x or the output y.
constexpr bool unary_needs_x(UnaryKind k) {
  return k == UnaryKind::kLog || k == UnaryKind::kAbs || k == UnaryKind::kSilu ||
         k == UnaryKind::kGelu || k == UnaryKind::kSoftplus || k == UnaryKind::kRelu ||
         k == UnaryKind::kPowScalar;
}
constexpr bool unary_needs_y(UnaryKind k) {
  return k == UnaryKind::kExp || k == UnaryKind::kSqrt || k == UnaryKind::kRsqrt ||
         k == UnaryKind::kSigmoid || k == UnaryKind::kTanh;
}

template <class T>
inline T sigmoid_of(T x) {
  // Written so that neither branch overflows.
  if (x >= 0) return T(1) / (T(1) + std::exp(-x));
  T e = std::exp(x);
  return e / (T(1) + e);
}

constexpr double kSoftplusThreshold = 20.0;  // PyTorch's default: linear above it
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

template <UnaryKind K, class T>
inline T unary_fwd(T x, T s) {
  if constexpr (K == UnaryKind::kNeg) return -x;
  if constexpr (K == UnaryKind::kExp) return std::exp(x);
  if constexpr (K == UnaryKind::kLog) return std::log(x);
  if constexpr (K == UnaryKind::kSqrt) return std::sqrt(x);
  if constexpr (K == UnaryKind::kRsqrt) return T(1) / std::sqrt(x);
  if constexpr (K == UnaryKind::kAbs) return std::abs(x);
  if constexpr (K == UnaryKind::kSigmoid) return sigmoid_of(x);
  if constexpr (K == UnaryKind::kTanh) return std::tanh(x);
  if constexpr (K == UnaryKind::kSilu) return x * sigmoid_of(x);
  if constexpr (K == UnaryKind::kGelu) return T(0.5) * x * (T(1) + std::erf(x * T(kInvSqrt2)));
  if constexpr (K == UnaryKind::kSoftplus)
    return x > T(kSoftplusThreshold) ? x : std::log1p(std::exp(x));
  if constexpr (K == UnaryKind::kRelu) return x > T(0) ? x : T(0);
  if constexpr (K == UnaryKind::kAddScalar) return x + s;
  if constexpr (K == UnaryKind::kMulScalar) return x * s;
  if constexpr (K == UnaryKind::kPowScalar) return std::pow(x, s);
}

// dx given dy, the input x and the output y (whichever the kind saved).
template <UnaryKind K, class T>
inline T unary_bwd(T dy, T x, T y, T s) {
  if constexpr (K == UnaryKind::kNeg) return -dy;
  if constexpr (K == UnaryKind::kExp) return dy * y;
  if constexpr (K == UnaryKind::kLog) return dy / x;
  if constexpr (K == UnaryKind::kSqrt) return dy * T(0.5) / y;
  if constexpr (K == UnaryKind::kRsqrt) return dy * T(-0.5) * y * y * y;
  if constexpr (K == UnaryKind::kAbs) return x > T(0) ? dy : (x < T(0) ? -dy : T(0));
  if constexpr (K == UnaryKind::kSigmoid) return dy * y * (T(1) - y);
  if constexpr (K == UnaryKind::kTanh) return dy * (T(1) - y * y);
  if constexpr (K == UnaryKind::kSilu) {
    T sg = sigmoid_of(x);
    return dy * (sg + x * sg * (T(1) - sg));
  }
  if constexpr (K == UnaryKind::kGelu) {
    T cdf = T(0.5) * (T(1) + std::erf(x * T(kInvSqrt2)));
    T pdf = T(kInvSqrt2Pi) * std::exp(T(-0.5) * x * x);
    return dy * (cdf + x * pdf);
  }
  if constexpr (K == UnaryKind::kSoftplus)
    return x > T(kSoftplusThreshold) ? dy : dy * sigmoid_of(x);
  if constexpr (K == UnaryKind::kRelu) return x > T(0) ? dy : T(0);
  if constexpr (K == UnaryKind::kAddScalar) return dy;
  if constexpr (K == UnaryKind::kMulScalar) return dy * s;
  if constexpr (K == UnaryKind::kPowScalar) return dy * s * std::pow(x, s - T(1));
}

template <UnaryKind K>
struct UnaryOp {
  static constexpr const char* kName = unary_name(K);
  struct Saved {
    Tensor x, y;
    double s = 0;
  };

  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, double s) {
    check_floating(kName, x);
    Tensor y = empty(x.shape(), x.dtype(), x.device());
    if (x.device().is_cuda()) {
      cuda::UnaryParams p;
      p.kind = static_cast<cuda::UnaryKernelKind>(K);
      p.dtype = cuda_kernel_dtype(kName, x);
      p.s = static_cast<float>(s);
      p.n = y.numel();
      p.dims = kernel_dims<2>(kName, x, x.shape(), {y.strides(), x.strides()});
      p.x = x.raw_data();
      p.y = y.raw_data();
      check_launch(kName, x, cuda::unary_fwd_cuda(p, launch_stream()));
    } else {
      unary_forward_cpu(x, y, s);
    }
    if (ctx.requires_grad) {
      if constexpr (unary_needs_x(K)) ctx.saved.x = x;
      if constexpr (unary_needs_y(K)) ctx.saved.y = y;
      ctx.saved.s = s;
    }
    return y;
  }

  static void unary_forward_cpu(const Tensor& x, const Tensor& y, double s) {
    dispatch_floating(kName, x.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* px = x.data<T>();
      T* py = y.data<T>();
      const T sv = static_cast<T>(s);
      strided_loop<2>(
          x.shape(), {y.strides(), x.strides()},
          [&](const std::array<int64_t, 2>& off, int64_t n, const std::array<int64_t, 2>& st) {
            T* yp = py + off[0];
            const T* xp = px + off[1];
            if (st[1] == 1) {
              for (int64_t i = 0; i < n; ++i) yp[i] = unary_fwd<K>(xp[i], sv);
            } else {
              for (int64_t i = 0; i < n; ++i) yp[i] = unary_fwd<K>(xp[i * st[1]], sv);
            }
          });
    });
  }

  static Grads backward(Ctx<Saved>& ctx, const Tensor& dy_in) {
    const Saved& sv = ctx.saved;
    if (dy_in.device().is_cuda()) {
      // The kind's backward reads x or y (never both); kinds that read neither get dy.
      const Tensor& saved = sv.x.defined() ? sv.x : (sv.y.defined() ? sv.y : dy_in);
      check_same_device(kName, {&dy_in, &saved});
      check_same_dtype(kName, {&dy_in, &saved});
      RESONA_CHECK(saved.shape() == dy_in.shape())
          << kName << " backward: gradient " << dy_in.describe() << " does not match the saved "
          << saved.describe();
      Tensor dx = empty(dy_in.shape(), dy_in.dtype(), dy_in.device());
      cuda::UnaryBwdParams p;
      p.kind = static_cast<cuda::UnaryKernelKind>(K);
      p.dtype = cuda_kernel_dtype(kName, dy_in);
      p.s = static_cast<float>(sv.s);
      p.n = dx.numel();
      p.dims = kernel_dims<3>(kName, dy_in, dy_in.shape(),
                              {dx.strides(), dy_in.strides(), saved.strides()});
      p.dy = dy_in.raw_data();
      p.saved = saved.raw_data();
      p.dx = dx.raw_data();
      check_launch(kName, dy_in, cuda::unary_bwd_cuda(p, launch_stream()));
      return {dx};
    }
    Tensor dy = dy_in.contiguous();
    Tensor x = sv.x.defined() ? sv.x.contiguous() : Tensor();
    Tensor y = sv.y.defined() ? sv.y.contiguous() : Tensor();
    Tensor dx = empty(dy.shape(), dy.dtype(), dy.device());
    dispatch_floating(kName, dy.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* pdy = dy.data<T>();
      const T* px = x.defined() ? x.data<T>() : nullptr;
      const T* py = y.defined() ? y.data<T>() : nullptr;
      T* pdx = dx.data<T>();
      const T s = static_cast<T>(sv.s);
      for (int64_t i = 0, n = dy.numel(); i < n; ++i) {
        pdx[i] = unary_bwd<K>(pdy[i], px ? px[i] : T(0), py ? py[i] : T(0), s);
      }
    });
    return {dx};
  }
};

template <UnaryKind K>
Tensor unary(const Tensor& x, double s = 0.0) {
  return apply<UnaryOp<K>>(x, s);
}

void check_in_place(const char* op, const Tensor& dst) {
  RESONA_CHECK(!(GradMode::enabled() && dst.requires_grad()))
      << op << ": in-place update of " << dst.describe()
      << ", which requires grad, while grad mode is on (wrap it in NoGradGuard)";
}

}  // namespace

// ---------------------------------------------------------------- public functions

Tensor add(const Tensor& a, const Tensor& b) { return apply<BinaryOp<BinaryKind::kAdd>>(a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return apply<BinaryOp<BinaryKind::kSub>>(a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return apply<BinaryOp<BinaryKind::kMul>>(a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return apply<BinaryOp<BinaryKind::kDiv>>(a, b); }
Tensor pow(const Tensor& a, const Tensor& b) { return apply<BinaryOp<BinaryKind::kPow>>(a, b); }
Tensor add(const Tensor& a, double s) { return unary<UnaryKind::kAddScalar>(a, s); }
Tensor mul(const Tensor& a, double s) { return unary<UnaryKind::kMulScalar>(a, s); }
Tensor pow(const Tensor& a, double p) { return unary<UnaryKind::kPowScalar>(a, p); }

Tensor neg(const Tensor& x) { return unary<UnaryKind::kNeg>(x); }
Tensor exp(const Tensor& x) { return unary<UnaryKind::kExp>(x); }
Tensor log(const Tensor& x) { return unary<UnaryKind::kLog>(x); }
Tensor sqrt(const Tensor& x) { return unary<UnaryKind::kSqrt>(x); }
Tensor rsqrt(const Tensor& x) { return unary<UnaryKind::kRsqrt>(x); }
Tensor abs(const Tensor& x) { return unary<UnaryKind::kAbs>(x); }
Tensor sigmoid(const Tensor& x) { return unary<UnaryKind::kSigmoid>(x); }
Tensor tanh(const Tensor& x) { return unary<UnaryKind::kTanh>(x); }
Tensor silu(const Tensor& x) { return unary<UnaryKind::kSilu>(x); }
Tensor gelu(const Tensor& x) { return unary<UnaryKind::kGelu>(x); }
Tensor softplus(const Tensor& x) { return unary<UnaryKind::kSoftplus>(x); }
Tensor relu(const Tensor& x) { return unary<UnaryKind::kRelu>(x); }

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator-(const Tensor& a) { return neg(a); }
Tensor operator+(const Tensor& a, double b) { return add(a, b); }
Tensor operator-(const Tensor& a, double b) { return add(a, -b); }
Tensor operator*(const Tensor& a, double b) { return mul(a, b); }
Tensor operator/(const Tensor& a, double b) { return mul(a, 1.0 / b); }
Tensor operator*(double a, const Tensor& b) { return mul(b, a); }

Tensor sum_to(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  const size_t lead = g.dim() - shape.size();
  RESONA_CHECK(g.dim() >= static_cast<int64_t>(shape.size()))
      << "sum_to: cannot reduce " << g.describe() << " to " << shape_str(shape);
  std::vector<int64_t> dims;
  for (size_t i = 0; i < static_cast<size_t>(g.dim()); ++i) {
    if (i < lead || (shape[i - lead] == 1 && g.shape()[i] != 1)) dims.push_back(i);
  }
  Tensor r = dims.empty() ? g : sum(g, dims, /*keepdim=*/true);
  return r.reshape(shape);
}

Tensor& add_(Tensor& dst, const Tensor& src, double alpha) {
  check_in_place("add_", dst);
  check_same_device("add_", {&dst, &src});
  check_same_dtype("add_", {&dst, &src});
  Shape bs = broadcast_shapes("add_", dst.shape(), src.shape());
  RESONA_CHECK(bs == dst.shape()) << "add_: " << src.describe() << " does not broadcast to "
                                  << dst.describe();
  if (dst.device().is_cuda()) {
    check_writable("add_", dst);
    cuda::BinaryParams p;
    p.kind = cuda::BinaryKernelKind::kAdd;
    p.dtype = cuda_kernel_dtype("add_", dst);
    p.alpha = static_cast<float>(alpha);
    p.n = dst.numel();
    p.dims = kernel_dims<3>("add_", dst, dst.shape(),
                            {dst.strides(), dst.strides(), broadcast_strides(src, dst.shape())});
    p.a = dst.raw_data();
    p.b = src.raw_data();
    p.out = dst.raw_data();
    check_launch("add_", dst, cuda::binary_fwd_cuda(p, launch_stream()));
    return dst;
  }
  dispatch_floating("add_", dst.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* pd = dst.data<T>();
    const T* ps = src.data<T>();
    const T al = static_cast<T>(alpha);
    strided_loop<2>(
        dst.shape(), {dst.strides(), broadcast_strides(src, dst.shape())},
        [&](const std::array<int64_t, 2>& off, int64_t n, const std::array<int64_t, 2>& st) {
          for (int64_t i = 0; i < n; ++i) pd[off[0] + i * st[0]] += al * ps[off[1] + i * st[1]];
        });
  });
  return dst;
}

Tensor& mul_(Tensor& dst, double s) {
  check_in_place("mul_", dst);
  if (dst.device().is_cuda()) {
    check_writable("mul_", dst);
    cuda::UnaryParams p;
    p.kind = cuda::UnaryKernelKind::kMulScalar;
    p.dtype = cuda_kernel_dtype("mul_", dst);
    p.s = static_cast<float>(s);
    p.n = dst.numel();
    p.dims = kernel_dims<2>("mul_", dst, dst.shape(), {dst.strides(), dst.strides()});
    p.x = dst.raw_data();
    p.y = dst.raw_data();
    check_launch("mul_", dst, cuda::unary_fwd_cuda(p, launch_stream()));
    return dst;
  }
  dispatch_floating("mul_", dst.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* pd = dst.data<T>();
    const T sv = static_cast<T>(s);
    strided_loop<1>(
        dst.shape(), {dst.strides()},
        [&](const std::array<int64_t, 1>& off, int64_t n, const std::array<int64_t, 1>& st) {
          for (int64_t i = 0; i < n; ++i) pd[off[0] + i * st[0]] *= sv;
        });
  });
  return dst;
}

}  // namespace resona
