// CUDA against CPU for the Resona retrieval ops (ops/resona.h, kernels in cuda/resona.cu):
//
// chunk_search: T = 129 with c = 2 and 16, k = 1 and 3, b = 1 and 4, T = 4096 with c = 2
//   (more rows than one scratch slab), T < c, identical chunks (exact ties) and zero rows,
//   float32 and bfloat16, contiguous and strided queries; ids bit-identical over reruns.
// chunk_attention: forward and the backward run by the autograd engine (d_q, d_k, d_v,
//   d_bias), T = 129 with c = 2 and 16, kk = 1 and 3, Dk = Dv = 32, Dk = 20 (idle lanes),
//   Dk/Dv up to 160 (8 head dims per lane), b = 1 and 4, windows 0 and 5 (overlapping the
//   retrieved chunks), -1 slots, bias or not, float32 and bfloat16, contiguous and strided
//   q, k, v, d_o, idx on the GPU or on the CPU; gradients bit-identical over reruns; the
//   eligibility check on device ids. The same comparisons with the block kernels forced
//   (b = 16, 64, 100, odd T, D = 150, 75 and 64, kk = 1..4, c = 2, 16, 64, windows 0, 5, 7,
//   70), whose tile products run on TF32 tensor cores (tolerance kTf32Tol).
//
// References: the CPU ops in float64 on the same values (bf16-rounded for bfloat16), so
// every tolerance is the GPU's own error.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "core/storage.h"
#include "ops/resona.h"
#include "tests/cuda/cuda_check.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// x (CPU float32 [d0, d1, d2(, d3)]) on the GPU as `dtype`, in one of three layouts:
//   0: contiguous;
//   1: dims 1 and 2 swapped in memory (q [B, T, H, D] from a [B, H, T, D] buffer);
//   2: every other element of a buffer twice as wide in the last dim (last stride 2).
Tensor to_cuda_layout(const Tensor& x, DType dtype, int layout) {
  if (layout == 0) return copy_to(x, dtype, Device::cuda());
  const Shape& s = x.shape();
  if (layout == 1) {
    Tensor base = copy_to(x.transpose(1, 2).contiguous(), dtype, Device::cuda());
    Shape st = base.strides();
    std::swap(st[1], st[2]);
    return make_view(base, s, st, 0);
  }
  Shape wide_shape = s;
  wide_shape.back() *= 2;
  Tensor wide = zeros(wide_shape);
  wide.slice(x.dim() - 1, 0, wide_shape.back(), 2).copy_(x);
  Tensor base = copy_to(wide, dtype, Device::cuda());
  Shape st = base.strides();
  st.back() = 2;
  return make_view(base, s, st, 0);
}

std::string layout_name(int layout) {
  return layout == 0 ? "contiguous" : layout == 1 ? "transposed" : "last-stride-2";
}

// ---------------------------------------------------------------- chunk_search

struct SearchCase {
  int64_t B, T, E, c, k, b;
  bool ties = false;  // chunk rows repeat (exact ties) and some rows are zero
};

std::string search_name(const SearchCase& s, DType dt, int layout) {
  return "chunk_search(B=" + std::to_string(s.B) + ",T=" + std::to_string(s.T) +
         ",E=" + std::to_string(s.E) + ",c=" + std::to_string(s.c) + ",k=" + std::to_string(s.k) +
         ",b=" + std::to_string(s.b) + (s.ties ? ",ties" : "") + "," + dtype_name(dt) + "," +
         layout_name(layout) + ")";
}

// cos(query[n, q*b], chunk[n, j]) in float64 (0 for a zero vector).
double cosine(const std::vector<double>& qv, const std::vector<double>& ev, const SearchCase& s,
              int64_t n, int64_t q, int64_t j) {
  const int64_t NC = s.T / s.c;
  double dot = 0, nq = 0, ne = 0;
  for (int64_t d = 0; d < s.E; ++d) {
    const double x = qv[(n * s.T + q * s.b) * s.E + d], y = ev[(n * NC + j) * s.E + d];
    dot += x * y;
    nq += x * x;
    ne += y * y;
  }
  return nq > 0 && ne > 0 ? dot / (std::sqrt(nq) * std::sqrt(ne)) : 0.0;
}

