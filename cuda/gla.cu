// Chunked GLA kernels (the algorithm and the maps are in cuda/gla.h).
//
// gla_chunk_state_kernel block (b, h, chunk): the chunk's state term (U_n forward, W_n
//                        backward, tensor cores) and decays, into the state slots
// gla_state_scan_kernel  thread (b, h, state element): chunks in order (forward: states[n],
//                        S_T) or reverse (backward: end-state gradients d_states[n], d_h0)
// gla_fwd_kernel         block (b, h, chunk): A [64, 64] from 32-channel key tiles, then
//                        o per 32-column value piece (tensor cores)
// gla_bwd_dv_kernel      block (b, h, chunk): with the forward's A, per value piece d_v
//                        and the sums of d_A (to scratch) on tensor cores
// gla_bwd_dqkg_kernel    block (b, h, chunk, 32-channel key tile): d_q, d_k, d_g (the
//                        state terms d_o S0^T and v d_S^T and the intra-chunk products
//                        with d_A on tensor cores)
// gla_bwd_gate_sum_kernel  thread (b, t, h): d_g of a per-head gate, channels in order
//
// A chunk is held as a 64-row tile whatever C is (rows >= L are zeros, with g = 0 so the
// cumulative gate stays flat). 256 threads; in gla_bwd_dqkg_kernel's CUDA-core part thread
// (tid / 16, tid % 16) owns 4 rows x 2 channels of a [64, 32] key tile. Gates are
// converted to log2 units on load, so every decay factor is one exp2f of a difference
// (<= 0, or at most kMaxSpread2 in a factored diagonal sub-chunk).
//
// Dense chunk products run on tensor cores with TF32 operands (10-bit mantissa, float32's
// exponent range) and float32 accumulation: A's tiles (ATiles), o = scale (q * exp(G)) S0
// + A v, d_v = A^T d_o + (k * exp(G_last - G)) d_S, d_A = d_o v^T, d_o S0^T and v d_S^T
// through mma.sync: A's tiles from the chunk tiles in shared memory (cuda/mma.cuh), the
// value-side products through cuda/tile_mma.cuh's warp_mma on operands staged with
// cp.async a piece of the values at a time, results stored from the accumulators; the
// chunks' state terms in 3xTF32 (float32 accuracy, for the float32 state recurrences)
// under float32 storage and in TF32 under bfloat16 storage. Both storage dtypes take TF32: the
// operands are float32 values formed on chip (inputs times decay factors, A, d_A, the float32
// states), and rounding them to bfloat16 for bf16 MMA would add an error of the size of the storage
// rounding itself (2^-8 against TF32's 2^-11). The intra-chunk parts of d_q and d_k are d_A times
// the scaled key and query tiles on tensor cores too; a diagonal sub-chunk whose gates spread too
// far for the factored form stays float32 FMA, pair by pair.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "cuda/convert.cuh"
#include "cuda/cp_async.cuh"
#include "cuda/fast_exp.cuh"
#include "cuda/gla.h"
#include "cuda/mma.cuh"
#include "cuda/tile_mma.cuh"
#include "cuda/vec_io.cuh"

namespace resona::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kRows = 64;        // rows of a chunk tile, the largest chunk
constexpr int kSub = 16;         // rows of a sub-chunk
constexpr int kKT = 32;          // key channels per tile
constexpr int kLdT = kKT + 1;    // row stride of [kRows][kKT] tiles: odd, so column walks
                                 // by one warp hit 32 different banks
constexpr int kLd4 = 68;         // row stride of 64-wide tiles read as float4: a multiple of
                                 // 4 (16-byte rows) whose rows 4 apart fall in other banks
constexpr int kLdS = kKT + 4;    // row stride of gla_bwd_dqkg_kernel's [kRows][kKT] dq0 / dk0
constexpr int kChunkBlocks = 2;  // resident blocks per SM of gla_fwd_kernel and gla_bwd_dv_kernel
                                 // they are built for (registers; the shared memory allows
                                 // two up to K = 96, see ChunkSmem)
constexpr int kDqkgBlocks = 3;   // the same for gla_bwd_dqkg_kernel (67 KB of shared memory;
                                 // 80 registers spill 24 bytes, yet it runs 4-7% faster than
                                 // two blocks of 128 registers)
constexpr int kPairs = 6;        // sub-chunk pairs J < I of a 64-row tile
static_assert(kGlaMaxChunk == kRows, "the chunk tile holds the largest chunk");
static_assert(kRows == 4 * kSub && kSub == 16, "sub-chunk pairs and 4-row blocks assume 4 x 16");
static_assert(kThreads == 256, "thread maps assume 16 x 16 threads");
static_assert(kThreads / 8 == kKT, "the column scan covers the 32 columns of a tile");

// One (b, h) sequence of a [B, T, H, N] input: element (t, c) at p[t * st + c * sc].
template <class T>
struct SeqIn {
  const T* p;
  int64_t st, sc;
};

template <class T>
__device__ __forceinline__ SeqIn<T> seq(const GlaInput& x, int64_t b, int64_t h) {
  return {static_cast<const T*>(x.data) + b * x.strides[0] + h * x.strides[2], x.strides[1],
          x.strides[3]};
}

__device__ __forceinline__ int64_t num_chunks(int64_t T, int64_t C) { return (T + C - 1) / C; }

// Key channels rounded up to whole kKT-channel tiles.
__host__ __device__ __forceinline__ int k_pad(int64_t K) {
  return static_cast<int>((K + kKT - 1) / kKT * kKT);
}

__device__ __forceinline__ float4 ld4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}

constexpr int kTK = 8;  // inner length of one TF32 MMA step (m16n8k8)

// v[u] = the element at p (zero unless `in` and row + u step < L), p advancing step rows
// each time: kPer loads down a column of a [T, .] input, all issued before the caller
// stores any of them (stores to shared memory could alias the input for all the compiler
// knows, so loads placed after them would wait one by one).
template <int kPer, class T>
__device__ __forceinline__ void load_column(const T*& p, int64_t st, int step, bool in, int row,
                                            int L, float (&v)[kPer]) {
#pragma unroll
  for (int u = 0; u < kPer; ++u) {
    v[u] = in && row + u * step < L ? to_f32(*p) : 0.f;
    p += step * st;
  }
}

// In place, down the 32 columns of a [kRows][ld] tile: inclusive prefix sums (kReverse:
// suffix sums, x_i = sum_{r >= i} x_r). Thread (column tid / 8, segment tid % 8) sums its 8
// rows in registers; the 8 segments of a column sit in adjacent lanes and pass their
// totals with width-8 shuffles. Then f(row, column, sum, column total) for each of the
// thread's elements (the total is the sum down the whole column).
template <bool kReverse, class F>
__device__ __forceinline__ void column_scan(float* x, int ld, F&& f) {
  const int seg = threadIdx.x & 7, col = threadIdx.x >> 3;
  float v[8];
#pragma unroll
  for (int r = 0; r < 8; ++r) v[r] = x[(8 * seg + r) * ld + col];
#pragma unroll
  for (int r = 1; r < 8; ++r) {
    if (kReverse) {
      v[7 - r] += v[8 - r];
    } else {
      v[r] += v[r - 1];
    }
  }
  float incl = kReverse ? v[0] : v[7];  // then the sum over this and the earlier segments
#pragma unroll
  for (int d = 1; d < 8; d <<= 1) {
    if (kReverse) {
      const float u = __shfl_down_sync(0xffffffffu, incl, d, 8);
      if (seg + d < 8) incl += u;
    } else {
      const float u = __shfl_up_sync(0xffffffffu, incl, d, 8);
      if (seg >= d) incl += u;
    }
  }
  float excl = kReverse ? __shfl_down_sync(0xffffffffu, incl, 1, 8)
                        : __shfl_up_sync(0xffffffffu, incl, 1, 8);
  if (seg == (kReverse ? 7 : 0)) excl = 0.f;
  const float total = __shfl_sync(0xffffffffu, incl, kReverse ? 0 : 7, 8);
#pragma unroll
  for (int r = 0; r < 8; ++r) {
    v[r] += excl;
    x[(8 * seg + r) * ld + col] = v[r];
    f(8 * seg + r, col, v[r], total);
  }
}

struct NoOp {
  __device__ __forceinline__ void operator()(int, int, float, float) const {}
};

// ---- the [64, 32] tiles of one chunk and key tile -----------------------------------

// q, k, G (cumulative log2 gate), Qs_ic = q_ic 2^(G_ic - G_{16I,c}) (I the row's
// sub-chunk), Ks_jc = k_jc 2^(G_{16(J+1),c} - G_jc) (J < 3), Kd_jc = k_jc 2^(G_{16J,c} - G_jc),
// each [kRows][kLdT]; M [kPairs][kKT] with M_IJ,c = 2^(G_{16I,c} - G_{16(J+1),c}) for J < I,
// pair index I (I - 1) / 2 + J; factored [4]: 1 where sub-chunk I's gates spread at most
// kMaxSpread2 over its rows in every channel, so that its diagonal block is the product
// Qs Kd^T (each Kd factor <= 2^kMaxSpread2, each product <= 1 on and below the
// diagonal), else 0 (formed pair by pair).
struct Tiles {
  float *q, *k, *G, *Qs, *Ks, *Kd, *M, *factored;
};
constexpr int kTileFloats = kRows * kLdT;
// Rounded up to 8 floats: the regions after the tiles stay 32-byte aligned (wmma tiles).
constexpr int kTilesFloats = (6 * kTileFloats + kPairs * kKT + kRows / kSub + 7) / 8 * 8;
// 40 in natural-log units, as ops/gla.cc's kMaxSpread: Kd factors up to e^40 keep the
// masked products above the diagonal (never used) finite, and no factor is subnormal.
constexpr float kMaxSpread2 = 40.f * kLog2e;

