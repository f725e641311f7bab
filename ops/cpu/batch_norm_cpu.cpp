// Batch norm on the CPU: one pass per channel for statistics, one for the output, two
// for the backward (sums, then the input gradient). Channels are spread over threads.
#include "vidgrad/ops/cpu/batch_norm_cpu.h"

#include "vidgrad/core/parallel.h"

namespace vidgrad::cpu {

template <typename T>
void batch_norm_stats(const T* x, std::int64_t N, std::int64_t C, std::int64_t S, double* mean, double* var) {
  const double M = static_cast<double>(N * S);
#pragma omp parallel for schedule(static) if (N * C * S >= kMinParallelWork)
  for (std::int64_t c = 0; c < C; ++c) {
    double s = 0.0;
    for (std::int64_t n = 0; n < N; ++n) {
      const T* p = x + (n * C + c) * S;
      for (std::int64_t i = 0; i < S; ++i) s += p[i];
    }
    const double m = s / M;
    double ss = 0.0;  // two-pass variance: no cancellation for large means
    for (std::int64_t n = 0; n < N; ++n) {
      const T* p = x + (n * C + c) * S;
      for (std::int64_t i = 0; i < S; ++i) {
        const double d = p[i] - m;
        ss += d * d;
      }
    }
    mean[c] = m;
    var[c] = ss / M;
  }
}

template <typename T>
void batch_norm_apply(const T* x, std::int64_t N, std::int64_t C, std::int64_t S, const double* mean,
                      const double* invstd, const T* w, const T* b, T* y) {
#pragma omp parallel for collapse(2) schedule(static) if (N * C * S >= kMinParallelWork)
  for (std::int64_t n = 0; n < N; ++n) {
    for (std::int64_t c = 0; c < C; ++c) {
      const double scale = invstd[c] * (w ? static_cast<double>(w[c]) : 1.0);
      const T a = static_cast<T>(scale);
      const T shift = static_cast<T>((b ? static_cast<double>(b[c]) : 0.0) - mean[c] * scale);
      const T* p = x + (n * C + c) * S;
      T* q = y + (n * C + c) * S;
      for (std::int64_t i = 0; i < S; ++i) q[i] = p[i] * a + shift;
    }
  }
}

template <typename T>
void batch_norm_backward(const T* x, const T* gy, std::int64_t N, std::int64_t C, std::int64_t S,
                         const double* mean, const double* invstd, const T* w, bool batch_stats, T* gx, T* gw,
                         T* gb) {
  const double M = static_cast<double>(N * S);
#pragma omp parallel for schedule(static) if (N * C * S >= kMinParallelWork)
  for (std::int64_t c = 0; c < C; ++c) {
    double sum_g = 0.0, sum_gxhat = 0.0;  // d bias, d weight
    for (std::int64_t n = 0; n < N; ++n) {
      const T* p = x + (n * C + c) * S;
      const T* g = gy + (n * C + c) * S;
      for (std::int64_t i = 0; i < S; ++i) {
        sum_g += g[i];
        sum_gxhat += g[i] * (p[i] - mean[c]);
      }
    }
    sum_gxhat *= invstd[c];
    if (gb) gb[c] = static_cast<T>(sum_g);
    if (gw) gw[c] = static_cast<T>(sum_gxhat);
    if (!gx) continue;
    const double wc = w ? static_cast<double>(w[c]) : 1.0;
    const double k = wc * invstd[c];
    // training: gx = k * (g - mean(g) - xhat * mean(g * xhat)); eval: gx = k * g.
    const double mg = batch_stats ? sum_g / M : 0.0;
    const double mgx = batch_stats ? sum_gxhat / M : 0.0;
    for (std::int64_t n = 0; n < N; ++n) {
      const T* p = x + (n * C + c) * S;
      const T* g = gy + (n * C + c) * S;
      T* q = gx + (n * C + c) * S;
      for (std::int64_t i = 0; i < S; ++i) {
        const double xhat = (p[i] - mean[c]) * invstd[c];
        q[i] = static_cast<T>(k * (g[i] - mg - xhat * mgx));
      }
    }
  }
}

#define VIDGRAD_INSTANTIATE(T)                                                                                   \
  template void batch_norm_stats<T>(const T*, std::int64_t, std::int64_t, std::int64_t, double*, double*);     \
  template void batch_norm_apply<T>(const T*, std::int64_t, std::int64_t, std::int64_t, const double*,         \
                                    const double*, const T*, const T*, T*);                                    \
  template void batch_norm_backward<T>(const T*, const T*, std::int64_t, std::int64_t, std::int64_t,           \
                                       const double*, const double*, const T*, bool, T*, T*, T*);
VIDGRAD_INSTANTIATE(float)
VIDGRAD_INSTANTIATE(double)
#undef VIDGRAD_INSTANTIATE

}  // namespace vidgrad::cpu
