// Reductions (sum, mean, max, logsumexp, argmax): finite differences in float64 over
// several dim sets, keepdim both ways and non-contiguous inputs; values against a loop
// reference over multi-indices and against hand-computed numbers; bad dims.
#include <cmath>
#include <limits>

#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/shape.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;
using Reduce = Tensor (*)(const Tensor&, const std::vector<int64_t>&, bool);

constexpr double kInf = std::numeric_limits<double>::infinity();

// Dim sets for a 3-D input: all dims (empty list), single, negative, several (in any
// order, mixing signs), and all dims listed explicitly.
const std::vector<std::vector<int64_t>> kDimSets = {{},     {0},     {1},     {-1},
                                                    {0, 2}, {2, -3}, {-2, 0}, {0, 1, 2}};

// The input of every case: a [2,3,4] leaf seen through permute({2,0,1}) as a
// non-contiguous [4,2,3].
Tensor permuted(const Tensor& x) { return x.permute({2, 0, 1}); }

void check_reduce_gradients(Reduce op, const Tensor& x, const GradcheckOptions& opt = {}) {
  for (const auto& dims : kDimSets) {
    for (bool keepdim : {false, true}) {
      INFO("dims " << shape_str(dims) << " keepdim " << keepdim);
      check_gradients(
          [&](const std::vector<Tensor>& v) { return op(permuted(v[0]), dims, keepdim); }, {x},
          opt);
    }
  }
}

enum class Ref { kSum, kMean, kMax, kLogsumexp };

// The reduction written as plain loops: each element (in row-major order of x's logical
// shape, whatever its strides) goes to the output element given by its kept indices.
std::vector<double> reference(const Tensor& x, const std::vector<int64_t>& dims, Ref kind) {
  const Shape& shape = x.shape();
  const int64_t nd = x.dim();
  std::vector<bool> reduced(nd, dims.empty());
  for (int64_t d : dims) reduced[d < 0 ? d + nd : d] = true;
  int64_t n_out = 1;
  for (int64_t d = 0; d < nd; ++d) n_out *= reduced[d] ? 1 : shape[d];
  std::vector<std::vector<double>> groups(n_out);
  std::vector<double> v = x.to_vector<double>();
  Shape idx(nd, 0);
  for (double e : v) {
    int64_t o = 0;
    for (int64_t d = 0; d < nd; ++d) {
      if (!reduced[d]) o = o * shape[d] + idx[d];
    }
    groups[o].push_back(e);
    for (int64_t d = nd - 1; d >= 0; --d) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
  std::vector<double> out;
  for (const auto& g : groups) {
    double acc = kind == Ref::kMax ? -kInf : 0.0;
    for (double e : g) {
      if (kind == Ref::kMax)
        acc = std::max(acc, e);
      else if (kind == Ref::kLogsumexp)
        acc += std::exp(e);  // inputs here are small
      else
        acc += e;
    }
    if (kind == Ref::kMean) acc /= static_cast<double>(g.size());
    if (kind == Ref::kLogsumexp) acc = std::log(acc);
    out.push_back(acc);
  }
  return out;
}

// Output shape of a reduction of `shape` over `dims`.
Shape reduced_shape(const Shape& shape, const std::vector<int64_t>& dims, bool keepdim) {
  const int64_t nd = static_cast<int64_t>(shape.size());
  std::vector<bool> reduced(nd, dims.empty());
  for (int64_t d : dims) reduced[d < 0 ? d + nd : d] = true;
  Shape out;
  for (int64_t d = 0; d < nd; ++d) {
    if (!reduced[d])
      out.push_back(shape[d]);
    else if (keepdim)
      out.push_back(1);
  }
  return out;
}

// Forward values of `op` on the permuted input for every dim set, against the loops.
void check_reduce_values(Reduce op, Ref kind, const Tensor& x) {
  Tensor xp = permuted(x);
  REQUIRE(!xp.is_contiguous());
  for (const auto& dims : kDimSets) {
    for (bool keepdim : {false, true}) {
      INFO("dims " << shape_str(dims) << " keepdim " << keepdim);
      Tensor y = op(xp, dims, keepdim);
      CHECK(y.shape() == reduced_shape(xp.shape(), dims, keepdim));
      // Accumulation order differs from the reference's; a few ulps of the sum of 24
      // terms of size <= 2 stay far below 1e-12.
      check_close(y, reference(xp, dims, kind), 1e-12, 1e-12);
    }
  }
}

Tensor small_input(uint64_t seed) {
  Generator gen(seed);
  return leaf(gen, {2, 3, 4}, -2, 2);
}

// 24 distinct values (a shuffled 0.1-spaced grid) so that every max is unique by far
// more than the finite-difference step.
Tensor distinct_input(uint64_t seed) {
  Generator gen(seed);
  std::vector<int64_t> perm = gen.permutation(24);
  std::vector<double> v;
  for (int64_t p : perm) v.push_back(0.1 * static_cast<double>(p) - 1.2);
  return values(v, {2, 3, 4}, true);
}

}  // namespace

