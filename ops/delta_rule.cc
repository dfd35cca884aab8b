// The delta rule (DeltaNet), chunked with the WY representation as in FLA's chunk_delta_rule
// (CPU: float32 and float64; CUDA: float32 and bfloat16, see the end of this comment).
//
//   S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T     S: [K, V] per (b, h)
//       = S_{t-1} + k_t v'_t^T,   v'_t = beta_t (v_t - S_{t-1}^T k_t)
//   o_t = scale * S_t^T q_t
//   q, k: [B, T, H, K]   v: [B, T, H, V]   beta: [B, T, H]   h0: [B, H, K, V]
//   returns {o [B, T, H, V], S_T [B, H, K, V]}
//
// Chunked forward, chunk of L <= C rows with state S0 at its start (q, k, v the chunk's rows):
//   M   = I + tril(diag(beta) k k^T, -1)               (unit lower triangular)
//   N   = M^-1                                         (forward substitution, blocked)
//   T   = N diag(beta),  W = T k,  U = T v             (the WY representation)
//   V'  = U - W S0                                     (= T (v - k S0): the rows v'_t)
//   o   = scale (q S0 + tril(q k^T) V')                (tril keeps the diagonal)
//   S_end = S0 + k^T V'
//
// Backward, chunk by chunk in reverse with d_S the gradient of S_end, R = v - k S0,
// P = tril(q k^T):
//   d_V' = scale P^T d_o + k d_S
//   d_q  = scale (d_o S0^T + tril(d_o V'^T) k)
//   d_k  = scale tril(d_o V'^T)^T q + V' d_S^T - d_R S0^T + (Z + Z^T) k
//   Y    = N^T d_V',   d_R = diag(beta) Y,   d_v = d_R
//   d_beta_i = R_i . Y_i + sum_{j<i} dM_ij (k_i . k_j),   dM = -Y V'^T (strictly lower part)
//   Z_ij = beta_i dM_ij (j < i),   d_S0 = scale q^T d_o + d_S - k^T d_R,   d_h0 = d_S0 of chunk 0
// which is FLA's prepare_wy_repr_bwd written through N: with T = N diag(beta) and
// V' = T R, d_T = d_V' R^T gives d_N = d_T diag(beta), d_M = -N^T d_N N^T = -Y V'^T and
// d_beta (through diag(beta)) = diag(N^T d_T) = rowwise R . Y, so no L x L x L product and
// no inverse beyond N are needed.
//
// Saved for backward: q, k, v, beta, h0 (the inputs, contiguous) and the options. N and
// the chunk states are recomputed in backward, one sequence at a time (T/C states of
// [K, V] and O(C^2 + C (K + V)) scratch). Gradients are fresh tensors; only the
// requested ones are computed.
//
// CUDA (kernels in cuda/delta_rule.cu): q, k, v, beta in float32 or bfloat16 with any
// strides, read in place; float32 arithmetic; chunk 1..64. States are float32 whatever
// the inputs' dtype: S_T is float32, h0 may be float32 or the inputs' dtype (so the S_T
// of one call feeds the next call's h0), and d_h0 takes h0's dtype. The forward saves
// the inputs as given (handles, not copies), every chunk's start state, float32
// [B, H, T/C, K, V], and the chunks' W, P = tril(q k^T), V', N and k k^T (float32,
// C (K + V + 3 C) floats per chunk: 1.4 times the states at C = 64, K = V = 150), so the
// backward does not run the forward's first kernel again or recompute V'. The same
// algebra as above, organised for parallelism: the per-chunk products run in parallel
// over (b, h, chunk) and only the state recurrences (S forward, d_S backward, whose
// columns are independent) run chunk after chunk, in parallel over (b, h, columns of V).
// d_S_end of chunk n satisfies d_S0 = d_S_end + scale q^T d_o - W^T d_V', since
// k^T d_R = k^T diag(beta) N^T d_V' = W^T d_V'. Sums run in a fixed order:
// deterministic.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <vector>

#include "autograd/function.h"
#include "core/dispatch.h"
#include "cuda/delta_rule.h"
#include "ops/device_util.h"
#include "ops/scan.h"

