// Matrix products on the GPU (declared in cuda/blas.h).
//
// gemm_cuda: one strided batched product through cublasGemmStridedBatchedEx_64. This is
// host code; it sits in this nvcc-compiled file because cuBLAS's headers include
// <nv/target>, which @cuda//:headers (globbing *.h and *.hpp) does not hand to the host
// compiler's sandbox.
//
// cuBLAS is column-major; our operands are logically row-major. A row-major C [m, n]
// with row stride ldc is the column-major C^T [n, m] with leading dimension ldc, and
//   C^T = B^T A^T,
// so cuBLAS computes (n, m, k) with B as its first operand and A as its second. An
// operand stored row-major (unit column stride) is, read column-major, already the
// transpose we need (op N); one stored column-major (unit row stride, e.g.
// w.transpose(0, 1)) is read with op T. Neither is ever copied here.
//
// Handles: one per device, created on first use under a mutex and kept for the life of
// the process (destroying them during static destruction can outlive the CUDA context).
// The stream is set on every call, so one handle serves any stream of its device.
//
// The kernels around linear's product:
//
//   bias_add_fwd_kernel:     out[r, j] += bias[j]                  (float32 arithmetic)
//   column_sum_kernel:       partial[c, j] = sum of x[r, j] over the rows r of chunk c,
//                            kColumnSumRows rows per chunk, in a fixed order
//   column_sum_final_kernel: out[j] = sum over c of partial[c, j], in order of c
//
// No atomics anywhere: the same input gives the same bits.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/blas.h"
#include "cuda/row_reduce.cuh"

namespace resona::cuda {
namespace {

thread_local std::string g_error;

const char* fail(const std::string& what) {
  g_error = what;
  return g_error.c_str();
}

const char* cuda_fail(const char* what, cudaError_t e) {
  return fail(std::string(what) + ": " + cudaGetErrorString(e));
}

const char* cublas_fail(const char* what, cublasStatus_t s) {
  return fail(std::string(what) + ": " + cublasGetStatusString(s));
}

// The handle of `device` (the current device when called), or nullptr with `*err` set.
cublasHandle_t handle_for(int device, const char** err) {
  static std::mutex mu;
  static std::vector<cublasHandle_t> handles;
  std::lock_guard<std::mutex> lock(mu);
  if (device < 0) {
    *err = fail("gemm_cuda: negative device index");
    return nullptr;
  }
  if (handles.size() <= static_cast<size_t>(device)) handles.resize(device + 1, nullptr);
  if (handles[device] == nullptr) {
    cublasHandle_t h = nullptr;
    cublasStatus_t s = cublasCreate(&h);
    if (s != CUBLAS_STATUS_SUCCESS) {
      *err = cublas_fail("cublasCreate", s);
      return nullptr;
    }
    handles[device] = h;
  }
  return handles[device];
}

// An operand as cuBLAS reads it: its op flag and leading dimension (see the top).
struct Operand {
  cublasOperation_t op;
  int64_t ld;
};

// `rows` x `cols` logical (row-major) operand with strides (rs, cs).
bool as_operand(int64_t rows, int64_t cols, int64_t rs, int64_t cs, Operand* o) {
  if (gemm_row_major(rows, cols, rs, cs)) {
    *o = {CUBLAS_OP_N, rows <= 1 ? std::max<int64_t>(cols, 1) : rs};
    return true;
  }
  if (gemm_col_major(rows, cols, rs, cs)) {
    *o = {CUBLAS_OP_T, cols <= 1 ? std::max<int64_t>(rows, 1) : cs};
    return true;
  }
  return false;
}

// Restores the caller's current device on scope exit.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&prev_) == cudaSuccess && prev_ != device) {
      err_ = cudaSetDevice(device);
      switched_ = err_ == cudaSuccess;
    }
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(prev_);
  }
  cudaError_t error() const { return err_; }

 private:
  int prev_ = 0;
  bool switched_ = false;
  cudaError_t err_ = cudaSuccess;
};

}  // namespace

