// gla (chunked gated linear attention): finite differences in float64 (per-key and
// per-head gates, T < chunk, T = chunk, T = 2 chunk + 1, each of the three ways the
// intra-chunk products are formed, subsets of inputs); values against a sequential
// float64 recurrence written here (float64 and float32, K = 75 / V = 150, RetNet's
// constant decay, strong decay); running a sequence in two pieces; input checks.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/scan.h"
#include "ops/shape.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

struct GlaCase {
  int64_t B, T, H, K, V, chunk;
  bool scalar_gate, h0;
  // Log gates uniform in [g_lo, g_hi]. ops/gla.cc forms the intra-chunk products in one of
  // three ways by the gates' spread within a chunk (kMaxSpread = 40): as one product when
  // (chunk - 1) |g| <= 40, else per 16-row sub-chunk, whose diagonal block is one product
  // when 15 |g| <= 40 and pairwise otherwise; the ranges below pick each.
  double g_lo = -1.0, g_hi = -0.05;
};

std::string case_name(const GlaCase& c) {
  return "gla(B=" + std::to_string(c.B) + ",T=" + std::to_string(c.T) +
         ",H=" + std::to_string(c.H) + ",K=" + std::to_string(c.K) + ",V=" + std::to_string(c.V) +
         ",chunk=" + std::to_string(c.chunk) + ",g=" + (c.scalar_gate ? "[B,T,H]" : "[B,T,H,K]") +
         " in [" + std::to_string(c.g_lo) + "," + std::to_string(c.g_hi) + "]" +
         ",h0=" + (c.h0 ? "yes" : "no") + ")";
}

Shape gate_shape(const GlaCase& c) {
  return c.scalar_gate ? Shape{c.B, c.T, c.H} : Shape{c.B, c.T, c.H, c.K};
}

struct Reference {
  std::vector<double> o, S;
};

// The recurrence of ops/scan.h step by step in float64, straight from the definition:
//   S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,  o_t = scale S_t^T q_t.
Reference reference_gla(const GlaCase& c, const Tensor& q_t, const Tensor& k_t, const Tensor& v_t,
                        const Tensor& g_t, const Tensor& h0_t, double scale) {
  const std::vector<double> q = q_t.to_vector<double>(), k = k_t.to_vector<double>(),
                            v = v_t.to_vector<double>(), g = g_t.to_vector<double>();
  const std::vector<double> h0 = h0_t.defined() ? h0_t.to_vector<double>() : std::vector<double>();
  const int64_t B = c.B, T = c.T, H = c.H, K = c.K, V = c.V;
  Reference r;
  r.o.assign(B * T * H * V, 0.0);
  r.S.assign(B * H * K * V, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> S(K * V, 0.0);
      if (!h0.empty()) {
        for (int64_t i = 0; i < K * V; ++i) S[i] = h0.at((b * H + h) * K * V + i);
      }
      for (int64_t t = 0; t < T; ++t) {
        const int64_t row = (b * T + t) * H + h;
        for (int64_t i = 0; i < K; ++i) {
          const double alpha = std::exp(c.scalar_gate ? g.at(row) : g.at(row * K + i));
          for (int64_t j = 0; j < V; ++j) {
            S[i * V + j] = alpha * S[i * V + j] + k.at(row * K + i) * v.at(row * V + j);
          }
        }
        for (int64_t j = 0; j < V; ++j) {
          double acc = 0;
          for (int64_t i = 0; i < K; ++i) acc += S[i * V + j] * q.at(row * K + i);
          r.o.at(row * V + j) = scale * acc;
        }
      }
      for (int64_t i = 0; i < K * V; ++i) r.S.at((b * H + h) * K * V + i) = S[i];
    }
  }
  return r;
}

// Tolerances of check_rel for float32 against the float64 recurrence. float32 rounds at
// u = 6e-8; the chunked products sum up to K*C (4800 at K=75, C=64) terms in blocked,
// partly pairwise order, whose error grows like sqrt(n) u for terms of mixed sign, and each
// decay factor carries ~u |G| from the rounded cumulative gate. Measured on the cases
// below: relative RMS error 1e-7 to 5e-7, worst element up to 5e-6 of the RMS. The bounds
// sit 10x above that, far below what an algebra or indexing mistake produces (errors of
// the order of one decay step, >= 1e-3 relative), and 1000x below FLA's own 5e-3.
constexpr double kRms32 = 5e-6, kMax32 = 5e-5;

