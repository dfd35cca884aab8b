// rms_norm and layer_norm: finite differences in float64 with and without weight/bias,
// 3-D and non-contiguous inputs; values against the formulas written out in double;
// only the requested gradients; bad shapes and dtypes.
#include <cmath>
#include <vector>

#include "ops/norm.h"
#include "ops/reduce.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

// One row normalised by the formula: (x - mu) / sqrt(var + eps) * w + b, with mu = 0 and
// var = mean(x^2) for rms_norm.
std::vector<double> norm_row(const std::vector<double>& x, const std::vector<double>& w,
                             const std::vector<double>& b, double eps, bool layer) {
  const double n = static_cast<double>(x.size());
  double mu = 0;
  if (layer) {
    for (double v : x) mu += v / n;
  }
  double var = 0;
  for (double v : x) var += (v - mu) * (v - mu) / n;
  std::vector<double> y;
  for (size_t j = 0; j < x.size(); ++j) {
    y.push_back((x[j] - mu) / std::sqrt(var + eps) * (w.empty() ? 1.0 : w[j]) +
                (b.empty() ? 0.0 : b[j]));
  }
  return y;
}

}  // namespace

RESONA_OP_TEST(rms_norm, gradcheck, "rms_norm(x=[3,7],w=[7]), no weight, x=[2,3,5], x=[7,3]^T") {
  Generator gen(61);
  check_gradients([](const std::vector<Tensor>& v) { return rms_norm(v[0], v[1]); },
                  {leaf(gen, {3, 7}), leaf(gen, {7}, 0.5, 1.5)});
  check_gradients([](const std::vector<Tensor>& v) { return rms_norm(v[0], Tensor()); },
                  {leaf(gen, {2, 3, 5})});
  check_gradients(
      [](const std::vector<Tensor>& v) { return rms_norm(v[0].transpose(0, 1), v[1], 1e-3); },
      {leaf(gen, {7, 3}), leaf(gen, {7}, 0.5, 1.5)});
}

RESONA_OP_TEST(layer_norm, gradcheck,
               "layer_norm(x=[3,7],w,b), w only, b only, none, x=[2,3,5], x=[7,3]^T") {
  Generator gen(62);
  Tensor x = leaf(gen, {3, 7}), w = leaf(gen, {7}, 0.5, 1.5), b = leaf(gen, {7});
  check_gradients([](const std::vector<Tensor>& v) { return layer_norm(v[0], v[1], v[2]); },
                  {x, w, b});
  check_gradients([](const std::vector<Tensor>& v) { return layer_norm(v[0], v[1], Tensor()); },
                  {x, w});
  check_gradients([](const std::vector<Tensor>& v) { return layer_norm(v[0], Tensor(), v[1]); },
                  {x, b});
  check_gradients([](const std::vector<Tensor>& v) { return layer_norm(v[0], Tensor(), Tensor()); },
                  {leaf(gen, {2, 3, 5})});
  check_gradients(
      [](const std::vector<Tensor>& v) { return layer_norm(v[0].transpose(0, 1), v[1], v[2]); },
      {leaf(gen, {7, 3}), leaf(gen, {7}, 0.5, 1.5), leaf(gen, {7})});
}

RESONA_OP_TEST(rms_norm, values, "rms_norm [2,4] by formula, with and without weight") {
  const std::vector<double> r0 = {1, 2, 3, 4}, r1 = {-0.5, 0, 0.5, 2}, w = {1, 2, 1, 0.5};
  Tensor x = values({1, 2, 3, 4, -0.5, 0, 0.5, 2}, {2, 4});
  // Row 0 by hand: mean(x^2) = 30/4 = 7.5, so y = x / sqrt(7.5 + eps) * w.
  const double r = 1 / std::sqrt(7.5 + 1e-6);
  check_close(rms_norm(x, values(w, {4}), 1e-6).slice(0, 0, 1), {r, 4 * r, 3 * r, 2 * r}, 1e-15,
              1e-14);
  std::vector<double> expected = norm_row(r0, w, {}, 1e-6, false);
  std::vector<double> e1 = norm_row(r1, w, {}, 1e-6, false);
  expected.insert(expected.end(), e1.begin(), e1.end());
  check_close(rms_norm(x, values(w, {4}), 1e-6), expected, 1e-15, 1e-14);
  std::vector<double> plain = norm_row(r0, {}, {}, 0.1, false);
  std::vector<double> p1 = norm_row(r1, {}, {}, 0.1, false);
  plain.insert(plain.end(), p1.begin(), p1.end());
  check_close(rms_norm(x, Tensor(), 0.1), plain, 1e-15, 1e-14);
  // float32 within a few ulps of the double formula.
  check_close(rms_norm(x.to(DType::kFloat32), values(w, {4}).to(DType::kFloat32), 1e-6), expected,
              1e-6, 1e-6);
}

