// delta_rule_tf32: how much error tensor-core products with TF32 operands (10-bit mantissa)
// add to the chunked delta rule under bfloat16 storage, set beside the errors bfloat16
// itself brings. A float64 model of the chunked forward and backward (WY representation,
// chunk 64, the algebra of ops/delta_rule.cc) on one (b, h) sequence with the benchmark's
// inputs (q, v uniform in +-1, k unit rows, beta in (0.05, 0.95); d_o, bf16-rounded, and
// d_S_T uniform in +-1), its products' operands rounded as a kernel would round them:
//
//   exact             every product in float64 (the reference, on bf16-rounded inputs)
//   tf32-parallel     TF32 operands in the per-chunk products (G = k k^T, W = T k, U = T v,
//                     P = tril(q k^T), q S0, P V'; the backward's P^T d_o, q^T d_o and its
//                     gradient products); the recurrences' W S, k^T V', k d_S and W^T d_V'
//                     exact
//   tf32-all          TF32 operands in every product
//   bf16-all          bfloat16 operands in every product (what kernels that multiply in
//                     bf16 on tensor cores do)
//
// and, for scale, o rounded to bfloat16, and the exact run on the unrounded inputs (what
// rounding the inputs to bfloat16 moves). Sums stay float64 and the triangular solve for N
// is exact, so each row isolates the operand rounding. Prints the relative RMS error and
// the largest error over the RMS, for o, the final state S_T and the gradients of q, k, v,
// beta and h0 (the exact chunked gradients are checked against the step-by-step
// recurrence's backward first).
//
//   bazel run //tools/precision:delta_rule_tf32 -- [T] [K] [V]   (defaults 2048 150 150)
//
// A standalone model on purpose: it shares no code with ops/ or cuda/.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {

using Mat = std::vector<double>;  // row-major

enum class Rounding { kNone, kTf32, kBf16 };

double to_tf32(double x) {  // round to nearest (ties away), as the kernels' to_tf32
  float f = static_cast<float>(x);
  uint32_t b;
  std::memcpy(&b, &f, 4);
  b = (b + 0x1000u) & 0xffffe000u;
  std::memcpy(&f, &b, 4);
  return f;
}

double to_bf16(double x) {  // round to nearest even
  float f = static_cast<float>(x);
  uint32_t b;
  std::memcpy(&b, &f, 4);
  b = (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
  std::memcpy(&f, &b, 4);
  return f;
}

double round_as(double x, Rounding r) {
  return r == Rounding::kTf32 ? to_tf32(x) : r == Rounding::kBf16 ? to_bf16(x) : x;
}

// A [m x k] B [k x n] with both operands rounded by r, summed in float64.
Mat matmul(const Mat& A, const Mat& B, int m, int k, int n, Rounding r) {
  Mat C(static_cast<size_t>(m) * n, 0.0);
  for (int i = 0; i < m; ++i) {
    for (int p = 0; p < k; ++p) {
      const double a = round_as(A[i * k + p], r);
      for (int j = 0; j < n; ++j) C[i * n + j] += a * round_as(B[p * n + j], r);
    }
  }
  return C;
}

Mat transpose(const Mat& A, int m, int n) {
  Mat B(A.size());
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) B[j * m + i] = A[i * n + j];
  }
  return B;
}

struct Inputs {
  int T, K, V;
  Mat q, k, v;  // [T, K], [T, K], [T, V]
  std::vector<double> beta;
};

struct Result {
  Mat o, S;  // [T, V], [K, V]
};

// What the forward keeps of a chunk for the backward (as the CUDA path keeps W, P, V', N, G
// and the start states).
struct Chunk {
  int t0, L;
  Mat q, k, v, G, N, W, P, Vn, S0;
};

struct Grads {
  Mat dq, dk, dv, dbeta, dh0;
};

// [rows, n] slice of a [T, n] input from row t0.
Mat rows_of(const Mat& x, int t0, int rows, int n) {
  return Mat(x.begin() + static_cast<size_t>(t0) * n,
             x.begin() + static_cast<size_t>(t0 + rows) * n);
}

