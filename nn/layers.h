// The layers SEVNet-style video networks are built from. Each owns its parameters and
// buffers under PyTorch's names (weight, bias, running_mean, running_var,
// num_batches_tracked), so state dicts map onto torch.nn modules one-to-one.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "vidgrad/nn/module.h"
#include "vidgrad/ops/batch_norm.h"
#include "vidgrad/ops/conv3d.h"
#include "vidgrad/ops/pool.h"

namespace vidgrad::nn {

struct Conv3dConfig {
  std::int64_t in_channels = 1;
  std::int64_t out_channels = 1;
  std::array<std::int64_t, 3> kernel{1, 1, 1};
  Conv3dOptions opts;  // stride, padding, dilation, groups
  bool bias = false;   // convs followed by batch norm have none
};

// weight (O, C/groups, kT, kH, kW): Kaiming-normal, fan_out, ReLU gain: std = sqrt(2 / (O kT kH kW)).
// bias (O): zeros.
class BatchNorm3d;

class Conv3d : public Module {
 public:
  Conv3d(const Conv3dConfig& cfg, Generator& init);
  Tensor forward(const Tensor& x) override;
  // forward(x), and in *stats the output's batch statistics for the training batch norm
  // that reads it next (conv3d's overload; pass them to forward_after_bn_relu).
  Tensor forward(const Tensor& x, ChannelStatistics* stats);
  // bn(forward(x)) + residual (when defined, the output's shape), relu'd with relu. In
  // evaluation (bn in eval mode, grad mode off) one fused pass,
  // conv3d_batch_norm_inference; else the modules and ops one after the other.
  Tensor forward_bn(const Tensor& x, BatchNorm3d& bn, bool relu, const Tensor& residual = {});
  // forward_bn(x, bn, relu) written into channels [channel, channel + out_channels) of
  // `into` (conv3d_batch_norm_inference_into: a channel concatenation with no copy) and
  // returned as that range. Evaluation only (bn in eval mode, grad mode off).
  Tensor forward_bn_into(const Tensor& into, std::int64_t channel, const Tensor& x, BatchNorm3d& bn, bool relu);
  // forward(bn.forward_relu(x)) as one op, batch_norm_relu_conv3d: for a batch norm whose
  // output only this conv reads (on the CPU that output is then never stored). x_stats:
  // x's batch statistics where the module that wrote x took them (forward above), else
  // null; with y_stats, the output's are taken too.
  Tensor forward_after_bn_relu(const Tensor& x, BatchNorm3d& bn, const ChannelStatistics* x_stats = nullptr,
                               ChannelStatistics* y_stats = nullptr);
  std::string type_name() const override { return "Conv3d"; }
  const Conv3dConfig& config() const { return cfg_; }

  Tensor weight, bias;

 private:
  void record_cost(const Tensor& y);
  Conv3dConfig cfg_;
};

// weight 1, bias 0, running_mean 0, running_var 1 (zero_init: weight 0, for the last BN
// of a residual branch). Normalises over all dims but dim 1.
class BatchNorm3d : public Module {
 public:
  explicit BatchNorm3d(std::int64_t channels, bool zero_init = false, double momentum = 0.1, double eps = 1e-5);
  Tensor forward(const Tensor& x) override;
  // The same, given x's batch statistics where the op that wrote x took them (conv3d's
  // overload with statistics; used in training, instead of a pass over x for them).
  Tensor forward(const Tensor& x, const ChannelStatistics* x_stats);
  // relu(forward(x)) in one pass (BatchNormOptions::relu).
  Tensor forward_relu(const Tensor& x, const ChannelStatistics* x_stats = nullptr);
  // forward(x) + residual, then the ReLU when relu: a residual join (batch_norm_add).
  Tensor forward_add(const Tensor& x, const Tensor& residual, bool relu, const ChannelStatistics* x_stats = nullptr);
  std::string type_name() const override { return "BatchNorm3d"; }
  double eps() const { return eps_; }
  // For ops that take the batch norm into their own passes (Conv3d::forward_after_bn_relu):
  // counts one batch in num_batches_tracked when training, and returns this call's options.
  BatchNormOptions begin_batch(bool relu);

  Tensor weight, bias, running_mean, running_var, num_batches_tracked;

 private:
  Tensor run(const Tensor& x, bool relu, const Tensor& residual = Tensor(), const ChannelStatistics* x_stats = nullptr);
  double momentum_, eps_;
};

// y = x W^T + b; weight ~ N(0, 0.01^2), bias 0 (the usual classifier initialisation).
class Linear : public Module {
 public:
  Linear(std::int64_t in_features, std::int64_t out_features, Generator& init, bool bias = true);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Linear"; }

  Tensor weight, bias;
};

class ReLU : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "ReLU"; }
};

// Draws its masks from its own generator (registered as "generator", so training
// checkpoints save and restore it).
class Dropout : public Module {
 public:
  explicit Dropout(double p, std::uint64_t seed = 0);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Dropout"; }

 private:
  double p_;
  std::shared_ptr<Generator> gen_;
};

class AvgPool3d : public Module {
 public:
  explicit AvgPool3d(const Pool3dOptions& opts) : opts_(opts) {}
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "AvgPool3d"; }

 private:
  Pool3dOptions opts_;
};

// Children named "0", "1", ... applied in order.
class Sequential : public Module {
 public:
  Sequential() = default;
  template <typename M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> m) {
    layers_.push_back(m);
    return register_module(std::to_string(layers_.size() - 1), m);
  }
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Sequential"; }
  std::size_t size() const { return layers_.size(); }

 private:
  std::vector<std::shared_ptr<Module>> layers_;
};

// Squeeze-and-excitation for (N, C, T, H, W): s = sigmoid(fc2(relu(fc1(mean_THW(x)))));
// returns x * s. fc1: C -> C / reduction, fc2: back to C, both 1x1x1 convs with bias.
class SqueezeExcitation3d : public Module {
 public:
  SqueezeExcitation3d(std::int64_t channels, std::int64_t reduction, Generator& init);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "SqueezeExcitation3d"; }

 private:
  std::shared_ptr<Conv3d> fc1_, fc2_;
};

}  // namespace vidgrad::nn
