// norm_fwd_vec_kernel, norm_bwd_vec_kernel (the 16-byte vector path), norm_fwd_kernel,
// norm_bwd_dx_kernel, norm_bwd_columns_kernel (the scalar path), norm_bwd_final_kernel:
// see cuda/norm.h for the formulas.
//
// Vector path. A row of D = nvec * kN elements (kN = 4 float32, 8 bfloat16) is owned by
// kThreads threads (one warp, four rows per 128-thread block; or a whole block); thread
// `lane` holds vectors lane, lane + kThreads, ... (kVecs of them, the last ones possibly
// empty) in registers, so x is read from memory once per pass. The row sums are combined
// by shuffles and shared memory in a fixed order. The forward takes layer_norm's mean
// first and then the squared deviations from the registers (no cancellation).
// The backward runs one block per column chunk (norm_chunk_rows consecutive rows): each
// row's d_x is written, and since a thread owns the same columns in every row, it keeps
// its columns' sums of d_y xhat and d_y in registers across the chunk's rows. At the end
// the block's warps (warp-per-row mode) are added in warp order through shared memory
// and the chunk's partial row is written; norm_bwd_final_kernel adds the chunks in order.
//
// Scalar path (D not a multiple of kN, a misaligned view, or a row too long for the
// register plan): each thread walks the row with stride kThreads; the column kernel,
// block (32 columns x 8 row lanes), re-reads x and d_y to sum one chunk's rows.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "cuda/norm.h"
#include "cuda/row_reduce.cuh"
#include "cuda/vec_io.cuh"

namespace resona::cuda {
namespace {

// ---- vector path ----

template <class T, bool kLayer, int kThreads, int kVecs>
__global__ void __launch_bounds__(block_threads<kThreads>())
    norm_fwd_vec_kernel(int64_t rows, int64_t d, float eps, const T* __restrict__ x,
                        const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y,
                        float* __restrict__ mean, float* __restrict__ rstd) {
  constexpr int kN = Vec16<T>::kN;
  constexpr int kRowsPerBlock = block_threads<kThreads>() / kThreads;
  __shared__ float sh[64];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kThreads;
  if (row >= rows) return;  // block mode: the whole block leaves together
  const int lane = threadIdx.x % kThreads;
  const int64_t nvec = d / kN;
  const T* xr = x + row * d;
  float v[kVecs][kN];
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int64_t k = lane + static_cast<int64_t>(i) * kThreads;
    if (k < nvec) {
      load_vec(xr + k * kN, v[i]);
    } else {
#pragma unroll
      for (int e = 0; e < kN; ++e) v[i][e] = 0.f;
    }
  }
  const float inv_d = 1.f / static_cast<float>(d);
  float mu = 0.f;
  if constexpr (kLayer) {
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
#pragma unroll
      for (int e = 0; e < kN; ++e) s += v[i][e];
    }
    mu = row_sum<kThreads>(s, sh) * inv_d;
  }
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    if (lane + static_cast<int64_t>(i) * kThreads < nvec) {
#pragma unroll
      for (int e = 0; e < kN; ++e) {
        const float c = v[i][e] - mu;
        ss += c * c;
      }
    }
  }
  const float r = 1.f / sqrtf(row_sum<kThreads>(ss, sh) * inv_d + eps);
  if (lane == 0) {
    if constexpr (kLayer) mean[row] = mu;
    rstd[row] = r;
  }
  T* yr = y + row * d;
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int64_t k = lane + static_cast<int64_t>(i) * kThreads;
    if (k < nvec) {
      float wv[kN], bv[kN], out[kN];
      if (w) {
        load_vec(w + k * kN, wv);
      } else {
#pragma unroll
        for (int e = 0; e < kN; ++e) wv[e] = 1.f;
      }
      if (b) {
        load_vec(b + k * kN, bv);
      } else {
#pragma unroll
        for (int e = 0; e < kN; ++e) bv[e] = 0.f;
      }
#pragma unroll
      for (int e = 0; e < kN; ++e) out[e] = (v[i][e] - mu) * r * wv[e] + bv[e];
      store_vec(yr + k * kN, out);
    }
  }
}

