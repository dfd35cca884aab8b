// linear_scan: finite differences in float64 (T = 1 and longer, with and without h0,
// strided inputs, subsets); values against the sequential float64 recurrence written here
// and a case by hand; running a sequence in two pieces; input checks.
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

// h_t = a_t h_{t-1} + b_t, step by step in float64.
std::vector<double> reference_linear_scan(const Tensor& a_t, const Tensor& b_t, const Tensor& h0_t,
                                          int64_t B, int64_t T, int64_t D) {
  const std::vector<double> a = a_t.to_vector<double>(), b = b_t.to_vector<double>();
  const std::vector<double> h0 = h0_t.defined() ? h0_t.to_vector<double>() : std::vector<double>();
  std::vector<double> h(B * T * D);
  for (int64_t n = 0; n < B; ++n) {
    for (int64_t d = 0; d < D; ++d) {
      double prev = h0.empty() ? 0.0 : h0.at(n * D + d);
      for (int64_t t = 0; t < T; ++t) {
        const int64_t i = (n * T + t) * D + d;
        prev = a.at(i) * prev + b.at(i);
        h.at(i) = prev;
      }
    }
  }
  return h;
}

}  // namespace

RESONA_OP_TEST(linear_scan, gradcheck,
               "linear_scan(B=2,T=1,5,17,D=3) with and without h0; a as the transpose of a "
               "[B,D,T] leaf") {
  for (int64_t T : {1, 5, 17}) {
    INFO("T=" << T);
    Generator gen(1500 + T);
    Tensor a = leaf(gen, {2, T, 3}, -1.2, 1.2), b = leaf(gen, {2, T, 3}), h0 = leaf(gen, {2, 3});
    check_gradients([](const std::vector<Tensor>& v) { return linear_scan(v[0], v[1], v[2]); },
                    {a, b, h0});
    check_gradients([](const std::vector<Tensor>& v) { return linear_scan(v[0], v[1]); }, {a, b});
  }
  Generator gen(1520);
  check_gradients(
      [](const std::vector<Tensor>& v) { return linear_scan(v[0].transpose(1, 2), v[1], v[2]); },
      {leaf(gen, {2, 3, 6}), leaf(gen, {2, 6, 3}), leaf(gen, {2, 3})});
  // Subsets: only b, only a and h0.
  Tensor a = gen.uniform({2, 6, 3}, -1, 1, DType::kFloat64);
  Tensor b = leaf(gen, {2, 6, 3}), h0 = gen.uniform({2, 3}, -1, 1, DType::kFloat64);
  check_gradients([](const std::vector<Tensor>& v) { return linear_scan(v[0], v[1], v[2]); },
                  {a, b, h0});
  Tensor a2 = leaf(gen, {2, 6, 3}), b2 = gen.uniform({2, 6, 3}, -1, 1, DType::kFloat64);
  Tensor h2 = leaf(gen, {2, 3});
  check_gradients([](const std::vector<Tensor>& v) { return linear_scan(v[0], v[1], v[2]); },
                  {a2, b2, h2});
  sum(linear_scan(a, b, h0)).backward();
  CHECK(b.grad().defined());
  CHECK_FALSE(a.grad().defined());
  CHECK_FALSE(h0.grad().defined());
}

