// CPU memory for tensors. Blocks of 1 MiB and more come from a cache of mmap'ed blocks
// (Note [CPU block cache] in cpu_memory.cpp); smaller ones from the C library.
#pragma once

#include <cstddef>

namespace vidgrad::cpu_memory {

// 64-byte aligned, uninitialised; throws vidgrad::Error when the system has no memory.
void* allocate(std::size_t nbytes);
// p from allocate(nbytes), with the same nbytes.
void release(void* p, std::size_t nbytes);

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
// Off (also with VIDGRAD_CPU_CACHE=0 in the environment): every large block is mapped
// and unmapped, as plain malloc would; for memory checkers.
void set_caching(bool on);

}  // namespace vidgrad::cpu_memory
