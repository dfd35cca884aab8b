// Resona retrieval kernels (maps and ordering in cuda/resona.h).
//
// chunk_inv_norm_kernel          warp per (n, j): inv|e[n, j]| (0 for a zero row)
// chunk_search_rows_kernel       block per (n, q) row of a slab: the similarities of the
//                                eligible chunks into the row's scratch slice (warp per
//                                chunk, lanes over E), then k passes of a block argmax
// chunk_ids_check_kernel         thread per idx entry: int32 copy and eligibility check
// chunk_attention_fwd_kernel     warp per (n, i, h): online softmax over keys(i)
// chunk_attention_bwd_dq_kernel  warp per (n, i, h): D_i, d_q, per-slot partials for d_bias
// chunk_entry_keys_kernel +      the inverse lists: (chunk key, entry) pairs, stably
//   cub radix sort +             sorted, and each key's [start, end) in the sorted order
//   chunk_segments_kernel
// chunk_attention_bwd_dkdv_kernel  warp per (n, p, h): d_k, d_v over the queries seeing p
// chunk_attention_bwd_bias_kernel  thread per (n, q, s): d_bias from the partials
// chunk_attention_block_fwd_kernel     block per (n, query tile, h): key steps of 32 in
//                                      shared memory, TF32 tensor-core tile products; pass
//                                      1 the softmax statistics, pass 2 o
// chunk_attention_block_bwd_kernel     same blocks: D_i = d_o . o, then one pass over the
//                                      keys: dS, d_q and per-tile partials of d_k, d_v
//                                      (stored from the fragments), d_bias
// chunk_attention_block_reduce_kernel  thread per (n, h, d, p): d_k, d_v from the partials
// chunk_attention_block_bias_kernel    thread per (n, q, s): d_bias from the partials
//
// Warp sums use the xor butterfly, which leaves the identical value in every lane
// (float addition is commutative), so a logit recomputed in backward with the same lane
// mapping equals the forward one bit for bit. ND = per-lane head dims (1, 2, 4 or 8).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <mma.h>

#include <climits>
#include <cmath>
#include <cub/cub.cuh>
#include <type_traits>

#include "cuda/resona.h"
#include "cuda/row_reduce.cuh"

namespace resona::cuda {
namespace {

const char* last_error() {
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

constexpr int kSearchThreads = 256;
constexpr int kWarpsPerBlock = 4;  // attention kernels: 128 threads, one row per warp
constexpr int64_t kSlabFloats = int64_t{1} << 24;
constexpr size_t kAlign = 256;
size_t align_up(size_t b) { return (b + kAlign - 1) / kAlign * kAlign; }

__host__ __device__ __forceinline__ bool eligible(int64_t j, int64_t q, int64_t c, int64_t b,
                                                  int64_t NC) {
  return j >= 0 && j < NC && (j + 1) * c - 1 <= q * b;
}

unsigned blocks_for(int64_t threads, int per_block) {
  const int64_t n = (threads + per_block - 1) / per_block;
  return static_cast<unsigned>(n < 1 ? 1 : n);
}

// ---------------------------------------------------------------- chunk_search

template <class T>
__global__ void chunk_inv_norm_kernel(const T* __restrict__ e, int64_t s0, int64_t s1, int64_t s2,
                                      int64_t rows, int64_t NC, int64_t E,
                                      float* __restrict__ inv_e) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const T* er = e + (row / NC) * s0 + (row % NC) * s1;
  float ss = 0.f;
  for (int64_t d = lane; d < E; d += 32) {
    const float x = load(er, d * s2);
    ss += x * x;
  }
  ss = warp_sum(ss);
  if (lane == 0) inv_e[row] = ss > 0.f ? 1.f / sqrtf(ss) : 0.f;
}

// A candidate id with its score; j < 0: none.
struct Pick {
  float s;
  int32_t j;
};
// a ranks before b: higher score, then smaller id; any pick before none.
__device__ __forceinline__ bool ranks_before(Pick a, Pick b) {
  if (a.j < 0) return false;
  if (b.j < 0) return true;
  return a.s > b.s || (a.s == b.s && a.j < b.j);
}
__device__ __forceinline__ Pick warp_best(Pick p) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const Pick other{__shfl_xor_sync(0xffffffffu, p.s, o), __shfl_xor_sync(0xffffffffu, p.j, o)};
    if (ranks_before(other, p)) p = other;
  }
  return p;
}

template <class T>
__global__ void __launch_bounds__(kSearchThreads)
    chunk_search_rows_kernel(ChunkSearchParams p, int64_t NQ, int64_t r0,
                             const float* __restrict__ inv_e, float* __restrict__ slab) {
  __shared__ float sh_sum[kSearchThreads / 32];
  __shared__ Pick sh_pick[kSearchThreads / 32];
  __shared__ Pick sh_best;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  constexpr int kWarps = kSearchThreads / 32;
  const int64_t r = r0 + blockIdx.x, n = r / NQ, q = r % NQ;
  const int64_t m = min(p.NC, (q * p.b + 1) / p.c);  // eligible: ids 0 .. m-1
  const int64_t take = min(p.k, m);
  int32_t* out = p.out + r * p.k;
  for (int64_t s = take + tid; s < p.k; s += kSearchThreads) out[s] = -1;
  if (take == 0) return;  // uniform over the block

  const T* query = static_cast<const T*>(p.query);
  const T* emb = static_cast<const T*>(p.chunk_emb);
  const T* qr = query + n * p.query_strides[0] + q * p.b * p.query_strides[1];
  float ss = 0.f;
  for (int64_t d = tid; d < p.E; d += kSearchThreads) {
    const float x = load(qr, d * p.query_strides[2]);
    ss += x * x;
  }
  ss = warp_sum(ss);
  if (lane == 0) sh_sum[warp] = ss;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += sh_sum[w];
  const float inv_q = total > 0.f ? 1.f / sqrtf(total) : 0.f;

  float* sims = slab + static_cast<int64_t>(blockIdx.x) * p.NC;
  for (int64_t j = warp; j < m; j += kWarps) {
    const T* er = emb + n * p.chunk_strides[0] + j * p.chunk_strides[1];
    float dot = 0.f;
    for (int64_t d = lane; d < p.E; d += 32) {
      dot += load(qr, d * p.query_strides[2]) * load(er, d * p.chunk_strides[2]);
    }
    dot = warp_sum(dot);
    if (lane == 0) {
      const float s = dot * inv_q * inv_e[n * p.NC + j];
      sims[j] = isnan(s) ? -INFINITY : s;
    }
  }
  __syncthreads();

  // Pass t picks the best entry ranking strictly after pass t-1's pick.
  Pick prev{INFINITY, -1};
  for (int64_t t = 0; t < take; ++t) {
    Pick best{0.f, -1};
    for (int64_t j = tid; j < m; j += kSearchThreads) {
      const float s = sims[j];
      const bool after = prev.j < 0 ? true : (s < prev.s || (s == prev.s && j > prev.j));
      const Pick cand{s, static_cast<int32_t>(j)};
      if (after && ranks_before(cand, best)) best = cand;
    }
    best = warp_best(best);
    if (lane == 0) sh_pick[warp] = best;
    __syncthreads();
    if (tid == 0) {
      Pick b = sh_pick[0];
      for (int w = 1; w < kWarps; ++w) {
        if (ranks_before(sh_pick[w], b)) b = sh_pick[w];
      }
      sh_best = b;
      out[t] = b.j;
    }
    __syncthreads();
    prev = sh_best;
  }
}

struct SearchPlan {
  int64_t NQ = 0, rows = 0, slab_rows = 1;
  size_t inv_off = 0, slab_off = 0, total = 0;
};

SearchPlan search_plan(const ChunkSearchParams& p) {
  SearchPlan pl;
  pl.NQ = (p.T + p.b - 1) / p.b;
  pl.rows = p.B * pl.NQ;
  const int64_t nc = p.NC > 0 ? p.NC : 1;
  pl.slab_rows = kSlabFloats / nc;
  if (pl.slab_rows > pl.rows) pl.slab_rows = pl.rows;
  if (pl.slab_rows < 1) pl.slab_rows = 1;
  pl.inv_off = 0;
  pl.slab_off = align_up(sizeof(float) * static_cast<size_t>(p.B * nc));
  pl.total = pl.slab_off + align_up(sizeof(float) * static_cast<size_t>(pl.slab_rows * nc));
  return pl;
}

template <class T>
const char* search_t(const ChunkSearchParams& p, cudaStream_t s) {
  const SearchPlan pl = search_plan(p);
  char* scratch = static_cast<char*>(p.scratch);
  float* inv_e = reinterpret_cast<float*>(scratch + pl.inv_off);
  float* slab = reinterpret_cast<float*>(scratch + pl.slab_off);
  if (p.B * p.NC > 0) {
    chunk_inv_norm_kernel<T><<<blocks_for(32 * p.B * p.NC, 256), 256, 0, s>>>(
        static_cast<const T*>(p.chunk_emb), p.chunk_strides[0], p.chunk_strides[1],
        p.chunk_strides[2], p.B * p.NC, p.NC, p.E, inv_e);
  }
  for (int64_t r0 = 0; r0 < pl.rows; r0 += pl.slab_rows) {
    const int64_t n = pl.rows - r0 < pl.slab_rows ? pl.rows - r0 : pl.slab_rows;
    chunk_search_rows_kernel<T>
        <<<static_cast<unsigned>(n), kSearchThreads, 0, s>>>(p, pl.NQ, r0, inv_e, slab);
  }
  return last_error();
}