__device__ __forceinline__ Tiles carve_tiles(float* base) {
  return {base,
          base + kTileFloats,
          base + 2 * kTileFloats,
          base + 3 * kTileFloats,
          base + 4 * kTileFloats,
          base + 5 * kTileFloats,
          base + 6 * kTileFloats,
          base + 6 * kTileFloats + kPairs * kKT};
}

__device__ __forceinline__ int pair_index(int I, int J) { return I * (I - 1) / 2 + J; }

// Qs, Ks, Kd, M and factored from the tiles q, k and G (see Tiles). Ends with the block in
// step.
__device__ __forceinline__ void derive_chunk_tiles(const Tiles& s) {
  for (int idx = threadIdx.x; idx < kRows * kKT; idx += kThreads) {
    const int i = idx / kKT, c = idx % kKT;
    const int first = i & ~(kSub - 1);  // first row of i's sub-chunk
    const float Gi = s.G[i * kLdT + c], Gf = s.G[first * kLdT + c];
    const float ki = s.k[i * kLdT + c];
    s.Qs[i * kLdT + c] = s.q[i * kLdT + c] * exp2f(Gi - Gf);
    s.Ks[i * kLdT + c] =
        first + kSub < kRows ? ki * exp2f(s.G[(first + kSub) * kLdT + c] - Gi) : 0.f;
    // Used only where the spread is within kMaxSpread2; the clamp keeps it finite elsewhere.
    s.Kd[i * kLdT + c] = ki * exp2f(fminf(Gf - Gi, kMaxSpread2));
  }
  for (int idx = threadIdx.x; idx < kPairs * kKT; idx += kThreads) {
    const int pr = idx / kKT, c = idx % kKT;
    const int I = pr < 1 ? 1 : (pr < 3 ? 2 : 3), J = pr - I * (I - 1) / 2;
    s.M[idx] = exp2f(s.G[I * kSub * kLdT + c] - s.G[(J + 1) * kSub * kLdT + c]);
  }
  if (threadIdx.x < 32 * (kRows / kSub)) {  // warp I judges sub-chunk I, lane c channel c
    const int I = threadIdx.x / 32, c = threadIdx.x % 32;
    const float spread = s.G[I * kSub * kLdT + c] - s.G[(I * kSub + kSub - 1) * kLdT + c];
    const bool ok = __all_sync(0xffffffffu, spread <= kMaxSpread2);
    if (c == 0) s.factored[I] = ok ? 1.f : 0.f;
  }
  __syncthreads();
}

// Rows [t0, t0 + L) and channels [k0, k0 + kKT) of q, k, g into the tiles (zeros outside),
// then G, Qs, Ks, Kd, M and factored; without kAll, k, g and G only. Starts and ends with
// the block in step.
template <bool kAll = true, class T>
__device__ void load_chunk_tiles(const SeqIn<T>& q, const SeqIn<T>& k, const SeqIn<T>& g,
                                 int64_t t0, int L, int k0, int K, const Tiles& s) {
  {
    // Thread: column c, rows r, r + 8, ... (three pointers walk down the rows), in two
    // rounds of kPer rows through load_column (one round would take 24 registers, which
    // the callers' accumulators leave only some kernels).
    constexpr int kStep = kThreads / kKT, kPer = kRows / kStep / 2;
    const int c = threadIdx.x % kKT, r = threadIdx.x / kKT;
    const bool cin = k0 + c < K;
    [[maybe_unused]] const T* qp = q.p + (t0 + r) * q.st + (k0 + c) * q.sc;
    const T* kp = k.p + (t0 + r) * k.st + (k0 + c) * k.sc;
    const T* gp = g.p + (t0 + r) * g.st + (k0 + c) * g.sc;
#pragma unroll
    for (int i0 = r; i0 < kRows; i0 += kPer * kStep) {
      float qv[kPer], kv[kPer], gv[kPer];
      if constexpr (kAll) load_column(qp, q.st, kStep, cin, i0, L, qv);
      load_column(kp, k.st, kStep, cin, i0, L, kv);
      load_column(gp, g.st, kStep, cin, i0, L, gv);
#pragma unroll
      for (int u = 0; u < kPer; ++u) {
        const int i = i0 + u * kStep;
        if constexpr (kAll) s.q[i * kLdT + c] = qv[u];
        s.k[i * kLdT + c] = kv[u];
        s.G[i * kLdT + c] = gv[u] * kLog2e;
      }
    }
  }
  __syncthreads();
  column_scan<false>(s.G, kLdT, NoOp{});
  __syncthreads();
  if constexpr (kAll) derive_chunk_tiles(s);
}

// ---- chunk states: per-chunk products, then a scan over the chunks ----------------------

// The state recurrences in two steps. (1) Per (b, h, chunk n) in parallel, the chunk's own
// term X_n^T Y_n ([K, V]) on tensor cores and its decay 2^(G_last) per key:
//   forward   X = k * 2^(G_last - G), Y = v      (U_n: S_end = diag(2^G_last) S0 + U_n)
//   backward  X = scale q * 2^G,     Y = d_o    (W_n: d_S of chunk n - 1 =
//                                                 diag(2^G_last) d_S of chunk n + W_n)
// (2) per state element, the chunks in order (reverse in backward): one FMA per chunk,
// every load of a group of kScanAhead chunks issued before its stores.
// Slots: the forward writes U_n to states[n + 1] (S_T for the last chunk), which the scan
// then replaces by the state entering chunk n + 1; the backward writes W_n to
// d_states[n - 1] (d_h0 for chunk 0, or nowhere when d_h0 is not wanted), which the scan
// replaces by the gradient of chunk n - 1's end state.
struct StateJob {
  int64_t B, T, H, K, V, C;
  GlaInput x, g, y;
  float x_scale;       // 1 forward, scale backward
  float* slots;        // [B, H, NC, K, V]
  float* edge;         // S_T (forward) or d_h0 (backward, may be null)
  const float* start;  // h0 (forward, may be null) or d_S_T (backward)
  float* decay;        // [B, H, NC, K]: 2^(G_last) per chunk and key
};

constexpr int kStateBlocks = 3;  // resident blocks per SM gla_chunk_state_kernel is built for
constexpr int kScanAhead = 8;    // chunks whose loads are in flight at once in the scan
constexpr int kYCols = 160;      // value columns of Y staged at once (a multiple of 32)

// Shared memory of gla_chunk_state_kernel: X [kRows][Kpad + 8] and a region that first
// holds the cumulative gates of a 32-key group [kRows][kLdT], then a Y tile
// [kRows][kYCols + 8] in the inputs' dtype (sized for float32). Row strides of 8 (mod 32)
// floats make the fragment loads conflict-free (lane (g, t) reads row t, column g: bank
// 8 t + g; under bfloat16 rows t are 20 t words apart, lanes g and g + 1 share a word).
__host__ __device__ constexpr int state_y_floats() {
  return kRows * (kYCols + 8) > kTileFloats ? kRows * (kYCols + 8) : kTileFloats;
}
size_t chunk_state_smem_bytes(int64_t K) {
  return sizeof(float) * (kRows * (k_pad(K) + 8) + state_y_floats());
}

