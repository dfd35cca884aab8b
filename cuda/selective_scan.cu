// Selective scan kernels (maps in cuda/selective_scan.h).
//
// selective_scan_fwd_chunk_kernel  fwd 1: thread (b, chunk < last, d): own end state from
//                                  zero, [B, chunks, N, D], and sum delta, [B, chunks, D]
// selective_scan_carry_kernel      fwd 2 / bwd 2: thread (b, n, d) walks the chunks
// selective_scan_fwd_kernel        fwd 3: thread (b, chunk, d): y from the checkpoint, h_T
// selective_scan_bwd_chunk_kernel  bwd 1: thread (b, chunk > 0, d): the chunk's own
//                                  r_{t0} = a_{t0} g_{t0} from a zero carry, and sum delta
// selective_scan_bwd_kernel        bwd 3: thread (b, chunk, d): every gradient of the chunk
// selective_scan_bwd_bc_kernel     d_B, d_C: thread (b, t, n) sums the block partials
// selective_scan_bwd_ad_kernel     d_A, d_D_skip: thread (n, d) sums the (b, chunk) partials
//
// Decays: a_t = exp2(delta_t A2) with A2 = A log2(e); a chunk's decay product is
// exp2(A2 sum_t delta_t). Backward carries r_t = a_t g_t, the gradient reaching h_{t-1}:
// g_t = C_t d_y_t + r_{t+1} with r_T = d_h_T, so a chunk [t0, t1) maps r_{t1} to
// r_{t0} = exp2(A2 sum delta) r_{t1} + (its own r_{t0} from r_{t1} = 0).
//
// Buffers, all float32: `own` [B, chunks, N, D] holds pass 1's own parts and is replaced by
// pass 2 with the carry entering every chunk: the forward's checkpoints (saved), the
// backward's r_{t1}. In backward, after a chunk has read its r_{t1}, its thread writes its
// d_A partial into the same slot, and its d_D_skip partial over the chunk's sum of delta.
//
// bwd 3 per chunk: recompute the states forward from the checkpoint, keeping the state at
// the start of every sub-chunk of S = 64 / NMAX steps (local memory); then for each
// sub-chunk from the last: recompute its S + 1 states into registers and walk them in
// reverse with g. d_B_t and d_C_t contributions (u_t g_t[n], d_y_t h_t[n]) are summed over
// the 32 lanes of each warp through shared memory (lane q sums column q of a 32 x 32
// tile), kept per warp for the chunk, and summed over the warps at the chunk's end.
//
// Blocks: kThreads(NMAX) threads over d (128, or 64 / 32 for NMAX = 32 / 64 so that the
// shared tiles fit); grid.y over (b, chunk) with a grid-stride loop.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda/convert.cuh"
#include "cuda/fast_exp.cuh"
#include "cuda/selective_scan.h"