// One block per chunk of chunk_rows rows. partial: [2][chunks][d] or null.
// Dynamic shared memory in warp-per-row mode: kRowsPerBlock * d floats.
template <class T, bool kLayer, int kThreads, int kVecs>
__global__ void __launch_bounds__(block_threads<kThreads>())
    norm_bwd_vec_kernel(int64_t rows, int64_t d, int64_t chunk_rows, int64_t chunks,
                        const T* __restrict__ x, const T* __restrict__ w,
                        const float* __restrict__ mean, const float* __restrict__ rstd,
                        const T* __restrict__ dy, T* __restrict__ dx, bool want_w, bool want_b,
                        float* __restrict__ partial) {
  constexpr int kN = Vec16<T>::kN;
  constexpr int kRowsPerBlock = block_threads<kThreads>() / kThreads;
  extern __shared__ float sh_cols[];
  __shared__ float sh[64];
  const int sub = threadIdx.x / kThreads;
  const int lane = threadIdx.x % kThreads;
  const int64_t nvec = d / kN;
  const int64_t chunk = blockIdx.x;
  const int64_t r0 = chunk * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  const float inv_d = 1.f / static_cast<float>(d);
  // Column sums of d_y xhat (acc_w) and d_y (acc_b; layer_norm only, rms has no bias).
  float acc_w[kVecs][kN], acc_b[kLayer ? kVecs : 1][kN];
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
#pragma unroll
    for (int e = 0; e < kN; ++e) {
      acc_w[i][e] = 0.f;
      if constexpr (kLayer) acc_b[i][e] = 0.f;
    }
  }
  for (int64_t row = r0 + sub; row < r1; row += kRowsPerBlock) {
    const T* xr = x + row * d;
    const T* gr = dy + row * d;
    float xv[kVecs][kN], gv[kVecs][kN];
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int64_t k = lane + static_cast<int64_t>(i) * kThreads;
      if (k < nvec) {
        load_vec(xr + k * kN, xv[i]);
        load_vec(gr + k * kN, gv[i]);
      } else {
#pragma unroll
        for (int e = 0; e < kN; ++e) xv[i][e] = gv[i][e] = 0.f;
      }
    }
    const float mu = kLayer ? mean[row] : 0.f;
    const float r = rstd[row];
    float sum_g = 0.f, sum_gx = 0.f;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int64_t k = lane + static_cast<int64_t>(i) * kThreads;
      if (k < nvec) {
        float wv[kN];
        if (w) {
          load_vec(w + k * kN, wv);
        } else {
#pragma unroll
          for (int e = 0; e < kN; ++e) wv[e] = 1.f;
        }
#pragma unroll
        for (int e = 0; e < kN; ++e) {
          const float xhat = (xv[i][e] - mu) * r;
          const float g = gv[i][e] * wv[e];
          acc_w[i][e] += gv[i][e] * xhat;
          if constexpr (kLayer) acc_b[i][e] += gv[i][e];
          sum_g += g;
          sum_gx += g * xhat;
          xv[i][e] = xhat;
          gv[i][e] = g;
        }
      }
    }
    const float2 s = row_sum2<kThreads>(sum_g, sum_gx, sh);
    const float mean_g = kLayer ? s.x * inv_d : 0.f;
    const float mean_gx = s.y * inv_d;
    if (dx) {
      T* dxr = dx + row * d;
#pragma unroll
      for (int i = 0; i < kVecs; ++i) {
        const int64_t k = lane + static_cast<int64_t>(i) * kThreads;
        if (k < nvec) {
          float out[kN];
#pragma unroll
          for (int e = 0; e < kN; ++e) out[e] = r * (gv[i][e] - mean_g - xv[i][e] * mean_gx);
          store_vec(dxr + k * kN, out);
        }
      }
    }
  }
  if (partial == nullptr) return;  // the same for the whole block
  for (int which = 0; which < 2; ++which) {
    if (which == 0 ? !want_w : (!kLayer || !want_b)) continue;
    float* out = partial + (which * chunks + chunk) * d;
    if constexpr (kRowsPerBlock == 1) {
#pragma unroll
      for (int i = 0; i < kVecs; ++i) {
        const int64_t k = lane + static_cast<int64_t>(i) * kThreads;
        if (k < nvec) {
#pragma unroll
          for (int e = 0; e < kN; e += 4) {
            const float* a = which == 0 ? &acc_w[i][e] : &acc_b[kLayer ? i : 0][e];
            *reinterpret_cast<float4*>(out + k * kN + e) = make_float4(a[0], a[1], a[2], a[3]);
          }
        }
      }
    } else {
      // Add the block's warps in warp order.
#pragma unroll
      for (int i = 0; i < kVecs; ++i) {
        const int64_t k = lane + static_cast<int64_t>(i) * kThreads;
        if (k < nvec) {
#pragma unroll
          for (int e = 0; e < kN; ++e) {
            sh_cols[sub * d + k * kN + e] = which == 0 ? acc_w[i][e] : acc_b[kLayer ? i : 0][e];
          }
        }
      }
      __syncthreads();
      for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
        float t = 0.f;
#pragma unroll
        for (int q = 0; q < kRowsPerBlock; ++q) t += sh_cols[q * d + j];
        out[j] = t;
      }
      __syncthreads();
    }
  }
}

