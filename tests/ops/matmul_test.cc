// matmul and linear: finite differences in float64 (batched, broadcast batch dims,
// transposed, strided-copy and expanded operands), values against a naive triple loop in
// double and hand-computed numbers, and bad inputs.
#include <vector>

#include "ops/matmul.h"
#include "ops/reduce.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

const Fn kMatmul = [](const std::vector<Tensor>& v) { return matmul(v[0], v[1]); };

// out[i, j] = sum_k a[i, k] b[k, j] for row-major [M, K] and [K, N] values, in double.
std::vector<double> naive_mm(const std::vector<double>& a, const std::vector<double>& b, int64_t M,
                             int64_t K, int64_t N) {
  std::vector<double> out(M * N, 0.0);
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += a[i * K + k] * b[k * N + j];
      out[i * N + j] = acc;
    }
  }
  return out;
}

// Entry `e` of a batch of row-major matrices of `n` elements each.
std::vector<double> entry(const std::vector<double>& v, int64_t e, int64_t n) {
  return std::vector<double>(v.begin() + e * n, v.begin() + (e + 1) * n);
}

}  // namespace

RESONA_OP_TEST(matmul, gradcheck, "matmul(a=[2,3,5],b=[5,4]) unbatched b, folded batch") {
  Generator gen(21);
  check_gradients(kMatmul, {leaf(gen, {2, 3, 5}), leaf(gen, {5, 4})});
}

RESONA_OP_TEST(matmul, gradcheck, "matmul(a=[3,5],b=[2,5,4]) unbatched a") {
  Generator gen(22);
  check_gradients(kMatmul, {leaf(gen, {3, 5}), leaf(gen, {2, 5, 4})});
}

RESONA_OP_TEST(matmul, gradcheck, "matmul(a=[2,1,3,5],b=[3,5,4]) broadcast batch [2,3]") {
  Generator gen(23);
  check_gradients(kMatmul, {leaf(gen, {2, 1, 3, 5}), leaf(gen, {3, 5, 4})});
}

RESONA_OP_TEST(matmul, gradcheck, "matmul transposed operands a=[2,5,3]^T(1,2), b=[4,5]^T") {
  Generator gen(24);
  check_gradients(
      [](const std::vector<Tensor>& v) {
        return matmul(v[0].transpose(1, 2), v[1].transpose(0, 1));
      },
      {leaf(gen, {2, 5, 3}), leaf(gen, {4, 5})});
}

RESONA_OP_TEST(matmul, gradcheck, "matmul strided a=[6,10][::2,::2], expanded b=[5,1]->[5,3]") {
  // Neither rows nor columns of these operands are unit-stride: the copy path.
  Generator gen(25);
  check_gradients(
      [](const std::vector<Tensor>& v) {
        return matmul(v[0].slice(0, 0, 6, 2).slice(1, 0, 10, 2), v[1].expand({5, 3}));
      },
      {leaf(gen, {6, 10}), leaf(gen, {5, 1})});
}

RESONA_OP_TEST(matmul, gradcheck, "matmul(a=[1,5],b=[5,1]) and M=1 batched [3,1,5]x[5,7]") {
  Generator gen(26);
  check_gradients(kMatmul, {leaf(gen, {1, 5}), leaf(gen, {5, 1})});
  check_gradients(kMatmul, {leaf(gen, {3, 1, 5}), leaf(gen, {5, 7})});
}

RESONA_OP_TEST(matmul, gradcheck, "linear(x=[2,3,5],w=[4,5],bias=[4]), no bias, sliced x") {
  Generator gen(27);
  check_gradients([](const std::vector<Tensor>& v) { return linear(v[0], v[1], v[2]); },
                  {leaf(gen, {2, 3, 5}), leaf(gen, {4, 5}), leaf(gen, {4})});
  check_gradients([](const std::vector<Tensor>& v) { return linear(v[0], v[1]); },
                  {leaf(gen, {5}), leaf(gen, {3, 5})});
  // x a slice along its features (rows fold into one stride), and a permuted x (copied).
  check_gradients(
      [](const std::vector<Tensor>& v) { return linear(v[0].slice(2, 1, 6), v[1], v[2]); },
      {leaf(gen, {2, 3, 7}), leaf(gen, {4, 5}), leaf(gen, {4})});
  check_gradients(
      [](const std::vector<Tensor>& v) { return linear(v[0].transpose(0, 1), v[1], v[2]); },
      {leaf(gen, {3, 2, 5}), leaf(gen, {4, 5}), leaf(gen, {4})});
}

RESONA_OP_TEST(matmul, values, "matmul [2,2]x[2,2] by hand") {
  Tensor a = values({1, 2, 3, 4}, {2, 2}), b = values({5, 6, 7, 8}, {2, 2});
  check_close(matmul(a, b), {19, 22, 43, 50});
  check_close(matmul(a, b.transpose(0, 1)), {17, 23, 39, 53});
}

