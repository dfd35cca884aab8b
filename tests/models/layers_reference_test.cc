// Each backbone's token mixer against an independent float64 reference: the layer's
// equations written out as plain loops over time (the step-by-step recurrence, as FLA's
// naive / slow_forward references), reading the layer's own parameters. This checks the
// wiring around the recurrence ops: projections, head layout, gates, convolutions, norms,
// RoPE, the Mamba2-to-gla() mapping.
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "models/deltanet.h"
#include "models/gla.h"
#include "models/mamba.h"
#include "models/mamba2.h"
#include "models/retnet.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

using namespace resona::models;
using Vec = std::vector<double>;

// ---- host-side helpers (row-major, float64) ----

Vec param(const Module& m, const std::string& name) {
  const std::vector<float> v = m.parameter(name).to_vector<float>();
  return Vec(v.begin(), v.end());
}

// y [T, out] = x [T, in] W^T (+ b); W [out, in]
Vec linear(const Vec& x, int64_t T, int64_t in, const Vec& W, int64_t out, const Vec* b = nullptr) {
  Vec y(T * out, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t o = 0; o < out; ++o) {
      double s = b ? (*b)[o] : 0.0;
      for (int64_t i = 0; i < in; ++i) s += x[t * in + i] * W[o * in + i];
      y[t * out + o] = s;
    }
  }
  return y;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
double silu(double x) { return x * sigmoid(x); }
double softplus(double x) { return x > 20 ? x : std::log1p(std::exp(x)); }

// Causal depthwise conv, weight [D, 1, W] (PyTorch layout), optional bias, optional SiLU.
Vec conv(const Vec& x, int64_t T, int64_t D, const Vec& w, int64_t W, const Vec* b, bool act) {
  Vec y(T * D);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t d = 0; d < D; ++d) {
      double s = b ? (*b)[d] : 0.0;
      for (int64_t j = 0; j < W; ++j) {
        const int64_t src = t - (W - 1) + j;
        if (src >= 0) s += w[d * W + j] * x[src * D + d];
      }
      y[t * D + d] = act ? silu(s) : s;
    }
  }
  return y;
}

// RMSNorm of each length-n group of v in place, times w [n].
void rmsnorm_groups(Vec& v, int64_t n, const Vec& w, double eps) {
  for (size_t start = 0; start < v.size(); start += n) {
    double ms = 0;
    for (int64_t i = 0; i < n; ++i) ms += v[start + i] * v[start + i];
    const double r = 1.0 / std::sqrt(ms / n + eps);
    for (int64_t i = 0; i < n; ++i) v[start + i] *= r * w[i];
  }
}

// One batch row of x [B, T, D] as a Vec; and the layer's output for that row.
Vec row(const std::vector<float>& all, int64_t b, int64_t T, int64_t D) {
  return Vec(all.begin() + b * T * D, all.begin() + (b + 1) * T * D);
}

// Runs the layer on random x [B, T, D] and compares every batch row with `reference`.
void check_against_reference(const SequenceModule& layer, int64_t D,
                             const std::function<Vec(const Vec& x, int64_t T)>& reference) {
  const int64_t B = 2, T = 11;
  Generator gen(5);
  Tensor x = gen.normal({B, T, D}, 0.0, 1.0);
  NoGradGuard no_grad;
  Tensor y = layer.forward(x);
  REQUIRE(y.shape() == Shape{B, T, D});
  const std::vector<float> xv = x.to_vector<float>(), yv = y.to_vector<float>();
  double max_err = 0, max_ref = 0;
  for (int64_t b = 0; b < B; ++b) {
    const Vec expected = reference(row(xv, b, T, D), T);
    const Vec got = row(yv, b, T, D);
    for (size_t i = 0; i < expected.size(); ++i) {
      max_err = std::max(max_err, std::abs(expected[i] - got[i]));
      max_ref = std::max(max_ref, std::abs(expected[i]));
    }
  }
  MESSAGE("max |ref| " << max_ref << ", max error " << max_err);
  CHECK(max_ref > 1e-3);  // not vacuous
  // float32 layer against float64 loops over ~11 steps: relative error ~1e-6; 1e-4 of the
  // output's scale leaves room for the chunked algorithms' different summation order.
  CHECK(max_err <= 1e-4 * max_ref);
}

