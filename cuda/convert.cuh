// float32 <-> storage dtype (float32 or bfloat16) conversions shared by the kernels:
// to_f32 widens a loaded value, from_f32<T> rounds a float32 result to T (round to
// nearest even for bfloat16), store(p, v) writes v rounded to *p's type, store_pair(p, a, b)
// two adjacent values at once (store_upto_pair: where aligned). Device code only; included by .cu
// files.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace resona::cuda {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
// p[0] = a, p[1] = b in one store; p must be aligned to two elements.
__device__ __forceinline__ void store_pair(float* p, float a, float b) {
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
}
__device__ __forceinline__ void store_pair(__nv_bfloat16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}
// p[0] = a and, when both, p[1] = b: one store where p is aligned to two elements.
template <class T>
__device__ __forceinline__ void store_upto_pair(T* p, float a, float b, bool both) {
  if (both && reinterpret_cast<uintptr_t>(p) % (2 * sizeof(T)) == 0) {
    store_pair(p, a, b);
  } else {
    store(p, a);
    if (both) store(p + 1, b);
  }
}

}  // namespace resona::cuda
