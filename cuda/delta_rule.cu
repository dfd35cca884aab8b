// Chunked delta-rule kernels (maps and formulas in cuda/delta_rule.h; the CPU path and the
// derivation of the backward are in ops/delta_rule.cc).
//
// delta_rule_wy_kernel          block (b, h, chunk): G = k k^T, N by forward substitution
//                               (thread c solves column c), W = N diag(beta) k,
//                               U = N diag(beta) v (forward), P = tril(q k^T); in
//                               backward N and G are written instead of U
// delta_rule_fwd_state_kernel   block (b, h, 16, 32 or 48 columns of V): the chunks in
//                               order, V' = U - W S, S <- S + k^T V'
// delta_rule_fwd_out_kernel     block (b, h, chunk, 64 columns of V):
//                               o = scale (q S0 + P V')
// delta_rule_bwd_state_kernel   block (b, h, 16, 32 or 48 columns of V): the chunks in
//                               reverse, d_V' = scale P^T d_o + k d_S,
//                               d_S <- d_S + scale q^T d_o - W^T d_V'
// delta_rule_bwd_grad_kernel    block (b, h, chunk): over 32-column tiles of V,
//                               R = v - k S0, V' = N diag(beta) R, Y = N^T d_V',
//                               d_v = diag(beta) Y, and the sums over V of d_o V'^T,
//                               Y V'^T and R . Y; then d_beta, and d_q, d_k over
//                               64-column tiles of K
//
// The output and gradient kernels' products are block-level tiled products in float32:
// 256 threads, each owning a 4 x TN block of a 64 x 16 TN output tile, the operands staged
// through shared memory 16 contraction steps at a time (the next step's loads are issued
// before the current step's arithmetic). Operands are read through small accessors
// (strided inputs of either dtype, float32 scratch, shared-memory matrices, transposes),
// so no layout needs a copy; each block first asks L2 for the rows it is about to read.
// The WY kernel and the recurrences stage whole chunk operands with cp.async and multiply
// on tensor cores in 3xTF32 (warp_mma). A block's sums always run in the same order and no
// two blocks add into one value: the results are bit-identical from run to run.
//
// Rows past the chunk's length L and columns past V or K are never read or written; the
// contraction bounds carry L, so chunk 1..64 and any K, V work unchanged.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <type_traits>

#include "cuda/convert.cuh"
#include "cuda/cp_async.cuh"
#include "cuda/delta_rule.h"
#include "cuda/mma.cuh"

namespace resona::cuda {
namespace {

constexpr int kThreads = 256;  // 16 x 16 threads per block
constexpr int kWarps = kThreads / 32;
constexpr int kBM = 64;  // rows of an output tile: 4 per thread, 16 apart
constexpr int kBK = 16;  // contraction steps staged at a time
constexpr int kC = static_cast<int>(kDeltaMaxChunk);
constexpr int kLd = kC + 1;    // row stride of the C x C matrices in shared memory
constexpr int kOutCols = 64;   // columns of o per block of the output kernel
constexpr int kGradCols = 32;  // columns of V per step of the gradient kernel
constexpr int kGradTN = kGradCols / 16;
static_assert(kC == kBM, "one output tile covers the rows of a chunk");
static_assert(kGradCols % 16 == 0 && kGradTN >= 1 && kGradTN <= 4, "16..64 gradient columns");
static_assert(kOutCols == 64, "the output kernel's tiles are 64 wide");

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }

// Staging buffers of one contraction step, k-major. Rows of 68 floats keep every row
// 16-byte aligned, so a thread reads its 4 rows of A and TN columns of B with one vector
// load each (the k-fast stores then meet at most 2-way bank conflicts).
struct Stage {
  float a[kBK][kBM + 4];
  float b[kBK][kBM + 4];
};

// The thread's 4 consecutive rows of A, or TN consecutive columns of B, of one staged step.
__device__ __forceinline__ void load4(const float* p, float (&v)[4]) {
  const float4 t = *reinterpret_cast<const float4*>(p);
  v[0] = t.x;
  v[1] = t.y;
  v[2] = t.z;
  v[3] = t.w;
}
template <int TN>
__device__ __forceinline__ void load_cols(const float* p, float (&v)[TN]) {
  if constexpr (TN == 4) {
    load4(p, v);
  } else if constexpr (TN == 2) {
    const float2 t = *reinterpret_cast<const float2*>(p);
    v[0] = t.x;
    v[1] = t.y;
  } else {
#pragma unroll
    for (int c = 0; c < TN; ++c) v[c] = p[c];
  }
}

// L2 prefetch of the cache lines of n bytes from p: a hint, no effect on results. Every
// address handed to the prefetch lies inside [p, p + n).
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}
__device__ __forceinline__ void prefetch_bytes(const void* p, int64_t n, int tid, int threads) {
  if (p == nullptr || n <= 0) return;
  const char* c = static_cast<const char*>(p);
  const int64_t lines = n / 128 + 1;
  for (int64_t l = tid; l < lines; l += threads) prefetch_l2(c + (l * 128 < n ? l * 128 : n - 1));
}

// Rows of one (b, h) sequence from a chunk's first row: x(i, j) = p[i * rs + j * cs].
template <class T>
struct RowsView {
  const T* p;
  int64_t rs, cs;
  __device__ __forceinline__ float operator()(int i, int j) const {
    return to_f32(p[i * rs + j * cs]);
  }
};

// L2 prefetch of columns [c0, c0 + n) of rows [0, L) of a row view, when its columns are
// contiguous (a hint; other layouts are simply not prefetched).
template <class T>
__device__ __forceinline__ void prefetch_rows(const RowsView<T>& x, int L, int c0, int n) {
  if (x.cs != 1 || n <= 0) return;
  const int64_t bytes = static_cast<int64_t>(n) * sizeof(T), lines = bytes / 128 + 1;
  for (int64_t e = threadIdx.x; e < L * lines; e += blockDim.x) {
    const int64_t i = e / lines, l = e % lines;
    prefetch_l2(reinterpret_cast<const char*>(x.p + i * x.rs + c0) +
                (l * 128 < bytes ? l * 128 : bytes - 1));
  }
}

template <int TN>
__device__ __forceinline__ void zero(float (&acc)[4][TN]) {
#pragma unroll
  for (int r = 0; r < 4; ++r) {
#pragma unroll
    for (int c = 0; c < TN; ++c) acc[r][c] = 0.f;
  }
}

// acc += A B over the output tile rows [m0, m0 + 64) x columns [n0, n0 + 16 TN), where
// A(i, x) for i < M, x < Kd and B(x, j) for j < N come from the accessors (anything out
// of range counts as zero). kAFastK / kBFastN pick which index consecutive threads walk
// when loading (the one contiguous in memory). Called by every thread of the block with
// the same bounds; starts and ends at a barrier-safe point (the staging buffers are free
// on return).
template <int TN, bool kAFastK, bool kBFastN, class AFn, class BFn>
__device__ __forceinline__ void gemm_acc(float (&acc)[4][TN], int m0, int n0, int M, int N, int Kd,
                                         const AFn& a, const BFn& b, Stage& st) {
  constexpr int BN = 16 * TN;
  constexpr int NA = kBM * kBK / kThreads;
  constexpr int NB = kBK * BN / kThreads;
  static_assert(NA * kThreads == kBM * kBK && NB * kThreads == kBK * BN, "tile split");
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  float ra[NA], rb[NB];
  auto a_at = [&](int r, int& i, int& x) {
    const int e = tid + r * kThreads;
    if (kAFastK) {
      i = e / kBK;
      x = e % kBK;
    } else {
      x = e / kBM;
      i = e % kBM;
    }
  };
  auto b_at = [&](int r, int& x, int& j) {
    const int e = tid + r * kThreads;
    if (kBFastN) {
      x = e / BN;
      j = e % BN;
    } else {
      j = e / kBK;
      x = e % kBK;
    }
  };
  auto fetch = [&](int k0) {
#pragma unroll
    for (int r = 0; r < NA; ++r) {
      int i, x;
      a_at(r, i, x);
      ra[r] = (m0 + i < M && k0 + x < Kd) ? a(m0 + i, k0 + x) : 0.f;
    }
#pragma unroll
    for (int r = 0; r < NB; ++r) {
      int x, j;
      b_at(r, x, j);
      rb[r] = (k0 + x < Kd && n0 + j < N) ? b(k0 + x, n0 + j) : 0.f;
    }
  };
  if (Kd <= 0) return;
  fetch(0);
  for (int k0 = 0; k0 < Kd; k0 += kBK) {
#pragma unroll
    for (int r = 0; r < NA; ++r) {
      int i, x;
      a_at(r, i, x);
      st.a[x][i] = ra[r];
    }
#pragma unroll
    for (int r = 0; r < NB; ++r) {
      int x, j;
      b_at(r, x, j);
      st.b[x][j] = rb[r];
    }
    __syncthreads();
    if (k0 + kBK < Kd) fetch(k0 + kBK);
#pragma unroll
    for (int x = 0; x < kBK; ++x) {
      float av[4], bv[TN];
      load4(&st.a[x][4 * ty], av);
      load_cols<TN>(&st.b[x][TN * tx], bv);
#pragma unroll
      for (int r = 0; r < 4; ++r) {
#pragma unroll
        for (int c = 0; c < TN; ++c) acc[r][c] = fmaf(av[r], bv[c], acc[r][c]);
      }
    }
    __syncthreads();
  }
}

