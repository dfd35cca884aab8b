// CUDA against CPU for selective_scan (ops/scan.h, kernels in cuda/selective_scan.cu): y,
// h_T and every gradient (d_x, d_delta, d_A, d_B, d_C, d_D_skip, d_h0 from the autograd
// engine on the GPU) on fresh random inputs in Mamba's ranges, float32 and bfloat16, with
// and without D_skip and h0 (bfloat16 or float32 under bfloat16 inputs), T = 1, 31, 32, 33,
// 40, 45, 65, 70, 100, 257 around the 32-step chunks, D not a multiple of 32 and over one
// block, N = 1, 5, 8, 16, 32, 64 (every register bucket), B > 1, strong decay,
// contiguous and non-contiguous views of every input and of d_y; a sequence run in two
// pieces with the float32 final state carried; reruns bit-identical; N > 64 refused.
//
// Reference: the CPU path in float64 on the same values (bf16-rounded for bfloat16), so
// each bound is the GPU's own float32 error, |got - ref| <= k u S with u = 2^-24 and S the
// sum of |terms| of that output. S comes from the CPU op on |x|, delta, A, |B|, |C|,
// |D_skip|, |h0|, |d_y|, |d_h_T| (every decay stays positive, so each output is the sum
// of its terms' absolute values), except d_delta = x sB + sum_n A a g h_{t-1}, whose second
// part is negative there: its S is 2 |x| sB_abs - d_delta_abs, with sB_abs read off
// d_x_abs = delta sB_abs + |D_skip| |d_y|.
// k, the most roundings on one term's path: a step multiplies by a_t = exp2(delta A log2 e)
// (2 ulp = 4u, plus 2u |delta A| <= 8u from rounding the argument) and rounds an fma (u):
// at most 16 u per step over T steps, plus the N-term dot products, the D-term sums of
// d_B and d_C (in-warp, warps, blocks) and the B*T-term sums of d_A and d_D_skip
// (per chunk, then per (b, chunk)). Gradients through both the states and g (d_delta,
// d_A) take both paths. bfloat16: each output but h_T (float32) is rounded once, 2^-8 of
// it on top.
#include <chrono>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "ops/elementwise.h"
#include "ops/scan.h"
#include "ops/shape.h"
#include "tests/cuda/cuda_check.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

constexpr int64_t kChunk = 32;  // the CUDA path's time chunk (cuda/selective_scan.h)

struct SsCase {
  int64_t B, T, D, N;
  bool D_skip, h0;
  double A_lo = -4, A_hi = -0.5;  // Mamba's A = -exp(A_log)
};

std::string case_name(const SsCase& c, DType dt, bool strided, bool h0_f32) {
  std::string s = "selective_scan(B=" + std::to_string(c.B) + ",T=" + std::to_string(c.T) +
                  ",D=" + std::to_string(c.D) + ",N=" + std::to_string(c.N) +
                  ",D_skip=" + (c.D_skip ? "yes" : "no") +
                  ",h0=" + (c.h0 ? (h0_f32 ? "float32" : "yes") : "no");
  if (c.A_hi < -1)
    s += ",A=[" + std::to_string(static_cast<int>(c.A_lo)) + "," +
         std::to_string(static_cast<int>(c.A_hi)) + ")";
  return s + "," + dtype_name(dt) + (strided ? ",strided" : "") + ")";
}

// Inputs in the op's order, then the output gradients.
enum { kX, kDelta, kA, kB, kC, kDskip, kH0, kInputs };
const char* const kGradNames[kInputs] = {"d_x", "d_delta", "d_A", "d_B", "d_C", "d_D_skip", "d_h0"};

struct Host {
  Tensor in[kInputs];  // float32 CPU (bf16-representable for bfloat16 cases)
  Tensor d_y, d_hT;
};

