// softmax_fwd / softmax_bwd kernels (see cuda/softmax.h for the formulas).
//
// Two families of kernels, both deterministic (each row's sums in a fixed order: a
// thread's own elements in index order, then warp shuffles and, across warps, shared
// memory in a fixed tree).
//
// Vector kernels (every pointer of the call at the same offset from a 16-byte boundary,
// so that a row's vectors line up in x and y, or y, d_y and d_x): a row is split into an
// unaligned head (< 16 bytes, one element per lane), a body of 16-byte vectors (4
// float32 or 8 bfloat16; vector i to lane i % kRowThreads) and a tail.
//   softmax_fwd_regs_kernel / softmax_bwd_regs_kernel: the row fits in the registers of
//     its kRowThreads threads (kK vectors each): one read of the row, the exact max,
//     then exp and its sum over the held values, then one write; nothing is reread.
//   softmax_fwd_stream_kernel / softmax_bwd_stream_kernel: longer rows, a block of 512
//     per row: an online (max, sum) pass (a larger element rescales the sum once,
//     s * exp(m_old - m_new)), then a second pass that rereads the row and writes it.
//
// General kernels (any alignment; the path when the pointers' offsets differ):
// softmax_fwd_kernel / softmax_bwd_kernel, one row per warp (kThreads == 32, four rows
// per block) or per block (kThreads 256 or 512); each thread walks its row with stride
// kThreads (coalesced) with scalar accesses, online (max, sum) as above.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

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

// ---------------------------------------------------------------- vector kernels

template <class T>
struct VecOf {
  static constexpr int kN = 16 / static_cast<int>(sizeof(T));
};

// 16-byte load of kN elements at p (16-byte aligned), widened to float32.
template <class T>
__device__ __forceinline__ void load_vec(const T* p, float* out) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int j = 0; j < VecOf<T>::kN; ++j) out[j] = load(e, j);
}
template <class T>
__device__ __forceinline__ void store_vec(T* p, const float* v) {
  alignas(16) T e[VecOf<T>::kN];
#pragma unroll
  for (int j = 0; j < VecOf<T>::kN; ++j) store(e, j, v[j]);
  *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(e);
}

// A row of n elements at `row`: [0, head) before its first 16-byte boundary, then nv
// vectors, then [tail0, n).
struct Split {
  int64_t head, nv, tail0;
};
template <class T>
__device__ __forceinline__ Split split_row(const T* row, int64_t n) {
  constexpr int kVec = VecOf<T>::kN;
  const int64_t mis = static_cast<int64_t>(reinterpret_cast<uintptr_t>(row) & 15u) / sizeof(T);
  int64_t head = mis == 0 ? 0 : kVec - mis;
  if (head > n) head = n;
  const int64_t nv = (n - head) / kVec;
  return {head, nv, head + nv * kVec};
}

// The row's maximum over kRowThreads threads (NaNs skipped, as fmaxf and the CPU's
// std::max from -inf do); every thread gets it. `sh`: 32 floats.
template <int kRowThreads>
__device__ __forceinline__ float row_max(float v, float* sh) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  if constexpr (kRowThreads == 32) {
    return v;
  } else {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float r = lane < kRowThreads / 32 ? sh[lane] : -INFINITY;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) r = fmaxf(r, __shfl_xor_sync(0xffffffffu, r, o));
    __syncthreads();  // sh may be reused next
    return r;
  }
}

// Threads per block: 4 rows of a warp each, or one row.
template <int kRowThreads>
constexpr int vec_block() {
  return kRowThreads == 32 ? 128 : kRowThreads;
}

