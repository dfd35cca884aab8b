// CUDA against CPU for softmax and log_softmax (ops/softmax.h, kernels in
// cuda/softmax.cu): forward and backward (the GPU's gradient from the autograd engine
// against the CPU's), on fresh random inputs in [-4, 4), float32 and bfloat16, row
// lengths n = 1, 7, 75, 1029, 5000, 32000, rows R = 1, 7, 150, and dims other than the
// last (moved last by a transpose and a strided copy, then back); then row lengths at
// each bound of the vector kernels (a warp per row with 1, 2, 4, 8 vectors per lane, a
// block of 256 with 2, 4, 8, the streaming block beyond), misaligned x and d_y (the
// scalar kernels), and bit-identical repeats.
//
// Reference: the CPU path in float64 on the same values (bf16-rounded for bfloat16),
// so every tolerance below is the GPU's own error; each is derived where it is set.
// u = 2^-24 is float32's unit roundoff; rounding to bf16 moves a value by <= 2^-8 of it.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "ops/softmax.h"
#include "tests/cuda/cuda_check.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

// x [shape] seen as [outer, n, inner] around `dim`: element (o, j, i).
struct Rows {
  int64_t outer = 1, n = 1, inner = 1;
  int64_t at(int64_t o, int64_t j, int64_t i) const { return (o * n + j) * inner + i; }
};

// `t` (CPU) on the GPU as `dtype`, as a contiguous view one element into a flat buffer
// (a base 4 or 2 bytes off a 16-byte boundary) when `offset`; `leaf` gets the buffer.
Tensor on_cuda(const Tensor& t, DType dtype, bool offset, Tensor* leaf) {
  if (!offset) {
    *leaf = copy_to(t, dtype, Device::cuda());
    return *leaf;
  }
  std::vector<float> v(1, 0.f);
  for (double e : values_of(t)) v.push_back(static_cast<float>(e));
  const int64_t n = t.numel();
  *leaf = copy_to(from_vector(v, {n + 1}), dtype, Device::cuda());
  return leaf->slice(0, 1, n + 1).reshape(t.shape());
}

// offset: x and d_y misaligned views while y and d_x are fresh (aligned) tensors, so
// their pointers sit at different offsets from a 16-byte boundary (the scalar kernels).
void check_softmax(bool log, const Shape& shape, int64_t dim, DType dtype, uint64_t seed,
                   bool offset = false) {
  Generator gen(seed);
  Tensor x = gen.uniform(shape, -4.0, 4.0);
  Tensor dy = gen.uniform(shape, -1.0, 1.0);
  if (dtype == DType::kBFloat16) {
    x = round_to_bf16(x);
    dy = round_to_bf16(dy);
  }
  auto fn = [&](const Tensor& t) { return log ? log_softmax(t, dim) : softmax(t, dim); };

  Tensor x64 = copy_to(x, DType::kFloat64, Device::cpu()).set_requires_grad(true);
  Tensor y64 = fn(x64);
  y64.backward(copy_to(dy, DType::kFloat64, Device::cpu()));
  Tensor xg_leaf, dy_leaf;
  on_cuda(x, dtype, offset, &xg_leaf);
  xg_leaf.set_requires_grad(true);
  const Tensor xg = offset ? xg_leaf.slice(0, 1, xg_leaf.size(0)).reshape(shape) : xg_leaf;
  Tensor yg = fn(xg);
  yg.backward(on_cuda(dy, dtype, offset, &dy_leaf));
  const Tensor xg_grad =
      offset ? xg_leaf.grad().slice(0, 1, xg_leaf.size(0)).reshape(shape) : xg_leaf.grad();
  REQUIRE(yg.device().is_cuda());
  REQUIRE(yg.dtype() == dtype);
  REQUIRE(yg.shape() == shape);

  Rows g;
  const int64_t d = dim < 0 ? dim + static_cast<int64_t>(shape.size()) : dim;
  for (int64_t i = 0; i < d; ++i) g.outer *= shape[i];
  g.n = shape[d];
  for (size_t i = d + 1; i < shape.size(); ++i) g.inner *= shape[i];
  const int64_t n = g.n;

  const std::vector<double> xv = values_of(x), dyv = values_of(dy);
  const std::vector<double> y = values_of(y64), dx = values_of(x64.grad());
  std::vector<double> y_bound(y.size()), dx_bound(y.size());
  // The row's sums are float32: per-thread partials of <= ceil(n/32) terms, then <= 10
  // tree levels and rescalings; each term carries <= 12u (x - m rounded, |x - m| < 8, and
  // expf's 2 ulp). So a sum is off by <= (n/32 + 40)u of its magnitude; with a factor 2
  // of margin, s_rel below.
  const double s_rel = (2.0 * (static_cast<double>(n) / 32 + 40)) * kU;
  const bool bf = dtype == DType::kBFloat16;
  for (int64_t o = 0; o < g.outer; ++o) {
    for (int64_t i = 0; i < g.inner; ++i) {
      double sum_dy = 0, sum_dyy = 0;
      for (int64_t j = 0; j < n; ++j) {
        const int64_t k = g.at(o, j, i);
        sum_dy += std::abs(dyv[k]);
        sum_dyy += std::abs(dyv[k] * (log ? std::exp(y[k]) : y[k]));
      }
      for (int64_t j = 0; j < n; ++j) {
        const int64_t k = g.at(o, j, i);
        if (!log) {
          // y = exp(x - m) / s: 12u for the exp, s_rel for s, 2u for 1/s and the product.
          const double fwd_rel = 14 * kU + s_rel;
          y_bound[k] = (fwd_rel + (bf ? kBf : 0)) * std::abs(y[k]);
          // d_x = y (d_y - sum(d_y y)): the GPU's y is off by the forward bound (and by the
          // bf16 rounding of the saved y), the sum by s_rel, the result rounded once more.
          const double mag = std::abs(y[k]) * (std::abs(dyv[k]) + sum_dyy);
          dx_bound[k] = (2 * fwd_rel + s_rel + 4 * kU + (bf ? 3 * kBf : 0)) * mag;
        } else {
          // y = x - lse, lse = m + log s: the log of s is off by s_rel + 2 ulp of log s,
          // lse and x - lse by one rounding each (|x|, |lse| < 4 + log n).
          const double lse = xv[k] - y[k];
          const double y_err = s_rel + 4 * kU * (std::abs(xv[k]) + 2 * std::abs(lse) + 1);
          y_bound[k] = y_err + (bf ? kBf * std::abs(y[k]) : 0);
          // d_x = d_y - exp(y) sum(d_y): exp of the GPU's saved y is off by its error (plus
          // the bf16 rounding of y, |y| 2^-8, which exp turns into ~1.1x that relative),
          // sum(d_y) by s_rel; the result is rounded once more.
          const double e = std::exp(y[k]);
          const double saved_err = y_bound[k] * 1.1 + 4 * kU;
          dx_bound[k] = e * sum_dy * (saved_err + s_rel) +
                        (2 * kU + (bf ? kBf : 0)) * (std::abs(dyv[k]) + e * sum_dy);
        }
      }
    }
  }
  const std::string name = std::string(log ? "log_softmax" : "softmax") + "(x=" + shape_str(shape) +
                           (offset ? " offset1" : "") + ",dim=" + std::to_string(dim) + "," +
                           dtype_name(dtype) + ")";
  check_bound(name + " y", yg, y, y_bound);
  check_bound(name + " d_x", xg_grad, dx, dx_bound);
}

}  // namespace

