// What a channel-blocked activation layout would give the convs: the library's kernels on
// NCDHW (conv3d_forward and conv3d_backward_weight: row GEMMs and the Winograd F(4, 3)
// temporal conv, which copy panels of their operands for the micro-kernel) against small
// kernels on x, y and gy stored as (N, C / kL, positions, kL), kL = the vector's lanes
// (docs/performance.md, "Twenty-seventh session"; docs/design.md, "Planned:
// channel-blocked activations").
//
//   build/bench/blocked_layout [channels=64] [samples=4] [frames=8] [height=28] [width=height] [calls=15]
//
// Three comparisons at the shape given: the 1x1x1 conv's forward and weight gradient, and
// the 3x1x1 conv's forward (time padding 1). The blocked kernels copy nothing: a
// micro-tile of 6 positions x 4 vectors of output channels broadcasts its input values
// straight from the tensor (for each block of kL input channels, 6 consecutive positions
// are 6 cache lines) and loads rows of the transposed weight, repacked on every call as the
// library repacks its weight. The blocked 3x1x1 transforms 48 positions of 6 frames into
// an L2 buffer, runs the 6 point products on it and applies the output transform to the
// sums. Output channels must be a multiple of 4 kL. Each pair is timed from memory (1 GiB
// written before each call, each thread a share) and warm, calls alternating; prints the
// medians and the largest difference between the two results.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <type_traits>
#include <vector>

#include "evict_caches.h"
#include "vidgrad/core/aligned_vector.h"
#include "vidgrad/ops/cpu/conv3d_cpu.h"
#include "vidgrad/ops/cpu/simd.h"
#include "vidgrad/ops/cpu/winograd.h"