namespace resona {
namespace {

template <class F>
using Mat = Eigen::Matrix<F, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class F>
using ColArr = Eigen::Array<F, Eigen::Dynamic, 1>;
template <class F>
using CMap = Eigen::Map<const Mat<F>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class F>
using MMap = Eigen::Map<Mat<F>, Eigen::Unaligned, Eigen::OuterStride<>>;

// Rows per block of the blocked forward substitution in wy_inverse.
constexpr int64_t kBlock = 16;

struct DeltaDims {
  int64_t B = 0, T = 0, H = 0, K = 0, V = 0, C = 0;
};

// One (b, h) sequence inside the [B, T, H, .] tensors: row t of q lies at q + t * sqk.
template <class F>
struct DeltaSeq {
  const F *q = nullptr, *k = nullptr, *v = nullptr, *beta = nullptr;
  int64_t sqk = 0, sv = 0, sb = 0;
};

template <class F>
DeltaSeq<F> sequence(const DeltaDims& d, const F* q, const F* k, const F* v, const F* beta,
                     int64_t b, int64_t h) {
  DeltaSeq<F> s;
  s.q = q + (b * d.T * d.H + h) * d.K;
  s.k = k + (b * d.T * d.H + h) * d.K;
  s.v = v + (b * d.T * d.H + h) * d.V;
  s.beta = beta + b * d.T * d.H + h;
  s.sqk = d.H * d.K;
  s.sv = d.H * d.V;
  s.sb = d.H;
  return s;
}

template <class F>
struct DeltaWork {
  ColArr<F> beta;           // [C]
  Mat<F> KK, N, Tm, P, dP;  // [C, C]
  Mat<F> W, dK;             // [C, K]
  Mat<F> U, Vn, R, dVn, Y;  // [C, V]
  Mat<F> S, dS;             // [K, V]
  Mat<F> X;                 // [kBlock, C]
  std::vector<F> states;    // chunk-start states of one sequence, [n_chunks, K, V]