RESONA_OP_TEST(layer_norm, values, "layer_norm [2,4] by formula, and d_w, d_b by hand") {
  const std::vector<double> r0 = {1, 2, 3, 4}, r1 = {-0.5, 0, 0.5, 2};
  const std::vector<double> w = {1, 2, 1, 0.5}, b = {0, 1, -1, 0.25};
  Tensor x = values({1, 2, 3, 4, -0.5, 0, 0.5, 2}, {2, 4}, true);
  Tensor wt = values(w, {4}, true), bt = values(b, {4}, true);
  // Row 0 by hand: mu = 2.5, var = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25.
  const double r = 1 / std::sqrt(1.25 + 1e-5);
  Tensor y = layer_norm(x, wt, bt, 1e-5);
  check_close(y.slice(0, 0, 1), {-1.5 * r, -1 * r + 1, 0.5 * r - 1, 0.75 * r + 0.25}, 1e-15, 1e-14);
  std::vector<double> expected = norm_row(r0, w, b, 1e-5, true);
  std::vector<double> e1 = norm_row(r1, w, b, 1e-5, true);
  expected.insert(expected.end(), e1.begin(), e1.end());
  check_close(y, expected, 1e-15, 1e-14);
  // sum(y): d_b_j = the number of rows, d_w_j = sum over rows of xhat_j.
  sum(y).backward();
  check_close(bt.grad(), {2, 2, 2, 2});
  std::vector<double> xh0 = norm_row(r0, {}, {}, 1e-5, true),
                      xh1 = norm_row(r1, {}, {}, 1e-5, true);
  check_close(wt.grad(), {xh0[0] + xh1[0], xh0[1] + xh1[1], xh0[2] + xh1[2], xh0[3] + xh1[3]},
              1e-14);
}

RESONA_OP_TEST(layer_norm, values, "layer_norm with w=1: d_x of sum(y) is 0; only asked grads") {
  // y = xhat sums to 0 over each row whatever x is, so d sum(y) / dx = 0; weight and bias
  // do not require grad, so they get no gradient.
  Tensor x = values({0.3, -1, 2, 0.7, 5, -2}, {2, 3}, true);
  Tensor w = values({1, 1, 1}, {3}), b = values({0.5, 0, 0}, {3});
  sum(layer_norm(x, w, b)).backward();
  check_close(x.grad(), {0, 0, 0, 0, 0, 0}, 1e-14);
  CHECK_FALSE(w.grad().defined());
  CHECK_FALSE(b.grad().defined());
}

TEST_CASE("rms_norm and layer_norm refuse mismatched weight/bias and dtypes") {
  Tensor x = zeros({3, 4}).set_name("x");
  CHECK_THROWS_WITH_AS(rms_norm(x, zeros({5}).set_name("w")),
                       doctest::Contains("rms_norm: weight w [5] float32 cpu must be [4] to "
                                         "match x x [3, 4] float32 cpu"),
                       Error);
  CHECK_THROWS_WITH_AS(layer_norm(x, zeros({4}), zeros({4, 1}).set_name("b")),
                       doctest::Contains("layer_norm: bias b [4, 1] float32 cpu must be [4]"),
                       Error);
  CHECK_THROWS_WITH_AS(layer_norm(x, zeros({4}, DType::kFloat64).set_name("w"), Tensor()),
                       doctest::Contains("layer_norm: dtype mismatch: x [3, 4] float32 cpu and "
                                         "w [4] float64 cpu"),
                       Error);
  CHECK_THROWS_WITH_AS(rms_norm(zeros({3, 4}, DType::kInt32), Tensor()),
                       doctest::Contains("rms_norm: expected a floating-point tensor"), Error);
  CHECK_THROWS_WITH_AS(rms_norm(zeros({3, 0}).set_name("e"), Tensor()),
                       doctest::Contains("x must be [..., D] with D > 0, got e [3, 0]"), Error);
  CHECK_THROWS_WITH_AS(layer_norm(x, Tensor(), Tensor(), -1.0),
                       doctest::Contains("eps must be >= 0, got -1"), Error);
}

}  // namespace resona::testing