// Block (b, h, chunk n). Phase 1, per 32-key group: x and g in (rows >= L and keys >= K
// as zeros), G by a column scan, X = x_scale x 2^(G_last - G) (forward) or x_scale x 2^G
// (backward) in place, decay = 2^(G_last). Phase 2, per Y tile of up to kYCols columns
// (under bfloat16 staged whole by cp.async, all of its copies in flight at once): warp w takes the
// 32-key x 32-value output tiles w, w + 8, ..., each as 2 x 4 mma tiles of 16 x 8 over the 64 rows
// in steps of 8 (3xTF32 under float32 storage, operands split as they are loaded; one TF32 product
// under bfloat16), and stores its results straight from the accumulators.
template <class T, bool kBwd>
__global__ void __launch_bounds__(kThreads, kStateBlocks) gla_chunk_state_kernel(const StateJob j) {
  extern __shared__ __align__(128) float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const int64_t NC = num_chunks(j.T, j.C);
  const int64_t n = blockIdx.x % NC, bh = blockIdx.x / NC;
  const int64_t b = bh / j.H, h = bh % j.H;
  const int64_t t0 = n * j.C;
  const int L = static_cast<int>(j.C < j.T - t0 ? j.C : j.T - t0);
  const int K = static_cast<int>(j.K), V = static_cast<int>(j.V);
  const int Kpad = k_pad(j.K), ldx = Kpad + 8;
  const SeqIn<T> x = seq<T>(j.x, b, h), g = seq<T>(j.g, b, h), y = seq<T>(j.y, b, h);
  // Where this chunk's term goes (nullptr: nowhere).
  float* dst = nullptr;
  if (!kBwd) dst = n + 1 < NC ? j.slots + (bh * NC + n + 1) * j.K * j.V : j.edge + bh * j.K * j.V;
  if (kBwd) {
    dst = n > 0 ? j.slots + (bh * NC + n - 1) * j.K * j.V
                : (j.edge != nullptr ? j.edge + bh * j.K * j.V : nullptr);
  }
  float* Xs = smem;                                  // [kRows][ldx]
  T* Ys = reinterpret_cast<T*>(smem + kRows * ldx);  // [kRows][kYCols + 8], the inputs' dtype
  float* Gs = smem + kRows * ldx;                    // [kRows][kLdT], phase 1 only
  constexpr int ldy = kYCols + 8;

  const int lc = threadIdx.x % 32, lr = threadIdx.x / 32;  // load map: column, first row
  constexpr int kRowStep = kThreads / 32;
  for (int k0 = 0; k0 < Kpad; k0 += kKT) {
    {
      constexpr int kPer = kRows / kRowStep / 2;  // two rounds (registers: 3 blocks per SM)
      const bool cin = k0 + lc < K;
      const T* xp = x.p + (t0 + lr) * x.st + (k0 + lc) * x.sc;
      const T* gp = g.p + (t0 + lr) * g.st + (k0 + lc) * g.sc;
#pragma unroll
      for (int i0 = lr; i0 < kRows; i0 += kPer * kRowStep) {
        float xv[kPer], gv[kPer];
        load_column(xp, x.st, kRowStep, cin, i0, L, xv);
        load_column(gp, g.st, kRowStep, cin, i0, L, gv);
#pragma unroll
        for (int u = 0; u < kPer; ++u) {
          const int i = i0 + u * kRowStep;
          Xs[i * ldx + k0 + lc] = xv[u];
          Gs[i * kLdT + lc] = gv[u] * kLog2e;
        }
      }
    }
    __syncthreads();
    column_scan<false>(Gs, kLdT, NoOp{});
    __syncthreads();
    {
      const float Gl = Gs[(kRows - 1) * kLdT + lc];
#pragma unroll
      for (int i = lr; i < kRows; i += kRowStep) {
        const float Gi = Gs[i * kLdT + lc];
        Xs[i * ldx + k0 + lc] *= j.x_scale * exp2f(kBwd ? Gi : Gl - Gi);
      }
      if (lr == 0 && k0 + lc < K) j.decay[(bh * NC + n) * j.K + k0 + lc] = exp2f(Gl);
    }
    __syncthreads();
  }
  if (dst == nullptr) return;  // the same for the whole block

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, fg = lane / 4, ft = lane % 4;
  // 3xTF32 under float32 storage; one TF32 product under bfloat16, whose own rounding (2^-8)
  // is 8x TF32's (the low parts are then dead and not computed)
  constexpr bool kSplit = std::is_same_v<T, float>;
  for (int v0 = 0; v0 < V; v0 += kYCols) {
    const int w = V - v0 < kYCols ? V - v0 : kYCols, wpad = (w + 31) / 32 * 32;
    if constexpr (std::is_same_v<T, float>) {
      // 32 columns at a time through registers: staged by cp.async as under bfloat16 the
      // kernel measured 30% slower (H200, 102 -> 132 us at B=8 T=2048 H=4 K=75 V=150)
      for (int c = lc; c < wpad; c += 32) {
        constexpr int kPer = kRows / kRowStep;
        const T* yp = y.p + (t0 + lr) * y.st + (v0 + c) * y.sc;
        float yv[kPer];
        load_column(yp, y.st, kRowStep, c < w, lr, L, yv);
#pragma unroll
        for (int u = 0; u < kPer; ++u) Ys[(lr + u * kRowStep) * ldy + c] = yv[u];
      }
    } else {
      // the whole tile in flight at once (zeros past L and w): 92 -> 87 us
      stage_tile<kRows, kYCols, kThreads>(Ys, ldy, y.p + t0 * y.st + v0 * y.sc, y.st, y.sc, L, w);
      cp_async_commit();
      cp_async_wait<0>();
    }
    __syncthreads();
    const int nvt = wpad / 32, tiles = (Kpad / 32) * nvt;
    for (int tile = warp; tile < tiles; tile += kThreads / 32) {
      const int kb = (tile / nvt) * 32, vb = (tile % nvt) * 32;
      float acc[2][4][4] = {};
#pragma unroll 1
      for (int s = 0; s < kRows; s += kTK) {
        uint32_t ah[2][4], al[2][4], bh_[4][2], bl[4][2];
        const float* xr0 = Xs + (s + ft) * ldx + kb + fg;
        const float* xr1 = xr0 + 4 * ldx;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          split_tf32(xr0[16 * mt], ah[mt][0], al[mt][0]);
          split_tf32(xr0[16 * mt + 8], ah[mt][1], al[mt][1]);
          split_tf32(xr1[16 * mt], ah[mt][2], al[mt][2]);
          split_tf32(xr1[16 * mt + 8], ah[mt][3], al[mt][3]);
        }
        const T* yr0 = Ys + (s + ft) * ldy + vb + fg;
        const T* yr1 = yr0 + 4 * ldy;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          tf32_parts(yr0[8 * nt], bh_[nt][0], bl[nt][0]);
          tf32_parts(yr1[8 * nt], bh_[nt][1], bl[nt][1]);
        }
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) {
            if constexpr (kSplit) {
              mma_3xtf32_m16n8k8(acc[mt][nt], ah[mt], al[mt], bh_[nt], bl[nt]);
            } else {
              mma_tf32_m16n8k8(acc[mt][nt], ah[mt], bh_[nt]);
            }
          }
        }
      }
      // Element by element: store_tile's paired stores measured slower here (bf16 92 -> 98 us:
      // its alignment test cost the kernel 8 bytes of stack under its 128 registers).
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int key = kb + 16 * mt + fg + 8 * half;
          if (key >= K) continue;
          float* row = dst + static_cast<int64_t>(key) * j.V + v0;
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) {
            const int c = vb + 8 * nt + 2 * ft;
            if (c < w) row[c] = acc[mt][nt][2 * half];
            if (c + 1 < w) row[c + 1] = acc[mt][nt][2 * half + 1];
          }
        }
      }
    }
    __syncthreads();  // every warp is done with Ys
  }
}

// One thread per kE adjacent state elements e, e + 1, ... of [B * H, K * V] (one key,
// e % (K V) / V: kE = 2 needs V even and 8-byte aligned slots, edge and start).
// Forward: S = h0 (or 0); states[0] = S; for n = 1 .. NC - 1: S = decay[n - 1] S + U_{n-1}
// (held in states[n]), states[n] = S; S_T = decay[NC - 1] S + U_{NC-1} (held in S_T).
// Backward: d = d_S_T; for n = NC - 1 .. 0: d_states[n] = d; d = decay[n] d + W_n (held in
// d_states[n - 1], or d_h0 for n = 0); d_h0 = d (when wanted).
template <bool kBwd, int kE>
__global__ void gla_state_scan_kernel(const StateJob j) {
  const int64_t KV = j.K * j.V;
  const int64_t e = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kE;
  if (e >= j.B * j.H * KV) return;
  const int64_t NC = num_chunks(j.T, j.C);
  const int64_t bh = e / KV, r = e % KV, key = r / j.V;
  float* slot = j.slots + bh * NC * KV + r;
  const float* dec = j.decay + bh * NC * j.K + key;
  // x = d x + u, element by element
  auto step = [](float(&x)[kE], float d, const float(&u)[kE]) {
#pragma unroll
    for (int c = 0; c < kE; ++c) x[c] = d * x[c] + u[c];
  };
  if (!kBwd) {
    float S[kE] = {};
    if (j.start != nullptr) load_vec(j.start + e, S);
    if (NC == 0) {
      store_vec(j.edge + e, S);
      return;
    }
    store_vec(slot, S);
    // Step n (1 .. NC) reads U_{n-1} from states[n] (S_T for n = NC), writes there.
    for (int64_t n0 = 1; n0 <= NC; n0 += kScanAhead) {
      float u[kScanAhead][kE], d[kScanAhead];
#pragma unroll
      for (int a = 0; a < kScanAhead; ++a) {
        const int64_t n = n0 + a;
        if (n <= NC) {
          load_vec(n < NC ? slot + n * KV : j.edge + e, u[a]);
          d[a] = dec[(n - 1) * j.K];
        }
      }
#pragma unroll
      for (int a = 0; a < kScanAhead; ++a) {
        const int64_t n = n0 + a;
        if (n <= NC) {
          step(S, d[a], u[a]);
          store_vec(n < NC ? slot + n * KV : j.edge + e, S);
        }
      }
    }
    return;
  }
  float dS[kE];
  load_vec(j.start + e, dS);
  const bool to_h0 = j.edge != nullptr;
  // Step m (NC - 1 .. 0) writes d_states[m], then takes W_m from d_states[m - 1] (d_h0).
  for (int64_t m0 = NC - 1; m0 >= 0; m0 -= kScanAhead) {
    float w[kScanAhead][kE], d[kScanAhead];
#pragma unroll
    for (int a = 0; a < kScanAhead; ++a) {
      const int64_t m = m0 - a;
      if (m >= 0 && (m > 0 || to_h0)) {
        load_vec(m > 0 ? slot + (m - 1) * KV : j.edge + e, w[a]);
        d[a] = dec[m * j.K];
      }
    }
#pragma unroll
    for (int a = 0; a < kScanAhead; ++a) {
      const int64_t m = m0 - a;
      if (m >= 0) {
        store_vec(slot + m * KV, dS);
        if (m > 0 || to_h0) step(dS, d[a], w[a]);
      }
    }
  }
  if (to_h0) store_vec(j.edge + e, dS);
}

