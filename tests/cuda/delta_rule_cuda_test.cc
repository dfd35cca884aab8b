// CUDA against CPU for delta_rule (chunked, WY representation): o, S_T and the gradients
// of q, k, v, beta and h0 on fresh random inputs (k L2-normalised per head, beta in
// (0, 1)), float32 and bfloat16, T < C, T = C, T = 2C, T = 2C + 1, chunk 1..64,
// K = V = 150 (DeltaNet at hidden 600 with 4 heads), 64 and 128, odd sizes, B > 1,
// H > 1, with and without h0; q, k, v as slices of one fused [B, T, H, 2K + V]
// projection with beta and d_o strided too; reruns bit-identical, and the same bits from a
// forward without grad and from each gradient asked for alone; the split-sequence property
// on the GPU; each column-tile width of the recurrences; refusals. With
// RESONA_TIME_DELTA=1 a timing case prints the forward and forward + backward time at
// B=8, T=2048, H=4, K=V=150 in bfloat16.
//
// The reference is the CPU op in float32 on the same values (bf16-rounded for bfloat16;
// h0 and d_S_T stay float32, the state dtype). Tolerances: the CPU op's own tests
// measure float32 against a float64 recurrence at a relative RMS error of 2e-7..4e-7 and
// a worst element within 5e-6 of the reference's RMS, and bound them at 5e-6 and 5e-5
// (tests/ops/delta_rule_test.cc, kRms32 and kMax32: unit k and beta < 1 keep every step
// a contraction, so rounding does not grow along T). The GPU runs the same products in
// another order, so it carries the same kind of error, and CUDA minus CPU is within the
// sum of both: relative RMS <= 1e-5 and every element within e32 = 1e-4 x RMS. A
// bfloat16 output is the GPU's float32 value rounded once: 2^-8 of the value on top,
// |got - want| <= 2^-8 (|want| + e32) + e32. Under bfloat16 storage the GPU's products take
// TF32 operands, which widens e32 and the relative RMS bound (kTf32Rms, kTf32MaxOfRms).
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "core/storage.h"
#include "ops/scan.h"
#include "tests/cuda/cuda_check.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

constexpr double kRelRms32 = 1e-5;  // CUDA vs CPU, relative RMS, float32 arithmetic
constexpr double kMaxOfRms = 1e-4;  // CUDA vs CPU, any element, relative to the RMS
// Under bfloat16 storage the CUDA path multiplies with one TF32 product (cuda/delta_rule.cu,
// kSplitProducts). tools/precision/delta_rule_tf32 models that at T = 2048, K = V = 150 at
// up to 4.9e-4 relative RMS (d_k) and 3.6e-3 of the RMS at worst over o, S_T and every
// gradient (tools/RESULTS.md). Allowances per side with TF32 products, about 4x and 3x those
// (on an H200 the bfloat16 cases here came out at most 2.6e-3 relative RMS, d_beta, against
// bounds of 5.9e-3, the bfloat16 rounding of the outputs included):
constexpr double kTf32Rms = 2e-3;
constexpr double kTf32MaxOfRms = 1e-2;

struct DeltaCudaCase {
  int64_t B, T, H, K, V, chunk;
  bool h0;
};

std::string case_name(const DeltaCudaCase& c, DType dt, bool fused) {
  return "delta_rule(B=" + std::to_string(c.B) + ",T=" + std::to_string(c.T) +
         ",H=" + std::to_string(c.H) + ",K=" + std::to_string(c.K) + ",V=" + std::to_string(c.V) +
         ",chunk=" + std::to_string(c.chunk) + ",h0=" + (c.h0 ? "yes" : "no") + "," +
         dtype_name(dt) + (fused ? ",fused views" : "") + ")";
}

