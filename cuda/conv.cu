// Causal depthwise conv1d kernels (maps in cuda/conv.h).
//
// conv_weight_transpose_kernel   w [D, W] (strided) -> w_t [W, D] contiguous (before every
//                                forward but the 16-byte one, which writes w_t itself)
// causal_conv1d_fwd_kernel       thread (b, time chunk, d): window of the last W x values
// causal_conv1d_bwd_dx_kernel    thread (b, time chunk, d): window of the next W d_y values
// causal_conv1d_bwd_dw_kernel    stage 1: thread (b, time chunk, d) sums d_y * x for the
//                                W taps and d_y for the bias over its chunk, in time order
// causal_conv1d_bwd_dw_final_kernel  stage 2: thread (j, d) sums the partials in chunk order
//
// Blocks: 128 threads over d; grid.x over D / 128, grid.y over B * chunks. The width W
// is a template parameter (2..8) so the windows live in registers.
//
// Channel-group path (x and d_y with unit channel stride, D and the other strides
// multiples of 4, pointers aligned to 4 elements): each thread owns 4 adjacent channels
// (one 16-byte float32 or 8-byte bfloat16 access per time step), channel group fastest
// so a warp reads 32 x 4 adjacent channels:
// causal_conv1d_fwd_vec_kernel   thread (b, 8 steps, group): all W - 1 + 8 x values loaded
//                                at once, then 8 outputs from registers
// causal_conv1d_bwd_vec_kernel   block (b, dw time chunk, 32 groups), warp = a quarter of
//                                the chunk: one pass reading d_y and x once, d_x from the
//                                window of the next W d_y values, the d_w / d_bias sums from
//                                the window of the last W x values; the quarters are added
//                                in order in shared memory into the chunk's partial (same
//                                layout and final kernel as above)
//
// 16-byte channel-group path, taken by bfloat16 (kVec16Path) when D and the strides are
// multiples of 8 and the pointers 16-byte aligned, else the 4-channel path above: each
// thread owns 8 bfloat16 channels (one 16-byte access per time step), values kept packed
// in registers and widened to float32 where used:
// causal_conv1d_fwd_vec16_kernel   thread (b, 16 steps, group): as causal_conv1d_fwd_vec_kernel
//                                  twice, the W - 1 earlier x values carried over; reads w as
//                                  given and writes w_t (no transpose kernel)
// causal_conv1d_bwd_vec16_kernel   two threads per (b, 128-step dw time chunk, group), one
//                                  per half: one pass reading d_y and x once (the next steps'
//                                  loads issued before the current ones are used), d_x, d_w
//                                  and d_bias all from the window of the next W d_y values;
//                                  the halves' sums, added by a shuffle, are the chunk's
//                                  partial (same layout and final kernel as above; no shared
//                                  memory, no block synchronisation)
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "cuda/conv.h"
#include "cuda/convert.cuh"
#include "cuda/vec_io.cuh"

namespace resona::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kFwdChunk = 64;  // time steps per thread in forward and d_x

// Time chunking of the d_w reduction: a function of (B, T) only (determinism), about
// `steps` (64, or 128 for the 16-byte backward) steps per chunk, with at most ~1024
// partials unless B alone is larger. The scratch is sized for 64 (never fewer partials).
struct DwChunks {
  int64_t per_b;  // chunks per sequence
  int64_t len;    // steps per chunk
};
DwChunks dw_chunks(int64_t B, int64_t T, int64_t steps = 64) {
  int64_t per_b = (T + steps - 1) / steps;
  const int64_t cap = B >= 1024 ? 1 : 1024 / B;
  if (per_b > cap) per_b = cap;
  if (per_b < 1) per_b = 1;
  return {per_b, (T + per_b - 1) / per_b};
}

const char* last_error() {
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <class T>
__global__ void conv_weight_transpose_kernel(const T* __restrict__ w, int64_t s0, int64_t s1,
                                             int64_t D, int64_t W, T* __restrict__ w_t) {
  const int64_t n = D * W;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const int64_t j = i / D, d = i % D;
    w_t[i] = w[d * s0 + j * s1];
  }
}

template <class T, int W>
__global__ void causal_conv1d_fwd_kernel(int64_t B, int64_t T_len, int64_t D,
                                         const T* __restrict__ x, int64_t xs0, int64_t xs1,
                                         int64_t xs2, const T* __restrict__ w_t,
                                         const T* __restrict__ bias, int64_t bs,
                                         T* __restrict__ y) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t chunks = (T_len + kFwdChunk - 1) / kFwdChunk;
  if (d >= D) return;
  for (int64_t bc = blockIdx.y; bc < B * chunks; bc += gridDim.y) {
    const int64_t b = bc / chunks, t0 = (bc % chunks) * kFwdChunk;
    const int64_t t1 = t0 + kFwdChunk < T_len ? t0 + kFwdChunk : T_len;
    float w[W], win[W];
#pragma unroll
    for (int j = 0; j < W; ++j) w[j] = to_f32(w_t[j * D + d]);
    const float b0 = bias ? to_f32(bias[d * bs]) : 0.f;
    const T* xb = x + b * xs0 + d * xs2;
    // win[j] = x[t - (W-1) + j]; before the first step it holds x[t0 - W .. t0 - 1] in
    // slots 1..W-1 (slot 0 is shifted out at once).
#pragma unroll
    for (int j = 1; j < W; ++j) {
      const int64_t s = t0 - W + j;
      win[j] = s >= 0 ? to_f32(xb[s * xs1]) : 0.f;
    }
    for (int64_t t = t0; t < t1; ++t) {
#pragma unroll
      for (int j = 0; j < W - 1; ++j) win[j] = win[j + 1];
      win[W - 1] = to_f32(xb[t * xs1]);
      float acc = b0;
#pragma unroll
      for (int j = 0; j < W; ++j) acc += w[j] * win[j];
      y[(b * T_len + t) * D + d] = from_f32<T>(acc);
    }
  }
}

