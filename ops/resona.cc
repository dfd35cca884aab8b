// Resona retrieval ops (contracts, formulas and layouts in ops/resona.h): chunk_search,
// chunk_attention with its backward, lexical_features. CPU paths here, CUDA kernels in
// cuda/resona.cu behind the params of cuda/resona.h.
//
// chunk_attention on the CPU: for each (n, i) the key list is built once (the retrieved
// chunks' positions in slot order, then the window positions whose chunk was not
// retrieved) and shared by the H heads. Forward saves the contiguous inputs, the checked
// ids (int32, contiguous) and the log-sum-exp of every (n, i, h) row (-inf for an empty
// key set); backward recomputes each row's probabilities from it. d_k, d_v and d_bias are
// scattered into float64 buffers in (n, i, h, key) order and rounded once.
//
// CUDA: q, k, v, bias and d_o are passed with their strides (saved as given, not
// copied); idx is checked and converted to contiguous int32 on the device (by a kernel
// that reads one word back when idx is on the GPU, on the host when it is on the CPU);
// forward also saves the float32 log-sum-exp for backward. The kernels choose between
// their warp-per-row and block-per-tile sets (cuda/resona.h); RESONA_CHUNK_ATTENTION_KERNEL
// = warp or block forces one.
#include "ops/resona.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "autograd/function.h"
#include "core/dispatch.h"
#include "cuda/resona.h"
#include "ops/device_util.h"

