// Mamba's selective scan with the discretisation fused in (CPU, float32 and float64).
//
//   h_t = exp(delta_t A) * h_{t-1} + (delta_t B_t) x_t      h: [D, N] per sequence
//   y_t = C_t . h_t + D_skip * x_t                          h_{-1} = h0 (zeros if undefined)
//   x, delta: [B, T, D]   A: [D, N]   B, C: [B, T, N]   D_skip: [D]   h0: [B, D, N]
//   returns {y [B, T, D], h_T [B, D, N]}
// i.e. per channel d and state n, with a_t = exp(delta_t[d] A[d, n]), u_t = delta_t[d] x_t[d]:
//   h_t[d, n] = a_t h_{t-1}[d, n] + u_t B_t[n],   y_t[d] = sum_n C_t[n] h_t[d, n] + D_skip[d]
//   x_t[d]
//
// Backward, with g_t = dL/dh_t through all later steps (g_T-1 starts from d_h_T):
//   g_t = C_t d_y_t[d] + a_{t+1} g_{t+1}
//   d_C_t[n]   = sum_d d_y_t[d] h_t[d, n]
//   d_B_t[n]   = sum_d u_t[d] g_t[d, n]
//   d_x_t[d]   = D_skip[d] d_y_t[d] + delta_t[d] sum_n B_t[n] g_t[d, n]
//   d_delta_t[d] = x_t[d] sum_n B_t[n] g_t[d, n] + sum_n A[d, n] a_t g_t h_{t-1}   (all at [d, n])
//   d_A[d, n]  = sum_{b, t} delta_t[d] a_t g_t h_{t-1},   d_D_skip[d] = sum_{b, t} d_y_t[d] x_t[d]
//   d_h0       = a_0 g_0
//
// The states run in an [N, D] layout (rows of D contiguous channels) so every step is a
// few length-D vector operations. Saved for backward: the inputs (contiguous) and the
// state at the start of every kCheckpoint-step chunk, [B, ceil(T / kCheckpoint), N, D];
// backward recomputes one chunk's states and decays (2 kCheckpoint N D values) and walks
// it in reverse, so [B, T, D, N] is never stored. d_A and d_D_skip sum B*T terms: each
// chunk's partial sum is added into a double accumulator and rounded once. Gradients are
// fresh tensors; only the requested ones are computed.
//
// CUDA (float32 and bfloat16 storage, float32 arithmetic and states; kernels in
// cuda/selective_scan.cu): one thread per (b, 32-step chunk, d) keeps h[d, 0..N) in
// registers (N <= 64), so the chunks run in parallel and are joined by a carry pass; the
// same formulas as above. Inputs of any strides are made contiguous once (a copy only when
// needed). y comes back in the input dtype and h_T in float32 whatever the input dtype; h0
// may be float32 or the input dtype (d_h0 takes h0's). Saved: the contiguous inputs, A as
// given ([D, N]), and the float32 state entering every chunk, [B, ceil(T / 32), N, D].
// d_B, d_C (sums over D) and d_A, d_D_skip (sums over B*T) are deterministic two-stage
// float32 reductions (cuda/selective_scan.h), bit-identical run to run.
#include <Eigen/Core>
#include <algorithm>
#include <vector>

#include "autograd/function.h"
#include "core/dispatch.h"
#include "cuda/selective_scan.h"
#include "ops/device_util.h"
#include "ops/scan.h"