namespace resona::cuda {
namespace {

constexpr int64_t L = kSelectiveScanChunk;
constexpr float kLn2 = 0.6931471805599453f;

template <int NMAX>
constexpr int kThreads = NMAX <= 16 ? 128 : (NMAX == 32 ? 64 : 32);
template <int NMAX>
constexpr int kSub = NMAX >= 64 ? 1 : 64 / NMAX;  // steps per register sub-chunk
static_assert(L % kSub<4> == 0 && L % kSub<64> == 0, "sub-chunks tile a chunk");

const char* last_error() {
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

unsigned grid_y(int64_t n) { return static_cast<unsigned>(n > 65535 ? 65535 : (n < 1 ? 1 : n)); }
unsigned grid_1d(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  if (b > 65535 * 8) b = 65535 * 8;
  return static_cast<unsigned>(b < 1 ? 1 : b);
}

int64_t n_chunks(int64_t T) { return (T + L - 1) / L; }

// rows [row0, row0 + len) of a [*, N] tensor into tile[L][NMAX] as float32, zeros past
// len and N. Called by the whole block.
template <class T, int NMAX>
__device__ void load_tile(float (*tile)[NMAX], const T* __restrict__ src, int64_t row0, int64_t len,
                          int64_t N) {
  for (int k = threadIdx.x; k < L * NMAX; k += blockDim.x) {
    const int i = k / NMAX, n = k % NMAX;
    tile[i][n] = (i < len && n < N) ? to_f32(src[(row0 + i) * N + n]) : 0.f;
  }
}

// A[d, :] log2(e) into registers (zeros past N and for d >= D).
template <class T, int NMAX>
__device__ __forceinline__ void load_A2(float (&A2)[NMAX], const T* __restrict__ A, int64_t d,
                                        int64_t D, int64_t N) {
#pragma unroll
  for (int n = 0; n < NMAX; ++n) A2[n] = (d < D && n < N) ? to_f32(A[d * N + n]) * kLog2e : 0.f;
}

// One [*, N, D] slot (d's N values) into registers, zeros past N and for d >= D.
template <int NMAX>
__device__ __forceinline__ void load_slot(float (&v)[NMAX], const float* __restrict__ src,
                                          int64_t d, int64_t D, int64_t N) {
#pragma unroll
  for (int n = 0; n < NMAX; ++n) v[n] = (d < D && n < N) ? src[n * D + d] : 0.f;
}

template <class T, int NMAX>
__global__ void __launch_bounds__(kThreads<NMAX>)
    selective_scan_fwd_chunk_kernel(int64_t B, int64_t T_len, int64_t D, int64_t N, int64_t chunks,
                                    const T* __restrict__ x, const T* __restrict__ delta,
                                    const T* __restrict__ A, const T* __restrict__ Bm,
                                    float* __restrict__ own, float* __restrict__ dsum) {
  __shared__ float Bs[L][NMAX];
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = d < D;
  float A2[NMAX];
  load_A2<T, NMAX>(A2, A, d, D, N);
  const int64_t per_b = chunks - 1;  // the last chunk's end state is never carried
  for (int64_t bc = blockIdx.y; bc < B * per_b; bc += gridDim.y) {
    const int64_t b = bc / per_b, c = bc % per_b;
    const int64_t row0 = b * T_len + c * L;  // a full chunk: only the last can be short
    __syncthreads();
    load_tile<T, NMAX>(Bs, Bm, row0, L, N);
    __syncthreads();
    if (!active) continue;
    float h[NMAX];
#pragma unroll
    for (int n = 0; n < NMAX; ++n) h[n] = 0.f;
    float sd = 0.f;
    for (int i = 0; i < L; ++i) {
      const float dl = to_f32(delta[(row0 + i) * D + d]);
      const float u = dl * to_f32(x[(row0 + i) * D + d]);
#pragma unroll
      for (int n = 0; n < NMAX; ++n) h[n] = fmaf(exp2f(dl * A2[n]), h[n], u * Bs[i][n]);
      sd += dl;
    }
    float* slot = own + (b * chunks + c) * N * D;
#pragma unroll
    for (int n = 0; n < NMAX; ++n) {
      if (n < N) slot[n * D + d] = h[n];
    }
    dsum[(b * chunks + c) * D + d] = sd;
  }
}

// Walks the chunks of one (b, n, d): own[b, c, n, d] (chunk c's own part, or unused for the
// chunk without a successor in the walk) becomes the carry entering chunk c.
//   forward  (reverse = false): s_0 = h0, s_{c+1} = exp2(A2 dsum_c) s_c + own_c
//   backward (reverse = true):  r_last = d_h_T, r_{c-1} = exp2(A2 dsum_c) r_c + own_c
template <class T>
__global__ void selective_scan_carry_kernel(int64_t B, int64_t D, int64_t N, int64_t chunks,
                                            bool reverse, const T* __restrict__ A,
                                            const void* __restrict__ start, bool start_f32,
                                            float* __restrict__ own,
                                            const float* __restrict__ dsum) {
  const int64_t total = B * N * D;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t d = i % D, n = (i / D) % N, b = i / (N * D);
    const int64_t si = (b * D + d) * N + n;  // [B, D, N]
    float s = 0.f;
    if (start) {
      s = start_f32 ? static_cast<const float*>(start)[si]
                    : to_f32(static_cast<const T*>(start)[si]);
    }
    const float A2 = to_f32(A[d * N + n]) * kLog2e;
    for (int64_t k = 0; k < chunks; ++k) {
      const int64_t c = reverse ? chunks - 1 - k : k;
      const bool last = k + 1 == chunks;
      float* slot = own + ((b * chunks + c) * N + n) * D + d;
      const float mine = last ? 0.f : *slot;
      const float dec = last ? 0.f : exp2f(A2 * dsum[(b * chunks + c) * D + d]);
      *slot = s;
      s = fmaf(dec, s, mine);
    }
  }
}

template <class T, int NMAX>
__global__ void __launch_bounds__(kThreads<NMAX>)
    selective_scan_fwd_kernel(int64_t B, int64_t T_len, int64_t D, int64_t N, int64_t chunks,
                              const T* __restrict__ x, const T* __restrict__ delta,
                              const T* __restrict__ A, const T* __restrict__ Bm,
                              const T* __restrict__ Cm, const T* __restrict__ D_skip,
                              const float* __restrict__ ckpt, T* __restrict__ y,
                              float* __restrict__ h_T) {
  __shared__ float Bs[L][NMAX];
  __shared__ float Cs[L][NMAX];
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = d < D;
  float A2[NMAX];
  load_A2<T, NMAX>(A2, A, d, D, N);
  const float Dd = (active && D_skip) ? to_f32(D_skip[d]) : 0.f;
  for (int64_t bc = blockIdx.y; bc < B * chunks; bc += gridDim.y) {
    const int64_t b = bc / chunks, c = bc % chunks;
    const int64_t t0 = c * L, len = T_len - t0 < L ? T_len - t0 : L;
    const int64_t row0 = b * T_len + t0;
    __syncthreads();
    load_tile<T, NMAX>(Bs, Bm, row0, len, N);
    load_tile<T, NMAX>(Cs, Cm, row0, len, N);
    __syncthreads();
    if (!active) continue;
    float h[NMAX];
    load_slot<NMAX>(h, ckpt + (b * chunks + c) * N * D, d, D, N);
    for (int i = 0; i < len; ++i) {
      const float dl = to_f32(delta[(row0 + i) * D + d]);
      const float xv = to_f32(x[(row0 + i) * D + d]);
      const float u = dl * xv;
      float acc = 0.f;
#pragma unroll
      for (int n = 0; n < NMAX; ++n) {
        h[n] = fmaf(exp2f(dl * A2[n]), h[n], u * Bs[i][n]);
        acc = fmaf(Cs[i][n], h[n], acc);
      }
      store(y + (row0 + i) * D + d, fmaf(Dd, xv, acc));
    }
    if (c == chunks - 1) {
#pragma unroll
      for (int n = 0; n < NMAX; ++n) {
        if (n < N) h_T[(b * D + d) * N + n] = h[n];
      }
    }
  }
}

template <class T, int NMAX>
__global__ void __launch_bounds__(kThreads<NMAX>)
    selective_scan_bwd_chunk_kernel(int64_t B, int64_t T_len, int64_t D, int64_t N, int64_t chunks,
                                    const T* __restrict__ delta, const T* __restrict__ A,
                                    const T* __restrict__ Cm, const T* __restrict__ d_y,
                                    float* __restrict__ own, float* __restrict__ dsum) {
  __shared__ float Cs[L][NMAX];
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = d < D;
  float A2[NMAX];
  load_A2<T, NMAX>(A2, A, d, D, N);
  const int64_t per_b = chunks - 1;  // chunk 0's r_{t0} (d_h0) is never carried
  for (int64_t bc = blockIdx.y; bc < B * per_b; bc += gridDim.y) {
    const int64_t b = bc / per_b, c = 1 + bc % per_b;
    const int64_t t0 = c * L, len = T_len - t0 < L ? T_len - t0 : L;
    const int64_t row0 = b * T_len + t0;
    __syncthreads();
    load_tile<T, NMAX>(Cs, Cm, row0, len, N);
    __syncthreads();
    if (!active) continue;
    float r[NMAX];
#pragma unroll
    for (int n = 0; n < NMAX; ++n) r[n] = 0.f;
    float sd = 0.f;
    for (int i = static_cast<int>(len) - 1; i >= 0; --i) {
      const float dl = to_f32(delta[(row0 + i) * D + d]);
      const float dy = to_f32(d_y[(row0 + i) * D + d]);
#pragma unroll
      for (int n = 0; n < NMAX; ++n) r[n] = exp2f(dl * A2[n]) * fmaf(Cs[i][n], dy, r[n]);
      sd += dl;
    }
    float* slot = own + (b * chunks + c) * N * D;
#pragma unroll
    for (int n = 0; n < NMAX; ++n) {
      if (n < N) slot[n * D + d] = r[n];
    }
    dsum[(b * chunks + c) * D + d] = sd;
  }
}

struct BwdArgs {
  int64_t B, T, D, N, chunks, blocks_x;
  const void *x, *delta, *A, *Bm, *Cm, *D_skip, *d_y;
  const float* ckpt;
  float* own;         // in: r entering each chunk from the right; out: d_A partials
  float* dsum;        // out: d_D_skip partials
  float* bc_partial;  // [B, T, blocks_x, 2N] or nullptr when neither d_B nor d_C is wanted
  void *d_x, *d_delta, *d_h0;
  bool d_h0_f32;
};

template <class T, int NMAX>
__global__ void __launch_bounds__(kThreads<NMAX>) selective_scan_bwd_kernel(const BwdArgs p) {
  constexpr int kWarps = kThreads<NMAX> / 32;
  constexpr int S = kSub<NMAX>;
  constexpr int M = L / S;
  constexpr int V = 2 * NMAX;  // d_B then d_C contributions of one step
  __shared__ float Bs[L][NMAX];
  __shared__ float Cs[L][NMAX];
  __shared__ float red[kWarps][32][33];  // one 32 x 32 transpose tile per warp (+1: no conflicts)
  __shared__ float wsum[kWarps][L][V];   // per warp, per step of the chunk
  const T* x = static_cast<const T*>(p.x);
  const T* delta = static_cast<const T*>(p.delta);
  const T* d_y = static_cast<const T*>(p.d_y);
  const int64_t D = p.D, N = p.N, chunks = p.chunks;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = d < D;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float A2[NMAX];
  load_A2<T, NMAX>(A2, static_cast<const T*>(p.A), d, D, N);
  const float Dd = (active && p.D_skip) ? to_f32(static_cast<const T*>(p.D_skip)[d]) : 0.f;

  for (int64_t bc = blockIdx.y; bc < p.B * chunks; bc += gridDim.y) {
    const int64_t b = bc / chunks, c = bc % chunks;
    const int64_t t0 = c * L;
    const int len = static_cast<int>(p.T - t0 < L ? p.T - t0 : L);
    const int64_t row0 = b * p.T + t0;
    __syncthreads();
    load_tile<T, NMAX>(Bs, static_cast<const T*>(p.Bm), row0, len, N);
    load_tile<T, NMAX>(Cs, static_cast<const T*>(p.Cm), row0, len, N);
    __syncthreads();

    // Inactive threads (d >= D) run on zeros: they take part in the warp sums.
    auto load = [&](const T* src, int i) { return active ? to_f32(src[(row0 + i) * D + d]) : 0.f; };

    // Forward from the checkpoint: the state at the start of every sub-chunk.
    float sub[M][NMAX];
    float h[NMAX];
    load_slot<NMAX>(h, p.ckpt + (b * chunks + c) * N * D, d, D, N);
    for (int j = 0; j * S < len; ++j) {
#pragma unroll
      for (int n = 0; n < NMAX; ++n) sub[j][n] = h[n];
#pragma unroll
      for (int k = 0; k < S; ++k) {
        const int i = j * S + k;
        if (i < len) {
          const float dl = load(delta, i);
          const float u = dl * load(x, i);
#pragma unroll
          for (int n = 0; n < NMAX; ++n) h[n] = fmaf(exp2f(dl * A2[n]), h[n], u * Bs[i][n]);
        }
      }
    }

    float* slot = p.own + (b * chunks + c) * N * D;
    float g[NMAX], accA[NMAX];
    load_slot<NMAX>(g, slot, d, D, N);  // r_{t1}: g of the chunk's last step before C d_y
#pragma unroll
    for (int n = 0; n < NMAX; ++n) accA[n] = 0.f;
    float accD = 0.f;

    for (int j = (len - 1) / S; j >= 0; --j) {
      // hs[k] = h_{t-1} and hs[k + 1] = h_t for step t = t0 + j S + k.
      float hs[S + 1][NMAX], xs[S], ds[S];
#pragma unroll
      for (int n = 0; n < NMAX; ++n) hs[0][n] = sub[j][n];
#pragma unroll
      for (int k = 0; k < S; ++k) {
        const int i = j * S + k;
        xs[k] = 0.f;
        ds[k] = 0.f;
        if (i < len) {
          ds[k] = load(delta, i);
          xs[k] = load(x, i);
        }
        const float u = ds[k] * xs[k];
#pragma unroll
        for (int n = 0; n < NMAX; ++n)
          hs[k + 1][n] = fmaf(exp2f(ds[k] * A2[n]), hs[k][n], u * Bs[i < len ? i : 0][n]);
      }
#pragma unroll
      for (int k = S - 1; k >= 0; --k) {
        const int i = j * S + k;
        if (i >= len) continue;  // the same for the whole block
        const float dl = ds[k], xv = xs[k], u = dl * xv;
        const float dy = load(d_y, i);
#pragma unroll
        for (int n = 0; n < NMAX; ++n) g[n] = fmaf(Cs[i][n], dy, g[n]);  // g_t
        if (p.bc_partial) {
          // Lane q of a tile sums column q: value v of the 32 lanes.
#pragma unroll
          for (int v0 = 0; v0 < V; v0 += 32) {
#pragma unroll
            for (int q = 0; q < 32; ++q) {
              const int v = v0 + q;
              if (v < V) red[warp][lane][q] = v < NMAX ? u * g[v % NMAX] : dy * hs[k + 1][v % NMAX];
            }
            __syncwarp();
            if (v0 + lane < V) {
              float s = 0.f;
#pragma unroll
              for (int q = 0; q < 32; ++q) s += red[warp][q][lane];
              wsum[warp][i][v0 + lane] = s;
            }
            __syncwarp();
          }
        }
        float sB = 0.f, sAw = 0.f;
#pragma unroll
        for (int n = 0; n < NMAX; ++n) {
          const float a = exp2f(dl * A2[n]);
          const float w = g[n] * a * hs[k][n];  // a_t g_t h_{t-1}
          sB = fmaf(Bs[i][n], g[n], sB);
          sAw = fmaf(A2[n], w, sAw);
          accA[n] = fmaf(w, dl, accA[n]);
          g[n] *= a;
        }
        accD = fmaf(dy, xv, accD);
        if (active) {
          const int64_t o = (row0 + i) * D + d;
          if (p.d_x) store(static_cast<T*>(p.d_x) + o, fmaf(dl, sB, Dd * dy));
          if (p.d_delta) store(static_cast<T*>(p.d_delta) + o, fmaf(xv, sB, sAw * kLn2));
        }
      }
    }

    if (active) {
      if (c == 0 && p.d_h0) {
#pragma unroll
        for (int n = 0; n < NMAX; ++n) {
          if (n >= N) continue;
          const int64_t o = (b * D + d) * N + n;
          if (p.d_h0_f32) {
            static_cast<float*>(p.d_h0)[o] = g[n];
          } else {
            store(static_cast<T*>(p.d_h0) + o, g[n]);
          }
        }
      }
#pragma unroll
      for (int n = 0; n < NMAX; ++n) {
        if (n < N) slot[n * D + d] = accA[n];  // this thread alone read r_{t1} here
      }
      p.dsum[(b * chunks + c) * D + d] = accD;
    }

    if (p.bc_partial) {
      __syncthreads();
      // [B, T, blocks_x, 2N]: v < N is d_B's n = v, else d_C's n = v - N.
      const int VN = static_cast<int>(2 * N);
      for (int k = threadIdx.x; k < len * VN; k += blockDim.x) {
        const int i = k / VN, v = k % VN;
        const int vs = v < N ? v : NMAX + (v - static_cast<int>(N));
        float s = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) s += wsum[w][i][vs];
        p.bc_partial[((row0 + i) * p.blocks_x + blockIdx.x) * VN + v] = s;
      }
    }
  }
}

// d_B[b, t, n] and d_C[b, t, n]: the block partials of row (b, t) summed in block order.
template <class T>
__global__ void selective_scan_bwd_bc_kernel(int64_t rows, int64_t N, int64_t blocks_x,
                                             const float* __restrict__ partial, T* __restrict__ d_B,
                                             T* __restrict__ d_C) {
  const int64_t VN = 2 * N, total = rows * VN;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t row = i / VN, v = i % VN;
    T* out = v < N ? d_B : d_C;
    if (out == nullptr) continue;
    const float* src = partial + row * blocks_x * VN + v;
    float s = 0.f;
    for (int64_t k = 0; k < blocks_x; ++k) s += src[k * VN];
    store(out + row * N + (v < N ? v : v - N), s);
  }
}