// ---------------------------------------------------------------- idx check

__global__ void set_word_kernel(int64_t* word, int64_t value) { *word = value; }

__global__ void chunk_ids_check_kernel(ChunkIdsCheckParams p) {
  const int64_t N = p.B * p.NQ * p.kk;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= N) return;
  const int64_t s = e % p.kk, q = (e / p.kk) % p.NQ, n = e / (p.kk * p.NQ);
  auto read = [&](int64_t slot) -> int64_t {
    const int64_t off = n * p.idx_strides[0] + q * p.idx_strides[1] + slot * p.idx_strides[2];
    return p.idx_int32 ? static_cast<int64_t>(static_cast<const int32_t*>(p.idx)[off])
                       : static_cast<const int64_t*>(p.idx)[off];
  };
  const int64_t v = read(s);
  bool ok = v == -1 || eligible(v, q, p.c, p.b, p.NC);
  for (int64_t t = 0; t < s && ok && v != -1; ++t) ok = read(t) != v;
  // Out-of-range values become -2 (skipped by every kernel, like any ineligible id).
  p.out[e] = (v >= INT_MIN && v <= INT_MAX) ? static_cast<int32_t>(v) : -2;
  if (!ok) {
    atomicMin(reinterpret_cast<unsigned long long*>(p.bad_pos), static_cast<unsigned long long>(e));
  }
}

// ---------------------------------------------------------------- chunk_attention

struct Row {
  int64_t n, i, h;
};
__device__ __forceinline__ Row split_row(int64_t row, int64_t T, int64_t H) {
  return {row / (T * H), (row / H) % T, row % H};
}

// True when chunk j is among block qb's eligible ids (the window skips those positions).
__device__ __forceinline__ bool retrieved(const int32_t* ids_row, int64_t kk, int64_t j, int64_t qb,
                                          const ChunkAttentionParams& p) {
  if (!eligible(j, qb, p.c, p.b, p.NC)) return false;
  for (int64_t s = 0; s < kk; ++s) {
    if (ids_row[s] == j) return true;
  }
  return false;
}

template <class T>
__device__ __forceinline__ float bias_at(const ChunkAttentionParams& p, int64_t n, int64_t qb,
                                         int64_t s) {
  if (p.bias == nullptr) return 0.f;
  return load(static_cast<const T*>(p.bias),
              n * p.bias_strides[0] + qb * p.bias_strides[1] + s * p.bias_strides[2]);
}

// Calls visit(pos, bias, slot) for every key of position i in the order of ops/resona.h:
// the eligible slots' chunks, then the window positions whose chunk was not retrieved
// (slot -1). visit is called by the whole warp (uniform control flow).
template <class T, class Visit>
__device__ __forceinline__ void for_each_key(const ChunkAttentionParams& p, int64_t n, int64_t i,
                                             Visit&& visit) {
  const int64_t qb = i / p.b;
  const int32_t* ids_row = p.ids + (n * p.NQ + qb) * p.kk;
  for (int64_t s = 0; s < p.kk; ++s) {
    const int64_t j = ids_row[s];
    if (!eligible(j, qb, p.c, p.b, p.NC)) continue;
    const float bs = bias_at<T>(p, n, qb, s);
    for (int64_t r = 0; r < p.c; ++r) visit(j * p.c + r, bs, s);
  }
  int64_t cur = -1;
  bool cur_retrieved = false;
  for (int64_t pos = i - p.w + 1 > 0 ? i - p.w + 1 : 0; pos <= i; ++pos) {
    const int64_t j = pos / p.c;
    if (j != cur) {
      cur = j;
      cur_retrieved = retrieved(ids_row, p.kk, j, qb, p);
    }
    if (!cur_retrieved) visit(pos, 0.f, int64_t{-1});
  }
}

template <class T, int ND>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    chunk_attention_fwd_kernel(const ChunkAttentionParams p) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (row >= p.B * p.T * p.H) return;
  const Row rw = split_row(row, p.T, p.H);
  const T* qp = static_cast<const T*>(p.q) + rw.n * p.q_strides[0] + rw.i * p.q_strides[1] +
                rw.h * p.q_strides[2];
  const T* kb = static_cast<const T*>(p.k) + rw.n * p.k_strides[0] + rw.h * p.k_strides[2];
  const T* vb = static_cast<const T*>(p.v) + rw.n * p.v_strides[0] + rw.h * p.v_strides[2];
  float qs[ND], acc[ND];
#pragma unroll
  for (int m = 0; m < ND; ++m) {
    const int64_t d = lane + 32 * m;
    qs[m] = d < p.Dk ? load(qp, d * p.q_strides[3]) * p.scale : 0.f;
    acc[m] = 0.f;
  }
  float mx = -INFINITY, l = 0.f;
  for_each_key<T>(p, rw.n, rw.i, [&](int64_t pos, float bias, int64_t) {
    const T* kp = kb + pos * p.k_strides[1];
    float part = 0.f;
#pragma unroll
    for (int m = 0; m < ND; ++m) {
      const int64_t d = lane + 32 * m;
      if (d < p.Dk) part += qs[m] * load(kp, d * p.k_strides[3]);
    }
    const float logit = warp_sum(part) + bias;
    const float mn = fmaxf(mx, logit);
    const float corr = expf(mx - mn);  // 0 while nothing was seen (mx = -inf)
    const float e = expf(logit - mn);
    l = l * corr + e;
    const T* vp = vb + pos * p.v_strides[1];
#pragma unroll
    for (int m = 0; m < ND; ++m) {
      const int64_t d = lane + 32 * m;
      if (d < p.Dv) acc[m] = acc[m] * corr + e * load(vp, d * p.v_strides[3]);
    }
    mx = mn;
  });
  T* orow = static_cast<T*>(p.o) + row * p.Dv;
  const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
  for (int m = 0; m < ND; ++m) {
    const int64_t d = lane + 32 * m;
    if (d < p.Dv) store(orow, d, acc[m] * inv);
  }
  if (lane == 0) p.lse[row] = l > 0.f ? mx + logf(l) : -INFINITY;
}

// With A = sum_p P dP k[p], Bk = sum_p P k[p] and D_i = sum_p P dP (all in one pass):
//   d_q[i] = scale sum_p P (dP - D_i) k[p] = scale (A - D_i Bk).
// Per slot s it stores (sum P dP, sum P) over the slot's keys; the d_bias kernel forms
// sum dS = sum P dP - D_i sum P from them.
template <class T, int ND>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    chunk_attention_bwd_dq_kernel(const ChunkAttentionParams p, float* __restrict__ D_buf,
                                  float* __restrict__ partial) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (row >= p.B * p.T * p.H) return;
  const Row rw = split_row(row, p.T, p.H);
  const T* gp = static_cast<const T*>(p.d_o) + rw.n * p.d_o_strides[0] + rw.i * p.d_o_strides[1] +
                rw.h * p.d_o_strides[2];
  const T* qp = static_cast<const T*>(p.q) + rw.n * p.q_strides[0] + rw.i * p.q_strides[1] +
                rw.h * p.q_strides[2];
  const T* kb = static_cast<const T*>(p.k) + rw.n * p.k_strides[0] + rw.h * p.k_strides[2];
  const T* vb = static_cast<const T*>(p.v) + rw.n * p.v_strides[0] + rw.h * p.v_strides[2];
  float* part = partial ? partial + 2 * row * p.kk : nullptr;
  if (part) {
    for (int64_t s = lane; s < 2 * p.kk; s += 32) part[s] = 0.f;
    __syncwarp();
  }
  const float lse = p.lse[row];
  float qs[ND], go[ND], acc_a[ND], acc_b[ND];
#pragma unroll
  for (int m = 0; m < ND; ++m) {
    const int64_t d = lane + 32 * m;
    qs[m] = d < p.Dk ? load(qp, d * p.q_strides[3]) * p.scale : 0.f;
    go[m] = d < p.Dv ? load(gp, d * p.d_o_strides[3]) : 0.f;
    acc_a[m] = 0.f;
    acc_b[m] = 0.f;
  }
  float D = 0.f, slot_pdp = 0.f, slot_p = 0.f;
  int64_t cur_slot = -1;
  // An empty key set (lse = -inf) visits nothing: d_q = 0, D = 0.
  for_each_key<T>(p, rw.n, rw.i, [&](int64_t pos, float bias, int64_t slot) {
    const T* kp = kb + pos * p.k_strides[1];
    const T* vp = vb + pos * p.v_strides[1];
    float kr[ND];
    float part_l = 0.f, part_p = 0.f;
#pragma unroll
    for (int m = 0; m < ND; ++m) {
      const int64_t d = lane + 32 * m;
      kr[m] = d < p.Dk ? load(kp, d * p.k_strides[3]) : 0.f;
      part_l += qs[m] * kr[m];
      if (d < p.Dv) part_p += go[m] * load(vp, d * p.v_strides[3]);
    }
    const float P = expf(warp_sum(part_l) + bias - lse);
    const float pdp = P * warp_sum(part_p);
    D += pdp;
#pragma unroll
    for (int m = 0; m < ND; ++m) {
      acc_a[m] += pdp * kr[m];
      acc_b[m] += P * kr[m];
    }
    if (part && slot != cur_slot) {  // the keys of one slot are consecutive
      if (cur_slot >= 0 && lane == 0) {
        part[2 * cur_slot] = slot_pdp;
        part[2 * cur_slot + 1] = slot_p;
      }
      cur_slot = slot;
      slot_pdp = 0.f;
      slot_p = 0.f;
    }
    slot_pdp += pdp;
    slot_p += P;
  });
  if (part && cur_slot >= 0 && lane == 0) {
    part[2 * cur_slot] = slot_pdp;
    part[2 * cur_slot + 1] = slot_p;
  }
  if (lane == 0) D_buf[row] = D;
  if (p.d_q) {
    T* dq = static_cast<T*>(p.d_q) + row * p.Dk;
#pragma unroll
    for (int m = 0; m < ND; ++m) {
      const int64_t d = lane + 32 * m;
      if (d < p.Dk) store(dq, d, (acc_a[m] - D * acc_b[m]) * p.scale);
    }
  }
}

