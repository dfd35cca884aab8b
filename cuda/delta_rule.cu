// Chunked delta-rule kernels (maps and formulas in cuda/delta_rule.h; the CPU path and the
// derivation of the backward are in ops/delta_rule.cc).
//
// delta_rule_wy_kernel          block (b, h, chunk): G = k k^T, N by blocked forward
//                               substitution (16 x 16 blocks), W = N diag(beta) k,
//                               U = N diag(beta) v, P = tril(q k^T); for a backward
//                               N and G too, which the backward reads with W and P
// delta_rule_fwd_state_kernel   block (b, h, 16, 32 or 48 columns of V): the chunks in
//                               order, V' = U - W S, S <- S + k^T V'
// delta_rule_fwd_out_kernel     block (b, h, chunk, 64 or 80 columns of V):
//                               o = scale (q S0 + P V')
// delta_rule_bwd_state_kernel   block (b, h, 16, 32 or 48 columns of V): the chunks in
//                               reverse, d_V' = scale P^T d_o + k d_S,
//                               d_S <- d_S + scale q^T d_o - W^T d_V'
// delta_rule_bwd_vgrad_kernel   block (b, h, chunk): over 32-column pieces of V,
//                               Y = N^T d_V', d_v = diag(beta) Y, and the sums over V
//                               of d_o V'^T, Y V'^T and v . Y; then d_P, Z and a part
//                               of d_beta
// delta_rule_bwd_kgrad_kernel   block (b, h, chunk, d_q or d_k, 64 or 80 columns of K):
//                               d_q, or d_k and its columns' part of d_beta
// delta_rule_bwd_dbeta_kernel   thread (b, h, chunk, row): d_beta from its parts
//
// 256 threads (8 warps) per block, 512 (16 warps) for the recurrences. Every kernel stages its
// operands into shared memory with cp.async (cuda/cp_async.cuh: whole chunk operands, or pieces of
// a contraction with the next piece in flight while the current one is multiplied) and multiplies
// on tensor cores: in 3xTF32 under float32 storage (warp_mma: float32 accuracy; a bfloat16
// operand is exact in TF32 and skips its low-part product), as one TF32 product under
// bfloat16 storage (kSplitProducts). A block's sums always run in the same order and no two blocks
// add into one value: the results are bit-identical from run to run.
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
#include "cuda/tile_mma.cuh"

