// CUDA against CPU for gla (chunked gated linear attention): o, S_T and every gradient
// (q, k, v, g, h0) on fresh random inputs, float32 and bfloat16, T < C, T = C, T = 2C,
// T = 2C + 1, chunk 1, 20, 32 and 64, B > 1, H > 1, with and without h0 (float32, or
// bfloat16 like the inputs), per-key and per-head gates, strong decay (g around -5), K =
// 75 / V = 150 (GLA at hidden 600), K = V = 64 and K = 128 / V = 256, q, k, v as slices of
// one fused projection [B, T, H, 2K + V]; bit-identical reruns; the split-sequence
// property on the GPU; input checks. With RESONA_TIME_GLA=1 one case times forward and
// forward + backward at B=8, T=2048, H=4, K=75, V=150 in bfloat16 (prints, asserts nothing).
//
// The reference is the CPU op in float64 on the very values the GPU sees (bf16-rounded
// for bfloat16), its gradients checked by finite differences in tests/ops/gla_test.cc.
// Tolerances:
//   e32 = 2e-5 + 8 u C max|g| log2(e), u = 2^-24: the float32 error of the chunked
//     products (sums of up to K C terms of mixed sign, ~sqrt(n) u, well below 2e-5 = 300 u)
//     plus the decay factors' error from the rounded cumulative gates: exp(G_i - G_j) is
//     taken from two cumulative sums (log2 units, |G| up to C max|g| log2(e)) that carry
//     a few roundings of size u |G| each (8 covers both). The CPU's float32 path measures
//     1e-7 to 5e-7 relative RMS on mild gates; at g in [-4, -0.05] the same chunked
//     float32 arithmetic puts about 2e-4 (RMS + M_t) on d_g, a quarter of its bound,
//     and the gate term is what sets it.
//   etc = e32 + 2^-9 for the results of the tensor-core chunk products (o, d_q, d_k, d_v
//     and through them d_g): their operands are rounded to TF32 (11 significant bits,
//     relative error <= 2^-11 each, so <= 2^-10 per product) and accumulated in float32.
//     For these sums of mixed-sign terms the error's RMS is about 2^-11 of the result's;
//     2^-9 leaves 4x for sums that partly cancel. S_T and d_h0 come from the state
//     recurrences, whose scan over the chunks is float32 FMA and whose per-chunk terms are
//     3xTF32 products under float32 storage (float32 accuracy, ~2^-20 per term: e32) and
//     TF32 products under bfloat16 storage (etc).
//   o, S_T, d_q, d_k, d_v, d_h0: relative RMS error <= bf + tol and every element within
//     bf |ref| + 10 tol RMS(ref), tol = etc or e32 as above, with bf = 2^-8 where the GPU
//     rounds its float32 result to bfloat16 once (o and the gradients of bfloat16 inputs),
//     else 0 (S_T is float32).
//   d_g is a reverse cumulative sum of q d_q - k d_k over the rest of the chunk; under
//     strong decay these terms nearly cancel (d_g itself is e^g times smaller), so its
//     error scales with them: |err_t| <= bf |ref_t| + 4 etc (RMS(ref) + M_t),
//     M_t = sum over rows r >= t of t's chunk of |q_r d_q_r| + |k_r d_k_r| (summed over
//     channels for a per-head gate).
// A wrong index or a missed term moves results by O(1) relative, far above these bounds.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "core/storage.h"
#include "ops/elementwise.h"
#include "ops/scan.h"
#include "ops/shape.h"
#include "tests/cuda/cuda_check.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

struct GlaGpuCase {
  int64_t B, T, H, K, V, chunk;
  bool scalar_gate, h0;
  double g_lo = -1.0, g_hi = -0.05;  // log gates uniform in [g_lo, g_hi]
  bool fused = false;                // q, k, v slices of one [B, T, H, 2K + V] tensor
  bool h0_like_inputs = false;       // h0 in the inputs' dtype (else float32)
};