// Inverse lists: entry e = (n*NQ + q)*kk + s with an eligible id j gets key n*NC + j,
// others the bound B*NC (sorted past every real key).
__global__ void chunk_entry_keys_kernel(const ChunkAttentionParams p, uint32_t* __restrict__ keys,
                                        int32_t* __restrict__ entries) {
  const int64_t N = p.B * p.NQ * p.kk;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= N) return;
  const int64_t q = (e / p.kk) % p.NQ, n = e / (p.kk * p.NQ);
  const int64_t j = p.ids[e];
  keys[e] = static_cast<uint32_t>(eligible(j, q, p.c, p.b, p.NC) ? n * p.NC + j : p.B * p.NC);
  entries[e] = static_cast<int32_t>(e);
}

__global__ void chunk_segments_kernel(const uint32_t* __restrict__ keys, int64_t N, uint32_t bound,
                                      int32_t* __restrict__ seg_start,
                                      int32_t* __restrict__ seg_end) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= N) return;
  const uint32_t key = keys[t];
  if (key >= bound) return;
  if (t == 0 || keys[t - 1] != key) seg_start[key] = static_cast<int32_t>(t);
  if (t == N - 1 || keys[t + 1] != key) seg_end[key] = static_cast<int32_t>(t + 1);
}

template <class T, int ND>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    chunk_attention_bwd_dkdv_kernel(const ChunkAttentionParams p, const float* __restrict__ D_buf,
                                    const int32_t* __restrict__ seg_start,
                                    const int32_t* __restrict__ seg_end,
                                    const int32_t* __restrict__ entries) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (row >= p.B * p.T * p.H) return;
  const Row rw = split_row(row, p.T, p.H);  // (n, pos, h): the key position is rw.i
  const int64_t pos = rw.i;
  const T* kp = static_cast<const T*>(p.k) + rw.n * p.k_strides[0] + pos * p.k_strides[1] +
                rw.h * p.k_strides[2];
  const T* vp = static_cast<const T*>(p.v) + rw.n * p.v_strides[0] + pos * p.v_strides[1] +
                rw.h * p.v_strides[2];
  const T* qb_ptr = static_cast<const T*>(p.q) + rw.n * p.q_strides[0] + rw.h * p.q_strides[2];
  const T* gb = static_cast<const T*>(p.d_o) + rw.n * p.d_o_strides[0] + rw.h * p.d_o_strides[2];
  float kr[ND], vr[ND], acc_k[ND], acc_v[ND];
#pragma unroll
  for (int m = 0; m < ND; ++m) {
    const int64_t d = lane + 32 * m;
    kr[m] = d < p.Dk ? load(kp, d * p.k_strides[3]) : 0.f;
    vr[m] = d < p.Dv ? load(vp, d * p.v_strides[3]) : 0.f;
    acc_k[m] = 0.f;
    acc_v[m] = 0.f;
  }
  // Query i's terms for this key, with the logit formed exactly as in forward.
  auto contribute = [&](int64_t i, float bias) {
    const int64_t qrow = (rw.n * p.T + i) * p.H + rw.h;
    const float lse = p.lse[qrow];
    const T* qp = qb_ptr + i * p.q_strides[1];
    const T* gp = gb + i * p.d_o_strides[1];
    float qs[ND], go[ND];
    float part_l = 0.f, part_p = 0.f;
#pragma unroll
    for (int m = 0; m < ND; ++m) {
      const int64_t d = lane + 32 * m;
      qs[m] = d < p.Dk ? load(qp, d * p.q_strides[3]) * p.scale : 0.f;
      go[m] = d < p.Dv ? load(gp, d * p.d_o_strides[3]) : 0.f;
      part_l += qs[m] * kr[m];
      part_p += go[m] * vr[m];
    }
    const float P = expf(warp_sum(part_l) + bias - lse);
    const float ds = P * (warp_sum(part_p) - D_buf[qrow]);
#pragma unroll
    for (int m = 0; m < ND; ++m) {
      acc_v[m] += P * go[m];
      acc_k[m] += ds * qs[m];
    }
  };
  const int64_t j = pos / p.c;
  if (j < p.NC) {
    const int64_t key = rw.n * p.NC + j;
    for (int32_t t = seg_start[key]; t < seg_end[key]; ++t) {
      const int64_t e = entries[t];
      const int64_t s = e % p.kk, qb = (e / p.kk) % p.NQ;
      const float bs = bias_at<T>(p, rw.n, qb, s);
      const int64_t i1 = (qb + 1) * p.b < p.T ? (qb + 1) * p.b : p.T;
      for (int64_t i = qb * p.b; i < i1; ++i) contribute(i, bs);
    }
  }
  int64_t cur = -1;
  bool cur_retrieved = false;
  const int64_t i_end = pos + p.w < p.T ? pos + p.w : p.T;  // window queries pos .. pos+w-1
  for (int64_t i = pos; i < i_end; ++i) {
    const int64_t qb = i / p.b;
    if (qb != cur) {
      cur = qb;
      cur_retrieved = retrieved(p.ids + (rw.n * p.NQ + qb) * p.kk, p.kk, j, qb, p);
    }
    if (!cur_retrieved) contribute(i, 0.f);
  }
  if (p.d_k) {
    T* dk = static_cast<T*>(p.d_k) + row * p.Dk;
#pragma unroll
    for (int m = 0; m < ND; ++m) {
      const int64_t d = lane + 32 * m;
      if (d < p.Dk) store(dk, d, acc_k[m]);
    }
  }
  if (p.d_v) {
    T* dv = static_cast<T*>(p.d_v) + row * p.Dv;
#pragma unroll
    for (int m = 0; m < ND; ++m) {
      const int64_t d = lane + 32 * m;
      if (d < p.Dv) store(dv, d, acc_v[m]);
    }
  }
}

template <class T>
__global__ void chunk_attention_bwd_bias_kernel(const ChunkAttentionParams p,
                                                const float* __restrict__ D_buf,
                                                const float* __restrict__ partial) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= p.B * p.NQ * p.kk) return;
  const int64_t s = e % p.kk, qb = (e / p.kk) % p.NQ, n = e / (p.kk * p.NQ);
  const int64_t i1 = (qb + 1) * p.b < p.T ? (qb + 1) * p.b : p.T;
  float acc = 0.f;
  for (int64_t i = qb * p.b; i < i1; ++i) {
    for (int64_t h = 0; h < p.H; ++h) {
      const int64_t row = (n * p.T + i) * p.H + h;
      const float* ps = partial + 2 * (row * p.kk + s);
      acc += ps[0] - D_buf[row] * ps[1];  // sum over the slot's keys of P (dP - D_i)
    }
  }
  store(static_cast<T*>(p.d_bias), e, acc);
}

// ---------------------------------------------------------------- chunk_attention, block kernels

namespace wmma = nvcuda::wmma;

constexpr int kTileQ = 64;        // positions per query tile
constexpr int kTileK = 32;        // keys per step
constexpr int kLDS = kTileK + 4;  // row stride of the [kTileQ][kTileK] logit tiles
// 8 warps. Products: warp w owns rows 16 (w & 3) .. +15 of the tile; of S and dP the
// 16 keys 16 (w >> 2) .. +15, of o and d_q the column groups (w >> 2) + 2 f. Softmax:
// thread (ty, tx) = (tid / 16, tid % 16) owns rows 4 ty .. 4 ty + 3, keys 2 tx and 2 tx + 1.
constexpr int kBlockThreads = 256;
constexpr int kBlockWarps = kBlockThreads / 32;
constexpr int64_t kBlockMaxWindow = 256;

// TF32 tensor-core tiles, float32 accumulators.
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;
template <class Layout>
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, Layout>;
template <class Layout>
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, Layout>;

// Head dims padded to the 16-column groups of the tiles (zeros past D), and the row stride
// of a staged [rows][pad16(D)] tile: 4 times an odd number, so that the 8 rows x 4 columns
// a fragment load reads fall in 32 different banks.
__host__ __device__ __forceinline__ int64_t pad16(int64_t d) { return (d + 15) / 16 * 16; }
__host__ __device__ __forceinline__ int64_t row_ld(int64_t d) { return pad16(d) + 4; }
int64_t round_up32(int64_t x) { return (x + 31) / 32 * 32; }

