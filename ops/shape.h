// Shape ops: the differentiable views declared on Tensor (reshape, permute, narrow,
// contiguous, clone, to) are defined with these; concat and broadcast_to are free functions.
#pragma once

#include <cstdint>
#include <vector>

#include "vidgrad/core/tensor.h"

namespace vidgrad {

// Joins tensors along `dim`; every other dim must match. Output is a new contiguous tensor.
Tensor concat(const std::vector<Tensor>& tensors, std::int64_t dim);

// A stride-0 view of x expanded to `shape` (NumPy broadcasting rules). Its backward
// sums the gradient back to x's shape.
Tensor broadcast_to(const Tensor& x, const Shape& shape);

// x (N, C, T, H, W) stored channels-last (core/layout.h): itself if it already is, else a
// copy. The gradient passes through unchanged, in whatever layout it comes. x.contiguous()
// converts back.
Tensor to_channels_last(const Tensor& x);

// Sums g over the broadcast dims so the result has `shape` (the backward of broadcasting).
Tensor sum_to(const Tensor& g, const Shape& shape);

}  // namespace vidgrad
