// Indexing kernels: the strided gather (forward of embedding, index_select, gather) and
// its adjoint scatter-add, atomic or deterministic (see cuda/index.h for the maps).
//
// Layout of the work: the out-shaped space is seen as rows (every dim but the last) by
// L columns (the last dim). A block of (tx, ty) threads takes ty rows at a time, tx
// threads striding over the columns, so the innermost accesses are coalesced whenever
// x's last dim is contiguous; each row's coordinates are decoded once.
//
// index_prepare_kernel          index (int32/int64, strided) -> int64, bad values -> 0,
//                               the first bad one reported to the mapped error record
// index_gather_rows_kernel      out[row, :] = a contiguous row of x (see copy_row)
// index_gather_fwd_kernel       out[c] = x[x_off(c)]   (any other case)
// embedding_fwd_kernel          embedding with raw ids: check, copy row or zeros, report
// index_scatter_atomic_kernel   acc[x_off(c)] += d_y[c]         (float32 atomics)
// index_rows_dense_kernel       rows along dim 0, both modes: every row of d_x written
//                               once from its run of the sorted ids (zeros if none)
// index_rows_segment_kernel     deterministic rows: d_x[o, v, r] = sum over the sorted
//                               run of positions i with idx[i] = v of d_y[o, i, r]
// index_elem_keys_kernel +      deterministic elements: key = contiguous x_off(c),
// index_elem_segment_kernel     sorted, each run summed in position order
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cub/cub.cuh>

#include "cuda/convert.cuh"
#include "cuda/index.h"

namespace resona::cuda {
namespace {

// The out-shaped iteration space and the map to x offsets.
struct Geom {
  int32_t ndim;
  int64_t shape[kIndexMaxDims];    // out / d_y shape
  int64_t strides[kIndexMaxDims];  // x strides (forward) or contiguous d_x strides
  int32_t dim;
  bool per_element;
  int64_t rows, cols;  // prod(shape[0 .. ndim-2]), shape[ndim-1]
};

struct RowBase {
  int64_t base;  // sum over d < ndim-1, d != dim of c[d] * strides[d]
  int64_t cdim;  // c[dim] when dim < ndim-1
};

__device__ __forceinline__ RowBase decode_row(const Geom& g, int64_t row) {
  RowBase r{0, 0};
  for (int d = g.ndim - 2; d >= 0; --d) {
    const int64_t c = row % g.shape[d];
    row /= g.shape[d];
    if (d == g.dim) {
      r.cdim = c;
    } else {
      r.base += c * g.strides[d];
    }
  }
  return r;
}

__device__ __forceinline__ int64_t x_offset(const Geom& g, const RowBase& rb, int64_t row,
                                            int64_t col, const int64_t* idx) {
  const int last = g.ndim - 1;
  const int64_t v =
      g.per_element ? idx[row * g.cols + col] : (g.dim == last ? idx[col] : idx[rb.cdim]);
  return rb.base + (g.dim == last ? 0 : col * g.strides[last]) + v * g.strides[g.dim];
}

Geom make_geom(const IndexGatherParams& p, bool contiguous_x) {
  Geom g{};
  g.ndim = p.ndim;
  g.dim = p.dim;
  g.per_element = p.per_element;
  g.rows = 1;
  int64_t st = 1;
  for (int d = p.ndim - 1; d >= 0; --d) {
    g.shape[d] = p.out_shape[d];
    g.strides[d] = contiguous_x ? st : p.x_strides[d];
    st *= p.x_shape[d];
    if (d < p.ndim - 1) g.rows *= p.out_shape[d];
  }
  g.cols = p.out_shape[p.ndim - 1];
  return g;
}

int64_t numel_of(const int64_t* shape, int ndim) {
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= shape[d];
  return n;
}

// Block shape for `cols` columns: tx a power of two covering them (at most 256), ty rows.
dim3 block_for(int64_t cols) {
  unsigned tx = 1;
  while (tx < 256 && tx < cols) tx *= 2;
  return dim3(tx, 256 / tx);
}

unsigned grid_for(int64_t rows, unsigned ty) {
  int64_t b = (rows + ty - 1) / ty;
  if (b > (1 << 20)) b = 1 << 20;  // grid-stride beyond
  return static_cast<unsigned>(b < 1 ? 1 : b);
}

const char* last_error() {
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// ---------------------------------------------------------------- prepare

// The value at flat row-major position n of an index tensor read in place.
__device__ __forceinline__ int64_t raw_index_at(const RawIndex& ix, int64_t n) {
  int64_t off = 0;
  if (ix.ndim == 1) {
    off = n * ix.strides[0];
  } else {
    for (int d = ix.ndim - 1; d >= 0; --d) {
      off += (n % ix.shape[d]) * ix.strides[d];
      n /= ix.shape[d];
    }
  }
  return ix.int32 ? static_cast<int64_t>(static_cast<const int32_t*>(ix.data)[off])
                  : static_cast<const int64_t*>(ix.data)[off];
}

// Reports bad value `value` at position pos of a launch's index tensor (cuda/index.h,
// IndexErrorRecord's protocol): nothing when another launch (or block) has claimed the
// record and the host has not reported it yet.
__device__ __forceinline__ void report_bad_index(const IndexReport& rep, int64_t pos, int64_t value,
                                                 int64_t bound) {
  if (atomicCAS(rep.claim, 0ull, static_cast<unsigned long long>(rep.launch)) != 0ull) return;
  volatile IndexErrorRecord* r = rep.record;
  r->launch = rep.launch;
  r->pos = pos;
  r->value = value;
  r->bound = bound;
  __threadfence_system();
  r->set = 1;
  __threadfence_system();
}

// scratch[0] holds ~pos of the smallest bad position seen so far (0: none; atomicMax on
// the complement keeps the smallest position), scratch[1] counts the blocks that are
// done. The last block to finish reports the launch's smallest bad position, so that the
// report does not depend on the order in which blocks run.
__global__ void index_prepare_kernel(IndexPrepareParams p) {
  auto* bad_key = reinterpret_cast<unsigned long long*>(p.scratch);
  auto* blocks_done = bad_key + 1;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < p.index.n;
       n += stride) {
    const int64_t v = raw_index_at(p.index, n);
    const bool bad = v < 0 || v >= p.bound;
    p.out[n] = bad ? 0 : v;  // keeps the gather and scatter that read out inside x
    if (bad) {
      atomicMax(bad_key, ~static_cast<unsigned long long>(n));
      __threadfence();
    }
  }
  __shared__ bool last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    last = atomicAdd(blocks_done, 1ull) == gridDim.x - 1ull;
  }
  __syncthreads();
  if (!last || threadIdx.x != 0) return;
  __threadfence();
  const unsigned long long key = atomicAdd(bad_key, 0ull);
  if (key == 0) return;
  const int64_t pos = static_cast<int64_t>(~key);
  report_bad_index(p.report, pos, raw_index_at(p.index, pos), p.bound);
}

// ---------------------------------------------------------------- forward

template <class T>
__global__ void index_gather_fwd_kernel(Geom g, const int64_t* __restrict__ idx,
                                        const T* __restrict__ x, T* __restrict__ out) {
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < g.rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const RowBase rb = decode_row(g, row);
    for (int64_t col = threadIdx.x; col < g.cols; col += blockDim.x) {
      out[row * g.cols + col] = x[x_offset(g, rb, row, col, idx)];
    }
  }
}

