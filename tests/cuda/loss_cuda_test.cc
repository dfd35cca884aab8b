// CUDA against CPU for cross_entropy (ops/loss.h, kernels in cuda/loss.cu): forward and
// backward (the GPU's d_logits from the autograd engine against the CPU's), on fresh
// random logits in [-8, 8), float32 and bfloat16 logits, int64 and int32 targets,
// vocabularies V = 1, 7, 1029, 5000, 32000 (a warp per row up to 1024, blocks beyond),
// N = 1, 7, 150 rows with about a quarter ignored (ignore_index -100, and a custom one),
// reductions mean, sum and none; all rows ignored; out-of-range targets reported; the
// mean bit-for-bit the same on a second run.
//
// Reference: the CPU path in float64 on the same logits (bf16-rounded for bfloat16). On
// CUDA the loss is float32 for either logits dtype. u = 2^-24 is float32's unit
// roundoff; rounding to bf16 moves a value by <= 2^-8 of itself.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "ops/loss.h"
#include "tests/cuda/cuda_check.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

const char* reduction_name(Reduction r) {
  switch (r) {
    case Reduction::kMean:
      return "mean";
    case Reduction::kSum:
      return "sum";
    case Reduction::kNone:
      return "none";
  }
  return "?";
}

// Targets uniform in [0, V), with each row ignored with probability `ignored`.
Tensor random_targets(Generator& gen, int64_t N, int64_t V, int64_t ignore_index, double ignored,
                      DType index_dtype) {
  std::vector<double> t(N);
  for (int64_t i = 0; i < N; ++i) {
    t[i] = gen.next_double() < ignored ? static_cast<double>(ignore_index)
                                       : static_cast<double>(gen.next_int(0, V));
  }
  return from_vector_as(t, {N}, index_dtype);
}

// The logits on the GPU as `dt`: a fresh tensor, or (offset > 0) a contiguous [N, V] view
// `offset` elements into a longer buffer, so row starts sit at other 16-byte offsets.
Tensor logits_on_gpu(const Tensor& x, DType dt, int64_t offset) {
  if (offset == 0) return copy_to(x, dt, Device::cuda());
  const int64_t n = x.numel();
  Tensor buf = zeros({offset + n});
  buf.slice(0, offset, offset + n).copy_(x.reshape({n}));
  return make_view(copy_to(buf, dt, Device::cuda()), x.shape(), {x.shape()[1], 1}, offset);
}