namespace resona::cuda {
namespace {

constexpr int kThreads = 256;  // 8 warps per block (the recurrences: kRecurThreads)
constexpr int kWarps = kThreads / 32;
constexpr int kRecurThreads = 512;  // 16 warps per recurrence block
constexpr int kRecurWarps = kRecurThreads / 32;
constexpr int kMaxStateUnits = 3;                   // state units per recurrence warp: K up to 384
constexpr int kUnitRowStep = 16 * kRecurWarps / 2;  // rows from one of a warp's units to the next
constexpr int kC = static_cast<int>(kDeltaMaxChunk);

// Rows of one (b, h) sequence from a chunk's first row: x(i, j) = p[i * rs + j * cs].
template <class T>
struct RowsView {
  const T* p;
  int64_t rs, cs;
};

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

// The row of the chunk's row i in a contiguous output [B, T, H, D] (o, d_q, d_k, d_v,
// d_beta).
__device__ __forceinline__ int64_t out_row(const DeltaRuleInputs& in, const ChunkAt& c, int i) {
  return (c.b * in.T + c.t0 + i) * in.H + c.h;
}

// beta of the chunk's rows as float32 into bs[0, kC), zeros past L (every thread).
template <class T>
__device__ __forceinline__ void load_beta(const DeltaRuleInputs& in, const ChunkAt& c, float* bs) {
  const T* beta = static_cast<const T*>(in.beta) + c.b * in.beta_strides[0] +
                  c.t0 * in.beta_strides[1] + c.h * in.beta_strides[2];
  for (int i = threadIdx.x; i < kC; i += blockDim.x) {
    bs[i] = i < c.L ? to_f32(beta[i * in.beta_strides[1]]) : 0.f;
  }
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

// What the forward keeps of every chunk for the backward, float32 [B*H, NC, C, .]: W, P and
// V', which the forward's later kernels read too, and N and G, which only the backward
// reads. A forward run for a backward writes all five into the caller's buffer
// (DeltaRuleFwdParams::kept), which the backward reads instead of running the WY kernel
// again and recomputing V'; a forward without one keeps W, P and V' in its scratch. F is
// float (written) or const float (read).
template <class F>
struct FwdKept {
  F *W = nullptr, *P = nullptr, *Vn = nullptr, *N = nullptr, *G = nullptr;
};

// The rest of the kernels' scratch, float32, each region a multiple of 4 floats (16 bytes).
struct Scratch {
  FwdKept<const float> kept;
  float* U = nullptr;  // forward
  // backward: d_V', Y = N^T d_V', the chunks' end-state gradients, d_P, d_P^T, Z + Z^T,
  // and the parts of d_beta, [beta_parts][chunks][C]
  float *dVn = nullptr, *Y = nullptr, *dstates = nullptr;
  float *dP = nullptr, *dPT = nullptr, *Zs = nullptr, *dBp = nullptr;
};

int64_t round4(int64_t n) { return (n + 3) / 4 * 4; }

// The chunks (B H NC), and the floats of [chunks, C, K], [chunks, C, V], [chunks, C, C]
// and [chunks, K, V], each rounded up to 4.
struct ChunkSizes {
  int64_t chunks, ck, cv, cc, kv;
};
ChunkSizes chunk_sizes(const DeltaRuleInputs& in) {
  const int64_t NC = (in.T + in.C - 1) / in.C, chunks = in.B * in.H * NC;
  return {chunks, round4(chunks * in.C * in.K), round4(chunks * in.C * in.V),
          round4(chunks * in.C * in.C), round4(chunks * in.K * in.V)};
}

// Columns of a block's tile over a dimension of n: 64, or 80 where that leaves less of the
// last tile idle (n = 150: two tiles of 80 in place of three of 64, the last 22 wide;
// n = 64, 128, 256 keep 64). The K-gradient kernel's tiles of K and the output kernel's of V.
int tile_width(int64_t n) { return (n + 79) / 80 * 80 < (n + 63) / 64 * 64 ? 80 : 64; }

// The K-gradient kernel's tiles of K.
int64_t k_tiles(const DeltaRuleInputs& in) {
  return (in.K + tile_width(in.K) - 1) / tile_width(in.K);
}

// The parts d_beta is summed from: the V-gradient kernel's, then one per K tile.
int64_t beta_parts(const DeltaRuleInputs& in) { return 1 + k_tiles(in); }

// Hands out consecutive regions of `base` (nullptr: only counts); off is the total.
template <class F>
struct Carver {
  F* base;
  int64_t off = 0;
  template <class G>
  void take(G*& p, int64_t n) {
    p = base == nullptr ? nullptr : base + off;
    off += n;
  }
};

// W, P and V', and N and G when `for_bwd`, from `base`. Returns the floats taken.
template <class F>
int64_t kept_regions(const DeltaRuleInputs& in, bool for_bwd, F* base, FwdKept<F>& k) {
  const ChunkSizes z = chunk_sizes(in);
  Carver<F> c{base};
  c.take(k.W, z.ck);
  c.take(k.P, z.cc);
  c.take(k.Vn, z.cv);
  if (for_bwd) {
    c.take(k.N, z.cc);
    c.take(k.G, z.cc);
  }
  return c.off;
}

// The forward's scratch: W, P and V' first when `kept_apart` is false (no buffer for the
// backward), then U. Returns the floats taken.
int64_t fwd_layout(const DeltaRuleInputs& in, bool kept_apart, float* base, FwdKept<float>& k,
                   Scratch& s) {
  Carver<float> c{base};
  if (!kept_apart) c.off = kept_regions(in, false, base, k);
  c.take(s.U, chunk_sizes(in).cv);
  return c.off;
}

// The backward's scratch. Returns the floats taken.
int64_t bwd_layout(const DeltaRuleInputs& in, float* base, Scratch& s) {
  const ChunkSizes z = chunk_sizes(in);
  Carver<float> c{base};
  c.take(s.dVn, z.cv);
  c.take(s.Y, z.cv);
  c.take(s.dstates, z.kv);
  c.take(s.dP, z.cc);
  c.take(s.dPT, z.cc);
  c.take(s.Zs, z.cc);
  c.take(s.dBp, round4(z.chunks * beta_parts(in) * in.C));
  return c.off;
}

// ---- tensor-core products of tiles staged in shared memory ----

// Whether the products of a kernel on inputs stored as T run in 3xTF32 (float32 accuracy:
// float32 storage) or as one TF32 product (bfloat16 storage, whose own rounding is 2^-8:
// TF32 operands add about a quarter of the error of rounding o to bfloat16 and do not grow
// along T, tools/precision/delta_rule_tf32).
template <class T>
constexpr bool kSplitProducts = std::is_same_v<T, float>;

// The state products: acc[u] += A_u B for the warp's state units u < n, unit u being rows
// 16 (warp / 2) + kUnitRowStep u of the state and columns kBV/2 (warp % 2) on (so every
// unit of a warp has the same columns and shares B's fragments). A_u(x, i) =
// a[i * a_ld + kUnitRowStep u + x]
// (a transposed operand: k^T, q^T, W^T), B(i, j) = b[i * b_ld + j] or B in SplitPairs, as
// in warp_mma; the units' products are independent, so they interleave.
template <int NT, int kU, bool kSplit = true, class TA, class TB>
__device__ __forceinline__ void warp_mma_units(float (&acc)[kU][NT][4], int n, int ksteps,
                                               const TA* a, int a_ld, const TB* b, int b_ld) {
  constexpr bool kAExact = !kSplit || std::is_same_v<TA, __nv_bfloat16>;
  constexpr bool kBExact = !kSplit || std::is_same_v<TB, __nv_bfloat16>;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const TA* pa = a + t * a_ld + g;
  const TB* pb = b + t * b_ld + g;
  const int a4 = 4 * a_ld, b4 = 4 * b_ld;
  const int b_step = (std::is_same_v<TB, SplitPairs> ? 4 : 8) * b_ld;
  for (int s = 0; s < ksteps; ++s, pa += 8 * a_ld, pb += b_step) {
    uint32_t bh[NT][2], bl[NT][2];
#pragma unroll
    for (int c = 0; c < NT; ++c) b_frag(pb, b4, 8 * c, bh[c], bl[c]);
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      if (u >= n) continue;
      const TA* q = pa + kUnitRowStep * u;
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

// A warp's 16 x 8 NT unit of accumulators, split into TF32 parts, into dst (its first
// pair row, ld in pairs) as SplitPairs. Lane (g, t) writes pair row g at the columns 2 t
// and 2 t + 1 of each column tile: rows g and g + 4 of the unit when g < 4, rows g + 4 and
// g + 8 when g >= 4; it holds rows g and g + 8 and swaps the other with lane ^ 16.
template <int NT>
__device__ __forceinline__ void store_split(SplitPairs* dst, int ld, const float (&acc)[NT][4]) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const bool high = g >= 4;
#pragma unroll
  for (int c = 0; c < NT; ++c) {
    const float o0 = __shfl_xor_sync(0xffffffffu, high ? acc[c][0] : acc[c][2], 16);
    const float o1 = __shfl_xor_sync(0xffffffffu, high ? acc[c][1] : acc[c][3], 16);
    const float f0 = high ? o0 : acc[c][0], f1 = high ? o1 : acc[c][1];  // first row of the pair
    const float e0 = high ? acc[c][2] : o0, e1 = high ? acc[c][3] : o1;  // its row + 4
    SplitPairs v0, v1;
    split_tf32(f0, v0.x, v0.z);
    split_tf32(e0, v0.y, v0.w);
    split_tf32(f1, v1.x, v1.z);
    split_tf32(e1, v1.y, v1.w);
    SplitPairs* p = dst + g * ld + 8 * c + 2 * t;
    p[0] = v0;
    p[1] = v1;
  }
}

// Sums x[h], a lane's partial sums of rows g + 8 h of a warp unit whose rows start at
// row0, over the quad of lanes sharing those rows, into out[row0 + g + 8 h] (lane t = 0).
__device__ __forceinline__ void store_row_sums(float (&x)[2], int row0, float* out) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
#pragma unroll
    for (int m = 1; m <= 2; m *= 2) x[h] += __shfl_xor_sync(0xffffffffu, x[h], m);
    if (lane % 4 == 0) out[row0 + lane / 4 + 8 * h] = x[h];
  }
}

// ---- (1) the WY matrices of a chunk ----
//
// k is staged whole (cp.async) for G = k k^T, and q a piece of kWyPiece columns at a time
// for P = tril(q k^T); the first v_piece columns of v then replace q while N is solved in
// 16 x 16 blocks; T = N diag(beta) replaces N, and W = T k and U = T v follow, U a piece of
// v at a time (so V is not bounded by shared memory). Every product is warp_mma over 16 x 32 units
// (kSplitProducts). Shared memory: k [64][k_ld] and a piece of q or v [64][x_ld] in the inputs'
// dtype (pieces, so that two blocks fit an SM in float32 and three in bfloat16), G and N
// [64][kLdG], beta [64], the solve's strip X [16][kLdX].
constexpr int kLdG = 68;  // rows of G and N (68 = 4 mod 32: A-operand reads are conflict-free)

constexpr int kWyPiece = 96;       // columns of q or v staged at a time
constexpr int kLdX = kC - 16 + 4;  // rows of the solve's block-row strip X [16][kLdX]

struct WyLayout {
  int kp8, kp32;  // K rounded up to 8 (contractions) and 32 (W's tiles)
  int q_piece;    // columns of q per piece: min(K rounded up to 8, kWyPiece)
  int v_piece;    // columns of v per piece: min(V rounded up to 32, kWyPiece)
  int k_ld, q_ld, v_ld;
  int off_k, off_x, off_g, off_n, off_b, off_t, bytes;
};

template <class T>
__global__ void __launch_bounds__(kThreads, sizeof(T) == 2 ? 3 : 2)
    delta_rule_wy_kernel(DeltaRuleInputs in, int64_t NC, WyLayout lay, float* __restrict__ W,
                         float* __restrict__ U, float* __restrict__ P, float* __restrict__ N_out,
                         float* __restrict__ G_out) {
  extern __shared__ __align__(16) unsigned char delta_smem[];
  T* Ks = reinterpret_cast<T*>(delta_smem + lay.off_k);
  T* Xs = reinterpret_cast<T*>(delta_smem + lay.off_x);  // q, then v
  float* G = reinterpret_cast<float*>(delta_smem + lay.off_g);
  float* Nm = reinterpret_cast<float*>(delta_smem + lay.off_n);
  float* bs = reinterpret_cast<float*>(delta_smem + lay.off_b);
  float* Xt = reinterpret_cast<float*>(delta_smem + lay.off_t);
  const ChunkAt c = chunk_at(in, blockIdx.x / NC, blockIdx.x % NC);
  const int L = c.L, K = static_cast<int>(in.K), V = static_cast<int>(in.V);
  const int tid = threadIdx.x, warp = tid / 32, rt = warp % 4, cg = warp / 4;
  const int64_t chunk = c.bh * NC + c.n, C = in.C;
  const RowsView<T> k = rows<T>(in.k, in.k_strides, c);
  const RowsView<T> q = rows<T>(in.q, in.q_strides, c);
  auto stage_q = [&](int p0) {  // columns [p0, p0 + q_piece) of q, zeros past K
    stage_tile(Xs, lay.q_ld, q.p + p0 * q.cs, q.rs, q.cs, L, min(lay.q_piece, K - p0), kC,
               lay.q_piece);
  };
  stage_tile(Ks, lay.k_ld, k.p, k.rs, k.cs, L, K, kC, lay.kp32);
  stage_q(0);
  cp_async_commit();
  load_beta<T>(in, c, bs);
  for (int e = tid; e < kC * kC; e += kThreads) Nm[(e / kC) * kLdG + e % kC] = 0.f;
  cp_async_wait<0>();
  __syncthreads();

  // G = k k^T (into shared memory and, for the backward, out), P = tril(q k^T)
  {
    float g[4][4] = {}, p[4][4] = {};
    warp_mma<4, false, true, kSplitProducts<T>>(g, lay.kp8 / 8, Ks + 16 * rt * lay.k_ld, lay.k_ld,
                                                Ks + 32 * cg * lay.k_ld, lay.k_ld);
    staged_pieces(K, lay.q_piece, stage_q, [&](int p0) {
      warp_mma<4, false, true, kSplitProducts<T>>(p, (min(lay.q_piece, K - p0) + 7) / 8,
                                                  Xs + 16 * rt * lay.q_ld, lay.q_ld,
                                                  Ks + 32 * cg * lay.k_ld + p0, lay.k_ld);
    });
    for_each_frag<4>(16 * rt, 32 * cg, [&](int i, int j, int r, int cc) {
      G[i * kLdG + j] = g[cc][r];
      if (j > i) p[cc][r] = 0.f;
    });
    store_tile<4>(P + chunk * C * C, C, 16 * rt, 32 * cg, L, L, p);
    if (G_out != nullptr) store_tile<4>(G_out + chunk * C * C, C, 16 * rt, 32 * cg, L, L, g);
  }
  __syncthreads();
  const RowsView<T> v = rows<T>(in.v, in.v_strides, c);
  auto stage_v = [&](int p0) {  // columns [p0, p0 + v_piece) of v, zeros past V
    const int w = min(lay.v_piece, V - p0);
    stage_tile(Xs, lay.v_ld, v.p + p0 * v.cs, v.rs, v.cs, L, w, kC, lay.v_piece);
  };
  if (U != nullptr) stage_v(0);
  cp_async_commit();

  // N = (I + A)^-1, A = tril(diag(beta) G, -1), in blocks of 16 rows and columns (row i of
  // (I + A) N = I). The diagonal blocks by forward substitution, thread c solving column c
  // of its block: N_cc = 1, N_ic = -beta_i sum_{c <= j < i} G_ij N_jc. Then block row r from
  // the rows above it: N_rj = -N_rr X_j with X_j = sum_{j <= m < r} A_rm N_mj (blocks),
  // all 256 threads on each step; the dependency chain is about 300 steps where a column
  // by column solve takes L^2 / 2.
  if (tid < L) {
    const int col = tid, end = min(col / 16 * 16 + 16, L);
    Nm[col * kLdG + col] = 1.f;
    for (int i = col + 1; i < end; ++i) {
      float x = 0.f;
      for (int j = col; j < i; ++j) x = fmaf(G[i * kLdG + j], Nm[j * kLdG + col], x);
      Nm[i * kLdG + col] = -bs[i] * x;
    }
  }
  for (int r = 1; r < (L + 15) / 16; ++r) {
    const int cols = 16 * r;  // the columns left of block r
    __syncthreads();
    for (int e = tid; e < 16 * cols; e += kThreads) {
      const int i = 16 * r + e / cols, col = e % cols;
      float x = 0.f;
      for (int m = col; m < cols; ++m) x = fmaf(G[i * kLdG + m], Nm[m * kLdG + col], x);
      Xt[(e / cols) * kLdX + col] = bs[i] * x;
    }
    __syncthreads();
    for (int e = tid; e < 16 * cols; e += kThreads) {
      const int ii = e / cols, i = 16 * r + ii, col = e % cols;
      float y = 0.f;
      for (int m = 0; m <= ii; ++m) y = fmaf(Nm[i * kLdG + 16 * r + m], Xt[m * kLdX + col], y);
      Nm[i * kLdG + col] = -y;
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
      warp_mma<4, false, false, kSplitProducts<T>>(acc, lsteps, Nm + 16 * ur * kLdG, kLdG,
                                                   x + 32 * uc, ld);
      store_tile<4>(out + chunk * C * out_ld + o0, out_ld, 16 * ur, 32 * uc, L, valid, acc);
    }
  };
  t_times(Ks, lay.k_ld, lay.kp32, K, W, in.K, 0);
  if (U == nullptr) return;
  staged_pieces(V, lay.v_piece, stage_v, [&](int p0) {
    t_times(Xs, lay.v_ld, lay.v_piece, min(lay.v_piece, V - p0), U, in.V, p0);
  });
}

// ---- (2) the recurrences: forward in chunk order, backward in reverse ----
//
// One block per (b, h, kBV-column tile of S or d_S); the columns are independent. The block
// walks the chunks; each chunk's operands are staged whole into shared memory with
// cp.async while the previous product runs (cuda/cp_async.cuh), and every product is a
// warp-level tensor-core product (mma.sync m16n8k8, cuda/mma.cuh) over units of 16 rows x
// kBV/2 columns: under float32 storage 3xTF32 (float32 accuracy) for float32 operands, with
// the low-part product dropped for a bfloat16 operand, which TF32 holds exactly; under
// bfloat16 storage one TF32 product (kSplitProducts). The state tile stays in the
// warps' accumulators (float32) from the first chunk to the last; shared memory holds its
// copy split into TF32 high and low parts in row pairs (SplitPairs), which is what the other
// product reads, and V' or d_V' split the same way. Contractions over K run over K padded to 8,
// over a chunk's rows over L padded to 8; the staging writes zeros there.
//
// Forward, per chunk:  V' = U - W S                 64 x kBV: 8 units, each by two warps
//                                                   over the two halves of K
//                      S <- S + k^T V'              kp16 x kBV: units round-robin over warps
// Backward, per chunk: d_V' = scale P^T d_o + k d_S    64 x kBV: 8 units, each by two warps,
//                                                   one with P^T d_o and the first K steps
//                      d_S <- d_S + scale q^T d_o - W^T d_V'   kp16 x kBV
// The forward writes V' and each chunk's start state, the backward d_V' and each chunk's
// end-state gradient, for the parallel kernels (3) and (3').

constexpr int kRecurCols[] = {48, 32, 16};  // column-tile widths the recurrences come in

// f(u, row0, col0) for this warp's state units u (unit warp + 16 u of n_units: rows
// [row0, row0 + 16) and columns [col0, col0 + kBV / 2) of the state tile, kBV = 16 NT).
template <int NT, class F>
__device__ __forceinline__ void for_each_state_unit(int n_units, const F& f) {
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int u = 0; u < kMaxStateUnits; ++u) {
    const int un = warp + kRecurWarps * u;
    if (un < n_units) f(u, 16 * (un / 2), 8 * NT * (un % 2));
  }
}

// Phase 1 of a recurrence (V' or d_V', 64 x kBV) is 8 units of 16 x kBV/2, each computed by
// two warps w and w + 8 over the two parts of its contraction: the second warp leaves its
// partial sums in the unit's split slots, each lane in the first of the slots it writes in
// store_split (store_partial); the first warp's same lane adds them (add_partial) and then
// overwrites those slots with the finished unit (store_split), so the partial needs no
// shared memory of its own.
template <int NT>
__device__ __forceinline__ void store_partial(SplitPairs* dst, int ld, const float (&acc)[NT][4]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int c = 0; c < NT; ++c) {
    dst[lane / 4 * ld + 8 * c + 2 * (lane % 4)] =
        uint4{__float_as_uint(acc[c][0]), __float_as_uint(acc[c][1]), __float_as_uint(acc[c][2]),
              __float_as_uint(acc[c][3])};
  }
}
template <int NT>
__device__ __forceinline__ void add_partial(const SplitPairs* src, int ld, float (&acc)[NT][4]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int c = 0; c < NT; ++c) {
    const uint4 v = src[lane / 4 * ld + 8 * c + 2 * (lane % 4)];
    acc[c][0] += __uint_as_float(v.x);
    acc[c][1] += __uint_as_float(v.y);
    acc[c][2] += __uint_as_float(v.z);
    acc[c][3] += __uint_as_float(v.w);
  }
}

