// What channels-last would give the grouped 1x3x3 conv (group width 8, stride 1, padding
// 1: SEVNet-G8's grouped convs): the library's NCDHW forward (conv3d_forward: the direct
// plane kernels, 16 output positions per vector) against a small channels-last kernel in
// which a 256-bit vector holds one group's 8 output channels at one position and each
// input value is broadcast from memory (a group's 8 input channels are 8 consecutive
// values of a position's row, so no vector shuffle is needed), 12 positions of a row at a
// time. Forward only; docs/performance.md, "Twenty-eighth session".
//
//   build/bench/grouped_layout [channels=64] [samples=4] [frames=8] [size=28] [calls=15]
//
// Each pass is timed after 1 GiB is written (bench/evict_caches.h), the two alternating;
// prints the medians and the largest difference between the two results.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "evict_caches.h"
#include "vidgrad/core/aligned_vector.h"
#include "vidgrad/ops/cpu/conv3d_cpu.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace {

using vidgrad::AlignedVector;
constexpr int kRow = 12;  // positions of a row per tile

// y's group g at positions [w0, w0 + kRow) of row h, all taps inside the plane: x and y
// (H, W, C) planes of one frame, wp (G, 3, 3, 8 in, 8 out).
void interior_tile(const float* x, const float* wp, float* y, std::int64_t H, std::int64_t W, std::int64_t C,
                   std::int64_t h, std::int64_t w0, std::int64_t g) {
  __m256 acc[kRow];
  for (int r = 0; r < kRow; ++r) acc[r] = _mm256_setzero_ps();
  for (int kh = 0; kh < 3; ++kh) {
    const std::int64_t hh = h + kh - 1;
    if (hh < 0 || hh >= H) continue;
    for (int kw = 0; kw < 3; ++kw) {
      const float* wt = wp + ((g * 3 + kh) * 3 + kw) * 64;
      const float* xs = x + (hh * W + w0 + kw - 1) * C + g * 8;
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        const __m256 wv = _mm256_load_ps(wt + i * 8);
#pragma GCC unroll 12
        for (int r = 0; r < kRow; ++r) acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(xs + r * C + i), wv, acc[r]);
      }
    }
  }
  for (int r = 0; r < kRow; ++r) _mm256_storeu_ps(y + ((h * W) + w0 + r) * C + g * 8, acc[r]);
}

// The same for one position, any taps (the plane's border columns and a row's last ones).
void one_position(const float* x, const float* wp, float* y, std::int64_t H, std::int64_t W, std::int64_t C,
                  std::int64_t h, std::int64_t w, std::int64_t g) {
  __m256 acc = _mm256_setzero_ps();
  for (int kh = 0; kh < 3; ++kh)
    for (int kw = 0; kw < 3; ++kw) {
      const std::int64_t hh = h + kh - 1, ww = w + kw - 1;
      if (hh < 0 || hh >= H || ww < 0 || ww >= W) continue;
      const float* wt = wp + ((g * 3 + kh) * 3 + kw) * 64;
      const float* xs = x + (hh * W + ww) * C + g * 8;
      for (int i = 0; i < 8; ++i) acc = _mm256_fmadd_ps(_mm256_broadcast_ss(xs + i), _mm256_load_ps(wt + i * 8), acc);
    }
  _mm256_storeu_ps(y + (h * W + w) * C + g * 8, acc);
}

