// Batch normalisation over every dim but the channel dim 1: x is (N, C, ...), e.g.
// (N, C, T, H, W) for BatchNorm3d or (N, C) for BatchNorm1d.
//
// training: normalises with the batch mean and biased variance, and (when running stats
//   are given) updates running_mean/var in place with `momentum`, the variance unbiased
//   (M / (M - 1)), as PyTorch does.
// eval: normalises with running_mean and running_var.
// weight (C) and bias (C) are optional (undefined = 1 and 0).
#pragma once

#include "vidgrad/core/tensor.h"

namespace vidgrad {

struct BatchNormOptions {
  bool training = true;
  double momentum = 0.1;
  double eps = 1e-5;
  // Returns relu(batch_norm(x)), computed in the same pass: the pre-ReLU tensor is never
  // stored, and the backward masks the gradient inside the batch-norm backward.
  bool relu = false;
};

Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                  const Tensor& running_var, const BatchNormOptions& opts = {});

}  // namespace vidgrad