  explicit DeltaWork(const DeltaDims& d) {
    const int64_t C = d.C, K = d.K, V = d.V;
    beta.resize(C);
    for (Mat<F>* m : {&KK, &N, &Tm, &P, &dP}) m->resize(C, C);
    for (Mat<F>* m : {&W, &dK}) m->resize(C, K);
    for (Mat<F>* m : {&U, &Vn, &R, &dVn, &Y}) m->resize(C, V);
    S.resize(K, V);
    dS.resize(K, V);
    X.resize(std::min(kBlock, C), C);
  }
};

// beta of rows t0 .. t0+L-1, KK = k k^T and N = (I + tril(diag(beta) k k^T, -1))^-1.
// Forward substitution in blocks of kBlock rows: the diagonal blocks row by row, then
// each block row I from the rows above it, N_{I,<I} = -N_II (M_{I,<I} N_{<I,<I}) (the
// rows of M N = I below the diagonal), as one product instead of kBlock row solves.
template <class F>
void wy_inverse(const DeltaSeq<F>& s, const CMap<F>& k, int64_t t0, int64_t L, DeltaWork<F>& w) {
  for (int64_t i = 0; i < L; ++i) w.beta(i) = s.beta[(t0 + i) * s.sb];
  auto KK = w.KK.topLeftCorner(L, L);
  auto N = w.N.topLeftCorner(L, L);
  auto M = w.Tm.topLeftCorner(L, L);  // scratch: M_ij = beta_i (k_i . k_j), read below the diagonal
  KK.noalias() = k * k.transpose();
  M = (KK.array().colwise() * w.beta.head(L)).matrix();
  N.setZero();
  F* Nd = w.N.data();
  const F* Md = w.Tm.data();
  const int64_t ld = w.N.outerStride();  // the same for w.Tm
  for (int64_t r0 = 0; r0 < L; r0 += kBlock) {
    const int64_t b = std::min(kBlock, L - r0);
    // Row i of M N = I inside the diagonal block: N_i = e_i - sum_{r0<=j<i} M_ij N_j
    // (N_j vanishes beyond column j): plain loops, the block is at most kBlock wide.
    for (int64_t i = r0; i < r0 + b; ++i) {
      F* ni = Nd + i * ld;
      for (int64_t j = r0; j < i; ++j) {
        const F m = Md[i * ld + j];
        const F* nj = Nd + j * ld;
        for (int64_t c = r0; c <= j; ++c) ni[c] -= m * nj[c];
      }
      ni[i] = 1;
    }
    if (r0 > 0) {
      auto X = w.X.topLeftCorner(b, r0);
      X.noalias() = M.block(r0, 0, b, r0) *
                    N.topLeftCorner(r0, r0).template triangularView<Eigen::UnitLower>();
      X = -X;
      N.block(r0, 0, b, r0).noalias() =
          N.block(r0, r0, b, b).template triangularView<Eigen::UnitLower>() * X;
    }
  }
}

// Runs the chunks of one sequence from the state in w.S (h0 or zeros on entry, the final
// state on exit), writing o.
template <class F>
void delta_fwd_seq(const DeltaSeq<F>& s, const DeltaDims& d, F scale, F* o, DeltaWork<F>& w) {
  const int64_t K = d.K, V = d.V, C = d.C;
  for (int64_t t0 = 0; t0 < d.T; t0 += C) {
    const int64_t L = std::min(C, d.T - t0);
    CMap<F> q(s.q + t0 * s.sqk, L, K, Eigen::OuterStride<>(s.sqk));
    CMap<F> k(s.k + t0 * s.sqk, L, K, Eigen::OuterStride<>(s.sqk));
    CMap<F> v(s.v + t0 * s.sv, L, V, Eigen::OuterStride<>(s.sv));
    wy_inverse(s, k, t0, L, w);
    auto Tm = w.Tm.topLeftCorner(L, L);
    auto W = w.W.topRows(L);
    auto U = w.U.topRows(L);
    auto Vn = w.Vn.topRows(L);
    Tm = w.N.topLeftCorner(L, L) * w.beta.head(L).matrix().asDiagonal();
    W.noalias() = Tm.template triangularView<Eigen::Lower>() * k;
    U.noalias() = Tm.template triangularView<Eigen::Lower>() * v;
    Vn = U;
    Vn.noalias() -= W * w.S;
    MMap<F> om(o + t0 * s.sv, L, V, Eigen::OuterStride<>(s.sv));
    auto P = w.P.topLeftCorner(L, L);
    P.noalias() = q * k.transpose();
    om.noalias() = q * w.S;
    om.noalias() += P.template triangularView<Eigen::Lower>() * Vn;
    om *= scale;
    w.S.noalias() += k.transpose() * Vn;
  }
}

// Backward of one sequence. h0: [K, V] or null; d_o with row stride sv; d_ST: [K, V].
// Gradient pointers point at this sequence's element (b, 0, h, 0) (d_h0 at (b, h, 0, 0));
// null ones are not computed.
template <class F>
void delta_bwd_seq(const DeltaSeq<F>& s, const DeltaDims& d, F scale, const F* h0, const F* d_o,
                   const F* d_ST, F* dq, F* dk, F* dv, F* dbeta, F* dh0, DeltaWork<F>& w) {
  const int64_t K = d.K, V = d.V, C = d.C;
  const int64_t n_chunks = (d.T + C - 1) / C;
  w.states.resize(n_chunks * K * V);
  if (h0 != nullptr) {
    w.S = Eigen::Map<const Mat<F>>(h0, K, V);
  } else {
    w.S.setZero();
  }
  // The chunk-start states, by S_end = S0 + k^T N diag(beta) (v - k S0).
  for (int64_t t0 = 0, n = 0; t0 < d.T; t0 += C, ++n) {
    const int64_t L = std::min(C, d.T - t0);
    CMap<F> k(s.k + t0 * s.sqk, L, K, Eigen::OuterStride<>(s.sqk));
    CMap<F> v(s.v + t0 * s.sv, L, V, Eigen::OuterStride<>(s.sv));
    std::copy(w.S.data(), w.S.data() + K * V, w.states.data() + n * K * V);
    wy_inverse(s, k, t0, L, w);
    auto R = w.R.topRows(L);
    R = v;
    R.noalias() -= k * w.S;
    R = (R.array().colwise() * w.beta.head(L)).matrix();
    w.Vn.topRows(L).noalias() =
        w.N.topLeftCorner(L, L).template triangularView<Eigen::UnitLower>() * R;
    w.S.noalias() += k.transpose() * w.Vn.topRows(L);
  }

  w.dS = Eigen::Map<const Mat<F>>(d_ST, K, V);
  for (int64_t n = n_chunks - 1; n >= 0; --n) {
    const int64_t t0 = n * C, L = std::min(C, d.T - t0);
    CMap<F> q(s.q + t0 * s.sqk, L, K, Eigen::OuterStride<>(s.sqk));
    CMap<F> k(s.k + t0 * s.sqk, L, K, Eigen::OuterStride<>(s.sqk));
    CMap<F> v(s.v + t0 * s.sv, L, V, Eigen::OuterStride<>(s.sv));
    CMap<F> dO(d_o + t0 * s.sv, L, V, Eigen::OuterStride<>(s.sv));
    Eigen::Map<const Mat<F>> S0(w.states.data() + n * K * V, K, V);
    wy_inverse(s, k, t0, L, w);
    auto beta = w.beta.head(L);
    auto N = w.N.topLeftCorner(L, L);
    auto KK = w.KK.topLeftCorner(L, L);
    auto P = w.P.topLeftCorner(L, L);
    auto dP = w.dP.topLeftCorner(L, L);
    auto R = w.R.topRows(L);
    auto Vn = w.Vn.topRows(L);
    auto dVn = w.dVn.topRows(L);
    auto Y = w.Y.topRows(L);
    auto dK = w.dK.topRows(L);

    // Recompute V' = N diag(beta) R with R = v - k S0.
    R = v;
    R.noalias() -= k * S0;
    w.U.topRows(L) = (R.array().colwise() * beta).matrix();
    Vn.noalias() = N.template triangularView<Eigen::UnitLower>() * w.U.topRows(L);
    P.noalias() = scale * q * k.transpose();

    dVn.noalias() = k * w.dS;
    dVn.noalias() += P.template triangularView<Eigen::Lower>().transpose() * dO;
    if (dq != nullptr || dk != nullptr) {
      dP.noalias() = scale * dO * Vn.transpose();
      dP.template triangularView<Eigen::StrictlyUpper>().setZero();
    }
    if (dq != nullptr) {
      MMap<F> dqm(dq + t0 * s.sqk, L, K, Eigen::OuterStride<>(s.sqk));
      dqm.noalias() = scale * dO * S0.transpose();
      dqm.noalias() += dP * k;
    }
    Y.noalias() = N.template triangularView<Eigen::UnitLower>().transpose() * dVn;
    auto dR = w.U.topRows(L);  // reuses U's scratch
    dR = (Y.array().colwise() * beta).matrix();
    if (dv != nullptr) MMap<F>(dv + t0 * s.sv, L, V, Eigen::OuterStride<>(s.sv)) = dR;
    if (dk != nullptr || dbeta != nullptr) {
      // dM = -Y V'^T in Tm's scratch (T itself is not needed in backward).
      auto dM = w.Tm.topLeftCorner(L, L);
      dM.noalias() = -Y * Vn.transpose();
      if (dbeta != nullptr) {
        for (int64_t i = 0; i < L; ++i) {
          F acc = R.row(i).dot(Y.row(i));
          acc += dM.row(i).head(i).dot(KK.row(i).head(i));
          dbeta[(t0 + i) * s.sb] = acc;
        }
      }
      if (dk != nullptr) {
        dK.noalias() = dP.transpose() * q;
        dK.noalias() += Vn * w.dS.transpose();
        dK.noalias() -= dR * S0.transpose();
        dM = (dM.array().colwise() * beta).matrix();
        dM.template triangularView<Eigen::Upper>().setZero();
        dK.noalias() += dM * k;
        dK.noalias() += dM.transpose() * k;
        MMap<F>(dk + t0 * s.sqk, L, K, Eigen::OuterStride<>(s.sqk)) = dK;
      }
    }
    if (n == 0 && dh0 == nullptr) break;
    // d_S0 = scale q^T d_o + d_S - k^T d_R
    w.dS.noalias() += scale * q.transpose() * dO;
    w.dS.noalias() -= k.transpose() * dR;
  }
  if (dh0 != nullptr) Eigen::Map<Mat<F>>(dh0, K, V) = w.dS;
}

DeltaDims check_delta_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                             const Tensor& h0, const ChunkOptions& opt, bool on_cuda) {
  const char* op = "delta_rule";
  if (on_cuda) {
    check_same_device(op, {&q, &k, &v, &beta, &h0});
    cuda_kernel_dtype("delta_rule", q);
    check_same_dtype(op, {&q, &k, &v, &beta});
    if (h0.defined()) {
      RESONA_CHECK(h0.dtype() == DType::kFloat32 || h0.dtype() == q.dtype())
          << "delta_rule: h0 must be float32 (the state dtype) or q's dtype "
          << dtype_name(q.dtype()) << ", got " << h0.describe();
    }
  } else {
    for (const Tensor* t : {&q, &k, &v, &beta, &h0}) {
      if (t->defined()) require_cpu(op, *t);
    }
    check_floating(op, q);
    check_same_dtype(op, {&q, &k, &v, &beta, &h0});
  }
  RESONA_CHECK(q.dim() == 4) << "delta_rule: q must be [B, T, H, K], got " << q.describe();
  RESONA_CHECK(v.dim() == 4) << "delta_rule: v must be [B, T, H, V], got " << v.describe();
  DeltaDims d;
  d.B = q.size(0);
  d.T = q.size(1);
  d.H = q.size(2);
  d.K = q.size(3);
  d.V = v.size(3);
  RESONA_CHECK_SHAPE(k, d.B, d.T, d.H, d.K);
  RESONA_CHECK_SHAPE(v, d.B, d.T, d.H, d.V);
  RESONA_CHECK_SHAPE(beta, d.B, d.T, d.H);
  if (h0.defined()) RESONA_CHECK_SHAPE(h0, d.B, d.H, d.K, d.V);
  RESONA_CHECK(d.K > 0 && d.V > 0) << "delta_rule: K and V must be positive, got q " << q.describe()
                                   << " and v " << v.describe();
  RESONA_CHECK(opt.chunk >= 1) << "delta_rule: chunk must be >= 1, got " << opt.chunk;
  RESONA_CHECK(std::isfinite(opt.scale)) << "delta_rule: scale must be finite, got " << opt.scale;
  d.C = std::min(opt.chunk, std::max<int64_t>(d.T, 1));  // a chunk beyond T changes nothing
  if (on_cuda) {
    RESONA_CHECK(d.C <= cuda::kDeltaMaxChunk)
        << "delta_rule: the CUDA path supports chunk 1.." << cuda::kDeltaMaxChunk
        << " (or any chunk >= T), got chunk " << opt.chunk << " with T=" << d.T;
  }
  return d;
}

// The kernels' view of the inputs: pointers and element strides as given.
cuda::DeltaRuleInputs cuda_inputs(const DeltaDims& d, double scale, const Tensor& q,
                                  const Tensor& k, const Tensor& v, const Tensor& beta,
                                  const Tensor& h0) {
  cuda::DeltaRuleInputs in{};
  in.dtype = cuda_kernel_dtype("delta_rule", q);
  in.h0_dtype = h0.defined() ? cuda_kernel_dtype("delta_rule", h0) : cuda::KernelDType::kFloat32;
  in.B = d.B;
  in.T = d.T;
  in.H = d.H;
  in.K = d.K;
  in.V = d.V;
  in.C = d.C;
  in.scale = static_cast<float>(scale);
  auto put = [](const Tensor& t, const void*& p, int64_t* strides) {
    p = t.raw_data();
    for (int64_t i = 0; i < t.dim(); ++i) strides[i] = t.strides()[i];
  };
  put(q, in.q, in.q_strides);
  put(k, in.k, in.k_strides);
  put(v, in.v, in.v_strides);
  put(beta, in.beta, in.beta_strides);
  if (h0.defined()) put(h0, in.h0, in.h0_strides);
  return in;
}

// Float32 scratch of `bytes` bytes on `device` (undefined when none is needed).
Tensor scratch_tensor(size_t bytes, Device device) {
  if (bytes == 0) return Tensor();
  return empty({static_cast<int64_t>((bytes + 3) / 4)}, DType::kFloat32, device);
}

struct DeltaRuleOp {
  static constexpr const char* kName = "delta_rule";
  struct Saved {
    Tensor q, k, v, beta, h0;  // CPU: contiguous; CUDA: as given
    Tensor states;             // CUDA: float32 [B, H, NC, K, V], each chunk's start state
    Tensor kept;               // CUDA: float32, the chunks' W, P, V', N and G (cuda/delta_rule.h)
    DeltaDims d;
    double scale = 0;
    bool cuda = false;
  };

