#include "core/storage.h"

#include <malloc.h>

#include <cstdlib>
#include <cstring>
#include <new>

#include "core/check.h"

namespace resona {
namespace {

constexpr size_t kCpuAlignment = 64;  // a cache line; also enough for AVX-512 loads

class CpuBackend final : public DeviceBackend {
 public:
  CpuBackend() {
    // Keep freed memory in the process: glibc would otherwise serve every large tensor
    // with a fresh mmap and return it on free, so each training step would pay page
    // faults for all its activations (a large share of a CPU step's time).
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
  }
  void* allocate(size_t nbytes, int) override {
    if (nbytes == 0) return nullptr;
    size_t rounded = (nbytes + kCpuAlignment - 1) / kCpuAlignment * kCpuAlignment;
    void* p = std::aligned_alloc(kCpuAlignment, rounded);
    RESONA_CHECK(p != nullptr) << "CPU allocation of " << nbytes << " bytes failed";
    return p;
  }
  void deallocate(void* ptr, size_t, int) override { std::free(ptr); }
  void copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t n) override {
    RESONA_CHECK(dst_dev.is_cpu() && src_dev.is_cpu())
        << "CPU backend asked to copy " << src_dev.str() << " -> " << dst_dev.str();
    if (n) std::memcpy(dst, src, n);
  }
  void memset_zero(void* ptr, size_t n, int) override {
    if (n) std::memset(ptr, 0, n);
  }
  void synchronize(int) override {}
  int device_count() override { return 1; }
  std::string device_name(int) override { return "CPU"; }
};

DeviceBackend*& slot(DeviceType t) {
  static DeviceBackend* slots[2] = {nullptr, nullptr};
  return slots[static_cast<int>(t)];
}

}  // namespace

void register_backend(DeviceType type, DeviceBackend* backend) { slot(type) = backend; }

bool backend_available(DeviceType type) {
  if (type == DeviceType::kCPU) return true;
  DeviceBackend* b = slot(type);
  return b != nullptr && b->device_count() > 0;
}

DeviceBackend& backend_for(Device device) {
  if (device.is_cpu()) {
    static CpuBackend cpu;
    return cpu;
  }
  DeviceBackend* b = slot(device.type);
  RESONA_CHECK(b != nullptr) << "no backend for " << device.str()
                             << " is linked into this binary (link //cuda:backend)";
  int n = b->device_count();
  RESONA_CHECK(device.index >= 0 && device.index < n)
      << device.str() << " requested but " << n << " CUDA device(s) are visible";
  return *b;
}

StorageImpl::StorageImpl(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  data_ = backend_for(device).allocate(nbytes, device.index);
}

StorageImpl::StorageImpl(void* data, size_t nbytes, Device device, std::function<void()> release)
    : data_(data), nbytes_(nbytes), device_(device), release_(std::move(release)) {}

Storage host_staging_storage(size_t nbytes, Device device) {
  if (!device.is_cpu() && backend_available(device.type)) {
    if (Storage s = backend_for(device).pinned_host_storage(nbytes)) return s;
  }
  return std::make_shared<StorageImpl>(nbytes, Device::cpu());
}

StorageImpl::~StorageImpl() {
  if (release_) {
    release_();
  } else if (data_ != nullptr) {
    backend_for(device_).deallocate(data_, nbytes_, device_.index);
  }
}

}  // namespace resona