// ---- scalar path ----

template <class T, bool kLayer, int kThreads>
__global__ void norm_fwd_kernel(int64_t rows, int64_t d, float eps, const T* x, const T* w,
                                const T* b, T* y, float* mean, float* rstd) {
  __shared__ float sh[32];
  constexpr int kRowsPerBlock = block_threads<kThreads>() / kThreads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kThreads;
  if (row >= rows) return;
  const int lane = threadIdx.x % kThreads;
  const T* xr = x + row * d;
  T* yr = y + row * d;
  const float inv_d = 1.f / static_cast<float>(d);
  float mu = 0.f;
  if constexpr (kLayer) {
    float s = 0.f;
    for (int64_t j = lane; j < d; j += kThreads) s += load(xr, j);
    mu = row_sum<kThreads>(s, sh) * inv_d;
  }
  float ss = 0.f;
  for (int64_t j = lane; j < d; j += kThreads) {
    const float c = load(xr, j) - mu;
    ss += c * c;
  }
  const float r = 1.f / sqrtf(row_sum<kThreads>(ss, sh) * inv_d + eps);
  if (lane == 0) {
    if constexpr (kLayer) mean[row] = mu;
    rstd[row] = r;
  }
  for (int64_t j = lane; j < d; j += kThreads) {
    float v = (load(xr, j) - mu) * r;
    if (w) v *= load(w, j);
    if (b) v += load(b, j);
    store(yr, j, v);
  }
}

