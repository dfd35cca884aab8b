// Matrix products on the GPU, all in cuda/blas.cu: cuBLAS for the products (host code)
// and two small kernels around them: linear's bias add and its d_bias column sum.
// Plain params only; this header includes no CUDA header.
//
//   gemm:        C[e] = A[e] B[e]  (+ C[e] when accumulate)   for e < batch
//                A[e] is m x k, B[e] is k x n, C[e] is m x n, all row-major *logically*:
//                element (i, j) of entry e lies at ptr + e*bs + i*rs + j*cs (in elements).
//                An operand may have unit-stride rows (cs == 1) or unit-stride columns
//                (rs == 1), i.e. be row- or column-major in memory; cuBLAS reads either in
//                place through its transpose flags. bs == 0 broadcasts one matrix to every
//                entry. C has unit-stride rows and distinct entries (c_bs != 0 when batch > 1).
//                float32 runs on TF32 tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32: inputs
//                rounded to a 10-bit mantissa, float32 accumulation); bfloat16 on BF16
//                tensor cores with float32 accumulation, rounded to bf16 once on output.
//   bias_add:    out[r, j] += bias[j]                       (out contiguous [rows, cols])
//   column_sum:  out[j] = sum_r x[r, j]                     (x with any row/column strides)
//                deterministic: per-chunk partial sums in float32 (chunk = kColumnSumRows
//                rows, fixed order), then one fixed-order pass over the chunks. No atomics.
#pragma once

#include <cstdint>

#include "cuda/elementwise.h"  // KernelDType

namespace resona::cuda {

struct GemmParams {
  KernelDType dtype;  // of a, b and c alike
  int device;         // CUDA ordinal; cuBLAS handles are per device, created on first use
  int64_t batch, m, n, k;
  const void* a;
  int64_t a_rs, a_cs, a_bs;
  const void* b;
  int64_t b_rs, b_cs, b_bs;
  void* c;
  int64_t c_rs, c_bs;  // column stride 1
  bool accumulate;     // beta = 1 (else 0: c is only written)
};

// How cuBLAS can read a rows x cols operand with strides (rs, cs) in place: row-major
// (unit column stride, row stride covering a row) or column-major (the converse). Dims
// of size 1 never matter. Callers copy an operand that is neither (e.g. an expanded one).
inline bool gemm_row_major(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  return (cols <= 1 || cs == 1) && (rows <= 1 || rs >= (cols > 1 ? cols : 1));
}
inline bool gemm_col_major(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  return (rows <= 1 || rs == 1) && (cols <= 1 || cs >= (rows > 1 ? rows : 1));
}
inline bool gemm_operand_ok(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  return gemm_row_major(rows, cols, rs, cs) || gemm_col_major(rows, cols, rs, cs);
}

// Runs on `stream` (a cudaStream_t; null = the default stream). Returns nullptr on
// success, else a message (valid until the next call on this thread).
const char* gemm_cuda(const GemmParams& p, void* stream);

struct BiasAddParams {
  KernelDType dtype;
  int64_t rows, cols;
  void* out;         // [rows, cols], contiguous
  const void* bias;  // [cols], contiguous
};
const char* bias_add_fwd_cuda(const BiasAddParams& p, void* stream);

// Rows summed by one block in column_sum's first stage.
inline constexpr int64_t kColumnSumRows = 128;
inline int64_t column_sum_chunks(int64_t rows) {
  return rows <= 0 ? 1 : (rows + kColumnSumRows - 1) / kColumnSumRows;
}

struct ColumnSumParams {
  KernelDType dtype;  // of x and out
  int64_t rows, cols;
  const void* x;
  int64_t rs, cs;
  float* partial;  // workspace [column_sum_chunks(rows), cols] float32
  void* out;       // [cols], contiguous, overwritten
};
const char* column_sum_cuda(const ColumnSumParams& p, void* stream);

}  // namespace resona::cuda
