// How fast this machine moves one conv layer's activations in the access patterns of the
// kernels, from memory: what a channel-blocked layout would buy the memory-bound convs at
// 32 and 64 channels (docs/performance.md, "Twenty-seventh session").
//
//   build/bench/memory_patterns [channels=64] [positions=25088] [passes=15]
//
// A pass reads a (channels x positions) float32 tensor x and writes another, y, of the
// same size, with no arithmetic, in one of four orders; 1 GiB is written (each thread a
// share) before each pass, so both tensors start in memory. The threads (OMP_NUM_THREADS) split
// the positions.
// - rows, 48-column panels: channel rows (NCDHW), a panel of 48 columns at a time, each
//   row's 3 cache lines of x copied to a buffer, then each row's 3 lines of y stored (the
//   order of the row GEMM's and the Winograd conv's packing and stores);
// - rows, 384-column blocks: the same, 24 lines of each row at a time;
// - blocks of 16 channels: x and y as (channels / 16, positions, 16), 8 positions of each
//   block of channels at a time: channels / 16 streams in and as many out;
// - plain copy: y = x as one run (two streams).
// Prints the median pass in ms and GB/s counted as read + read for ownership + write.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "evict_caches.h"
#include "vidgrad/core/aligned_vector.h"

namespace {

using Clock = std::chrono::steady_clock;

// Copies n floats; n a multiple of 16 in every use below.
inline void copy_floats(const float* src, float* dst, std::int64_t n) {
#pragma omp simd
  for (std::int64_t i = 0; i < n; ++i) dst[i] = src[i];
}

}  // namespace

int main(int argc, char** argv) {
  const std::int64_t C = argc > 1 ? std::atoll(argv[1]) : 64;
  const std::int64_t P = argc > 2 ? std::atoll(argv[2]) : 25088;
  const int passes = argc > 3 ? std::atoi(argv[3]) : 15;
  if (C < 16 || C % 16 != 0 || C > 1024 || P < 16 || P % 16 != 0 || passes < 1) {
    std::fprintf(stderr,
                 "memory_patterns: channels must be a multiple of 16 in [16, 1024] and positions a multiple of 16, "
                 "got %lld and %lld (passes %d)\n",
                 static_cast<long long>(C), static_cast<long long>(P), passes);
    return 2;
  }
  vidgrad::AlignedVector<float> x(static_cast<std::size_t>(C * P), 1.0f), y(static_cast<std::size_t>(C * P), 0.0f);
  const int threads = omp_get_max_threads();
  std::vector<vidgrad::AlignedVector<float>> bufs(static_cast<std::size_t>(threads));  // one row block per channel
  for (auto& b : bufs) b.assign(static_cast<std::size_t>(C * 384), 0.0f);

  struct Pattern {
    const char* name;
    int kind;            // 0 rows, 1 channel blocks, 2 plain copy
    std::int64_t width;  // columns per row visit (rows)
  };
  const Pattern patterns[] = {{"rows, 48-column panels", 0, 48},
                              {"rows, 384-column blocks", 0, 384},
                              {"blocks of 16 channels", 1, 8},
                              {"plain copy", 2, 0}};
  std::printf("%lld channels x %lld positions (%.1f MB a tensor), %d threads, median of %d passes from memory\n",
              static_cast<long long>(C), static_cast<long long>(P), 4e-6 * static_cast<double>(C * P), threads, passes);
  for (const Pattern& pat : patterns) {
    std::vector<double> ms;
    for (int pass = 0; pass < passes; ++pass) {
      vidgrad::bench::evict_caches();
      const auto t0 = Clock::now();
#pragma omp parallel
      {
        const std::int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
        const std::int64_t q0 = P / 16 * t / n * 16, q1 = P / 16 * (t + 1) / n * 16;
        auto& buf = bufs[static_cast<std::size_t>(t)];
        if (pat.kind == 0) {
          for (std::int64_t q = q0; q < q1; q += pat.width) {
            const std::int64_t w = std::min(pat.width, q1 - q);
            for (std::int64_t c = 0; c < C; ++c) copy_floats(x.data() + c * P + q, buf.data() + c * w, w);
            for (std::int64_t c = 0; c < C; ++c) copy_floats(buf.data() + c * w, y.data() + c * P + q, w);
          }
        } else if (pat.kind == 1) {
          const std::int64_t blocks = C / 16;
          for (std::int64_t q = q0; q < q1; q += 8) {
            for (std::int64_t b = 0; b < blocks; ++b)
              copy_floats(x.data() + (b * P + q) * 16, buf.data() + b * 128, 128);
            for (std::int64_t b = 0; b < blocks; ++b)
              copy_floats(buf.data() + b * 128, y.data() + (b * P + q) * 16, 128);
          }
        } else {
          copy_floats(x.data() + q0 * C, y.data() + q0 * C, (q1 - q0) * C);
        }
      }
      ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    const double median = ms[ms.size() / 2];
    std::printf("  %-26s %7.3f ms  %5.1f GB/s\n", pat.name, median,
                3.0 * 4.0 * static_cast<double>(C * P) / (median * 1e6));
  }
  return 0;
}