// ---------------------------------------------------------------- sum

RESONA_OP_TEST(
    sum, gradcheck,
    "sum(x=[2,3,4] permuted, dims {},{0},{1},{-1},{0,2},{2,-3},{-2,0},{0,1,2}, keepdim 0/1)") {
  check_reduce_gradients(sum, small_input(21));
}
RESONA_OP_TEST(sum, values, "sum [2,3] by hand, permuted [2,3,4] against loops, 0-D") {
  Tensor x = values({1, 2, 3, 4, 5, 6}, {2, 3});
  check_close(sum(x), {21});
  CHECK(sum(x).dim() == 0);
  check_close(sum(x, {0}), {5, 7, 9});
  check_close(sum(x, {1}), {6, 15});
  check_close(sum(x, {-1}), {6, 15});
  CHECK(sum(x, {-1}, true).shape() == Shape{2, 1});
  CHECK(sum(x, {}, true).shape() == Shape{1, 1});
  check_close(sum(x, {0, 1}), {21});
  check_close(sum(x.transpose(0, 1), {1}), {5, 7, 9});
  check_reduce_values(sum, Ref::kSum, small_input(22));
  // A 0-D tensor: dims {} and {0} both reduce its one element.
  Tensor s = scalar_tensor(2.5, DType::kFloat64);
  check_close(sum(s), {2.5});
  check_close(sum(s, {0}), {2.5});
  CHECK(sum(s, {-1}, true).dim() == 0);
  // float32 accumulates in float32: exact for small integers.
  check_close(sum(from_vector_as({1, 2, 3, 4}, {2, 2}, DType::kFloat32), {0}), {4, 6});
}
TEST_CASE("sum backward broadcasts d_out over the reduced dims") {
  Tensor x = values({1, 2, 3, 4, 5, 6}, {2, 3}, true);
  sum(x, {1}).backward(values({1, 2}, {2}));
  check_close(x.grad(), {1, 1, 1, 2, 2, 2});
}

// ---------------------------------------------------------------- mean

RESONA_OP_TEST(
    mean, gradcheck,
    "mean(x=[2,3,4] permuted, dims {},{0},{1},{-1},{0,2},{2,-3},{-2,0},{0,1,2}, keepdim 0/1)") {
  check_reduce_gradients(mean, small_input(23));
}
RESONA_OP_TEST(mean, values, "mean [2,3] by hand, permuted [2,3,4] against loops") {
  Tensor x = values({1, 2, 3, 4, 5, 6}, {2, 3}, true);
  check_close(mean(x), {3.5});
  check_close(mean(x, {0}), {2.5, 3.5, 4.5});
  check_close(mean(x, {-1}, true), {2, 5});
  CHECK(mean(x, {-1}, true).shape() == Shape{2, 1});
  check_reduce_values(mean, Ref::kMean, small_input(24));
  // Backward divides by the number of reduced elements (3).
  mean(x, {1}).backward(values({3, 6}, {2}));
  check_close(x.grad(), {1, 1, 1, 2, 2, 2}, 1e-15);
}

// ---------------------------------------------------------------- max