// Row copies (index_select and embedding along a dim other than the last, x's last dim
// contiguous): every out row is one contiguous row of x. A warp per row; where source and
// destination sit at the same offset from a 16-byte boundary (the whole row, when x's
// row stride and the row length are multiples of 16 bytes and both bases are aligned),
// the row moves in 16-byte vectors (up to 8 per lane in flight) between a scalar head
// and tail; otherwise element by element.
constexpr int kRowWarps = 8;  // rows (warps) per block

template <class T>
__device__ __forceinline__ void copy_row(const T* __restrict__ src, T* __restrict__ dst, int64_t n,
                                         int lane) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  constexpr int kUnroll = 8;  // rows up to 4 KiB in one round of loads per lane
  const uintptr_t s = reinterpret_cast<uintptr_t>(src), d = reinterpret_cast<uintptr_t>(dst);
  if (((s ^ d) & 15u) != 0) {
    for (int64_t j = lane; j < n; j += 32) dst[j] = src[j];
    return;
  }
  const int64_t mis = static_cast<int64_t>(d & 15u) / static_cast<int64_t>(sizeof(T));
  int64_t head = mis == 0 ? 0 : kVec - mis;
  if (head > n) head = n;
  if (lane < head) dst[lane] = src[lane];
  const int64_t nv = (n - head) / kVec;
  const uint4* vs = reinterpret_cast<const uint4*>(src + head);
  uint4* vd = reinterpret_cast<uint4*>(dst + head);
  for (int64_t v0 = lane; v0 < nv; v0 += kUnroll * 32) {
    uint4 r[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (v0 + u * 32 < nv) r[u] = vs[v0 + u * 32];
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (v0 + u * 32 < nv) vd[v0 + u * 32] = r[u];
    }
  }
  const int64_t done = head + nv * kVec;
  if (lane < n - done) dst[done + lane] = src[done + lane];
}

template <class T>
__global__ void __launch_bounds__(kRowWarps * 32)
    index_gather_rows_kernel(Geom g, const int64_t* __restrict__ idx, const T* __restrict__ x,
                             T* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kRowWarps;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32; row < g.rows;
       row += step) {
    const RowBase rb = decode_row(g, row);
    const T* src = x + rb.base + idx[rb.cdim] * g.strides[g.dim];
    copy_row(src, out + row * g.cols, g.cols, lane);
  }
}

// ---------------------------------------------------------------- embedding forward

