// reduce_fwd_kernel (any [A, R, C]), reduce_rows_kernel (contiguous rows), max_bwd_kernel
// and the sum/mean backward's broadcast (see cuda/reduce.h).
//
// A State carries what every kind needs: v (the sum, the maximum, or logsumexp's running
// maximum m), s (logsumexp's sum of exp(x - m)) and idx (max's position along R). push()
// folds one element in (a thread's rows come in increasing r), combine() merges two
// states; the tree and the chunk pass use combine() in a fixed order.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/reduce.h"

namespace resona::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride beyond this

struct alignas(16) State {
  float v;
  float s;
  int64_t idx;
};
static_assert(sizeof(State) == 16, "reduce_workspace_bytes assumes 16-byte states");

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

template <ReduceKernelKind K>
__device__ __forceinline__ State identity() {
  if constexpr (K == ReduceKernelKind::kMax) return {-INFINITY, 0.f, INT64_MAX};
  if constexpr (K == ReduceKernelKind::kLogsumexp) return {-INFINITY, 0.f, 0};
  return {0.f, 0.f, 0};
}

// Whether b is preferred to a as the maximum: NaN above everything, then the larger
// value, then (equal values, or both NaN) the smaller position: the first maximum.
__device__ __forceinline__ bool max_better(float bv, int64_t bi, float av, int64_t ai) {
  const bool bn = isnan(bv), an = isnan(av);
  if (bn != an) return bn;
  if (!bn && bv != av) return bv > av;
  return bi < ai;
}

// s * exp(v - m) for a partial sum taken relative to v, rescaled to the maximum m >= v.
__device__ __forceinline__ float rescale(float s, float v, float m) {
  return v == m ? s : s * expf(v - m);
}

template <ReduceKernelKind K>
__device__ __forceinline__ void push(State& st, float x, int64_t r) {
  if constexpr (K == ReduceKernelKind::kSum || K == ReduceKernelKind::kMean) {
    st.v += x;
  } else if constexpr (K == ReduceKernelKind::kMax) {
    if (max_better(x, r, st.v, st.idx)) {
      st.v = x;
      st.idx = r;
    }
  } else {  // logsumexp, online: m only grows; a NaN x leaves m and poisons s
    if (x > st.v) {
      st.s = rescale(st.s, st.v, x) + 1.f;
      st.v = x;
    } else {
      st.s += x == st.v ? 1.f : expf(x - st.v);
    }
  }
}

template <ReduceKernelKind K>
__device__ __forceinline__ void combine(State& a, const State& b) {
  if constexpr (K == ReduceKernelKind::kSum || K == ReduceKernelKind::kMean) {
    a.v += b.v;
  } else if constexpr (K == ReduceKernelKind::kMax) {
    if (max_better(b.v, b.idx, a.v, a.idx)) a = b;
  } else {
    const float m = fmaxf(a.v, b.v);
    a.s = rescale(a.s, a.v, m) + rescale(b.s, b.v, m);
    a.v = m;
  }
}

template <ReduceKernelKind K>
__device__ __forceinline__ float finish(const State& st, int64_t count) {
  if constexpr (K == ReduceKernelKind::kMean) return st.v / static_cast<float>(count);
  if constexpr (K == ReduceKernelKind::kLogsumexp) return isfinite(st.v) ? st.v + logf(st.s) : st.v;
  return st.v;
}

// Sources: elements of x (stage 1) or partial states (stage 2), both laid out [A, R, C].
template <class T>
struct ValueSrc {
  const T* x;
  template <ReduceKernelKind K>
  __device__ __forceinline__ void fold(State& st, int64_t at, int64_t r) const {
    push<K>(st, to_f(x[at]), r);
  }
};
struct StateSrc {
  const State* w;
  template <ReduceKernelKind K>
  __device__ __forceinline__ void fold(State& st, int64_t at, int64_t) const {
    combine<K>(st, w[at]);
  }
};

// Sinks: partial states of chunk `chunk` (workspace [A, chunks, C]), or finished outputs.
struct StateSink {
  State* w;
  int64_t chunks;
  template <ReduceKernelKind K>
  __device__ __forceinline__ void put(int64_t a, int64_t chunk, int64_t c, int64_t C,
                                      const State& st) const {
    w[(a * chunks + chunk) * C + c] = st;
  }
};
template <class T>
struct OutSink {
  T* out;          // may be null (argmax)
  int64_t* index;  // may be null
  int64_t count;   // R of the original reduction (mean's divisor)
  template <ReduceKernelKind K>
  __device__ __forceinline__ void put(int64_t a, int64_t, int64_t c, int64_t C,
                                      const State& st) const {
    if (out != nullptr) store(out + a * C + c, finish<K>(st, count));
    if (index != nullptr) index[a * C + c] = st.idx;
  }
};

