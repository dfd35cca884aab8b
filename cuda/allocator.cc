#include "cuda/allocator.h"

#include <cuda_runtime_api.h>

#include <sstream>
#include <vector>

#include "core/check.h"

namespace resona::cuda {

namespace {
constexpr size_t kSmallLimit = size_t{1} << 20;  // 1 MiB
constexpr size_t kSmallRound = 512;
constexpr size_t kLargeRound = size_t{2} << 20;  // 2 MiB
}  // namespace

std::string AllocatorStats::str() const {
  std::ostringstream os;
  os << "in use " << in_use_bytes << " B, cached " << cached_bytes << " B, reserved "
     << reserved_bytes << " B, peak in use " << peak_in_use_bytes << " B, " << raw_allocs
     << " raw allocations, " << raw_frees << " raw frees, " << cache_hits << " cache hits";
  return os.str();
}

size_t CachingAllocator::round_size(size_t n) {
  if (n == 0) n = 1;
  if (n < kSmallLimit) return (n + kSmallRound - 1) / kSmallRound * kSmallRound;
  return (n + kLargeRound - 1) / kLargeRound * kLargeRound;
}

CachingAllocator::~CachingAllocator() {
  std::lock_guard<std::mutex> lock(mu_);
  release_cached_locked(-1);
}

void* CachingAllocator::allocate(size_t nbytes, int device, void* stream) {
  const size_t size = round_size(nbytes);
  std::lock_guard<std::mutex> lock(mu_);
  auto& pool = free_[PoolKey{device, stream}];
  auto it = pool.lower_bound(size);
  const size_t max_waste = size < kSmallLimit ? kSmallLimit : size / 4;
  if (it != pool.end() && it->first - size <= max_waste) {
    void* p = it->second;
    const size_t got = it->first;
    pool.erase(it);
    live_[p] = Block{got, device, stream};
    stats_.cached_bytes -= got;
    stats_.in_use_bytes += got;
    stats_.peak_in_use_bytes = std::max(stats_.peak_in_use_bytes, stats_.in_use_bytes);
    ++stats_.cache_hits;
    return p;
  }
  void* p = raw_.allocate(size, device);
  if (p == nullptr) {
    release_cached_locked(device);
    p = raw_.allocate(size, device);
  }
  RESONA_CHECK(p != nullptr) << "out of memory on cuda:" << device << " allocating " << nbytes
                             << " bytes (" << size << " rounded); allocator: " << stats_.str();
  ++stats_.raw_allocs;
  live_[p] = Block{size, device, stream};
  stats_.in_use_bytes += size;
  stats_.reserved_bytes += size;
  stats_.peak_in_use_bytes = std::max(stats_.peak_in_use_bytes, stats_.in_use_bytes);
  return p;
}

void CachingAllocator::free(void* ptr) {
  if (ptr == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(ptr);
  RESONA_CHECK(it != live_.end()) << "free of a pointer the caching allocator did not hand out";
  const Block b = it->second;
  live_.erase(it);
  free_[PoolKey{b.device, b.stream}].emplace(b.size, ptr);
  stats_.in_use_bytes -= b.size;
  stats_.cached_bytes += b.size;
}

void CachingAllocator::release_cached_locked(int device) {
  for (auto& [key, pool] : free_) {
    if (device >= 0 && key.device != device) continue;
    for (auto& [size, p] : pool) {
      raw_.release(p, key.device);
      ++stats_.raw_frees;
      stats_.cached_bytes -= size;
      stats_.reserved_bytes -= size;
    }
    pool.clear();
  }
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  release_cached_locked(-1);
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void CachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.peak_in_use_bytes = stats_.in_use_bytes;
}

namespace {

class CudaRawMemory final : public RawMemory {
 public:
  void* allocate(size_t nbytes, int device) override {
    RESONA_CHECK(cudaSetDevice(device) == cudaSuccess) << "cudaSetDevice(" << device << ") failed";
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, nbytes);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear the sticky-free error state
      return nullptr;
    }
    RESONA_CHECK(err == cudaSuccess)
        << "cudaMalloc(" << nbytes << ") on cuda:" << device << ": " << cudaGetErrorString(err);
    return p;
  }
  void release(void* ptr, int device) override {
    cudaSetDevice(device);
    cudaFree(ptr);
  }
};

}  // namespace

CachingAllocator& device_allocator() {
  // Never destroyed: tensors may be freed during static destruction, after the CUDA
  // runtime itself has begun shutting down.
  static CudaRawMemory* raw = new CudaRawMemory();
  static CachingAllocator* alloc = new CachingAllocator(*raw);
  return *alloc;
}

}  // namespace resona::cuda
