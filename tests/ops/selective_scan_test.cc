// selective_scan (Mamba): finite differences in float64 for every input (T shorter than,
// equal to and 2x+1 the backward's 32-step checkpoint interval, with and without D_skip
// and h0, subsets of inputs); values against the sequential float64 recurrence written
// here (float64 and float32, strong decay); running a sequence in two pieces; input checks.
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

struct ScanCase {
  int64_t B, T, D, N;
  bool D_skip, h0;
};

std::string case_name(const ScanCase& c) {
  return "selective_scan(B=" + std::to_string(c.B) + ",T=" + std::to_string(c.T) +
         ",D=" + std::to_string(c.D) + ",N=" + std::to_string(c.N) +
         ",D_skip=" + (c.D_skip ? "yes" : "no") + ",h0=" + (c.h0 ? "yes" : "no") + ")";
}

struct Reference {
  std::vector<double> y, h;
};

// h_t[d, n] = exp(delta_t[d] A[d, n]) h_{t-1}[d, n] + delta_t[d] B_t[n] x_t[d],
// y_t[d] = sum_n C_t[n] h_t[d, n] + D_skip[d] x_t[d], step by step in float64.
Reference reference_scan(const ScanCase& c, const Tensor& x_t, const Tensor& delta_t,
                         const Tensor& A_t, const Tensor& B_t, const Tensor& C_t, const Tensor& D_t,
                         const Tensor& h0_t) {
  const std::vector<double> x = x_t.to_vector<double>(), delta = delta_t.to_vector<double>(),
                            A = A_t.to_vector<double>(), Bm = B_t.to_vector<double>(),
                            Cm = C_t.to_vector<double>();
  const std::vector<double> Ds = D_t.defined() ? D_t.to_vector<double>() : std::vector<double>();
  const std::vector<double> h0 = h0_t.defined() ? h0_t.to_vector<double>() : std::vector<double>();
  const int64_t T = c.T, D = c.D, N = c.N;
  Reference r;
  r.y.assign(c.B * T * D, 0.0);
  r.h.assign(c.B * D * N, 0.0);
  for (int64_t b = 0; b < c.B; ++b) {
    std::vector<double> h(D * N, 0.0);
    if (!h0.empty()) {
      for (int64_t i = 0; i < D * N; ++i) h[i] = h0.at(b * D * N + i);
    }
    for (int64_t t = 0; t < T; ++t) {
      const int64_t row = b * T + t;
      for (int64_t d = 0; d < D; ++d) {
        const double dl = delta.at(row * D + d), xv = x.at(row * D + d);
        double y = Ds.empty() ? 0.0 : Ds.at(d) * xv;
        for (int64_t n = 0; n < N; ++n) {
          double& hv = h[d * N + n];
          hv = std::exp(dl * A.at(d * N + n)) * hv + dl * Bm.at(row * N + n) * xv;
          y += Cm.at(row * N + n) * hv;
        }
        r.y.at(row * D + d) = y;
      }
    }
    for (int64_t i = 0; i < D * N; ++i) r.h.at(b * D * N + i) = h[i];
  }
  return r;
}

// Tolerances of check_rel for float32 against the float64 recurrence. Each state element
// is a decaying sum (factors <= e^-0.005) of order-1 terms over at most 70 steps, each step
// rounding the product and the sum (u = 6e-8) plus float32 exp (~2u relative), and y sums
// N = 16 of them; backward is the same reverse scan. Measured on the cases below:
// relative RMS error 3e-8 to 2e-7, worst element up to 2e-6 of the RMS. The bounds sit
// 10x or more above that, far below what a wrong step or index produces.
constexpr double kRms32 = 5e-6, kMax32 = 5e-5;

// Inputs in Mamba's ranges: delta = softplus(.) in (0.01, 1), A = -exp(A_log) in
// (-4, -0.5), B, C, x, D_skip, h0 of order 1.
struct Inputs {
  Tensor x, delta, A, B, C, D_skip, h0;
};

