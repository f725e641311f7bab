// Aligned CPU allocation; other devices are rejected until their backend is built.
#include "vidgrad/core/storage.h"

#include <cstdlib>
#include <new>

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
      VG_THROW("storage: cannot allocate on " << device
                                              << ": this build of vidgrad has no CUDA backend");
  }
}

Storage::~Storage() {
  if (device_.type == DeviceType::kCPU) std::free(data_);
}

}  // namespace vidgrad
