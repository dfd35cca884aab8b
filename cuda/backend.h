// The CUDA device backend for core, and the streams, events and pinned host memory that
// host code uses to overlap copies with compute.
//
// Registers the backend with core (idempotent). Linking //cuda:backend registers it
// during static initialisation; code that runs during static initialisation itself
// (e.g. test registration) calls register_cuda_backend() first.
//
// Streams. Each thread has a current stream, the legacy default stream (nullptr) unless
// a StreamGuard says otherwise. All work goes to it: device allocations (the caching
// allocator keeps a pool per stream), copies, fills and memsets, and the ops' kernels
// (each op passes ops/device_util.h launch_stream() to its launchers; cuBLAS is set to
// the launcher's stream on every call). A Stream is created blocking by default, so that
// it stays ordered with the legacy default stream (CUDA's implicit synchronisation) for
// code that still launches there; non-blocking streams are for code that orders its
// work across streams with events itself.
//
// Asynchronous index checks. ops/index.cc checks CUDA index tensors on the device
// (cuda/index.h index_prepare_cuda) without the host waiting: a bad value is replaced by
// 0 for the gather that follows and reported into a per-device IndexErrorRecord in
// page-locked host memory mapped into the device. index_check_begin registers each such
// launch with the two halves of the message a synchronous check would have thrown, in a
// ring of the last kIndexCheckTable launches per device. Every point where the host waits
// for a device through this backend (copy() to the host, DeviceBackend::synchronize,
// Stream::synchronize, Event::synchronize) then reads the record's `set` word (one read of
// mapped host memory) and, when a launch has reported, resets the record and throws
//   "<head> holds V at flat position P, <tail>; found by asynchronous index check ..."
// Only the first launch that reports before that synchronisation is kept.
//
// Handles are opaque (void* = cudaStream_t / cudaEvent_t) so that this header includes
// no CUDA header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/storage.h"
#include "core/tensor.h"
#include "cuda/allocator.h"
#include "cuda/index.h"  // IndexReport

namespace resona::cuda {

void register_cuda_backend();

// ---- asynchronous index checks (see the top of this file) ----

constexpr int kIndexCheckTable = 1024;  // launches per device whose messages are kept

// Registers a check on `device` and returns where its launch reports. head: "<op>: <role> <index
// describe>"; tail: "outside [0, B) (size of dim D of <src describe>)". The first call on a device
// allocates its record and claim word.
IndexReport index_check_begin(int device, const std::string& head, const std::string& tail);

// If a check on `device` (-1: on any device) has reported a bad index, resets that
// device's record and claim word and throws its message. The synchronisation points call
// it after their wait; it costs one read of mapped host memory per device when clean.
void raise_index_errors(int device);

class Stream {
 public:
  // A new stream on `device`. non_blocking: no implicit ordering with the legacy
  // default stream (cudaStreamNonBlocking).
  explicit Stream(int device = 0, bool non_blocking = false);
  // Waits for the stream's work first, so that no allocator pool keyed by this handle
  // can be reused by a later stream that happens to get the same handle.
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  void* handle() const { return stream_; }
  int device() const { return device_; }
  void synchronize() const;
  bool query() const;  // true when all work queued so far has completed

 private:
  void* stream_ = nullptr;
  int device_ = 0;
};

// This thread's current stream (nullptr: the legacy default stream).
void* current_stream();

// Makes `stream` current for this thread (and its device the current device) until the
// guard goes out of scope; guards nest.
class StreamGuard {
 public:
  explicit StreamGuard(const Stream& stream);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  void* previous_;
  int previous_device_;
};

class Event {
 public:
  // timing: the event can be used with elapsed_ms (slightly costlier to record).
  explicit Event(bool timing = false);
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  // Captures the work queued on `stream` so far (nullptr: the legacy default stream).
  void record(void* stream);
  void record(const Stream& s) { record(s.handle()); }
  void record() { record(current_stream()); }
  // Work queued on `stream` after this call starts only once the recorded work is done
  // (the host does not wait).
  void wait(void* stream) const;
  void wait(const Stream& s) const { wait(s.handle()); }
  void synchronize() const;  // the host waits for the recorded work
  bool query() const;        // true when the recorded work has completed
  // Milliseconds from this event to `end` (both recorded with timing = true, `end`
  // completed).
  float elapsed_ms(const Event& end) const;
  void* handle() const { return event_; }

 private:
  void* event_ = nullptr;
  bool timing_;
  bool recorded_ = false;
};

// The device memory behind `t` is also used by work queued on `stream`: its block is not
// handed out again after `t`'s storage is freed until `stream` has passed that work.
void record_stream(const Tensor& t, void* stream);

// A CPU tensor in page-locked host memory from the pinned pool (contiguous). Its uploads
// to a CUDA device through copy_to/to(device) do not make the host wait: they are queued
// on the current stream, and the buffer returns to the pool only after that copy.
Tensor pinned_empty(const Shape& shape, DType dtype);

// Copies `src` into `dst` (same shape and dtype, both contiguous, one on the CPU and one
// on a CUDA device, or both on one device) on `stream` without the host waiting. A
// CPU side must be pinned (pinned_empty); it is kept from reuse until the copy is done.
// The caller keeps `src` and `dst` alive and untouched until the copy has completed
// (an event or a stream synchronize), as with cudaMemcpyAsync.
void copy_async(const Tensor& dst, const Tensor& src, void* stream);

}  // namespace resona::cuda
