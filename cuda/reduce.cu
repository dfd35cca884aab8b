// reduce_fwd_kernel and max_bwd_kernel (see cuda/reduce.h).
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

}  // namespace resona::cuda
