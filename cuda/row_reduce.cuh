// Device helpers shared by the row-wise kernels (softmax, cross-entropy, norms, GEMM
// epilogues): float32 loads/stores of float32 or bfloat16 storage, and reductions of a
// row owned by kThreads threads (one warp, or a whole block) in a fixed order, so that
// results are bit-identical from run to run.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace resona::cuda {

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}
__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float v) {
  p[i] = __float2bfloat16_rn(v);
}

// (m, s) with s = sum exp(x - m): a running log-sum-exp. (-inf, 0) is empty; combining
// two keeps the larger max.
struct MaxSum {
  float m, s;
};
__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  if (a.m < b.m) {
    const MaxSum t = a;
    a = b;
    b = t;
  }
  if (b.s == 0.f) return a;  // a.m >= b.m; an empty side contributes nothing
  return {a.m, a.s + b.s * expf(b.m - a.m)};
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ MaxSum warp_max_sum(MaxSum v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum other{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)};
    v = combine(v, other);
  }
  return v;
}

// Row-wide reductions for a row owned by kThreads threads (32, or a multiple of 32 up to
// 1024 forming the whole block). Every thread gets the result. `sh`: 2 * 32 floats.
template <int kThreads>
__device__ __forceinline__ float row_sum(float v, float* sh) {
  v = warp_sum(v);
  if constexpr (kThreads == 32) {
    return v;
  } else {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float r = lane < kThreads / 32 ? sh[lane] : 0.f;
    r = warp_sum(r);
    __syncthreads();  // sh may be reused next
    return r;
  }
}
template <int kThreads>
__device__ __forceinline__ MaxSum row_max_sum(MaxSum v, float* sh) {
  v = warp_max_sum(v);
  if constexpr (kThreads == 32) {
    return v;
  } else {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
      sh[warp] = v.m;
      sh[32 + warp] = v.s;
    }
    __syncthreads();
    MaxSum r = lane < kThreads / 32 ? MaxSum{sh[lane], sh[32 + lane]} : MaxSum{-INFINITY, 0.f};
    r = warp_max_sum(r);
    __syncthreads();
    return r;
  }
}

// Threads per block: four rows of one warp each in warp-per-row mode, else one row.
template <int kThreads>
constexpr int block_threads() {
  return kThreads == 32 ? 128 : kThreads;
}

}  // namespace resona::cuda
