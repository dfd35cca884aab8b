// Causal depthwise conv1d over time, channels last (CPU: float32 and float64; CUDA:
// float32 and bfloat16 with float32 arithmetic, kernels in cuda/conv.cu).
//
//   y[b, t, d] = bias[d] + sum_{j=0}^{W-1} weight[d, j] * x[b, t - (W-1) + j, d]
//   (terms with t - (W-1) + j < 0 are zero: the sequence is left-padded with W-1 zeros)
//
// Backward, with s = t - (W-1) + j:
//   d_x[b, s, d]   = sum_j weight[d, j] * d_y[b, s + (W-1) - j, d]   (anti-causal filter)
//   d_weight[d, j] = sum_{b, t} d_y[b, t, d] * x[b, s, d]
//   d_bias[d]      = sum_{b, t} d_y[b, t, d]
// Saved: x (for d_weight) and the weight transposed to [W, D] (for d_x), each only when
// that gradient is needed. d_weight and d_bias sum over B*T terms, so they accumulate in
// double even for float32 and are rounded once. Gradients are fresh tensors.
//
// CUDA: x, weight and bias may have any strides and are read in place; the forward
// writes the weight transposed to [W, D] on the device (saved for d_x) and saves x
// itself (a handle, not a copy) for d_weight. d_weight and d_bias come from a
// deterministic two-stage float32 reduction over B*T (cuda/conv.h), so they are
// bit-identical run to run.
#include "ops/conv.h"

#include <algorithm>
#include <vector>

#include "autograd/function.h"
#include "core/dispatch.h"
#include "cuda/conv.h"
#include "ops/device_util.h"