// Rows of unit L2 norm along the last dim, float32 on the CPU.
Tensor unit_rows(Generator& gen, const Shape& shape) {
  std::vector<double> x = gen.normal(shape, 0, 1, DType::kFloat64).to_vector<double>();
  const int64_t K = shape.back();
  for (size_t r = 0; r < x.size() / K; ++r) {
    double n = 0;
    for (int64_t i = 0; i < K; ++i) n += x[r * K + i] * x[r * K + i];
    for (int64_t i = 0; i < K; ++i) x[r * K + i] /= std::sqrt(n);
  }
  return from_vector(x, shape).to(DType::kFloat32);
}

// float32 CPU values of one case (bf16-representable where the GPU stores bf16).
struct DeltaInputs {
  Tensor q, k, v, beta, h0, d_o, d_S;
};

DeltaInputs make_inputs(const DeltaCudaCase& c, DType dt, uint64_t seed,
                        DType h0_dt = DType::kFloat32) {
  Generator gen(seed);
  auto rounded = [&](Tensor t) { return dt == DType::kBFloat16 ? round_to_bf16(t) : t; };
  DeltaInputs x;
  x.q = rounded(gen.uniform({c.B, c.T, c.H, c.K}, -1, 1));
  x.k = rounded(unit_rows(gen, {c.B, c.T, c.H, c.K}));
  x.v = rounded(gen.uniform({c.B, c.T, c.H, c.V}, -1, 1));
  x.beta = rounded(gen.uniform({c.B, c.T, c.H}, 0.02, 0.98));
  if (c.h0) {
    x.h0 = gen.uniform({c.B, c.H, c.K, c.V}, -1, 1);
    if (h0_dt == DType::kBFloat16) x.h0 = round_to_bf16(x.h0);
  }
  x.d_o = rounded(gen.uniform({c.B, c.T, c.H, c.V}, -1, 1));
  x.d_S = gen.uniform({c.B, c.H, c.K, c.V}, -1, 1);
  return x;
}

struct DeltaResult {
  Tensor o, S_T, d_q, d_k, d_v, d_beta, d_h0;
};

Tensor as_leaf(Tensor t) {
  t.set_requires_grad(true);
  return t;
}

// Forward and the gradients of sum(o * d_o) + sum(S_T * d_S) with respect to the leaves
// (h0 may be undefined).
DeltaResult run_delta(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                      const Tensor& h0, const Tensor& d_o, const Tensor& d_S, int64_t chunk) {
  ChunkOptions opt;
  opt.chunk = chunk;
  RecurrentOutput r = delta_rule(q, k, v, beta, h0, opt);
  std::vector<Tensor> leaves = {q, k, v, beta};
  if (h0.defined()) leaves.push_back(h0);
  std::vector<Tensor> g = autograd::grad({r.out, r.final_state}, leaves, {d_o, d_S});
  DeltaResult res{r.out.detach(), r.final_state.detach(), g[0], g[1], g[2], g[3], Tensor()};
  if (h0.defined()) res.d_h0 = g[4];
  return res;
}

// x (CPU float32) written into the columns [off, off + x.size(3)) of the GPU buffer
// `base` [B, T, H, F], returned as that strided view (a fresh handle without history).
Tensor view_into(const Tensor& base, const Tensor& x, int64_t off) {
  make_view(base, x.shape(), base.strides(), off).copy_(x);
  return make_view(base, x.shape(), base.strides(), off);
}

// The GPU inputs of a case: contiguous copies, or q, k, v slices of one fused
// [B, T, H, 2K + V] buffer, beta every other element of a [B, T, H, 2] buffer and d_o a
// [B, H, T, V] buffer seen as [B, T, H, V].
struct GpuInputs {
  Tensor q, k, v, beta, h0, d_o, d_S;
};

