// Streams, events, cross-stream safety of the caching allocator, the pinned host pool and
// asynchronous copies. The policy cases run on the host with a fake memory source whose
// events complete when the test says so; the others need a GPU.
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "core/storage.h"
#include "cuda/allocator.h"
#include "cuda/backend.h"
#include "ops/determinism.h"
#include "ops/ops.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

// Host memory whose events are tokens that complete only when complete_all() is called.
class FakeStreamMemory final : public cuda::RawMemory {
 public:
  void* allocate(size_t n, int) override {
    ++allocs;
    return std::malloc(n);
  }
  void release(void* p, int) override { std::free(p); }
  void* record_event(void* stream, int) override {
    auto* ev = new int(0);
    recorded[ev] = stream;
    return ev;
  }
  bool event_done(void* ev) override { return *static_cast<int*>(ev) != 0; }
  void destroy_event(void* ev) override {
    recorded.erase(ev);
    delete static_cast<int*>(ev);
  }
  void complete_all() {
    for (auto& [ev, s] : recorded) *static_cast<int*>(ev) = 1;
  }
  int allocs = 0;
  std::map<void*, void*> recorded;  // event -> stream
};

void* const kStreamA = reinterpret_cast<void*>(0x1000);
void* const kStreamB = reinterpret_cast<void*>(0x2000);

}  // namespace

TEST_CASE("caching allocator: a block freed while another stream uses it waits for that stream") {
  FakeStreamMemory raw;
  cuda::CachingAllocator alloc(raw);
  void* x = alloc.allocate(4096, 0, kStreamA);
  alloc.record_stream(x, kStreamB);
  alloc.record_stream(x, kStreamA);  // its own stream: nothing to wait for
  alloc.free(x);
  REQUIRE(raw.recorded.size() == 1);
  CHECK(raw.recorded.begin()->second == kStreamB);
  CHECK(alloc.stats().pending_bytes == 4096);
  // B has not passed the event: the same-size request on A gets fresh memory.
  void* y = alloc.allocate(4096, 0, kStreamA);
  CHECK(y != x);
  CHECK(raw.allocs == 2);
  raw.complete_all();
  // Now x is back in A's pool (and only there).
  void* on_b = alloc.allocate(4096, 0, kStreamB);
  CHECK(on_b != x);
  void* z = alloc.allocate(4096, 0, kStreamA);
  CHECK(z == x);
  CHECK(alloc.stats().pending_bytes == 0);
  CHECK(alloc.stats().events_recorded == 1);
  for (void* p : {y, on_b, z}) alloc.free(p);
}

TEST_CASE("caching allocator: a block used only on its own stream is reused at once") {
  FakeStreamMemory raw;
  cuda::CachingAllocator alloc(raw);
  void* x = alloc.allocate(3 << 20, 0, kStreamA);
  alloc.free(x);
  CHECK(raw.recorded.empty());
  CHECK(alloc.allocate(3 << 20, 0, kStreamA) == x);
  CHECK(raw.allocs == 1);
  alloc.free(x);
}

TEST_CASE("pinned host pool: steady state makes no raw allocations; in-flight buffers wait") {
  FakeStreamMemory raw;
  cuda::PinnedHostPool pool(raw);
  const std::vector<size_t> step = {4096, 300000, 5 << 20};
  for (int iter = 0; iter < 4; ++iter) {
    std::vector<void*> ps;
    for (size_t n : step) ps.push_back(pool.allocate(n));
    for (void* p : ps) pool.free(p);  // no copy recorded: reusable at once
  }
  CHECK(raw.allocs == static_cast<int>(step.size()));
  CHECK(pool.stats().raw_allocs == step.size());
  CHECK(pool.stats().cache_hits == 3 * step.size());

  char* p = static_cast<char*>(pool.allocate(4096));
  CHECK(pool.contains(p + 4095));  // an address inside the block finds it
  CHECK(pool.record_stream(p + 100, kStreamA));
  int dummy = 0;
  CHECK_FALSE(pool.record_stream(&dummy, kStreamA));  // not pinned-pool memory
  pool.free(p);
  CHECK_FALSE(pool.contains(p));
  void* q = pool.allocate(4096);  // the copy from p may still be running: not p
  CHECK(q != p);
  raw.complete_all();
  void* r = pool.allocate(4096);
  CHECK(r == p);
  pool.free(q);
  pool.free(r);
  pool.empty_cache();
  CHECK(pool.stats().reserved_bytes == 0);
}

