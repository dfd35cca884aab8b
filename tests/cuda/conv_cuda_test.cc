// CUDA against CPU for causal_conv1d: forward and the backward run by the autograd
// engine on the GPU (d_x, d_weight, d_bias), float32 and bfloat16, W = 2..8, T < W,
// odd B/T/D, many time chunks and B > 1024 (the d_weight reduction's other chunking),
// strided x, weight, bias and d_y; d_weight/d_bias bit-identical over reruns. The
// channel-group path (D a multiple of 4, unit channel stride, aligned): D = 4 .. 1200,
// T not a multiple of the chunk or of the steps loaded ahead, x and d_y as views one
// element in (misaligned: the scalar path) and four elements in with padded rows. The
// 16-byte path (bfloat16 with D a multiple of 8, 8-element strides, 16-byte aligned):
// D = 8 .. 1200, D a multiple of 4 but not 8 (the 4-channel path), views eight elements in
// with rows padded by 8 (16-byte path) and four in (4-channel path), T < W, T not a
// multiple of the steps loaded at once, B * T large, and the weight strided or at offset 1
// (that forward reads the weight as given, 16 bytes at a time only when packed and
// aligned, and writes the transposed copy the backward reads).
//
// The CPU reference runs in float32 on the same inputs (bf16-rounded for bfloat16).
// Tolerances, per element, with S the same sum over |terms| (the CPU op on |x|, |w|,
// |bias|, |d_y|) and u = 2^-24:
//   y (W + 1 terms) and d_x (W terms): each side's float32 sum (with or without FMA) is
//     within n u S of the exact one, so they differ by at most 2 n u S.
//   d_weight, d_bias: the CPU sums B*T terms in float64 and rounds once (u |c|); the GPU
//     sums a time chunk, then the chunk partials, in float32: within (len + chunks) u S,
//     and len + chunks <= (B + 1) T.
//   bfloat16: the GPU rounds its float32 result once: 2^-8 of the value on top.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "ops/conv.h"
#include "ops/elementwise.h"
#include "tests/cuda/cuda_check.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

constexpr double kU32 = 1.0 / 16777216.0;
constexpr double kBf16Rel = 1.0 / 256;

// x [B, T, D] (CPU float32) on the GPU as `dtype`, as a view `offset` elements into a
// buffer whose rows are `pad` elements longer than D: offset 1 misaligns every row (the
// scalar path), offset 4 with pad 4 keeps 4-channel groups aligned with strides other
// than contiguous ones (the channel-group path; for bfloat16 8-byte aligned only, so the
// 4-channel kernels), offset 8 with pad 8 keeps 8-channel groups 16-byte aligned (the
// bfloat16 16-byte path with strides other than contiguous ones).
Tensor to_cuda_view(const Tensor& x, DType dtype, int64_t offset, int64_t pad) {
  const int64_t B = x.shape()[0], T = x.shape()[1], D = x.shape()[2];
  const Shape strides = {T * (D + pad), D + pad, 1};
  Tensor buf = zeros({offset + B * T * (D + pad)});
  make_view(buf, x.shape(), strides, offset).copy_(x);
  return make_view(copy_to(buf, dtype, Device::cuda()), x.shape(), strides, offset);
}

// w [D, W] (CPU float32) on the GPU as `dtype`, contiguous strides one element into a
// buffer: not 16-byte aligned, so read one element at a time.
Tensor weight_at_offset1(const Tensor& w, DType dtype) {
  const int64_t D = w.shape()[0], W = w.shape()[1];
  Tensor buf = zeros({1 + D * W});
  make_view(buf, w.shape(), {W, 1}, 1).copy_(w);
  return make_view(copy_to(buf, dtype, Device::cuda()), w.shape(), {W, 1}, 1);
}

Tensor as_leaf(Tensor t) {
  t.set_requires_grad(true);
  return t;
}

struct ConvCase {
  int64_t B, T, D, W;
  bool bias;
};

// Layouts of the GPU inputs: fresh contiguous tensors, strided views (to_cuda), x / d_y
// as views at an offset (to_cuda_view), and contiguous x / d_y with the weight alone
// strided ([W, D] storage) or at offset 1 (the forward reads the weight as given).
enum class Layout {
  kContiguous,
  kStrided,
  kOffset1,
  kOffset4Padded,
  kOffset8Padded,
  kWeightStrided,
  kWeightOffset1
};

std::string case_name(const ConvCase& c, DType dt, Layout layout) {
  return "causal_conv1d(B=" + std::to_string(c.B) + ",T=" + std::to_string(c.T) +
         ",D=" + std::to_string(c.D) + ",W=" + std::to_string(c.W) +
         ",bias=" + (c.bias ? "yes" : "no") + "," + dtype_name(dt) +
         (layout == Layout::kStrided         ? ",strided"
          : layout == Layout::kOffset1       ? ",x and d_y at offset 1"
          : layout == Layout::kOffset4Padded ? ",x and d_y at offset 4, rows padded by 4"
          : layout == Layout::kOffset8Padded ? ",x and d_y at offset 8, rows padded by 8"
          : layout == Layout::kWeightStrided ? ",weight strided"
          : layout == Layout::kWeightOffset1 ? ",weight at offset 1"
                                             : "") +
         ")";
}

