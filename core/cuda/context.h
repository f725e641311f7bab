// The CUDA backend as seen from host code: is there a device, which, and how much memory
// the caching allocator holds. Nothing here needs CUDA headers, so programs built against
// a CPU-only vidgrad compile the same; there every query answers "no device".
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace vidgrad::cuda {

// True when this build has the CUDA backend (nvcc, the toolkit and cuDNN were found).
bool built_with_cuda();
// Devices the driver reports; 0 without the backend, a driver or a GPU (never throws).
int device_count();
// built_with_cuda() and device_count() > 0.
bool is_available();
// Why is_available() is false, in words ("" when it is true); for skip messages and errors.
std::string unavailable_reason();
std::string device_name(int device = 0);

// Waits for all work queued on the device's streams.
void synchronize(int device = 0);

// float32 convolutions and matrix products may use TF32 tensor cores (10-bit mantissa):
// faster, but results then differ from the CPU by about 1e-3 relative. Off by default.
void set_allow_tf32(bool allow);
bool allow_tf32();

struct MemoryStats {
  std::size_t allocated = 0;       // bytes handed to live tensors
  std::size_t reserved = 0;        // bytes held from cudaMalloc, live or cached
  std::size_t peak_allocated = 0;  // since the last reset
  std::int64_t device_mallocs = 0; // cudaMalloc calls so far (low and flat in steady state)
};
MemoryStats memory_stats(int device = 0);

// Tests only (tests/cuda_emulation_test.cpp): while on, the kernels written as one
// __host__ __device__ lambda per element (for_each_index in kernel_util.cuh) run on the
// host over host pointers instead of launching, so their index arithmetic is checked
// against the CPU ops on machines without a GPU. Kernels with block-level code (shared
// memory reductions), cuBLAS and cuDNN do not run this way.
void set_host_emulation(bool on);
bool host_emulation();
void reset_peak_memory(int device = 0);
// Returns cached, unused blocks to the driver.
void empty_cache(int device = 0);

}  // namespace vidgrad::cuda