// The end of phase 1 for a unit held by warps w (first) and w + 8 (second): the second
// leaves its partial sum in the unit's slots, the block meets at a barrier, and the first
// adds the partial, calls f(i, j, r, c) on each element (row i, column j of the tile) to
// finish it in acc and write it out, and stores the unit split into its slots.
template <int NT, class F>
__device__ __forceinline__ void finish_phase1(bool second, SplitPairs* unit, int ld, int row0,
                                              int col0, float (&acc)[NT][4], const F& f) {
  if (second) store_partial<NT>(unit, ld, acc);
  __syncthreads();
  if (second) return;
  add_partial<NT>(unit, ld, acc);
  for_each_frag<NT>(row0, col0, f);
  store_split<NT>(unit, ld, acc);
}

// f(u, x, j, r, c) over the thread's elements of its state units: element r of column tile
// c of unit u sits at row x, column j of the state tile.
template <int NT, class F>
__device__ __forceinline__ void for_each_state_elem(int n_units, const F& f) {
  for_each_state_unit<NT>(n_units, [&](int u, int row0, int col0) {
    for_each_frag<NT>(row0, col0, [&](int x, int j, int r, int c) { f(u, x, j, r, c); });
  });
}

// Shared-memory layout of a recurrence block (built on the host by recur_layout). Strides
// are in elements, offsets in bytes from the start of the dynamic shared memory.
struct RecurLayout {
  int kp8, kp16;               // K rounded up to 8 (contractions) and 16 (state rows)
  int w_ld, k_ld, q_ld;        // rows of the staged W, k, q
  int p_ld, o_ld, v_ld, s_ld;  // rows of P, the d_o tile; V' / d_V', S / d_S in pairs
  int off_a, off_b;            // forward: W, k; backward: the two buffers k, q, W rotate through
  int off_p, off_o0, off_o1;   // backward: P, the two d_o tiles
  int off_v, off_s;            // V' or d_V' [32][v_ld], S or d_S [kp16 / 2][s_ld] (SplitPairs)
  int bytes;
};

// d_o and its strides, by value.
struct DoView {
  const void* p;
  int64_t s[4];
};

template <class T, int kBV>
__global__ void __launch_bounds__(kRecurThreads, 1)
    delta_rule_fwd_state_kernel(DeltaRuleInputs in, int64_t NC, RecurLayout lay,
                                const float* __restrict__ W, const float* __restrict__ U,
                                float* __restrict__ Vn, float* __restrict__ states,
                                float* __restrict__ S_T) {
  constexpr int NT = kBV / 16, kHalf = kBV / 2;
  extern __shared__ __align__(16) unsigned char delta_smem[];
  float* Ws = reinterpret_cast<float*>(delta_smem + lay.off_a);
  T* Ks = reinterpret_cast<T*>(delta_smem + lay.off_b);
  SplitPairs* V2 = reinterpret_cast<SplitPairs*>(delta_smem + lay.off_v);
  SplitPairs* S2 = reinterpret_cast<SplitPairs*>(delta_smem + lay.off_s);
  const int64_t n_tiles = (in.V + kBV - 1) / kBV;
  const int64_t bh = blockIdx.x / n_tiles;
  const int v0 = static_cast<int>(blockIdx.x % n_tiles) * kBV;
  const int K = static_cast<int>(in.K), vw = min(kBV, static_cast<int>(in.V) - v0);
  const int64_t b = bh / in.H, h = bh % in.H, KV = in.K * in.V, C = in.C;
  const int warp = threadIdx.x / 32;
  const int rt = warp % 4, cg = warp / 4 % 2;  // this warp's unit of V'
  const bool second = warp >= 8;               // ... and its part of the contraction over K
  const int ksteps = lay.kp8 / 8, k_half = (ksteps + 1) / 2;
  const int k_first = second ? k_half : 0, k_count = second ? ksteps - k_half : k_half;
  const int n_units = 2 * (lay.kp16 / 16);  // units of S: warp + 16 u, u < kMaxStateUnits
  const int my_units = n_units > warp ? (n_units - warp + kRecurWarps - 1) / kRecurWarps : 0;
  // S from h0 (zeros past K and vw), in the accumulators and split in S2.
  float S[kMaxStateUnits][NT][4];
  for_each_state_elem<NT>(n_units, [&](int u, int x, int j, int r, int c) {
    S[u][c][r] = in.h0 != nullptr && x < K && j < vw
                     ? load_state(in.h0, in.h0_dtype,
                                  b * in.h0_strides[0] + h * in.h0_strides[1] +
                                      x * in.h0_strides[2] + (v0 + j) * in.h0_strides[3])
                     : 0.f;
  });
  for_each_state_unit<NT>(n_units, [&](int u, int row0, int col0) {
    store_split<NT>(S2 + row0 / 2 * lay.s_ld + col0, lay.s_ld, S[u]);
  });
  // Chunk n's start state goes out at the end of chunk n - 1, a phase before the accumulators
  // it is stored from are next written: a store reads its registers only once issued from the
  // memory queue, and the product that rewrites them waits for that.
  auto store_state = [&](int64_t n) {
    for_each_state_unit<NT>(n_units, [&](int u, int row0, int col0) {
      store_tile<NT>(states + (bh * NC + n) * KV + v0, in.V, row0, col0, K, vw, S[u]);
    });
  };
  if (NC > 0) store_state(0);
  auto stage_w = [&](int64_t n) {
    stage_tile(Ws, lay.w_ld, W + (bh * NC + n) * C * in.K, in.K, 1, chunk_at(in, bh, n).L, K, kC,
               lay.kp16);
  };
  auto stage_k = [&](int64_t n) {
    const ChunkAt c = chunk_at(in, bh, n);
    const RowsView<T> k = rows<T>(in.k, in.k_strides, c);
    stage_tile(Ks, lay.k_ld, k.p, k.rs, k.cs, c.L, K, kC, lay.kp16);
  };
  // Three barriers a chunk: W_n is waited for at the end of chunk n - 1, with S2.
  if (NC > 0) stage_w(0);
  cp_async_commit();
  if (NC > 0) stage_k(0);
  cp_async_commit();
  cp_async_wait<1>();  // W_0
  __syncthreads();
  for (int64_t n = 0; n < NC; ++n) {
    const int L = chunk_at(in, bh, n).L, lsteps = (L + 7) / 8;
    const int64_t chunk = bh * NC + n;
    const float* Un = U + chunk * C * in.V + v0;
    float uv[NT][4];
    for_each_frag<NT>(16 * rt, kHalf * cg, [&](int i, int j, int r, int c) {
      uv[c][r] = !second && i < L && j < vw ? Un[i * in.V + j] : 0.f;
    });
    // V' = U - W S, W S in two parts over K
    float acc[NT][4] = {};
    warp_mma<NT, false, false, kSplitProducts<T>>(
        acc, k_count, Ws + 16 * rt * lay.w_ld + 8 * k_first, lay.w_ld,
        S2 + 4 * k_first * lay.s_ld + kHalf * cg, lay.s_ld);
    finish_phase1<NT>(
        second, V2 + 8 * rt * lay.v_ld + kHalf * cg, lay.v_ld, 16 * rt, kHalf * cg, acc,
        [&](int i, int, int r, int c) { acc[c][r] = i < L ? uv[c][r] - acc[c][r] : 0.f; });
    if (!second) {
      store_tile<NT>(Vn + chunk * C * in.V + v0, in.V, 16 * rt, kHalf * cg, L, vw, acc);
    }
    cp_async_wait<0>();  // k
    __syncthreads();
    if (n + 1 < NC) stage_w(n + 1);
    cp_async_commit();
    // S <- S + k^T V'
    warp_mma_units<NT, kMaxStateUnits, kSplitProducts<T>>(
        S, my_units, lsteps, Ks + 16 * (warp / 2), lay.k_ld, V2 + kHalf * (warp % 2), lay.v_ld);
    for_each_state_unit<NT>(n_units, [&](int u, int row0, int col0) {
      store_split<NT>(S2 + row0 / 2 * lay.s_ld + col0, lay.s_ld, S[u]);
    });
    if (n + 1 < NC) store_state(n + 1);
    cp_async_wait<0>();  // W_{n+1}
    __syncthreads();
    if (n + 1 < NC) stage_k(n + 1);
    cp_async_commit();
  }
  cp_async_wait<0>();
  for_each_state_elem<NT>(n_units, [&](int u, int x, int j, int r, int c) {
    if (x < K && j < vw) S_T[bh * KV + x * in.V + v0 + j] = S[u][c][r];
  });
}