Inputs make_inputs(Generator& gen, const ScanCase& c, DType dt, bool leaves) {
  auto draw = [&](const Shape& s, double lo, double hi) {
    if (leaves) return leaf(gen, s, lo, hi);
    return gen.uniform(s, lo, hi, DType::kFloat64).to(dt);
  };
  Inputs in;
  in.x = draw({c.B, c.T, c.D}, -1, 1);
  in.delta = draw({c.B, c.T, c.D}, 0.01, 1);
  in.A = draw({c.D, c.N}, -4, -0.5);
  in.B = draw({c.B, c.T, c.N}, -1, 1);
  in.C = draw({c.B, c.T, c.N}, -1, 1);
  if (c.D_skip) in.D_skip = draw({c.D}, -1, 1);
  if (c.h0) in.h0 = draw({c.B, c.D, c.N}, -1, 1);
  return in;
}

std::vector<Tensor> as_list(const Inputs& in) {
  std::vector<Tensor> v = {in.x, in.delta, in.A, in.B, in.C};
  if (in.D_skip.defined()) v.push_back(in.D_skip);
  if (in.h0.defined()) v.push_back(in.h0);
  return v;
}

}  // namespace

RESONA_OP_TEST(selective_scan, gradcheck,
               "selective_scan(B=2,D=5,N=4) T=3,32,65 (checkpoints every 32 steps), with and "
               "without D_skip and h0") {
  const std::vector<ScanCase> cases = {
      {2, 3, 5, 4, true, true},    {2, 32, 5, 4, false, true}, {2, 65, 5, 4, true, true},
      {2, 65, 5, 4, false, false}, {1, 33, 3, 2, true, false},
  };
  for (const ScanCase& c : cases) {
    INFO(case_name(c));
    Generator gen(1100 + c.T + c.D);
    Inputs in = make_inputs(gen, c, DType::kFloat64, true);
    check_gradients(
        [&](const std::vector<Tensor>& v) {
          size_t i = 5;
          Tensor D_skip = c.D_skip ? v[i++] : Tensor();
          Tensor h0 = c.h0 ? v[i++] : Tensor();
          return out_and_state(selective_scan(v[0], v[1], v[2], v[3], v[4], D_skip, h0));
        },
        as_list(in));
  }
}

RESONA_OP_TEST(selective_scan, gradcheck,
               "selective_scan subsets: A and D_skip only, delta only, B, C and h0, x only") {
  const ScanCase c{2, 40, 3, 4, true, true};
  Generator gen(1150);
  Inputs in = make_inputs(gen, c, DType::kFloat64, true);
  std::vector<Tensor> all = as_list(in);
  auto f = [](const std::vector<Tensor>& v) {
    return out_and_state(selective_scan(v[0], v[1], v[2], v[3], v[4], v[5], v[6]));
  };
  for (const std::vector<int>& subset :
       std::vector<std::vector<int>>{{2, 5}, {1}, {3, 4, 6}, {0}}) {
    std::vector<Tensor> x;
    for (const Tensor& t : all) x.push_back(t.detach());
    for (int i : subset) x[i].set_requires_grad(true);
    check_gradients(f, x);
  }
  std::vector<Tensor> x;
  for (const Tensor& t : all) x.push_back(t.detach());
  x[1].set_requires_grad(true);
  sum(f(x)).backward();
  CHECK(x[1].grad().defined());
  CHECK_FALSE(x[0].grad().defined());
  CHECK_FALSE(x[2].grad().defined());
}

