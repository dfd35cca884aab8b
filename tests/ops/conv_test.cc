// causal_conv1d: finite differences in float64, values against a naive reference loop
// written independently of ops/conv.cc (kernel widths 2, 4 and 8, T < W included), and
// the errors for bad shapes.
#include <cstdint>
#include <string>
#include <vector>

#include "ops/conv.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

// y[b, t, d] = bias[d] + sum_j w[d, j] x[b, t - (W-1) + j, d], straight from the
// definition in ops/conv.h, in float64, indexing through at() on host vectors.
std::vector<double> reference_conv(const std::vector<double>& x, const std::vector<double>& w,
                                   const std::vector<double>& bias, int64_t B, int64_t T, int64_t D,
                                   int64_t W) {
  std::vector<double> y(B * T * D, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t d = 0; d < D; ++d) {
        double acc = bias.empty() ? 0.0 : bias.at(d);
        for (int64_t j = 0; j < W; ++j) {
          const int64_t s = t - (W - 1) + j;
          if (s >= 0) acc += w.at(d * W + j) * x.at((b * T + s) * D + d);
        }
        y.at((b * T + t) * D + d) = acc;
      }
    }
  }
  return y;
}

struct ConvCase {
  int64_t B, T, D, W;
  bool bias;
};

std::string case_name(const ConvCase& c) {
  return "causal_conv1d(B=" + std::to_string(c.B) + ",T=" + std::to_string(c.T) +
         ",D=" + std::to_string(c.D) + ",W=" + std::to_string(c.W) +
         ",bias=" + (c.bias ? "yes" : "no") + ")";
}

const std::vector<ConvCase> kCases = {
    {2, 5, 3, 2, true}, {1, 3, 2, 4, true},   {2, 9, 3, 4, false},
    {1, 5, 2, 8, true}, {2, 12, 3, 8, false}, {1, 1, 4, 2, true},
};

}  // namespace

RESONA_OP_TEST(causal_conv1d, gradcheck,
               "causal_conv1d(B,T,D,W) for W=2,4,8, T<W and T>=W, with/without bias") {
  for (const ConvCase& c : kCases) {
    INFO(case_name(c));
    Generator gen(31 + c.W + c.T);
    Tensor x = leaf(gen, {c.B, c.T, c.D});
    Tensor w = leaf(gen, {c.D, c.W});
    if (c.bias) {
      Tensor bias = leaf(gen, {c.D});
      check_gradients([](const std::vector<Tensor>& v) { return causal_conv1d(v[0], v[1], v[2]); },
                      {x, w, bias});
    } else {
      check_gradients([](const std::vector<Tensor>& v) { return causal_conv1d(v[0], v[1]); },
                      {x, w});
    }
  }
  // Strided inputs: x as the transpose of a [B, D, T] leaf, weight as that of a [W, D] leaf.
  Generator gen(39);
  Tensor x_bdt = leaf(gen, {2, 3, 6});
  Tensor w_wd = leaf(gen, {4, 3});
  check_gradients(
      [](const std::vector<Tensor>& v) {
        return causal_conv1d(v[0].transpose(1, 2), v[1].transpose(0, 1));
      },
      {x_bdt, w_wd});
}

