// copy_fwd_kernel and fill_fwd_kernel (see cuda/copy.h): one thread per element of the
// destination; the linear index is split over the coalesced dims (32-bit arithmetic
// below 2^31 elements). Same-dtype copies move raw bits (uint16/32/64), so bfloat16 NaN
// payloads survive as on the CPU; a same-dtype copy whose both sides are one contiguous
// run is a cudaMemcpyAsync.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/copy.h"

namespace resona::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride beyond this

template <class D, class S>
__device__ __forceinline__ D convert(S v) {
  if constexpr (std::is_same_v<D, S>) {
    return v;
  } else if constexpr (std::is_same_v<D, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(v));
  } else if constexpr (std::is_same_v<S, __nv_bfloat16>) {
    return static_cast<D>(__bfloat162float(v));
  } else {
    return static_cast<D>(v);
  }
}

// Element offsets of linear index i in each of K operands. The outermost dim needs no
// division: what is left of i after the inner dims is its index there.
template <int K, class Index>
__device__ __forceinline__ void offsets_of(Index i, const StridedDims<K>& d, int64_t* off) {
#pragma unroll
  for (int k = 0; k < K; ++k) off[k] = 0;
  Index rem = i;
  for (int dim = d.ndim - 1; dim >= 1; --dim) {
    const Index size = static_cast<Index>(d.shape[dim]);
    const Index q = rem / size;
    const int64_t r = static_cast<int64_t>(rem - q * size);
    rem = q;
#pragma unroll
    for (int k = 0; k < K; ++k) off[k] += r * d.strides[k][dim];
  }
  if (d.ndim > 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) off[k] += static_cast<int64_t>(rem) * d.strides[k][0];
  }
}

template <class D, class S, class Index>
__global__ void copy_fwd_kernel(Index n, D* dst, const S* src, StridedDims<2> d) {
  const Index step = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    int64_t off[2];
    offsets_of<2>(i, d, off);
    dst[off[0]] = convert<D>(src[off[1]]);
  }
}

template <class T, class Index>
__global__ void fill_fwd_kernel(Index n, T* dst, T value, StridedDims<1> d) {
  const Index step = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    int64_t off[1];
    offsets_of<1>(i, d, off);
    dst[off[0]] = value;
  }
}

unsigned grid_for(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  if (blocks < 1) blocks = 1;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  return static_cast<unsigned>(blocks);
}

const char* last_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <class D, class S>
const char* launch_copy(const CopyParams& p, cudaStream_t stream) {
  D* dst = static_cast<D*>(p.dst);
  const S* src = static_cast<const S*>(p.src);
  if (p.n < (int64_t{1} << 31)) {
    copy_fwd_kernel<D, S, uint32_t>
        <<<grid_for(p.n), kThreads, 0, stream>>>(static_cast<uint32_t>(p.n), dst, src, p.dims);
  } else {
    copy_fwd_kernel<D, S, int64_t><<<grid_for(p.n), kThreads, 0, stream>>>(p.n, dst, src, p.dims);
  }
  return last_error();
}

template <class T>
struct Tag {
  using type = T;
};

// Calls f(Tag<T>{}) with the element type of `t`; same-dtype copies use the raw types.
template <class F>
const char* with_type(CopyDType t, F&& f) {
  switch (t) {
    case CopyDType::kFloat32:
      return f(Tag<float>{});
    case CopyDType::kFloat64:
      return f(Tag<double>{});
    case CopyDType::kBFloat16:
      return f(Tag<__nv_bfloat16>{});
    case CopyDType::kInt32:
      return f(Tag<int32_t>{});
    case CopyDType::kInt64:
      return f(Tag<int64_t>{});
  }
  return "copy: unknown dtype";
}

int elem_size(CopyDType t) {
  switch (t) {
    case CopyDType::kBFloat16:
      return 2;
    case CopyDType::kFloat32:
    case CopyDType::kInt32:
      return 4;
    case CopyDType::kFloat64:
    case CopyDType::kInt64:
      return 8;
  }
  return 0;
}

}  // namespace

const char* copy_fwd_cuda(const CopyParams& p, void* stream_v) {
  if (p.n == 0) return nullptr;
  if (p.dims.ndim < 0 || p.dims.ndim > kMaxDims) return "copy: more dims than the kernel indexes";
  auto stream = static_cast<cudaStream_t>(stream_v);
  if (p.dst_dtype == p.src_dtype) {
    const int size = elem_size(p.dst_dtype);
    const bool one_run = p.dims.ndim == 0 || (p.dims.ndim == 1 && p.dims.strides[0][0] == 1 &&
                                              p.dims.strides[1][0] == 1);
    if (one_run) {
      cudaMemcpyAsync(p.dst, p.src, static_cast<size_t>(p.n) * size, cudaMemcpyDeviceToDevice,
                      stream);
      return last_error();
    }
    switch (size) {
      case 2:
        return launch_copy<uint16_t, uint16_t>(p, stream);
      case 4:
        return launch_copy<uint32_t, uint32_t>(p, stream);
      case 8:
        return launch_copy<uint64_t, uint64_t>(p, stream);
    }
    return "copy: unknown dtype";
  }
  return with_type(p.dst_dtype, [&](auto dtag) {
    using D = typename decltype(dtag)::type;
    return with_type(p.src_dtype, [&](auto stag) {
      using S = typename decltype(stag)::type;
      return launch_copy<D, S>(p, stream);
    });
  });
}

const char* fill_fwd_cuda(const FillParams& p, void* stream_v) {
  if (p.n == 0) return nullptr;
  if (p.dims.ndim < 0 || p.dims.ndim > kMaxDims) return "fill: more dims than the kernel indexes";
  auto stream = static_cast<cudaStream_t>(stream_v);
  auto launch = [&](auto tag) -> const char* {
    using T = typename decltype(tag)::type;
    const T value = static_cast<T>(p.bits);
    T* dst = static_cast<T*>(p.dst);
    if (p.n < (int64_t{1} << 31)) {
      fill_fwd_kernel<T, uint32_t>
          <<<grid_for(p.n), kThreads, 0, stream>>>(static_cast<uint32_t>(p.n), dst, value, p.dims);
    } else {
      fill_fwd_kernel<T, int64_t><<<grid_for(p.n), kThreads, 0, stream>>>(p.n, dst, value, p.dims);
    }
    return last_error();
  };
  switch (p.elem_size) {
    case 2:
      return launch(Tag<uint16_t>{});
    case 4:
      return launch(Tag<uint32_t>{});
    case 8:
      return launch(Tag<uint64_t>{});
  }
  return "fill: element size must be 2, 4 or 8 bytes";
}

}  // namespace resona::cuda