GpuInputs to_gpu(const DeltaInputs& x, DType dt, DType h0_dt, bool fused) {
  const Device cuda = Device::cuda();
  GpuInputs g;
  g.h0 = x.h0.defined() ? as_leaf(copy_to(x.h0, h0_dt, cuda)) : Tensor();
  g.d_S = copy_to(x.d_S, DType::kFloat32, cuda);
  if (!fused) {
    g.q = as_leaf(copy_to(x.q, dt, cuda));
    g.k = as_leaf(copy_to(x.k, dt, cuda));
    g.v = as_leaf(copy_to(x.v, dt, cuda));
    g.beta = as_leaf(copy_to(x.beta, dt, cuda));
    g.d_o = copy_to(x.d_o, dt, cuda);
    return g;
  }
  const int64_t B = x.q.size(0), T = x.q.size(1), H = x.q.size(2), K = x.q.size(3);
  const int64_t V = x.v.size(3);
  Tensor proj = zeros({B, T, H, 2 * K + V}, dt, cuda);
  g.q = as_leaf(view_into(proj, x.q, 0));
  g.k = as_leaf(view_into(proj, x.k, K));
  g.v = as_leaf(view_into(proj, x.v, 2 * K));
  Tensor beta2 = zeros({B, T, H, 2}, dt, cuda);
  Tensor beta_view = make_view(beta2, {B, T, H}, {T * H * 2, H * 2, 2}, 1);
  beta_view.copy_(x.beta);
  g.beta = as_leaf(make_view(beta2, {B, T, H}, {T * H * 2, H * 2, 2}, 1));
  Tensor d_o_bhtv = copy_to(x.d_o.transpose(1, 2).contiguous(), dt, cuda);  // [B, H, T, V]
  g.d_o = make_view(d_o_bhtv, {B, T, H, V}, {H * T * V, V, T * V, 1}, 0);
  return g;
}

double rms(const std::vector<double>& x) {
  double s = 0;
  for (double v : x) s += v * v;
  return std::sqrt(s / std::max<size_t>(x.size(), 1));
}

// got (GPU, any dtype) against want (CPU float32): relative RMS and the elementwise bound
// of the header, with `bf_rounds` bfloat16 roundings and `tf32_sides` sides of TF32
// products (bfloat16 runs) on top.
void check_against(const std::string& what, const Tensor& got, const Tensor& want, int bf_rounds,
                   int tf32_sides) {
  INFO(what);
  REQUIRE(got.defined());
  REQUIRE(want.defined());
  REQUIRE(got.shape() == want.shape());
  const std::vector<double> g = values_of(host_f32(got)), w = values_of(want);
  const double r = rms(w), e32 = (kMaxOfRms + tf32_sides * kTf32MaxOfRms) * r;
  double num = 0;
  for (size_t i = 0; i < g.size(); ++i) num += (g[i] - w[i]) * (g[i] - w[i]);
  const double rel = r > 0 ? std::sqrt(num / g.size()) / r : 0;
  const double rel_bound = kRelRms32 + tf32_sides * kTf32Rms + bf_rounds * kBf;
  INFO("relative RMS error " << rel << " (allowed " << rel_bound << ")");
  CHECK(rel <= rel_bound);
  std::vector<double> bound(g.size());
  for (size_t i = 0; i < g.size(); ++i) bound[i] = bf_rounds * kBf * (std::abs(w[i]) + e32) + e32;
  check_bound(what, got, w, bound);
}