// f(i, j, value) for this thread's elements of the tile at (m0, n0) inside M x N.
template <int TN, class F>
__device__ __forceinline__ void for_each_out(const float (&acc)[4][TN], int m0, int n0, int M,
                                             int N, const F& f) {
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
#pragma unroll
    for (int c = 0; c < TN; ++c) {
      const int i = m0 + 4 * ty + r, j = n0 + TN * tx + c;
      if (i < M && j < N) f(i, j, acc[r][c]);
    }
  }
}

// Where block-level quantities of one (b, h) sequence and one chunk live.
struct ChunkAt {
  int64_t b, h, bh, n;  // bh = b * H + h
  int64_t t0;           // first time step
  int L;                // rows
};

__device__ __forceinline__ ChunkAt chunk_at(const DeltaRuleInputs& in, int64_t bh, int64_t n) {
  ChunkAt c;
  c.bh = bh;
  c.b = bh / in.H;
  c.h = bh % in.H;
  c.n = n;
  c.t0 = n * in.C;
  c.L = static_cast<int>(in.T - c.t0 < in.C ? in.T - c.t0 : in.C);
  return c;
}

// Rows t0.. of x [B, T, H, D] with strides s for sequence (b, h).
template <class T>
__device__ __forceinline__ RowsView<T> rows(const void* x, const int64_t* s, const ChunkAt& c) {
  return {static_cast<const T*>(x) + c.b * s[0] + c.t0 * s[1] + c.h * s[2], s[1], s[3]};
}

__device__ __forceinline__ float load_state(const void* p, KernelDType dt, int64_t off) {
  return dt == KernelDType::kFloat32 ? static_cast<const float*>(p)[off]
                                     : __bfloat162float(static_cast<const __nv_bfloat16*>(p)[off]);
}
__device__ __forceinline__ void store_state(void* p, KernelDType dt, int64_t off, float v) {
  if (dt == KernelDType::kFloat32) {
    static_cast<float*>(p)[off] = v;
  } else {
    static_cast<__nv_bfloat16*>(p)[off] = __float2bfloat16_rn(v);
  }
}

// Scratch of the kernels, float32, each region a multiple of 4 floats (16 bytes).
struct Scratch {
  float *W = nullptr, *U = nullptr, *P = nullptr, *N = nullptr, *G = nullptr;
  float *Vn = nullptr, *dVn = nullptr, *dR = nullptr, *dstates = nullptr;
};

int64_t round4(int64_t n) { return (n + 3) / 4 * 4; }

// Offsets (in floats) of the regions; `fwd` picks the forward's set. Returns the total.
int64_t layout(const DeltaRuleInputs& in, bool fwd, float* base, Scratch& s) {
  const int64_t NC = (in.T + in.C - 1) / in.C, chunks = in.B * in.H * NC;
  const int64_t ck = round4(chunks * in.C * in.K), cv = round4(chunks * in.C * in.V);
  const int64_t cc = round4(chunks * in.C * in.C), kv = round4(chunks * in.K * in.V);
  int64_t off = 0;
  auto take = [&](float*& p, int64_t n) {
    p = base == nullptr ? nullptr : base + off;
    off += n;
  };
  take(s.W, ck);
  take(s.P, cc);
  take(s.Vn, cv);
  if (fwd) {
    take(s.U, cv);
  } else {
    take(s.N, cc);
    take(s.G, cc);
    take(s.dVn, cv);
    take(s.dR, cv);
    take(s.dstates, kv);
  }
  return off;
}

// ---- tensor-core products of tiles staged in shared memory ----

// The TF32 high and low parts of an operand element: split from float32, exact from a
// bfloat16 value (low part zero), or read pre-split (x, y) = (hi, lo).
__device__ __forceinline__ void tf32_parts(float x, uint32_t& hi, uint32_t& lo) {
  split_tf32(x, hi, lo);
}
__device__ __forceinline__ void tf32_parts(__nv_bfloat16 x, uint32_t& hi, uint32_t& lo) {
  hi = __float_as_uint(__bfloat162float(x));
  lo = 0;
}
__device__ __forceinline__ void tf32_parts(uint2 x, uint32_t& hi, uint32_t& lo) {
  hi = x.x;
  lo = x.y;
}

// acc[c] (column tile c of the warp's 16 x 8 NT unit) += A B over 8 ksteps contraction
// steps, A(i, x) = a[i * a_ld + x] (a[x * a_ld + i] when kATrans) for the unit's 16 rows,
// B(x, j) = b[x * b_ld + j] (b[j * b_ld + x] when kBTrans) for its 8 NT columns. Elements
// are float32 (split here), bfloat16 (exact: no low part) or pre-split uint2; 3xTF32,
// Ah Bh + (Al Bh + Ah Bl), less the products of a zero low part, the low-part products
// summed apart (a second dependency chain) and added at the end. Each lane walks one
// pointer per operand.
template <int NT, bool kATrans, bool kBTrans = false, class TA, class TB>
__device__ __forceinline__ void warp_mma(float (&acc)[NT][4], int ksteps, const TA* a, int a_ld,
                                         const TB* b, int b_ld) {
  constexpr bool kAExact = std::is_same_v<TA, __nv_bfloat16>;
  constexpr bool kBExact = std::is_same_v<TB, __nv_bfloat16>;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const TA* pa = kATrans ? a + t * a_ld + g : a + g * a_ld + t;
  const int a8 = kATrans ? 8 : 8 * a_ld;  // row i + 8
  const int a4 = kATrans ? 4 * a_ld : 4;  // column x + 4
  const int a_step = kATrans ? 8 * a_ld : 8;
  const TB* pb = kBTrans ? b + g * b_ld + t : b + t * b_ld + g;
  const int b4 = kBTrans ? 4 : 4 * b_ld;  // row x + 4
  const int b8 = kBTrans ? 8 * b_ld : 8;  // column tile c + 1
  const int b_step = kBTrans ? 8 : 8 * b_ld;
  float lo[NT][4] = {};
  for (int s = 0; s < ksteps; ++s, pa += a_step, pb += b_step) {
    uint32_t ah[4], al[4];
    tf32_parts(pa[0], ah[0], al[0]);
    tf32_parts(pa[a8], ah[1], al[1]);
    tf32_parts(pa[a4], ah[2], al[2]);
    tf32_parts(pa[a8 + a4], ah[3], al[3]);
#pragma unroll
    for (int c = 0; c < NT; ++c) {
      uint32_t bh[2], bl[2];
      tf32_parts(pb[b8 * c], bh[0], bl[0]);
      tf32_parts(pb[b4 + b8 * c], bh[1], bl[1]);
      if (!kAExact) mma_tf32_m16n8k8(lo[c], al, bh);
      if (!kBExact) mma_tf32_m16n8k8(lo[c], ah, bl);
      mma_tf32_m16n8k8(acc[c], ah, bh);
    }
  }
  if (!kAExact || !kBExact) {
#pragma unroll
    for (int c = 0; c < NT; ++c) {
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[c][r] += lo[c][r];
    }
  }
}

// The state products: acc[u] += A_u B for the warp's state units u < n, unit u being rows
// 16 (warp / 2) + 64 u of the state and columns kBV/2 (warp % 2) on (so every unit of a
// warp has the same columns and shares B's fragments). A_u(x, i) = a[i * a_ld + 64 u + x]
// (a transposed operand: k^T, q^T, W^T), B(i, j) = b[i * b_ld + j], as in warp_mma; the
// units' products are independent, so they interleave.
template <int NT, int kU, class TA, class TB>
__device__ __forceinline__ void warp_mma_units(float (&acc)[kU][NT][4], int n, int ksteps,
                                               const TA* a, int a_ld, const TB* b, int b_ld) {
  constexpr bool kAExact = std::is_same_v<TA, __nv_bfloat16>;
  constexpr bool kBExact = std::is_same_v<TB, __nv_bfloat16>;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const TA* pa = a + t * a_ld + g;
  const TB* pb = b + t * b_ld + g;
  const int a4 = 4 * a_ld, b4 = 4 * b_ld;
  for (int s = 0; s < ksteps; ++s, pa += 8 * a_ld, pb += 8 * b_ld) {
    uint32_t bh[NT][2], bl[NT][2];
#pragma unroll
    for (int c = 0; c < NT; ++c) {
      tf32_parts(pb[8 * c], bh[c][0], bl[c][0]);
      tf32_parts(pb[b4 + 8 * c], bh[c][1], bl[c][1]);
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      if (u >= n) continue;
      const TA* q = pa + 64 * u;
      uint32_t ah[4], al[4];
      tf32_parts(q[0], ah[0], al[0]);
      tf32_parts(q[8], ah[1], al[1]);
      tf32_parts(q[a4], ah[2], al[2]);
      tf32_parts(q[a4 + 8], ah[3], al[3]);
#pragma unroll
      for (int c = 0; c < NT; ++c) {
        if (!kAExact) mma_tf32_m16n8k8(acc[u][c], al, bh[c]);
        if (!kBExact) mma_tf32_m16n8k8(acc[u][c], ah, bl[c]);
        mma_tf32_m16n8k8(acc[u][c], ah, bh[c]);
      }
    }
  }
}

