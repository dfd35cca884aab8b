// The CUDA device backend for core: device memory (through the caching allocator, in the
// pool of the current stream), copies (contiguous ones through cudaMemcpyAsync on the
// current stream, the host waiting only where it needs the result or the source is
// pageable; strided and converting ones, and fills, through cuda/copy.h's kernels on the
// current stream), pinned host memory (the pinned pool) and the device count; and the
// Stream, StreamGuard and Event of backend.h. Linked into every binary (//cuda:backend);
// with no GPU or no driver, device_count() is 0 and CUDA tensors are refused with a
// message saying so. Also the host side of the asynchronous index checks: the per-device
// error records, the ring of launch messages, and the reports at every host wait.
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <vector>

#include "core/check.h"
#include "core/dispatch.h"
#include "core/storage.h"
#include "cuda/allocator.h"
#include "cuda/backend.h"
#include "cuda/copy.h"
#include "cuda/index.h"

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

thread_local void* t_current_stream = nullptr;

cudaStream_t cur() { return static_cast<cudaStream_t>(t_current_stream); }

Storage make_pinned_storage(size_t nbytes) {
  PinnedHostPool& pool = pinned_host_pool();
  void* p = nbytes == 0 ? nullptr : pool.allocate(nbytes);
  return std::make_shared<StorageImpl>(p, nbytes, Device::cpu(), [p, &pool] { pool.free(p); });
}

// ---- asynchronous index checks: per-device state ----

constexpr int kMaxIndexDevices = 64;

struct IndexErrors {
  IndexErrorRecord* host = nullptr;     // page-locked, mapped; the host reads it
  IndexErrorRecord* dev = nullptr;      // its device alias; the kernel writes it
  unsigned long long* claim = nullptr;  // device memory: 0, or the launch holding the record
  std::mutex mu;                        // guards next_launch and table
  int64_t next_launch = 1;
  struct Entry {
    int64_t launch = 0;  // 0: empty
    std::string head, tail;
  };
  std::vector<Entry> table = std::vector<Entry>(kIndexCheckTable);  // launch % size
};

// Created on a device's first check and kept for the life of the process (the record is
// read at every later synchronisation; the driver frees it at exit).
std::atomic<IndexErrors*> g_index_errors[kMaxIndexDevices];
std::atomic<int> g_index_devices_end{0};  // 1 + the highest device with a record
std::mutex g_index_errors_init;

// Runs f with `device` current, restoring the previous current device.
template <class F>
void on_device(int device, F&& f) {
  int previous = 0;
  check_cuda(cudaGetDevice(&previous), "cudaGetDevice");
  if (previous != device) check_cuda(cudaSetDevice(device), "cudaSetDevice");
  f();
  if (previous != device) check_cuda(cudaSetDevice(previous), "cudaSetDevice");
}

