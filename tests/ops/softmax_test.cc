// softmax and log_softmax: finite differences in float64 along the last, first and a
// middle dim and on non-contiguous inputs; values against the formula written out in
// double (including logits of 1000) and bad inputs.
#include <cmath>
#include <vector>

#include "ops/softmax.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

using SoftmaxFn = Tensor (*)(const Tensor&, int64_t);

// Gradchecks `op` on a [3,4,5] input along every dim, and along dims 0 and 1 of a
// transposed [7,3] (non-contiguous) input.
void check_softmax_gradients(SoftmaxFn op) {
  Generator gen(41);
  Tensor x = leaf(gen, {3, 4, 5}, -2, 2);
  for (int64_t dim : {-1, 0, 1}) {
    INFO("dim " << dim);
    check_gradients([&](const std::vector<Tensor>& v) { return op(v[0], dim); }, {x});
  }
  Tensor y = leaf(gen, {7, 3}, -2, 2);
  for (int64_t dim : {0, 1}) {
    INFO("transposed, dim " << dim);
    check_gradients([&](const std::vector<Tensor>& v) { return op(v[0].transpose(0, 1), dim); },
                    {y});
  }
}

// softmax of one row written out: exp(x_j - m) / sum_k exp(x_k - m), in double.
std::vector<double> softmax_row(const std::vector<double>& x) {
  double m = x[0];
  for (double v : x) m = std::max(m, v);
  double s = 0;
  for (double v : x) s += std::exp(v - m);
  std::vector<double> y;
  for (double v : x) y.push_back(std::exp(v - m) / s);
  return y;
}

}  // namespace

RESONA_OP_TEST(softmax, gradcheck, "softmax(x=[3,4,5],dim=-1,0,1) and transposed [3,7]") {
  check_softmax_gradients(softmax);
}

RESONA_OP_TEST(log_softmax, gradcheck, "log_softmax(x=[3,4,5],dim=-1,0,1) and transposed [3,7]") {
  check_softmax_gradients(log_softmax);
}

RESONA_OP_TEST(softmax, values, "softmax [2,3] rows, dim 0, logits 1000 and -inf") {
  Tensor x = values({1, 2, 3, -1, 0, 0.5}, {2, 3});
  std::vector<double> r0 = softmax_row({1, 2, 3}), r1 = softmax_row({-1, 0, 0.5});
  std::vector<double> expected = r0;
  expected.insert(expected.end(), r1.begin(), r1.end());
  check_close(softmax(x), expected, 1e-15, 1e-12);
  // Along dim 0: each column is a pair.
  std::vector<double> c[3] = {softmax_row({1, -1}), softmax_row({2, 0}), softmax_row({3, 0.5})};
  check_close(softmax(x, 0), {c[0][0], c[1][0], c[2][0], c[0][1], c[1][1], c[2][1]}, 1e-15, 1e-12);
  // exp(1000) overflows double; with the max subtracted: 1/(2 + e^-1) and e^-1/(2 + e^-1).
  const double d = 2 + std::exp(-1.0);
  check_close(softmax(values({1000, 1000, 999}, {3})), {1 / d, 1 / d, std::exp(-1.0) / d}, 1e-15,
              1e-12);
  check_close(softmax(values({1000, 1000, 999}, {3}).to(DType::kFloat32)),
              {1 / d, 1 / d, std::exp(-1.0) / d}, 1e-6, 1e-6);
  // A -inf logit gets probability 0.
  check_close(softmax(values({0, -INFINITY}, {2})), {1, 0});
}

RESONA_OP_TEST(log_softmax, values, "log_softmax [3] by formula, logits 1000, dim 0") {
  const double lse = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
  check_close(log_softmax(values({1, 2, 3}, {3})), {1 - lse, 2 - lse, 3 - lse}, 1e-14);
  // log(2 + e^-1) subtracted from x - 1000: no overflow, no cancellation.
  const double l = std::log(2 + std::exp(-1.0));
  check_close(log_softmax(values({1000, 1000, 999}, {3})), {-l, -l, -1 - l}, 1e-13);
  // [2,1] along dim 0 is the [2] case.
  const double l2 = std::log(std::exp(0.5) + std::exp(-0.5));
  check_close(log_softmax(values({0.5, -0.5}, {2, 1}), 0), {0.5 - l2, -0.5 - l2}, 1e-14);
}

RESONA_OP_TEST(log_softmax, values, "log_softmax and softmax backward by formula") {
  // d_x = d_y - softmax * sum(d_y) and d_x = y * (d_y - sum(d_y * y)), with d_y = [1, 2, 0].
  const std::vector<double> p = softmax_row({0.1, -0.3, 0.7}), dy = {1, 2, 0};
  Tensor x = values({0.1, -0.3, 0.7}, {3}, true);
  Tensor g = values(dy, {3});
  log_softmax(x).backward(g);
  check_close(x.grad(), {1 - 3 * p[0], 2 - 3 * p[1], 0 - 3 * p[2]}, 1e-14);
  Tensor x2 = values({0.1, -0.3, 0.7}, {3}, true);
  softmax(x2).backward(g);
  const double s = p[0] * 1 + p[1] * 2;
  check_close(x2.grad(), {p[0] * (1 - s), p[1] * (2 - s), p[2] * (0 - s)}, 1e-14);
}

TEST_CASE("softmax refuses bad dims and integer tensors, naming the tensor") {
  Tensor x = zeros({2, 3}).set_name("x");
  CHECK_THROWS_WITH_AS(softmax(x, 2), doctest::Contains("softmax: dim 2 out of range for a 2-D"),
                       Error);
  CHECK_THROWS_WITH_AS(log_softmax(x, -3),
                       doctest::Contains("log_softmax: dim -3 out of range for a 2-D"), Error);
  CHECK_THROWS_WITH_AS(softmax(zeros({2}, DType::kInt64).set_name("ids")),
                       doctest::Contains("softmax: expected a floating-point tensor, got ids [2] "
                                         "int64 cpu"),
                       Error);
}

}  // namespace resona::testing
