// softmax and log_softmax along one dim, with the row max m subtracted first:
//
//   softmax:      y_j = exp(x_j - m) / sum_k exp(x_k - m)
//   log_softmax:  y_j = x_j - (m + log(sum_k exp(x_k - m)))
//   backward:     softmax      d_x = y * (d_y - sum(d_y * y))
//                 log_softmax  d_x = d_y - exp(y) * sum(d_y)
//
// The input is made contiguous and seen as [outer, n, inner] with n the softmax dim:
// inner == 1 (the last dim, the common case) walks rows; otherwise a block of inner
// columns is processed together so the inner loops stay unit-stride.
//
// On CUDA (cuda/softmax.h) the rows along the last dim go to fused kernels, one row per
// warp or block; another dim is first moved last by a transpose and a contiguous copy
// (and the result moved back the same way).
//
// Saved for backward: the output y only. Gradients are fresh tensors.
#include "ops/softmax.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "autograd/function.h"
#include "core/dispatch.h"
#include "cuda/softmax.h"
#include "ops/device_util.h"

namespace resona {
namespace {

// x seen as [outer, n, inner] around the softmax dim.
struct Rows {
  int64_t outer = 1, n = 1, inner = 1;
};

Rows rows_around(const Shape& shape, int64_t dim) {
  Rows r;
  if (shape.empty()) return r;  // a 0-D tensor is one row of one element
  for (int64_t i = 0; i < dim; ++i) r.outer *= shape[i];
  r.n = shape[dim];
  for (size_t i = dim + 1; i < shape.size(); ++i) r.inner *= shape[i];
  return r;
}

template <bool kLog, class T>
void softmax_fwd(const T* x, T* y, const Rows& g) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  if (g.inner == 1) {
    for (int64_t o = 0; o < g.outer; ++o) {
      const T* xr = x + o * g.n;
      T* yr = y + o * g.n;
      T m = neg_inf;
      for (int64_t j = 0; j < g.n; ++j) m = std::max(m, xr[j]);
      T s = 0;
      if constexpr (kLog) {
        for (int64_t j = 0; j < g.n; ++j) s += std::exp(xr[j] - m);
        const T lse = m + std::log(s);
        for (int64_t j = 0; j < g.n; ++j) yr[j] = xr[j] - lse;
      } else {
        for (int64_t j = 0; j < g.n; ++j) {
          yr[j] = std::exp(xr[j] - m);
          s += yr[j];
        }
        const T inv = T(1) / s;
        for (int64_t j = 0; j < g.n; ++j) yr[j] *= inv;
      }
    }
    return;
  }
  std::vector<T> m(g.inner), s(g.inner);
  for (int64_t o = 0; o < g.outer; ++o) {
    const T* xb = x + o * g.n * g.inner;
    T* yb = y + o * g.n * g.inner;
    std::fill(m.begin(), m.end(), neg_inf);
    std::fill(s.begin(), s.end(), T(0));
    for (int64_t j = 0; j < g.n; ++j) {
      for (int64_t k = 0; k < g.inner; ++k) m[k] = std::max(m[k], xb[j * g.inner + k]);
    }
    if constexpr (kLog) {
      for (int64_t j = 0; j < g.n; ++j) {
        for (int64_t k = 0; k < g.inner; ++k) s[k] += std::exp(xb[j * g.inner + k] - m[k]);
      }
      for (int64_t k = 0; k < g.inner; ++k) s[k] = m[k] + std::log(s[k]);  // now the lse
      for (int64_t j = 0; j < g.n; ++j) {
        for (int64_t k = 0; k < g.inner; ++k) yb[j * g.inner + k] = xb[j * g.inner + k] - s[k];
      }
    } else {
      for (int64_t j = 0; j < g.n; ++j) {
        for (int64_t k = 0; k < g.inner; ++k) {
          const T e = std::exp(xb[j * g.inner + k] - m[k]);
          yb[j * g.inner + k] = e;
          s[k] += e;
        }
      }
      for (int64_t k = 0; k < g.inner; ++k) s[k] = T(1) / s[k];
      for (int64_t j = 0; j < g.n; ++j) {
        for (int64_t k = 0; k < g.inner; ++k) yb[j * g.inner + k] *= s[k];
      }
    }
  }
}

// The per-row reduction of backward: sum(d_y * y) for softmax, sum(d_y) for log_softmax.
template <bool kLog, class T>
inline T bwd_term(T dy, T y) {
  if constexpr (kLog) {
    (void)y;
    return dy;
  } else {
    return dy * y;
  }
}

template <bool kLog, class T>
inline T bwd_value(T dy, T y, T sum) {
  if constexpr (kLog) {
    return dy - std::exp(y) * sum;
  } else {
    return y * (dy - sum);
  }
}

template <bool kLog, class T>
void softmax_bwd(const T* y, const T* dy, T* dx, const Rows& g) {
  if (g.inner == 1) {
    for (int64_t o = 0; o < g.outer; ++o) {
      const T* yr = y + o * g.n;
      const T* dr = dy + o * g.n;
      T* xr = dx + o * g.n;
      T s = 0;
      for (int64_t j = 0; j < g.n; ++j) s += bwd_term<kLog>(dr[j], yr[j]);
      for (int64_t j = 0; j < g.n; ++j) xr[j] = bwd_value<kLog>(dr[j], yr[j], s);
    }
    return;
  }
  std::vector<T> s(g.inner);
  for (int64_t o = 0; o < g.outer; ++o) {
    const int64_t base = o * g.n * g.inner;
    std::fill(s.begin(), s.end(), T(0));
    for (int64_t j = 0; j < g.n; ++j) {
      const int64_t at = base + j * g.inner;
      for (int64_t k = 0; k < g.inner; ++k) s[k] += bwd_term<kLog>(dy[at + k], y[at + k]);
    }
    for (int64_t j = 0; j < g.n; ++j) {
      const int64_t at = base + j * g.inner;
      for (int64_t k = 0; k < g.inner; ++k)
        dx[at + k] = bwd_value<kLog>(dy[at + k], y[at + k], s[k]);
    }
  }
}

struct SoftmaxSaved {
  Tensor y;
  Rows rows;
  int64_t dim = 0;
};

// ---- CUDA ----

// `t` with dim `dim` moved last (a no-op for the last dim) and made contiguous, for the
// row kernels; the error names the op and the tensor when the copy is not available.
Tensor rows_last(const char* op, const Tensor& t, int64_t dim) {
  const bool last = t.dim() == 0 || dim == t.dim() - 1;
  const Tensor v = last ? t : t.transpose(dim, -1);
  if (v.is_contiguous()) return v;
  try {
    return v.contiguous();
  } catch (const Error& e) {
    RESONA_FAIL() << op << " on CUDA along dim " << dim << " of " << t.describe()
                  << " needs a strided copy to bring the rows together: " << e.what();
  }
  return Tensor();
}

// The inverse of rows_last for a result `r` of the row kernels.
Tensor rows_back(const char* op, const Tensor& r, int64_t dim) {
  if (r.dim() == 0 || dim == r.dim() - 1) return r;
  try {
    return r.transpose(dim, -1).contiguous();
  } catch (const Error& e) {
    RESONA_FAIL() << op << " on CUDA along dim " << dim << " of " << r.describe()
                  << " needs a strided copy to put the rows back: " << e.what();
  }
  return Tensor();
}

template <bool kLog>
Tensor softmax_fwd_gpu(const char* op, const Tensor& x, int64_t dim) {
  const Tensor xr = rows_last(op, x, dim);
  const int64_t n = x.dim() == 0 ? 1 : x.size(dim);
  Tensor yr = empty(xr.shape(), xr.dtype(), xr.device());
  cuda::SoftmaxParams p{
      cuda_kernel_dtype(op, x), kLog, n == 0 ? 0 : x.numel() / n, n, xr.raw_data(), yr.raw_data()};
  const char* err = cuda::softmax_fwd_cuda(p, launch_stream());
  RESONA_CHECK(err == nullptr) << op << " of " << x.describe() << " on CUDA: " << err;
  return rows_back(op, yr, dim);
}

template <bool kLog>
Tensor softmax_bwd_gpu(const char* op, const Tensor& y, const Tensor& d, int64_t dim) {
  RESONA_CHECK(d.dtype() == y.dtype() && d.device() == y.device())
      << op << " backward: gradient " << d.describe() << " does not match the output "
      << y.describe();
  const Tensor yr = rows_last(op, y, dim);
  const Tensor dr = rows_last(op, d, dim);
  const int64_t n = y.dim() == 0 ? 1 : y.size(dim);
  Tensor dxr = empty(yr.shape(), yr.dtype(), yr.device());
  cuda::SoftmaxBwdParams p{cuda_kernel_dtype(op, y),
                           kLog,
                           n == 0 ? 0 : y.numel() / n,
                           n,
                           yr.raw_data(),
                           dr.raw_data(),
                           dxr.raw_data()};
  const char* err = cuda::softmax_bwd_cuda(p, launch_stream());
  RESONA_CHECK(err == nullptr) << op << " backward of " << y.describe() << " on CUDA: " << err;
  return rows_back(op, dxr, dim);
}

template <bool kLog>
struct SoftmaxOp {
  static constexpr const char* kName = kLog ? "log_softmax" : "softmax";
  using Saved = SoftmaxSaved;

  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, int64_t dim) {
    check_floating(kName, x);
    const int64_t d = wrap_dim(kName, dim, x.dim());
    if (x.device().is_cuda()) {
      Tensor y = softmax_fwd_gpu<kLog>(kName, x, d);
      if (ctx.requires_grad) ctx.saved = {y, Rows{}, d};
      return y;
    }
    const Rows rows = rows_around(x.shape(), d);
    const Tensor xc = x.contiguous();
    Tensor y = empty(x.shape(), x.dtype());
    dispatch_floating(kName, x.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      softmax_fwd<kLog, T>(xc.data<T>(), y.data<T>(), rows);
    });
    if (ctx.requires_grad) ctx.saved = {y, rows, d};
    return y;
  }

  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    const Saved& s = ctx.saved;
    if (s.y.device().is_cuda()) return {softmax_bwd_gpu<kLog>(kName, s.y, d, s.dim)};
    const Tensor dc = d.contiguous();
    Tensor dx = empty(s.y.shape(), s.y.dtype());
    dispatch_floating(kName, d.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      softmax_bwd<kLog, T>(s.y.data<T>(), dc.data<T>(), dx.data<T>(), s.rows);
    });
    return {dx};
  }
};

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return apply<SoftmaxOp<false>>(x, dim); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return apply<SoftmaxOp<true>>(x, dim); }

}  // namespace resona