// A warp per position n: every lane reads the id (one broadcast load), checks it, and
// the warp copies weight's row (or writes zeros). See cuda/index.h EmbeddingFwdParams
// for the report.
template <class T>
__global__ void __launch_bounds__(kRowWarps * 32, 3) embedding_fwd_kernel(EmbeddingFwdParams p) {
  __shared__ unsigned long long block_bad;  // smallest bad position of this block, or ~0
  if (threadIdx.x == 0) block_bad = ~0ull;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const T* w = static_cast<const T*>(p.weight);
  T* out = static_cast<T*>(p.out);
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32; n < p.ids.n;
       n += static_cast<int64_t>(gridDim.x) * kRowWarps) {
    const int64_t v = raw_index_at(p.ids, n);
    const bool bad = v < 0 || v >= p.V;
    if (lane == 0) {
      if (p.ids_out != nullptr) p.ids_out[n] = bad ? 0 : v;
      if (bad) atomicMin(&block_bad, static_cast<unsigned long long>(n));
    }
    T* dst = out + n * p.D;
    if (bad) {
      for (int64_t j = lane; j < p.D; j += 32) dst[j] = from_f32<T>(0.f);
    } else if (p.w_stride1 == 1 || p.D == 1) {
      copy_row(w + v * p.w_stride0, dst, p.D, lane);
    } else {
      const T* src = w + v * p.w_stride0;
      for (int64_t j = lane; j < p.D; j += 32) dst[j] = src[j * p.w_stride1];
    }
  }
  __syncthreads();
  if (threadIdx.x != 0 || block_bad == ~0ull) return;
  const int64_t pos = static_cast<int64_t>(block_bad);
  report_bad_index(p.report, pos, raw_index_at(p.ids, pos), p.V);
}

template <class T>
const char* launch_fwd(const IndexGatherParams& p, cudaStream_t stream) {
  const Geom g = make_geom(p, /*contiguous_x=*/false);
  if (g.rows * g.cols == 0) return nullptr;
  const int last = g.ndim - 1;
  if (!g.per_element && g.dim != last && (g.strides[last] == 1 || g.cols == 1)) {
    int64_t blocks = (g.rows + kRowWarps - 1) / kRowWarps;
    if (blocks > (1 << 20)) blocks = 1 << 20;  // grid-stride beyond
    index_gather_rows_kernel<T><<<static_cast<unsigned>(blocks), kRowWarps * 32, 0, stream>>>(
        g, p.idx, static_cast<const T*>(p.src), static_cast<T*>(p.dst));
    return last_error();
  }
  const dim3 block = block_for(g.cols);
  index_gather_fwd_kernel<T><<<grid_for(g.rows, block.y), block, 0, stream>>>(
      g, p.idx, static_cast<const T*>(p.src), static_cast<T*>(p.dst));
  return last_error();
}

// ---------------------------------------------------------------- backward, atomic

template <class T>
__global__ void index_scatter_atomic_kernel(Geom g, const int64_t* __restrict__ idx,
                                            const T* __restrict__ d_y, float* acc) {
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < g.rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const RowBase rb = decode_row(g, row);
    for (int64_t col = threadIdx.x; col < g.cols; col += blockDim.x) {
      atomicAdd(acc + x_offset(g, rb, row, col, idx), to_f32(d_y[row * g.cols + col]));
    }
  }
}

__global__ void f32_to_bf16_kernel(const float* __restrict__ in, __nv_bfloat16* __restrict__ out,
                                   int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    out[i] = __float2bfloat16_rn(in[i]);
  }
}

// ---------------------------------------------------------------- backward, deterministic

__global__ void iota_kernel(int32_t* out, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    out[i] = static_cast<int32_t>(i);
  }
}

// d_y viewed as [outer, n, inner], d_x as [outer, mid, inner]; keys/pos sorted by key.
// Block: tx threads over inner, ty sorted positions; grid.y strides over outer.
template <class T>
__global__ void index_rows_segment_kernel(const unsigned long long* __restrict__ keys,
                                          const int32_t* __restrict__ pos, int64_t n, int64_t outer,
                                          int64_t mid, int64_t inner, const T* __restrict__ d_y,
                                          T* __restrict__ d_x) {
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const unsigned long long key = keys[k];
    if (k > 0 && keys[k - 1] == key) continue;  // not the head of its run
    for (int64_t o = blockIdx.y; o < outer; o += gridDim.y) {
      for (int64_t r = threadIdx.x; r < inner; r += blockDim.x) {
        float acc = 0.f;
        for (int64_t m = k; m < n && keys[m] == key; ++m) {
          acc += to_f32(d_y[(o * n + pos[m]) * inner + r]);
        }
        d_x[(o * mid + static_cast<int64_t>(key)) * inner + r] = from_f32<T>(acc);
      }
    }
  }
}

// The first k in [0, n) with keys[k] >= v (n when none), keys sorted ascending; the whole
// warp searches together, each round splitting the range into 32 chunks and counting
// (one ballot) the chunks whose last key is below v: 3 rounds of one load per lane for
// n = 16384, instead of 14 dependent loads of a binary search.
__device__ __forceinline__ int64_t warp_lower_bound(const unsigned long long* __restrict__ keys,
                                                    int64_t n, unsigned long long v, int lane) {
  int64_t lo = 0, len = n;
  while (len > 32) {
    const int64_t step = (len + 31) / 32, end = lo + len;
    const int64_t i = lo + (lane + 1) * step - 1;
    const bool below = i < end && keys[i] < v;
    const int64_t next =
        lo + static_cast<int64_t>(__popc(__ballot_sync(0xffffffffu, below))) * step;
    len = end - next < step ? end - next : step;
    lo = next;
  }
  const bool below = lane < len && keys[lo + lane] < v;
  return lo + __popc(__ballot_sync(0xffffffffu, below));
}

