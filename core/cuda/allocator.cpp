// The caching device allocator. Sizes are rounded (512 B steps up to 1 MiB, 2 MiB steps
// above) so that the same shapes every training step find their blocks again; a freed
// block goes to a per-device free list instead of cudaFree. In steady state a training
// step makes no cudaMalloc call at all (memory_stats().device_mallocs stays flat).
#include <cuda_runtime.h>

#include <map>
#include <string>
#include <mutex>
#include <unordered_map>

#include "vidgrad/core/cuda/context.h"
#include "vidgrad/core/cuda/memory.h"
#include "vidgrad/core/cuda/runtime.h"

namespace vidgrad::cuda {

namespace {

constexpr std::size_t kSmallStep = 512;
constexpr std::size_t kSmallLimit = std::size_t{1} << 20;
constexpr std::size_t kLargeStep = std::size_t{2} << 20;

std::size_t round_size(std::size_t n) {
  if (n == 0) n = 1;
  const std::size_t step = n <= kSmallLimit ? kSmallStep : kLargeStep;
  return (n + step - 1) / step * step;
}

struct DeviceCache {
  std::multimap<std::size_t, void*> free_blocks;  // by size
  std::unordered_map<void*, std::size_t> live;    // block -> rounded size
  MemoryStats stats;
};

class CachingAllocator {
 public:
  void* allocate(std::size_t nbytes, int device) {
    check_device(device, ("storage: cannot allocate " + std::to_string(nbytes) + " bytes on cuda:" +
                          std::to_string(device)).c_str());
    const std::size_t size = round_size(nbytes);
    std::lock_guard<std::mutex> lock(mu_);
    DeviceCache& cache = caches_[device];
    std::size_t block = size;
    void* ptr = take_cached(cache, size, &block);
    if (ptr == nullptr) {
      DeviceGuard guard(device);
      cudaError_t e = cudaMalloc(&ptr, size);
      if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        release_cached(cache, device);  // fragmentation: give everything back and retry once
        e = cudaMalloc(&ptr, size);
      }
      if (e != cudaSuccess) {
        cudaGetLastError();
        VG_THROW("cuda allocator: cannot allocate " << nbytes << " bytes on cuda:" << device << " ("
                                                    << cudaGetErrorString(e) << "); live tensors hold "
                                                    << cache.stats.allocated << " bytes, "
                                                    << cache.stats.reserved << " bytes reserved");
      }
      cache.stats.reserved += size;
      ++cache.stats.device_mallocs;
    }
    cache.live[ptr] = block;  // the whole block, so freeing returns all of it
    cache.stats.allocated += block;
    if (cache.stats.allocated > cache.stats.peak_allocated) cache.stats.peak_allocated = cache.stats.allocated;
    return ptr;
  }

  void free(void* ptr, int device) {
    if (ptr == nullptr) return;
    std::lock_guard<std::mutex> lock(mu_);
    DeviceCache& cache = caches_[device];
    auto it = cache.live.find(ptr);
    if (it == cache.live.end()) return;  // not ours: never happens, but never cudaFree a stranger
    cache.stats.allocated -= it->second;
    cache.free_blocks.emplace(it->second, ptr);
    cache.live.erase(it);
  }

  MemoryStats stats(int device) {
    std::lock_guard<std::mutex> lock(mu_);
    return caches_[device].stats;
  }

  void reset_peak(int device) {
    std::lock_guard<std::mutex> lock(mu_);
    caches_[device].stats.peak_allocated = caches_[device].stats.allocated;
  }

  void empty(int device) {
    check_device(device, "empty_cache");
    std::lock_guard<std::mutex> lock(mu_);
    release_cached(caches_[device], device);
  }

 private:
  // A cached block of exactly `size`, or for large sizes one at most 25% bigger; its real
  // size goes to *block.
  static void* take_cached(DeviceCache& cache, std::size_t size, std::size_t* block) {
    auto it = cache.free_blocks.lower_bound(size);
    if (it == cache.free_blocks.end()) return nullptr;
    const std::size_t slack = size <= kSmallLimit ? 0 : size / 4;
    if (it->first > size + slack) return nullptr;
    void* ptr = it->second;
    *block = it->first;
    cache.free_blocks.erase(it);
    return ptr;
  }

  static void release_cached(DeviceCache& cache, int device) {
    if (cache.free_blocks.empty()) return;
    DeviceGuard guard(device);
    // Freed blocks may still be read by queued kernels; cudaFree waits for the device.
    for (auto& [size, ptr] : cache.free_blocks) {
      cudaFree(ptr);
      cache.stats.reserved -= size;
    }
    cache.free_blocks.clear();
  }

  std::mutex mu_;
  DeviceCache caches_[64];
};

CachingAllocator& allocator() {
  static CachingAllocator* a = new CachingAllocator();  // outlives static tensors
  return *a;
}

}  // namespace

void* device_alloc(std::size_t nbytes, int device) { return allocator().allocate(nbytes, device); }
void device_free(void* ptr, int device) { allocator().free(ptr, device); }
MemoryStats memory_stats(int device) {
  check_device(device, "memory_stats");
  return allocator().stats(device);
}
void reset_peak_memory(int device) {
  check_device(device, "reset_peak_memory");
  allocator().reset_peak(device);
}
void empty_cache(int device) { allocator().empty(device); }

}  // namespace vidgrad::cuda
