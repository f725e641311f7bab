// Batch norm on the CPU: one pass per channel for statistics, one for the output (with an
// optional fused ReLU), two for the backward (sums, then the input gradient). Channels are
// spread over threads, in guided chunks where the loop is per channel, so that a thread
// done first takes more (Note [stealing ranges] in core/parallel.h on why).
#include "vidgrad/ops/cpu/batch_norm_cpu.h"

#include "vidgrad/core/parallel.h"
#include "vidgrad/ops/cpu/simd.h"

#include <omp.h>

#include <algorithm>
#include <cmath>

namespace vidgrad::cpu {

// Note [one-pass statistics]: mean and variance come from one pass over the channel, as
// sums of d = x - shift and d * d, with shift the channel's first value (the "shifted
// data" method): the cancellation that makes the plain sum-of-squares formula unusable
// when |mean| >> std is gone because |mean - shift| is on the order of the spread. The
// sums run in T over blocks of 1024 values, two vector accumulators each, then in double,
// as the backward's sums do (Note [backward in vectors]): summed in double through `omp
// simd reduction`, one vector accumulator per sum and a float-to-double conversion per
// value, the pass was bound by the adds' latency, about as long as the output pass that
// reads x again and writes y. Timing loop over batch_norm_stats, data in cache, min of 30
// to 200 calls, 2026-11-22 (Intel VM), ms before -> after: one thread, 64 channels of 4096
// values 0.082 -> 0.036; two threads, 4 x 32 channels of 25088 0.580 -> 0.413. In the step
// (batch 4 8x112 training, --profile, 3 alternations) the batch-norm forwards went 25.9 /
// 25.8 / 24.5 -> 23.8 / 23.7 / 23.1 ms.
namespace {

// Mean and biased variance of channel c (Note [one-pass statistics]).
template <typename T>
void channel_stats(const T* x, std::int64_t N, std::int64_t C, std::int64_t S, std::int64_t c, double* mean,
                   double* var) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t L = Vec<T>::kLanes, kBlock = 1024;
  const T shift = x[c * S];
  const V vshift = V{} + shift;
  double s = 0.0, ss = 0.0;
  for (std::int64_t n = 0; n < N; ++n) {
    const T* p = x + (n * C + c) * S;
    for (std::int64_t i0 = 0; i0 < S; i0 += kBlock) {
      const std::int64_t i1 = std::min(S, i0 + kBlock);
      V bs[2] = {}, bss[2] = {};
      std::int64_t i = i0;
      for (; i + 2 * L <= i1; i += 2 * L) {
        const V d0 = load_vec(p + i) - vshift, d1 = load_vec(p + i + L) - vshift;
        bs[0] += d0;
        bss[0] += d0 * d0;
        bs[1] += d1;
        bss[1] += d1 * d1;
      }
      T ts = 0, tss = 0;
      for (; i < i1; ++i) {  // fewer than two vectors left
        const T d = p[i] - shift;
        ts += d;
        tss += d * d;
      }
      for (std::int64_t k = 0; k < L; ++k) {
        ts += bs[0][k] + bs[1][k];
        tss += bss[0][k] + bss[1][k];
      }
      s += static_cast<double>(ts);
      ss += static_cast<double>(tss);
    }
  }
  const double M = static_cast<double>(N * S);
  const double md = s / M;
  *mean = static_cast<double>(shift) + md;
  *var = std::max(0.0, ss / M - md * md);
}

// y = fma(x, a, shift) (plus the residual r) (then the ReLU) over one (sample, channel)
// plane of S values.
template <typename T>
void apply_plane(const T* p, std::int64_t S, T a, T shift, T* q, bool relu, const T* r) {
  if (r) {
    if (relu) {
#pragma omp simd
      for (std::int64_t i = 0; i < S; ++i) {
        const T v = std::fma(p[i], a, shift) + r[i];
        q[i] = v > T(0) ? v : T(0);  // as relu(): NaN becomes 0
      }
    } else {
#pragma omp simd
      for (std::int64_t i = 0; i < S; ++i) q[i] = std::fma(p[i], a, shift) + r[i];
    }
  } else if (relu) {
#pragma omp simd
    for (std::int64_t i = 0; i < S; ++i) {
      const T v = std::fma(p[i], a, shift);
      q[i] = v > T(0) ? v : T(0);  // as relu(): NaN becomes 0
    }
  } else {
#pragma omp simd
    for (std::int64_t i = 0; i < S; ++i) q[i] = std::fma(p[i], a, shift);
  }
}

}  // namespace