// f(i, j, r, c) over the thread's elements of a warp's 16 x 8 NT unit: element r of column
// tile c sits at row g + 8 (r / 2), column 8 c + 2 t + r % 2 (cuda/mma.cuh).
template <int NT, class F>
__device__ __forceinline__ void for_each_frag(const F& f) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int c = 0; c < NT; ++c) {
#pragma unroll
    for (int r = 0; r < 4; ++r) f(g + 8 * (r / 2), 8 * c + 2 * t + r % 2, r, c);
  }
}

// A unit's accumulators, split into TF32 parts, into dst (row stride ld, even): the lane's
// two adjacent columns as one 16-byte store per row.
template <int NT>
__device__ __forceinline__ void store_split(uint2* dst, int ld, const float (&acc)[NT][4]) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int c = 0; c < NT; ++c) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint4 v;
      split_tf32(acc[c][2 * h], v.x, v.y);
      split_tf32(acc[c][2 * h + 1], v.z, v.w);
      *reinterpret_cast<uint4*>(dst + (g + 8 * h) * ld + 8 * c + 2 * t) = v;
    }
  }
}

// ---- (1) the WY matrices of a chunk ----
//
// k and q are staged whole (cp.async) for G = k k^T and P = tril(q k^T); the first
// v_piece columns of v then replace q while one thread per column solves for N;
// T = N diag(beta) replaces N, and W = T k and U = T v follow, U a piece of v at a time
// (so V is not bounded by shared memory). Every product is warp_mma over 16 x 32 units
// (3xTF32). Shared memory: k [64][k_ld] and q or a piece of v [64][x_ld] in the inputs'
// dtype, G and N [64][kLdG], beta [64].
constexpr int kLdG = 68;  // rows of G and N (68 = 4 mod 32: A-operand reads are conflict-free)

constexpr int kWyVPiece = 160;  // columns of v staged at a time

struct WyLayout {
  int kp8, kp32;  // K rounded up to 8 (contractions) and 32 (W's tiles)
  int v_piece;    // columns of v per piece: min(V rounded up to 32, kWyVPiece)
  int k_ld, q_ld, v_ld;
  int off_k, off_x, off_g, off_n, off_b, bytes;
};

template <class T>
__global__ void __launch_bounds__(kThreads)
    delta_rule_wy_kernel(DeltaRuleInputs in, int64_t NC, WyLayout lay, float* __restrict__ W,
                         float* __restrict__ U, float* __restrict__ P, float* __restrict__ N_out,
                         float* __restrict__ G_out) {
  extern __shared__ __align__(16) unsigned char delta_smem[];
  T* Ks = reinterpret_cast<T*>(delta_smem + lay.off_k);
  T* Xs = reinterpret_cast<T*>(delta_smem + lay.off_x);  // q, then v
  float* G = reinterpret_cast<float*>(delta_smem + lay.off_g);
  float* Nm = reinterpret_cast<float*>(delta_smem + lay.off_n);
  float* bs = reinterpret_cast<float*>(delta_smem + lay.off_b);
  const ChunkAt c = chunk_at(in, blockIdx.x / NC, blockIdx.x % NC);
  const int L = c.L, K = static_cast<int>(in.K), V = static_cast<int>(in.V);
  const int tid = threadIdx.x, warp = tid / 32, rt = warp % 4, cg = warp / 4;
  const int64_t chunk = c.bh * NC + c.n, C = in.C;
  const RowsView<T> k = rows<T>(in.k, in.k_strides, c);
  const RowsView<T> q = rows<T>(in.q, in.q_strides, c);
  stage_rows<T>(Ks, lay.k_ld, k.p, k.rs, k.cs, L, K, kC, lay.kp32);
  stage_rows<T>(Xs, lay.q_ld, q.p, q.rs, q.cs, L, K, kC, lay.kp8);
  cp_async_commit();
  const T* beta = static_cast<const T*>(in.beta) + c.b * in.beta_strides[0] +
                  c.t0 * in.beta_strides[1] + c.h * in.beta_strides[2];
  for (int i = tid; i < kC; i += kThreads) {
    bs[i] = i < L ? to_f32(beta[i * in.beta_strides[1]]) : 0.f;
  }
  for (int e = tid; e < kC * kC; e += kThreads) Nm[(e / kC) * kLdG + e % kC] = 0.f;
  cp_async_wait<0>();
  __syncthreads();

  // G = k k^T (into shared memory and, for the backward, out), P = tril(q k^T)
  {
    float g[4][4] = {}, p[4][4] = {};
    warp_mma<4, false, true>(g, lay.kp8 / 8, Ks + 16 * rt * lay.k_ld, lay.k_ld,
                             Ks + 32 * cg * lay.k_ld, lay.k_ld);
    warp_mma<4, false, true>(p, lay.kp8 / 8, Xs + 16 * rt * lay.q_ld, lay.q_ld,
                             Ks + 32 * cg * lay.k_ld, lay.k_ld);
    for_each_frag<4>([&](int i, int j, int r, int cc) {
      i += 16 * rt;
      j += 32 * cg;
      G[i * kLdG + j] = g[cc][r];
      if (i < L && j < L) {
        P[chunk * C * C + i * C + j] = j <= i ? p[cc][r] : 0.f;
        if (G_out != nullptr) G_out[chunk * C * C + i * C + j] = g[cc][r];
      }
    });
  }
  __syncthreads();
  const RowsView<T> v = rows<T>(in.v, in.v_strides, c);
  auto stage_v = [&](int p0) {  // columns [p0, p0 + v_piece) of v, zeros past V
    const int w = imin(lay.v_piece, V - p0);
    stage_rows<T>(Xs, lay.v_ld, v.p + p0 * v.cs, v.rs, v.cs, L, w, kC, lay.v_piece);
  };
  if (U != nullptr) stage_v(0);
  cp_async_commit();

  // Column c of N = (I + tril(diag(beta) G, -1))^-1: N_cc = 1, zero above, and below
  // N_ic = -beta_i sum_{c <= j < i} G_ij N_jc (row i of M N = I).
  if (tid < L) {
    const int col = tid;
    Nm[col * kLdG + col] = 1.f;
    for (int i = col + 1; i < L; ++i) {
      float x = 0.f;
      for (int j = col; j < i; ++j) x = fmaf(G[i * kLdG + j], Nm[j * kLdG + col], x);
      Nm[i * kLdG + col] = -bs[i] * x;
    }
  }
  __syncthreads();
  // N out (backward), then T = N diag(beta) in its place (zero past L: beta is).
  for (int e = tid; e < kC * kC; e += kThreads) {
    const int i = e / kC, j = e % kC;
    float& n = Nm[i * kLdG + j];
    if (N_out != nullptr && i < L && j < L) N_out[chunk * C * C + i * C + j] = n;
    n *= bs[j];
  }
  cp_async_wait<0>();
  __syncthreads();

  // W = T k, U = T v over 16 x 32 units
  const int lsteps = (L + 7) / 8;
  // out[:, o0 + j] = (T x)[:, j] for j < valid, x [64][ld] with width (a multiple of 32)
  // columns
  auto t_times = [&](const T* x, int ld, int width, int valid, float* out, int64_t out_ld, int o0) {
    for (int u = warp; u < 4 * (width / 32); u += kWarps) {
      const int ur = u % 4, uc = u / 4;
      float acc[4][4] = {};
      warp_mma<4, false>(acc, lsteps, Nm + 16 * ur * kLdG, kLdG, x + 32 * uc, ld);
      for_each_frag<4>([&](int i, int j, int r, int cc) {
        i += 16 * ur;
        j += 32 * uc;
        if (i < L && j < valid) out[(chunk * C + i) * out_ld + o0 + j] = acc[cc][r];
      });
    }
  };
  t_times(Ks, lay.k_ld, lay.kp32, K, W, in.K, 0);
  if (U == nullptr) return;
  for (int p0 = 0; p0 < V; p0 += lay.v_piece) {
    if (p0 > 0) {
      __syncthreads();  // the previous piece is read
      stage_v(p0);
      cp_async_commit();
      cp_async_wait<0>();
      __syncthreads();
    }
    t_times(Xs, lay.v_ld, lay.v_piece, imin(lay.v_piece, V - p0), U, in.V, p0);
  }
}

