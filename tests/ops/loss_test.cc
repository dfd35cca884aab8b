// cross_entropy: finite differences in float64 for every reduction with ignored rows and
// non-contiguous logits; values and gradients against the formula written out in double;
// ignored rows, all rows ignored, logits of 1000; bad targets and shapes.
#include <cmath>
#include <vector>

#include "ops/loss.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

Tensor targets_of(const std::vector<int64_t>& t) {
  return from_vector(t, {static_cast<int64_t>(t.size())});
}

// log(sum_j exp(x_j)) - x_t for one row, in double (the rows here are small).
double row_loss(const std::vector<double>& x, int64_t t) {
  double s = 0;
  for (double v : x) s += std::exp(v);
  return std::log(s) - x[t];
}

}  // namespace

RESONA_OP_TEST(cross_entropy, gradcheck,
               "cross_entropy(logits=[5,7],targets with one -100) mean/sum/none") {
  Generator gen(51);
  Tensor logits = leaf(gen, {5, 7}, -3, 3);
  Tensor t = targets_of({3, kIgnoreIndex, 0, 6, 2});
  for (Reduction r : {Reduction::kMean, Reduction::kSum, Reduction::kNone}) {
    INFO("reduction " << static_cast<int>(r));
    check_gradients(
        [&](const std::vector<Tensor>& v) { return cross_entropy(v[0], v[1], kIgnoreIndex, r); },
        {logits, t});
  }
}

RESONA_OP_TEST(cross_entropy, gradcheck, "cross_entropy(logits=[7,5]^T, int32 targets, ignore 2)") {
  // Non-contiguous logits, int32 targets and a custom ignore_index.
  Generator gen(52);
  Tensor t = from_vector(std::vector<int32_t>{1, 2, 4, 0, 2}, {5});
  check_gradients(
      [&](const std::vector<Tensor>& v) { return cross_entropy(v[0].transpose(0, 1), v[1], 2); },
      {leaf(gen, {7, 5}, -3, 3), t});
}

RESONA_OP_TEST(cross_entropy, values, "cross_entropy [2,3] mean/sum/none, ignored row, grads") {
  const std::vector<double> r0 = {1, 2, 3}, r1 = {1, 1, 1};
  const double l0 = row_loss(r0, 2), l1 = row_loss(r1, 0);  // l1 = log 3
  Tensor logits = values({1, 2, 3, 1, 1, 1}, {2, 3}, true);
  Tensor t = targets_of({2, 0});
  Tensor mean_loss = cross_entropy(logits, t);
  CHECK(mean_loss.dim() == 0);
  check_close(mean_loss, {(l0 + l1) / 2}, 1e-14);
  check_close(cross_entropy(logits, t, kIgnoreIndex, Reduction::kSum), {l0 + l1}, 1e-14);
  check_close(cross_entropy(logits, t, kIgnoreIndex, Reduction::kNone), {l0, l1}, 1e-14);
  CHECK(std::abs(l1 - std::log(3.0)) < 1e-15);

  // d_logits = (softmax - onehot) / count.
  mean_loss.backward();
  const double s0 = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  check_close(logits.grad(),
              {std::exp(1.0) / s0 / 2, std::exp(2.0) / s0 / 2, (std::exp(3.0) / s0 - 1) / 2,
               (1.0 / 3 - 1) / 2, 1.0 / 6, 1.0 / 6},
              1e-14);

  // Row 1 ignored: the mean is over row 0 alone, and row 1 gets no gradient.
  Tensor logits2 = values({1, 2, 3, 1, 1, 1}, {2, 3}, true);
  Tensor t2 = targets_of({2, kIgnoreIndex});
  Tensor loss2 = cross_entropy(logits2, t2);
  check_close(loss2, {l0}, 1e-14);
  check_close(cross_entropy(logits2, t2, kIgnoreIndex, Reduction::kNone), {l0, 0}, 1e-14);
  loss2.backward();
  check_close(logits2.grad(),
              {std::exp(1.0) / s0, std::exp(2.0) / s0, std::exp(3.0) / s0 - 1, 0, 0, 0}, 1e-14);
}

RESONA_OP_TEST(cross_entropy, values, "cross_entropy with every row ignored is 0, zero grad") {
  Tensor logits = values({1, 2, 3, 4, 5, 6}, {2, 3}, true);
  Tensor t = targets_of({kIgnoreIndex, kIgnoreIndex});
  Tensor loss = cross_entropy(logits, t);
  check_close(loss, {0.0});
  check_close(cross_entropy(logits, t, kIgnoreIndex, Reduction::kSum), {0.0});
  loss.backward();
  check_close(logits.grad(), {0, 0, 0, 0, 0, 0});
}

RESONA_OP_TEST(cross_entropy, values, "cross_entropy logits 1000 (f64 and f32) without overflow") {
  // Row 0: log(1 + e^-1000 + e^-2000) = 0 to double precision; row 1: log 3.
  // Gradient of the mean: row 0 ~ [0, 0, 0], row 1 [1/3 - 1, 1/3, 1/3] / 2.
  for (DType dt : {DType::kFloat64, DType::kFloat32}) {
    INFO("dtype " << dtype_name(dt));
    Tensor logits = values({1000, 0, -1000, 1000, 1000, 1000}, {2, 3}).to(dt);
    logits.set_requires_grad(true);
    Tensor loss = cross_entropy(logits, targets_of({0, 1}));
    // float32: the lse of a row of 1000s is 1000 + log 3, held to float32's ulp at 1000.
    const double tol = dt == DType::kFloat32 ? 1e-4 : 1e-12;
    check_close(loss, {std::log(3.0) / 2}, tol);
    check_close(cross_entropy(logits, targets_of({0, 1}), kIgnoreIndex, Reduction::kNone),
                {0, std::log(3.0)}, tol);
    loss.backward();
    check_close(logits.grad(), {0, 0, 0, 1.0 / 6, -1.0 / 3, 1.0 / 6}, tol);
  }
}

TEST_CASE("cross_entropy refuses bad targets and shapes, naming row, value and tensors") {
  Tensor logits = zeros({3, 4}).set_name("logits");
  CHECK_THROWS_WITH_AS(cross_entropy(logits, targets_of({0, 4, 1})),
                       doctest::Contains("cross_entropy: target 4 at row 1 is out of range [0, 4) "
                                         "for logits logits [3, 4] float32 cpu"),
                       Error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, targets_of({0, 1, -1})),
                       doctest::Contains("target -1 at row 2 is out of range"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, targets_of({0, 1})),
                       doctest::Contains("targets [2] int64 cpu must be [3] to match logits "
                                         "logits [3, 4] float32 cpu"),
                       Error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, zeros({3}).set_name("labels")),
                       doctest::Contains("targets must be int32 or int64 class indices, got "
                                         "labels [3] float32 cpu"),
                       Error);
  CHECK_THROWS_WITH_AS(cross_entropy(zeros({2, 3, 4}), targets_of({0, 1})),
                       doctest::Contains("logits must be [N, V], got [2, 3, 4] float32 cpu"),
                       Error);
  CHECK_THROWS_WITH_AS(cross_entropy(zeros({3, 4}, DType::kInt64), targets_of({0, 1, 2})),
                       doctest::Contains("cross_entropy: expected a floating-point tensor"), Error);
}

}  // namespace resona::testing