template <ReduceKernelKind K, class Src, class Sink>
__global__ void __launch_bounds__(kThreads)
    reduce_fwd_kernel(Src src, Sink sink, int64_t A, int64_t R, int64_t C, int64_t col_tiles,
                      int64_t chunks, int64_t chunk_rows) {
  __shared__ State sh[kThreads];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int bx = blockDim.x, by = blockDim.y;
  const int64_t total = A * col_tiles * chunks;
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    const int64_t chunk = blk % chunks;
    const int64_t t = blk / chunks;
    const int64_t a = t / col_tiles;
    const int64_t c = (t % col_tiles) * bx + tx;
    const int64_t r0 = chunk * chunk_rows;
    const int64_t r1 = r0 + chunk_rows < R ? r0 + chunk_rows : R;
    State st = identity<K>();
    if (c < C) {
      for (int64_t r = r0 + ty; r < r1; r += by) src.template fold<K>(st, (a * R + r) * C + c, r);
    }
    sh[ty * bx + tx] = st;
    __syncthreads();
    for (int half = by / 2; half > 0; half /= 2) {
      if (ty < half) combine<K>(sh[ty * bx + tx], sh[(ty + half) * bx + tx]);
      __syncthreads();
    }
    if (ty == 0 && c < C) sink.template put<K>(a, chunk, c, C, sh[tx]);
    __syncthreads();  // sh is reused by the next block-iteration
  }
}

// ---- contiguous rows (C = 1)

// One 16-byte access: 4 float32 or 8 bfloat16.
template <class T>
struct Vec {
  static constexpr int kN = 16 / static_cast<int>(sizeof(T));
};

// Elements before the first 16-byte boundary of `row` (0 when aligned), at most n.
template <class T>
__device__ __forceinline__ int64_t head_elems(const T* row, int64_t n) {
  const int64_t mis = static_cast<int64_t>(reinterpret_cast<uintptr_t>(row) & 15u) / sizeof(T);
  const int64_t head = mis == 0 ? 0 : Vec<T>::kN - mis;
  return head < n ? head : n;
}

__device__ __forceinline__ State shfl_xor(const State& st, int o) {
  State r;
  r.v = __shfl_xor_sync(0xffffffffu, st.v, o);
  r.s = __shfl_xor_sync(0xffffffffu, st.s, o);
  r.idx = __shfl_xor_sync(0xffffffffu, st.idx, o);
  return r;
}

template <ReduceKernelKind K>
__device__ __forceinline__ State warp_combine(State st) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    State other;
    if constexpr (K == ReduceKernelKind::kSum || K == ReduceKernelKind::kMean) {
      other.v = __shfl_xor_sync(0xffffffffu, st.v, o);  // s and idx are unused
    } else {
      other = shfl_xor(st, o);
    }
    combine<K>(st, other);
  }
  return st;
}

// Folds row[0..n) into the state of thread `lane` of kRowThreads: the unaligned head
// (one element per lane), the aligned body in 16-byte vectors (vector v to lane
// v % kRowThreads, kUnroll loads in flight per lane), then the tail.
template <ReduceKernelKind K, class T, int kRowThreads>
__device__ __forceinline__ State fold_row(const T* __restrict__ row, int64_t n, int lane) {
  constexpr int kVec = Vec<T>::kN;
  constexpr int kUnroll = 4;
  State st = identity<K>();
  const int64_t head = head_elems(row, n);
  if (lane < head) push<K>(st, to_f(row[lane]), lane);
  const int64_t nv = (n - head) / kVec;
  const uint4* body = reinterpret_cast<const uint4*>(row + head);
  for (int64_t v0 = lane; v0 < nv; v0 += kUnroll * kRowThreads) {
    uint4 raw[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t v = v0 + u * kRowThreads;
      if (v < nv) raw[u] = body[v];
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t v = v0 + u * kRowThreads;
      if (v < nv) {
        const T* e = reinterpret_cast<const T*>(&raw[u]);
#pragma unroll
        for (int j = 0; j < kVec; ++j) push<K>(st, to_f(e[j]), head + v * kVec + j);
      }
    }
  }
  const int64_t done = head + nv * kVec;
  if (lane < n - done) push<K>(st, to_f(row[done + lane]), done + lane);
  return st;
}

