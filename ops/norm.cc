// rms_norm and layer_norm over the last dim D, one row of x at a time:
//
//   rms_norm:    mu = 0,                 r = 1 / sqrt(mean_j x_j^2 + eps)
//   layer_norm:  mu = mean_j x_j,        r = 1 / sqrt(mean_j (x_j - mu)^2 + eps)
//   xhat_j = (x_j - mu) r,   y_j = xhat_j w_j (+ b_j)      (w = 1, b = 0 when undefined)
//
// Backward, fused per row, with g_j = d_y_j w_j:
//   d_x_j = r (g_j - mean(g) - xhat_j mean(g xhat))      (rms_norm: without mean(g))
//   d_w_j = sum over rows of d_y_j xhat_j,   d_b_j = sum over rows of d_y_j
//
// On CUDA (cuda/norm.h) forward and d_x are fused row kernels (float32 arithmetic, also
// for bfloat16), and d_w / d_b a deterministic two-stage column reduction (no atomics).
//
// Saved for backward: x (contiguous), the weight, and per row r (and mu for layer_norm),
// in x's dtype on the CPU and in float32 on CUDA. Only the requested gradients are
// computed; they are fresh tensors.
#include "ops/norm.h"
#include "ops/device_util.h"

#include <cmath>
#include <vector>

#include "autograd/function.h"
#include "core/dispatch.h"
#include "cuda/norm.h"