// The chunked forward from S = 0: per chunk, G = k k^T, N = (I + strictly lower
// diag(beta) G)^-1, T = N diag(beta), W = T k, U = T v, V' = U - W S,
// o = scale (q S + tril(q k^T) V'), S <- S + k^T V'. `parallel` rounds the per-chunk
// products' operands, `recurrence` those of W S and k^T V'. Keeps the chunks in `saved`.
Result chunked(const Inputs& in, int C, Rounding parallel, Rounding recurrence,
               std::vector<Chunk>* saved = nullptr) {
  const int T = in.T, K = in.K, V = in.V;
  const double scale = 1.0 / std::sqrt(static_cast<double>(K));
  Result r{Mat(static_cast<size_t>(T) * V), Mat(static_cast<size_t>(K) * V, 0.0)};
  for (int t0 = 0; t0 < T; t0 += C) {
    const int L = std::min(C, T - t0);
    Chunk c{t0, L, rows_of(in.q, t0, L, K), rows_of(in.k, t0, L, K), rows_of(in.v, t0, L, V)};
    const Mat kt = transpose(c.k, L, K);
    c.G = matmul(c.k, kt, L, K, L, parallel);
    c.N.assign(static_cast<size_t>(L) * L, 0.0);
    for (int col = 0; col < L; ++col) {
      c.N[col * L + col] = 1;
      for (int i = col + 1; i < L; ++i) {
        double x = 0;
        for (int j = col; j < i; ++j) x += c.G[i * L + j] * c.N[j * L + col];
        c.N[i * L + col] = -in.beta[t0 + i] * x;
      }
    }
    Mat Tm(c.N.size());
    for (int i = 0; i < L; ++i) {
      for (int j = 0; j < L; ++j) Tm[i * L + j] = c.N[i * L + j] * in.beta[t0 + j];
    }
    c.W = matmul(Tm, c.k, L, L, K, parallel);
    const Mat U = matmul(Tm, c.v, L, L, V, parallel);
    c.P = matmul(c.q, kt, L, K, L, parallel);
    for (int i = 0; i < L; ++i) {
      for (int j = i + 1; j < L; ++j) c.P[i * L + j] = 0;
    }
    const Mat WS = matmul(c.W, r.S, L, K, V, recurrence);
    c.Vn.resize(U.size());
    for (size_t x = 0; x < U.size(); ++x) c.Vn[x] = U[x] - WS[x];
    const Mat qS = matmul(c.q, r.S, L, K, V, parallel), PV = matmul(c.P, c.Vn, L, L, V, parallel);
    for (int i = 0; i < L; ++i) {
      for (int j = 0; j < V; ++j) r.o[(t0 + i) * V + j] = scale * (qS[i * V + j] + PV[i * V + j]);
    }
    c.S0 = r.S;
    const Mat dS = matmul(kt, c.Vn, K, L, V, recurrence);
    for (size_t x = 0; x < r.S.size(); ++x) r.S[x] += dS[x];
    if (saved != nullptr) saved->push_back(std::move(c));
  }
  return r;
}