// ---- A on tensor cores -------------------------------------------------------------------

// The ten 16 x 16 tiles (I, J), J <= I, of a chunk's A, two per warp for warps 0 and 1,
// one for the others: tile u = warp + 8 e in row order (0,0), (1,0), (1,1), (2,0), ...
// Each is two m16n8 accumulators (columns 16 J .. + 7 and 16 J + 8 .. + 15), TF32 products
// of the scaled tiles over the 32 channels of each key group (see load_chunk_tiles):
//   J < I: Qs_I (Ks_J * M_IJ)^T;  J = I, factored: Qs_I Kd_I^T;  J = I otherwise: pair by
//   pair in float32, q_ic k_jc 2^(G_ic - G_jc) for j <= i.
struct ATiles {
  int count;
  int I[2], J[2];
  float acc[2][2][4];
};

__device__ __forceinline__ ATiles a_tiles_begin() {
  ATiles a{};
  const int warp = threadIdx.x / 32;
  constexpr int kLower = (kRows / kSub) * (kRows / kSub + 1) / 2;
  a.count = 0;
  for (int u = warp; u < kLower; u += kThreads / 32) {
    int I = 0;
    while ((I + 1) * (I + 2) / 2 <= u) ++I;
    a.I[a.count] = I;
    a.J[a.count] = u - I * (I + 1) / 2;
    ++a.count;
  }
  return a;
}

// Adds one key group's terms (tiles as load_chunk_tiles leaves them).
__device__ __forceinline__ void a_tiles_add(ATiles& a, const Tiles& s) {
  const int lane = threadIdx.x % 32, fg = lane / 4, ft = lane % 4;
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    if (e >= a.count) break;
    const int I = a.I[e], J = a.J[e];
    if (J < I || s.factored[I] != 0.f) {
      const float* M = J < I ? s.M + pair_index(I, J) * kKT : nullptr;
      const float* Kt = J < I ? s.Ks : s.Kd;
#pragma unroll
      for (int kk = 0; kk < kKT; kk += kTK) {
        const float* q0 = s.Qs + (kSub * I + fg) * kLdT + kk + ft;
        const uint32_t af[4] = {to_tf32(q0[0]), to_tf32(q0[8 * kLdT]), to_tf32(q0[4]),
                                to_tf32(q0[8 * kLdT + 4])};
        const float m0 = M != nullptr ? M[kk + ft] : 1.f, m1 = M != nullptr ? M[kk + ft + 4] : 1.f;
#pragma unroll
        for (int nh = 0; nh < 2; ++nh) {
          const float* k0 = Kt + (kSub * J + 8 * nh + fg) * kLdT + kk + ft;
          const uint32_t bf[2] = {to_tf32(k0[0] * m0), to_tf32(k0[4] * m1)};
          mma_tf32_m16n8k8(a.acc[e][nh], af, bf);
        }
      }
    } else {
      // Not factored: element (i, j) of the accumulators, j <= i, pair by pair.
#pragma unroll
      for (int nh = 0; nh < 2; ++nh) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int i = kSub * I + fg + 8 * (r / 2), j = kSub * J + 8 * nh + 2 * ft + r % 2;
          if (j > i) continue;
          float sum = 0.f;
          for (int c = 0; c < kKT; ++c) {
            sum += s.q[i * kLdT + c] * s.k[j * kLdT + c] *
                   exp2f(s.G[i * kLdT + c] - s.G[j * kLdT + c]);
          }
          a.acc[e][nh][r] += sum;
        }
      }
    }
  }
}

// A into AS [kRows][ld] (row-major, scale included, zero above the diagonal), rounded to
// TF32 for the products that read it. Starts and ends with the block in step.
__device__ __forceinline__ void a_tiles_store(const ATiles& a, float* AS, int ld, float scale) {
  for (int idx = threadIdx.x; idx < kRows * kRows; idx += kThreads) {
    const int i = idx / kRows, j = idx % kRows;
    if (j / kSub > i / kSub) AS[i * ld + j] = 0.f;
  }
  const int lane = threadIdx.x % 32, fg = lane / 4, ft = lane % 4;
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    if (e >= a.count) break;
#pragma unroll
    for (int nh = 0; nh < 2; ++nh) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int i = kSub * a.I[e] + fg + 8 * (r / 2), j = kSub * a.J[e] + 8 * nh + 2 * ft + r % 2;
        AS[i * ld + j] = j <= i ? __uint_as_float(to_tf32(scale * a.acc[e][nh][r])) : 0.f;
      }
    }
  }
  __syncthreads();
}

// ---- value pieces ------------------------------------------------------------------------

// gla_fwd_kernel and gla_bwd_dv_kernel take their value-side operands (S0 or d_S, v, d_o)
// through shared memory kValPiece value columns at a time, double-buffered (the next
// piece's copies in flight while this one is multiplied), and each piece's output columns
// come out whole. A piece holds S0 or d_S rows [Kpad][kLdPS] (float32), then v (forward)
// or d_o (backward) [kRows][ld_b] read as a B operand, then (backward) v [kRows][ld_a]
// read transposed for d_A = d_o v^T; zeros past K, L and V. The row strides put the
// fragment loads of lane (g, t) in 32 different banks: B at (row t, column g), A and a
// transposed B at (row g, column t).
constexpr int kValPiece = 32;
constexpr int kLdPS = kValPiece + 8;
constexpr int kLdA = kRows + 8;  // the backward's A, read transposed (row t, column g)
template <class T>
__host__ __device__ constexpr int ld_b() {
  return sizeof(T) == 4 ? kValPiece + 8 : kValPiece + 16;
}
template <class T>
__host__ __device__ constexpr int ld_a() {
  return sizeof(T) == 4 ? kValPiece + 4 : kValPiece + 8;
}

// Shared memory of gla_fwd_kernel and gla_bwd_dv_kernel, offsets in bytes: X (Qe or KF)
// [kRows][Kpad + 4] float32 first, then the chunk tiles while X (and in the forward A) is
// formed; then A (forward: [kRows][kLd4], read by rows; backward: the forward's A staged
// [kRows][kLdA], read transposed) over the tiles' start and the two value pieces after it.
struct ChunkSmem {
  int ldx;             // row stride of X
  int tiles, a;        // the tiles, A
  int piece0, piece1;  // the two value pieces
  int p_x, p_y;        // inside a piece: v or d_o; v for d_A
  int bytes;
};
template <class T>
__host__ __device__ inline ChunkSmem chunk_smem(int64_t K, bool bwd) {
  ChunkSmem m{};
  const int Kpad = k_pad(K);
  m.ldx = Kpad + 4;
  m.tiles = m.a = 4 * kRows * m.ldx;
  m.p_x = 4 * Kpad * kLdPS;
  m.p_y = m.p_x + static_cast<int>(sizeof(T)) * kRows * ld_b<T>();
  const int piece = (bwd ? m.p_y + static_cast<int>(sizeof(T)) * kRows * ld_a<T>() : m.p_y);
  const int piece16 = (piece + 15) / 16 * 16;
  m.piece0 = m.a + 4 * kRows * kLdA;
  m.piece1 = m.piece0 + piece16;
  const int end_tiles = m.tiles + 4 * kTilesFloats, end_pieces = m.piece1 + piece16;
  m.bytes = end_tiles > end_pieces ? end_tiles : end_pieces;
  return m;
}

// Rows [0, K) x columns [0, w) of a float32 [., V] source (row stride rs) into a value
// piece's S0 or d_S rows [Kpad][kLdPS], zeros past K and w, a 32-row group at a time.
__device__ __forceinline__ void stage_state_rows(float* dst, const float* src, int64_t rs, int K,
                                                 int Kpad, int w) {
  for (int r0 = 0; r0 < Kpad; r0 += kKT) {
    stage_tile<kKT, kValPiece, kThreads>(dst + r0 * kLdPS, kLdPS, r0 < K ? src + r0 * rs : src, rs,
                                         1, K - r0, w);
  }
}

// ---- forward ---------------------------------------------------------------------------