// acc += A B, A [16 x K] at a (stride lda, layout LA), B [K x 16] at b (stride ldb, layout
// LB), K a multiple of 8. The staged Q, d_o, K and V tiles hold TF32-rounded values already;
// A operands computed in the kernel (P, dS) are rounded after the load (kRoundA).
template <class LA, class LB, bool kRoundA>
__device__ __forceinline__ void mma_acc(FragC& acc, const float* a, unsigned lda, const float* b,
                                        unsigned ldb, int64_t K) {
  constexpr bool a_row = std::is_same_v<LA, wmma::row_major>;
  constexpr bool b_row = std::is_same_v<LB, wmma::row_major>;
  FragA<LA> fa;
  FragB<LB> fb;
  for (int64_t k0 = 0; k0 < K; k0 += 8) {
    wmma::load_matrix_sync(fa, a + (a_row ? k0 : k0 * lda), lda);
    wmma::load_matrix_sync(fb, b + (b_row ? k0 * ldb : k0), ldb);
    if constexpr (kRoundA) {
#pragma unroll
      for (int t = 0; t < fa.num_elements; ++t) fa.x[t] = wmma::__float_to_tf32(fa.x[t]);
    }
    wmma::mma_sync(acc, fa, fb, acc);
  }
}

// The tile's place and its key list (see cuda/resona.h).
struct TileGeom {
  int64_t n, qb, t, t0, t1, ws, nret, nkeys;
  bool empty;
};

__device__ __forceinline__ TileGeom tile_geom(const ChunkAttentionParams& p, int64_t NT,
                                              int64_t tile) {
  TileGeom g;
  g.t = tile % NT;
  g.qb = (tile / NT) % p.NQ;
  g.n = tile / (NT * p.NQ);
  const int64_t q1 = min((g.qb + 1) * p.b, p.T);
  g.t0 = g.qb * p.b + g.t * kTileQ;
  g.t1 = min(g.t0 + kTileQ, q1);
  g.empty = g.t0 >= g.t1;
  g.ws = p.w > 0 ? max(int64_t{0}, g.t0 - p.w + 1) : g.t1;
  g.nret = p.kk * p.c;
  g.nkeys = g.nret + (g.t1 - g.ws);
  return g;
}

// Per-step key metadata in shared memory: position (-1: masked), bias, window flag.
struct KeyMeta {
  int* pos;
  float* bias;
  int* win;
};

template <class T>
__device__ __forceinline__ void load_key_meta(const ChunkAttentionParams& p, const TileGeom& g,
                                              int64_t kx0, KeyMeta km) {
  const int tid = threadIdx.x;
  if (tid >= kTileK) return;
  const int64_t kx = kx0 + tid;
  const int32_t* ids_row = p.ids + (g.n * p.NQ + g.qb) * p.kk;
  int pos = -1, win = 0;
  float bs = 0.f;
  if (kx < g.nret) {
    const int64_t s = kx / p.c, j = ids_row[s];
    if (eligible(j, g.qb, p.c, p.b, p.NC)) {
      pos = static_cast<int>(j * p.c + kx % p.c);
      bs = bias_at<T>(p, g.n, g.qb, s);
    }
  } else if (kx < g.nkeys) {
    const int64_t ps = g.ws + (kx - g.nret);
    if (!retrieved(ids_row, p.kk, ps / p.c, g.qb, p)) {
      pos = static_cast<int>(ps);
      win = 1;
    }
  }
  km.pos[tid] = pos;
  km.bias[tid] = bs;
  km.win[tid] = win;
}

// One tile staged in shared memory: dst[r * row_ld(D) + d] = tf32(scale * base[pos(r)][d])
// for d < D (strides st of [., T, ., D]); zero for d in [D, pad16(D)) and for rows whose
// position is -1.
template <class T>
struct StageSrc {
  const T* base;
  const int64_t* st;
  int64_t D;
  float scale;
  float* dst;
};

constexpr int kStageRows = kTileK / kBlockWarps;  // rows per warp and batch

// The raw storage bits of a staged element (no conversion at load time) and its value.
__device__ __forceinline__ float raw_zero(float) { return 0.f; }
__device__ __forceinline__ unsigned short raw_zero(__nv_bfloat16) { return 0; }
__device__ __forceinline__ float raw_load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ unsigned short raw_load(const __nv_bfloat16* p, int64_t i) {
  return reinterpret_cast<const unsigned short*>(p)[i];
}
__device__ __forceinline__ float raw_value(float x) { return x; }
__device__ __forceinline__ float raw_value(unsigned short x) {
  return __uint_as_float(static_cast<unsigned>(x) << 16);  // bf16 is float32's top half
}

// Stages rows [0, nrows) of a (and of b when with_b; same positions pos_of(r)), a warp per
// row, lanes over d, kBlockWarps * kStageRows rows a batch. Each batch issues all of its
// loads before any store, so a step's K and V cost one memory round trip, not one per
// element (the compiler cannot reorder loads across stores through generic pointers).
// The batch keeps the storage bits as loaded and converts bf16 to float only when it
// stores: a conversion right after each load would make every load wait for the one
// before it (the bf16 forward was 1.6x slower than the float32 one that way).
// kCols: head dims per lane, ceil(max(a.D, b.D) / 32) <= kCols.
template <int kCols, class T, class PosOf>
__device__ __forceinline__ void stage_rows(const StageSrc<T>& a, const StageSrc<T>& b, bool with_b,
                                           int nrows, PosOf pos_of) {
  using Raw = decltype(raw_zero(T{}));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t lda = row_ld(a.D), ldb = row_ld(b.D), Dpa = pad16(a.D), Dpb = pad16(b.D);
  for (int r0 = 0; r0 < nrows; r0 += kBlockWarps * kStageRows) {
    Raw xa[kStageRows][kCols], xb[kStageRows][kCols];
#pragma unroll
    for (int u = 0; u < kStageRows; ++u) {
      const int64_t pos = pos_of(r0 + warp + kBlockWarps * u);
      const T* ra = a.base + (pos >= 0 ? pos : 0) * a.st[1];
      const T* rb = b.base + (pos >= 0 ? pos : 0) * b.st[1];
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        const int64_t d = lane + 32 * j;
        xa[u][j] = pos >= 0 && d < a.D ? raw_load(ra, d * a.st[3]) : raw_zero(T{});
        xb[u][j] = with_b && pos >= 0 && d < b.D ? raw_load(rb, d * b.st[3]) : raw_zero(T{});
      }
    }
#pragma unroll
    for (int u = 0; u < kStageRows; ++u) {
      const int64_t r = r0 + warp + kBlockWarps * u;
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        const int64_t d = lane + 32 * j;
        if (d < Dpa) a.dst[r * lda + d] = wmma::__float_to_tf32(raw_value(xa[u][j]) * a.scale);
        if (with_b && d < Dpb) {
          b.dst[r * ldb + d] = wmma::__float_to_tf32(raw_value(xb[u][j]) * b.scale);
        }
      }
    }
  }
}

__device__ __forceinline__ bool key_visible(int pos, int win, int64_t i, int64_t w) {
  return pos >= 0 && (!win || (pos <= i && pos > i - w));
}