std::string case_name(const GlaGpuCase& c, DType dt) {
  auto num = [](double x) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", x);
    return std::string(buf);
  };
  return "gla(B=" + std::to_string(c.B) + ",T=" + std::to_string(c.T) +
         ",H=" + std::to_string(c.H) + ",K=" + std::to_string(c.K) + ",V=" + std::to_string(c.V) +
         ",chunk=" + std::to_string(c.chunk) + ",g=" + (c.scalar_gate ? "[B,T,H]" : "[B,T,H,K]") +
         " in [" + num(c.g_lo) + "," + num(c.g_hi) +
         "],h0=" + (c.h0 ? (c.h0_like_inputs ? dtype_name(dt) : "float32") : "no") +
         (c.fused ? ",q/k/v slices of [B,T,H,2K+V]" : "") + "," + dtype_name(dt) + ")";
}

Shape gate_shape(const GlaGpuCase& c) {
  return c.scalar_gate ? Shape{c.B, c.T, c.H} : Shape{c.B, c.T, c.H, c.K};
}

double e32(const GlaGpuCase& c) {
  const double C = static_cast<double>(std::min(c.chunk, std::max<int64_t>(c.T, 1)));
  const double g_max = std::max(std::abs(c.g_lo), std::abs(c.g_hi));
  return 2e-5 + 8 * kU * C * g_max * 1.4426950408889634;
}

// e32 plus TF32 rounding of the chunk products' operands (see the header).
double etc(const GlaGpuCase& c) { return e32(c) + std::ldexp(1.0, -9); }

struct GlaOut {
  Tensor o, S, dq, dk, dv, dg, dh0;
};

// The seven results as CPU float64, in a fixed order, with their names.
constexpr const char* kNames[] = {"o", "S_T", "d_q", "d_k", "d_v", "d_g", "d_h0"};
std::vector<Tensor> all(const GlaOut& r) { return {r.o, r.S, r.dq, r.dk, r.dv, r.dg, r.dh0}; }

// The inputs of one case as CPU float32 values, bf16-rounded where the GPU stores bf16.
struct GlaInputs {
  Tensor q, k, v, g, h0, d_o, d_S;
};

GlaInputs make_inputs(const GlaGpuCase& c, DType dt, uint64_t seed) {
  Generator gen(seed);
  auto in = [&](const Shape& s, double lo, double hi, bool stored_as_dt) {
    Tensor t = gen.uniform(s, lo, hi);
    return stored_as_dt && dt == DType::kBFloat16 ? round_to_bf16(t) : t;
  };
  GlaInputs x;
  x.q = in({c.B, c.T, c.H, c.K}, -1, 1, true);
  x.k = in({c.B, c.T, c.H, c.K}, -1, 1, true);
  x.v = in({c.B, c.T, c.H, c.V}, -1, 1, true);
  x.g = in(gate_shape(c), c.g_lo, c.g_hi, true);
  if (c.h0) x.h0 = in({c.B, c.H, c.K, c.V}, -1, 1, c.h0_like_inputs);
  x.d_o = in({c.B, c.T, c.H, c.V}, -1, 1, true);
  x.d_S = in({c.B, c.H, c.K, c.V}, -1, 1, false);  // S_T is float32
  return x;
}

// The CPU op in float64: outputs and gradients for the loss sum(o d_o) + sum(S_T d_S).
GlaOut cpu_reference(const GlaGpuCase& c, const GlaInputs& x) {
  auto leaf64 = [](const Tensor& t) {
    Tensor l = t.to(DType::kFloat64).detach();
    l.set_requires_grad(true);
    return l;
  };
  std::vector<Tensor> in = {leaf64(x.q), leaf64(x.k), leaf64(x.v), leaf64(x.g)};
  if (c.h0) in.push_back(leaf64(x.h0));
  ChunkOptions opt;
  opt.chunk = c.chunk;
  RecurrentOutput r = gla(in[0], in[1], in[2], in[3], c.h0 ? in[4] : Tensor(), opt);
  std::vector<Tensor> gr = autograd::grad({r.out, r.final_state}, in,
                                          {x.d_o.to(DType::kFloat64), x.d_S.to(DType::kFloat64)});
  return {r.out.detach(), r.final_state.detach(), gr[0], gr[1], gr[2],
          gr[3],          c.h0 ? gr[4] : Tensor()};
}