void check_case(const DeltaCudaCase& c, DType dt, bool fused, uint64_t seed,
                DType h0_dt = DType::kFloat32, bool rerun = false) {
  const std::string name =
      case_name(c, dt, fused) +
      (c.h0 && h0_dt != DType::kFloat32 ? std::string(" h0 ") + dtype_name(h0_dt) : "");
  INFO(name);
  const DeltaInputs x = make_inputs(c, dt, seed, h0_dt);
  const DeltaResult ref = run_delta(as_leaf(x.q.clone()), as_leaf(x.k.clone()),
                                    as_leaf(x.v.clone()), as_leaf(x.beta.clone()),
                                    c.h0 ? as_leaf(x.h0.clone()) : Tensor(), x.d_o, x.d_S, c.chunk);
  const GpuInputs g = to_gpu(x, dt, h0_dt, fused);
  const DeltaResult got = run_delta(g.q, g.k, g.v, g.beta, g.h0, g.d_o, g.d_S, c.chunk);
  CHECK(got.o.device().is_cuda());
  CHECK(got.o.dtype() == dt);
  CHECK(got.S_T.dtype() == DType::kFloat32);
  const int out_rounds = dt == DType::kBFloat16 ? 1 : 0, tc = out_rounds;
  check_against(name + " o", got.o, ref.o, out_rounds, tc);
  check_against(name + " S_T", got.S_T, ref.S_T, 0, tc);
  check_against(name + " d_q", got.d_q, ref.d_q, out_rounds, tc);
  check_against(name + " d_k", got.d_k, ref.d_k, out_rounds, tc);
  check_against(name + " d_v", got.d_v, ref.d_v, out_rounds, tc);
  check_against(name + " d_beta", got.d_beta, ref.d_beta, out_rounds, tc);
  if (c.h0) {
    CHECK(got.d_h0.dtype() == h0_dt);
    check_against(name + " d_h0", got.d_h0, ref.d_h0, h0_dt == DType::kBFloat16 ? 1 : 0, tc);
  }
  if (rerun) {
    // Fixed summation order everywhere: a second run is bit-identical.
    const DeltaResult again = run_delta(g.q, g.k, g.v, g.beta, g.h0, g.d_o, g.d_S, c.chunk);
    CHECK_MESSAGE(bits(again.o) == bits(got.o), name, " o rerun");
    CHECK_MESSAGE(bits(again.S_T) == bits(got.S_T), name, " S_T rerun");
    CHECK_MESSAGE(bits(again.d_q) == bits(got.d_q), name, " d_q rerun");
    CHECK_MESSAGE(bits(again.d_k) == bits(got.d_k), name, " d_k rerun");
    CHECK_MESSAGE(bits(again.d_v) == bits(got.d_v), name, " d_v rerun");
    CHECK_MESSAGE(bits(again.d_beta) == bits(got.d_beta), name, " d_beta rerun");
    if (c.h0) CHECK_MESSAGE(bits(again.d_h0) == bits(got.d_h0), name, " d_h0 rerun");
    // A forward without a backward to come keeps no WY products (W and P in its scratch):
    // the same values.
    NoGradGuard no_grad;
    ChunkOptions opt;
    opt.chunk = c.chunk;
    const RecurrentOutput plain = delta_rule(g.q, g.k, g.v, g.beta, g.h0, opt);
    CHECK_MESSAGE(bits(plain.out) == bits(got.o), name, " o without grad");
    CHECK_MESSAGE(bits(plain.final_state) == bits(got.S_T), name, " S_T without grad");
  }
}

// A case's contiguous GPU inputs (float32 h0) and the op's results on them.
struct GpuRun {
  GpuInputs g;
  DeltaResult r;
};
GpuRun gpu_run(const DeltaCudaCase& c, DType dt, uint64_t seed) {
  GpuRun run;
  run.g = to_gpu(make_inputs(c, dt, seed), dt, DType::kFloat32, false);
  const GpuInputs& g = run.g;
  run.r = run_delta(g.q, g.k, g.v, g.beta, g.h0, g.d_o, g.d_S, c.chunk);
  return run;
}

// check_case for every case, in both dtypes and both views (contiguous, fused), with the
// seeds from `seed` on (advanced past them).
template <size_t N>
void check_cases(const DeltaCudaCase (&cases)[N], uint64_t& seed) {
  for (const DeltaCudaCase& c : cases) {
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      for (bool fused : {false, true}) check_case(c, dt, fused, seed++);
    }
  }
}

}  // namespace