__device__ __forceinline__ float half_warp_max(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float half_warp_sum(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Shared-memory floats of the block kernels (4 * kTileK words of key metadata included).
int64_t fwd_smem_floats(const ChunkAttentionParams& p) {
  const int64_t ldk = row_ld(p.Dk), ldv = row_ld(p.Dv);
  return kTileQ * (ldk > ldv ? ldk : ldv) + kTileK * (ldk + ldv) + kTileQ * kLDS + 4 * kTileK;
}
int64_t bwd_smem_floats(const ChunkAttentionParams& p) {
  const int64_t ldk = row_ld(p.Dk), ldv = row_ld(p.Dv);
  return (kTileQ + kTileK) * (ldk + ldv) + 2 * kTileQ * kLDS + 4 * kTileK;
}
// The largest (backward at Dk = Dv = 256) fits the 227 KB a block may opt in to (sm_80+).
static_assert(((kTileQ + kTileK) * 2 * (kChunkAttnMaxHeadDim + 4) + 2 * kTileQ * kLDS +
               4 * kTileK) *
                      sizeof(float) <=
                  227 * 1024,
              "chunk_attention block kernels: shared memory at the largest head dims");

// Forward in two passes over the key steps (the o accumulators stay in tensor-core fragments,
// whose row layout is opaque, so they are never rescaled): pass 1 forms the row max and sum
// of exp (online, float32) and lse; pass 2 forms P = exp(S + bias - lse) and o = P V.
// NF: column groups of o per warp (ceil(pad16(Dv) / 32) <= NF).
template <class T, int NF>
__global__ void __launch_bounds__(kBlockThreads)
    chunk_attention_block_fwd_kernel(const ChunkAttentionParams p, int64_t NT) {
  extern __shared__ float sm[];
  const int64_t h = blockIdx.y;
  const TileGeom g = tile_geom(p, NT, blockIdx.x);
  if (g.empty) return;
  const int64_t ldk = row_ld(p.Dk), ldv = row_ld(p.Dv), ncv = pad16(p.Dv) / 16;
  float* Qs = sm;                                     // [kTileQ][ldk], scaled; o at the end
  float* Ks = Qs + kTileQ * (ldk > ldv ? ldk : ldv);  // [kTileK][ldk]
  float* Vs = Ks + kTileK * ldk;                      // [kTileK][ldv]
  float* Ss = Vs + kTileK * ldv;                      // [kTileQ][kLDS]: S, then P
  float* meta = Ss + kTileQ * kLDS;
  KeyMeta km{reinterpret_cast<int*>(meta), meta + kTileK,
             reinterpret_cast<int*>(meta + 2 * kTileK)};
  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15, warp = tid >> 5;
  const int wr = warp & 3, wc = warp >> 2;
  const T* qb_ = static_cast<const T*>(p.q) + g.n * p.q_strides[0] + h * p.q_strides[2];
  const T* kb = static_cast<const T*>(p.k) + g.n * p.k_strides[0] + h * p.k_strides[2];
  const T* vb = static_cast<const T*>(p.v) + g.n * p.v_strides[0] + h * p.v_strides[2];
  const StageSrc<T> q_src{qb_, p.q_strides, p.Dk, p.scale, Qs};
  stage_rows<NF>(q_src, q_src, false, kTileQ,
                 [&](int r) { return g.t0 + r < g.t1 ? g.t0 + r : int64_t{-1}; });
  const StageSrc<T> k_src{kb, p.k_strides, p.Dk, 1.f, Ks}, v_src{vb, p.v_strides, p.Dv, 1.f, Vs};
  auto key_pos = [&](int r) { return static_cast<int64_t>(km.pos[r]); };
  // One key step: metadata, K (and V), then S = Q K^T into Ss.
  auto step = [&](int64_t kx0, bool with_v) {
    __syncthreads();  // the previous step's tiles are consumed
    load_key_meta<T>(p, g, kx0, km);
    __syncthreads();
    stage_rows<NF>(k_src, v_src, with_v, kTileK, key_pos);
    __syncthreads();
    FragC s;
    wmma::fill_fragment(s, 0.f);
    mma_acc<wmma::row_major, wmma::col_major, false>(s, Qs + wr * 16 * ldk, ldk, Ks + wc * 16 * ldk,
                                                     ldk, pad16(p.Dk));
    wmma::store_matrix_sync(Ss + wr * 16 * kLDS + wc * 16, s, kLDS, wmma::mem_row_major);
    __syncthreads();
  };
  float m[4], l[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
  }
  for (int64_t kx0 = 0; kx0 < g.nkeys; kx0 += kTileK) {
    step(kx0, false);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int64_t i = g.t0 + 4 * ty + r;
      float s[2];
#pragma unroll
      for (int c2 = 0; c2 < 2; ++c2) {
        const int key = 2 * tx + c2;
        s[c2] = key_visible(km.pos[key], km.win[key], i, p.w)
                    ? Ss[(4 * ty + r) * kLDS + key] + km.bias[key]
                    : -INFINITY;
      }
      const float mn = fmaxf(m[r], half_warp_max(fmaxf(s[0], s[1])));
      const float mu = mn == -INFINITY ? 0.f : mn;
      l[r] = l[r] * expf(m[r] - mu) + half_warp_sum(expf(s[0] - mu) + expf(s[1] - mu));
      m[r] = mn;
    }
  }
  float lse[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) lse[r] = l[r] > 0.f ? m[r] + logf(l[r]) : -INFINITY;
  FragC o[NF];
#pragma unroll
  for (int f = 0; f < NF; ++f) wmma::fill_fragment(o[f], 0.f);
  for (int64_t kx0 = 0; kx0 < g.nkeys; kx0 += kTileK) {
    step(kx0, true);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int64_t i = g.t0 + 4 * ty + r;
#pragma unroll
      for (int c2 = 0; c2 < 2; ++c2) {
        const int key = 2 * tx + c2;
        float& x = Ss[(4 * ty + r) * kLDS + key];
        x = key_visible(km.pos[key], km.win[key], i, p.w) && lse[r] != -INFINITY
                ? expf(x + km.bias[key] - lse[r])
                : 0.f;
      }
    }
    __syncthreads();
#pragma unroll
    for (int f = 0; f < NF; ++f) {
      const int64_t cg = wc + 2 * f;
      if (cg < ncv) {
        mma_acc<wmma::row_major, wmma::row_major, true>(o[f], Ss + wr * 16 * kLDS, kLDS,
                                                        Vs + cg * 16, ldv, kTileK);
      }
    }
  }
  __syncthreads();
  float* Os = sm;  // [kTileQ][ldv]
#pragma unroll
  for (int f = 0; f < NF; ++f) {
    const int64_t cg = wc + 2 * f;
    if (cg < ncv) {
      wmma::store_matrix_sync(Os + wr * 16 * ldv + cg * 16, o[f], ldv, wmma::mem_row_major);
    }
  }
  __syncthreads();
  const int lane = tid & 31;
  for (int r = warp; r < kTileQ; r += kBlockWarps) {
    const int64_t i = g.t0 + r;
    if (i >= g.t1) break;
    const int64_t row = (g.n * p.T + i) * p.H + h;
    T* orow = static_cast<T*>(p.o) + row * p.Dv;
    for (int64_t d = lane; d < p.Dv; d += 32) store(orow, d, Os[r * ldv + d]);
    if constexpr (!std::is_same_v<T, float>) {
      if (p.o_f32) {
        for (int64_t d = lane; d < p.Dv; d += 32) p.o_f32[row * p.Dv + d] = Os[r * ldv + d];
      }
    }
  }
  if (tx == 0) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int64_t i = g.t0 + 4 * ty + r;
      if (i < g.t1) p.lse[(g.n * p.T + i) * p.H + h] = lse[r];
    }
  }
}

// Partial sums of one tile and head: part + tile_h * (pad16(Dk) + pad16(Dv)) * LK holds
// d_k rows [pad16(Dk)][LK] then d_v rows [pad16(Dv)][LK] (index d * LK + key list index; LK
// a multiple of kTileK, so every step's fragments are stored whole); bias_part + tile_h * kk
// holds the per-slot sums of dS.
template <class T, int NF>
__global__ void __launch_bounds__(kBlockThreads)
    chunk_attention_block_bwd_kernel(const ChunkAttentionParams p, int64_t NT, int64_t LK,
                                     float* __restrict__ part, float* __restrict__ bias_part) {
  extern __shared__ float sm[];
  const int64_t h = blockIdx.y;
  const TileGeom g = tile_geom(p, NT, blockIdx.x);
  if (g.empty) return;
  const int64_t ldk = row_ld(p.Dk), ldv = row_ld(p.Dv);
  const int64_t Dkp = pad16(p.Dk), Dvp = pad16(p.Dv), nck = Dkp / 16, ncv = Dvp / 16;
  float* Qs = sm;                   // [kTileQ][ldk], scaled; d_q at the end
  float* Gs = Qs + kTileQ * ldk;    // [kTileQ][ldv]: d_o
  float* Ks = Gs + kTileQ * ldv;    // [kTileK][ldk]
  float* Vs = Ks + kTileK * ldk;    // [kTileK][ldv]
  float* Ss = Vs + kTileK * ldv;    // [kTileQ][kLDS]: S, then P
  float* dPs = Ss + kTileQ * kLDS;  // [kTileQ][kLDS]: dP, then dS
  float* meta = dPs + kTileQ * kLDS;
  KeyMeta km{reinterpret_cast<int*>(meta), meta + kTileK,
             reinterpret_cast<int*>(meta + 2 * kTileK)};
  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15, lane = tid & 31, warp = tid >> 5;
  const int wr = warp & 3, wc = warp >> 2;
  const T* qb_ = static_cast<const T*>(p.q) + g.n * p.q_strides[0] + h * p.q_strides[2];
  const T* gb = static_cast<const T*>(p.d_o) + g.n * p.d_o_strides[0] + h * p.d_o_strides[2];
  const T* kb = static_cast<const T*>(p.k) + g.n * p.k_strides[0] + h * p.k_strides[2];
  const T* vb = static_cast<const T*>(p.v) + g.n * p.v_strides[0] + h * p.v_strides[2];
  auto row_pos = [&](int r) { return g.t0 + r < g.t1 ? g.t0 + r : int64_t{-1}; };
  stage_rows<NF>(StageSrc<T>{qb_, p.q_strides, p.Dk, p.scale, Qs},
                 StageSrc<T>{gb, p.d_o_strides, p.Dv, 1.f, Gs}, true, kTileQ, row_pos);
  const StageSrc<T> k_src{kb, p.k_strides, p.Dk, 1.f, Ks}, v_src{vb, p.v_strides, p.Dv, 1.f, Vs};
  const int64_t tile_h = static_cast<int64_t>(blockIdx.x) * p.H + h;
  float lse[4], D[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t i = g.t0 + 4 * ty + r;
    lse[r] = i < g.t1 ? p.lse[(g.n * p.T + i) * p.H + h] : -INFINITY;
    D[r] = 0.f;
  }
  auto key_pos = [&](int r) { return static_cast<int64_t>(km.pos[r]); };
  // One key step: metadata, K and V, then S = Q K^T into Ss and dP = d_o V^T into dPs.
  auto step = [&](int64_t kx0) {
    __syncthreads();  // the previous step's tiles are consumed
    load_key_meta<T>(p, g, kx0, km);
    __syncthreads();
    stage_rows<NF>(k_src, v_src, true, kTileK, key_pos);
    __syncthreads();
    FragC s, dp;
    wmma::fill_fragment(s, 0.f);
    wmma::fill_fragment(dp, 0.f);
    mma_acc<wmma::row_major, wmma::col_major, false>(s, Qs + wr * 16 * ldk, ldk, Ks + wc * 16 * ldk,
                                                     ldk, Dkp);
    mma_acc<wmma::row_major, wmma::col_major, false>(dp, Gs + wr * 16 * ldv, ldv,
                                                     Vs + wc * 16 * ldv, ldv, Dvp);
    wmma::store_matrix_sync(Ss + wr * 16 * kLDS + wc * 16, s, kLDS, wmma::mem_row_major);
    wmma::store_matrix_sync(dPs + wr * 16 * kLDS + wc * 16, dp, kLDS, wmma::mem_row_major);
    __syncthreads();
  };
  // P of the thread's cell (row 4 ty + r, key), from the logit in Ss.
  auto prob = [&](int r, int key) {
    const int64_t i = g.t0 + 4 * ty + r;
    return key_visible(km.pos[key], km.win[key], i, p.w) && lse[r] != -INFINITY
               ? expf(Ss[(4 * ty + r) * kLDS + key] + km.bias[key] - lse[r])
               : 0.f;
  };
  // D_i = sum_p P dP = sum_p P (d_o[i] . v[p]) = d_o[i] . o[i], from the forward's float32
  // o: one dot per row instead of a pass over the keys recomputing S and dP (which took
  // about a third of this kernel). Threads tx = 0..15 of the row split d, then add up.
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t i = g.t0 + 4 * ty + r;
    if (i < g.t1) {
      const float* orow = p.o_f32 + ((g.n * p.T + i) * p.H + h) * p.Dv;
      const T* grow = gb + i * p.d_o_strides[1];
      for (int64_t d = tx; d < p.Dv; d += 16) D[r] += load(grow, d * p.d_o_strides[3]) * orow[d];
    }
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) D[r] = half_warp_sum(D[r]);
  // One pass over the keys: dS = P (dP - D_i); d_q += dS K (fragments, complete within the tile);
  // the step's partials d_k = dS^T (scale Q) and d_v = P^T d_o, stored whole from the fragments;
  // the per-slot column sums of dS for d_bias (warp 0).
  FragC dq[NF];
