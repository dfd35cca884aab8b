// Elementwise kernels (see cuda/elementwise.h): one map kernel over NIn inputs and one
// output of the same dtype, in two forms.
//
//   map_vec_kernel:      every operand one contiguous run or a one-element broadcast,
//                        pointers 16-byte aligned: 16-byte loads and stores (4 float32
//                        or 8 bfloat16 per access), kUnroll vectors per thread and step,
//                        then a scalar tail. The unary kinds are template arguments here
//                        (one kernel per kind), so no per-element switch runs.
//   map_strided_kernel:  any StridedDims; the linear index of the output element is
//                        split over the dims (32-bit arithmetic below 2^31 elements).
//
// The formulas are ops/elementwise.cc's CPU ones, evaluated in float32; bfloat16 operands
// are widened on load and rounded to nearest even on store.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/elementwise.h"

namespace resona::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride beyond this

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ float sigmoid_of(float x) {
  // As the CPU (1 / (1 + exp(-x)) for x >= 0, e / (1 + e) with e = exp(x) below), with
  // e = exp(-|x|) <= 1 shared by both forms: no overflow, one exp, no divergent branch.
  // 1 + e lies in [1, 2], where the hardware reciprocal (__fdividef) is within 2 ulp
  // and needs none of the IEEE division's fix-up steps (this is the costly part of
  // silu and sigmoid at bfloat16 rates).
  const float e = expf(-fabsf(x));
  const float r = __fdividef(1.f, 1.f + e);
  return x >= 0.f ? r : e * r;
}

constexpr float kSoftplusThreshold = 20.f;  // PyTorch's default: linear above it
constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

struct BinaryFn {
  BinaryKernelKind kind;
  float alpha;
  __device__ __forceinline__ float operator()(const float* v) const {
    const float a = v[0], b = v[1];
    switch (kind) {
      case BinaryKernelKind::kAdd:
        return a + alpha * b;
      case BinaryKernelKind::kSub:
        return a - b;
      case BinaryKernelKind::kMul:
        return a * b;
      case BinaryKernelKind::kDiv:
        return a / b;
      case BinaryKernelKind::kPow:
        return powf(a, b);
    }
    return 0.f;
  }
};

// f(x; s) of `kind`: called with a runtime kind by the strided path and with a
// compile-time one (UnaryFwdFnT) by the vector path, where the switch folds away.
__device__ __forceinline__ float unary_fwd(UnaryKernelKind kind, float x, float s) {
  switch (kind) {
    case UnaryKernelKind::kNeg:
      return -x;
    case UnaryKernelKind::kExp:
      return expf(x);
    case UnaryKernelKind::kLog:
      return logf(x);
    case UnaryKernelKind::kSqrt:
      return sqrtf(x);
    case UnaryKernelKind::kRsqrt:
      return 1.f / sqrtf(x);  // as the CPU, not rsqrtf
    case UnaryKernelKind::kAbs:
      return fabsf(x);
    case UnaryKernelKind::kSigmoid:
      return sigmoid_of(x);
    case UnaryKernelKind::kTanh:
      return tanhf(x);
    case UnaryKernelKind::kSilu:
      return x * sigmoid_of(x);
    case UnaryKernelKind::kGelu:
      return 0.5f * x * (1.f + erff(x * kInvSqrt2));
    case UnaryKernelKind::kSoftplus:
      return x > kSoftplusThreshold ? x : log1pf(expf(x));
    case UnaryKernelKind::kRelu:
      return x > 0.f ? x : 0.f;
    case UnaryKernelKind::kAddScalar:
      return x + s;
    case UnaryKernelKind::kMulScalar:
      return x * s;
    case UnaryKernelKind::kPowScalar:
      return powf(x, s);
  }
  return 0.f;
}

struct UnaryFwdFn {
  UnaryKernelKind kind;
  float s;
  __device__ __forceinline__ float operator()(const float* v) const {
    return unary_fwd(kind, v[0], s);
  }
};
template <UnaryKernelKind K>
struct UnaryFwdFnT {
  float s;
  __device__ __forceinline__ float operator()(const float* v) const {
    return unary_fwd(K, v[0], s);
  }
};