template <class T, int W>
__global__ void causal_conv1d_bwd_dx_kernel(int64_t B, int64_t T_len, int64_t D,
                                            const T* __restrict__ d_y, int64_t gs0, int64_t gs1,
                                            int64_t gs2, const T* __restrict__ w_t,
                                            T* __restrict__ d_x) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t chunks = (T_len + kFwdChunk - 1) / kFwdChunk;
  if (d >= D) return;
  for (int64_t bc = blockIdx.y; bc < B * chunks; bc += gridDim.y) {
    const int64_t b = bc / chunks, s0 = (bc % chunks) * kFwdChunk;
    const int64_t s1 = s0 + kFwdChunk < T_len ? s0 + kFwdChunk : T_len;
    float w[W], win[W];
#pragma unroll
    for (int j = 0; j < W; ++j) w[j] = to_f32(w_t[j * D + d]);
    const T* gb = d_y + b * gs0 + d * gs2;
    // win[k] = d_y[s + k]; before the first step slots 1..W-1 hold d_y[s0 .. s0 + W - 2].
#pragma unroll
    for (int k = 1; k < W; ++k) {
      const int64_t t = s0 + k - 1;
      win[k] = t < T_len ? to_f32(gb[t * gs1]) : 0.f;
    }
    for (int64_t s = s0; s < s1; ++s) {
#pragma unroll
      for (int k = 0; k < W - 1; ++k) win[k] = win[k + 1];
      const int64_t t = s + W - 1;
      win[W - 1] = t < T_len ? to_f32(gb[t * gs1]) : 0.f;
      // d_x[s] = sum_j w[j] d_y[s + (W-1) - j] = sum_j w[j] win[W-1-j]
      float acc = 0.f;
#pragma unroll
      for (int j = 0; j < W; ++j) acc += w[j] * win[W - 1 - j];
      d_x[(b * T_len + s) * D + d] = from_f32<T>(acc);
    }
  }
}

// partial[(b * per_b + c) * (W+1) + j][d] for taps j < W; slot W is the bias.
template <class T, int W>
__global__ void causal_conv1d_bwd_dw_kernel(int64_t B, int64_t T_len, int64_t D, int64_t per_b,
                                            int64_t len, const T* __restrict__ d_y, int64_t gs0,
                                            int64_t gs1, int64_t gs2, const T* __restrict__ x,
                                            int64_t xs0, int64_t xs1, int64_t xs2, bool want_w,
                                            float* __restrict__ partial) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  for (int64_t bc = blockIdx.y; bc < B * per_b; bc += gridDim.y) {
    const int64_t b = bc / per_b, t0 = (bc % per_b) * len;
    const int64_t t1 = t0 + len < T_len ? t0 + len : T_len;
    float acc[W], win[W], acc_b = 0.f;
#pragma unroll
    for (int j = 0; j < W; ++j) acc[j] = 0.f;
    const T* xb = x + b * xs0 + d * xs2;
    const T* gb = d_y + b * gs0 + d * gs2;
    if (want_w) {
#pragma unroll
      for (int j = 1; j < W; ++j) {
        const int64_t s = t0 - W + j;
        win[j] = s >= 0 ? to_f32(xb[s * xs1]) : 0.f;
      }
    }
    for (int64_t t = t0; t < t1; ++t) {
      const float g = to_f32(gb[t * gs1]);
      acc_b += g;
      if (want_w) {
#pragma unroll
        for (int j = 0; j < W - 1; ++j) win[j] = win[j + 1];
        win[W - 1] = to_f32(xb[t * xs1]);
#pragma unroll
        for (int j = 0; j < W; ++j) acc[j] += g * win[j];
      }
    }
    float* out = partial + bc * (W + 1) * D + d;
#pragma unroll
    for (int j = 0; j < W; ++j) out[j * D] = acc[j];
    out[W * D] = acc_b;
  }
}

constexpr int kFinalLanes = 32;

// Block (32 columns x kFinalLanes lanes) over the (W + 1) * D partial columns: lane y adds
// partials y, y + kFinalLanes, ... in order, then lane 0 adds the lanes in order.
template <class T>
__global__ void causal_conv1d_bwd_dw_final_kernel(int64_t P, int64_t D, int64_t W,
                                                  const float* __restrict__ partial,
                                                  T* __restrict__ d_w, T* __restrict__ d_bias) {
  __shared__ float sh[kFinalLanes][33];
  const int64_t n = (W + 1) * D;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const int64_t j = i / D, d = i % D;
  const bool wanted = i < n && (j < W ? d_w != nullptr : d_bias != nullptr);
  float acc = 0.f;
  if (wanted) {
    // Unrolled so that 8 loads are in flight per thread (same order of additions).
#pragma unroll 8
    for (int64_t c = threadIdx.y; c < P; c += kFinalLanes) acc += partial[c * n + i];
  }
  sh[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && wanted) {
    float t = 0.f;
#pragma unroll
    for (int q = 0; q < kFinalLanes; ++q) t += sh[q][threadIdx.x];
    if (j < W) {
      d_w[d * W + j] = from_f32<T>(t);
    } else {
      d_bias[d] = from_f32<T>(t);
    }
  }
}

// ---- channel-group path ----

constexpr int kGroup = 4;     // channels per thread
constexpr int kFwdSteps = 8;  // time steps per thread in the forward, all loaded at once
constexpr int kStep = 4;      // time steps loaded ahead in the backward
constexpr int kSub = 4;       // backward: time sub-chunks per block
constexpr int kGroupsPerBlock = kThreads / kSub;
static_assert(kGroupsPerBlock == 32, "a warp covers 32 channel groups of one sub-chunk");

