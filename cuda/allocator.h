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
// A block belongs to the stream it was allocated on and, once freed, is reused only for
// requests on that stream: stream order makes that safe without events. A block that
// other streams also use is told so with record_stream(ptr, s); its free then records an
// event on each such stream, and the block waits in a pending list until every event has
// completed (polled at each allocate), so nothing queued on s can still be reading or
// writing it when it is handed out again.
//
// PinnedHostPool caches page-locked host memory the same way (cudaHostAlloc only while
// the pool grows): a buffer that a copy on stream s reads is marked with
// record_stream(ptr, s), and after its free it is handed out again only once s has passed
// that copy.
//
// The raw memory source (and its events) is a parameter so that the caching policy is
// tested on the host without a GPU; production code uses the CUDA source.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

namespace resona::cuda {

struct AllocatorStats {
  size_t in_use_bytes = 0;    // handed out and not yet freed (rounded sizes)
  size_t cached_bytes = 0;    // free blocks kept for reuse
  size_t reserved_bytes = 0;  // in_use + cached: what the allocator holds from the driver
  size_t peak_in_use_bytes = 0;
  uint64_t raw_allocs = 0;  // calls to the raw source (cudaMalloc)
  uint64_t raw_frees = 0;
  uint64_t cache_hits = 0;
  size_t pending_bytes = 0;  // freed, waiting for other streams' events (part of cached)
  uint64_t events_recorded = 0;
  std::string str() const;
};

// Where the memory comes from. allocate returns nullptr when out of memory.
class RawMemory {
 public:
  virtual ~RawMemory() = default;
  virtual void* allocate(size_t nbytes, int device) = 0;
  virtual void release(void* ptr, int device) = 0;
  // A marker that completes once everything queued on `stream` so far has; nullptr
  // means already complete. The defaults suit memory no device stream touches.
  virtual void* record_event(void* stream, int device) { return nullptr; }
  virtual bool event_done(void* event) { return true; }
  virtual void destroy_event(void* event) {}
};

// A freed block waiting until the streams that used it have passed its last use.
struct PendingBlock {
  void* ptr;
  std::vector<void*> events;
};

class CachingAllocator {
 public:
  explicit CachingAllocator(RawMemory& raw) : raw_(raw) {}
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  void* allocate(size_t nbytes, int device, void* stream = nullptr);
  void free(void* ptr);
  // `ptr` (a pointer this allocator handed out) is also used by work queued on `stream`;
  // its free waits for that work. Recording the allocating stream itself is a no-op.
  void record_stream(void* ptr, void* stream);
  // Returns every cached (free) block to the raw source; pending blocks whose events
  // have completed are returned too, the others stay.
  void empty_cache();
  AllocatorStats stats() const;
  void reset_peak();

  static size_t round_size(size_t nbytes);

 private:
  struct Block {
    size_t size;
    int device;
    void* stream;
    std::set<void*> other_streams;  // from record_stream
  };
  struct PoolKey {
    int device;
    void* stream;
    bool operator<(const PoolKey& o) const {
      return device != o.device ? device < o.device : stream < o.stream;
    }
  };
  void release_cached_locked(int device);  // device < 0: all
  void collect_pending_locked();           // pending blocks whose events completed -> free_

  RawMemory& raw_;
  mutable std::mutex mu_;
  std::unordered_map<void*, Block> live_;
  std::map<PoolKey, std::multimap<size_t, void*>> free_;  // size -> ptr, per device/stream
  std::vector<std::pair<Block, PendingBlock>> pending_;
  AllocatorStats stats_;
};

// The process-wide allocator over cudaMalloc/cudaFree.
CachingAllocator& device_allocator();

// Page-locked host memory, cached. Sizes round as the device allocator's; a request takes
// the smallest free block that fits with the same waste limit. Blocks are looked up by
// any address inside them, so a view's pointer finds its block.
class PinnedHostPool {
 public:
  explicit PinnedHostPool(RawMemory& raw) : raw_(raw) {}
  ~PinnedHostPool();
  PinnedHostPool(const PinnedHostPool&) = delete;
  PinnedHostPool& operator=(const PinnedHostPool&) = delete;

  void* allocate(size_t nbytes);
  void free(void* ptr);
  // A copy queued on `stream` reads or writes the block containing `ptr`. Returns false
  // (and records nothing) when `ptr` is not inside a live block of this pool.
  bool record_stream(const void* ptr, void* stream);
  // Whether `ptr` lies inside a block this pool handed out and has not taken back.
  bool contains(const void* ptr) const;
  void empty_cache();
  AllocatorStats stats() const;

 private:
  struct Block {
    size_t size;
    std::set<void*> streams;
  };
  void collect_pending_locked();
  std::map<char*, Block>::const_iterator find_locked(const void* ptr) const;

  RawMemory& raw_;
  mutable std::mutex mu_;
  std::map<char*, Block> live_;        // by start address
  std::multimap<size_t, void*> free_;  // size -> ptr
  std::vector<std::pair<size_t, PendingBlock>> pending_;
  AllocatorStats stats_;
};

// The process-wide pinned host pool over cudaHostAlloc/cudaFreeHost.
PinnedHostPool& pinned_host_pool();

}  // namespace resona::cuda