namespace resona {
namespace {

// Steps per saved state: backward holds 2 * kCheckpoint * N * D values of one chunk.
constexpr int64_t kCheckpoint = 32;

template <class F>
using Mat = Eigen::Matrix<F, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class F>
using RowVec = Eigen::Matrix<F, 1, Eigen::Dynamic>;
template <class F>
using ColVec = Eigen::Matrix<F, Eigen::Dynamic, 1>;

struct ScanDims {
  int64_t B = 0, T = 0, D = 0, N = 0;
  int64_t n_chunks() const { return (T + kCheckpoint - 1) / kCheckpoint; }
};

// Raw pointers of the (contiguous) inputs; D_skip and h0 may be null.
template <class F>
struct ScanInputs {
  const F *x, *delta, *At, *B, *C, *D_skip, *h0;
};

// [D, N] -> [N, D] (or back with the sizes swapped).
template <class F>
void transpose_into(const F* src, F* dst, int64_t rows, int64_t cols) {
  Eigen::Map<Mat<F>>(dst, cols, rows) = Eigen::Map<const Mat<F>>(src, rows, cols).transpose();
}

// One step: a = exp(A^T * delta_t), h = a * h_prev + B_t u_t (u = delta_t * x_t).
template <class F>
void step(const ScanDims& d, const ScanInputs<F>& in, int64_t row, Eigen::Ref<Mat<F>> a,
          Eigen::Ref<Mat<F>> h, const Eigen::Ref<const Mat<F>>& h_prev, RowVec<F>& u) {
  Eigen::Map<const RowVec<F>> delta(in.delta + row * d.D, d.D), x(in.x + row * d.D, d.D);
  Eigen::Map<const Mat<F>> At(in.At, d.N, d.D);
  Eigen::Map<const ColVec<F>> Bt(in.B + row * d.N, d.N);
  // The exponent first, then exp on the plain block: Eigen vectorises exp only there.
  for (int64_t n = 0; n < d.N; ++n) a.row(n) = At.row(n).cwiseProduct(delta);
  a.array() = a.array().exp();
  u = (delta.array() * x.array()).matrix();
  h = (a.array() * h_prev.array()).matrix();
  h.noalias() += Bt * u;
}

template <class F>
void scan_forward(const ScanDims& d, const ScanInputs<F>& in, F* y, F* hT, F* checkpoints) {
  Mat<F> h(d.N, d.D), a(d.N, d.D);
  RowVec<F> u(d.D);
  for (int64_t b = 0; b < d.B; ++b) {
    if (in.h0 != nullptr) {
      transpose_into(in.h0 + b * d.D * d.N, h.data(), d.D, d.N);
    } else {
      h.setZero();
    }
    for (int64_t t = 0; t < d.T; ++t) {
      if (checkpoints != nullptr && t % kCheckpoint == 0) {
        std::copy(h.data(), h.data() + d.N * d.D,
                  checkpoints + (b * d.n_chunks() + t / kCheckpoint) * d.N * d.D);
      }
      const int64_t row = b * d.T + t;
      step<F>(d, in, row, a, h, h, u);
      Eigen::Map<RowVec<F>> yt(y + row * d.D, d.D);
      Eigen::Map<const RowVec<F>> Ct(in.C + row * d.N, d.N);
      yt.noalias() = Ct * h;
      if (in.D_skip != nullptr) {
        Eigen::Map<const RowVec<F>> x(in.x + row * d.D, d.D), D_skip(in.D_skip, d.D);
        yt.array() += D_skip.array() * x.array();
      }
    }
    transpose_into(h.data(), hT + b * d.D * d.N, d.N, d.D);
  }
}

struct ScanGrads {
  void *dx = nullptr, *ddelta = nullptr, *dA = nullptr, *dB = nullptr, *dC = nullptr, *dD = nullptr,
       *dh0 = nullptr;
};

template <class F>
void scan_backward(const ScanDims& d, const ScanInputs<F>& in, const F* checkpoints, const F* dy,
                   const F* dhT, const ScanGrads& out) {
  const int64_t N = d.N, D = d.D, ND = d.N * d.D;
  F* dx = static_cast<F*>(out.dx);
  F* ddelta = static_cast<F*>(out.ddelta);
  F* dB = static_cast<F*>(out.dB);
  F* dC = static_cast<F*>(out.dC);
  const bool want_sB = dx != nullptr || ddelta != nullptr;     // need sum_n B_t[n] g_t[., n]
  const bool want_w = ddelta != nullptr || out.dA != nullptr;  // need a_t g_t h_{t-1}
  Eigen::Map<const Mat<F>> At(in.At, N, D);
  Mat<F> hs(kCheckpoint * N, D), as(kCheckpoint * N, D);  // one chunk's h_t and a_t
  Mat<F> g(N, D), w(N, D), h_start(N, D), accA(N, D);
  RowVec<F> u(D), sB(D), accD(D);
  std::vector<double> sumA(out.dA != nullptr ? ND : 0, 0.0), sumD(out.dD != nullptr ? D : 0, 0.0);
  Eigen::Map<const RowVec<F>> D_skip(in.D_skip, in.D_skip != nullptr ? D : 0);

  for (int64_t b = 0; b < d.B; ++b) {
    transpose_into(dhT + b * ND, g.data(), D, N);
    for (int64_t c = d.n_chunks() - 1; c >= 0; --c) {
      const int64_t t0 = c * kCheckpoint, L = std::min(kCheckpoint, d.T - t0);
      h_start = Eigen::Map<const Mat<F>>(checkpoints + (b * d.n_chunks() + c) * ND, N, D);
      for (int64_t i = 0; i < L; ++i) {
        const int64_t row = b * d.T + t0 + i;
        if (i == 0) {
          step<F>(d, in, row, as.middleRows(0, N), hs.middleRows(0, N), h_start, u);
        } else {
          step<F>(d, in, row, as.middleRows(i * N, N), hs.middleRows(i * N, N),
                  hs.middleRows((i - 1) * N, N), u);
        }
      }
      accA.setZero();
      accD.setZero();
      for (int64_t i = L - 1; i >= 0; --i) {
        const int64_t row = b * d.T + t0 + i;
        Eigen::Map<const RowVec<F>> dyt(dy + row * D, D), x(in.x + row * D, D);
        Eigen::Map<const RowVec<F>> delta(in.delta + row * D, D);
        Eigen::Map<const ColVec<F>> Bt(in.B + row * N, N), Ct(in.C + row * N, N);
        auto h = hs.middleRows(i * N, N);
        auto a = as.middleRows(i * N, N);
        g.noalias() += Ct * dyt;
        if (dC != nullptr) Eigen::Map<ColVec<F>>(dC + row * N, N).noalias() = h * dyt.transpose();
        if (out.dD != nullptr) accD.array() += dyt.array() * x.array();
        if (dB != nullptr) {
          u = (delta.array() * x.array()).matrix();
          Eigen::Map<ColVec<F>>(dB + row * N, N).noalias() = g * u.transpose();
        }
        if (want_sB) sB.noalias() = Bt.transpose() * g;
        if (dx != nullptr) {
          Eigen::Map<RowVec<F>> dxt(dx + row * D, D);
          dxt = (delta.array() * sB.array()).matrix();
          if (in.D_skip != nullptr) dxt.array() += D_skip.array() * dyt.array();
        }
        if (want_w) {
          if (i > 0) {
            w = (g.array() * a.array() * hs.middleRows((i - 1) * N, N).array()).matrix();
          } else {
            w = (g.array() * a.array() * h_start.array()).matrix();
          }
          if (ddelta != nullptr) {
            Eigen::Map<RowVec<F>> ddt(ddelta + row * D, D);
            ddt = (x.array() * sB.array() + (w.array() * At.array()).colwise().sum()).matrix();
          }
          if (out.dA != nullptr) accA.array() += w.array().rowwise() * delta.array();
        }
        g.array() *= a.array();
      }
      for (int64_t j = 0; j < static_cast<int64_t>(sumA.size()); ++j) sumA[j] += accA.data()[j];
      for (int64_t j = 0; j < static_cast<int64_t>(sumD.size()); ++j) sumD[j] += accD(j);
    }
    if (out.dh0 != nullptr) transpose_into(g.data(), static_cast<F*>(out.dh0) + b * ND, N, D);
  }
  if (out.dA != nullptr) {
    F* dA = static_cast<F*>(out.dA);  // [D, N] from the [N, D] sums
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t j = 0; j < D; ++j) dA[j * N + n] = static_cast<F>(sumA[n * D + j]);
    }
  }
  if (out.dD != nullptr) {
    F* dD = static_cast<F*>(out.dD);
    for (int64_t j = 0; j < D; ++j) dD[j] = static_cast<F>(sumD[j]);
  }
}