// Thread (b, 8-step chunk, channel group): loads x[t0 - (W-1) .. t0 + 7] at once (the
// W - 1 earlier steps are re-read by the chunk before, mostly from L2), then writes 8 y.
template <class T, int W>
__global__ void __launch_bounds__(kThreads)
    causal_conv1d_fwd_vec_kernel(int64_t B, int64_t T_len, int64_t D, const T* __restrict__ x,
                                 int64_t xs0, int64_t xs1, const T* __restrict__ w_t,
                                 const T* __restrict__ bias, T* __restrict__ y) {
  const int64_t groups = D / kGroup;
  const int64_t chunks = (T_len + kFwdSteps - 1) / kFwdSteps;
  const int64_t total = B * chunks * groups;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d0 = (idx % groups) * kGroup;
    const int64_t bc = idx / groups;
    const int64_t b = bc / chunks, t0 = (bc % chunks) * kFwdSteps;
    const int64_t n = T_len - t0 < kFwdSteps ? T_len - t0 : kFwdSteps;
    const T* xb = x + b * xs0 + d0;
    // in[i] = x[t0 - (W-1) + i], zero before the sequence starts.
    float in[W - 1 + kFwdSteps][kGroup];
#pragma unroll
    for (int i = 0; i < W - 1 + kFwdSteps; ++i) {
      const int64_t s = t0 - (W - 1) + i;
      if (s >= 0 && i < W - 1 + n) {
        load4(xb + s * xs1, in[i]);
      } else {
#pragma unroll
        for (int c = 0; c < kGroup; ++c) in[i][c] = 0.f;
      }
    }
    float w[W][kGroup], b0[kGroup];
#pragma unroll
    for (int j = 0; j < W; ++j) load4(w_t + j * D + d0, w[j]);
    if (bias) {
      load4(bias + d0, b0);
    } else {
#pragma unroll
      for (int c = 0; c < kGroup; ++c) b0[c] = 0.f;
    }
    T* yb = y + (b * T_len + t0) * D + d0;
#pragma unroll
    for (int u = 0; u < kFwdSteps; ++u) {
      if (u < n) {
        float acc[kGroup];
#pragma unroll
        for (int c = 0; c < kGroup; ++c) {
          acc[c] = b0[c];
#pragma unroll
          for (int j = 0; j < W; ++j) acc[c] += w[j][c] * in[u + j][c];
        }
        store4(yb + u * D, acc);
      }
    }
  }
}

// Block (b, dw chunk c, tile of 32 channel groups); warp ty takes the ty-th quarter of
// the chunk's steps: d_x over those steps (when d_x is wanted), and its sums of
// d_y[t] x[t - (W-1) + j] and d_y[t]. The quarters are added in order (warp 0 + 1 + 2 + 3,
// through shared memory) into partial[(b * per_b + c) * (W+1) + j][d] for taps j < W,
// slot W the bias (when `partial` is given).
// Launch bounds: 4 blocks per SM (128 registers) up to W = 4, where that costs only a
// few spilled bytes; wider windows keep their registers.
template <class T, int W>
__global__ void __launch_bounds__(kThreads, W <= 4 ? 4 : 2)
    causal_conv1d_bwd_vec_kernel(int64_t B, int64_t T_len, int64_t D, int64_t per_b, int64_t len,
                                 const T* __restrict__ d_y, int64_t gs0, int64_t gs1,
                                 const T* __restrict__ x, int64_t xs0, int64_t xs1,
                                 const T* __restrict__ w_t, T* __restrict__ d_x,
                                 float* __restrict__ partial) {
  __shared__ float sh[kSub - 1][W + 1][kGroup][kGroupsPerBlock];
  const int64_t groups = D / kGroup;
  const int64_t tiles = (groups + kGroupsPerBlock - 1) / kGroupsPerBlock;
  const bool want_w = partial != nullptr;
  const int tx = threadIdx.x % kGroupsPerBlock, ty = threadIdx.x / kGroupsPerBlock;
  const int64_t sub_len = (len + kSub - 1) / kSub;
  for (int64_t blk = blockIdx.x; blk < B * per_b * tiles; blk += gridDim.x) {
    const int64_t bc = blk / tiles;
    const int64_t g = (blk % tiles) * kGroupsPerBlock + tx;
    const bool active = g < groups;
    const int64_t d0 = g * kGroup;
    const int64_t b = bc / per_b;
    const int64_t c_end = (bc % per_b) * len + len < T_len ? (bc % per_b) * len + len : T_len;
    const int64_t t0 = (bc % per_b) * len + ty * sub_len;
    const int64_t t1 = t0 + sub_len < c_end ? t0 + sub_len : c_end;
    float acc[W + 1][kGroup];
#pragma unroll
    for (int j = 0; j <= W; ++j) {
#pragma unroll
      for (int c = 0; c < kGroup; ++c) acc[j][c] = 0.f;
    }
    if (active && t0 < t1) {
      float w[W][kGroup];
      if (d_x) {
#pragma unroll
        for (int j = 0; j < W; ++j) load4(w_t + j * D + d0, w[j]);
      }
      const T* xb = x + b * xs0 + d0;
      const T* gb = d_y + b * gs0 + d0;
      T* dxb = d_x ? d_x + b * T_len * D + d0 : nullptr;
      // At step s: xw[j] = x[s - (W-1) + j], gw[k] = d_y[s + k] (zero outside [0, T)).
      float xw[W][kGroup], gw[W][kGroup];
#pragma unroll
      for (int j = 1; j < W; ++j) {
        const int64_t s = t0 - W + j;
        if (want_w && s >= 0) {
          load4(xb + s * xs1, xw[j]);
        } else {
#pragma unroll
          for (int c = 0; c < kGroup; ++c) xw[j][c] = 0.f;
        }
        const int64_t t = t0 + j - 1;
        if (t < T_len) {
          load4(gb + t * gs1, gw[j]);
        } else {
#pragma unroll
          for (int c = 0; c < kGroup; ++c) gw[j][c] = 0.f;
        }
      }
      for (int64_t s = t0; s < t1; s += kStep) {
        float in_x[kStep][kGroup], in_g[kStep][kGroup];
#pragma unroll
        for (int u = 0; u < kStep; ++u) {
          if (want_w && s + u < t1) load4(xb + (s + u) * xs1, in_x[u]);
          const int64_t t = s + u + W - 1;
          if (s + u < t1 && t < T_len) {
            load4(gb + t * gs1, in_g[u]);
          } else {
#pragma unroll
            for (int c = 0; c < kGroup; ++c) in_g[u][c] = 0.f;
          }
        }
#pragma unroll
        for (int u = 0; u < kStep; ++u) {
          if (s + u < t1) {
#pragma unroll
            for (int c = 0; c < kGroup; ++c) {
#pragma unroll
              for (int j = 0; j < W - 1; ++j) {
                xw[j][c] = xw[j + 1][c];
                gw[j][c] = gw[j + 1][c];
              }
              xw[W - 1][c] = want_w ? in_x[u][c] : 0.f;
              gw[W - 1][c] = in_g[u][c];
            }
            if (dxb) {
              // d_x[s] = sum_j w[j] d_y[s + (W-1) - j] = sum_j w[j] gw[W-1-j]
              float out[kGroup];
#pragma unroll
              for (int c = 0; c < kGroup; ++c) {
                out[c] = 0.f;
#pragma unroll
                for (int j = 0; j < W; ++j) out[c] += w[j][c] * gw[W - 1 - j][c];
              }
              store4(dxb + (s + u) * D, out);
            }
#pragma unroll
            for (int c = 0; c < kGroup; ++c) {
              const float gs = gw[0][c];  // d_y[s]
#pragma unroll
              for (int j = 0; j < W; ++j) acc[j][c] += gs * xw[j][c];
              acc[W][c] += gs;
            }
          }
        }
      }
    }
    if (want_w) {  // the same for the whole block
      if (ty > 0) {
#pragma unroll
        for (int j = 0; j <= W; ++j) {
#pragma unroll
          for (int c = 0; c < kGroup; ++c) sh[ty - 1][j][c][tx] = acc[j][c];
        }
      }
      __syncthreads();
      if (ty == 0 && active) {
        float* out = partial + bc * (W + 1) * D + d0;
#pragma unroll
        for (int j = 0; j <= W; ++j) {
          float v[kGroup];
#pragma unroll
          for (int c = 0; c < kGroup; ++c) {
            v[c] = acc[j][c];
#pragma unroll
            for (int q = 0; q < kSub - 1; ++q) v[c] += sh[q][j][c][tx];
          }
          *reinterpret_cast<float4*>(out + j * D) = make_float4(v[0], v[1], v[2], v[3]);
        }
      }
      __syncthreads();
    }
  }
}

