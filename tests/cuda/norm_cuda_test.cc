// CUDA against CPU for rms_norm and layer_norm (ops/norm.h, kernels in cuda/norm.cu):
// forward and backward (the GPU's d_x, d_weight and d_bias from the autograd engine
// against the CPU's), on fresh random inputs, float32 and bfloat16, D = 1, 7, 75, 1029,
// 5000, R = 1, 7, 150, 600 rows, x [2, 3, D], with and without weight and bias, inputs
// with a mean far from zero for layer_norm; d_weight bit-identical across runs.
// The 16-byte vector path and its edges: D = 600, 604, 2048, 4096, 8192 (each register
// plan: a warp per row with 3, 6, 8 vectors per lane, blocks of 256 / 512 threads with 2
// or 4), D = 602 and 8200 (not a whole number of vectors, or too long for float32: the
// scalar path), R = 4100 (hundreds of column chunks, the last one short), and x a view
// one element into its buffer (misaligned: scalar path) or four bf16 / float32 elements in.
//
// Reference: the CPU path in float64 on the same values (bf16-rounded for bfloat16), so
// each tolerance is the GPU's own error, derived where it is set. u = 2^-24 is float32's
// unit roundoff; rounding to bf16 moves a value by <= 2^-8 of itself.
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "ops/norm.h"
#include "tests/cuda/cuda_check.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

struct NormCase {
  bool layer;
  Shape shape;
  bool weight, bias;
};

std::string case_name(const NormCase& c, DType dtype) {
  return std::string(c.layer ? "layer_norm" : "rms_norm") + "(x=" + shape_str(c.shape) +
         (c.weight ? ",weight" : "") + (c.bias ? ",bias" : "") + "," + dtype_name(dtype) + ")";
}

// x on the GPU as `dt`: a fresh tensor, or (offset > 0) a contiguous view `offset`
// elements into a longer buffer, so its data pointer is not 16-byte aligned unless
// offset * size is a multiple of 16.
Tensor x_on_gpu(const Tensor& x, DType dt, int64_t offset) {
  if (offset == 0) return copy_to(x, dt, Device::cuda());
  const int64_t n = x.numel();
  Tensor buf = zeros({offset + n});
  buf.slice(0, offset, offset + n).copy_(x.reshape({n}));
  Tensor dev = copy_to(buf, dt, Device::cuda());
  Shape strides(x.dim(), 1);
  for (int64_t i = x.dim() - 2; i >= 0; --i) strides[i] = strides[i + 1] * x.shape()[i + 1];
  return make_view(dev, x.shape(), strides, offset);
}

