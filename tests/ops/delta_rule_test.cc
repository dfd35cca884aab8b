// delta_rule (chunked, WY representation): finite differences in float64 (T < chunk,
// T = chunk, T = 2 chunk + 1, B > 1, H > 1, with and without h0, subsets of inputs);
// values against the sequential float64 recurrence written here (float64 and float32 at
// K = 75 / V = 150, beta near 1); running a sequence in two pieces; input checks.
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

struct DeltaCase {
  int64_t B, T, H, K, V, chunk;
  bool h0;
};

std::string case_name(const DeltaCase& c) {
  return "delta_rule(B=" + std::to_string(c.B) + ",T=" + std::to_string(c.T) +
         ",H=" + std::to_string(c.H) + ",K=" + std::to_string(c.K) + ",V=" + std::to_string(c.V) +
         ",chunk=" + std::to_string(c.chunk) + ",h0=" + (c.h0 ? "yes" : "no") + ")";
}

struct Reference {
  std::vector<double> o, S;
};

// The recurrence of ops/scan.h step by step in float64, in its literal form:
//   S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,  o_t = scale S_t^T q_t.
Reference reference_delta(const DeltaCase& c, const Tensor& q_t, const Tensor& k_t,
                          const Tensor& v_t, const Tensor& beta_t, const Tensor& h0_t,
                          double scale) {
  const std::vector<double> q = q_t.to_vector<double>(), k = k_t.to_vector<double>(),
                            v = v_t.to_vector<double>(), beta = beta_t.to_vector<double>();
  const std::vector<double> h0 = h0_t.defined() ? h0_t.to_vector<double>() : std::vector<double>();
  const int64_t B = c.B, T = c.T, H = c.H, K = c.K, V = c.V;
  Reference r;
  r.o.assign(B * T * H * V, 0.0);
  r.S.assign(B * H * K * V, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> S(K * V, 0.0), kS(V);
      if (!h0.empty()) {
        for (int64_t i = 0; i < K * V; ++i) S[i] = h0.at((b * H + h) * K * V + i);
      }
      for (int64_t t = 0; t < T; ++t) {
        const int64_t row = (b * T + t) * H + h;
        const double bt = beta.at(row);
        for (int64_t j = 0; j < V; ++j) {  // (k^T S)_j
          kS[j] = 0;
          for (int64_t i = 0; i < K; ++i) kS[j] += k.at(row * K + i) * S[i * V + j];
        }
        for (int64_t i = 0; i < K; ++i) {
          for (int64_t j = 0; j < V; ++j) {
            S[i * V + j] +=
                -bt * k.at(row * K + i) * kS[j] + bt * k.at(row * K + i) * v.at(row * V + j);
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
// u = 6e-8; with unit k and beta < 1 every state update is a contraction, so rounding
// errors do not grow along the sequence, and each chunk adds the error of products of
// length K and C and of a unit triangular solve whose inverse stays bounded. Measured on
// the cases below: relative RMS error 2e-7 to 4e-7, worst element up to 5e-6 of the RMS.
// The bounds sit 10x above that, far below what an algebra mistake produces, and 1000x
// below FLA's own 6e-3.
constexpr double kRms32 = 5e-6, kMax32 = 5e-5;

// Random vectors of unit L2 norm along the last dim (DeltaNet L2-normalises q and k).
Tensor unit_rows(Generator& gen, const Shape& shape, DType dt) {
  std::vector<double> x = gen.normal(shape, 0, 1, DType::kFloat64).to_vector<double>();
  const int64_t K = shape.back();
  for (size_t r = 0; r < x.size() / K; ++r) {
    double n = 0;
    for (int64_t i = 0; i < K; ++i) n += x[r * K + i] * x[r * K + i];
    for (int64_t i = 0; i < K; ++i) x[r * K + i] /= std::sqrt(n);
  }
  return from_vector(x, shape).to(dt);
}

}  // namespace

RESONA_OP_TEST(delta_rule, gradcheck,
               "delta_rule(B=2,H=2,K=5,V=7,chunk=4) T=3,4,9 with and without h0; chunk=20 at "
               "T=41; strided k and v") {
  const std::vector<DeltaCase> cases = {
      {2, 3, 2, 5, 7, 4, true},  {2, 4, 2, 5, 7, 4, false},  {2, 9, 2, 5, 7, 4, true},
      {2, 9, 2, 5, 7, 4, false}, {1, 41, 1, 5, 7, 20, true},
  };
  for (const DeltaCase& c : cases) {
    INFO(case_name(c));
    Generator gen(700 + c.T + c.chunk);
    // k of norm below ~1 and beta in (0.1, 0.9): I - beta k k^T stays a contraction.
    Tensor q = leaf(gen, {c.B, c.T, c.H, c.K}), k = leaf(gen, {c.B, c.T, c.H, c.K}, -0.5, 0.5);
    Tensor v = leaf(gen, {c.B, c.T, c.H, c.V});
    Tensor beta = leaf(gen, {c.B, c.T, c.H}, 0.1, 0.9);
    Tensor h0 = c.h0 ? leaf(gen, {c.B, c.H, c.K, c.V}) : Tensor();
    ChunkOptions opt;
    opt.chunk = c.chunk;
    std::vector<Tensor> inputs = {q, k, v, beta};
    if (c.h0) inputs.push_back(h0);
    check_gradients(
        [&](const std::vector<Tensor>& x) {
          return out_and_state(delta_rule(x[0], x[1], x[2], x[3], c.h0 ? x[4] : Tensor(), opt));
        },
        inputs);
  }
  // Strided inputs: k and v as transposes of [B, H, T, .] leaves.
  Generator gen(740);
  ChunkOptions opt;
  opt.chunk = 4;
  check_gradients(
      [&](const std::vector<Tensor>& x) {
        return out_and_state(
            delta_rule(x[0], x[1].transpose(1, 2), x[2].transpose(1, 2), x[3], Tensor(), opt));
      },
      {leaf(gen, {2, 9, 2, 5}), leaf(gen, {2, 2, 9, 5}, -0.5, 0.5), leaf(gen, {2, 2, 9, 7}),
       leaf(gen, {2, 9, 2}, 0.1, 0.9)});
}

RESONA_OP_TEST(delta_rule, gradcheck,
               "delta_rule subsets of inputs needing grad: v only, beta and h0, q only, k only") {
  Generator gen(731);
  const DeltaCase c{2, 9, 2, 5, 7, 4, true};
  ChunkOptions opt;
  opt.chunk = c.chunk;
  auto inputs = [&](bool q_grad, bool k_grad, bool v_grad, bool b_grad, bool h0_grad) {
    auto make = [&](const Shape& s, double lo, double hi, bool grad) {
      Tensor t = gen.uniform(s, lo, hi, DType::kFloat64);
      t.set_requires_grad(grad);
      return t;
    };
    return std::vector<Tensor>{
        make({c.B, c.T, c.H, c.K}, -1, 1, q_grad), make({c.B, c.T, c.H, c.K}, -0.5, 0.5, k_grad),
        make({c.B, c.T, c.H, c.V}, -1, 1, v_grad), make({c.B, c.T, c.H}, 0.1, 0.9, b_grad),
        make({c.B, c.H, c.K, c.V}, -1, 1, h0_grad)};
  };
  auto f = [&](const std::vector<Tensor>& x) {
    return out_and_state(delta_rule(x[0], x[1], x[2], x[3], x[4], opt));
  };
  check_gradients(f, inputs(false, false, true, false, false));
  check_gradients(f, inputs(false, false, false, true, true));
  check_gradients(f, inputs(true, false, false, false, false));
  check_gradients(f, inputs(false, true, false, false, false));
  std::vector<Tensor> x = inputs(true, false, false, false, false);
  sum(out_and_state(delta_rule(x[0], x[1], x[2], x[3], x[4], opt))).backward();
  CHECK(x[0].grad().defined());
  CHECK_FALSE(x[1].grad().defined());
  CHECK_FALSE(x[3].grad().defined());
}

RESONA_OP_TEST(delta_rule, values,
               "delta_rule float64 vs sequential recurrence: T<chunk, T=chunk, T=2chunk+1, "
               "chunk=1, 8, 20 and 64, B>1, H>1, with and without h0") {
  const std::vector<DeltaCase> cases = {
      {2, 5, 2, 5, 7, 8, true},    {1, 8, 3, 5, 7, 8, false},     {2, 17, 2, 5, 7, 8, true},
      {2, 41, 2, 6, 3, 20, false}, {1, 129, 2, 16, 32, 64, true}, {2, 64, 1, 3, 4, 64, false},
      {2, 5, 2, 5, 7, 1, true},
  };
  for (const DeltaCase& c : cases) {
    INFO(case_name(c));
    Generator gen(800 + c.T + c.K);
    Tensor q = unit_rows(gen, {c.B, c.T, c.H, c.K}, DType::kFloat64);
    Tensor k = unit_rows(gen, {c.B, c.T, c.H, c.K}, DType::kFloat64);
    Tensor v = gen.uniform({c.B, c.T, c.H, c.V}, -1, 1, DType::kFloat64);
    Tensor beta = gen.uniform({c.B, c.T, c.H}, 0.05, 0.95, DType::kFloat64);
    Tensor h0 = c.h0 ? gen.uniform({c.B, c.H, c.K, c.V}, -1, 1, DType::kFloat64) : Tensor();
    ChunkOptions opt;
    opt.chunk = c.chunk;
    RecurrentOutput r = delta_rule(q, k, v, beta, h0, opt);
    REQUIRE(r.out.shape() == Shape{c.B, c.T, c.H, c.V});
    REQUIRE(r.final_state.shape() == Shape{c.B, c.H, c.K, c.V});
    Reference ref = reference_delta(c, q, k, v, beta, h0, 1.0 / std::sqrt(double(c.K)));
    // The WY form solves a unit triangular system per chunk instead of stepping; with unit
    // k and beta < 1 that system is well conditioned, so the difference is float64
    // rounding (~1e-15 relative); 1e-12 is far below any algebra mistake.
    check_close(r.out, ref.o, 1e-12, 1e-12);
    check_close(r.final_state, ref.S, 1e-12, 1e-12);
  }
}

RESONA_OP_TEST(delta_rule, values,
               "delta_rule float32 vs float64 recurrence at K=75, V=150, T=129, chunk=64 and 32; "
               "beta near 1; float32 gradients vs float64") {
  for (int64_t chunk : {64, 32}) {
    const DeltaCase c{2, 129, 2, 75, 150, chunk, true};
    INFO(case_name(c));
    Generator gen(900 + chunk);
    Tensor q = unit_rows(gen, {c.B, c.T, c.H, c.K}, DType::kFloat32);
    Tensor k = unit_rows(gen, {c.B, c.T, c.H, c.K}, DType::kFloat32);
    Tensor v = gen.uniform({c.B, c.T, c.H, c.V}, -1, 1, DType::kFloat32);
    Tensor beta = gen.uniform({c.B, c.T, c.H}, 0.05, 0.95, DType::kFloat32);
    Tensor h0 = gen.uniform({c.B, c.H, c.K, c.V}, -1, 1, DType::kFloat32);
    ChunkOptions opt;
    opt.chunk = chunk;
    RecurrentOutput r = delta_rule(q, k, v, beta, h0, opt);
    CHECK(r.out.dtype() == DType::kFloat32);
    Reference ref = reference_delta(c, q, k, v, beta, h0, 1.0 / std::sqrt(75.0));
    check_rel(r.out, ref.o, kRms32, kMax32);
    check_rel(r.final_state, ref.S, kRms32, kMax32);

    Tensor d_o = gen.uniform(r.out.shape(), -1, 1, DType::kFloat64);
    Tensor d_S = gen.uniform(r.final_state.shape(), -1, 1, DType::kFloat64);
    auto grads = [&](DType dt) {
      std::vector<Tensor> x = {q.to(dt).detach(), k.to(dt).detach(), v.to(dt).detach(),
                               beta.to(dt).detach(), h0.to(dt).detach()};
      for (Tensor& t : x) t.set_requires_grad(true);
      RecurrentOutput y = delta_rule(x[0], x[1], x[2], x[3], x[4], opt);
      add(sum(mul(y.out, d_o.to(dt))), sum(mul(y.final_state, d_S.to(dt)))).backward();
      std::vector<Tensor> gr;
      for (Tensor& t : x) gr.push_back(t.grad());
      return gr;
    };
    std::vector<Tensor> g64 = grads(DType::kFloat64), g32 = grads(DType::kFloat32);
    const char* names[] = {"d_q", "d_k", "d_v", "d_beta", "d_h0"};
    for (int i = 0; i < 5; ++i) {
      INFO(names[i]);
      CHECK(g32[i].dtype() == DType::kFloat32);
      // The backward runs the same products transposed, plus a transposed triangular
      // solve: the same error budget as the forward (measured 2e-7 to 4e-7, d_beta too).
      check_rel(g32[i], g64[i].to_vector<double>(), kRms32, kMax32);
    }
  }
  // beta near 1 with unit k: I - beta k k^T is nearly a projection (the state forgets the
  // k direction entirely); M stays unit triangular and the result well defined.
  const DeltaCase c{2, 70, 2, 16, 32, 32, true};
  INFO(case_name(c) << " beta in (0.95, 1)");
  Generator gen(950);
  Tensor q = unit_rows(gen, {c.B, c.T, c.H, c.K}, DType::kFloat64);
  Tensor k = unit_rows(gen, {c.B, c.T, c.H, c.K}, DType::kFloat64);
  Tensor v = gen.uniform({c.B, c.T, c.H, c.V}, -1, 1, DType::kFloat64);
  Tensor beta = gen.uniform({c.B, c.T, c.H}, 0.95, 1.0, DType::kFloat64);
  Tensor h0 = gen.uniform({c.B, c.H, c.K, c.V}, -1, 1, DType::kFloat64);
  ChunkOptions opt;
  opt.chunk = c.chunk;
  Reference ref = reference_delta(c, q, k, v, beta, h0, 0.25);
  RecurrentOutput r = delta_rule(q, k, v, beta, h0, opt);
  check_close(r.out, ref.o, 1e-11, 1e-11);
  check_close(r.final_state, ref.S, 1e-11, 1e-11);
  Tensor q32 = q.to(DType::kFloat32), k32 = k.to(DType::kFloat32), v32 = v.to(DType::kFloat32);
  Tensor b32 = beta.to(DType::kFloat32), h32 = h0.to(DType::kFloat32);
  Reference ref32 = reference_delta(c, q32, k32, v32, b32, h32, 0.25);
  RecurrentOutput r32 = delta_rule(q32, k32, v32, b32, h32, opt);
  check_rel(r32.out, ref32.o, kRms32, kMax32);  // as above, with shorter sums
  check_rel(r32.final_state, ref32.S, kRms32, kMax32);
}

RESONA_OP_TEST(delta_rule, values,
               "delta_rule split sequence: [0,T) equals [0,t) then [t,T) with the state "
               "carried, outputs and gradients, T=37, t=13 and 24, chunk=8") {
  const DeltaCase c{2, 37, 2, 5, 7, 8, true};
  Generator gen(1000);
  std::vector<Tensor> x = {leaf(gen, {c.B, c.T, c.H, c.K}),
                           leaf(gen, {c.B, c.T, c.H, c.K}, -0.5, 0.5),
                           leaf(gen, {c.B, c.T, c.H, c.V}), leaf(gen, {c.B, c.T, c.H}, 0.1, 0.9),
                           leaf(gen, {c.B, c.H, c.K, c.V})};
  ChunkOptions opt;
  opt.chunk = c.chunk;
  const Tensor d_o = gen.uniform({c.B, c.T, c.H, c.V}, -1, 1, DType::kFloat64);
  const Tensor d_S = gen.uniform({c.B, c.H, c.K, c.V}, -1, 1, DType::kFloat64);
  check_split_sequence(x, x[4], c.T,
                       [&](int64_t t0, int64_t t1, const Tensor& h) {
                         return delta_rule(x[0].slice(1, t0, t1), x[1].slice(1, t0, t1),
                                           x[2].slice(1, t0, t1), x[3].slice(1, t0, t1), h, opt);
                       },
                       d_o, d_S, {13, 24});
}

TEST_CASE("delta_rule checks its inputs") {
  Tensor q = zeros({2, 5, 3, 4}), k = zeros({2, 5, 3, 4});
  Tensor v = zeros({2, 5, 3, 6}), beta = zeros({2, 5, 3});
  CHECK_NOTHROW(delta_rule(q, k, v, beta));
  CHECK_THROWS_WITH_AS(delta_rule(q, zeros({2, 5, 3, 5}), v, beta),
                       doctest::Contains("k has shape [2, 5, 3, 5], expected [2, 5, 3, 4]"), Error);
  CHECK_THROWS_WITH_AS(delta_rule(q, k, zeros({2, 5, 2, 6}), beta),
                       doctest::Contains("v has shape [2, 5, 2, 6], expected [2, 5, 3, 6]"), Error);
  CHECK_THROWS_WITH_AS(delta_rule(q, k, v, zeros({2, 5, 3, 1})),
                       doctest::Contains("beta has shape [2, 5, 3, 1], expected [2, 5, 3]"), Error);
  CHECK_THROWS_WITH_AS(delta_rule(q, k, v, beta, zeros({2, 3, 6, 4})),
                       doctest::Contains("h0 has shape [2, 3, 6, 4], expected [2, 3, 4, 6]"),
                       Error);
  CHECK_THROWS_WITH_AS(delta_rule(q, k, v.to(DType::kFloat64), beta),
                       doctest::Contains("dtype mismatch"), Error);
}

}  // namespace resona::testing