#pragma unroll
  for (int f = 0; f < NF; ++f) wmma::fill_fragment(dq[f], 0.f);
  const bool want_kv = part != nullptr;
  float* pk = want_kv ? part + tile_h * (Dkp + Dvp) * LK : nullptr;
  float* pv = want_kv ? pk + Dkp * LK : nullptr;
  int64_t cur_slot = -1;
  float slot_sum = 0.f;  // warp 0: the current slot's dS sum
  for (int64_t kx0 = 0; kx0 < g.nkeys; kx0 += kTileK) {
    step(kx0);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
#pragma unroll
      for (int c2 = 0; c2 < 2; ++c2) {
        const int key = 2 * tx + c2;
        const float P = prob(r, key);
        float& x = dPs[(4 * ty + r) * kLDS + key];
        x = P * (x - D[r]);
        Ss[(4 * ty + r) * kLDS + key] = P;
      }
    }
    __syncthreads();
    if (p.d_q) {
#pragma unroll
      for (int f = 0; f < NF; ++f) {
        const int64_t cg = wc + 2 * f;
        if (cg < nck) {
          mma_acc<wmma::row_major, wmma::row_major, true>(dq[f], dPs + wr * 16 * kLDS, kLDS,
                                                          Ks + cg * 16, ldk, kTileK);
        }
      }
    }
    if (want_kv) {
      // Fragments (key group kg, column group cg): d_k ones first, then d_v; warp w takes
      // w, w + 8, ...
      for (int64_t f = warp; f < 2 * (nck + ncv); f += kBlockWarps) {
        const bool is_k = f < 2 * nck;
        const int64_t fi = is_k ? f : f - 2 * nck, kg = fi & 1, cg = fi >> 1;
        FragC acc;
        wmma::fill_fragment(acc, 0.f);
        if (is_k) {
          mma_acc<wmma::col_major, wmma::row_major, true>(acc, dPs + kg * 16, kLDS, Qs + cg * 16,
                                                          ldk, kTileQ);
        } else {
          mma_acc<wmma::col_major, wmma::row_major, true>(acc, Ss + kg * 16, kLDS, Gs + cg * 16,
                                                          ldv, kTileQ);
        }
        wmma::store_matrix_sync((is_k ? pk : pv) + cg * 16 * LK + kx0 + kg * 16, acc,
                                static_cast<unsigned>(LK), wmma::mem_col_major);
      }
    }
    if (bias_part && kx0 < g.nret && warp == 0) {
      float cs = 0.f;
      for (int row = 0; row < kTileQ; ++row) cs += dPs[row * kLDS + lane];
      for (int key = 0; key < kTileK; ++key) {
        const float v = __shfl_sync(0xffffffffu, cs, key);
        if (kx0 + key >= g.nret) break;
        const int64_t s = (kx0 + key) / p.c;
        if (s != cur_slot) {
          if (cur_slot >= 0 && lane == 0) bias_part[tile_h * p.kk + cur_slot] = slot_sum;
          cur_slot = s;
          slot_sum = 0.f;
        }
        slot_sum += v;
      }
    }
  }
  if (bias_part && warp == 0 && lane == 0 && cur_slot >= 0) {
    bias_part[tile_h * p.kk + cur_slot] = slot_sum;
  }
  if (p.d_q) {
    __syncthreads();  // Qs is read by the last step's d_k fragments
#pragma unroll
    for (int f = 0; f < NF; ++f) {
      const int64_t cg = wc + 2 * f;
      if (cg < nck) {
        wmma::store_matrix_sync(Qs + wr * 16 * ldk + cg * 16, dq[f], ldk, wmma::mem_row_major);
      }
    }
    __syncthreads();
    for (int r = warp; r < kTileQ; r += kBlockWarps) {
      const int64_t i = g.t0 + r;
      if (i >= g.t1) break;
      T* dqrow = static_cast<T*>(p.d_q) + ((g.n * p.T + i) * p.H + h) * p.Dk;
      for (int64_t d = lane; d < p.Dk; d += 32) store(dqrow, d, Qs[r * ldk + d] * p.scale);
    }
  }
}

// Thread per (n, h, d, pos), pos fastest: d_k[n, pos, h, d] and d_v[n, pos, h, d] summed
// over the partial rows of the tiles that hold pos, in a fixed order.
__global__ void chunk_attention_block_reduce_kernel(const ChunkAttentionParams p, int64_t NT,
                                                    int64_t LK, const float* __restrict__ part,
                                                    const int32_t* __restrict__ seg_start,
                                                    const int32_t* __restrict__ seg_end,
                                                    const int32_t* __restrict__ entries, void* d_k,
                                                    void* d_v, bool bf16) {
  const int64_t Dm = p.Dk > p.Dv ? p.Dk : p.Dv;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= p.B * p.H * Dm * p.T) return;
  const int64_t pos = e % p.T, d = (e / p.T) % Dm, h = (e / (p.T * Dm)) % p.H,
                n = e / (p.T * Dm * p.H);
  const bool do_k = d_k != nullptr && d < p.Dk, do_v = d_v != nullptr && d < p.Dv;
  const int64_t Dkp = pad16(p.Dk), Dvp = pad16(p.Dv);
  float ak = 0.f, av = 0.f;
  auto add = [&](int64_t qb, int64_t t, int64_t kx) {
    const float* base = part + (((n * p.NQ + qb) * NT + t) * p.H + h) * (Dkp + Dvp) * LK;
    if (do_k) ak += base[d * LK + kx];
    if (do_v) av += base[(Dkp + d) * LK + kx];
  };
  const int64_t j = pos / p.c;
  if (j < p.NC && seg_start != nullptr) {
    const int64_t key = n * p.NC + j;
    for (int32_t t = seg_start[key]; t < seg_end[key]; ++t) {
      const int64_t en = entries[t];
      const int64_t s = en % p.kk, qb = (en / p.kk) % p.NQ;
      const int64_t len = min((qb + 1) * p.b, p.T) - qb * p.b;
      for (int64_t tt = 0; tt * kTileQ < len; ++tt) add(qb, tt, s * p.c + pos % p.c);
    }
  }
  if (p.w > 0) {
    const int64_t i_hi = min(pos + p.w - 1, p.T - 1);
    for (int64_t qb = pos / p.b; qb <= i_hi / p.b; ++qb) {
      if (retrieved(p.ids + (n * p.NQ + qb) * p.kk, p.kk, j, qb, p)) continue;
      const int64_t q1 = min((qb + 1) * p.b, p.T);
      for (int64_t tt = 0; qb * p.b + tt * kTileQ < q1; ++tt) {
        const int64_t t0 = qb * p.b + tt * kTileQ, t1 = min(t0 + kTileQ, q1);
        if (t0 > i_hi || t1 - 1 < pos) continue;
        const int64_t ws = max(int64_t{0}, t0 - p.w + 1);
        add(qb, tt, p.kk * p.c + pos - ws);
      }
    }
  }
  const int64_t o = ((n * p.T + pos) * p.H + h);
  if (bf16) {
    if (do_k) store(static_cast<__nv_bfloat16*>(d_k), o * p.Dk + d, ak);
    if (do_v) store(static_cast<__nv_bfloat16*>(d_v), o * p.Dv + d, av);
  } else {
    if (do_k) static_cast<float*>(d_k)[o * p.Dk + d] = ak;
    if (do_v) static_cast<float*>(d_v)[o * p.Dv + d] = av;
  }
}