// ---- (2) the recurrences: forward in chunk order, backward in reverse ----
//
// One block per (b, h, kBV-column tile of S or d_S); the columns are independent. The block
// walks the chunks; each chunk's operands are staged whole into shared memory with
// cp.async while the previous product runs (cuda/cp_async.cuh), and every product is a
// warp-level tensor-core product (mma.sync m16n8k8, cuda/mma.cuh) over units of 16 rows x
// kBV/2 columns: 3xTF32 (float32 accuracy) for float32 operands, with the low-part product
// dropped for a bfloat16 operand, which TF32 holds exactly. The state tile stays in the
// warps' accumulators (float32) from the first chunk to the last; shared memory holds its
// copy split into TF32 high and low parts, which is what the other product reads, and V'
// or d_V' split the same way. Contractions over K run over K padded to 8, over a chunk's
// rows over L padded to 8; the staging writes zeros there.
//
// Forward, per chunk:  V' = U - W S                 64 x kBV: one unit per warp
//                      S <- S + k^T V'              kp16 x kBV: units round-robin over warps
// Backward, per chunk: d_V' = scale P^T d_o + k d_S    64 x kBV
//                      d_S <- d_S + scale q^T d_o - W^T d_V'   kp16 x kBV
// The forward writes V' and each chunk's start state, the backward d_V' and each chunk's
// end-state gradient, for the parallel kernels (3) and (3').

constexpr int kRecurCols[] = {48, 32, 16};  // column-tile widths the recurrences come in
constexpr int kMaxStateUnits = 5;           // state units per warp: K up to 320

// Shared-memory layout of a recurrence block (built on the host by recur_layout). Strides
// are in elements, offsets in bytes from the start of the dynamic shared memory.
struct RecurLayout {
  int kp8, kp16;               // K rounded up to 8 (contractions) and 16 (state rows)
  int w_ld, k_ld, q_ld;        // rows of the staged W, k, q
  int p_ld, o_ld, v_ld, s_ld;  // rows of P, the d_o tile, split V' / d_V', split S / d_S
  int off_a, off_b;            // forward: W, k; backward: the two buffers k, q, W rotate through
  int off_p, off_o0, off_o1;   // backward: P, the two d_o tiles
  int off_v, off_s;            // split V' or d_V' [64][v_ld], split S or d_S [kp16][s_ld]
  int bytes;
};

// d_o and its strides, by value.
struct DoView {
  const void* p;
  int64_t s[4];
};

template <class T, int kBV>
__global__ void __launch_bounds__(kThreads, 1)
    delta_rule_fwd_state_kernel(DeltaRuleInputs in, int64_t NC, RecurLayout lay,
                                const float* __restrict__ W, const float* __restrict__ U,
                                float* __restrict__ Vn, float* __restrict__ states,
                                float* __restrict__ S_T) {
  constexpr int NT = kBV / 16, kHalf = kBV / 2;
  extern __shared__ __align__(16) unsigned char delta_smem[];
  float* Ws = reinterpret_cast<float*>(delta_smem + lay.off_a);
  T* Ks = reinterpret_cast<T*>(delta_smem + lay.off_b);
  uint2* V2 = reinterpret_cast<uint2*>(delta_smem + lay.off_v);
  uint2* S2 = reinterpret_cast<uint2*>(delta_smem + lay.off_s);
  const int64_t n_tiles = (in.V + kBV - 1) / kBV;
  const int64_t bh = blockIdx.x / n_tiles;
  const int v0 = static_cast<int>(blockIdx.x % n_tiles) * kBV;
  const int K = static_cast<int>(in.K), vw = imin(kBV, static_cast<int>(in.V) - v0);
  const int64_t b = bh / in.H, h = bh % in.H, KV = in.K * in.V, C = in.C;
  const int warp = threadIdx.x / 32;
  const int rt = warp % 4, cg = warp / 4;   // this warp's unit of V'
  const int n_units = 2 * (lay.kp16 / 16);  // units of S: warp + 8 u, u < kMaxStateUnits
  const int my_units = n_units > warp ? (n_units - warp + kWarps - 1) / kWarps : 0;
  // S from h0 (zeros past K and vw), in the accumulators and split in S2.
  float S[kMaxStateUnits][NT][4];
#pragma unroll
  for (int u = 0; u < kMaxStateUnits; ++u) {
    const int un = warp + kWarps * u, rs = un / 2, cs = un % 2;
    if (un >= n_units) continue;
    for_each_frag<NT>([&](int x, int j, int r, int c) {
      x += 16 * rs;
      j += kHalf * cs;
      S[u][c][r] = in.h0 != nullptr && x < K && j < vw
                       ? load_state(in.h0, in.h0_dtype,
                                    b * in.h0_strides[0] + h * in.h0_strides[1] +
                                        x * in.h0_strides[2] + (v0 + j) * in.h0_strides[3])
                       : 0.f;
    });
    store_split<NT>(S2 + 16 * rs * lay.s_ld + kHalf * cs, lay.s_ld, S[u]);
  }
  auto stage_w = [&](int64_t n) {
    stage_rows<float>(Ws, lay.w_ld, W + (bh * NC + n) * C * in.K, in.K, 1, chunk_at(in, bh, n).L, K,
                      kC, lay.kp16);
  };
  auto stage_k = [&](int64_t n) {
    const ChunkAt c = chunk_at(in, bh, n);
    const RowsView<T> k = rows<T>(in.k, in.k_strides, c);
    stage_rows<T>(Ks, lay.k_ld, k.p, k.rs, k.cs, c.L, K, kC, lay.kp16);
  };
  if (NC > 0) stage_w(0);
  cp_async_commit();
  if (NC > 0) stage_k(0);
  cp_async_commit();
  for (int64_t n = 0; n < NC; ++n) {
    const int L = chunk_at(in, bh, n).L, lsteps = (L + 7) / 8;
    const int64_t chunk = bh * NC + n;
    const float* Un = U + chunk * C * in.V + v0;
    float uv[NT][4];
    for_each_frag<NT>([&](int i, int j, int r, int c) {
      i += 16 * rt;
      j += kHalf * cg;
      uv[c][r] = i < L && j < vw ? Un[i * in.V + j] : 0.f;
    });
    cp_async_wait<1>();  // W
    __syncthreads();
    // V' = U - W S
    float acc[NT][4] = {};
    warp_mma<NT, false>(acc, lay.kp8 / 8, Ws + 16 * rt * lay.w_ld, lay.w_ld, S2 + kHalf * cg,
                        lay.s_ld);
    float* Vnn = Vn + chunk * C * in.V + v0;
    for_each_frag<NT>([&](int i, int j, int r, int c) {
      i += 16 * rt;
      j += kHalf * cg;
      acc[c][r] = i < L ? uv[c][r] - acc[c][r] : 0.f;
      if (i < L && j < vw) Vnn[i * in.V + j] = acc[c][r];
    });
    store_split<NT>(V2 + 16 * rt * lay.v_ld + kHalf * cg, lay.v_ld, acc);
    cp_async_wait<0>();  // k
    __syncthreads();
    if (n + 1 < NC) stage_w(n + 1);
    cp_async_commit();
    // S <- S + k^T V', after writing out the chunk's start state
    float* s_n = states + chunk * KV + v0;
#pragma unroll
    for (int u = 0; u < kMaxStateUnits; ++u) {
      const int un = warp + kWarps * u, rs = un / 2, cs = un % 2;
      if (un >= n_units) continue;
      for_each_frag<NT>([&](int x, int j, int r, int c) {
        x += 16 * rs;
        j += kHalf * cs;
        if (x < K && j < vw) s_n[x * in.V + j] = S[u][c][r];
      });
    }
    warp_mma_units<NT>(S, my_units, lsteps, Ks + 16 * (warp / 2), lay.k_ld, V2 + kHalf * (warp % 2),
                       lay.v_ld);
#pragma unroll
    for (int u = 0; u < kMaxStateUnits; ++u) {
      const int un = warp + kWarps * u, rs = un / 2, cs = un % 2;
      if (un >= n_units) continue;
      store_split<NT>(S2 + 16 * rs * lay.s_ld + kHalf * cs, lay.s_ld, S[u]);
    }
    __syncthreads();
    if (n + 1 < NC) stage_k(n + 1);
    cp_async_commit();
  }
  cp_async_wait<0>();
#pragma unroll
  for (int u = 0; u < kMaxStateUnits; ++u) {
    const int un = warp + kWarps * u, rs = un / 2, cs = un % 2;
    if (un >= n_units) continue;
    for_each_frag<NT>([&](int x, int j, int r, int c) {
      x += 16 * rs;
      j += kHalf * cs;
      if (x < K && j < vw) S_T[bh * KV + x * in.V + v0 + j] = S[u][c][r];
    });
  }
}