namespace {

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = u(gen);
  return v;
}

}  // namespace

RESONA_GPU_TEST("cuda streams: work on A, event, wait on B sees A's result") {
  cuda::Stream a(0, /*non_blocking=*/true), b(0, /*non_blocking=*/true);
  const int64_t n = int64_t{64} << 20;  // 256 MiB of float32: long enough to race
  Tensor x, y;
  Tensor host = cuda::pinned_empty({n}, DType::kFloat32);
  {
    cuda::StreamGuard g(a);
    CHECK(cuda::current_stream() == a.handle());
    x = full({n}, 3.0, DType::kFloat32, Device::cuda());  // fill kernel queued on A
    y = empty({n}, DType::kFloat32, Device::cuda());
    cuda::copy_async(y, x, a.handle());
  }
  CHECK(cuda::current_stream() == nullptr);
  cuda::Event done;
  done.record(a);
  done.wait(b);
  cuda::copy_async(host, y, b.handle());
  b.synchronize();
  CHECK(done.query());
  const float* h = host.data<float>();
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad += h[i] != 3.0f;
  CHECK(bad == 0);

  cuda::Event t0(true), t1(true);
  t0.record(a);
  {
    cuda::StreamGuard g(a);
    cuda::copy_async(y, x, a.handle());
  }
  t1.record(a);
  t1.synchronize();
  const float ms = t0.elapsed_ms(t1);
  CHECK(ms > 0.0f);
  MESSAGE("256 MiB device copy on a stream: " << ms << " ms");
}

RESONA_GPU_TEST(
    "cuda allocator: a block freed on A while B still reads it is not handed out early") {
  cuda::Stream a(0, true), b(0, true);
  const int64_t big = int64_t{128} << 20;  // 512 MiB: B's copies take milliseconds
  cuda::StreamGuard g(a);
  Tensor src = full({big}, 1.0, DType::kFloat32, Device::cuda());
  Tensor dst = empty({big}, DType::kFloat32, Device::cuda());
  Tensor x = full({1 << 20}, 2.0, DType::kFloat32, Device::cuda());
  Tensor x_copy = empty({1 << 20}, DType::kFloat32, Device::cuda());
  a.synchronize();
  // B: a long copy, then a read of x.
  for (int i = 0; i < 8; ++i) cuda::copy_async(dst, src, b.handle());
  cuda::copy_async(x_copy, x, b.handle());  // records x's use on B
  void* x_ptr = x.storage()->data();
  x = Tensor();  // freed on A's side while B has not reached the read
  Tensor again = empty({1 << 20}, DType::kFloat32, Device::cuda());
  const bool b_busy = !b.query();
  INFO("B still busy when the block was requested again: " << b_busy);
  if (b_busy) CHECK(again.storage()->data() != x_ptr);
  // Overwrite whatever was handed out; B's read of x must still see 2.
  again.fill_(5.0);
  b.synchronize();
  a.synchronize();
  const std::vector<float> got = x_copy.to_vector<float>();
  int64_t bad = 0;
  for (float v : got) bad += v != 2.0f;
  CHECK(bad == 0);
  // Once B has passed the read, the block is reused on A.
  again = Tensor();
  Tensor reuse = empty({1 << 20}, DType::kFloat32, Device::cuda());
  const cuda::AllocatorStats s = cuda::device_allocator().stats();
  CHECK(s.events_recorded > 0);
  MESSAGE("B busy when x's block was requested again: " << b_busy << "; allocator: " << s.str());
}

