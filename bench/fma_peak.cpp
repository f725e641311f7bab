// The float32 FMA peak of this machine's cores, as vidgrad's kernels see it: the number
// that per-layer GFLOP/s are read against (bench/profile_flops.py, docs/performance.md).
//
//   build/bench/fma_peak [threads=all] [repeats=7]
//
// Each thread runs 12 independent chains of fused multiply-adds on the library's vector
// type (ops/cpu/simd.h: 16 floats with AVX-512, else 8), enough to cover the FMA units'
// latency on the x86 cores we run on (4 cycles, two units), so nothing but their throughput
// bounds the loop. Prints the best of `repeats` runs, on one thread and on `threads`, in
// GFLOP/s (an FMA counted as two).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "vidgrad/ops/cpu/simd.h"

namespace {

using V = vidgrad::cpu::Vec<float>::type;
constexpr int kChains = 12;
constexpr long kIters = 20'000'000;

// One thread's loop; returns a value that depends on every chain, so none is dropped.
float chains() {
  V acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = V{} + 0.001f * static_cast<float>(i);
  const V a = V{} + 0.999999f, b = V{} + 1e-7f;
  for (long it = 0; it < kIters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) acc[i] = vidgrad::cpu::fma_vec<float>(acc[i], a, b);
  }
  V s{};
  for (int i = 0; i < kChains; ++i) s += acc[i];
  float r = 0;
  for (int l = 0; l < vidgrad::cpu::Vec<float>::kLanes; ++l) r += s[l];
  return r;
}

// GFLOP/s of `threads` threads running chains() at once.
double run(int threads) {
  float sink = 0;
  const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
  sink += chains();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (sink == 12345.f) std::puts("");  // keeps the sums live
  const double flops = 2.0 * threads * kIters * kChains * vidgrad::cpu::Vec<float>::kLanes;
  return flops / s / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : omp_get_max_threads();
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 7;
  if (threads < 1 || repeats < 1) {
    std::fprintf(stderr, "fma_peak: usage: fma_peak [threads >= 1] [repeats >= 1], got %s %s\n",
                 argc > 1 ? argv[1] : "-", argc > 2 ? argv[2] : "-");
    return 2;
  }
  double one = 0, all = 0;
  for (int r = 0; r < repeats; ++r) {
    one = std::max(one, run(1));
    all = std::max(all, run(threads));
  }
  std::printf("float32 FMA peak, %d-byte vectors, best of %d: 1 thread %.1f GFLOP/s, %d threads %.1f GFLOP/s\n",
              vidgrad::cpu::kVecBytes, repeats, one, threads, all);
  return 0;
}
