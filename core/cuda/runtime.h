// Internal to the CUDA backend (needs cuda_runtime.h): error checks, the per-device
// streams and the launch geometry every kernel file shares.
//
// Streams: each device has one compute stream, on which every op's kernels, cuBLAS and
// cuDNN calls and the host <-> device copies run in program order. That ordering is what
// makes the caching allocator safe: a block freed by one op and reused by the next is
// touched in stream order.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "vidgrad/core/error.h"

// Throws a vidgrad::Error naming the call, the CUDA error and where it happened.
#define VG_CUDA_CHECK(expr)                                                                          \
  do {                                                                                               \
    const cudaError_t vg_cuda_status_ = (expr);                                                      \
    VG_CHECK(vg_cuda_status_ == cudaSuccess, "CUDA call " #expr " failed: "                          \
                                                 << cudaGetErrorName(vg_cuda_status_) << " ("        \
                                                 << cudaGetErrorString(vg_cuda_status_) << ")");      \
  } while (0)

// After a kernel launch: reports a bad launch configuration at once, naming the kernel.
#define VG_CUDA_CHECK_LAUNCH(name)                                                                   \
  do {                                                                                               \
    const cudaError_t vg_cuda_status_ = cudaGetLastError();                                          \
    VG_CHECK(vg_cuda_status_ == cudaSuccess, "CUDA kernel " << (name) << " failed to launch: "       \
                                                 << cudaGetErrorString(vg_cuda_status_));             \
  } while (0)

namespace vidgrad::cuda {

// Checks `device` is a visible device index, with a message naming the caller.
void check_device(int device, const char* who);
cudaStream_t compute_stream(int device);

// Makes `device` current for the scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// Grid-stride launches: enough blocks to fill the GPU, never more than the work needs.
inline constexpr int kBlock = 256;
inline unsigned grid_for(std::int64_t n, int block = kBlock) {
  const std::int64_t blocks = (n + block - 1) / block;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 * 8 ? 65535 * 8 : blocks));
}

}  // namespace vidgrad::cuda