RESONA_GPU_TEST(
    "delta_rule CUDA vs CPU at K=V=150, chunk=64: (B,T,H) = (2,50,2) T<C h0, (1,64,2) T=C, "
    "(2,128,1) T=2C h0, (2,129,2) T=2C+1 h0, (1,200,1) chunk=32 h0; float32 and bfloat16; "
    "contiguous and fused views") {
  const DeltaCudaCase cases[] = {
      {2, 50, 2, 150, 150, 64, true},  {1, 64, 2, 150, 150, 64, false},
      {2, 128, 1, 150, 150, 64, true}, {2, 129, 2, 150, 150, 64, true},
      {1, 200, 1, 150, 150, 32, true},
  };
  uint64_t seed = 1200;
  check_cases(cases, seed);
}

RESONA_GPU_TEST(
    "delta_rule CUDA vs CPU at K=V=64 and K=V=128 (B,T,H = 2,129,2 and 1,129,3; chunk 64), "
    "K=75 V=150 chunk=16 T=33; float32 and bfloat16; contiguous and fused views") {
  const DeltaCudaCase cases[] = {
      {2, 129, 2, 64, 64, 64, false},
      {1, 129, 3, 128, 128, 64, true},
      {2, 33, 2, 75, 150, 16, true},
  };
  uint64_t seed = 1300;
  check_cases(cases, seed);
}

RESONA_GPU_TEST(
    "delta_rule CUDA vs CPU at large V and K: K=32 V=330 T=65 (v in four pieces in the WY "
    "kernel, eleven in the gradient kernels), K=256 V=512 T=65 (q in three pieces in the WY "
    "kernel, four K tiles); float32 and bfloat16; contiguous and fused views") {
  const DeltaCudaCase cases[] = {
      {1, 65, 2, 32, 330, 64, true},
      {1, 65, 1, 256, 512, 64, true},
  };
  uint64_t seed = 1312;
  check_cases(cases, seed);
}

RESONA_GPU_TEST(
    "delta_rule CUDA vs CPU small sizes: K=5 V=7 chunk=4 (B,T,H = 2,3,2; 2,4,2; 1,8,2; 2,9,2), "
    "chunk=1 T=7 K=20 V=30, K=130 V=2 chunk=32 T=33 B=3, K=70 V=33 chunk=64 T=70; float32 "
    "and bfloat16; contiguous and fused views") {
  const DeltaCudaCase cases[] = {
      {2, 3, 2, 5, 7, 4, true},      {2, 4, 2, 5, 7, 4, false},  {1, 8, 2, 5, 7, 4, true},
      {2, 9, 2, 5, 7, 4, true},      {2, 7, 1, 20, 30, 1, true}, {3, 33, 1, 130, 2, 32, true},
      {1, 70, 1, 70, 33, 64, false},
  };
  uint64_t seed = 1350;
  check_cases(cases, seed);
}

RESONA_GPU_TEST(
    "delta_rule CUDA: bfloat16 h0 (B=2,T=65,H=2,K=V=64,chunk=64); reruns bit-identical "
    "(B=2,T=129,H=2,K=V=150, float32 and bfloat16, fused views)") {
  check_case({2, 65, 2, 64, 64, 64, true}, DType::kBFloat16, false, 1400, DType::kBFloat16);
  check_case({2, 129, 2, 150, 150, 64, true}, DType::kFloat32, true, 1401, DType::kFloat32, true);
  check_case({2, 129, 2, 150, 150, 64, true}, DType::kBFloat16, true, 1402, DType::kFloat32, true);
}