template <class T, bool kLayer, int kThreads>
__global__ void norm_bwd_dx_kernel(int64_t rows, int64_t d, const T* x, const T* w,
                                   const float* mean, const float* rstd, const T* dy, T* dx) {
  __shared__ float sh[64];
  constexpr int kRowsPerBlock = block_threads<kThreads>() / kThreads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kThreads;
  if (row >= rows) return;
  const int lane = threadIdx.x % kThreads;
  const T* xr = x + row * d;
  const T* dyr = dy + row * d;
  T* dxr = dx + row * d;
  const float mu = kLayer ? mean[row] : 0.f;
  const float r = rstd[row];
  const float inv_d = 1.f / static_cast<float>(d);
  float sum_g = 0.f, sum_gx = 0.f;
  for (int64_t j = lane; j < d; j += kThreads) {
    const float g = w ? load(dyr, j) * load(w, j) : load(dyr, j);
    sum_g += g;
    sum_gx += g * (load(xr, j) - mu) * r;
  }
  const float2 s = row_sum2<kThreads>(sum_g, sum_gx, sh);
  const float mean_g = kLayer ? s.x * inv_d : 0.f;
  const float mean_gx = s.y * inv_d;
  for (int64_t j = lane; j < d; j += kThreads) {
    const float g = w ? load(dyr, j) * load(w, j) : load(dyr, j);
    store(dxr, j, r * (g - mean_g - (load(xr, j) - mu) * r * mean_gx));
  }
}

constexpr int kTileCols = 32;
constexpr int kTileRows = 8;

// partial[0][chunk][j] = sum d_y xhat, partial[1][chunk][j] = sum d_y over the chunk.
template <class T, bool kLayer>
__global__ void norm_bwd_columns_kernel(int64_t rows, int64_t d, int64_t chunk_rows, const T* x,
                                        const float* mean, const float* rstd, const T* dy,
                                        int64_t chunks, float* partial) {
  __shared__ float sh_w[kTileRows][kTileCols + 1];
  __shared__ float sh_b[kTileRows][kTileCols + 1];
  const int64_t chunk = blockIdx.x;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * kTileCols + threadIdx.x;
  const int64_t r0 = chunk * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  float acc_w = 0.f, acc_b = 0.f;
  if (j < d) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kTileRows) {
      const float g = load(dy, r * d + j);
      const float mu = kLayer ? mean[r] : 0.f;
      acc_w += g * (load(x, r * d + j) - mu) * rstd[r];
      acc_b += g;
    }
  }
  sh_w[threadIdx.y][threadIdx.x] = acc_w;
  sh_b[threadIdx.y][threadIdx.x] = acc_b;
  __syncthreads();
  if (threadIdx.y == 0 && j < d) {
    float sw = 0.f, sb = 0.f;
#pragma unroll
    for (int i = 0; i < kTileRows; ++i) {
      sw += sh_w[i][threadIdx.x];
      sb += sh_b[i][threadIdx.x];
    }
    partial[chunk * d + j] = sw;
    partial[(chunks + chunk) * d + j] = sb;
  }
}

// ---- second stage ----

constexpr int kFinalLanes = 16;

// Block (32 columns x kFinalLanes lanes), grid.y = 0 (d_w) or 1 (d_b): lane y adds the
// chunks y, y + kFinalLanes, ... in order, then lane 0 adds the lanes in order.
template <class T>
__global__ void norm_bwd_final_kernel(int64_t chunks, int64_t d, const float* partial, T* dw,
                                      T* db) {
  __shared__ float sh[kFinalLanes][kTileCols + 1];
  const int which = blockIdx.y;
  T* out = which == 0 ? dw : db;
  if (out == nullptr) return;  // the same for the whole block
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kTileCols + threadIdx.x;
  float s = 0.f;
  if (j < d) {
    const float* p = partial + which * chunks * d + j;
    for (int64_t c = threadIdx.y; c < chunks; c += kFinalLanes) s += p[c * d];
  }
  sh[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && j < d) {
    float t = 0.f;
#pragma unroll
    for (int q = 0; q < kFinalLanes; ++q) t += sh[q][threadIdx.x];
    store(out, j, t);
  }
}

// ---- dispatch ----

template <int kThreads>
unsigned row_blocks(int64_t rows) {
  constexpr int kRowsPerBlock = block_threads<kThreads>() / kThreads;
  return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
}

template <int V>
using Int = std::integral_constant<int, V>;