struct Grads3 {
  Tensor y, d_x, d_w, d_b;
};

Grads3 run(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& d_y) {
  Tensor y = causal_conv1d(x, w, b);
  y.backward(d_y);
  return {y.detach(), x.grad(), w.grad(), b.defined() ? b.grad() : Tensor()};
}

void check_bound(const Tensor& got, const Tensor& expected, const Tensor& S, double n_terms_u,
                 DType dtype, const std::string& what) {
  INFO(what);
  REQUIRE(got.shape() == expected.shape());
  const std::vector<double> g = host_f32(got).to_vector<double>();
  const std::vector<double> e = expected.to_vector<double>();
  const std::vector<double> s = S.to_vector<double>();
  for (size_t i = 0; i < g.size(); ++i) {
    const double err = n_terms_u * s[i] + kU32 * std::abs(e[i]);
    const double bound = dtype == DType::kBFloat16 ? kBf16Rel * (std::abs(e[i]) + err) + err : err;
    if (!(std::abs(g[i] - e[i]) <= bound)) {
      INFO("element " << i << ": got " << g[i] << ", expected " << e[i] << ", bound " << bound);
      CHECK(std::abs(g[i] - e[i]) <= bound);
      return;
    }
  }
  CHECK(true);
}

void check_case(const ConvCase& c, DType dt, Layout layout, uint64_t seed) {
  const bool strided = layout == Layout::kStrided;
  Generator gen(seed);
  auto input = [&](const Shape& s) {
    Tensor t = gen.uniform(s, -1, 1);
    return dt == DType::kBFloat16 ? round_to_bf16(t) : t;
  };
  Tensor x = input({c.B, c.T, c.D}), w = input({c.D, c.W});
  Tensor b = c.bias ? input({c.D}) : Tensor();
  Tensor d_y = input({c.B, c.T, c.D});

  auto cpu_leaf = [](const Tensor& t) { return t.defined() ? as_leaf(t.clone()) : Tensor(); };
  const Grads3 ref = run(cpu_leaf(x), cpu_leaf(w), cpu_leaf(b), d_y);
  const Grads3 S =
      run(cpu_leaf(abs(x)), cpu_leaf(abs(w)), c.bias ? cpu_leaf(abs(b)) : Tensor(), abs(d_y));

  auto gpu_run = [&] {
    Tensor xg = as_leaf(to_cuda(x, dt, strided)), wg = as_leaf(to_cuda(w, dt, strided));
    Tensor bg = c.bias ? as_leaf(to_cuda(b, dt, strided)) : Tensor();
    if (layout == Layout::kWeightStrided) wg = as_leaf(to_cuda(w, dt, true));
    if (layout == Layout::kWeightOffset1) wg = as_leaf(weight_at_offset1(w, dt));
    if (layout == Layout::kOffset1 || layout == Layout::kOffset4Padded ||
        layout == Layout::kOffset8Padded) {
      const int64_t offset = layout == Layout::kOffset1         ? 1
                             : layout == Layout::kOffset4Padded ? 4
                                                                : 8;
      const int64_t pad = layout == Layout::kOffset1 ? 0 : offset;
      xg = as_leaf(to_cuda_view(x, dt, offset, pad));
      return run(xg, wg, bg, to_cuda_view(d_y, dt, offset, pad));
    }
    return run(xg, wg, bg, to_cuda(d_y, dt, strided));
  };
  const std::string name = case_name(c, dt, layout);
  const Grads3 g = gpu_run();
  CHECK(g.y.device().is_cuda());
  CHECK(g.y.dtype() == dt);
  check_bound(g.y, ref.y, S.y, 2 * (c.W + 1) * kU32, dt, name + " y");
  check_bound(g.d_x, ref.d_x, S.d_x, 2 * c.W * kU32, dt, name + " d_x");
  const double reduce_u = static_cast<double>((c.B + 1) * c.T) * kU32;
  check_bound(g.d_w, ref.d_w, S.d_w, reduce_u, dt, name + " d_weight");
  if (c.bias) check_bound(g.d_b, ref.d_b, S.d_b, reduce_u, dt, name + " d_bias");

  // The reduction's order depends on the shape alone: reruns are bit-identical.
  const Grads3 again = gpu_run();
  CHECK_MESSAGE(bits(again.y) == bits(g.y), name, " y rerun");
  CHECK_MESSAGE(bits(again.d_x) == bits(g.d_x), name, " d_x rerun");
  CHECK_MESSAGE(bits(again.d_w) == bits(g.d_w), name, " d_weight rerun");
  if (c.bias) CHECK_MESSAGE(bits(again.d_b) == bits(g.d_b), name, " d_bias rerun");
}

}  // namespace