namespace resona {
namespace {

constexpr uint64_t kP1 = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kP3 = 0x165667B19E3779F9ull;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Chunks eligible for the block starting at position p0: ids 0 .. n_eligible - 1.
int64_t n_eligible(int64_t p0, int64_t c, int64_t NC) { return std::min(NC, (p0 + 1) / c); }

// ---------------------------------------------------------------- chunk_search (CPU)

// A NaN similarity ranks below every number.
double rank_key(double s) { return std::isnan(s) ? -std::numeric_limits<double>::infinity() : s; }

template <class F>
void chunk_search_cpu(const Tensor& query, const Tensor& chunk_emb, const ChunkSearchOptions& opt,
                      int32_t* out) {
  const int64_t B = query.shape()[0], T = query.shape()[1], E = query.shape()[2];
  const int64_t NC = chunk_emb.shape()[1], b = opt.query_block, c = opt.chunk, K = opt.top_k;
  const int64_t NQ = ceil_div(T, b);
  const F* pq = query.data<F>();
  const F* pe = chunk_emb.data<F>();
  std::vector<double> inv_e(NC), sim(NC);
  std::vector<int64_t> order(NC);
  std::vector<double> qrow(E);
  for (int64_t n = 0; n < B; ++n) {
    for (int64_t j = 0; j < NC; ++j) {
      const F* e = pe + (n * NC + j) * E;
      double ss = 0;
      for (int64_t d = 0; d < E; ++d) ss += static_cast<double>(e[d]) * e[d];
      inv_e[j] = ss > 0 ? 1.0 / std::sqrt(ss) : 0.0;
    }
    for (int64_t q = 0; q < NQ; ++q) {
      const int64_t m = n_eligible(q * b, c, NC);
      const F* qr = pq + (n * T + q * b) * E;
      double ss = 0;
      for (int64_t d = 0; d < E; ++d) {
        qrow[d] = qr[d];
        ss += qrow[d] * qrow[d];
      }
      const double inv_q = ss > 0 ? 1.0 / std::sqrt(ss) : 0.0;
      for (int64_t j = 0; j < m; ++j) {
        const F* e = pe + (n * NC + j) * E;
        double dot = 0;
        for (int64_t d = 0; d < E; ++d) dot += qrow[d] * e[d];
        sim[j] = rank_key(dot * inv_q * inv_e[j]);
        order[j] = j;
      }
      const int64_t take = std::min(K, m);
      std::partial_sort(
          order.begin(), order.begin() + take, order.begin() + m,
          [&](int64_t x, int64_t y) { return sim[x] > sim[y] || (sim[x] == sim[y] && x < y); });
      int32_t* o = out + (n * NQ + q) * K;
      for (int64_t s = 0; s < K; ++s) o[s] = s < take ? static_cast<int32_t>(order[s]) : -1;
    }
  }
}

void check_search_inputs(const Tensor& query, const Tensor& chunk_emb,
                         const ChunkSearchOptions& opt) {
  const char* op = "chunk_search";
  RESONA_CHECK(opt.chunk >= 1) << op << ": chunk must be >= 1, got " << opt.chunk;
  RESONA_CHECK(opt.top_k >= 1) << op << ": top_k must be >= 1, got " << opt.top_k;
  RESONA_CHECK(opt.query_block >= 1) << op << ": query_block must be >= 1, got " << opt.query_block;
  RESONA_CHECK(query.defined() && chunk_emb.defined())
      << op << ": query and chunk_emb are required";
  check_floating(op, query);
  check_same_dtype(op, {&query, &chunk_emb});
  check_same_device(op, {&query, &chunk_emb});
  RESONA_CHECK(query.dim() == 3) << op << ": query must be [B, T, E], got " << query.describe();
  const int64_t B = query.shape()[0], T = query.shape()[1], E = query.shape()[2];
  RESONA_CHECK(chunk_emb.dim() == 3 && chunk_emb.shape()[0] == B &&
               chunk_emb.shape()[1] == T / opt.chunk && chunk_emb.shape()[2] == E)
      << op << ": chunk_emb must be [B, floor(T / chunk), E] = [" << B << ", " << T / opt.chunk
      << ", " << E << "] for query " << query.describe() << " and chunk " << opt.chunk << ", got "
      << chunk_emb.describe();
  RESONA_CHECK(T / opt.chunk <= std::numeric_limits<int32_t>::max())
      << op << ": " << T / opt.chunk << " chunks do not fit the int32 ids";
}

// ---------------------------------------------------------------- chunk_attention checks

struct AttnDims {
  int64_t B = 0, T = 0, H = 0, Dk = 0, Dv = 0, NQ = 0, kk = 0, NC = 0;
  int64_t c = 1, b = 1, w = 0;
  double scale = 1;
  bool check_ids = true;
};

// Throws for the first entry of the int32 ids [B, NQ, kk] (contiguous, host) that is
// neither -1 nor eligible for its block, or that repeats an id of its block.
void check_chunk_ids(const int32_t* ids, const AttnDims& d, const Tensor& idx) {
  for (int64_t n = 0; n < d.B; ++n) {
    for (int64_t q = 0; q < d.NQ; ++q) {
      const int32_t* row = ids + (n * d.NQ + q) * d.kk;
      const int64_t m = n_eligible(q * d.b, d.c, d.NC);
      for (int64_t s = 0; s < d.kk; ++s) {
        const int64_t j = row[s];
        if (j == -1) continue;
        RESONA_CHECK(j >= 0 && j < m)
            << "chunk_attention: idx " << idx.describe() << " holds chunk id " << j
            << " for sequence " << n << ", query block " << q << ", slot " << s
            << ", which is not eligible: the block starts at position " << q * d.b
            << ", so with chunk " << d.c << " only ids 0.." << m - 1
            << " are (every token of the chunk at or before the block's first position), "
               "and -1 marks an empty slot";
        for (int64_t t = 0; t < s; ++t) {
          RESONA_CHECK(row[t] != j)
              << "chunk_attention: idx " << idx.describe() << " holds chunk id " << j
              << " twice for sequence " << n << ", query block " << q << " (slots " << t << " and "
              << s << ")";
        }
      }
    }
  }
}

AttnDims check_attention_inputs(const Tensor& q, const Tensor& k, const Tensor& v,
                                const Tensor& idx, const Tensor& bias,
                                const ChunkAttentionOptions& opt) {
  const char* op = "chunk_attention";
  RESONA_CHECK(opt.chunk >= 1) << op << ": chunk must be >= 1, got " << opt.chunk;
  RESONA_CHECK(opt.query_block >= 1) << op << ": query_block must be >= 1, got " << opt.query_block;
  RESONA_CHECK(opt.local_window >= 0)
      << op << ": local_window must be >= 0, got " << opt.local_window;
  RESONA_CHECK(std::isfinite(opt.scale)) << op << ": scale must be finite, got " << opt.scale;
  RESONA_CHECK(q.defined() && k.defined() && v.defined() && idx.defined())
      << op << ": q, k, v and idx are required";
  check_floating(op, q);
  check_same_dtype(op, {&q, &k, &v, &bias});
  check_same_device(op, {&q, &k, &v, &bias});
  RESONA_CHECK(q.dim() == 4) << op << ": q must be [B, T, H, Dk], got " << q.describe();
  AttnDims d;
  d.B = q.shape()[0];
  d.T = q.shape()[1];
  d.H = q.shape()[2];
  d.Dk = q.shape()[3];
  RESONA_CHECK(k.shape() == q.shape())
      << op << ": k " << k.describe() << " must have q's shape " << shape_str(q.shape());
  RESONA_CHECK(v.dim() == 4 && v.shape()[0] == d.B && v.shape()[1] == d.T && v.shape()[2] == d.H)
      << op << ": v must be [B, T, H, Dv] = [" << d.B << ", " << d.T << ", " << d.H
      << ", Dv] to match q " << q.describe() << ", got " << v.describe();
  d.Dv = v.shape()[3];
  d.c = opt.chunk;
  d.b = opt.query_block;
  d.w = opt.local_window;
  d.NQ = ceil_div(d.T, d.b);
  d.NC = d.T / d.c;
  RESONA_CHECK(idx.dtype() == DType::kInt32 || idx.dtype() == DType::kInt64)
      << op << ": idx must be int32 or int64, got " << idx.describe();
  RESONA_CHECK(idx.dim() == 3 && idx.shape()[0] == d.B && idx.shape()[1] == d.NQ)
      << op << ": idx must be [B, NQ, kk] = [" << d.B << ", " << d.NQ
      << ", kk] (NQ = ceil(T / query_block) for T = " << d.T << ", query_block " << d.b << "), got "
      << idx.describe();
  d.kk = idx.shape()[2];
  if (bias.defined()) {
    RESONA_CHECK(bias.shape() == idx.shape())
        << op << ": bias must be [B, NQ, kk] = " << shape_str(idx.shape()) << " like idx, got "
        << bias.describe();
  }
  d.scale = opt.scale != 0 ? opt.scale : 1.0 / std::sqrt(static_cast<double>(d.Dk));
  d.check_ids = opt.check_ids;
  return d;
}

// The checked ids as a contiguous int32 CPU tensor [B, NQ, kk].
Tensor host_chunk_ids(const Tensor& idx, const AttnDims& d) {
  Tensor ids = copy_to(idx, DType::kInt32, Device::cpu()).contiguous();
  if (ids.is_same(idx))
    ids = ids.clone();  // a later in-place change of idx must not reach backward
  check_chunk_ids(ids.data<int32_t>(), d, idx);
  return ids;
}

// ---------------------------------------------------------------- CUDA helpers

template <size_t N>
void copy_strides(int64_t (&dst)[N], const Tensor& t) {
  for (size_t x = 0; x < N; ++x) dst[x] = t.strides()[x];
}

Tensor chunk_search_cuda_path(const Tensor& query, const Tensor& chunk_emb,
                              const ChunkSearchOptions& opt) {
  const int64_t B = query.shape()[0], T = query.shape()[1], E = query.shape()[2];
  const int64_t NQ = ceil_div(T, opt.query_block);
  Tensor out = empty({B, NQ, opt.top_k}, DType::kInt32, query.device());
  cuda::ChunkSearchParams p{};
  p.dtype = cuda_kernel_dtype("chunk_search", query);
  p.B = B;
  p.T = T;
  p.E = E;
  p.NC = chunk_emb.shape()[1];
  p.c = opt.chunk;
  p.b = opt.query_block;
  p.k = opt.top_k;
  p.query = query.raw_data();
  copy_strides(p.query_strides, query);
  p.chunk_emb = chunk_emb.raw_data();
  copy_strides(p.chunk_strides, chunk_emb);
  p.out = out.data<int32_t>();
  const size_t bytes = cuda::chunk_search_scratch_bytes(p);
  Tensor scratch = empty({static_cast<int64_t>((bytes + 3) / 4)}, DType::kFloat32, query.device());
  p.scratch = scratch.raw_data();
  const char* err = cuda::chunk_search_cuda(p, launch_stream());
  RESONA_CHECK(err == nullptr) << "chunk_search on " << query.describe() << ": " << err;
  return out;
}

// The CUDA kernels for chunk_attention: chosen by the kernels (auto) unless the environment
// variable RESONA_CHUNK_ATTENTION_KERNEL is "warp" or "block" (tests and timing force one
// set; both compute the same op).
cuda::ChunkAttnKernel cuda_attention_kernel() {
  const char* env = std::getenv("RESONA_CHUNK_ATTENTION_KERNEL");
  if (env == nullptr || *env == 0 || std::strcmp(env, "auto") == 0)
    return cuda::ChunkAttnKernel::kAuto;
  if (std::strcmp(env, "warp") == 0) return cuda::ChunkAttnKernel::kWarp;
  RESONA_CHECK(std::strcmp(env, "block") == 0)
      << "chunk_attention: RESONA_CHUNK_ATTENTION_KERNEL must be auto, warp or block, got '" << env
      << "'";
  return cuda::ChunkAttnKernel::kBlock;
}

// The checked ids as a contiguous int32 tensor [B, NQ, kk] on `device` (CUDA).
Tensor device_chunk_ids(const Tensor& idx, const AttnDims& d, Device device, bool check) {
  if (idx.device().is_cpu()) return copy_to(host_chunk_ids(idx, d), DType::kInt32, device);
  RESONA_CHECK(idx.device() == device)
      << "chunk_attention: idx " << idx.describe() << " is on another device than q";
  const int64_t N = d.B * d.NQ * d.kk;
  Tensor out = empty({d.B, d.NQ, d.kk}, DType::kInt32, device);
  Tensor bad = empty({1}, DType::kInt64, device);
  cuda::ChunkIdsCheckParams p{};
  p.idx = idx.raw_data();
  p.idx_int32 = idx.dtype() == DType::kInt32;
  copy_strides(p.idx_strides, idx);
  p.B = d.B;
  p.NQ = d.NQ;
  p.kk = d.kk;
  p.NC = d.NC;
  p.c = d.c;
  p.b = d.b;
  p.out = out.data<int32_t>();
  p.bad_pos = bad.data<int64_t>();
  const char* err = cuda::chunk_ids_check_cuda(p, launch_stream());
  RESONA_CHECK(err == nullptr) << "chunk_attention: checking idx " << idx.describe() << ": " << err;
  if (!check) return out;
  const int64_t pos = bad.item_int();  // one word back: a bad id raises here, by name
  if (pos < N) {
    host_chunk_ids(idx, d);  // throws, naming the sequence, block, slot and id
    RESONA_FAIL() << "chunk_attention: idx " << idx.describe()
                  << " holds a bad id at flat position " << pos;
  }
  return out;
}

// ---------------------------------------------------------------- chunk_attention (CPU)

// keys(i) for one position: positions and the slot of their chunk (-1: window only).
struct KeyList {
  std::vector<int64_t> pos;
  std::vector<int64_t> slot;
};

void build_keys(const int32_t* row, const AttnDims& d, int64_t i, KeyList& keys) {
  keys.pos.clear();
  keys.slot.clear();
  for (int64_t s = 0; s < d.kk; ++s) {
    if (row[s] < 0) continue;
    for (int64_t r = 0; r < d.c; ++r) {
      keys.pos.push_back(int64_t{row[s]} * d.c + r);
      keys.slot.push_back(s);
    }
  }
  for (int64_t p = std::max<int64_t>(0, i - d.w + 1); p <= i && d.w > 0; ++p) {
    const int64_t j = p / d.c;
    bool retrieved = false;
    for (int64_t s = 0; s < d.kk && !retrieved; ++s) retrieved = row[s] == j;
    if (retrieved) continue;
    keys.pos.push_back(p);
    keys.slot.push_back(-1);
  }
}

template <class F>
F dot(const F* a, const F* b, int64_t n) {
  F acc = 0;
  for (int64_t x = 0; x < n; ++x) acc += a[x] * b[x];
  return acc;
}

struct ChunkAttentionOp {
  static constexpr const char* kName = "chunk_attention";
  struct Saved {
    Tensor q, k, v;  // CPU: contiguous; CUDA: as given (any strides)
    Tensor ids;      // int32 [B, NQ, kk], checked, contiguous, on the op's device
    Tensor bias;     // as given, or undefined
    Tensor lse;      // [B, T, H]: CPU in the input dtype, CUDA float32
    Tensor o_f32;    // CUDA, when the backward reads it: o in float32 (o itself for float32)
    AttnDims d;
    bool cuda = false;
  };