// ---- 16-byte channel-group path (bfloat16) ----
//
// The same maps with 16-byte accesses: a thread owns Vec16<T>::kN adjacent channels (8
// for bfloat16, 4 for float32), so a warp moves 512 contiguous bytes per instruction
// (twice the 4-channel bfloat16 path above). To keep the registers of twice the
// channels at about the same count, loaded vectors stay packed (raw 16 bytes, 4
// registers for 8 bfloat16) and are widened where used; the weights, loaded once per
// thread, are kept in float32. The arithmetic is float32 as everywhere.
//
// The backward uses one window, of d_y, for all three gradients: with s = t - (W-1) + j,
//   d_x[s]  = sum_j w[j] d_y[s + (W-1) - j]
//   d_w[j]  = sum_s x[s] d_y[s + (W-1) - j]
//   d_bias  = sum_s d_y[s]
// so step s needs x[s] alone and the window d_y[s .. s + W - 1] (zero past T); the
// 4-channel kernel keeps a second window of W x values, W * kN more registers. Each
// (j, s) pair of the d_w sum is one (t, j) term of the contract (x[s < 0] terms are zero
// and never formed; d_y[t >= T] is a loaded zero), and each s belongs to one chunk, so
// the partials still sum every term once, in an order that depends on the shape only.