template <typename T>
void batch_norm_stats(const T* x, std::int64_t N, std::int64_t C, std::int64_t S, double* mean, double* var) {
#pragma omp parallel for schedule(static) if (N * C * S >= kMinParallelWork)
  for (std::int64_t c = 0; c < C; ++c) channel_stats(x, N, C, S, c, mean + c, var + c);
}

template <typename T>
void batch_norm_apply(const T* x, std::int64_t N, std::int64_t C, std::int64_t S, const double* mean,
                      const double* invstd, const T* w, const T* b, T* y, bool relu, const T* residual) {
#pragma omp parallel for collapse(2) schedule(static) if (N * C * S >= kMinParallelWork)
  for (std::int64_t n = 0; n < N; ++n) {
    for (std::int64_t c = 0; c < C; ++c) {
      const auto [a, shift] = bn_affine(mean[c], invstd[c], w, b, c);
      const std::int64_t at = (n * C + c) * S;
      apply_plane(x + at, S, a, shift, y + at, relu, residual ? residual + at : nullptr);
    }
  }
}

// Note [statistics and output per channel]: a training forward that took the statistics of
// every channel, then wrote every output, read x twice from wherever it was; past the last
// level of cache (SEVNet-G8 at 16x224x224: 51 MB per stage-2 activation at batch 4) that
// is twice from memory. Per channel instead, the output is written right after the
// statistics, while the channel (N * S values: 800 KB there) is still in L2 or L3.
template <typename T>
void batch_norm_train_forward(const T* x, std::int64_t N, std::int64_t C, std::int64_t S, double eps, const T* w,
                              const T* b, T* y, bool relu, double* mean, double* var, double* invstd,
                              const T* residual) {
  if (C < 2 * omp_get_max_threads()) {  // too few channels to share out: the two passes
    batch_norm_stats(x, N, C, S, mean, var);
    for (std::int64_t c = 0; c < C; ++c) invstd[c] = 1.0 / std::sqrt(var[c] + eps);
    batch_norm_apply(x, N, C, S, mean, invstd, w, b, y, relu, residual);
    return;
  }
#pragma omp parallel for schedule(guided) if (N * C * S >= kMinParallelWork)
  for (std::int64_t c = 0; c < C; ++c) {
    channel_stats(x, N, C, S, c, mean + c, var + c);
    invstd[c] = 1.0 / std::sqrt(var[c] + eps);
    const auto [a, shift] = bn_affine(mean[c], invstd[c], w, b, c);
    for (std::int64_t n = 0; n < N; ++n) {
      const std::int64_t at = (n * C + c) * S;
      apply_plane(x + at, S, a, shift, y + at, relu, residual ? residual + at : nullptr);
    }
  }
}

// Note [ReLU mask from x]: with a fused ReLU the backward needs where the output was > 0.
// Reading the saved output for that is a third stream in both backward passes (three reads
// instead of two in the sums, four accesses instead of three in the input gradient); the
// mask is instead recomputed from x as fma(x, a, shift) > 0 with the forward's a and shift
// (bn_affine, from the same saved mean and invstd and the same w and b), which gives the
// forward's value bit for bit: std::fma rounds once whether or not it is vectorised.