  static Tensor forward(Ctx<Saved>& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& idx, const Tensor& bias, const ChunkAttentionOptions& opt) {
    const AttnDims d = check_attention_inputs(q, k, v, idx, bias, opt);
    if (q.device().is_cuda()) return forward_cuda(ctx, q, k, v, idx, bias, d);
    Tensor ids = host_chunk_ids(idx, d);
    Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
    Tensor bc = bias.defined() ? bias.contiguous() : Tensor();
    Tensor o = empty({d.B, d.T, d.H, d.Dv}, q.dtype());
    Tensor lse = empty({d.B, d.T, d.H}, q.dtype());
    dispatch_floating(kName, q.dtype(), [&](auto tag) {
      using F = typename decltype(tag)::type;
      forward_cpu<F>(d, qc.data<F>(), kc.data<F>(), vc.data<F>(), ids.data<int32_t>(),
                     bc.defined() ? bc.data<F>() : nullptr, o.data<F>(), lse.data<F>());
    });
    if (ctx.requires_grad) {
      ctx.saved.d = d;
      ctx.saved.q = qc;
      ctx.saved.k = kc;
      ctx.saved.v = vc;
      ctx.saved.ids = ids;
      ctx.saved.bias = bc;
      ctx.saved.lse = lse;
    }
    return o;
  }