// The op on the GPU in `dt`; results copied back to the CPU as float64.
GlaOut gpu_run(const GlaGpuCase& c, const GlaInputs& x, DType dt) {
  const Device cuda = Device::cuda();
  auto leaf = [&](const Tensor& t, DType d) {
    Tensor l = copy_to(t, d, cuda);
    l.set_requires_grad(true);
    return l;
  };
  std::vector<Tensor> leaves;
  Tensor q, k, v;
  if (c.fused) {
    Tensor fused = leaf(concat({x.q, x.k, x.v}, 3), dt);  // [B, T, H, 2K + V]
    q = fused.slice(3, 0, c.K);
    k = fused.slice(3, c.K, 2 * c.K);
    v = fused.slice(3, 2 * c.K, 2 * c.K + c.V);
    REQUIRE_FALSE(q.is_contiguous());
    leaves = {fused};
  } else {
    q = leaf(x.q, dt);
    k = leaf(x.k, dt);
    v = leaf(x.v, dt);
    leaves = {q, k, v};
  }
  Tensor g = leaf(x.g, dt);
  leaves.push_back(g);
  Tensor h0 = c.h0 ? leaf(x.h0, c.h0_like_inputs ? dt : DType::kFloat32) : Tensor();
  if (c.h0) leaves.push_back(h0);
  ChunkOptions opt;
  opt.chunk = c.chunk;
  RecurrentOutput r = gla(q, k, v, g, h0, opt);
  CHECK(r.out.device().is_cuda());
  CHECK(r.out.dtype() == dt);
  CHECK(r.final_state.dtype() == DType::kFloat32);
  std::vector<Tensor> gr =
      autograd::grad({r.out, r.final_state}, leaves,
                     {copy_to(x.d_o, dt, cuda), copy_to(x.d_S, DType::kFloat32, cuda)});
  auto host = [](const Tensor& t) {
    return t.defined() ? copy_to(t.detach(), DType::kFloat64, Device::cpu()) : Tensor();
  };
  GlaOut out;
  out.o = host(r.out);
  out.S = host(r.final_state);
  size_t i = 0;
  if (c.fused) {
    CHECK(gr[0].dtype() == dt);
    Tensor d = host(gr[i++]);
    out.dq = d.slice(3, 0, c.K).contiguous();
    out.dk = d.slice(3, c.K, 2 * c.K).contiguous();
    out.dv = d.slice(3, 2 * c.K, 2 * c.K + c.V).contiguous();
  } else {
    for (int j = 0; j < 3; ++j) CHECK(gr[j].dtype() == dt);
    out.dq = host(gr[i++]);
    out.dk = host(gr[i++]);
    out.dv = host(gr[i++]);
  }
  CHECK(gr[i].dtype() == dt);
  out.dg = host(gr[i++]);
  if (c.h0) {
    CHECK(gr[i].dtype() == h0.dtype());
    out.dh0 = host(gr[i]);
  }
  return out;
}

double rms(const std::vector<double>& x) {
  double s = 0;
  for (double e : x) s += e * e;
  return std::sqrt(s / std::max<size_t>(x.size(), 1));
}