RESONA_OP_TEST(selective_scan, values,
               "selective_scan float64 and float32 vs sequential recurrence: T=1,31,32,65, "
               "D=128 N=16, with and without D_skip and h0; float32 gradients vs float64") {
  const std::vector<ScanCase> cases = {
      {2, 1, 5, 4, true, true},  {3, 31, 5, 4, false, true},   {2, 32, 6, 3, true, false},
      {2, 65, 7, 5, true, true}, {2, 65, 128, 16, true, true},
  };
  for (const ScanCase& c : cases) {
    INFO(case_name(c));
    Generator gen(1200 + c.T + c.D);
    Inputs in = make_inputs(gen, c, DType::kFloat64, false);
    RecurrentOutput r = selective_scan(in.x, in.delta, in.A, in.B, in.C, in.D_skip, in.h0);
    REQUIRE(r.out.shape() == Shape{c.B, c.T, c.D});
    REQUIRE(r.final_state.shape() == Shape{c.B, c.D, c.N});
    Reference ref = reference_scan(c, in.x, in.delta, in.A, in.B, in.C, in.D_skip, in.h0);
    // Same operations as the reference up to the order of the N-term sum: a few ulps.
    check_close(r.out, ref.y, 1e-13, 1e-12);
    check_close(r.final_state, ref.h, 1e-13, 1e-12);

    auto to32 = [](const Tensor& t) { return t.defined() ? t.to(DType::kFloat32) : Tensor(); };
    Inputs f32{to32(in.x), to32(in.delta),  to32(in.A), to32(in.B),
               to32(in.C), to32(in.D_skip), to32(in.h0)};
    RecurrentOutput r32 = selective_scan(f32.x, f32.delta, f32.A, f32.B, f32.C, f32.D_skip, f32.h0);
    CHECK(r32.out.dtype() == DType::kFloat32);
    Reference ref32 = reference_scan(c, f32.x, f32.delta, f32.A, f32.B, f32.C, f32.D_skip, f32.h0);
    check_rel(r32.out, ref32.y, kRms32, kMax32);
    check_rel(r32.final_state, ref32.h, kRms32, kMax32);

    // float32 gradients against float64 ones for the same d_y and d_h_T.
    Tensor d_y = gen.uniform(r.out.shape(), -1, 1, DType::kFloat64);
    Tensor d_h = gen.uniform(r.final_state.shape(), -1, 1, DType::kFloat64);
    auto grads = [&](DType dt) {
      std::vector<Tensor> x;
      for (const Tensor& t : as_list(in)) {
        x.push_back(t.to(dt).detach());
        x.back().set_requires_grad(true);
      }
      size_t i = 5;
      Tensor D_skip = c.D_skip ? x[i++] : Tensor();
      Tensor h0 = c.h0 ? x[i++] : Tensor();
      RecurrentOutput y = selective_scan(x[0], x[1], x[2], x[3], x[4], D_skip, h0);
      add(sum(mul(y.out, d_y.to(dt))), sum(mul(y.final_state, d_h.to(dt)))).backward();
      std::vector<Tensor> gr;
      for (Tensor& t : x) gr.push_back(t.grad());
      return gr;
    };
    std::vector<Tensor> g64 = grads(DType::kFloat64), g32 = grads(DType::kFloat32);
    for (size_t i = 0; i < g64.size(); ++i) {
      INFO("gradient of input " << i);
      // d_A and d_D_skip sum B*T terms (per chunk in float32, then in double); d_delta
      // adds N products of reverse-scanned gradients: the same budget as the forward.
      check_rel(g32[i], g64[i].to_vector<double>(), kRms32, kMax32);
    }
  }
}