// GLA's gate as FLA builds it: logsigmoid(x) / 16 with x ~ N(0, 1), i.e. in about
// [-0.3, -0.003]: long memory.
Tensor gla_gate(Generator& gen, const Shape& shape, DType dt) {
  std::vector<double> x = gen.normal(shape, 0, 1, DType::kFloat64).to_vector<double>();
  for (double& v : x) v = -std::log1p(std::exp(-v)) / 16;
  return from_vector(x, shape).to(dt);
}

}  // namespace

RESONA_OP_TEST(gla, gradcheck,
               "gla(B=2,H=2,K=5,V=7,chunk=4) T=3,4,9, per-key and per-head gates, with and "
               "without h0; chunk=20 at T=41 with g in [-1,-0.05], [-2.5,-2.3] and [-6,-4] "
               "(one product, sub-chunks, pairwise diagonal); strided q and v") {
  const std::vector<GlaCase> cases = {
      {2, 3, 2, 5, 7, 4, false, true},
      {2, 4, 2, 5, 7, 4, false, false},
      {2, 9, 2, 5, 7, 4, false, true},
      {2, 3, 2, 5, 7, 4, true, false},
      {2, 9, 2, 5, 7, 4, true, true},
      {1, 41, 1, 5, 7, 20, false, true},
      {1, 41, 1, 5, 7, 20, true, true},
      {1, 41, 1, 5, 7, 20, false, true, -2.5, -2.3},
      {1, 41, 1, 5, 7, 20, false, true, -6, -4},
  };
  for (const GlaCase& c : cases) {
    INFO(case_name(c));
    Generator gen(100 + c.T + c.chunk + (c.scalar_gate ? 7 : 0));
    Tensor q = leaf(gen, {c.B, c.T, c.H, c.K}), k = leaf(gen, {c.B, c.T, c.H, c.K});
    Tensor v = leaf(gen, {c.B, c.T, c.H, c.V});
    Tensor g = leaf(gen, gate_shape(c), c.g_lo, c.g_hi);
    Tensor h0 = c.h0 ? leaf(gen, {c.B, c.H, c.K, c.V}) : Tensor();
    ChunkOptions opt;
    opt.chunk = c.chunk;
    std::vector<Tensor> inputs = {q, k, v, g};
    if (c.h0) inputs.push_back(h0);
    check_gradients(
        [&](const std::vector<Tensor>& x) {
          return out_and_state(gla(x[0], x[1], x[2], x[3], c.h0 ? x[4] : Tensor(), opt));
        },
        inputs);
  }
  // Strided inputs: q and v as transposes of [B, H, T, .] leaves.
  Generator gen(140);
  ChunkOptions opt;
  opt.chunk = 4;
  check_gradients(
      [&](const std::vector<Tensor>& x) {
        return out_and_state(
            gla(x[0].transpose(1, 2), x[1], x[2].transpose(1, 2), x[3], Tensor(), opt));
      },
      {leaf(gen, {2, 2, 9, 5}), leaf(gen, {2, 9, 2, 5}), leaf(gen, {2, 2, 9, 7}),
       leaf(gen, {2, 9, 2, 5}, -1, -0.05)});
}

