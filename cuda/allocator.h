// Caching allocator for device memory.
//
// Freed blocks are kept (per device and stream) and handed out again, so a training
// step in its steady state makes no cudaMalloc or cudaFree calls. Sizes are rounded up
// (to 512 bytes below 1 MiB, to 2 MiB above), and a request takes the smallest cached
// block that fits as long as it wastes at most a quarter of it (or 1 MiB for small
// blocks); no block is split. When cudaMalloc reports out-of-memory, every cached block
// of that device is released and the request retried once; a second failure throws,
// naming the request and the allocator's statistics.
//
// A block freed on stream s is reused only for requests on s (stream order makes that
// safe without events). The raw memory source is a parameter so that the caching policy
// is tested on the host without a GPU; production code uses the CUDA source.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

namespace resona::cuda {

struct AllocatorStats {
  size_t in_use_bytes = 0;    // handed out and not yet freed (rounded sizes)
  size_t cached_bytes = 0;    // free blocks kept for reuse
  size_t reserved_bytes = 0;  // in_use + cached: what the allocator holds from the driver
  size_t peak_in_use_bytes = 0;
  uint64_t raw_allocs = 0;  // calls to the raw source (cudaMalloc)
  uint64_t raw_frees = 0;
  uint64_t cache_hits = 0;
  std::string str() const;
};

// Where the memory comes from. allocate returns nullptr when out of memory.
class RawMemory {
 public:
  virtual ~RawMemory() = default;
  virtual void* allocate(size_t nbytes, int device) = 0;
  virtual void release(void* ptr, int device) = 0;
};

class CachingAllocator {
 public:
  explicit CachingAllocator(RawMemory& raw) : raw_(raw) {}
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  void* allocate(size_t nbytes, int device, void* stream = nullptr);
  void free(void* ptr);
  // Returns every cached (free) block to the raw source.
  void empty_cache();
  AllocatorStats stats() const;
  void reset_peak();

  static size_t round_size(size_t nbytes);

 private:
  struct Block {
    size_t size;
    int device;
    void* stream;
  };
  struct PoolKey {
    int device;
    void* stream;
    bool operator<(const PoolKey& o) const {
      return device != o.device ? device < o.device : stream < o.stream;
    }
  };
  void release_cached_locked(int device);  // device < 0: all

  RawMemory& raw_;
  mutable std::mutex mu_;
  std::unordered_map<void*, Block> live_;
  std::map<PoolKey, std::multimap<size_t, void*>> free_;  // size -> ptr, per device/stream
  AllocatorStats stats_;
};

// The process-wide allocator over cudaMalloc/cudaFree.
CachingAllocator& device_allocator();

}  // namespace resona::cuda