// The chunked backward of ops/delta_rule.cc over the kept chunks, in reverse, with d_S the
// gradient of the chunk's end state: d_V' = scale P^T d_o + k d_S, d_S0 = d_S +
// scale q^T d_o - W^T d_V' (the recurrence: k d_S and W^T d_V' rounded by `recurrence`);
// Y = N^T d_V', d_v = diag(beta) Y, d_P = scale tril(d_o V'^T), dM = -Y V'^T below the
// diagonal, Z = diag(beta) dM, d_q = scale d_o S0^T + d_P k,
// d_k = d_P^T q + V' d_S^T - diag(beta) Y S0^T + (Z + Z^T) k,
// d_beta_i = v_i . Y_i - k_i . (Y S0^T)_i + sum_{j<i} dM_ij G_ij (products rounded by
// `parallel`, row dot products exact).
Grads chunked_backward(const Inputs& in, const std::vector<Chunk>& chunks, const Mat& d_o,
                       const Mat& d_ST, Rounding parallel, Rounding recurrence) {
  const int T = in.T, K = in.K, V = in.V;
  const double scale = 1.0 / std::sqrt(static_cast<double>(K));
  Grads g{Mat(static_cast<size_t>(T) * K), Mat(static_cast<size_t>(T) * K),
          Mat(static_cast<size_t>(T) * V), Mat(T), Mat()};
  Mat dS = d_ST;
  for (auto it = chunks.rbegin(); it != chunks.rend(); ++it) {
    const Chunk& c = *it;
    const int L = c.L, t0 = c.t0;
    const Mat dO = rows_of(d_o, t0, L, V);
    const Mat PTdO = matmul(transpose(c.P, L, L), dO, L, L, V, parallel);
    const Mat kdS = matmul(c.k, dS, L, K, V, recurrence);
    Mat dVn(PTdO.size());
    for (size_t x = 0; x < dVn.size(); ++x) dVn[x] = scale * PTdO[x] + kdS[x];
    const Mat dS_end = dS;
    const Mat qTdO = matmul(transpose(c.q, L, K), dO, K, L, V, parallel);
    const Mat WTdV = matmul(transpose(c.W, L, K), dVn, K, L, V, recurrence);
    for (size_t x = 0; x < dS.size(); ++x) dS[x] += scale * qTdO[x] - WTdV[x];

    const Mat VnT = transpose(c.Vn, L, V), S0T = transpose(c.S0, K, V);
    Mat dP = matmul(dO, VnT, L, V, L, parallel);
    for (int i = 0; i < L; ++i) {
      for (int j = 0; j < L; ++j) dP[i * L + j] = j <= i ? scale * dP[i * L + j] : 0.0;
    }
    const Mat Y = matmul(transpose(c.N, L, L), dVn, L, L, V, parallel);
    Mat dM = matmul(Y, VnT, L, V, L, parallel);
    Mat ZZ(static_cast<size_t>(L) * L, 0.0);  // Z + Z^T
    for (int i = 0; i < L; ++i) {
      for (int j = 0; j < L; ++j) {
        dM[i * L + j] = j < i ? -dM[i * L + j] : 0.0;
      }
    }
    for (int i = 0; i < L; ++i) {
      for (int j = 0; j < i; ++j) {
        const double z = in.beta[t0 + i] * dM[i * L + j];
        ZZ[i * L + j] += z;
        ZZ[j * L + i] += z;
      }
    }
    const Mat YS0T = matmul(Y, S0T, L, V, K, parallel);
    const Mat dOS0T = matmul(dO, S0T, L, V, K, parallel), dPk = matmul(dP, c.k, L, L, K, parallel);
    const Mat dPTq = matmul(transpose(dP, L, L), c.q, L, L, K, parallel);
    const Mat VndST = matmul(c.Vn, transpose(dS_end, K, V), L, V, K, parallel);
    const Mat ZZk = matmul(ZZ, c.k, L, L, K, parallel);
    for (int i = 0; i < L; ++i) {
      const double b = in.beta[t0 + i];
      double db = 0;
      for (int j = 0; j < V; ++j) {
        g.dv[(t0 + i) * V + j] = b * Y[i * V + j];
        db += c.v[i * V + j] * Y[i * V + j];
      }
      for (int x = 0; x < K; ++x) {
        db -= c.k[i * K + x] * YS0T[i * K + x];
        g.dq[(t0 + i) * K + x] = scale * dOS0T[i * K + x] + dPk[i * K + x];
        g.dk[(t0 + i) * K + x] =
            dPTq[i * K + x] + VndST[i * K + x] - b * YS0T[i * K + x] + ZZk[i * K + x];
      }
      for (int j = 0; j < i; ++j) db += dM[i * L + j] * c.G[i * L + j];
      g.dbeta[t0 + i] = db;
    }
  }
  g.dh0 = dS;
  return g;
}

