// Gated linear attention (GLA; with a per-head scalar gate also Mamba2/SSD and RetNet),
// chunked as in FLA's chunk_gla (CPU: float32 and float64; CUDA: float32 and bfloat16,
// see the end of this comment).
//
//   S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T        S: [K, V] per (b, h), S_{-1} = h0
//   o_t = scale * S_t^T q_t
//   q, k: [B, T, H, K]   v: [B, T, H, V]   g: [B, T, H, K] or [B, T, H]   h0: [B, H, K, V]
//   returns {o [B, T, H, V], S_T [B, H, K, V]}
//
// Chunked forward, chunk of C steps starting at t0 with state S0 = S_{t0-1}, rows i < L:
//   G_i   = g_{t0} + ... + g_{t0+i}                 (cumulative log gate inside the chunk)
//   o_i   = scale (q_i * exp(G_i))^T S0 + sum_{j<=i} A_ij v_j
//   A_ij  = scale sum_c q_ic k_jc exp(G_ic - G_jc)  (j <= i, the intra-chunk "attention")
//   S_end = diag(exp(G_last)) S0 + (k * exp(G_last - G))^T v
// Every exponent above is <= 0 (g <= 0) except inside A, which is formed as products
// (q_I * exp(G_I - r)) (k_J * exp(r - G_J))^T through a reference log gate r inside the
// chunk, chosen so that no factor overflows (intra_chunk): while the gates' spread inside
// the chunk is at most kMaxSpread (typical GLA gates, ~0.05 per step), r is the midpoint
// and the whole chunk is one product; for stronger decay the chunk splits into sub-chunks
// of kSubChunk rows, each against the earlier rows through r = its own first row (both
// factors <= 1), and its diagonal block is either factored through its midpoint or formed
// pair by pair from exp(G_i - G_j) (FLA's secondary chunking). So -5 per step or stronger
// neither overflows nor loses the near-diagonal terms; far terms underflow to 0 where
// their true value is below the smallest normal number anyway. With a scalar gate per
// head the decay matrix exp(G_i - G_j) is formed directly and A is one product.
//
// Backward (FLA's chunk_gla_bwd), chunk by chunk in reverse with d_S the gradient of S_end:
//   d_v  = A^T d_o + (k * exp(G_last - G)) d_S
//   d_A  = tril(d_o v^T)
//   d_q  = scale (d_o S0^T) * exp(G) + [intra: scale sum_j d_A_ij k_j * exp(G_i - G_j)]
//   d_k  = (v d_S^T) * exp(G_last - G) + [intra: scale sum_i d_A_ij q_i * exp(G_i - G_j)]
//   d_G  = q * d_q - k * d_k,  plus on the last row exp(G_last) * rowsum(S0 * d_S)
//          + colsum(k * (v d_S^T) * exp(G_last - G));   d_g = reverse cumsum of d_G
//   d_S0 = scale (q * exp(G))^T d_o + diag(exp(G_last)) d_S,   d_h0 = d_S0 of chunk 0
// (a scalar gate sums d_g over the K channels).
//
// Saved for backward: q, k, v, g, h0 (the inputs, contiguous) and the options. The chunk
// states are recomputed in backward, one sequence at a time (T/C states of [K, V]).
// Gradients are fresh tensors; only the requested ones are computed.
//
// CUDA (kernels in cuda/gla.cu, the same algorithm): float32 and bfloat16 storage with
// float32 arithmetic (the dense chunk products on tensor cores in TF32); the state S_T is
// float32 whatever the input dtype, and h0 may be float32 or the inputs' dtype (d_h0
// takes h0's dtype). Chunk 1..64, K up to 256. q, k,
// v, g and d_o are read in place with their strides; a per-head gate is read as a
// per-channel one with stride 0 along K and its gradient summed over K. Forward saves
// the inputs (handles, not copies) and each chunk's starting state, float32
// [B, H, ceil(T / C), K, V]; backward reads them instead of recomputing the states.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <vector>

#include "autograd/function.h"
#include "core/dispatch.h"
#include "cuda/gla.h"
#include "ops/device_util.h"
#include "ops/scan.h"