// Block (b, h, chunk): per 32-key group the chunk tiles, A's tiles on tensor cores and
// Qe = scale q 2^G (TF32-rounded) for all keys; then A to shared memory; then
// o = Qe S0 + A v on tensor cores per value piece (S0's rows and v staged, see
// ChunkSmem), warp w taking rows 16 (w % 4) and the piece's columns 16 (w / 4) .. + 15,
// its results stored from the accumulators.
template <class T>
__global__ void __launch_bounds__(kThreads, kChunkBlocks) gla_fwd_kernel(const GlaFwdParams p) {
  extern __shared__ __align__(128) float4 smem4[];
  unsigned char* const base = reinterpret_cast<unsigned char*>(smem4);
  const int64_t NC = num_chunks(p.T, p.C);
  const int64_t n = blockIdx.x % NC, bh = blockIdx.x / NC;
  const int64_t b = bh / p.H, h = bh % p.H;
  const int64_t t0 = n * p.C;
  const int L = static_cast<int>(p.C < p.T - t0 ? p.C : p.T - t0);
  const int K = static_cast<int>(p.K), V = static_cast<int>(p.V);
  const int Kpad = k_pad(p.K);
  const ChunkSmem m = chunk_smem<T>(p.K, false);
  const SeqIn<T> q = seq<T>(p.q, b, h), k = seq<T>(p.k, b, h), g = seq<T>(p.g, b, h);
  const SeqIn<T> v = seq<T>(p.v, b, h);

  const Tiles s = carve_tiles(reinterpret_cast<float*>(base + m.tiles));
  float* Qe = reinterpret_cast<float*>(base);        // [kRows][m.ldx]
  float* AS = reinterpret_cast<float*>(base + m.a);  // [kRows][kLd4], over the tiles once A is done

  ATiles a = a_tiles_begin();
  for (int k0 = 0; k0 < Kpad; k0 += kKT) {
    load_chunk_tiles(q, k, g, t0, L, k0, K, s);
    a_tiles_add(a, s);
    for (int idx = threadIdx.x; idx < kRows * kKT; idx += kThreads) {
      const int i = idx / kKT, c = idx % kKT;
      Qe[i * m.ldx + k0 + c] =
          __uint_as_float(to_tf32(p.scale * s.q[i * kLdT + c] * exp2f(s.G[i * kLdT + c])));
    }
    __syncthreads();
  }
  a_tiles_store(a, AS, kLd4, p.scale);
  if (p.A != nullptr) {  // A for the backward, all 64 x 64 (zeros above the diagonal, past L)
    float4* out = reinterpret_cast<float4*>(p.A + (bh * NC + n) * kRows * kRows);
    for (int e = threadIdx.x; e < kRows * kRows / 4; e += kThreads) {
      out[e] = ld4(AS + e / (kRows / 4) * kLd4 + 4 * (e % (kRows / 4)));
    }
  }

  const int warp = threadIdx.x / 32, rt = warp % 4, cg = warp / 4;
  const float* S0 = p.states + (bh * NC + n) * p.K * p.V;
  T* o = static_cast<T*>(p.o) + ((b * p.T + t0) * p.H + h) * p.V;
  // A is zero past row tile rt's diagonal tile: A v takes the rows j < 16 (rt + 1) (and L).
  const int jsteps = (min(L, kSub * (rt + 1)) + kTK - 1) / kTK;
  pipelined_pieces<kValPiece>(
      V, base + m.piece0, base + m.piece1,
      [&](int y0, unsigned char* buf) {
        const int w = min(kValPiece, V - y0);
        stage_state_rows(reinterpret_cast<float*>(buf), S0 + y0, V, K, Kpad, w);
        stage_tile<kRows, kValPiece, kThreads>(reinterpret_cast<T*>(buf + m.p_x), ld_b<T>(),
                                               v.p + t0 * v.st + y0 * v.sc, v.st, v.sc, L, w);
      },
      [&](int y0, const unsigned char* buf) {
        float acc[2][4] = {};
        warp_mma<2, false, false, false>(acc, Kpad / kTK, Qe + kSub * rt * m.ldx, m.ldx,
                                         reinterpret_cast<const float*>(buf) + 16 * cg, kLdPS);
        warp_mma<2, false, false, false>(acc, jsteps, AS + kSub * rt * kLd4, kLd4,
                                         reinterpret_cast<const T*>(buf + m.p_x) + 16 * cg,
                                         ld_b<T>());
        store_tile<2>(o, p.H * p.V, kSub * rt, y0 + 16 * cg, L, V, acc);
      });
}

// ---- backward --------------------------------------------------------------------------

// Scratch: the end-state gradients [B, H, NC, K, V], d_A [B, H, NC, 64, 64] (when d_q,
// d_k or d_g is wanted), per-channel d_g [B, T, H, K] (per-head gate), the chunks' decays
// [B, H, NC, K], each 256-byte aligned.
struct BwdScratch {
  float* d_states;
  float* d_A;
  float* d_g_channels;
  float* decay;  // [B, H, NC, K]
};
constexpr size_t kAlign = 256;
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
size_t n_chunks_host(const GlaBwdParams& p) {
  return p.T == 0 ? 0 : static_cast<size_t>((p.T + p.C - 1) / p.C);
}
bool wants_qkg(const GlaBwdParams& p) {
  return p.d_q != nullptr || p.d_k != nullptr || p.d_g != nullptr;
}
size_t d_states_bytes(const GlaBwdParams& p) {
  return align_up(sizeof(float) * p.B * p.H * n_chunks_host(p) * p.K * p.V);
}
size_t d_A_bytes(const GlaBwdParams& p) {
  return wants_qkg(p) ? align_up(sizeof(float) * p.B * p.H * n_chunks_host(p) * kRows * kRows) : 0;
}
size_t d_g_channels_bytes(const GlaBwdParams& p) {
  return p.scalar_gate && p.d_g != nullptr ? align_up(sizeof(float) * p.B * p.T * p.H * p.K) : 0;
}
size_t decay_bytes(const GlaBwdParams& p) {
  return align_up(sizeof(float) * p.B * p.H * n_chunks_host(p) * p.K);
}
BwdScratch carve_scratch(const GlaBwdParams& p) {
  char* base = static_cast<char*>(p.scratch);
  BwdScratch s;
  s.d_states = reinterpret_cast<float*>(base);
  s.d_A = d_A_bytes(p) ? reinterpret_cast<float*>(base + d_states_bytes(p)) : nullptr;
  s.d_g_channels = d_g_channels_bytes(p)
                       ? reinterpret_cast<float*>(base + d_states_bytes(p) + d_A_bytes(p))
                       : nullptr;
  s.decay =
      reinterpret_cast<float*>(base + d_states_bytes(p) + d_A_bytes(p) + d_g_channels_bytes(p));
  return s;
}

