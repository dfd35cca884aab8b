// Elementwise kernels on the GPU, behind plain params (no CUDA or framework headers).
//
//   binary_fwd:  out = a (op) b             add, sub, mul, div, pow; kAdd computes a + alpha*b
//   unary_fwd:   y = f(x; s)                the activations and scalar ops of UnaryKind
//   unary_bwd:   dx = dy * f'(x or y; s)    reads x or y, whichever the kind saves
//
// Every operand is a strided view (element strides; stride 0 along broadcast dims) of
// one dtype, float32 or bfloat16, with float32 arithmetic. The output may alias an input
// at the same offsets (in-place add_/mul_). Operands whose dims all collapse into one
// contiguous run (or a one-element broadcast) take a path with 16-byte vector accesses
// when their pointers are 16-byte aligned; others index through the StridedDims below.
#pragma once

#include <cstdint>

namespace resona::cuda {

// Numbering shared with ops/elementwise.h's BinaryKind.
enum class BinaryKernelKind : int32_t { kAdd = 0, kSub = 1, kMul = 2, kDiv = 3, kPow = 4 };
// Numbering shared with ops/elementwise.h's UnaryKind (static_asserts there).
enum class UnaryKernelKind : int32_t {
  kNeg,
  kExp,
  kLog,
  kSqrt,
  kRsqrt,
  kAbs,
  kSigmoid,
  kTanh,
  kSilu,
  kGelu,
  kSoftplus,
  kRelu,
  kAddScalar,
  kMulScalar,
  kPowScalar,
};
enum class KernelDType : int32_t { kFloat32 = 0, kBFloat16 = 1 };

// The most dims a kernel indexes after coalescing (see make_strided_dims).
constexpr int kMaxDims = 8;

// Shape and the strides (in elements) of K operands iterated together; operand 0 is the
// output by convention.
template <int K>
struct StridedDims {
  int32_t ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[K][kMaxDims] = {};
};

// Builds StridedDims from a shape of `ndim` dims and K stride arrays: size-1 dims are
// dropped, the dims are put in order of decreasing stride of operand 0 (a stable sort:
// an elementwise map may visit elements in any order, and this one writes operand 0
// front to back), and neighbouring dims that are contiguous with each other in every
// operand are merged, so a contiguous tensor becomes one dim. Returns false when more
// than kMaxDims remain (the caller raises an error naming the op). Plain C++, host side.
template <int K>
inline bool make_strided_dims(int ndim, const int64_t* shape, const int64_t* const* strides,
                              StridedDims<K>& out) {
  int64_t sz[64];
  int64_t st[K][64];
  if (ndim > 64) return false;
  int n = 0;
  for (int d = 0; d < ndim; ++d) {
    if (shape[d] == 1) continue;
    // Insertion point: after every kept dim whose operand-0 stride is >= this one's.
    int at = n;
    while (at > 0 && st[0][at - 1] < strides[0][d]) --at;
    for (int j = n; j > at; --j) {
      sz[j] = sz[j - 1];
      for (int k = 0; k < K; ++k) st[k][j] = st[k][j - 1];
    }
    sz[at] = shape[d];
    for (int k = 0; k < K; ++k) st[k][at] = strides[k][d];
    ++n;
  }
  // Merge dim i into dim i+1 (its inner neighbour) when every operand steps across both
  // as one run.
  int m = 0;  // dims kept so far, in sz[0..m)
  for (int i = 0; i < n; ++i) {
    if (m > 0) {
      bool mergeable = true;
      for (int k = 0; k < K; ++k) mergeable &= st[k][m - 1] == st[k][i] * sz[i];
      if (mergeable) {
        sz[m - 1] *= sz[i];
        for (int k = 0; k < K; ++k) st[k][m - 1] = st[k][i];
        continue;
      }
    }
    sz[m] = sz[i];
    for (int k = 0; k < K; ++k) st[k][m] = st[k][i];
    ++m;
  }
  if (m > kMaxDims) return false;
  out.ndim = m;
  for (int d = 0; d < m; ++d) {
    out.shape[d] = sz[d];
    for (int k = 0; k < K; ++k) out.strides[k][d] = st[k][d];
  }
  return true;
}

struct BinaryParams {
  BinaryKernelKind kind;
  KernelDType dtype;
  float alpha = 1.f;        // kAdd only: out = a + alpha * b
  int64_t n = 0;            // elements of out
  StridedDims<3> dims;      // operands: out, a, b
  const void* a = nullptr;  // element [0, ..., 0] of each operand
  const void* b = nullptr;
  void* out = nullptr;
};

struct UnaryParams {
  UnaryKernelKind kind;
  KernelDType dtype;
  float s = 0.f;  // the scalar of kAddScalar, kMulScalar, kPowScalar
  int64_t n = 0;
  StridedDims<2> dims;  // operands: y, x
  const void* x = nullptr;
  void* y = nullptr;
};

struct UnaryBwdParams {
  UnaryKernelKind kind;
  KernelDType dtype;
  float s = 0.f;
  int64_t n = 0;
  StridedDims<3> dims;  // operands: dx, dy, saved
  const void* dy = nullptr;
  const void* saved = nullptr;  // x or y, as the kind's backward reads (any for neither)
  void* dx = nullptr;
};

// Launch on `stream` (a cudaStream_t; null = the current device's default stream).
// Return nullptr on success, else a message naming what is unsupported or failed.
const char* binary_fwd_cuda(const BinaryParams& p, void* stream);
const char* unary_fwd_cuda(const UnaryParams& p, void* stream);
const char* unary_bwd_cuda(const UnaryBwdParams& p, void* stream);

}  // namespace resona::cuda