Host make_host(const SsCase& c, DType dt, uint64_t seed) {
  Generator gen(seed);
  auto draw = [&](const Shape& s, double lo, double hi) {
    Tensor t = gen.uniform(s, lo, hi);
    return dt == DType::kBFloat16 ? round_to_bf16(t) : t;
  };
  Host h;
  h.in[kX] = draw({c.B, c.T, c.D}, -1, 1);
  h.in[kDelta] = draw({c.B, c.T, c.D}, 0.01, 1);  // softplus(.) in Mamba
  h.in[kA] = draw({c.D, c.N}, c.A_lo, c.A_hi);
  h.in[kB] = draw({c.B, c.T, c.N}, -1, 1);
  h.in[kC] = draw({c.B, c.T, c.N}, -1, 1);
  if (c.D_skip) h.in[kDskip] = draw({c.D}, -1, 1);
  if (c.h0) h.in[kH0] = draw({c.B, c.D, c.N}, -1, 1);
  h.d_y = draw({c.B, c.T, c.D}, -1, 1);
  h.d_hT = gen.uniform({c.B, c.D, c.N}, -1, 1);  // h_T is float32 under either dtype
  return h;
}

struct SsRun {
  Tensor y, hT;
  Tensor grad[kInputs];  // undefined where the input is
};

SsRun run(const Tensor (&in)[kInputs], const Tensor& d_y, const Tensor& d_hT) {
  RecurrentOutput r =
      selective_scan(in[kX], in[kDelta], in[kA], in[kB], in[kC], in[kDskip], in[kH0]);
  std::vector<Tensor> leaves;
  for (const Tensor& t : in) {
    if (t.defined()) leaves.push_back(t);
  }
  std::vector<Tensor> g = autograd::grad({r.out, r.final_state}, leaves, {d_y, d_hT});
  SsRun out{r.out.detach(), r.final_state.detach(), {}};
  size_t j = 0;
  for (int i = 0; i < kInputs; ++i) {
    if (in[i].defined()) out.grad[i] = g[j++];
  }
  return out;
}

// The CPU op in float64 on the host values, or on the absolute values that give S.
SsRun cpu_run(const Host& h, bool absolute) {
  Tensor in[kInputs];
  for (int i = 0; i < kInputs; ++i) {
    if (!h.in[i].defined()) continue;
    Tensor v = copy_to(h.in[i], DType::kFloat64, Device::cpu());
    in[i] = grad_leaf(absolute && i != kDelta && i != kA ? abs(v) : v);
  }
  Tensor d_y = copy_to(h.d_y, DType::kFloat64, Device::cpu());
  Tensor d_hT = copy_to(h.d_hT, DType::kFloat64, Device::cpu());
  return run(in, absolute ? abs(d_y) : d_y, absolute ? abs(d_hT) : d_hT);
}