// Block (b, h, chunk). When d_v is wanted: per 32-key group k and the cumulative gates
// for KF = k 2^(G_last - G) (TF32-rounded) over all keys, and the forward's A staged (it
// joins the first value piece's copies). Then per value piece (d_S's rows, d_o and v
// staged, see ChunkSmem): d_v = A^T d_o + KF d_S, warp w taking rows 16 (w % 4) and the piece's
// columns 16 (w / 4) .. + 15, and (when d_A is wanted) d_A += d_o v^T over the piece's columns, the
// warps owning A's ten lower 16 x 16 tiles; d_A = scale tril(d_o v^T) is written to scratch at the
// end (zeros above the diagonal).
template <class T>
__global__ void __launch_bounds__(kThreads, kChunkBlocks)
    gla_bwd_dv_kernel(const GlaBwdParams p, const float* __restrict__ d_states,
                      float* __restrict__ d_A) {
  extern __shared__ __align__(128) float4 smem4[];
  unsigned char* const base = reinterpret_cast<unsigned char*>(smem4);
  const int64_t NC = num_chunks(p.T, p.C);
  const int64_t n = blockIdx.x % NC, bh = blockIdx.x / NC;
  const int64_t b = bh / p.H, h = bh % p.H;
  const int64_t t0 = n * p.C;
  const int L = static_cast<int>(p.C < p.T - t0 ? p.C : p.T - t0);
  const int K = static_cast<int>(p.K), V = static_cast<int>(p.V);
  const int Kpad = k_pad(p.K);
  const ChunkSmem m = chunk_smem<T>(p.K, true);
  const SeqIn<T> k = seq<T>(p.k, b, h), g = seq<T>(p.g, b, h);
  const SeqIn<T> v = seq<T>(p.v, b, h), d_o = seq<T>(p.d_o, b, h);
  const int warp = threadIdx.x / 32, rt = warp % 4, cg = warp / 4;
  const ATiles a = a_tiles_begin();  // the d_A tiles' assignment
  const bool want_dv = p.d_v != nullptr, want_dA = d_A != nullptr;

  float* KF = reinterpret_cast<float*>(base);  // [kRows][m.ldx]
  float* As =
      reinterpret_cast<float*>(base + m.a);  // [kRows][kLdA], over the tiles once KF is done
  if (want_dv) {
    const Tiles s = carve_tiles(reinterpret_cast<float*>(base + m.tiles));
    for (int k0 = 0; k0 < Kpad; k0 += kKT) {
      load_chunk_tiles<false>(k, k, g, t0, L, k0, K, s);
      for (int idx = threadIdx.x; idx < kRows * kKT; idx += kThreads) {
        const int i = idx / kKT, c = idx % kKT;
        KF[i * m.ldx + k0 + c] = __uint_as_float(
            to_tf32(s.k[i * kLdT + c] * exp2f(s.G[(kRows - 1) * kLdT + c] - s.G[i * kLdT + c])));
      }
      __syncthreads();
    }
    stage_tile<kRows, kRows, kThreads>(As, kLdA, p.A + (bh * NC + n) * kRows * kRows, kRows, 1,
                                       kRows, kRows);
  }

  const float* dS = d_states + (bh * NC + n) * p.K * p.V;
  T* dv = want_dv ? static_cast<T*>(p.d_v) + ((b * p.T + t0) * p.H + h) * p.V : nullptr;
  // A^T is zero left of row tile rt's diagonal tile: A^T d_o takes the rows i >= 16 rt.
  const int isteps = L > kSub * rt ? (L - kSub * rt + kTK - 1) / kTK : 0;
  float acc_dA[2][2][4] = {};
  pipelined_pieces<kValPiece>(
      V, base + m.piece0, base + m.piece1,
      [&](int y0, unsigned char* buf) {
        const int w = min(kValPiece, V - y0);
        if (want_dv) {
          stage_state_rows(reinterpret_cast<float*>(buf), dS + y0, V, K, Kpad, w);
        }
        stage_tile<kRows, kValPiece, kThreads>(reinterpret_cast<T*>(buf + m.p_x), ld_b<T>(),
                                               d_o.p + t0 * d_o.st + y0 * d_o.sc, d_o.st, d_o.sc, L,
                                               w);
        if (want_dA) {
          stage_tile<kRows, kValPiece, kThreads>(reinterpret_cast<T*>(buf + m.p_y), ld_a<T>(),
                                                 v.p + t0 * v.st + y0 * v.sc, v.st, v.sc, L, w);
        }
      },
      [&](int y0, const unsigned char* buf) {
        const T* dop = reinterpret_cast<const T*>(buf + m.p_x);
        if (want_dv) {
          float acc[2][4] = {};
          warp_mma<2, true, false, false>(acc, isteps, As + kSub * rt * (kLdA + 1), kLdA,
                                          dop + kSub * rt * ld_b<T>() + 16 * cg, ld_b<T>());
          warp_mma<2, false, false, false>(acc, Kpad / kTK, KF + kSub * rt * m.ldx, m.ldx,
                                           reinterpret_cast<const float*>(buf) + 16 * cg, kLdPS);
          store_tile<2>(dv, p.H * p.V, kSub * rt, y0 + 16 * cg, L, V, acc);
        }
        if (want_dA) {
          const int vsteps = (min(kValPiece, V - y0) + kTK - 1) / kTK;
          const T* vp = reinterpret_cast<const T*>(buf + m.p_y);
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            if (e >= a.count) break;
            warp_mma<2, false, true, false>(acc_dA[e], vsteps, dop + kSub * a.I[e] * ld_b<T>(),
                                            ld_b<T>(), vp + kSub * a.J[e] * ld_a<T>(), ld_a<T>());
          }
        }
      });

  if (want_dA) {
    float* out = d_A + (bh * NC + n) * kRows * kRows;
    for (int idx = threadIdx.x; idx < kRows * kRows; idx += kThreads) {
      const int i = idx / kRows, j = idx % kRows;
      if (j / kSub > i / kSub) out[idx] = 0.f;
    }
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      if (e >= a.count) break;
      for_each_frag<2>(kSub * a.I[e], kSub * a.J[e], [&](int i, int j, int r, int c) {
        acc_dA[e][c][r] = j <= i ? p.scale * acc_dA[e][c][r] : 0.f;
      });
      store_tile<2>(out, kRows, kSub * a.I[e], kSub * a.J[e], kRows, kRows, acc_dA[e]);
    }
  }
}

// A piece of gla_bwd_dqkg_kernel's state-term operands: kValPiece value columns of d_o
// and v ([kRows][kLdX] each, in the inputs' dtype) and of the key tile's rows of S0 and d_S
// ([kKT][kLdY] float32 each), zeros past L, V and K. All are read at (row g, column t) by
// lane (g, t): the row strides are ld_a's.
template <class T>
struct StatePiece {
  static constexpr int kLdX = ld_a<T>();
  static constexpr int kLdY = ld_a<float>();
  static constexpr int kYOffset = (2 * kRows * kLdX * static_cast<int>(sizeof(T)) + 15) / 16 * 16;
  static constexpr int kBytes = kYOffset + 2 * kKT * kLdY * 4;
  static_assert(2 * kBytes <= 4 * (kTilesFloats + kRows * kLd4),
                "two pieces fit over the tiles and d_A's region");
};