// The step-by-step recurrence S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T,
// o_t = scale S_t^T q_t, and its backward, in float64 (states recomputed from a checkpoint
// every C steps): checks the chunked model.
Result sequential(const Inputs& in, int C, const Mat& d_o, const Mat& d_ST, Grads& g) {
  const int T = in.T, K = in.K, V = in.V;
  const double scale = 1.0 / std::sqrt(static_cast<double>(K));
  auto step = [&](int t, const Mat& S_prev, Mat& S, std::vector<double>& u) {
    for (int j = 0; j < V; ++j) {
      double kS = 0;
      for (int x = 0; x < K; ++x) kS += in.k[t * K + x] * S_prev[x * V + j];
      u[j] = in.v[t * V + j] - kS;
    }
    S = S_prev;
    for (int x = 0; x < K; ++x) {
      for (int j = 0; j < V; ++j) S[x * V + j] += in.beta[t] * in.k[t * K + x] * u[j];
    }
  };
  Result r{Mat(static_cast<size_t>(T) * V), Mat(static_cast<size_t>(K) * V, 0.0)};
  std::vector<Mat> checkpoints;
  std::vector<double> u(V);
  for (int t = 0; t < T; ++t) {
    if (t % C == 0) checkpoints.push_back(r.S);
    Mat S;
    step(t, r.S, S, u);
    r.S = S;
    for (int j = 0; j < V; ++j) {
      double s = 0;
      for (int x = 0; x < K; ++x) s += in.q[t * K + x] * r.S[x * V + j];
      r.o[t * V + j] = scale * s;
    }
  }
  g = Grads{Mat(static_cast<size_t>(T) * K), Mat(static_cast<size_t>(T) * K),
            Mat(static_cast<size_t>(T) * V), Mat(T), Mat()};
  Mat dS = d_ST;
  std::vector<double> dvp(V);
  for (int n = static_cast<int>(checkpoints.size()) - 1; n >= 0; --n) {
    const int t0 = n * C, L = std::min(C, T - t0);
    std::vector<Mat> states{checkpoints[n]};
    std::vector<std::vector<double>> us;
    for (int t = t0; t < t0 + L; ++t) {
      Mat S;
      step(t, states.back(), S, u);
      states.push_back(S);
      us.push_back(u);
    }
    for (int t = t0 + L - 1; t >= t0; --t) {
      const Mat &S = states[t - t0 + 1], &S_prev = states[t - t0];
      const std::vector<double>& ut = us[t - t0];
      for (int x = 0; x < K; ++x) {  // o_t = scale S_t^T q_t
        double s = 0;
        for (int j = 0; j < V; ++j) {
          s += S[x * V + j] * d_o[t * V + j];
          dS[x * V + j] += scale * in.q[t * K + x] * d_o[t * V + j];
        }
        g.dq[t * K + x] = scale * s;
      }
      const double b = in.beta[t];
      for (int j = 0; j < V; ++j) {  // S_t = S_prev + k_t (beta u)^T
        double s = 0;
        for (int x = 0; x < K; ++x) s += in.k[t * K + x] * dS[x * V + j];
        dvp[j] = s;
      }
      double db = 0;
      for (int j = 0; j < V; ++j) db += dvp[j] * ut[j];
      g.dbeta[t] = db;
      for (int x = 0; x < K; ++x) {
        double dk = 0;
        for (int j = 0; j < V; ++j)
          dk += dS[x * V + j] * b * ut[j] - S_prev[x * V + j] * b * dvp[j];
        g.dk[t * K + x] = dk;
      }
      for (int j = 0; j < V; ++j) g.dv[t * V + j] = b * dvp[j];
      for (int x = 0; x < K; ++x) {  // u = v - S_prev^T k
        for (int j = 0; j < V; ++j) dS[x * V + j] -= in.k[t * K + x] * b * dvp[j];
      }
    }
  }
  g.dh0 = dS;
  return r;
}

void report(const char* row, const char* what, const Mat& got, const Mat& ref) {
  double num = 0, den = 0, worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
    worst = std::max(worst, std::abs(got[i] - ref[i]));
  }
  const double rms = std::sqrt(den / static_cast<double>(ref.size()));
  std::printf("| %s | %s | %.2e | %.2e |\n", row, what, std::sqrt(num / den), worst / rms);
}

void report_all(const char* row, const Result& r, const Grads& g, const Result& ref,
                const Grads& gref) {
  report(row, "o", r.o, ref.o);
  report(row, "S_T", r.S, ref.S);
  report(row, "d_q", g.dq, gref.dq);
  report(row, "d_k", g.dk, gref.dk);
  report(row, "d_v", g.dv, gref.dv);
  report(row, "d_beta", g.dbeta, gref.dbeta);
  report(row, "d_h0", g.dh0, gref.dh0);
}

}  // namespace