// dx = dy * f'(.) of `kind`; `saved` is the saved x or y (see unary_needs_x /
// unary_needs_y on the host). Runtime or compile-time kind, as unary_fwd.
__device__ __forceinline__ float unary_bwd(UnaryKernelKind kind, float dy, float saved, float s) {
  const float x = saved, y = saved;
  switch (kind) {
    case UnaryKernelKind::kNeg:
      return -dy;
    case UnaryKernelKind::kExp:
      return dy * y;
    case UnaryKernelKind::kLog:
      return dy / x;
    case UnaryKernelKind::kSqrt:
      return dy * 0.5f / y;
    case UnaryKernelKind::kRsqrt:
      return dy * -0.5f * y * y * y;
    case UnaryKernelKind::kAbs:
      return x > 0.f ? dy : (x < 0.f ? -dy : 0.f);
    case UnaryKernelKind::kSigmoid:
      return dy * y * (1.f - y);
    case UnaryKernelKind::kTanh:
      return dy * (1.f - y * y);
    case UnaryKernelKind::kSilu: {
      const float sg = sigmoid_of(x);
      return dy * (sg + x * sg * (1.f - sg));
    }
    case UnaryKernelKind::kGelu: {
      const float cdf = 0.5f * (1.f + erff(x * kInvSqrt2));
      const float pdf = kInvSqrt2Pi * expf(-0.5f * x * x);
      return dy * (cdf + x * pdf);
    }
    case UnaryKernelKind::kSoftplus:
      return x > kSoftplusThreshold ? dy : dy * sigmoid_of(x);
    case UnaryKernelKind::kRelu:
      return x > 0.f ? dy : 0.f;
    case UnaryKernelKind::kAddScalar:
      return dy;
    case UnaryKernelKind::kMulScalar:
      return dy * s;
    case UnaryKernelKind::kPowScalar:
      return dy * s * powf(x, s - 1.f);
  }
  return 0.f;
}

// v[0] = dy, v[1] = the saved x or y.
struct UnaryBwdFn {
  UnaryKernelKind kind;
  float s;
  __device__ __forceinline__ float operator()(const float* v) const {
    return unary_bwd(kind, v[0], v[1], s);
  }
};
template <UnaryKernelKind K>
struct UnaryBwdFnT {
  float s;
  __device__ __forceinline__ float operator()(const float* v) const {
    return unary_bwd(K, v[0], v[1], s);
  }
};

template <class T, int NIn>
struct Inputs {
  const T* p[NIn];
  bool scalar[NIn];  // vector path only: a one-element operand broadcast over the output
};

// Each thread takes kUnroll vectors per step (v, v + step, ...), all loads issued before
// any math, so that enough bytes are in flight while the math of a costly f runs.
constexpr int kUnroll = 2;

template <class T, int NIn, class F>
__global__ void __launch_bounds__(kThreads)
    map_vec_kernel(F f, int64_t n, T* out, Inputs<T, NIn> in) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  float sc[NIn];
#pragma unroll
  for (int k = 0; k < NIn; ++k) sc[k] = in.scalar[k] ? to_f(in.p[k][0]) : 0.f;
  const int64_t nvec = n / kVec;
  for (int64_t v0 = tid; v0 < nvec; v0 += kUnroll * step) {
    alignas(16) T vals[kUnroll][NIn][kVec];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t v = v0 + u * step;
#pragma unroll
      for (int k = 0; k < NIn; ++k) {
        if (!in.scalar[k] && v < nvec) {
          *reinterpret_cast<uint4*>(vals[u][k]) = reinterpret_cast<const uint4*>(in.p[k])[v];
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t v = v0 + u * step;
      if (v >= nvec) break;
      alignas(16) T res[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        float a[NIn];
#pragma unroll
        for (int k = 0; k < NIn; ++k) a[k] = in.scalar[k] ? sc[k] : to_f(vals[u][k][j]);
        res[j] = from_f<T>(f(a));
      }
      reinterpret_cast<uint4*>(out)[v] = *reinterpret_cast<const uint4*>(res);
    }
  }
  for (int64_t i = nvec * kVec + tid; i < n; i += step) {
    float a[NIn];
#pragma unroll
    for (int k = 0; k < NIn; ++k) a[k] = in.scalar[k] ? sc[k] : to_f(in.p[k][i]);
    out[i] = from_f<T>(f(a));
  }
}

