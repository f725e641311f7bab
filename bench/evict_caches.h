// Evicting the caches before a timed pass, for memory_patterns, blocked_layout,
// grouped_layout and batch_norm_bench: one byte is stored to every cache line of a 1 GiB
// buffer, each thread a share (plain stores: each line is brought into the caches, pushing
// out what they held).
#pragma once

#include <omp.h>

#include <cstddef>
#include <vector>

namespace vidgrad::bench {

inline void evict_caches() {
  static std::vector<char> buf(std::size_t{1} << 30);
#pragma omp parallel
  {
    const std::size_t parts = static_cast<std::size_t>(omp_get_num_threads());
    const std::size_t t = static_cast<std::size_t>(omp_get_thread_num()), share = buf.size() / parts;
    char* const part = buf.data() + t * share;
    for (std::size_t i = 0; i < share; i += 64) part[i] = static_cast<char>(i);
  }
  asm volatile("" : : "r"(buf.data()) : "memory");  // the stores are not dead
}

}  // namespace vidgrad::bench