template <class T>
__global__ void __launch_bounds__(kThreads, kDqkgBlocks)
    gla_bwd_dqkg_kernel(const GlaBwdParams p, const float* __restrict__ d_states,
                        const float* __restrict__ d_A_all, float* __restrict__ d_g_channels) {
  extern __shared__ __align__(128) float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  // A chunk's key tiles are neighbouring blocks, so they run together and share its d_o, v
  // and d_A through L2.
  const int64_t NC = num_chunks(p.T, p.C), tiles = k_pad(p.K) / kKT;
  const int64_t chunk = blockIdx.x / tiles, n = chunk % NC, bh = chunk / NC;
  const int64_t b = bh / p.H, h = bh % p.H;
  const int64_t t0 = n * p.C;
  const int L = static_cast<int>(p.C < p.T - t0 ? p.C : p.T - t0);
  const int K = static_cast<int>(p.K), V = static_cast<int>(p.V);
  const int k0 = static_cast<int>(blockIdx.x % tiles) * kKT;
  const SeqIn<T> q = seq<T>(p.q, b, h), k = seq<T>(p.k, b, h), g = seq<T>(p.g, b, h);
  const SeqIn<T> v = seq<T>(p.v, b, h), d_o = seq<T>(p.d_o, b, h);

  // Shared memory: the chunk tiles, d_A, rs (67 KB). The state terms' pieces, and then the
  // state terms dq0 and dk0, first lie over the tiles and d_A.
  const Tiles s = carve_tiles(smem);
  float* dA = smem + kTilesFloats;  // [kRows][kLd4]: d_A (scale included)
  float* dot = smem;                // [kRows][kLdS]: dq0
  float* vt = dot + kRows * kLdS;   // [kRows][kLdS]: dk0
  static_assert(2 * kRows * kLdS <= kTilesFloats, "dq0 and dk0 fit");
  float* rs = dA + kRows * kLd4;  // [kKT]: rowsum(S0 * d_S) per key

  // The state terms dq0 = d_o S0^T and dk0 = v d_S^T ([64, 32] each, this key tile) on
  // tensor cores: warp w owns rows 16 (w % 4), all 32 keys (4 tiles of 8), of dq0 (w < 4)
  // or dk0 (w >= 4). The operands go through shared memory kValPiece values at a time
  // (StatePiece, double-buffered over the tiles and d_A's region: the next piece's copies
  // are in flight while this one is multiplied). rowsum(S0 * d_S) from the same pieces:
  // thread (key tid / 8, part tid % 8) sums values part, part + 8, ..., then the 8 parts
  // are added by shuffles.
  static_assert(kThreads / 32 == 2 * (kRows / 16) && kKT == 32, "8 warps x [16, 32]");
  const float* S0 = p.states + (bh * NC + n) * p.K * p.V;
  const float* dS = d_states + (bh * NC + n) * p.K * p.V;
  {
    using Piece = StatePiece<T>;
    const int warp = threadIdx.x / 32, rt = warp % 4;
    const bool for_k = warp >= 4;  // dk0 = v d_S^T, else dq0 = d_o S0^T
    const int kw = min(K - k0, kKT);
    auto stage = [&](int y0, unsigned char* buf) {
      const int w = min(kValPiece, V - y0);
      T* x = reinterpret_cast<T*>(buf);
      float* y = reinterpret_cast<float*>(buf + Piece::kYOffset);
      stage_tile<kRows, kValPiece, kThreads>(x, Piece::kLdX, d_o.p + t0 * d_o.st + y0 * d_o.sc,
                                             d_o.st, d_o.sc, L, w);
      stage_tile<kRows, kValPiece, kThreads>(x + kRows * Piece::kLdX, Piece::kLdX,
                                             v.p + t0 * v.st + y0 * v.sc, v.st, v.sc, L, w);
      stage_tile<kKT, kValPiece, kThreads>(y, Piece::kLdY, S0 + static_cast<int64_t>(k0) * V + y0,
                                           V, 1, kw, w);
      stage_tile<kKT, kValPiece, kThreads>(y + kKT * Piece::kLdY, Piece::kLdY,
                                           dS + static_cast<int64_t>(k0) * V + y0, V, 1, kw, w);
    };
    float acc[4][4] = {};
    float rsum = 0.f;
    const int key = threadIdx.x / 8, part = threadIdx.x % 8;
    unsigned char* const base = reinterpret_cast<unsigned char*>(smem);
    pipelined_pieces<kValPiece>(
        V, base, base + Piece::kBytes, stage, [&](int y0, const unsigned char* buf) {
          const int w = min(kValPiece, V - y0);
          const T* x = reinterpret_cast<const T*>(buf) + (for_k ? kRows * Piece::kLdX : 0);
          const float* y = reinterpret_cast<const float*>(buf + Piece::kYOffset);
          warp_mma<4, false, true, false>(acc, (w + kTK - 1) / kTK, x + 16 * rt * Piece::kLdX,
                                          Piece::kLdX, y + (for_k ? kKT * Piece::kLdY : 0),
                                          Piece::kLdY);
          const float* a = y + key * Piece::kLdY;
          const float* b = a + kKT * Piece::kLdY;
          for (int c = part; c < w; c += 8) rsum += a[c] * b[c];
        });
    float* out = for_k ? vt : dot;
    for_each_frag<4>(16 * rt, 0,
                     [&](int i, int j, int r, int c) { out[i * kLdS + j] = acc[c][r]; });
#pragma unroll
    for (int d = 1; d < 8; d <<= 1) rsum += __shfl_xor_sync(0xffffffffu, rsum, d, 8);
    if (part == 0) rs[key] = rsum;
    __syncthreads();
  }

  // This thread: rows 4 ti .. 4 ti + 3, channels 2 tc, 2 tc + 1 of the key tile.
  const int ti = threadIdx.x / 16, tc = threadIdx.x % 16;
  float dq0[4][2], dk0[4][2];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
#pragma unroll
    for (int cc = 0; cc < 2; ++cc) {
      dq0[r][cc] = dot[(4 * ti + r) * kLdS + 2 * tc + cc];
      dk0[r][cc] = vt[(4 * ti + r) * kLdS + 2 * tc + cc];
    }
  }
  __syncthreads();  // the tiles now take q, k and g

  // d_A into shared memory, in flight while q, k and g are loaded.
  stage_tile<kRows, kRows, kThreads>(dA, kLd4, d_A_all + (bh * NC + n) * kRows * kRows, kRows, 1,
                                     kRows, kRows);
  cp_async_commit();
  load_chunk_tiles(q, k, g, t0, L, k0, K, s);
  cp_async_wait<0>();
  __syncthreads();

  // Intra-chunk parts through the sub-chunk references (see load_chunk_tiles), d_A zero
  // above the diagonal:
  //   d_q_ic = 2^(G_ic - G_{16I,c}) sum_{J<I} M_IJ,c sum_{j in J} d_A_ij Ks_jc
  //            + sum_{j in I, j <= i} d_A_ij k_jc 2^(G_ic - G_jc)
  //   d_k_jc = 2^(G_{16(J+1),c} - G_jc) sum_{I>J} M_IJ,c sum_{i in I} d_A_ij Qs_ic
  //            + sum_{i in J, i >= j} d_A_ij q_ic 2^(G_ic - G_jc)
  // where a factored sub-chunk's own sums are 2^(G_ic - G_{16I,c}) sum_j d_A_ij Kd_jc and
  // 2^(G_{16J,c} - G_jc) sum_i d_A_ij Qs_ic.
  // On tensor cores (TF32, as the backward's other products): warp w takes sub-chunk
  // R = w % 4 and channels 16 (w / 4) .. + 15 of d_q (its rows: J <= R) and of d_k (its rows
  // as j: I >= R): three 16 x 16 x 16 products over J < R and I > R, each scaled per channel
  // by M, and the two diagonal blocks', then the row factors. The results go through
  // Kd and Ks (free once every warp's products are done) to the thread map above.
  {
    const int warp = threadIdx.x / 32, R = warp % 4, c0 = 16 * (warp / 4);
    const bool fac = s.factored[R] != 0.f;
    float dq_acc[2][4] = {}, dk_acc[2][4] = {}, dkd_acc[2][4] = {};
    for (int J = 0; J < R; ++J) {
      float part[2][4] = {};
      warp_mma<2, false, false, false>(part, kSub / kTK, dA + kSub * (R * kLd4 + J), kLd4,
                                       s.Ks + kSub * J * kLdT + c0, kLdT);
      const float* M = s.M + pair_index(R, J) * kKT + c0;
      for_each_frag<2>([&](int, int j, int r, int c) { dq_acc[c][r] += M[j] * part[c][r]; });
    }
    for (int I = R + 1; I < kRows / kSub; ++I) {
      float part[2][4] = {};
      warp_mma<2, true, false, false>(part, kSub / kTK, dA + kSub * (I * kLd4 + R), kLd4,
                                      s.Qs + kSub * I * kLdT + c0, kLdT);
      const float* M = s.M + pair_index(I, R) * kKT + c0;
      for_each_frag<2>([&](int, int j, int r, int c) { dk_acc[c][r] += M[j] * part[c][r]; });
    }
    if (fac) {  // d_A is zero above the diagonal: the diagonal blocks are whole products
      warp_mma<2, false, false, false>(dq_acc, kSub / kTK, dA + kSub * R * (kLd4 + 1), kLd4,
                                       s.Kd + kSub * R * kLdT + c0, kLdT);
      warp_mma<2, true, false, false>(dkd_acc, kSub / kTK, dA + kSub * R * (kLd4 + 1), kLd4,
                                      s.Qs + kSub * R * kLdT + c0, kLdT);
    }
    for_each_frag<2>(kSub * R, c0, [&](int i, int c, int r, int nt) {
      const float Gi = s.G[i * kLdT + c], Gf = s.G[kSub * R * kLdT + c];
      dq_acc[nt][r] *= exp2f(Gi - Gf);
      dk_acc[nt][r] =
          R + 1 < kRows / kSub ? dk_acc[nt][r] * exp2f(s.G[kSub * (R + 1) * kLdT + c] - Gi) : 0.f;
      if (fac) dk_acc[nt][r] += dkd_acc[nt][r] * exp2f(Gf - Gi);  // <= 2^kMaxSpread2
    });
    __syncthreads();  // every warp is done with Ks and Kd
    for_each_frag<2>(kSub * R, c0, [&](int i, int c, int r, int nt) {
      s.Kd[i * kLdT + c] = dq_acc[nt][r];
      s.Ks[i * kLdT + c] = dk_acc[nt][r];
    });
    __syncthreads();
  }
  const int S = ti / 4;  // the sub-chunk of this thread's rows
  const bool factored = s.factored[S] != 0.f;
  float dq[4][2], dk[4][2];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
#pragma unroll
    for (int cc = 0; cc < 2; ++cc) {
      dq[r][cc] = s.Kd[(4 * ti + r) * kLdT + 2 * tc + cc];
      dk[r][cc] = s.Ks[(4 * ti + r) * kLdT + 2 * tc + cc];
    }
  }
  if (!factored) {
    // Inside the sub-chunk, pair by pair.
    for (int j = S * kSub; j < (S + 1) * kSub; ++j) {
      const float4 w = ld4(&dA[j * kLd4 + 4 * ti]);  // d_A_{j i}: row j, the thread's columns
      const float wv[4] = {w.x, w.y, w.z, w.w};
      float av[4];  // d_A_{i j} for the thread's rows i
#pragma unroll
      for (int r = 0; r < 4; ++r) av[r] = dA[(4 * ti + r) * kLd4 + j];
#pragma unroll
      for (int cc = 0; cc < 2; ++cc) {
        const int c = 2 * tc + cc;
        const float kj = s.k[j * kLdT + c], qj = s.q[j * kLdT + c], Gj = s.G[j * kLdT + c];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int i = 4 * ti + r;
          const float Gi = s.G[i * kLdT + c];
          // d_q of row i from column j <= i; d_k of row i (as a column) from row j >= i.
          if (j <= i) dq[r][cc] += av[r] * kj * exp2f(Gi - Gj);
          if (j >= i) dk[r][cc] += wv[r] * qj * exp2f(Gj - Gi);
        }
      }
    }
  }

  // Inter-chunk parts, then d_G = q d_q - k d_k and the last row's state terms.
  float kdki[4][2], dG[4][2];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int i = 4 * ti + r;
#pragma unroll
    for (int cc = 0; cc < 2; ++cc) {
      const int c = 2 * tc + cc;
      const float Gi = s.G[i * kLdT + c];
      const float dki = dk0[r][cc] * exp2f(s.G[(kRows - 1) * kLdT + c] - Gi);
      dq[r][cc] += p.scale * dq0[r][cc] * exp2f(Gi);
      dk[r][cc] += dki;
      const float qi = s.q[i * kLdT + c], ki = s.k[i * kLdT + c];
      dG[r][cc] = qi * dq[r][cc] - ki * dk[r][cc];
      kdki[r][cc] = ki * dki;
    }
  }
  __syncthreads();  // everyone is done with Qs and Ks: they now hold d_G and k * d_k_inter
  float* dGt = s.Qs;
  float* kd = s.Ks;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