// Relative RMS error <= rms_tol and |got - ref| <= bf |ref| + elem_tol * RMS(ref) elementwise.
void check_values(const std::string& what, const Tensor& got, const Tensor& ref, double bf,
                  double tol) {
  INFO(what);
  REQUIRE(got.defined());
  REQUIRE(got.shape() == ref.shape());
  const std::vector<double> g = values_of(got), e = values_of(ref);
  double num = 0;
  for (size_t i = 0; i < g.size(); ++i) num += (g[i] - e[i]) * (g[i] - e[i]);
  const double r = rms(e), rel = std::sqrt(num / g.size()) / std::max(r, 1e-300);
  INFO("relative RMS error " << rel << " (allowed " << bf + tol << "), reference RMS " << r);
  CHECK(rel <= bf + tol);
  std::vector<double> bound(e.size());
  for (size_t i = 0; i < e.size(); ++i) bound[i] = bf * std::abs(e[i]) + 10 * tol * r;
  check_bound(what, got, e, bound);
}

// d_g against the bound of the header: bf |ref_t| + 4 e32 (RMS(ref) + M_t).
void check_dg(const std::string& what, const GlaGpuCase& c, const GlaInputs& x, const GlaOut& ref,
              const Tensor& got, double bf, double tol) {
  const std::vector<double> q = values_of(x.q), k = values_of(x.k);
  const std::vector<double> dq = values_of(ref.dq), dk = values_of(ref.dk);
  const std::vector<double> e = values_of(ref.dg);
  const int64_t C = std::min(c.chunk, std::max<int64_t>(c.T, 1));
  const double r = rms(e);
  std::vector<double> bound(e.size());
  for (int64_t b = 0; b < c.B; ++b) {
    for (int64_t h = 0; h < c.H; ++h) {
      for (int64_t t = 0; t < c.T; ++t) {
        const int64_t end = std::min(c.T, (t / C + 1) * C);
        const int64_t row_t = (b * c.T + t) * c.H + h;
        for (int64_t i = 0; i < (c.scalar_gate ? 1 : c.K); ++i) {
          double M = 0;
          for (int64_t s = t; s < end; ++s) {
            const int64_t row = (b * c.T + s) * c.H + h;
            for (int64_t j = c.scalar_gate ? 0 : i; j < (c.scalar_gate ? c.K : i + 1); ++j) {
              const int64_t a = row * c.K + j;
              M += std::abs(q[a] * dq[a]) + std::abs(k[a] * dk[a]);
            }
          }
          const int64_t idx = c.scalar_gate ? row_t : row_t * c.K + i;
          bound[idx] = bf * std::abs(e[idx]) + 4 * tol * (r + M);
        }
      }
    }
  }
  check_bound(what, got, e, bound);
}

void check_case(const GlaGpuCase& c, DType dt, uint64_t seed) {
  const std::string name = case_name(c, dt);
  INFO(name);
  const GlaInputs x = make_inputs(c, dt, seed);
  const GlaOut ref = cpu_reference(c, x);
  const GlaOut got = gpu_run(c, x, dt);
  const double bf = dt == DType::kBFloat16 ? kBf : 0.0, tol = e32(c), tol_tc = etc(c);
  const double bf_h0 = c.h0_like_inputs ? bf : 0.0;
  check_values(name + " o", got.o, ref.o, bf, tol_tc);
  const double tol_state = dt == DType::kBFloat16 ? tol_tc : tol;  // see the header
  check_values(name + " S_T", got.S, ref.S, 0.0, tol_state);
  check_values(name + " d_q", got.dq, ref.dq, bf, tol_tc);
  check_values(name + " d_k", got.dk, ref.dk, bf, tol_tc);
  check_values(name + " d_v", got.dv, ref.dv, bf, tol_tc);
  check_dg(name + " d_g", c, x, ref, got.dg, bf, tol_tc);
  if (c.h0) check_values(name + " d_h0", got.dh0, ref.dh0, bf_h0, tol_state);
}

}  // namespace