// Raw 16 bytes, read through the read-only cache (inputs are never written here).
template <class T>
__device__ __forceinline__ uint4 load_raw16(const T* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

// Widens raw 16 bytes (8 bfloat16, the path's one dtype) to float32: bfloat16 is the high
// half of a float32 (exact).
__device__ __forceinline__ void widen(uint4 u, float (&v)[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = __uint_as_float(w[i] << 16);
    v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

// 32-bit word i (0..3) of a raw vector, i known at compile time after unrolling.
__device__ __forceinline__ uint32_t word(uint4 u, int i) {
  return i == 0 ? u.x : i == 1 ? u.y : i == 2 ? u.z : u.w;
}

// Widens one 32-bit word: a float32, or two bfloat16 (low half first). The bfloat16
// shifts are volatile so that the compiler does not merge the widening of a d_y vector
// over the W steps that read it (that keeps the window in float32, twice the registers),
// while a widening is one integer instruction per use.
template <class T>
__device__ __forceinline__ void widen_word(uint32_t w, float (&v)[1]) {
  v[0] = __uint_as_float(w);
}
template <class T>
__device__ __forceinline__ void widen_word(uint32_t w, float (&v)[2]) {
  uint32_t lo, hi;
  asm volatile("shl.b32 %0, %1, 16;" : "=r"(lo) : "r"(w));
  asm volatile("and.b32 %0, %1, 0xffff0000;" : "=r"(hi) : "r"(w));
  v[0] = __uint_as_float(lo);
  v[1] = __uint_as_float(hi);
}

// wf[c * W + j] = w[d0 + c, j] for the thread's G channels, from w [D, W] as given:
// packed (contiguous rows of W, 16-byte aligned) as W 16-byte loads of the thread's G * W
// consecutive elements, else one strided element at a time.
template <class T, int W, int G>
__device__ __forceinline__ void load_weights(const T* __restrict__ w, int64_t ws0, int64_t ws1,
                                             bool packed, int64_t d0, float (&wf)[G * W]) {
  if (packed) {
#pragma unroll
    for (int k = 0; k < W; ++k) {
      float v[G];
      widen(load_raw16(w + d0 * W + k * G), v);
#pragma unroll
      for (int i = 0; i < G; ++i) wf[k * G + i] = v[i];
    }
  } else {
#pragma unroll
    for (int c = 0; c < G; ++c) {
#pragma unroll
      for (int j = 0; j < W; ++j) wf[c * W + j] = to_f32(w[(d0 + c) * ws0 + j * ws1]);
    }
  }
}

// Thread (b, chunk of kFwdSub * 8 steps, 16-byte channel group), group fastest: as
// causal_conv1d_fwd_vec_kernel, 8 steps at a time with the W - 1 earlier x vectors carried
// in registers from one 8 to the next, the loaded x vectors kept packed, and the weights
// read from w itself (no transpose kernel before it); the threads of the first chunk of
// sequence 0 (one per group) also write the group's columns of w_t, which only the
// backward reads. Two 8-step groups per thread halve the per-thread weight, bias and
// index work and the re-read of the W - 1 steps before a chunk.
constexpr int kFwdSub = 2;

template <class T, int W>
__global__ void __launch_bounds__(kThreads)
    causal_conv1d_fwd_vec16_kernel(int64_t B, int64_t T_len, int64_t D, const T* __restrict__ x,
                                   int64_t xs0, int64_t xs1, const T* __restrict__ w, int64_t ws0,
                                   int64_t ws1, bool w_packed, const T* __restrict__ bias,
                                   T* __restrict__ y, T* __restrict__ w_t) {
  constexpr int G = Vec16<T>::kN;
  constexpr int64_t kChunk = kFwdSteps * kFwdSub;
  const int64_t groups = D / G;
  const int64_t chunks = (T_len + kChunk - 1) / kChunk;
  const int64_t total = B * chunks * groups;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d0 = (idx % groups) * G;
    const int64_t bc = idx / groups;
    const int64_t b = bc / chunks, tc = (bc % chunks) * kChunk;
    const T* xb = x + b * xs0 + d0;
    // Before each 8 steps from t0: in[i] = x[t0 - (W-1) + i], zero before the sequence.
    uint4 in[W - 1 + kFwdSteps];
#pragma unroll
    for (int i = 0; i < W - 1; ++i) {
      const int64_t s = tc - (W - 1) + i;
      in[i] = s >= 0 ? load_raw16(xb + s * xs1) : zero;
    }
    float wf[G * W];
    load_weights<T, W, G>(w, ws0, ws1, w_packed, d0, wf);
    if (bc == 0) {
#pragma unroll
      for (int j = 0; j < W; ++j) {
        float v[G];
#pragma unroll
        for (int c = 0; c < G; ++c) v[c] = wf[c * W + j];
        store_vec(w_t + j * D + d0, v);  // exact: the values are T's
      }
    }
    float b0[G];
    widen(bias ? load_raw16(bias + d0) : zero, b0);
    for (int sub = 0; sub < kFwdSub; ++sub) {
      const int64_t t0 = tc + sub * kFwdSteps;
      if (t0 >= T_len) break;
      const int n = T_len - t0 < kFwdSteps ? static_cast<int>(T_len - t0) : kFwdSteps;
#pragma unroll
      for (int u = 0; u < kFwdSteps; ++u) {
        in[W - 1 + u] = u < n ? load_raw16(xb + (t0 + u) * xs1) : zero;
      }
      T* yb = y + (b * T_len + t0) * D + d0;
#pragma unroll
      for (int u = 0; u < kFwdSteps; ++u) {
        if (u < n) {
          float acc[G];
#pragma unroll
          for (int c = 0; c < G; ++c) acc[c] = b0[c];
#pragma unroll
          for (int j = 0; j < W; ++j) {
            float v[G];
            widen(in[u + j], v);
#pragma unroll
            for (int c = 0; c < G; ++c) acc[c] += wf[c * W + j] * v[c];
          }
          store_vec(yb + u * D, acc);
        }
      }
#pragma unroll
      for (int i = 0; i < W - 1; ++i) in[i] = in[kFwdSteps + i];
    }
  }
}

// Backward: threads per block, threads per (b, dw time chunk, group) item (one per part of
// the chunk's steps), steps per load batch S (S new d_y and S new x vectors; the next
// batch is in flight while the current one is used), and blocks per SM the registers must
// allow (launch bounds: up to W = 4, 6 blocks, <= 168 registers, enough for the whole grid
// at the benchmark shapes in one wave; wider windows 4).
constexpr int kBwd16Threads = 64;
constexpr int kBwd16Parts = 2;
template <int W>
constexpr int kBwd16Steps = W <= 4 ? 4 : 2;
template <int W>
constexpr int kBwd16MinBlocks = W <= 4 ? 6 : 4;

// Item (b, dw time chunk c, 16-byte channel group g), kBwd16Parts threads each: a warp
// takes kItems = 32 / kBwd16Parts items, g fastest, lanes q * kItems .. (q + 1) * kItems - 1
// the q-th part of each chunk's steps (so a warp reads kBwd16Parts runs of kItems adjacent
// groups of one time step). A thread walks its part in time order, S steps s at a time,
// with d_x[s] (when wanted) and the sums of x[s] d_y[s + (W-1) - j] and d_y[s] all from
// the packed window buf[k] = d_y[s + k]; the loads of the next S steps are issued before
// the current ones are used (software pipelining: with one wave of few warps per SM, a
// warp's loads would otherwise wait for its own arithmetic). The parts' sums are added by
// shuffles in a fixed order (part 0 + part 1 for two parts, (p0 + p1) + (p2 + p3) for
// four) into the chunk's partial for the group's channels,
// partial[(b * per_b + c) * (W+1) + j][d] (taps j < W, slot W the bias), the layout and
// final kernel of the other paths. No shared memory and no block synchronisation; the
// W - 1 window steps past a part are read again by the thread of the next one (mostly from
// L2). 128-step chunks (kBwd16DwSteps) give half the partials of 64-step ones with the
// same number of threads; the whole grid is about one wave at the benchmark shapes, so
// small blocks (kBwd16Threads) spread it evenly over the SMs.
constexpr int64_t kBwd16DwSteps = 128;

template <class T, int W>
__global__ void __launch_bounds__(kBwd16Threads, kBwd16MinBlocks<W>)
    causal_conv1d_bwd_vec16_kernel(int64_t B, int64_t T_len, int64_t D, int64_t per_b, int64_t len,
                                   const T* __restrict__ d_y, int64_t gs0, int64_t gs1,
                                   const T* __restrict__ x, int64_t xs0, int64_t xs1,
                                   const T* __restrict__ w_t, T* __restrict__ d_x,
                                   float* __restrict__ partial) {
  constexpr int G = Vec16<T>::kN;
  constexpr int P = G / 4;  // channels per 32-bit word
  constexpr int S = kBwd16Steps<W>;
  constexpr int kItems = 32 / kBwd16Parts;  // items per warp
  static_assert(kBwd16Parts == 2 || kBwd16Parts == 4, "parts: a power of two up to 4");
  const int64_t groups = D / G;
  const int64_t items = B * per_b * groups;
  const bool want_w = partial != nullptr;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  const int lane = threadIdx.x % 32, part = lane / kItems;
  const int64_t part_len = (len + kBwd16Parts - 1) / kBwd16Parts;
  // Warp-uniform loop (the shuffles below need all 32 lanes): kItems items per warp.
  for (int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32 * kItems;
       first < items; first += static_cast<int64_t>(gridDim.x) * blockDim.x / kBwd16Parts) {
    const int64_t item = first + lane % kItems;
    const bool active = item < items;
    const int64_t d0 = active ? (item % groups) * G : 0;
    const int64_t bc = active ? item / groups : 0;
    const int64_t b = bc / per_b;
    const int64_t c0 = (bc % per_b) * len;
    const int64_t c1 = c0 + len < T_len ? c0 + len : T_len;
    // This thread's steps [t0, t1); none for an inactive lane or a part past the end.
    const int64_t p0 = c0 + part * part_len;
    const int64_t t0 = !active ? 0 : p0 < c1 ? p0 : c1;
    const int64_t t1 = !active ? 0 : t0 + part_len < c1 ? t0 + part_len : c1;
    // wf[j][c] = w[d0 + c, j], float32 in registers for the whole part.
    float wf[W][G];
#pragma unroll
    for (int j = 0; j < W; ++j) {
      widen(d_x && active ? load_raw16(w_t + j * D + d0) : zero, wf[j]);
    }
    float acc[W + 1][G];
#pragma unroll
    for (int j = 0; j <= W; ++j) {
#pragma unroll
      for (int c = 0; c < G; ++c) acc[j][c] = 0.f;
    }
    const T* xb = x + b * xs0 + d0;  // read only when want_w
    const T* gb = d_y + b * gs0 + d0;
    T* dxb = d_x ? d_x + b * T_len * D + d0 : nullptr;
    // Batch of S steps from s: ng[u] = d_y[s + (W-1) + u], nx[u] = x[s + u] (zero past the
    // part, past T, or when not wanted).
    uint4 ng[S], nx[S];
    auto load_batch = [&](int64_t s) {
#pragma unroll
      for (int u = 0; u < S; ++u) {
        const int64_t t = s + (W - 1) + u;
        ng[u] = s + u < t1 && t < T_len ? load_raw16(gb + t * gs1) : zero;
        nx[u] = want_w && s + u < t1 ? load_raw16(xb + (s + u) * xs1) : zero;
      }
    };
    // Before each batch from s: buf[k] = d_y[s + k] for k < W - 1.
    uint4 buf[W - 1 + S];
#pragma unroll
    for (int k = 0; k < W - 1; ++k) {
      const int64_t t = t0 + k;
      buf[k] = t0 < t1 && t < T_len ? load_raw16(gb + t * gs1) : zero;
    }
    load_batch(t0);
    for (int64_t s = t0; s < t1; s += S) {
      uint4 xin[S];
#pragma unroll
      for (int u = 0; u < S; ++u) {
        buf[W - 1 + u] = ng[u];
        xin[u] = nx[u];
      }
      load_batch(s + S);  // all zeros (no loads) past the part
#pragma unroll
      for (int u = 0; u < S; ++u) {
        if (s + u < t1) {
          // Step s + u, one 32-bit word (P channels) of the vectors at a time, widened
          // where used (see widen_word): gw[k] = d_y[s + u + k].
          float out[G];
#pragma unroll
          for (int c = 0; c < G; ++c) out[c] = 0.f;
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            float gw[W][P], xs[P];
#pragma unroll
            for (int k = 0; k < W; ++k) widen_word<T>(word(buf[u + k], i), gw[k]);
            widen_word<T>(word(xin[u], i), xs);
#pragma unroll
            for (int q = 0; q < P; ++q) {
              // d_x[s] = sum_j w[j] d_y[s + (W-1) - j]
#pragma unroll
              for (int j = 0; j < W; ++j) out[i * P + q] += wf[j][i * P + q] * gw[W - 1 - j][q];
#pragma unroll
              for (int j = 0; j < W; ++j) acc[j][i * P + q] += xs[q] * gw[W - 1 - j][q];
              acc[W][i * P + q] += gw[0][q];
            }
          }
          if (dxb) store_vec(dxb + (s + u) * D, out);
        }
      }
#pragma unroll
      for (int k = 0; k < W - 1; ++k) buf[k] = buf[S + k];
    }
    // Part sums in the fixed order above (want_w is the same for the whole warp).
    if (want_w) {
#pragma unroll
      for (int j = 0; j <= W; ++j) {
#pragma unroll
        for (int c = 0; c < G; ++c) {
#pragma unroll
          for (int off = kItems; off < 32; off *= 2) {
            acc[j][c] += __shfl_down_sync(0xffffffffu, acc[j][c], off);
          }
        }
      }
    }
    if (want_w && part == 0 && active) {
      float* out = partial + bc * (W + 1) * D + d0;
#pragma unroll
      for (int j = 0; j <= W; ++j) {
#pragma unroll
        for (int c = 0; c < G; c += 4) {
          *reinterpret_cast<float4*>(out + j * D + c) =
              make_float4(acc[j][c], acc[j][c + 1], acc[j][c + 2], acc[j][c + 3]);
        }
      }
    }
  }
}

// Whether a channel-group path of `group` channels applies to these strides and pointers.
bool group_path(int64_t D, const int64_t* strides, std::initializer_list<const void*> ptrs,
                size_t elem, int64_t group = kGroup) {
  if (D % group != 0 || strides[2] != 1 || strides[1] % group != 0 || strides[0] % group != 0) {
    return false;
  }
  for (const void* p : ptrs) {
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % (group * elem) != 0) return false;
  }
  return true;
}