template <class T, int kBV>
__global__ void __launch_bounds__(kRecurThreads, 1)
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
  SplitPairs* dV2 = reinterpret_cast<SplitPairs*>(delta_smem + lay.off_v);  // -d_V'
  SplitPairs* dS2 = reinterpret_cast<SplitPairs*>(delta_smem + lay.off_s);
  const int64_t n_tiles = (in.V + kBV - 1) / kBV;
  const int64_t bh = blockIdx.x / n_tiles;
  const int v0 = static_cast<int>(blockIdx.x % n_tiles) * kBV;
  const int K = static_cast<int>(in.K), vw = min(kBV, static_cast<int>(in.V) - v0);
  const int64_t KV = in.K * in.V, C = in.C;
  const int warp = threadIdx.x / 32;
  const int rt = warp % 4, cg = warp / 4 % 2;  // this warp's unit of d_V'
  const bool second = warp >= 8;               // ... and its part of the contractions
  const int ksteps = lay.kp8 / 8;
  const int n_units = 2 * (lay.kp16 / 16);  // units of d_S: warp + 16 u, u < kMaxStateUnits
  const int my_units = n_units > warp ? (n_units - warp + kRecurWarps - 1) / kRecurWarps : 0;
  const float scale = in.scale;
  // d_S from d_S_T (zeros past K and vw), in the accumulators and split in dS2.
  float dS[kMaxStateUnits][NT][4];
  for_each_state_elem<NT>(n_units, [&](int u, int x, int j, int r, int c) {
    dS[u][c][r] = x < K && j < vw ? d_S_T[bh * KV + x * in.V + v0 + j] : 0.f;
  });
  for_each_state_unit<NT>(n_units, [&](int u, int row0, int col0) {
    store_split<NT>(dS2 + row0 / 2 * lay.s_ld + col0, lay.s_ld, dS[u]);
  });
  // k, q and W of a chunk go through buf0 and buf1 in turn: k_n and q_n are staged
  // first, W_n replaces k_n once d_V' is done, k_{n-1} replaces q_n and q_{n-1} W_n.
  auto stage_in = [&](const void* x, const int64_t* s, int64_t n, void* dst, int ld) {
    const ChunkAt c = chunk_at(in, bh, n);
    const RowsView<T> r = rows<T>(x, s, c);
    stage_tile(static_cast<T*>(dst), ld, r.p, r.rs, r.cs, c.L, K, kC, lay.kp16);
  };
  auto stage_w = [&](int64_t n, void* dst) {
    stage_tile(static_cast<float*>(dst), lay.w_ld, W + (bh * NC + n) * C * in.K, in.K, 1,
               chunk_at(in, bh, n).L, K, kC, lay.kp16);
  };
  auto stage_p_do = [&](int64_t n, T* dst) {
    const ChunkAt c = chunk_at(in, bh, n);
    stage_tile<kC, kC, kRecurThreads>(Ps, lay.p_ld, P + (bh * NC + n) * C * C, C, 1, c.L, c.L);
    const RowsView<T> r = rows<T>(d_o.p, d_o.s, c);
    stage_tile<kC, kBV, kRecurThreads>(dst, lay.o_ld, r.p + v0 * r.cs, r.rs, r.cs, c.L, vw);
  };
  bool flip = false;  // k_n sits in buf0 and q_n in buf1, d_o_n in dO0; swapped when flip
  if (NC > 0) {
    stage_in(in.k, in.k_strides, NC - 1, buf0, lay.k_ld);
    stage_p_do(NC - 1, dO0);
  }
  cp_async_commit();
  if (NC > 0) stage_in(in.q, in.q_strides, NC - 1, buf1, lay.q_ld);
  cp_async_commit();
  // Four barriers a chunk: k_n, P_n and d_o_n are waited for at the end of chunk n + 1,
  // with dS2.
  cp_async_wait<1>();  // k, P, d_o of the last chunk
  __syncthreads();
  for (int64_t n = NC - 1; n >= 0; --n) {
    const int L = chunk_at(in, bh, n).L, lsteps = (L + 7) / 8;
    const int64_t chunk = bh * NC + n;
    unsigned char* const kbuf = flip ? buf1 : buf0;  // k_n, then W_n, then q_{n-1}
    unsigned char* const qbuf = flip ? buf0 : buf1;  // q_n, then k_{n-1}
    const T* dO = flip ? dO1 : dO0;
    T* const dO_next = flip ? dO0 : dO1;
    // d_V' = scale P^T d_o + k d_S: the first warp of a unit takes P^T d_o and the first
    // k_split steps over K, the second the rest, so that both make about as many steps
    const int k_split = ksteps > lsteps ? (ksteps - lsteps) / 2 : 0;
    const int k_first = second ? k_split : 0, k_count = second ? ksteps - k_split : k_split;
    float acc[NT][4] = {};
    if (!second) {
      warp_mma<NT, true, false, kSplitProducts<T>>(acc, lsteps, Ps + 16 * rt, lay.p_ld,
                                                   dO + kHalf * cg, lay.o_ld);
      for_each_frag<NT>([&](int, int, int r, int c) { acc[c][r] *= scale; });
    }
    warp_mma<NT, false, false, kSplitProducts<T>>(
        acc, k_count, reinterpret_cast<const T*>(kbuf) + 16 * rt * lay.k_ld + 8 * k_first, lay.k_ld,
        dS2 + 4 * k_first * lay.s_ld + kHalf * cg, lay.s_ld);
    float* dVnn = dVn + chunk * C * in.V + v0;
    finish_phase1<NT>(second, dV2 + 8 * rt * lay.v_ld + kHalf * cg, lay.v_ld, 16 * rt, kHalf * cg,
                      acc, [&](int i, int, int r, int c) { acc[c][r] = i < L ? -acc[c][r] : 0.f; });
    if (!second) {
      for_each_frag<NT>([&](int, int, int r, int c) { acc[c][r] = -acc[c][r]; });
      store_tile<NT>(dVnn, in.V, 16 * rt, kHalf * cg, L, vw, acc);
    }
    cp_async_wait<0>();  // q
    __syncthreads();
    stage_w(n, kbuf);
    if (n > 0) stage_p_do(n - 1, dO_next);
    cp_async_commit();
    // d_S += scale q^T d_o, after writing out the chunk's end-state gradient (the product runs
    // into t meanwhile). Measured slower: the stores moved to the end of the previous chunk, as
    // the forward does (no faster, spills under float32), or issued before the product (which
    // then waits behind them for its shared-memory operands: 585 -> 614 us bf16).
    float* ds_n = dstates + chunk * KV + v0;
    {
      float t[kMaxStateUnits][NT][4] = {};
      warp_mma_units<NT, kMaxStateUnits, kSplitProducts<T>>(
          t, my_units, lsteps, reinterpret_cast<const T*>(qbuf) + 16 * (warp / 2), lay.q_ld,
          dO + kHalf * (warp % 2), lay.o_ld);
      for_each_state_unit<NT>(n_units, [&](int u, int row0, int col0) {
        store_tile<NT>(ds_n, in.V, row0, col0, K, vw, dS[u]);
      });
      for_each_state_elem<NT>(
          n_units, [&](int u, int, int, int r, int c) { dS[u][c][r] += scale * t[u][c][r]; });
    }
    cp_async_wait<0>();  // W
    __syncthreads();
    if (n > 0) stage_in(in.k, in.k_strides, n - 1, qbuf, lay.k_ld);
    cp_async_commit();
    // d_S -= W^T d_V' (d_V' is held negated in dV2)
    warp_mma_units<NT, kMaxStateUnits, kSplitProducts<T>>(
        dS, my_units, lsteps, reinterpret_cast<const float*>(kbuf) + 16 * (warp / 2), lay.w_ld,
        dV2 + kHalf * (warp % 2), lay.v_ld);
    for_each_state_unit<NT>(n_units, [&](int u, int row0, int col0) {
      store_split<NT>(dS2 + row0 / 2 * lay.s_ld + col0, lay.s_ld, dS[u]);
    });
    cp_async_wait<0>();  // k_{n-1} (P_{n-1} and d_o_{n-1} came with W_n)
    __syncthreads();
    if (n > 0) stage_in(in.q, in.q_strides, n - 1, kbuf, lay.q_ld);
    cp_async_commit();
    flip = !flip;
  }
  cp_async_wait<0>();
  if (d_h0 != nullptr) {
    for_each_state_elem<NT>(n_units, [&](int u, int x, int j, int r, int c) {
      if (x < K && j < vw) store_state(d_h0, in.h0_dtype, bh * KV + x * in.V + v0 + j, dS[u][c][r]);
    });
  }
}

