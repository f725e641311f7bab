// Batch normalisation over every dim but the channel dim 1: x is (N, C, ...), e.g.
// (N, C, T, H, W) for BatchNorm3d or (N, C) for BatchNorm1d.
//
// training: normalises with the batch mean and biased variance, and (when running stats
//   are given) updates running_mean/var in place with `momentum`, the variance unbiased
//   (M / (M - 1)), as PyTorch does.
// eval: normalises with running_mean and running_var.
// weight (C) and bias (C) are optional (undefined = 1 and 0).
#pragma once

#include <vector>

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

// A tensor's batch statistics: per channel (dim 1), the mean and biased variance over every
// other dim. An op that writes a tensor a training batch norm will read can take them as it
// writes it (conv3d's overload with statistics), so that the batch norm need not read the
// tensor once more for them (batch_norm, batch_norm_add and batch_norm_relu_conv3d take
// them).
struct ChannelStatistics {
  std::vector<double> mean, var;
};

// x_stats (optional): x's batch statistics, used in training on the CPU instead of a pass
// over x for them (sizes checked against x's channels); empty or elsewhere, ignored.
Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                  const Tensor& running_var, const BatchNormOptions& opts = {},
                  const ChannelStatistics* x_stats = nullptr);

// batch_norm(x) + residual, then the ReLU with opts.relu: a residual block's join. On the
// CPU with the ReLU it is one op: the output is written in the normalising pass (the
// normalised tensor is never stored, nor read back by a separate add), and the backward
// masks the gradient (the residual's) while taking the batch-norm sums. residual has x's
// shape, dtype and device. Otherwise composed of batch_norm and add_relu or add.
// x_stats as batch_norm's.
Tensor batch_norm_add(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                      const Tensor& running_var, const Tensor& residual, const BatchNormOptions& opts = {},
                      const ChannelStatistics* x_stats = nullptr);

namespace ops_detail {

// x_stats where a batch norm with opts normalises with them (training, not empty), else null.
inline const ChannelStatistics* usable_statistics(const ChannelStatistics* x_stats, const BatchNormOptions& opts) {
  return x_stats && opts.training && !x_stats->mean.empty() ? x_stats : nullptr;
}

// For ops that fold a CPU batch norm into passes of their own (batch_norm_relu_conv3d):
// after batch_norm's argument checks, the per-channel mean and 1 / sqrt(var + eps) it
// normalises x (contiguous, on the CPU) with: the batch's in training, the same values
// batch_norm takes (the running statistics then updated in place as batch_norm updates
// them), else the running ones.
// With given (training only), x's statistics are taken from it instead of from a pass over
// x (its sizes are checked against x's channels).
void batch_norm_cpu_statistics(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                               const Tensor& running_var, const BatchNormOptions& opts, std::vector<double>& mean,
                               std::vector<double>& invstd, const ChannelStatistics* given = nullptr);

}  // namespace ops_detail

}  // namespace vidgrad