// Which dtypes take the 16-byte channel-group path where it applies (else the 4-channel
// one). bfloat16 does: its 4-channel accesses are 8 bytes. float32 keeps the 4-channel
// kernels (already 16 bytes; the measured ones); the 16-byte kernels compile for float32
// too, with 4 channels, and use fewer registers in the backward (one window).
template <class T>
constexpr bool kVec16Path = !std::is_same_v<T, float>;

unsigned grid_flat_final(int64_t columns) { return static_cast<unsigned>((columns + 31) / 32); }

unsigned grid_flat(int64_t threads, int block = kThreads) {
  int64_t b = (threads + block - 1) / block;
  if (b > (int64_t{1} << 31) - 1) b = (int64_t{1} << 31) - 1;
  return static_cast<unsigned>(b < 1 ? 1 : b);
}

unsigned grid_y(int64_t n) { return static_cast<unsigned>(n > 65535 ? 65535 : (n < 1 ? 1 : n)); }
unsigned grid_1d(int64_t n) {
  int64_t b = (n + 255) / 256;
  if (b > 65535 * 8) b = 65535 * 8;
  return static_cast<unsigned>(b < 1 ? 1 : b);
}

template <class T, int W>
const char* fwd_w(const CausalConv1dFwdParams& p, cudaStream_t s) {
  constexpr int G = Vec16<T>::kN;
  if constexpr (kVec16Path<T>) {
    if (group_path(p.D, p.x_strides, {p.x, p.w_t, p.y, p.bias}, sizeof(T), G) &&
        (p.bias == nullptr || p.bias_stride == 1)) {
      // Reads w as given and writes w_t itself (no transpose kernel).
      const bool w_packed = p.w_strides[1] == 1 && p.w_strides[0] == p.W && aligned16(p.w);
      const int64_t chunks = (p.T + kFwdSteps * kFwdSub - 1) / (kFwdSteps * kFwdSub);
      causal_conv1d_fwd_vec16_kernel<T, W><<<grid_flat(p.B * chunks * (p.D / G)), kThreads, 0, s>>>(
          p.B, p.T, p.D, static_cast<const T*>(p.x), p.x_strides[0], p.x_strides[1],
          static_cast<const T*>(p.w), p.w_strides[0], p.w_strides[1], w_packed,
          static_cast<const T*>(p.bias), static_cast<T*>(p.y), static_cast<T*>(p.w_t));
      return last_error();
    }
  }
  conv_weight_transpose_kernel<T><<<grid_1d(p.D * p.W), 256, 0, s>>>(
      static_cast<const T*>(p.w), p.w_strides[0], p.w_strides[1], p.D, p.W, static_cast<T*>(p.w_t));
  if (const char* e = last_error()) return e;
  if (group_path(p.D, p.x_strides, {p.x, p.w_t, p.y, p.bias}, sizeof(T)) &&
      (p.bias == nullptr || p.bias_stride == 1)) {
    const int64_t chunks = (p.T + kFwdSteps - 1) / kFwdSteps;
    causal_conv1d_fwd_vec_kernel<T, W>
        <<<grid_flat(p.B * chunks * (p.D / kGroup)), kThreads, 0, s>>>(
            p.B, p.T, p.D, static_cast<const T*>(p.x), p.x_strides[0], p.x_strides[1],
            static_cast<const T*>(p.w_t), static_cast<const T*>(p.bias), static_cast<T*>(p.y));
    return last_error();
  }
  const int64_t chunks = (p.T + kFwdChunk - 1) / kFwdChunk;
  const dim3 grid(static_cast<unsigned>((p.D + kThreads - 1) / kThreads), grid_y(p.B * chunks));
  causal_conv1d_fwd_kernel<T, W><<<grid, kThreads, 0, s>>>(
      p.B, p.T, p.D, static_cast<const T*>(p.x), p.x_strides[0], p.x_strides[1], p.x_strides[2],
      static_cast<const T*>(p.w_t), static_cast<const T*>(p.bias), p.bias_stride,
      static_cast<T*>(p.y));
  return last_error();
}