// ---- (3) forward: o of a chunk ----
//
// Block (b, h, chunk, kCols = 64 or 80 columns of V, tile_width(V)): o = scale (q S0 + P V'),
// a 64 x kCols tile of 16 x kCols/2 units. q S0 runs over 32-step pieces of K,
// double-buffered (pipelined_pieces); then P and the chunk's V' columns are staged over the
// piece buffers and P V' is added (41 KB of shared memory: three blocks per SM).
constexpr int kOutPiece = 32;  // contraction steps of q S0 per piece

struct OutLayout {
  int q_ld, s_ld, p_ld, v_ld;  // q piece [64][q_ld], S0 piece [32][s_ld], P, V' [64][.]
  int po_q, po_s;              // offsets inside a piece buffer
  int off_buf0, off_buf1;      // the two piece buffers
  int off_p, off_v;            // over the piece buffers, after the pieces
  int bytes;
};

template <class T, int kCols>
__global__ void __launch_bounds__(kThreads, 3)
    delta_rule_fwd_out_kernel(DeltaRuleInputs in, int64_t NC, OutLayout lay,
                              const float* __restrict__ P, const float* __restrict__ Vn,
                              const float* __restrict__ states, T* __restrict__ o) {
  constexpr int NT = kCols / 16, kHalf = kCols / 2;  // a warp's unit: 16 x kHalf
  extern __shared__ __align__(16) unsigned char delta_smem[];
  float* Ps = reinterpret_cast<float*>(delta_smem + lay.off_p);
  float* Vs = reinterpret_cast<float*>(delta_smem + lay.off_v);
  // A chunk's column tiles are neighbouring blocks, so they share its q and P through L2.
  const int64_t v_tiles = (in.V + kCols - 1) / kCols, chunk_block = blockIdx.x / v_tiles;
  const ChunkAt c = chunk_at(in, chunk_block / NC, chunk_block % NC);
  const int L = c.L, K = static_cast<int>(in.K), V = static_cast<int>(in.V);
  const int v0 = static_cast<int>(blockIdx.x % v_tiles) * kCols, vw = min(kCols, V - v0);
  const int warp = threadIdx.x / 32, rt = warp % 4, cg = warp / 4;
  const int64_t chunk = c.bh * NC + c.n, C = in.C;
  const float* S0 = states + chunk * in.K * in.V + v0;
  const RowsView<T> q = rows<T>(in.q, in.q_strides, c);
  const bool active = kHalf * cg < vw;  // the warp's columns hold some of the tile
  float acc[NT][4] = {};
  pipelined_pieces<kOutPiece>(
      K, delta_smem + lay.off_buf0, delta_smem + lay.off_buf1,
      [&](int x0, unsigned char* buf) {
        const int w = min(kOutPiece, K - x0);
        stage_tile(reinterpret_cast<T*>(buf + lay.po_q), lay.q_ld, q.p + x0 * q.cs, q.rs, q.cs, L,
                   w, kC, kOutPiece);
        stage_tile(reinterpret_cast<float*>(buf + lay.po_s), lay.s_ld, S0 + x0 * in.V, in.V, 1, w,
                   vw, kOutPiece, kCols);
      },
      [&](int x0, const unsigned char* buf) {
        if (!active) return;
        warp_mma<NT, false, false, kSplitProducts<T>>(
            acc, (min(kOutPiece, K - x0) + 7) / 8,
            reinterpret_cast<const T*>(buf + lay.po_q) + 16 * rt * lay.q_ld, lay.q_ld,
            reinterpret_cast<const float*>(buf + lay.po_s) + kHalf * cg, lay.s_ld);
      });
  // (the generic stager: the unrolled one spills under this kernel's 80 registers, 5% slower)
  stage_tile(Ps, lay.p_ld, P + chunk * C * C, C, 1, L, L, kC, kC);
  stage_tile(Vs, lay.v_ld, Vn + chunk * C * in.V + v0, in.V, 1, L, vw, kC, kCols);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  if (!active) return;
  warp_mma<NT, false, false, kSplitProducts<T>>(acc, (L + 7) / 8, Ps + 16 * rt * lay.p_ld, lay.p_ld,
                                                Vs + kHalf * cg, lay.v_ld);
  for_each_frag<NT>([&](int, int, int r, int cc) { acc[cc][r] *= in.scale; });
  store_tile<NT>(o + out_row(in, c, 0) * in.V + v0, in.H * in.V, 16 * rt, kHalf * cg, L, vw, acc);
}

// ---- (3') backward: the gradients of a chunk, in three kernels ----
//
// delta_rule_bwd_vgrad_kernel, block (b, h, chunk): over pieces of 32 columns of V,
//   Y = N^T d_V'                                        64 x 32, 16 x 16 units
//   d_v = diag(beta) Y, and the sums over V of
//   d_o V'^T and Y V'^T                                 64 x 64, 16 x 32 units held in the
//                                                       accumulators, and v_i . Y_i;
// then d_P = scale tril(d_o V'^T), dM = -(Y V'^T) strictly below the diagonal,
// Z = diag(beta) dM, and the part v_i . Y_i + sum_{j<i} dM_ij G_ij of d_beta_i. It writes Y,
// d_P, d_P^T, Z + Z^T and that part to scratch for
// delta_rule_bwd_kgrad_kernel, block (b, h, chunk, d_q or d_k, 64 or 80 columns of K):
//   d_q = scale d_o S0^T + d_P k
//   d_k = V' d_S^T - diag(beta) (Y S0^T) + d_P^T q + (Z + Z^T) k
// the contractions over V a piece of 32 columns at a time (the next piece staged while
// the current one is multiplied), then those over the chunk's rows; a d_k block also forms
// its K columns' part of -k_i . (Y S0^T)_i. d_beta_i = R_i . Y_i + sum_{j<i} dM_ij G_ij
// with R = v - k S0, and R_i . Y_i = v_i . Y_i - k_i . (Y S0^T)_i, so neither kernel forms
// R; delta_rule_bwd_dbeta_kernel adds the parts in a fixed order.
// Operands are staged with cp.async (zeros past L, K and V) and multiplied with warp_mma
// (kSplitProducts), as in (1) and (2).
constexpr int kGradPiece = 32;  // columns of V per step of both gradient kernels

struct VgradLayout {
  int v_ld, vn_ld, dv_ld, o_ld, y_ld;
  int po_v, po_vn, po_dv, po_o;  // offsets inside a piece buffer: v, V', d_V', d_o
  int off_buf0, off_buf1;        // the two piece buffers
  int off_n, off_y, off_beta, off_part;
  int bytes;
};

struct KgradLayout {
  int o_ld, a_ld, b_ld;               // a piece: d_o or V' and Y [64][o_ld / a_ld];
                                      // S0, d_S rows of the K tile [64][b_ld]
  int po_a, po_a2, po_s, po_ds;       // offsets inside a piece buffer: d_o or V', Y, S0, d_S
  int off_buf0, off_buf1;             // the two piece buffers
  int p_ld, k_ld;                     // d_P, d_P^T, Z + Z^T [64][p_ld]; k, q tiles [64][k_ld]
  int off_dp, off_z, off_kt, off_qt;  // over the piece buffers, after the pieces (off_dp
                                      // holds d_P or d_P^T)
  int off_beta, off_part;             // beta [64], row sums [2][64]
  int bytes;
};

