// Batch norm on the CPU: one pass per channel for statistics, one for the output (with an
// optional fused ReLU), two for the backward (sums, then the input gradient). Channels are
// spread over threads.
#include "vidgrad/ops/cpu/batch_norm_cpu.h"

#include "vidgrad/core/parallel.h"

#include <algorithm>

namespace vidgrad::cpu {

// Note [one-pass statistics]: mean and variance come from one pass over the channel, as
// sums of d = x - shift and d * d in double, with shift the channel's first value (the
// "shifted data" method): the cancellation that makes the plain sum-of-squares formula
// unusable when |mean| >> std is gone because |mean - shift| is on the order of the
// spread, and the double sums keep ~16 digits. `omp simd reduction` lets the compiler
// keep the sums in vector lanes (a plain `s += p[i]` in double is one add per 4 cycles,
// the latency of the dependency chain).
template <typename T>
void batch_norm_stats(const T* x, std::int64_t N, std::int64_t C, std::int64_t S, double* mean, double* var) {
  const double M = static_cast<double>(N * S);
#pragma omp parallel for schedule(static) if (N * C * S >= kMinParallelWork)
  for (std::int64_t c = 0; c < C; ++c) {
    const double shift = static_cast<double>(x[c * S]);
    double s = 0.0, ss = 0.0;
    for (std::int64_t n = 0; n < N; ++n) {
      const T* p = x + (n * C + c) * S;
#pragma omp simd reduction(+ : s, ss)
      for (std::int64_t i = 0; i < S; ++i) {
        const double d = static_cast<double>(p[i]) - shift;
        s += d;
        ss += d * d;
      }
    }
    const double md = s / M;
    mean[c] = shift + md;
    var[c] = std::max(0.0, ss / M - md * md);
  }
}

template <typename T>
void batch_norm_apply(const T* x, std::int64_t N, std::int64_t C, std::int64_t S, const double* mean,
                      const double* invstd, const T* w, const T* b, T* y, bool relu) {
#pragma omp parallel for collapse(2) schedule(static) if (N * C * S >= kMinParallelWork)
  for (std::int64_t n = 0; n < N; ++n) {
    for (std::int64_t c = 0; c < C; ++c) {
      const double scale = invstd[c] * (w ? static_cast<double>(w[c]) : 1.0);
      const T a = static_cast<T>(scale);
      const T shift = static_cast<T>((b ? static_cast<double>(b[c]) : 0.0) - mean[c] * scale);
      const T* p = x + (n * C + c) * S;
      T* q = y + (n * C + c) * S;
      if (relu) {
#pragma omp simd
        for (std::int64_t i = 0; i < S; ++i) {
          const T v = p[i] * a + shift;
          q[i] = v > T(0) ? v : T(0);  // as relu(): NaN becomes 0
        }
      } else {
#pragma omp simd
        for (std::int64_t i = 0; i < S; ++i) q[i] = p[i] * a + shift;
      }
    }
  }
}

template <typename T>
void batch_norm_backward(const T* x, const T* gy, std::int64_t N, std::int64_t C, std::int64_t S,
                         const double* mean, const double* invstd, const T* w, bool batch_stats, T* gx, T* gw,
                         T* gb, const T* relu_y) {
  const double M = static_cast<double>(N * S);
#pragma omp parallel for schedule(static) if (N * C * S >= kMinParallelWork)
  for (std::int64_t c = 0; c < C; ++c) {
    double sum_g = 0.0, sum_gx = 0.0;  // sums of g and g * x; d weight = (sum_gx - mean * sum_g) * invstd
    for (std::int64_t n = 0; n < N; ++n) {
      const T* p = x + (n * C + c) * S;
      const T* g = gy + (n * C + c) * S;
      if (relu_y) {
        const T* r = relu_y + (n * C + c) * S;
#pragma omp simd reduction(+ : sum_g, sum_gx)
        for (std::int64_t i = 0; i < S; ++i) {
          const double gi = r[i] > T(0) ? static_cast<double>(g[i]) : 0.0;
          sum_g += gi;
          sum_gx += gi * static_cast<double>(p[i]);
        }
      } else {
#pragma omp simd reduction(+ : sum_g, sum_gx)
        for (std::int64_t i = 0; i < S; ++i) {
          sum_g += static_cast<double>(g[i]);
          sum_gx += static_cast<double>(g[i]) * static_cast<double>(p[i]);
        }
      }
    }
    const double sum_gxhat = (sum_gx - mean[c] * sum_g) * invstd[c];
    if (gb) gb[c] = static_cast<T>(sum_g);
    if (gw) gw[c] = static_cast<T>(sum_gxhat);
    if (!gx) continue;
    const double wc = w ? static_cast<double>(w[c]) : 1.0;
    const double k = wc * invstd[c];
    // training: gx = k * (g - mean(g) - xhat * mean(g * xhat)); eval: gx = k * g. With
    // xhat = (x - mean) * invstd that is gx = alpha * g + beta * x + gamma per element.
    const double mg = batch_stats ? sum_g / M : 0.0;
    const double mgx = batch_stats ? sum_gxhat / M : 0.0;
    const T alpha = static_cast<T>(k), beta = static_cast<T>(-k * invstd[c] * mgx);
    const T gamma = static_cast<T>(k * (mean[c] * invstd[c] * mgx - mg));
    for (std::int64_t n = 0; n < N; ++n) {
      const T* p = x + (n * C + c) * S;
      const T* g = gy + (n * C + c) * S;
      T* q = gx + (n * C + c) * S;
      if (relu_y) {
        const T* r = relu_y + (n * C + c) * S;
#pragma omp simd
        for (std::int64_t i = 0; i < S; ++i) q[i] = alpha * (r[i] > T(0) ? g[i] : T(0)) + beta * p[i] + gamma;
      } else {
#pragma omp simd
        for (std::int64_t i = 0; i < S; ++i) q[i] = alpha * g[i] + beta * p[i] + gamma;
      }
    }
  }
}

#define VIDGRAD_INSTANTIATE(T)                                                                                   \
  template void batch_norm_stats<T>(const T*, std::int64_t, std::int64_t, std::int64_t, double*, double*);     \
  template void batch_norm_apply<T>(const T*, std::int64_t, std::int64_t, std::int64_t, const double*,         \
                                    const double*, const T*, const T*, T*, bool);                              \
  template void batch_norm_backward<T>(const T*, const T*, std::int64_t, std::int64_t, std::int64_t,           \
                                       const double*, const double*, const T*, bool, T*, T*, T*, const T*);
VIDGRAD_INSTANTIATE(float)
VIDGRAD_INSTANTIATE(double)
#undef VIDGRAD_INSTANTIATE

}  // namespace vidgrad::cpu
