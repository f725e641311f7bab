// Memory layouts of 5-D activations (N, C, T, H, W): NCDHW (contiguous, the default) and
// channels-last (NDHWC), in which the N*T*H*W positions are the rows of a (positions, C)
// matrix. Channels-last is a stride order, not a new kind of tensor: shape() stays
// (N, C, T, H, W), every op reads it through its strides, and the kernels that have a
// channels-last form (ops/cpu/channels_last.h) take it without a conversion. Note
// [channels-last] in ops/cpu/channels_last.cpp says why.
#pragma once

#include <cstdint>

#include "vidgrad/core/tensor.h"

namespace vidgrad {

// The strides of a dense channels-last tensor of 5-D `shape` (N, C, T, H, W).
Shape channels_last_strides(const Shape& shape);

// Whether t is 5-D and dense channels-last (size-1 dims' strides ignored, as
// is_contiguous() ignores them: a tensor with C == 1, or one position, is both).
bool is_channels_last(const Tensor& t);

// An uninitialised dense channels-last tensor of logical shape (N, C, T, H, W).
Tensor empty_channels_last(const Shape& shape, DType dtype = DType::kFloat32, Device device = {});

// t itself if it is channels-last, else a channels-last copy of it, outside autograd (for
// kernels that read channels-last operands; to_channels_last in ops/shape.h is the
// differentiable op).
Tensor channels_last_copy(const Tensor& t);

// Whether t's elements fill one run of storage with no gap and no overlap, in some order of
// its dims (contiguous and channels-last tensors, and their permutations, are dense).
bool is_dense(const Tensor& t);

// An uninitialised tensor of t's shape, dtype and device, laid out as t when t is dense
// (contiguous otherwise): a flat map from t's first element to its last fills it in the
// same element order, so elementwise ops keep a channels-last tensor channels-last.
Tensor empty_like_dense(const Tensor& t);

namespace cpu {

// dst (N, S, C) = src (N, C, S) transposed per sample, and back: the conversions between
// NCDHW (S = T*H*W) and channels-last, by blocks of 16 x 16 that stay in L1.
template <typename T>
void to_channels_last(std::int64_t N, std::int64_t C, std::int64_t S, const T* src, T* dst);
template <typename T>
void from_channels_last(std::int64_t N, std::int64_t C, std::int64_t S, const T* src, T* dst);

}  // namespace cpu

}  // namespace vidgrad