#pragma unroll
    for (int cc = 0; cc < 2; ++cc) {
      dGt[(4 * ti + r) * kLdT + 2 * tc + cc] = dG[r][cc];
      kd[(4 * ti + r) * kLdT + 2 * tc + cc] = kdki[r][cc];
    }
  }
  __syncthreads();
  {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int c = warp; c < kKT; c += kThreads / 32) {
      float x = kd[lane * kLdT + c] + kd[(lane + 32) * kLdT + c];
#pragma unroll
      for (int d = 16; d > 0; d >>= 1) x += __shfl_xor_sync(0xffffffffu, x, d);
      if (lane == 0) {
        dGt[(L - 1) * kLdT + c] += exp2f(s.G[(kRows - 1) * kLdT + c]) * rs[c] + x;
      }
    }
  }
  __syncthreads();
  column_scan<true>(dGt, kLdT, NoOp{});
  __syncthreads();

  const int64_t row0 = (b * p.T + t0) * p.H + h;  // flat (b, t0, h)
  const int c = k0 + 2 * tc;                      // the thread's first channel
  if (c < K) {
    const bool both = c + 1 < K;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int i = 4 * ti + r;
      if (i >= L) continue;
      const int64_t off = (row0 + static_cast<int64_t>(i) * p.H) * p.K + c;
      if (p.d_q != nullptr) store_upto_pair(static_cast<T*>(p.d_q) + off, dq[r][0], dq[r][1], both);
      if (p.d_k != nullptr) store_upto_pair(static_cast<T*>(p.d_k) + off, dk[r][0], dk[r][1], both);
      const float* dg = dGt + i * kLdT + 2 * tc;
      if (d_g_channels != nullptr) {
        store_upto_pair(d_g_channels + off, dg[0], dg[1], both);
      } else if (p.d_g != nullptr) {
        store_upto_pair(static_cast<T*>(p.d_g) + off, dg[0], dg[1], both);
      }
    }
  }
}

// d_g[b, t, h] = sum over channels of the per-channel d_g, in channel order.
template <class T>
__global__ void gla_bwd_gate_sum_kernel(int64_t rows, int64_t K, const float* __restrict__ d_g_ch,
                                        T* __restrict__ d_g) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < rows;
       r += stride) {
    float acc = 0.f;
    for (int64_t c = 0; c < K; ++c) acc += d_g_ch[r * K + c];
    d_g[r] = from_f32<T>(acc);
  }
}

// ---- launchers -------------------------------------------------------------------------

const char* last_error() {
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

constexpr int64_t kMaxGrid = 2147483647;

constexpr size_t kDqkgSmemBytes = sizeof(float) * (kTilesFloats + kRows * kLd4 + kKT);

// Sizes the kernels rely on; nullptr when they hold.
const char* check_dims(int64_t B, int64_t T, int64_t H, int64_t K, int64_t V, int64_t C) {
  if (C < 1 || C > kGlaMaxChunk) return "gla (CUDA): chunk must be in 1..64";
  if (K < 1 || K > kGlaMaxK) return "gla (CUDA): K must be in 1..256";
  if (V < 1 || V > (int64_t{1} << 30)) return "gla (CUDA): V must be in 1..2^30";
  if (B < 0 || T < 0 || H < 0) return "gla (CUDA): negative size";
  const int64_t NC = (T + C - 1) / C;
  if (B * H > 0 &&
      (NC * (k_pad(K) / kKT) > kMaxGrid / (B * H) || K * V > kMaxGrid * 256 / (B * H))) {
    return "gla (CUDA): too many blocks (B * H * chunks * key tiles, or B * H * K * V / 256)";
  }
  return nullptr;
}

template <class Kernel>
const char* allow_smem(Kernel kernel, size_t bytes) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(bytes));
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// Per-chunk terms, then the scan (see gla_chunk_state_kernel).
template <class T, bool kBwd>
const char* chunk_states(const StateJob& j, cudaStream_t s) {
  const int64_t NC = (j.T + j.C - 1) / j.C;
  if (NC > 0) {
    const size_t smem = chunk_state_smem_bytes(j.K);
    if (const char* e = allow_smem(gla_chunk_state_kernel<T, kBwd>, smem)) return e;
    gla_chunk_state_kernel<T, kBwd>
        <<<static_cast<unsigned>(NC * j.B * j.H), kThreads, smem, s>>>(j);
    if (const char* e = last_error()) return e;
  }
  // Two elements a thread where V is even and every buffer 8-byte aligned.
  auto aligned = [](const float* p) { return reinterpret_cast<uintptr_t>(p) % 8 == 0; };
  const bool pairs = j.V % 2 == 0 && aligned(j.slots) && aligned(j.edge) && aligned(j.start);
  const int64_t n = j.B * j.H * j.K * j.V / (pairs ? 2 : 1);
  const unsigned blocks = static_cast<unsigned>((n + 255) / 256);
  if (pairs) {
    gla_state_scan_kernel<kBwd, 2><<<blocks, 256, 0, s>>>(j);
  } else {
    gla_state_scan_kernel<kBwd, 1><<<blocks, 256, 0, s>>>(j);
  }
  return last_error();
}

template <class T>
const char* fwd_t(const GlaFwdParams& p, cudaStream_t s) {
  const int64_t NC = (p.T + p.C - 1) / p.C;
  StateJob j{p.B, p.T, p.H, p.K, p.V, p.C, p.k, p.g, p.v, 1.f, p.states, p.S_T, p.h0, p.decay};
  if (const char* e = chunk_states<T, false>(j, s)) return e;
  if (NC == 0) return nullptr;
  const size_t smem = chunk_smem<T>(p.K, false).bytes;
  if (const char* e = allow_smem(gla_fwd_kernel<T>, smem)) return e;
  gla_fwd_kernel<T><<<static_cast<unsigned>(NC * p.B * p.H), kThreads, smem, s>>>(p);
  return last_error();
}

template <class T>
const char* bwd_t(const GlaBwdParams& p, cudaStream_t s) {
  const int64_t NC = (p.T + p.C - 1) / p.C;
  const BwdScratch sc = carve_scratch(p);
  StateJob j{p.B, p.T,   p.H,     p.K,         p.V,    p.C,     p.q,
             p.g, p.d_o, p.scale, sc.d_states, p.d_h0, p.d_S_T, sc.decay};
  if (const char* e = chunk_states<T, true>(j, s)) return e;
  if (NC == 0) return nullptr;
  if (p.d_v != nullptr && p.A == nullptr) {
    return "gla backward (CUDA): d_v needs the forward's A (GlaBwdParams::A is null)";
  }
  const unsigned blocks = static_cast<unsigned>(NC * p.B * p.H);
  if (p.d_v != nullptr || sc.d_A != nullptr) {
    const size_t smem = chunk_smem<T>(p.K, true).bytes;
    if (const char* e = allow_smem(gla_bwd_dv_kernel<T>, smem)) return e;
    gla_bwd_dv_kernel<T><<<blocks, kThreads, smem, s>>>(p, sc.d_states, sc.d_A);
    if (const char* e = last_error()) return e;
  }
  if (sc.d_A != nullptr) {
    if (const char* e = allow_smem(gla_bwd_dqkg_kernel<T>, kDqkgSmemBytes)) return e;
    const unsigned grid = blocks * static_cast<unsigned>(k_pad(p.K) / kKT);
    gla_bwd_dqkg_kernel<T>
        <<<grid, kThreads, kDqkgSmemBytes, s>>>(p, sc.d_states, sc.d_A, sc.d_g_channels);
    if (const char* e = last_error()) return e;
  }
  if (sc.d_g_channels != nullptr) {
    const int64_t rows = p.B * p.T * p.H;
    int64_t grid = (rows + 255) / 256;
    if (grid > 65535) grid = 65535;
    gla_bwd_gate_sum_kernel<T><<<static_cast<unsigned>(grid), 256, 0, s>>>(
        rows, p.K, sc.d_g_channels, static_cast<T*>(p.d_g));
    if (const char* e = last_error()) return e;
  }
  return nullptr;
}

}  // namespace

const char* gla_fwd_cuda(const GlaFwdParams& p, void* stream) {
  if (const char* e = check_dims(p.B, p.T, p.H, p.K, p.V, p.C)) return e;
  if (p.B * p.H == 0) return nullptr;
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return fwd_t<float>(p, s);
    case KernelDType::kBFloat16:
      return fwd_t<__nv_bfloat16>(p, s);
  }
  return "gla_fwd_cuda: unknown dtype";
}

size_t gla_bwd_scratch_bytes(const GlaBwdParams& p) {
  if (check_dims(p.B, p.T, p.H, p.K, p.V, p.C) != nullptr) return 0;
  return d_states_bytes(p) + d_A_bytes(p) + d_g_channels_bytes(p) + decay_bytes(p);
}

const char* gla_bwd_cuda(const GlaBwdParams& p, void* stream) {
  if (const char* e = check_dims(p.B, p.T, p.H, p.K, p.V, p.C)) return e;
  if (p.B * p.H == 0) return nullptr;
  if (p.scratch == nullptr) return "gla_bwd_cuda: scratch not given";
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return bwd_t<float>(p, s);
    case KernelDType::kBFloat16:
      return bwd_t<__nv_bfloat16>(p, s);
  }
  return "gla_bwd_cuda: unknown dtype";
}

}  // namespace resona::cuda
