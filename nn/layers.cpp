// Layer construction (initialisation) and forward passes over the ops.
#include "vidgrad/nn/layers.h"

#include <cmath>

#include "vidgrad/autograd/grad_mode.h"
#include "vidgrad/nn/cost.h"
#include "vidgrad/ops/dropout.h"
#include "vidgrad/ops/elementwise.h"
#include "vidgrad/ops/linear.h"

namespace vidgrad::nn {

namespace {

Tensor normal(const Shape& shape, double stddev, Generator& gen) {
  Tensor t = Tensor::randn(shape, gen);
  float* p = t.data<float>();
  const std::int64_t n = t.numel();  // once: numel() checks the shape on every call
  for (std::int64_t i = 0; i < n; ++i) p[i] *= static_cast<float>(stddev);
  return t;
}

}  // namespace

Conv3d::Conv3d(const Conv3dConfig& cfg, Generator& init) : cfg_(cfg) {
  VG_CHECK(cfg.in_channels >= 1 && cfg.out_channels >= 1 && cfg.opts.groups >= 1 &&
               cfg.in_channels % cfg.opts.groups == 0 && cfg.out_channels % cfg.opts.groups == 0,
           "Conv3d: groups " << cfg.opts.groups << " must divide in_channels " << cfg.in_channels
                             << " and out_channels " << cfg.out_channels);
  const std::int64_t fan_out = cfg.out_channels * cfg.kernel[0] * cfg.kernel[1] * cfg.kernel[2];
  weight = register_parameter(
      "weight", normal({cfg.out_channels, cfg.in_channels / cfg.opts.groups, cfg.kernel[0], cfg.kernel[1], cfg.kernel[2]},
                       std::sqrt(2.0 / static_cast<double>(fan_out)), init));
  if (cfg.bias) bias = register_parameter("bias", Tensor::zeros({cfg.out_channels}));
}

Tensor Conv3d::forward(const Tensor& x) { return forward(x, nullptr); }

Tensor Conv3d::forward(const Tensor& x, ChannelStatistics* stats) {
  Tensor y = conv3d(x, weight, bias, cfg_.opts, stats);
  record_cost(y);
  return y;
}

void Conv3d::record_cost(const Tensor& y) {
  CostRecorder::record(this, y.numel() * (cfg_.in_channels / cfg_.opts.groups) * cfg_.kernel[0] * cfg_.kernel[1] *
                                 cfg_.kernel[2],
                       y.shape());
}

Tensor Conv3d::forward_bn(const Tensor& x, BatchNorm3d& bn, bool relu, const Tensor& residual) {
  if (bn.is_training() || autograd::GradMode::enabled()) {
    ChannelStatistics s;  // the output's, as the conv writes it, where bn normalises with them
    const Tensor c = forward(x, bn.is_training() ? &s : nullptr);
    if (residual.defined()) return bn.forward_add(c, residual, relu, &s);
    return relu ? bn.forward_relu(c, &s) : bn.forward(c, &s);
  }
  Conv3dOptions opts = cfg_.opts;
  opts.relu = relu;
  Tensor y = conv3d_batch_norm_inference(x, weight, bias, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                         bn.eps(), opts, residual);
  record_cost(y);
  CostRecorder::record(&bn, 0, y.shape());
  return y;
}

Tensor Conv3d::forward_bn_into(const Tensor& into, std::int64_t channel, const Tensor& x, BatchNorm3d& bn,
                               bool relu) {
  VG_CHECK(!bn.is_training() && !autograd::GradMode::enabled(),
           "Conv3d::forward_bn_into: evaluation only (batch norm in eval mode, grad mode off)");
  Conv3dOptions opts = cfg_.opts;
  opts.relu = relu;
  Tensor y = conv3d_batch_norm_inference_into(into, channel, x, weight, bias, bn.weight, bn.bias, bn.running_mean,
                                              bn.running_var, bn.eps(), opts);
  record_cost(y);
  CostRecorder::record(&bn, 0, y.shape());
  return y;
}

Tensor Conv3d::forward_after_bn_relu(const Tensor& x, BatchNorm3d& bn, const ChannelStatistics* x_stats,
                                     ChannelStatistics* y_stats) {
  const BatchNormOptions opts = bn.begin_batch(true);
  Tensor y = batch_norm_relu_conv3d(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, opts, weight, bias,
                                    cfg_.opts, x_stats, y_stats);
  CostRecorder::record(&bn, 0, x.shape());
  record_cost(y);
  return y;
}

BatchNorm3d::BatchNorm3d(std::int64_t channels, bool zero_init, double momentum, double eps)
    : momentum_(momentum), eps_(eps) {
  VG_CHECK(channels >= 1, "BatchNorm3d: channels must be >= 1, got " << channels);
  weight = register_parameter("weight", Tensor::full({channels}, zero_init ? 0.0 : 1.0));
  bias = register_parameter("bias", Tensor::zeros({channels}));
  running_mean = register_buffer("running_mean", Tensor::zeros({channels}));
  running_var = register_buffer("running_var", Tensor::ones({channels}));
  num_batches_tracked = register_buffer("num_batches_tracked", Tensor::zeros({}, DType::kInt64));
}

Tensor BatchNorm3d::forward(const Tensor& x) { return run(x, false); }

Tensor BatchNorm3d::forward(const Tensor& x, const ChannelStatistics* x_stats) { return run(x, false, {}, x_stats); }

Tensor BatchNorm3d::forward_relu(const Tensor& x, const ChannelStatistics* x_stats) {
  return run(x, true, {}, x_stats);
}

Tensor BatchNorm3d::forward_add(const Tensor& x, const Tensor& residual, bool relu, const ChannelStatistics* x_stats) {
  return run(x, relu, residual, x_stats);
}

BatchNormOptions BatchNorm3d::begin_batch(bool relu) {
  const bool training = is_training();
  if (training) num_batches_tracked.data<std::int64_t>()[0] += 1;
  return {.training = training, .momentum = momentum_, .eps = eps_, .relu = relu};
}

Tensor BatchNorm3d::run(const Tensor& x, bool relu, const Tensor& residual, const ChannelStatistics* x_stats) {
  const BatchNormOptions opts = begin_batch(relu);
  Tensor y = residual.defined() ? batch_norm_add(x, weight, bias, running_mean, running_var, residual, opts, x_stats)
                                : batch_norm(x, weight, bias, running_mean, running_var, opts, x_stats);
  CostRecorder::record(this, 0, y.shape());
  return y;
}

Linear::Linear(std::int64_t in_features, std::int64_t out_features, Generator& init, bool with_bias) {
  VG_CHECK(in_features >= 1 && out_features >= 1,
           "Linear: features must be >= 1, got in " << in_features << ", out " << out_features);
  weight = register_parameter("weight", normal({out_features, in_features}, 0.01, init));
  if (with_bias) bias = register_parameter("bias", Tensor::zeros({out_features}));
}

Tensor Linear::forward(const Tensor& x) {
  Tensor y = linear(x, weight, bias);
  CostRecorder::record(this, y.numel() * weight.shape()[1], y.shape());
  return y;
}

Tensor ReLU::forward(const Tensor& x) { return relu(x); }

Dropout::Dropout(double p, std::uint64_t seed) : p_(p) {
  VG_CHECK(p >= 0.0 && p <= 1.0, "Dropout: probability must be in [0, 1], got " << p);
  gen_ = register_generator("generator", std::make_shared<Generator>(seed));
}

Tensor Dropout::forward(const Tensor& x) { return dropout(x, p_, is_training(), *gen_); }

Tensor AvgPool3d::forward(const Tensor& x) { return avg_pool3d(x, opts_); }

Tensor Sequential::forward(const Tensor& x) {
  Tensor h = x;
  for (auto& layer : layers_) h = layer->forward(h);
  return h;
}

SqueezeExcitation3d::SqueezeExcitation3d(std::int64_t channels, std::int64_t reduction, Generator& init) {
  VG_CHECK(reduction >= 1 && channels / reduction >= 1,
           "SqueezeExcitation3d: reduction " << reduction << " leaves no channel of " << channels);
  const std::int64_t hidden = channels / reduction;
  fc1_ = register_module("fc1", std::make_shared<Conv3d>(Conv3dConfig{channels, hidden, {1, 1, 1}, {}, true}, init));
  fc2_ = register_module("fc2", std::make_shared<Conv3d>(Conv3dConfig{hidden, channels, {1, 1, 1}, {}, true}, init));
}

Tensor SqueezeExcitation3d::forward(const Tensor& x) {
  const Tensor pooled = global_avg_pool3d(x).reshape({x.shape()[0], x.shape()[1], 1, 1, 1});
  const Tensor scale = sigmoid(fc2_->forward(relu(fc1_->forward(pooled))));
  return mul(x, scale);
}

}  // namespace vidgrad::nn