RESONA_OP_TEST(gla, gradcheck, "gla subsets of inputs needing grad: v only, g and h0, q and k") {
  Generator gen(131);
  const GlaCase c{2, 9, 2, 5, 7, 4, false, true};
  ChunkOptions opt;
  opt.chunk = c.chunk;
  auto inputs = [&](bool q_grad, bool k_grad, bool v_grad, bool g_grad, bool h0_grad) {
    auto make = [&](const Shape& s, double lo, double hi, bool grad) {
      Tensor t = gen.uniform(s, lo, hi, DType::kFloat64);
      t.set_requires_grad(grad);
      return t;
    };
    return std::vector<Tensor>{
        make({c.B, c.T, c.H, c.K}, -1, 1, q_grad), make({c.B, c.T, c.H, c.K}, -1, 1, k_grad),
        make({c.B, c.T, c.H, c.V}, -1, 1, v_grad), make(gate_shape(c), -1, -0.05, g_grad),
        make({c.B, c.H, c.K, c.V}, -1, 1, h0_grad)};
  };
  auto f = [&](const std::vector<Tensor>& x) {
    return out_and_state(gla(x[0], x[1], x[2], x[3], x[4], opt));
  };
  check_gradients(f, inputs(false, false, true, false, false));
  check_gradients(f, inputs(false, false, false, true, true));
  check_gradients(f, inputs(true, true, false, false, false));
  // Gradients not asked for stay undefined.
  std::vector<Tensor> x = inputs(false, false, true, false, false);
  sum(out_and_state(gla(x[0], x[1], x[2], x[3], x[4], opt))).backward();
  CHECK(x[2].grad().defined());
  CHECK_FALSE(x[0].grad().defined());
  CHECK_FALSE(x[3].grad().defined());
  CHECK_FALSE(x[4].grad().defined());
}

RESONA_OP_TEST(gla, values,
               "gla float64 vs sequential recurrence: T<chunk, T=chunk, T=2chunk+1, chunk=1, "
               "8, 20 and 64, B>1, H>1, per-key and per-head gates, with and without h0, all three "
               "intra-chunk forms") {
  const std::vector<GlaCase> cases = {
      {2, 5, 2, 5, 7, 8, false, true},
      {1, 8, 3, 5, 7, 8, false, false},
      {2, 17, 2, 5, 7, 8, false, true},
      {2, 17, 2, 5, 7, 8, true, true},
      {2, 5, 3, 5, 7, 8, true, false},
      {2, 41, 2, 6, 3, 20, false, true},
      {2, 41, 2, 6, 3, 20, true, false},
      {1, 129, 2, 16, 32, 64, false, true},
      {1, 129, 2, 16, 32, 64, true, true},
      {1, 64, 1, 3, 4, 64, false, false},
      {2, 129, 2, 5, 7, 64, false, true, -2, -1},
      {2, 41, 2, 5, 7, 20, false, true, -8, -3},
      {2, 5, 2, 5, 7, 1, false, true},
      {2, 5, 2, 5, 7, 1, true, true},
  };
  for (const GlaCase& c : cases) {
    INFO(case_name(c));
    Generator gen(200 + c.T + c.K + (c.scalar_gate ? 3 : 0));
    Tensor q = gen.uniform({c.B, c.T, c.H, c.K}, -1, 1, DType::kFloat64);
    Tensor k = gen.uniform({c.B, c.T, c.H, c.K}, -1, 1, DType::kFloat64);
    Tensor v = gen.uniform({c.B, c.T, c.H, c.V}, -1, 1, DType::kFloat64);
    Tensor g = gen.uniform(gate_shape(c), c.g_lo, c.g_hi, DType::kFloat64);
    Tensor h0 = c.h0 ? gen.uniform({c.B, c.H, c.K, c.V}, -1, 1, DType::kFloat64) : Tensor();
    ChunkOptions opt;
    opt.chunk = c.chunk;
    RecurrentOutput r = gla(q, k, v, g, h0, opt);
    REQUIRE(r.out.shape() == Shape{c.B, c.T, c.H, c.V});
    REQUIRE(r.final_state.shape() == Shape{c.B, c.H, c.K, c.V});
    Reference ref = reference_gla(c, q, k, v, g, h0, 1.0 / std::sqrt(double(c.K)));
    // Same sums in another order (chunked products vs step by step) over values of
    // magnitude <= a few: float64 rounding, ~1e-15 relative; 1e-12 is far below any
    // algebra or indexing mistake.
    check_close(r.out, ref.o, 1e-12, 1e-12);
    check_close(r.final_state, ref.S, 1e-12, 1e-12);
  }
  // An explicit scale and the default chunk.
  Generator gen(250);
  const GlaCase c{1, 70, 1, 4, 3, 64, false, false};
  Tensor q = gen.uniform({1, 70, 1, 4}, -1, 1, DType::kFloat64);
  Tensor k = gen.uniform({1, 70, 1, 4}, -1, 1, DType::kFloat64);
  Tensor v = gen.uniform({1, 70, 1, 3}, -1, 1, DType::kFloat64);
  Tensor g = gen.uniform({1, 70, 1, 4}, -0.5, 0, DType::kFloat64);
  ChunkOptions opt;
  opt.scale = 0.3;
  RecurrentOutput r = gla(q, k, v, g, Tensor(), opt);
  check_close(r.out, reference_gla(c, q, k, v, g, Tensor(), 0.3).o, 1e-12, 1e-12);
}

