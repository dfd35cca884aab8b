// Chunked delta-rule kernels (maps and formulas in cuda/delta_rule.h; the CPU path and the
// derivation of the backward are in ops/delta_rule.cc).
//
// delta_rule_wy_kernel          block (b, h, chunk): G = k k^T, N by forward substitution
//                               (thread c solves column c), W = N diag(beta) k,
//                               U = N diag(beta) v (forward), P = tril(q k^T); in
//                               backward N and G are written instead of U
// delta_rule_fwd_state_kernel   block (b, h, 32 columns of V): the chunks in order,
//                               V' = U - W S, S <- S + k^T V', S in shared memory
// delta_rule_fwd_out_kernel     block (b, h, chunk, 64 columns of V):
//                               o = scale (q S0 + P V')
// delta_rule_bwd_state_kernel   block (b, h, 32 columns of V): the chunks in reverse,
//                               d_V' = scale P^T d_o + k d_S,
//                               d_S <- d_S + scale q^T d_o - W^T d_V'
// delta_rule_bwd_grad_kernel    block (b, h, chunk): over 32-column tiles of V,
//                               R = v - k S0, V' = N diag(beta) R, Y = N^T d_V',
//                               d_v = diag(beta) Y, and the sums over V of d_o V'^T,
//                               Y V'^T and R . Y; then d_beta, and d_q, d_k over
//                               64-column tiles of K
//
// Every product is one block-level tiled product in float32: 256 threads, each owning a
// 4 x TN block of a 64 x 16 TN output tile, the operands staged through shared memory
// 16 contraction steps at a time (the next step's loads are issued before the current
// step's arithmetic). Operands are read through small accessors (strided inputs of
// either dtype, float32 scratch, shared-memory matrices, transposes), so no layout needs
// a copy. A block's sums always run in the same order and no two blocks add into one
// value: the results are bit-identical from run to run. Each block first asks L2 for the
// rows it is about to read (prefetch hints; the two recurrences one chunk ahead), since
// the recurrences, with few blocks per SM, would otherwise wait on memory at every step.
//
// Rows past the chunk's length L and columns past V or K are never read or written; the
// contraction bounds carry L, so chunk 1..64 and any K, V work unchanged.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda/convert.cuh"
#include "cuda/delta_rule.h"