void check_search(const SearchCase& s, DType dt, int layout, uint64_t seed) {
  const std::string name = search_name(s, dt, layout);
  INFO(name);
  Generator gen(seed);
  const int64_t NC = s.T / s.c, NQ = ceil_div(s.T, s.b);
  Tensor query = gen.uniform({s.B, s.T, s.E}, -1, 1);
  Tensor chunks = gen.uniform({s.B, NC, s.E}, -1, 1);
  if (s.ties) {
    // Chunk j repeats chunk j % 5; chunks 3 mod 5 are zero, as is every 7th query row.
    std::vector<float> ev = chunks.to_vector<float>(), qv = query.to_vector<float>();
    for (int64_t n = 0; n < s.B; ++n) {
      for (int64_t j = 0; j < NC; ++j) {
        for (int64_t d = 0; d < s.E; ++d) {
          ev[(n * NC + j) * s.E + d] = j % 5 == 3 ? 0.f : ev[(n * NC + j % 5) * s.E + d];
        }
      }
      for (int64_t t = 0; t < s.T; t += 7) {
        for (int64_t d = 0; d < s.E; ++d) qv[(n * s.T + t) * s.E + d] = 0.f;
      }
    }
    chunks = from_vector(ev, {s.B, NC, s.E});
    query = from_vector(qv, {s.B, s.T, s.E});
  }
  if (dt == DType::kBFloat16) {
    query = round_to_bf16(query);
    chunks = round_to_bf16(chunks);
  }
  const ChunkSearchOptions opt{.chunk = s.c, .top_k = s.k, .query_block = s.b};
  const std::vector<int32_t> want =
      chunk_search(copy_to(query, DType::kFloat64, Device::cpu()),
                   copy_to(chunks, DType::kFloat64, Device::cpu()), opt)
          .to_vector<int32_t>();
  Tensor got_t =
      chunk_search(to_cuda_layout(query, dt, layout), to_cuda_layout(chunks, dt, 0), opt);
  REQUIRE(got_t.device().is_cuda());
  REQUIRE(got_t.dtype() == DType::kInt32);
  REQUIRE(got_t.shape() == Shape{s.B, NQ, s.k});
  const std::vector<int32_t> got = got_t.to_vector<int32_t>();
  // The GPU's float32 cosines differ from the CPU's float64 ones by a few E u (inputs in
  // [-1, 1], normalised): ids may swap only between chunks whose exact cosines are within
  // that; 1e-5 is ~10x the float32 error at E = 32. Exact ties stay exact (identical rows
  // give identical float32 scores), so they must resolve to the same ids.
  const std::vector<double> qv = query.to_vector<double>(), ev = chunks.to_vector<double>();
  int64_t swapped = 0;
  for (int64_t n = 0; n < s.B; ++n) {
    for (int64_t q = 0; q < NQ; ++q) {
      const int64_t m = std::min(NC, (q * s.b + 1) / s.c);
      const int32_t* g = got.data() + (n * NQ + q) * s.k;
      const int32_t* w = want.data() + (n * NQ + q) * s.k;
      for (int64_t t = 0; t < s.k; ++t) {
        if (g[t] == w[t]) continue;
        INFO("sequence " << n << ", block " << q << ", slot " << t << ": GPU id " << g[t]
                         << ", CPU id " << w[t]);
        REQUIRE(t < m);  // the -1 slots agree
        REQUIRE(g[t] >= 0);
        REQUIRE(g[t] < m);
        CHECK(std::count(g, g + s.k, g[t]) == 1);
        CHECK(std::abs(cosine(qv, ev, s, n, q, g[t]) - cosine(qv, ev, s, n, q, w[t])) <= 1e-5);
        CHECK_FALSE(s.ties);
        ++swapped;
      }
    }
  }
  MESSAGE(name << ": " << swapped << " ids differ from the CPU's within the tolerance");
  CHECK(chunk_search(to_cuda_layout(query, dt, layout), to_cuda_layout(chunks, dt, 0), opt)
            .to_vector<int32_t>() == got);
}

// ---------------------------------------------------------------- chunk_attention

struct AttnCase {
  int64_t B, T, H, Dk, Dv, c, b, w, kk;
  bool bias;
};

std::string attn_name(const AttnCase& a, DType dt, int layout, bool idx_on_cpu) {
  return "chunk_attention(B=" + std::to_string(a.B) + ",T=" + std::to_string(a.T) +
         ",H=" + std::to_string(a.H) + ",Dk=" + std::to_string(a.Dk) +
         ",Dv=" + std::to_string(a.Dv) + ",c=" + std::to_string(a.c) + ",b=" + std::to_string(a.b) +
         ",w=" + std::to_string(a.w) + ",kk=" + std::to_string(a.kk) +
         ",bias=" + (a.bias ? "yes" : "no") + "," + dtype_name(dt) + "," + layout_name(layout) +
         (idx_on_cpu ? ",idx on cpu" : "") + ")";
}

