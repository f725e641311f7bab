// 3-D convolution over video tensors, grouped and depthwise included.
//
//   input  (N, C, T, H, W)
//   weight (O, C/groups, kT, kH, kW)
//   bias   (O) or undefined
//   output (N, O, To, Ho, Wo), To = (T + 2 pT - dT (kT - 1) - 1) / sT + 1, likewise H, W.
//
// Axis order of stride/padding/dilation is (T, H, W). groups must divide C and O;
// groups == C is depthwise. opts.relu fuses a ReLU into the output.
#pragma once

#include <array>
#include <cstdint>

#include "vidgrad/core/tensor.h"

namespace vidgrad {

struct Conv3dOptions {
  std::array<std::int64_t, 3> stride{1, 1, 1};
  std::array<std::int64_t, 3> padding{0, 0, 0};
  std::array<std::int64_t, 3> dilation{1, 1, 1};
  std::int64_t groups = 1;
  // Return relu(conv + bias) instead, the ReLU applied as each output is stored (no second
  // pass over the output; conv3d_batch_norm_inference below adds an inference batch norm
  // to the same store, see nn::Conv3d::forward_bn).
  bool relu = false;
};

Tensor conv3d(const Tensor& input, const Tensor& weight, const Tensor& bias = {}, const Conv3dOptions& opts = {});

// Inference conv + batch norm with running statistics (+ residual) (+ ReLU with opts.relu):
//   y = relu?((conv(x, w) + conv_bias - mean) * bn_weight / sqrt(var + eps) + bn_bias + residual)
// conv_bias, bn_weight, bn_bias and residual may be undefined (0, 1, 0, 0); a residual has
// the output's shape (a residual block's join). On the CPU the batch norm is the conv's
// output epilogue, and so is the residual for pointwise and kT x 1 x 1 convs: each output
// is written once, already normalised (other convs add the residual in a pass of its own).
// Forward only, for evaluation: it throws when grad mode is on and an input requires grad
// (then use conv3d and batch_norm, which record a graph).
Tensor conv3d_batch_norm_inference(const Tensor& input, const Tensor& weight, const Tensor& conv_bias,
                                   const Tensor& bn_weight, const Tensor& bn_bias, const Tensor& running_mean,
                                   const Tensor& running_var, double eps, const Conv3dOptions& opts = {},
                                   const Tensor& residual = {});

}  // namespace vidgrad
