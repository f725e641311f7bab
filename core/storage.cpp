// CPU memory (core/cpu_memory.h), or a block from the CUDA caching allocator (core/cuda/memory.h;
// a build without CUDA throws there).
#include "vidgrad/core/storage.h"

#include <cstdlib>
#include <new>

#include "vidgrad/core/cpu_memory.h"
#include "vidgrad/core/cuda/memory.h"
#include "vidgrad/core/error.h"

namespace vidgrad {

Storage::Storage(std::size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  switch (device.type) {
    case DeviceType::kCPU: {
      data_ = cpu_memory::allocate(nbytes);
      break;
    }
    case DeviceType::kCUDA:
      data_ = cuda::device_alloc(nbytes, device.index);
      break;
  }
}

Storage::~Storage() {
  switch (device_.type) {
    case DeviceType::kCPU: cpu_memory::release(data_, nbytes_); break;
    case DeviceType::kCUDA: cuda::device_free(data_, device_.index); break;
  }
}

}  // namespace vidgrad
