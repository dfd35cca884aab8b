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

// Removes from `pending` (kept in order) the entries whose recorded events have all
// completed: destroys their events and hands each entry to `ready`.
template <class Key, class Ready>
void collect_completed(std::vector<std::pair<Key, PendingBlock>>& pending, RawMemory& raw,
                       Ready ready) {
  size_t kept = 0;
  for (size_t i = 0; i < pending.size(); ++i) {
    const PendingBlock& pb = pending[i].second;
    bool done = true;
    for (void* ev : pb.events) done = done && raw.event_done(ev);
    if (!done) {
      if (kept != i) pending[kept] = std::move(pending[i]);
      ++kept;
      continue;
    }
    for (void* ev : pb.events) raw.destroy_event(ev);
    ready(pending[i].first, pb.ptr);
  }
  pending.resize(kept);
}

}  // namespace

std::string AllocatorStats::str() const {
  std::ostringstream os;
  os << "in use " << in_use_bytes << " B, cached " << cached_bytes << " B, reserved "
     << reserved_bytes << " B, peak in use " << peak_in_use_bytes << " B, " << raw_allocs
     << " raw allocations, " << raw_frees << " raw frees, " << cache_hits << " cache hits, "
     << pending_bytes << " B pending other streams, " << events_recorded << " events recorded";
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
  // Only test allocators are destroyed (the process-wide one never is); their pending
  // blocks go back too.
  for (auto& [b, pb] : pending_) {
    for (void* ev : pb.events) raw_.destroy_event(ev);
    raw_.release(pb.ptr, b.device);
  }
}

void CachingAllocator::collect_pending_locked() {
  collect_completed(pending_, raw_, [&](const Block& b, void* ptr) {
    free_[PoolKey{b.device, b.stream}].emplace(b.size, ptr);
    stats_.pending_bytes -= b.size;
  });
}

void CachingAllocator::record_stream(void* ptr, void* stream) {
  if (ptr == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(ptr);
  RESONA_CHECK(it != live_.end())
      << "record_stream of a pointer the caching allocator did not hand out (or already freed)";
  if (stream != it->second.stream) it->second.other_streams.insert(stream);
}

void* CachingAllocator::allocate(size_t nbytes, int device, void* stream) {
  const size_t size = round_size(nbytes);
  std::lock_guard<std::mutex> lock(mu_);
  if (!pending_.empty()) collect_pending_locked();
  auto& pool = free_[PoolKey{device, stream}];
  auto it = pool.lower_bound(size);
  const size_t max_waste = size < kSmallLimit ? kSmallLimit : size / 4;
  if (it != pool.end() && it->first - size <= max_waste) {
    void* p = it->second;
    const size_t got = it->first;
    pool.erase(it);
    live_[p] = Block{got, device, stream, {}};
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
  live_[p] = Block{size, device, stream, {}};
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
  Block b = std::move(it->second);
  live_.erase(it);
  stats_.in_use_bytes -= b.size;
  stats_.cached_bytes += b.size;
  if (b.other_streams.empty()) {
    free_[PoolKey{b.device, b.stream}].emplace(b.size, ptr);
    return;
  }
  // Work queued on the other streams may still read or write the block: it becomes
  // reusable once each of them has passed this point.
  PendingBlock pb{ptr, {}};
  for (void* s : b.other_streams) {
    void* ev = raw_.record_event(s, b.device);
    ++stats_.events_recorded;
    if (ev != nullptr) pb.events.push_back(ev);
  }
  stats_.pending_bytes += b.size;
  b.other_streams.clear();
  pending_.emplace_back(std::move(b), std::move(pb));
}

void CachingAllocator::release_cached_locked(int device) {
  collect_pending_locked();
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
  void* record_event(void* stream, int device) override {
    return record_cuda_event(stream, device);
  }
  bool event_done(void* event) override { return cuda_event_done(event); }
  void destroy_event(void* event) override { cudaEventDestroy(static_cast<cudaEvent_t>(event)); }

  // Shared with the pinned source. device < 0: the stream's own device.
  static void* record_cuda_event(void* stream, int device) {
    auto s = static_cast<cudaStream_t>(stream);
    if (device < 0 && (s == nullptr || cudaStreamGetDevice(s, &device) != cudaSuccess)) {
      cudaGetLastError();
      RESONA_CHECK(cudaGetDevice(&device) == cudaSuccess) << "cudaGetDevice failed";
    }
    RESONA_CHECK(cudaSetDevice(device) == cudaSuccess) << "cudaSetDevice(" << device << ") failed";
    cudaEvent_t ev = nullptr;
    cudaError_t err = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
    RESONA_CHECK(err == cudaSuccess) << "cudaEventCreateWithFlags: " << cudaGetErrorString(err);
    err = cudaEventRecord(ev, s);
    RESONA_CHECK(err == cudaSuccess)
        << "cudaEventRecord on a stream given to record_stream: " << cudaGetErrorString(err);
    return ev;
  }
  static bool cuda_event_done(void* event) {
    cudaError_t err = cudaEventQuery(static_cast<cudaEvent_t>(event));
    if (err == cudaErrorNotReady) return false;
    RESONA_CHECK(err == cudaSuccess) << "cudaEventQuery: " << cudaGetErrorString(err);
    return true;
  }
};

// cudaHostAlloc/cudaFreeHost; the device argument is unused (portable memory).
class CudaPinnedMemory final : public RawMemory {
 public:
  void* allocate(size_t nbytes, int) override {
    void* p = nullptr;
    cudaError_t err = cudaHostAlloc(&p, nbytes, cudaHostAllocPortable);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      return nullptr;
    }
    RESONA_CHECK(err == cudaSuccess)
        << "cudaHostAlloc(" << nbytes << "): " << cudaGetErrorString(err);
    return p;
  }
  void release(void* ptr, int) override { cudaFreeHost(ptr); }
  void* record_event(void* stream, int) override {
    return CudaRawMemory::record_cuda_event(stream, -1);
  }
  bool event_done(void* event) override { return CudaRawMemory::cuda_event_done(event); }
  void destroy_event(void* event) override { cudaEventDestroy(static_cast<cudaEvent_t>(event)); }
};

}  // namespace

