// Multi-tensor AdamW step and gradient clipping (maps in cuda/adamw.h).
//
// adamw_step_kernel        block b: chunk b of the concatenated tensors
// grad_sumsq_kernel        stage 1: block b writes the float32 sum of squares of chunk b
//                          (thread-strided sums, then a fixed shared-memory tree)
// grad_norm_final_kernel   stage 2: one block sums the partials in float64 (thread-strided,
//                          fixed tree), writes norm and scale
// grad_scale_kernel        g *= scale (read from the device; a no-op when it is 1)
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "cuda/adamw.h"

namespace resona::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int64_t find_entry(const MultiTensorEntry* e, int64_t count,
                                              int64_t chunk) {
  // The last entry whose first_chunk <= chunk (entries with n = 0 have no chunks and are
  // skipped by taking the last of equal first_chunks).
  int64_t lo = 0, hi = count - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (e[mid].first_chunk <= chunk) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

__device__ __forceinline__ float load_grad(const MultiTensorEntry& e, int64_t i) {
  return e.grad_bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(e.grad)[i])
                     : static_cast<const float*>(e.grad)[i];
}

__global__ void adamw_step_kernel(AdamWStepParams p) {
  for (int64_t chunk = blockIdx.x; chunk < p.total_chunks; chunk += gridDim.x) {
    const MultiTensorEntry e = p.entries[find_entry(p.entries, p.count, chunk)];
    const int64_t start = (chunk - e.first_chunk) * kMultiTensorChunk;
    const int64_t end = start + kMultiTensorChunk < e.n ? start + kMultiTensorChunk : e.n;
    const float decay = e.decay ? p.decay : 1.f;
    for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
      const float g = load_grad(e, i);
      const float m = p.b1 * e.exp_avg[i] + p.one_b1 * g;
      const float v = p.b2 * e.exp_avg_sq[i] + p.one_b2 * g * g;
      e.exp_avg[i] = m;
      e.exp_avg_sq[i] = v;
      const float denom = sqrtf(v) * p.inv_sqrt_bc2 + p.eps;
      e.param[i] = e.param[i] * decay - p.step_size * m / denom;
    }
  }
}

__global__ void grad_sumsq_kernel(GradClipParams p) {
  __shared__ float red[kThreads];
  for (int64_t chunk = blockIdx.x; chunk < p.total_chunks; chunk += gridDim.x) {
    const MultiTensorEntry e = p.entries[find_entry(p.entries, p.count, chunk)];
    const int64_t start = (chunk - e.first_chunk) * kMultiTensorChunk;
    const int64_t end = start + kMultiTensorChunk < e.n ? start + kMultiTensorChunk : e.n;
    float s = 0.f;
    for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
      const float g = load_grad(e, i);
      s += g * g;
    }
    red[threadIdx.x] = s;
    __syncthreads();
    for (int w = kThreads / 2; w > 0; w /= 2) {
      if (threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
      __syncthreads();
    }
    if (threadIdx.x == 0) p.partial[chunk] = red[0];
    __syncthreads();  // red is reused by the next chunk
  }
}

constexpr int kFinalThreads = 1024;

__global__ void grad_norm_final_kernel(GradClipParams p) {
  __shared__ double red[kFinalThreads];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < p.total_chunks; i += blockDim.x) s += p.partial[i];
  red[threadIdx.x] = s;
  __syncthreads();
  for (int w = kFinalThreads / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const double norm = sqrt(red[0]);
    *p.norm = norm;
    // As the CPU: scale = max_norm / (norm + 1e-6) in double, applied as float32.
    *p.scale = (isfinite(norm) && norm > p.max_norm)
                   ? static_cast<float>(p.max_norm / (norm + 1e-6))
                   : 1.f;
  }
}

__global__ void grad_scale_kernel(const MultiTensorEntry* entries, int64_t count,
                                  int64_t total_chunks, const float* scale_ptr) {
  const float scale = *scale_ptr;
  if (scale == 1.f) return;
  for (int64_t chunk = blockIdx.x; chunk < total_chunks; chunk += gridDim.x) {
    const MultiTensorEntry e = entries[find_entry(entries, count, chunk)];
    const int64_t start = (chunk - e.first_chunk) * kMultiTensorChunk;
    const int64_t end = start + kMultiTensorChunk < e.n ? start + kMultiTensorChunk : e.n;
    for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
      if (e.grad_bf16) {
        auto* g = static_cast<__nv_bfloat16*>(e.grad);
        g[i] = __float2bfloat16_rn(__bfloat162float(g[i]) * scale);
      } else {
        auto* g = static_cast<float*>(e.grad);
        g[i] = g[i] * scale;
      }
    }
  }
}

unsigned grid_for(int64_t chunks) {
  return static_cast<unsigned>(chunks > (int64_t{1} << 30) ? (int64_t{1} << 30) : chunks);
}

const char* last_error() {
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace

const char* adamw_step_cuda(const AdamWStepParams& p, void* stream) {
  if (p.total_chunks == 0) return nullptr;
  adamw_step_kernel<<<grid_for(p.total_chunks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p);
  return last_error();
}

const char* grad_clip_cuda(const GradClipParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (p.total_chunks > 0) {
    grad_sumsq_kernel<<<grid_for(p.total_chunks), kThreads, 0, s>>>(p);
  }
  grad_norm_final_kernel<<<1, kFinalThreads, 0, s>>>(p);
  if (p.apply && p.total_chunks > 0) {
    grad_scale_kernel<<<grid_for(p.total_chunks), kThreads, 0, s>>>(p.entries, p.count,
                                                                    p.total_chunks, p.scale);
  }
  return last_error();
}

}  // namespace resona::cuda