RESONA_OP_TEST(linear_scan, values,
               "linear_scan by hand (B=1,T=3,D=1) and vs a sequential float64 recurrence: "
               "float64 and float32, B=3, T=1..300, D=1..64") {
  // h0 = 1, a = [0.5, 2, -1], b = [1, 0, 3]: h = [1.5, 3, 0]; with d_h = [1, 1, 1]:
  //   g = [1 + 2 (1 + -1 * 1), 1 + -1 * 1, 1] = [1, 0, 1], d_a = g * h_prev = [1, 0, 3],
  //   d_h0 = a_0 g_0 = 0.5.
  Tensor a = values({0.5, 2, -1}, {1, 3, 1}, true), b = values({1, 0, 3}, {1, 3, 1}, true);
  Tensor h0 = values({1}, {1, 1}, true);
  Tensor h = linear_scan(a, b, h0);
  check_close(h, {1.5, 3, 0});
  sum(h).backward();
  check_close(b.grad(), {1, 0, 1});
  check_close(a.grad(), {1, 0, 3});
  check_close(h0.grad(), {0.5});

  for (int64_t T : {1, 7, 300}) {
    for (int64_t D : {1, 5, 64}) {
      INFO("B=3,T=" << T << ",D=" << D);
      Generator gen(1600 + T + D);
      Tensor a = gen.uniform({3, T, D}, 0, 1, DType::kFloat64);  // decays, as in a scan layer
      Tensor b = gen.uniform({3, T, D}, -1, 1, DType::kFloat64);
      Tensor h0 = gen.uniform({3, D}, -1, 1, DType::kFloat64);
      std::vector<double> ref = reference_linear_scan(a, b, h0, 3, T, D);
      // The same operations in the same order, except that the op's vector code may fuse
      // the multiply-add (one rounding fewer): ~1 ulp per step, damped by |a| < 1.
      check_close(linear_scan(a, b, h0), ref, 1e-14, 1e-14);
      check_close(linear_scan(a, b), reference_linear_scan(a, b, Tensor(), 3, T, D), 1e-14, 1e-14);
      // float32: each step rounds the product and the sum (2 ulps), and decays with
      // |a| < 1 damp old errors, so the error stays within ~2 ulps / (1 - |a|) of the state;
      // with a in [0, 1) and states below ~10 in magnitude, 1e-5 absolute covers it.
      Tensor a32 = a.to(DType::kFloat32), b32 = b.to(DType::kFloat32);
      Tensor h32 = h0.to(DType::kFloat32);
      Tensor y32 = linear_scan(a32, b32, h32);
      CHECK(y32.dtype() == DType::kFloat32);
      check_close(y32, reference_linear_scan(a32, b32, h32, 3, T, D), 1e-5, 1e-5);
    }
  }
}

RESONA_OP_TEST(linear_scan, values,
               "linear_scan split sequence: [0,T) equals [0,t) then [t,T) with the state "
               "carried, outputs and gradients, T=20, t=7") {
  Generator gen(1700);
  Tensor a = leaf(gen, {2, 20, 4}, -1, 1), b = leaf(gen, {2, 20, 4}), h0 = leaf(gen, {2, 4});
  Tensor d_h = gen.uniform({2, 20, 4}, -1, 1, DType::kFloat64);
  sum(mul(linear_scan(a, b, h0), d_h)).backward();
  std::vector<Tensor> g_full = {a.grad(), b.grad(), h0.grad()};
  for (Tensor* t : {&a, &b, &h0}) t->set_grad(Tensor());
  Tensor first = linear_scan(a.slice(1, 0, 7), b.slice(1, 0, 7), h0);
  Tensor second = linear_scan(a.slice(1, 7, 20), b.slice(1, 7, 20), first.select(1, 6));
  Tensor joined = concat({first, second}, 1);
  check_close(joined, linear_scan(a, b, h0), 0, 0);
  sum(mul(joined, d_h)).backward();
  check_close(a.grad(), g_full[0], 1e-14, 1e-14);
  check_close(b.grad(), g_full[1], 1e-14, 1e-14);
  check_close(h0.grad(), g_full[2], 1e-14, 1e-14);
}

TEST_CASE("linear_scan checks its inputs") {
  Tensor a = zeros({2, 5, 3});
  CHECK_THROWS_WITH_AS(linear_scan(a, zeros({2, 5, 4})),
                       doctest::Contains("b has shape [2, 5, 4], expected [2, 5, 3]"), Error);
  CHECK_THROWS_WITH_AS(linear_scan(a, zeros({2, 5, 3}), zeros({2, 5})),
                       doctest::Contains("h0 has shape [2, 5], expected [2, 3]"), Error);
  CHECK_THROWS_WITH_AS(linear_scan(zeros({5, 3}), zeros({5, 3})),
                       doctest::Contains("a must be [B, T, D]"), Error);
  CHECK_THROWS_WITH_AS(linear_scan(a, zeros({2, 5, 3}, DType::kFloat64)),
                       doctest::Contains("dtype mismatch"), Error);
}

}  // namespace resona::testing