// x: contiguous [A, R]; row a reduced by kRowThreads threads (a warp, kThreads / 32 rows
// per block; or the whole block).
template <ReduceKernelKind K, class T, int kRowThreads>
__global__ void __launch_bounds__(kThreads)
    reduce_rows_kernel(const T* __restrict__ x, OutSink<T> sink, int64_t A, int64_t R) {
  static_assert(kRowThreads == 32 || kRowThreads == kThreads, "a warp or the block per row");
  constexpr int kRowsPerBlock = kThreads / kRowThreads;
  __shared__ State sh[kThreads / 32];
  const int lane = threadIdx.x % kRowThreads;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  // The loop bound is uniform over a warp (warp per row) or the block (block per row).
  for (int64_t a = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kRowThreads;
       a < A; a += step) {
    State st = fold_row<K, T, kRowThreads>(x + a * R, R, lane);
    st = warp_combine<K>(st);
    if constexpr (kRowThreads > 32) {
      const int wl = threadIdx.x & 31, warp = threadIdx.x >> 5;
      if (wl == 0) sh[warp] = st;
      __syncthreads();
      st = wl < kRowThreads / 32 ? sh[wl] : identity<K>();
      st = warp_combine<K>(st);
      __syncthreads();  // sh is reused by the next row
    }
    if (lane == 0) sink.template put<K>(a, 0, 0, 1, st);
  }
}

// ---- sum / mean backward

// Rows of d_x of L elements, a warp each: row q of d_x is scale * d_out[a] (C = 1, L = R,
// a = q) or scale * d_out[a, 0..C) (C > 1, L = C, a = q / R). Unaligned head and tail
// elements are stored one by one, the body in 16-byte vectors.
template <class T>
__global__ void __launch_bounds__(kThreads)
    sum_bwd_rows_kernel(const T* __restrict__ d_out, T* __restrict__ d_x, int64_t rows, int64_t L,
                        int64_t R, int64_t C, float scale) {
  constexpr int kVec = Vec<T>::kN;
  const int lane = threadIdx.x & 31;
  const int64_t step = static_cast<int64_t>(gridDim.x) * (kThreads / 32);
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32; q < rows;
       q += step) {
    T* out = d_x + q * L;
    const bool bcast = C == 1;
    const T* src = bcast ? d_out + q : d_out + (q / R) * C;
    const float one = bcast ? to_f(src[0]) * scale : 0.f;
    auto value = [&](int64_t j) { return bcast ? one : to_f(src[j]) * scale; };
    const int64_t head = head_elems(out, L);
    if (lane < head) store(out + lane, value(lane));
    const int64_t nv = (L - head) / kVec;
    uint4* body = reinterpret_cast<uint4*>(out + head);
    for (int64_t v = lane; v < nv; v += 32) {
      alignas(16) T e[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j) store(e + j, value(head + v * kVec + j));
      body[v] = *reinterpret_cast<const uint4*>(e);
    }
    const int64_t done = head + nv * kVec;
    if (lane < L - done) store(out + done + lane, value(done + lane));
  }
}

// Any [A, R, C], one element per thread (rows of d_x shorter than a warp).
template <class T>
__global__ void sum_bwd_flat_kernel(const T* __restrict__ d_out, T* __restrict__ d_x, int64_t n,
                                    int64_t R, int64_t C, float scale) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const int64_t c = i % C;
    const int64_t a = i / C / R;
    store(d_x + i, to_f(d_out[a * C + c]) * scale);
  }
}

template <class T>
__global__ void max_bwd_kernel(int64_t n, int64_t R, int64_t C, const T* d_out,
                               const int64_t* index, T* d_x) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const int64_t c = i % C;
    const int64_t t = i / C;
    const int64_t r = t % R;
    const int64_t j = (t / R) * C + c;
    d_x[i] = index[j] == r ? d_out[j] : T(0.f);
  }
}

unsigned grid_for(int64_t blocks) {
  if (blocks < 1) blocks = 1;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  return static_cast<unsigned>(blocks);
}

const char* last_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <ReduceKernelKind K, class T>
const char* launch_reduce(const ReduceParams& p, cudaStream_t stream) {
  const ReduceShape s = reduce_shape(p.A, p.R, p.C);
  const dim3 block(s.bx, s.by);
  const OutSink<T> out{static_cast<T*>(p.out), p.index, p.R};
  const ValueSrc<T> values{static_cast<const T*>(p.x)};
  const int32_t row_threads = reduce_row_threads(p.A, p.R, p.C);
  if (row_threads == 32) {
    constexpr int64_t kRowsPerBlock = kThreads / 32;
    reduce_rows_kernel<K, T, 32>
        <<<grid_for((p.A + kRowsPerBlock - 1) / kRowsPerBlock), kThreads, 0, stream>>>(
            static_cast<const T*>(p.x), out, p.A, p.R);
    return last_error();
  }
  if (row_threads == kThreads) {
    reduce_rows_kernel<K, T, kThreads>
        <<<grid_for(p.A), kThreads, 0, stream>>>(static_cast<const T*>(p.x), out, p.A, p.R);
    return last_error();
  }
  if (row_threads != 0) return "reduce: unsupported threads per row";
  if (s.chunks == 1) {
    reduce_fwd_kernel<K><<<grid_for(p.A * s.col_tiles), block, 0, stream>>>(
        values, out, p.A, p.R, p.C, s.col_tiles, int64_t{1}, s.chunk_rows);
    return last_error();
  }
  if (p.workspace == nullptr) return "reduce: missing workspace (see reduce_workspace_bytes)";
  State* w = static_cast<State*>(p.workspace);
  reduce_fwd_kernel<K><<<grid_for(p.A * s.col_tiles * s.chunks), block, 0, stream>>>(
      values, StateSink{w, s.chunks}, p.A, p.R, p.C, s.col_tiles, s.chunks, s.chunk_rows);
  if (const char* err = last_error()) return err;
  // Stage 2: the chunks' states, [A, chunks, C], reduced along the chunks.
  reduce_fwd_kernel<K><<<grid_for(p.A * s.col_tiles), block, 0, stream>>>(
      StateSrc{w}, out, p.A, s.chunks, p.C, s.col_tiles, int64_t{1}, s.chunks);
  return last_error();
}

