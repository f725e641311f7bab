// Batch norm and pooling on CUDA.
//
// Batch norm: one block per channel reduces in double (reduce_each; two passes, as on the
// CPU, so large means do not cancel), then one thread per element applies. The backward
// reduces sum(gy) and sum(gy * xhat) per channel the same way, then one thread per element.
//
// Pooling gathers instead of scattering: the backward runs one thread per *input* element
// and visits the outputs whose windows cover it, so there are no atomics and the result is
// deterministic (and sums in the CPU's order).
#include <algorithm>
#include <cmath>

#include "vidgrad/core/cuda/kernel_util.cuh"
#include "vidgrad/ops/cuda/kernels.h"

namespace vidgrad::cuda {

namespace {

// Pool window of output o along one axis: [lo, hi) clipped, and the padded extent.
struct Window {
  std::int64_t lo, hi, padded;
};

__host__ __device__ inline Window window(std::int64_t o, std::int64_t stride, std::int64_t pad, std::int64_t k,
                                std::int64_t size) {
  const std::int64_t lo = o * stride - pad;
  const std::int64_t hi = std::min(lo + k, size + pad);
  return {std::max(lo, std::int64_t{0}), std::min(hi, size), hi - lo};
}

__host__ __device__ inline std::int64_t divisor(const cpu::Pool3dGeometry& g, const Window& wt, const Window& wh,
                                       const Window& ww) {
  if (g.count_include_pad) return wt.padded * wh.padded * ww.padded;
  return (wt.hi - wt.lo) * (wh.hi - wh.lo) * (ww.hi - ww.lo);
}

// Outputs along one axis whose window covers input index i: [first, last].
__host__ __device__ inline void covering(std::int64_t i, std::int64_t stride, std::int64_t pad, std::int64_t k,
                                         std::int64_t out, std::int64_t& first, std::int64_t& last) {
  const std::int64_t num = i + pad - k + 1;  // o * stride >= num
  first = num <= 0 ? 0 : (num + stride - 1) / stride;
  last = std::min((i + pad) / stride, out - 1);
}

// The three windows of output o (flat within its plane).
struct Windows {
  Window t, h, w;
};
__host__ __device__ inline Windows windows_of(const cpu::Pool3dGeometry& g, std::int64_t o) {
  const std::int64_t wo = o % g.Wo, ho = (o / g.Wo) % g.Ho, to = o / (g.Wo * g.Ho);
  return {window(to, g.sT, g.pT, g.kT, g.T), window(ho, g.sH, g.pH, g.kH, g.H), window(wo, g.sW, g.pW, g.kW, g.W)};
}

// The outputs whose windows cover input r (flat within its plane), per axis.
struct Cover {
  std::int64_t t0, t1, h0, h1, w0, w1;
};
__host__ __device__ inline Cover cover_of(const cpu::Pool3dGeometry& g, std::int64_t r) {
  const std::int64_t w = r % g.W, h = (r / g.W) % g.H, t = r / (g.W * g.H);
  Cover c{};
  covering(t, g.sT, g.pT, g.kT, g.To, c.t0, c.t1);
  covering(h, g.sH, g.pH, g.kH, g.Ho, c.h0, c.h1);
  covering(w, g.sW, g.pW, g.kW, g.Wo, c.w0, c.w1);
  return c;
}

}  // namespace

template <typename T>
void batch_norm_stats(const T* x, std::int64_t N, std::int64_t C, std::int64_t S, double* mean, double* var,
                      int device) {
  // Two passes, as on the CPU: the variance sums squared deviations from the mean.
  const double M = static_cast<double>(N * S);
  auto at = [=] __host__ __device__(std::int64_t c, std::int64_t k) { return x[((k / S) * C + c) * S + k % S]; };
  reduce_each(
      C, N * S, device, "batch_norm mean", [=] __host__ __device__(std::int64_t c, std::int64_t k) { return at(c, k); },
      [=] __host__ __device__(std::int64_t c, double acc) { mean[c] = acc / M; });
  reduce_each(
      C, N * S, device, "batch_norm variance",
      [=] __host__ __device__(std::int64_t c, std::int64_t k) {
        const double d = static_cast<double>(at(c, k)) - mean[c];
        return d * d;
      },
      [=] __host__ __device__(std::int64_t c, double acc) { var[c] = acc / M; });
}

template <typename T>
void batch_norm_finalize(double* mean, double* var, T* rm, T* rv, std::int64_t C, double eps, double momentum,
                         double unbias, int device) {
  for_each_index(C, device, "batch_norm finalize", [=] __host__ __device__(std::int64_t c) {
    if (rm != nullptr) {
      rm[c] = static_cast<T>((1 - momentum) * static_cast<double>(rm[c]) + momentum * mean[c]);
      rv[c] = static_cast<T>((1 - momentum) * static_cast<double>(rv[c]) + momentum * var[c] * unbias);
    }
    var[c] = 1.0 / sqrt(var[c] + eps);
  });
}

template <typename T>
void batch_norm_eval_stats(const T* rm, const T* rv, double* mean, double* invstd, std::int64_t C, double eps,
                           int device) {
  for_each_index(C, device, "batch_norm eval stats", [=] __host__ __device__(std::int64_t c) {
    mean[c] = static_cast<double>(rm[c]);
    invstd[c] = 1.0 / sqrt(static_cast<double>(rv[c]) + eps);
  });
}

template <typename T>
void batch_norm_apply(const T* x, std::int64_t N, std::int64_t C, std::int64_t S, const double* mean,
                      const double* invstd, const T* w, const T* b, T* y, int device) {
  for_each_index(N * C * S, device, "batch_norm", [=] __host__ __device__(std::int64_t i) {
    const std::int64_t c = (i / S) % C;
    const double scale = invstd[c] * (w ? static_cast<double>(w[c]) : 1.0);
    const T a = static_cast<T>(scale);
    const T shift = static_cast<T>((b ? static_cast<double>(b[c]) : 0.0) - mean[c] * scale);
    y[i] = x[i] * a + shift;
  });
}

// sums[c] = sum(gy), sums[C + c] = sum(gy * xhat) over channel c; gb and gw get them.
template <typename T>
void batch_norm_backward_sums(const T* x, const T* gy, std::int64_t N, std::int64_t C, std::int64_t S,
                              const double* mean, const double* invstd, T* gw, T* gb, double* sums, int device) {
  auto idx = [=] __host__ __device__(std::int64_t c, std::int64_t k) { return ((k / S) * C + c) * S + k % S; };
  reduce_each(
      C, N * S, device, "batch_norm backward sum(gy)",
      [=] __host__ __device__(std::int64_t c, std::int64_t k) { return gy[idx(c, k)]; },
      [=] __host__ __device__(std::int64_t c, double acc) {
        sums[c] = acc;
        if (gb) gb[c] = static_cast<T>(acc);
      });
  reduce_each(
      C, N * S, device, "batch_norm backward sum(gy xhat)",
      [=] __host__ __device__(std::int64_t c, std::int64_t k) {
        const std::int64_t i = idx(c, k);
        return static_cast<double>(gy[i]) * (static_cast<double>(x[i]) - mean[c]) * invstd[c];
      },
      [=] __host__ __device__(std::int64_t c, double acc) {
        sums[C + c] = acc;
        if (gw) gw[c] = static_cast<T>(acc);
      });
}

template <typename T>
void batch_norm_backward_input(const T* x, const T* gy, std::int64_t N, std::int64_t C, std::int64_t S,
                               const double* mean, const double* invstd, const T* w, bool batch_stats,
                               const double* sums, T* gx, int device) {
  const double M = static_cast<double>(N * S);
  for_each_index(N * C * S, device, "batch_norm backward", [=] __host__ __device__(std::int64_t i) {
    const std::int64_t c = (i / S) % C;
    const double k = (w ? static_cast<double>(w[c]) : 1.0) * invstd[c];
    const double mg = batch_stats ? sums[c] / M : 0.0;
    const double mgx = batch_stats ? sums[C + c] / M : 0.0;
    const double xhat = (static_cast<double>(x[i]) - mean[c]) * invstd[c];
    gx[i] = static_cast<T>(k * (static_cast<double>(gy[i]) - mg - xhat * mgx));
  });
}

template <typename T>
void batch_norm_backward(const T* x, const T* gy, std::int64_t N, std::int64_t C, std::int64_t S, const double* mean,
                         const double* invstd, const T* w, bool batch_stats, T* gx, T* gw, T* gb, double* sums,
                         int device) {
  batch_norm_backward_sums<T>(x, gy, N, C, S, mean, invstd, gw, gb, sums, device);
  if (gx != nullptr) batch_norm_backward_input<T>(x, gy, N, C, S, mean, invstd, w, batch_stats, sums, gx, device);
}

template <typename T>
void avg_pool3d_forward(const cpu::Pool3dGeometry& g, const T* x, T* y, int device) {
  const std::int64_t out_plane = g.To * g.Ho * g.Wo, in_plane = g.T * g.H * g.W;
  for_each_index(g.planes * out_plane, device, "avg_pool3d", [=] __host__ __device__(std::int64_t i) {
    const std::int64_t p = i / out_plane;
    const auto [wt, wh, ww] = windows_of(g, i % out_plane);
    const T* xp = x + p * in_plane;
    T acc = 0;
    for (std::int64_t t = wt.lo; t < wt.hi; ++t)
      for (std::int64_t h = wh.lo; h < wh.hi; ++h)
        for (std::int64_t w = ww.lo; w < ww.hi; ++w) acc += xp[(t * g.H + h) * g.W + w];
    const std::int64_t d = divisor(g, wt, wh, ww);
    y[i] = d > 0 ? acc / static_cast<T>(d) : T(0);
  });
}

template <typename T>
void avg_pool3d_backward(const cpu::Pool3dGeometry& g, const T* gy, T* gx, int device) {
  const std::int64_t out_plane = g.To * g.Ho * g.Wo, in_plane = g.T * g.H * g.W;
  for_each_index(g.planes * in_plane, device, "avg_pool3d backward", [=] __host__ __device__(std::int64_t i) {
    const std::int64_t p = i / in_plane, r = i % in_plane;
    const Cover c = cover_of(g, r);
    const T* gyp = gy + p * out_plane;
    T acc = 0;
    for (std::int64_t to = c.t0; to <= c.t1; ++to) {
      const Window wt = window(to, g.sT, g.pT, g.kT, g.T);
      for (std::int64_t ho = c.h0; ho <= c.h1; ++ho) {
        const Window wh = window(ho, g.sH, g.pH, g.kH, g.H);
        for (std::int64_t wo = c.w0; wo <= c.w1; ++wo) {
          const Window ww = window(wo, g.sW, g.pW, g.kW, g.W);
          const std::int64_t d = divisor(g, wt, wh, ww);
          if (d > 0) acc += gyp[(to * g.Ho + ho) * g.Wo + wo] / static_cast<T>(d);
        }
      }
    }
    gx[i] = acc;
  });
}

template <typename T>
void max_pool3d_forward(const cpu::Pool3dGeometry& g, const T* x, T* y, std::int64_t* argmax, int device) {
  const std::int64_t out_plane = g.To * g.Ho * g.Wo, in_plane = g.T * g.H * g.W;
  for_each_index(g.planes * out_plane, device, "max_pool3d", [=] __host__ __device__(std::int64_t i) {
    const std::int64_t p = i / out_plane;
    const auto [wt, wh, ww] = windows_of(g, i % out_plane);
    const T* xp = x + p * in_plane;
    T best = -INFINITY;
    std::int64_t at = -1;
    for (std::int64_t t = wt.lo; t < wt.hi; ++t)
      for (std::int64_t h = wh.lo; h < wh.hi; ++h)
        for (std::int64_t w = ww.lo; w < ww.hi; ++w) {
          const std::int64_t k = (t * g.H + h) * g.W + w;
          if (at < 0 || xp[k] > best || isnan(xp[k])) {  // NaN propagates, as on the CPU
            best = xp[k];
            at = k;
          }
        }
    y[i] = best;
    argmax[i] = at;
  });
}

template <typename T>
void max_pool3d_backward(const cpu::Pool3dGeometry& g, const T* gy, const std::int64_t* argmax, T* gx, int device) {
  const std::int64_t out_plane = g.To * g.Ho * g.Wo, in_plane = g.T * g.H * g.W;
  for_each_index(g.planes * in_plane, device, "max_pool3d backward", [=] __host__ __device__(std::int64_t i) {
    const std::int64_t p = i / in_plane, r = i % in_plane;
    const Cover c = cover_of(g, r);
    T acc = 0;
    for (std::int64_t to = c.t0; to <= c.t1; ++to)
      for (std::int64_t ho = c.h0; ho <= c.h1; ++ho)
        for (std::int64_t wo = c.w0; wo <= c.w1; ++wo) {
          const std::int64_t o = p * out_plane + (to * g.Ho + ho) * g.Wo + wo;
          if (argmax[o] == r) acc += gy[o];
        }
    gx[i] = acc;
  });
}

#define VIDGRAD_INSTANTIATE(T)                                                                                    \
  template void batch_norm_stats<T>(const T*, std::int64_t, std::int64_t, std::int64_t, double*, double*, int);   \
  template void batch_norm_finalize<T>(double*, double*, T*, T*, std::int64_t, double, double, double, int);      \
  template void batch_norm_eval_stats<T>(const T*, const T*, double*, double*, std::int64_t, double, int);        \
  template void batch_norm_apply<T>(const T*, std::int64_t, std::int64_t, std::int64_t, const double*,            \
                                    const double*, const T*, const T*, T*, int);                                  \
  template void batch_norm_backward<T>(const T*, const T*, std::int64_t, std::int64_t, std::int64_t,              \
                                       const double*, const double*, const T*, bool, T*, T*, T*, double*, int);   \
  template void batch_norm_backward_sums<T>(const T*, const T*, std::int64_t, std::int64_t, std::int64_t,         \
                                            const double*, const double*, T*, T*, double*, int);                  \
  template void batch_norm_backward_input<T>(const T*, const T*, std::int64_t, std::int64_t, std::int64_t,        \
                                             const double*, const double*, const T*, bool, const double*, T*,     \
                                             int);                                                                \
  template void avg_pool3d_forward<T>(const cpu::Pool3dGeometry&, const T*, T*, int);                             \
  template void avg_pool3d_backward<T>(const cpu::Pool3dGeometry&, const T*, T*, int);                            \
  template void max_pool3d_forward<T>(const cpu::Pool3dGeometry&, const T*, T*, std::int64_t*, int);              \
  template void max_pool3d_backward<T>(const cpu::Pool3dGeometry&, const T*, const std::int64_t*, T*, int);
VIDGRAD_INSTANTIATE(float)
VIDGRAD_INSTANTIATE(double)
#undef VIDGRAD_INSTANTIATE

}  // namespace vidgrad::cuda