// 16-byte vectors of T as float32: 4 floats or 8 bfloat16.
template <class T>
struct Vec16;
template <>
struct Vec16<float> {
  static constexpr int kN = 4;
  __device__ __forceinline__ static void add(float* acc, const uint4 r) {
    acc[0] += __uint_as_float(r.x);
    acc[1] += __uint_as_float(r.y);
    acc[2] += __uint_as_float(r.z);
    acc[3] += __uint_as_float(r.w);
  }
  __device__ __forceinline__ static uint4 pack(const float* acc) {
    return make_uint4(__float_as_uint(acc[0]), __float_as_uint(acc[1]), __float_as_uint(acc[2]),
                      __float_as_uint(acc[3]));
  }
};
template <>
struct Vec16<__nv_bfloat16> {
  static constexpr int kN = 8;
  // Element 2k is the low half of word k (little-endian), widened exactly.
  __device__ __forceinline__ static void add2(float* acc, unsigned w) {
    acc[0] += __uint_as_float(w << 16);
    acc[1] += __uint_as_float(w & 0xffff0000u);
  }
  __device__ __forceinline__ static void add(float* acc, const uint4 r) {
    add2(acc, r.x);
    add2(acc + 2, r.y);
    add2(acc + 4, r.z);
    add2(acc + 6, r.w);
  }
  __device__ __forceinline__ static unsigned pack2(float a, float b) {
    return static_cast<unsigned>(__bfloat16_as_ushort(__float2bfloat16_rn(a))) |
           (static_cast<unsigned>(__bfloat16_as_ushort(__float2bfloat16_rn(b))) << 16);
  }
  __device__ __forceinline__ static uint4 pack(const float* acc) {
    return make_uint4(pack2(acc[0], acc[1]), pack2(acc[2], acc[3]), pack2(acc[4], acc[5]),
                      pack2(acc[6], acc[7]));
  }
};