// Note [backward in vectors]: with the fused ReLU the two backward loops were written
// `fma(x, a, shift) > 0 ? g[i] : 0`, which reads g[i] only where the condition holds: g++
// made that a masked load (about twice as slow as a plain one on this CPU) and kept the
// `omp simd` sums in a stack slot, a store and a load per vector. The loops below are
// written in vectors (simd.h): plain loads, the mask as a select, two accumulators per
// sum in registers, and g pinned to a register before the select (relu_pass): written in
// vectors but without the pin, g++ still folded the select into a masked load. A timing
// loop over the kernel at SEVNet-G8's 16x224 shapes with the fused ReLU (2 threads, 64 MiB
// written before each call, best of 30 calls, min of 3 interleaved runs), ms, before /
// vectors / pinned: 32 channels of 16x112x112 3.12 / 2.48 / 2.17, 64 of 16x56x56 1.45 /
// 1.26 / 0.76, 128 of 16x28x28 0.66 / 0.60 / 0.38, 256 of 16x14x14 0.29 / 0.30 / 0.19.
// Without the ReLU the loops ran as fast before (0.79 ms at 64 channels).
namespace {

// Adds to sum_g and sum_gd the sums over one (sample, channel) plane of gm and
// gm * (x - m), gm = g where the fused ReLU passed it (fma(x, ra, rshift) > 0) or g;
// summed in T per block of kBlock values, then in double.
template <typename T, bool kRelu>
void plane_grad_sums(const T* p, const T* g, std::int64_t S, T m, T ra, T rshift, double& sum_g, double& sum_gd) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t L = Vec<T>::kLanes, kBlock = 1024;
  const V vm = V{} + m, va = V{} + ra, vs = V{} + rshift;
  for (std::int64_t i0 = 0; i0 < S; i0 += kBlock) {
    const std::int64_t i1 = std::min(S, i0 + kBlock);
    V bg[2] = {}, bgd[2] = {};
    std::int64_t i = i0;
    auto add = [&](int u, V pv, V gv) {
      if constexpr (kRelu) gv = relu_pass(fma_vec<T>(pv, va, vs), gv);
      bg[u] += gv;
      bgd[u] += gv * (pv - vm);
    };
    for (; i + 2 * L <= i1; i += 2 * L) {
      add(0, load_vec(p + i), load_vec(g + i));
      add(1, load_vec(p + i + L), load_vec(g + i + L));
    }
    for (; i < i1; i += L) {  // the last values: masked lanes read as zeros and add zero
      const std::uint32_t mask = first_lanes<T>(i1 - i);
      add(0, load_lanes(p + i, mask), load_lanes(g + i, mask));
    }
    T sg = 0, sgd = 0;
    for (std::int64_t k = 0; k < L; ++k) {
      sg += bg[0][k] + bg[1][k];
      sgd += bgd[0][k] + bgd[1][k];
    }
    sum_g += static_cast<double>(sg);
    sum_gd += static_cast<double>(sgd);
  }
}

// The same sums over one plane of gm = g where y > 0 (a ReLU after a residual join:
// batch_norm_add), storing gm to q (which may be g) as it goes.
template <typename T>
void plane_mask_sums(const T* p, const T* y, const T* g, T* q, std::int64_t S, T m, double& sum_g, double& sum_gd) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t L = Vec<T>::kLanes, kBlock = 1024;
  const V vm = V{} + m;
  for (std::int64_t i0 = 0; i0 < S; i0 += kBlock) {
    const std::int64_t i1 = std::min(S, i0 + kBlock);
    V bg = {}, bgd = {};
    for (std::int64_t i = i0; i < i1; i += L) {
      const bool whole = i + L <= i1;
      const std::uint32_t mask = first_lanes<T>(i1 - i);
      auto load = [&](const T* src) { return whole ? load_vec(src + i) : load_lanes(src + i, mask); };
      const V gm = relu_pass(load(y), load(g));  // masked lanes: y reads 0 and passes nothing
      if (whole)
        store_vec(q + i, gm);
      else
        store_lanes(q + i, gm, mask);
      bg += gm;
      bgd += gm * (load(p) - vm);
    }
    T sg = 0, sgd = 0;
    for (std::int64_t k = 0; k < L; ++k) {
      sg += bg[k];
      sgd += bgd[k];
    }
    sum_g += static_cast<double>(sg);
    sum_gd += static_cast<double>(sgd);
  }
}

// q = alpha * gm + beta * (x - m) + gamma over one plane, gm as in plane_grad_sums.
template <typename T, bool kRelu>
void plane_grad_input(const T* p, const T* g, T* q, std::int64_t S, T m, T ra, T rshift, T alpha, T beta,
                      T gamma) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t L = Vec<T>::kLanes;
  const V vm = V{} + m, va = V{} + ra, vs = V{} + rshift;
  auto value = [&](V pv, V gv) {
    if constexpr (kRelu) gv = relu_pass(fma_vec<T>(pv, va, vs), gv);
    return alpha * gv + beta * (pv - vm) + gamma;
  };
  std::int64_t i = 0;
  for (; i + L <= S; i += L) store_vec(q + i, value(load_vec(p + i), load_vec(g + i)));
  if (i < S) {
    const std::uint32_t mask = first_lanes<T>(S - i);
    store_lanes(q + i, value(load_lanes(p + i, mask), load_lanes(g + i, mask)), mask);
  }
}

}  // namespace

