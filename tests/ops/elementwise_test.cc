// Elementwise ops and activations: finite differences in float64 and hand-computed values.
#include <cmath>

#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

// Gradcheck of a binary op at broadcasting shapes a=[2,3,4], b=[3,1] (and the reverse).
void check_binary(Tensor (*op)(const Tensor&, const Tensor&), double lo, double hi) {
  Generator gen(7);
  Fn f = [op](const std::vector<Tensor>& x) { return op(x[0], x[1]); };
  check_gradients(f, {leaf(gen, {2, 3, 4}, lo, hi), leaf(gen, {3, 1}, lo, hi)});
  check_gradients(f, {leaf(gen, {4}, lo, hi), leaf(gen, {2, 3, 4}, lo, hi)});
}

// Gradcheck of a unary op on a non-contiguous view (a transpose) of values in [lo, hi).
void check_unary(Tensor (*op)(const Tensor&), double lo, double hi) {
  Generator gen(11);
  Tensor x = leaf(gen, {3, 5}, lo, hi);
  check_gradients([op](const std::vector<Tensor>& v) { return op(v[0].transpose(0, 1)); }, {x});
}

}  // namespace

RESONA_OP_TEST(add, gradcheck, "add(a=[2,3,4],b=[3,1]) and add(a,2.5)") {
  check_binary(add, -1, 1);
  Generator gen(1);
  check_gradients([](const std::vector<Tensor>& x) { return add(x[0], 2.5); },
                  {leaf(gen, {2, 3})});
}
RESONA_OP_TEST(add, values, "add broadcast [2,2]+[2] and scalar") {
  Tensor a = values({1, 2, 3, 4}, {2, 2}), b = values({10, 20}, {2});
  check_close(add(a, b), {11, 22, 13, 24});
  check_close(a + 0.5, {1.5, 2.5, 3.5, 4.5});
  check_close(a - 1.0, {0, 1, 2, 3});
}
RESONA_OP_TEST(sub, gradcheck, "sub(a=[2,3,4],b=[3,1])") { check_binary(sub, -1, 1); }
RESONA_OP_TEST(sub, values, "sub [2,2]-[2,1]") {
  check_close(sub(values({1, 2, 3, 4}, {2, 2}), values({1, 2}, {2, 1})), {0, 1, 1, 2});
}
RESONA_OP_TEST(mul, gradcheck, "mul(a=[2,3,4],b=[3,1]) and mul(a,-1.5)") {
  check_binary(mul, -1, 1);
  Generator gen(2);
  check_gradients([](const std::vector<Tensor>& x) { return mul(x[0], -1.5); },
                  {leaf(gen, {4})});
}
RESONA_OP_TEST(mul, values, "mul [3]*[3], scalar") {
  Tensor a = values({1, -2, 3}, {3});
  check_close(mul(a, values({4, 5, 6}, {3})), {4, -10, 18});
  check_close(2.0 * a, {2, -4, 6});
}
RESONA_OP_TEST(div, gradcheck, "div(a=[2,3,4],b=[3,1]) with b in [0.5,2)") {
  Generator gen(3);
  Fn f = [](const std::vector<Tensor>& x) { return div(x[0], x[1]); };
  check_gradients(f, {leaf(gen, {2, 3, 4}), leaf(gen, {3, 1}, 0.5, 2)});
}
RESONA_OP_TEST(div, values, "div [3]/[3] and /scalar") {
  Tensor a = values({1, -2, 3}, {3});
  check_close(div(a, values({2, 4, -3}, {3})), {0.5, -0.5, -1});
  check_close(a / 4.0, {0.25, -0.5, 0.75});
}
RESONA_OP_TEST(neg, gradcheck, "neg([5,3] transposed)") { check_unary(neg, -1, 1); }
RESONA_OP_TEST(neg, values, "neg [3]") { check_close(neg(values({1, -2, 0}, {3})), {-1, 2, 0}); }
RESONA_OP_TEST(pow, gradcheck, "pow(a>0,[3,1] exponents) and pow(a,2.5)") {
  Generator gen(4);
  check_gradients([](const std::vector<Tensor>& x) { return pow(x[0], x[1]); },
                  {leaf(gen, {2, 3, 4}, 0.5, 2), leaf(gen, {3, 1}, -1, 2)});
  check_gradients([](const std::vector<Tensor>& x) { return pow(x[0], 2.5); },
                  {leaf(gen, {3, 2}, 0.5, 2)});
}
RESONA_OP_TEST(pow, values, "pow [3]^2, [2]^[2]") {
  check_close(pow(values({1, -2, 3}, {3}), 2.0), {1, 4, 9});
  check_close(pow(values({4, 9}, {2}), values({0.5, 2}, {2})), {2, 81});
}
RESONA_OP_TEST(exp, gradcheck, "exp([5,3] transposed)") { check_unary(exp, -2, 2); }
RESONA_OP_TEST(exp, values, "exp [3]") {
  check_close(exp(values({0, 1, -1}, {3})), {1, M_E, 1 / M_E}, 1e-12);
}
RESONA_OP_TEST(log, gradcheck, "log(x in [0.5,3))") { check_unary(log, 0.5, 3); }
RESONA_OP_TEST(log, values, "log [3]") {
  check_close(log(values({1, M_E, 0.5}, {3})), {0, 1, -M_LN2}, 1e-12);
}
RESONA_OP_TEST(sqrt, gradcheck, "sqrt(x in [0.5,3))") { check_unary(sqrt, 0.5, 3); }
RESONA_OP_TEST(sqrt, values, "sqrt [3]") { check_close(sqrt(values({4, 9, 2}, {3})), {2, 3, M_SQRT2}, 1e-12); }
RESONA_OP_TEST(rsqrt, gradcheck, "rsqrt(x in [0.5,3))") { check_unary(rsqrt, 0.5, 3); }
RESONA_OP_TEST(rsqrt, values, "rsqrt [2]") { check_close(rsqrt(values({4, 0.25}, {2})), {0.5, 2}, 1e-12); }
RESONA_OP_TEST(abs, gradcheck, "abs(x in [0.1,1) and negated)") {
  Generator gen(5);
  // Away from the kink at 0: half the elements positive, half negative.
  Tensor x = leaf(gen, {4, 3}, 0.1, 1);
  check_gradients([](const std::vector<Tensor>& v) {
    return abs(mul(v[0], values({1, -1, 1}, {3})));
  }, {x});
}
RESONA_OP_TEST(abs, values, "abs [3] and its gradient at 0") {
  Tensor x = values({-2, 0, 3}, {3}, true);
  Tensor y = abs(x);
  check_close(y, {2, 0, 3});
  sum(y).backward();
  check_close(x.grad(), {-1, 0, 1});
}
RESONA_OP_TEST(sigmoid, gradcheck, "sigmoid([5,3] transposed)") { check_unary(sigmoid, -4, 4); }
RESONA_OP_TEST(sigmoid, values, "sigmoid [3] incl. -800 (no overflow)") {
  check_close(sigmoid(values({0, 2, -800}, {3})), {0.5, 1 / (1 + std::exp(-2.0)), 0}, 1e-12);
}
RESONA_OP_TEST(tanh, gradcheck, "tanh([5,3] transposed)") { check_unary(tanh, -2, 2); }
RESONA_OP_TEST(tanh, values, "tanh [2]") {
  check_close(tanh(values({0, 0.5}, {2})), {0, 0.46211715726000974}, 1e-12);
}
RESONA_OP_TEST(silu, gradcheck, "silu([5,3] transposed)") { check_unary(silu, -3, 3); }
RESONA_OP_TEST(silu, values, "silu [3]") {
  check_close(silu(values({0, 1, -1}, {3})), {0, 0.7310585786300049, -0.2689414213699951}, 1e-12);
}
RESONA_OP_TEST(gelu, gradcheck, "gelu([5,3] transposed)") { check_unary(gelu, -3, 3); }
RESONA_OP_TEST(gelu, values, "gelu [3] (erf form)") {
  // 0.5 x (1 + erf(x / sqrt 2)): gelu(1) = 0.8413447460685429, gelu(-1) = -0.15865525393145707
  check_close(gelu(values({0, 1, -1}, {3})), {0, 0.8413447460685429, -0.15865525393145707}, 1e-12);
}
RESONA_OP_TEST(softplus, gradcheck, "softplus incl. above the threshold 20") {
  check_unary(softplus, -3, 3);
  Generator gen(6);
  check_gradients([](const std::vector<Tensor>& v) { return softplus(v[0]); },
                  {leaf(gen, {3}, 21, 25)});
}
RESONA_OP_TEST(softplus, values, "softplus [3]") {
  check_close(softplus(values({0, 1, 30}, {3})), {M_LN2, 1.3132616875182228, 30}, 1e-12);
}
RESONA_OP_TEST(relu, gradcheck, "relu away from 0") {
  Generator gen(8);
  Tensor x = leaf(gen, {4, 3}, 0.1, 1);
  check_gradients([](const std::vector<Tensor>& v) {
    return relu(mul(v[0], values({1, -1, 1}, {3})));
  }, {x});
}
RESONA_OP_TEST(relu, values, "relu [3]") { check_close(relu(values({-1, 0, 2}, {3})), {0, 0, 2}); }

TEST_CASE("binary ops refuse mismatched shapes and dtypes, naming both tensors") {
  Tensor a = zeros({2, 3}), b = zeros({4});
  a.set_name("a");
  b.set_name("b");
  CHECK_THROWS_WITH_AS(add(a, b), doctest::Contains("[2, 3] and [4] cannot be broadcast"), Error);
  Tensor c = zeros({2, 3}, DType::kFloat64).set_name("c");
  CHECK_THROWS_WITH_AS(mul(a, c), doctest::Contains("dtype mismatch: a [2, 3] float32 cpu and c"),
                       Error);
}

}  // namespace resona::testing