// The row x[row] held in registers: lane's head element, kK vectors, tail element.
template <class T, bool kLog, int kRowThreads, int kK>
__global__ void __launch_bounds__(vec_block<kRowThreads>())
    softmax_fwd_regs_kernel(int64_t rows, int64_t n, const T* __restrict__ x, T* __restrict__ y) {
  constexpr int kVec = VecOf<T>::kN;
  constexpr int kRowsPerBlock = vec_block<kRowThreads>() / kRowThreads;
  __shared__ float sh[64];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kRowThreads;
  if (row >= rows) return;  // uniform per warp (warp mode) or per block (block mode)
  const int lane = threadIdx.x % kRowThreads;
  const T* xr = x + row * n;
  T* yr = y + row * n;
  const Split sp = split_row(xr, n);
  const bool has_head = lane < sp.head, has_tail = lane < n - sp.tail0;
  float hv = has_head ? load(xr, lane) : -INFINITY;
  float tv = has_tail ? load(xr, sp.tail0 + lane) : -INFINITY;
  float v[kK][kVec];
#pragma unroll
  for (int k = 0; k < kK; ++k) {
    const int64_t vi = lane + k * kRowThreads;
    if (vi < sp.nv) {
      load_vec(xr + sp.head + vi * kVec, v[k]);
    } else {
#pragma unroll
      for (int j = 0; j < kVec; ++j) v[k][j] = -INFINITY;
    }
  }
  float m = fmaxf(hv, tv);
#pragma unroll
  for (int k = 0; k < kK; ++k) {
#pragma unroll
    for (int j = 0; j < kVec; ++j) m = fmaxf(m, v[k][j]);
  }
  m = row_max<kRowThreads>(m, sh);

  // The sum of exp(x - m) over the thread's elements in index order: head, body, tail.
  // softmax keeps each exp in place of x; log_softmax keeps x.
  float s = 0.f;
  if (has_head) {
    const float e = expf(hv - m);
    s += e;
    if constexpr (!kLog) hv = e;
  }
#pragma unroll
  for (int k = 0; k < kK; ++k) {
    if (lane + k * kRowThreads < sp.nv) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const float e = expf(v[k][j] - m);
        s += e;
        if constexpr (!kLog) v[k][j] = e;
      }
    }
  }
  if (has_tail) {
    const float e = expf(tv - m);
    s += e;
    if constexpr (!kLog) tv = e;
  }
  s = row_sum<kRowThreads>(s, sh);

  // softmax: y = e * (1 / s), as the CPU; log_softmax: y = x - (m + log s).
  const float inv = 1.f / s, lse = m + logf(s);
  auto out = [&](float val) { return kLog ? val - lse : val * inv; };
  if (has_head) store(yr, lane, out(hv));
#pragma unroll
  for (int k = 0; k < kK; ++k) {
    const int64_t vi = lane + k * kRowThreads;
    if (vi < sp.nv) {
      float o[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j) o[j] = out(v[k][j]);
      store_vec(yr + sp.head + vi * kVec, o);
    }
  }
  if (has_tail) store(yr, sp.tail0 + lane, out(tv));
}

// The online update of (m, s) by one element, as in softmax_fwd_kernel.
__device__ __forceinline__ void online_push(MaxSum& ms, float v) {
  if (v > ms.m) {
    ms.s = ms.s * expf(ms.m - v) + 1.f;  // exp(-inf) = 0 while the pair is empty
    ms.m = v;
  } else if (v != -INFINITY) {  // exp(-inf - m) = 0, even where m is still -inf
    ms.s += expf(v - ms.m);
  }
}

constexpr int kStreamThreads = 512;
constexpr int kStreamUnroll = 4;  // vectors loaded per lane before they are used

