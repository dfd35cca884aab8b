// CUDA against CPU for matmul and linear (ops/matmul.h, cuBLAS through cuda/blas.h):
// forward and backward (the GPU's gradients from the autograd engine against the CPU's),
// on fresh random inputs, float32 and bfloat16, odd sizes (M, K, N from 1, 7, 75, 150,
// 600, 1029), operands stored row- or column-major (a transposed view is read in place),
// broadcast batch dims (folded into rows, into the contraction dim, strided batched with
// stride 0, summed over by successive products), linear with and without bias, weights
// given as the transpose of an [in, out] matrix, 1-D inputs.
//
// Reference: the CPU path in float64 on the same values (bf16-rounded for bfloat16
// cases), so every tolerance is the GPU's own error. GEMM errors are bounded relative to
// the magnitude |A||B| of each dot product (not to |C|, which cancellation can make
// arbitrarily small): that magnitude is computed by running the same op on the CPU on
// |inputs| and |d_out|. u = 2^-24 is float32's unit roundoff.
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "tests/cuda/cuda_check.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

// |got - want| <= rel * mag elementwise, reporting the first element outside it.
void check_within(const std::string& what, const Tensor& got, const Tensor& want, const Tensor& mag,
                  double rel) {
  INFO(what);
  REQUIRE(got.defined());
  REQUIRE(got.shape() == want.shape());
  const std::vector<double> g = values_of(got), w = values_of(want), m = values_of(mag);
  for (size_t i = 0; i < g.size(); ++i) {
    const double err = std::abs(g[i] - w[i]);
    if (!(err <= rel * m[i]) && g[i] != w[i]) {
      INFO("element " << i << " of " << g.size() << ": got " << g[i] << ", expected " << w[i]
                      << " (error " << err << ", allowed " << rel * m[i] << " = " << rel << " * "
                      << m[i] << ")");
      CHECK(false);
      return;
    }
  }
  CHECK(true);
}

// Allowed error relative to sum |a||b| for one GEMM output element: a dot product of
// `k` terms, rounded to the output dtype `roundings` times (successive accumulations).
double gemm_rel(DType dtype, int64_t k, int64_t roundings, bool tensor_cores = true) {
  if (dtype == DType::kFloat32) {
    // TF32: each input keeps a 10-bit mantissa (off by <= 2^-10 of itself if truncated,
    // 2^-11 if rounded), so a product is off by <= ~2^-9 of |a||b|; float32 accumulation
    // of k terms adds <= k*u of sum |a||b|, each output rounding u.
    return (tensor_cores ? std::ldexp(1.0, -9) : 0.0) + (k + roundings) * kU;
  }
  // bfloat16: inputs exact, products exact in float32 (8-bit x 8-bit significands),
  // float32 accumulation k*u; each rounding of the output (|output| <= sum |a||b|) to
  // bf16 adds 2^-8.
  return roundings * kBf + (k + 1) * kU;
}

// An operand: `base` holds its storage; the operand is base.transpose(-2, -1) when
// `transposed` (a column-major matrix, e.g. w.transpose(0, 1)).
struct Operand {
  Tensor base;
  bool transposed = false;
};

struct Run {
  Tensor out;
  std::vector<Tensor> grads;
};

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

// Copies the operands to (dtype, device) as leaves that need grad, runs fn and backward
// with d_out; `abs_values` takes |operands| and |d_out| (the magnitude run).
Run run(const Fn& fn, const std::vector<Operand>& ops, const Tensor& d_out, DType dtype,
        Device device, bool abs_values = false) {
  std::vector<Tensor> leaves;
  for (const Operand& o : ops) {
    if (!o.base.defined()) {
      leaves.push_back(Tensor());
      continue;
    }
    Tensor t = copy_to(abs_values ? abs(o.base) : o.base, dtype, device);
    if (o.transposed) t = t.transpose(-2, -1);
    t.set_requires_grad(true);
    leaves.push_back(t);
  }
  Run r;
  r.out = fn(leaves);
  r.out.backward(copy_to(abs_values ? abs(d_out) : d_out, dtype, device));
  for (const Tensor& t : leaves) r.grads.push_back(t.defined() ? t.grad() : Tensor());
  return r;
}

// Fresh uniform values in [-1, 1), rounded to bf16 for bfloat16 cases.
Tensor random(Generator& gen, const Shape& shape, DType dtype) {
  Tensor t = gen.uniform(shape, -1.0, 1.0);
  return dtype == DType::kBFloat16 ? round_to_bf16(t) : t;
}