template <typename T>
void batch_norm_backward(const T* x, const T* gy, std::int64_t N, std::int64_t C, std::int64_t S,
                         const double* mean, const double* invstd, const T* w, const T* b, bool batch_stats, T* gx,
                         T* gw, T* gb, bool relu, std::int64_t gy_stride) {
  const double M = static_cast<double>(N * S);
  const std::int64_t gs = gy_stride > 0 ? gy_stride : C * S;
#pragma omp parallel for schedule(guided) if (N * C * S >= kMinParallelWork)
  for (std::int64_t c = 0; c < C; ++c) {
    // Sums of g and g * (x - mean), g masked by a fused ReLU (Note [backward in vectors]).
    const T m = static_cast<T>(mean[c]);
    const auto [ra, rshift] = bn_affine(mean[c], invstd[c], w, b, c);  // the forward's ReLU input
    double sum_g = 0.0, sum_gd = 0.0;
    for (std::int64_t n = 0; n < N; ++n) {
      const T* p = x + (n * C + c) * S;
      const T* g = gy + n * gs + c * S;
      if (relu)
        plane_grad_sums<T, true>(p, g, S, m, ra, rshift, sum_g, sum_gd);
      else
        plane_grad_sums<T, false>(p, g, S, m, ra, rshift, sum_g, sum_gd);
    }
    const auto [alpha, beta, gamma] = grad_coefficients(c, M, sum_g, sum_gd, mean, invstd, w, batch_stats, gw, gb);
    if (!gx) continue;
    for (std::int64_t n = 0; n < N; ++n) {
      const T* p = x + (n * C + c) * S;
      const T* g = gy + n * gs + c * S;
      T* q = gx + (n * C + c) * S;
      if (relu)
        plane_grad_input<T, true>(p, g, q, S, m, ra, rshift, alpha, beta, gamma);
      else
        plane_grad_input<T, false>(p, g, q, S, m, ra, rshift, alpha, beta, gamma);
    }
  }
}

// Per channel, as batch_norm_backward: the masked gradient is stored to gres while the sums
// are taken, and the input gradient's pass reads it back (from L2: the channel was just
// written) instead of masking again.
template <typename T>
void batch_norm_add_relu_backward(const T* x, const T* y, const T* gy, std::int64_t N, std::int64_t C,
                                  std::int64_t S, const double* mean, const double* invstd, const T* w,
                                  bool batch_stats, T* gres, T* gx, T* gw, T* gb) {
  const double M = static_cast<double>(N * S);
#pragma omp parallel for schedule(guided) if (N * C * S >= kMinParallelWork)
  for (std::int64_t c = 0; c < C; ++c) {
    const T m = static_cast<T>(mean[c]);
    double sum_g = 0.0, sum_gd = 0.0;
    for (std::int64_t n = 0; n < N; ++n) {
      const std::int64_t at = (n * C + c) * S;
      plane_mask_sums(x + at, y + at, gy + at, gres + at, S, m, sum_g, sum_gd);
    }
    const auto [alpha, beta, gamma] = grad_coefficients(c, M, sum_g, sum_gd, mean, invstd, w, batch_stats, gw, gb);
    if (!gx) continue;
    for (std::int64_t n = 0; n < N; ++n) {
      const std::int64_t at = (n * C + c) * S;
      plane_grad_input<T, false>(x + at, gres + at, gx + at, S, m, T(0), T(0), alpha, beta, gamma);
    }
  }
}

#define VIDGRAD_INSTANTIATE(T)                                                                                   \
  template void batch_norm_stats<T>(const T*, std::int64_t, std::int64_t, std::int64_t, double*, double*);     \
  template void batch_norm_apply<T>(const T*, std::int64_t, std::int64_t, std::int64_t, const double*,         \
                                    const double*, const T*, const T*, T*, bool, const T*);                    \
  template void batch_norm_train_forward<T>(const T*, std::int64_t, std::int64_t, std::int64_t, double,        \
                                            const T*, const T*, T*, bool, double*, double*, double*, const T*); \
  template void batch_norm_add_relu_backward<T>(const T*, const T*, const T*, std::int64_t, std::int64_t,      \
                                                std::int64_t, const double*, const double*, const T*, bool, T*, \
                                                T*, T*, T*);                                                    \
  template void batch_norm_backward<T>(const T*, const T*, std::int64_t, std::int64_t, std::int64_t,           \
                                       const double*, const double*, const T*, const T*, bool, T*, T*, T*, bool, \
                                       std::int64_t);
VIDGRAD_INSTANTIATE(float)
VIDGRAD_INSTANTIATE(double)
#undef VIDGRAD_INSTANTIATE

}  // namespace vidgrad::cpu