RESONA_GPU_TEST("pinned pool: uploads reuse cached buffers (no cudaHostAlloc after warm-up)") {
  const std::vector<int64_t> sizes = {1000, 65536, 3 << 20};
  auto step = [&](uint32_t seed) {
    for (int64_t n : sizes) {
      std::vector<float> v = random_floats(static_cast<size_t>(n), seed + static_cast<uint32_t>(n));
      Storage st = host_staging_storage(v.size() * 4, Device::cuda());
      REQUIRE(cuda::pinned_host_pool().contains(st->data()));
      std::memcpy(st->data(), v.data(), v.size() * 4);
      Tensor host(std::make_shared<TensorImpl>(st, Shape{n}, Shape{1}, 0, DType::kFloat32));
      Tensor dev = host.to(Device::cuda());  // queued; the buffer is held until it is read
      host = Tensor();
      st.reset();
      const std::vector<float> back = dev.to_vector<float>();
      CHECK(std::memcmp(back.data(), v.data(), v.size() * 4) == 0);
    }
  };
  step(1);
  step(2);
  const cuda::AllocatorStats warm = cuda::pinned_host_pool().stats();
  for (uint32_t i = 0; i < 20; ++i) step(10 + i);
  const cuda::AllocatorStats after = cuda::pinned_host_pool().stats();
  CHECK(after.raw_allocs == warm.raw_allocs);
  CHECK(after.cache_hits >= warm.cache_hits + 20 * sizes.size());
  MESSAGE("pinned pool: " << after.str());
}

RESONA_GPU_TEST(
    "async copies equal synchronous ones (host to device, device to host, on a stream)") {
  cuda::Stream s(0, true);
  for (int64_t n : {int64_t{1}, int64_t{4097}, int64_t{5} << 20}) {
    INFO("n = " << n);
    const std::vector<float> v =
        random_floats(static_cast<size_t>(n), 7u + static_cast<uint32_t>(n));
    Tensor pageable = from_vector(v, {n});
    Tensor sync_dev = pageable.to(Device::cuda());
    Tensor pinned = cuda::pinned_empty({n}, DType::kFloat32);
    std::memcpy(pinned.raw_data(), v.data(), v.size() * 4);
    Tensor async_dev;
    Tensor back = cuda::pinned_empty({n}, DType::kFloat32);
    {
      cuda::StreamGuard g(s);
      async_dev = empty({n}, DType::kFloat32, Device::cuda());
      cuda::copy_async(async_dev, pinned, s.handle());
      cuda::copy_async(back, async_dev, s.handle());
    }
    s.synchronize();
    CHECK(std::memcmp(back.raw_data(), v.data(), v.size() * 4) == 0);
    const std::vector<float> a = async_dev.to_vector<float>(), b = sync_dev.to_vector<float>();
    CHECK(std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
    // The pinned tensor's own upload path (copy_to) gives the same bytes as well.
    const std::vector<float> c = pinned.to(Device::cuda()).to_vector<float>();
    CHECK(std::memcmp(c.data(), v.data(), v.size() * 4) == 0);
  }
  // Refusals name the tensor.
  Tensor pageable = from_vector(std::vector<float>{1, 2}, {2});
  Tensor dev = empty({2}, DType::kFloat32, Device::cuda());
  CHECK_THROWS_WITH_AS(cuda::copy_async(dev, pageable, s.handle()),
                       doctest::Contains("not in pinned memory"), std::exception);
}

}  // namespace resona::testing