void check_cross_entropy(int64_t N, int64_t V, DType dtype, DType index_dtype, Reduction red,
                         int64_t ignore_index, double ignored, uint64_t seed,
                         int64_t x_offset = 0) {
  Generator gen(seed);
  Tensor x = gen.uniform({N, V}, -8.0, 8.0);
  if (dtype == DType::kBFloat16) x = round_to_bf16(x);
  const Tensor t = random_targets(gen, N, V, ignore_index, ignored, index_dtype);
  const Tensor d_loss = gen.uniform(red == Reduction::kNone ? Shape{N} : Shape{}, 0.5, 2.0);

  Tensor x64 = copy_to(x, DType::kFloat64, Device::cpu()).set_requires_grad(true);
  Tensor l64 = cross_entropy(x64, t, ignore_index, red);
  l64.backward(copy_to(d_loss, DType::kFloat64, Device::cpu()));
  Tensor xg = logits_on_gpu(x, dtype, x_offset);
  xg.set_requires_grad(true);
  Tensor lg = cross_entropy(xg, copy_to(t, index_dtype, Device::cuda()), ignore_index, red);
  REQUIRE(lg.device().is_cuda());
  REQUIRE(lg.dtype() == DType::kFloat32);  // fp32 loss on CUDA, also for bf16 logits
  lg.backward(copy_to(d_loss, DType::kFloat32, Device::cuda()));

  const std::vector<double> xv = values_of(x), tv = values_of(t), dl = values_of(d_loss);
  const std::vector<double> loss = values_of(l64), dx = values_of(x64.grad());
  // Per row, float32 on the GPU: the sum s of exp(x - m) splits into per-thread partials
  // of <= ceil(V/32) terms and <= 10 tree levels and rescalings, each term carrying
  // <= 36u: it is 2^(x log2e - m log2e) by ex2.approx (relative error 2^-22 = 4u) with
  // |x|, |m| <= 8, so the argument's three roundings (log2e, m log2e, the FMA) are off by
  // <= 46u in log2 units, 32u relative after the power. s is off by at most
  // (V/32 + 46)u of itself, so log s by that much absolutely (s_err = 2 (V/32 + 40)u
  // covers it, with a margin >= 1.7 at V = 1). loss_i = (m - x_t) + log s adds logf's 2
  // ulp and two roundings.
  const double s_err = 2.0 * (static_cast<double>(V) / 32 + 40) * kU;
  std::vector<double> row_bound(N, 0.0), lse(N, 0.0);
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t ti = static_cast<int64_t>(tv[i]);
    if (ti == ignore_index) continue;
    ++count;
    double m = -INFINITY, s = 0;
    for (int64_t j = 0; j < V; ++j) m = std::max(m, xv[i * V + j]);
    for (int64_t j = 0; j < V; ++j) s += std::exp(xv[i * V + j] - m);
    lse[i] = m + std::log(s);
    row_bound[i] =
        s_err +
        4 * kU * (std::abs(m - xv[i * V + ti]) + 2 * std::abs(std::log(s)) + std::abs(m) + 1);
  }
  double sum_bound = 0, sum_loss = 0;
  for (int64_t i = 0; i < N; ++i) sum_bound += row_bound[i];
  for (double l : loss) sum_loss += std::abs(l);
  std::vector<double> loss_bound;
  if (red == Reduction::kNone) {
    loss_bound = row_bound;
  } else if (red == Reduction::kSum) {
    loss_bound = {sum_bound + kU * sum_loss};  // float64 sum, one float32 rounding
  } else {
    loss_bound = {(count > 0 ? sum_bound / count : 0) + kU * sum_loss};
  }
  // d_x = (exp(x - lse) - onehot) g: lse is off by row_bound (the same sums); p =
  // 2^(x log2e - lse log2e) by ex2.approx is off by 4u plus the argument's three
  // roundings, u (|x| + |lse| + |x - lse|) relative; g (d_loss / count) by one
  // rounding, and the products by two more; bf16 d_x is rounded once more (2^-8).
  std::vector<double> dx_bound(dx.size(), 0.0);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t ti = static_cast<int64_t>(tv[i]);
    if (ti == ignore_index) continue;  // exact zeros
    const double g = red == Reduction::kNone  ? dl[i]
                     : red == Reduction::kSum ? dl[0]
                                              : dl[0] / count;
    for (int64_t j = 0; j < V; ++j) {
      const double p = std::exp(xv[i * V + j] - lse[i]);
      const double x = xv[i * V + j];
      const double e =
          p * (row_bound[i] + kU * (std::abs(x) + std::abs(lse[i]) + std::abs(x - lse[i]) + 8));
      dx_bound[i * V + j] = std::abs(g) * (e + 4 * kU * (p + (j == ti ? 1 : 0))) +
                            (dtype == DType::kBFloat16 ? kBf * std::abs(dx[i * V + j]) : 0);
    }
  }
  const std::string name = "cross_entropy(N=" + std::to_string(N) + ",V=" + std::to_string(V) +
                           "," + dtype_name(dtype) + ",targets " + dtype_name(index_dtype) + "," +
                           reduction_name(red) + ",ignore_index=" + std::to_string(ignore_index) +
                           ",ignored=" + std::to_string(ignored) +
                           (x_offset ? ",logits at offset " + std::to_string(x_offset) : "") + ")";
  check_bound(name + " loss", lg, loss, loss_bound);
  check_bound(name + " d_logits", xg.grad(), dx, dx_bound);
  REQUIRE(xg.grad().dtype() == dtype);  // one logits-sized buffer in the logits' dtype
}

}  // namespace