RESONA_GPU_TEST(
    "gla CUDA vs CPU float64, forward and all gradients (B,T,H,K,V,chunk = 2,5,3,75,150,64; "
    "1,64,2,64,64,64; 2,64,2,75,150,32; 2,129,2,128,256,64; 2,65,2,75,150,64 fused; "
    "1,100,2,75,150,64 and 2,70,2,16,24,64 with g in [-6,-4]; 2,129,2,40,33,64 with g in "
    "[-4,-0.05]; 1,9,1,5,7,1; 2,41,2,6,3,20; "
    "per-key and per-head gates; h0 none, float32 or bf16; float32 and bfloat16)") {
  const std::vector<GlaGpuCase> cases = {
      {2, 5, 3, 75, 150, 64, false, true},                      // T < C
      {1, 64, 2, 64, 64, 64, false, false, -0.3, -0.003},       // T = C, GLA-like gates
      {2, 64, 2, 75, 150, 32, true, true},                      // T = 2C, per-head gate
      {2, 129, 2, 128, 256, 64, false, true, -0.3, -0.003},     // T = 2C + 1
      {2, 65, 2, 75, 150, 64, false, true, -1, -0.05, true},    // fused projection
      {1, 100, 2, 75, 150, 64, false, true, -6, -4},            // strong decay
      {2, 70, 2, 16, 24, 64, true, true, -6, -4, false, true},  // strong, per head, h0 as inputs
      {2, 129, 2, 40, 33, 64, false, true, -4, -0.05},  // sub-chunks factored or pair by pair
      {1, 9, 1, 5, 7, 1, false, true},                  // chunk 1
      {2, 41, 2, 6, 3, 20, true, false},                // chunk 20, T = 2C + 1
  };
  uint64_t seed = 900;
  for (const GlaGpuCase& c : cases) {
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) check_case(c, dt, seed++);
  }
}

RESONA_GPU_TEST(
    "gla CUDA reruns are bit-identical (B=2,T=129,H=2,K=75,V=150,chunk=64, per-key and per-head "
    "gates, h0, float32 and bfloat16)") {
  for (bool scalar : {false, true}) {
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      const GlaGpuCase c{2, 129, 2, 75, 150, 64, scalar, true};
      INFO(case_name(c, dt));
      const GlaInputs x = make_inputs(c, dt, scalar ? 950 : 951);
      const GlaOut a = gpu_run(c, x, dt), b = gpu_run(c, x, dt);
      const std::vector<Tensor> ra = all(a), rb = all(b);
      for (size_t i = 0; i < ra.size(); ++i) CHECK_MESSAGE(bits(ra[i]) == bits(rb[i]), kNames[i]);
    }
  }
}