template <class T, int NIn, class F, class Index>
__global__ void map_strided_kernel(F f, Index n, T* out, Inputs<T, NIn> in,
                                   StridedDims<NIn + 1> d) {
  const Index step = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    int64_t off[NIn + 1] = {};
    Index rem = i;
    for (int dim = d.ndim - 1; dim >= 1; --dim) {
      const Index size = static_cast<Index>(d.shape[dim]);
      const Index q = rem / size;
      const int64_t r = static_cast<int64_t>(rem - q * size);
      rem = q;
#pragma unroll
      for (int k = 0; k <= NIn; ++k) off[k] += r * d.strides[k][dim];
    }
    if (d.ndim > 0) {  // the outermost dim needs no division: rem is its index
#pragma unroll
      for (int k = 0; k <= NIn; ++k) off[k] += static_cast<int64_t>(rem) * d.strides[k][0];
    }
    float a[NIn];
#pragma unroll
    for (int k = 0; k < NIn; ++k) a[k] = to_f(in.p[k][off[k + 1]]);
    out[off[0]] = from_f<T>(f(a));
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

unsigned grid_for(int64_t work) {
  int64_t blocks = (work + kThreads - 1) / kThreads;
  if (blocks < 1) blocks = 1;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  return static_cast<unsigned>(blocks);
}

// Runs f over the operands: out (operand 0 of d) and in[0..NIn) (operands 1..NIn); the
// vector path calls fv, which computes what f does (with its kind fixed at compile time).
template <class T, int NIn, class F, class FV>
const char* launch_map(F f, FV fv, int64_t n, void* out_v, const void* const* in_v,
                       const StridedDims<NIn + 1>& d, cudaStream_t stream) {
  if (n == 0) return nullptr;
  if (d.ndim < 0 || d.ndim > kMaxDims) return "more dims than the kernel indexes";
  T* out = static_cast<T*>(out_v);
  Inputs<T, NIn> in{};
  for (int k = 0; k < NIn; ++k) in.p[k] = static_cast<const T*>(in_v[k]);

  // One contiguous run (or one element) for every operand, 16-byte aligned: vector path.
  bool vec = d.ndim <= 1 && aligned16(out) && (d.ndim == 0 || d.strides[0][0] == 1);
  for (int k = 0; k < NIn && vec; ++k) {
    const int64_t st = d.ndim == 0 ? 0 : d.strides[k + 1][0];
    in.scalar[k] = st == 0;
    vec = (st == 0 || (st == 1 && aligned16(in.p[k])));
  }
  if (vec) {
    constexpr int kVec = 16 / sizeof(T);
    map_vec_kernel<T, NIn, FV>
        <<<grid_for((n / kVec + kUnroll - 1) / kUnroll), kThreads, 0, stream>>>(fv, n, out, in);
  } else {
    for (int k = 0; k < NIn; ++k) in.scalar[k] = false;
    if (n < (int64_t{1} << 31)) {
      map_strided_kernel<T, NIn, F, uint32_t>
          <<<grid_for(n), kThreads, 0, stream>>>(f, static_cast<uint32_t>(n), out, in, d);
    } else {
      map_strided_kernel<T, NIn, F, int64_t>
          <<<grid_for(n), kThreads, 0, stream>>>(f, n, out, in, d);
    }
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <int NIn, class F, class FV>
const char* dispatch_map(KernelDType dtype, F f, FV fv, int64_t n, void* out, const void* const* in,
                         const StridedDims<NIn + 1>& d, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case KernelDType::kFloat32:
      return launch_map<float, NIn>(f, fv, n, out, in, d, s);
    case KernelDType::kBFloat16:
      return launch_map<__nv_bfloat16, NIn>(f, fv, n, out, in, d, s);
  }
  return "unknown dtype (float32 and bfloat16 are supported)";
}

}  // namespace

const char* binary_fwd_cuda(const BinaryParams& p, void* stream) {
  const void* in[2] = {p.a, p.b};
  const BinaryFn f{p.kind, p.alpha};
  return dispatch_map<2>(p.dtype, f, f, p.n, p.out, in, p.dims, stream);
}

// Calls fn(kind constant) for p.kind; every UnaryKernelKind is listed.
template <class Fn>
const char* with_unary_kind(UnaryKernelKind kind, Fn&& fn) {
  using K = UnaryKernelKind;
  switch (kind) {
#define RESONA_UNARY_CASE(name) \
  case K::name:                 \
    return fn(std::integral_constant<K, K::name>{});
    RESONA_UNARY_CASE(kNeg)
    RESONA_UNARY_CASE(kExp)
    RESONA_UNARY_CASE(kLog)
    RESONA_UNARY_CASE(kSqrt)
    RESONA_UNARY_CASE(kRsqrt)
    RESONA_UNARY_CASE(kAbs)
    RESONA_UNARY_CASE(kSigmoid)
    RESONA_UNARY_CASE(kTanh)
    RESONA_UNARY_CASE(kSilu)
    RESONA_UNARY_CASE(kGelu)
    RESONA_UNARY_CASE(kSoftplus)
    RESONA_UNARY_CASE(kRelu)
    RESONA_UNARY_CASE(kAddScalar)
    RESONA_UNARY_CASE(kMulScalar)
    RESONA_UNARY_CASE(kPowScalar)
#undef RESONA_UNARY_CASE
  }
  return "unknown unary kind";
}

const char* unary_fwd_cuda(const UnaryParams& p, void* stream) {
  const void* in[1] = {p.x};
  return with_unary_kind(p.kind, [&](auto k) {
    return dispatch_map<1>(p.dtype, UnaryFwdFn{p.kind, p.s}, UnaryFwdFnT<decltype(k)::value>{p.s},
                           p.n, p.y, in, p.dims, stream);
  });
}

const char* unary_bwd_cuda(const UnaryBwdParams& p, void* stream) {
  const void* in[2] = {p.dy, p.saved};
  return with_unary_kind(p.kind, [&](auto k) {
    return dispatch_map<2>(p.dtype, UnaryBwdFn{p.kind, p.s}, UnaryBwdFnT<decltype(k)::value>{p.s},
                           p.n, p.dx, in, p.dims, stream);
  });
}

}  // namespace resona::cuda