Shape swap_last(Shape s) {
  std::swap(s[s.size() - 1], s[s.size() - 2]);
  return s;
}

std::string shape_name(const Shape& s, bool transposed) {
  return shape_str(s) + (transposed ? "^T" : "");
}

// matmul(a, b) with a [..., M, K], b [..., K, N] (shapes as the op sees them).
void check_matmul(const Shape& a_shape, bool at, const Shape& b_shape, bool bt, DType dtype,
                  uint64_t seed) {
  Generator gen(seed);
  const Operand a{random(gen, at ? swap_last(a_shape) : a_shape, dtype), at};
  const Operand b{random(gen, bt ? swap_last(b_shape) : b_shape, dtype), bt};
  const Fn fn = [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); };
  Shape out_shape;
  {
    const Tensor probe =
        fn({at ? a.base.transpose(-2, -1) : a.base, bt ? b.base.transpose(-2, -1) : b.base});
    out_shape = probe.shape();
  }
  const Tensor d_out = random(gen, out_shape, dtype);
  const Run want = run(fn, {a, b}, d_out, DType::kFloat64, Device::cpu());
  const Run mag = run(fn, {a, b}, d_out, DType::kFloat64, Device::cpu(), /*abs_values=*/true);
  const Run got = run(fn, {a, b}, d_out, dtype, Device::cuda());
  REQUIRE(got.out.device().is_cuda());
  REQUIRE(got.out.dtype() == dtype);

  const int64_t M = a_shape[a_shape.size() - 2], K = a_shape.back(), N = b_shape.back();
  const int64_t nb = shape_numel(out_shape) / std::max<int64_t>(M * N, 1);
  // Batch entries summed into one gradient element of a (of b): the broadcast factor.
  const int64_t sum_a =
      nb / std::max<int64_t>(shape_numel(a_shape) / std::max<int64_t>(M * K, 1), 1);
  const int64_t sum_b =
      nb / std::max<int64_t>(shape_numel(b_shape) / std::max<int64_t>(K * N, 1), 1);
  const std::string name = "matmul(a=" + shape_name(a_shape, at) + ",b=" + shape_name(b_shape, bt) +
                           "," + dtype_name(dtype) + ")";
  check_within(name + " out", got.out, want.out, mag.out, gemm_rel(dtype, K, 1));
  // d_a = d_out b^T contracts over N (and the summed batch entries), d_b = a^T d_out over M.
  check_within(name + " d_a", got.grads[0], want.grads[0], mag.grads[0],
               gemm_rel(dtype, N * sum_a, sum_a));
  check_within(name + " d_b", got.grads[1], want.grads[1], mag.grads[1],
               gemm_rel(dtype, M * sum_b, sum_b));
}

// linear(x, w, bias) with x [..., in], w [out, in] (stored as [in, out] when wt).
void check_linear(const Shape& x_shape, int64_t out_features, bool wt, bool with_bias, DType dtype,
                  uint64_t seed) {
  Generator gen(seed);
  const int64_t in = x_shape.back();
  const Operand x{random(gen, x_shape, dtype)};
  const Operand w{random(gen, wt ? Shape{in, out_features} : Shape{out_features, in}, dtype), wt};
  const Operand bias{with_bias ? random(gen, {out_features}, dtype) : Tensor()};
  const Fn fn = [](const std::vector<Tensor>& t) { return linear(t[0], t[1], t[2]); };
  Shape out_shape = x_shape;
  out_shape.back() = out_features;
  const Tensor d_out = random(gen, out_shape, dtype);
  const Run want = run(fn, {x, w, bias}, d_out, DType::kFloat64, Device::cpu());
  const Run mag = run(fn, {x, w, bias}, d_out, DType::kFloat64, Device::cpu(), true);
  const Run got = run(fn, {x, w, bias}, d_out, dtype, Device::cuda());
  REQUIRE(got.out.device().is_cuda());

  const int64_t R = shape_numel(x_shape) / in;
  const std::string name = "linear(x=" + shape_str(x_shape) + ",w=" +
                           shape_name(wt ? Shape{in, out_features} : Shape{out_features, in}, wt) +
                           (with_bias ? ",bias" : "") + "," + dtype_name(dtype) + ")";
  // The bias is added to the rounded product: a second rounding.
  check_within(name + " out", got.out, want.out, mag.out, gemm_rel(dtype, in, 2));
  check_within(name + " d_x", got.grads[0], want.grads[0], mag.grads[0],
               gemm_rel(dtype, out_features, 1));
  check_within(name + " d_w", got.grads[1], want.grads[1], mag.grads[1], gemm_rel(dtype, R, 1));
  if (with_bias) {
    // A column sum of R terms in float32 (no tensor cores), rounded once.
    check_within(name + " d_bias", got.grads[2], want.grads[2], mag.grads[2],
                 gemm_rel(dtype, R, 1, /*tensor_cores=*/false));
  }
}