// Calls f(threads, vecs) with the smallest register plan that holds nvec vectors, or
// returns `too_long` when none does.
template <class F>
const char* by_plan(int64_t nvec, const char* too_long, F&& f) {
  if (nvec <= 32) return f(Int<32>{}, Int<1>{});
  if (nvec <= 64) return f(Int<32>{}, Int<2>{});
  if (nvec <= 96) return f(Int<32>{}, Int<3>{});
  if (nvec <= 128) return f(Int<32>{}, Int<4>{});
  if (nvec <= 192) return f(Int<32>{}, Int<6>{});
  if (nvec <= 256) return f(Int<32>{}, Int<8>{});
  if (nvec <= 512) return f(Int<256>{}, Int<2>{});
  if (nvec <= 1024) return f(Int<512>{}, Int<2>{});
  if (nvec <= 2048) return f(Int<512>{}, Int<4>{});
  return too_long;
}
constexpr int64_t kMaxPlanVecs = 2048;

// Whether the vector path applies: D a whole number of vectors that fits the plan, and
// every pointer 16-byte aligned (row starts are then aligned too, D * size being a
// multiple of 16).
template <class T>
bool vector_path(int64_t d, std::initializer_list<const void*> ptrs) {
  constexpr int kN = Vec16<T>::kN;
  if (d % kN != 0 || d / kN > kMaxPlanVecs) return false;
  for (const void* p : ptrs) {
    if (p != nullptr && !aligned16(p)) return false;
  }
  return true;
}

// Calls f(threads) with the threads per row of the scalar path.
template <class F>
const char* scalar_threads(int64_t d, F&& f) {
  if (d <= 1024) return f(Int<32>{});
  if (d <= 8192) return f(Int<256>{});
  return f(Int<512>{});
}

// Calls f(T{}, layer) for the dtype and the norm.
template <class P, class F>
const char* dispatch(const P& p, F&& f) {
  auto by_layer = [&](auto t_tag) -> const char* {
    return p.layer ? f(t_tag, std::true_type{}) : f(t_tag, std::false_type{});
  };
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return by_layer(float{});
    case KernelDType::kBFloat16:
      return by_layer(__nv_bfloat16{});
  }
  return "norm: unknown dtype";
}