// Sums the d_y rows pos[a], ..., pos[b - 1] ([n, inner]) in that order in float32, a warp
// over the columns, and hands each finished column group to `store`: store.vec(j, acc)
// for 16-byte vector j (acc: Vec16<T>::kN floats; vec paths only), store.scalar(j, acc)
// for column j. vec: inner * sizeof(T) is a multiple of 16 and d_y is 16-byte aligned:
// kUnroll vectors per lane in flight.
template <class T, class Store>
__device__ __forceinline__ void sum_rows(const T* __restrict__ d_y, const int32_t* __restrict__ pos,
                                         int64_t a, int64_t b, int64_t inner, bool vec, int lane,
                                         const Store& store) {
  constexpr int kUnroll = 4;
  constexpr int kN = Vec16<T>::kN;
  if (vec) {
    const int64_t nv = inner / kN;
    for (int64_t j0 = lane; j0 < nv; j0 += kUnroll * 32) {
      float acc[kUnroll][kN];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int e = 0; e < kN; ++e) acc[u][e] = 0.f;
      }
      for (int64_t m = a; m < b; ++m) {
        const uint4* row =
            reinterpret_cast<const uint4*>(d_y + static_cast<int64_t>(pos[m]) * inner);
        uint4 r[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (j0 + u * 32 < nv) r[u] = row[j0 + u * 32];
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (j0 + u * 32 < nv) Vec16<T>::add(acc[u], r[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (j0 + u * 32 < nv) store.vec(j0 + u * 32, acc[u]);
      }
    }
  } else {
    for (int64_t j = lane; j < inner; j += 32) {
      float acc = 0.f;
      for (int64_t m = a; m < b; ++m) acc += to_f32(d_y[static_cast<int64_t>(pos[m]) * inner + j]);
      store.scalar(j, acc);
    }
  }
}

// Writes a row of d_x (vec: 16-byte aligned).
template <class T>
struct RowStore {
  T* row;
  __device__ __forceinline__ void vec(int64_t j, const float* acc) const {
    reinterpret_cast<uint4*>(row)[j] = Vec16<T>::pack(acc);
  }
  __device__ __forceinline__ void scalar(int64_t j, float acc) const { row[j] = from_f32<T>(acc); }
};

// Adds into a float32 row with atomics.
template <class T>
struct AtomicStore {
  float* row;
  __device__ __forceinline__ void vec(int64_t j, const float* acc) const {
#pragma unroll
    for (int e = 0; e < Vec16<T>::kN; ++e) atomicAdd(row + j * Vec16<T>::kN + e, acc[e]);
  }
  __device__ __forceinline__ void scalar(int64_t j, float acc) const { atomicAdd(row + j, acc); }
};

// Dense rows backward (embedding; index_select along dim 0): d_y is [n, inner], d_x is
// [mid, inner], keys/pos the ids sorted stably with their positions. Warps 0 .. mid-1:
// a warp per row v of d_x finds the run of v in keys (warp_lower_bound, then 32 keys a
// round) and, when the run has at most long_run positions, writes the row once: the
// run's d_y rows summed in float32 in increasing position order (the CPU's order), zeros
// for an empty run. So d_x needs no zeroing pass, and float32 and bfloat16 round once.
//
// Longer runs (a frequent id such as padding; atomic mode only, long_run is INT64_MAX
// in deterministic mode) would leave one warp summing thousands of rows, so they are
// split: warps mid .. mid + chunks - 1 each take kLongChunk sorted positions. A run
// longer than long_run >= kLongChunk can meet a chunk only as its first or its last
// segment, so each chunk warp checks those two: for a long one it sums the segment's
// rows and adds them with float32 atomics to long_acc row lo / long_run (lo: the run's
// first position; distinct for distinct long runs), then counts the segment's positions
// in long_count at that slot; the warp that brings the count to the run's length writes
// the d_x row from long_acc (long_acc and long_count zeroed before the launch).
// Bytes: reads n * inner * sizeof(T) (each d_y row once) + the keys and positions,
// writes mid * inner * sizeof(T); long runs add float32 atomics of 1/kLongChunk of their
// d_y elements and one read of long_acc row per long run.
constexpr int64_t kLongChunk = 16;

template <class T>
__global__ void __launch_bounds__(kRowWarps * 32)
    index_rows_dense_kernel(const unsigned long long* __restrict__ keys,
                            const int32_t* __restrict__ pos, int64_t n, int64_t mid, int64_t inner,
                            bool vec, const T* __restrict__ d_y, T* __restrict__ d_x,
                            int64_t long_run, int64_t chunks, float* long_acc,
                            unsigned* long_count) {
  const int lane = threadIdx.x & 31;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kRowWarps;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32;
       w < mid + chunks; w += step) {
    if (w < mid) {
      const int64_t v = w;
      const int64_t lo = warp_lower_bound(keys, n, static_cast<unsigned long long>(v), lane);
      int64_t hi = lo;  // the run's end: 32 keys a round, one round for runs below 32
      for (;;) {
        const bool same = hi + lane < n && keys[hi + lane] == static_cast<unsigned long long>(v);
        const int c = __popc(__ballot_sync(0xffffffffu, same));
        hi += c;
        if (c < 32 || hi - lo > long_run) break;
      }
      if (hi - lo > long_run) continue;  // the chunk warps write this row
      sum_rows(d_y, pos, lo, hi, inner, vec, lane, RowStore<T>{d_x + v * inner});
      continue;
    }
    const int64_t s = (w - mid) * kLongChunk;
    const int64_t e = s + kLongChunk < n ? s + kLongChunk : n;
    for (int seg = 0; seg < 2; ++seg) {
      const unsigned long long key = keys[seg == 0 ? s : e - 1];
      if (seg == 1 && key == keys[s]) break;  // one segment covers the chunk
      const int64_t lo = warp_lower_bound(keys, n, key, lane);
      const int64_t hi = warp_lower_bound(keys, n, key + 1, lane);
      if (hi - lo <= long_run) continue;
      const int64_t a = seg == 0 ? s : lo, b = seg == 0 ? (hi < e ? hi : e) : e;
      float* acc_row = long_acc + (lo / long_run) * inner;
      sum_rows(d_y, pos, a, b, inner, vec, lane, AtomicStore<T>{acc_row});
      __threadfence();  // this lane's atomics before the count
      __syncwarp();
      unsigned prev = 0;
      if (lane == 0) prev = atomicAdd(long_count + lo / long_run, static_cast<unsigned>(b - a));
      prev = __shfl_sync(0xffffffffu, prev, 0);
      if (static_cast<int64_t>(prev) + (b - a) != hi - lo) continue;  // not the last segment
      __threadfence();
      T* dst = d_x + static_cast<int64_t>(key) * inner;
      for (int64_t j = lane; j < inner; j += 32) dst[j] = from_f32<T>(__ldcg(acc_row + j));
    }
  }
}

__global__ void index_elem_keys_kernel(Geom g, const int64_t* __restrict__ idx,
                                       unsigned long long* __restrict__ keys) {
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < g.rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const RowBase rb = decode_row(g, row);
    for (int64_t col = threadIdx.x; col < g.cols; col += blockDim.x) {
      keys[row * g.cols + col] = static_cast<unsigned long long>(x_offset(g, rb, row, col, idx));
    }
  }
}

template <class T>
__global__ void index_elem_segment_kernel(const unsigned long long* __restrict__ keys,
                                          const int32_t* __restrict__ pos, int64_t n,
                                          const T* __restrict__ d_y, T* __restrict__ d_x) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += stride) {
    const unsigned long long key = keys[k];
    if (k > 0 && keys[k - 1] == key) continue;
    float acc = 0.f;
    for (int64_t m = k; m < n && keys[m] == key; ++m) acc += to_f32(d_y[pos[m]]);
    d_x[key] = from_f32<T>(acc);
  }
}