  static Tensor forward_cuda(Ctx<Saved>& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& idx, const Tensor& bias, const AttnDims& d) {
    const cuda::KernelDType dt = cuda_kernel_dtype(kName, q);
    RESONA_CHECK(d.Dk <= cuda::kChunkAttnMaxHeadDim && d.Dv <= cuda::kChunkAttnMaxHeadDim)
        << "chunk_attention on CUDA: head dims Dk = " << d.Dk << " and Dv = " << d.Dv
        << " must be <= " << cuda::kChunkAttnMaxHeadDim << " (q " << q.describe() << ", v "
        << v.describe() << ")";
    Tensor ids = device_chunk_ids(idx, d, q.device(), d.check_ids);
    Tensor o = empty({d.B, d.T, d.H, d.Dv}, q.dtype(), q.device());
    Tensor lse = empty({d.B, d.T, d.H}, DType::kFloat32, q.device());
    cuda::ChunkAttentionParams p = params(d, dt, q, k, v, ids, bias, lse, o);
    // The backward's block kernels take D_i = d_o . o from o in float32: for bfloat16 the
    // forward writes an unrounded copy (bf16's 2^-9 in o would enter every d_q, d_k).
    Tensor o_f32;
    if (ctx.requires_grad && cuda::chunk_attention_bwd_reads_o(p)) {
      o_f32 = q.dtype() == DType::kFloat32
                  ? o
                  : empty({d.B, d.T, d.H, d.Dv}, DType::kFloat32, q.device());
      p.o_f32 = o_f32.data<float>();
    }
    const char* err = cuda::chunk_attention_fwd_cuda(p, launch_stream());
    RESONA_CHECK(err == nullptr) << "chunk_attention on " << q.describe() << ": " << err;
    if (ctx.requires_grad) {
      ctx.saved.d = d;
      ctx.saved.cuda = true;
      ctx.saved.q = q;
      ctx.saved.k = k;
      ctx.saved.v = v;
      ctx.saved.ids = ids;
      ctx.saved.bias = bias;
      ctx.saved.lse = lse;
      ctx.saved.o_f32 = o_f32;
    }
    return o;
  }