RESONA_OP_TEST(selective_scan, values,
               "selective_scan strong decay: delta*A around -5 and -40 per step, float32 and "
               "float64, no overflow, matches the recurrence") {
  for (double level : {-5.0, -40.0}) {
    const ScanCase c{2, 70, 8, 4, true, true};
    INFO(case_name(c) << " delta*A around " << level);
    Generator gen(1300 + static_cast<uint64_t>(-level));
    Inputs in = make_inputs(gen, c, DType::kFloat64, false);
    in.delta = gen.uniform({c.B, c.T, c.D}, 0.5, 1.5, DType::kFloat64);
    in.A = full({c.D, c.N}, level, DType::kFloat64);
    Reference ref = reference_scan(c, in.x, in.delta, in.A, in.B, in.C, in.D_skip, in.h0);
    RecurrentOutput r = selective_scan(in.x, in.delta, in.A, in.B, in.C, in.D_skip, in.h0);
    check_close(r.out, ref.y, 1e-13, 1e-12);
    check_close(r.final_state, ref.h, 1e-13, 1e-12);
    auto to32 = [](const Tensor& t) { return t.to(DType::kFloat32); };
    RecurrentOutput r32 = selective_scan(to32(in.x), to32(in.delta), to32(in.A), to32(in.B),
                                         to32(in.C), to32(in.D_skip), to32(in.h0));
    Reference ref32 = reference_scan(c, to32(in.x), to32(in.delta), to32(in.A), to32(in.B),
                                     to32(in.C), to32(in.D_skip), to32(in.h0));
    check_rel(r32.out, ref32.y, kRms32, kMax32);  // fewer effective terms than above
    check_rel(r32.final_state, ref32.h, kRms32, kMax32);
  }
}

RESONA_OP_TEST(selective_scan, values,
               "selective_scan split sequence: [0,T) equals [0,t) then [t,T) with the state "
               "carried, outputs and gradients, T=70, t=20 and 33") {
  const ScanCase c{2, 70, 4, 3, true, true};
  Generator gen(1400);
  Inputs in = make_inputs(gen, c, DType::kFloat64, true);
  std::vector<Tensor> x = as_list(in);
  const Tensor d_y = gen.uniform({c.B, c.T, c.D}, -1, 1, DType::kFloat64);
  const Tensor d_h = gen.uniform({c.B, c.D, c.N}, -1, 1, DType::kFloat64);
  check_split_sequence(
      x, x[6], c.T,
      [&](int64_t t0, int64_t t1, const Tensor& h) {
        return selective_scan(x[0].slice(1, t0, t1), x[1].slice(1, t0, t1), x[2],
                              x[3].slice(1, t0, t1), x[4].slice(1, t0, t1), x[5], h);
      },
      d_y, d_h, {20, 33}, 1e-13, 1e-12);
}

TEST_CASE("selective_scan checks its inputs") {
  Tensor x = zeros({2, 5, 3}), delta = zeros({2, 5, 3}), A = zeros({3, 4});
  Tensor B = zeros({2, 5, 4}), C = zeros({2, 5, 4});
  CHECK_NOTHROW(selective_scan(x, delta, A, B, C));
  CHECK_THROWS_WITH_AS(selective_scan(x, zeros({2, 4, 3}), A, B, C),
                       doctest::Contains("delta has shape [2, 4, 3], expected [2, 5, 3]"), Error);
  CHECK_THROWS_WITH_AS(selective_scan(x, delta, zeros({2, 4}), B, C),
                       doctest::Contains("A has shape [2, 4], expected [3, 4]"), Error);
  CHECK_THROWS_WITH_AS(selective_scan(x, delta, A, zeros({2, 5, 3}), C),
                       doctest::Contains("B has shape [2, 5, 3], expected [2, 5, 4]"), Error);
  CHECK_THROWS_WITH_AS(selective_scan(x, delta, A, B, zeros({2, 5})),
                       doctest::Contains("C has shape [2, 5], expected [2, 5, 4]"), Error);
  CHECK_THROWS_WITH_AS(selective_scan(x, delta, A, B, C, zeros({4})),
                       doctest::Contains("D_skip has shape [4], expected [3]"), Error);
  CHECK_THROWS_WITH_AS(selective_scan(x, delta, A, B, C, Tensor(), zeros({2, 4, 3})),
                       doctest::Contains("h0 has shape [2, 4, 3], expected [2, 3, 4]"), Error);
  CHECK_THROWS_WITH_AS(selective_scan(zeros({5, 3}), delta, A, B, C),
                       doctest::Contains("x must be [B, T, D]"), Error);
}

}  // namespace resona::testing
