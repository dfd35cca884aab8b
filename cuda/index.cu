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
// index_rows_link_kernel +     rows along dim 0, both modes: the positions of each id
// index_rows_list_kernel        linked into a list, then every row of d_x written once
//                               from its list put in position order (zeros if none)
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

// The same map for rows that move whole in 16-byte vectors (weight's rows and out's rows
// 16-byte aligned, D * sizeof(T) a multiple of 16, at most 32 * kFwdVecs vectors a row):
// a warp takes kFwdRows consecutive positions and issues the loads of all of them before
// any store, so that up to kFwdRows * kFwdVecs 16-byte loads per lane are in flight (a
// bfloat16 row of 600 is 75 vectors: 3 per lane for one row, 12 for four). Block b
// handles positions kRowWarps * kFwdRows * b onwards (a grid-stride loop beyond 2^20
// blocks); the report as in embedding_fwd_kernel.
constexpr int kFwdRows = 4;
constexpr int kFwdVecs = 4;

template <class T>
__global__ void __launch_bounds__(kRowWarps * 32) embedding_fwd_vec_kernel(EmbeddingFwdParams p) {
  __shared__ unsigned long long block_bad;  // smallest bad position of this block, or ~0
  if (threadIdx.x == 0) block_bad = ~0ull;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  const int64_t nv = p.D / kVec;
  const T* w = static_cast<const T*>(p.weight);
  T* out = static_cast<T*>(p.out);
  const int64_t step = static_cast<int64_t>(gridDim.x) * kRowWarps * kFwdRows;
  for (int64_t n0 = (static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32) * kFwdRows;
       n0 < p.ids.n; n0 += step) {
    // Lane r < kFwdRows reads the id of position n0 + r; -1: past the end, -2: bad.
    int64_t mine = -1;
    if (lane < kFwdRows && n0 + lane < p.ids.n) {
      const int64_t v = raw_index_at(p.ids, n0 + lane);
      const bool bad = v < 0 || v >= p.V;
      if (p.ids_out != nullptr) p.ids_out[n0 + lane] = bad ? 0 : v;
      if (bad) atomicMin(&block_bad, static_cast<unsigned long long>(n0 + lane));
      mine = bad ? -2 : v;
    }
    int64_t id[kFwdRows];
#pragma unroll
    for (int r = 0; r < kFwdRows; ++r) id[r] = __shfl_sync(0xffffffffu, mine, r);
    uint4 buf[kFwdRows][kFwdVecs];
#pragma unroll
    for (int r = 0; r < kFwdRows; ++r) {
      const uint4* src = reinterpret_cast<const uint4*>(w + (id[r] < 0 ? 0 : id[r]) * p.w_stride0);
#pragma unroll
      for (int u = 0; u < kFwdVecs; ++u) {
        const int64_t j = lane + u * 32;
        buf[r][u] = id[r] >= 0 && j < nv ? __ldg(src + j) : make_uint4(0u, 0u, 0u, 0u);
      }
    }
#pragma unroll
    for (int r = 0; r < kFwdRows; ++r) {
      if (id[r] == -1) continue;
      uint4* dst = reinterpret_cast<uint4*>(out + (n0 + r) * p.D);
#pragma unroll
      for (int u = 0; u < kFwdVecs; ++u) {
        const int64_t j = lane + u * 32;
        if (j < nv) dst[j] = buf[r][u];
      }
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

// acc[u] += the 16-byte vector j0 + 32 u of `row` for each u < kUnroll with j0 + 32 u < nv,
// all loads issued before the adds (sum_rows and sum_rows_scan).
template <class T, int kUnroll>
__device__ __forceinline__ void add_row_vecs(float (&acc)[kUnroll][Vec16<T>::kN], const T* row,
                                             int64_t j0, int64_t nv) {
  const uint4* r4 = reinterpret_cast<const uint4*>(row);
  uint4 r[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    if (j0 + u * 32 < nv) r[u] = r4[j0 + u * 32];
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    if (j0 + u * 32 < nv) Vec16<T>::add(acc[u], r[u]);
  }
}

// Sums the d_y rows pos[a], ..., pos[b - 1] ([n, inner]) in that order in float32, a warp
// over the columns, and hands each finished column group to `store`: store.vec(j, acc)
// for 16-byte vector j (acc: Vec16<T>::kN floats; vec paths only), store.scalar(j, acc)
// for column j. vec: inner * sizeof(T) is a multiple of 16 and d_y is 16-byte aligned:
// kUnroll vectors per lane in flight.
template <class T, class Store>
__device__ __forceinline__ void sum_rows(const T* __restrict__ d_y, const int32_t* __restrict__ pos,
                                         int64_t a, int64_t b, int64_t inner, bool vec, int lane,
                                         const Store& store) {
  // Vectors per lane in flight: a row of up to 640 float32 or 768 bfloat16 in one round.
  constexpr int kUnroll = sizeof(T) == sizeof(float) ? 5 : 3;
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
        add_row_vecs<T>(acc, d_y + static_cast<int64_t>(pos[m]) * inner, j0, nv);
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
// [mid, inner]. index_rows_link_kernel threads the positions of each row v into a list:
// count[v] positions, head[v] the last one linked + 1 (0: none), next[i] the one linked
// before position i + 1 (0: end); the link order varies run to run, so the lists are put
// in position order before any sum. In atomic mode the thread that links the
// (long_run + 1)-th position of a row gives the row a slot (slot_of[v]) and zeroes its
// long_acc row and long_done word.
__global__ void index_rows_link_kernel(const int64_t* __restrict__ idx, int64_t n, int32_t* count,
                                       int32_t* head, int32_t* __restrict__ next, int32_t long_run,
                                       int32_t* __restrict__ slot_of, unsigned* num_slots,
                                       int64_t inner, float* __restrict__ long_acc,
                                       unsigned* __restrict__ long_done) {
  // The lanes of a warp holding the same id link among themselves (each to the next
  // lower lane of its group, the lowest to the old head), and the group's highest lane
  // alone updates count and head: one pair of atomics per distinct id per warp, so that
  // a frequent id (padding) does not serialise n atomics on one word.
  const int lane = threadIdx.x & 31;
  const unsigned lower_lanes = (1u << lane) - 1u;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x + (threadIdx.x & ~31u);
       base < n; base += stride) {
    const int64_t i = base + lane;
    const int64_t v = i < n ? idx[i] : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, v);
    const int leader = 31 - __clz(peers);
    int32_t old = 0;
    if (v >= 0 && lane == leader) {
      const int32_t k = __popc(peers);
      const int32_t c = atomicAdd(count + v, k);
      old = atomicExch(head + v, static_cast<int32_t>(i) + 1);
      if (c <= long_run && c + k > long_run) {  // the row becomes long: give it a zeroed slot
        const unsigned slot = atomicAdd(num_slots, 1u);
        slot_of[v] = static_cast<int32_t>(slot);
        long_done[slot] = 0u;
        for (int64_t j = 0; j < inner; ++j) long_acc[static_cast<int64_t>(slot) * inner + j] = 0.f;
      }
    }
    old = __shfl_sync(0xffffffffu, old, leader);
    if (v >= 0) {
      const unsigned below = peers & lower_lanes;
      next[i] = below == 0u ? old : static_cast<int32_t>(base + (31 - __clz(below))) + 1;
    }
  }
}

// sum_rows for one row v whose positions are found by scanning idx in order (32 ids a
// round, one ballot): the sum runs in increasing position order. For rows with more
// positions than a warp sorts at once (deterministic mode). The column loops run with
// the whole warp so that the ballots see every lane.
template <class T, class Store>
__device__ __forceinline__ void sum_rows_scan(const T* __restrict__ d_y,
                                              const int64_t* __restrict__ idx, int64_t n, int64_t v,
                                              int64_t inner, bool vec, int lane,
                                              const Store& store) {
  constexpr int kUnroll = 4;
  constexpr int kN = Vec16<T>::kN;
  if (vec) {
    const int64_t nv = inner / kN;
    for (int64_t jb = 0; jb < nv; jb += kUnroll * 32) {
      const int64_t j0 = jb + lane;
      float acc[kUnroll][kN];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int e = 0; e < kN; ++e) acc[u][e] = 0.f;
      }
      for (int64_t base = 0; base < n; base += 32) {
        unsigned hits = __ballot_sync(0xffffffffu, base + lane < n && idx[base + lane] == v);
        while (hits != 0u) {
          const int64_t p = base + __ffs(hits) - 1;
          hits &= hits - 1u;
          add_row_vecs<T>(acc, d_y + p * inner, j0, nv);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (j0 + u * 32 < nv) store.vec(j0 + u * 32, acc[u]);
      }
    }
  } else {
    for (int64_t jb = 0; jb < inner; jb += 32) {
      const int64_t j = jb + lane;
      float acc = 0.f;
      for (int64_t base = 0; base < n; base += 32) {
        unsigned hits = __ballot_sync(0xffffffffu, base + lane < n && idx[base + lane] == v);
        while (hits != 0u) {
          const int64_t p = base + __ffs(hits) - 1;
          hits &= hits - 1u;
          if (j < inner) acc += to_f32(d_y[p * inner + j]);
        }
      }
      if (j < inner) store.scalar(j, acc);
    }
  }
}

// Resident blocks of index_rows_list_kernel per SM: registers are capped so that this
// many fit (kListBlocksPerSm * kRowWarps warps per SM), and the grid is this many blocks
// per SM, so that all blocks run in one wave.
constexpr int kListBlocksPerSm = 3;

// Warps 0 .. mid-1: a warp per row v of d_x writes the row once. With c = count[v]:
//   c == 0: zeros;
//   c <= 32: the warp walks v's list (lane m keeps the m-th position), ranks the c
//     positions (all distinct) by 32 shuffles, puts them in increasing order in shared
//     memory and sums their d_y rows in float32 in that order (the CPU's order);
//   c > 32, deterministic mode (long_run == INT_MAX): sum_rows_scan, same order;
//   c > long_run, atomic mode: left to the chunk warps.
// So both modes give the same bits for rows of at most 32 positions, and d_x needs no
// zeroing pass. Warps mid .. mid + chunks - 1 (atomic mode) take 32 positions each:
// for every row of more than long_run positions among them, the warp sums that row's
// d_y rows found in its chunk (in position order) and adds them with float32 atomics to
// long_acc row slot_of[v], then adds their number to long_done[slot]; the warp that
// brings it to count[v] writes the d_x row from long_acc (both zeroed by
// index_rows_link_kernel).
// Bytes: d_y read once (n * inner * sizeof(T)), d_x written once (mid * inner *
// sizeof(T)), count and head read (8 * mid), next read along the lists (4 per
// position); long rows add float32 atomics of their d_y elements and one read of a
// long_acc row.
template <class T>
__global__ void __launch_bounds__(kRowWarps * 32, kListBlocksPerSm)
    index_rows_list_kernel(const int64_t* __restrict__ idx, const int32_t* __restrict__ count,
                           const int32_t* __restrict__ head, const int32_t* __restrict__ next,
                           int64_t n, int64_t mid, int64_t inner, bool vec,
                           const T* __restrict__ d_y, T* __restrict__ d_x, int32_t long_run,
                           int64_t chunks, const int32_t* __restrict__ slot_of, float* long_acc,
                           unsigned* long_done) {
  __shared__ int32_t sorted_pos[kRowWarps][32];
  const int lane = threadIdx.x & 31;
  int32_t* my_pos = sorted_pos[threadIdx.x / 32];
  const int64_t step = static_cast<int64_t>(gridDim.x) * kRowWarps;
  int64_t w = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  // count and head of row w, loaded together, and those of the warp's next row loaded
  // before this row's sum (grid-stride loop): the row's only dependent global loads are
  // then its list walk (rows of 2 or more) and its d_y rows.
  int32_t c_next = 0, h_next = 0;
  if (w < mid) {
    c_next = count[w];
    h_next = head[w];
  }
  for (; w < mid + chunks; w += step) {
    if (w < mid) {
      const int64_t v = w;
      const int32_t c = c_next, h = h_next;
      if (w + step < mid) {
        c_next = count[w + step];
        h_next = head[w + step];
      }
      if (c <= 32) {
        int32_t mine = INT_MAX;
        int32_t link = h;
        for (int32_t m = 0; m < c && link != 0; ++m) {
          if (lane == m) mine = link - 1;
          if (m + 1 < c) link = next[link - 1];  // no load past the list's last link
        }
        int rank = 0;
        for (int32_t l = 0; l < c; ++l) rank += __shfl_sync(0xffffffffu, mine, l) < mine ? 1 : 0;
        if (lane < c) my_pos[rank] = mine;
        __syncwarp();
        sum_rows(d_y, my_pos, 0, c, inner, vec, lane, RowStore<T>{d_x + v * inner});
        __syncwarp();  // my_pos is read before the next row overwrites it
      } else if (long_run == INT_MAX) {
        sum_rows_scan(d_y, idx, n, v, inner, vec, lane, RowStore<T>{d_x + v * inner});
      }
      continue;
    }
    const int64_t i = (w - mid) * 32 + lane;
    int64_t v = -1;
    bool is_long = false;
    if (i < n) {
      v = idx[i];
      is_long = count[v] > long_run;
    }
    unsigned todo = __ballot_sync(0xffffffffu, is_long);
    while (todo != 0u) {
      const int64_t lv = __shfl_sync(0xffffffffu, v, __ffs(todo) - 1);
      const unsigned group = __ballot_sync(0xffffffffu, is_long && v == lv);
      todo &= ~group;
      if ((group >> lane) & 1u)
        my_pos[__popc(group & ((1u << lane) - 1u))] = static_cast<int32_t>(i);
      __syncwarp();
      const int k = __popc(group);
      const int64_t slot = slot_of[lv];
      float* acc_row = long_acc + slot * inner;
      sum_rows(d_y, my_pos, 0, k, inner, vec, lane, AtomicStore<T>{acc_row});
      __threadfence();  // this lane's atomics before the count
      __syncwarp();
      unsigned prev = 0;
      if (lane == 0) prev = atomicAdd(long_done + slot, static_cast<unsigned>(k));
      prev = __shfl_sync(0xffffffffu, prev, 0);
      if (static_cast<int64_t>(prev) + k == count[lv]) {
        __threadfence();
        T* dst = d_x + lv * inner;
        for (int64_t j = lane; j < inner; j += 32) dst[j] = from_f32<T>(__ldcg(acc_row + j));
      }
      __syncwarp();
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

// Dense backward, atomic mode: rows of more ids than this are summed by several warps.
// Up to it one warp sums the row in position order, so both modes give the same bits.
// index_rows_list_kernel sorts up to 32 positions per warp: this must stay 32.
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
  // kDense (index_rows_link_kernel, index_rows_list_kernel): the first zero_bytes are
  // zeroed per call; atomic mode splits rows of more than long_run positions.
  int32_t long_run = INT_MAX;
  int64_t long_slots = 0;
  size_t count_off = 0, head_off = 0, num_slots_off = 0, long_off = 0, long_acc_off = 0,
         zero_bytes = 0, next_off = 0, slot_of_off = 0;
};

Plan make_plan(const IndexGatherParams& p, size_t elem_size) {
  Plan pl{};
  pl.x_numel = numel_of(p.x_shape, p.ndim);
  // Rows along dim 0 always take the list path (index_rows_list_kernel): it writes every
  // row of d_x once, where atomics need d_x zeroed first (and, for bfloat16, a float32
  // copy zeroed, then rounded in a pass of its own); rows of at most 32 ids are summed
  // in position order in both modes, so both give the same bits there.
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
  if (pl.mode == Plan::kDense) {
    // count [mid], head [mid] int32 and, in atomic mode, num_slots: zeroed by one memset;
    // then next [n] int32 and, in atomic mode, slot_of [mid] int32, long_done [slots]
    // unsigned and long_acc [slots, inner] float32 (index_rows_link_kernel writes or zeroes
    // what index_rows_list_kernel reads of them).
    const int64_t slots = p.deterministic ? 0 : pl.n / (kDenseLongRun + 1);
    pl.long_run = p.deterministic ? INT_MAX : static_cast<int32_t>(kDenseLongRun);
    pl.long_slots = slots;
    size_t off = 0;
    pl.count_off = off;
    off += align_up(sizeof(int32_t) * pl.mid);
    pl.head_off = off;
    off += align_up(sizeof(int32_t) * pl.mid);
    if (!p.deterministic) {
      pl.num_slots_off = off;
      off += align_up(sizeof(unsigned));
    }
    pl.zero_bytes = off;
    pl.next_off = off;
    off += align_up(sizeof(int32_t) * pl.n);
    if (!p.deterministic) {
      pl.slot_of_off = off;
      off += align_up(sizeof(int32_t) * pl.mid);
      pl.long_off = off;
      off += align_up(sizeof(unsigned) * slots);
      pl.long_acc_off = off;
      off += align_up(sizeof(float) * slots * pl.inner);
    }
    pl.total = off;
    return pl;
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
  pl.total = off;
  return pl;
}

// Dense rows backward (Plan::kDense): 3 launches, a memset of count and head (8 bytes
// per row of d_x), index_rows_link_kernel (reads the 8-byte ids, writes next: 4 bytes per id; two
// atomics per distinct id per warp) and index_rows_list_kernel (reads d_y, count, head and the
// lists, writes every row of d_x once). Before: iota, a cub radix sort of (id, position) pairs (a
// memset and several kernels), then a search of the sorted ids per row: about 6 launches and 40
// extra bytes per id.
template <class T>
const char* launch_dense(const IndexGatherParams& p, const Plan& pl, cudaStream_t stream) {
  char* scratch = static_cast<char*>(p.scratch);
  T* d_x = static_cast<T*>(p.dst);
  const T* d_y = static_cast<const T*>(p.src);
  if (pl.n > INT_MAX - 1) return "index_scatter_bwd_cuda: more than 2^31-2 indices";
  auto* count = reinterpret_cast<int32_t*>(scratch + pl.count_off);
  auto* head = reinterpret_cast<int32_t*>(scratch + pl.head_off);
  auto* next = reinterpret_cast<int32_t*>(scratch + pl.next_off);
  const bool atomic = pl.long_run != INT_MAX;
  auto* long_done = atomic ? reinterpret_cast<unsigned*>(scratch + pl.long_off) : nullptr;
  auto* num_slots = atomic ? reinterpret_cast<unsigned*>(scratch + pl.num_slots_off) : nullptr;
  auto* long_acc = atomic ? reinterpret_cast<float*>(scratch + pl.long_acc_off) : nullptr;
  auto* slot_of = atomic ? reinterpret_cast<int32_t*>(scratch + pl.slot_of_off) : nullptr;
  cudaError_t err = cudaMemsetAsync(scratch, 0, pl.zero_bytes, stream);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  if (pl.n > 0) {
    int64_t blocks = (pl.n + 255) / 256;
    if (blocks > 65535 * 8) blocks = 65535 * 8;
    index_rows_link_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
        p.idx, pl.n, count, head, next, pl.long_run, slot_of, num_slots, pl.inner, long_acc,
        long_done);
  }
  const int64_t chunks = atomic && pl.n > kDenseLongRun ? (pl.n + 31) / 32 : 0;
  constexpr int kN = 16 / static_cast<int>(sizeof(T));
  const bool vec = pl.inner % kN == 0 && reinterpret_cast<uintptr_t>(d_y) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(d_x) % 16 == 0;
  int64_t blocks = (pl.mid + chunks + kRowWarps - 1) / kRowWarps;
  if (blocks > (1 << 20)) blocks = 1 << 20;  // grid-stride beyond
  // At most kListBlocksPerSm blocks per SM (one wave): each warp then walks several rows
  // (grid-stride) and has the next row's count and head loaded while it sums this one;
  // with a warp per row there is no such overlap and every row's d_y loads wait on its
  // count and head.
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) == cudaSuccess &&
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess && sms > 0 &&
      blocks > kListBlocksPerSm * sms) {
    blocks = kListBlocksPerSm * sms;
  }
  index_rows_list_kernel<T><<<static_cast<unsigned>(blocks), kRowWarps * 32, 0, stream>>>(
      p.idx, count, head, next, pl.n, pl.mid, pl.inner, vec, d_y, d_x, pl.long_run, chunks, slot_of,
      long_acc, long_done);
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
  if (p.dtype != KernelDType::kFloat32 && p.dtype != KernelDType::kBFloat16) {
    return "embedding_fwd_cuda: unknown dtype";
  }
  const int64_t elem = p.dtype == KernelDType::kFloat32 ? 4 : 2;
  const bool vec = (p.w_stride1 == 1 || p.D == 1) && (p.D * elem) % 16 == 0 &&
                   (p.w_stride0 * elem) % 16 == 0 && p.D * elem <= 16 * 32 * kFwdVecs &&
                   reinterpret_cast<uintptr_t>(p.weight) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(p.out) % 16 == 0;
  const int64_t per_block = vec ? kRowWarps * kFwdRows : kRowWarps;
  int64_t blocks = (p.ids.n + per_block - 1) / per_block;
  if (blocks > (1 << 20)) blocks = 1 << 20;  // grid-stride beyond
  const auto grid = static_cast<unsigned>(blocks);
  auto s = static_cast<cudaStream_t>(stream);
  if (p.dtype == KernelDType::kFloat32) {
    if (vec) {
      embedding_fwd_vec_kernel<float><<<grid, kRowWarps * 32, 0, s>>>(p);
    } else {
      embedding_fwd_kernel<float><<<grid, kRowWarps * 32, 0, s>>>(p);
    }
  } else if (vec) {
    embedding_fwd_vec_kernel<__nv_bfloat16><<<grid, kRowWarps * 32, 0, s>>>(p);
  } else {
    embedding_fwd_kernel<__nv_bfloat16><<<grid, kRowWarps * 32, 0, s>>>(p);
  }
  return last_error();
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