  static cuda::ChunkAttentionParams params(const AttnDims& d, cuda::KernelDType dt, const Tensor& q,
                                           const Tensor& k, const Tensor& v, const Tensor& ids,
                                           const Tensor& bias, const Tensor& lse, const Tensor& o) {
    cuda::ChunkAttentionParams p{};
    p.dtype = dt;
    p.kernel = cuda_attention_kernel();
    p.B = d.B;
    p.T = d.T;
    p.H = d.H;
    p.Dk = d.Dk;
    p.Dv = d.Dv;
    p.NQ = d.NQ;
    p.kk = d.kk;
    p.NC = d.NC;
    p.c = d.c;
    p.b = d.b;
    p.w = d.w;
    p.scale = static_cast<float>(d.scale);
    p.q = q.raw_data();
    copy_strides(p.q_strides, q);
    p.k = k.raw_data();
    copy_strides(p.k_strides, k);
    p.v = v.raw_data();
    copy_strides(p.v_strides, v);
    p.ids = ids.data<int32_t>();
    if (bias.defined()) {
      p.bias = bias.raw_data();
      copy_strides(p.bias_strides, bias);
    }
    p.lse = lse.data<float>();
    p.o = o.defined() ? o.raw_data() : nullptr;
    return p;
  }

  static Grads backward_cuda(Ctx<Saved>& ctx, const Tensor& d_o) {
    const Saved& s = ctx.saved;
    const AttnDims& d = s.d;
    RESONA_CHECK(d_o.device() == s.q.device() && d_o.dtype() == s.q.dtype() &&
                 d_o.shape() == Shape({d.B, d.T, d.H, d.Dv}))
        << "chunk_attention backward: gradient " << d_o.describe() << ", expected [" << d.B << ", "
        << d.T << ", " << d.H << ", " << d.Dv << "] " << dtype_name(s.q.dtype()) << " on "
        << s.q.device().str();
    const Device dev = d_o.device();
    cuda::ChunkAttentionParams p =
        params(d, cuda_kernel_dtype(kName, d_o), s.q, s.k, s.v, s.ids, s.bias, s.lse, Tensor());
    p.d_o = d_o.raw_data();
    copy_strides(p.d_o_strides, d_o);
    if (s.o_f32.defined()) p.o_f32 = s.o_f32.data<float>();
    Tensor d_q, d_k, d_v, d_bias;
    if (ctx.needs(0)) {
      d_q = empty({d.B, d.T, d.H, d.Dk}, d_o.dtype(), dev);
      p.d_q = d_q.raw_data();
    }
    if (ctx.needs(1)) {
      d_k = empty({d.B, d.T, d.H, d.Dk}, d_o.dtype(), dev);
      p.d_k = d_k.raw_data();
    }
    if (ctx.needs(2)) {
      d_v = empty({d.B, d.T, d.H, d.Dv}, d_o.dtype(), dev);
      p.d_v = d_v.raw_data();
    }
    if (ctx.needs(4)) {
      d_bias = empty({d.B, d.NQ, d.kk}, d_o.dtype(), dev);
      p.d_bias = d_bias.raw_data();
    }
    const size_t bytes = cuda::chunk_attention_bwd_scratch_bytes(p);
    Tensor scratch;
    if (bytes > 0) {
      scratch = empty({static_cast<int64_t>((bytes + 7) / 8)}, DType::kInt64, dev);
      p.scratch = scratch.raw_data();
    }
    const char* err = cuda::chunk_attention_bwd_cuda(p, launch_stream());
    RESONA_CHECK(err == nullptr) << "chunk_attention backward on " << d_o.describe() << ": " << err;
    return {d_q, d_k, d_v, Tensor(), d_bias};
  }