RESONA_GPU_TEST(
    "gla CUDA split sequence: [0,T) equals [0,t) then [t,T) with the state carried, outputs "
    "and gradients (B=2,T=150,H=2,K=75,V=150,chunk=64, t=64 and 97, per-key and per-head "
    "gates, float32 and bfloat16)") {
  for (bool scalar : {false, true}) {
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      const GlaGpuCase c{2, 150, 2, 75, 150, 64, scalar, true};
      INFO(case_name(c, dt));
      const GlaInputs x = make_inputs(c, dt, scalar ? 960 : 961);
      const Device cuda = Device::cuda();
      auto leaf = [&](const Tensor& t, DType d) {
        Tensor l = copy_to(t, d, cuda);
        l.set_requires_grad(true);
        return l;
      };
      std::vector<Tensor> in = {leaf(x.q, dt), leaf(x.k, dt), leaf(x.v, dt), leaf(x.g, dt),
                                leaf(x.h0, DType::kFloat32)};
      const Tensor d_o = copy_to(x.d_o, dt, cuda), d_S = copy_to(x.d_S, DType::kFloat32, cuda);
      ChunkOptions opt;
      opt.chunk = c.chunk;
      RecurrentOutput full = gla(in[0], in[1], in[2], in[3], in[4], opt);
      const std::vector<Tensor> g_full =
          autograd::grad({full.out, full.final_state}, in, {d_o, d_S});
      // Both sides are float32 approximations of the same values (bf16-rounded for o and
      // the input gradients): each within the bounds of the first test case, so they are
      // within twice those of each other.
      const double bf = dt == DType::kBFloat16 ? 2 * kBf : 0.0,
                   tol = dt == DType::kBFloat16 ? 2 * etc(c) : 2 * e32(c), tol_tc = 2 * etc(c);
      for (int64_t t_split : {64, 97}) {
        INFO("split at t=" << t_split);
        auto part = [&](int64_t t0, int64_t t1, const Tensor& h) {
          return gla(in[0].slice(1, t0, t1), in[1].slice(1, t0, t1), in[2].slice(1, t0, t1),
                     in[3].slice(1, t0, t1), h, opt);
        };
        RecurrentOutput first = part(0, t_split, in[4]);
        RecurrentOutput second = part(t_split, c.T, first.final_state);
        Tensor joined = concat({first.out, second.out}, 1);
        const std::vector<Tensor> g_split =
            autograd::grad({joined, second.final_state}, in, {d_o, d_S});
        auto host = [](const Tensor& t) {
          return copy_to(t.detach(), DType::kFloat64, Device::cpu());
        };
        check_values("o", host(joined), host(full.out), bf, tol_tc);
        check_values("S_T", host(second.final_state), host(full.final_state), 0.0, tol);
        const char* names[] = {"d_q", "d_k", "d_v", "d_g", "d_h0"};
        for (int i = 0; i < 5; ++i) {
          // d_g: the pieces cut the chunk sums elsewhere, so its cancellation differs; the
          // same relative bound holds here because these gates are mild (|g| <= 1).
          // d_h0 comes from the state recurrence alone (tol: float32 accuracy under float32
          // storage), the rest through the tensor-core products (tol_tc).
          check_values(names[i], host(g_split[i]), host(g_full[i]), i == 4 ? 0.0 : bf,
                       i == 3 ? 4 * tol_tc : (i == 4 ? tol : tol_tc));
        }
      }
    }
  }
}

RESONA_GPU_TEST("gla on CUDA refuses chunk > 64, K > 256, mixed devices and a foreign h0 dtype") {
  const Device cuda = Device::cuda();
  Tensor q = zeros({1, 4, 1, 8}, DType::kFloat32, cuda),
         v = zeros({1, 4, 1, 6}, DType::kFloat32, cuda);
  Tensor g = zeros({1, 4, 1, 8}, DType::kFloat32, cuda);
  ChunkOptions big;
  big.chunk = 65;
  CHECK_THROWS_WITH_AS(gla(q, q, v, g, Tensor(), big),
                       doctest::Contains("CUDA supports chunk 1..64"), Error);
  Tensor wide = zeros({1, 4, 1, 257}, DType::kFloat32, cuda);
  CHECK_THROWS_WITH_AS(gla(wide, wide, v, zeros({1, 4, 1, 257}, DType::kFloat32, cuda)),
                       doctest::Contains("CUDA supports K up to 256"), Error);
  CHECK_THROWS_WITH_AS(gla(q, zeros({1, 4, 1, 8}), v, g),
                       doctest::Contains("tensors on different devices"), Error);
  Tensor qb = zeros({1, 4, 1, 8}, DType::kBFloat16, cuda);
  Tensor vb = zeros({1, 4, 1, 6}, DType::kBFloat16, cuda);
  CHECK_NOTHROW(gla(qb, qb, vb, qb, zeros({1, 1, 8, 6}, DType::kFloat32, cuda)));
  CHECK_NOTHROW(gla(qb, qb, vb, qb, zeros({1, 1, 8, 6}, DType::kBFloat16, cuda)));
  CHECK_THROWS_WITH_AS(gla(q, q, v, g, zeros({1, 1, 8, 6}, DType::kBFloat16, cuda)),
                       doctest::Contains("h0 must be float32"), Error);
}

