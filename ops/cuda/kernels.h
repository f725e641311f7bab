// The CUDA kernels behind the ops, as host-callable functions on raw device pointers.
// Every function queues work on the device's compute stream and returns at once; T is
// float or double. Inputs are contiguous unless a StridedPair says otherwise. Only ops/*.cpp
// call these, under `case DeviceType::kCUDA` in builds with VIDGRAD_WITH_CUDA.
#pragma once

#include <cstdint>

#include "vidgrad/core/cuda/tensor_kernels.h"
#include "vidgrad/ops/cpu/conv3d_cpu.h"
#include "vidgrad/ops/cpu/pool_cpu.h"

namespace vidgrad::cuda {

// ---- elementwise (elementwise_cuda.cu) ----
enum class Binary { kAdd, kSub, kMul };
template <typename T> void relu_forward(const T* x, T* y, std::int64_t n, int device);
template <typename T> void relu_backward(const T* gy, const T* y, T* gx, std::int64_t n, int device);
template <typename T> void sigmoid_forward(const T* x, T* y, std::int64_t n, int device);
template <typename T> void sigmoid_backward(const T* gy, const T* y, T* gx, std::int64_t n, int device);
// out[i] (contiguous, numel n) = a[off_a(i)] op b[off_b(i)], offsets from `layout`.
template <typename T>
void binary(Binary op, const T* a, const T* b, T* out, const StridedPair& layout, std::int64_t n, int device);
// out[r] = scale * sum_k x[r * cols + k].
template <typename T> void row_sum(const T* x, T* out, std::int64_t rows, std::int64_t cols, double scale, int device);
// out[r * cols + k] = scale * x[r] (the backward of row_sum).
template <typename T>
void expand_rows(const T* x, T* out, std::int64_t rows, std::int64_t cols, double scale, int device);
// out[k] = sum_r x[r * cols + k] (bias gradients).
template <typename T> void col_sum(const T* x, T* out, std::int64_t rows, std::int64_t cols, int device);
// y[r * cols + k] = b[k] (bias broadcast before an accumulating GEMM).
template <typename T> void broadcast_rows(const T* b, T* y, std::int64_t rows, std::int64_t cols, int device);

// ---- batch norm and pooling (norm_pool_cuda.cu); x is (N, C, S) ----
// mean and var (biased) per channel, accumulated in double.
template <typename T>
void batch_norm_stats(const T* x, std::int64_t N, std::int64_t C, std::int64_t S, double* mean, double* var,
                      int device);
// var becomes invstd = 1/sqrt(var + eps); with running stats, they move towards the batch's.
template <typename T>
void batch_norm_finalize(double* mean, double* var_to_invstd, T* running_mean, T* running_var, std::int64_t C,
                         double eps, double momentum, double unbias, int device);
// Eval mode: mean = running_mean, invstd = 1/sqrt(running_var + eps).
template <typename T>
void batch_norm_eval_stats(const T* running_mean, const T* running_var, double* mean, double* invstd, std::int64_t C,
                           double eps, int device);
template <typename T>
void batch_norm_apply(const T* x, std::int64_t N, std::int64_t C, std::int64_t S, const double* mean,
                      const double* invstd, const T* w, const T* b, T* y, int device);
// Any of gx, gw, gb may be null; `scratch` holds 2 C doubles.
template <typename T>
void batch_norm_backward(const T* x, const T* gy, std::int64_t N, std::int64_t C, std::int64_t S, const double* mean,
                         const double* invstd, const T* w, bool batch_stats, T* gx, T* gw, T* gb, double* scratch,
                         int device);

// The two halves of batch_norm_backward (separate so tests can run them under host
// emulation): per-channel sums = [sum(gy), sum(gy * xhat)] (also written to gb / gw when
// given), then the input gradient from them.
template <typename T>
void batch_norm_backward_sums(const T* x, const T* gy, std::int64_t N, std::int64_t C, std::int64_t S,
                              const double* mean, const double* invstd, T* gw, T* gb, double* sums, int device);
// The input-gradient half of batch_norm_backward, given sums = [sum(gy), sum(gy * xhat)] per
// channel (separate so tests can run it under host emulation).
template <typename T>
void batch_norm_backward_input(const T* x, const T* gy, std::int64_t N, std::int64_t C, std::int64_t S,
                               const double* mean, const double* invstd, const T* w, bool batch_stats,
                               const double* sums, T* gx, int device);

template <typename T> void avg_pool3d_forward(const cpu::Pool3dGeometry& g, const T* x, T* y, int device);
template <typename T> void avg_pool3d_backward(const cpu::Pool3dGeometry& g, const T* gy, T* gx, int device);
template <typename T>
void max_pool3d_forward(const cpu::Pool3dGeometry& g, const T* x, T* y, std::int64_t* argmax, int device);
template <typename T>
void max_pool3d_backward(const cpu::Pool3dGeometry& g, const T* gy, const std::int64_t* argmax, T* gx, int device);

// ---- temporal shift, softmax, cross-entropy (misc_cuda.cu) ----
template <typename T>
void temporal_shift(const T* x, T* out, std::int64_t N, std::int64_t C, std::int64_t Tn, std::int64_t HW,
                    std::int64_t fold, int dir, int device);
// Over a contiguous (outer, K, inner) view.
template <typename T>
void log_softmax_forward(const T* x, T* y, std::int64_t outer, std::int64_t K, std::int64_t inner, int device);
template <typename T>
void log_softmax_backward(const T* g, const T* y, T* gx, std::int64_t outer, std::int64_t K, std::int64_t inner,
                          int device);
// loss[0] = mean over rows of -((1-eps) logp[n, t_n] + eps/K sum_k logp[n, k]).
template <typename T>
void cross_entropy_forward(const T* logp, const std::int64_t* targets, T* loss, std::int64_t N, std::int64_t K,
                           double eps, int device);
// gx[n, k] = (exp(logp[n, k]) - q[n, k]) * g[0] / N.
template <typename T>
void cross_entropy_backward(const T* logp, const std::int64_t* targets, const T* g, T* gx, std::int64_t N,
                            std::int64_t K, double eps, int device);

// ---- linear algebra (gemm_cuda.cpp, cuBLAS), row-major like cpu::gemm ----
// C[M, N] (+)= op(A) * op(B); op(A) is A[M, K] or A[K, M]^T, op(B) is B[K, N] or B[N, K]^T.
template <typename T>
void gemm(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, const T* A, const T* B, T* C,
          bool accumulate, int device);

// ---- conv3d (conv3d_cuda.cu): cuDNN, or direct kernels for grouped convs when faster ----
template <typename T>
void conv3d_forward(const cpu::Conv3dGeometry& g, const T* x, const T* w, const T* b, T* y, int device);
template <typename T>
void conv3d_backward_input(const cpu::Conv3dGeometry& g, const T* gy, const T* w, T* gx, int device);
template <typename T>
void conv3d_backward_weight(const cpu::Conv3dGeometry& g, const T* gy, const T* x, T* gw, int device);
template <typename T>
void conv3d_backward_bias(const cpu::Conv3dGeometry& g, const T* gy, T* gb, int device);

// Forces an implementation for grouped convs: 0 automatic (time both), 1 cuDNN, 2 direct.
// Tests use it to check both against the CPU.
void set_conv3d_policy(int policy);

}  // namespace vidgrad::cuda