namespace resona {
namespace {

// Rows per sub-chunk (FLA's BC), for chunks whose gates spread more than kMaxSpread; a
// diagonal block formed pair by pair costs kSubChunk^2 K / 2 exponentials.
constexpr int64_t kSubChunk = 16;

// The largest spread of a cumulative log gate (max - min over rows, per channel) that is
// factored through one midpoint reference: the factors exp(+-(G - r)) stay within
// [e^-20, e^20] (no overflow, no subnormals in float32), and the masked entries above the
// diagonal, which the product also forms, stay below e^40 * K * max|q| |k|.
constexpr double kMaxSpread = 40;

template <class F>
using Mat = Eigen::Matrix<F, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class F>
using Arr = Eigen::Array<F, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class F>
using RowArr = Eigen::Array<F, 1, Eigen::Dynamic>;
template <class F>
using ColArr = Eigen::Array<F, Eigen::Dynamic, 1>;
template <class F>
using CMap = Eigen::Map<const Mat<F>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class F>
using MMap = Eigen::Map<Mat<F>, Eigen::Unaligned, Eigen::OuterStride<>>;

struct GlaDims {
  int64_t B = 0, T = 0, H = 0, K = 0, V = 0, C = 0;
  bool scalar_gate = false;  // g is [B, T, H]
  bool cuda = false;         // the inputs are on a CUDA device
};

// One (b, h) sequence inside the [B, T, H, .] tensors: row t of q lies at q + t * sqk.
template <class F>
struct GlaSeq {
  const F *q = nullptr, *k = nullptr, *v = nullptr, *g = nullptr;
  int64_t sqk = 0, sv = 0, sg = 0;
};

template <class F>
GlaSeq<F> sequence(const GlaDims& d, const F* q, const F* k, const F* v, const F* g, int64_t b,
                   int64_t h) {
  GlaSeq<F> s;
  s.q = q + (b * d.T * d.H + h) * d.K;
  s.k = k + (b * d.T * d.H + h) * d.K;
  s.v = v + (b * d.T * d.H + h) * d.V;
  s.g = d.scalar_gate ? g + b * d.T * d.H + h : g + (b * d.T * d.H + h) * d.K;
  s.sqk = d.H * d.K;
  s.sv = d.H * d.V;
  s.sg = d.scalar_gate ? d.H : d.H * d.K;
  return s;
}

// Scratch for one sequence's chunks, sized once per call.
template <class F>
struct GlaWork {
  Arr<F> G, E, Fd;            // [C, K]: cumulative log gates, exp(G), exp(G_last - G)
  ColArr<F> Gs;               // [C] scalar gate: the cumulative log gate per row
  Arr<F> Dm;                  // [C, C] scalar gate: exp(Gs_i - Gs_j) on and below the diagonal
  Mat<F> A, dA;               // [C, C] intra-chunk attention and its gradient
  Arr<F> Eq, Ek, Eb;          // scalings of factored_block [C, K], [C, K], pairwise [BC, K]
  Mat<F> Qs, Ks, KE;          // scaled q and k [C, K], k * Eb [BC, K]
  Mat<F> QE, KF;              // [C, K]: q * exp(G), k * exp(G_last - G)
  Mat<F> dQ, dK, dKi;         // [C, K]: gradients of q and k in the chunk, the inter part of d_k
  Mat<F> tq, tk;              // [C, K] products before scaling
  Arr<F> dG;                  // [C, K]
  RowArr<F> glast, row, glo;  // [K]
  Mat<F> S, dS;               // [K, V]: the state (backward's recomputation) and its gradient
  std::vector<F> states;      // chunk-start states of one sequence, [n_chunks, K, V]