RESONA_GPU_TEST(
    "cross_entropy CUDA vs CPU, forward and backward (N=1,7,150; V=1,7,1029,5000,32000; "
    "mean, sum, none; ~1/4 rows ignored; float32, bfloat16 logits; int64 and int32 "
    "targets)") {
  uint64_t seed = 40;
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    for (int64_t V : {1, 7, 1029, 5000, 32000}) {
      for (int64_t N : {1, 7, 150}) {
        for (Reduction red : {Reduction::kMean, Reduction::kSum, Reduction::kNone}) {
          const DType idx = (seed % 2) ? DType::kInt32 : DType::kInt64;
          check_cross_entropy(N, V, dt, idx, red, kIgnoreIndex, 0.25, seed++);
        }
      }
    }
    // A custom ignore_index inside [0, V), and every row ignored.
    check_cross_entropy(150, 32000, dt, DType::kInt64, Reduction::kMean, 3, 0.25, seed++);
    check_cross_entropy(7, 1029, dt, DType::kInt64, Reduction::kMean, kIgnoreIndex, 1.0, seed++);
    check_cross_entropy(7, 1029, dt, DType::kInt32, Reduction::kSum, kIgnoreIndex, 1.0, seed++);
  }
}

RESONA_GPU_TEST(
    "cross_entropy CUDA vs CPU, vector path edges (V=32000,4096,8,1031,1; logits at offsets "
    "1, 2, 4, 8 elements; mean, none; ignore_index -100 and 0)") {
  uint64_t seed = 300;
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    // V a whole number of vectors, exactly one vector, and not.
    for (int64_t V : {32000, 4096, 8, 1031, 1}) {
      check_cross_entropy(33, V, dt, DType::kInt64, Reduction::kMean, kIgnoreIndex, 0.25, seed++);
    }
    // Misaligned and offset views: scalar heads and tails in the forward; the backward's
    // d_logits (a fresh buffer) then sits at another 16-byte offset than the logits unless
    // the offset is a whole vector.
    for (int64_t offset : {1, 2, 4, 8}) {
      check_cross_entropy(20, 32000, dt, DType::kInt32, Reduction::kNone, kIgnoreIndex, 0.25,
                          seed++, offset);
      check_cross_entropy(9, 1031, dt, DType::kInt64, Reduction::kMean, 0, 0.25, seed++, offset);
    }
  }
}

RESONA_GPU_TEST(
    "cross_entropy on CUDA: the mean and d_logits are bit-identical across runs "
    "(N=600,V=32000,float32 and bfloat16)") {
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    Generator gen(77);
    const Tensor x = copy_to(gen.uniform({600, 32000}, -8.0, 8.0), dt, Device::cuda());
    const Tensor t = copy_to(random_targets(gen, 600, 32000, kIgnoreIndex, 0.25, DType::kInt64),
                             DType::kInt64, Device::cuda());
    std::vector<double> losses;
    std::vector<std::vector<double>> grads;
    for (int rep = 0; rep < 2; ++rep) {
      Tensor xl = x.detach().set_requires_grad(true);
      Tensor l = cross_entropy(xl, t);
      l.backward();
      losses.push_back(l.item());
      grads.push_back(values_of(xl.grad()));
    }
    INFO(dtype_name(dt));
    CHECK(losses[0] == losses[1]);
    CHECK(grads[0] == grads[1]);
  }
}

RESONA_GPU_TEST(
    "cross_entropy on CUDA reports out-of-range targets (V=32000: target 32000 at "
    "row 5, target -1 at row 2) and refuses float64 logits") {
  Tensor x = zeros({7, 32000}, DType::kFloat32, Device::cuda());
  std::vector<int64_t> t = {0, 1, 2, 3, 4, 32000, 6};
  CHECK_THROWS_WITH_AS(
      cross_entropy(x, copy_to(from_vector(t, {7}), DType::kInt64, Device::cuda())),
      doctest::Contains("target 32000 at row 5 is out of range [0, 32000)"), Error);
  t = {0, 1, -1, 3, 4, 32000, 6};
  CHECK_THROWS_WITH_AS(
      cross_entropy(x, copy_to(from_vector(t, {7}), DType::kInt64, Device::cuda())),
      doctest::Contains("target -1 at row 2 is out of range"), Error);
  Tensor x64 = zeros({2, 3}, DType::kFloat64, Device::cuda());
  Tensor t2 = zeros({2}, DType::kInt64, Device::cuda());
  CHECK_THROWS_WITH_AS(cross_entropy(x64, t2),
                       doctest::Contains("cross_entropy: CUDA supports float32 and bfloat16"),
                       Error);
}

}  // namespace resona::testing