  static std::vector<Tensor> forward(Ctx<Saved>& ctx, const Tensor& q_in, const Tensor& k_in,
                                     const Tensor& v_in, const Tensor& beta_in, const Tensor& h0_in,
                                     const ChunkOptions& opt) {
    const bool on_cuda = q_in.device().is_cuda();
    const DeltaDims d = check_delta_inputs(q_in, k_in, v_in, beta_in, h0_in, opt, on_cuda);
    const double scale = opt.scale != 0 ? opt.scale : 1.0 / std::sqrt(static_cast<double>(d.K));
    if (on_cuda) return forward_cuda(ctx, q_in, k_in, v_in, beta_in, h0_in, d, scale);
    Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
    Tensor beta = beta_in.contiguous();
    Tensor h0 = h0_in.defined() ? h0_in.contiguous() : Tensor();
    Tensor o = empty({d.B, d.T, d.H, d.V}, q.dtype());
    Tensor S_T = empty({d.B, d.H, d.K, d.V}, q.dtype());
    dispatch_floating(kName, q.dtype(), [&](auto tag) {
      using F = typename decltype(tag)::type;
      DeltaWork<F> w(d);
      for (int64_t b = 0; b < d.B; ++b) {
        for (int64_t h = 0; h < d.H; ++h) {
          const int64_t st_off = (b * d.H + h) * d.K * d.V;
          if (h0.defined()) {
            w.S = Eigen::Map<const Mat<F>>(h0.data<F>() + st_off, d.K, d.V);
          } else {
            w.S.setZero();
          }
          DeltaSeq<F> s = sequence(d, q.data<F>(), k.data<F>(), v.data<F>(), beta.data<F>(), b, h);
          delta_fwd_seq<F>(s, d, static_cast<F>(scale), o.data<F>() + (b * d.T * d.H + h) * d.V, w);
          Eigen::Map<Mat<F>>(S_T.data<F>() + st_off, d.K, d.V) = w.S;
        }
      }
    });
    if (ctx.requires_grad) {
      ctx.saved = Saved{q, k, v, beta, h0, Tensor(), Tensor(), d, scale, false};
    }
    return {o, S_T};
  }

