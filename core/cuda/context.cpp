// Devices, streams and the host <-> device copies.
#include <cuda_runtime.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <mutex>

#include "vidgrad/core/cuda/context.h"
#include "vidgrad/core/cuda/memory.h"
#include "vidgrad/core/cuda/runtime.h"

namespace vidgrad::cuda {

namespace {

std::atomic<bool> g_allow_tf32{false};
std::atomic<bool> g_host_emulation{false};

struct DeviceStreams {
  cudaStream_t compute = nullptr;
};

// Streams are made on first use and live as long as the process.
struct Streams {
  std::once_flag once[64];
  DeviceStreams s[64];
};
Streams& streams() {
  static Streams* st = new Streams();  // never destroyed: streams outlive static tensors
  return *st;
}

DeviceStreams& streams_for(int device) {
  check_device(device, "cuda streams");
  Streams& st = streams();
  std::call_once(st.once[device], [&] {
    DeviceGuard guard(device);
    VG_CUDA_CHECK(cudaStreamCreateWithFlags(&st.s[device].compute, cudaStreamNonBlocking));
  });
  return st.s[device];
}

// Pinned staging buffers for non-blocking uploads. A buffer is free again once the event
// recorded after its copy has completed.
struct PinnedBuffer {
  void* ptr = nullptr;
  std::size_t size = 0;
  cudaEvent_t done = nullptr;
  bool busy = false;  // between acquire() and the event's record
};

class PinnedPool {
 public:
  PinnedBuffer* acquire(std::size_t nbytes) {
    std::lock_guard<std::mutex> lock(mu_);
    for (PinnedBuffer& b : buffers_)
      if (!b.busy && b.size >= nbytes && cudaEventQuery(b.done) == cudaSuccess) {
        b.busy = true;
        return &b;
      }
    PinnedBuffer b;
    b.size = nbytes;
    VG_CUDA_CHECK(cudaHostAlloc(&b.ptr, nbytes, cudaHostAllocDefault));
    VG_CUDA_CHECK(cudaEventCreateWithFlags(&b.done, cudaEventDisableTiming));
    b.busy = true;
    buffers_.push_back(b);
    return &buffers_.back();
  }

  // Call after recording b->done.
  void release(PinnedBuffer* b) {
    std::lock_guard<std::mutex> lock(mu_);
    b->busy = false;
  }

 private:
  std::mutex mu_;
  std::deque<PinnedBuffer> buffers_;  // deque: pointers stay valid as it grows
};

PinnedPool& pinned_pool() {
  static PinnedPool* pool = new PinnedPool();
  return *pool;
}

}  // namespace

bool built_with_cuda() { return true; }

int device_count() {
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no driver" status
      return 0;
    }
    return n;
  }();
  return count;
}

bool is_available() { return device_count() > 0; }

std::string unavailable_reason() {
  if (is_available()) return "";
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  cudaGetLastError();
  return std::string("no CUDA device is visible (cudaGetDeviceCount: ") + cudaGetErrorString(e) + ")";
}

std::string device_name(int device) {
  check_device(device, "device_name");
  cudaDeviceProp prop{};
  VG_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

void check_device(int device, const char* who) {
  const int n = device_count();
  VG_CHECK(n > 0, who << ": " << unavailable_reason());
  VG_CHECK(device >= 0 && device < n && device < 64,
           who << ": device cuda:" << device << " does not exist (" << n << " visible)");
}

DeviceGuard::DeviceGuard(int device) {
  VG_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device) VG_CUDA_CHECK(cudaSetDevice(device));
}

DeviceGuard::~DeviceGuard() { cudaSetDevice(previous_); }

cudaStream_t compute_stream(int device) { return streams_for(device).compute; }

void synchronize(int device) { VG_CUDA_CHECK(cudaStreamSynchronize(streams_for(device).compute)); }

void set_allow_tf32(bool allow) { g_allow_tf32 = allow; }
void set_host_emulation(bool on) { g_host_emulation = on; }
bool host_emulation() { return g_host_emulation; }
bool allow_tf32() { return g_allow_tf32; }

void copy_to_device(void* dst, const void* src, std::size_t nbytes, int device, bool non_blocking) {
  if (nbytes == 0) return;
  DeviceGuard guard(device);
  cudaStream_t stream = streams_for(device).compute;
  if (!non_blocking) {
    VG_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, stream));
    VG_CUDA_CHECK(cudaStreamSynchronize(stream));  // `src` may be pageable and reused
    return;
  }
  // Note [non-blocking uploads]
  // The bytes go to a pinned staging buffer and are copied by DMA in compute-stream order:
  // after the kernels already queued (so a reused destination block is never overwritten
  // while a queued kernel still reads it) and before any queued later. The host returns at
  // once and prepares the next batch while the GPU works through the queue.
  PinnedBuffer* staging = pinned_pool().acquire(nbytes);
  std::memcpy(staging->ptr, src, nbytes);
  VG_CUDA_CHECK(cudaMemcpyAsync(dst, staging->ptr, nbytes, cudaMemcpyHostToDevice, stream));
  VG_CUDA_CHECK(cudaEventRecord(staging->done, stream));
  pinned_pool().release(staging);
}

void copy_to_host(void* dst, const void* src, std::size_t nbytes, int device) {
  if (nbytes == 0) return;
  DeviceGuard guard(device);
  DeviceStreams& s = streams_for(device);
  VG_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, s.compute));
  VG_CUDA_CHECK(cudaStreamSynchronize(s.compute));
}

void copy_device_to_device(void* dst, int dst_device, const void* src, int src_device, std::size_t nbytes) {
  if (nbytes == 0) return;
  if (dst_device == src_device) {
    DeviceGuard guard(dst_device);
    VG_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, compute_stream(dst_device)));
    return;
  }
  // Across devices: both streams drained around a peer copy (rare: checkpoints, tests).
  synchronize(src_device);
  synchronize(dst_device);
  VG_CUDA_CHECK(cudaMemcpyPeer(dst, dst_device, src, src_device, nbytes));
}

void memset_zero(void* ptr, std::size_t nbytes, int device) {
  if (nbytes == 0) return;
  DeviceGuard guard(device);
  VG_CUDA_CHECK(cudaMemsetAsync(ptr, 0, nbytes, compute_stream(device)));
}

}  // namespace vidgrad::cuda