const char* gemm_cuda(const GemmParams& p, void* stream) {
  if (p.batch == 0 || p.m == 0 || p.n == 0) return nullptr;
  const size_t es = p.dtype == KernelDType::kBFloat16 ? 2 : 4;
  DeviceGuard guard(p.device);
  if (guard.error() != cudaSuccess) return cuda_fail("gemm_cuda: cudaSetDevice", guard.error());
  auto s = static_cast<cudaStream_t>(stream);
  if (p.k == 0) {
    // An empty sum: C = 0 (or unchanged when accumulating).
    if (p.accumulate) return nullptr;
    for (int64_t e = 0; e < p.batch; ++e) {
      char* c = static_cast<char*>(p.c) + e * p.c_bs * es;
      const size_t pitch = (p.m > 1 ? p.c_rs : p.n) * es;
      cudaError_t err = cudaMemset2DAsync(c, pitch, 0, p.n * es, p.m, s);
      if (err != cudaSuccess) return cuda_fail("gemm_cuda: cudaMemset2DAsync", err);
    }
    return nullptr;
  }
  Operand oa, ob;
  if (!as_operand(p.m, p.k, p.a_rs, p.a_cs, &oa)) {
    return fail("gemm_cuda: operand a is neither row- nor column-major (rs " +
                std::to_string(p.a_rs) + ", cs " + std::to_string(p.a_cs) + ")");
  }
  if (!as_operand(p.k, p.n, p.b_rs, p.b_cs, &ob)) {
    return fail("gemm_cuda: operand b is neither row- nor column-major (rs " +
                std::to_string(p.b_rs) + ", cs " + std::to_string(p.b_cs) + ")");
  }
  const int64_t ldc = p.m > 1 ? p.c_rs : p.n;
  if (ldc < p.n) return fail("gemm_cuda: c's row stride is shorter than its rows");
  if (p.batch > 1 && p.c_bs == 0) return fail("gemm_cuda: c is shared by batch entries");

  const char* err = nullptr;
  cublasHandle_t h = handle_for(p.device, &err);
  if (h == nullptr) return err;
  cublasStatus_t st = cublasSetStream(h, s);
  if (st != CUBLAS_STATUS_SUCCESS) return cublas_fail("cublasSetStream", st);

  cudaDataType type = CUDA_R_32F;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F_FAST_TF32;
  if (p.dtype == KernelDType::kBFloat16) {
    type = CUDA_R_16BF;
    compute = CUBLAS_COMPUTE_32F;
  }
  const float alpha = 1.0f, beta = p.accumulate ? 1.0f : 0.0f;
  st = cublasGemmStridedBatchedEx_64(h, ob.op, oa.op, p.n, p.m, p.k, &alpha, p.b, type, ob.ld,
                                     p.b_bs, p.a, type, oa.ld, p.a_bs, &beta, p.c, type, ldc,
                                     p.c_bs, p.batch, compute, CUBLAS_GEMM_DEFAULT);
  if (st != CUBLAS_STATUS_SUCCESS) return cublas_fail("cublasGemmStridedBatchedEx", st);
  return nullptr;
}

namespace {

const char* last_error() {
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <class T>
__global__ void bias_add_fwd_kernel(int64_t rows, int64_t cols, T* out, const T* bias) {
  // blockIdx.y walks rows (grid-stride), x-threads walk a row's columns: coalesced,
  // and no division per element.
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < cols;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      store(out, r * cols + j, load(out, r * cols + j) + load(bias, j));
    }
  }
}

constexpr int kTileCols = 32;  // columns per block (one warp wide)
constexpr int kTileRows = 8;   // row lanes per block

template <class T>
__global__ void column_sum_kernel(int64_t rows, int64_t cols, const T* x, int64_t rs, int64_t cs,
                                  float* partial) {
  __shared__ float sh[kTileRows][kTileCols + 1];
  const int64_t chunk = blockIdx.x;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * kTileCols + threadIdx.x;
  const int64_t r0 = chunk * kColumnSumRows;
  const int64_t r1 = r0 + kColumnSumRows < rows ? r0 + kColumnSumRows : rows;
  float acc = 0.f;
  if (j < cols) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kTileRows) acc += load(x, r * rs + j * cs);
  }
  sh[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < cols) {
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < kTileRows; ++i) s += sh[i][threadIdx.x];
    partial[chunk * cols + j] = s;
  }
}

template <class T>
__global__ void column_sum_final_kernel(int64_t chunks, int64_t cols, const float* partial,
                                        T* out) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  float s = 0.f;
  for (int64_t c = 0; c < chunks; ++c) s += partial[c * cols + j];
  store(out, j, s);
}

template <class T>
const char* launch_bias_add(const BiasAddParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.cols == 0) return nullptr;
  constexpr int kThreads = 256;
  const int64_t bx = (p.cols + kThreads - 1) / kThreads;
  const dim3 grid(static_cast<unsigned>(bx < 64 ? bx : 64),
                  static_cast<unsigned>(p.rows < 65535 ? p.rows : 65535));
  bias_add_fwd_kernel<T><<<grid, kThreads, 0, stream>>>(p.rows, p.cols, static_cast<T*>(p.out),
                                                        static_cast<const T*>(p.bias));
  return last_error();
}

template <class T>
const char* launch_column_sum(const ColumnSumParams& p, cudaStream_t stream) {
  if (p.cols == 0) return nullptr;
  const int64_t chunks = column_sum_chunks(p.rows);
  const int64_t tiles = (p.cols + kTileCols - 1) / kTileCols;
  if (tiles > 65535) return "column_sum_cuda: more than 2,097,120 columns";
  if (p.rows > 0) {
    column_sum_kernel<T><<<dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(tiles)),
                           dim3(kTileCols, kTileRows), 0, stream>>>(
        p.rows, p.cols, static_cast<const T*>(p.x), p.rs, p.cs, p.partial);
  } else {
    // No rows: the one chunk sums to zero.
    cudaError_t err = cudaMemsetAsync(p.partial, 0, p.cols * sizeof(float), stream);
    if (err != cudaSuccess) return cudaGetErrorString(err);
  }
  constexpr int kThreads = 256;
  column_sum_final_kernel<T>
      <<<static_cast<unsigned>((p.cols + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
          chunks, p.cols, p.partial, static_cast<T*>(p.out));
  return last_error();
}

}  // namespace

const char* bias_add_fwd_cuda(const BiasAddParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return launch_bias_add<float>(p, s);
    case KernelDType::kBFloat16:
      return launch_bias_add<__nv_bfloat16>(p, s);
  }
  return "bias_add_fwd_cuda: unknown dtype";
}

const char* column_sum_cuda(const ColumnSumParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case KernelDType::kFloat32:
      return launch_column_sum<float>(p, s);
    case KernelDType::kBFloat16:
      return launch_column_sum<__nv_bfloat16>(p, s);
  }
  return "column_sum_cuda: unknown dtype";
}

}  // namespace resona::cuda