template <class T>
__global__ void __launch_bounds__(kThreads, 2)
    delta_rule_bwd_vgrad_kernel(DeltaRuleInputs in, int64_t NC, VgradLayout lay, DoView d_o,
                                Scratch s, void* d_v_out, bool want_beta) {
  extern __shared__ __align__(16) unsigned char delta_smem[];
  float* Nm = reinterpret_cast<float*>(delta_smem + lay.off_n);  // N, then Z
  float* Ys = reinterpret_cast<float*>(delta_smem + lay.off_y);
  float* bs = reinterpret_cast<float*>(delta_smem + lay.off_beta);
  float* part = reinterpret_cast<float*>(delta_smem + lay.off_part);  // [4][64]
  const ChunkAt c = chunk_at(in, blockIdx.x / NC, blockIdx.x % NC);
  const int L = c.L, V = static_cast<int>(in.V);
  const int tid = threadIdx.x, warp = tid / 32, rt = warp % 4, cg = warp / 4;
  const int lsteps = (L + 7) / 8;
  const int64_t chunk = c.bh * NC + c.n, C = in.C;
  const float* dVnG = s.dVn + chunk * C * in.V;
  const float* VnG = s.kept.Vn + chunk * C * in.V;
  float* YG = s.Y + chunk * C * in.V;
  const RowsView<T> v = rows<T>(in.v, in.v_strides, c);
  const RowsView<T> dO = rows<T>(d_o.p, d_o.s, c);
  // Columns [y0, y0 + 32) of v, V', d_V' and d_o into a piece buffer.
  auto stage_piece = [&](int y0, unsigned char* buf) {
    const int w = min(kGradPiece, V - y0);
    stage_tile<kC, kGradPiece, kThreads>(reinterpret_cast<T*>(buf + lay.po_v), lay.v_ld,
                                         v.p + y0 * v.cs, v.rs, v.cs, L, w);
    stage_tile<kC, kGradPiece, kThreads>(reinterpret_cast<float*>(buf + lay.po_vn), lay.vn_ld,
                                         VnG + y0, in.V, 1, L, w);
    stage_tile<kC, kGradPiece, kThreads>(reinterpret_cast<float*>(buf + lay.po_dv), lay.dv_ld,
                                         dVnG + y0, in.V, 1, L, w);
    stage_tile<kC, kGradPiece, kThreads>(reinterpret_cast<T*>(buf + lay.po_o), lay.o_ld,
                                         dO.p + y0 * dO.cs, dO.rs, dO.cs, L, w);
  };
  // N joins the first piece's commit group.
  stage_tile<kC, kC, kThreads>(Nm, kLdG, s.kept.N + chunk * C * C, C, 1, L, L);
  load_beta<T>(in, c, bs);

  float acc_dP[4][4] = {}, acc_M[4][4] = {};
  float vy[2] = {0.f, 0.f};  // v_i . Y_i over the warp's columns, rows g and g + 8
  T* d_v = static_cast<T*>(d_v_out);
  pipelined_pieces<kGradPiece>(
      V, delta_smem + lay.off_buf0, delta_smem + lay.off_buf1, stage_piece,
      [&](int y0, const unsigned char* cur) {
        const int w = min(kGradPiece, V - y0);
        const T* Vs = reinterpret_cast<const T*>(cur + lay.po_v);
        const float* Vns = reinterpret_cast<const float*>(cur + lay.po_vn);
        // Y = N^T d_V' on the warp's 16 x 16 unit: out (d_v, Y) and into shared memory
        float Y[2][4] = {};
        warp_mma<2, true, false, kSplitProducts<T>>(
            Y, lsteps, Nm + 16 * rt, kLdG,
            reinterpret_cast<const float*>(cur + lay.po_dv) + 16 * cg, lay.dv_ld);
        float dv[2][4];
        for_each_frag<2>(16 * rt, 16 * cg, [&](int i, int j, int r, int cc) {
          vy[r / 2] = fmaf(to_f32(Vs[i * lay.v_ld + j]), Y[cc][r], vy[r / 2]);
          Ys[i * lay.y_ld + j] = Y[cc][r];
          dv[cc][r] = bs[i] * Y[cc][r];
        });
        store_tile<2>(YG + y0, in.V, 16 * rt, 16 * cg, L, w, Y);
        if (d_v != nullptr) {
          store_tile<2>(d_v + out_row(in, c, 0) * in.V + y0, in.H * in.V, 16 * rt, 16 * cg, L, w,
                        dv);
        }
        __syncthreads();  // Y is whole
        // d_P += d_o V'^T, M += Y V'^T over the piece's columns
        const int ysteps = (w + 7) / 8;
        warp_mma<4, false, true, kSplitProducts<T>>(
            acc_dP, ysteps, reinterpret_cast<const T*>(cur + lay.po_o) + 16 * rt * lay.o_ld,
            lay.o_ld, Vns + 32 * cg * lay.vn_ld, lay.vn_ld);
        warp_mma<4, false, true, kSplitProducts<T>>(acc_M, ysteps, Ys + 16 * rt * lay.y_ld,
                                                    lay.y_ld, Vns + 32 * cg * lay.vn_ld, lay.vn_ld);
      });

  // d_P and d_P^T out; Z = diag(beta) dM into Nm; sum_j dM_ij G_ij over the warp's columns
  const float scale = in.scale;
  float* dPg = s.dP + chunk * C * C;
  float* dPTg = s.dPT + chunk * C * C;
  const float* Gn = s.kept.G + chunk * C * C;
  float mg[2] = {0.f, 0.f};
  for_each_frag<4>(16 * rt, 32 * cg, [&](int i, int j, int r, int cc) {
    acc_dP[cc][r] = j <= i ? scale * acc_dP[cc][r] : 0.f;
    if (i < L && j < L) dPTg[j * C + i] = acc_dP[cc][r];
    float dm = 0.f;
    if (j < i && i < L) {
      dm = -acc_M[cc][r];
      mg[r / 2] = fmaf(dm, Gn[i * C + j], mg[r / 2]);
    }
    Nm[i * kLdG + j] = bs[i] * dm;
  });
  store_tile<4>(dPg, C, 16 * rt, 32 * cg, L, L, acc_dP);
  // Row sums per column group into part.
  store_row_sums(vy, 16 * rt, part + cg * kC);
  store_row_sums(mg, 16 * rt, part + (2 + cg) * kC);
  __syncthreads();
  if (tid < L && want_beta) {
    s.dBp[chunk * C + tid] =
        (part[tid] + part[kC + tid]) + (part[2 * kC + tid] + part[3 * kC + tid]);
  }
  float* Zg = s.Zs + chunk * C * C;
  for (int e = tid; e < L * L; e += kThreads) {
    const int i = e / L, j = e % L;
    Zg[i * C + j] = Nm[i * kLdG + j] + Nm[j * kLdG + i];
  }
}

