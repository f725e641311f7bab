// std::vector whose data start on a cache line (kCpuAlignment, 64 bytes): for the CPU
// kernels' scratch (packed GEMM panels, padded planes), which they stream through in
// whole AVX-512 vectors. Its blocks come from cpu_memory's scratch cache (Note [scratch
// blocks] in core/cpu_memory.cpp): from 128 KiB kept mapped between calls, smaller ones
// from the C library.
//
// Note [scratch alignment]: std::vector<float> gets malloc's 16-byte alignment, and glibc
// serves a block above its mmap threshold (128 KiB at first) from a fresh mapping with
// the data 16 bytes past the page start: the packed GEMM panels, Winograd panels and
// padded planes the kernels stream through in whole vectors began 16 or 48 bytes into a
// cache line, so every 64-byte load of them touched two lines. Aligned, `vidgrad bench
// --model sevnet_g8 --threads 2` (3 alternations, median s/step, 2026-11-23): training
// batch 1 16x224 0.4180 / 0.4168 / 0.4134 -> 0.3929 / 0.3953 / 0.3974, batch 4 8x112
// 0.2216 / 0.2221 / 0.2182 -> 0.2102 / 0.2082 / 0.2052; inference 0.1136 / 0.1139 /
// 0.1145 -> 0.1076 / 0.1069 / 0.1077 and 0.0613 / 0.0616 / 0.0621 -> 0.0580 / 0.0581 /
// 0.0585 (docs/performance.md, "Twenty-fourth session").
#pragma once

#include <cstddef>
#include <new>
#include <utility>
#include <vector>

#include "vidgrad/core/cpu_memory.h"
#include "vidgrad/core/storage.h"

namespace vidgrad {

template <typename T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(cpu_memory::allocate_scratch(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) noexcept { cpu_memory::release_scratch(p, n * sizeof(T)); }
  template <typename U>
  bool operator==(const AlignedAllocator<U>&) const noexcept {
    return true;
  }
};

template <typename T>
using AlignedVector = std::vector<T, AlignedAllocator<T>>;

// As AlignedAllocator, but resize() leaves new values uninitialised (default-initialised)
// instead of zeroing them: for a buffer whose every value is written before it is read
// (PackedA), where the zeroing was one more serial pass over it before each call.
//
// Note [uninitialised scratch]: a kernel's thread_local scratch keeps its capacity between
// calls, but std::vector::resize value-initialises every element past the old size even
// within the capacity, so a buffer resized up and down as the layers' shapes change was
// zeroed again at each growth. In a SEVNet-G8 training step that was about 10 MB of memset
// (batch 4 8x112, counted at each resize over 10 steps): 6.3 MB in the Winograd filter
// transform's buffer (32 -> 512 channels in the forward, then down in the backward, on the
// calling thread while the other waited), 2.4 MB in the Winograd weight gradient's
// scratch, 0.9 MB in the Winograd forward's packed panels, 0.5 MB in row_gemm_nt's packed
// A. Those buffers are UninitAlignedVector: each kernel writes every value it reads
// (padding rows and columns included) in the same call, so growth leaves them as they are.
template <typename T>
struct UninitAlignedAllocator : AlignedAllocator<T> {
  using value_type = T;
  template <typename U>
  struct rebind {
    using other = UninitAlignedAllocator<U>;
  };
  UninitAlignedAllocator() = default;
  template <typename U>
  UninitAlignedAllocator(const UninitAlignedAllocator<U>&) noexcept {}
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

template <typename T>
using UninitAlignedVector = std::vector<T, UninitAlignedAllocator<T>>;

}  // namespace vidgrad