RESONA_OP_TEST(matmul, values, "matmul vs naive loop: [2,33,17]x[17,29] f32/f64, transposed") {
  // Large enough that Eigen takes its blocked GEMM path rather than the lazy product.
  Generator gen(31);
  const int64_t B = 2, M = 33, K = 17, N = 29;
  for (DType dt : {DType::kFloat64, DType::kFloat32}) {
    INFO("dtype " << dtype_name(dt));
    Tensor a = gen.uniform({B, M, K}, -1, 1, dt);
    Tensor bt = gen.uniform({N, K}, -1, 1, dt);  // b = bt^T, used in place
    Tensor out = matmul(a, bt.transpose(0, 1));
    REQUIRE(out.shape() == Shape{B, M, N});
    std::vector<double> av = a.to_vector<double>(), bv = bt.transpose(0, 1).to_vector<double>();
    std::vector<double> expected;
    for (int64_t e = 0; e < B; ++e) {
      std::vector<double> o = naive_mm(entry(av, e, M * K), bv, M, K, N);
      expected.insert(expected.end(), o.begin(), o.end());
    }
    // float32: K = 17 products of |x| < 1 summed in a different order than the double
    // reference; 1e-5 absolute is a few float32 ulps of the largest partial sums.
    const double tol = dt == DType::kFloat32 ? 1e-5 : 1e-12;
    check_close(out, expected, tol, tol);
  }
}

RESONA_OP_TEST(matmul, values, "matmul vs naive loop: broadcast [2,1,3,5]x[3,5,4]") {
  Generator gen(32);
  Tensor a = gen.uniform({2, 1, 3, 5}, -1, 1, DType::kFloat64);
  Tensor b = gen.uniform({3, 5, 4}, -1, 1, DType::kFloat64);
  Tensor out = matmul(a, b);
  REQUIRE(out.shape() == Shape{2, 3, 3, 4});
  std::vector<double> av = a.to_vector<double>(), bv = b.to_vector<double>(), expected;
  for (int64_t i = 0; i < 2; ++i) {
    for (int64_t j = 0; j < 3; ++j) {
      std::vector<double> o = naive_mm(entry(av, i, 15), entry(bv, j, 20), 3, 5, 4);
      expected.insert(expected.end(), o.begin(), o.end());
    }
  }
  check_close(out, expected, 1e-12, 1e-12);
}

RESONA_OP_TEST(matmul, values, "linear [2,3]x[2,3]^T+bias by hand, and its gradients") {
  Tensor x = values({1, 2, 3, 4, 5, 6}, {2, 3}, true);
  Tensor w = values({1, 0, -1, 2, 1, 0}, {2, 3}, true);
  Tensor bias = values({0.5, -1}, {2}, true);
  Tensor y = linear(x, w, bias);
  // row 0: [1-3, 2+2] + bias = [-1.5, 3]; row 1: [4-6, 8+5] + bias = [-1.5, 12]
  check_close(y, {-1.5, 3, -1.5, 12});
  sum(y).backward();
  // d_out = ones: d_x = ones w = column sums of w per row; d_w = ones^T x; d_bias = N.
  check_close(x.grad(), {3, 1, -1, 3, 1, -1});
  check_close(w.grad(), {5, 7, 9, 5, 7, 9});
  check_close(bias.grad(), {2, 2});
}

RESONA_OP_TEST(matmul, values, "matmul computes only the gradients asked for") {
  Tensor a = values({1, 2, 3, 4}, {2, 2}, true), b = values({5, 6, 7, 8}, {2, 2});
  sum(matmul(a, b)).backward();
  check_close(a.grad(), {11, 15, 11, 15});  // row sums of b, per row of a
  CHECK_FALSE(b.grad().defined());
}

TEST_CASE("matmul and linear refuse bad shapes and dtypes, naming the tensors") {
  Tensor a = zeros({2, 3}).set_name("a"), b = zeros({4, 5}).set_name("b");
  CHECK_THROWS_WITH_AS(matmul(a, b),
                       doctest::Contains("a = a [2, 3] float32 cpu and b = b [4, 5] float32 cpu "
                                         "do not chain: a [..., M, K] needs b [..., K, N] with "
                                         "K = 3, got 4"),
                       Error);
  CHECK_THROWS_WITH_AS(matmul(zeros({3}), zeros({3, 2})),
                       doctest::Contains("at least 2-D ([..., M, K] and [..., K, N]), got a = "
                                         "[3] float32 cpu"),
                       Error);
  CHECK_THROWS_WITH_AS(matmul(zeros({2, 2, 3}), zeros({3, 3, 4})),
                       doctest::Contains("do not broadcast ([2] vs [3])"), Error);
  CHECK_THROWS_WITH_AS(matmul(a, zeros({3, 2}, DType::kFloat64).set_name("c")),
                       doctest::Contains("dtype mismatch: a [2, 3] float32 cpu and c [3, 2] "
                                         "float64 cpu"),
                       Error);
  CHECK_THROWS_WITH_AS(matmul(zeros({2, 3}, DType::kInt64), zeros({3, 2}, DType::kInt64)),
                       doctest::Contains("matmul: expected a floating-point tensor, got [2, 3] "
                                         "int64 cpu"),
                       Error);

  Tensor x = zeros({4, 3}).set_name("x"), w = zeros({2, 5}).set_name("w");
  CHECK_THROWS_WITH_AS(linear(x, w),
                       doctest::Contains("linear: x = x [4, 3] float32 cpu has 3 features but "
                                         "w = w [2, 5] float32 cpu expects 5"),
                       Error);
  CHECK_THROWS_WITH_AS(linear(x, zeros({2, 3}), zeros({3}).set_name("bias")),
                       doctest::Contains("bias = bias [3] float32 cpu must be [2]"), Error);
  CHECK_THROWS_WITH_AS(linear(x, zeros({3})),
                       doctest::Contains("expected x [..., in] and w [out, in]"), Error);
}

}  // namespace resona::testing