// S of every output (see the top of the file).
SsRun magnitudes(const Host& h) {
  SsRun S = cpu_run(h, true);
  const std::vector<double> x = values_of(h.in[kX]), delta = values_of(h.in[kDelta]),
                            dy = values_of(h.d_y), dx_abs = values_of(S.grad[kX]),
                            dd_abs = values_of(S.grad[kDelta]);
  const std::vector<double> Ds =
      h.in[kDskip].defined() ? values_of(h.in[kDskip]) : std::vector<double>();
  const int64_t D = h.in[kX].shape()[2];
  std::vector<double> dd(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double skip = Ds.empty() ? 0.0 : std::abs(Ds[i % D]) * std::abs(dy[i]);
    const double sB_abs = (dx_abs[i] - skip) / delta[i];
    dd[i] = std::abs(2 * std::abs(x[i]) * sB_abs - dd_abs[i]);
  }
  S.grad[kDelta] = from_vector_as(dd, h.in[kX].shape(), DType::kFloat64);
  return S;
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

// shared_bf: extra bound (times S) of d_A and d_D_skip, for runs in pieces whose gradients
// of the shared A and D_skip are summed by the engine.
void check_against(const std::string& name, const SsCase& c, DType dt, bool h0_f32,
                   const SsRun& got, const SsRun& ref, const SsRun& S, double shared_bf = 0) {
  const bool bf = dt == DType::kBFloat16;
  const double T = static_cast<double>(c.T), N = static_cast<double>(c.N);
  const double parts = static_cast<double>(c.B * ((c.T + kChunk - 1) / kChunk));
  const double k_scan = 16 * T + N + 40;
  const double k[kInputs] = {
      k_scan + N + 2,                          // d_x = delta sum_n B g + D_skip d_y
      2 * k_scan + N + 4,                      // d_delta: through h and g
      2 * k_scan + N + kChunk + parts,         // d_A: and the sum over (b, t)
      k_scan + static_cast<double>(c.D) + 40,  // d_B: sum over d
      k_scan + static_cast<double>(c.D) + 40,  // d_C
      kChunk + parts + 2,                      // d_D_skip: sum over (b, t)
      k_scan + 2,                              // d_h0 = a_0 g_0
  };
  check_scan(name + " y", got.y, ref.y, S.y, k_scan, bf);
  check_scan(name + " h_T", got.hT, ref.hT, S.hT, k_scan, false);
  for (int i = 0; i < kInputs; ++i) {
    if (!ref.grad[i].defined()) continue;
    const bool rounded = bf && !(i == kH0 && h0_f32);
    const double extra = i == kA || i == kDskip ? shared_bf : 0.0;
    check_scan(name + " " + kGradNames[i], got.grad[i], ref.grad[i], S.grad[i], k[i], rounded,
               extra);
  }
}

void check_case(const SsCase& c, DType dt, bool strided, bool h0_f32, uint64_t seed) {
  const Host host = make_host(c, dt, seed);
  const SsRun ref = cpu_run(host, false), S = magnitudes(host);
  auto gpu_run = [&] {
    Tensor in[kInputs];
    for (int i = 0; i < kInputs; ++i) {
      if (!host.in[i].defined()) continue;
      const DType t = i == kH0 && h0_f32 ? DType::kFloat32 : dt;
      in[i] = grad_leaf(to_cuda(host.in[i], t, strided));
    }
    return run(in, to_cuda(host.d_y, dt, strided), to_cuda(host.d_hT, DType::kFloat32, strided));
  };
  const std::string name = case_name(c, dt, strided, h0_f32);
  INFO(name);
  const SsRun got = gpu_run();
  CHECK(got.y.device().is_cuda());
  CHECK(got.y.dtype() == dt);
  CHECK(got.hT.dtype() == DType::kFloat32);
  check_against(name, c, dt, h0_f32, got, ref, S);

  // The reductions' order depends on the shape alone: reruns are bit-identical.
  const SsRun again = gpu_run();
  CHECK_MESSAGE(bits(again.y) == bits(got.y), name, " y rerun");
  CHECK_MESSAGE(bits(again.hT) == bits(got.hT), name, " h_T rerun");
  for (int i = 0; i < kInputs; ++i) {
    if (got.grad[i].defined()) {
      CHECK_MESSAGE(bits(again.grad[i]) == bits(got.grad[i]), name, " ", kGradNames[i], " rerun");
    }
  }
}

const std::vector<SsCase>& cases() {
  static const std::vector<SsCase> all = {
      {1, 1, 5, 16, true, true},
      {2, 31, 37, 16, false, true},
      {2, 32, 33, 5, true, false},
      {2, 33, 40, 16, true, true},
      {1, 65, 129, 5, false, false},
      {2, 65, 200, 16, true, true},
      {2, 257, 20, 16, true, true},
      {1, 100, 33, 64, true, true},
      {2, 70, 17, 1, true, true},
      {1, 45, 50, 32, false, true},
      {3, 40, 10, 8, true, true},
      {2, 70, 24, 16, true, true, -40, -20},  // strong decay: delta A down to -40 per step
  };
  return all;
}

}  // namespace

RESONA_GPU_TEST(
    "selective_scan CUDA vs CPU float32, y, h_T and every gradient (B,T,D,N = 1,1,5,16; "
    "2,31,37,16; 2,32,33,5; 2,33,40,16; 1,65,129,5; 2,65,200,16; 2,257,20,16; 1,100,33,64; "
    "2,70,17,1; 1,45,50,32; 3,40,10,8; 2,70,24,16 with A in [-40,-20); D_skip and h0 or not; "
    "contiguous and strided)") {
  uint64_t seed = 8000;
  for (const SsCase& c : cases()) {
    for (bool strided : {false, true}) check_case(c, DType::kFloat32, strided, false, seed++);
  }
}