// ---------------------------------------------------------------- scratch layout

constexpr size_t kAlign = 256;
size_t align_up(size_t b) { return (b + kAlign - 1) / kAlign * kAlign; }

// Dense backward, atomic mode: runs of more ids than this are summed by several warps.
// Up to it one warp sums the run in position order, so both modes give the same bits.
constexpr int64_t kDenseLongRun = 32;

int sort_bits(int64_t bound) {  // bits that hold every key in [0, bound)
  int bits = 1;
  while (bits < 64 && (int64_t{1} << bits) < bound) ++bits;
  return bits;
}

struct Plan {
  // kDense: rows with outer == 1 (embedding, index_select along dim 0), in either mode.
  enum Mode { kAtomic, kRows, kDense, kElems } mode;
  int64_t x_numel = 0;
  int64_t n_sort = 0;                            // items sorted (deterministic modes)
  int64_t key_bound = 1;                         // keys lie in [0, key_bound)
  int64_t outer = 1, n = 1, mid = 1, inner = 1;  // rows mode
  size_t cub_bytes = 0;
  // Offsets into scratch.
  size_t acc_off = 0, keys_in_off = 0, keys_out_off = 0, pos_in_off = 0, pos_out_off = 0,
         cub_off = 0, total = 0;
  // kDense, atomic mode: runs longer than long_run are split (index_rows_dense_kernel);
  // long_count [slots] unsigned then long_acc [slots, inner] float32, zeroed per call.
  int64_t long_run = INT64_MAX, long_slots = 0;
  size_t long_off = 0, long_acc_off = 0, long_bytes = 0;
};

Plan make_plan(const IndexGatherParams& p, size_t elem_size) {
  Plan pl{};
  pl.x_numel = numel_of(p.x_shape, p.ndim);
  // Rows along dim 0 always take the sorted path (index_rows_dense_kernel): it writes every
  // row of d_x once, where atomics need d_x zeroed first (and, for bfloat16, a float32
  // copy zeroed, then rounded in a pass of its own); it is also deterministic, so both
  // modes give the same bits.
  const bool dense = !p.per_element && p.dim == 0;
  if (!p.deterministic && !dense) {
    pl.mode = Plan::kAtomic;
    pl.total = elem_size == sizeof(float) ? 0 : align_up(sizeof(float) * pl.x_numel);
    return pl;
  }
  if (p.per_element) {
    pl.mode = Plan::kElems;
    pl.n_sort = numel_of(p.out_shape, p.ndim);
    pl.key_bound = pl.x_numel;
  } else {
    pl.mode = dense ? Plan::kDense : Plan::kRows;
    for (int d = 0; d < p.dim; ++d) pl.outer *= p.x_shape[d];
    for (int d = p.dim + 1; d < p.ndim; ++d) pl.inner *= p.x_shape[d];
    pl.n = p.out_shape[p.dim];
    pl.mid = p.x_shape[p.dim];
    pl.n_sort = pl.n;
    pl.key_bound = pl.mid;
  }
  const int num = static_cast<int>(pl.n_sort > INT_MAX ? INT_MAX : pl.n_sort);
  cub::DeviceRadixSort::SortPairs(
      nullptr, pl.cub_bytes, static_cast<const unsigned long long*>(nullptr),
      static_cast<unsigned long long*>(nullptr), static_cast<const int32_t*>(nullptr),
      static_cast<int32_t*>(nullptr), num, 0, sort_bits(pl.key_bound));
  size_t off = 0;
  const size_t nk = sizeof(unsigned long long) * pl.n_sort, np = sizeof(int32_t) * pl.n_sort;
  if (pl.mode == Plan::kElems) {
    pl.keys_in_off = off;
    off += align_up(nk);
  }
  pl.keys_out_off = off;
  off += align_up(nk);
  pl.pos_in_off = off;
  off += align_up(np);
  pl.pos_out_off = off;
  off += align_up(np);
  pl.cub_off = off;
  off += align_up(pl.cub_bytes);
  if (pl.mode == Plan::kDense && !p.deterministic && pl.n_sort > kDenseLongRun) {
    pl.long_run = kDenseLongRun;
    pl.long_slots = (pl.n_sort + kDenseLongRun - 1) / kDenseLongRun;
    pl.long_off = off;
    pl.long_acc_off = align_up(sizeof(unsigned) * pl.long_slots);
    pl.long_bytes = pl.long_acc_off + sizeof(float) * pl.long_slots * pl.inner;
    pl.long_acc_off += off;
    off += align_up(pl.long_bytes);
  }
  pl.total = off;
  return pl;
}