  template <class F>
  static void forward_cpu(const AttnDims& d, const F* q, const F* k, const F* v, const int32_t* ids,
                          const F* bias, F* o, F* lse) {
    KeyList keys;
    std::vector<double> logit, acc(d.Dv);
    const int64_t H = d.H, Dk = d.Dk, Dv = d.Dv;
    for (int64_t n = 0; n < d.B; ++n) {
      for (int64_t i = 0; i < d.T; ++i) {
        const int64_t qb = i / d.b;
        const int32_t* row = ids + (n * d.NQ + qb) * d.kk;
        build_keys(row, d, i, keys);
        const int64_t nk = static_cast<int64_t>(keys.pos.size());
        logit.resize(nk);
        for (int64_t h = 0; h < H; ++h) {
          const int64_t qi = ((n * d.T + i) * H + h);
          F* orow = o + qi * Dv;
          if (nk == 0) {
            std::fill(orow, orow + Dv, F(0));
            lse[qi] = -std::numeric_limits<F>::infinity();
            continue;
          }
          const F* qrow = q + qi * Dk;
          double mx = -std::numeric_limits<double>::infinity();
          for (int64_t u = 0; u < nk; ++u) {
            const F* krow = k + ((n * d.T + keys.pos[u]) * H + h) * Dk;
            double l = d.scale * static_cast<double>(dot(qrow, krow, Dk));
            if (bias && keys.slot[u] >= 0) l += bias[(n * d.NQ + qb) * d.kk + keys.slot[u]];
            logit[u] = l;
            mx = std::max(mx, l);
          }
          double sum = 0;
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t u = 0; u < nk; ++u) {
            const double p = std::exp(logit[u] - mx);
            sum += p;
            const F* vrow = v + ((n * d.T + keys.pos[u]) * H + h) * Dv;
            for (int64_t x = 0; x < Dv; ++x) acc[x] += p * vrow[x];
          }
          for (int64_t x = 0; x < Dv; ++x) orow[x] = static_cast<F>(acc[x] / sum);
          lse[qi] = static_cast<F>(mx + std::log(sum));
        }
      }
    }
  }