// Valid ids: each slot -1 with probability 0.25, else a distinct eligible chunk (the most
// recent one half of the time, so windows overlap retrieved chunks).
Tensor random_ids(Generator& gen, const AttnCase& a) {
  const int64_t NQ = ceil_div(a.T, a.b), NC = a.T / a.c;
  std::vector<int32_t> ids;
  for (int64_t n = 0; n < a.B; ++n) {
    for (int64_t q = 0; q < NQ; ++q) {
      std::vector<int64_t> pool;
      for (int64_t j = std::min(NC, (q * a.b + 1) / a.c) - 1; j >= 0; --j) pool.push_back(j);
      for (int64_t s = 0; s < a.kk; ++s) {
        if (pool.empty() || gen.next_double() < 0.25) {
          ids.push_back(-1);
          continue;
        }
        const int64_t at = gen.next_double() < 0.5 ? 0 : gen.next_int(0, pool.size());
        ids.push_back(static_cast<int32_t>(pool[at]));
        pool.erase(pool.begin() + at);
      }
    }
  }
  return from_vector(ids, {a.B, NQ, a.kk});
}

struct AttnOut {
  Tensor o, d_q, d_k, d_v, d_bias;
};

AttnOut run_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& idx,
                      const Tensor& bias, const Tensor& d_o, const ChunkAttentionOptions& opt) {
  Tensor o = chunk_attention(q, k, v, idx, bias, opt);
  o.backward(d_o);
  return {o.detach(), q.grad(), k.grad(), v.grad(), bias.defined() ? bias.grad() : Tensor()};
}

// |got - want| <= rel |want| + tol (|want| + M) + floor, M = max |want| over the tensor.
void check_tensor(const std::string& what, const Tensor& got, const Tensor& want, double rel,
                  double tol, double floor = 0) {
  REQUIRE(got.defined());
  const std::vector<double> w = values_of(want);
  double M = 0;
  for (double x : w) M = std::max(M, std::abs(x));
  std::vector<double> bound(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    bound[i] = rel * std::abs(w[i]) + tol * (std::abs(w[i]) + M) + floor;
  }
  check_bound(what, got, w, bound);
}

// max |got - want| / (|want| + M), M = max |want|: the error in the units of check_tensor's tol.
double tol_used(const Tensor& got, const Tensor& want) {
  const std::vector<double> g = values_of(got), w = values_of(want);
  double M = 0, worst = 0;
  for (double x : w) M = std::max(M, std::abs(x));
  for (size_t i = 0; i < w.size(); ++i) {
    worst = std::max(worst, std::abs(g[i] - w[i]) / (std::abs(w[i]) + M + 1e-300));
  }
  return worst;
}

// Tolerance (in check_tensor's tol) of the block kernels, whose six tile products run on
// TF32 tensor cores: each operand is rounded to a 10-bit mantissa (relative error <= 2^-11;
// exact for bfloat16 inputs), so each product term is off by <= 2^-10 relative, accumulated
// in float32. The roundings are independent and of random sign: a sum of n terms is off by
// ~2^-11 sqrt(n) rms |term|, below 2^-10 of the tensor's largest entry for the sums here
// (logits over Dk <= 200 scaled by Dk^-1/2, o and d_q over <= 256 keys, d_k and d_v over
// <= 300 queries); a logit error shifts P by the same relative amount. 2e-3 (~2 x 2^-10) of
// (|ref| + max |ref|) covers that with margin, and one wrong or missing key still moves an
// output by ~|v| / 256 (P at the largest key sets, inputs in [-1, 1]), several times the
// bound. Seen on an H200 over the block-kernel cases: float32 at most 5.9e-4 (d_k) while
// the backward formed D_i = sum_p P dP from the same TF32 products as dS; since it takes
// D_i = d_o . o from the float32 output, d_bias (sum dS over a slot, where the two no
// longer cancel to the last bit) reaches 1.1e-3, the rest <= 5.1e-4.
constexpr double kTf32Tol = 2e-3;