  static std::vector<Tensor> forward_cuda(Ctx<Saved>& ctx, const Tensor& q, const Tensor& k,
                                          const Tensor& v, const Tensor& beta, const Tensor& h0,
                                          const DeltaDims& d, double scale) {
    const Device dev = q.device();
    const int64_t NC = (d.T + d.C - 1) / d.C;
    Tensor o = empty({d.B, d.T, d.H, d.V}, q.dtype(), dev);
    Tensor S_T = empty({d.B, d.H, d.K, d.V}, DType::kFloat32, dev);
    Tensor states = empty({d.B, d.H, NC, d.K, d.V}, DType::kFloat32, dev);
    cuda::DeltaRuleFwdParams p{};
    p.in = cuda_inputs(d, scale, q, k, v, beta, h0);
    p.o = o.raw_data();
    p.S_T = S_T.data<float>();
    p.states = states.data<float>();
    // With a backward to come, the chunks' products it needs are kept for it.
    Tensor kept =
        ctx.requires_grad ? scratch_tensor(cuda::delta_rule_kept_bytes(p.in), dev) : Tensor();
    p.kept = kept.defined() ? kept.data<float>() : nullptr;
    Tensor scratch = scratch_tensor(cuda::delta_rule_fwd_scratch_bytes(p), dev);
    p.scratch = scratch.defined() ? scratch.raw_data() : nullptr;
    const char* err = cuda::delta_rule_fwd_cuda(p, launch_stream());
    RESONA_CHECK(err == nullptr) << "delta_rule on " << q.describe() << ": " << err;
    if (ctx.requires_grad) {
      ctx.saved = Saved{q, k, v, beta, h0, states, kept, d, scale, true};
    }
    return {o, S_T};
  }