void check_norm(const NormCase& c, DType dtype, uint64_t seed, int64_t x_offset = 0) {
  Generator gen(seed);
  const int64_t D = c.shape.back();
  const int64_t R = shape_numel(c.shape) / D;
  // layer_norm sees inputs centred at 3: the mean must be taken out before the variance.
  const double lo = c.layer ? 1.0 : -2.0, hi = c.layer ? 5.0 : 2.0;
  std::vector<Tensor> host = {
      gen.uniform(c.shape, lo, hi), c.weight ? gen.uniform({D}, 0.5, 1.5) : Tensor(),
      c.bias ? gen.uniform({D}, -1.0, 1.0) : Tensor(), gen.uniform(c.shape, -1.0, 1.0)};  // d_y
  if (dtype == DType::kBFloat16) {
    for (Tensor& t : host) {
      if (t.defined()) t = round_to_bf16(t);
    }
  }
  const double eps = c.layer ? 1e-5 : 1e-6;
  auto run = [&](DType dt, Device dev) {
    std::vector<Tensor> in(3);
    for (int i = 0; i < 3; ++i) {
      if (!host[i].defined()) continue;
      in[i] = i == 0 && dev.is_cuda() ? x_on_gpu(host[i], dt, x_offset) : copy_to(host[i], dt, dev);
      in[i].set_requires_grad(true);
    }
    Tensor y = c.layer ? layer_norm(in[0], in[1], in[2], eps) : rms_norm(in[0], in[1], eps);
    y.backward(copy_to(host[3], dt, dev));
    in.insert(in.begin(), y);
    return in;  // y, x, w, b
  };
  const std::vector<Tensor> want = run(DType::kFloat64, Device::cpu());
  const std::vector<Tensor> got = run(dtype, Device::cuda());
  REQUIRE(got[0].device().is_cuda());
  REQUIRE(got[0].dtype() == dtype);

  const std::vector<double> x = values_of(host[0]), dy = values_of(host[3]);
  const std::vector<double> w = c.weight ? values_of(host[1]) : std::vector<double>(D, 1.0);
  const std::vector<double> b = c.bias ? values_of(host[2]) : std::vector<double>(D, 0.0);
  const std::vector<double> y = values_of(want[0]), dx = values_of(want[1].grad());
  const bool bf = dtype == DType::kBFloat16;

  // Each row sum on the GPU (of x, (x - mu)^2, d_y w, d_y w xhat) is float32 over
  // per-thread partials of <= ceil(D/32) terms and <= 10 tree levels: off by at most
  // (D/32 + 10)u of the sum of |terms|. mu is thus off by (D/32 + 10)u mean|x|, which
  // moves xhat = (x - mu) r by that times r; r = 1/sqrt(var + eps) is off by half the
  // variance's error plus 3u (sqrt, division). `k` folds these with a factor 2 of margin.
  const double k = 2.0 * (static_cast<double>(D) / 32 + 16) * kU;
  std::vector<double> y_bound(y.size()), dx_bound(y.size());
  std::vector<double> xhat(y.size()), xhat_err(y.size());
  std::vector<double> dw_mag(D, 0.0), dw_xerr(D, 0.0), db_mag(D, 0.0);
  for (int64_t r = 0; r < R; ++r) {
    const double* xr = &x[r * D];
    double mu = 0, mean_abs = 0;
    for (int64_t j = 0; j < D; ++j) {
      mu += c.layer ? xr[j] / D : 0.0;
      mean_abs += std::abs(xr[j]) / D;
    }
    double var = 0;
    for (int64_t j = 0; j < D; ++j) var += (xr[j] - mu) * (xr[j] - mu) / D;
    const double rs = 1 / std::sqrt(var + eps);
    double mean_g = 0, mean_gx = 0;
    for (int64_t j = 0; j < D; ++j) {
      const int64_t i = r * D + j;
      xhat[i] = (xr[j] - mu) * rs;
      xhat_err[i] = k * (std::abs(xhat[i]) + (c.layer ? rs * mean_abs : 0.0) + 1);
      const double g = std::abs(dy[i] * w[j]);
      mean_g += g / D;
      mean_gx += g * std::abs(xhat[i]) / D;
      // y = xhat w + b, rounded twice more in float32, once to bf16.
      y_bound[i] = xhat_err[i] * std::abs(w[j]) + 3 * kU * (std::abs(y[i]) + std::abs(b[j])) +
                   (bf ? kBf * std::abs(y[i]) : 0);
      dw_mag[j] += std::abs(dy[i] * xhat[i]);
      dw_xerr[j] += std::abs(dy[i]) * xhat_err[i];
      db_mag[j] += std::abs(dy[i]);
    }
    for (int64_t j = 0; j < D; ++j) {
      // d_x = r (g - mean(g) - xhat mean(g xhat)): each term's magnitude times the error
      // of the quantities it is built from (xhat, r, the two row sums), then bf16.
      const int64_t i = r * D + j;
      const double g = std::abs(dy[i] * w[j]);
      const double mag = rs * (g + (c.layer ? mean_g : 0.0) + std::abs(xhat[i]) * mean_gx);
      const double xe = xhat_err[i] + k;  // xhat's error, and r's relative one
      dx_bound[i] = xe * (mag + rs * mean_gx + rs * std::abs(xhat[i]) * mean_g * (1 + xe)) +
                    (bf ? kBf * std::abs(dx[i]) : 0);
    }
  }
  const std::string name =
      case_name(c, dtype) + (x_offset ? ",x at offset " + std::to_string(x_offset) : "");
  check_bound(name + " y", got[0], y, y_bound);
  check_bound(name + " d_x", got[1].grad(), dx, dx_bound);
  // d_w = sum_rows d_y xhat, d_b = sum_rows d_y: xhat's error summed, plus the two-stage
  // float32 sum, then bf16. A chunk holds L = max(8, ceil(R / 512)) rows (cuda/norm.h),
  // summed by one thread in order (at most L terms, then <= 8 warps or lanes); the <= 512
  // chunk partials go to 16 lanes in order (<= 32 terms each), then the 16 lanes: at
  // most L + 8 + 32 + 16 additions in any path.
  const double chunk_len = std::max<double>(8, std::ceil(static_cast<double>(R) / 512));
  const double col_rel = (chunk_len + 56) * kU;
  if (c.weight) {
    const std::vector<double> dw = values_of(want[2].grad());
    std::vector<double> bound(D);
    for (int64_t j = 0; j < D; ++j) {
      bound[j] = dw_xerr[j] + col_rel * dw_mag[j] + (bf ? kBf * std::abs(dw[j]) : 0);
    }
    check_bound(name + " d_weight", got[2].grad(), dw, bound);
  }
  if (c.bias) {
    const std::vector<double> db = values_of(want[3].grad());
    std::vector<double> bound(D);
    for (int64_t j = 0; j < D; ++j) {
      bound[j] = col_rel * db_mag[j] + (bf ? kBf * std::abs(db[j]) : 0);
    }
    check_bound(name + " d_bias", got[3].grad(), db, bound);
  }
}

}  // namespace