void check_attention(const AttnCase& a, DType dt, int layout, bool idx_on_cpu, uint64_t seed,
                     double tol = 1e-4) {
  const std::string name = attn_name(a, dt, layout, idx_on_cpu);
  INFO(name);
  Generator gen(seed);
  auto input = [&](const Shape& s) {
    Tensor t = gen.uniform(s, -1, 1);
    return dt == DType::kBFloat16 ? round_to_bf16(t) : t;
  };
  const int64_t NQ = ceil_div(a.T, a.b);
  Tensor q = input({a.B, a.T, a.H, a.Dk}), k = input({a.B, a.T, a.H, a.Dk});
  Tensor v = input({a.B, a.T, a.H, a.Dv}), d_o = input({a.B, a.T, a.H, a.Dv});
  Tensor bias = a.bias ? input({a.B, NQ, a.kk}) : Tensor();
  Tensor idx = random_ids(gen, a);
  const ChunkAttentionOptions opt{.chunk = a.c, .query_block = a.b, .local_window = a.w};

  auto f64 = [](const Tensor& t) {
    return t.defined() ? grad_leaf(copy_to(t, DType::kFloat64, Device::cpu())) : Tensor();
  };
  const AttnOut ref = run_attention(f64(q), f64(k), f64(v), idx, f64(bias),
                                    copy_to(d_o, DType::kFloat64, Device::cpu()), opt);
  auto gpu_run = [&] {
    Tensor idx_dev = idx_on_cpu ? idx : copy_to(idx, DType::kInt32, Device::cuda());
    return run_attention(
        grad_leaf(to_cuda_layout(q, dt, layout)), grad_leaf(to_cuda_layout(k, dt, layout)),
        grad_leaf(to_cuda_layout(v, dt, layout)), idx_dev,
        a.bias ? grad_leaf(to_cuda_layout(bias, dt, layout == 0 ? 0 : 2)) : Tensor(),
        to_cuda_layout(d_o, dt, layout), opt);
  };
  const AttnOut g = gpu_run();
  REQUIRE(g.o.device().is_cuda());
  REQUIRE(g.o.dtype() == dt);
  // Both dtypes compute in float32 on identical input values; bfloat16 adds the rounding
  // of each output (2^-8 relative). float32: every logit is a float32 dot of Dk <= 160
  // terms of magnitude <= 1 times Dk^-1/2 (error <= Dk u |terms| ~ 1e-5 at Dk = 160);
  // exponentials and the softmax sums add a few u per term; each output sums at most
  // kk c + w = 53 weighted terms, d_k and d_v at most ~130 queries' terms, all bounded by
  // the tensor's largest entries. 1e-4 of (|ref| + max |ref|) is several times the worst
  // case and far below the effect of one wrong or missing key (~1/53 of max |ref|).
  // d_bias sums dS = P (dP - D_i), which cancel to 0 over a key set that is one slot's
  // chunk alone: per (i, h) the GPU's (sum P dP) - D_i (sum P) is off by up to
  // (kk c + w + 2) u max|dP| <= (kk c + w + 2) u Dv, over b H such terms; twice that is
  // its absolute floor.
  const double rel = dt == DType::kBFloat16 ? kBf : 0;
  check_tensor(name + " o", g.o, ref.o, rel, tol);
  check_tensor(name + " d_q", g.d_q, ref.d_q, rel, tol);
  check_tensor(name + " d_k", g.d_k, ref.d_k, rel, tol);
  check_tensor(name + " d_v", g.d_v, ref.d_v, rel, tol);
  const double floor = 2.0 * static_cast<double>(a.b * a.H * (a.kk * a.c + a.w + 2) * a.Dv) * kU;
  if (a.bias) check_tensor(name + " d_bias", g.d_bias, ref.d_bias, rel, tol, floor);
  if (tol != 1e-4) {
    MESSAGE(name << ": tol used o " << tol_used(g.o, ref.o) << ", d_q " << tol_used(g.d_q, ref.d_q)
                 << ", d_k " << tol_used(g.d_k, ref.d_k) << ", d_v " << tol_used(g.d_v, ref.d_v)
                 << ", d_bias " << (a.bias ? tol_used(g.d_bias, ref.d_bias) : 0.0) << " (of " << tol
                 << ")");
  }

  // No atomics: reruns are bit-identical.
  const AttnOut again = gpu_run();
  CHECK_MESSAGE(bits(again.o) == bits(g.o), name, " o rerun");
  CHECK_MESSAGE(bits(again.d_q) == bits(g.d_q), name, " d_q rerun");
  CHECK_MESSAGE(bits(again.d_k) == bits(g.d_k), name, " d_k rerun");
  CHECK_MESSAGE(bits(again.d_v) == bits(g.d_v), name, " d_v rerun");
  if (a.bias) CHECK_MESSAGE(bits(again.d_bias) == bits(g.d_bias), name, " d_bias rerun");
}