  explicit GlaWork(const GlaDims& d) {
    const int64_t C = d.C, K = d.K, BC = std::min(kSubChunk, C);
    G.resize(C, K);
    E.resize(C, K);
    Fd.resize(C, K);
    Gs.resize(C);
    if (d.scalar_gate) Dm.resize(C, C);
    A.resize(C, C);
    dA.resize(C, C);
    Eq.resize(C, K);
    Ek.resize(C, K);
    Eb.resize(BC, K);
    Qs.resize(C, K);
    Ks.resize(C, K);
    KE.resize(BC, K);
    QE.resize(C, K);
    KF.resize(C, K);
    dQ.resize(C, K);
    dK.resize(C, K);
    dKi.resize(C, K);
    tq.resize(C, K);
    tk.resize(C, K);
    dG.resize(C, K);
    glast.resize(K);
    row.resize(K);
    glo.resize(K);
    S.resize(K, d.V);
    dS.resize(K, d.V);
  }
};

// G (and Gs for a scalar gate) for rows t0 .. t0+L-1, and glast = G_{L-1}. The sum runs
// in the input precision, as FLA's chunk_local_cumsum.
template <class F>
void chunk_gates(const GlaSeq<F>& s, const GlaDims& d, int64_t t0, int64_t L, GlaWork<F>& w) {
  if (d.scalar_gate) {
    F acc = 0;
    for (int64_t i = 0; i < L; ++i) {
      acc += s.g[(t0 + i) * s.sg];
      w.Gs(i) = acc;
      w.G.row(i).setConstant(acc);
    }
  } else {
    for (int64_t i = 0; i < L; ++i) {
      Eigen::Map<const RowArr<F>> gi(s.g + (t0 + i) * s.sg, d.K);
      if (i == 0) {
        w.G.row(0) = gi;
      } else {
        w.G.row(i) = w.G.row(i - 1) + gi;
      }
    }
  }
  w.glast = w.G.row(L - 1);
}

// Rows [i0, i0+l) of A against columns [j0, j0+m), through the reference log gate
// r = w.row: A_ij = scale (q_i * exp(G_i - r)) . (k_j * exp(r - G_j)), one product. Exact
// for any r; the caller picks r so that neither factor can overflow. With kBwd, the
// matching parts of d_q and d_k from w.dA (which is zero above the diagonal).
template <bool kFwd, bool kBwd, class F>
void factored_block(const CMap<F>& q, const CMap<F>& k, int64_t i0, int64_t l, int64_t j0,
                    int64_t m, F scale, GlaWork<F>& w) {
  auto Eq = w.Eq.topRows(l);
  auto Ek = w.Ek.topRows(m);
  auto Qs = w.Qs.topRows(l);
  auto Ks = w.Ks.topRows(m);
  Eq = w.G.middleRows(i0, l).rowwise() - w.row;
  Eq = Eq.exp();
  Ek = (-w.G.middleRows(j0, m)).rowwise() + w.row;
  Ek = Ek.exp();
  Qs = (q.middleRows(i0, l).array() * Eq).matrix();
  Ks = (k.middleRows(j0, m).array() * Ek).matrix();
  if constexpr (kFwd) w.A.block(i0, j0, l, m).noalias() = scale * Qs * Ks.transpose();
  if constexpr (kBwd) {
    auto tq = w.tq.topRows(l);
    auto tk = w.tk.topRows(m);
    tq.noalias() = w.dA.block(i0, j0, l, m) * Ks;
    w.dQ.middleRows(i0, l).array() += scale * tq.array() * Eq;
    tk.noalias() = w.dA.block(i0, j0, l, m).transpose() * Qs;
    w.dK.middleRows(j0, m).array() += scale * tk.array() * Ek;
  }
}

// Whether rows [i0, i0+l) can be factored through one reference: the largest spread
// max_i G_ic - min_i G_ic over the channels is at most kMaxSpread. If so, w.row becomes the
// midpoint per channel, so every factor of factored_block lies in [e^-20, e^20].
template <class F>
bool midpoint_reference(int64_t i0, int64_t l, GlaWork<F>& w) {
  auto G = w.G.middleRows(i0, l);
  w.row = G.colwise().maxCoeff();
  w.glo = G.colwise().minCoeff();
  if ((w.row - w.glo).maxCoeff() > kMaxSpread) return false;
  w.row = (w.row + w.glo) * F(0.5);
  return true;
}

// The intra-chunk part for rows [0, L). With kFwd: A on and below the diagonal (above it
// is never read). With kBwd: from w.dA (zero above the diagonal), w.dQ = the intra part
// of d_q and w.dK = the intra part of d_k. Needs chunk_gates first.
//
// Per key channel, in three tiers by how far the gates decay inside the chunk: a spread
// within kMaxSpread is one factored product for the whole chunk; otherwise sub-chunks of
// kSubChunk rows, each against all earlier rows through r = its first row (both factors
// <= 1 for g <= 0), and its diagonal block factored through its midpoint when the spread
// allows, else pair by pair from exp(G_i - G_j) (FLA's secondary chunking).
template <bool kFwd, bool kBwd, class F>
void intra_chunk(const CMap<F>& q, const CMap<F>& k, const GlaDims& d, int64_t L, F scale,
                 GlaWork<F>& w) {
  auto A = w.A.topLeftCorner(L, L);
  auto dA = w.dA.topLeftCorner(L, L);
  auto dQ = w.dQ.topRows(L);
  auto dK = w.dK.topRows(L);
  if (d.scalar_gate) {
    auto Dm = w.Dm.topLeftCorner(L, L);
    for (int64_t i = 0; i < L; ++i) {
      auto row = Dm.row(i).head(i + 1);
      row = (w.Gs(i) - w.Gs.head(i + 1)).transpose();
      row = row.exp();
      Dm.row(i).tail(L - i - 1).setZero();
    }
    if constexpr (kFwd) {
      A.noalias() = q * k.transpose();
      A.array() *= Dm * scale;
    }
    if constexpr (kBwd) {
      dA.array() *= Dm * scale;  // now the gradient of (q k^T) itself
      dQ.noalias() = dA * k;
      dK.noalias() = dA.transpose() * q;
    }
    return;
  }
  if constexpr (kBwd) {
    dQ.setZero();
    dK.setZero();
  }
  if (midpoint_reference(0, L, w)) {
    factored_block<kFwd, kBwd>(q, k, 0, L, 0, L, scale, w);
    return;
  }
  auto G = w.G.topRows(L);
  for (int64_t i0 = 0; i0 < L; i0 += kSubChunk) {
    const int64_t l = std::min(kSubChunk, L - i0);
    if (i0 > 0) {
      w.row = G.row(i0);
      factored_block<kFwd, kBwd>(q, k, i0, l, 0, i0, scale, w);
    }
    if (midpoint_reference(i0, l, w)) {
      factored_block<kFwd, kBwd>(q, k, i0, l, i0, l, scale, w);
      continue;
    }
    // The diagonal block pair by pair: Eb_j = exp(G_i - G_j) for j in [i0, i].
    for (int64_t i = i0; i < i0 + l; ++i) {
      const int64_t n = i - i0 + 1;
      w.row = G.row(i);
      auto Eb = w.Eb.topRows(n);
      Eb = (-G.middleRows(i0, n)).rowwise() + w.row;
      Eb = Eb.exp();
      w.KE.topRows(n) = (k.middleRows(i0, n).array() * Eb).matrix();
      if constexpr (kFwd) {
        A.row(i).segment(i0, n).noalias() = scale * q.row(i) * w.KE.topRows(n).transpose();
      }
      if constexpr (kBwd) {
        dQ.row(i).noalias() += scale * dA.row(i).segment(i0, n) * w.KE.topRows(n);
        w.row = q.row(i).array() * scale;
        for (int64_t j = 0; j < n; ++j) {
          dK.row(i0 + j).array() += dA(i, i0 + j) * Eb.row(j) * w.row;
        }
      }
    }
  }
}

// Runs the chunks of one sequence from the state in S ([K, V], h0 or zeros on entry, the
// final state on exit). Writes o when `o` is given; records each chunk's starting state
// in w.states when `record_states`.
template <class F>
void gla_fwd_seq(const GlaSeq<F>& s, const GlaDims& d, F scale, F* S, F* o, bool record_states,
                 GlaWork<F>& w) {
  const int64_t K = d.K, V = d.V, C = d.C;
  MMap<F> Sm(S, K, V, Eigen::OuterStride<>(V));
  for (int64_t t0 = 0, n = 0; t0 < d.T; t0 += C, ++n) {
    const int64_t L = std::min(C, d.T - t0);
    CMap<F> q(s.q + t0 * s.sqk, L, K, Eigen::OuterStride<>(s.sqk));
    CMap<F> k(s.k + t0 * s.sqk, L, K, Eigen::OuterStride<>(s.sqk));
    CMap<F> v(s.v + t0 * s.sv, L, V, Eigen::OuterStride<>(s.sv));
    if (record_states) std::copy(S, S + K * V, w.states.data() + n * K * V);
    chunk_gates(s, d, t0, L, w);
    auto G = w.G.topRows(L);
    auto Fd = w.Fd.topRows(L);
    Fd = (-G).rowwise() + w.glast;
    Fd = Fd.exp();
    if (o != nullptr) {
      MMap<F> om(o + t0 * s.sv, L, V, Eigen::OuterStride<>(s.sv));
      auto E = w.E.topRows(L);
      E = G.exp();
      w.QE.topRows(L) = (q.array() * E).matrix();
      om.noalias() = scale * w.QE.topRows(L) * Sm;
      intra_chunk<true, false>(q, k, d, L, scale, w);
      om.noalias() += w.A.topLeftCorner(L, L).template triangularView<Eigen::Lower>() * v;
    }
    w.KF.topRows(L) = (k.array() * Fd).matrix();
    Sm.array().colwise() *= w.glast.exp().transpose();
    Sm.noalias() += w.KF.topRows(L).transpose() * v;
  }
}

// Backward of one sequence. h0: [K, V] or null; d_o with row stride sv; d_ST: [K, V].
// Gradient pointers point at this sequence's element (b, 0, h, 0) (dh0 at (b, h, 0, 0));
// null ones are not computed.
template <class F>
void gla_bwd_seq(const GlaSeq<F>& s, const GlaDims& d, F scale, const F* h0, const F* d_o,
                 const F* d_ST, F* dq, F* dk, F* dv, F* dg, F* dh0, GlaWork<F>& w) {
  const int64_t K = d.K, V = d.V, C = d.C;
  const int64_t n_chunks = (d.T + C - 1) / C;
  w.states.resize(n_chunks * K * V);
  w.S.setZero();
  if (h0 != nullptr) std::copy(h0, h0 + K * V, w.S.data());
  gla_fwd_seq<F>(s, d, scale, w.S.data(), nullptr, true, w);

  const bool want_qk = dq != nullptr || dk != nullptr || dg != nullptr;
  w.dS = Eigen::Map<const Mat<F>>(d_ST, K, V);
  for (int64_t n = n_chunks - 1; n >= 0; --n) {
    const int64_t t0 = n * C, L = std::min(C, d.T - t0);
    CMap<F> q(s.q + t0 * s.sqk, L, K, Eigen::OuterStride<>(s.sqk));
    CMap<F> k(s.k + t0 * s.sqk, L, K, Eigen::OuterStride<>(s.sqk));
    CMap<F> v(s.v + t0 * s.sv, L, V, Eigen::OuterStride<>(s.sv));
    CMap<F> dO(d_o + t0 * s.sv, L, V, Eigen::OuterStride<>(s.sv));
    Eigen::Map<const Mat<F>> S0(w.states.data() + n * K * V, K, V);
    chunk_gates(s, d, t0, L, w);
    auto G = w.G.topRows(L);
    auto E = w.E.topRows(L);
    auto Fd = w.Fd.topRows(L);
    E = G.exp();
    Fd = (-G).rowwise() + w.glast;
    Fd = Fd.exp();
    w.KF.topRows(L) = (k.array() * Fd).matrix();

    if (want_qk) {
      auto dA = w.dA.topLeftCorner(L, L);
      dA.noalias() = dO * v.transpose();
      dA.template triangularView<Eigen::StrictlyUpper>().setZero();
      if (dv != nullptr) {
        intra_chunk<true, true>(q, k, d, L, scale, w);
      } else {
        intra_chunk<false, true>(q, k, d, L, scale, w);
      }
    } else if (dv != nullptr) {
      intra_chunk<true, false>(q, k, d, L, scale, w);
    }
    if (dv != nullptr) {
      MMap<F> dvm(dv + t0 * s.sv, L, V, Eigen::OuterStride<>(s.sv));
      dvm.noalias() =
          w.A.topLeftCorner(L, L).template triangularView<Eigen::Lower>().transpose() * dO;
      dvm.noalias() += w.KF.topRows(L) * w.dS;
    }
    if (want_qk) {
      auto dQ = w.dQ.topRows(L);
      auto dK = w.dK.topRows(L);
      auto dKi = w.dKi.topRows(L);
      w.QE.topRows(L).noalias() = dO * S0.transpose();  // scratch before the scaling
      dQ.array() += scale * w.QE.topRows(L).array() * E;
      dKi.noalias() = v * w.dS.transpose();
      dKi.array() *= Fd;
      dK += dKi;
      if (dq != nullptr) {
        MMap<F>(dq + t0 * s.sqk, L, K, Eigen::OuterStride<>(s.sqk)) = dQ;
      }
      if (dk != nullptr) {
        MMap<F>(dk + t0 * s.sqk, L, K, Eigen::OuterStride<>(s.sqk)) = dK;
      }
      if (dg != nullptr) {
        auto dG = w.dG.topRows(L);
        dG = q.array() * dQ.array() - k.array() * dK.array();
        dG.row(L - 1) += w.glast.exp() * (S0.array() * w.dS.array()).rowwise().sum().transpose() +
                         (k.array() * dKi.array()).colwise().sum();
        // d_g_t = sum of d_G over rows t.. of the chunk.
        for (int64_t i = L - 2; i >= 0; --i) dG.row(i) += dG.row(i + 1);
        if (d.scalar_gate) {
          for (int64_t i = 0; i < L; ++i) dg[(t0 + i) * s.sg] = dG.row(i).sum();
        } else {
          MMap<F>(dg + t0 * s.sg, L, K, Eigen::OuterStride<>(s.sg)) = dG.matrix();
        }
      }
    }
    if (n == 0 && dh0 == nullptr) break;
    // d_S0 = scale (q * exp(G))^T d_o + diag(exp(G_last)) d_S
    w.QE.topRows(L) = (q.array() * E).matrix();
    w.dS.array().colwise() *= w.glast.exp().transpose();
    w.dS.noalias() += scale * w.QE.topRows(L).transpose() * dO;
  }
  if (dh0 != nullptr) Eigen::Map<Mat<F>>(dh0, K, V) = w.dS;
}

// Shapes of q, k, v, g, h0 (see ops/scan.h); fills d.
GlaDims check_gla_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                         const Tensor& h0, const ChunkOptions& opt) {
  const char* op = "gla";
  bool cuda = false;
  for (const Tensor* t : {&q, &k, &v, &g, &h0})
    cuda = cuda || (t->defined() && t->device().is_cuda());
  if (cuda) {
    check_same_device(op, {&q, &k, &v, &g, &h0});
    check_floating(op, q);
    check_same_dtype(op, {&q, &k, &v, &g});
    RESONA_CHECK(q.dtype() == DType::kFloat32 || q.dtype() == DType::kBFloat16)
        << "gla: CUDA supports float32 and bfloat16, got q " << q.describe();
    RESONA_CHECK(!h0.defined() || h0.dtype() == DType::kFloat32 || h0.dtype() == q.dtype())
        << "gla: h0 must be float32 (the state's dtype) or q's dtype on CUDA, got h0 "
        << h0.describe() << " and q " << q.describe();
  } else {
    for (const Tensor* t : {&q, &k, &v, &g, &h0}) {
      if (t->defined()) require_cpu(op, *t);
    }
    check_floating(op, q);
    check_same_dtype(op, {&q, &k, &v, &g, &h0});
  }
  RESONA_CHECK(q.dim() == 4) << "gla: q must be [B, T, H, K], got " << q.describe();
  RESONA_CHECK(v.dim() == 4) << "gla: v must be [B, T, H, V], got " << v.describe();
  GlaDims d;
  d.B = q.size(0);
  d.T = q.size(1);
  d.H = q.size(2);
  d.K = q.size(3);
  d.V = v.size(3);
  RESONA_CHECK_SHAPE(k, d.B, d.T, d.H, d.K);
  RESONA_CHECK_SHAPE(v, d.B, d.T, d.H, d.V);
  RESONA_CHECK(g.dim() == 4 || g.dim() == 3)
      << "gla: g must be [B, T, H, K] (per key channel) or [B, T, H] (per head), got "
      << g.describe();
  d.scalar_gate = g.dim() == 3;
  if (d.scalar_gate) {
    RESONA_CHECK_SHAPE(g, d.B, d.T, d.H);
  } else {
    RESONA_CHECK_SHAPE(g, d.B, d.T, d.H, d.K);
  }
  if (h0.defined()) RESONA_CHECK_SHAPE(h0, d.B, d.H, d.K, d.V);
  RESONA_CHECK(d.K > 0 && d.V > 0)
      << "gla: K and V must be positive, got q " << q.describe() << " and v " << v.describe();
  RESONA_CHECK(opt.chunk >= 1) << "gla: chunk must be >= 1, got " << opt.chunk;
  RESONA_CHECK(std::isfinite(opt.scale)) << "gla: scale must be finite, got " << opt.scale;
  if (cuda) {
    RESONA_CHECK(opt.chunk <= cuda::kGlaMaxChunk)
        << "gla: CUDA supports chunk 1.." << cuda::kGlaMaxChunk << ", got " << opt.chunk;
    RESONA_CHECK(d.K <= cuda::kGlaMaxK)
        << "gla: CUDA supports K up to " << cuda::kGlaMaxK << ", got q " << q.describe();
  }
  d.cuda = cuda;
  d.C = std::min(opt.chunk, std::max<int64_t>(d.T, 1));  // a chunk beyond T changes nothing
  return d;
}

// A [B, T, H, N] tensor, or a per-head gate [B, T, H] read with stride 0 along N.
cuda::GlaInput gla_cuda_input(const Tensor& t) {
  cuda::GlaInput x{};
  x.data = t.raw_data();
  for (int64_t d = 0; d < 4; ++d) x.strides[d] = d < t.dim() ? t.strides()[d] : 0;
  return x;
}

struct GlaOp {
  static constexpr const char* kName = "gla";
  struct Saved {
    Tensor q, k, v, g, h0;  // contiguous (CUDA: as given, and no h0)
    Tensor states;          // CUDA: float32 [B, H, NC, K, V], the state entering each chunk
    Tensor A;               // CUDA: float32 [B, H, NC, 64, 64], each chunk's A (cuda/gla.h)
    DType h0_dtype = DType::kFloat32;  // CUDA: the dtype of d_h0
    GlaDims d;
    double scale = 0;
  };