RESONA_GPU_TEST(
    "selective_scan CUDA vs CPU bfloat16, y, h_T and every gradient (the float32 cases' "
    "sizes; h0 bfloat16 or float32; contiguous and strided)") {
  uint64_t seed = 8100;
  for (const SsCase& c : cases()) {
    for (bool strided : {false, true}) {
      check_case(c, DType::kBFloat16, strided, false, seed++);
      if (c.h0) check_case(c, DType::kBFloat16, strided, true, seed++);
    }
  }
}

RESONA_GPU_TEST(
    "selective_scan CUDA split sequence: [0,T) equals [0,t) then [t,T) from the first "
    "piece's float32 h_T, outputs and gradients (B=2,T=257,D=37,N=16, t = 1, 32, 100; "
    "float32 and bfloat16)") {
  const SsCase c{2, 257, 37, 16, true, true};
  uint64_t seed = 8200;
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    for (int64_t t : {1, 32, 100}) {
      const Host host = make_host(c, dt, seed++);
      const SsRun ref = cpu_run(host, false), S = magnitudes(host);
      Tensor in[kInputs];
      for (int i = 0; i < kInputs; ++i) in[i] = grad_leaf(to_cuda(host.in[i], dt, false));
      auto piece = [&](int64_t t0, int64_t t1, const Tensor& h) {
        return selective_scan(in[kX].slice(1, t0, t1), in[kDelta].slice(1, t0, t1), in[kA],
                              in[kB].slice(1, t0, t1), in[kC].slice(1, t0, t1), in[kDskip], h);
      };
      RecurrentOutput first = piece(0, t, in[kH0]);
      CHECK(first.final_state.dtype() == DType::kFloat32);
      RecurrentOutput second = piece(t, c.T, first.final_state);
      Tensor y = concat({first.out, second.out}, 1);
      std::vector<Tensor> leaves(in, in + kInputs);
      std::vector<Tensor> g = autograd::grad(
          {y, second.final_state}, leaves,
          {to_cuda(host.d_y, dt, false), to_cuda(host.d_hT, DType::kFloat32, false)});
      SsRun got{y.detach(), second.final_state.detach(), {}};
      for (int i = 0; i < kInputs; ++i) got.grad[i] = g[i];
      // The carried state is float32 as inside one run, and its gradient reaches the first
      // piece in float32: the whole run's bounds hold, except that d_A and d_D_skip are the
      // sum of the two pieces' gradients, each rounded to bfloat16 and then their sum
      // (2^-8 S twice on top).
      const std::string name = case_name(c, dt, false, false) + " split at t=" + std::to_string(t);
      INFO(name);
      check_against(name, c, dt, false, got, ref, S, dt == DType::kBFloat16 ? 2 * kBf : 0.0);
    }
  }
}