namespace resona::cuda {
namespace {

constexpr int kThreads = 256;  // 16 x 16 threads per block
constexpr int kBM = 64;        // rows of an output tile: 4 per thread, 16 apart
constexpr int kBK = 16;        // contraction steps staged at a time
constexpr int kC = static_cast<int>(kDeltaMaxChunk);
constexpr int kLd = kC + 1;                // row stride of the C x C matrices in shared memory
constexpr int kStateCols = 32;             // columns of S / d_S per block of the sequential kernels
constexpr int kOutCols = 64;               // columns of o per block of the output kernel
constexpr int kGradCols = 32;              // columns of V per step of the gradient kernel
constexpr int kStateTN = kStateCols / 16;  // output columns per thread in those products
constexpr int kGradTN = kGradCols / 16;
static_assert(kC == kBM, "one output tile covers the rows of a chunk");
static_assert(kStateCols % 16 == 0 && kStateTN >= 1 && kStateTN <= 4, "16..64 state columns");
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

// ---- (1) the WY matrices of a chunk ----
//
// Shared memory: Stage, G and N [64][kLd], beta [64].
constexpr size_t kWySmem = sizeof(Stage) + (2 * kC * kLd + kC) * sizeof(float);

template <class T>
__global__ void __launch_bounds__(kThreads)
    delta_rule_wy_kernel(DeltaRuleInputs in, int64_t NC, float* __restrict__ W,
                         float* __restrict__ U, float* __restrict__ P, float* __restrict__ N_out,
                         float* __restrict__ G_out) {
  extern __shared__ __align__(16) unsigned char delta_smem[];
  Stage& st = *reinterpret_cast<Stage*>(delta_smem);
  float* G = reinterpret_cast<float*>(delta_smem + sizeof(Stage));
  float* Nm = G + kC * kLd;
  float* bs = Nm + kC * kLd;
  const ChunkAt c = chunk_at(in, blockIdx.x / NC, blockIdx.x % NC);
  const int L = c.L, K = static_cast<int>(in.K), V = static_cast<int>(in.V);
  const int tid = threadIdx.x;
  const RowsView<T> k = rows<T>(in.k, in.k_strides, c);
  const RowsView<T> q = rows<T>(in.q, in.q_strides, c);
  prefetch_rows(k, L, 0, K);
  prefetch_rows(q, L, 0, K);
  if (U != nullptr) prefetch_rows(rows<T>(in.v, in.v_strides, c), L, 0, V);
  const T* beta = static_cast<const T*>(in.beta) + c.b * in.beta_strides[0] +
                  c.t0 * in.beta_strides[1] + c.h * in.beta_strides[2];
  for (int i = tid; i < kC; i += kThreads)
    bs[i] = i < L ? to_f32(beta[i * in.beta_strides[1]]) : 0.f;

  // G = k k^T
  float acc[4][4];
  zero(acc);
  gemm_acc<4, true, false>(
      acc, 0, 0, L, L, K, k, [&](int x, int j) { return k(j, x); }, st);
  for_each_out(acc, 0, 0, L, L, [&](int i, int j, float g) { G[i * kLd + j] = g; });
  __syncthreads();

  // Column c of N = (I + tril(diag(beta) G, -1))^-1: N_cc = 1, zero above, and below
  // N_ic = -beta_i sum_{c <= j < i} G_ij N_jc (row i of M N = I).
  if (tid < L) {
    const int col = tid;
    for (int i = 0; i < col; ++i) Nm[i * kLd + col] = 0.f;
    Nm[col * kLd + col] = 1.f;
    for (int i = col + 1; i < L; ++i) {
      float x = 0.f;
      for (int j = col; j < i; ++j) x = fmaf(G[i * kLd + j], Nm[j * kLd + col], x);
      Nm[i * kLd + col] = -bs[i] * x;
    }
  }
  __syncthreads();

  const int64_t chunk = c.bh * NC + c.n;
  const int64_t C = in.C;
  if (N_out != nullptr) {
    for (int e = tid; e < L * L; e += kThreads) {
      const int i = e / L, j = e % L;
      N_out[chunk * C * C + i * C + j] = Nm[i * kLd + j];
      G_out[chunk * C * C + i * C + j] = G[i * kLd + j];
    }
  }
  // T = N diag(beta): T_ij = N_ij beta_j (zero above the diagonal, as N is).
  auto Tm = [&](int i, int j) { return Nm[i * kLd + j] * bs[j]; };
  for (int n0 = 0; n0 < K; n0 += 64) {
    zero(acc);
    gemm_acc<4, true, true>(acc, 0, n0, L, K, L, Tm, k, st);
    for_each_out(acc, 0, n0, L, K,
                 [&](int i, int j, float w) { W[(chunk * C + i) * in.K + j] = w; });
  }
  if (U != nullptr) {
    const RowsView<T> v = rows<T>(in.v, in.v_strides, c);
    for (int n0 = 0; n0 < V; n0 += 64) {
      zero(acc);
      gemm_acc<4, true, true>(acc, 0, n0, L, V, L, Tm, v, st);
      for_each_out(acc, 0, n0, L, V,
                   [&](int i, int j, float u) { U[(chunk * C + i) * in.V + j] = u; });
    }
  }
  zero(acc);
  gemm_acc<4, true, false>(
      acc, 0, 0, L, L, K, q, [&](int x, int j) { return k(j, x); }, st);
  for_each_out(acc, 0, 0, L, L,
               [&](int i, int j, float p) { P[chunk * C * C + i * C + j] = j <= i ? p : 0.f; });
}

// ---- (2) forward: the chunks in order, one 32-column tile of S per block ----
//
// Shared memory: Stage, S [K][32], V' [64][32].
size_t state_smem(int64_t K) { return sizeof(Stage) + (K + kC) * kStateCols * sizeof(float); }

template <class T>
__global__ void __launch_bounds__(kThreads)
    delta_rule_fwd_state_kernel(DeltaRuleInputs in, int64_t NC, const float* __restrict__ W,
                                const float* __restrict__ U, float* __restrict__ Vn,
                                float* __restrict__ states, float* __restrict__ S_T) {
  extern __shared__ __align__(16) unsigned char delta_smem[];
  Stage& st = *reinterpret_cast<Stage*>(delta_smem);
  float* S = reinterpret_cast<float*>(delta_smem + sizeof(Stage));
  float* Vs = S + in.K * kStateCols;
  const int64_t n_tiles = (in.V + kStateCols - 1) / kStateCols;
  const int64_t bh = blockIdx.x / n_tiles;
  const int v0 = static_cast<int>(blockIdx.x % n_tiles) * kStateCols;
  const int K = static_cast<int>(in.K), vw = imin(kStateCols, static_cast<int>(in.V) - v0);
  const int64_t b = bh / in.H, h = bh % in.H, KV = in.K * in.V, C = in.C;
  const int tid = threadIdx.x;
  for (int e = tid; e < K * kStateCols; e += kThreads) {
    const int x = e / kStateCols, j = e % kStateCols;
    float s = 0.f;
    if (in.h0 != nullptr && j < vw) {
      s = load_state(in.h0, in.h0_dtype,
                     b * in.h0_strides[0] + h * in.h0_strides[1] + x * in.h0_strides[2] +
                         (v0 + j) * in.h0_strides[3]);
    }
    S[e] = s;
  }
  // The operands of chunk n (W, the tile of U, k) into L2, one chunk ahead.
  auto prefetch_chunk = [&](int64_t n) {
    if (n >= NC) return;
    const ChunkAt c = chunk_at(in, bh, n);
    const int64_t chunk = bh * NC + n;
    prefetch_bytes(W + chunk * C * in.K, c.L * in.K * sizeof(float), tid, kThreads);
    prefetch_rows(RowsView<float>{U + chunk * C * in.V, in.V, 1}, c.L, v0, vw);
    prefetch_rows(rows<T>(in.k, in.k_strides, c), c.L, 0, K);
  };
  prefetch_chunk(0);
  __syncthreads();
  float acc[4][kStateTN];
  for (int64_t n = 0; n < NC; ++n) {
    const ChunkAt c = chunk_at(in, bh, n);
    const int L = c.L;
    const int64_t chunk = bh * NC + n;
    prefetch_chunk(n + 1);
    float* s_n = states + chunk * KV;
    for (int e = tid; e < K * kStateCols; e += kThreads) {
      const int x = e / kStateCols, j = e % kStateCols;
      if (j < vw) s_n[x * in.V + v0 + j] = S[e];
    }
    // V' = U - W S
    const float* Wn = W + chunk * C * in.K;
    const float* Un = U + chunk * C * in.V;
    float* Vnn = Vn + chunk * C * in.V;
    zero(acc);
    gemm_acc<kStateTN, true, true>(
        acc, 0, 0, L, vw, K, [&](int i, int x) { return Wn[i * in.K + x]; },
        [&](int x, int j) { return S[x * kStateCols + j]; }, st);
    for_each_out(acc, 0, 0, L, vw, [&](int i, int j, float ws) {
      const float y = Un[i * in.V + v0 + j] - ws;
      Vs[i * kStateCols + j] = y;
      Vnn[i * in.V + v0 + j] = y;
    });
    __syncthreads();
    // S += k^T V'
    const RowsView<T> k = rows<T>(in.k, in.k_strides, c);
    for (int m0 = 0; m0 < K; m0 += kBM) {
      zero(acc);
      gemm_acc<kStateTN, false, true>(
          acc, m0, 0, K, vw, L, [&](int x, int i) { return k(i, x); },
          [&](int i, int j) { return Vs[i * kStateCols + j]; }, st);
      for_each_out(acc, m0, 0, K, vw, [&](int x, int j, float kv) { S[x * kStateCols + j] += kv; });
    }
    __syncthreads();
  }
  for (int e = tid; e < K * kStateCols; e += kThreads) {
    const int x = e / kStateCols, j = e % kStateCols;
    if (j < vw) S_T[bh * KV + x * in.V + v0 + j] = S[e];
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

// ---- (2') backward: the chunks in reverse, one 32-column tile of d_S per block ----

// d_o and its strides, by value.
struct DoView {
  const void* p;
  int64_t s[4];
};

template <class T>
__global__ void __launch_bounds__(kThreads)
    delta_rule_bwd_state_kernel(DeltaRuleInputs in, int64_t NC, DoView d_o,
                                const float* __restrict__ P, const float* __restrict__ W,
                                const float* __restrict__ d_S_T, float* __restrict__ dVn,
                                float* __restrict__ dstates, void* d_h0) {
  extern __shared__ __align__(16) unsigned char delta_smem[];
  Stage& st = *reinterpret_cast<Stage*>(delta_smem);
  float* dS = reinterpret_cast<float*>(delta_smem + sizeof(Stage));
  float* dVs = dS + in.K * kStateCols;
  const int64_t n_tiles = (in.V + kStateCols - 1) / kStateCols;
  const int64_t bh = blockIdx.x / n_tiles;
  const int v0 = static_cast<int>(blockIdx.x % n_tiles) * kStateCols;
  const int K = static_cast<int>(in.K), vw = imin(kStateCols, static_cast<int>(in.V) - v0);
  const int64_t KV = in.K * in.V, C = in.C;
  const int tid = threadIdx.x;
  const float scale = in.scale;
  for (int e = tid; e < K * kStateCols; e += kThreads) {
    const int x = e / kStateCols, j = e % kStateCols;
    dS[e] = j < vw ? d_S_T[bh * KV + x * in.V + v0 + j] : 0.f;
  }
  // The operands of chunk n (P, W, k, q, the tile of d_o) into L2, one chunk ahead.
  auto prefetch_chunk = [&](int64_t n) {
    if (n < 0) return;
    const ChunkAt c = chunk_at(in, bh, n);
    const int64_t chunk = bh * NC + n;
    prefetch_bytes(P + chunk * C * C, c.L * C * sizeof(float), tid, kThreads);
    prefetch_bytes(W + chunk * C * in.K, c.L * in.K * sizeof(float), tid, kThreads);
    prefetch_rows(rows<T>(in.k, in.k_strides, c), c.L, 0, K);
    prefetch_rows(rows<T>(in.q, in.q_strides, c), c.L, 0, K);
    prefetch_rows(rows<T>(d_o.p, d_o.s, c), c.L, v0, vw);
  };
  prefetch_chunk(NC - 1);
  __syncthreads();
  float acc[4][kStateTN];
  for (int64_t n = NC - 1; n >= 0; --n) {
    const ChunkAt c = chunk_at(in, bh, n);
    const int L = c.L;
    const int64_t chunk = bh * NC + n;
    prefetch_chunk(n - 1);
    float* ds_n = dstates + chunk * KV;
    for (int e = tid; e < K * kStateCols; e += kThreads) {
      const int x = e / kStateCols, j = e % kStateCols;
      if (j < vw) ds_n[x * in.V + v0 + j] = dS[e];
    }
    const RowsView<T> dO = rows<T>(d_o.p, d_o.s, c);
    const RowsView<T> k = rows<T>(in.k, in.k_strides, c);
    const RowsView<T> q = rows<T>(in.q, in.q_strides, c);
    const float* Pn = P + chunk * C * C;
    const float* Wn = W + chunk * C * in.K;
    float* dVnn = dVn + chunk * C * in.V;
    // d_V' = scale P^T d_o + k d_S
    zero(acc);
    gemm_acc<kStateTN, false, true>(
        acc, 0, 0, L, vw, L, [&](int i, int j) { return scale * Pn[j * C + i]; },
        [&](int j, int jj) { return dO(j, v0 + jj); }, st);
    gemm_acc<kStateTN, true, true>(
        acc, 0, 0, L, vw, K, k, [&](int x, int j) { return dS[x * kStateCols + j]; }, st);
    for_each_out(acc, 0, 0, L, vw, [&](int i, int j, float d) {
      dVs[i * kStateCols + j] = d;
      dVnn[i * in.V + v0 + j] = d;
    });
    __syncthreads();
    // d_S += scale q^T d_o - W^T d_V'
    for (int m0 = 0; m0 < K; m0 += kBM) {
      zero(acc);
      gemm_acc<kStateTN, false, true>(
          acc, m0, 0, K, vw, L, [&](int x, int i) { return scale * q(i, x); },
          [&](int i, int j) { return dO(i, v0 + j); }, st);
      gemm_acc<kStateTN, false, true>(
          acc, m0, 0, K, vw, L, [&](int x, int i) { return -Wn[i * in.K + x]; },
          [&](int i, int j) { return dVs[i * kStateCols + j]; }, st);
      for_each_out(acc, m0, 0, K, vw, [&](int x, int j, float d) { dS[x * kStateCols + j] += d; });
    }
    __syncthreads();
  }
  if (d_h0 != nullptr) {
    for (int e = tid; e < K * kStateCols; e += kThreads) {
      const int x = e / kStateCols, j = e % kStateCols;
      if (j < vw) store_state(d_h0, in.h0_dtype, bh * KV + x * in.V + v0 + j, dS[e]);
    }
  }
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
  const int64_t n_tiles = (in.V + kStateCols - 1) / kStateCols;
  const int64_t blocks =
      in.B * in.H * ((in.T + in.C - 1) / in.C > n_tiles ? (in.T + in.C - 1) / in.C : n_tiles);
  if (blocks > 0x7fffffff) return "delta_rule CUDA: B * H * max(T / C, V / 32) above 2^31 - 1";
  if (in.h0_dtype != KernelDType::kFloat32 && in.h0_dtype != in.dtype) {
    return "delta_rule CUDA: h0 must be float32 or the inputs' dtype";
  }
  return nullptr;
}

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
    return "delta_rule CUDA: K too large for the shared-memory state tile of this device";
  }
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(bytes)) != cudaSuccess) {
    return last_error();
  }
  return nullptr;
}