template <class T, bool kLog>
__global__ void __launch_bounds__(kStreamThreads)
    softmax_fwd_stream_kernel(int64_t rows, int64_t n, const T* __restrict__ x, T* __restrict__ y) {
  constexpr int kVec = VecOf<T>::kN;
  __shared__ float sh[64];
  const int64_t row = blockIdx.x;
  if (row >= rows) return;
  const int lane = threadIdx.x;
  const T* xr = x + row * n;
  T* yr = y + row * n;
  const Split sp = split_row(xr, n);
  MaxSum ms{-INFINITY, 0.f};
  if (lane < sp.head) online_push(ms, load(xr, lane));
  for (int64_t v0 = lane; v0 < sp.nv; v0 += kStreamUnroll * kStreamThreads) {
    float v[kStreamUnroll][kVec];
#pragma unroll
    for (int u = 0; u < kStreamUnroll; ++u) {
      const int64_t vi = v0 + u * kStreamThreads;
      if (vi < sp.nv) load_vec(xr + sp.head + vi * kVec, v[u]);
    }
#pragma unroll
    for (int u = 0; u < kStreamUnroll; ++u) {
      if (v0 + u * kStreamThreads < sp.nv) {
#pragma unroll
        for (int j = 0; j < kVec; ++j) online_push(ms, v[u][j]);
      }
    }
  }
  if (lane < n - sp.tail0) online_push(ms, load(xr, sp.tail0 + lane));
  ms = row_max_sum<kStreamThreads>(ms, sh);
  const float inv = 1.f / ms.s, lse = ms.m + logf(ms.s);
  auto out = [&](float val) { return kLog ? val - lse : expf(val - ms.m) * inv; };
  if (lane < sp.head) store(yr, lane, out(load(xr, lane)));
  for (int64_t vi = lane; vi < sp.nv; vi += kStreamThreads) {
    float v[kVec];
    load_vec(xr + sp.head + vi * kVec, v);
#pragma unroll
    for (int j = 0; j < kVec; ++j) v[j] = out(v[j]);
    store_vec(yr + sp.head + vi * kVec, v);
  }
  if (lane < n - sp.tail0) store(yr, sp.tail0 + lane, out(load(xr, sp.tail0 + lane)));
}

// Backward: the row's y and d_y held in registers (kK vectors of each per lane).
template <class T, bool kLog, int kRowThreads, int kK>
__global__ void __launch_bounds__(vec_block<kRowThreads>())
    softmax_bwd_regs_kernel(int64_t rows, int64_t n, const T* __restrict__ y,
                            const T* __restrict__ dy, T* __restrict__ dx) {
  constexpr int kVec = VecOf<T>::kN;
  constexpr int kRowsPerBlock = vec_block<kRowThreads>() / kRowThreads;
  __shared__ float sh[64];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kRowThreads;
  if (row >= rows) return;
  const int lane = threadIdx.x % kRowThreads;
  const T* yr = y + row * n;
  const T* dyr = dy + row * n;
  T* dxr = dx + row * n;
  const Split sp = split_row(yr, n);
  const bool has_head = lane < sp.head, has_tail = lane < n - sp.tail0;
  const int64_t t = sp.tail0 + lane;
  const float hy = has_head ? load(yr, lane) : 0.f, hd = has_head ? load(dyr, lane) : 0.f;
  const float ty = has_tail ? load(yr, t) : 0.f, td = has_tail ? load(dyr, t) : 0.f;
  float yv[kK][kVec], dv[kK][kVec];
#pragma unroll
  for (int k = 0; k < kK; ++k) {
    const int64_t vi = lane + k * kRowThreads;
    if (vi < sp.nv) {
      load_vec(yr + sp.head + vi * kVec, yv[k]);
      load_vec(dyr + sp.head + vi * kVec, dv[k]);
    }
  }
  // sum(d_y * y) for softmax, sum(d_y) for log_softmax: head, body, tail.
  auto term = [](float d, float yy) { return kLog ? d : d * yy; };
  float s = 0.f;
  if (has_head) s += term(hd, hy);
#pragma unroll
  for (int k = 0; k < kK; ++k) {
    if (lane + k * kRowThreads < sp.nv) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) s += term(dv[k][j], yv[k][j]);
    }
  }
  if (has_tail) s += term(td, ty);
  s = row_sum<kRowThreads>(s, sh);
  auto grad = [&](float d, float yy) { return kLog ? d - expf(yy) * s : yy * (d - s); };
  if (has_head) store(dxr, lane, grad(hd, hy));
#pragma unroll
  for (int k = 0; k < kK; ++k) {
    const int64_t vi = lane + k * kRowThreads;
    if (vi < sp.nv) {
      float o[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j) o[j] = grad(dv[k][j], yv[k][j]);
      store_vec(dxr + sp.head + vi * kVec, o);
    }
  }
  if (has_tail) store(dxr, t, grad(td, ty));
}