// Sets RESONA_CHUNK_ATTENTION_KERNEL (which CUDA kernels chunk_attention runs) for its
// lifetime, then restores the previous value.
class ForceAttentionKernel {
 public:
  explicit ForceAttentionKernel(const char* kernel) {
    const char* old = std::getenv(kVar);
    had_ = old != nullptr;
    if (had_) old_ = old;
    setenv(kVar, kernel, 1);
  }
  ~ForceAttentionKernel() {
    if (had_) {
      setenv(kVar, old_.c_str(), 1);
    } else {
      unsetenv(kVar);
    }
  }
  ForceAttentionKernel(const ForceAttentionKernel&) = delete;
  ForceAttentionKernel& operator=(const ForceAttentionKernel&) = delete;

 private:
  static constexpr const char* kVar = "RESONA_CHUNK_ATTENTION_KERNEL";
  bool had_ = false;
  std::string old_;
};

}  // namespace

RESONA_GPU_TEST(
    "chunk_search CUDA vs CPU (T=129 c=2/16 k=1/3 b=1/4; T=4096 c=2 over two slabs; T<c; "
    "exact ties and zero rows; float32, bfloat16; contiguous and strided queries)") {
  const SearchCase cases[] = {
      {2, 129, 32, 2, 1, 1},  {2, 129, 20, 16, 3, 1},      {2, 129, 32, 2, 3, 4},
      {1, 129, 32, 16, 1, 4}, {2, 129, 24, 2, 3, 1, true}, {1, 7, 8, 16, 2, 1},
      {3, 4096, 16, 2, 3, 1}, {1, 300, 600, 4, 2, 3},
  };
  uint64_t seed = 900;
  for (const SearchCase& s : cases) {
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      for (int layout : {0, 1}) {
        if (s.T == 4096 && (dt == DType::kBFloat16 || layout == 1)) continue;  // CPU time
        check_search(s, dt, layout, seed++);
      }
    }
  }
}

RESONA_OP_GPU_TEST(chunk_attention, values,
                   "chunk_attention CUDA vs CPU fwd+bwd (T=129, c=2/16, kk=1/3, Dk=Dv=32, Dk=20, "
                   "Dk/Dv up to 160, b=1/4, w=0/5, bias or not; float32, bfloat16; contiguous and "
                   "strided; idx on GPU or CPU)") {
  const AttnCase cases[] = {
      // B, T, H, Dk, Dv, c, b, w, kk, bias
      {2, 129, 2, 32, 32, 2, 1, 0, 1, true},  {2, 129, 2, 32, 32, 2, 1, 5, 3, true},
      {2, 129, 2, 20, 32, 16, 1, 5, 3, true}, {2, 129, 2, 32, 32, 16, 4, 0, 1, false},
      {1, 129, 3, 20, 20, 2, 4, 5, 3, true},  {2, 129, 1, 160, 48, 16, 4, 5, 3, true},
      {1, 129, 2, 64, 48, 2, 1, 5, 1, false}, {1, 129, 2, 128, 100, 2, 4, 5, 2, true},
      {1, 10, 2, 32, 32, 16, 1, 3, 2, true},  // T < c: window only
  };
  uint64_t seed = 1000;
  for (const AttnCase& a : cases) {
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      for (int layout : {0, 1, 2}) check_attention(a, dt, layout, layout == 2, seed++);
    }
  }
}