template <class T, int kBV>
__global__ void __launch_bounds__(kThreads, 1)
    delta_rule_bwd_state_kernel(DeltaRuleInputs in, int64_t NC, RecurLayout lay, DoView d_o,
                                const float* __restrict__ P, const float* __restrict__ W,
                                const float* __restrict__ d_S_T, float* __restrict__ dVn,
                                float* __restrict__ dstates, void* d_h0) {
  constexpr int NT = kBV / 16, kHalf = kBV / 2;
  extern __shared__ __align__(16) unsigned char delta_smem[];
  unsigned char* const buf0 = delta_smem + lay.off_a;
  unsigned char* const buf1 = delta_smem + lay.off_b;
  float* Ps = reinterpret_cast<float*>(delta_smem + lay.off_p);
  T* const dO0 = reinterpret_cast<T*>(delta_smem + lay.off_o0);
  T* const dO1 = reinterpret_cast<T*>(delta_smem + lay.off_o1);
  uint2* dV2 = reinterpret_cast<uint2*>(delta_smem + lay.off_v);  // -d_V', split
  uint2* dS2 = reinterpret_cast<uint2*>(delta_smem + lay.off_s);
  const int64_t n_tiles = (in.V + kBV - 1) / kBV;
  const int64_t bh = blockIdx.x / n_tiles;
  const int v0 = static_cast<int>(blockIdx.x % n_tiles) * kBV;
  const int K = static_cast<int>(in.K), vw = imin(kBV, static_cast<int>(in.V) - v0);
  const int64_t KV = in.K * in.V, C = in.C;
  const int warp = threadIdx.x / 32;
  const int rt = warp % 4, cg = warp / 4;   // this warp's unit of d_V'
  const int n_units = 2 * (lay.kp16 / 16);  // units of d_S: warp + 8 u, u < kMaxStateUnits
  const int my_units = n_units > warp ? (n_units - warp + kWarps - 1) / kWarps : 0;
  const float scale = in.scale;
  // d_S from d_S_T (zeros past K and vw), in the accumulators and split in dS2.
  float dS[kMaxStateUnits][NT][4];
#pragma unroll
  for (int u = 0; u < kMaxStateUnits; ++u) {
    const int un = warp + kWarps * u, rs = un / 2, cs = un % 2;
    if (un >= n_units) continue;
    for_each_frag<NT>([&](int x, int j, int r, int c) {
      x += 16 * rs;
      j += kHalf * cs;
      dS[u][c][r] = x < K && j < vw ? d_S_T[bh * KV + x * in.V + v0 + j] : 0.f;
    });
    store_split<NT>(dS2 + 16 * rs * lay.s_ld + kHalf * cs, lay.s_ld, dS[u]);
  }
  // k, q and W of a chunk go through buf0 and buf1 in turn: k_n and q_n are staged
  // first, W_n replaces k_n once d_V' is done, k_{n-1} replaces q_n and q_{n-1} W_n.
  auto stage_in = [&](const void* x, const int64_t* s, int64_t n, void* dst, int ld) {
    const ChunkAt c = chunk_at(in, bh, n);
    const RowsView<T> r = rows<T>(x, s, c);
    stage_rows<T>(static_cast<T*>(dst), ld, r.p, r.rs, r.cs, c.L, K, kC, lay.kp16);
  };
  auto stage_w = [&](int64_t n, void* dst) {
    stage_rows<float>(static_cast<float*>(dst), lay.w_ld, W + (bh * NC + n) * C * in.K, in.K, 1,
                      chunk_at(in, bh, n).L, K, kC, lay.kp16);
  };
  auto stage_p_do = [&](int64_t n, T* dst) {
    const ChunkAt c = chunk_at(in, bh, n);
    stage_rows<float>(Ps, lay.p_ld, P + (bh * NC + n) * C * C, C, 1, c.L, c.L, kC, kC);
    const RowsView<T> r = rows<T>(d_o.p, d_o.s, c);
    stage_rows<T>(dst, lay.o_ld, r.p + v0 * r.cs, r.rs, r.cs, c.L, vw, kC, kBV);
  };
  bool flip = false;  // k_n sits in buf0 and q_n in buf1, d_o_n in dO0; swapped when flip
  if (NC > 0) {
    stage_in(in.k, in.k_strides, NC - 1, buf0, lay.k_ld);
    stage_p_do(NC - 1, dO0);
  }
  cp_async_commit();
  if (NC > 0) stage_in(in.q, in.q_strides, NC - 1, buf1, lay.q_ld);
  cp_async_commit();
  for (int64_t n = NC - 1; n >= 0; --n) {
    const int L = chunk_at(in, bh, n).L, lsteps = (L + 7) / 8;
    const int64_t chunk = bh * NC + n;
    unsigned char* const kbuf = flip ? buf1 : buf0;  // k_n, then W_n, then q_{n-1}
    unsigned char* const qbuf = flip ? buf0 : buf1;  // q_n, then k_{n-1}
    const T* dO = flip ? dO1 : dO0;
    T* const dO_next = flip ? dO0 : dO1;
    cp_async_wait<1>();  // k, P, d_o
    __syncthreads();
    // d_V' = scale P^T d_o + k d_S
    float acc[NT][4] = {};
    warp_mma<NT, true>(acc, lsteps, Ps + 16 * rt, lay.p_ld, dO + kHalf * cg, lay.o_ld);
    for_each_frag<NT>([&](int, int, int r, int c) { acc[c][r] *= scale; });
    warp_mma<NT, false>(acc, lay.kp8 / 8, reinterpret_cast<const T*>(kbuf) + 16 * rt * lay.k_ld,
                        lay.k_ld, dS2 + kHalf * cg, lay.s_ld);
    float* dVnn = dVn + chunk * C * in.V + v0;
    for_each_frag<NT>([&](int i, int j, int r, int c) {
      i += 16 * rt;
      j += kHalf * cg;
      if (i < L && j < vw) dVnn[i * in.V + j] = acc[c][r];
      acc[c][r] = i < L ? -acc[c][r] : 0.f;
    });
    store_split<NT>(dV2 + 16 * rt * lay.v_ld + kHalf * cg, lay.v_ld, acc);
    cp_async_wait<0>();  // q
    __syncthreads();
    stage_w(n, kbuf);
    if (n > 0) stage_p_do(n - 1, dO_next);
    cp_async_commit();
    // d_S += scale q^T d_o, after writing out the chunk's end-state gradient
    float* ds_n = dstates + chunk * KV + v0;
    {
      float t[kMaxStateUnits][NT][4] = {};
      warp_mma_units<NT>(t, my_units, lsteps, reinterpret_cast<const T*>(qbuf) + 16 * (warp / 2),
                         lay.q_ld, dO + kHalf * (warp % 2), lay.o_ld);
#pragma unroll
      for (int u = 0; u < kMaxStateUnits; ++u) {
        const int un = warp + kWarps * u, rs = un / 2, cs = un % 2;
        if (un >= n_units) continue;
        for_each_frag<NT>([&](int x, int j, int r, int c) {
          x += 16 * rs;
          j += kHalf * cs;
          if (x < K && j < vw) ds_n[x * in.V + j] = dS[u][c][r];
          dS[u][c][r] += scale * t[u][c][r];
        });
      }
    }
    cp_async_wait<0>();  // W
    __syncthreads();
    if (n > 0) stage_in(in.k, in.k_strides, n - 1, qbuf, lay.k_ld);
    cp_async_commit();
    // d_S -= W^T d_V' (d_V' is held negated in dV2)
    warp_mma_units<NT>(dS, my_units, lsteps, reinterpret_cast<const float*>(kbuf) + 16 * (warp / 2),
                       lay.w_ld, dV2 + kHalf * (warp % 2), lay.v_ld);
#pragma unroll
    for (int u = 0; u < kMaxStateUnits; ++u) {
      const int un = warp + kWarps * u, rs = un / 2, cs = un % 2;
      if (un >= n_units) continue;
      store_split<NT>(dS2 + 16 * rs * lay.s_ld + kHalf * cs, lay.s_ld, dS[u]);
    }
    __syncthreads();
    if (n > 0) stage_in(in.q, in.q_strides, n - 1, kbuf, lay.q_ld);
    cp_async_commit();
    flip = !flip;
  }
  cp_async_wait<0>();
  if (d_h0 != nullptr) {
#pragma unroll
    for (int u = 0; u < kMaxStateUnits; ++u) {
      const int un = warp + kWarps * u, rs = un / 2, cs = un % 2;
      if (un >= n_units) continue;
      for_each_frag<NT>([&](int x, int j, int r, int c) {
        x += 16 * rs;
        j += kHalf * cs;
        if (x < K && j < vw)
          store_state(d_h0, in.h0_dtype, bh * KV + x * in.V + v0 + j, dS[u][c][r]);
      });
    }
  }
}

