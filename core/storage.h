// Refcounted raw memory behind one or more tensors (views share a Storage).
#pragma once

#include <cstddef>
#include <memory>

#include "vidgrad/core/device.h"

namespace vidgrad {

// CPU allocations are 64-byte aligned (one cache line, one AVX-512 register) so kernels
// may use aligned loads on the base pointer. Memory is not initialised.
class Storage {
 public:
  Storage(std::size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  std::size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  std::size_t nbytes_ = 0;
  Device device_;
};

inline constexpr std::size_t kCpuAlignment = 64;

}  // namespace vidgrad