RESONA_GPU_TEST(
    "delta_rule CUDA split sequence: [0,T) equals [0,t) then [t,T) with S_T carried as h0, "
    "outputs and gradients (B=2,T=150,H=2,K=64,V=96,chunk=64, t=50,64,100; float32 and "
    "bfloat16)") {
  const DeltaCudaCase c{2, 150, 2, 64, 96, 64, true};
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    const GpuRun run = gpu_run(c, dt, dt == DType::kFloat32 ? 1500 : 1501);
    const GpuInputs& g = run.g;
    const DeltaResult& full = run.r;
    const int rounds = dt == DType::kBFloat16 ? 2 : 0;  // both sides rounded once
    const int tc = rounds;                              // both sides with TF32 products
    for (int64_t t : {50, 64, 100}) {
      const std::string name = case_name(c, dt, false) + " split at t=" + std::to_string(t);
      INFO(name);
      // The two pieces as strided views of the same GPU tensors (raw views, own leaves).
      auto piece = [&](const Tensor& x_, int64_t t0, int64_t t1) {
        Shape s = x_.shape();
        s[1] = t1 - t0;
        return make_view(x_, s, x_.strides(), x_.offset() + t0 * x_.strides()[1]);
      };
      std::vector<Tensor> first = {as_leaf(piece(g.q, 0, t)), as_leaf(piece(g.k, 0, t)),
                                   as_leaf(piece(g.v, 0, t)), as_leaf(piece(g.beta, 0, t))};
      std::vector<Tensor> second = {as_leaf(piece(g.q, t, c.T)), as_leaf(piece(g.k, t, c.T)),
                                    as_leaf(piece(g.v, t, c.T)), as_leaf(piece(g.beta, t, c.T))};
      const Tensor& h0 = g.h0;
      ChunkOptions opt;
      opt.chunk = c.chunk;
      RecurrentOutput a = delta_rule(first[0], first[1], first[2], first[3], h0, opt);
      RecurrentOutput b =
          delta_rule(second[0], second[1], second[2], second[3], a.final_state, opt);
      std::vector<Tensor> leaves = first;
      leaves.insert(leaves.end(), second.begin(), second.end());
      leaves.push_back(h0);
      std::vector<Tensor> grads = autograd::grad({a.out, b.out, b.final_state}, leaves,
                                                 {piece(g.d_o, 0, t), piece(g.d_o, t, c.T), g.d_S});
      auto slice_host = [&](const Tensor& full_t, int64_t t0, int64_t t1) {
        return host_f32(full_t).slice(1, t0, t1).contiguous();
      };
      check_against(name + " o[0,t)", a.out, slice_host(full.o, 0, t), rounds, tc);
      check_against(name + " o[t,T)", b.out, slice_host(full.o, t, c.T), rounds, tc);
      check_against(name + " S_T", b.final_state, host_f32(full.S_T), 0, tc);
      const Tensor* full_grads[] = {&full.d_q, &full.d_k, &full.d_v, &full.d_beta};
      const char* names[] = {"d_q", "d_k", "d_v", "d_beta"};
      for (int i = 0; i < 4; ++i) {
        check_against(name + " " + names[i] + "[0,t)", grads[i], slice_host(*full_grads[i], 0, t),
                      rounds, tc);
        check_against(name + " " + names[i] + "[t,T)", grads[4 + i],
                      slice_host(*full_grads[i], t, c.T), rounds, tc);
      }
      check_against(name + " d_h0", grads[8], host_f32(full.d_h0), 0, tc);
    }
  }
}