// d_A[d, n] = sum over (b, chunk) of the partials [B, chunks, N, D]; d_D_skip[d] likewise
// from [B, chunks, D]; in (b, chunk) order.
template <class T>
__global__ void selective_scan_bwd_ad_kernel(int64_t parts, int64_t D, int64_t N,
                                             const float* __restrict__ a_part,
                                             const float* __restrict__ d_part, T* __restrict__ d_A,
                                             T* __restrict__ d_D) {
  const int64_t total = (N + 1) * D;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    float s = 0.f;
    if (i < N * D) {
      if (d_A == nullptr) continue;
      const int64_t n = i / D, d = i % D;
      for (int64_t k = 0; k < parts; ++k) s += a_part[(k * N + n) * D + d];
      store(d_A + d * N + n, s);
    } else {
      if (d_D == nullptr) continue;
      const int64_t d = i - N * D;
      for (int64_t k = 0; k < parts; ++k) s += d_part[k * D + d];
      store(d_D + d, s);
    }
  }
}

// dst = src (zeros when src is null), each float32 or T: h_T = h0 and d_h0 = d_h_T when
// T = 0.
template <class T>
__global__ void selective_scan_state_copy_kernel(int64_t n, const void* __restrict__ src,
                                                 bool src_f32, void* __restrict__ dst,
                                                 bool dst_f32) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    float v = 0.f;
    if (src)
      v = src_f32 ? static_cast<const float*>(src)[i] : to_f32(static_cast<const T*>(src)[i]);
    if (dst_f32) {
      static_cast<float*>(dst)[i] = v;
    } else {
      store(static_cast<T*>(dst) + i, v);
    }
  }
}