RESONA_GPU_TEST(
    "gla CUDA timing at B=8,T=2048,H=4,K=75,V=150,chunk=64, bfloat16, GLA gates, with the "
    "backward split by the gradients asked for; also K=V=64 and K=128,V=256 (runs only with "
    "RESONA_TIME_GLA=1; prints milliseconds)") {
  const char* env = std::getenv("RESONA_TIME_GLA");
  if (env == nullptr || std::string(env) != "1") return;
  const Device cuda = Device::cuda();
  DeviceBackend& dev = backend_for(cuda);
  struct Shape5 {
    int64_t B, T, H, K, V;
  };
  // Which inputs ask for a gradient (q, k, v, g, h0): the backward runs only the kernels
  // those need (d_h0: the state-gradient walk; d_v: that and A/d_v; d_q: that and d_A,
  // then d_q/d_k/d_g).
  struct Variant {
    const char* name;
    bool grad[5];
  };
  const Variant kForward{"forward", {false, false, false, false, false}};
  const Variant kAll{"forward+backward (q, k, v, g)", {true, true, true, true, false}};
  const std::vector<Variant> breakdown = {
      kForward,
      {"forward+backward (h0 only)", {false, false, false, false, true}},
      {"forward+backward (v only)", {false, false, true, false, false}},
      {"forward+backward (q only)", {true, false, false, false, false}},
      kAll,
  };
  bool first = true;
  for (const Shape5 s :
       {Shape5{8, 2048, 4, 75, 150}, Shape5{8, 2048, 4, 64, 64}, Shape5{8, 2048, 4, 128, 256}}) {
    Generator gen(7);
    auto input = [&](const Shape& shape, double lo, double hi, DType dt) {
      return copy_to(gen.uniform(shape, lo, hi), dt, cuda);
    };
    const std::vector<Tensor> base = {input({s.B, s.T, s.H, s.K}, -1, 1, DType::kBFloat16),
                                      input({s.B, s.T, s.H, s.K}, -1, 1, DType::kBFloat16),
                                      input({s.B, s.T, s.H, s.V}, -1, 1, DType::kBFloat16),
                                      input({s.B, s.T, s.H, s.K}, -0.3, -0.003, DType::kBFloat16),
                                      input({s.B, s.H, s.K, s.V}, -1, 1, DType::kFloat32)};
    const Tensor d_o = input({s.B, s.T, s.H, s.V}, -1, 1, DType::kBFloat16);
    const Tensor d_S = zeros({s.B, s.H, s.K, s.V}, DType::kFloat32, cuda);
    for (const Variant& var : first ? breakdown : std::vector<Variant>{kForward, kAll}) {
      std::vector<Tensor> x, leaves;
      for (int i = 0; i < 5; ++i) {
        x.push_back(base[i].detach());
        if (var.grad[i]) {
          x.back().set_requires_grad(true);
          leaves.push_back(x.back());
        }
      }
      const bool with_h0 = var.grad[4];
      auto step = [&] {
        if (leaves.empty()) {
          NoGradGuard no_grad;
          gla(x[0], x[1], x[2], x[3], with_h0 ? x[4] : Tensor());
          return;
        }
        RecurrentOutput r = gla(x[0], x[1], x[2], x[3], with_h0 ? x[4] : Tensor());
        autograd::grad({r.out, r.final_state}, leaves, {d_o, d_S});
      };
      for (int i = 0; i < 3; ++i) step();
      dev.synchronize(0);
      constexpr int kIters = 20;
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < kIters; ++i) step();
      dev.synchronize(0);
      const auto t1 = std::chrono::steady_clock::now();
      const double ms = std::chrono::duration<double, std::milli>(t1 - t0).count() / kIters;
      std::printf("gla timing B=%lld T=%lld H=%lld K=%lld V=%lld bfloat16 on %s: %s %.3f ms\n",
                  static_cast<long long>(s.B), static_cast<long long>(s.T),
                  static_cast<long long>(s.H), static_cast<long long>(s.K),
                  static_cast<long long>(s.V), dev.device_name(0).c_str(), var.name, ms);
    }
    first = false;
  }
}

}  // namespace resona::testing