  static Grads backward(Ctx<Saved>& ctx, const Tensor& d_o_in) {
    const Saved& s = ctx.saved;
    const AttnDims& d = s.d;
    if (s.cuda) return backward_cuda(ctx, d_o_in);
    const bool want_q = ctx.needs(0), want_k = ctx.needs(1), want_v = ctx.needs(2),
               want_bias = ctx.needs(4);
    require_cpu(kName, d_o_in);
    RESONA_CHECK(d_o_in.shape() == Shape({d.B, d.T, d.H, d.Dv}) && d_o_in.dtype() == s.q.dtype())
        << "chunk_attention backward: gradient " << d_o_in.describe() << ", expected [" << d.B
        << ", " << d.T << ", " << d.H << ", " << d.Dv << "] " << dtype_name(s.q.dtype());
    Tensor d_o = d_o_in.contiguous();
    Tensor d_q, d_k, d_v, d_bias;
    dispatch_floating(kName, d_o.dtype(), [&](auto tag) {
      using F = typename decltype(tag)::type;
      std::vector<double> acc_k(want_k ? d.B * d.T * d.H * d.Dk : 0);
      std::vector<double> acc_v(want_v ? d.B * d.T * d.H * d.Dv : 0);
      std::vector<double> acc_b(want_bias ? d.B * d.NQ * d.kk : 0);
      if (want_q) d_q = empty({d.B, d.T, d.H, d.Dk}, d_o.dtype());
      backward_cpu<F>(d, s.q.data<F>(), s.k.data<F>(), s.v.data<F>(), s.ids.data<int32_t>(),
                      s.bias.defined() ? s.bias.data<F>() : nullptr, s.lse.data<F>(), d_o.data<F>(),
                      want_q ? d_q.data<F>() : nullptr, acc_k, acc_v, acc_b);
      auto round_out = [&](const std::vector<double>& acc, const Shape& shape) {
        Tensor t = empty(shape, d_o.dtype());
        F* p = t.data<F>();
        for (size_t x = 0; x < acc.size(); ++x) p[x] = static_cast<F>(acc[x]);
        return t;
      };
      if (want_k) d_k = round_out(acc_k, {d.B, d.T, d.H, d.Dk});
      if (want_v) d_v = round_out(acc_v, {d.B, d.T, d.H, d.Dv});
      if (want_bias) d_bias = round_out(acc_b, {d.B, d.NQ, d.kk});
    });
    return {d_q, d_k, d_v, Tensor(), d_bias};
  }

  template <class F>
  static void backward_cpu(const AttnDims& d, const F* q, const F* k, const F* v,
                           const int32_t* ids, const F* bias, const F* lse, const F* d_o, F* d_q,
                           std::vector<double>& acc_k, std::vector<double>& acc_v,
                           std::vector<double>& acc_b) {
    const bool want_k = !acc_k.empty(), want_v = !acc_v.empty(), want_b = !acc_b.empty();
    const bool want_ds = d_q != nullptr || want_k || want_b;
    KeyList keys;
    std::vector<double> prob, d_s, dq_row(d.Dk);
    const int64_t H = d.H, Dk = d.Dk, Dv = d.Dv;
    for (int64_t n = 0; n < d.B; ++n) {
      for (int64_t i = 0; i < d.T; ++i) {
        const int64_t qb = i / d.b;
        const int32_t* row = ids + (n * d.NQ + qb) * d.kk;
        build_keys(row, d, i, keys);
        const int64_t nk = static_cast<int64_t>(keys.pos.size());
        prob.resize(nk);
        d_s.resize(nk);
        for (int64_t h = 0; h < H; ++h) {
          const int64_t qi = ((n * d.T + i) * H + h);
          const F* qrow = q + qi * Dk;
          const F* gorow = d_o + qi * Dv;
          std::fill(dq_row.begin(), dq_row.end(), 0.0);
          double D = 0;
          for (int64_t u = 0; u < nk; ++u) {
            const int64_t kv = (n * d.T + keys.pos[u]) * H + h;
            double l = d.scale * static_cast<double>(dot(qrow, k + kv * Dk, Dk));
            if (bias && keys.slot[u] >= 0) l += bias[(n * d.NQ + qb) * d.kk + keys.slot[u]];
            prob[u] = std::exp(l - static_cast<double>(lse[qi]));
            if (want_ds) {
              d_s[u] = static_cast<double>(dot(gorow, v + kv * Dv, Dv));  // dP
              D += prob[u] * d_s[u];
            }
            if (want_v) {
              double* av = acc_v.data() + kv * Dv;
              for (int64_t x = 0; x < Dv; ++x) av[x] += prob[u] * gorow[x];
            }
          }
          if (!want_ds) continue;
          for (int64_t u = 0; u < nk; ++u) {
            const double ds = prob[u] * (d_s[u] - D);
            const int64_t kv = (n * d.T + keys.pos[u]) * H + h;
            if (d_q) {
              const F* krow = k + kv * Dk;
              for (int64_t x = 0; x < Dk; ++x) dq_row[x] += ds * krow[x];
            }
            if (want_k) {
              double* ak = acc_k.data() + kv * Dk;
              for (int64_t x = 0; x < Dk; ++x) ak[x] += d.scale * ds * qrow[x];
            }
            if (want_b && keys.slot[u] >= 0) acc_b[(n * d.NQ + qb) * d.kk + keys.slot[u]] += ds;
          }
          if (d_q) {
            F* dq = d_q + qi * Dk;
            for (int64_t x = 0; x < Dk; ++x) dq[x] = static_cast<F>(d.scale * dq_row[x]);
          }
        }
      }
    }
  }
};

}  // namespace