// Thread per (n, q, s): d_bias from the per-tile partials, tiles then heads in order.
template <class T>
__global__ void chunk_attention_block_bias_kernel(const ChunkAttentionParams p, int64_t NT,
                                                  const float* __restrict__ bias_part) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= p.B * p.NQ * p.kk) return;
  const int64_t s = e % p.kk, nq = e / p.kk, qb = nq % p.NQ;
  const int64_t len = min((qb + 1) * p.b, p.T) - qb * p.b;
  float acc = 0.f;
  for (int64_t tt = 0; tt * kTileQ < len; ++tt) {
    for (int64_t h = 0; h < p.H; ++h) acc += bias_part[((nq * NT + tt) * p.H + h) * p.kk + s];
  }
  store(static_cast<T*>(p.d_bias), e, acc);
}

// ---------------------------------------------------------------- launch plans

int head_dims_per_lane(const ChunkAttentionParams& p) {
  const int64_t d = p.Dk > p.Dv ? p.Dk : p.Dv;
  return d <= 32 ? 1 : d <= 64 ? 2 : d <= 128 ? 4 : 8;
}

int sort_bits(uint64_t bound) {  // bits that hold every key in [0, bound]
  int bits = 1;
  while (bits < 32 && (uint64_t{1} << bits) <= bound) ++bits;
  return bits;
}

// The block kernels run for this call (cuda/resona.h: kAuto takes them for b >= 16 and
// w <= 256).
bool use_block_kernels(const ChunkAttentionParams& p) {
  if (p.kernel == ChunkAttnKernel::kWarp) return false;
  if (p.kernel == ChunkAttnKernel::kBlock) return true;
  return p.b >= 16 && p.w <= kBlockMaxWindow;
}

}  // namespace

bool chunk_attention_bwd_reads_o(const ChunkAttentionParams& p) { return use_block_kernels(p); }

namespace {

// Query tiles per block (NT) and the length of each tile's key list (LK).
struct TilePlan {
  int64_t NT = 1, LK = 0, tiles = 0;
};
TilePlan tile_plan(const ChunkAttentionParams& p) {
  TilePlan t;
  t.NT = (p.b + kTileQ - 1) / kTileQ;
  const int64_t tq = p.b < kTileQ ? p.b : kTileQ;
  t.LK = round_up32(p.kk * p.c + (p.w > 0 ? tq + p.w - 1 : 0));
  t.tiles = p.B * p.NQ * t.NT;
  return t;
}

struct BwdPlan {
  int64_t rows = 0, entries = 0;
  bool block = false;  // the block kernels: partials instead of D and the per-row partials
  size_t part_off = 0, bias_part_off = 0;
  bool lists = false;  // d_k or d_v: the inverse lists are built
  size_t cub_bytes = 0;
  size_t D_off = 0, partial_off = 0, keys_in_off = 0, keys_out_off = 0, ent_in_off = 0,
         ent_out_off = 0, start_off = 0, end_off = 0, cub_off = 0, total = 0;
};

BwdPlan bwd_plan(const ChunkAttentionParams& p) {
  BwdPlan pl;
  pl.rows = p.B * p.T * p.H;
  pl.entries = p.B * p.NQ * p.kk;
  pl.lists = (p.d_k || p.d_v) && pl.entries > 0 && p.NC > 0;
  pl.block = use_block_kernels(p);
  size_t off = 0;
  if (pl.block) {
    const TilePlan tp = tile_plan(p);
    const size_t th = static_cast<size_t>(tp.tiles * p.H);
    pl.part_off = off;
    if (p.d_k || p.d_v) off += align_up(sizeof(float) * th * (pad16(p.Dk) + pad16(p.Dv)) * tp.LK);
    pl.bias_part_off = off;
    if (p.d_bias) off += align_up(sizeof(float) * th * p.kk);
  } else {
    pl.D_off = off;
    off += align_up(sizeof(float) * static_cast<size_t>(pl.rows));
    pl.partial_off = off;
    if (p.d_bias) off += align_up(2 * sizeof(float) * static_cast<size_t>(pl.rows * p.kk));
  }
  if (pl.lists) {
    const int num = static_cast<int>(pl.entries);
    cub::DeviceRadixSort::SortPairs(
        nullptr, pl.cub_bytes, static_cast<const uint32_t*>(nullptr),
        static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
        static_cast<int32_t*>(nullptr), num, 0, sort_bits(static_cast<uint64_t>(p.B * p.NC)));
    const size_t nk = sizeof(uint32_t) * pl.entries, ne = sizeof(int32_t) * pl.entries;
    const size_t ns = sizeof(int32_t) * static_cast<size_t>(p.B * p.NC);
    pl.keys_in_off = off;
    off += align_up(nk);
    pl.keys_out_off = off;
    off += align_up(nk);
    pl.ent_in_off = off;
    off += align_up(ne);
    pl.ent_out_off = off;
    off += align_up(ne);
    pl.start_off = off;
    off += align_up(ns);
    pl.end_off = off;
    off += align_up(ns);
    pl.cub_off = off;
    off += align_up(pl.cub_bytes);
  }
  pl.total = off;
  return pl;
}

const char* check_sizes(const ChunkAttentionParams& p) {
  if (p.Dk > kChunkAttnMaxHeadDim || p.Dv > kChunkAttnMaxHeadDim) {
    return "chunk_attention on CUDA: Dk and Dv must be <= 256";
  }
  if (p.B * p.NQ * p.kk > INT_MAX) return "chunk_attention on CUDA: more than 2^31-1 idx entries";
  if (p.B * p.NC >= (int64_t{1} << 32) - 1) return "chunk_attention on CUDA: B * NC >= 2^32 - 1";
  return nullptr;
}

template <class T, bool kBwd>
const char* block_t(const ChunkAttentionParams& p, cudaStream_t s);

template <class T, int ND>
const char* fwd_nd(const ChunkAttentionParams& p, cudaStream_t s) {
  const int64_t rows = p.B * p.T * p.H;
  chunk_attention_fwd_kernel<T, ND>
      <<<blocks_for(32 * rows, 32 * kWarpsPerBlock), 32 * kWarpsPerBlock, 0, s>>>(p);
  return last_error();
}

template <class T>
const char* fwd_t(const ChunkAttentionParams& p, cudaStream_t s) {
  if (use_block_kernels(p)) return block_t<T, false>(p, s);
  switch (head_dims_per_lane(p)) {
    case 1:
      return fwd_nd<T, 1>(p, s);
    case 2:
      return fwd_nd<T, 2>(p, s);
    case 4:
      return fwd_nd<T, 4>(p, s);
    case 8:
      return fwd_nd<T, 8>(p, s);
  }
  return "chunk_attention_fwd_cuda: head dims above 256";
}

// Builds the inverse lists in the scratch (pl.lists): the sorted entries and each chunk
// key's [start, end) among them.
const char* build_lists(const ChunkAttentionParams& p, const BwdPlan& pl, char* scratch,
                        cudaStream_t s, int32_t** seg_start, int32_t** seg_end, int32_t** ent_out) {
  auto* keys_in = reinterpret_cast<uint32_t*>(scratch + pl.keys_in_off);
  auto* keys_out = reinterpret_cast<uint32_t*>(scratch + pl.keys_out_off);
  auto* ent_in = reinterpret_cast<int32_t*>(scratch + pl.ent_in_off);
  *ent_out = reinterpret_cast<int32_t*>(scratch + pl.ent_out_off);
  *seg_start = reinterpret_cast<int32_t*>(scratch + pl.start_off);
  *seg_end = reinterpret_cast<int32_t*>(scratch + pl.end_off);
  chunk_entry_keys_kernel<<<blocks_for(pl.entries, 256), 256, 0, s>>>(p, keys_in, ent_in);
  size_t cub_bytes = pl.cub_bytes;
  cudaError_t err = cub::DeviceRadixSort::SortPairs(
      scratch + pl.cub_off, cub_bytes, keys_in, keys_out, ent_in, *ent_out,
      static_cast<int>(pl.entries), 0, sort_bits(static_cast<uint64_t>(p.B * p.NC)), s);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  const size_t ns = sizeof(int32_t) * static_cast<size_t>(p.B * p.NC);
  err = cudaMemsetAsync(*seg_start, 0, ns, s);
  if (err == cudaSuccess) err = cudaMemsetAsync(*seg_end, 0, ns, s);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  chunk_segments_kernel<<<blocks_for(pl.entries, 256), 256, 0, s>>>(
      keys_out, pl.entries, static_cast<uint32_t>(p.B * p.NC), *seg_start, *seg_end);
  return last_error();
}

// Fragment column groups per warp for the block kernels: each warp holds half of the
// pad16(max(Dk, Dv)) / 16 column groups of o or d_q, rounded up to a compiled width.
int block_col_groups(const ChunkAttentionParams& p) {
  const int64_t g = (pad16(p.Dk > p.Dv ? p.Dk : p.Dv) / 16 + 1) / 2;
  return g <= 2 ? 2 : g <= 3 ? 3 : g <= 5 ? 5 : 8;
}

template <class T, int NF>
const char* block_fwd_nc(const ChunkAttentionParams& p, cudaStream_t s) {
  const TilePlan tp = tile_plan(p);
  const size_t smem = sizeof(float) * static_cast<size_t>(fwd_smem_floats(p));
  auto kernel = chunk_attention_block_fwd_kernel<T, NF>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return cudaGetErrorString(err);
  kernel<<<dim3(static_cast<unsigned>(tp.tiles), static_cast<unsigned>(p.H)), kBlockThreads, smem,
           s>>>(p, tp.NT);
  return last_error();
}

template <class T, int NF>
const char* block_bwd_nc(const ChunkAttentionParams& p, cudaStream_t s) {
  const BwdPlan pl = bwd_plan(p);
  const TilePlan tp = tile_plan(p);
  char* scratch = static_cast<char*>(p.scratch);
  if (pl.total > 0 && scratch == nullptr) return "chunk_attention_bwd_cuda: scratch not given";
  if (p.o_f32 == nullptr) {
    return "chunk_attention_bwd_cuda: o_f32 (the forward's output in float32) not given";
  }
  const bool kv = p.d_k || p.d_v;
  float* part = kv ? reinterpret_cast<float*>(scratch + pl.part_off) : nullptr;
  float* bias_part = p.d_bias ? reinterpret_cast<float*>(scratch + pl.bias_part_off) : nullptr;
  if (p.d_q || kv || p.d_bias) {
    const size_t smem = sizeof(float) * static_cast<size_t>(bwd_smem_floats(p));
    auto kernel = chunk_attention_block_bwd_kernel<T, NF>;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem));
    if (err != cudaSuccess) return cudaGetErrorString(err);
    kernel<<<dim3(static_cast<unsigned>(tp.tiles), static_cast<unsigned>(p.H)), kBlockThreads, smem,
             s>>>(p, tp.NT, tp.LK, part, bias_part);
    if (const char* e = last_error()) return e;
  }
  if (kv) {
    int32_t *seg_start = nullptr, *seg_end = nullptr, *ent_out = nullptr;
    if (pl.lists) {
      if (const char* e = build_lists(p, pl, scratch, s, &seg_start, &seg_end, &ent_out)) return e;
    }
    ChunkAttentionParams q = p;
    if (!pl.lists) q.NC = 0;  // no chunk is ever retrieved: only the window terms
    const int64_t Dm = p.Dk > p.Dv ? p.Dk : p.Dv;
    chunk_attention_block_reduce_kernel<<<blocks_for(p.B * p.H * Dm * p.T, 256), 256, 0, s>>>(
        q, tp.NT, tp.LK, part, seg_start, seg_end, ent_out, p.d_k, p.d_v,
        p.dtype == KernelDType::kBFloat16);
    if (const char* e = last_error()) return e;
  }
  if (p.d_bias && pl.entries > 0) {
    chunk_attention_block_bias_kernel<T>
        <<<blocks_for(pl.entries, 256), 256, 0, s>>>(p, tp.NT, bias_part);
  }
  return last_error();
}

