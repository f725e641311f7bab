// CPU kernels for elementwise ops: flat loops over contiguous data, and one broadcasting
// walk for binary ops.
#pragma once

#include <cmath>
#include <cstdint>

#include "vidgrad/core/parallel.h"
#include "vidgrad/core/strided.h"
#include "vidgrad/core/tensor.h"
#include "vidgrad/ops/common.h"
#include "vidgrad/ops/cpu/simd.h"

namespace vidgrad::cpu {

inline constexpr std::int64_t kParallelGrain = kMinParallelWork;

// y[i] = f(x[i]) over n contiguous elements.
template <typename T, typename F>
void unary_map(const T* x, T* y, std::int64_t n, F f) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelGrain)
  for (std::int64_t i = 0; i < n; ++i) y[i] = f(x[i]);
}

// z[i] = f(a[i], b[i]) over n contiguous elements.
template <typename T, typename F>
void binary_map(const T* a, const T* b, T* z, std::int64_t n, F f) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelGrain)
  for (std::int64_t i = 0; i < n; ++i) z[i] = f(a[i], b[i]);
}

// gx[i] = g[i] where y[i] > 0, else 0 (a ReLU's backward), in vectors with relu_pass: as
// binary_map's `y > 0 ? g : 0`, g++ made g's load a masked one.
template <typename T>
void relu_grad_map(const T* g, const T* y, T* gx, std::int64_t n) {
  constexpr std::int64_t L = Vec<T>::kLanes;
  const std::int64_t vecs = n / L;
#pragma omp parallel for schedule(static) if (n >= kParallelGrain)
  for (std::int64_t v = 0; v < vecs; ++v) store_vec(gx + v * L, relu_pass(load_vec(y + v * L), load_vec(g + v * L)));
  for (std::int64_t i = vecs * L; i < n; ++i) gx[i] = y[i] > T(0) ? g[i] : T(0);
}

// out (contiguous, shape `shape`) = f(a, b) with a and b broadcast to `shape`.
template <typename T, typename F>
void broadcast_binary(const Tensor& a, const Tensor& b, const Tensor& out, F f) {
  const Shape& shape = out.shape();
  Shape sh = shape;
  std::array<Shape, 3> strides{ops_detail::broadcast_strides(a, shape), ops_detail::broadcast_strides(b, shape),
                               out.strides()};
  collapse_dims<3>(sh, strides);
  const T* pa = a.data<T>();
  const T* pb = b.data<T>();
  T* po = out.data<T>();
  parallel_for_each_run<3>(sh, strides, kParallelGrain,
                           [&](const std::array<std::int64_t, 3>& off, std::int64_t n,
                               const std::array<std::int64_t, 3>& step) {
                             const T* x = pa + off[0];
                             const T* y = pb + off[1];
                             T* z = po + off[2];
                             if (step[0] == 1 && step[1] == 1) {
                               for (std::int64_t i = 0; i < n; ++i) z[i] = f(x[i], y[i]);
                             } else if (step[0] == 1 && step[1] == 0) {
                               const T yv = *y;
                               for (std::int64_t i = 0; i < n; ++i) z[i] = f(x[i], yv);
                             } else if (step[0] == 0 && step[1] == 1) {
                               const T xv = *x;
                               for (std::int64_t i = 0; i < n; ++i) z[i] = f(xv, y[i]);
                             } else {
                               for (std::int64_t i = 0; i < n; ++i) z[i] = f(x[i * step[0]], y[i * step[1]]);
                             }
                           });
}

}  // namespace vidgrad::cpu
