// Diagonal linear recurrence kernels (maps in cuda/scan.h).
//
// linear_scan_fwd_chunk_kernel   pass 1: thread (b, chunk < last, d): end state from zero
//                                and the product of the chunk's decays
// linear_scan_fwd_carry_kernel   pass 2: thread (b, d): state entering each chunk
// linear_scan_fwd_kernel         pass 3: thread (b, chunk, d): h from the carry
// linear_scan_bwd_chunk_kernel   pass 1: thread (b, chunk > 0, d): r_{t0} = a_{t0} g_{t0}
//                                from a zero carry, and the product of the chunk's decays
// linear_scan_bwd_carry_kernel   pass 2: thread (b, d): r entering each chunk from the right
// linear_scan_bwd_kernel         pass 3: thread (b, chunk, d): d_b, d_a, d_h0
//
// Backward in terms of r_t = a_t g_t (the gradient reaching h_{t-1}): g_t = d_h_t + r_{t+1}
// with r_T = 0, so a chunk [t0, t1) maps its incoming r_{t1} to
// r_{t0} = (prod_{t0 <= t < t1} a_t) r_{t1} + (its own r_{t0} from r_{t1} = 0), the same
// affine carry as the forward's h_{t1-1} = (prod a_t) h_{t0-1} + (own end state from zero).
//
// The carries live in the scratch as two float32 [B, chunks, D] buffers: pass 1 writes a
// chunk's own part into `own` and its decay product into `decay`; pass 2 replaces `own`
// with the carry entering the chunk, read by pass 3. Blocks of 128 threads over d, grid.y
// over (b, chunk) with a grid-stride loop.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda/convert.cuh"
#include "cuda/scan.h"