const char* last_error() {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace

const char* norm_fwd_cuda(const NormFwdParams& p, void* stream) {
  if (p.rows == 0 || p.d == 0) return nullptr;
  if (p.rows > (int64_t{1} << 31) - 1) return "norm: more than 2^31 - 1 rows";
  auto s = static_cast<cudaStream_t>(stream);
  const char* err = dispatch(p, [&](auto t_tag, auto layer) -> const char* {
    using T = decltype(t_tag);
    constexpr bool kLayer = decltype(layer)::value;
    const T* x = static_cast<const T*>(p.x);
    const T* w = static_cast<const T*>(p.w);
    const T* b = static_cast<const T*>(p.b);
    T* y = static_cast<T*>(p.y);
    if (vector_path<T>(p.d, {p.x, p.w, p.b, p.y})) {
      return by_plan(p.d / Vec16<T>::kN, "norm: row too long", [&](auto threads, auto vecs) {
        constexpr int kThreads = decltype(threads)::value;
        norm_fwd_vec_kernel<T, kLayer, kThreads, decltype(vecs)::value>
            <<<row_blocks<kThreads>(p.rows), block_threads<kThreads>(), 0, s>>>(
                p.rows, p.d, p.eps, x, w, b, y, p.mean, p.rstd);
        return static_cast<const char*>(nullptr);
      });
    }
    return scalar_threads(p.d, [&](auto threads) {
      constexpr int kThreads = decltype(threads)::value;
      norm_fwd_kernel<T, kLayer, kThreads>
          <<<row_blocks<kThreads>(p.rows), block_threads<kThreads>(), 0, s>>>(
              p.rows, p.d, p.eps, x, w, b, y, p.mean, p.rstd);
      return static_cast<const char*>(nullptr);
    });
  });
  return err ? err : last_error();
}

const char* norm_bwd_cuda(const NormBwdParams& p, void* stream) {
  if (p.d == 0) return nullptr;
  if (p.rows > (int64_t{1} << 31) - 1) return "norm: more than 2^31 - 1 rows";
  const bool want_cols = p.dw != nullptr || p.db != nullptr;
  if (!want_cols && p.dx == nullptr) return nullptr;
  if (want_cols && p.partial == nullptr) return "norm backward: no workspace for d_weight / d_bias";
  if (!p.layer && p.db != nullptr) return "rms_norm backward: there is no bias to give d_bias for";
  const int64_t chunks = norm_column_chunks(p.rows);
  const int64_t chunk_rows = norm_chunk_rows(p.rows);
  const int64_t tiles = (p.d + kTileCols - 1) / kTileCols;
  if (tiles > 65535) return "norm backward: more than 2,097,120 features";
  auto s = static_cast<cudaStream_t>(stream);
  const char* err = dispatch(p, [&](auto t_tag, auto layer) -> const char* {
    using T = decltype(t_tag);
    constexpr bool kLayer = decltype(layer)::value;
    const T* x = static_cast<const T*>(p.x);
    const T* w = static_cast<const T*>(p.w);
    const T* dy = static_cast<const T*>(p.dy);
    T* dx = static_cast<T*>(p.dx);
    if (p.rows == 0) {
      // No rows: the column sums are zero (d_x is empty).
      cudaError_t e = cudaMemsetAsync(p.partial, 0, 2 * p.d * sizeof(float), s);
      if (e != cudaSuccess) return cudaGetErrorString(e);
    } else if (vector_path<T>(p.d, {p.x, p.w, p.dy, p.dx})) {
      const char* e =
          by_plan(p.d / Vec16<T>::kN, "norm backward: row too long", [&](auto threads, auto vecs) {
            constexpr int kThreads = decltype(threads)::value;
            constexpr int kRowsPerBlock = block_threads<kThreads>() / kThreads;
            const size_t shared = kRowsPerBlock > 1 && want_cols
                                      ? sizeof(float) * kRowsPerBlock * static_cast<size_t>(p.d)
                                      : 0;
            norm_bwd_vec_kernel<T, kLayer, kThreads, decltype(vecs)::value>
                <<<static_cast<unsigned>(chunks), block_threads<kThreads>(), shared, s>>>(
                    p.rows, p.d, chunk_rows, chunks, x, w, p.mean, p.rstd, dy, dx, p.dw != nullptr,
                    p.db != nullptr, want_cols ? p.partial : nullptr);
            return static_cast<const char*>(nullptr);
          });
      if (e) return e;
    } else {
      if (dx) {
        scalar_threads(p.d, [&](auto threads) {
          constexpr int kThreads = decltype(threads)::value;
          norm_bwd_dx_kernel<T, kLayer, kThreads>
              <<<row_blocks<kThreads>(p.rows), block_threads<kThreads>(), 0, s>>>(
                  p.rows, p.d, x, w, p.mean, p.rstd, dy, dx);
          return static_cast<const char*>(nullptr);
        });
      }
      if (want_cols) {
        norm_bwd_columns_kernel<T, kLayer>
            <<<dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(tiles)),
               dim3(kTileCols, kTileRows), 0, s>>>(p.rows, p.d, chunk_rows, x, p.mean, p.rstd, dy,
                                                   chunks, p.partial);
      }
    }
    if (want_cols) {
      norm_bwd_final_kernel<T>
          <<<dim3(static_cast<unsigned>(tiles), 2), dim3(kTileCols, kFinalLanes), 0, s>>>(
              chunks, p.d, p.partial, static_cast<T*>(p.dw), static_cast<T*>(p.db));
    }
    return nullptr;
  });
  return err ? err : last_error();
}

}  // namespace resona::cuda