template <class T>
const char* state_copy(int64_t n, const void* src, bool src_f32, void* dst, bool dst_f32,
                       cudaStream_t s) {
  selective_scan_state_copy_kernel<T>
      <<<grid_1d(n, 256), 256, 0, s>>>(n, src, src_f32, dst, dst_f32);
  return last_error();
}

int n_max_for(int64_t N) {
  if (N <= 4) return 4;
  if (N <= 8) return 8;
  if (N <= 16) return 16;
  if (N <= 32) return 32;
  if (N <= 64) return 64;
  return 0;
}

int threads_for(int64_t N) {
  switch (n_max_for(N)) {
    case 32:
      return kThreads<32>;
    case 64:
      return kThreads<64>;
    default:
      return kThreads<16>;
  }
}

template <class T, int NMAX>
const char* fwd_n(const SelectiveScanFwdParams& p, cudaStream_t s) {
  constexpr int kT = kThreads<NMAX>;
  const int64_t chunks = n_chunks(p.T);
  float* dsum = static_cast<float*>(p.scratch);
  const auto* x = static_cast<const T*>(p.x);
  const auto* delta = static_cast<const T*>(p.delta);
  const auto* A = static_cast<const T*>(p.A);
  const unsigned gx = static_cast<unsigned>((p.D + kT - 1) / kT);
  if (chunks > 1) {
    selective_scan_fwd_chunk_kernel<T, NMAX><<<dim3(gx, grid_y(p.B * (chunks - 1))), kT, 0, s>>>(
        p.B, p.T, p.D, p.N, chunks, x, delta, A, static_cast<const T*>(p.Bm), p.checkpoints, dsum);
  }
  if (p.N > 0) {
    selective_scan_carry_kernel<T><<<grid_1d(p.B * p.N * p.D, 256), 256, 0, s>>>(
        p.B, p.D, p.N, chunks, false, A, p.h0, p.h0_float32, p.checkpoints, dsum);
  }
  selective_scan_fwd_kernel<T, NMAX><<<dim3(gx, grid_y(p.B * chunks)), kT, 0, s>>>(
      p.B, p.T, p.D, p.N, chunks, x, delta, A, static_cast<const T*>(p.Bm),
      static_cast<const T*>(p.Cm), static_cast<const T*>(p.D_skip), p.checkpoints,
      static_cast<T*>(p.y), p.h_T);
  return last_error();
}

