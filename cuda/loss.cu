// cross_entropy_fwd_kernel, cross_entropy_finalize_kernel, cross_entropy_bwd_kernel:
// see cuda/loss.h for what each computes.
//
// Rows go one per warp (V <= 1024, four rows per block) or one per block (256
// threads). The forward reads each logit once: each thread walks its row in 16-byte
// vectors, with stride kThreads, eight loads in flight, keeping an online (max, sum) pair
// that is rescaled once per batch of eight vectors; the row's elements before the first 16-byte
// boundary and after the last whole vector are taken one by one, so any row offset and any V work.
// The pairs are combined by shuffles and shared memory in a fixed order. The backward
// reads the logits and writes d_logits in the same vectors (when the two rows sit at the
// same offset within 16 bytes, else element by element); no float32 probabilities are
// stored. The
// finalize kernel is a single block: thread i sums rows i, i + 1024, ... in order (in
// float64, like the CPU path), then a shared-memory tree combines the threads, so the
// mean is bit-for-bit reproducible without atomics.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <type_traits>

#include "cuda/fast_exp.cuh"
#include "cuda/loss.h"
#include "cuda/row_reduce.cuh"
#include "cuda/vec_io.cuh"

namespace resona::cuda {
namespace {

__device__ __forceinline__ bool counted(int64_t t, int64_t ignore_index, int64_t v) {
  return t != ignore_index && t >= 0 && t < v;
}

// Elements of the row at `p` before its first 16-byte boundary, at most v.
template <class T>
__device__ __forceinline__ int64_t head_len(const T* p, int64_t v) {
  const unsigned a = static_cast<unsigned>(reinterpret_cast<uintptr_t>(p) & 15u);
  const int64_t h = a == 0 ? 0 : static_cast<int64_t>((16u - a) / sizeof(T));
  return h < v ? h : v;
}

// exp(x - m) as 2^(x log2(e) - m log2(e)): one FFMA and the hardware's ex2.approx (MUFU,
// relative error ~2^-22, the same order as a float32 rounding of the argument), instead of
// expf's range-reduction sequence. The loss kernels are otherwise a few instructions per
// logit, so on bf16 logits (2 bytes each) expf made the forward compute-bound (same time
// as float32). `m_log2e` is m * log2(e), computed once per row or batch; 2^-inf = +0, so a
// -inf logit adds exactly 0 and needs no test. Denormal results flush to 0 (.ftz): they
// are below 2^-126 of the row's largest term, which float32 sums cannot see anyway.
__device__ __forceinline__ float exp_shifted(float x, float m_log2e) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(fmaf(x, kLog2e, -m_log2e)));
  return r;
}

// The row's running max in log2 units for exp_shifted. While the row has only seen -inf
// (m = -inf), 0: then every term is 2^-inf = 0 and the sum stays 0, where m itself would
// give -inf - -inf = NaN.
__device__ __forceinline__ float base_log2(float m) { return m == -INFINITY ? 0.f : m * kLog2e; }

// Folds the values e[0..n) into the running (max, sum): the max is raised once for the
// group, then each term added. -inf logits add nothing; a NaN makes the sum NaN.
template <int n>
__device__ __forceinline__ void add_group(MaxSum& ms, const float (&e)[n]) {
  float m = e[0];
#pragma unroll
  for (int i = 1; i < n; ++i) m = fmaxf(m, e[i]);
  if (m > ms.m) {
    ms.s *= expf(ms.m - m);  // 0 while ms is empty (ms.m = -inf)
    ms.m = m;
  }
  const float b = base_log2(ms.m);
#pragma unroll
  for (int i = 0; i < n; ++i) ms.s += exp_shifted(e[i], b);
}

constexpr int kUnroll = 4;  // 16-byte loads in flight per thread in the backward
constexpr int kBatch = 8;   // and in the forward