namespace resona {
namespace {

constexpr int64_t kMinWidth = 2;
constexpr int64_t kMaxWidth = 8;

// weight [D, W] (any strides) as a contiguous [W, D] tensor, so that the innermost loops
// over channels read one contiguous row per tap.
Tensor transpose_weight(const Tensor& weight) {
  const int64_t D = weight.shape()[0], W = weight.shape()[1];
  Tensor w_t = empty({W, D}, weight.dtype());
  dispatch_floating("causal_conv1d", weight.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* w = weight.data<T>();
    const int64_t s0 = weight.strides()[0], s1 = weight.strides()[1];
    T* o = w_t.data<T>();
    for (int64_t j = 0; j < W; ++j) {
      for (int64_t d = 0; d < D; ++d) o[j * D + d] = w[d * s0 + j * s1];
    }
  });
  return w_t;
}

struct CausalConv1dOp {
  static constexpr const char* kName = "causal_conv1d";
  struct Saved {
    Tensor x;    // contiguous [B, T, D], when d_weight is needed
    Tensor w_t;  // contiguous [W, D], when d_x is needed
    int64_t B = 0, T = 0, D = 0, W = 0;
    bool cuda = false;  // CUDA: x is kept with its strides
  };

  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, const Tensor& weight,
                        const Tensor& bias) {
    check_floating(kName, x);
    const bool on_cuda = x.device().is_cuda();
    if (on_cuda) {
      check_same_device(kName, {&x, &weight, &bias});
      cuda_kernel_dtype("causal_conv1d", x);
    } else {
      require_cpu(kName, x);
      require_cpu(kName, weight);
      if (bias.defined()) require_cpu(kName, bias);
    }
    check_same_dtype(kName, {&x, &weight, &bias});
    RESONA_CHECK(x.dim() == 3) << "causal_conv1d: x must be [B, T, D], got " << x.describe();
    RESONA_CHECK(weight.dim() == 2)
        << "causal_conv1d: weight must be [D, W], got " << weight.describe();
    const int64_t B = x.shape()[0], T = x.shape()[1], D = x.shape()[2];
    const int64_t W = weight.shape()[1];
    RESONA_CHECK(W >= kMinWidth && W <= kMaxWidth)
        << "causal_conv1d: kernel width W=" << W << " of weight " << weight.describe()
        << " is outside " << kMinWidth << ".." << kMaxWidth;
    RESONA_CHECK(weight.shape()[0] == D)
        << "causal_conv1d: weight " << weight.describe() << " has " << weight.shape()[0]
        << " channels but x " << x.describe() << " has D=" << D;
    if (bias.defined()) {
      RESONA_CHECK(bias.dim() == 1 && bias.shape()[0] == D)
          << "causal_conv1d: bias must be [D] = [" << D << "] to match x " << x.describe()
          << ", got " << bias.describe();
    }
    if (on_cuda) return forward_cuda(ctx, x, weight, bias, B, T, D, W);

    Tensor xc = x.contiguous();
    Tensor w_t = transpose_weight(weight);
    Tensor bc = bias.defined() ? bias.contiguous() : Tensor();
    Tensor y = empty({B, T, D}, x.dtype());
    dispatch_floating(kName, x.dtype(), [&](auto tag) {
      using F = typename decltype(tag)::type;
      const F* px = xc.data<F>();
      const F* pw = w_t.data<F>();
      const F* pb = bc.defined() ? bc.data<F>() : nullptr;
      F* py = y.data<F>();
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t t = 0; t < T; ++t) {
          F* yr = py + (b * T + t) * D;
          if (pb) {
            std::copy(pb, pb + D, yr);
          } else {
            std::fill(yr, yr + D, F(0));
          }
          for (int64_t j = std::max<int64_t>(0, W - 1 - t); j < W; ++j) {
            const F* xr = px + (b * T + t - (W - 1) + j) * D;
            const F* wr = pw + j * D;
            for (int64_t d = 0; d < D; ++d) yr[d] += wr[d] * xr[d];
          }
        }
      }
    });
    if (ctx.requires_grad) {
      ctx.saved.B = B;
      ctx.saved.T = T;
      ctx.saved.D = D;
      ctx.saved.W = W;
      if (ctx.needs(1)) ctx.saved.x = xc;
      if (ctx.needs(0)) ctx.saved.w_t = w_t;
    }
    return y;
  }

  static Tensor forward_cuda(Ctx<Saved>& ctx, const Tensor& x, const Tensor& weight,
                             const Tensor& bias, int64_t B, int64_t T, int64_t D, int64_t W) {
    Tensor y = empty({B, T, D}, x.dtype(), x.device());
    Tensor w_t = empty({W, D}, x.dtype(), x.device());
    cuda::CausalConv1dFwdParams p{};
    p.dtype = cuda_kernel_dtype("causal_conv1d", x);
    p.B = B;
    p.T = T;
    p.D = D;
    p.W = W;
    p.x = x.raw_data();
    for (int d = 0; d < 3; ++d) p.x_strides[d] = x.strides()[d];
    p.w = weight.raw_data();
    p.w_strides[0] = weight.strides()[0];
    p.w_strides[1] = weight.strides()[1];
    p.bias = bias.defined() ? bias.raw_data() : nullptr;
    p.bias_stride = bias.defined() ? bias.strides()[0] : 0;
    p.y = y.raw_data();
    p.w_t = w_t.raw_data();
    const char* err = cuda::causal_conv1d_fwd_cuda(p, launch_stream());
    RESONA_CHECK(err == nullptr) << "causal_conv1d on " << x.describe() << ": " << err;
    if (ctx.requires_grad) {
      ctx.saved.B = B;
      ctx.saved.T = T;
      ctx.saved.D = D;
      ctx.saved.W = W;
      ctx.saved.cuda = true;
      if (ctx.needs(1)) ctx.saved.x = x;
      if (ctx.needs(0)) ctx.saved.w_t = w_t;
    }
    return y;
  }

  static Grads backward_cuda(Ctx<Saved>& ctx, const Tensor& d_y) {
    const Saved& s = ctx.saved;
    RESONA_CHECK(d_y.device().is_cuda() && d_y.shape() == Shape({s.B, s.T, s.D}))
        << "causal_conv1d backward: gradient " << d_y.describe() << ", expected [" << s.B << ", "
        << s.T << ", " << s.D << "] on CUDA";
    const bool want_x = ctx.needs(0), want_w = ctx.needs(1), want_b = ctx.needs(2);
    cuda::CausalConv1dBwdParams p{};
    p.dtype = cuda_kernel_dtype("causal_conv1d", d_y);
    p.B = s.B;
    p.T = s.T;
    p.D = s.D;
    p.W = s.W;
    p.d_y = d_y.raw_data();
    for (int d = 0; d < 3; ++d) p.d_y_strides[d] = d_y.strides()[d];
    Tensor d_x, d_weight, d_bias, scratch;
    if (want_x) {
      RESONA_CHECK(s.w_t.dtype() == d_y.dtype())
          << "causal_conv1d backward: gradient " << d_y.describe() << " and weight dtype "
          << dtype_name(s.w_t.dtype()) << " differ";
      d_x = empty({s.B, s.T, s.D}, d_y.dtype(), d_y.device());
      p.w_t = s.w_t.raw_data();
      p.d_x = d_x.raw_data();
    }
    if (want_w) {
      RESONA_CHECK(s.x.dtype() == d_y.dtype())
          << "causal_conv1d backward: gradient " << d_y.describe() << " and input "
          << s.x.describe() << " differ in dtype";
      p.x = s.x.raw_data();
      for (int d = 0; d < 3; ++d) p.x_strides[d] = s.x.strides()[d];
      d_weight = empty({s.D, s.W}, d_y.dtype(), d_y.device());
      p.d_w = d_weight.raw_data();
    }
    if (want_b) {
      d_bias = empty({s.D}, d_y.dtype(), d_y.device());
      p.d_bias = d_bias.raw_data();
    }
    const size_t bytes = cuda::causal_conv1d_bwd_scratch_bytes(p);
    if (bytes > 0) {
      scratch = empty({static_cast<int64_t>((bytes + 3) / 4)}, DType::kFloat32, d_y.device());
      p.scratch = scratch.raw_data();
    }
    const char* err = cuda::causal_conv1d_bwd_cuda(p, launch_stream());
    RESONA_CHECK(err == nullptr) << "causal_conv1d backward on " << d_y.describe() << ": " << err;
    return {d_x, d_weight, d_bias};
  }

  static Grads backward(Ctx<Saved>& ctx, const Tensor& d_y_in) {
    const Saved& s = ctx.saved;
    if (s.cuda) return backward_cuda(ctx, d_y_in);
    const int64_t B = s.B, T = s.T, D = s.D, W = s.W;
    require_cpu(kName, d_y_in);
    Tensor d_y = d_y_in.contiguous();
    const bool want_x = ctx.needs(0), want_w = ctx.needs(1), want_b = ctx.needs(2);
    Tensor d_x, d_weight, d_bias;
    if (want_x) d_x = zeros({B, T, D}, d_y.dtype());
    std::vector<double> acc_w(want_w ? W * D : 0, 0.0);  // [W, D]
    std::vector<double> acc_b(want_b ? D : 0, 0.0);
    dispatch_floating(kName, d_y.dtype(), [&](auto tag) {
      using F = typename decltype(tag)::type;
      const F* pdy = d_y.data<F>();
      const F* px = want_w ? s.x.data<F>() : nullptr;
      const F* pw = want_x ? s.w_t.data<F>() : nullptr;
      F* pdx = want_x ? d_x.data<F>() : nullptr;
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t t = 0; t < T; ++t) {
          const F* dyr = pdy + (b * T + t) * D;
          if (want_b) {
            for (int64_t d = 0; d < D; ++d) acc_b[d] += dyr[d];
          }
          for (int64_t j = std::max<int64_t>(0, W - 1 - t); j < W; ++j) {
            const int64_t row = (b * T + t - (W - 1) + j) * D;  // x[b, s, :]
            if (want_x) {
              const F* wr = pw + j * D;
              F* dxr = pdx + row;
              for (int64_t d = 0; d < D; ++d) dxr[d] += wr[d] * dyr[d];
            }
            if (want_w) {
              const F* xr = px + row;
              double* aw = acc_w.data() + j * D;
              for (int64_t d = 0; d < D; ++d) aw[d] += static_cast<double>(dyr[d]) * xr[d];
            }
          }
        }
      }
      if (want_w) {
        d_weight = empty({D, W}, d_y.dtype());
        F* pdw = d_weight.data<F>();
        for (int64_t d = 0; d < D; ++d) {
          for (int64_t j = 0; j < W; ++j) pdw[d * W + j] = static_cast<F>(acc_w[j * D + d]);
        }
      }
      if (want_b) {
        d_bias = empty({D}, d_y.dtype());
        F* pdb = d_bias.data<F>();
        for (int64_t d = 0; d < D; ++d) pdb[d] = static_cast<F>(acc_b[d]);
      }
    });
    return {d_x, d_weight, d_bias};
  }
};

}  // namespace

Tensor causal_conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  return apply<CausalConv1dOp>(x, weight, bias);
}

}  // namespace resona