template <class T, int NMAX>
const char* bwd_n(const SelectiveScanBwdParams& p, cudaStream_t s) {
  constexpr int kT = kThreads<NMAX>;
  const int64_t chunks = n_chunks(p.T);
  const unsigned gx = static_cast<unsigned>((p.D + kT - 1) / kT);
  BwdArgs a{};
  a.B = p.B;
  a.T = p.T;
  a.D = p.D;
  a.N = p.N;
  a.chunks = chunks;
  a.blocks_x = gx;
  a.x = p.x;
  a.delta = p.delta;
  a.A = p.A;
  a.Bm = p.Bm;
  a.Cm = p.Cm;
  a.D_skip = p.D_skip;
  a.d_y = p.d_y;
  a.ckpt = p.checkpoints;
  a.own = static_cast<float*>(p.scratch);
  a.dsum = a.own + p.B * chunks * p.N * p.D;
  a.bc_partial = (p.d_B || p.d_C) ? a.dsum + p.B * chunks * p.D : nullptr;
  a.d_x = p.d_x;
  a.d_delta = p.d_delta;
  a.d_h0 = p.d_h0;
  a.d_h0_f32 = p.d_h0_float32;
  const auto* A = static_cast<const T*>(p.A);
  if (chunks > 1) {
    selective_scan_bwd_chunk_kernel<T, NMAX><<<dim3(gx, grid_y(p.B * (chunks - 1))), kT, 0, s>>>(
        p.B, p.T, p.D, p.N, chunks, static_cast<const T*>(p.delta), A, static_cast<const T*>(p.Cm),
        static_cast<const T*>(p.d_y), a.own, a.dsum);
  }
  if (p.N > 0) {
    selective_scan_carry_kernel<T><<<grid_1d(p.B * p.N * p.D, 256), 256, 0, s>>>(
        p.B, p.D, p.N, chunks, true, A, p.d_h_T, true, a.own, a.dsum);
  }
  selective_scan_bwd_kernel<T, NMAX><<<dim3(gx, grid_y(p.B * chunks)), kT, 0, s>>>(a);
  if (a.bc_partial && p.N > 0) {
    selective_scan_bwd_bc_kernel<T><<<grid_1d(p.B * p.T * 2 * p.N, 256), 256, 0, s>>>(
        p.B * p.T, p.N, gx, a.bc_partial, static_cast<T*>(p.d_B), static_cast<T*>(p.d_C));
  }
  if (p.d_A || p.d_D_skip) {
    selective_scan_bwd_ad_kernel<T><<<grid_1d((p.N + 1) * p.D, 256), 256, 0, s>>>(
        p.B * chunks, p.D, p.N, a.own, a.dsum, static_cast<T*>(p.d_A), static_cast<T*>(p.d_D_skip));
  }
  return last_error();
}

