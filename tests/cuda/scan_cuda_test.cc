// CUDA against CPU for linear_scan (ops/scan.h, kernels in cuda/scan.cu): h and every
// gradient (d_a, d_b, d_h0 from the autograd engine on the GPU) on fresh random inputs,
// float32 and bfloat16, with and without h0 (bfloat16 or float32 under bfloat16 inputs),
// T = 1, 31, 32, 33, 63, 64, 65, 129, 257, 1000 around the 64-step chunks, D not a multiple
// of 32, B > 1, contiguous and non-contiguous views of a, b, h0 and d_h; a sequence run in
// two pieces with the state carried; reruns bit-identical.
//
// Reference: the CPU path in float64 on the same values (bf16-rounded for bfloat16), so
// each bound is the GPU's own float32 error. Every element of h is a sum of terms
// (prod a) b_s; the GPU reaches each term through at most k = T + 2*64 + 2 roundings (an
// fma per step inside a chunk, each chunk's decay product and carry fma, the rescan of the
// last chunk), each a relative 1 + delta with |delta| <= u = 2^-24. So
// |h - h_ref| <= k u S with S the same scan on |a|, |b|, |h0| (the CPU op on absolute
// values bounds the sum of |terms|). Likewise d_b = g (the reverse scan), d_h0 = a_0 g_0
// (one more rounding) and d_a = g h_{t-1} (both paths and the product). bfloat16: each
// output is rounded once (2^-8 of it), and d_a uses the saved bf16-rounded h_{t-1} (2^-8
// of each term: 2^-8 S on top).
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "cuda/scan.h"  // kLinearScanChunk
#include "ops/elementwise.h"
#include "ops/scan.h"
#include "ops/shape.h"
#include "tests/cuda/cuda_check.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

struct LinCase {
  int64_t B, T, D;
  bool h0;
  double a_lo, a_hi;  // range of the decays
};

// h0: "no", "yes" (the input dtype) or "float32" (float32 state under bfloat16 inputs).
std::string case_name(const LinCase& c, DType dt, bool strided, bool h0_f32) {
  return "linear_scan(B=" + std::to_string(c.B) + ",T=" + std::to_string(c.T) +
         ",D=" + std::to_string(c.D) + ",h0=" + (c.h0 ? (h0_f32 ? "float32" : "yes") : "no") +
         ",a=[" + std::to_string(c.a_lo).substr(0, 5) + "," + std::to_string(c.a_hi).substr(0, 5) +
         ")," + dtype_name(dt) + (strided ? ",strided" : "") + ")";
}

struct LinRun {
  Tensor h, d_a, d_b, d_h0;
};

LinRun run(const Tensor& a, const Tensor& b, const Tensor& h0, const Tensor& d_h) {
  Tensor h = linear_scan(a, b, h0);
  std::vector<Tensor> in = {a, b};
  if (h0.defined()) in.push_back(h0);
  std::vector<Tensor> g = autograd::grad({h}, in, {d_h});
  return {h.detach(), g[0], g[1], h0.defined() ? g[2] : Tensor()};
}

struct Host {
  Tensor a, b, h0, d_h;  // float32 CPU (bf16-representable for bfloat16 cases)
};

Host make_host(const LinCase& c, DType dt, uint64_t seed) {
  Generator gen(seed);
  auto draw = [&](const Shape& s, double lo, double hi) {
    Tensor t = gen.uniform(s, lo, hi);
    return dt == DType::kBFloat16 ? round_to_bf16(t) : t;
  };
  Host h;
  h.a = draw({c.B, c.T, c.D}, c.a_lo, c.a_hi);
  h.b = draw({c.B, c.T, c.D}, -1, 1);
  if (c.h0) h.h0 = draw({c.B, c.D}, -1, 1);
  h.d_h = draw({c.B, c.T, c.D}, -1, 1);
  return h;
}

// The CPU op in float64 on the host values (or their absolute values: the bound's S).
LinRun cpu_run(const Host& h, bool absolute) {
  auto f64 = [&](const Tensor& t) {
    if (!t.defined()) return Tensor();
    Tensor v = copy_to(t, DType::kFloat64, Device::cpu());
    return grad_leaf(absolute ? abs(v) : v);
  };
  return run(f64(h.a), f64(h.b), f64(h.h0), f64(h.d_h).detach());
}

// |got - want| <= k u S (+ 2^-8 |want| for a bfloat16 output, + extra_bf S).
void check_scan(const std::string& what, const Tensor& got, const Tensor& want, const Tensor& S,
                double k, bool bf16_out, double extra_bf = 0) {
  REQUIRE(got.defined());
  REQUIRE(got.shape() == want.shape());
  const std::vector<double> w = values_of(want), s = values_of(S);
  std::vector<double> bound(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    const double e = k * kU * s[i];
    bound[i] = e + (bf16_out ? kBf * (std::abs(w[i]) + e) : 0.0) + extra_bf * s[i];
  }
  check_bound(what, got, w, bound);
}

