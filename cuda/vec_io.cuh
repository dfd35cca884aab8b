// 16-byte vector loads and stores of float32 or bfloat16 storage as float32 values, for
// the memory-bound row and channel kernels (norms, cross-entropy, causal conv1d): one
// access moves Vec16<T>::kN elements (4 float32 or 8 bfloat16), so a warp moves 512
// contiguous bytes per instruction. The pointers passed must be 16-byte aligned; the
// callers check that (and fall back to scalar code) before taking these paths. Also
// 4-element accesses (load4 / store4: 16 bytes of float32, 8 of bfloat16) and a pair
// reduction over a row owned by kThreads threads (two sums in one pass, in a fixed order);
// 2- and 1-element float32 accesses for gla's state scan.
// Device code only; included by .cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace resona::cuda {

template <class T>
struct Vec16;
template <>
struct Vec16<float> {
  static constexpr int kN = 4;
};
template <>
struct Vec16<__nv_bfloat16> {
  static constexpr int kN = 8;
};

// True when `p` may be read or written with 16-byte accesses.
__host__ __device__ inline bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

__device__ __forceinline__ void load_vec(const float* p, float (&v)[4]) {
  const float4 f = *reinterpret_cast<const float4*>(p);
  v[0] = f.x;
  v[1] = f.y;
  v[2] = f.z;
  v[3] = f.w;
}
__device__ __forceinline__ void load_vec(const __nv_bfloat16* p, float (&v)[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __nv_bfloat162 h;
    static_assert(sizeof(h) == sizeof(uint32_t), "bf16 pair is 4 bytes");
    memcpy(&h, &w[i], sizeof(h));
    const float2 f = __bfloat1622float2(h);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}

__device__ __forceinline__ void store_vec(float* p, const float (&v)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store_vec(__nv_bfloat16* p, const float (&v)[8]) {
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
    memcpy(&w[i], &h, sizeof(h));
  }
  *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
}

// Four consecutive elements (16 bytes of float32, 8 of bfloat16): the channel groups of
// the conv kernels. `p` must be aligned to 4 elements.
__device__ __forceinline__ void load4(const float* p, float (&v)[4]) { load_vec(p, v); }
__device__ __forceinline__ void load4(const __nv_bfloat16* p, float (&v)[4]) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  __nv_bfloat162 h0, h1;
  memcpy(&h0, &u.x, sizeof(h0));
  memcpy(&h1, &u.y, sizeof(h1));
  const float2 f0 = __bfloat1622float2(h0), f1 = __bfloat1622float2(h1);
  v[0] = f0.x;
  v[1] = f0.y;
  v[2] = f1.x;
  v[3] = f1.y;
}
__device__ __forceinline__ void store4(float* p, const float (&v)[4]) { store_vec(p, v); }
__device__ __forceinline__ void store4(__nv_bfloat16* p, const float (&v)[4]) {
  const __nv_bfloat162 h0 = __floats2bfloat162_rn(v[0], v[1]);
  const __nv_bfloat162 h1 = __floats2bfloat162_rn(v[2], v[3]);
  uint2 u;
  memcpy(&u.x, &h0, sizeof(h0));
  memcpy(&u.y, &h1, sizeof(h1));
  *reinterpret_cast<uint2*>(p) = u;
}

// Two float32 values (p aligned to 8 bytes) or one: the per-thread pairs of gla's state
// scan, which takes one or the other as the layout allows.
__device__ __forceinline__ void load_vec(const float* p, float (&v)[2]) {
  const float2 f = *reinterpret_cast<const float2*>(p);
  v[0] = f.x;
  v[1] = f.y;
}
__device__ __forceinline__ void load_vec(const float* p, float (&v)[1]) { v[0] = *p; }
__device__ __forceinline__ void store_vec(float* p, const float (&v)[2]) {
  *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]);
}
__device__ __forceinline__ void store_vec(float* p, const float (&v)[1]) { *p = v[0]; }

// Sums of (a, b) over a row owned by kThreads threads (32, or a multiple of 32 up to 1024
// forming the whole block), one shared-memory round for both. Every thread gets the
// result. `sh`: 2 * 32 floats. Fixed order: bit-identical from run to run.
template <int kThreads>
__device__ __forceinline__ float2 row_sum2(float a, float b, float* sh) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, o);
    b += __shfl_xor_sync(0xffffffffu, b, o);
  }
  if constexpr (kThreads == 32) {
    return make_float2(a, b);
  } else {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
      sh[warp] = a;
      sh[32 + warp] = b;
    }
    __syncthreads();
    a = lane < kThreads / 32 ? sh[lane] : 0.f;
    b = lane < kThreads / 32 ? sh[32 + lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      a += __shfl_xor_sync(0xffffffffu, a, o);
      b += __shfl_xor_sync(0xffffffffu, b, o);
    }
    __syncthreads();  // sh may be reused next
    return make_float2(a, b);
  }
}

}  // namespace resona::cuda
