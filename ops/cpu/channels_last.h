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

}  // namespace vidgrad::cpu