// ---- (3) forward: o of a chunk ----
template <class T>
__global__ void __launch_bounds__(kThreads)
    delta_rule_fwd_out_kernel(DeltaRuleInputs in, int64_t NC, const float* __restrict__ P,
                              const float* __restrict__ Vn, const float* __restrict__ states,
                              T* __restrict__ o) {
  extern __shared__ __align__(16) unsigned char delta_smem[];
  Stage& st = *reinterpret_cast<Stage*>(delta_smem);
  const ChunkAt c = chunk_at(in, blockIdx.x / NC, blockIdx.x % NC);
  const int L = c.L, K = static_cast<int>(in.K), V = static_cast<int>(in.V);
  const int v0 = blockIdx.y * kOutCols;
  const int64_t chunk = c.bh * NC + c.n, C = in.C;
  const float* S0 = states + chunk * in.K * in.V;
  const float* Pn = P + chunk * C * C;
  const float* Vnn = Vn + chunk * C * in.V;
  const RowsView<T> q = rows<T>(in.q, in.q_strides, c);
  const int vw = imin(kOutCols, V - v0);
  prefetch_rows(q, L, 0, K);
  prefetch_rows(RowsView<float>{S0, in.V, 1}, K, v0, vw);
  prefetch_bytes(Pn, L * C * sizeof(float), threadIdx.x, kThreads);
  prefetch_rows(RowsView<float>{Vnn, in.V, 1}, L, v0, vw);
  float acc[4][4];
  zero(acc);
  gemm_acc<4, true, true>(
      acc, 0, v0, L, V, K, q, [&](int x, int j) { return S0[x * in.V + j]; }, st);
  gemm_acc<4, true, true>(
      acc, 0, v0, L, V, L, [&](int i, int j) { return Pn[i * C + j]; },
      [&](int j, int jj) { return Vnn[j * in.V + jj]; }, st);
  const float scale = in.scale;
  for_each_out(acc, 0, v0, L, V, [&](int i, int j, float y) {
    o[((c.b * in.T + c.t0 + i) * in.H + c.h) * in.V + j] = from_f32<T>(scale * y);
  });
}

// ---- (3') backward: the gradients of one chunk ----
//
// Shared memory: Stage, N, d_P, Z [64][kLd]; R, V', Y [64][32]; beta, d_beta [64].
constexpr size_t kGradSmem =
    sizeof(Stage) + (3 * kC * kLd + 3 * kC * kGradCols + 2 * kC) * sizeof(float);

struct GradOut {
  void *d_q, *d_k, *d_v, *d_beta;
};

template <class T>
__global__ void __launch_bounds__(kThreads, 2)
    delta_rule_bwd_grad_kernel(DeltaRuleInputs in, int64_t NC, DoView d_o, Scratch s,
                               const float* __restrict__ states, GradOut out) {
  extern __shared__ __align__(16) unsigned char delta_smem[];
  Stage& st = *reinterpret_cast<Stage*>(delta_smem);
  float* Nm = reinterpret_cast<float*>(delta_smem + sizeof(Stage));
  float* dP = Nm + kC * kLd;
  float* Z = dP + kC * kLd;
  float* Rs = Z + kC * kLd;
  float* Vs = Rs + kC * kGradCols;
  float* Ys = Vs + kC * kGradCols;
  float* bs = Ys + kC * kGradCols;
  float* dbs = bs + kC;
  const ChunkAt c = chunk_at(in, blockIdx.x / NC, blockIdx.x % NC);
  const int L = c.L, K = static_cast<int>(in.K), V = static_cast<int>(in.V);
  const int tid = threadIdx.x;
  const int64_t chunk = c.bh * NC + c.n, C = in.C, KV = in.K * in.V;
  const float scale = in.scale;
  const float* S0 = states + chunk * KV;
  const float* dS = s.dstates + chunk * KV;
  const float* Nn = s.N + chunk * C * C;
  const float* Gn = s.G + chunk * C * C;
  const float* dVnn = s.dVn + chunk * C * in.V;
  float* VnG = s.Vn + chunk * C * in.V;
  float* dRG = s.dR + chunk * C * in.V;
  const RowsView<T> q = rows<T>(in.q, in.q_strides, c);
  const RowsView<T> k = rows<T>(in.k, in.k_strides, c);
  const RowsView<T> v = rows<T>(in.v, in.v_strides, c);
  const RowsView<T> dO = rows<T>(d_o.p, d_o.s, c);
  // This chunk's operands into L2: the start state and end-state gradient (K x V each),
  // N, G, d_V' and the rows of v, k, q, d_o.
  prefetch_bytes(S0, KV * sizeof(float), tid, kThreads);
  prefetch_bytes(dS, KV * sizeof(float), tid, kThreads);
  prefetch_bytes(Nn, L * C * sizeof(float), tid, kThreads);
  prefetch_bytes(Gn, L * C * sizeof(float), tid, kThreads);
  prefetch_bytes(dVnn, L * in.V * sizeof(float), tid, kThreads);
  prefetch_rows(v, L, 0, V);
  prefetch_rows(k, L, 0, K);
  prefetch_rows(q, L, 0, K);
  prefetch_rows(dO, L, 0, V);
  const T* beta = static_cast<const T*>(in.beta) + c.b * in.beta_strides[0] +
                  c.t0 * in.beta_strides[1] + c.h * in.beta_strides[2];
  for (int e = tid; e < L * L; e += kThreads) {
    const int i = e / L, j = e % L;
    Nm[i * kLd + j] = Nn[i * C + j];
  }
  for (int i = tid; i < kC; i += kThreads) {
    bs[i] = i < L ? to_f32(beta[i * in.beta_strides[1]]) : 0.f;
    dbs[i] = 0.f;
  }
  __syncthreads();

  // Over 32-column tiles of V: R, V', Y, d_v, and the sums d_P = d_o V'^T, M = Y V'^T,
  // r_i = R_i . Y_i accumulated tile by tile (d_P and M in registers).
  float acc_dP[4][4], acc_M[4][4], acc[4][kGradTN];
  zero(acc_dP);
  zero(acc_M);
  T* d_v = static_cast<T*>(out.d_v);
  for (int v0 = 0; v0 < V; v0 += kGradCols) {
    const int vw = imin(kGradCols, V - v0);
    // R = v - k S0
    zero(acc);
    gemm_acc<kGradTN, true, true>(
        acc, 0, 0, L, vw, K, k, [&](int x, int j) { return S0[x * in.V + v0 + j]; }, st);
    for_each_out(acc, 0, 0, L, vw,
                 [&](int i, int j, float ks) { Rs[i * kGradCols + j] = v(i, v0 + j) - ks; });
    __syncthreads();
    // V' = N diag(beta) R
    zero(acc);
    gemm_acc<kGradTN, true, true>(
        acc, 0, 0, L, vw, L, [&](int i, int j) { return Nm[i * kLd + j]; },
        [&](int j, int jj) { return bs[j] * Rs[j * kGradCols + jj]; }, st);
    for_each_out(acc, 0, 0, L, vw, [&](int i, int j, float y) {
      Vs[i * kGradCols + j] = y;
      VnG[i * in.V + v0 + j] = y;
    });
    // Y = N^T d_V', d_R = diag(beta) Y = d_v
    zero(acc);
    gemm_acc<kGradTN, false, true>(
        acc, 0, 0, L, vw, L, [&](int i, int j) { return Nm[j * kLd + i]; },
        [&](int j, int jj) { return dVnn[j * in.V + v0 + jj]; }, st);
    for_each_out(acc, 0, 0, L, vw, [&](int i, int j, float y) {
      Ys[i * kGradCols + j] = y;
      const float dr = bs[i] * y;
      dRG[i * in.V + v0 + j] = dr;
      if (d_v != nullptr) {
        d_v[((c.b * in.T + c.t0 + i) * in.H + c.h) * in.V + v0 + j] = from_f32<T>(dr);
      }
    });
    __syncthreads();
    gemm_acc<4, true, false>(
        acc_dP, 0, 0, L, L, vw, [&](int i, int jj) { return dO(i, v0 + jj); },
        [&](int jj, int j) { return Vs[j * kGradCols + jj]; }, st);
    gemm_acc<4, true, false>(
        acc_M, 0, 0, L, L, vw, [&](int i, int jj) { return Ys[i * kGradCols + jj]; },
        [&](int jj, int j) { return Vs[j * kGradCols + jj]; }, st);
    if (tid < L) {
      float r = dbs[tid];
      for (int jj = 0; jj < vw; ++jj)
        r = fmaf(Rs[tid * kGradCols + jj], Ys[tid * kGradCols + jj], r);
      dbs[tid] = r;
    }
    __syncthreads();
  }
  // d_P = scale tril(d_o V'^T); dM = -Y V'^T below the diagonal (in Z for now).
  for_each_out(acc_dP, 0, 0, L, L,
               [&](int i, int j, float x) { dP[i * kLd + j] = j <= i ? scale * x : 0.f; });
  for_each_out(acc_M, 0, 0, L, L,
               [&](int i, int j, float x) { Z[i * kLd + j] = j < i ? -x : 0.f; });
  __syncthreads();
  // d_beta_i = R_i . Y_i + sum_{j<i} dM_ij G_ij
  if (tid < L) {
    float r = dbs[tid];
    for (int j = 0; j < tid; ++j) r = fmaf(Z[tid * kLd + j], Gn[tid * C + j], r);
    if (out.d_beta != nullptr) {
      static_cast<T*>(out.d_beta)[(c.b * in.T + c.t0 + tid) * in.H + c.h] = from_f32<T>(r);
    }
  }
  __syncthreads();
  // Z = diag(beta) dM (strictly lower)
  for (int e = tid; e < L * L; e += kThreads) {
    const int i = e / L, j = e % L;
    Z[i * kLd + j] *= bs[i];
  }
  __syncthreads();

  float acc4[4][4];
  for (int n0 = 0; n0 < K; n0 += 64) {
    if (out.d_q != nullptr) {
      // d_q = scale d_o S0^T + d_P k
      zero(acc4);
      gemm_acc<4, true, false>(
          acc4, 0, n0, L, K, V, [&](int i, int y) { return scale * dO(i, y); },
          [&](int y, int x) { return S0[x * in.V + y]; }, st);
      gemm_acc<4, true, true>(
          acc4, 0, n0, L, K, L, [&](int i, int j) { return dP[i * kLd + j]; }, k, st);
      T* d_q = static_cast<T*>(out.d_q);
      for_each_out(acc4, 0, n0, L, K, [&](int i, int x, float g) {
        d_q[((c.b * in.T + c.t0 + i) * in.H + c.h) * in.K + x] = from_f32<T>(g);
      });
    }
    if (out.d_k != nullptr) {
      // d_k = d_P^T q + V' d_S^T - d_R S0^T + (Z + Z^T) k
      zero(acc4);
      gemm_acc<4, false, true>(
          acc4, 0, n0, L, K, L, [&](int i, int j) { return dP[j * kLd + i]; }, q, st);
      gemm_acc<4, true, false>(
          acc4, 0, n0, L, K, V, [&](int i, int y) { return VnG[i * in.V + y]; },
          [&](int y, int x) { return dS[x * in.V + y]; }, st);
      gemm_acc<4, true, false>(
          acc4, 0, n0, L, K, V, [&](int i, int y) { return -dRG[i * in.V + y]; },
          [&](int y, int x) { return S0[x * in.V + y]; }, st);
      gemm_acc<4, true, true>(
          acc4, 0, n0, L, K, L, [&](int i, int j) { return Z[i * kLd + j] + Z[j * kLd + i]; }, k,
          st);
      T* d_k = static_cast<T*>(out.d_k);
      for_each_out(acc4, 0, n0, L, K, [&](int i, int x, float g) {
        d_k[((c.b * in.T + c.t0 + i) * in.H + c.h) * in.K + x] = from_f32<T>(g);
      });
    }
  }
}

