// softmax_fwd_kernel / softmax_bwd_kernel: one row per warp (kThreads == 32, four rows
// per block) or per block (kThreads 256 or 512). Each thread walks its row with stride
// kThreads (coalesced), keeping float32 partials; the row's partials are combined by
// warp shuffles and, across warps, through shared memory, in a fixed order.
//
// Forward keeps an online (max, sum) pair: a larger element rescales the sum once
// (s * exp(m_old - m_new)), so the row is read twice in all (stats, then output).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "cuda/row_reduce.cuh"
#include "cuda/softmax.h"

namespace resona::cuda {
namespace {

template <class T, bool kLog, int kThreads>
__global__ void softmax_fwd_kernel(int64_t rows, int64_t n, const T* x, T* y) {
  __shared__ float sh[64];
  constexpr int kRowsPerBlock = block_threads<kThreads>() / kThreads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kThreads;
  if (row >= rows) return;  // uniform per warp (warp mode) or per block (block mode)
  const int lane = threadIdx.x % kThreads;
  const T* xr = x + row * n;
  T* yr = y + row * n;
  MaxSum ms{-INFINITY, 0.f};
  for (int64_t j = lane; j < n; j += kThreads) {
    const float v = load(xr, j);
    if (v > ms.m) {
      ms.s = ms.s * expf(ms.m - v) + 1.f;  // exp(-inf) = 0 while the pair is empty
      ms.m = v;
    } else if (v != -INFINITY) {  // exp(-inf - m) = 0, even where m is still -inf
      ms.s += expf(v - ms.m);
    }
  }
  ms = row_max_sum<kThreads>(ms, sh);
  if constexpr (kLog) {
    const float lse = ms.m + logf(ms.s);
    for (int64_t j = lane; j < n; j += kThreads) store(yr, j, load(xr, j) - lse);
  } else {
    const float inv = 1.f / ms.s;
    for (int64_t j = lane; j < n; j += kThreads) store(yr, j, expf(load(xr, j) - ms.m) * inv);
  }
}

template <class T, bool kLog, int kThreads>
__global__ void softmax_bwd_kernel(int64_t rows, int64_t n, const T* y, const T* dy, T* dx) {
  __shared__ float sh[64];
  constexpr int kRowsPerBlock = block_threads<kThreads>() / kThreads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kThreads;
  if (row >= rows) return;
  const int lane = threadIdx.x % kThreads;
  const T* yr = y + row * n;
  const T* dyr = dy + row * n;
  T* dxr = dx + row * n;
  float s = 0.f;
  for (int64_t j = lane; j < n; j += kThreads) {
    s += kLog ? load(dyr, j) : load(dyr, j) * load(yr, j);
  }
  s = row_sum<kThreads>(s, sh);
  for (int64_t j = lane; j < n; j += kThreads) {
    const float yv = load(yr, j), dv = load(dyr, j);
    store(dxr, j, kLog ? dv - expf(yv) * s : yv * (dv - s));
  }
}

template <class T, bool kLog, int kThreads>
const char* launch_fwd(const SoftmaxParams& p, cudaStream_t stream) {
  constexpr int kBlock = block_threads<kThreads>();
  constexpr int kRowsPerBlock = kBlock / kThreads;
  const int64_t blocks = (p.rows + kRowsPerBlock - 1) / kRowsPerBlock;
  softmax_fwd_kernel<T, kLog, kThreads><<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(
      p.rows, p.n, static_cast<const T*>(p.x), static_cast<T*>(p.y));
  return nullptr;
}

template <class T, bool kLog, int kThreads>
const char* launch_bwd(const SoftmaxBwdParams& p, cudaStream_t stream) {
  constexpr int kBlock = block_threads<kThreads>();
  constexpr int kRowsPerBlock = kBlock / kThreads;
  const int64_t blocks = (p.rows + kRowsPerBlock - 1) / kRowsPerBlock;
  softmax_bwd_kernel<T, kLog, kThreads><<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(
      p.rows, p.n, static_cast<const T*>(p.y), static_cast<const T*>(p.dy), static_cast<T*>(p.dx));
  return nullptr;
}

// Picks the threads per row from the row length, then the kernel for (dtype, log).
template <class P, class F>
const char* dispatch(const P& p, F&& f) {
  if (p.rows == 0 || p.n == 0) return nullptr;
  if (p.rows > (int64_t{1} << 31) - 1) return "softmax: more than 2^31 - 1 rows";
  auto by_threads = [&](auto dtype_tag, auto log_tag) -> const char* {
    if (p.n <= 1024) return f(dtype_tag, log_tag, std::integral_constant<int, 32>{});
    if (p.n <= 8192) return f(dtype_tag, log_tag, std::integral_constant<int, 256>{});
    return f(dtype_tag, log_tag, std::integral_constant<int, 512>{});
  };
  auto by_log = [&](auto dtype_tag) -> const char* {
    return p.log ? by_threads(dtype_tag, std::true_type{})
                 : by_threads(dtype_tag, std::false_type{});
  };
  const char* err = nullptr;
  switch (p.dtype) {
    case KernelDType::kFloat32:
      err = by_log(float{});
      break;
    case KernelDType::kBFloat16:
      err = by_log(__nv_bfloat16{});
      break;
    default:
      return "softmax: unknown dtype";
  }
  if (err) return err;
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace

const char* softmax_fwd_cuda(const SoftmaxParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  return dispatch(p, [&](auto dtype_tag, auto log_tag, auto threads) {
    return launch_fwd<decltype(dtype_tag), decltype(log_tag)::value, decltype(threads)::value>(p,
                                                                                               s);
  });
}

const char* softmax_bwd_cuda(const SoftmaxBwdParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  return dispatch(p, [&](auto dtype_tag, auto log_tag, auto threads) {
    return launch_bwd<decltype(dtype_tag), decltype(log_tag)::value, decltype(threads)::value>(p,
                                                                                               s);
  });
}

}  // namespace resona::cuda
