// The CUDA device backend for core: device memory (through the caching allocator),
// copies and the device count. Linked
// into every binary (//cuda:backend); with no GPU or no driver, device_count() is 0 and
// CUDA tensors are refused with a message saying so.
#include <cuda_runtime_api.h>

#include "core/check.h"
#include "core/storage.h"
#include "cuda/allocator.h"
#include "cuda/backend.h"

namespace resona::cuda {
namespace {

void check_cuda(cudaError_t err, const char* what) {
  RESONA_CHECK(err == cudaSuccess) << what << ": " << cudaGetErrorString(err);
}

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
  int device_count() override {
    static const int count = [] {
      int n = 0;
      return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
    }();
    return count;
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
