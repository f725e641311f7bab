// CPU memory for tensors and the kernels' scratch. Blocks of 128 KiB and more come from
// caches of mmap'ed blocks (Note [CPU block cache] in cpu_memory.cpp), one for tensors and
// one for scratch; smaller ones from the C library.
#pragma once

#include <cstddef>

namespace vidgrad::cpu_memory {

// 64-byte aligned, uninitialised; throws vidgrad::Error when the system has no memory.
void* allocate(std::size_t nbytes);
// p from allocate(nbytes), with the same nbytes.
void release(void* p, std::size_t nbytes);
// The same from the scratch cache (AlignedVector's allocator; Note [scratch blocks]):
// buffers a thread keeps between calls live there, apart from tensors, so they never pin
// a tensor segment. stats() counts tensors only; empty_cache() and set_caching() act on both.
void* allocate_scratch(std::size_t nbytes);
void release_scratch(void* p, std::size_t nbytes);

struct Stats {
  std::size_t live_bytes = 0;    // large blocks handed out now (64 KiB multiples)
  std::size_t peak_live_bytes = 0;
  std::size_t cached_bytes = 0;  // mapped but not handed out
  std::size_t maps = 0;          // blocks mapped from the system (cache misses)
  std::size_t hits = 0;          // requests served from the cache
};
Stats stats();
// Returns every cached block to the system.
void empty_cache();
// Off (also with VIDGRAD_CPU_CACHE=0 in the environment): every block comes from the C
// library, each on its own, so that memory checkers see overruns; cached blocks are
// unmapped (those still handed out, once released).
void set_caching(bool on);

}  // namespace vidgrad::cpu_memory