int64_t num_chunks(const DeltaRuleInputs& in) { return (in.T + in.C - 1) / in.C; }

template <class T>
const char* fwd_impl(const DeltaRuleFwdParams& p, cudaStream_t stream) {
  const DeltaRuleInputs& in = p.in;
  const int64_t NC = num_chunks(in), BH = in.B * in.H;
  if (BH == 0) return nullptr;
  Scratch s;
  layout(in, true, static_cast<float*>(p.scratch), s);
  const char* err = nullptr;
  if (NC > 0) {
    if ((err = allow_smem(delta_rule_wy_kernel<T>, kWySmem))) return err;
    delta_rule_wy_kernel<T><<<static_cast<unsigned>(BH * NC), kThreads, kWySmem, stream>>>(
        in, NC, s.W, s.U, s.P, nullptr, nullptr);
    if ((err = last_error())) return err;
  }
  const int64_t n_tiles = (in.V + kStateCols - 1) / kStateCols;
  const size_t smem = state_smem(in.K);
  if ((err = allow_smem(delta_rule_fwd_state_kernel<T>, smem))) return err;
  delta_rule_fwd_state_kernel<T><<<static_cast<unsigned>(BH * n_tiles), kThreads, smem, stream>>>(
      in, NC, s.W, s.U, s.Vn, p.states, p.S_T);
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
    if ((err = allow_smem(delta_rule_wy_kernel<T>, kWySmem))) return err;
    delta_rule_wy_kernel<T><<<static_cast<unsigned>(BH * NC), kThreads, kWySmem, stream>>>(
        in, NC, s.W, nullptr, s.P, s.N, s.G);
    if ((err = last_error())) return err;
  }
  const int64_t n_tiles = (in.V + kStateCols - 1) / kStateCols;
  const size_t smem = state_smem(in.K);
  if ((err = allow_smem(delta_rule_bwd_state_kernel<T>, smem))) return err;
  delta_rule_bwd_state_kernel<T><<<static_cast<unsigned>(BH * n_tiles), kThreads, smem, stream>>>(
      in, NC, d_o, s.P, s.W, p.d_S_T, s.dVn, s.dstates, p.d_h0);
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