Tensor chunk_search(const Tensor& query, const Tensor& chunk_emb, const ChunkSearchOptions& opt) {
  check_search_inputs(query, chunk_emb, opt);
  const int64_t B = query.shape()[0], T = query.shape()[1];
  const int64_t NQ = ceil_div(T, opt.query_block);
  if (query.device().is_cuda())
    return chunk_search_cuda_path(query.detach(), chunk_emb.detach(), opt);
  Tensor qc = query.detach().contiguous(), ec = chunk_emb.detach().contiguous();
  Tensor out = empty({B, NQ, opt.top_k}, DType::kInt32);
  dispatch_floating("chunk_search", qc.dtype(), [&](auto tag) {
    using F = typename decltype(tag)::type;
    chunk_search_cpu<F>(qc, ec, opt, out.data<int32_t>());
  });
  return out;
}

Tensor chunk_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& idx,
                       const Tensor& bias, const ChunkAttentionOptions& opt) {
  return apply<ChunkAttentionOp>(q, k, v, idx, bias, opt);
}

uint64_t lexical_hash(const int64_t* tokens, int64_t n) {
  auto rotl = [](uint64_t x, int r) { return (x << r) | (x >> (64 - r)); };
  uint64_t h = static_cast<uint64_t>(8 * n) * kP3;
  for (int64_t m = 0; m < n; ++m) h = rotl(h ^ (static_cast<uint64_t>(tokens[m]) * kP1), 31) * kP2;
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

Tensor lexical_features(const Tensor& tokens, int64_t dim, int64_t max_ngram, int64_t segment) {
  const char* op = "lexical_features";
  RESONA_CHECK(tokens.defined()) << op << ": tokens are required";
  RESONA_CHECK(tokens.dtype() == DType::kInt32 || tokens.dtype() == DType::kInt64)
      << op << ": tokens must be int32 or int64, got " << tokens.describe();
  RESONA_CHECK(tokens.device().is_cpu())
      << op << ": tokens must be on the CPU (the lexical encoder runs on the host), got "
      << tokens.describe();
  RESONA_CHECK(tokens.dim() == 2) << op << ": tokens must be [B, T], got " << tokens.describe();
  RESONA_CHECK(dim >= 1) << op << ": dim must be >= 1, got " << dim;
  RESONA_CHECK(max_ngram >= 1) << op << ": max_ngram must be >= 1, got " << max_ngram;
  RESONA_CHECK(segment >= 1) << op << ": segment must be >= 1, got " << segment;
  const int64_t B = tokens.shape()[0], T = tokens.shape()[1];
  Tensor ids = copy_to(tokens, DType::kInt64, Device::cpu()).contiguous();
  const int64_t* pt = ids.data<int64_t>();
  Tensor out = zeros({B, T, dim}, DType::kFloat32);
  float* po = out.data<float>();
  for (int64_t n = 0; n < B; ++n) {
    for (int64_t t = 0; t < T; ++t) {
      const int64_t start = segment == 1 ? 0 : t / segment * segment;
      float* row = po + (n * T + t) * dim;
      for (int64_t g = 1; g <= max_ngram && t - g + 1 >= start; ++g) {
        row[lexical_hash(pt + n * T + t - g + 1, g) % static_cast<uint64_t>(dim)] += 1.0f;
      }
    }
  }
  return out;
}

}  // namespace resona