namespace {

using vidgrad::AlignedVector;
using V = vidgrad::cpu::Vec<float>::type;
constexpr std::int64_t kL = vidgrad::cpu::Vec<float>::kLanes;
constexpr int kRows = 6, kVecs = 4;  // positions x vectors of output channels per micro-tile

// One micro-tile: kVecs vectors of output channels at R positions, y[j][i] = sum over c
// of x[c / kL][i][c % kL] * wt[c][j kL ..], where x's blocks of kL channels are x_block
// positions apart (each position one line of kL values), wt's rows ldw apart and y's
// blocks of output channels y_block positions apart.
template <int R>
inline void tile(const float* x, std::int64_t x_block, const float* wt, std::int64_t ldw, float* y,
                 std::int64_t y_block, std::int64_t C) {
  // Every loop over acc is unrolled, so that it lives in registers (as the library's
  // Note [register accumulators]).
  V acc[R][kVecs];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < kVecs; ++j) acc[i][j] = V{};
  for (std::int64_t cb = 0; cb < C / kL; ++cb) {
    const float* xs = x + cb * x_block * kL;
    __builtin_prefetch(xs + 64 * kL);
    for (std::int64_t c = 0; c < kL; ++c) {
      const float* wr = wt + (cb * kL + c) * ldw;
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
    for (int i = 0; i < R; ++i) vidgrad::cpu::store_vec(y + (j * y_block + i) * kL, acc[i][j]);
}

// y (N, O / kL, S, kL) = w (O, C) x, x (N, C / kL, S, kL); wt (C, O) is scratch for w
// transposed. Threads split the (sample, tile of 6 positions) pairs.
void blocked_pointwise(const float* x, const float* w, float* y, float* wt, std::int64_t N, std::int64_t C,
                       std::int64_t O, std::int64_t S) {
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (std::int64_t o = 0; o < O; ++o)
      for (std::int64_t c = 0; c < C; ++c) wt[c * O + o] = w[o * C + c];
    const std::int64_t t = omp_get_thread_num(), n = omp_get_num_threads(), tiles = S / kRows;
    const std::int64_t u0 = N * tiles * t / n, u1 = N * tiles * (t + 1) / n;
    for (std::int64_t ob = 0; ob < O / kL; ob += kVecs) {
      // Sample s, positions from p: its tile of R positions and output blocks [ob, ob + kVecs).
      auto run = [&](auto rows, std::int64_t s, std::int64_t p) {
        tile<decltype(rows)::value>(x + s * C * S + p * kL, S, wt + ob * kL, O, y + s * O * S + (ob * S + p) * kL, S,
                                    C);
      };
      for (std::int64_t u = u0; u < u1; ++u) run(std::integral_constant<int, kRows>{}, u / tiles, u % tiles * kRows);
      if (t == n - 1)  // each sample's last positions, one at a time
        for (std::int64_t s = 0; s < N; ++s)
          for (std::int64_t p = tiles * kRows; p < S; ++p) run(std::integral_constant<int, 1>{}, s, p);
    }
  }
}

// The weight gradient of the same conv, gw (O, C) = gy x^T summed over samples and
// positions, gy (N, O / kL, S, kL) and x (N, C / kL, S, kL): each thread sums its share of
// the (sample, position) pairs in chunks that stay in L2, a tile of 4 vectors of output
// channels by 6 input channels at a time (24 sums in registers: per position 4 line loads
// of gy, 6 broadcasts of x), into its own (C, O) part; the parts are added and transposed
// at the end.
void blocked_pointwise_weight(const float* gy, const float* x, float* gw, float* parts, std::int64_t N, std::int64_t C,
                              std::int64_t O, std::int64_t S) {
  constexpr std::int64_t kChunk = 256, kC = 6;
#pragma omp parallel
  {
    const std::int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
    float* part = parts + t * C * O;
    std::fill(part, part + C * O, 0.0f);
    const std::int64_t q0 = N * S * t / n, q1 = N * S * (t + 1) / n;
    for (std::int64_t q = q0; q < q1;) {  // q: (sample, position) pairs, flat
      const std::int64_t sample = q / S, s0 = q % S, s1 = std::min({S, s0 + kChunk, s0 + q1 - q});
      const float* gys = gy + sample * O * S;
      const float* xs = x + sample * C * S;
      for (std::int64_t ob = 0; ob < O / kL; ob += kVecs)
        for (std::int64_t ci = 0; ci < C; ci += kC) {
          const std::int64_t nc = std::min(kC, C - ci);
          const float* xc[kC];
          for (std::int64_t k = 0; k < kC; ++k) {
            const std::int64_t c = ci + std::min(k, nc - 1);
            xc[k] = xs + (c / kL) * S * kL + c % kL;
          }
          V acc[kC][kVecs];
#pragma GCC unroll 6
          for (int k = 0; k < kC; ++k)
#pragma GCC unroll 4
            for (int j = 0; j < kVecs; ++j) acc[k][j] = V{};
          for (std::int64_t p = s0; p < s1; ++p) {
            V gv[kVecs];
#pragma GCC unroll 4
            for (int j = 0; j < kVecs; ++j) gv[j] = vidgrad::cpu::load_vec(gys + ((ob + j) * S + p) * kL);
#pragma GCC unroll 6
            for (int k = 0; k < kC; ++k) {
              const float b = xc[k][p * kL];
#pragma GCC unroll 4
              for (int j = 0; j < kVecs; ++j) acc[k][j] += b * gv[j];
            }
          }
          for (std::int64_t k = 0; k < nc; ++k)
            for (int j = 0; j < kVecs; ++j) {
              float* dst = part + (ci + k) * O + (ob + j) * kL;
              vidgrad::cpu::store_vec(dst, vidgrad::cpu::load_vec(dst) + acc[k][j]);
            }
        }
      q += s1 - s0;
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (std::int64_t o = 0; o < O; ++o)
      for (std::int64_t c = 0; c < C; ++c) {
        float v = 0.0f;
        for (std::int64_t r = 0; r < n; ++r) v += parts[(r * C + c) * O + o];
        gw[o * C + c] = v;
      }
  }
}

// The 3x1x1 conv (time padding 1) by Winograd F(4, 3): y (N, O / kL, T, HW, kL) from x (N,
// C / kL, T, HW, kL) and w (O, C, 3). u (6, C, O) and wk (3, C, O) are scratch for the
// transformed and the transposed filter. Threads split the units (sample, tile of 4 output
// frames, run of 48 positions); each transforms its run's 6 input frames into vbuf (6, C /
// kL, 48, kL), then per 6 positions and 4 vectors of outputs runs the 6 point products
// (tile) into tbuf and stores the output transform of their sums.
void blocked_winograd(const float* x, const float* w, float* y, float* u, float* wk, std::int64_t N, std::int64_t C,
                      std::int64_t O, std::int64_t T, std::int64_t HW) {
  using Wg = vidgrad::cpu::winograd::Winograd<4>;
  constexpr std::int64_t kRun = 48;
  const std::int64_t CB = C / kL, OB = O / kL, tiles = (T + 3) / 4, runs = (HW + kRun - 1) / kRun;
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t o = 0; o < O; ++o)
        for (int k = 0; k < 3; ++k) wk[(k * C + c) * O + o] = w[(o * C + c) * 3 + k];
#pragma omp for schedule(static)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t o = 0; o < O; o += kL) {
        V t[3], e[6];
        for (int k = 0; k < 3; ++k) t[k] = vidgrad::cpu::load_vec(wk + (k * C + c) * O + o);
        vidgrad::cpu::winograd::transform<float, 6, 3, V>(Wg::G, t, e);
        for (int p = 0; p < 6; ++p) vidgrad::cpu::store_vec(u + (p * C + c) * O + o, e[p]);
      }
    AlignedVector<float> vbuf(static_cast<std::size_t>(6 * CB * kRun * kL)), tbuf(static_cast<std::size_t>(6 * kRows * kVecs * kL));
    const std::int64_t units = N * tiles * runs;
#pragma omp for schedule(static)
    for (std::int64_t un = 0; un < units; ++un) {
      const std::int64_t n = un / (tiles * runs), t = un / runs % tiles, s0 = un % runs * kRun;
      const std::int64_t len = std::min(kRun, HW - s0);
      for (std::int64_t cb = 0; cb < CB; ++cb) {
        const float* xb = x + (n * CB + cb) * T * HW * kL;
        for (std::int64_t i = 0; i < kRun; ++i) {
          V d[6], e[6];
          for (int j = 0; j < 6; ++j) {
            const std::int64_t f = 4 * t - 1 + j;
            d[j] = i < len && f >= 0 && f < T ? vidgrad::cpu::load_vec(xb + (f * HW + s0 + i) * kL) : V{};
          }
          vidgrad::cpu::winograd::transform<float, 6, 6, V>(Wg::BT, d, e);
          for (int p = 0; p < 6; ++p) vidgrad::cpu::store_vec(vbuf.data() + ((p * CB + cb) * kRun + i) * kL, e[p]);
        }
      }
      for (std::int64_t ob = 0; ob < OB; ob += kVecs)
        for (std::int64_t i0 = 0; i0 < len; i0 += kRows) {
          for (int p = 0; p < 6; ++p)  // tbuf (6, kVecs, kRows, kL)
            tile<kRows>(vbuf.data() + (p * CB * kRun + i0) * kL, kRun, u + p * C * O + ob * kL, O,
                        tbuf.data() + p * kVecs * kRows * kL, kRows, C);
          for (std::int64_t i = 0; i < std::min<std::int64_t>(kRows, len - i0); ++i)
            for (int j = 0; j < kVecs; ++j) {
              V tv[6], ov[4];
              for (int p = 0; p < 6; ++p) tv[p] = vidgrad::cpu::load_vec(tbuf.data() + ((p * kVecs + j) * kRows + i) * kL);
              vidgrad::cpu::winograd::transform<float, 4, 6, V>(Wg::AT, tv, ov);
              float* yb = y + (n * OB + ob + j) * T * HW * kL;
              for (std::int64_t r = 0; r < 4 && 4 * t + r < T; ++r)
                vidgrad::cpu::store_vec(yb + ((4 * t + r) * HW + s0 + i0 + i) * kL, ov[r]);
            }
        }
    }
  }
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const std::int64_t C = argc > 1 ? std::atoll(argv[1]) : 64, N = argc > 2 ? std::atoll(argv[2]) : 4;
  const std::int64_t T = argc > 3 ? std::atoll(argv[3]) : 8, H = argc > 4 ? std::atoll(argv[4]) : 28;
  const std::int64_t W = argc > 5 ? std::atoll(argv[5]) : H;
  const int calls = argc > 6 ? std::atoi(argv[6]) : 15;
  const std::int64_t O = C, S = T * H * W;
  if (C < kVecs * kL || C % (kVecs * kL) != 0 || C > 4096 || N < 1 || T < 1 || H < 1 || W < 1 ||
      N * S > (std::int64_t{1} << 26) || calls < 1) {
    std::fprintf(stderr,
                 "blocked_layout: channels must be a multiple of %lld up to 4096, and samples, frames, height and "
                 "width positive (at most 2^26 positions); got %lld, %lld, %lld, %lld, %lld (calls %d)\n",
                 static_cast<long long>(kVecs * kL), static_cast<long long>(C), static_cast<long long>(N),
                 static_cast<long long>(T), static_cast<long long>(H), static_cast<long long>(W), calls);
    return 2;
  }
  const auto size = static_cast<std::size_t>(N * C * S);
  AlignedVector<float> x(size), xb(size), y(size), yb(size), w(static_cast<std::size_t>(O * C)),
      wt(static_cast<std::size_t>(O * C)), w3(static_cast<std::size_t>(O * C * 3)), u(6 * w.size()),
      wk(3 * w.size()), gw(w.size()), gwb(w.size()), parts(static_cast<std::size_t>(omp_get_max_threads()) * w.size());
  std::mt19937 gen(1);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  for (float& v : x) v = uni(gen);
  for (float& v : w) v = uni(gen);
  for (float& v : w3) v = uni(gen);
  // (n, c, s) in NCDHW; (n, c / kL, s, c % kL) blocked.
  auto blocked_at = [&](std::int64_t n, std::int64_t c, std::int64_t s) {
    return static_cast<std::size_t>(((n * (C / kL) + c / kL) * S + s) * kL + c % kL);
  };
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t s = 0; s < S; ++s) xb[blocked_at(n, c, s)] = x[static_cast<std::size_t>((n * C + c) * S + s)];
  // Largest difference between y (NCDHW) and yb (blocked), and y's largest magnitude.
  auto compare_outputs = [&](double& diff, double& scale) {
    diff = scale = 0;
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t o = 0; o < O; ++o)
        for (std::int64_t s = 0; s < S; ++s) {
          const float a = y[static_cast<std::size_t>((n * O + o) * S + s)], b = yb[blocked_at(n, o, s)];
          diff = std::max(diff, static_cast<double>(std::fabs(a - b)));
          scale = std::max(scale, static_cast<double>(std::fabs(a)));
        }
  };
  // 1x1x1 and 3x1x1 (time padding 1) convs, unit strides.
  const vidgrad::cpu::Conv3dGeometry g1{N, C, T, H, W, O, 1, 1, 1, T, H, W, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1};
  const vidgrad::cpu::Conv3dGeometry g3{N, C, T, H, W, O, 3, 1, 1, T, H, W, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1};
  const int threads = omp_get_max_threads();
  auto evict = [] { vidgrad::bench::evict_caches(); };
  std::printf("%lld -> %lld channels, %lld x %lldx%lldx%lld, %d threads, %d calls each (ms, medians)\n",
              static_cast<long long>(C), static_cast<long long>(O), static_cast<long long>(N),
              static_cast<long long>(T), static_cast<long long>(H), static_cast<long long>(W), threads, calls);
  // Times lib and blocked alternately, from memory and warm.
  auto compare = [&](const char* name, double gflop, double diff, double scale, const std::function<void()>& lib,
                     const std::function<void()>& blocked) {
    std::printf("%s (largest difference %.1e of %.1f)\n", name, diff, scale);
    for (const bool cold : {true, false}) {
      std::vector<double> a, b;
      for (int i = 0; i < calls; ++i) {
        if (cold) evict();
        auto t0 = std::chrono::steady_clock::now();
        lib();
        a.push_back(ms_since(t0));
        if (cold) evict();
        t0 = std::chrono::steady_clock::now();
        blocked();
        b.push_back(ms_since(t0));
      }
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      const double ma = a[a.size() / 2], mb = b[b.size() / 2];
      std::printf("  %s: NCDHW %.3f (%.0f GFLOP/s), blocked %.3f (%.0f GFLOP/s), %.2fx\n",
                  cold ? "from memory" : "warm       ", ma, gflop / ma * 1e3, mb, gflop / mb * 1e3, ma / mb);
    }
  };
  const double gflop = 2e-9 * static_cast<double>(O * C * N * S);
  double diff = 0, scale = 0;

  auto lib_fwd = [&] { vidgrad::cpu::conv3d_forward<float>(g1, x.data(), w.data(), y.data()); };
  auto blk_fwd = [&] { blocked_pointwise(xb.data(), w.data(), yb.data(), wt.data(), N, C, O, S); };
  lib_fwd();
  blk_fwd();
  compare_outputs(diff, scale);
  compare("1x1x1 forward", gflop, diff, scale, lib_fwd, blk_fwd);

  // The weight gradient, with the forward's y (and its blocked copy) as the output gradient.
  auto lib_wg = [&] { vidgrad::cpu::conv3d_backward_weight<float>(g1, y.data(), x.data(), gw.data()); };
  auto blk_wg = [&] { blocked_pointwise_weight(yb.data(), xb.data(), gwb.data(), parts.data(), N, C, O, S); };
  lib_wg();
  blk_wg();
  diff = scale = 0;
  for (std::size_t i = 0; i < gw.size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::fabs(gw[i] - gwb[i])));
    scale = std::max(scale, static_cast<double>(std::fabs(gw[i])));
  }
  compare("1x1x1 weight gradient", gflop, diff, scale, lib_wg, blk_wg);

  // GFLOP/s of the 3x1x1 counted as the direct conv's (Winograd does half the products).
  auto lib_w = [&] { vidgrad::cpu::conv3d_forward<float>(g3, x.data(), w3.data(), y.data()); };
  auto blk_w = [&] { blocked_winograd(xb.data(), w3.data(), yb.data(), u.data(), wk.data(), N, C, O, T, H * W); };
  lib_w();
  blk_w();
  compare_outputs(diff, scale);
  compare("3x1x1 forward (Winograd F(4, 3))", 3 * gflop, diff, scale, lib_w, blk_w);
  return 0;
}