int main(int argc, char** argv) {
  const int T = argc > 1 ? std::atoi(argv[1]) : 2048;
  const int K = argc > 2 ? std::atoi(argv[2]) : 150;
  const int V = argc > 3 ? std::atoi(argv[3]) : 150;
  constexpr int kChunk = 64;
  if (T < 1 || K < 1 || V < 1) {
    std::fprintf(stderr, "usage: delta_rule_tf32 [T] [K] [V], each at least 1\n");
    return 2;
  }
  std::mt19937_64 gen(7);
  std::normal_distribution<double> normal(0, 1);
  std::uniform_real_distribution<double> pm1(-1, 1), beta_dist(0.05, 0.95);
  Inputs raw{T,
             K,
             V,
             Mat(static_cast<size_t>(T) * K),
             Mat(static_cast<size_t>(T) * K),
             Mat(static_cast<size_t>(T) * V),
             std::vector<double>(T)};
  for (double& x : raw.q) x = pm1(gen);
  for (int t = 0; t < T; ++t) {
    double n2 = 0;
    for (int c = 0; c < K; ++c) {
      raw.k[t * K + c] = normal(gen);
      n2 += raw.k[t * K + c] * raw.k[t * K + c];
    }
    for (int c = 0; c < K; ++c) raw.k[t * K + c] /= std::sqrt(n2);
    raw.beta[t] = beta_dist(gen);
  }
  for (double& x : raw.v) x = pm1(gen);
  Mat d_o(static_cast<size_t>(T) * V), d_ST(static_cast<size_t>(K) * V);
  for (double& x : d_o) x = to_bf16(pm1(gen));
  for (double& x : d_ST) x = pm1(gen);
  Inputs in = raw;  // the bfloat16 inputs a bf16 run sees
  for (Mat* m : {&in.q, &in.k, &in.v}) {
    for (double& x : *m) x = to_bf16(x);
  }
  for (double& x : in.beta) x = to_bf16(x);

  std::vector<Chunk> chunks;
  const Result ref = chunked(in, kChunk, Rounding::kNone, Rounding::kNone, &chunks);
  const Grads gref = chunked_backward(in, chunks, d_o, d_ST, Rounding::kNone, Rounding::kNone);
  std::printf("T=%d K=%d V=%d chunk %d; errors against float64 on the bf16-rounded inputs\n\n", T,
              K, V, kChunk);
  std::printf("| run | output | relative RMS error | max error / RMS |\n|---|---|---:|---:|\n");
  Grads gseq;
  const Result seq = sequential(in, kChunk, d_o, d_ST, gseq);
  report_all("sequential recurrence (model check)", seq, gseq, ref, gref);
  Mat o_bf16 = ref.o;
  for (double& x : o_bf16) x = to_bf16(x);
  report("o rounded to bf16", "o", o_bf16, ref.o);
  {
    std::vector<Chunk> raw_chunks;
    const Result r = chunked(raw, kChunk, Rounding::kNone, Rounding::kNone, &raw_chunks);
    const Grads g = chunked_backward(raw, raw_chunks, d_o, d_ST, Rounding::kNone, Rounding::kNone);
    report_all("exact on the unrounded inputs", r, g, ref, gref);
  }
  const struct {
    const char* name;
    Rounding parallel, recurrence;
  } runs[] = {{"bf16-all", Rounding::kBf16, Rounding::kBf16},
              {"tf32-all", Rounding::kTf32, Rounding::kTf32},
              {"tf32-parallel", Rounding::kTf32, Rounding::kNone}};
  for (const auto& run : runs) {
    std::vector<Chunk> run_chunks;
    const Result r = chunked(in, kChunk, run.parallel, run.recurrence, &run_chunks);
    const Grads g = chunked_backward(in, run_chunks, d_o, d_ST, run.parallel, run.recurrence);
    report_all(run.name, r, g, ref, gref);
  }
  return 0;
}