void check_against(const std::string& name, const LinCase& c, DType dt, bool h0_f32,
                   const LinRun& got, const LinRun& ref, const LinRun& S) {
  const bool bf = dt == DType::kBFloat16;
  const double k = static_cast<double>(c.T + 2 * cuda::kLinearScanChunk + 2);
  check_scan(name + " h", got.h, ref.h, S.h, k, bf);
  check_scan(name + " d_b", got.d_b, ref.d_b, S.d_b, k, bf);
  check_scan(name + " d_a", got.d_a, ref.d_a, S.d_a, 2 * k + 1, bf, bf ? kBf : 0.0);
  if (c.h0) check_scan(name + " d_h0", got.d_h0, ref.d_h0, S.d_h0, k + 1, bf && !h0_f32);
}

void check_case(const LinCase& c, DType dt, bool strided, bool h0_f32, uint64_t seed) {
  const Host host = make_host(c, dt, seed);
  const LinRun ref = cpu_run(host, false), S = cpu_run(host, true);
  const DType h0_dt = h0_f32 ? DType::kFloat32 : dt;
  auto gpu_run = [&] {
    Tensor h0 = c.h0 ? grad_leaf(to_cuda(host.h0, h0_dt, strided)) : Tensor();
    return run(grad_leaf(to_cuda(host.a, dt, strided)), grad_leaf(to_cuda(host.b, dt, strided)), h0,
               to_cuda(host.d_h, dt, strided));
  };
  const std::string name = case_name(c, dt, strided, h0_f32);
  INFO(name);
  const LinRun got = gpu_run();
  CHECK(got.h.device().is_cuda());
  CHECK(got.h.dtype() == dt);
  CHECK(got.d_a.dtype() == dt);
  if (c.h0) CHECK(got.d_h0.dtype() == h0_dt);
  check_against(name, c, dt, h0_f32, got, ref, S);

  // The chunking depends on T alone: reruns are bit-identical.
  const LinRun again = gpu_run();
  CHECK_MESSAGE(bits(again.h) == bits(got.h), name, " h rerun");
  CHECK_MESSAGE(bits(again.d_a) == bits(got.d_a), name, " d_a rerun");
  CHECK_MESSAGE(bits(again.d_b) == bits(got.d_b), name, " d_b rerun");
}

const std::vector<LinCase>& cases() {
  static const std::vector<LinCase> all = {
      {1, 1, 1, true, -1, 1},      {2, 31, 37, true, -1, 1},      {3, 32, 5, false, -1, 1},
      {2, 33, 130, true, -1, 1},   {1, 63, 64, true, 0, 1},       {2, 64, 33, false, 0, 1},
      {2, 65, 70, true, -1, 1},    {3, 129, 45, true, 0.9, 1},    {2, 257, 100, true, -1, 1},
      {1, 1000, 3, true, 0.99, 1}, {2, 257, 7, false, 0.95, 1.0},
  };
  return all;
}

}  // namespace

RESONA_GPU_TEST(
    "linear_scan CUDA vs CPU float32, h and d_a, d_b, d_h0 (B,T,D = 1,1,1; 2,31,37; 3,32,5; "
    "2,33,130; 1,63,64; 2,64,33; 2,65,70; 3,129,45; 2,257,100; 1,1000,3; 2,257,7; h0 or not; "
    "contiguous and strided)") {
  uint64_t seed = 7000;
  for (const LinCase& c : cases()) {
    for (bool strided : {false, true}) check_case(c, DType::kFloat32, strided, false, seed++);
  }
}

RESONA_GPU_TEST(
    "linear_scan CUDA vs CPU bfloat16, h and d_a, d_b, d_h0 (the float32 cases' sizes; h0 "
    "bfloat16 or float32; contiguous and strided)") {
  uint64_t seed = 7100;
  for (const LinCase& c : cases()) {
    for (bool strided : {false, true}) {
      check_case(c, DType::kBFloat16, strided, false, seed++);
      if (c.h0) check_case(c, DType::kBFloat16, strided, true, seed++);
    }
  }
}

