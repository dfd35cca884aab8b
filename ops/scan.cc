// Diagonal linear recurrence (CPU, float32 and float64).
//
//   h_t = a_t * h_{t-1} + b_t        a, b, h: [B, T, D]   h_{-1} = h0 [B, D] (zeros if undefined)
//
// Backward, a reverse scan with the same decays shifted by one step:
//   g_t = d_h_t + a_{t+1} g_{t+1}   (g_{T-1} = d_h_{T-1})
//   d_b_t = g_t,   d_a_t = g_t * h_{t-1},   d_h0 = a_0 g_0
// The recurrence runs over t with the D channels of a step as one contiguous vector, so
// the sequential loop costs B*T vector operations of length D. Saved for backward: a (for
// the reverse scan and d_h0), the output h (for d_a) and h0 (for d_a_0), each only when
// a gradient needs it. Gradients are fresh tensors; only the requested ones are computed.
//
// CUDA (float32 and bfloat16 storage, float32 arithmetic and carries; kernels in
// cuda/scan.cu): a chunked scan, parallel over B, D and chunks of time, with the same
// formulas. Inputs of any strides are made contiguous once (a copy only when needed); h
// comes back in the input dtype, and h0 may be float32 or the input dtype (d_h0 takes
// h0's). Saved as on the CPU; under bfloat16 the saved h is the rounded output, so d_a
// carries its rounding (2^-8 relative). The carries between chunks live in a scratch
// tensor from the caching allocator.
#include <Eigen/Core>
#include <vector>

#include "autograd/function.h"
#include "core/dispatch.h"
#include "cuda/scan.h"
#include "ops/device_util.h"
#include "ops/scan.h"

namespace resona {
namespace {

template <class F>
using Row = Eigen::Array<F, 1, Eigen::Dynamic>;

struct LinearScanOp {
  static constexpr const char* kName = "linear_scan";
  struct Saved {
    Tensor a, h, h0;  // contiguous
    int64_t B = 0, T = 0, D = 0;
    bool cuda = false;        // saved by the CUDA forward
    bool h0_float32 = false;  // CUDA: h0 (hence d_h0) is float32 rather than a's dtype
  };

  static Tensor forward(Ctx<Saved>& ctx, const Tensor& a_in, const Tensor& b, const Tensor& h0) {
    check_same_device(kName, {&a_in, &b, &h0});
    const bool on_cuda = a_in.device().is_cuda();
    if (!on_cuda) require_cpu(kName, a_in);  // all on a's device
    check_floating(kName, a_in);
    if (on_cuda) {
      check_same_dtype(kName, {&a_in, &b});
      check_cuda_state_dtype(h0, a_in);
    } else {
      check_same_dtype(kName, {&a_in, &b, &h0});
    }
    RESONA_CHECK(a_in.dim() == 3) << "linear_scan: a must be [B, T, D], got " << a_in.describe();
    const int64_t B = a_in.size(0), T = a_in.size(1), D = a_in.size(2);
    RESONA_CHECK_SHAPE(b, B, T, D);
    if (h0.defined()) RESONA_CHECK_SHAPE(h0, B, D);
    if (on_cuda) return forward_cuda(ctx, a_in, b, h0, B, T, D);

    Tensor a = a_in.contiguous(), bc = b.contiguous();
    Tensor h0c = h0.defined() ? h0.contiguous() : Tensor();
    Tensor h = empty({B, T, D}, a.dtype());
    dispatch_floating(kName, a.dtype(), [&](auto tag) {
      using F = typename decltype(tag)::type;
      const F* pa = a.data<F>();
      const F* pb = bc.data<F>();
      F* ph = h.data<F>();
      Row<F> zero = Row<F>::Zero(D);
      for (int64_t n = 0; n < B; ++n) {
        const F* prev = h0c.defined() ? h0c.data<F>() + n * D : zero.data();
        for (int64_t t = 0; t < T; ++t) {
          const int64_t off = (n * T + t) * D;
          Eigen::Map<Row<F>>(ph + off, D) =
              Eigen::Map<const Row<F>>(pa + off, D) * Eigen::Map<const Row<F>>(prev, D) +
              Eigen::Map<const Row<F>>(pb + off, D);
          prev = ph + off;
        }
      }
    });
    if (ctx.requires_grad) {
      Saved& s = ctx.saved;
      s.B = B;
      s.T = T;
      s.D = D;
      s.a = a;  // the reverse scan always needs it
      if (ctx.needs(0)) {
        s.h = h;
        s.h0 = h0c;
      }
    }
    return h;
  }

  // On CUDA, h0 is float32 (a state) or a's dtype.
  static void check_cuda_state_dtype(const Tensor& h0, const Tensor& a) {
    cuda_kernel_dtype(kName, a);
    RESONA_CHECK(!h0.defined() || h0.dtype() == a.dtype() || h0.dtype() == DType::kFloat32)
        << "linear_scan: h0 " << h0.describe() << " must be float32 or a's dtype "
        << dtype_name(a.dtype());
  }

  static Tensor scratch_for(int64_t B, int64_t T, int64_t D, Device device) {
    const size_t bytes = cuda::linear_scan_scratch_bytes(B, T, D);
    return empty({static_cast<int64_t>((bytes + 3) / 4)}, DType::kFloat32, device);
  }