template <class T>
const char* fwd_t(const SelectiveScanFwdParams& p, cudaStream_t s) {
  switch (n_max_for(p.N)) {
    case 4:
      return fwd_n<T, 4>(p, s);
    case 8:
      return fwd_n<T, 8>(p, s);
    case 16:
      return fwd_n<T, 16>(p, s);
    case 32:
      return fwd_n<T, 32>(p, s);
    case 64:
      return fwd_n<T, 64>(p, s);
  }
  return "selective_scan_fwd_cuda: N above kSelectiveScanMaxN";
}

template <class T>
const char* bwd_t(const SelectiveScanBwdParams& p, cudaStream_t s) {
  switch (n_max_for(p.N)) {
    case 4:
      return bwd_n<T, 4>(p, s);
    case 8:
      return bwd_n<T, 8>(p, s);
    case 16:
      return bwd_n<T, 16>(p, s);
    case 32:
      return bwd_n<T, 32>(p, s);
    case 64:
      return bwd_n<T, 64>(p, s);
  }
  return "selective_scan_bwd_cuda: N above kSelectiveScanMaxN";
}

size_t elem_size(KernelDType t) { return t == KernelDType::kFloat32 ? 4 : 2; }

}  // namespace

size_t selective_scan_fwd_scratch_bytes(const SelectiveScanFwdParams& p) {
  return sizeof(float) * static_cast<size_t>(p.B * n_chunks(p.T) * p.D);
}