RESONA_OP_TEST(gla, values,
               "gla float32 vs float64 recurrence at K=75, V=150 (GLA at hidden 600), "
               "T=129, chunk=64, both gate kinds; float32 gradients vs float64") {
  for (bool scalar : {false, true}) {
    const GlaCase c{2, 129, 2, 75, 150, 64, scalar, true};
    INFO(case_name(c));
    Generator gen(300 + (scalar ? 1 : 0));
    // float32 inputs; the reference runs in float64 on exactly these values, so only the
    // op's own float32 arithmetic is measured.
    Tensor q = gen.uniform({c.B, c.T, c.H, c.K}, -1, 1, DType::kFloat32);
    Tensor k = gen.uniform({c.B, c.T, c.H, c.K}, -1, 1, DType::kFloat32);
    Tensor v = gen.uniform({c.B, c.T, c.H, c.V}, -1, 1, DType::kFloat32);
    Tensor g = gla_gate(gen, gate_shape(c), DType::kFloat32);
    Tensor h0 = gen.uniform({c.B, c.H, c.K, c.V}, -1, 1, DType::kFloat32);
    RecurrentOutput r = gla(q, k, v, g, h0);
    CHECK(r.out.dtype() == DType::kFloat32);
    CHECK(r.final_state.dtype() == DType::kFloat32);
    Reference ref = reference_gla(c, q, k, v, g, h0, 1.0 / std::sqrt(75.0));
    check_rel(r.out, ref.o, kRms32, kMax32);
    check_rel(r.final_state, ref.S, kRms32, kMax32);

    // Gradients: float32 against float64 for the same d_o and d_S_T (float64 gradients
    // are checked by finite differences above). The backward products are of the same
    // length as the forward ones, so the same tolerances hold (measured 2e-7 to 3e-7).
    Tensor d_o = gen.uniform(r.out.shape(), -1, 1, DType::kFloat64);
    Tensor d_S = gen.uniform(r.final_state.shape(), -1, 1, DType::kFloat64);
    auto grads = [&](DType dt) {
      std::vector<Tensor> x = {q.to(dt).detach(), k.to(dt).detach(), v.to(dt).detach(),
                               g.to(dt).detach(), h0.to(dt).detach()};
      for (Tensor& t : x) t.set_requires_grad(true);
      RecurrentOutput y = gla(x[0], x[1], x[2], x[3], x[4]);
      Tensor loss = add(sum(mul(y.out, d_o.to(dt))), sum(mul(y.final_state, d_S.to(dt))));
      loss.backward();
      std::vector<Tensor> gr;
      for (Tensor& t : x) gr.push_back(t.grad());
      return gr;
    };
    std::vector<Tensor> g64 = grads(DType::kFloat64), g32 = grads(DType::kFloat32);
    const char* names[] = {"d_q", "d_k", "d_v", "d_g", "d_h0"};
    for (int i = 0; i < 5; ++i) {
      INFO(names[i]);
      CHECK(g32[i].dtype() == DType::kFloat32);
      // d_g is a reverse cumulative sum (up to C terms) of q*d_q - k*d_k, two nearly
      // cancelling products: its relative error is about twice that of d_q and d_k
      // (measured 5e-7), so it gets twice the room.
      const double f = i == 3 ? 2 : 1;
      check_rel(g32[i], g64[i].to_vector<double>(), f * kRms32, f * kMax32);
    }
  }
}