RESONA_GPU_TEST(
    "softmax and log_softmax CUDA vs CPU, last dim (R=1,7,150; n=1,7,75,1029,5000,32000; "
    "float32, bfloat16)") {
  uint64_t seed = 10;
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    for (bool log : {false, true}) {
      for (int64_t n : {1, 7, 75, 1029, 5000, 32000}) {
        for (int64_t R : {1, 7, 150}) check_softmax(log, {R, n}, -1, dt, seed++);
      }
      check_softmax(log, {2, 3, 75}, 2, dt, seed++);
    }
  }
}

RESONA_GPU_TEST(
    "softmax and log_softmax CUDA vs CPU, other dims through a transpose (x [75,3,5] dim 0; "
    "x [3,1029,2] dim 1; x [7] dim 0; float32, bfloat16)") {
  uint64_t seed = 500;
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    for (bool log : {false, true}) {
      check_softmax(log, {75, 3, 5}, 0, dt, seed++);
      check_softmax(log, {3, 1029, 2}, 1, dt, seed++);
      check_softmax(log, {7}, 0, dt, seed++);
    }
  }
}

RESONA_GPU_TEST(
    "softmax and log_softmax CUDA vs CPU at the vector kernels' bounds (R=3; float32 n=128, "
    "129, 256, 1024, 1025, 4096, 8192, 8193, 20000; bfloat16 n=256, 257, 1024, 1025, 4096, "
    "8192, 8193; with x and d_y misaligned views for n=1024, 4096: the scalar kernels)") {
  uint64_t seed = 900;
  for (bool log : {false, true}) {
    for (int64_t n : {128, 129, 256, 1024, 1025, 4096, 8192, 8193, 20000}) {
      check_softmax(log, {3, n}, -1, DType::kFloat32, seed++);
    }
    for (int64_t n : {256, 257, 1024, 1025, 4096, 8192, 8193}) {
      check_softmax(log, {3, n}, -1, DType::kBFloat16, seed++);
    }
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      for (int64_t n : {1024, 4096}) check_softmax(log, {3, n}, -1, dt, seed++, /*offset=*/true);
    }
  }
}

RESONA_GPU_TEST(
    "softmax on CUDA is deterministic: bit-identical repeats, forward and backward (x = "
    "[64,4096], [5,20000], [300,75]; float32)") {
  Generator gen(31);
  for (const Shape& shape : {Shape{64, 4096}, Shape{5, 20000}, Shape{300, 75}}) {
    INFO("x=" << shape_str(shape));
    Tensor x = copy_to(gen.uniform(shape, -4, 4), DType::kFloat32, Device::cuda());
    Tensor dy = copy_to(gen.uniform(shape, -1, 1), DType::kFloat32, Device::cuda());
    auto run = [&] {
      Tensor leaf = x.detach().set_requires_grad(true);
      Tensor y = softmax(leaf, -1);
      y.backward(dy);
      std::vector<double> v = values_of(y), g = values_of(leaf.grad());
      v.insert(v.end(), g.begin(), g.end());
      return v;
    };
    const std::vector<double> first = run();
    for (int rep = 0; rep < 2; ++rep) CHECK(run() == first);
  }
}

TEST_CASE("softmax on CUDA refuses float64, naming the op and the tensor") {
  if (!cuda_available()) return;
  Tensor x = zeros({2, 3}, DType::kFloat64, Device::cuda());
  CHECK_THROWS_WITH_AS(softmax(x), doctest::Contains("softmax: CUDA supports float32 and bfloat16"),
                       Error);
}

}  // namespace resona::testing