// Dense rows backward (Plan::kDense): launches iota, the radix sort of the n ids (one
// memset and a few kernels inside cub for 15-bit keys), in atomic mode a memset of the
// long-run scratch (4 + 4 * inner bytes per 32 ids), and index_rows_dense_kernel.
// Bytes beyond d_y and d_x: the ids (8n read), positions and sorted pairs (about 40n).
// Before, the atomic path wrote d_x twice (zeroing, then the atomics' read-modify-write)
// and, for bfloat16, zeroed, updated, read a float32 copy and wrote d_x a third time.
template <class T>
const char* launch_dense(const IndexGatherParams& p, const Plan& pl, cudaStream_t stream) {
  char* scratch = static_cast<char*>(p.scratch);
  T* d_x = static_cast<T*>(p.dst);
  const T* d_y = static_cast<const T*>(p.src);
  if (pl.n_sort > INT_MAX) return "index_scatter_bwd_cuda: more than 2^31-1 indices to sort";
  auto* keys_out = reinterpret_cast<unsigned long long*>(scratch + pl.keys_out_off);
  auto* pos_in = reinterpret_cast<int32_t*>(scratch + pl.pos_in_off);
  auto* pos_out = reinterpret_cast<int32_t*>(scratch + pl.pos_out_off);
  if (pl.n_sort > 0) {
    int64_t blocks = (pl.n_sort + 255) / 256;
    if (blocks > 65535 * 8) blocks = 65535 * 8;
    iota_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(pos_in, pl.n_sort);
    size_t cub_bytes = pl.cub_bytes;
    const cudaError_t err = cub::DeviceRadixSort::SortPairs(
        scratch + pl.cub_off, cub_bytes, reinterpret_cast<const unsigned long long*>(p.idx),
        keys_out, pos_in, pos_out, static_cast<int>(pl.n_sort), 0, sort_bits(pl.key_bound), stream);
    if (err != cudaSuccess) return cudaGetErrorString(err);
  }
  float* long_acc = nullptr;
  unsigned* long_count = nullptr;
  int64_t chunks = 0;
  if (pl.long_slots > 0) {
    long_count = reinterpret_cast<unsigned*>(scratch + pl.long_off);
    long_acc = reinterpret_cast<float*>(scratch + pl.long_acc_off);
    chunks = (pl.n_sort + kLongChunk - 1) / kLongChunk;
    const cudaError_t err = cudaMemsetAsync(long_count, 0, pl.long_bytes, stream);
    if (err != cudaSuccess) return cudaGetErrorString(err);
  }
  constexpr int kN = 16 / static_cast<int>(sizeof(T));
  const bool vec = pl.inner % kN == 0 && reinterpret_cast<uintptr_t>(d_y) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(d_x) % 16 == 0;
  int64_t blocks = (pl.mid + chunks + kRowWarps - 1) / kRowWarps;
  if (blocks > (1 << 20)) blocks = 1 << 20;  // grid-stride beyond
  index_rows_dense_kernel<T><<<static_cast<unsigned>(blocks), kRowWarps * 32, 0, stream>>>(
      keys_out, pos_out, pl.n_sort, pl.mid, pl.inner, vec, d_y, d_x, pl.long_run, chunks, long_acc,
      long_count);
  return last_error();
}

template <class T>
const char* launch_bwd(const IndexGatherParams& p, cudaStream_t stream) {
  const Plan pl = make_plan(p, sizeof(T));
  const Geom g = make_geom(p, /*contiguous_x=*/true);
  char* scratch = static_cast<char*>(p.scratch);
  if (pl.total > 0 && scratch == nullptr) return "index_scatter_bwd_cuda: scratch not given";
  T* d_x = static_cast<T*>(p.dst);
  const T* d_y = static_cast<const T*>(p.src);
  if (pl.x_numel == 0) return nullptr;
  if (pl.mode == Plan::kDense) return launch_dense<T>(p, pl, stream);
  cudaError_t err = cudaMemsetAsync(d_x, 0, sizeof(T) * pl.x_numel, stream);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  if (g.rows * g.cols == 0) return nullptr;
  const dim3 block = block_for(g.cols);

  if (pl.mode == Plan::kAtomic) {
    float* acc = sizeof(T) == sizeof(float) ? reinterpret_cast<float*>(d_x)
                                            : reinterpret_cast<float*>(scratch + pl.acc_off);
    if (acc != reinterpret_cast<float*>(d_x)) {
      err = cudaMemsetAsync(acc, 0, sizeof(float) * pl.x_numel, stream);
      if (err != cudaSuccess) return cudaGetErrorString(err);
    }
    index_scatter_atomic_kernel<T>
        <<<grid_for(g.rows, block.y), block, 0, stream>>>(g, p.idx, d_y, acc);
    if constexpr (!std::is_same_v<T, float>) {
      int64_t blocks = (pl.x_numel + 255) / 256;
      if (blocks > 65535 * 8) blocks = 65535 * 8;
      f32_to_bf16_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(acc, d_x, pl.x_numel);
    }
    return last_error();
  }

  if (pl.n_sort > INT_MAX) return "index_scatter_bwd_cuda: more than 2^31-1 indices to sort";
  const int num = static_cast<int>(pl.n_sort);
  auto* keys_out = reinterpret_cast<unsigned long long*>(scratch + pl.keys_out_off);
  auto* pos_in = reinterpret_cast<int32_t*>(scratch + pl.pos_in_off);
  auto* pos_out = reinterpret_cast<int32_t*>(scratch + pl.pos_out_off);
  const unsigned long long* keys_in = reinterpret_cast<const unsigned long long*>(p.idx);
  if (pl.mode == Plan::kElems) {
    auto* k = reinterpret_cast<unsigned long long*>(scratch + pl.keys_in_off);
    index_elem_keys_kernel<<<grid_for(g.rows, block.y), block, 0, stream>>>(g, p.idx, k);
    keys_in = k;
  }
  {
    int64_t blocks = (pl.n_sort + 255) / 256;
    if (blocks > 65535 * 8) blocks = 65535 * 8;
    iota_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(pos_in, pl.n_sort);
  }
  size_t cub_bytes = pl.cub_bytes;
  err = cub::DeviceRadixSort::SortPairs(scratch + pl.cub_off, cub_bytes, keys_in, keys_out, pos_in,
                                        pos_out, num, 0, sort_bits(pl.key_bound), stream);
  if (err != cudaSuccess) return cudaGetErrorString(err);

  if (pl.mode == Plan::kRows) {
    const dim3 rb = block_for(pl.inner);
    int64_t gy = pl.outer > 65535 ? 65535 : pl.outer;
    index_rows_segment_kernel<T>
        <<<dim3(grid_for(pl.n, rb.y), static_cast<unsigned>(gy)), rb, 0, stream>>>(
            keys_out, pos_out, pl.n, pl.outer, pl.mid, pl.inner, d_y, d_x);
  } else {
    int64_t blocks = (pl.n_sort + 255) / 256;
    if (blocks > 65535 * 8) blocks = 65535 * 8;
    index_elem_segment_kernel<T>
        <<<static_cast<unsigned>(blocks), 256, 0, stream>>>(keys_out, pos_out, pl.n_sort, d_y, d_x);
  }
  return last_error();
}

