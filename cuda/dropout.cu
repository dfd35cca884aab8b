// dropout_kernel: one thread per Philox block of the stream (4 words, 4 elements), so
// each block of 4 words is generated once; element i uses word offset + i. With a
// contiguous input, a block-aligned offset and aligned pointers, the 4 elements move as
// one 16-byte (float32) or 8-byte (bfloat16) access.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda/convert.cuh"
#include "cuda/dropout.h"
#include "cuda/philox.cuh"

namespace resona::cuda {
namespace {

// The CPU's keep test: float((word >> 8) * 2^-24) >= p  <=>  (word >> 8) >= ceil(p * 2^24).
__device__ __forceinline__ float apply(uint32_t word, uint32_t threshold, float scale, float v) {
  return (word >> 8) >= threshold ? __fmul_rn(v, scale) : 0.f;
}

__device__ __forceinline__ int64_t strided_offset(const DropoutParams& p, int64_t i) {
  int64_t off = 0;
  for (int d = p.ndim - 1; d >= 0; --d) {
    off += (i % p.shape[d]) * p.in_strides[d];
    i /= p.shape[d];
  }
  return off;
}

template <class T>
struct Vec4;
template <>
struct alignas(16) Vec4<float> {
  float v[4];
};
template <>
struct alignas(8) Vec4<__nv_bfloat16> {
  __nv_bfloat16 v[4];
};

template <class T, bool kVector>
__global__ void dropout_kernel(DropoutParams p) {
  const uint64_t first_block = p.offset / 4;
  const int64_t lead = static_cast<int64_t>(p.offset % 4);
  const int64_t nblocks = (lead + p.n + 3) / 4;
  const T* in = static_cast<const T*>(p.in);
  T* out = static_cast<T*>(p.out);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < nblocks;
       t += stride) {
    const PhiloxWords r = philox_block(p.seed, first_block + static_cast<uint64_t>(t));
    const int64_t i0 = 4 * t - lead;
    if (kVector && i0 + 4 <= p.n) {  // kVector implies lead == 0, so i0 >= 0
      const Vec4<T> a = *reinterpret_cast<const Vec4<T>*>(in + i0);
      Vec4<T> b;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        b.v[k] = from_f32<T>(apply(r.w[k], p.threshold, p.scale, to_f32(a.v[k])));
      }
      *reinterpret_cast<Vec4<T>*>(out + i0) = b;
      continue;
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t i = i0 + k;
      if (i < 0 || i >= p.n) continue;
      const T v = p.in_contiguous ? in[i] : in[strided_offset(p, i)];
      out[i] = from_f32<T>(apply(r.w[k], p.threshold, p.scale, to_f32(v)));
    }
  }
}

template <class T>
const char* launch(const DropoutParams& p, cudaStream_t s) {
  if (p.n == 0) return nullptr;
  if (!p.in_contiguous && (p.ndim < 1 || p.ndim > kDropoutMaxDims)) {
    return "dropout_fwd_cuda: strided input of rank above 8";
  }
  const int64_t nblocks = (static_cast<int64_t>(p.offset % 4) + p.n + 3) / 4;
  int64_t grid = (nblocks + 255) / 256;
  if (grid > 65535 * 8) grid = 65535 * 8;
  constexpr uintptr_t kAlign = alignof(Vec4<T>);
  const bool vec = p.in_contiguous && p.offset % 4 == 0 &&
                   reinterpret_cast<uintptr_t>(p.in) % kAlign == 0 &&
                   reinterpret_cast<uintptr_t>(p.out) % kAlign == 0;
  if (vec) {
    dropout_kernel<T, true><<<static_cast<unsigned>(grid), 256, 0, s>>>(p);
  } else {
    dropout_kernel<T, false><<<static_cast<unsigned>(grid), 256, 0, s>>>(p);
  }
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

__global__ void philox_words_kernel(PhiloxWordsParams p) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n;
       i += stride) {
    p.out[i] = philox_word_at(p.seed, p.offset + static_cast<uint64_t>(i));
  }
}

}  // namespace

const char* dropout_fwd_cuda(const DropoutParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return launch<float>(p, s);
    case KernelDType::kBFloat16:
      return launch<__nv_bfloat16>(p, s);
  }
  return "dropout_fwd_cuda: unknown dtype";
}

const char* dropout_bwd_cuda(const DropoutParams& p, void* stream) {
  return dropout_fwd_cuda(p, stream);
}

const char* philox_words_cuda(const PhiloxWordsParams& p, void* stream) {
  if (p.n == 0) return nullptr;
  int64_t grid = (p.n + 255) / 256;
  if (grid > 65535 * 8) grid = 65535 * 8;
  philox_words_kernel<<<static_cast<unsigned>(grid), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      p);
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace resona::cuda