RESONA_OP_TEST(max, gradcheck, "max(x=[2,3,4] distinct, permuted, all dim sets, keepdim 0/1)") {
  check_reduce_gradients(max, distinct_input(25));
}
RESONA_OP_TEST(max, values, "max [2,3] by hand, permuted [2,3,4] against loops, NaN") {
  Tensor x = values({1, 5, 3, 4, 2, 6}, {2, 3});
  check_close(max(x), {6});
  check_close(max(x, {0}), {4, 5, 6});
  check_close(max(x, {1}), {5, 6});
  CHECK(max(x, {1}, true).shape() == Shape{2, 1});
  check_reduce_values(max, Ref::kMax, small_input(26));
  check_close(max(values({1, NAN, 3}, {3})), {NAN});  // NaN propagates
  check_close(max(values({-kInf, -kInf}, {2})), {-kInf});
}
TEST_CASE("max: with ties the gradient goes to the first maximum (row-major in the view)") {
  // Per row: [1,3,3] -> its first 3; [2,2,1] -> its first 2.
  Tensor x = values({1, 3, 3, 2, 2, 1}, {2, 3}, true);
  max(x, {1}).backward(values({10, 20}, {2}));
  check_close(x.grad(), {0, 10, 0, 20, 0, 0});

  // Over all dims: the 3 at [0,1] comes before the one at [1,0].
  Tensor y = values({1, 3, 3, 0}, {2, 2}, true);
  max(y).backward();
  check_close(y.grad(), {0, 1, 0, 0});

  // Through a transpose the order is the view's, not memory's: base [[0,7,2],[7,1,3]]
  // seen as [[0,7],[7,1],[2,3]] meets base[1,0] (view [0,1]) before base[0,1] (view [1,0]).
  Tensor base = values({0, 7, 2, 7, 1, 3}, {2, 3}, true);
  max(base.transpose(0, 1)).backward();
  check_close(base.grad(), {0, 0, 0, 1, 0, 0});
  // Along view dim 0 (= base dim 1): view columns [0,7,2] and [7,1,3], one 7 each.
  Tensor base2 = values({0, 7, 2, 7, 1, 3}, {2, 3}, true);
  max(base2.transpose(0, 1), {0}).backward(values({1, 2}, {2}));
  check_close(base2.grad(), {0, 1, 0, 2, 0, 0});

  // Several reduced dims: all four elements equal, the first gets it all.
  Tensor z = values({4, 4, 4, 4}, {1, 2, 2}, true);
  max(z, {1, 2}).backward();
  check_close(z.grad(), {1, 0, 0, 0});
}

// ---------------------------------------------------------------- logsumexp

RESONA_OP_TEST(logsumexp, gradcheck, "logsumexp(x=[2,3,4] permuted, all dim sets, keepdim 0/1)") {
  check_reduce_gradients(logsumexp, small_input(27));
}
RESONA_OP_TEST(logsumexp, gradcheck, "logsumexp(x in [999,1001) and with -inf entries)") {
  // Values near 1000: exp would overflow without the max shift. eps = 1e-4 because the
  // loss is ~1000 * d_out, whose rounding (ulp(1000) ~ 1e-13) divided by 2*eps must
  // stay well below atol; the truncation error eps^2/6 * |f'''| (|f'''| <= 1) is ~2e-9.
  Generator gen(28);
  GradcheckOptions opt;
  opt.eps = 1e-4;
  check_reduce_gradients(logsumexp, leaf(gen, {2, 3, 4}, 999, 1001), opt);
  // -inf entries come from a mask added to x (x itself must stay finite to be nudged):
  // x + (-inf) stays -inf under the nudge (numeric 0) and exp(-inf - out) = 0 (analytic).
  std::vector<double> m(12, 0.0);
  for (int i : {1, 4, 5, 10}) m[i] = -kInf;  // no row and no column entirely masked
  Tensor mask = values(m, {3, 4});
  Tensor x = leaf(gen, {3, 4}, -2, 2);
  for (int64_t d : {0, 1}) {
    for (bool keepdim : {false, true}) {
      INFO("dim " << d << " keepdim " << keepdim);
      check_gradients(
          [&](const std::vector<Tensor>& v) { return logsumexp(add(v[0], mask), {d}, keepdim); },
          {x});
    }
  }
}
RESONA_OP_TEST(logsumexp, values,
               "logsumexp by hand incl. 1000s and -inf; permuted [2,3,4] against loops") {
  check_close(logsumexp(values({1, 2, 3}, {3})), {3.40760596444438}, 1e-13);
  check_close(logsumexp(values({1000, 1000}, {2})), {1000 + M_LN2}, 1e-12);
  check_close(logsumexp(values({-1000, -1000}, {2})), {-1000 + M_LN2}, 1e-12);
  // Rows: [0,-inf,-inf] -> 0; [1000,999,-inf] -> 1000 + log(1 + e^-1); all -inf -> -inf.
  Tensor x = values({0, -kInf, -kInf, 1000, 999, -kInf, -kInf, -kInf, -kInf}, {3, 3});
  check_close(logsumexp(x, {1}), {0, 1000 + std::log1p(std::exp(-1.0)), -kInf}, 1e-12);
  check_close(logsumexp(values({1, kInf}, {2})), {kInf});
  check_reduce_values(logsumexp, Ref::kLogsumexp, small_input(29));
  // Backward is the softmax: [1000, 1000, -inf] -> [0.5, 0.5, 0].
  Tensor y = values({1000, 1000, -kInf}, {1, 3}, true);
  logsumexp(y, {-1}, true).backward(values({2}, {1, 1}));
  check_close(y.grad(), {1, 1, 0}, 1e-15);
  // float32 at 1000: no overflow either.
  check_close(logsumexp(from_vector_as({1000, 1000}, {2}, DType::kFloat32)), {1000 + M_LN2}, 1e-4);
}

