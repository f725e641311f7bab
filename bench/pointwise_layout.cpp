// What a channel-blocked activation layout would give the 1x1x1 convs: the library's
// forward (conv3d_forward on NCDHW: the row GEMM, which packs panels of x for its
// micro-kernel) against a small kernel on x and y stored as (C / kL, positions, kL), kL =
// the vector's lanes (docs/performance.md, "Twenty-seventh session").
//
//   build/bench/pointwise_layout [channels=64] [positions=25088] [calls=15]
//
// The blocked kernel needs no packing of x: a micro-tile of 6 positions x 4 vectors of
// output channels broadcasts its x values straight from the tensor (for each block of kL
// input channels, 6 consecutive positions are 6 cache lines) and loads rows of the
// transposed weight (repacked on every call, as the library packs its weight on every
// call). Output channels must be a multiple of 4 kL; the weight is square. Both are timed from memory (1 GiB written by every thread before each call)
// and warm, calls alternating; prints the medians and the largest difference between the
// two outputs.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "vidgrad/core/aligned_vector.h"
#include "vidgrad/ops/cpu/conv3d_cpu.h"
#include "vidgrad/ops/cpu/simd.h"

namespace {

using vidgrad::AlignedVector;
using V = vidgrad::cpu::Vec<float>::type;
constexpr std::int64_t kL = vidgrad::cpu::Vec<float>::kLanes;
constexpr int kRows = 6, kVecs = 4;  // positions x vectors of output channels per micro-tile

// Output channels [ob kL, (ob + kVecs) kL) at positions [p0, p0 + R) of blocked_pointwise.
template <int R>
inline void tile(const float* x, const float* wt, float* y, std::int64_t C, std::int64_t O, std::int64_t P,
                 std::int64_t ob, std::int64_t p0) {
  // Every loop over acc is unrolled, so that it lives in registers (as the library's
  // Note [register accumulators]).
  V acc[R][kVecs];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < kVecs; ++j) acc[i][j] = V{};
  for (std::int64_t cb = 0; cb < C / kL; ++cb) {
    const float* xs = x + (cb * P + p0) * kL;
    __builtin_prefetch(xs + 64 * kL);
    for (std::int64_t c = 0; c < kL; ++c) {
      const float* wr = wt + (cb * kL + c) * O + ob * kL;
      V wv[kVecs];
#pragma GCC unroll 4
      for (int j = 0; j < kVecs; ++j) wv[j] = vidgrad::cpu::load_vec(wr + j * kL);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        const float b = xs[i * kL + c];  // scalar * vector: a broadcast (V{} + b would add a zero first)
#pragma GCC unroll 4
        for (int j = 0; j < kVecs; ++j) acc[i][j] += b * wv[j];
      }
    }
  }
#pragma GCC unroll 4
  for (int j = 0; j < kVecs; ++j)
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) vidgrad::cpu::store_vec(y + ((ob + j) * P + p0 + i) * kL, acc[i][j]);
}

