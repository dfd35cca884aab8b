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
#include <Eigen/Core>
#include <vector>

#include "autograd/function.h"
#include "core/dispatch.h"
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
  };

  static Tensor forward(Ctx<Saved>& ctx, const Tensor& a_in, const Tensor& b, const Tensor& h0) {
    for (const Tensor* t : {&a_in, &b, &h0}) {
      if (t->defined()) require_cpu(kName, *t);
    }
    check_floating(kName, a_in);
    check_same_dtype(kName, {&a_in, &b, &h0});
    RESONA_CHECK(a_in.dim() == 3) << "linear_scan: a must be [B, T, D], got " << a_in.describe();
    const int64_t B = a_in.size(0), T = a_in.size(1), D = a_in.size(2);
    RESONA_CHECK_SHAPE(b, B, T, D);
    if (h0.defined()) RESONA_CHECK_SHAPE(h0, B, D);

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

  static Grads backward(Ctx<Saved>& ctx, const Tensor& d_h_in) {
    const Saved& s = ctx.saved;
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