template <class T, class I, int kThreads>
__global__ void __launch_bounds__(block_threads<kThreads>())
    cross_entropy_fwd_kernel(int64_t n, int64_t v, const T* __restrict__ x,
                             const I* __restrict__ targets, int64_t ignore_index,
                             float* __restrict__ lse, float* __restrict__ loss) {
  constexpr int kN = Vec16<T>::kN;
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
  // Scalar head up to the first 16-byte boundary and tail after the last whole vector;
  // 16-byte vectors in between.
  const int64_t head = head_len(xr, v);
  const int64_t nvec = (v - head) / kN;
  const int64_t body_end = head + nvec * kN;
  MaxSum ms{-INFINITY, 0.f};
  for (int64_t j = lane; j < head + (v - body_end); j += kThreads) {
    const float e[1] = {load(xr, j < head ? j : body_end + (j - head))};
    add_group(ms, e);
  }
  // Batches of kBatch vectors per thread: all loads of a batch are issued before any of
  // its values is used (the row is then read in one or two round trips), and the running
  // max is raised once per batch.
  const T* body = xr + head;
  for (int64_t k0 = lane; k0 < nvec; k0 += kBatch * kThreads) {
    float e[kBatch][kN];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int64_t k = k0 + u * kThreads;
      if (k < nvec) {
        load_vec(body + k * kN, e[u]);
      } else {
#pragma unroll
        for (int q = 0; q < kN; ++q) e[u][q] = -INFINITY;  // adds nothing
      }
    }
    float m = e[0][0];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
#pragma unroll
      for (int q = 0; q < kN; ++q) m = fmaxf(m, e[u][q]);
    }
    if (m > ms.m) {
      ms.s *= expf(ms.m - m);  // 0 while ms is empty (ms.m = -inf)
      ms.m = m;
    }
    const float b = base_log2(ms.m);
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
#pragma unroll
      for (int q = 0; q < kN; ++q) ms.s += exp_shifted(e[u][q], b);
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
__global__ void __launch_bounds__(block_threads<kThreads>())
    cross_entropy_bwd_kernel(int64_t n, int64_t v, const T* __restrict__ x,
                             const I* __restrict__ targets, int64_t ignore_index,
                             const float* __restrict__ lse, const int64_t* __restrict__ stats,
                             const float* __restrict__ d_loss, LossReduction reduction,
                             T* __restrict__ dx) {
  constexpr int kN = Vec16<T>::kN;
  constexpr int kRowsPerBlock = block_threads<kThreads>() / kThreads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kThreads;
  if (row >= n) return;
  const int lane = threadIdx.x % kThreads;
  const int64_t t = static_cast<int64_t>(targets[row]);
  const bool zero = !counted(t, ignore_index, v);  // ignored row: d_x = 0
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
  T* dr = dx + row * v;
  // lse is finite for a counted row (its target logit is > -inf or the loss is inf/NaN,
  // which the loss already reports); exp_shifted(x, lse log2(e)) = exp(x - lse) = p.
  const float l2 = zero ? 0.f : lse[row] * kLog2e;
  auto grad = [&](float xv, int64_t j) {
    if (zero) return 0.f;
    const float p = exp_shifted(xv, l2);
    return (j == t ? p - 1.f : p) * g;
  };
  // Vectors where x's and d_x's rows share their offset within 16 bytes; all scalar
  // otherwise.
  int64_t head = head_len(xr, v);
  if (((reinterpret_cast<uintptr_t>(xr) ^ reinterpret_cast<uintptr_t>(dr)) & 15u) != 0) head = v;
  const int64_t nvec = (v - head) / kN;
  const int64_t body_end = head + nvec * kN;
  for (int64_t i = lane; i < head + (v - body_end); i += kThreads) {
    const int64_t j = i < head ? i : body_end + (i - head);
    store(dr, j, grad(load(xr, j), j));
  }
  const T* xb = xr + head;
  T* db = dr + head;
  int64_t k = lane;
  for (; k + (kUnroll - 1) * kThreads < nvec; k += kUnroll * kThreads) {
    float e[kUnroll][kN];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) load_vec(xb + (k + u * kThreads) * kN, e[u]);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j0 = head + (k + u * kThreads) * kN;
#pragma unroll
      for (int q = 0; q < kN; ++q) e[u][q] = grad(e[u][q], j0 + q);
      store_vec(db + (k + u * kThreads) * kN, e[u]);
    }
  }
  for (; k < nvec; k += kThreads) {
    float e[kN];
    load_vec(xb + k * kN, e);
    const int64_t j0 = head + k * kN;
#pragma unroll
    for (int q = 0; q < kN; ++q) e[q] = grad(e[q], j0 + q);
    store_vec(db + k * kN, e);
  }
}

// Calls f(T{}, I{}, threads) for the logits' dtype, the targets' type and the threads
// per row chosen from V.
template <class P, class F>
const char* dispatch(const P& p, F&& f) {
  auto by_threads = [&](auto t_tag, auto i_tag) -> const char* {
    if (p.v <= 1024) return f(t_tag, i_tag, std::integral_constant<int, 32>{});
    // 256 threads for every longer row: with eight 16-byte loads in flight per thread,
    // two such blocks fit an SM's registers and overlap each other's row reductions.
    return f(t_tag, i_tag, std::integral_constant<int, 256>{});
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
