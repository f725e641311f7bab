// Fully connected layer: y = x W^T + b.
//   x (..., in), weight (out, in), bias (out) or undefined -> y (..., out)
#pragma once

#include "vidgrad/core/tensor.h"

namespace vidgrad {

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = {});

}  // namespace vidgrad