template <class T, int W>
const char* bwd_w(const CausalConv1dBwdParams& p, cudaStream_t s) {
  const bool want_w = p.d_w || p.d_bias;
  constexpr int G = Vec16<T>::kN;
  if constexpr (kVec16Path<T>) {
    if (group_path(p.D, p.d_y_strides, {p.d_y, p.w_t, p.d_x}, sizeof(T), G) &&
        (!want_w || (group_path(p.D, p.x_strides, {p.x}, sizeof(T), G) && aligned16(p.scratch)))) {
      const DwChunks ch = dw_chunks(p.B, p.T, kBwd16DwSteps);
      float* partial = want_w ? static_cast<float*>(p.scratch) : nullptr;
      causal_conv1d_bwd_vec16_kernel<T, W>
          <<<grid_flat(kBwd16Parts * p.B * ch.per_b * (p.D / G), kBwd16Threads), kBwd16Threads, 0,
             s>>>(p.B, p.T, p.D, ch.per_b, ch.len, static_cast<const T*>(p.d_y), p.d_y_strides[0],
                  p.d_y_strides[1], static_cast<const T*>(p.x), p.x_strides[0], p.x_strides[1],
                  static_cast<const T*>(p.w_t), static_cast<T*>(p.d_x), partial);
      if (want_w) {
        causal_conv1d_bwd_dw_final_kernel<T>
            <<<grid_flat_final((p.W + 1) * p.D), dim3(32, kFinalLanes), 0, s>>>(
                p.B * ch.per_b, p.D, p.W, partial, static_cast<T*>(p.d_w),
                static_cast<T*>(p.d_bias));
      }
      return last_error();
    }
  }
  if (group_path(p.D, p.d_y_strides, {p.d_y, p.w_t, p.d_x}, sizeof(T)) &&
      (!want_w || (group_path(p.D, p.x_strides, {p.x}, sizeof(T)) && aligned16(p.scratch)))) {
    const DwChunks ch = dw_chunks(p.B, p.T);
    float* partial = want_w ? static_cast<float*>(p.scratch) : nullptr;
    causal_conv1d_bwd_vec_kernel<T, W>
        <<<grid_flat(p.B * ch.per_b * ((p.D / kGroup + kGroupsPerBlock - 1) / kGroupsPerBlock) *
                     kThreads),
           kThreads, 0, s>>>(p.B, p.T, p.D, ch.per_b, ch.len, static_cast<const T*>(p.d_y),
                             p.d_y_strides[0], p.d_y_strides[1], static_cast<const T*>(p.x),
                             p.x_strides[0], p.x_strides[1], static_cast<const T*>(p.w_t),
                             static_cast<T*>(p.d_x), partial);
    if (want_w) {
      causal_conv1d_bwd_dw_final_kernel<T>
          <<<grid_flat_final((p.W + 1) * p.D), dim3(32, kFinalLanes), 0, s>>>(
              p.B * ch.per_b, p.D, p.W, partial, static_cast<T*>(p.d_w), static_cast<T*>(p.d_bias));
    }
    return last_error();
  }
  const unsigned gx = static_cast<unsigned>((p.D + kThreads - 1) / kThreads);
  if (p.d_x) {
    const int64_t chunks = (p.T + kFwdChunk - 1) / kFwdChunk;
    causal_conv1d_bwd_dx_kernel<T, W><<<dim3(gx, grid_y(p.B * chunks)), kThreads, 0, s>>>(
        p.B, p.T, p.D, static_cast<const T*>(p.d_y), p.d_y_strides[0], p.d_y_strides[1],
        p.d_y_strides[2], static_cast<const T*>(p.w_t), static_cast<T*>(p.d_x));
  }
  if (p.d_w || p.d_bias) {
    const DwChunks ch = dw_chunks(p.B, p.T);
    float* partial = static_cast<float*>(p.scratch);
    causal_conv1d_bwd_dw_kernel<T, W><<<dim3(gx, grid_y(p.B * ch.per_b)), kThreads, 0, s>>>(
        p.B, p.T, p.D, ch.per_b, ch.len, static_cast<const T*>(p.d_y), p.d_y_strides[0],
        p.d_y_strides[1], p.d_y_strides[2], static_cast<const T*>(p.x), p.x_strides[0],
        p.x_strides[1], p.x_strides[2], p.d_w != nullptr, partial);
    causal_conv1d_bwd_dw_final_kernel<T>
        <<<grid_flat_final((p.W + 1) * p.D), dim3(32, kFinalLanes), 0, s>>>(
            p.B * ch.per_b, p.D, p.W, partial, static_cast<T*>(p.d_w), static_cast<T*>(p.d_bias));
  }
  return last_error();
}