// The block kernels (a thread block per query tile, keys staged in shared memory, the tile
// products on TF32 tensor cores, per-tile partial sums of d_k, d_v, d_bias reduced in a
// fixed order), forced, against the float64 CPU op. Cases: b = 16, 64 and 100 (two query
// tiles per block), odd T, head dims 150, 75 (padded to 80), 64, 20/32 and 160/200 (every
// fragment-group width), kk = 1..4, c = 2, 16 and 64, windows 0, 5, 7 and 70 (wider than a
// tile, over chunks retrieved or not), bias or not, T < c; and the warp kernels' cases
// (b = 1 and 4) through the block kernels. Tolerance kTf32Tol (see there); each case prints
// its largest error per tensor in check_tensor's tol units (without the bfloat16 rel term).
RESONA_OP_GPU_TEST(
    chunk_attention, values,
    "chunk_attention CUDA block kernels vs CPU fwd+bwd (b=16/64/100, odd T, D=150/75/64, "
    "kk=1..4, c=2/16/64, w=0/5/7/70, bias or not; float32, bfloat16; TF32 tiles)") {
  ForceAttentionKernel force("block");
  const AttnCase cases[] = {
      // B, T, H, Dk, Dv, c, b, w, kk, bias
      {2, 257, 2, 150, 150, 64, 64, 0, 4, true},
      {1, 257, 2, 150, 150, 64, 64, 70, 3, false},
      {2, 129, 2, 64, 64, 2, 16, 0, 2, true},
      {2, 129, 2, 64, 48, 2, 16, 5, 1, true},
      {1, 301, 2, 64, 64, 2, 100, 9, 3, true},
      {1, 200, 3, 20, 32, 16, 64, 5, 4, true},
      {1, 129, 1, 160, 200, 16, 16, 3, 2, true},
      {1, 193, 2, 150, 150, 64, 16, 5, 1, true},
      {1, 10, 2, 32, 32, 16, 16, 3, 2, true},  // T < c: window only
      // head dims 75 (padded to 80 in the tiles) and 150/75 mixed, odd T
      {2, 203, 2, 75, 75, 16, 64, 0, 4, true},
      {1, 327, 2, 150, 75, 64, 64, 7, 4, true},
      {1, 131, 3, 75, 150, 2, 100, 0, 3, false},
  };
  uint64_t seed = 2000;
  for (const AttnCase& a : cases) {
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      for (int layout : {0, 2}) check_attention(a, dt, layout, layout == 2, seed++, kTf32Tol);
    }
  }
  const AttnCase warp_cases[] = {
      {2, 129, 2, 32, 32, 2, 1, 5, 3, true},
      {1, 129, 3, 20, 20, 2, 4, 5, 3, true},
      {1, 129, 2, 128, 100, 2, 4, 5, 2, true},
  };
  for (const AttnCase& a : warp_cases) {
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      check_attention(a, dt, 1, false, seed++, kTf32Tol);
    }
  }
}

// Two small block-kernel cases (head dims 150 and 75/150, two query tiles, window and bias),
// sized for compute-sanitizer's memcheck and racecheck.
RESONA_OP_GPU_TEST(chunk_attention, values,
                   "chunk_attention CUDA block kernels small (T=97/77, D=150/75, b=64/16, w=5/0; "
                   "float32, bfloat16; TF32 tiles)") {
  ForceAttentionKernel force("block");
  const AttnCase cases[] = {
      // B, T, H, Dk, Dv, c, b, w, kk, bias
      {1, 97, 1, 150, 150, 16, 64, 5, 2, true},
      {1, 77, 2, 75, 150, 4, 16, 0, 3, true},
  };
  uint64_t seed = 2500;
  for (const AttnCase& a : cases) {
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      check_attention(a, dt, 0, false, seed++, kTf32Tol);
    }
  }
}

