// The caching allocator's policy, on host memory (runs everywhere), and its steady
// state on a GPU.
#include <cstdlib>
#include <vector>

#include "cuda/allocator.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

// Host memory with an optional capacity, counting what is outstanding.
class HostMemory final : public cuda::RawMemory {
 public:
  explicit HostMemory(size_t capacity = SIZE_MAX) : capacity_(capacity) {}
  void* allocate(size_t n, int) override {
    if (outstanding_ + n > capacity_) return nullptr;
    outstanding_ += n;
    void* p = std::malloc(n);
    sizes_.push_back({p, n});
    return p;
  }
  void release(void* p, int) override {
    for (auto it = sizes_.begin(); it != sizes_.end(); ++it) {
      if (it->first == p) {
        outstanding_ -= it->second;
        sizes_.erase(it);
        break;
      }
    }
    std::free(p);
  }
  size_t outstanding() const { return outstanding_; }

 private:
  size_t capacity_;
  size_t outstanding_ = 0;
  std::vector<std::pair<void*, size_t>> sizes_;
};

}  // namespace

TEST_CASE("caching allocator: sizes round to 512 B below 1 MiB and to 2 MiB above") {
  CHECK(cuda::CachingAllocator::round_size(0) == 512);
  CHECK(cuda::CachingAllocator::round_size(1) == 512);
  CHECK(cuda::CachingAllocator::round_size(513) == 1024);
  CHECK(cuda::CachingAllocator::round_size((1 << 20) - 1) == (1 << 20));
  CHECK(cuda::CachingAllocator::round_size((1 << 20) + 1) == (2 << 20));
  CHECK(cuda::CachingAllocator::round_size((5 << 20)) == (6 << 20));
}

TEST_CASE("caching allocator: a repeated step reaches a steady state with no raw allocations") {
  HostMemory raw;
  cuda::CachingAllocator alloc(raw);
  const std::vector<size_t> step = {1000, 70000, 3 << 20, 512, 9 << 20, 1000};
  for (int iter = 0; iter < 5; ++iter) {
    std::vector<void*> ptrs;
    for (size_t n : step) ptrs.push_back(alloc.allocate(n, 0));
    for (void* p : ptrs) alloc.free(p);
    if (iter == 0) {
      CHECK(alloc.stats().raw_allocs == step.size());
    }
  }
  cuda::AllocatorStats s = alloc.stats();
  CHECK(s.raw_allocs == step.size());  // nothing new after the first step
  CHECK(s.cache_hits == 4 * step.size());
  CHECK(s.in_use_bytes == 0);
  CHECK(s.cached_bytes == s.reserved_bytes);
  CHECK(s.reserved_bytes == raw.outstanding());
  alloc.empty_cache();
  CHECK(alloc.stats().reserved_bytes == 0);
  CHECK(raw.outstanding() == 0);
}

TEST_CASE("caching allocator: a much larger cached block is not wasted on a small request") {
  HostMemory raw;
  cuda::CachingAllocator alloc(raw);
  void* big = alloc.allocate(64 << 20, 0);
  alloc.free(big);
  void* small = alloc.allocate(4 << 20, 0);
  CHECK(small != big);
  CHECK(alloc.stats().raw_allocs == 2);
  alloc.free(small);
  void* again = alloc.allocate(60 << 20, 0);  // within a quarter of 64 MiB: reused
  CHECK(again == big);
  alloc.free(again);
}

TEST_CASE("caching allocator: out of memory releases the cache and retries, then fails clearly") {
  HostMemory raw(8 << 20);
  cuda::CachingAllocator alloc(raw);
  void* a = alloc.allocate(6 << 20, 0);
  alloc.free(a);                         // cached, still held from the raw source
  void* b = alloc.allocate(7 << 20, 0);  // 8 MiB rounded: fits only after the cache is dropped
  CHECK(b != nullptr);
  CHECK(alloc.stats().raw_frees == 1);
  CHECK_THROWS_WITH_AS(alloc.allocate(4 << 20, 0), doctest::Contains("out of memory on cuda:0"),
                       Error);
  alloc.free(b);
}

TEST_CASE("caching allocator: blocks are kept per device and per stream") {
  HostMemory raw;
  cuda::CachingAllocator alloc(raw);
  int s1 = 0, s2 = 0;
  void* a = alloc.allocate(4096, 0, &s1);
  alloc.free(a);
  void* b = alloc.allocate(4096, 0, &s2);
  CHECK(b != a);
  void* c = alloc.allocate(4096, 1, &s1);
  CHECK(c != a);
  void* d = alloc.allocate(4096, 0, &s1);
  CHECK(d == a);
  CHECK_THROWS_WITH_AS(alloc.free(reinterpret_cast<void*>(0x10)),
                       doctest::Contains("did not hand out"), Error);
  for (void* p : {b, c, d}) alloc.free(p);
}

RESONA_GPU_TEST("device allocator: repeated tensor creation makes no new cudaMalloc") {
  Generator gen(3);
  auto step = [&] {
    Tensor a = zeros({1000, 37}, DType::kFloat32, Device::cuda());
    Tensor b = zeros({5 << 20}, DType::kFloat32, Device::cuda());
    Tensor c = zeros({3}, DType::kBFloat16, Device::cuda());
  };
  step();
  const uint64_t raw = cuda::device_allocator().stats().raw_allocs;
  for (int i = 0; i < 10; ++i) step();
  CHECK(cuda::device_allocator().stats().raw_allocs == raw);
}

}  // namespace resona::testing