// y (N, T, H, W, C) = the grouped conv of x (N, T, H, W, C); threads split the rows.
void grouped_channels_last(const float* x, const float* wp, float* y, std::int64_t N, std::int64_t T,
                           std::int64_t H, std::int64_t W, std::int64_t C) {
#pragma omp parallel for schedule(static)
  for (std::int64_t row = 0; row < N * T * H; ++row) {
    const std::int64_t h = row % H, frame = row / H;
    const float* xf = x + frame * H * W * C;
    float* yf = y + frame * H * W * C;
    for (std::int64_t g = 0; g < C / 8; ++g) {
      std::int64_t w = 1;
      for (; w + kRow <= W - 1; w += kRow) interior_tile(xf, wp, yf, H, W, C, h, w, g);
      one_position(xf, wp, yf, H, W, C, h, 0, g);
      for (; w < W; ++w) one_position(xf, wp, yf, H, W, C, h, w, g);
    }
  }
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const std::int64_t C = argc > 1 ? std::atoll(argv[1]) : 64, N = argc > 2 ? std::atoll(argv[2]) : 4;
  const std::int64_t T = argc > 3 ? std::atoll(argv[3]) : 8, H = argc > 4 ? std::atoll(argv[4]) : 28, W = H;
  const int calls = argc > 5 ? std::atoi(argv[5]) : 15;
  if (C < 8 || C % 8 != 0 || C > 4096 || N < 1 || T < 1 || H < 3 || N * T * H * W > (std::int64_t{1} << 24) ||
      calls < 1) {
    std::fprintf(stderr,
                 "grouped_layout: channels must be a multiple of 8 up to 4096, samples and frames positive, size at "
                 "least 3 (at most 2^24 positions); got %lld, %lld, %lld, %lld (calls %d)\n",
                 static_cast<long long>(C), static_cast<long long>(N), static_cast<long long>(T),
                 static_cast<long long>(H), calls);
    return 2;
  }
  const std::int64_t G = C / 8, S = T * H * W;
  const auto size = static_cast<std::size_t>(N * C * S);
  AlignedVector<float> x(size), xl(size), y(size), yl(size), w(static_cast<std::size_t>(C * 72)),
      wp(static_cast<std::size_t>(G * 9 * 64));
  std::mt19937 gen(1);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  for (float& v : x) v = uni(gen);
  for (float& v : w) v = uni(gen);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t s = 0; s < S; ++s) xl[(n * S + s) * C + c] = x[(n * C + c) * S + s];
  for (std::int64_t o = 0; o < C; ++o)  // w (C, 8, 1, 3, 3) -> wp (G, 3, 3, 8 in, 8 out)
    for (int i = 0; i < 8; ++i)
      for (int k = 0; k < 9; ++k) wp[((o / 8) * 9 + k) * 64 + i * 8 + o % 8] = w[(o * 8 + i) * 9 + k];
  const vidgrad::cpu::Conv3dGeometry g{N, C, T, H, W, C, 1, 3, 3, T, H, W, 1, 1, 1, 0, 1, 1, 1, 1, 1, G};
  auto ncdhw = [&] { vidgrad::cpu::conv3d_forward<float>(g, x.data(), w.data(), y.data()); };
  auto last = [&] { grouped_channels_last(xl.data(), wp.data(), yl.data(), N, T, H, W, C); };
  ncdhw();
  last();
  double diff = 0, scale = 0;
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t s = 0; s < S; ++s) {
        const float a = y[(n * C + c) * S + s];
        diff = std::max(diff, static_cast<double>(std::fabs(a - yl[(n * S + s) * C + c])));
        scale = std::max(scale, static_cast<double>(std::fabs(a)));
      }
  std::vector<double> a, b;
  for (int i = 0; i < calls; ++i) {
    vidgrad::bench::evict_caches();
    auto t0 = std::chrono::steady_clock::now();
    ncdhw();
    a.push_back(ms_since(t0));
    vidgrad::bench::evict_caches();
    t0 = std::chrono::steady_clock::now();
    last();
    b.push_back(ms_since(t0));
  }
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  const double ma = a[a.size() / 2], mb = b[b.size() / 2], gflop = 2e-9 * static_cast<double>(N * S * C * 72);
  std::printf("grouped 1x3x3 gw8, %lld channels, %lld x %lldx%lldx%lld, %d threads, from memory (largest difference "
              "%.1e of %.1f): NCDHW %.3f ms (%.0f GFLOP/s), channels-last %.3f ms (%.0f GFLOP/s), %.2fx\n",
              static_cast<long long>(C), static_cast<long long>(N), static_cast<long long>(T),
              static_cast<long long>(H), static_cast<long long>(W), omp_get_max_threads(), diff, scale, ma,
              gflop / ma * 1e3, mb, gflop / mb * 1e3, ma / mb);
  return 0;
}
#else
int main() {
  std::fprintf(stderr, "grouped_layout: needs AVX2 and FMA (built without them)\n");
  return 2;
}
#endif