  static std::vector<Tensor> forward(Ctx<Saved>& ctx, const Tensor& q_in, const Tensor& k_in,
                                     const Tensor& v_in, const Tensor& g_in, const Tensor& h0_in,
                                     const ChunkOptions& opt) {
    const GlaDims d = check_gla_inputs(q_in, k_in, v_in, g_in, h0_in, opt);
    const double scale = opt.scale != 0 ? opt.scale : 1.0 / std::sqrt(static_cast<double>(d.K));
    if (d.cuda) return forward_cuda(ctx, q_in, k_in, v_in, g_in, h0_in, d, scale);
    Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
    Tensor g = g_in.contiguous();
    Tensor h0 = h0_in.defined() ? h0_in.contiguous() : Tensor();
    Tensor o = empty({d.B, d.T, d.H, d.V}, q.dtype());
    Tensor S = h0.defined() ? h0.clone() : zeros({d.B, d.H, d.K, d.V}, q.dtype());
    dispatch_floating(kName, q.dtype(), [&](auto tag) {
      using F = typename decltype(tag)::type;
      GlaWork<F> w(d);
      for (int64_t b = 0; b < d.B; ++b) {
        for (int64_t h = 0; h < d.H; ++h) {
          GlaSeq<F> s = sequence(d, q.data<F>(), k.data<F>(), v.data<F>(), g.data<F>(), b, h);
          gla_fwd_seq<F>(s, d, static_cast<F>(scale), S.data<F>() + (b * d.H + h) * d.K * d.V,
                         o.data<F>() + (b * d.T * d.H + h) * d.V, false, w);
        }
      }
    });
    if (ctx.requires_grad) {
      ctx.saved = Saved{q, k, v, g, h0, Tensor(), Tensor(), DType::kFloat32, d, scale};
    }
    return {o, S};
  }