ModelConfig base(const std::string& name) {
  ModelConfig c;
  c.name = name;
  c.hidden_size = 32;
  c.init_std = 0.2;  // larger than 0.02 so that gates and decays are far from trivial
  return c;
}

// ---- references ----

TEST_CASE("layers vs reference: GLA (gates, output gate, short conv)") {
  for (bool short_conv : {false, true}) {
    CAPTURE(short_conv);
    ModelConfig c = base("gla");
    c.gla.num_heads = 2;
    c.gla.chunk_size = 4;
    c.gla.use_short_conv = short_conv;
    Generator gen(1);
    GatedLinearAttention layer(c, gen);
    const int64_t D = 32, H = 2, K = 8, V = 16;
    check_against_reference(layer, D, [&](const Vec& x, int64_t T) {
      Vec q = linear(x, T, D, param(layer, "q_proj.weight"), H * K);
      Vec k = linear(x, T, D, param(layer, "k_proj.weight"), H * K);
      Vec v = linear(x, T, D, param(layer, "v_proj.weight"), H * V);
      if (short_conv) {
        q = conv(q, T, H * K, param(layer, "q_conv1d.weight"), 4, nullptr, true);
        k = conv(k, T, H * K, param(layer, "k_conv1d.weight"), 4, nullptr, true);
        v = conv(v, T, H * V, param(layer, "v_conv1d.weight"), 4, nullptr, true);
      }
      const Vec b1 = param(layer, "gk_proj.1.bias");
      const Vec gk = linear(linear(x, T, D, param(layer, "gk_proj.0.weight"), 16), T, 16,
                            param(layer, "gk_proj.1.weight"), H * K, &b1);
      const Vec g = linear(x, T, D, param(layer, "g_proj.weight"), H * V);
      Vec o(T * H * V);
      for (int64_t h = 0; h < H; ++h) {
        Vec S(K * V, 0.0);
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t i = 0; i < K; ++i) {
            const double a = std::exp(-softplus(-gk[t * H * K + h * K + i]) / 16.0);
            for (int64_t j = 0; j < V; ++j) {
              S[i * V + j] = a * S[i * V + j] + k[t * H * K + h * K + i] * v[t * H * V + h * V + j];
            }
          }
          for (int64_t j = 0; j < V; ++j) {
            double s = 0;
            for (int64_t i = 0; i < K; ++i) s += S[i * V + j] * q[t * H * K + h * K + i];
            o[t * H * V + h * V + j] = s / std::sqrt(static_cast<double>(K));
          }
        }
      }
      rmsnorm_groups(o, V, param(layer, "g_norm_swish_gate.weight"), 1e-6);
      for (size_t i = 0; i < o.size(); ++i) o[i] *= silu(g[i]);
      return linear(o, T, H * V, param(layer, "o_proj.weight"), D);
    });
  }
}

TEST_CASE("layers vs reference: DeltaNet (short conv, l2-normalised q k, beta)") {
  ModelConfig c = base("deltanet");
  c.deltanet.num_heads = 2;
  c.deltanet.chunk_size = 4;
  Generator gen(2);
  DeltaNet layer(c, gen);
  const int64_t D = 32, H = 2, K = 16, V = 16;
  check_against_reference(layer, D, [&](const Vec& x, int64_t T) {
    Vec q = conv(linear(x, T, D, param(layer, "q_proj.weight"), H * K), T, H * K,
                 param(layer, "q_conv1d.weight"), 4, nullptr, true);
    Vec k = conv(linear(x, T, D, param(layer, "k_proj.weight"), H * K), T, H * K,
                 param(layer, "k_conv1d.weight"), 4, nullptr, true);
    Vec v = conv(linear(x, T, D, param(layer, "v_proj.weight"), H * V), T, H * V,
                 param(layer, "v_conv1d.weight"), 4, nullptr, true);
    const Vec beta_logit = linear(x, T, D, param(layer, "b_proj.weight"), H);
    for (Vec* z : {&q, &k}) {
      for (size_t start = 0; start < z->size(); start += K) {
        double n2 = 0;
        for (int64_t i = 0; i < K; ++i) n2 += (*z)[start + i] * (*z)[start + i];
        for (int64_t i = 0; i < K; ++i) (*z)[start + i] /= std::sqrt(n2 + 1e-6);
      }
    }
    Vec o(T * H * V);
    for (int64_t h = 0; h < H; ++h) {
      Vec S(K * V, 0.0);  // S[i][j]: key i, value j
      for (int64_t t = 0; t < T; ++t) {
        const double beta = sigmoid(beta_logit[t * H + h]);
        const double* kt = &k[t * H * K + h * K];
        // v' = beta (v - S^T k);  S += k v'^T
        for (int64_t j = 0; j < V; ++j) {
          double sk = 0;
          for (int64_t i = 0; i < K; ++i) sk += S[i * V + j] * kt[i];
          const double vn = beta * (v[t * H * V + h * V + j] - sk);
          for (int64_t i = 0; i < K; ++i) S[i * V + j] += kt[i] * vn;
        }
        for (int64_t j = 0; j < V; ++j) {
          double s = 0;
          for (int64_t i = 0; i < K; ++i) s += S[i * V + j] * q[t * H * K + h * K + i];
          o[t * H * V + h * V + j] = s / std::sqrt(static_cast<double>(K));
        }
      }
    }
    rmsnorm_groups(o, V, param(layer, "o_norm.weight"), 1e-6);
    return linear(o, T, H * V, param(layer, "o_proj.weight"), D);
  });
}

