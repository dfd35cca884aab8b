// delta_rule_tf32: how much error tensor-core products with TF32 operands (10-bit mantissa)
// add to the chunked delta rule under bfloat16 storage, set beside the errors bfloat16
// itself brings. A float64 model of the chunked forward (WY representation, chunk 64) on
// one (b, h) sequence with the benchmark's inputs (q, v uniform in +-1, k unit rows, beta in
// (0.05, 0.95)), its products' operands rounded as a kernel would round them:
//
//   exact             every product in float64 (the reference, on bf16-rounded inputs)
//   tf32-parallel     TF32 operands in the per-chunk products (G = k k^T, W = T k, U = T v,
//                     P = tril(q k^T), q S0, P V'); the recurrence's W S and k^T V' exact
//   tf32-all          TF32 operands in every product
//   bf16-all          bfloat16 operands in every product (what kernels that multiply in
//                     bf16 on tensor cores do)
//
// and, for scale, o rounded to bfloat16, and the exact run on the unrounded inputs (what
// rounding the inputs to bfloat16 moves). Sums stay float64 and the triangular solve for N
// is exact, so each row isolates the operand rounding. Prints the relative RMS error and
// the largest error over the RMS, for o and the final state S_T.
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

// The chunked forward from S = 0: per chunk, G = k k^T, N = (I + strictly lower
// diag(beta) G)^-1, T = N diag(beta), W = T k, U = T v, V' = U - W S,
// o = scale (q S + tril(q k^T) V'), S <- S + k^T V'. `parallel` rounds the per-chunk
// products' operands, `recurrence` those of W S and k^T V'.
Result chunked(const Inputs& in, int C, Rounding parallel, Rounding recurrence) {
  const int T = in.T, K = in.K, V = in.V;
  const double scale = 1.0 / std::sqrt(static_cast<double>(K));
  Result r{Mat(static_cast<size_t>(T) * V), Mat(static_cast<size_t>(K) * V, 0.0)};
  for (int t0 = 0; t0 < T; t0 += C) {
    const int L = std::min(C, T - t0);
    const Mat q(in.q.begin() + t0 * K, in.q.begin() + (t0 + L) * K);
    const Mat k(in.k.begin() + t0 * K, in.k.begin() + (t0 + L) * K);
    const Mat v(in.v.begin() + t0 * V, in.v.begin() + (t0 + L) * V);
    const Mat kt = transpose(k, L, K);
    const Mat G = matmul(k, kt, L, K, L, parallel);
    Mat N(static_cast<size_t>(L) * L, 0.0);
    for (int c = 0; c < L; ++c) {
      N[c * L + c] = 1;
      for (int i = c + 1; i < L; ++i) {
        double x = 0;
        for (int j = c; j < i; ++j) x += G[i * L + j] * N[j * L + c];
        N[i * L + c] = -in.beta[t0 + i] * x;
      }
    }
    Mat Tm(N.size());
    for (int i = 0; i < L; ++i) {
      for (int j = 0; j < L; ++j) Tm[i * L + j] = N[i * L + j] * in.beta[t0 + j];
    }
    const Mat W = matmul(Tm, k, L, L, K, parallel), U = matmul(Tm, v, L, L, V, parallel);
    Mat P = matmul(q, kt, L, K, L, parallel);
    for (int i = 0; i < L; ++i) {
      for (int j = i + 1; j < L; ++j) P[i * L + j] = 0;
    }
    const Mat WS = matmul(W, r.S, L, K, V, recurrence);
    Mat Vn(U.size());
    for (size_t x = 0; x < Vn.size(); ++x) Vn[x] = U[x] - WS[x];
    const Mat qS = matmul(q, r.S, L, K, V, parallel), PV = matmul(P, Vn, L, L, V, parallel);
    for (int i = 0; i < L; ++i) {
      for (int j = 0; j < V; ++j) r.o[(t0 + i) * V + j] = scale * (qS[i * V + j] + PV[i * V + j]);
    }
    const Mat dS = matmul(kt, Vn, K, L, V, recurrence);
    for (size_t x = 0; x < r.S.size(); ++x) r.S[x] += dS[x];
  }
  return r;
}

// The step-by-step recurrence S_t = S_{t-1} + beta_t k_t (v_t - k_t^T S_{t-1}),
// o_t = scale S_t^T q_t, in float64: checks the chunked model.
Result sequential(const Inputs& in) {
  const int T = in.T, K = in.K, V = in.V;
  const double scale = 1.0 / std::sqrt(static_cast<double>(K));
  Result r{Mat(static_cast<size_t>(T) * V), Mat(static_cast<size_t>(K) * V, 0.0)};
  std::vector<double> kS(V);
  for (int t = 0; t < T; ++t) {
    std::fill(kS.begin(), kS.end(), 0.0);
    for (int x = 0; x < K; ++x) {
      for (int j = 0; j < V; ++j) kS[j] += in.k[t * K + x] * r.S[x * V + j];
    }
    for (int x = 0; x < K; ++x) {
      for (int j = 0; j < V; ++j) {
        r.S[x * V + j] += in.beta[t] * in.k[t * K + x] * (in.v[t * V + j] - kS[j]);
      }
    }
    for (int j = 0; j < V; ++j) {
      double s = 0;
      for (int x = 0; x < K; ++x) s += in.q[t * K + x] * r.S[x * V + j];
      r.o[t * V + j] = scale * s;
    }
  }
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
  Inputs in = raw;  // the bfloat16 inputs a bf16 run sees
  for (Mat* m : {&in.q, &in.k, &in.v}) {
    for (double& x : *m) x = to_bf16(x);
  }
  for (double& x : in.beta) x = to_bf16(x);

  const Result ref = chunked(in, kChunk, Rounding::kNone, Rounding::kNone);
  std::printf("T=%d K=%d V=%d chunk %d; errors against float64 on the bf16-rounded inputs\n\n", T,
              K, V, kChunk);
  std::printf("| run | output | relative RMS error | max error / RMS |\n|---|---|---:|---:|\n");
  const Result seq = sequential(in);
  report("sequential recurrence (model check)", "o", seq.o, ref.o);
  report("sequential recurrence (model check)", "S_T", seq.S, ref.S);
  Mat o_bf16 = ref.o;
  for (double& x : o_bf16) x = to_bf16(x);
  report("o rounded to bf16", "o", o_bf16, ref.o);
  const Result unrounded = chunked(raw, kChunk, Rounding::kNone, Rounding::kNone);
  report("exact on the unrounded inputs", "o", unrounded.o, ref.o);
  report("exact on the unrounded inputs", "S_T", unrounded.S, ref.S);
  const struct {
    const char* name;
    Rounding parallel, recurrence;
  } runs[] = {{"bf16-all", Rounding::kBf16, Rounding::kBf16},
              {"tf32-all", Rounding::kTf32, Rounding::kTf32},
              {"tf32-parallel", Rounding::kTf32, Rounding::kNone}};
  for (const auto& run : runs) {
    const Result r = chunked(in, kChunk, run.parallel, run.recurrence);
    report(run.name, "o", r.o, ref.o);
    report(run.name, "S_T", r.S, ref.S);
  }
  return 0;
}