RESONA_OP_TEST(gla, values,
               "gla RetNet decay: g = log(1 - 2^(-5-h)) per head, float64 and float32 vs "
               "recurrence") {
  const GlaCase c{2, 150, 4, 8, 16, 64, true, false};
  INFO(case_name(c));
  Generator gen(400);
  std::vector<double> gv(c.B * c.T * c.H);
  for (int64_t i = 0; i < static_cast<int64_t>(gv.size()); ++i) {
    gv[i] = std::log(1 - std::pow(2.0, -5.0 - static_cast<double>(i % c.H)));
  }
  Tensor g = from_vector(gv, {c.B, c.T, c.H});
  Tensor q = gen.uniform({c.B, c.T, c.H, c.K}, -1, 1, DType::kFloat64);
  Tensor k = gen.uniform({c.B, c.T, c.H, c.K}, -1, 1, DType::kFloat64);
  Tensor v = gen.uniform({c.B, c.T, c.H, c.V}, -1, 1, DType::kFloat64);
  Reference ref = reference_gla(c, q, k, v, g, Tensor(), 1.0 / std::sqrt(8.0));
  RecurrentOutput r = gla(q, k, v, g);
  check_close(r.out, ref.o, 1e-11, 1e-11);  // float64: see the float64 case above
  check_close(r.final_state, ref.S, 1e-11, 1e-11);
  // float32, the reference on the same rounded inputs: gamma up to 1 - 2^-8 keeps ~256
  // steps of memory, the sums are no longer than above (measured 3e-7 RMS).
  Tensor q32 = q.to(DType::kFloat32), k32 = k.to(DType::kFloat32), v32 = v.to(DType::kFloat32);
  Tensor g32 = g.to(DType::kFloat32);
  Reference ref32 = reference_gla(c, q32, k32, v32, g32, Tensor(), 1.0 / std::sqrt(8.0));
  RecurrentOutput r32 = gla(q32, k32, v32, g32);
  check_rel(r32.out, ref32.o, kRms32, kMax32);
  check_rel(r32.final_state, ref32.S, kRms32, kMax32);
}

RESONA_OP_TEST(gla, values,
               "gla strong decay: g ~ -1.5, -5 and -40 per step, chunk=64, float32 and "
               "float64, no overflow, matches the recurrence") {
  // -1.5 takes the sub-chunk form with factored diagonal blocks, -5 and -40 the pairwise
  // diagonal blocks (see GlaCase).
  for (double level : {-1.5, -5.0, -40.0}) {
    for (bool scalar : {false, true}) {
      const GlaCase c{2, 129, 2, 16, 32, 64, scalar, true};
      INFO(case_name(c) << " g around " << level);
      Generator gen(500 + static_cast<uint64_t>(-10 * level) + (scalar ? 1 : 0));
      Tensor q = gen.uniform({c.B, c.T, c.H, c.K}, -1, 1, DType::kFloat64);
      Tensor k = gen.uniform({c.B, c.T, c.H, c.K}, -1, 1, DType::kFloat64);
      Tensor v = gen.uniform({c.B, c.T, c.H, c.V}, -1, 1, DType::kFloat64);
      // Within a chunk the cumulative gate reaches 64 * level: exp(-G) would be e^320
      // (float32 overflows beyond e^88, float64 beyond e^709 at level -40).
      Tensor g = gen.uniform(gate_shape(c), 1.2 * level, 0.8 * level, DType::kFloat64);
      Tensor h0 = gen.uniform({c.B, c.H, c.K, c.V}, -1, 1, DType::kFloat64);
      Reference ref = reference_gla(c, q, k, v, g, h0, 0.25);
      RecurrentOutput r = gla(q, k, v, g, h0);
      check_close(r.out, ref.o, 1e-12, 1e-12);
      check_close(r.final_state, ref.S, 1e-12, 1e-12);
      Tensor q32 = q.to(DType::kFloat32), k32 = k.to(DType::kFloat32);
      Tensor v32 = v.to(DType::kFloat32), g32 = g.to(DType::kFloat32);
      Tensor h32 = h0.to(DType::kFloat32);
      Reference ref32 = reference_gla(c, q32, k32, v32, g32, h32, 0.25);
      RecurrentOutput r32 = gla(q32, k32, v32, g32, h32);
      // Fewer effective terms than above; the rounded cumulative gates (|G| up to 3000)
      // put up to u |G| = 2e-4 relative error on decay factors that are themselves below
      // e^-30 beyond the diagonal. Measured 6e-8 to 3e-7 RMS: the same bounds hold.
      check_rel(r32.out, ref32.o, kRms32, kMax32);
      check_rel(r32.final_state, ref32.S, kRms32, kMax32);
      // The gradients stay finite too (they recompute the same exponentials).
      std::vector<Tensor> x = {q32.detach(), k32.detach(), v32.detach(), g32.detach(),
                               h32.detach()};
      for (Tensor& t : x) t.set_requires_grad(true);
      sum(out_and_state(gla(x[0], x[1], x[2], x[3], x[4]))).backward();
      for (Tensor& t : x) {
        std::vector<double> gr = t.grad().to_vector<double>();
        bool finite = true;
        for (double e : gr) finite = finite && std::isfinite(e);
        CHECK(finite);
      }
    }
  }
}