size_t selective_scan_bwd_scratch_bytes(const SelectiveScanBwdParams& p) {
  const int64_t chunks = n_chunks(p.T);
  size_t n = static_cast<size_t>(p.B * chunks * (p.N + 1) * p.D);
  if (p.d_B || p.d_C) {
    const int64_t blocks_x = (p.D + threads_for(p.N) - 1) / threads_for(p.N);
    n += static_cast<size_t>(p.B * p.T * blocks_x * 2 * p.N);
  }
  return sizeof(float) * n;
}

const char* selective_scan_fwd_cuda(const SelectiveScanFwdParams& p, void* stream) {
  if (p.N > kSelectiveScanMaxN) return "selective_scan_fwd_cuda: N above kSelectiveScanMaxN";
  auto s = static_cast<cudaStream_t>(stream);
  if (p.B * p.D == 0) return nullptr;
  const bool bf16 = p.dtype == KernelDType::kBFloat16;
  if (p.T == 0) {
    // No steps: h_T = h0 (y is empty).
    if (p.N == 0) return nullptr;
    const int64_t n = p.B * p.D * p.N;
    return bf16 ? state_copy<__nv_bfloat16>(n, p.h0, p.h0_float32, p.h_T, true, s)
                : state_copy<float>(n, p.h0, true, p.h_T, true, s);
  }
  if (p.scratch == nullptr) return "selective_scan_fwd_cuda: scratch not given";
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return fwd_t<float>(p, s);
    case KernelDType::kBFloat16:
      return fwd_t<__nv_bfloat16>(p, s);
  }
  return "selective_scan_fwd_cuda: unknown dtype";
}