RESONA_GPU_TEST(
    "rms_norm and layer_norm CUDA vs CPU, forward and backward (R=1,7,150,600; "
    "D=1,7,75,1029,5000; x [2,3,75]; weight and bias or none; float32, bfloat16)") {
  uint64_t seed = 70;
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    for (int64_t D : {1, 7, 75, 1029, 5000}) {
      for (int64_t R : {1, 7, 150, 600}) {
        check_norm({false, {R, D}, true, false}, dt, seed++);
        check_norm({true, {R, D}, true, true}, dt, seed++);
      }
    }
    check_norm({false, {2, 3, 75}, false, false}, dt, seed++);
    check_norm({true, {2, 3, 75}, false, false}, dt, seed++);
    check_norm({true, {7, 1029}, true, false}, dt, seed++);
    check_norm({true, {150, 75}, false, true}, dt, seed++);
  }
}

RESONA_GPU_TEST(
    "rms_norm and layer_norm CUDA vs CPU, vector path and edges (D=600,604,2048,4096,8192; "
    "D=602,8200 scalar; R=4100 many chunks; x misaligned by 1 element or offset by 4; "
    "float32, bfloat16)") {
  uint64_t seed = 900;
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    for (auto [R, D] : std::vector<std::pair<int64_t, int64_t>>{{300, 600},
                                                                {33, 604},
                                                                {20, 2048},
                                                                {40, 4096},
                                                                {3, 8192},
                                                                {33, 602},
                                                                {2, 8200},
                                                                {4100, 64},
                                                                {1, 1}}) {
      check_norm({false, {R, D}, true, false}, dt, seed++);
      check_norm({true, {R, D}, true, true}, dt, seed++);
    }
    check_norm({true, {4100, 600}, false, true}, dt, seed++);
    for (int64_t offset : {1, 4}) {
      check_norm({false, {50, 600}, true, false}, dt, seed++, offset);
      check_norm({true, {50, 600}, true, true}, dt, seed++, offset);
      check_norm({true, {7, 4096}, true, true}, dt, seed++, offset);
    }
  }
}

RESONA_GPU_TEST(
    "rms_norm and layer_norm on CUDA: d_weight and d_bias bit-identical across runs "
    "(R=4096,D=1029)") {
  Generator gen(5);
  const Tensor x = copy_to(gen.uniform({4096, 1029}, -2.0, 2.0), DType::kFloat32, Device::cuda());
  const Tensor dy = copy_to(gen.uniform({4096, 1029}, -1.0, 1.0), DType::kFloat32, Device::cuda());
  const Tensor w0 = copy_to(gen.uniform({1029}, 0.5, 1.5), DType::kFloat32, Device::cuda());
  const Tensor b0 = copy_to(gen.uniform({1029}, -1.0, 1.0), DType::kFloat32, Device::cuda());
  std::vector<std::vector<double>> dws, dbs;
  for (int rep = 0; rep < 2; ++rep) {
    Tensor w = w0.detach().set_requires_grad(true);
    Tensor b = b0.detach().set_requires_grad(true);
    layer_norm(x, w, b).backward(dy);
    dws.push_back(values_of(w.grad()));
    dbs.push_back(values_of(b.grad()));
  }
  CHECK(dws[0] == dws[1]);
  CHECK(dbs[0] == dbs[1]);
}

TEST_CASE("rms_norm and layer_norm on CUDA refuse float64 and mixed devices, naming them") {
  if (!cuda_available()) return;
  Tensor x = zeros({2, 3}, DType::kFloat64, Device::cuda());
  CHECK_THROWS_WITH_AS(rms_norm(x, Tensor()),
                       doctest::Contains("rms_norm: CUDA supports float32 and bfloat16"), Error);
  Tensor xf = zeros({2, 3}, DType::kFloat32, Device::cuda());
  Tensor w = ones({3});
  CHECK_THROWS_WITH_AS(layer_norm(xf, w, Tensor()), doctest::Contains("is not on the device of x"),
                       Error);
}

}  // namespace resona::testing
