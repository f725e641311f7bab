// Aligned CPU allocation, or a block from the CUDA caching allocator (core/cuda/memory.h;
// a build without CUDA throws there).
#include "vidgrad/core/storage.h"

#include <cstdlib>
#include <new>

#include "vidgrad/core/cuda/memory.h"
#include "vidgrad/core/error.h"

namespace vidgrad {

Storage::Storage(std::size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  switch (device.type) {
    case DeviceType::kCPU: {
      // aligned_alloc needs a size that is a multiple of the alignment.
      const std::size_t rounded = (nbytes + kCpuAlignment - 1) / kCpuAlignment * kCpuAlignment;
      data_ = std::aligned_alloc(kCpuAlignment, rounded == 0 ? kCpuAlignment : rounded);
      VG_CHECK(data_ != nullptr, "storage: out of memory allocating " << nbytes << " bytes on cpu");
      break;
    }
    case DeviceType::kCUDA:
      data_ = cuda::device_alloc(nbytes, device.index);
      break;
  }
}

Storage::~Storage() {
  switch (device_.type) {
    case DeviceType::kCPU: std::free(data_); break;
    case DeviceType::kCUDA: cuda::device_free(data_, device_.index); break;
  }
}

}  // namespace vidgrad