  static std::vector<Tensor> forward_cuda(Ctx<Saved>& ctx, const Tensor& q, const Tensor& k,
                                          const Tensor& v, const Tensor& g, const Tensor& h0,
                                          const GlaDims& d, double scale) {
    const Device dev = q.device();
    const int64_t NC = (d.T + d.C - 1) / d.C;
    Tensor o = empty({d.B, d.T, d.H, d.V}, q.dtype(), dev);
    Tensor S = empty({d.B, d.H, d.K, d.V}, DType::kFloat32, dev);
    Tensor states = empty({d.B, d.H, NC, d.K, d.V}, DType::kFloat32, dev);
    Tensor decay = empty({d.B, d.H, NC, d.K}, DType::kFloat32, dev);
    Tensor h0f = h0.defined() ? copy_to(h0.contiguous(), DType::kFloat32, dev) : Tensor();
    // Each chunk's A, for the backward's d_v.
    const int64_t Cmax = cuda::kGlaMaxChunk;
    Tensor A =
        ctx.requires_grad ? empty({d.B, d.H, NC, Cmax, Cmax}, DType::kFloat32, dev) : Tensor();
    cuda::GlaFwdParams p{};
    p.dtype = cuda_kernel_dtype("gla", q);
    p.B = d.B;
    p.T = d.T;
    p.H = d.H;
    p.K = d.K;
    p.V = d.V;
    p.C = d.C;
    p.scale = static_cast<float>(scale);
    p.q = gla_cuda_input(q);
    p.k = gla_cuda_input(k);
    p.v = gla_cuda_input(v);
    p.g = gla_cuda_input(g);
    p.h0 = h0f.defined() ? h0f.data<float>() : nullptr;
    p.o = o.raw_data();
    p.S_T = S.data<float>();
    p.states = states.data<float>();
    p.decay = decay.data<float>();
    p.A = A.defined() ? A.data<float>() : nullptr;
    const char* err = cuda::gla_fwd_cuda(p, launch_stream());
    RESONA_CHECK(err == nullptr) << "gla on " << q.describe() << ": " << err;
    if (ctx.requires_grad) {
      ctx.saved = Saved{
          q, k, v, g, Tensor(), states, A, h0.defined() ? h0.dtype() : DType::kFloat32, d, scale};
    }
    return {o, S};
  }