namespace resona::testing {

RESONA_GPU_TEST("pinned upload: the host does not wait for queued GPU work (timing, no bound)") {
  // ~10 ms of device copies queued on the legacy stream, then a 16 MiB upload of batch-like
  // int64 ids: how long the host spends in the upload call, pageable vs pinned.
  const int64_t big = int64_t{128} << 20, n = int64_t{2} << 20;
  Tensor src = full({big}, 1.0, DType::kFloat32, Device::cuda());
  Tensor dst = empty({big}, DType::kFloat32, Device::cuda());
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = (i * 7919) % 32000;
  auto host_ms = [&](bool pinned) {
    backend_for(Device::cuda()).synchronize(0);
    for (int i = 0; i < 8; ++i) copy_into(dst, src);
    const auto t0 = std::chrono::steady_clock::now();
    Tensor dev;
    if (pinned) {
      Storage st = host_staging_storage(ids.size() * 8, Device::cuda());
      std::memcpy(st->data(), ids.data(), ids.size() * 8);
      dev = Tensor(std::make_shared<TensorImpl>(st, Shape{n}, Shape{1}, 0, DType::kInt64))
                .to(Device::cuda());
    } else {
      dev = from_vector(ids, {n}).to(Device::cuda());
    }
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    const std::vector<int64_t> back = dev.to_vector<int64_t>();
    CHECK(back == ids);
    return ms;
  };
  host_ms(true);
  host_ms(false);  // warm-up of both paths
  const double pageable = host_ms(false), pinned = host_ms(true);
  MESSAGE("host time of a 16 MiB upload behind ~8 queued 512 MiB copies: pageable "
          << pageable << " ms, pinned " << pinned << " ms");
}

namespace {

// A small training-like chain on the GPU (embedding, matmul through cuBLAS, rms_norm,
// silu, softmax, cross-entropy), forward and backward; returns the loss and every
// gradient as host values. Everything it creates goes to the thread's current stream.
std::vector<std::vector<float>> op_chain(const std::vector<float>& w_emb_host,
                                         const std::vector<float>& w_out_host,
                                         const std::vector<int64_t>& ids_host) {
  const int64_t V = 512, D = 200, N = 300;
  Tensor w_emb = from_vector(w_emb_host, {V, D}).to(Device::cuda());
  Tensor w_out = from_vector(w_out_host, {D, V}).to(Device::cuda());
  Tensor g = full({D}, 1.5, DType::kFloat32, Device::cuda());
  for (Tensor* t : {&w_emb, &w_out, &g}) t->set_requires_grad(true);
  Tensor ids = from_vector(ids_host, {N}).to(Device::cuda());
  Tensor h = silu(rms_norm(embedding(w_emb, ids), g));
  Tensor logits = matmul(h, w_out);
  Tensor loss = cross_entropy(logits, ids) + sum(softmax(logits)) * 1e-3;
  loss.backward();
  return {loss.to_vector<float>(), w_emb.grad().to_vector<float>(), w_out.grad().to_vector<float>(),
          g.grad().to_vector<float>()};
}

}  // namespace

RESONA_GPU_TEST(
    "ops launch on the current stream: a chain under a guard on a non-blocking "
    "stream equals the default stream's, bit for bit") {
  std::mt19937_64 rng(20261127);
  std::normal_distribution<float> normal(0.f, 0.05f);
  std::uniform_int_distribution<int64_t> id(0, 511);
  std::vector<float> w_emb(512 * 200), w_out(200 * 512);
  for (float& v : w_emb) v = normal(rng);
  for (float& v : w_out) v = normal(rng);
  std::vector<int64_t> ids(300);
  for (int64_t& v : ids) v = id(rng);
  DeterministicGuard det(true);  // the embedding's d_weight by sorted sums, not atomics
  const auto want = op_chain(w_emb, w_out, ids);
  // A non-blocking stream is not ordered with the default stream: a kernel of the chain
  // that went to the default stream instead would race with its inputs' producers here.
  cuda::Stream s(0, /*non_blocking=*/true);
  std::vector<std::vector<float>> got;
  {
    cuda::StreamGuard guard(s);
    got = op_chain(w_emb, w_out, ids);
  }
  s.synchronize();
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("output " << i << " (loss, d_w_emb, d_w_out, d_g)");
    CHECK(got[i] == want[i]);
  }
}

}  // namespace resona::testing