  static Grads backward_cuda(Ctx<Saved>& ctx, const std::vector<Tensor>& d_outs) {
    const Saved& sv = ctx.saved;
    const DeltaDims& d = sv.d;
    const Device dev = sv.q.device();
    for (const Tensor& g : d_outs) {
      RESONA_CHECK(g.device() == dev) << "delta_rule backward: gradient " << g.describe()
                                      << " is not on " << sv.q.describe() << "'s device";
    }
    RESONA_CHECK(d_outs.at(0).shape() == Shape({d.B, d.T, d.H, d.V}))
        << "delta_rule backward: d_o " << d_outs[0].describe() << ", expected [" << d.B << ", "
        << d.T << ", " << d.H << ", " << d.V << "]";
    RESONA_CHECK(d_outs.at(1).shape() == Shape({d.B, d.H, d.K, d.V}))
        << "delta_rule backward: d_S_T " << d_outs[1].describe() << ", expected [" << d.B << ", "
        << d.H << ", " << d.K << ", " << d.V << "]";
    // d_o is read with its strides; the state gradient in float32, contiguous.
    Tensor d_o = copy_to(d_outs[0], sv.q.dtype(), dev);
    Tensor d_ST = copy_to(d_outs[1], DType::kFloat32, dev).contiguous();
    auto grad_like = [&](size_t i, const Tensor& t) {
      return ctx.needs(i) ? empty(t.shape(), t.dtype(), dev) : Tensor();
    };
    Tensor dq = grad_like(0, sv.q), dk = grad_like(1, sv.k), dv = grad_like(2, sv.v);
    Tensor dbeta = grad_like(3, sv.beta), dh0 = grad_like(4, sv.h0);
    auto ptr = [](const Tensor& t) { return t.defined() ? t.raw_data() : nullptr; };
    cuda::DeltaRuleBwdParams p{};
    p.in = cuda_inputs(d, sv.scale, sv.q, sv.k, sv.v, sv.beta, sv.h0);
    p.states = sv.states.data<float>();
    p.kept = sv.kept.defined() ? sv.kept.data<float>() : nullptr;
    p.d_o = d_o.raw_data();
    for (int i = 0; i < 4; ++i) p.d_o_strides[i] = d_o.strides()[i];
    p.d_S_T = d_ST.data<float>();
    p.d_q = ptr(dq);
    p.d_k = ptr(dk);
    p.d_v = ptr(dv);
    p.d_beta = ptr(dbeta);
    p.d_h0 = ptr(dh0);
    Tensor scratch = scratch_tensor(cuda::delta_rule_bwd_scratch_bytes(p), dev);
    p.scratch = scratch.defined() ? scratch.raw_data() : nullptr;
    const char* err = cuda::delta_rule_bwd_cuda(p, launch_stream());
    RESONA_CHECK(err == nullptr) << "delta_rule backward on " << d_o.describe() << ": " << err;
    return {dq, dk, dv, dbeta, dh0};
  }