RESONA_OP_TEST(gla, values,
               "gla split sequence: [0,T) equals [0,t) then [t,T) with the state carried, "
               "outputs and gradients, T=37, t=13 and 24, chunk=8") {
  for (bool scalar : {false, true}) {
    const GlaCase c{2, 37, 2, 5, 7, 8, scalar, true};
    INFO(case_name(c));
    Generator gen(600 + (scalar ? 1 : 0));
    std::vector<Tensor> x = {leaf(gen, {c.B, c.T, c.H, c.K}), leaf(gen, {c.B, c.T, c.H, c.K}),
                             leaf(gen, {c.B, c.T, c.H, c.V}), leaf(gen, gate_shape(c), -1, -0.05),
                             leaf(gen, {c.B, c.H, c.K, c.V})};
    ChunkOptions opt;
    opt.chunk = c.chunk;
    const Tensor d_o = gen.uniform({c.B, c.T, c.H, c.V}, -1, 1, DType::kFloat64);
    const Tensor d_S = gen.uniform({c.B, c.H, c.K, c.V}, -1, 1, DType::kFloat64);
    check_split_sequence(x, x[4], c.T,
                         [&](int64_t t0, int64_t t1, const Tensor& h) {
                           return gla(x[0].slice(1, t0, t1), x[1].slice(1, t0, t1),
                                      x[2].slice(1, t0, t1), x[3].slice(1, t0, t1), h, opt);
                         },
                         d_o, d_S, {13, 24});
  }
}

TEST_CASE("gla checks its inputs") {
  Tensor q = zeros({2, 5, 3, 4}).set_name("q"), k = zeros({2, 5, 3, 4});
  Tensor v = zeros({2, 5, 3, 6}), g = zeros({2, 5, 3, 4});
  CHECK_NOTHROW(gla(q, k, v, g));
  CHECK_THROWS_WITH_AS(gla(q, zeros({2, 5, 3, 5}), v, g),
                       doctest::Contains("k has shape [2, 5, 3, 5], expected [2, 5, 3, 4]"), Error);
  CHECK_THROWS_WITH_AS(gla(q, k, zeros({2, 4, 3, 6}), g),
                       doctest::Contains("v has shape [2, 4, 3, 6], expected [2, 5, 3, 6]"), Error);
  CHECK_THROWS_WITH_AS(gla(q, k, v, zeros({2, 5, 3, 2})),
                       doctest::Contains("g has shape [2, 5, 3, 2], expected [2, 5, 3, 4]"), Error);
  CHECK_THROWS_WITH_AS(gla(q, k, v, zeros({2, 5, 2})),
                       doctest::Contains("g has shape [2, 5, 2], expected [2, 5, 3]"), Error);
  CHECK_THROWS_WITH_AS(gla(q, k, v, zeros({2, 5})),
                       doctest::Contains("g must be [B, T, H, K] (per key channel) or [B, T, H]"),
                       Error);
  CHECK_THROWS_WITH_AS(gla(q, k, v, g, zeros({2, 3, 4, 4})),
                       doctest::Contains("h0 has shape [2, 3, 4, 4], expected [2, 3, 4, 6]"),
                       Error);
  CHECK_THROWS_WITH_AS(gla(zeros({5, 3, 4}), k, v, g),
                       doctest::Contains("q must be [B, T, H, K], got [5, 3, 4]"), Error);
  CHECK_THROWS_WITH_AS(gla(q, k, v.to(DType::kFloat64), g), doctest::Contains("dtype mismatch"),
                       Error);
  ChunkOptions bad;
  bad.chunk = 0;
  CHECK_THROWS_WITH_AS(gla(q, k, v, g, Tensor(), bad), doctest::Contains("chunk must be >= 1"),
                       Error);
}

}  // namespace resona::testing