struct SelectiveScanOp {
  static constexpr const char* kName = "selective_scan";
  struct Saved {
    Tensor x, delta, At, B, C, D_skip, h0;  // contiguous; At = A^T [N, D]
    Tensor checkpoints;                     // [B, n_chunks, N, D]
    ScanDims d;
    Tensor A;                 // CUDA: A as given, [D, N] contiguous (no At, no h0)
    bool cuda = false;        // saved by the CUDA forward (checkpoints are float32)
    bool h0_float32 = false;  // CUDA: h0 (hence d_h0) is float32 rather than x's dtype
  };

  static std::vector<Tensor> forward(Ctx<Saved>& ctx, const Tensor& x, const Tensor& delta,
                                     const Tensor& A, const Tensor& B, const Tensor& C,
                                     const Tensor& D_skip, const Tensor& h0) {
    check_same_device(kName, {&x, &delta, &A, &B, &C, &D_skip, &h0});
    const bool on_cuda = x.device().is_cuda();
    if (!on_cuda) require_cpu(kName, x);  // all on x's device
    check_floating(kName, x);
    if (on_cuda) {
      cuda_kernel_dtype(kName, x);
      check_same_dtype(kName, {&x, &delta, &A, &B, &C, &D_skip});
      RESONA_CHECK(!h0.defined() || h0.dtype() == x.dtype() || h0.dtype() == DType::kFloat32)
          << "selective_scan: h0 " << h0.describe() << " must be float32 or x's dtype "
          << dtype_name(x.dtype());
    } else {
      check_same_dtype(kName, {&x, &delta, &A, &B, &C, &D_skip, &h0});
    }
    RESONA_CHECK(x.dim() == 3) << "selective_scan: x must be [B, T, D], got " << x.describe();
    RESONA_CHECK(A.dim() == 2) << "selective_scan: A must be [D, N], got " << A.describe();
    ScanDims d;
    d.B = x.size(0);
    d.T = x.size(1);
    d.D = x.size(2);
    d.N = A.size(1);
    RESONA_CHECK_SHAPE(delta, d.B, d.T, d.D);
    RESONA_CHECK_SHAPE(A, d.D, d.N);
    RESONA_CHECK_SHAPE(B, d.B, d.T, d.N);
    RESONA_CHECK_SHAPE(C, d.B, d.T, d.N);
    if (D_skip.defined()) RESONA_CHECK_SHAPE(D_skip, d.D);
    if (h0.defined()) RESONA_CHECK_SHAPE(h0, d.B, d.D, d.N);
    if (on_cuda) return forward_cuda(ctx, x, delta, A, B, C, D_skip, h0, d);

    Saved s;
    s.d = d;
    s.x = x.contiguous();
    s.delta = delta.contiguous();
    s.B = B.contiguous();
    s.C = C.contiguous();
    if (D_skip.defined()) s.D_skip = D_skip.contiguous();
    if (h0.defined()) s.h0 = h0.contiguous();
    s.At = A.transpose(0, 1).contiguous();
    if (ctx.requires_grad) s.checkpoints = empty({d.B, d.n_chunks(), d.N, d.D}, x.dtype());
    Tensor y = empty({d.B, d.T, d.D}, x.dtype());
    Tensor hT = empty({d.B, d.D, d.N}, x.dtype());
    dispatch_floating(kName, x.dtype(), [&](auto tag) {
      using F = typename decltype(tag)::type;
      scan_forward<F>(d, inputs<F>(s), y.data<F>(), hT.data<F>(),
                      s.checkpoints.defined() ? s.checkpoints.data<F>() : nullptr);
    });
    if (ctx.requires_grad) ctx.saved = std::move(s);
    return {y, hT};
  }