// ---------------------------------------------------------------- argmax

TEST_CASE("argmax: first maximum along one dim, keepdim, negative dim, views, NaN") {
  Tensor x = values({1, 3, 3, 2, 2, 1}, {2, 3});
  Tensor a = argmax(x, 1);
  CHECK(a.dtype() == DType::kInt64);
  CHECK(a.to_vector<int64_t>() == std::vector<int64_t>{1, 0});
  CHECK(argmax(x, 0).to_vector<int64_t>() == std::vector<int64_t>{1, 0, 0});
  CHECK(argmax(x, -1, true).shape() == Shape{2, 1});
  CHECK(argmax(x.transpose(0, 1), 1).to_vector<int64_t>() == std::vector<int64_t>{1, 0, 0});
  // [4,2,3] view of a [2,3,4] input along its middle dim, against max's values.
  Tensor xp = permuted(small_input(30));
  Tensor idx = argmax(xp, 1);
  CHECK(idx.shape() == Shape{4, 3});
  std::vector<double> v = xp.to_vector<double>();
  std::vector<double> mx = max(xp, {1}).to_vector<double>();
  std::vector<int64_t> iv = idx.to_vector<int64_t>();
  for (int64_t i = 0; i < 4; ++i) {
    for (int64_t k = 0; k < 3; ++k) {
      CHECK(v[(i * 2 + iv[i * 3 + k]) * 3 + k] == mx[i * 3 + k]);
    }
  }
  // A NaN is the maximum, as for max.
  CHECK(argmax(values({1, NAN, 3}, {3}), 0).item_int() == 1);
}

// ---------------------------------------------------------------- bad input

TEST_CASE("reductions refuse a dim out of range or given twice, naming the tensor") {
  Tensor x = values({1, 2, 3, 4, 5, 6}, {2, 3});
  x.set_name("x");
  for (Reduce op : {Reduce(sum), Reduce(mean), Reduce(max), Reduce(logsumexp)}) {
    CHECK_THROWS_WITH_AS(
        op(x, {2}, false),
        doctest::Contains("of x [2, 3] float64 cpu: dim 2 out of range for a 2-D tensor"), Error);
    CHECK_THROWS_WITH_AS(op(x, {-3}, false), doctest::Contains("dim -3 out of range"), Error);
    CHECK_THROWS_WITH_AS(
        op(x, {1, -1}, false),
        doctest::Contains("of x [2, 3] float64 cpu: dim -1 given twice in dims [1, -1]"), Error);
    CHECK_THROWS_WITH_AS(op(x, {0, 0}, true), doctest::Contains("given twice"), Error);
  }
  CHECK_THROWS_WITH_AS(argmax(x, 2), doctest::Contains("argmax of x [2, 3] float64 cpu: dim 2"),
                       Error);
  Tensor e = zeros({2, 0}, DType::kFloat64);
  CHECK_THROWS_WITH_AS(mean(e, {1}), doctest::Contains("mean over an empty dim of [2, 0]"), Error);
  CHECK_THROWS_WITH_AS(max(e, {1}), doctest::Contains("max over an empty dim of [2, 0]"), Error);
  CHECK_THROWS_WITH_AS(sum(zeros({2}, DType::kInt64)),
                       doctest::Contains("sum: expected a floating-point tensor, got [2] int64"),
                       Error);
}

}  // namespace resona::testing
