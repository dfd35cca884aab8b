// Storage: one allocation on one device, shared by every tensor that views it.
// Backends (CPU here, CUDA in cuda/) register themselves by device type; core never
// calls a device API directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace resona {

class StorageImpl;
using Storage = std::shared_ptr<StorageImpl>;

// What core needs from a device. The CUDA backend registers its implementation at
// static-initialisation time, so a binary that links cuda/ can create CUDA tensors.
class DeviceBackend {
 public:
  virtual ~DeviceBackend() = default;
  virtual void* allocate(size_t nbytes, int device_index) = 0;
  virtual void deallocate(void* ptr, size_t nbytes, int device_index) = 0;
  // Copies between this device and the host (or within the device). `dst_dev` and
  // `src_dev` say which side each pointer lives on.
  virtual void copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes) = 0;
  virtual void memset_zero(void* ptr, size_t nbytes, int device_index) = 0;
  virtual void synchronize(int device_index) = 0;
  virtual int device_count() = 0;
  // The device's marketing name ("NVIDIA H100 80GB HBM3"), for logs and peak-FLOP tables.
  virtual std::string device_name(int device_index) = 0;
  // Optional: a CPU Storage of `nbytes` in page-locked memory from which copy() uploads to
  // this device without the host waiting (the backend keeps the memory until the upload
  // has read it). nullptr: not offered.
  virtual Storage pinned_host_storage(size_t nbytes) { return nullptr; }
  // The stream (an opaque handle) that this thread's work on the device goes to: ops pass
  // it to their kernel launchers. nullptr: the device's default stream.
  virtual void* current_stream() { return nullptr; }

  // Optional kernels on strided views of this device's memory: `dst` and `src` point at
  // element [0, ..., 0], strides are in elements (0 along broadcast dims of a source).
  // Each returns nullptr when done, else why not (a static string); core adds the
  // tensors' names to the error. A backend without them refuses strided device copies.
  //
  // dst = src elementwise, converting dtypes as core/dispatch.h's convert<To, From>.
  virtual const char* strided_copy(const std::vector<int64_t>& shape, void* dst, DType dst_dtype,
                                   const std::vector<int64_t>& dst_strides, const void* src,
                                   DType src_dtype, const std::vector<int64_t>& src_strides,
                                   int device_index) {
    return "this device backend has no strided copy";
  }
  // Every element of dst = value, converted to `dtype` as convert<T>(value).
  virtual const char* strided_fill(const std::vector<int64_t>& shape, void* dst, DType dtype,
                                   const std::vector<int64_t>& strides, double value,
                                   int device_index) {
    return "this device backend has no strided fill";
  }
};

void register_backend(DeviceType type, DeviceBackend* backend);
// Throws naming the device type when no backend is linked in or no device is present.
DeviceBackend& backend_for(Device device);
bool backend_available(DeviceType type);

class StorageImpl {
 public:
  // Allocates `nbytes` on `device` through its backend.
  StorageImpl(size_t nbytes, Device device);
  // Wraps memory owned elsewhere (a memory-mapped file, a pinned buffer); `release`
  // runs when the last tensor viewing it goes away.
  StorageImpl(void* data, size_t nbytes, Device device, std::function<void()> release);
  ~StorageImpl();
  StorageImpl(const StorageImpl&) = delete;
  StorageImpl& operator=(const StorageImpl&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  std::function<void()> release_;  // empty: owned by the backend
};

// A CPU Storage of `nbytes` to stage data on its way to `device`: the backend's page-locked
// memory where it offers it (uploads from it do not make the host wait), else ordinary
// CPU memory (a CPU device, or no GPU).
Storage host_staging_storage(size_t nbytes, Device device);

}  // namespace resona