namespace resona::cuda {
namespace {

// h0 / d_h0 are float32 or the input dtype, chosen at run time.
template <class T>
__device__ __forceinline__ float load_state(const void* p, bool f32, int64_t i) {
  return f32 ? static_cast<const float*>(p)[i] : to_f32(static_cast<const T*>(p)[i]);
}
template <class T>
__device__ __forceinline__ void store_state(void* p, bool f32, int64_t i, float v) {
  if (f32) {
    static_cast<float*>(p)[i] = v;
  } else {
    store(static_cast<T*>(p) + i, v);
  }
}

constexpr int kThreads = 128;
constexpr int64_t L = kLinearScanChunk;

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

template <class T>
__global__ void __launch_bounds__(kThreads)
    linear_scan_fwd_chunk_kernel(int64_t B, int64_t T_len, int64_t D, int64_t chunks,
                                 const T* __restrict__ a, const T* __restrict__ b,
                                 float* __restrict__ own, float* __restrict__ decay) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  const int64_t per_b = chunks - 1;  // the last chunk's end state is never carried
  for (int64_t bc = blockIdx.y; bc < B * per_b; bc += gridDim.y) {
    const int64_t n = bc / per_b, c = bc % per_b;
    const int64_t t0 = c * L;  // a full chunk: only the last one can be short
    const int64_t base = (n * T_len + t0) * D + d;
    float h = 0.f, prod = 1.f;
#pragma unroll 8
    for (int64_t i = 0; i < L; ++i) {
      const float av = to_f32(a[base + i * D]);
      h = fmaf(av, h, to_f32(b[base + i * D]));
      prod *= av;
    }
    own[(n * chunks + c) * D + d] = h;
    decay[(n * chunks + c) * D + d] = prod;
  }
}

// own[b, c, d]: in, chunk c's end state from zero; out, the state entering chunk c.
template <class T>
__global__ void linear_scan_fwd_carry_kernel(int64_t B, int64_t D, int64_t chunks,
                                             const void* __restrict__ h0, bool h0_f32,
                                             float* __restrict__ own,
                                             const float* __restrict__ decay) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < B * D;
       i += stride) {
    const int64_t n = i / D, d = i % D;
    float s = h0 ? load_state<T>(h0, h0_f32, i) : 0.f;
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t k = (n * chunks + c) * D + d;
      const float mine = c + 1 < chunks ? own[k] : 0.f;
      const float dec = c + 1 < chunks ? decay[k] : 0.f;
      own[k] = s;
      s = fmaf(dec, s, mine);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    linear_scan_fwd_kernel(int64_t B, int64_t T_len, int64_t D, int64_t chunks,
                           const T* __restrict__ a, const T* __restrict__ b,
                           const float* __restrict__ carry, T* __restrict__ h) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  for (int64_t bc = blockIdx.y; bc < B * chunks; bc += gridDim.y) {
    const int64_t n = bc / chunks, c = bc % chunks;
    const int64_t t0 = c * L, len = T_len - t0 < L ? T_len - t0 : L;
    const int64_t base = (n * T_len + t0) * D + d;
    float s = carry[(n * chunks + c) * D + d];
#pragma unroll 8
    for (int64_t i = 0; i < len; ++i) {
      s = fmaf(to_f32(a[base + i * D]), s, to_f32(b[base + i * D]));
      store(h + base + i * D, s);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    linear_scan_bwd_chunk_kernel(int64_t B, int64_t T_len, int64_t D, int64_t chunks,
                                 const T* __restrict__ a, const T* __restrict__ d_h,
                                 float* __restrict__ own, float* __restrict__ decay) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  const int64_t per_b = chunks - 1;  // chunk 0's r_{t0} = d_h0 is never carried
  for (int64_t bc = blockIdx.y; bc < B * per_b; bc += gridDim.y) {
    const int64_t n = bc / per_b, c = 1 + bc % per_b;
    const int64_t t0 = c * L, len = T_len - t0 < L ? T_len - t0 : L;
    const int64_t base = (n * T_len + t0) * D + d;
    float r = 0.f, prod = 1.f;
#pragma unroll 8
    for (int64_t i = len - 1; i >= 0; --i) {
      const float av = to_f32(a[base + i * D]);
      r = av * (to_f32(d_h[base + i * D]) + r);
      prod *= av;
    }
    own[(n * chunks + c) * D + d] = r;
    decay[(n * chunks + c) * D + d] = prod;
  }
}

// own[b, c, d]: in, chunk c's own r_{t0} (c > 0); out, r entering chunk c from the right.
__global__ void linear_scan_bwd_carry_kernel(int64_t B, int64_t D, int64_t chunks,
                                             float* __restrict__ own,
                                             const float* __restrict__ decay) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < B * D;
       i += stride) {
    const int64_t n = i / D, d = i % D;
    float r = 0.f;
    for (int64_t c = chunks - 1; c >= 0; --c) {
      const int64_t k = (n * chunks + c) * D + d;
      const float mine = c > 0 ? own[k] : 0.f;
      const float dec = c > 0 ? decay[k] : 0.f;
      own[k] = r;
      r = fmaf(dec, r, mine);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    linear_scan_bwd_kernel(int64_t B, int64_t T_len, int64_t D, int64_t chunks,
                           const T* __restrict__ a, const T* __restrict__ h,
                           const void* __restrict__ h0, bool h0_f32, const T* __restrict__ d_h,
                           const float* __restrict__ carry, T* __restrict__ d_a,
                           T* __restrict__ d_b, void* __restrict__ d_h0) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  for (int64_t bc = blockIdx.y; bc < B * chunks; bc += gridDim.y) {
    const int64_t n = bc / chunks, c = bc % chunks;
    const int64_t t0 = c * L, len = T_len - t0 < L ? T_len - t0 : L;
    const int64_t base = (n * T_len + t0) * D + d;
    float r = carry[(n * chunks + c) * D + d];
#pragma unroll 4
    for (int64_t i = len - 1; i >= 0; --i) {
      const float g = to_f32(d_h[base + i * D]) + r;
      if (d_b) store(d_b + base + i * D, g);
      if (d_a) {
        float h_prev = 0.f;
        if (t0 + i > 0) {
          h_prev = to_f32(h[base + (i - 1) * D]);
        } else if (h0) {
          h_prev = load_state<T>(h0, h0_f32, n * D + d);
        }
        store(d_a + base + i * D, g * h_prev);
      }
      r = to_f32(a[base + i * D]) * g;
    }
    if (c == 0 && d_h0) store_state<T>(d_h0, h0_f32, n * D + d, r);
  }
}

int64_t n_chunks(int64_t T) { return (T + L - 1) / L; }

template <class T>
const char* fwd_t(const LinearScanFwdParams& p, cudaStream_t s) {
  const int64_t chunks = n_chunks(p.T);
  float* own = static_cast<float*>(p.scratch);
  float* decay = own + p.B * chunks * p.D;
  const auto* a = static_cast<const T*>(p.a);
  const auto* b = static_cast<const T*>(p.b);
  const unsigned gx = static_cast<unsigned>((p.D + kThreads - 1) / kThreads);
  if (chunks > 1) {
    linear_scan_fwd_chunk_kernel<T><<<dim3(gx, grid_y(p.B * (chunks - 1))), kThreads, 0, s>>>(
        p.B, p.T, p.D, chunks, a, b, own, decay);
  }
  linear_scan_fwd_carry_kernel<T>
      <<<grid_1d(p.B * p.D, 256), 256, 0, s>>>(p.B, p.D, chunks, p.h0, p.h0_float32, own, decay);
  linear_scan_fwd_kernel<T><<<dim3(gx, grid_y(p.B * chunks)), kThreads, 0, s>>>(
      p.B, p.T, p.D, chunks, a, b, own, static_cast<T*>(p.h));
  return last_error();
}

template <class T>
const char* bwd_t(const LinearScanBwdParams& p, cudaStream_t s) {
  const int64_t chunks = n_chunks(p.T);
  float* own = static_cast<float*>(p.scratch);
  float* decay = own + p.B * chunks * p.D;
  const auto* a = static_cast<const T*>(p.a);
  const auto* d_h = static_cast<const T*>(p.d_h);
  const unsigned gx = static_cast<unsigned>((p.D + kThreads - 1) / kThreads);
  if (chunks > 1) {
    linear_scan_bwd_chunk_kernel<T><<<dim3(gx, grid_y(p.B * (chunks - 1))), kThreads, 0, s>>>(
        p.B, p.T, p.D, chunks, a, d_h, own, decay);
  }
  linear_scan_bwd_carry_kernel<<<grid_1d(p.B * p.D, 256), 256, 0, s>>>(p.B, p.D, chunks, own,
                                                                       decay);
  linear_scan_bwd_kernel<T><<<dim3(gx, grid_y(p.B * chunks)), kThreads, 0, s>>>(
      p.B, p.T, p.D, chunks, a, static_cast<const T*>(p.h), p.h0, p.h0_float32, d_h, own,
      static_cast<T*>(p.d_a), static_cast<T*>(p.d_b), p.d_h0);
  return last_error();
}

}  // namespace

size_t linear_scan_scratch_bytes(int64_t B, int64_t T, int64_t D) {
  return 2 * sizeof(float) * static_cast<size_t>(B * n_chunks(T) * D);
}

const char* linear_scan_fwd_cuda(const LinearScanFwdParams& p, void* stream) {
  if (p.B * p.T * p.D == 0) return nullptr;
  if (p.scratch == nullptr) return "linear_scan_fwd_cuda: scratch not given";
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return fwd_t<float>(p, s);
    case KernelDType::kBFloat16:
      return fwd_t<__nv_bfloat16>(p, s);
  }
  return "linear_scan_fwd_cuda: unknown dtype";
}

const char* linear_scan_bwd_cuda(const LinearScanBwdParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (p.B * p.D == 0) return nullptr;
  if (p.T == 0) {
    // No steps: d_h0 = d_h_{-1} is zero (d_a and d_b are empty).
    if (p.d_h0) {
      const size_t elem = p.h0_float32 || p.dtype == KernelDType::kFloat32 ? 4 : 2;
      cudaError_t e = cudaMemsetAsync(p.d_h0, 0, elem * p.B * p.D, s);
      if (e != cudaSuccess) return cudaGetErrorString(e);
    }
    return nullptr;
  }
  if (p.scratch == nullptr) return "linear_scan_bwd_cuda: scratch not given";
  if (p.d_a && p.h == nullptr) return "linear_scan_bwd_cuda: d_a needs the forward output h";
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return bwd_t<float>(p, s);
    case KernelDType::kBFloat16:
      return bwd_t<__nv_bfloat16>(p, s);
  }
  return "linear_scan_bwd_cuda: unknown dtype";
}

}  // namespace resona::cuda