template <class T, int kKT>
__global__ void __launch_bounds__(kThreads, 2)
    delta_rule_bwd_kgrad_kernel(DeltaRuleInputs in, int64_t NC, KgradLayout lay, DoView d_o,
                                Scratch s, const float* __restrict__ states, void* d_q_out,
                                void* d_k_out, bool want_beta) {
  constexpr int NT = kKT / 16, kCols = kKT / 2;  // a warp's units: 16 x kCols
  extern __shared__ __align__(16) unsigned char delta_smem[];
  const int64_t n_ktiles = (in.K + kKT - 1) / kKT, per_chunk = 2 * n_ktiles;
  const ChunkAt c = chunk_at(in, blockIdx.x / (NC * per_chunk), blockIdx.x / per_chunk % NC);
  const int slot = static_cast<int>(blockIdx.x % per_chunk);
  const bool for_k = slot >= n_ktiles;  // d_k (and a part of d_beta), else d_q
  const bool want_k = d_k_out != nullptr;
  if (for_k ? !(want_k || want_beta) : d_q_out == nullptr) return;
  const int tile = static_cast<int>(slot % n_ktiles), k0 = tile * kKT;
  const int L = c.L, K = static_cast<int>(in.K), V = static_cast<int>(in.V);
  const int kw = min(kKT, K - k0);
  const int tid = threadIdx.x, warp = tid / 32, rt = warp % 4, cg = warp / 4;
  const bool active = kCols * cg < kw;  // the warp's columns hold some of the tile
  const int64_t chunk = c.bh * NC + c.n, C = in.C, KV = in.K * in.V;
  const float* S0 = states + chunk * KV + k0 * in.V;
  const float* dS = s.dstates + chunk * KV + k0 * in.V;
  const float* VnG = s.kept.Vn + chunk * C * in.V;
  const float* YG = s.Y + chunk * C * in.V;
  const RowsView<T> dO = rows<T>(d_o.p, d_o.s, c);
  auto stage_piece = [&](int y0, unsigned char* buf) {
    const int w = min(kGradPiece, V - y0);
    if (for_k) {
      stage_tile<kC, kGradPiece, kThreads>(reinterpret_cast<float*>(buf + lay.po_a), lay.a_ld,
                                           VnG + y0, in.V, 1, L, w);
      stage_tile<kC, kGradPiece, kThreads>(reinterpret_cast<float*>(buf + lay.po_a2), lay.a_ld,
                                           YG + y0, in.V, 1, L, w);
      stage_tile<kKT, kGradPiece, kThreads>(reinterpret_cast<float*>(buf + lay.po_ds), lay.b_ld,
                                            dS + y0, in.V, 1, kw, w);
    } else {
      stage_tile<kC, kGradPiece, kThreads>(reinterpret_cast<T*>(buf + lay.po_a), lay.o_ld,
                                           dO.p + y0 * dO.cs, dO.rs, dO.cs, L, w);
    }
    stage_tile<kKT, kGradPiece, kThreads>(reinterpret_cast<float*>(buf + lay.po_s), lay.b_ld,
                                          S0 + y0, in.V, 1, kw, w);
  };
  // The contractions over V: d_q blocks acc = d_o S0^T; d_k blocks acc = V' d_S^T and
  // acc_y = Y S0^T.
  float acc[NT][4] = {}, acc_y[NT][4] = {};
  pipelined_pieces<kGradPiece>(
      V, delta_smem + lay.off_buf0, delta_smem + lay.off_buf1, stage_piece,
      [&](int y0, const unsigned char* cur) {
        if (!active) return;
        const int ysteps = (min(kGradPiece, V - y0) + 7) / 8;
        const float* S0s = reinterpret_cast<const float*>(cur + lay.po_s) + kCols * cg * lay.b_ld;
        if (for_k) {
          warp_mma<NT, false, true, kSplitProducts<T>>(
              acc, ysteps, reinterpret_cast<const float*>(cur + lay.po_a) + 16 * rt * lay.a_ld,
              lay.a_ld, reinterpret_cast<const float*>(cur + lay.po_ds) + kCols * cg * lay.b_ld,
              lay.b_ld);
          warp_mma<NT, false, true, kSplitProducts<T>>(
              acc_y, ysteps, reinterpret_cast<const float*>(cur + lay.po_a2) + 16 * rt * lay.a_ld,
              lay.a_ld, S0s, lay.b_ld);
        } else {
          warp_mma<NT, false, true, kSplitProducts<T>>(
              acc, ysteps, reinterpret_cast<const T*>(cur + lay.po_a) + 16 * rt * lay.o_ld,
              lay.o_ld, S0s, lay.b_ld);
        }
      });
  // The contractions over the chunk's rows: d_P k, or d_P^T q and (Z + Z^T) k.
  float* dPs = reinterpret_cast<float*>(delta_smem + lay.off_dp);  // d_P or d_P^T
  float* Zs = reinterpret_cast<float*>(delta_smem + lay.off_z);
  T* kt = reinterpret_cast<T*>(delta_smem + lay.off_kt);
  T* qt = reinterpret_cast<T*>(delta_smem + lay.off_qt);
  float* bs = reinterpret_cast<float*>(delta_smem + lay.off_beta);
  float* part = reinterpret_cast<float*>(delta_smem + lay.off_part);
  const RowsView<T> k = rows<T>(in.k, in.k_strides, c);
  stage_tile<kC, kKT, kThreads>(kt, lay.k_ld, k.p + k0 * k.cs, k.rs, k.cs, L, kw);
  stage_tile<kC, kC, kThreads>(dPs, lay.p_ld, (for_k ? s.dPT : s.dP) + chunk * C * C, C, 1, L, L);
  if (for_k) {
    const RowsView<T> q = rows<T>(in.q, in.q_strides, c);
    stage_tile<kC, kKT, kThreads>(qt, lay.k_ld, q.p + k0 * q.cs, q.rs, q.cs, L, kw);
    stage_tile<kC, kC, kThreads>(Zs, lay.p_ld, s.Zs + chunk * C * C, C, 1, L, L);
    load_beta<T>(in, c, bs);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  const int lsteps = (L + 7) / 8;
  auto store = [&](void* out) {
    store_tile<NT>(static_cast<T*>(out) + out_row(in, c, 0) * in.K + k0, in.H * in.K, 16 * rt,
                   kCols * cg, L, kw, acc);
  };
  if (!for_k) {
    if (!active) return;
    for_each_frag<NT>([&](int, int, int r, int cc) { acc[cc][r] *= in.scale; });
    warp_mma<NT, false, false, kSplitProducts<T>>(acc, lsteps, dPs + 16 * rt * lay.p_ld, lay.p_ld,
                                                  kt + kCols * cg, lay.k_ld);
    store(d_q_out);
    return;
  }
  // d_beta's part -k_i . (Y S0^T)_i over this tile's columns (zeros past L and kw), and
  // -diag(beta) (Y S0^T) into d_k
  float ky[2] = {0.f, 0.f};
  if (active) {
    for_each_frag<NT>(16 * rt, kCols * cg, [&](int i, int x, int r, int cc) {
      ky[r / 2] = fmaf(to_f32(kt[i * lay.k_ld + x]), acc_y[cc][r], ky[r / 2]);
      acc[cc][r] = fmaf(-bs[i], acc_y[cc][r], acc[cc][r]);
    });
  }
  store_row_sums(ky, 16 * rt, part + cg * kC);
  __syncthreads();
  if (want_beta && tid < L) {
    s.dBp[((1 + tile) * in.B * in.H * NC + chunk) * C + tid] = -(part[tid] + part[kC + tid]);
  }
  if (!active || !want_k) return;
  warp_mma<NT, false, false, kSplitProducts<T>>(acc, lsteps, dPs + 16 * rt * lay.p_ld, lay.p_ld,
                                                qt + kCols * cg, lay.k_ld);
  warp_mma<NT, false, false, kSplitProducts<T>>(acc, lsteps, Zs + 16 * rt * lay.p_ld, lay.p_ld,
                                                kt + kCols * cg, lay.k_ld);
  store(d_k_out);
}

// Block of 256 rows (b, h, chunk, row): d_beta = the sum of its n_parts parts, in order.
template <class T>
__global__ void __launch_bounds__(256)
    delta_rule_bwd_dbeta_kernel(DeltaRuleInputs in, int64_t NC, int64_t n_parts,
                                const float* __restrict__ parts, T* __restrict__ d_beta) {
  const int64_t rows = in.B * in.H * NC * in.C;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= rows) return;
  const int64_t chunk = e / in.C;
  const int i = static_cast<int>(e % in.C);
  const ChunkAt c = chunk_at(in, chunk / NC, chunk % NC);
  if (i >= c.L) return;
  float x = 0.f;
  for (int64_t p = 0; p < n_parts; ++p) x += parts[p * rows + e];
  d_beta[out_row(in, c, i)] = from_f32<T>(x);
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
  // Blocks of the widest grids: the narrowest recurrence tiles, the K-gradient kernel's.
  const int64_t n_tiles = (in.V + 15) / 16, NC = (in.T + in.C - 1) / in.C;
  const int64_t chunk_tiles = NC * 2 * std::max(k_tiles(in), (in.V + 63) / 64);
  const int64_t blocks = in.B * in.H * std::max(n_tiles, chunk_tiles);
  if (blocks > 0x7fffffff) {
    return "delta_rule CUDA: B * H * max(V / 16, 2 T / C * max(K, V) tiles of 64 or 80) above "
           "2^31 - 1";
  }
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
// copies) at which a warp's fragment read of esize-byte elements (2, 4, or 16: SplitPairs)
// meets no bank conflict: lane (g, t) = (lane / 4, lane % 4) reads row g, column t, or
// with by_cols row t, column g (an operand read transposed). 16-byte reads are served
// eight lanes at a time.
int conflict_free_ld(int n, int esize, bool by_cols) {
  const int step = esize == 16 ? 1 : 8 / esize, first = (n + step - 1) / step * step;
  const int words = esize == 16 ? 4 : 1, lanes = esize == 16 ? 8 : 32;
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

// Hands out consecutive 16-byte aligned regions of a block's dynamic shared memory.
struct SmemCursor {
  int off = 0;  // bytes handed out so far
  int take(int bytes) {
    const int at = off;
    off += (bytes + 15) / 16 * 16;
    return at;
  }
};

// Shared memory of a recurrence block with bv state columns (esize: bytes of the inputs).
RecurLayout recur_layout(const DeltaRuleInputs& in, bool fwd, int esize, int bv) {
  RecurLayout l{};
  const int K = static_cast<int>(in.K);
  l.kp8 = (K + 7) / 8 * 8;
  l.kp16 = (K + 15) / 16 * 16;
  SmemCursor smem;
  if (fwd) {
    l.w_ld = conflict_free_ld(l.kp16, 4, false);     // W as A, read by rows
    l.k_ld = conflict_free_ld(l.kp16, esize, true);  // k^T as A
    l.off_a = smem.take(kC * l.w_ld * 4);
    l.off_b = smem.take(kC * l.k_ld * esize);
  } else {
    l.w_ld = conflict_free_ld(l.kp16, 4, true);       // W^T as A
    l.k_ld = conflict_free_ld(l.kp16, esize, false);  // k as A
    l.q_ld = conflict_free_ld(l.kp16, esize, true);   // q^T as A
    const int buf = std::max({kC * l.w_ld * 4, kC * l.k_ld * esize, kC * l.q_ld * esize});
    l.off_a = smem.take(buf);
    l.off_b = smem.take(buf);
    l.p_ld = conflict_free_ld(kC, 4, true);  // P^T as A
    l.o_ld = conflict_free_ld(bv, esize, true);
    l.off_p = smem.take(kC * l.p_ld * 4);
    l.off_o0 = smem.take(kC * l.o_ld * esize);
    l.off_o1 = smem.take(kC * l.o_ld * esize);
  }
  l.v_ld = conflict_free_ld(bv, 16, true);  // V' / d_V' as B, SplitPairs
  l.s_ld = conflict_free_ld(bv, 16, true);  // S / d_S as B, SplitPairs
  l.off_v = smem.take(kC / 2 * l.v_ld * 16);
  l.off_s = smem.take(l.kp16 / 2 * l.s_ld * 16);
  l.bytes = smem.off;
  return l;
}

// Shared memory of the WY kernel (esize: bytes of the inputs).
WyLayout wy_layout(const DeltaRuleInputs& in, int esize) {
  WyLayout l{};
  const int K = static_cast<int>(in.K), V = static_cast<int>(in.V);
  l.kp8 = (K + 7) / 8 * 8;
  l.kp32 = (K + 31) / 32 * 32;
  l.q_piece = std::min(l.kp8, kWyPiece);
  l.v_piece = std::min((V + 31) / 32 * 32, kWyPiece);
  l.k_ld = conflict_free_ld(l.kp32, esize, false);     // k as A and as transposed B
  l.q_ld = conflict_free_ld(l.q_piece, esize, false);  // q as A
  l.v_ld = conflict_free_ld(l.v_piece, esize, true);   // v as B
  SmemCursor smem;
  l.off_k = smem.take(kC * l.k_ld * esize);
  l.off_x = smem.take(kC * std::max(l.q_ld, l.v_ld) * esize);
  l.off_g = smem.take(kC * kLdG * 4);
  l.off_n = smem.take(kC * kLdG * 4);
  l.off_b = smem.take(kC * 4);
  l.off_t = smem.take(16 * kLdX * 4);
  l.bytes = smem.off;
  return l;
}

// Shared memory of the output kernel (esize: bytes of the inputs) for tiles of `cols`
// columns of V.
OutLayout out_layout(int esize, int cols) {
  OutLayout l{};
  l.q_ld = conflict_free_ld(kOutPiece, esize, false);  // q as A
  l.s_ld = conflict_free_ld(cols, 4, true);            // S0 as B
  l.p_ld = conflict_free_ld(kC, 4, false);             // P as A
  l.v_ld = conflict_free_ld(cols, 4, true);            // V' as B
  SmemCursor smem;
  l.po_q = smem.take(kC * l.q_ld * esize);
  l.po_s = smem.take(kOutPiece * l.s_ld * 4);
  const int piece = smem.off;
  l.off_buf0 = 0;
  l.off_buf1 = smem.take(piece);
  const int pieces = smem.off;
  smem.off = 0;
  l.off_p = smem.take(kC * l.p_ld * 4);
  l.off_v = smem.take(kC * l.v_ld * 4);
  l.bytes = std::max(pieces, smem.off);
  return l;
}

// Shared memory of the V-gradient kernel (esize: bytes of the inputs); K and V do not
// enter it.
VgradLayout vgrad_layout(int esize) {
  VgradLayout l{};
  l.v_ld = conflict_free_ld(kGradPiece, esize, false);  // v, read at the fragments
  l.vn_ld = conflict_free_ld(kGradPiece, 4, false);     // V' as transposed B
  l.dv_ld = conflict_free_ld(kGradPiece, 4, true);      // d_V' as B
  l.o_ld = conflict_free_ld(kGradPiece, esize, false);  // d_o as A
  l.y_ld = conflict_free_ld(kGradPiece, 4, false);      // Y as A
  SmemCursor smem;
  l.po_v = smem.take(kC * l.v_ld * esize);
  l.po_vn = smem.take(kC * l.vn_ld * 4);
  l.po_dv = smem.take(kC * l.dv_ld * 4);
  l.po_o = smem.take(kC * l.o_ld * esize);
  const int piece = smem.off;
  l.off_buf0 = 0;
  l.off_buf1 = smem.take(piece);
  l.off_n = smem.take(kC * kLdG * 4);
  l.off_y = smem.take(kC * l.y_ld * 4);
  l.off_beta = smem.take(kC * 4);
  l.off_part = smem.take(4 * kC * 4);
  l.bytes = smem.off;
  return l;
}

// Shared memory of the K-gradient kernel (esize: bytes of the inputs) for K tiles of kt
// columns; K and V do not enter it otherwise.
KgradLayout kgrad_layout(int esize, int kt) {
  KgradLayout l{};
  l.o_ld = conflict_free_ld(kGradPiece, esize, false);  // d_o as A
  l.a_ld = conflict_free_ld(kGradPiece, 4, false);      // V', Y as A
  l.b_ld = conflict_free_ld(kGradPiece, 4, false);      // S0, d_S as transposed B
  l.p_ld = conflict_free_ld(kC, 4, false);              // d_P, d_P^T, Z + Z^T as A
  l.k_ld = conflict_free_ld(kt, esize, true);           // k, q as B
  SmemCursor smem;
  l.po_a = smem.take(kC * std::max(l.o_ld * esize, l.a_ld * 4));
  l.po_a2 = smem.take(kC * l.a_ld * 4);
  l.po_s = smem.take(kt * l.b_ld * 4);
  l.po_ds = smem.take(kt * l.b_ld * 4);
  l.off_buf0 = 0;
  l.off_buf1 = smem.off;
  const int pieces = 2 * smem.off;
  smem.off = 0;
  l.off_dp = smem.take(kC * l.p_ld * 4);
  l.off_z = smem.take(kC * l.p_ld * 4);
  l.off_kt = smem.take(kC * l.k_ld * esize);
  l.off_qt = smem.take(kC * l.k_ld * esize);
  l.off_beta = smem.take(kC * 4);
  l.off_part = smem.take(2 * kC * 4);
  l.bytes = std::max(pieces, smem.off);
  return l;
}

// f(std::integral_constant<int, w>) for w a width of tile_width (64 or 80).
template <class F>
void with_tile(int w, const F& f) {
  if (w == 80) {
    f(std::integral_constant<int, 80>{});
  } else {
    f(std::integral_constant<int, 64>{});
  }
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
  const bool units_fit = 2 * ((in.K + 15) / 16) <= kRecurWarps * kMaxStateUnits;
  for (int bv : kRecurCols) {
    if (!units_fit) break;
    if (forced != 0 && bv != forced) continue;
    const RecurLayout lay = recur_layout(in, fwd, esize, bv);
    if (lay.bytes > max_optin) continue;
    const void* kernel = kernel_of(bv);
    int per_sm = 0;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, lay.bytes) !=
            cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kRecurThreads, lay.bytes) !=
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
  FwdKept<float> kept;
  fwd_layout(in, p.kept != nullptr, static_cast<float*>(p.scratch), kept, s);
  if (p.kept != nullptr) kept_regions(in, true, p.kept, kept);
  const char* err = nullptr;
  if (NC > 0) {
    const WyLayout wl = wy_layout(in, sizeof(T));
    if ((err = allow_smem(delta_rule_wy_kernel<T>, wl.bytes))) return err;
    delta_rule_wy_kernel<T><<<static_cast<unsigned>(BH * NC), kThreads, wl.bytes, stream>>>(
        in, NC, wl, kept.W, s.U, kept.P, kept.N, kept.G);
    if ((err = last_error())) return err;
  }
  RecurPlan plan;
  if ((err = plan_recurrence(in, true, sizeof(T), fwd_state_kernel<T>, plan))) return err;
  with_cols(plan.bv, [&](auto cols) {
    delta_rule_fwd_state_kernel<T, cols.value>
        <<<recur_blocks(in, plan.bv), kRecurThreads, plan.lay.bytes, stream>>>(
            in, NC, plan.lay, kept.W, s.U, kept.Vn, p.states, p.S_T);
  });
  if ((err = last_error())) return err;
  if (NC > 0) {
    const int cols = tile_width(in.V);
    const unsigned grid = static_cast<unsigned>(BH * NC * ((in.V + cols - 1) / cols));
    const OutLayout ol = out_layout(sizeof(T), cols);
    with_tile(cols, [&](auto w) {
      const auto kernel = delta_rule_fwd_out_kernel<T, w.value>;
      if ((err = allow_smem(kernel, ol.bytes))) return;
      kernel<<<grid, kThreads, ol.bytes, stream>>>(in, NC, ol, kept.P, kept.Vn, p.states,
                                                   static_cast<T*>(p.o));
      err = last_error();
    });
    if (err) return err;
  }
  return nullptr;
}

// The backward reads W, P, V', N and G from the forward's buffer (no WY kernel).
template <class T>
const char* bwd_impl(const DeltaRuleBwdParams& p, cudaStream_t stream) {
  const DeltaRuleInputs& in = p.in;
  const int64_t NC = num_chunks(in), BH = in.B * in.H;
  if (BH == 0) return nullptr;
  Scratch s;
  bwd_layout(in, static_cast<float*>(p.scratch), s);
  kept_regions(in, true, p.kept, s.kept);
  DoView d_o{p.d_o, {p.d_o_strides[0], p.d_o_strides[1], p.d_o_strides[2], p.d_o_strides[3]}};
  const char* err = nullptr;
  RecurPlan plan;
  if ((err = plan_recurrence(in, false, sizeof(T), bwd_state_kernel<T>, plan))) return err;
  with_cols(plan.bv, [&](auto cols) {
    delta_rule_bwd_state_kernel<T, cols.value>
        <<<recur_blocks(in, plan.bv), kRecurThreads, plan.lay.bytes, stream>>>(
            in, NC, plan.lay, d_o, s.kept.P, s.kept.W, p.d_S_T, s.dVn, s.dstates, p.d_h0);
  });
  if ((err = last_error())) return err;
  const bool want_beta = p.d_beta != nullptr;
  const bool any = p.d_q != nullptr || p.d_k != nullptr || p.d_v != nullptr || want_beta;
  if (NC == 0 || !any) return nullptr;
  const VgradLayout vl = vgrad_layout(sizeof(T));
  if ((err = allow_smem(delta_rule_bwd_vgrad_kernel<T>, vl.bytes))) return err;
  delta_rule_bwd_vgrad_kernel<T><<<static_cast<unsigned>(BH * NC), kThreads, vl.bytes, stream>>>(
      in, NC, vl, d_o, s, p.d_v, want_beta);
  if ((err = last_error())) return err;
  if (p.d_q != nullptr || p.d_k != nullptr || want_beta) {
    const int kt = tile_width(in.K);
    const KgradLayout kl = kgrad_layout(sizeof(T), kt);
    const unsigned blocks = static_cast<unsigned>(BH * NC * 2 * k_tiles(in));
    with_tile(kt, [&](auto w) {
      const auto kernel = delta_rule_bwd_kgrad_kernel<T, w.value>;
      if ((err = allow_smem(kernel, kl.bytes))) return;
      kernel<<<blocks, kThreads, kl.bytes, stream>>>(in, NC, kl, d_o, s, p.states, p.d_q, p.d_k,
                                                     want_beta);
      err = last_error();
    });
    if (err) return err;
  }
  if (want_beta) {
    const int64_t rows = BH * NC * in.C;
    delta_rule_bwd_dbeta_kernel<T><<<static_cast<unsigned>((rows + 255) / 256), 256, 0, stream>>>(
        in, NC, beta_parts(in), s.dBp, static_cast<T*>(p.d_beta));
    if ((err = last_error())) return err;
  }
  return nullptr;
}

}  // namespace

size_t delta_rule_kept_bytes(const DeltaRuleInputs& in) {
  FwdKept<float> k;
  return static_cast<size_t>(kept_regions<float>(in, true, nullptr, k)) * sizeof(float);
}

size_t delta_rule_fwd_scratch_bytes(const DeltaRuleFwdParams& p) {
  Scratch s;
  FwdKept<float> k;
  return static_cast<size_t>(fwd_layout(p.in, p.kept != nullptr, nullptr, k, s)) * sizeof(float);
}

size_t delta_rule_bwd_scratch_bytes(const DeltaRuleBwdParams& p) {
  Scratch s;
  return static_cast<size_t>(bwd_layout(p.in, nullptr, s)) * sizeof(float);
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
  if (rows &&
      (p.states == nullptr || p.kept == nullptr || p.d_o == nullptr || p.scratch == nullptr)) {
    return "delta_rule_bwd_cuda: states, kept, d_o or scratch not given";
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
