// CPU kernels on channels-last (NDHWC) activations: a 5-D tensor of logical shape
// (N, C, T, H, W) stored as (N, T, H, W, C), so that its P = N*T*H*W positions are the
// rows of a (P, C) row-major matrix and a position's channels are contiguous. Note
// [channels-last] in channels_last.cpp says why; core/layout.h has the conversions.
#pragma once

#include <cstdint>

#include "vidgrad/ops/cpu/row_gemm.h"
#include "vidgrad/ops/cpu/simd.h"

namespace vidgrad::cpu {

// Whether the channels-last 1x1x1 kernels take C input and O output channels: both whole
// vectors of T (16 float or 8 double lanes with AVX-512; 8 or 4 with AVX2).
template <typename T>
constexpr bool pointwise_channels_last_fits(std::int64_t C, std::int64_t O) {
  return C > 0 && O > 0 && C % Vec<T>::kLanes == 0 && O % Vec<T>::kLanes == 0;
}

// y (P, O) = ep(x (P, C) w^T), w (O, C): a 1x1x1 conv's forward on channels-last data,
// with the epilogue of row_gemm applied per output channel (a column of y here; a
// residual is laid out like y, ep.ldr unused). With accumulate, y = ep(y + x w^T).
template <typename T>
void pointwise_channels_last_forward(std::int64_t P, std::int64_t C, std::int64_t O, const T* x, const T* w, T* y,
                                     const GemmEpilogue<T>& ep = {}, bool accumulate = false);

// gx (P, C) (=|+=) gy (P, O) w: the input gradient of the same conv.
template <typename T>
void pointwise_channels_last_backward_input(std::int64_t P, std::int64_t C, std::int64_t O, const T* gy, const T* w,
                                            T* gx, bool accumulate = false);

// gw (O, C) = gy^T x summed over the P positions: the weight gradient. Written.
template <typename T>
void pointwise_channels_last_backward_weight(std::int64_t P, std::int64_t C, std::int64_t O, const T* gy, const T* x,
                                             T* gw);

// gb (O) = sum over the P positions of gy (P, O). Written.
template <typename T>
void channels_last_channel_sums(std::int64_t P, std::int64_t O, const T* gy, T* gb);

// The per-channel mean and biased variance of y (P, O) over its positions, O values each
// (a batch norm's batch statistics), in double about each channel's first value.
template <typename T>
void channels_last_statistics(std::int64_t P, std::int64_t O, const T* y, double* mean, double* var);

// ---- the 3x1x1 conv with time padding 1 (SEVNet's temporal convs) ----
// x (N, T, S, C) and y (N, T, S, O) channels-last (S = H*W), w (O, C, 3).

// y = ep(conv(x, w)), by Winograd's F(4, 3) along time (Note [channels-last Winograd] in
// channels_last.cpp), ep as pointwise_channels_last_forward's.
template <typename T>
void temporal_channels_last_forward(std::int64_t N, std::int64_t T_, std::int64_t S, std::int64_t C, std::int64_t O,
                                    const T* x, const T* w, T* y, const GemmEpilogue<T>& ep = {});

// gx (N, T, S, C) = the input gradient given gy (N, T, S, O). Written.
template <typename T>
void temporal_channels_last_backward_input(std::int64_t N, std::int64_t T_, std::int64_t S, std::int64_t C,
                                           std::int64_t O, const T* gy, const T* w, T* gx);

// gw (O, C, 3) = the weight gradient: per tap, the rows of gy against x's rows one frame
// earlier, the same or later, as the 1x1x1's weight gradient sums them. Written.
template <typename T>
void temporal_channels_last_backward_weight(std::int64_t N, std::int64_t T_, std::int64_t S, std::int64_t C,
                                            std::int64_t O, const T* gy, const T* x, T* gw);

// ---- batch norm on channels-last x (P, C), C a whole number of vectors of T ----

template <typename T>
constexpr bool channels_last_vectors_fit(std::int64_t C) {
  return C > 0 && C % Vec<T>::kLanes == 0;
}

// y = fma(x, a[c], shift[c]) (+ residual) (then the ReLU), a and shift from bn_affine:
// batch_norm_apply's values bit for bit. residual is laid out as x, or null.
template <typename T>
void batch_norm_channels_last_apply(const T* x, std::int64_t P, std::int64_t C, const double* mean,
                                    const double* invstd, const T* w, const T* b, T* y, bool relu,
                                    const T* residual = nullptr);

// batch_norm_backward (batch_norm_cpu.h) on channels-last x and gy: gx (may be gy), gw,
// gb (each may be null), the fused ReLU's mask recomputed from x.
template <typename T>
void batch_norm_channels_last_backward(const T* x, const T* gy, std::int64_t P, std::int64_t C, const double* mean,
                                       const double* invstd, const T* w, const T* b, bool batch_stats, T* gx, T* gw,
                                       T* gb, bool relu);

// batch_norm_add_relu_backward on channels-last tensors: gres = gy where y > 0 (may be gy),
// then gx, gw, gb (each may be null) from it.
template <typename T>
void batch_norm_add_relu_channels_last_backward(const T* x, const T* y, const T* gy, std::int64_t P, std::int64_t C,
                                                const double* mean, const double* invstd, const T* w,
                                                bool batch_stats, T* gres, T* gx, T* gw, T* gb);

}  // namespace vidgrad::cpu