RESONA_GPU_TEST("chunk_attention on CUDA checks device ids, naming the block; refuses bad dtypes") {
  const Device cuda = Device::cuda();
  Tensor q = zeros({1, 8, 1, 4}, DType::kFloat32, cuda);
  const ChunkAttentionOptions opt{.chunk = 2, .query_block = 2};
  auto ids = [&](std::vector<int64_t> v, DType dt) {
    return copy_to(from_vector(v, {1, 4, 2}), dt, cuda);
  };
  for (DType dt : {DType::kInt32, DType::kInt64}) {
    INFO(dtype_name(dt));
    CHECK_NOTHROW(chunk_attention(q, q, q, ids({-1, -1, 0, -1, -1, 1, 2, 0}, dt), Tensor(), opt));
    CHECK_THROWS_WITH_AS(
        chunk_attention(q, q, q, ids({-1, -1, 0, 1, 1, 0, 2, 0}, dt), Tensor(), opt),
        doctest::Contains("chunk id 1 for sequence 0, query block 1, slot 1"), Error);
    CHECK_THROWS_WITH_AS(
        chunk_attention(q, q, q, ids({-1, -1, 0, -1, 1, 1, 2, 0}, dt), Tensor(), opt),
        doctest::Contains("chunk id 1 twice for sequence 0, query block 2"), Error);
    CHECK_THROWS_WITH_AS(
        chunk_attention(q, q, q, ids({-1, -1, 0, -1, 1, 0, 9, 0}, dt), Tensor(), opt),
        doctest::Contains("chunk id 9 for sequence 0, query block 3"), Error);
  }
  // check_ids = false: nothing is read back; an ineligible id is ignored like a -1, in
  // forward and backward alike.
  ChunkAttentionOptions unchecked = opt;
  unchecked.check_ids = false;
  Generator gen(5);
  Tensor qr = grad_leaf(copy_to(gen.uniform({1, 8, 1, 4}, -1, 1), DType::kFloat32, cuda));
  Tensor d_o = copy_to(gen.uniform({1, 8, 1, 4}, -1, 1), DType::kFloat32, cuda);
  Tensor o_bad = chunk_attention(qr, qr, qr, ids({-1, -1, 0, 1, 1, 0, 9, 0}, DType::kInt32),
                                 Tensor(), unchecked);
  o_bad.backward(d_o);
  const std::vector<float> g_bad = qr.grad().to_vector<float>();
  qr.set_grad(Tensor());
  Tensor o_good =
      chunk_attention(qr, qr, qr, ids({-1, -1, 0, -1, 1, 0, -1, 0}, DType::kInt32), Tensor(), opt);
  o_good.backward(d_o);
  CHECK(o_bad.to_vector<float>() == o_good.to_vector<float>());
  CHECK(g_bad == qr.grad().to_vector<float>());
  // Strided device ids (every other slot of a [1, 4, 4] tensor).
  Tensor wide =
      copy_to(from_vector(std::vector<int32_t>{-1, 7, -1, 7, 0, 7, -1, 7, 1, 7, 0, 7, 2, 7, 0, 7},
                          {1, 4, 4}),
              DType::kInt32, cuda);
  Tensor strided = make_view(wide, {1, 4, 2}, {16, 4, 2}, 0);
  CHECK_NOTHROW(chunk_attention(q, q, q, strided, Tensor(), opt));
  Tensor q64 = zeros({1, 8, 1, 4}, DType::kFloat64, cuda);
  CHECK_THROWS_WITH_AS(
      chunk_attention(q64, q64, q64, ids(std::vector<int64_t>(8, -1), DType::kInt32), Tensor(),
                      opt),
      doctest::Contains("CUDA supports float32 and bfloat16"), Error);
  Tensor big = zeros({1, 8, 1, 300}, DType::kFloat32, cuda);
  CHECK_THROWS_WITH_AS(
      chunk_attention(big, big, q, ids(std::vector<int64_t>(8, -1), DType::kInt32), Tensor(), opt),
      doctest::Contains("must be <= 256"), Error);
}

RESONA_GPU_TEST(
    "Resona ops CUDA timing: chunk_search and chunk_attention fwd/fwd+bwd at B=8, T=2048, "
    "bfloat16 (runs only with RESONA_TIME_RESONA=1; prints milliseconds)") {
  const char* env = std::getenv("RESONA_TIME_RESONA");
  if (env == nullptr || std::string(env) != "1") return;
  const Device cuda = Device::cuda();
  DeviceBackend& dev = backend_for(cuda);
  auto time_ms = [&](const auto& f) {
    for (int i = 0; i < 3; ++i) f();
    dev.synchronize(0);
    constexpr int kIters = 20;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kIters; ++i) f();
    dev.synchronize(0);
    const auto t1 = std::chrono::steady_clock::now();
    return std::chrono::duration<double, std::milli>(t1 - t0).count() / kIters;
  };
  struct Config {
    int64_t B, T, H, D, c, kk, b, w;
  };
  for (const Config s : {Config{8, 2048, 8, 64, 64, 2, 1, 0}, Config{8, 2048, 8, 64, 2, 1, 1, 0},
                         Config{8, 2048, 8, 64, 64, 2, 64, 64}}) {
    Generator gen(11);
    auto leaf = [&](const Shape& shape) {
      return grad_leaf(copy_to(gen.uniform(shape, -1, 1), DType::kBFloat16, cuda));
    };
    Tensor q = leaf({s.B, s.T, s.H, s.D}), k = leaf({s.B, s.T, s.H, s.D});
    Tensor v = leaf({s.B, s.T, s.H, s.D});
    Tensor d_o = copy_to(gen.uniform({s.B, s.T, s.H, s.D}, -1, 1), DType::kBFloat16, cuda);
    Tensor emb = copy_to(gen.uniform({s.B, s.T, s.D}, -1, 1), DType::kBFloat16, cuda);
    Tensor chunks = copy_to(gen.uniform({s.B, s.T / s.c, s.D}, -1, 1), DType::kBFloat16, cuda);
    const ChunkSearchOptions so{.chunk = s.c, .top_k = s.kk, .query_block = s.b};
    Tensor idx = chunk_search(emb, chunks, so);
    const ChunkAttentionOptions opt{.chunk = s.c, .query_block = s.b, .local_window = s.w};
    const double search_ms = time_ms([&] { chunk_search(emb, chunks, so); });
    const double f_ms = time_ms([&] {
      NoGradGuard no_grad;
      chunk_attention(q, k, v, idx, Tensor(), opt);
    });
    const double fb_ms =
        time_ms([&] { chunk_attention(q, k, v, idx, Tensor(), opt).backward(d_o); });
    std::printf(
        "resona timing B=%lld T=%lld H=%lld D=%lld c=%lld kk=%lld b=%lld w=%lld bfloat16 on %s: "
        "chunk_search %.3f ms, chunk_attention forward %.3f ms, forward+backward %.3f ms\n",
        static_cast<long long>(s.B), static_cast<long long>(s.T), static_cast<long long>(s.H),
        static_cast<long long>(s.D), static_cast<long long>(s.c), static_cast<long long>(s.kk),
        static_cast<long long>(s.b), static_cast<long long>(s.w), dev.device_name(0).c_str(),
        search_ms, f_ms, fb_ms);
  }
}