TEST_CASE("layers vs reference: RetNet (RoPE, fixed decays, output gate)") {
  for (int64_t H : {4, 8}) {  // head key 8, and 4 (H = 8: K = 4, V = 8)
    CAPTURE(H);
    ModelConfig c = base("retnet");
    c.retnet.num_heads = H;
    c.retnet.chunk_size = 4;
    Generator gen(3);
    MultiScaleRetention layer(c, gen);
    const int64_t D = 32, K = 32 / H, V = 64 / H, R = K / 2;
    check_against_reference(layer, D, [&](const Vec& x, int64_t T) {
      Vec q = linear(x, T, D, param(layer, "q_proj.weight"), H * K);
      Vec k = linear(x, T, D, param(layer, "k_proj.weight"), H * K);
      const Vec v = linear(x, T, D, param(layer, "v_proj.weight"), H * V);
      const Vec g = linear(x, T, D, param(layer, "g_proj.weight"), H * V);
      for (Vec* z : {&q, &k}) {
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t h = 0; h < H; ++h) {
            double* p = &(*z)[t * H * K + h * K];
            for (int64_t i = 0; i < R; ++i) {
              const double theta = t * std::pow(10000.0, -2.0 * i / K);
              const double a = p[i], b = p[i + R];
              p[i] = a * std::cos(theta) - b * std::sin(theta);
              p[i + R] = a * std::sin(theta) + b * std::cos(theta);
            }
          }
        }
      }
      Vec o(T * H * V);
      for (int64_t h = 0; h < H; ++h) {
        const double gamma = 1.0 - std::pow(2.0, -5.0 - h);
        Vec S(K * V, 0.0);
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t i = 0; i < K; ++i) {
            for (int64_t j = 0; j < V; ++j) {
              S[i * V + j] =
                  gamma * S[i * V + j] + k[t * H * K + h * K + i] * v[t * H * V + h * V + j];
            }
          }
          for (int64_t j = 0; j < V; ++j) {
            double s = 0;
            for (int64_t i = 0; i < K; ++i) s += S[i * V + j] * q[t * H * K + h * K + i];
            o[t * H * V + h * V + j] = s / std::sqrt(static_cast<double>(K));
          }
        }
      }
      rmsnorm_groups(o, V, param(layer, "g_norm_swish_gate.weight"), 1e-6);
      for (size_t i = 0; i < o.size(); ++i) o[i] *= silu(g[i]);
      return linear(o, T, H * V, param(layer, "o_proj.weight"), D);
    });
  }
}