template <class T, bool kLog>
__global__ void __launch_bounds__(kStreamThreads)
    softmax_bwd_stream_kernel(int64_t rows, int64_t n, const T* __restrict__ y,
                              const T* __restrict__ dy, T* __restrict__ dx) {
  constexpr int kVec = VecOf<T>::kN;
  __shared__ float sh[64];
  const int64_t row = blockIdx.x;
  if (row >= rows) return;
  const int lane = threadIdx.x;
  const T* yr = y + row * n;
  const T* dyr = dy + row * n;
  T* dxr = dx + row * n;
  const Split sp = split_row(yr, n);
  auto term = [](float d, float yy) { return kLog ? d : d * yy; };
  float s = 0.f;
  if (lane < sp.head) s += term(load(dyr, lane), load(yr, lane));
  for (int64_t v0 = lane; v0 < sp.nv; v0 += kStreamUnroll * kStreamThreads) {
    float yv[kStreamUnroll][kVec], dv[kStreamUnroll][kVec];
#pragma unroll
    for (int u = 0; u < kStreamUnroll; ++u) {
      const int64_t vi = v0 + u * kStreamThreads;
      if (vi < sp.nv) {
        load_vec(yr + sp.head + vi * kVec, yv[u]);
        load_vec(dyr + sp.head + vi * kVec, dv[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kStreamUnroll; ++u) {
      if (v0 + u * kStreamThreads < sp.nv) {
#pragma unroll
        for (int j = 0; j < kVec; ++j) s += term(dv[u][j], yv[u][j]);
      }
    }
  }
  if (lane < n - sp.tail0) s += term(load(dyr, sp.tail0 + lane), load(yr, sp.tail0 + lane));
  s = row_sum<kStreamThreads>(s, sh);
  auto grad = [&](float d, float yy) { return kLog ? d - expf(yy) * s : yy * (d - s); };
  if (lane < sp.head) store(dxr, lane, grad(load(dyr, lane), load(yr, lane)));
  for (int64_t vi = lane; vi < sp.nv; vi += kStreamThreads) {
    float yv[kVec], dv[kVec];
    load_vec(yr + sp.head + vi * kVec, yv);
    load_vec(dyr + sp.head + vi * kVec, dv);
#pragma unroll
    for (int j = 0; j < kVec; ++j) yv[j] = grad(dv[j], yv[j]);
    store_vec(dxr + sp.head + vi * kVec, yv);
  }
  if (lane < n - sp.tail0) {
    const int64_t t = sp.tail0 + lane;
    store(dxr, t, grad(load(dyr, t), load(yr, t)));
  }
}

// ---------------------------------------------------------------- launch

bool same_phase(const void* a, const void* b) {
  return ((reinterpret_cast<uintptr_t>(a) ^ reinterpret_cast<uintptr_t>(b)) & 15u) == 0;
}

// Registers per lane for a row of n: kK vectors of kRowThreads lanes (kK = 0: the
// streaming kernel). At most 8 vectors (32 float32, or 4 x 8 bfloat16) per lane.
struct VecConfig {
  int row_threads, k;
};
template <class T>
VecConfig vec_config(int64_t n) {
  constexpr int64_t kVec = 16 / sizeof(T);
  const int64_t nv = n / kVec;  // body vectors of any alignment are at most this many
  constexpr int kMaxK = sizeof(T) == 4 ? 8 : 4;
  for (int k = 1; k <= kMaxK; k *= 2) {
    if (nv <= 32 * k) return {32, k};
  }
  for (int k = 2; k <= kMaxK; k *= 2) {
    if (nv <= 256 * k) return {256, k};
  }
  return {kStreamThreads, 0};
}

// Calls f(row threads, kK) for the vector kernel of a row of n elements of T (the same
// choices as vec_config, which also sizes the block).
template <class T, class F>
const char* with_vec_config(int64_t n, F&& f) {
  using std::integral_constant;
  const VecConfig c = vec_config<T>(n);
  constexpr bool kF32 = sizeof(T) == 4;
  if (c.row_threads == 32) {
    if (c.k == 1) return f(integral_constant<int, 32>{}, integral_constant<int, 1>{});
    if (c.k == 2) return f(integral_constant<int, 32>{}, integral_constant<int, 2>{});
    if (c.k == 4) return f(integral_constant<int, 32>{}, integral_constant<int, 4>{});
    if constexpr (kF32) {
      if (c.k == 8) return f(integral_constant<int, 32>{}, integral_constant<int, 8>{});
    }
  } else if (c.row_threads == 256) {
    if (c.k == 2) return f(integral_constant<int, 256>{}, integral_constant<int, 2>{});
    if (c.k == 4) return f(integral_constant<int, 256>{}, integral_constant<int, 4>{});
    if constexpr (kF32) {
      if (c.k == 8) return f(integral_constant<int, 256>{}, integral_constant<int, 8>{});
    }
  } else if (c.k == 0) {
    return f(integral_constant<int, kStreamThreads>{}, integral_constant<int, 0>{});
  }
  return "softmax: no vector kernel for this row length";
}

template <class T, bool kLog>
const char* launch_fwd_vec(const SoftmaxParams& p, cudaStream_t stream) {
  return with_vec_config<T>(p.n, [&](auto threads, auto k) -> const char* {
    constexpr int kRowThreads = decltype(threads)::value, kK = decltype(k)::value;
    const T* x = static_cast<const T*>(p.x);
    T* y = static_cast<T*>(p.y);
    if constexpr (kK == 0) {
      softmax_fwd_stream_kernel<T, kLog>
          <<<static_cast<unsigned>(p.rows), kStreamThreads, 0, stream>>>(p.rows, p.n, x, y);
    } else {
      constexpr int kBlock = vec_block<kRowThreads>(), kRowsPerBlock = kBlock / kRowThreads;
      const int64_t blocks = (p.rows + kRowsPerBlock - 1) / kRowsPerBlock;
      softmax_fwd_regs_kernel<T, kLog, kRowThreads, kK>
          <<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(p.rows, p.n, x, y);
    }
    return nullptr;
  });
}

template <class T, bool kLog>
const char* launch_bwd_vec(const SoftmaxBwdParams& p, cudaStream_t stream) {
  return with_vec_config<T>(p.n, [&](auto threads, auto k) -> const char* {
    constexpr int kRowThreads = decltype(threads)::value, kK = decltype(k)::value;
    const T* y = static_cast<const T*>(p.y);
    const T* dy = static_cast<const T*>(p.dy);
    T* dx = static_cast<T*>(p.dx);
    if constexpr (kK == 0) {
      softmax_bwd_stream_kernel<T, kLog>
          <<<static_cast<unsigned>(p.rows), kStreamThreads, 0, stream>>>(p.rows, p.n, y, dy, dx);
    } else {
      constexpr int kBlock = vec_block<kRowThreads>(), kRowsPerBlock = kBlock / kRowThreads;
      const int64_t blocks = (p.rows + kRowsPerBlock - 1) / kRowsPerBlock;
      softmax_bwd_regs_kernel<T, kLog, kRowThreads, kK>
          <<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(p.rows, p.n, y, dy, dx);
    }
    return nullptr;
  });
}

template <class T, bool kLog, int kThreads>
const char* launch_fwd(const SoftmaxParams& p, cudaStream_t stream) {
  if (same_phase(p.x, p.y)) return launch_fwd_vec<T, kLog>(p, stream);
  constexpr int kBlock = block_threads<kThreads>();
  constexpr int kRowsPerBlock = kBlock / kThreads;
  const int64_t blocks = (p.rows + kRowsPerBlock - 1) / kRowsPerBlock;
  softmax_fwd_kernel<T, kLog, kThreads><<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(
      p.rows, p.n, static_cast<const T*>(p.x), static_cast<T*>(p.y));
  return nullptr;
}

template <class T, bool kLog, int kThreads>
const char* launch_bwd(const SoftmaxBwdParams& p, cudaStream_t stream) {
  if (same_phase(p.y, p.dy) && same_phase(p.y, p.dx)) return launch_bwd_vec<T, kLog>(p, stream);
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