RESONA_GPU_TEST(
    "causal_conv1d CUDA vs CPU (B,T,D,W = 1,1,1,2; 2,3,5,4; 2,5,3,4; 3,37,67,4; 2,129,257,8; "
    "1,200,130,3; 2,64,128,5/6/7; 4,1000,96,4; 1100,2,3,2; bias or not; float32, bfloat16; "
    "contiguous and strided)") {
  const ConvCase cases[] = {
      {1, 1, 1, 2, true},     {2, 3, 5, 4, true},     {2, 5, 3, 4, false},
      {3, 37, 67, 4, true},   {2, 129, 257, 8, true}, {1, 200, 130, 3, false},
      {2, 64, 128, 5, true},  {2, 64, 128, 6, false}, {2, 64, 128, 7, true},
      {4, 1000, 96, 4, true}, {1100, 2, 3, 2, true},
  };
  uint64_t seed = 600;
  for (const ConvCase& c : cases) {
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      for (Layout layout : {Layout::kContiguous, Layout::kStrided}) {
        check_case(c, dt, layout, seed++);
      }
    }
  }
}

RESONA_GPU_TEST(
    "causal_conv1d CUDA vs CPU, channel-group path and edges (B,T,D,W = 2,77,1200,4; "
    "3,130,36,2; 2,300,64,8; 1,5,4,3; 2,131,8,4; 9,70,20,5; 2,2,8,4; 1100,3,4,2; x and d_y "
    "contiguous, at offset 1, at offset 4 with padded rows; float32, bfloat16)") {
  const ConvCase cases[] = {
      {2, 77, 1200, 4, true}, {3, 130, 36, 2, false}, {2, 300, 64, 8, true}, {1, 5, 4, 3, true},
      {2, 131, 8, 4, true},   {9, 70, 20, 5, false},  {2, 2, 8, 4, true},    {1100, 3, 4, 2, true},
  };
  uint64_t seed = 700;
  for (const ConvCase& c : cases) {
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      for (Layout layout : {Layout::kContiguous, Layout::kOffset1, Layout::kOffset4Padded}) {
        check_case(c, dt, layout, seed++);
      }
    }
  }
}

RESONA_GPU_TEST(
    "causal_conv1d CUDA vs CPU, 16-byte channel-group path (B,T,D,W = 2,77,1200,4; 3,2,16,4; "
    "1,3,8,8; 2,133,40,3; 2,66,24,2; 2,45,16,5/6/7; 2,150,16,8; 1,300,12,4; 3,129,20,4; "
    "4,1500,8,4; 1100,5,8,4; 2,1,8,4; 1,257,16,3; 1,140000,8,2; x and d_y contiguous, at "
    "offset 8 with rows padded by 8, at offset 4 with rows padded by 4, at offset 1; weight "
    "strided or at offset 1; float32, bfloat16)") {
  // D = 12 and 20: multiples of 4 but not of 8 (bfloat16 takes the 4-channel path);
  // T = 2, 3 < W; T = 45, 77, 133 not a multiple of the steps loaded at once (8 or 4);
  // B * T = 6000 and 5500 (many dw chunks; B > 1024 the one-chunk-per-sequence split).
  // The bfloat16 backward splits each dw chunk in two halves: T = 1 (an empty second
  // half), T = 257 (three chunks of 86 and 85 steps, odd halves), T = 140000 at B = 1
  // (1024 chunks of 137 steps: the last ones empty).
  const ConvCase cases[] = {
      {2, 77, 1200, 4, true},   {3, 2, 16, 4, true},    {1, 3, 8, 8, false},
      {2, 133, 40, 3, true},    {2, 66, 24, 2, false},  {2, 45, 16, 5, true},
      {2, 45, 16, 6, false},    {2, 45, 16, 7, true},   {2, 150, 16, 8, true},
      {1, 300, 12, 4, true},    {3, 129, 20, 4, false}, {4, 1500, 8, 4, true},
      {1100, 5, 8, 4, true},    {2, 1, 8, 4, true},     {1, 257, 16, 3, true},
      {1, 140000, 8, 2, false},
  };
  uint64_t seed = 800;
  for (const ConvCase& c : cases) {
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      for (Layout layout : {Layout::kContiguous, Layout::kOffset8Padded, Layout::kOffset4Padded,
                            Layout::kOffset1, Layout::kWeightStrided, Layout::kWeightOffset1}) {
        check_case(c, dt, layout, seed++);
      }
    }
  }
}

RESONA_GPU_TEST("causal_conv1d on CUDA refuses float64 and mixed devices, naming them") {
  Tensor x = zeros({1, 4, 3}, DType::kFloat64, Device::cuda());
  Tensor w = zeros({3, 2}, DType::kFloat64, Device::cuda());
  CHECK_THROWS_WITH_AS(causal_conv1d(x, w), doctest::Contains("CUDA supports float32 and bfloat16"),
                       Error);
  Tensor x32 = zeros({1, 4, 3}, DType::kFloat32, Device::cuda());
  CHECK_THROWS_WITH_AS(causal_conv1d(x32, zeros({3, 2})),
                       doctest::Contains("tensors on different devices"), Error);
}

}  // namespace resona::testing