  static Tensor scratch_tensor(size_t bytes, Device device) {
    return empty({static_cast<int64_t>((bytes + 3) / 4)}, DType::kFloat32, device);
  }

  static std::vector<Tensor> forward_cuda(Ctx<Saved>& ctx, const Tensor& x, const Tensor& delta,
                                          const Tensor& A, const Tensor& B, const Tensor& C,
                                          const Tensor& D_skip, const Tensor& h0,
                                          const ScanDims& d) {
    RESONA_CHECK(d.N <= cuda::kSelectiveScanMaxN)
        << "selective_scan: CUDA supports a state size N of at most " << cuda::kSelectiveScanMaxN
        << ", got A " << A.describe();
    const Device dev = x.device();
    Saved s;
    s.d = d;
    s.cuda = true;
    s.x = x.contiguous();
    s.delta = delta.contiguous();
    s.A = A.contiguous();
    s.B = B.contiguous();
    s.C = C.contiguous();
    if (D_skip.defined()) s.D_skip = D_skip.contiguous();
    Tensor h0c = h0.defined() ? h0.contiguous() : Tensor();
    s.h0_float32 = h0.defined() && h0.dtype() == DType::kFloat32;
    // The state entering every chunk: needed by the forward's last pass, saved for backward.
    const int64_t chunks = (d.T + cuda::kSelectiveScanChunk - 1) / cuda::kSelectiveScanChunk;
    s.checkpoints = empty({d.B, chunks, d.N, d.D}, DType::kFloat32, dev);
    Tensor y = empty({d.B, d.T, d.D}, x.dtype(), dev);
    Tensor hT = empty({d.B, d.D, d.N}, DType::kFloat32, dev);
    cuda::SelectiveScanFwdParams p{};
    p.dtype = cuda_kernel_dtype(kName, x);
    p.B = d.B;
    p.T = d.T;
    p.D = d.D;
    p.N = d.N;
    p.x = s.x.raw_data();
    p.delta = s.delta.raw_data();
    p.A = s.A.raw_data();
    p.Bm = s.B.raw_data();
    p.Cm = s.C.raw_data();
    p.D_skip = s.D_skip.defined() ? s.D_skip.raw_data() : nullptr;
    p.h0 = h0c.defined() ? h0c.raw_data() : nullptr;
    p.h0_float32 = s.h0_float32;
    p.y = y.raw_data();
    p.h_T = hT.data<float>();
    p.checkpoints = s.checkpoints.data<float>();
    Tensor scratch = scratch_tensor(cuda::selective_scan_fwd_scratch_bytes(p), dev);
    p.scratch = scratch.raw_data();
    const char* err = cuda::selective_scan_fwd_cuda(p, launch_stream());
    RESONA_CHECK(err == nullptr) << "selective_scan on " << x.describe() << ": " << err;
    if (ctx.requires_grad) ctx.saved = std::move(s);
    return {y, hT};
  }