template <class T>
const char* fwd_t(const CausalConv1dFwdParams& p, cudaStream_t s) {
  switch (p.W) {
    case 2:
      return fwd_w<T, 2>(p, s);
    case 3:
      return fwd_w<T, 3>(p, s);
    case 4:
      return fwd_w<T, 4>(p, s);
    case 5:
      return fwd_w<T, 5>(p, s);
    case 6:
      return fwd_w<T, 6>(p, s);
    case 7:
      return fwd_w<T, 7>(p, s);
    case 8:
      return fwd_w<T, 8>(p, s);
  }
  return "causal_conv1d_fwd_cuda: W outside 2..8";
}

template <class T>
const char* bwd_t(const CausalConv1dBwdParams& p, cudaStream_t s) {
  if ((p.d_w || p.d_bias) && p.scratch == nullptr)
    return "causal_conv1d_bwd_cuda: scratch not given";
  switch (p.W) {
    case 2:
      return bwd_w<T, 2>(p, s);
    case 3:
      return bwd_w<T, 3>(p, s);
    case 4:
      return bwd_w<T, 4>(p, s);
    case 5:
      return bwd_w<T, 5>(p, s);
    case 6:
      return bwd_w<T, 6>(p, s);
    case 7:
      return bwd_w<T, 7>(p, s);
    case 8:
      return bwd_w<T, 8>(p, s);
  }
  return "causal_conv1d_bwd_cuda: W outside 2..8";
}

}  // namespace

const char* causal_conv1d_fwd_cuda(const CausalConv1dFwdParams& p, void* stream) {
  if (p.B * p.T * p.D == 0) return nullptr;
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return fwd_t<float>(p, s);
    case KernelDType::kBFloat16:
      return fwd_t<__nv_bfloat16>(p, s);
  }
  return "causal_conv1d_fwd_cuda: unknown dtype";
}

size_t causal_conv1d_bwd_scratch_bytes(const CausalConv1dBwdParams& p) {
  if (!p.d_w && !p.d_bias) return 0;
  const DwChunks ch = dw_chunks(p.B, p.T);
  return sizeof(float) * static_cast<size_t>(p.B * ch.per_b * (p.W + 1) * p.D);
}

const char* causal_conv1d_bwd_cuda(const CausalConv1dBwdParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (p.D == 0) return nullptr;
  if (p.B * p.T == 0) {
    // No terms: d_w and d_bias are zero (d_x is empty).
    if (p.d_w) {
      cudaError_t e =
          cudaMemsetAsync(p.d_w, 0, (p.dtype == KernelDType::kFloat32 ? 4 : 2) * p.D * p.W, s);
      if (e != cudaSuccess) return cudaGetErrorString(e);
    }
    if (p.d_bias) {
      cudaError_t e =
          cudaMemsetAsync(p.d_bias, 0, (p.dtype == KernelDType::kFloat32 ? 4 : 2) * p.D, s);
      if (e != cudaSuccess) return cudaGetErrorString(e);
    }
    return nullptr;
  }
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return bwd_t<float>(p, s);
    case KernelDType::kBFloat16:
      return bwd_t<__nv_bfloat16>(p, s);
  }
  return "causal_conv1d_bwd_cuda: unknown dtype";
}

}  // namespace resona::cuda
