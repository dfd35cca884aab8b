// norm_fwd_kernel, norm_bwd_dx_kernel, norm_bwd_columns_kernel, norm_bwd_final_kernel:
// see cuda/norm.h for the formulas.
//
// Row kernels: one warp per row (D <= 1024, four rows per block) or one block per row
// (256 or 512 threads); each thread walks the row with stride kThreads and the row's
// partial sums are combined by shuffles and shared memory in a fixed order. The forward
// makes two passes over the row for layer_norm's variance (mean first, then the squared
// deviations: no cancellation) and one for rms_norm, then writes y.
//
// Column kernels: block (32 columns x 8 row lanes) sums kNormColumnRows rows of d_y xhat
// and d_y into partial[0/1][chunk][j]; the final kernel adds the chunks in order.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "cuda/norm.h"
#include "cuda/row_reduce.cuh"

namespace resona::cuda {
namespace {

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
  __shared__ float sh[32];
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
  const float mean_g = kLayer ? row_sum<kThreads>(sum_g, sh) * inv_d : 0.f;
  const float mean_gx = row_sum<kThreads>(sum_gx, sh) * inv_d;
  for (int64_t j = lane; j < d; j += kThreads) {
    const float g = w ? load(dyr, j) * load(w, j) : load(dyr, j);
    store(dxr, j, r * (g - mean_g - (load(xr, j) - mu) * r * mean_gx));
  }
}

constexpr int kTileCols = 32;
constexpr int kTileRows = 8;

// partial[0][chunk][j] = sum d_y xhat, partial[1][chunk][j] = sum d_y over the chunk.
template <class T, bool kLayer>
__global__ void norm_bwd_columns_kernel(int64_t rows, int64_t d, const T* x, const float* mean,
                                        const float* rstd, const T* dy, int64_t chunks,
                                        float* partial) {
  __shared__ float sh_w[kTileRows][kTileCols + 1];
  __shared__ float sh_b[kTileRows][kTileCols + 1];
  const int64_t chunk = blockIdx.x;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * kTileCols + threadIdx.x;
  const int64_t r0 = chunk * kNormColumnRows;
  const int64_t r1 = r0 + kNormColumnRows < rows ? r0 + kNormColumnRows : rows;
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

template <class T>
__global__ void norm_bwd_final_kernel(int64_t chunks, int64_t d, const float* partial, T* dw,
                                      T* db) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= d) return;
  float sw = 0.f, sb = 0.f;
  for (int64_t c = 0; c < chunks; ++c) {
    sw += partial[c * d + j];
    sb += partial[(chunks + c) * d + j];
  }
  if (dw) store(dw, j, sw);
  if (db) store(db, j, sb);
}

template <int kThreads>
unsigned row_blocks(int64_t rows) {
  constexpr int kRowsPerBlock = block_threads<kThreads>() / kThreads;
  return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
}

// Calls f(T{}, layer, threads) for the dtype, the norm and the threads per row.
template <class P, class F>
const char* dispatch(const P& p, F&& f) {
  auto by_threads = [&](auto t_tag, auto layer) -> const char* {
    if (p.d <= 1024) return f(t_tag, layer, std::integral_constant<int, 32>{});
    if (p.d <= 8192) return f(t_tag, layer, std::integral_constant<int, 256>{});
    return f(t_tag, layer, std::integral_constant<int, 512>{});
  };
  auto by_layer = [&](auto t_tag) -> const char* {
    return p.layer ? by_threads(t_tag, std::true_type{}) : by_threads(t_tag, std::false_type{});
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
  const char* err = dispatch(p, [&](auto t_tag, auto layer, auto threads) -> const char* {
    using T = decltype(t_tag);
    constexpr int kThreads = decltype(threads)::value;
    norm_fwd_kernel<T, decltype(layer)::value, kThreads>
        <<<row_blocks<kThreads>(p.rows), block_threads<kThreads>(), 0, s>>>(
            p.rows, p.d, p.eps, static_cast<const T*>(p.x), static_cast<const T*>(p.w),
            static_cast<const T*>(p.b), static_cast<T*>(p.y), p.mean, p.rstd);
    return nullptr;
  });
  return err ? err : last_error();
}

const char* norm_bwd_cuda(const NormBwdParams& p, void* stream) {
  if (p.d == 0) return nullptr;
  if (p.rows > (int64_t{1} << 31) - 1) return "norm: more than 2^31 - 1 rows";
  const int64_t chunks = norm_column_chunks(p.rows);
  const int64_t tiles = (p.d + kTileCols - 1) / kTileCols;
  if (tiles > 65535) return "norm backward: more than 2,097,120 features";
  auto s = static_cast<cudaStream_t>(stream);
  const char* err = dispatch(p, [&](auto t_tag, auto layer, auto threads) -> const char* {
    using T = decltype(t_tag);
    constexpr bool kLayer = decltype(layer)::value;
    constexpr int kThreads = decltype(threads)::value;
    const T* x = static_cast<const T*>(p.x);
    const T* dy = static_cast<const T*>(p.dy);
    if (p.dx && p.rows > 0) {
      norm_bwd_dx_kernel<T, kLayer, kThreads>
          <<<row_blocks<kThreads>(p.rows), block_threads<kThreads>(), 0, s>>>(
              p.rows, p.d, x, static_cast<const T*>(p.w), p.mean, p.rstd, dy,
              static_cast<T*>(p.dx));
    }
    if (p.dw || p.db) {
      if (p.partial == nullptr) return "norm backward: no workspace for d_weight / d_bias";
      if (p.rows > 0) {
        norm_bwd_columns_kernel<T, kLayer>
            <<<dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(tiles)),
               dim3(kTileCols, kTileRows), 0, s>>>(p.rows, p.d, x, p.mean, p.rstd, dy, chunks,
                                                   p.partial);
      } else {
        cudaError_t e = cudaMemsetAsync(p.partial, 0, 2 * p.d * sizeof(float), s);
        if (e != cudaSuccess) return cudaGetErrorString(e);
      }
      constexpr int kThreadsFinal = 256;
      norm_bwd_final_kernel<T>
          <<<static_cast<unsigned>((p.d + kThreadsFinal - 1) / kThreadsFinal), kThreadsFinal, 0,
             s>>>(chunks, p.d, p.partial, static_cast<T*>(p.dw), static_cast<T*>(p.db));
    }
    return nullptr;
  });
  return err ? err : last_error();
}

}  // namespace resona::cuda