  static Grads backward_cuda(Ctx<Saved>& ctx, const std::vector<Tensor>& d_outs) {
    const Saved& sv = ctx.saved;
    const GlaDims& d = sv.d;
    const Device dev = sv.q.device();
    const Tensor& d_o_in = d_outs.at(0);
    RESONA_CHECK(d_o_in.device() == dev && d_o_in.shape() == Shape({d.B, d.T, d.H, d.V}))
        << "gla backward: gradient of o " << d_o_in.describe() << ", expected [" << d.B << ", "
        << d.T << ", " << d.H << ", " << d.V << "] on " << sv.q.describe();
    Tensor d_o = d_o_in.dtype() == sv.q.dtype() ? d_o_in : copy_to(d_o_in, sv.q.dtype(), dev);
    Tensor d_ST = copy_to(d_outs.at(1).contiguous(), DType::kFloat32, dev);
    RESONA_CHECK(d_ST.device() == dev && d_ST.shape() == Shape({d.B, d.H, d.K, d.V}))
        << "gla backward: gradient of S_T " << d_outs[1].describe() << ", expected [" << d.B << ", "
        << d.H << ", " << d.K << ", " << d.V << "] on " << sv.q.describe();
    auto grad_like = [&](size_t i, const Tensor& t) {
      return ctx.needs(i) ? empty(t.shape(), t.dtype(), dev) : Tensor();
    };
    Tensor dq = grad_like(0, sv.q), dk = grad_like(1, sv.k), dv = grad_like(2, sv.v);
    Tensor dg = grad_like(3, sv.g);
    Tensor dh0 = ctx.needs(4) ? empty({d.B, d.H, d.K, d.V}, DType::kFloat32, dev) : Tensor();
    cuda::GlaBwdParams p{};
    p.dtype = cuda_kernel_dtype("gla", sv.q);
    p.B = d.B;
    p.T = d.T;
    p.H = d.H;
    p.K = d.K;
    p.V = d.V;
    p.C = d.C;
    p.scale = static_cast<float>(sv.scale);
    p.scalar_gate = d.scalar_gate;
    p.q = gla_cuda_input(sv.q);
    p.k = gla_cuda_input(sv.k);
    p.v = gla_cuda_input(sv.v);
    p.g = gla_cuda_input(sv.g);
    p.d_o = gla_cuda_input(d_o);
    p.states = sv.states.data<float>();
    p.A = sv.A.data<float>();
    p.d_S_T = d_ST.data<float>();
    p.d_q = dq.defined() ? dq.raw_data() : nullptr;
    p.d_k = dk.defined() ? dk.raw_data() : nullptr;
    p.d_v = dv.defined() ? dv.raw_data() : nullptr;
    p.d_g = dg.defined() ? dg.raw_data() : nullptr;
    p.d_h0 = dh0.defined() ? dh0.data<float>() : nullptr;
    const size_t bytes = cuda::gla_bwd_scratch_bytes(p);
    Tensor scratch = empty({static_cast<int64_t>((bytes + 3) / 4)}, DType::kFloat32, dev);
    p.scratch = scratch.raw_data();
    const char* err = cuda::gla_bwd_cuda(p, launch_stream());
    RESONA_CHECK(err == nullptr) << "gla backward on " << sv.q.describe() << ": " << err;
    if (dh0.defined() && sv.h0_dtype != DType::kFloat32) dh0 = copy_to(dh0, sv.h0_dtype, dev);
    return {dq, dk, dv, dg, dh0};
  }