TEST_CASE("layers vs reference: Mamba mixer (FLA's slow_forward)") {
  ModelConfig c = base("mamba");
  c.mamba.state_size = 4;
  Generator gen(4);
  MambaMixer layer(c, gen);
  const int64_t D = 32, Di = 64, N = 4, R = 2;
  check_against_reference(layer, D, [&](const Vec& x, int64_t T) {
    const Vec xz = linear(x, T, D, param(layer, "in_proj.weight"), 2 * Di);
    Vec xi(T * Di), z(T * Di);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t d = 0; d < Di; ++d) {
        xi[t * Di + d] = xz[t * 2 * Di + d];
        z[t * Di + d] = xz[t * 2 * Di + Di + d];
      }
    }
    const Vec cb = param(layer, "conv1d.bias");
    xi = conv(xi, T, Di, param(layer, "conv1d.weight"), 4, &cb, true);
    const Vec dbc = linear(xi, T, Di, param(layer, "x_proj.weight"), R + 2 * N);
    const Vec dtw = param(layer, "dt_proj.weight"), dtb = param(layer, "dt_proj.bias");
    const Vec A_log = param(layer, "A_log"), Dp = param(layer, "D");
    Vec y(T * Di);
    Vec h(Di * N, 0.0);
    for (int64_t t = 0; t < T; ++t) {
      const double* r = &dbc[t * (R + 2 * N)];
      const double* Bt = r + R;
      const double* Ct = r + R + N;
      for (int64_t d = 0; d < Di; ++d) {
        double dt = dtb[d];
        for (int64_t j = 0; j < R; ++j) dt += dtw[d * R + j] * r[j];
        dt = softplus(dt);
        double out = 0;
        for (int64_t n = 0; n < N; ++n) {
          const double A = -std::exp(A_log[d * N + n]);
          h[d * N + n] = std::exp(dt * A) * h[d * N + n] + dt * Bt[n] * xi[t * Di + d];
          out += Ct[n] * h[d * N + n];
        }
        y[t * Di + d] = (out + Dp[d] * xi[t * Di + d]) * silu(z[t * Di + d]);
      }
    }
    return linear(y, T, Di, param(layer, "out_proj.weight"), D);
  });
}

TEST_CASE("layers vs reference: Mamba2 mixer (SSD, grouped B and C, gated norm)") {
  ModelConfig c = base("mamba2");
  c.num_layers = 2;
  c.mamba2.head_dim = 16;  // 4 heads
  c.mamba2.n_groups = 2;   // heads 0, 1 read group 0; heads 2, 3 group 1
  c.mamba2.state_size = 8;
  c.mamba2.chunk_size = 4;
  Generator gen(6);
  Mamba2Mixer layer(c, gen);
  const int64_t D = 32, Di = 64, H = 4, P = 16, G = 2, N = 8, CD = Di + 2 * G * N;
  check_against_reference(layer, D, [&](const Vec& x, int64_t T) {
    const Vec proj = linear(x, T, D, param(layer, "in_proj.weight"), Di + CD + H);
    Vec z(T * Di), xbc(T * CD), dt(T * H);
    for (int64_t t = 0; t < T; ++t) {
      const double* p = &proj[t * (Di + CD + H)];
      for (int64_t i = 0; i < Di; ++i) z[t * Di + i] = p[i];
      for (int64_t i = 0; i < CD; ++i) xbc[t * CD + i] = p[Di + i];
      for (int64_t i = 0; i < H; ++i) dt[t * H + i] = p[Di + CD + i];
    }
    const Vec cb = param(layer, "conv1d.bias");
    xbc = conv(xbc, T, CD, param(layer, "conv1d.weight"), 4, &cb, true);
    const Vec dt_bias = param(layer, "dt_bias"), A_log = param(layer, "A_log"),
              Dp = param(layer, "D");
    Vec y(T * Di);
    for (int64_t h = 0; h < H; ++h) {
      const int64_t grp = h / (H / G);
      Vec S(N * P, 0.0);
      for (int64_t t = 0; t < T; ++t) {
        const double* xs = &xbc[t * CD + h * P];
        const double* Bt = &xbc[t * CD + Di + grp * N];
        const double* Ct = &xbc[t * CD + Di + G * N + grp * N];
        const double delta = softplus(dt[t * H + h] + dt_bias[h]);
        const double decay = std::exp(-std::exp(A_log[h]) * delta);
        for (int64_t n = 0; n < N; ++n) {
          for (int64_t p = 0; p < P; ++p)
            S[n * P + p] = decay * S[n * P + p] + Bt[n] * delta * xs[p];
        }
        for (int64_t p = 0; p < P; ++p) {
          double s = 0;
          for (int64_t n = 0; n < N; ++n) s += Ct[n] * S[n * P + p];
          y[t * Di + h * P + p] = s + Dp[h] * xs[p];
        }
      }
    }
    for (size_t i = 0; i < y.size(); ++i) y[i] *= silu(z[i]);  // gate, then norm
    rmsnorm_groups(y, Di, param(layer, "norm.weight"), 1e-5);
    return linear(y, T, Di, param(layer, "out_proj.weight"), D);
  });
}

}  // namespace
}  // namespace resona::testing
