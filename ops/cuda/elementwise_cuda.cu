// Elementwise maps, broadcasting binary ops and row/column reductions on CUDA.
// One thread per output element, except the reductions: one block per row (row_sum, via
// reduce_each) or one thread per column (col_sum, used on small bias gradients only).
#include "vidgrad/core/cuda/kernel_util.cuh"
#include "vidgrad/ops/cuda/kernels.h"

namespace vidgrad::cuda {

template <typename T>
void relu_forward(const T* x, T* y, std::int64_t n, int device) {
  for_each_index(n, device, "relu", [=] __host__ __device__(std::int64_t i) { y[i] = x[i] > T(0) ? x[i] : T(0); });
}

template <typename T>
void relu_backward(const T* gy, const T* y, T* gx, std::int64_t n, int device) {
  for_each_index(n, device, "relu backward",
                 [=] __host__ __device__(std::int64_t i) { gx[i] = y[i] > T(0) ? gy[i] : T(0); });
}

template <typename T>
void sigmoid_forward(const T* x, T* y, std::int64_t n, int device) {
  for_each_index(n, device, "sigmoid", [=] __host__ __device__(std::int64_t i) { y[i] = T(1) / (T(1) + exp(-x[i])); });
}

template <typename T>
void sigmoid_backward(const T* gy, const T* y, T* gx, std::int64_t n, int device) {
  for_each_index(n, device, "sigmoid backward",
                 [=] __host__ __device__(std::int64_t i) { gx[i] = gy[i] * y[i] * (T(1) - y[i]); });
}

template <typename T>
void binary(Binary op, const T* a, const T* b, T* out, const StridedPair& p, std::int64_t n, int device) {
  switch (op) {
    case Binary::kAdd:
      for_each_index(n, device, "add", [=] __host__ __device__(std::int64_t i) {
        std::int64_t ia, ib;
        strided_offsets(p, i, ia, ib);
        out[i] = a[ia] + b[ib];
      });
      break;
    case Binary::kSub:
      for_each_index(n, device, "sub", [=] __host__ __device__(std::int64_t i) {
        std::int64_t ia, ib;
        strided_offsets(p, i, ia, ib);
        out[i] = a[ia] - b[ib];
      });
      break;
    case Binary::kMul:
      for_each_index(n, device, "mul", [=] __host__ __device__(std::int64_t i) {
        std::int64_t ia, ib;
        strided_offsets(p, i, ia, ib);
        out[i] = a[ia] * b[ib];
      });
      break;
  }
}

template <typename T>
void row_sum(const T* x, T* out, std::int64_t rows, std::int64_t cols, double scale, int device) {
  reduce_each(
      rows, cols, device, "row_sum", [=] __host__ __device__(std::int64_t r, std::int64_t k) { return x[r * cols + k]; },
      [=] __host__ __device__(std::int64_t r, double acc) { out[r] = static_cast<T>(acc * scale); });
}

template <typename T>
void expand_rows(const T* x, T* out, std::int64_t rows, std::int64_t cols, double scale, int device) {
  const T s = static_cast<T>(scale);
  for_each_index(rows * cols, device, "expand_rows", [=] __host__ __device__(std::int64_t i) { out[i] = x[i / cols] * s; });
}

template <typename T>
void col_sum(const T* x, T* out, std::int64_t rows, std::int64_t cols, int device) {
  for_each_index(cols, device, "col_sum", [=] __host__ __device__(std::int64_t k) {
    double acc = 0.0;
    for (std::int64_t r = 0; r < rows; ++r) acc += static_cast<double>(x[r * cols + k]);
    out[k] = static_cast<T>(acc);
  });
}

template <typename T>
void broadcast_rows(const T* b, T* y, std::int64_t rows, std::int64_t cols, int device) {
  for_each_index(rows * cols, device, "broadcast_rows", [=] __host__ __device__(std::int64_t i) { y[i] = b[i % cols]; });
}

#define VIDGRAD_INSTANTIATE(T)                                                                          \
  template void relu_forward<T>(const T*, T*, std::int64_t, int);                                       \
  template void relu_backward<T>(const T*, const T*, T*, std::int64_t, int);                            \
  template void sigmoid_forward<T>(const T*, T*, std::int64_t, int);                                    \
  template void sigmoid_backward<T>(const T*, const T*, T*, std::int64_t, int);                         \
  template void binary<T>(Binary, const T*, const T*, T*, const StridedPair&, std::int64_t, int);       \
  template void row_sum<T>(const T*, T*, std::int64_t, std::int64_t, double, int);                      \
  template void expand_rows<T>(const T*, T*, std::int64_t, std::int64_t, double, int);                  \
  template void col_sum<T>(const T*, T*, std::int64_t, std::int64_t, int);                              \
  template void broadcast_rows<T>(const T*, T*, std::int64_t, std::int64_t, int);
VIDGRAD_INSTANTIATE(float)
VIDGRAD_INSTANTIATE(double)
#undef VIDGRAD_INSTANTIATE

}  // namespace vidgrad::cuda