IndexErrors& index_errors_for(int device) {
  RESONA_CHECK(device >= 0 && device < kMaxIndexDevices)
      << "index check on cuda:" << device << ": device index outside [0, " << kMaxIndexDevices
      << ")";
  if (IndexErrors* e = g_index_errors[device].load(std::memory_order_acquire)) return *e;
  std::lock_guard<std::mutex> lock(g_index_errors_init);
  if (IndexErrors* e = g_index_errors[device].load(std::memory_order_acquire)) return *e;
  auto e = std::make_unique<IndexErrors>();
  on_device(device, [&] {
    void* host = nullptr;
    check_cuda(
        cudaHostAlloc(&host, sizeof(IndexErrorRecord), cudaHostAllocMapped | cudaHostAllocPortable),
        "cudaHostAlloc (index error record)");
    std::memset(host, 0, sizeof(IndexErrorRecord));
    void* dev = nullptr;
    check_cuda(cudaHostGetDevicePointer(&dev, host, 0), "cudaHostGetDevicePointer");
    void* claim = nullptr;
    check_cuda(cudaMalloc(&claim, sizeof(unsigned long long)), "cudaMalloc (index claim word)");
    // Zeroed before any kernel can see it, whichever stream that kernel runs on.
    check_cuda(cudaMemset(claim, 0, sizeof(unsigned long long)), "cudaMemset");
    check_cuda(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize");
    e->host = static_cast<IndexErrorRecord*>(host);
    e->dev = static_cast<IndexErrorRecord*>(dev);
    e->claim = static_cast<unsigned long long*>(claim);
  });
  IndexErrors* made = e.release();
  g_index_errors[device].store(made, std::memory_order_release);
  int end = g_index_devices_end.load();
  while (end < device + 1 && !g_index_devices_end.compare_exchange_weak(end, device + 1)) {
  }
  return *made;
}

void raise_index_error_of(int device, IndexErrors& e) {
  volatile IndexErrorRecord* r = e.host;
  if (r->set == 0) return;                              // the normal path
  std::atomic_thread_fence(std::memory_order_acquire);  // the fields were written before set
  const int64_t launch = r->launch, pos = r->pos, value = r->value, bound = r->bound;
  // Reset: the record first, then the claim word, so that no launch writes the record
  // before it is clear. A launch still running may claim it afterwards: its error is
  // reported at a later synchronisation.
  r->launch = 0;
  r->pos = 0;
  r->value = 0;
  r->bound = 0;
  r->set = 0;
  std::atomic_thread_fence(std::memory_order_seq_cst);
  on_device(device, [&] {
    check_cuda(cudaMemset(e.claim, 0, sizeof(unsigned long long)), "cudaMemset (index claim)");
    check_cuda(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize");
  });
  std::string head, tail;
  bool known = false;
  {
    std::lock_guard<std::mutex> lock(e.mu);
    const IndexErrors::Entry& entry = e.table[launch % kIndexCheckTable];
    if (entry.launch == launch) {
      head = entry.head;
      tail = entry.tail;
      known = true;
    }
  }
  std::ostringstream msg;
  if (known) {
    msg << head << " holds " << value << " at flat position " << pos << ", " << tail;
  } else {
    msg << "an index tensor checked by launch " << launch << " on cuda:" << device
        << " (no longer among the last " << kIndexCheckTable
        << " index checks of that device, so its op and tensors are not known) holds " << value
        << " at flat position " << pos << ", outside [0, " << bound << ")";
  }
  msg << "; found by asynchronous index check " << launch << " on cuda:" << device
      << " and reported at the first synchronisation after it (later bad indices before "
         "that synchronisation are not reported)";
  RESONA_FAIL() << msg.str();
}

class CudaBackend final : public DeviceBackend {
 public:
  void* allocate(size_t nbytes, int device_index) override {
    if (nbytes == 0) return nullptr;
    return device_allocator().allocate(nbytes, device_index, t_current_stream);
  }
  void deallocate(void* ptr, size_t, int) override { device_allocator().free(ptr); }
  void copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t n) override {
    if (n == 0) return;
    cudaStream_t s = cur();
    if (src_dev.is_cpu() && pinned_host_pool().record_stream(src, s)) {
      // Upload from the pinned pool: queued; the pool keeps the buffer until s has read it.
      check_cuda(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync");
      return;
    }
    cudaMemcpyKind kind = dst_dev.is_cpu()   ? cudaMemcpyDeviceToHost
                          : src_dev.is_cpu() ? cudaMemcpyHostToDevice
                                             : cudaMemcpyDeviceToDevice;
    check_cuda(cudaMemcpyAsync(dst, src, n, kind, s), "cudaMemcpyAsync");
    // The caller reads a host destination on return. A pageable host source has been
    // staged when cudaMemcpyAsync returns; device to device stays queued.
    if (kind == cudaMemcpyDeviceToHost) {
      check_cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize");
      raise_index_errors(src_dev.index);
    }
  }
  void memset_zero(void* ptr, size_t n, int device_index) override {
    if (n == 0) return;
    check_cuda(cudaSetDevice(device_index), "cudaSetDevice");
    check_cuda(cudaMemsetAsync(ptr, 0, n, cur()), "cudaMemsetAsync");
  }
  void* current_stream() override { return cuda::current_stream(); }
  Storage pinned_host_storage(size_t nbytes) override {
    if (device_count() == 0) return nullptr;
    return make_pinned_storage(nbytes);
  }
  void synchronize(int device_index) override {
    check_cuda(cudaSetDevice(device_index), "cudaSetDevice");
    check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    raise_index_errors(device_index);
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
    return copy_fwd_cuda(p, t_current_stream);
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
    return fill_fwd_cuda(p, t_current_stream);
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

// ---- asynchronous index checks ----

IndexReport index_check_begin(int device, const std::string& head, const std::string& tail) {
  IndexErrors& e = index_errors_for(device);
  std::lock_guard<std::mutex> lock(e.mu);
  const int64_t launch = e.next_launch++;
  IndexErrors::Entry& entry = e.table[launch % kIndexCheckTable];
  entry.launch = launch;
  entry.head.assign(head);  // reuses the slot's capacity
  entry.tail.assign(tail);
  return {launch, e.dev, e.claim};
}

void raise_index_errors(int device) {
  if (device >= 0) {
    if (device >= kMaxIndexDevices) return;
    if (IndexErrors* e = g_index_errors[device].load(std::memory_order_acquire)) {
      raise_index_error_of(device, *e);
    }
    return;
  }
  const int end = g_index_devices_end.load(std::memory_order_acquire);
  for (int d = 0; d < end; ++d) {
    if (IndexErrors* e = g_index_errors[d].load(std::memory_order_acquire)) {
      raise_index_error_of(d, *e);
    }
  }
}

// ---- streams and events ----

Stream::Stream(int device, bool non_blocking) : device_(device) {
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  cudaStream_t s = nullptr;
  check_cuda(
      cudaStreamCreateWithFlags(&s, non_blocking ? cudaStreamNonBlocking : cudaStreamDefault),
      "cudaStreamCreateWithFlags");
  stream_ = s;
}

Stream::~Stream() {
  auto s = static_cast<cudaStream_t>(stream_);
  cudaStreamSynchronize(s);  // no throw from a destructor; errors surface at the next call
  cudaStreamDestroy(s);
}

void Stream::synchronize() const {
  check_cuda(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)), "cudaStreamSynchronize");
  raise_index_errors(device_);
}

bool Stream::query() const {
  cudaError_t err = cudaStreamQuery(static_cast<cudaStream_t>(stream_));
  if (err == cudaErrorNotReady) return false;
  check_cuda(err, "cudaStreamQuery");
  return true;
}

void* current_stream() { return t_current_stream; }

StreamGuard::StreamGuard(const Stream& stream) : previous_(t_current_stream) {
  check_cuda(cudaGetDevice(&previous_device_), "cudaGetDevice");
  check_cuda(cudaSetDevice(stream.device()), "cudaSetDevice");
  t_current_stream = stream.handle();
}

StreamGuard::~StreamGuard() {
  t_current_stream = previous_;
  cudaSetDevice(previous_device_);
}

Event::Event(bool timing) : timing_(timing) {
  cudaEvent_t ev = nullptr;
  check_cuda(cudaEventCreateWithFlags(&ev, timing ? cudaEventDefault : cudaEventDisableTiming),
             "cudaEventCreateWithFlags");
  event_ = ev;
}

Event::~Event() { cudaEventDestroy(static_cast<cudaEvent_t>(event_)); }

void Event::record(void* stream) {
  check_cuda(cudaEventRecord(static_cast<cudaEvent_t>(event_), static_cast<cudaStream_t>(stream)),
             "cudaEventRecord");
  recorded_ = true;
}

void Event::wait(void* stream) const {
  RESONA_CHECK(recorded_) << "Event::wait on an event that was never recorded";
  check_cuda(
      cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), static_cast<cudaEvent_t>(event_), 0),
      "cudaStreamWaitEvent");
}

