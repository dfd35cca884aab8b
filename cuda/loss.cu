// cross_entropy_fwd_kernel, cross_entropy_finalize_kernel, cross_entropy_bwd_kernel:
// see cuda/loss.h for what each computes.
//
// Rows go one per warp (V <= 1024, four rows per block) or one per block (256 or 512
// threads). Each thread walks its row with stride kThreads keeping an online (max, sum)
// pair; the pairs are combined by shuffles and shared memory in a fixed order. The
// finalize kernel is a single block: thread i sums rows i, i + 1024, ... in order (in
// float64, like the CPU path), then a shared-memory tree combines the threads, so the
// mean is bit-for-bit reproducible without atomics.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <type_traits>

#include "cuda/loss.h"
#include "cuda/row_reduce.cuh"

namespace resona::cuda {
namespace {

__device__ __forceinline__ bool counted(int64_t t, int64_t ignore_index, int64_t v) {
  return t != ignore_index && t >= 0 && t < v;
}

template <class T, class I, int kThreads>
__global__ void cross_entropy_fwd_kernel(int64_t n, int64_t v, const T* x, const I* targets,
                                         int64_t ignore_index, float* lse, float* loss) {
  __shared__ float sh[64];
  constexpr int kRowsPerBlock = block_threads<kThreads>() / kThreads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kThreads;
  if (row >= n) return;
  const int lane = threadIdx.x % kThreads;
  const int64_t t = static_cast<int64_t>(targets[row]);
  if (!counted(t, ignore_index, v)) {  // the same for every thread of the row
    if (lane == 0) {
      lse[row] = 0.f;  // never read: backward zeroes such rows
      loss[row] = 0.f;
    }
    return;
  }
  const T* xr = x + row * v;
  MaxSum ms{-INFINITY, 0.f};
  for (int64_t j = lane; j < v; j += kThreads) {
    const float e = load(xr, j);
    if (e > ms.m) {
      ms.s = ms.s * expf(ms.m - e) + 1.f;
      ms.m = e;
    } else if (e != -INFINITY) {
      ms.s += expf(e - ms.m);
    }
  }
  ms = row_max_sum<kThreads>(ms, sh);
  if (lane == 0) {
    const float log_s = logf(ms.s);
    lse[row] = ms.m + log_s;
    // (m - x_t) first: both large for large logits, their difference is exact-ish.
    loss[row] = (ms.m - load(xr, t)) + log_s;
  }
}

constexpr int kFinalThreads = 1024;

template <class I>
__global__ void cross_entropy_finalize_kernel(int64_t n, int64_t v, const I* targets,
                                              int64_t ignore_index, const float* loss,
                                              LossReduction reduction, int64_t* stats, float* out) {
  __shared__ double sh_sum[kFinalThreads];
  __shared__ long long sh_count[kFinalThreads];
  __shared__ long long sh_bad[kFinalThreads];
  const int tid = threadIdx.x;
  double sum = 0;
  long long count = 0, bad = n;  // n: no bad row
  for (int64_t i = tid; i < n; i += kFinalThreads) {
    const int64_t t = static_cast<int64_t>(targets[i]);
    if (t == ignore_index) continue;
    if (t < 0 || t >= v) {
      if (i < bad) bad = i;
      continue;
    }
    sum += loss[i];
    ++count;
  }
  sh_sum[tid] = sum;
  sh_count[tid] = count;
  sh_bad[tid] = bad;
  __syncthreads();
  for (int s = kFinalThreads / 2; s > 0; s >>= 1) {
    if (tid < s) {
      sh_sum[tid] += sh_sum[tid + s];
      sh_count[tid] += sh_count[tid + s];
      if (sh_bad[tid + s] < sh_bad[tid]) sh_bad[tid] = sh_bad[tid + s];
    }
    __syncthreads();
  }
  if (tid == 0) {
    const long long c = sh_count[0];
    const long long b = sh_bad[0];
    stats[0] = c;
    stats[1] = b < n ? b : -1;
    stats[2] = b < n ? static_cast<int64_t>(targets[b]) : 0;
    if (reduction == LossReduction::kSum) out[0] = static_cast<float>(sh_sum[0]);
    if (reduction == LossReduction::kMean) {
      out[0] = c > 0 ? static_cast<float>(sh_sum[0] / static_cast<double>(c)) : 0.f;
    }
  }
}

template <class T, class I, int kThreads>
__global__ void cross_entropy_bwd_kernel(int64_t n, int64_t v, const T* x, const I* targets,
                                         int64_t ignore_index, const float* lse,
                                         const int64_t* stats, const float* d_loss,
                                         LossReduction reduction, T* dx) {
  constexpr int kRowsPerBlock = block_threads<kThreads>() / kThreads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kThreads;
  if (row >= n) return;
  const int lane = threadIdx.x % kThreads;
  const int64_t t = static_cast<int64_t>(targets[row]);
  T* dr = dx + row * v;
  if (!counted(t, ignore_index, v)) {
    for (int64_t j = lane; j < v; j += kThreads) store(dr, j, 0.f);
    return;
  }
  float g = 0.f;
  switch (reduction) {
    case LossReduction::kNone:
      g = d_loss[row];
      break;
    case LossReduction::kSum:
      g = d_loss[0];
      break;
    case LossReduction::kMean:
      g = stats[0] > 0 ? d_loss[0] / static_cast<float>(stats[0]) : 0.f;
      break;
  }
  const T* xr = x + row * v;
  const float l = lse[row];
  for (int64_t j = lane; j < v; j += kThreads) {
    const float p = expf(load(xr, j) - l);
    store(dr, j, (j == t ? p - 1.f : p) * g);
  }
}

// Calls f(T{}, I{}, threads) for the logits' dtype, the targets' type and the threads
// per row chosen from V.
template <class P, class F>
const char* dispatch(const P& p, F&& f) {
  auto by_threads = [&](auto t_tag, auto i_tag) -> const char* {
    if (p.v <= 1024) return f(t_tag, i_tag, std::integral_constant<int, 32>{});
    if (p.v <= 8192) return f(t_tag, i_tag, std::integral_constant<int, 256>{});
    return f(t_tag, i_tag, std::integral_constant<int, 512>{});
  };
  auto by_index = [&](auto t_tag) -> const char* {
    return p.targets_int64 ? by_threads(t_tag, int64_t{}) : by_threads(t_tag, int32_t{});
  };
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return by_index(float{});
    case KernelDType::kBFloat16:
      return by_index(__nv_bfloat16{});
  }
  return "cross_entropy: unknown dtype";
}

const char* last_error() {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

template <int kThreads>
unsigned row_blocks(int64_t n) {
  constexpr int kRowsPerBlock = block_threads<kThreads>() / kThreads;
  return static_cast<unsigned>((n + kRowsPerBlock - 1) / kRowsPerBlock);
}

}  // namespace

const char* cross_entropy_fwd_cuda(const CrossEntropyFwdParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (p.n > (int64_t{1} << 31) - 1) return "cross_entropy: more than 2^31 - 1 rows";
  if (p.n > 0 && p.v == 0) return "cross_entropy: logits have no classes";
  const char* err = dispatch(p, [&](auto t_tag, auto i_tag, auto threads) -> const char* {
    using T = decltype(t_tag);
    using I = decltype(i_tag);
    constexpr int kThreads = decltype(threads)::value;
    const I* targets = static_cast<const I*>(p.targets);
    if (p.n > 0) {
      cross_entropy_fwd_kernel<T, I, kThreads>
          <<<row_blocks<kThreads>(p.n), block_threads<kThreads>(), 0, s>>>(
              p.n, p.v, static_cast<const T*>(p.logits), targets, p.ignore_index, p.lse, p.loss);
    }
    cross_entropy_finalize_kernel<I><<<1, kFinalThreads, 0, s>>>(
        p.n, p.v, targets, p.ignore_index, p.loss, p.reduction, p.stats, p.out);
    return nullptr;
  });
  return err ? err : last_error();
}

const char* cross_entropy_bwd_cuda(const CrossEntropyBwdParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (p.n == 0 || p.v == 0) return nullptr;
  if (p.n > (int64_t{1} << 31) - 1) return "cross_entropy: more than 2^31 - 1 rows";
  const char* err = dispatch(p, [&](auto t_tag, auto i_tag, auto threads) -> const char* {
    using T = decltype(t_tag);
    using I = decltype(i_tag);
    constexpr int kThreads = decltype(threads)::value;
    cross_entropy_bwd_kernel<T, I, kThreads>
        <<<row_blocks<kThreads>(p.n), block_threads<kThreads>(), 0, s>>>(
            p.n, p.v, static_cast<const T*>(p.logits), static_cast<const I*>(p.targets),
            p.ignore_index, p.lse, p.stats, p.d_loss, p.reduction, static_cast<T*>(p.d_logits));
    return nullptr;
  });
  return err ? err : last_error();
}

}  // namespace resona::cuda