RESONA_GPU_TEST(
    "chunk_attention CUDA timing, warp vs block kernels at B=8, T=2048, H=4, D=150, c=64, kk=4, "
    "b=64 (runs only with RESONA_TIME_RESONA=1; prints milliseconds)") {
  const char* env = std::getenv("RESONA_TIME_RESONA");
  if (env == nullptr || std::string(env) != "1") return;
  const Device cuda = Device::cuda();
  DeviceBackend& dev = backend_for(cuda);
  auto time_ms = [&](const auto& f) {
    for (int i = 0; i < 2; ++i) f();
    dev.synchronize(0);
    constexpr int kIters = 10;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kIters; ++i) f();
    dev.synchronize(0);
    const auto t1 = std::chrono::steady_clock::now();
    return std::chrono::duration<double, std::milli>(t1 - t0).count() / kIters;
  };
  const int64_t B = 8, T = 2048, H = 4, D = 150, c = 64, kk = 4, b = 64;
  for (DType dt : {DType::kBFloat16, DType::kFloat32}) {
    for (int64_t w : {int64_t{0}, int64_t{64}}) {
      Generator gen(12);
      auto leaf = [&](const Shape& shape) {
        return grad_leaf(copy_to(gen.uniform(shape, -1, 1), dt, cuda));
      };
      Tensor q = leaf({B, T, H, D}), k = leaf({B, T, H, D}), v = leaf({B, T, H, D});
      Tensor d_o = copy_to(gen.uniform({B, T, H, D}, -1, 1), dt, cuda);
      Tensor emb = copy_to(gen.uniform({B, T, D}, -1, 1), dt, cuda);
      Tensor chunks = copy_to(gen.uniform({B, T / c, D}, -1, 1), dt, cuda);
      Tensor idx = chunk_search(emb, chunks, {.chunk = c, .top_k = kk, .query_block = b});
      const ChunkAttentionOptions opt{.chunk = c, .query_block = b, .local_window = w};
      for (const char* kernel : {"warp", "block"}) {
        ForceAttentionKernel force(kernel);
        const double f_ms = time_ms([&] {
          NoGradGuard no_grad;
          chunk_attention(q, k, v, idx, Tensor(), opt);
        });
        const double fb_ms =
            time_ms([&] { chunk_attention(q, k, v, idx, Tensor(), opt).backward(d_o); });
        std::printf(
            "chunk_attention timing B=8 T=2048 H=4 D=150 c=64 kk=4 b=64 w=%lld %s, %s kernels on "
            "%s: forward %.3f ms, forward+backward %.3f ms\n",
            static_cast<long long>(w), dtype_name(dt), kernel, dev.device_name(0).c_str(), f_ms,
            fb_ms);
      }
    }
  }
}

}  // namespace resona::testing