RESONA_GPU_TEST(
    "delta_rule CUDA: each gradient asked for alone (q, k, v, beta or h0) has the bits of the "
    "run that asks for all (B=2,T=129,H=2,K=V=150,chunk=64 h0; float32 and bfloat16)") {
  const DeltaCudaCase c{2, 129, 2, 150, 150, 64, true};
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    const GpuRun run = gpu_run(c, dt, dt == DType::kFloat32 ? 1450 : 1451);
    const GpuInputs& g = run.g;
    const DeltaResult& all = run.r;
    const Tensor* all_grads[] = {&all.d_q, &all.d_k, &all.d_v, &all.d_beta, &all.d_h0};
    const char* names[] = {"d_q", "d_k", "d_v", "d_beta", "d_h0"};
    for (int want = 0; want < 5; ++want) {
      INFO(case_name(c, dt, false) << " " << names[want] << " alone");
      // Fresh handles on the same values; only input `want` is a leaf.
      std::vector<Tensor> in = {g.q.detach(), g.k.detach(), g.v.detach(), g.beta.detach(),
                                g.h0.detach()};
      in[want] = as_leaf(in[want]);
      ChunkOptions opt;
      opt.chunk = c.chunk;
      RecurrentOutput r = delta_rule(in[0], in[1], in[2], in[3], in[4], opt);
      std::vector<Tensor> grad = autograd::grad({r.out, r.final_state}, {in[want]}, {g.d_o, g.d_S});
      CHECK(bits(grad[0]) == bits(*all_grads[want]));
    }
  }
}

// Sets RESONA_DELTA_RULE_STATE_COLS for its lifetime (the recurrences' column-tile width;
// unset: the kernels pick one per shape).
class StateColsEnv {
 public:
  explicit StateColsEnv(const char* value) { setenv("RESONA_DELTA_RULE_STATE_COLS", value, 1); }
  ~StateColsEnv() { unsetenv("RESONA_DELTA_RULE_STATE_COLS"); }
  StateColsEnv(const StateColsEnv&) = delete;
  StateColsEnv& operator=(const StateColsEnv&) = delete;
};

RESONA_GPU_TEST(
    "delta_rule CUDA vs CPU with the recurrences' column tiles forced to 16, 32 and 48 "
    "columns: K=V=150 (B,T,H = 2,129,2) h0, K=130 V=70 chunk=32 T=70, K=5 V=7 chunk=4 T=9; "
    "float32 and bfloat16; contiguous and fused views") {
  const DeltaCudaCase cases[] = {
      {2, 129, 2, 150, 150, 64, true},
      {1, 70, 2, 130, 70, 32, false},
      {2, 9, 2, 5, 7, 4, true},
  };
  uint64_t seed = 1700;
  for (const char* cols : {"16", "32", "48"}) {
    INFO("state columns " << cols);
    const StateColsEnv env(cols);
    check_cases(cases, seed);
  }
}

RESONA_GPU_TEST(
    "delta_rule on CUDA refuses a K whose tiles do not fit in shared memory "
    "and a bad RESONA_DELTA_RULE_STATE_COLS, naming them") {
  const Device cuda = Device::cuda();
  const DType f = DType::kFloat32;
  auto z = [&](const Shape& s) { return zeros(s, f, cuda); };
  CHECK_THROWS_WITH_AS(
      delta_rule(z({1, 8, 1, 1024}), z({1, 8, 1, 1024}), z({1, 8, 1, 4}), z({1, 8, 1})),
      doctest::Contains("K too large for the shared-memory tiles"), Error);
  const StateColsEnv env("24");
  CHECK_THROWS_WITH_AS(delta_rule(z({1, 8, 1, 4}), z({1, 8, 1, 4}), z({1, 8, 1, 4}), z({1, 8, 1})),
                       doctest::Contains("RESONA_DELTA_RULE_STATE_COLS must be 16, 32 or 48"),
                       Error);
}