// ---- pinned host pool ----

PinnedHostPool::~PinnedHostPool() {
  empty_cache();
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [size, pb] : pending_) {
    for (void* ev : pb.events) raw_.destroy_event(ev);
    raw_.release(pb.ptr, -1);
  }
}

void PinnedHostPool::collect_pending_locked() {
  collect_completed(pending_, raw_, [&](size_t size, void* ptr) {
    free_.emplace(size, ptr);
    stats_.pending_bytes -= size;
  });
}

void* PinnedHostPool::allocate(size_t nbytes) {
  const size_t size = CachingAllocator::round_size(nbytes);
  std::lock_guard<std::mutex> lock(mu_);
  if (!pending_.empty()) collect_pending_locked();
  auto it = free_.lower_bound(size);
  const size_t max_waste = size < kSmallLimit ? kSmallLimit : size / 4;
  void* p = nullptr;
  size_t got = size;
  if (it != free_.end() && it->first - size <= max_waste) {
    p = it->second;
    got = it->first;
    free_.erase(it);
    stats_.cached_bytes -= got;
    ++stats_.cache_hits;
  } else {
    p = raw_.allocate(size, -1);
    if (p == nullptr) {  // give the cached blocks back and try once more
      for (auto& [sz, q] : free_) {
        raw_.release(q, -1);
        ++stats_.raw_frees;
        stats_.cached_bytes -= sz;
        stats_.reserved_bytes -= sz;
      }
      free_.clear();
      p = raw_.allocate(size, -1);
    }
    RESONA_CHECK(p != nullptr) << "pinned host allocation of " << nbytes << " bytes (" << size
                               << " rounded) failed; pool: " << stats_.str();
    ++stats_.raw_allocs;
    stats_.reserved_bytes += size;
  }
  live_[static_cast<char*>(p)] = Block{got, {}};
  stats_.in_use_bytes += got;
  stats_.peak_in_use_bytes = std::max(stats_.peak_in_use_bytes, stats_.in_use_bytes);
  return p;
}

std::map<char*, PinnedHostPool::Block>::const_iterator PinnedHostPool::find_locked(
    const void* ptr) const {
  const char* c = static_cast<const char*>(ptr);
  auto it = live_.upper_bound(const_cast<char*>(c));
  if (it == live_.begin()) return live_.end();
  --it;
  return c < it->first + it->second.size ? it : live_.end();
}

bool PinnedHostPool::contains(const void* ptr) const {
  std::lock_guard<std::mutex> lock(mu_);
  return find_locked(ptr) != live_.end();
}

bool PinnedHostPool::record_stream(const void* ptr, void* stream) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = find_locked(ptr);
  if (it == live_.end()) return false;
  live_[it->first].streams.insert(stream);
  return true;
}

void PinnedHostPool::free(void* ptr) {
  if (ptr == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(static_cast<char*>(ptr));
  RESONA_CHECK(it != live_.end()) << "free of a pointer the pinned host pool did not hand out";
  Block b = std::move(it->second);
  live_.erase(it);
  stats_.in_use_bytes -= b.size;
  stats_.cached_bytes += b.size;
  if (b.streams.empty()) {
    free_.emplace(b.size, ptr);
    return;
  }
  // Copies queued on those streams may not have read (or written) the buffer yet.
  PendingBlock pb{ptr, {}};
  for (void* s : b.streams) {
    void* ev = raw_.record_event(s, -1);
    ++stats_.events_recorded;
    if (ev != nullptr) pb.events.push_back(ev);
  }
  stats_.pending_bytes += b.size;
  pending_.emplace_back(b.size, std::move(pb));
}

void PinnedHostPool::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  collect_pending_locked();
  for (auto& [size, p] : free_) {
    raw_.release(p, -1);
    ++stats_.raw_frees;
    stats_.cached_bytes -= size;
    stats_.reserved_bytes -= size;
  }
  free_.clear();
}

AllocatorStats PinnedHostPool::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

CachingAllocator& device_allocator() {
  // Never destroyed: tensors may be freed during static destruction, after the CUDA
  // runtime itself has begun shutting down.
  static CudaRawMemory* raw = new CudaRawMemory();
  static CachingAllocator* alloc = new CachingAllocator(*raw);
  return *alloc;
}

PinnedHostPool& pinned_host_pool() {
  static CudaPinnedMemory* raw = new CudaPinnedMemory();  // never destroyed, as above
  static PinnedHostPool* pool = new PinnedHostPool(*raw);
  return *pool;
}

}  // namespace resona::cuda