  static Tensor forward_cuda(Ctx<Saved>& ctx, const Tensor& a_in, const Tensor& b_in,
                             const Tensor& h0_in, int64_t B, int64_t T, int64_t D) {
    Tensor a = a_in.contiguous(), b = b_in.contiguous();
    Tensor h0 = h0_in.defined() ? h0_in.contiguous() : Tensor();
    Tensor h = empty({B, T, D}, a.dtype(), a.device());
    Tensor scratch = scratch_for(B, T, D, a.device());
    cuda::LinearScanFwdParams p{};
    p.dtype = cuda_kernel_dtype(kName, a);
    p.B = B;
    p.T = T;
    p.D = D;
    p.a = a.raw_data();
    p.b = b.raw_data();
    p.h0 = h0.defined() ? h0.raw_data() : nullptr;
    p.h0_float32 = h0.defined() && h0.dtype() == DType::kFloat32;
    p.h = h.raw_data();
    p.scratch = scratch.raw_data();
    const char* err = cuda::linear_scan_fwd_cuda(p, launch_stream());
    RESONA_CHECK(err == nullptr) << "linear_scan on " << a_in.describe() << ": " << err;
    if (ctx.requires_grad) {
      Saved& s = ctx.saved;
      s.B = B;
      s.T = T;
      s.D = D;
      s.cuda = true;
      s.h0_float32 = p.h0_float32;
      s.a = a;
      if (ctx.needs(0)) {
        s.h = h;
        s.h0 = h0;
      }
    }
    return h;
  }

  static Grads backward_cuda(Ctx<Saved>& ctx, const Tensor& d_h_in) {
    const Saved& s = ctx.saved;
    const int64_t B = s.B, T = s.T, D = s.D;
    RESONA_CHECK(d_h_in.device() == s.a.device() && d_h_in.shape() == Shape({B, T, D}))
        << "linear_scan backward: gradient " << d_h_in.describe() << ", expected [" << B << ", "
        << T << ", " << D << "] on " << s.a.describe();
    const DType dt = s.a.dtype();
    Tensor d_h = copy_to(d_h_in, dt, s.a.device()).contiguous();
    Tensor d_a = ctx.needs(0) ? empty({B, T, D}, dt, d_h.device()) : Tensor();
    Tensor d_b = ctx.needs(1) ? empty({B, T, D}, dt, d_h.device()) : Tensor();
    // needs(2) means h0 was given; d_h0 takes its dtype.
    Tensor d_h0 =
        ctx.needs(2) ? empty({B, D}, s.h0_float32 ? DType::kFloat32 : dt, d_h.device()) : Tensor();
    Tensor scratch = scratch_for(B, T, D, d_h.device());
    cuda::LinearScanBwdParams p{};
    p.dtype = cuda_kernel_dtype(kName, d_h);
    p.B = B;
    p.T = T;
    p.D = D;
    p.a = s.a.raw_data();
    p.h = s.h.defined() ? s.h.raw_data() : nullptr;
    p.h0 = s.h0.defined() ? s.h0.raw_data() : nullptr;
    p.h0_float32 = s.h0_float32;
    p.d_h = d_h.raw_data();
    p.d_a = d_a.defined() ? d_a.raw_data() : nullptr;
    p.d_b = d_b.defined() ? d_b.raw_data() : nullptr;
    p.d_h0 = d_h0.defined() ? d_h0.raw_data() : nullptr;
    p.scratch = scratch.raw_data();
    const char* err = cuda::linear_scan_bwd_cuda(p, launch_stream());
    RESONA_CHECK(err == nullptr) << "linear_scan backward on " << d_h_in.describe() << ": " << err;
    return {d_a, d_b, d_h0};
  }

  static Grads backward(Ctx<Saved>& ctx, const Tensor& d_h_in) {
    const Saved& s = ctx.saved;
    if (s.cuda) return backward_cuda(ctx, d_h_in);
    const int64_t B = s.B, T = s.T, D = s.D;
    require_cpu(kName, d_h_in);
    Tensor d_h = d_h_in.contiguous();
    const DType dt = s.a.dtype();
    Tensor d_a = ctx.needs(0) ? empty({B, T, D}, dt) : Tensor();
    Tensor d_b = ctx.needs(1) ? empty({B, T, D}, dt) : Tensor();
    Tensor d_h0 = ctx.needs(2) ? empty({B, D}, dt) : Tensor();
    dispatch_floating(kName, dt, [&](auto tag) {
      using F = typename decltype(tag)::type;
      const F* pa = s.a.data<F>();
      const F* pdh = d_h.data<F>();
      Row<F> g(D);
      for (int64_t n = 0; n < B; ++n) {
        g.setZero();
        for (int64_t t = T - 1; t >= 0; --t) {
          const int64_t off = (n * T + t) * D;
          g += Eigen::Map<const Row<F>>(pdh + off, D);  // g_t = d_h_t + a_{t+1} g_{t+1}
          if (d_b.defined()) Eigen::Map<Row<F>>(d_b.data<F>() + off, D) = g;
          if (d_a.defined()) {
            Eigen::Map<Row<F>> da(d_a.data<F>() + off, D);
            if (t > 0) {
              da = g * Eigen::Map<const Row<F>>(s.h.data<F>() + off - D, D);
            } else if (s.h0.defined()) {
              da = g * Eigen::Map<const Row<F>>(s.h0.data<F>() + n * D, D);
            } else {
              da.setZero();
            }
          }
          g *= Eigen::Map<const Row<F>>(pa + off, D);
        }
        if (d_h0.defined()) Eigen::Map<Row<F>>(d_h0.data<F>() + n * D, D) = g;
      }
    });
    return {d_a, d_b, d_h0};
  }
};

}  // namespace

Tensor linear_scan(const Tensor& a, const Tensor& b, const Tensor& h0) {
  return apply<LinearScanOp>(a, b, h0);
}

}  // namespace resona