namespace resona {
namespace {

// Checks x [..., D] and an optional per-feature parameter p [D]; returns D.
int64_t check_norm_inputs(const char* op, const Tensor& x, const Tensor& weight, const Tensor& bias,
                          double eps) {
  check_floating(op, x);
  RESONA_CHECK(x.dim() >= 1 && x.size(-1) > 0)
      << op << ": x must be [..., D] with D > 0, got " << x.describe();
  const int64_t D = x.size(-1);
  for (const Tensor* p : {&weight, &bias}) {
    if (!p->defined()) continue;
    const char* what = p == &weight ? "weight" : "bias";
    RESONA_CHECK(p->device() == x.device()) << op << ": " << what << " " << p->describe()
                                            << " is not on the device of x " << x.describe();
    RESONA_CHECK(p->dim() == 1 && p->size(0) == D)
        << op << ": " << what << " " << p->describe() << " must be [" << D << "] to match x "
        << x.describe();
  }
  check_same_dtype(op, {&x, &weight, &bias});
  RESONA_CHECK(eps >= 0) << op << ": eps must be >= 0, got " << eps;
  return D;
}

template <bool kLayer, class T>
void norm_fwd(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int64_t R, int64_t D,
              double eps) {
  const T inv_d = T(1) / static_cast<T>(D);
  for (int64_t r = 0; r < R; ++r) {
    const T* xr = x + r * D;
    T* yr = y + r * D;
    T mu = 0;
    if constexpr (kLayer) {
      for (int64_t j = 0; j < D; ++j) mu += xr[j];
      mu *= inv_d;
      mean[r] = mu;
    }
    T ss = 0;
    for (int64_t j = 0; j < D; ++j) ss += (xr[j] - mu) * (xr[j] - mu);
    const T rs = T(1) / std::sqrt(ss * inv_d + static_cast<T>(eps));
    rstd[r] = rs;
    if (w && b) {
      for (int64_t j = 0; j < D; ++j) yr[j] = (xr[j] - mu) * rs * w[j] + b[j];
    } else if (w) {
      for (int64_t j = 0; j < D; ++j) yr[j] = (xr[j] - mu) * rs * w[j];
    } else if (b) {
      for (int64_t j = 0; j < D; ++j) yr[j] = (xr[j] - mu) * rs + b[j];
    } else {
      for (int64_t j = 0; j < D; ++j) yr[j] = (xr[j] - mu) * rs;
    }
  }
}

// d_x, d_w, d_b are null when not wanted; d_w and d_b arrive zeroed.
template <bool kLayer, class T>
void norm_bwd(const T* x, const T* w, const T* mean, const T* rstd, const T* dy, int64_t R,
              int64_t D, T* dx, T* dw, T* db) {
  std::vector<T> ones;
  if (!w) {
    ones.assign(D, T(1));
    w = ones.data();
  }
  const T inv_d = T(1) / static_cast<T>(D);
  for (int64_t r = 0; r < R; ++r) {
    const T* xr = x + r * D;
    const T* dyr = dy + r * D;
    const T mu = kLayer ? mean[r] : T(0);
    const T rs = rstd[r];
    if (dw) {
      for (int64_t j = 0; j < D; ++j) dw[j] += dyr[j] * (xr[j] - mu) * rs;
    }
    if (db) {
      for (int64_t j = 0; j < D; ++j) db[j] += dyr[j];
    }
    if (dx) {
      T sum_g = 0, sum_gx = 0;
      for (int64_t j = 0; j < D; ++j) {
        const T g = dyr[j] * w[j];
        sum_g += g;
        sum_gx += g * (xr[j] - mu) * rs;
      }
      const T mean_g = kLayer ? sum_g * inv_d : T(0);
      const T mean_gx = sum_gx * inv_d;
      T* dxr = dx + r * D;
      for (int64_t j = 0; j < D; ++j) {
        dxr[j] = rs * (dyr[j] * w[j] - mean_g - (xr[j] - mu) * rs * mean_gx);
      }
    }
  }
}

template <class T>
T* data_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

Tensor contiguous_or_undefined(const Tensor& t) { return t.defined() ? t.contiguous() : t; }

// ---- CUDA ----

// `t` contiguous (undefined stays undefined), or an error naming the op and the tensor
// when the CUDA copy it needs is not available.
Tensor contiguous_on_gpu(const char* op, const Tensor& t) {
  if (!t.defined() || t.is_contiguous()) return t;
  try {
    return t.contiguous();
  } catch (const Error& e) {
    RESONA_FAIL() << op << " on CUDA needs " << t.describe() << " contiguous: " << e.what();
  }
  return Tensor();
}

struct NormSaved {
  Tensor x, weight, mean, rstd;
};

template <bool kLayer>
Tensor norm_forward(const char* op, Ctx<NormSaved>& ctx, const Tensor& x, const Tensor& weight,
                    const Tensor& bias, double eps) {
  const int64_t D = check_norm_inputs(op, x, weight, bias, eps);
  const int64_t R = x.numel() / D;
  if (x.device().is_cuda()) {
    const cuda::KernelDType kd = cuda_kernel_dtype(op, x);
    const Tensor xc = contiguous_on_gpu(op, x);
    const Tensor wc = contiguous_on_gpu(op, weight);
    const Tensor bc = contiguous_on_gpu(op, bias);
    Tensor y = empty(x.shape(), x.dtype(), x.device());
    Tensor rstd = empty({R}, DType::kFloat32, x.device());
    Tensor mean = kLayer ? empty({R}, DType::kFloat32, x.device()) : Tensor();
    cuda::NormFwdParams p{kd,
                          kLayer,
                          R,
                          D,
                          static_cast<float>(eps),
                          xc.raw_data(),
                          wc.defined() ? wc.raw_data() : nullptr,
                          bc.defined() ? bc.raw_data() : nullptr,
                          y.raw_data(),
                          kLayer ? mean.data<float>() : nullptr,
                          rstd.data<float>()};
    const char* err = cuda::norm_fwd_cuda(p, launch_stream());
    RESONA_CHECK(err == nullptr) << op << " of " << x.describe() << " on CUDA: " << err;
    if (ctx.requires_grad) ctx.saved = {xc, wc, mean, rstd};
    return y;
  }
  const Tensor xc = x.contiguous();
  const Tensor wc = contiguous_or_undefined(weight);
  const Tensor bc = contiguous_or_undefined(bias);
  Tensor y = empty(x.shape(), x.dtype());
  Tensor rstd = empty({R}, x.dtype());
  Tensor mean = kLayer ? empty({R}, x.dtype()) : Tensor();
  dispatch_floating(op, x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    norm_fwd<kLayer, T>(xc.data<T>(), data_or_null<T>(wc), data_or_null<T>(bc), y.data<T>(),
                        kLayer ? mean.data<T>() : nullptr, rstd.data<T>(), R, D, eps);
  });
  if (ctx.requires_grad) ctx.saved = {xc, wc, mean, rstd};
  return y;
}

// Gradients for (x, weight[, bias]), each only when `needs` asks for it.
template <bool kLayer>
Grads norm_backward(const char* op, const Ctx<NormSaved>& ctx, const Tensor& d) {
  const NormSaved& s = ctx.saved;
  const int64_t D = s.x.size(-1);
  const int64_t R = s.x.numel() / D;
  if (s.x.device().is_cuda()) {
    RESONA_CHECK(d.dtype() == s.x.dtype() && d.device() == s.x.device())
        << op << " backward: gradient " << d.describe() << " does not match x " << s.x.describe();
    const Tensor dc = contiguous_on_gpu(op, d);
    const Device dev = s.x.device();
    Tensor dx = ctx.needs(0) ? empty(s.x.shape(), s.x.dtype(), dev) : Tensor();
    Tensor dw = ctx.needs(1) ? empty({D}, s.x.dtype(), dev) : Tensor();
    Tensor db = ctx.needs(2) ? empty({D}, s.x.dtype(), dev) : Tensor();
    Tensor partial = dw.defined() || db.defined()
                         ? empty({2, cuda::norm_column_chunks(R), D}, DType::kFloat32, dev)
                         : Tensor();
    auto ptr = [](const Tensor& t) { return t.defined() ? t.raw_data() : nullptr; };
    cuda::NormBwdParams p{cuda_kernel_dtype(op, s.x),
                          kLayer,
                          R,
                          D,
                          s.x.raw_data(),
                          ptr(s.weight),
                          kLayer ? s.mean.data<float>() : nullptr,
                          s.rstd.data<float>(),
                          dc.raw_data(),
                          ptr(dx),
                          ptr(dw),
                          ptr(db),
                          partial.defined() ? partial.data<float>() : nullptr};
    const char* err = cuda::norm_bwd_cuda(p, launch_stream());
    RESONA_CHECK(err == nullptr) << op << " backward of " << s.x.describe() << " on CUDA: " << err;
    if (kLayer) return {dx, dw, db};
    return {dx, dw};
  }
  const Tensor dc = d.contiguous();
  Tensor dx = ctx.needs(0) ? empty(s.x.shape(), s.x.dtype()) : Tensor();
  Tensor dw = ctx.needs(1) ? zeros({D}, s.x.dtype()) : Tensor();
  Tensor db = ctx.needs(2) ? zeros({D}, s.x.dtype()) : Tensor();
  dispatch_floating(op, d.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    norm_bwd<kLayer, T>(s.x.data<T>(), data_or_null<T>(s.weight), data_or_null<T>(s.mean),
                        s.rstd.data<T>(), dc.data<T>(), R, D, data_or_null<T>(dx),
                        data_or_null<T>(dw), data_or_null<T>(db));
  });
  if (kLayer) return {dx, dw, db};
  return {dx, dw};
}

struct RmsNormOp {
  static constexpr const char* kName = "rms_norm";
  using Saved = NormSaved;
  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, const Tensor& weight, double eps) {
    return norm_forward<false>(kName, ctx, x, weight, Tensor(), eps);
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    return norm_backward<false>(kName, ctx, d);
  }
};

struct LayerNormOp {
  static constexpr const char* kName = "layer_norm";
  using Saved = NormSaved;
  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, const Tensor& weight, const Tensor& bias,
                        double eps) {
    return norm_forward<true>(kName, ctx, x, weight, bias, eps);
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    return norm_backward<true>(kName, ctx, d);
  }
};

}  // namespace

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  return apply<RmsNormOp>(x, weight, eps);
}

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  return apply<LayerNormOp>(x, weight, bias, eps);
}

}  // namespace resona
