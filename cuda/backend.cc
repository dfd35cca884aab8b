// The CUDA device backend for core: device memory (through the caching allocator),
// copies (contiguous ones through cudaMemcpy; strided and converting ones, and fills,
// through cuda/copy.h's kernels on the default stream) and the device count. Linked
// into every binary (//cuda:backend); with no GPU or no driver, device_count() is 0 and
// CUDA tensors are refused with a message saying so.
#include <cuda_runtime_api.h>

#include <cstring>

#include "core/check.h"
#include "core/dispatch.h"
#include "core/storage.h"
#include "cuda/allocator.h"
#include "cuda/backend.h"
#include "cuda/copy.h"

namespace resona::cuda {
namespace {

void check_cuda(cudaError_t err, const char* what) {
  RESONA_CHECK(err == cudaSuccess) << what << ": " << cudaGetErrorString(err);
}

#define RESONA_SAME_DTYPE_(k) \
  static_assert(static_cast<int>(DType::k) == static_cast<int>(CopyDType::k))
RESONA_SAME_DTYPE_(kFloat32);
RESONA_SAME_DTYPE_(kFloat64);
RESONA_SAME_DTYPE_(kBFloat16);
RESONA_SAME_DTYPE_(kInt32);
RESONA_SAME_DTYPE_(kInt64);
#undef RESONA_SAME_DTYPE_

constexpr const char* kTooManyDims =
    "more than 8 dims remain after merging the contiguous ones (cuda::kMaxDims)";
static_assert(kMaxDims == 8, "kTooManyDims names the limit");

class CudaBackend final : public DeviceBackend {
 public:
  void* allocate(size_t nbytes, int device_index) override {
    if (nbytes == 0) return nullptr;
    return device_allocator().allocate(nbytes, device_index);
  }
  void deallocate(void* ptr, size_t, int) override { device_allocator().free(ptr); }
  void copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t n) override {
    if (n == 0) return;
    cudaMemcpyKind kind = dst_dev.is_cpu()   ? cudaMemcpyDeviceToHost
                          : src_dev.is_cpu() ? cudaMemcpyHostToDevice
                                             : cudaMemcpyDeviceToDevice;
    check_cuda(cudaMemcpy(dst, src, n, kind), "cudaMemcpy");
  }
  void memset_zero(void* ptr, size_t n, int device_index) override {
    if (n == 0) return;
    check_cuda(cudaSetDevice(device_index), "cudaSetDevice");
    check_cuda(cudaMemset(ptr, 0, n), "cudaMemset");
  }
  void synchronize(int device_index) override {
    check_cuda(cudaSetDevice(device_index), "cudaSetDevice");
    check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  }
  const char* strided_copy(const std::vector<int64_t>& shape, void* dst, DType dst_dtype,
                           const std::vector<int64_t>& dst_strides, const void* src,
                           DType src_dtype, const std::vector<int64_t>& src_strides,
                           int device_index) override {
    CopyParams p;
    p.dst_dtype = static_cast<CopyDType>(dst_dtype);
    p.src_dtype = static_cast<CopyDType>(src_dtype);
    p.n = 1;
    for (int64_t d : shape) p.n *= d;
    if (p.n == 0) return nullptr;
    const int64_t* strides[2] = {dst_strides.data(), src_strides.data()};
    if (!make_strided_dims<2>(static_cast<int>(shape.size()), shape.data(), strides, p.dims)) {
      return kTooManyDims;
    }
    p.dst = dst;
    p.src = src;
    if (cudaSetDevice(device_index) != cudaSuccess) return "cudaSetDevice failed";
    return copy_fwd_cuda(p, nullptr);
  }
  const char* strided_fill(const std::vector<int64_t>& shape, void* dst, DType dtype,
                           const std::vector<int64_t>& strides, double value,
                           int device_index) override {
    FillParams p;
    p.elem_size = static_cast<int32_t>(dtype_size(dtype));
    dispatch_all("fill_", dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T v = convert<T>(value);  // the CPU's conversion, so both fill the same bits
      std::memcpy(&p.bits, &v, sizeof(T));
    });
    p.n = 1;
    for (int64_t d : shape) p.n *= d;
    if (p.n == 0) return nullptr;
    const int64_t* st[1] = {strides.data()};
    if (!make_strided_dims<1>(static_cast<int>(shape.size()), shape.data(), st, p.dims)) {
      return kTooManyDims;
    }
    p.dst = dst;
    if (cudaSetDevice(device_index) != cudaSuccess) return "cudaSetDevice failed";
    return fill_fwd_cuda(p, nullptr);
  }
  int device_count() override {
    static const int count = [] {
      int n = 0;
      return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
    }();
    return count;
  }
  std::string device_name(int device_index) override {
    cudaDeviceProp prop{};
    check_cuda(cudaGetDeviceProperties(&prop, device_index), "cudaGetDeviceProperties");
    return prop.name;
  }
};

[[maybe_unused]] const bool registered = [] {
  register_cuda_backend();
  return true;
}();

}  // namespace

void register_cuda_backend() {
  static CudaBackend backend;
  register_backend(DeviceType::kCUDA, &backend);
}

}  // namespace resona::cuda