  static Grads backward(Ctx<Saved>& ctx, const std::vector<Tensor>& d_outs) {
    if (ctx.saved.d.cuda) return backward_cuda(ctx, d_outs);
    const Saved& sv = ctx.saved;
    const GlaDims& d = sv.d;
    require_cpu(kName, d_outs.at(0));
    require_cpu(kName, d_outs.at(1));
    Tensor d_o = d_outs[0].contiguous(), d_ST = d_outs[1].contiguous();
    auto grad_like = [&](size_t i, const Tensor& t) {
      return ctx.needs(i) ? empty(t.shape(), t.dtype()) : Tensor();
    };
    Tensor dq = grad_like(0, sv.q), dk = grad_like(1, sv.k), dv = grad_like(2, sv.v);
    Tensor dg = grad_like(3, sv.g);
    Tensor dh0 = ctx.needs(4) ? empty({d.B, d.H, d.K, d.V}, sv.q.dtype()) : Tensor();
    dispatch_floating(kName, sv.q.dtype(), [&](auto tag) {
      using F = typename decltype(tag)::type;
      GlaWork<F> w(d);
      auto at = [](const Tensor& t, int64_t off) -> F* {
        return t.defined() ? t.data<F>() + off : nullptr;
      };
      for (int64_t b = 0; b < d.B; ++b) {
        for (int64_t h = 0; h < d.H; ++h) {
          GlaSeq<F> s =
              sequence(d, sv.q.data<F>(), sv.k.data<F>(), sv.v.data<F>(), sv.g.data<F>(), b, h);
          const int64_t qk_off = (b * d.T * d.H + h) * d.K, v_off = (b * d.T * d.H + h) * d.V;
          const int64_t g_off = d.scalar_gate ? b * d.T * d.H + h : qk_off;
          const int64_t st_off = (b * d.H + h) * d.K * d.V;
          gla_bwd_seq<F>(s, d, static_cast<F>(sv.scale), at(sv.h0, st_off), d_o.data<F>() + v_off,
                         d_ST.data<F>() + st_off, at(dq, qk_off), at(dk, qk_off), at(dv, v_off),
                         at(dg, g_off), at(dh0, st_off), w);
        }
      }
    });
    return {dq, dk, dv, dg, dh0};
  }
};

}  // namespace

RecurrentOutput gla(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                    const Tensor& h0, const ChunkOptions& opt) {
  std::vector<Tensor> out = apply<GlaOp>(q, k, v, g, h0, opt);
  return {out[0], out[1]};
}

}  // namespace resona