struct Mkn {
  int64_t m, k, n;
};
const Mkn kSizes[] = {{1, 1, 1},      {1, 7, 75},       {7, 75, 1},     {75, 150, 7},
                      {150, 600, 75}, {600, 1029, 150}, {1029, 75, 600}};

}  // namespace

RESONA_GPU_TEST(
    "matmul CUDA vs CPU, forward and backward (M,K,N in (1,1,1) (1,7,75) (7,75,1) (75,150,7) "
    "(150,600,75) (600,1029,150) (1029,75,600); a, b row- or column-major; float32, "
    "bfloat16)") {
  uint64_t seed = 1000;
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    for (const Mkn& s : kSizes) {
      for (int t = 0; t < 4; ++t) {
        check_matmul({s.m, s.k}, t & 1, {s.k, s.n}, t & 2, dt, seed++);
      }
    }
  }
}

RESONA_GPU_TEST(
    "matmul CUDA vs CPU with batch broadcasting (a [2,3,M,K] b [K,N]; a [M,K] b [4,K,N]; "
    "a [2,1,M,K] b [3,K,N]; a [3,M,K] b [3,N,K]^T; a [5,1,K,M]^T b [1,4,K,N]; "
    "a [2,3,M,K] b [N,K]^T; M,K,N = 7,75,150 and 75,7,1; float32, bfloat16)") {
  uint64_t seed = 2000;
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    for (const Mkn& s : {Mkn{7, 75, 150}, Mkn{75, 7, 1}}) {
      const int64_t M = s.m, K = s.k, N = s.n;
      check_matmul({2, 3, M, K}, false, {K, N}, false, dt, seed++);     // rows fold; d_b folds K
      check_matmul({M, K}, false, {4, K, N}, false, dt, seed++);        // a: batch stride 0
      check_matmul({2, 1, M, K}, false, {3, K, N}, false, dt, seed++);  // both broadcast
      check_matmul({3, M, K}, false, {3, K, N}, true, dt, seed++);      // batched, b col-major
      check_matmul({5, 1, M, K}, true, {1, 4, K, N}, false, dt, seed++);
      check_matmul({2, 3, M, K}, false, {K, N}, true, dt, seed++);  // x @ w^T, folded
    }
  }
}

RESONA_GPU_TEST(
    "matmul/linear CUDA vs CPU, forward and backward (x [2,3,75] w [150,75]; x [150,1029] "
    "w [600,1029] given as [1029,600]^T; x [7] w [1,7]; x [600,150] w [7,150]; with and "
    "without bias; float32, bfloat16)") {
  uint64_t seed = 3000;
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    for (bool bias : {true, false}) {
      check_linear({2, 3, 75}, 150, false, bias, dt, seed++);
      check_linear({150, 1029}, 600, true, bias, dt, seed++);
      check_linear({7}, 1, false, bias, dt, seed++);
      check_linear({600, 150}, 7, false, bias, dt, seed++);
    }
  }
}

TEST_CASE("matmul and linear on CUDA refuse what they do not support, naming op and tensor") {
  if (!cuda_available()) return;
  Tensor a = zeros({2, 3}, DType::kFloat64, Device::cuda());
  Tensor b = zeros({3, 4}, DType::kFloat64, Device::cuda());
  CHECK_THROWS_WITH_AS(matmul(a, b),
                       doctest::Contains("matmul: CUDA supports float32 and bfloat16"), Error);
  Tensor x = zeros({2, 3}, DType::kFloat32, Device::cuda());
  Tensor w = zeros({4, 3}, DType::kFloat32);
  CHECK_THROWS_WITH_AS(linear(x, w), doctest::Contains("linear: tensors on different devices"),
                       Error);
}

}  // namespace resona::testing