RESONA_GPU_TEST(
    "linear_scan CUDA split sequence: [0,T) equals [0,t) then [t,T) from h[:, t-1], outputs "
    "and gradients (B=2,T=257,D=37, t = 1, 64, 100; float32 and bfloat16)") {
  const LinCase c{2, 257, 37, true, -1, 1};
  uint64_t seed = 7200;
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    for (int64_t t : {1, 64, 100}) {
      const Host host = make_host(c, dt, seed++);
      const LinRun ref = cpu_run(host, false), S = cpu_run(host, true);
      Tensor a = grad_leaf(to_cuda(host.a, dt, false)), b = grad_leaf(to_cuda(host.b, dt, false));
      Tensor h0 = grad_leaf(to_cuda(host.h0, dt, false));
      Tensor first = linear_scan(a.slice(1, 0, t), b.slice(1, 0, t), h0);
      Tensor second = linear_scan(a.slice(1, t, c.T), b.slice(1, t, c.T), first.select(1, t - 1));
      Tensor joined = concat({first, second}, 1);
      std::vector<Tensor> g = autograd::grad({joined}, {a, b, h0}, {to_cuda(host.d_h, dt, false)});
      const std::string name = case_name(c, dt, false, false) + " split at t=" + std::to_string(t);
      INFO(name);
      // float32: as the whole run. bfloat16: the carried state h[:, t-1] is the rounded
      // output (2^-8 of it, decayed from there on: <= 2^-8 S), and its gradient is rounded
      // where the two pieces' gradients of h[:, t-1] are added (2^-8 S again).
      const bool bf = dt == DType::kBFloat16;
      const double extra = bf ? 2 * kBf : 0.0;
      const double k = static_cast<double>(c.T + 2 * cuda::kLinearScanChunk + 2);
      check_scan(name + " h", joined.detach(), ref.h, S.h, k, bf, extra);
      check_scan(name + " d_b", g[1], ref.d_b, S.d_b, k, bf, extra);
      check_scan(name + " d_a", g[0], ref.d_a, S.d_a, 2 * k + 1, bf, bf ? 3 * kBf : 0.0);
      check_scan(name + " d_h0", g[2], ref.d_h0, S.d_h0, k + 1, bf, extra);
    }
  }
}

RESONA_GPU_TEST(
    "linear_scan on CUDA refuses float64, mixed devices and a wrong h0 dtype; T = 0 gives an "
    "empty h and a zero d_h0") {
  Tensor a = zeros({1, 4, 3}, DType::kFloat64, Device::cuda());
  CHECK_THROWS_WITH_AS(linear_scan(a, a), doctest::Contains("CUDA supports float32 and bfloat16"),
                       Error);
  Tensor a32 = zeros({1, 4, 3}, DType::kFloat32, Device::cuda());
  CHECK_THROWS_WITH_AS(linear_scan(a32, zeros({1, 4, 3})),
                       doctest::Contains("tensors on different devices"), Error);
  Tensor a16 = zeros({1, 4, 3}, DType::kBFloat16, Device::cuda());
  CHECK_THROWS_WITH_AS(linear_scan(a16, a16, zeros({1, 3}, DType::kFloat64, Device::cuda())),
                       doctest::Contains("h0"), Error);
  // T = 0: no steps, an empty h; d_h0 is zero.
  Tensor e = zeros({2, 0, 3}, DType::kFloat32, Device::cuda());
  Tensor h0 = grad_leaf(full({2, 3}, 1.0, DType::kFloat32, Device::cuda()));
  Tensor h = linear_scan(e, e, h0);
  CHECK(h.shape() == Shape{2, 0, 3});
  std::vector<Tensor> g =
      autograd::grad({h}, {h0}, {zeros({2, 0, 3}, DType::kFloat32, Device::cuda())});
  check_close(copy_to(g[0], DType::kFloat64, Device::cpu()), std::vector<double>(6, 0.0), 0, 0);
}

// Not a test: forward and forward+backward times at a training size, printed. Skipped
// unless asked for (doctest --no-skip); no assertion depends on them.
TEST_CASE("linear_scan CUDA timing (B=8,T=2048,D=1200; float32, bfloat16)" * doctest::skip()) {
  if (!cuda_available()) return;
  Generator gen(7300);
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    const Shape s = {8, 2048, 1200};
    Tensor a = grad_leaf(copy_to(gen.uniform(s, 0.9, 1.0), dt, Device::cuda()));
    Tensor b = grad_leaf(copy_to(gen.uniform(s, -1, 1), dt, Device::cuda()));
    Tensor d_h = copy_to(gen.uniform(s, -1, 1), dt, Device::cuda());
    auto sync = [](const Tensor& t) { (void)values_of(t.reshape({-1}).slice(0, 0, 1)); };
    auto time_ms = [&](auto&& step) {
      for (int i = 0; i < 3; ++i) step();
      const int iters = 20;
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < iters; ++i) step();
      return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                 .count() /
             iters;
    };
    const double fwd = time_ms([&] { sync(linear_scan(a.detach(), b.detach())); });
    const double both = time_ms([&] {
      Tensor h = linear_scan(a, b);
      sync(autograd::grad({h}, {a, b}, {d_h})[0]);
    });
    MESSAGE("linear_scan B=8 T=2048 D=1200 " << std::string(dtype_name(dt)) << ": forward " << fwd
                                             << " ms, forward+backward " << both << " ms");
  }
}

}  // namespace resona::testing