RESONA_GPU_TEST("delta_rule on CUDA refuses float64, chunk > 64 and mixed devices, naming them") {
  const Device cuda = Device::cuda();
  auto z = [&](const Shape& s, DType dt) { return zeros(s, dt, cuda); };
  CHECK_THROWS_WITH_AS(
      delta_rule(z({1, 4, 1, 3}, DType::kFloat64), z({1, 4, 1, 3}, DType::kFloat64),
                 z({1, 4, 1, 2}, DType::kFloat64), z({1, 4, 1}, DType::kFloat64)),
      doctest::Contains("CUDA supports float32 and bfloat16"), Error);
  ChunkOptions big;
  big.chunk = 128;
  const DType f = DType::kFloat32;
  CHECK_THROWS_WITH_AS(delta_rule(z({1, 200, 1, 3}, f), z({1, 200, 1, 3}, f), z({1, 200, 1, 2}, f),
                                  z({1, 200, 1}, f), Tensor(), big),
                       doctest::Contains("the CUDA path supports chunk 1..64"), Error);
  // A chunk beyond T changes nothing, so it is accepted.
  CHECK_NOTHROW(delta_rule(z({1, 50, 1, 3}, f), z({1, 50, 1, 3}, f), z({1, 50, 1, 2}, f),
                           z({1, 50, 1}, f), Tensor(), big));
  CHECK_THROWS_WITH_AS(
      delta_rule(z({1, 4, 1, 3}, f), zeros({1, 4, 1, 3}), z({1, 4, 1, 2}, f), z({1, 4, 1}, f)),
      doctest::Contains("tensors on different devices"), Error);
  CHECK_THROWS_WITH_AS(
      delta_rule(z({1, 4, 1, 3}, DType::kBFloat16), z({1, 4, 1, 3}, DType::kBFloat16),
                 z({1, 4, 1, 2}, DType::kBFloat16), z({1, 4, 1}, DType::kBFloat16),
                 z({1, 1, 3, 2}, DType::kFloat64)),
      doctest::Contains("h0 must be float32"), Error);
}

// Not a check: prints the time of the forward and of forward + backward at the size the
// kernels are meant for, when RESONA_TIME_DELTA=1.
TEST_CASE("delta_rule CUDA timing (B=8,T=2048,H=4,K=V=150,chunk=64,bfloat16; RESONA_TIME_DELTA=1)" *
          doctest::skip(!cuda_available() || std::getenv("RESONA_TIME_DELTA") == nullptr ||
                        std::string(std::getenv("RESONA_TIME_DELTA")) != "1")) {
  const int64_t B = 8, T = 2048, H = 4, K = 150, V = 150;
  const DType dt = DType::kBFloat16;
  const Device cuda = Device::cuda();
  Generator gen(1600);
  Tensor q = as_leaf(copy_to(gen.uniform({B, T, H, K}, -1, 1), dt, cuda));
  Tensor k = as_leaf(copy_to(unit_rows(gen, {B, T, H, K}), dt, cuda));
  Tensor v = as_leaf(copy_to(gen.uniform({B, T, H, V}, -1, 1), dt, cuda));
  Tensor beta = as_leaf(copy_to(gen.uniform({B, T, H}, 0.02, 0.98), dt, cuda));
  Tensor d_o = copy_to(gen.uniform({B, T, H, V}, -1, 1), dt, cuda);
  Tensor d_S = copy_to(gen.uniform({B, H, K, V}, -1, 1), DType::kFloat32, cuda);
  DeviceBackend& be = backend_for(cuda);
  auto time_ms = [&](const std::function<void()>& f) {
    for (int i = 0; i < 2; ++i) f();  // warm-up (allocator, module load)
    be.synchronize(0);
    const int n = 10;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) f();
    be.synchronize(0);
    const auto t1 = std::chrono::steady_clock::now();
    return std::chrono::duration<double, std::milli>(t1 - t0).count() / n;
  };
  const double fwd = time_ms([&] {
    NoGradGuard no_grad;
    delta_rule(q, k, v, beta);
  });
  const double fwd_bwd = time_ms([&] {
    RecurrentOutput r = delta_rule(q, k, v, beta);
    autograd::grad({r.out, r.final_state}, {q, k, v, beta}, {d_o, d_S});
  });
  MESSAGE("delta_rule B=8 T=2048 H=4 K=V=150 chunk=64 bf16 on "
          << be.device_name(0) << ": forward " << fwd << " ms, forward+backward " << fwd_bwd
          << " ms");
}

}  // namespace resona::testing