template <class T>
const char* dispatch_kind(const ReduceParams& p, cudaStream_t stream) {
  switch (p.kind) {
    case ReduceKernelKind::kSum:
      return launch_reduce<ReduceKernelKind::kSum, T>(p, stream);
    case ReduceKernelKind::kMean:
      return launch_reduce<ReduceKernelKind::kMean, T>(p, stream);
    case ReduceKernelKind::kMax:
      return launch_reduce<ReduceKernelKind::kMax, T>(p, stream);
    case ReduceKernelKind::kLogsumexp:
      return launch_reduce<ReduceKernelKind::kLogsumexp, T>(p, stream);
  }
  return "reduce: unknown kind";
}

template <class T>
const char* launch_max_bwd(const MaxBwdParams& p, cudaStream_t stream) {
  const int64_t n = p.A * p.R * p.C;
  max_bwd_kernel<T><<<grid_for((n + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      n, p.R, p.C, static_cast<const T*>(p.d_out), p.index, static_cast<T*>(p.d_x));
  return last_error();
}

template <class T>
const char* launch_sum_bwd(const SumBwdParams& p, cudaStream_t stream) {
  const T* d_out = static_cast<const T*>(p.d_out);
  T* d_x = static_cast<T*>(p.d_x);
  // Rows of d_x that d_out fills: whole rows of R for C = 1, rows of C otherwise.
  const int64_t L = p.C == 1 ? p.R : p.C;
  const int64_t rows = p.C == 1 ? p.A : p.A * p.R;
  if (L >= 32) {
    constexpr int64_t kRowsPerBlock = kThreads / 32;
    sum_bwd_rows_kernel<T>
        <<<grid_for((rows + kRowsPerBlock - 1) / kRowsPerBlock), kThreads, 0, stream>>>(
            d_out, d_x, rows, L, p.R, p.C, p.scale);
  } else {
    const int64_t n = p.A * p.R * p.C;
    sum_bwd_flat_kernel<T><<<grid_for((n + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
        d_out, d_x, n, p.R, p.C, p.scale);
  }
  return last_error();
}

}  // namespace

const char* reduce_fwd_cuda(const ReduceParams& p, void* stream_v) {
  if (p.A < 0 || p.R < 0 || p.C < 0) return "reduce: negative extent";
  if (p.A * p.C == 0) return nullptr;
  auto stream = static_cast<cudaStream_t>(stream_v);
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return dispatch_kind<float>(p, stream);
    case KernelDType::kBFloat16:
      return dispatch_kind<__nv_bfloat16>(p, stream);
  }
  return "reduce: unknown dtype (float32 and bfloat16 are supported)";
}

const char* max_bwd_cuda(const MaxBwdParams& p, void* stream_v) {
  if (p.A * p.R * p.C == 0) return nullptr;
  auto stream = static_cast<cudaStream_t>(stream_v);
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return launch_max_bwd<float>(p, stream);
    case KernelDType::kBFloat16:
      return launch_max_bwd<__nv_bfloat16>(p, stream);
  }
  return "max backward: unknown dtype (float32 and bfloat16 are supported)";
}

const char* sum_bwd_cuda(const SumBwdParams& p, void* stream_v) {
  if (p.A < 0 || p.R < 0 || p.C < 0) return "sum backward: negative extent";
  if (p.A * p.R * p.C == 0) return nullptr;
  auto stream = static_cast<cudaStream_t>(stream_v);
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return launch_sum_bwd<float>(p, stream);
    case KernelDType::kBFloat16:
      return launch_sum_bwd<__nv_bfloat16>(p, stream);
  }
  return "sum backward: unknown dtype (float32 and bfloat16 are supported)";
}

}  // namespace resona::cuda