template <class T, bool kBwd>
const char* block_t(const ChunkAttentionParams& p, cudaStream_t s) {
  switch (block_col_groups(p)) {
    case 2:
      return kBwd ? block_bwd_nc<T, 2>(p, s) : block_fwd_nc<T, 2>(p, s);
    case 3:
      return kBwd ? block_bwd_nc<T, 3>(p, s) : block_fwd_nc<T, 3>(p, s);
    case 5:
      return kBwd ? block_bwd_nc<T, 5>(p, s) : block_fwd_nc<T, 5>(p, s);
    case 8:
      return kBwd ? block_bwd_nc<T, 8>(p, s) : block_fwd_nc<T, 8>(p, s);
  }
  return "chunk_attention block kernels: head dims above 256";
}

template <class T, int ND>
const char* bwd_nd(const ChunkAttentionParams& p, cudaStream_t s) {
  const BwdPlan pl = bwd_plan(p);
  char* scratch = static_cast<char*>(p.scratch);
  if (pl.total > 0 && scratch == nullptr) return "chunk_attention_bwd_cuda: scratch not given";
  float* D_buf = reinterpret_cast<float*>(scratch + pl.D_off);
  float* partial = p.d_bias ? reinterpret_cast<float*>(scratch + pl.partial_off) : nullptr;
  const unsigned threads = 32 * kWarpsPerBlock;
  chunk_attention_bwd_dq_kernel<T, ND>
      <<<blocks_for(32 * pl.rows, threads), threads, 0, s>>>(p, D_buf, partial);
  if (const char* e = last_error()) return e;
  if (p.d_k || p.d_v) {
    int32_t* seg_start = nullptr;
    int32_t* seg_end = nullptr;
    int32_t* ent_out = nullptr;
    if (pl.lists) {
      if (const char* e = build_lists(p, pl, scratch, s, &seg_start, &seg_end, &ent_out)) return e;
    }
    ChunkAttentionParams q = p;
    if (!pl.lists) q.NC = 0;  // no chunk is ever retrieved: only the window terms
    chunk_attention_bwd_dkdv_kernel<T, ND><<<blocks_for(32 * pl.rows, threads), threads, 0, s>>>(
        q, D_buf, seg_start, seg_end, ent_out);
    if (const char* e = last_error()) return e;
  }
  if (p.d_bias && pl.entries > 0) {
    chunk_attention_bwd_bias_kernel<T>
        <<<blocks_for(pl.entries, 256), 256, 0, s>>>(p, D_buf, partial);
  }
  return last_error();
}

template <class T>
const char* bwd_t(const ChunkAttentionParams& p, cudaStream_t s) {
  if (use_block_kernels(p)) return block_t<T, true>(p, s);
  switch (head_dims_per_lane(p)) {
    case 1:
      return bwd_nd<T, 1>(p, s);
    case 2:
      return bwd_nd<T, 2>(p, s);
    case 4:
      return bwd_nd<T, 4>(p, s);
    case 8:
      return bwd_nd<T, 8>(p, s);
  }
  return "chunk_attention_bwd_cuda: head dims above 256";
}

}  // namespace

size_t chunk_search_scratch_bytes(const ChunkSearchParams& p) { return search_plan(p).total; }

const char* chunk_search_cuda(const ChunkSearchParams& p, void* stream) {
  if (p.B * p.T == 0 || p.k == 0) return nullptr;
  if (p.c < 1 || p.b < 1) return "chunk_search_cuda: chunk and query block must be >= 1";
  if (p.scratch == nullptr) return "chunk_search_cuda: scratch not given";
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return search_t<float>(p, s);
    case KernelDType::kBFloat16:
      return search_t<__nv_bfloat16>(p, s);
  }
  return "chunk_search_cuda: unknown dtype";
}

const char* chunk_ids_check_cuda(const ChunkIdsCheckParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t N = p.B * p.NQ * p.kk;
  set_word_kernel<<<1, 1, 0, s>>>(p.bad_pos, N);
  if (N > 0) chunk_ids_check_kernel<<<blocks_for(N, 256), 256, 0, s>>>(p);
  return last_error();
}

const char* chunk_attention_fwd_cuda(const ChunkAttentionParams& p, void* stream) {
  if (const char* e = check_sizes(p)) return e;
  if (p.B * p.T * p.H == 0) return nullptr;
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return fwd_t<float>(p, s);
    case KernelDType::kBFloat16:
      return fwd_t<__nv_bfloat16>(p, s);
  }
  return "chunk_attention_fwd_cuda: unknown dtype";
}

size_t chunk_attention_bwd_scratch_bytes(const ChunkAttentionParams& p) {
  if (check_sizes(p) != nullptr) return 0;
  return bwd_plan(p).total;
}

const char* chunk_attention_bwd_cuda(const ChunkAttentionParams& p, void* stream) {
  if (const char* e = check_sizes(p)) return e;
  auto s = static_cast<cudaStream_t>(stream);
  if (p.B * p.T * p.H == 0) {
    // No positions: d_bias (the only gradient with elements, if NQ * kk > 0) is zero.
    if (p.d_bias && p.B * p.NQ * p.kk > 0) {
      const size_t es = p.dtype == KernelDType::kFloat32 ? 4 : 2;
      cudaError_t err = cudaMemsetAsync(p.d_bias, 0, es * p.B * p.NQ * p.kk, s);
      if (err != cudaSuccess) return cudaGetErrorString(err);
    }
    return nullptr;
  }
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return bwd_t<float>(p, s);
    case KernelDType::kBFloat16:
      return bwd_t<__nv_bfloat16>(p, s);
  }
  return "chunk_attention_bwd_cuda: unknown dtype";
}

}  // namespace resona::cuda