void Event::synchronize() const {
  check_cuda(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)), "cudaEventSynchronize");
  raise_index_errors(-1);  // the event does not know its device
}

bool Event::query() const {
  cudaError_t err = cudaEventQuery(static_cast<cudaEvent_t>(event_));
  if (err == cudaErrorNotReady) return false;
  check_cuda(err, "cudaEventQuery");
  return true;
}

float Event::elapsed_ms(const Event& end) const {
  RESONA_CHECK(timing_ && end.timing_) << "Event::elapsed_ms needs two events created with timing";
  RESONA_CHECK(recorded_ && end.recorded_) << "Event::elapsed_ms on an event never recorded";
  float ms = 0;
  check_cuda(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(event_),
                                  static_cast<cudaEvent_t>(end.event_)),
             "cudaEventElapsedTime");
  return ms;
}

void record_stream(const Tensor& t, void* stream) {
  RESONA_CHECK(t.device().is_cuda())
      << "record_stream: " << t.describe() << " is not on a CUDA device";
  device_allocator().record_stream(t.storage()->data(), stream);
}

Tensor pinned_empty(const Shape& shape, DType dtype) {
  const size_t nbytes = shape_numel(shape) * dtype_size(dtype);
  return Tensor(std::make_shared<TensorImpl>(make_pinned_storage(nbytes), shape,
                                             contiguous_strides(shape), 0, dtype));
}

void copy_async(const Tensor& dst, const Tensor& src, void* stream) {
  RESONA_CHECK(dst.shape() == src.shape() && dst.dtype() == src.dtype())
      << "copy_async: destination " << dst.describe() << " and source " << src.describe()
      << " differ in shape or dtype";
  RESONA_CHECK(dst.is_contiguous() && src.is_contiguous())
      << "copy_async: " << dst.describe() << " and " << src.describe() << " must be contiguous";
  const bool dst_cpu = dst.device().is_cpu(), src_cpu = src.device().is_cpu();
  RESONA_CHECK(!(dst_cpu && src_cpu))
      << "copy_async: " << src.describe() << " -> " << dst.describe() << " has no CUDA side";
  RESONA_CHECK(dst_cpu || src_cpu || dst.device() == src.device())
      << "copy_async: " << src.describe() << " -> " << dst.describe()
      << " crosses two CUDA devices";
  if (dst.numel() == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  for (const Tensor* t : {&dst, &src}) {
    if (t->device().is_cpu()) {
      RESONA_CHECK(pinned_host_pool().record_stream(t->raw_data(), s))
          << "copy_async: host tensor " << t->describe()
          << " is not in pinned memory (make it with cuda::pinned_empty)";
    } else {
      device_allocator().record_stream(t->storage()->data(), s);
    }
  }
  const cudaMemcpyKind kind = dst_cpu   ? cudaMemcpyDeviceToHost
                              : src_cpu ? cudaMemcpyHostToDevice
                                        : cudaMemcpyDeviceToDevice;
  check_cuda(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), dst.nbytes(), kind, s),
             "cudaMemcpyAsync");
}

}  // namespace resona::cuda