  static Grads backward(Ctx<Saved>& ctx, const std::vector<Tensor>& d_outs) {
    const Saved& sv = ctx.saved;
    const DeltaDims& d = sv.d;
    if (sv.cuda) return backward_cuda(ctx, d_outs);
    require_cpu(kName, d_outs.at(0));
    require_cpu(kName, d_outs.at(1));
    Tensor d_o = d_outs[0].contiguous(), d_ST = d_outs[1].contiguous();
    auto grad_like = [&](size_t i, const Tensor& t) {
      return ctx.needs(i) ? empty(t.shape(), t.dtype()) : Tensor();
    };
    Tensor dq = grad_like(0, sv.q), dk = grad_like(1, sv.k), dv = grad_like(2, sv.v);
    Tensor dbeta = grad_like(3, sv.beta);
    Tensor dh0 = ctx.needs(4) ? empty({d.B, d.H, d.K, d.V}, sv.q.dtype()) : Tensor();
    dispatch_floating(kName, sv.q.dtype(), [&](auto tag) {
      using F = typename decltype(tag)::type;
      DeltaWork<F> w(d);
      auto at = [](const Tensor& t, int64_t off) -> F* {
        return t.defined() ? t.data<F>() + off : nullptr;
      };
      for (int64_t b = 0; b < d.B; ++b) {
        for (int64_t h = 0; h < d.H; ++h) {
          DeltaSeq<F> s =
              sequence(d, sv.q.data<F>(), sv.k.data<F>(), sv.v.data<F>(), sv.beta.data<F>(), b, h);
          const int64_t qk_off = (b * d.T * d.H + h) * d.K, v_off = (b * d.T * d.H + h) * d.V;
          const int64_t b_off = b * d.T * d.H + h, st_off = (b * d.H + h) * d.K * d.V;
          delta_bwd_seq<F>(s, d, static_cast<F>(sv.scale), at(sv.h0, st_off), d_o.data<F>() + v_off,
                           d_ST.data<F>() + st_off, at(dq, qk_off), at(dk, qk_off), at(dv, v_off),
                           at(dbeta, b_off), at(dh0, st_off), w);
        }
      }
    });
    return {dq, dk, dv, dbeta, dh0};
  }
};

}  // namespace

RecurrentOutput delta_rule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                           const Tensor& h0, const ChunkOptions& opt) {
  std::vector<Tensor> out = apply<DeltaRuleOp>(q, k, v, beta, h0, opt);
  return {out[0], out[1]};
}

}  // namespace resona