const char* selective_scan_bwd_cuda(const SelectiveScanBwdParams& p, void* stream) {
  if (p.N > kSelectiveScanMaxN) return "selective_scan_bwd_cuda: N above kSelectiveScanMaxN";
  auto s = static_cast<cudaStream_t>(stream);
  if (p.B * p.T * p.D == 0) {
    // Sums over no terms are zero; with no steps, d_h0 = d_h_T.
    const size_t es = elem_size(p.dtype);
    const size_t sizes[] = {es * p.D * p.N, es * p.D, es * p.B * p.T * p.N, es * p.B * p.T * p.N};
    void* outs[] = {p.d_A, p.d_D_skip, p.d_B, p.d_C};
    for (int k = 0; k < 4; ++k) {
      if (outs[k] == nullptr || sizes[k] == 0) continue;
      cudaError_t e = cudaMemsetAsync(outs[k], 0, sizes[k], s);
      if (e != cudaSuccess) return cudaGetErrorString(e);
    }
    const int64_t n = p.B * p.D * p.N;
    if (p.d_h0 && n > 0) {
      return p.dtype == KernelDType::kBFloat16
                 ? state_copy<__nv_bfloat16>(n, p.d_h_T, true, p.d_h0, p.d_h0_float32, s)
                 : state_copy<float>(n, p.d_h_T, true, p.d_h0, true, s);
    }
    return nullptr;
  }
  if (p.scratch == nullptr) return "selective_scan_bwd_cuda: scratch not given";
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return bwd_t<float>(p, s);
    case KernelDType::kBFloat16:
      return bwd_t<__nv_bfloat16>(p, s);
  }
  return "selective_scan_bwd_cuda: unknown dtype";
}

}  // namespace resona::cuda