// ---- host side ----

const char* last_error() {
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

const char* check_inputs(const DeltaRuleInputs& in) {
  if (in.C < 1 || in.C > kDeltaMaxChunk) return "delta_rule CUDA: chunk must be in 1..64";
  if (in.B < 0 || in.T < 0 || in.H < 0 || in.K < 1 || in.V < 1) {
    return "delta_rule CUDA: negative B, T, H or K, V < 1";
  }
  if (in.K > (1 << 20) || in.V > (1 << 20)) return "delta_rule CUDA: K or V above 2^20";
  const int64_t n_tiles = (in.V + 15) / 16;  // of the narrowest recurrence tiles
  const int64_t blocks =
      in.B * in.H * ((in.T + in.C - 1) / in.C > n_tiles ? (in.T + in.C - 1) / in.C : n_tiles);
  if (blocks > 0x7fffffff) return "delta_rule CUDA: B * H * max(T / C, V / 16) above 2^31 - 1";
  if (in.h0_dtype != KernelDType::kFloat32 && in.h0_dtype != in.dtype) {
    return "delta_rule CUDA: h0 must be float32 or the inputs' dtype";
  }
  return nullptr;
}

constexpr const char* kKTooLarge =
    "delta_rule CUDA: K too large for the shared-memory tiles on this device (K up to 272 in "
    "float32 and 288 in bfloat16 fits in 227 KiB)";

// Allows `kernel` `bytes` of dynamic shared memory, or says why it cannot.
template <class Kernel>
const char* allow_smem(Kernel kernel, size_t bytes) {
  int dev = 0, max_optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) !=
          cudaSuccess) {
    return last_error();
  }
  if (bytes > static_cast<size_t>(max_optin)) {
    return kKTooLarge;
  }
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(bytes)) != cudaSuccess) {
    return last_error();
  }
  return nullptr;
}

int64_t num_chunks(const DeltaRuleInputs& in) { return (in.T + in.C - 1) / in.C; }

// ---- the recurrences' tiles ----

// The smallest row stride >= n elements (a multiple of 8 bytes, so rows take 8-byte
// copies; of 16 bytes for 8-byte elements, stored two at a time) at which a warp's
// fragment read of esize-byte elements meets no bank conflict: lane (g, t) = (lane / 4,
// lane % 4) reads row g, column t, or with by_cols row t, column g (an operand read
// transposed). 8-byte reads are served a half-warp at a time.
int conflict_free_ld(int n, int esize, bool by_cols) {
  const int step = esize == 8 ? 2 : 8 / esize, first = (n + step - 1) / step * step;
  const int words = esize == 8 ? 2 : 1, lanes = esize == 8 ? 16 : 32;
  for (int ld = first; ld < first + 32 * step; ld += step) {
    bool ok = true;
    for (int phase = 0; phase < 32 / lanes && ok; ++phase) {
      int word_at[32];
      std::fill(word_at, word_at + 32, -1);
      for (int lane = phase * lanes; lane < (phase + 1) * lanes && ok; ++lane) {
        const int g = lane / 4, t = lane % 4, row = by_cols ? t : g, col = by_cols ? g : t;
        for (int w = 0; w < words && ok; ++w) {
          const int word = (row * ld + col) * esize / 4 + w, bank = word % 32;
          ok = word_at[bank] < 0 || word_at[bank] == word;
          word_at[bank] = word;
        }
      }
    }
    if (ok) return ld;
  }
  return first;
}

// Shared memory of a recurrence block with bv state columns (esize: bytes of the inputs).
RecurLayout recur_layout(const DeltaRuleInputs& in, bool fwd, int esize, int bv) {
  RecurLayout l{};
  const int K = static_cast<int>(in.K);
  l.kp8 = (K + 7) / 8 * 8;
  l.kp16 = (K + 15) / 16 * 16;
  int off = 0;
  auto take = [&](int bytes) {
    const int at = off;
    off += (bytes + 15) / 16 * 16;
    return at;
  };
  if (fwd) {
    l.w_ld = conflict_free_ld(l.kp16, 4, false);     // W as A, read by rows
    l.k_ld = conflict_free_ld(l.kp16, esize, true);  // k^T as A
    l.off_a = take(kC * l.w_ld * 4);
    l.off_b = take(kC * l.k_ld * esize);
  } else {
    l.w_ld = conflict_free_ld(l.kp16, 4, true);       // W^T as A
    l.k_ld = conflict_free_ld(l.kp16, esize, false);  // k as A
    l.q_ld = conflict_free_ld(l.kp16, esize, true);   // q^T as A
    const int buf = std::max({kC * l.w_ld * 4, kC * l.k_ld * esize, kC * l.q_ld * esize});
    l.off_a = take(buf);
    l.off_b = take(buf);
    l.p_ld = conflict_free_ld(kC, 4, true);  // P^T as A
    l.o_ld = conflict_free_ld(bv, esize, true);
    l.off_p = take(kC * l.p_ld * 4);
    l.off_o0 = take(kC * l.o_ld * esize);
    l.off_o1 = take(kC * l.o_ld * esize);
  }
  l.v_ld = conflict_free_ld(bv, 8, true);  // split V' / d_V' as B
  l.s_ld = conflict_free_ld(bv, 8, true);  // split S / d_S as B
  l.off_v = take(kC * l.v_ld * 8);
  l.off_s = take(l.kp16 * l.s_ld * 8);
  l.bytes = off;
  return l;
}

// Shared memory of the WY kernel (esize: bytes of the inputs).
WyLayout wy_layout(const DeltaRuleInputs& in, int esize) {
  WyLayout l{};
  const int K = static_cast<int>(in.K), V = static_cast<int>(in.V);
  l.kp8 = (K + 7) / 8 * 8;
  l.kp32 = (K + 31) / 32 * 32;
  l.v_piece = std::min((V + 31) / 32 * 32, kWyVPiece);
  l.k_ld = conflict_free_ld(l.kp32, esize, false);    // k as A and as transposed B
  l.q_ld = conflict_free_ld(l.kp8, esize, false);     // q as A
  l.v_ld = conflict_free_ld(l.v_piece, esize, true);  // v as B
  int off = 0;
  auto take = [&](int bytes) {
    const int at = off;
    off += (bytes + 15) / 16 * 16;
    return at;
  };
  l.off_k = take(kC * l.k_ld * esize);
  l.off_x = take(kC * std::max(l.q_ld, l.v_ld) * esize);
  l.off_g = take(kC * kLdG * 4);
  l.off_n = take(kC * kLdG * 4);
  l.off_b = take(kC * 4);
  l.bytes = off;
  return l;
}

// f(std::integral_constant<int, bv>) for bv one of kRecurCols.
template <class F>
void with_cols(int bv, const F& f) {
  if (bv == 48) {
    f(std::integral_constant<int, 48>{});
  } else if (bv == 32) {
    f(std::integral_constant<int, 32>{});
  } else {
    f(std::integral_constant<int, 16>{});
  }
}

