// Temporal shift, log-softmax and cross-entropy on CUDA. The softmax work is small (a row
// of class scores per clip), so one thread per row keeps the kernels as plain as the CPU's.
#include <cmath>

#include "vidgrad/core/cuda/kernel_util.cuh"
#include "vidgrad/ops/cuda/kernels.h"

namespace vidgrad::cuda {

template <typename T>
void temporal_shift(const T* x, T* out, std::int64_t N, std::int64_t C, std::int64_t Tn, std::int64_t HW,
                    std::int64_t fold, int dir, int device) {
  for_each_index(N * C * Tn * HW, device, "temporal_shift", [=] __host__ __device__(std::int64_t i) {
    const std::int64_t s = i % HW, t = (i / HW) % Tn, c = (i / (HW * Tn)) % C, n = i / (HW * Tn * C);
    const std::int64_t delta = c < fold ? dir : (c < 2 * fold ? -dir : 0);
    const std::int64_t src = t + delta;
    out[i] = (src < 0 || src >= Tn) ? T(0) : x[((n * C + c) * Tn + src) * HW + s];
  });
}

template <typename T>
void log_softmax_forward(const T* x, T* y, std::int64_t outer, std::int64_t K, std::int64_t inner, int device) {
  for_each_index(outer * inner, device, "log_softmax", [=] __host__ __device__(std::int64_t r) {
    const std::int64_t base = (r / inner) * K * inner + r % inner;
    T mx = -INFINITY;
    for (std::int64_t k = 0; k < K; ++k) mx = x[base + k * inner] > mx ? x[base + k * inner] : mx;
    double s = 0.0;
    for (std::int64_t k = 0; k < K; ++k) s += exp(static_cast<double>(x[base + k * inner] - mx));
    const T lse = mx + static_cast<T>(log(s));
    for (std::int64_t k = 0; k < K; ++k) y[base + k * inner] = x[base + k * inner] - lse;
  });
}

template <typename T>
void log_softmax_backward(const T* g, const T* y, T* gx, std::int64_t outer, std::int64_t K, std::int64_t inner,
                          int device) {
  for_each_index(outer * inner, device, "log_softmax backward", [=] __host__ __device__(std::int64_t r) {
    const std::int64_t base = (r / inner) * K * inner + r % inner;
    T s = 0;
    for (std::int64_t k = 0; k < K; ++k) s += g[base + k * inner];
    for (std::int64_t k = 0; k < K; ++k) gx[base + k * inner] = g[base + k * inner] - exp(y[base + k * inner]) * s;
  });
}

template <typename T>
void cross_entropy_forward(const T* logp, const std::int64_t* targets, T* loss, std::int64_t N, std::int64_t K,
                           double eps, int device) {
  // One thread sums the rows in order, as the CPU does (N is a batch, not a tensor).
  for_each_index(1, device, "cross_entropy", [=] __host__ __device__(std::int64_t) {
    double total = 0.0;
    for (std::int64_t n = 0; n < N; ++n) {
      double row = (1.0 - eps) * static_cast<double>(logp[n * K + targets[n]]);
      if (eps > 0) {
        double s = 0.0;
        for (std::int64_t k = 0; k < K; ++k) s += static_cast<double>(logp[n * K + k]);
        row += eps / static_cast<double>(K) * s;
      }
      total -= row;
    }
    loss[0] = static_cast<T>(total / static_cast<double>(N));
  });
}

template <typename T>
void cross_entropy_backward(const T* logp, const std::int64_t* targets, const T* g, T* gx, std::int64_t N,
                            std::int64_t K, double eps, int device) {
  for_each_index(N * K, device, "cross_entropy backward", [=] __host__ __device__(std::int64_t i) {
    const std::int64_t n = i / K, k = i % K;
    const T scale = static_cast<T>(static_cast<double>(g[0]) / static_cast<double>(N));
    const T q = (k == targets[n] ? static_cast<T>(1.0 - eps) : T(0)) + static_cast<T>(eps / static_cast<double>(K));
    gx[i] = (exp(logp[i]) - q) * scale;
  });
}

#define VIDGRAD_INSTANTIATE(T)                                                                                      \
  template void temporal_shift<T>(const T*, T*, std::int64_t, std::int64_t, std::int64_t, std::int64_t,             \
                                  std::int64_t, int, int);                                                          \
  template void log_softmax_forward<T>(const T*, T*, std::int64_t, std::int64_t, std::int64_t, int);                \
  template void log_softmax_backward<T>(const T*, const T*, T*, std::int64_t, std::int64_t, std::int64_t, int);     \
  template void cross_entropy_forward<T>(const T*, const std::int64_t*, T*, std::int64_t, std::int64_t, double,     \
                                         int);                                                                      \
  template void cross_entropy_backward<T>(const T*, const std::int64_t*, const T*, T*, std::int64_t, std::int64_t,  \
                                          double, int);
VIDGRAD_INSTANTIATE(float)
VIDGRAD_INSTANTIATE(double)
#undef VIDGRAD_INSTANTIATE

}  // namespace vidgrad::cuda