  static Grads backward_cuda(Ctx<Saved>& ctx, const std::vector<Tensor>& d_outs) {
    const Saved& s = ctx.saved;
    const ScanDims& d = s.d;
    const Device dev = s.x.device();
    const DType dt = s.x.dtype();
    const Tensor& d_y_in = d_outs.at(0);
    const Tensor& d_hT_in = d_outs.at(1);
    RESONA_CHECK(d_y_in.defined() && d_y_in.device() == dev &&
                 d_y_in.shape() == Shape({d.B, d.T, d.D}))
        << "selective_scan backward: gradient of y " << d_y_in.describe() << ", expected [" << d.B
        << ", " << d.T << ", " << d.D << "] on " << s.x.describe();
    Tensor d_y = copy_to(d_y_in, dt, dev).contiguous();
    Tensor d_hT;
    if (d_hT_in.defined()) {
      RESONA_CHECK(d_hT_in.device() == dev && d_hT_in.shape() == Shape({d.B, d.D, d.N}))
          << "selective_scan backward: gradient of h_T " << d_hT_in.describe() << ", expected ["
          << d.B << ", " << d.D << ", " << d.N << "] on " << s.x.describe();
      d_hT = copy_to(d_hT_in, DType::kFloat32, dev).contiguous();
    }
    auto maybe = [&](size_t i, const Shape& shape, DType t) {
      return ctx.needs(i) ? empty(shape, t, dev) : Tensor();
    };
    Tensor dx = maybe(0, {d.B, d.T, d.D}, dt), ddelta = maybe(1, {d.B, d.T, d.D}, dt);
    Tensor dA = maybe(2, {d.D, d.N}, dt), dB = maybe(3, {d.B, d.T, d.N}, dt);
    Tensor dC = maybe(4, {d.B, d.T, d.N}, dt), dD = maybe(5, {d.D}, dt);
    Tensor dh0 = maybe(6, {d.B, d.D, d.N}, s.h0_float32 ? DType::kFloat32 : dt);
    auto ptr = [](const Tensor& t) { return t.defined() ? t.raw_data() : nullptr; };
    cuda::SelectiveScanBwdParams p{};
    p.dtype = cuda_kernel_dtype(kName, s.x);
    p.B = d.B;
    p.T = d.T;
    p.D = d.D;
    p.N = d.N;
    p.x = s.x.raw_data();
    p.delta = s.delta.raw_data();
    p.A = s.A.raw_data();
    p.Bm = s.B.raw_data();
    p.Cm = s.C.raw_data();
    p.D_skip = ptr(s.D_skip);
    p.checkpoints = s.checkpoints.data<float>();
    p.d_y = d_y.raw_data();
    p.d_h_T = d_hT.defined() ? d_hT.data<float>() : nullptr;
    p.d_x = ptr(dx);
    p.d_delta = ptr(ddelta);
    p.d_A = ptr(dA);
    p.d_B = ptr(dB);
    p.d_C = ptr(dC);
    p.d_D_skip = ptr(dD);
    p.d_h0 = ptr(dh0);
    p.d_h0_float32 = s.h0_float32;
    Tensor scratch = scratch_tensor(cuda::selective_scan_bwd_scratch_bytes(p), dev);
    p.scratch = scratch.raw_data();
    const char* err = cuda::selective_scan_bwd_cuda(p, launch_stream());
    RESONA_CHECK(err == nullptr) << "selective_scan backward on " << s.x.describe() << ": " << err;
    return {dx, ddelta, dA, dB, dC, dD, dh0};
  }