RESONA_GPU_TEST(
    "selective_scan on CUDA refuses N > 64, float64, mixed devices and a wrong h0 dtype; "
    "T = 0 returns h0") {
  auto z = [](const Shape& s, DType dt = DType::kFloat32) { return zeros(s, dt, Device::cuda()); };
  Tensor x = z({1, 4, 3});
  CHECK_THROWS_WITH_AS(selective_scan(x, x, z({3, 65}), z({1, 4, 65}), z({1, 4, 65})),
                       doctest::Contains("at most 64"), Error);
  Tensor x64 = z({1, 4, 3}, DType::kFloat64);
  CHECK_THROWS_WITH_AS(selective_scan(x64, x64, z({3, 2}, DType::kFloat64),
                                      z({1, 4, 2}, DType::kFloat64), z({1, 4, 2}, DType::kFloat64)),
                       doctest::Contains("CUDA supports float32 and bfloat16"), Error);
  CHECK_THROWS_WITH_AS(selective_scan(x, x, zeros({3, 2}), z({1, 4, 2}), z({1, 4, 2})),
                       doctest::Contains("tensors on different devices"), Error);
  Tensor x16 = z({1, 4, 3}, DType::kBFloat16);
  CHECK_THROWS_WITH_AS(
      selective_scan(x16, x16, z({3, 2}, DType::kBFloat16), z({1, 4, 2}, DType::kBFloat16),
                     z({1, 4, 2}, DType::kBFloat16), Tensor(), z({1, 3, 2}, DType::kFloat64)),
      doctest::Contains("h0"), Error);
  // No steps: h_T = h0 in float32, and d_h0 = d_h_T.
  Tensor e = z({2, 0, 3}, DType::kBFloat16);
  Tensor h0 = grad_leaf(
      copy_to(from_vector_as({1, -2, 3, 4, 5, -6, 7, 8, 9, 10, 11, 12}, {2, 3, 2}, DType::kFloat32),
              DType::kBFloat16, Device::cuda()));
  RecurrentOutput r =
      selective_scan(e, e, z({3, 2}, DType::kBFloat16), z({2, 0, 2}, DType::kBFloat16),
                     z({2, 0, 2}, DType::kBFloat16), Tensor(), h0);
  CHECK(r.out.shape() == Shape{2, 0, 3});
  CHECK(r.final_state.dtype() == DType::kFloat32);
  check_close(copy_to(r.final_state, DType::kFloat64, Device::cpu()),
              {1, -2, 3, 4, 5, -6, 7, 8, 9, 10, 11, 12}, 0, 0);
  std::vector<Tensor> g = autograd::grad({r.final_state}, {h0},
                                         {full({2, 3, 2}, 0.5, DType::kFloat32, Device::cuda())});
  check_close(copy_to(g[0], DType::kFloat64, Device::cpu()), std::vector<double>(12, 0.5), 0, 0);
}

// Not a test: forward and forward+backward times at a training size, printed. Skipped
// unless asked for (doctest --no-skip); no assertion depends on them.
TEST_CASE("selective_scan CUDA timing (B=8,T=2048,D=1200,N=16; bfloat16, float32)" *
          doctest::skip()) {
  if (!cuda_available()) return;
  Generator gen(8300);
  const int64_t B = 8, T = 2048, D = 1200, N = 16;
  for (DType dt : {DType::kBFloat16, DType::kFloat32}) {
    auto dev = [&](const Shape& s, double lo, double hi) {
      return grad_leaf(copy_to(gen.uniform(s, lo, hi), dt, Device::cuda()));
    };
    Tensor x = dev({B, T, D}, -1, 1), delta = dev({B, T, D}, 0.01, 1), A = dev({D, N}, -4, -0.5);
    Tensor Bm = dev({B, T, N}, -1, 1), Cm = dev({B, T, N}, -1, 1), Ds = dev({D}, -1, 1);
    Tensor d_y = copy_to(gen.uniform({B, T, D}, -1, 1), dt, Device::cuda());
    Tensor d_hT = zeros({B, D, N}, DType::kFloat32, Device::cuda());
    auto sync = [](const Tensor& t) { (void)values_of(t.reshape({-1}).slice(0, 0, 1)); };
    auto time_ms = [&](auto&& step) {
      for (int i = 0; i < 3; ++i) step();
      const int iters = 10;
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < iters; ++i) step();
      return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                 .count() /
             iters;
    };
    const double fwd = time_ms([&] {
      sync(selective_scan(x.detach(), delta.detach(), A.detach(), Bm.detach(), Cm.detach(),
                          Ds.detach())
               .out);
    });
    const double both = time_ms([&] {
      RecurrentOutput r = selective_scan(x, delta, A, Bm, Cm, Ds);
      sync(autograd::grad({r.out, r.final_state}, {x, delta, A, Bm, Cm, Ds}, {d_y, d_hT})[2]);
    });
    MESSAGE("selective_scan B=8 T=2048 D=1200 N=16 " << std::string(dtype_name(dt)) << ": forward "
                                                     << fwd << " ms, forward+backward " << both
                                                     << " ms");
  }
}

}  // namespace resona::testing