// y (O / kL, P, kL) = w (O, C) x, x (C / kL, P, kL); wt (C, O) is scratch for w transposed.
void blocked_pointwise(const float* x, const float* w, float* y, float* wt, std::int64_t C, std::int64_t O,
                       std::int64_t P) {
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (std::int64_t o = 0; o < O; ++o)
      for (std::int64_t c = 0; c < C; ++c) wt[c * O + o] = w[o * C + c];
    const std::int64_t t = omp_get_thread_num(), n = omp_get_num_threads(), tiles = P / kRows;
    const std::int64_t u0 = tiles * t / n, u1 = tiles * (t + 1) / n;
    for (std::int64_t ob = 0; ob < O / kL; ob += kVecs) {
      for (std::int64_t u = u0; u < u1; ++u) tile<kRows>(x, wt, y, C, O, P, ob, u * kRows);
      if (t == n - 1)  // the last positions, one at a time
        for (std::int64_t p = tiles * kRows; p < P; ++p) tile<1>(x, wt, y, C, O, P, ob, p);
    }
  }
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const std::int64_t C = argc > 1 ? std::atoll(argv[1]) : 64, P = argc > 2 ? std::atoll(argv[2]) : 25088;
  const int calls = argc > 3 ? std::atoi(argv[3]) : 15;
  const std::int64_t O = C;
  if (C < kVecs * kL || C % (kVecs * kL) != 0 || C > 4096 || P < 1 || calls < 1) {
    std::fprintf(stderr, "pointwise_layout: channels must be a multiple of %lld up to 4096 and positions at least 1, "
                 "got %lld and %lld (calls %d)\n", static_cast<long long>(kVecs * kL),
                 static_cast<long long>(C), static_cast<long long>(P), calls);
    return 2;
  }
  const auto size = static_cast<std::size_t>(C * P);
  AlignedVector<float> x(size), xb(size), y(size), yb(size), w(static_cast<std::size_t>(O * C)),
      wt(static_cast<std::size_t>(O * C));
  std::mt19937 gen(1);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  for (float& v : x) v = uni(gen);
  for (float& v : w) v = uni(gen);
  for (std::int64_t c = 0; c < C; ++c)
    for (std::int64_t p = 0; p < P; ++p) xb[static_cast<std::size_t>(((c / kL) * P + p) * kL + c % kL)] = x[c * P + p];
  // One sample, C channels, a 1 x 1 x P volume, O outputs, a 1x1x1 kernel, unit strides.
  const vidgrad::cpu::Conv3dGeometry g{1, C, 1, 1, P, O, 1, 1, 1, 1, 1, P, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1};
  const int threads = omp_get_max_threads();
  std::vector<AlignedVector<char>> junk(static_cast<std::size_t>(threads));
  for (auto& j : junk) j.assign((std::size_t{1} << 30) / static_cast<std::size_t>(threads), 0);
  auto evict = [&] {
#pragma omp parallel
    {
      auto& j = junk[static_cast<std::size_t>(omp_get_thread_num())];
      for (std::size_t i = 0; i < j.size(); i += 64) j[i] = static_cast<char>(i);
    }
  };
  vidgrad::cpu::conv3d_forward<float>(g, x.data(), w.data(), y.data());
  blocked_pointwise(xb.data(), w.data(), yb.data(), wt.data(), C, O, P);
  double diff = 0, scale = 0;
  for (std::int64_t o = 0; o < O; ++o)
    for (std::int64_t p = 0; p < P; ++p) {
      const float a = y[static_cast<std::size_t>(o * P + p)], b = yb[static_cast<std::size_t>(((o / kL) * P + p) * kL + o % kL)];
      diff = std::max(diff, static_cast<double>(std::fabs(a - b)));
      scale = std::max(scale, static_cast<double>(std::fabs(a)));
    }
  const double gflop = 2e-9 * static_cast<double>(O * C * P);
  std::printf("%lld -> %lld channels x %lld positions, %d threads, %d calls each; largest difference %.1e of %.1f\n",
              static_cast<long long>(C), static_cast<long long>(O), static_cast<long long>(P), threads, calls, diff, scale);
  for (const bool cold : {true, false}) {
    std::vector<double> lib, blk;
    for (int i = 0; i < calls; ++i) {
      if (cold) evict();
      auto t0 = std::chrono::steady_clock::now();
      vidgrad::cpu::conv3d_forward<float>(g, x.data(), w.data(), y.data());
      lib.push_back(ms_since(t0));
      if (cold) evict();
      t0 = std::chrono::steady_clock::now();
      blocked_pointwise(xb.data(), w.data(), yb.data(), wt.data(), C, O, P);
      blk.push_back(ms_since(t0));
    }
    std::sort(lib.begin(), lib.end());
    std::sort(blk.begin(), blk.end());
    const double a = lib[lib.size() / 2], b = blk[blk.size() / 2];
    std::printf("  %s: NCDHW row GEMM %.3f ms (%.0f GFLOP/s), blocked %.3f ms (%.0f GFLOP/s), %.2fx\n",
                cold ? "from memory" : "warm       ", a, gflop / a * 1e3, b, gflop / b * 1e3, a / b);
  }
  return 0;
}