bool valid_report(const IndexReport& r) {
  return r.launch > 0 && r.record != nullptr && r.claim != nullptr;
}

bool valid_geometry(const IndexGatherParams& p) {
  return p.ndim >= 1 && p.ndim <= kIndexMaxDims && p.dim >= 0 && p.dim < p.ndim;
}

}  // namespace

const char* index_prepare_cuda(const IndexPrepareParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (p.index.ndim < 0 || p.index.ndim > kIndexMaxDims) return "index_prepare_cuda: rank above 8";
  if (!valid_report(p.report) || p.scratch == nullptr) {
    return "index_prepare_cuda: no error record, claim word, scratch or launch id given";
  }
  if (p.index.n == 0) return nullptr;
  cudaError_t err = cudaMemsetAsync(p.scratch, 0, 2 * sizeof(int64_t), s);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  int64_t blocks = (p.index.n + 255) / 256;
  if (blocks > 65535 * 8) blocks = 65535 * 8;
  index_prepare_kernel<<<static_cast<unsigned>(blocks), 256, 0, s>>>(p);
  return last_error();
}

const char* embedding_fwd_cuda(const EmbeddingFwdParams& p, void* stream) {
  if (p.ids.ndim < 0 || p.ids.ndim > kIndexMaxDims) return "embedding_fwd_cuda: rank above 8";
  if (!valid_report(p.report)) {
    return "embedding_fwd_cuda: no error record, claim word or launch id given";
  }
  if (p.ids.n == 0) return nullptr;
  int64_t blocks = (p.ids.n + kRowWarps - 1) / kRowWarps;
  if (blocks > (1 << 20)) blocks = 1 << 20;  // grid-stride beyond
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case KernelDType::kFloat32:
      embedding_fwd_kernel<float><<<static_cast<unsigned>(blocks), kRowWarps * 32, 0, s>>>(p);
      return last_error();
    case KernelDType::kBFloat16:
      embedding_fwd_kernel<__nv_bfloat16>
          <<<static_cast<unsigned>(blocks), kRowWarps * 32, 0, s>>>(p);
      return last_error();
  }
  return "embedding_fwd_cuda: unknown dtype";
}

const char* index_gather_fwd_cuda(const IndexGatherParams& p, void* stream) {
  if (!valid_geometry(p)) return "index_gather_fwd_cuda: rank must be 1..8 and dim inside it";
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return launch_fwd<float>(p, s);
    case KernelDType::kBFloat16:
      return launch_fwd<__nv_bfloat16>(p, s);
  }
  return "index_gather_fwd_cuda: unknown dtype";
}

size_t index_scatter_bwd_scratch_bytes(const IndexGatherParams& p) {
  if (!valid_geometry(p)) return 0;
  return make_plan(p, p.dtype == KernelDType::kFloat32 ? sizeof(float) : sizeof(__nv_bfloat16))
      .total;
}

const char* index_scatter_bwd_cuda(const IndexGatherParams& p, void* stream) {
  if (!valid_geometry(p)) return "index_scatter_bwd_cuda: rank must be 1..8 and dim inside it";
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return launch_bwd<float>(p, s);
    case KernelDType::kBFloat16:
      return launch_bwd<__nv_bfloat16>(p, s);
  }
  return "index_scatter_bwd_cuda: unknown dtype";
}

}  // namespace resona::cuda
