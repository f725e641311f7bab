// Device-side helpers shared by every .cu file: grid-stride launches of a lambda and the
// index arithmetic of strided layouts.
#pragma once

#include <cstdint>

#include "vidgrad/core/cuda/context.h"
#include "vidgrad/core/cuda/runtime.h"
#include "vidgrad/core/cuda/tensor_kernels.h"

namespace vidgrad::cuda {

// f(i) for every i in [0, n), one thread per index, grid-stride.
template <typename F>
__global__ void for_each_index_kernel(std::int64_t n, F f) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(blockDim.x) * gridDim.x)
    f(i);
}

// Runs f (a __host__ __device__ lambda) over [0, n) on the device's compute stream, or on
// the host, in order, under host emulation (context.h; tests only).
template <typename F>
void for_each_index(std::int64_t n, int device, const char* name, F f) {
  if (n <= 0) return;
  if (host_emulation()) {
    for (std::int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  DeviceGuard guard(device);
  for_each_index_kernel<<<grid_for(n), kBlock, 0, compute_stream(device)>>>(n, f);
  VG_CUDA_CHECK_LAUNCH(name);
}

// Offsets of row-major linear index i in the two stride sets of `p`.
__host__ __device__ inline void strided_offsets(const StridedPair& p, std::int64_t i, std::int64_t& a, std::int64_t& b) {
  a = 0;
  b = 0;
  for (int d = p.rank - 1; d >= 0; --d) {
    const std::int64_t idx = i % p.size[d];
    i /= p.size[d];
    a += idx * p.stride_a[d];
    b += idx * p.stride_b[d];
  }
}

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); the result is
// valid in thread 0. `shared` holds 32 values.
template <typename T>
__device__ T block_sum(T v, T* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // `shared` may still be read from a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) / 32;
  v = threadIdx.x < warps ? shared[threadIdx.x] : T(0);
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

template <typename Term, typename Store>
__global__ void reduce_each_kernel(std::int64_t rows, std::int64_t len, Term term, Store store) {
  __shared__ double shared[32];
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    double acc = 0.0;
    for (std::int64_t k = threadIdx.x; k < len; k += blockDim.x) acc += static_cast<double>(term(r, k));
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) store(r, acc);
  }
}

// For every r in [0, rows): store(r, sum over k in [0, len) of term(r, k)), summed in double.
// One block per r (grid-stride over r); both lambdas are __host__ __device__, so under
// host emulation this is two plain loops. Every reduction kernel of the backend is one of
// these: row sums, batch-norm statistics and sums, the conv weight and bias gradients.
template <typename Term, typename Store>
void reduce_each(std::int64_t rows, std::int64_t len, int device, const char* name, Term term, Store store) {
  if (rows <= 0) return;
  if (host_emulation()) {
    for (std::int64_t r = 0; r < rows; ++r) {
      double acc = 0.0;
      for (std::int64_t k = 0; k < len; ++k) acc += static_cast<double>(term(r, k));
      store(r, acc);
    }
    return;
  }
  DeviceGuard guard(device);
  const int block = len >= 4096 ? 512 : (len >= 512 ? 256 : 128);
  const unsigned grid = static_cast<unsigned>(rows < 65535 * 8 ? rows : 65535 * 8);
  reduce_each_kernel<<<grid, block, 0, compute_stream(device)>>>(rows, len, term, store);
  VG_CUDA_CHECK_LAUNCH(name);
}

}  // namespace vidgrad::cuda