RESONA_OP_TEST(causal_conv1d, values,
               "causal_conv1d vs a naive loop for W=2,4,8, T<W; float32; hand example") {
  // By hand: x = [1, 2, 3] (B=1, D=1), weight [[10, 1]] (weight[d, W-1] = 1 multiplies the
  // current step), bias 0.5: y = [0.5+1, 0.5+10*1+2, 0.5+10*2+3].
  check_close(
      causal_conv1d(values({1, 2, 3}, {1, 3, 1}), values({10, 1}, {1, 2}), values({0.5}, {1})),
      {1.5, 12.5, 23.5});

  for (const ConvCase& c : kCases) {
    INFO(case_name(c));
    Generator gen(41 + c.W + c.T);
    Tensor x = gen.uniform({c.B, c.T, c.D}, -1, 1, DType::kFloat64);
    Tensor w = gen.uniform({c.D, c.W}, -1, 1, DType::kFloat64);
    Tensor bias = c.bias ? gen.uniform({c.D}, -1, 1, DType::kFloat64) : Tensor();
    std::vector<double> ref = reference_conv(
        x.to_vector<double>(), w.to_vector<double>(),
        c.bias ? bias.to_vector<double>() : std::vector<double>{}, c.B, c.T, c.D, c.W);
    Tensor y = causal_conv1d(x, w, bias);
    REQUIRE(y.shape() == Shape{c.B, c.T, c.D});
    // At most 8 products and a bias of magnitude <= 1 summed in a different order from the
    // reference: a few ulps of float64.
    check_close(y, ref, 1e-14, 1e-12);
    // float32: the same inputs rounded to float32; each of the <= 9 terms carries a relative
    // error ~6e-8 of a value <= 1, so 1e-5 is loose but far below any indexing mistake.
    Tensor y32 = causal_conv1d(x.to(DType::kFloat32), w.to(DType::kFloat32),
                               c.bias ? bias.to(DType::kFloat32) : Tensor());
    CHECK(y32.dtype() == DType::kFloat32);
    check_close(y32, ref, 1e-5, 1e-5);

    // float32 gradients against the float64 ones for the same d_y: d_weight and d_bias sum
    // B*T <= 24 products of magnitude <= 1 (accumulated in double), d_x at most W; 1e-5
    // again leaves a wide margin over float32 rounding.
    Tensor d_y = gen.uniform({c.B, c.T, c.D}, -1, 1, DType::kFloat64);
    auto grads = [&](DType dt) {
      // detach(): to() of the same dtype returns the tensor itself, which must stay a
      // plain input for the next dtype.
      Tensor xl = x.to(dt).detach(), wl = w.to(dt).detach();
      Tensor bl = c.bias ? bias.to(dt).detach() : Tensor();
      xl.set_requires_grad(true);
      wl.set_requires_grad(true);
      if (c.bias) bl.set_requires_grad(true);
      causal_conv1d(xl, wl, bl).backward(d_y.to(dt));
      return std::vector<Tensor>{xl.grad(), wl.grad(), c.bias ? bl.grad() : Tensor()};
    };
    std::vector<Tensor> g64 = grads(DType::kFloat64), g32 = grads(DType::kFloat32);
    for (int k = 0; k < (c.bias ? 3 : 2); ++k) {
      CHECK(g32[k].dtype() == DType::kFloat32);
      check_close(g32[k], g64[k].to_vector<double>(), 1e-5, 1e-5);
    }
  }
}

RESONA_OP_TEST(causal_conv1d, values, "causal_conv1d(B=1,T=3,D=1,W=2) gradients by hand") {
  // y0 = w1 x0 + b, y1 = w0 x0 + w1 x1 + b, y2 = w0 x1 + w1 x2 + b with w = [2, 3], and
  // d_y = [1, 10, 100]:
  //   d_x = [3*1 + 2*10, 3*10 + 2*100, 3*100] = [23, 230, 300]
  //   d_w0 = 10 x0 + 100 x1 = 10 + 200, d_w1 = 1 x0 + 10 x1 + 100 x2 = 1 + 20 + 300
  //   d_b = 111
  Tensor x = values({1, 2, 3}, {1, 3, 1}, true);
  Tensor w = values({2, 3}, {1, 2}, true);
  Tensor b = values({0}, {1}, true);
  causal_conv1d(x, w, b).backward(values({1, 10, 100}, {1, 3, 1}));
  check_close(x.grad(), {23, 230, 300});
  check_close(w.grad(), {210, 321});
  check_close(b.grad(), {111});
  // Only the gradients asked for: a bias that does not require grad gets none.
  Tensor x2 = values({1, 2, 3}, {1, 3, 1}, true);
  Tensor b2 = values({0}, {1});
  sum(causal_conv1d(x2, w.detach(), b2)).backward();
  check_close(x2.grad(), {5, 5, 3});
  CHECK_FALSE(b2.grad().defined());
}

TEST_CASE("causal_conv1d refuses kernel widths outside 2..8 and mismatched shapes") {
  Tensor x = zeros({2, 5, 4}).set_name("x");
  CHECK_THROWS_WITH_AS(causal_conv1d(x, zeros({4, 1})),
                       doctest::Contains("kernel width W=1 of weight [4, 1] float32 cpu is "
                                         "outside 2..8"),
                       Error);
  CHECK_THROWS_WITH_AS(causal_conv1d(x, zeros({4, 9})), doctest::Contains("kernel width W=9"),
                       Error);
  CHECK_THROWS_WITH_AS(causal_conv1d(x, zeros({3, 4})),
                       doctest::Contains("weight [3, 4] float32 cpu has 3 channels but x x [2, "
                                         "5, 4] float32 cpu has D=4"),
                       Error);
  CHECK_THROWS_WITH_AS(causal_conv1d(x, zeros({4, 4}), zeros({3})),
                       doctest::Contains("bias must be [D] = [4]"), Error);
  CHECK_THROWS_WITH_AS(causal_conv1d(zeros({5, 4}), zeros({4, 4})),
                       doctest::Contains("x must be [B, T, D], got [5, 4]"), Error);
  CHECK_THROWS_WITH_AS(causal_conv1d(x, zeros({4, 4}, DType::kFloat64)),
                       doctest::Contains("dtype mismatch"), Error);
}

}  // namespace resona::testing