template <class T>
const void* fwd_state_kernel(int bv) {
  const void* k = nullptr;
  with_cols(bv, [&](auto cols) {
    k = reinterpret_cast<const void*>(delta_rule_fwd_state_kernel<T, cols.value>);
  });
  return k;
}
template <class T>
const void* bwd_state_kernel(int bv) {
  const void* k = nullptr;
  with_cols(bv, [&](auto cols) {
    k = reinterpret_cast<const void*>(delta_rule_bwd_state_kernel<T, cols.value>);
  });
  return k;
}

unsigned recur_blocks(const DeltaRuleInputs& in, int bv) {
  return static_cast<unsigned>(in.B * in.H * ((in.V + bv - 1) / bv));
}

struct RecurPlan {
  int bv = 0;
  RecurLayout lay{};
};

// Picks the column-tile width of a recurrence: of kRecurCols, the one whose shared memory
// fits (and K its state units) and whose grid takes the fewest waves of resident blocks, weighted
// by the width plus the width-independent part of a block's work (staging W, k, q); the widest on a
// tie. RESONA_DELTA_RULE_STATE_COLS (16, 32 or 48) forces one. Allows the chosen kernel its
// shared memory.
template <class KernelOf>
const char* plan_recurrence(const DeltaRuleInputs& in, bool fwd, int esize,
                            const KernelOf& kernel_of, RecurPlan& plan) {
  int dev = 0, sms = 0, max_optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) !=
          cudaSuccess) {
    return last_error();
  }
  int forced = 0;
  if (const char* e = std::getenv("RESONA_DELTA_RULE_STATE_COLS"); e != nullptr && *e != 0) {
    forced = std::atoi(e);
    if (forced != 16 && forced != 32 && forced != 48) {
      return "delta_rule CUDA: RESONA_DELTA_RULE_STATE_COLS must be 16, 32 or 48";
    }
  }
  double best = 0;
  plan = RecurPlan{};
  const bool units_fit = 2 * ((in.K + 15) / 16) <= kWarps * kMaxStateUnits;
  for (int bv : kRecurCols) {
    if (!units_fit) break;
    if (forced != 0 && bv != forced) continue;
    const RecurLayout lay = recur_layout(in, fwd, esize, bv);
    if (lay.bytes > max_optin) continue;
    const void* kernel = kernel_of(bv);
    int per_sm = 0;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, lay.bytes) !=
            cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, lay.bytes) !=
            cudaSuccess) {
      return last_error();
    }
    if (per_sm < 1) continue;
    const int64_t resident = static_cast<int64_t>(sms) * per_sm;
    const int64_t waves = (recur_blocks(in, bv) + resident - 1) / resident;
    const double cost = static_cast<double>(waves) * (bv + 32);
    if (plan.bv == 0 || cost < best) {
      best = cost;
      plan = RecurPlan{bv, lay};
    }
  }
  if (plan.bv == 0) {
    return kKTooLarge;
  }
  return nullptr;
}

template <class T>
const char* fwd_impl(const DeltaRuleFwdParams& p, cudaStream_t stream) {
  const DeltaRuleInputs& in = p.in;
  const int64_t NC = num_chunks(in), BH = in.B * in.H;
  if (BH == 0) return nullptr;
  Scratch s;
  layout(in, true, static_cast<float*>(p.scratch), s);
  const char* err = nullptr;
  if (NC > 0) {
    const WyLayout wy = wy_layout(in, sizeof(T));
    if ((err = allow_smem(delta_rule_wy_kernel<T>, wy.bytes))) return err;
    delta_rule_wy_kernel<T><<<static_cast<unsigned>(BH * NC), kThreads, wy.bytes, stream>>>(
        in, NC, wy, s.W, s.U, s.P, nullptr, nullptr);
    if ((err = last_error())) return err;
  }
  RecurPlan plan;
  if ((err = plan_recurrence(in, true, sizeof(T), fwd_state_kernel<T>, plan))) return err;
  with_cols(plan.bv, [&](auto cols) {
    delta_rule_fwd_state_kernel<T, cols.value>
        <<<recur_blocks(in, plan.bv), kThreads, plan.lay.bytes, stream>>>(
            in, NC, plan.lay, s.W, s.U, s.Vn, p.states, p.S_T);
  });
  if ((err = last_error())) return err;
  if (NC > 0) {
    const dim3 grid(static_cast<unsigned>(BH * NC),
                    static_cast<unsigned>((in.V + kOutCols - 1) / kOutCols));
    delta_rule_fwd_out_kernel<T><<<grid, kThreads, sizeof(Stage), stream>>>(
        in, NC, s.P, s.Vn, p.states, static_cast<T*>(p.o));
    if ((err = last_error())) return err;
  }
  return nullptr;
}

template <class T>
const char* bwd_impl(const DeltaRuleBwdParams& p, cudaStream_t stream) {
  const DeltaRuleInputs& in = p.in;
  const int64_t NC = num_chunks(in), BH = in.B * in.H;
  if (BH == 0) return nullptr;
  Scratch s;
  layout(in, false, static_cast<float*>(p.scratch), s);
  DoView d_o{p.d_o, {p.d_o_strides[0], p.d_o_strides[1], p.d_o_strides[2], p.d_o_strides[3]}};
  const char* err = nullptr;
  if (NC > 0) {
    const WyLayout wy = wy_layout(in, sizeof(T));
    if ((err = allow_smem(delta_rule_wy_kernel<T>, wy.bytes))) return err;
    delta_rule_wy_kernel<T><<<static_cast<unsigned>(BH * NC), kThreads, wy.bytes, stream>>>(
        in, NC, wy, s.W, nullptr, s.P, s.N, s.G);
    if ((err = last_error())) return err;
  }
  RecurPlan plan;
  if ((err = plan_recurrence(in, false, sizeof(T), bwd_state_kernel<T>, plan))) return err;
  with_cols(plan.bv, [&](auto cols) {
    delta_rule_bwd_state_kernel<T, cols.value>
        <<<recur_blocks(in, plan.bv), kThreads, plan.lay.bytes, stream>>>(
            in, NC, plan.lay, d_o, s.P, s.W, p.d_S_T, s.dVn, s.dstates, p.d_h0);
  });
  if ((err = last_error())) return err;
  const bool any = p.d_q != nullptr || p.d_k != nullptr || p.d_v != nullptr || p.d_beta != nullptr;
  if (NC > 0 && any) {
    if ((err = allow_smem(delta_rule_bwd_grad_kernel<T>, kGradSmem))) return err;
    delta_rule_bwd_grad_kernel<T><<<static_cast<unsigned>(BH * NC), kThreads, kGradSmem, stream>>>(
        in, NC, d_o, s, p.states, GradOut{p.d_q, p.d_k, p.d_v, p.d_beta});
    if ((err = last_error())) return err;
  }
  return nullptr;
}

}  // namespace

size_t delta_rule_fwd_scratch_bytes(const DeltaRuleFwdParams& p) {
  Scratch s;
  return static_cast<size_t>(layout(p.in, true, nullptr, s)) * sizeof(float);
}

size_t delta_rule_bwd_scratch_bytes(const DeltaRuleBwdParams& p) {
  Scratch s;
  return static_cast<size_t>(layout(p.in, false, nullptr, s)) * sizeof(float);
}

const char* delta_rule_fwd_cuda(const DeltaRuleFwdParams& p, void* stream) {
  if (const char* err = check_inputs(p.in)) return err;
  const bool rows = p.in.B * p.in.H > 0 && p.in.T > 0;
  if (p.in.B * p.in.H > 0 && p.S_T == nullptr) return "delta_rule_fwd_cuda: S_T not given";
  if (rows && (p.o == nullptr || p.states == nullptr || p.scratch == nullptr)) {
    return "delta_rule_fwd_cuda: o, states or scratch not given";
  }
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.in.dtype) {
    case KernelDType::kFloat32:
      return fwd_impl<float>(p, s);
    case KernelDType::kBFloat16:
      return fwd_impl<__nv_bfloat16>(p, s);
  }
  return "delta_rule_fwd_cuda: dtype must be float32 or bfloat16";
}

const char* delta_rule_bwd_cuda(const DeltaRuleBwdParams& p, void* stream) {
  if (const char* err = check_inputs(p.in)) return err;
  const bool rows = p.in.B * p.in.H > 0 && p.in.T > 0;
  if (p.in.B * p.in.H > 0 && p.d_S_T == nullptr) return "delta_rule_bwd_cuda: d_S_T not given";
  if (rows && (p.states == nullptr || p.d_o == nullptr || p.scratch == nullptr)) {
    return "delta_rule_bwd_cuda: states, d_o or scratch not given";
  }
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.in.dtype) {
    case KernelDType::kFloat32:
      return bwd_impl<float>(p, s);
    case KernelDType::kBFloat16:
      return bwd_impl<__nv_bfloat16>(p, s);
  }
  return "delta_rule_bwd_cuda: dtype must be float32 or bfloat16";
}

}  // namespace resona::cuda