  static Grads backward(Ctx<Saved>& ctx, const std::vector<Tensor>& d_outs) {
    const Saved& s = ctx.saved;
    if (s.cuda) return backward_cuda(ctx, d_outs);
    const ScanDims& d = s.d;
    require_cpu(kName, d_outs.at(0));
    require_cpu(kName, d_outs.at(1));
    Tensor dy = d_outs[0].contiguous(), dhT = d_outs[1].contiguous();
    const DType dt = s.x.dtype();
    auto maybe = [&](size_t i, const Shape& shape) {
      return ctx.needs(i) ? empty(shape, dt) : Tensor();
    };
    Tensor dx = maybe(0, {d.B, d.T, d.D}), ddelta = maybe(1, {d.B, d.T, d.D});
    Tensor dA = maybe(2, {d.D, d.N}), dB = maybe(3, {d.B, d.T, d.N});
    Tensor dC = maybe(4, {d.B, d.T, d.N}), dD = maybe(5, {d.D});
    Tensor dh0 = maybe(6, {d.B, d.D, d.N});
    auto ptr = [](const Tensor& t) { return t.defined() ? t.raw_data() : nullptr; };
    ScanGrads g{ptr(dx), ptr(ddelta), ptr(dA), ptr(dB), ptr(dC), ptr(dD), ptr(dh0)};
    dispatch_floating(kName, dt, [&](auto tag) {
      using F = typename decltype(tag)::type;
      scan_backward<F>(d, inputs<F>(s), s.checkpoints.data<F>(), dy.data<F>(), dhT.data<F>(), g);
    });
    return {dx, ddelta, dA, dB, dC, dD, dh0};
  }

  template <class F>
  static ScanInputs<F> inputs(const Saved& s) {
    auto p = [](const Tensor& t) -> const F* { return t.defined() ? t.data<F>() : nullptr; };
    return {p(s.x), p(s.delta), p(s.At), p(s.B), p(s.C), p(s.D_skip), p(s.h0)};
  }
};

}  // namespace

RecurrentOutput selective_scan(const Tensor& x, const Tensor& delta, const Tensor& A,
                               const Tensor& B, const Tensor& C, const Tensor& D_skip,
                               const Tensor& h0) {
  std::vector<Tensor> out = apply<SelectiveScanOp>(x, delta, A, B, C, D_skip, h0);
  return {out[0], out[1]};
}

}  // namespace resona
