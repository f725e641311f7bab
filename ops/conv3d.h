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
#include "vidgrad/ops/batch_norm.h"

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

// conv3d, and in *stats the output's batch statistics (ChannelStatistics in batch_norm.h),
// for a training batch norm that reads it next. On the CPU the pointwise and kT x 1 x 1
// convs (row GEMM or Winograd) and the direct-plane convs (grouped 1 x kH x kW, the stem)
// take them as they store the output, with no pass over it (Note [output statistics] in
// ops/cpu/row_gemm.cpp), other convs in a pass after it; they
// equal batch_norm's up to rounding (summed in another order). On other devices stats is
// cleared, and the batch norm takes its own.
Tensor conv3d(const Tensor& input, const Tensor& weight, const Tensor& bias, const Conv3dOptions& opts,
              ChannelStatistics* stats);

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

// The same, written into channels [channel, channel + O) of `into` (contiguous, shape (N,
// C', To, Ho, Wo) with C' >= channel + O, the input's dtype and device, sharing no storage
// with the input, weight or residual), and returned as that channel range (a view): convs
// whose outputs are joined along channels write the joined tensor with no concat copy
// (Note [concat in place] in ops/conv3d.cpp). Forward only, like the op above.
Tensor conv3d_batch_norm_inference_into(const Tensor& into, std::int64_t channel, const Tensor& input,
                                        const Tensor& weight, const Tensor& conv_bias, const Tensor& bn_weight,
                                        const Tensor& bn_bias, const Tensor& running_mean, const Tensor& running_var,
                                        double eps, const Conv3dOptions& opts = {}, const Tensor& residual = {});

// conv3d(batch_norm(x) with its ReLU, weight, bias, opts): a batch norm whose output only
// this conv reads (SEVNet's 3x1x1 convs and their batch norms, in training). The same
// values, gradients (x, bn_weight, bn_bias, weight, bias) and running-statistics update
// as the two ops one after the other; bn_opts.relu must be set. On the CPU, where the
// conv's kernels take an input prologue (cpu::conv3d_takes_prologue), the normalised
// tensor is never stored: the conv normalises each value of x as it reads it, in the
// forward and again in the weight gradient, and the backward recomputes the ReLU's mask
// from x (Note [input prologue] in ops/cpu/conv3d_cpu.h). Otherwise the two ops are
// composed. x_stats (optional, training only): x's batch statistics as the op that wrote x
// took them (conv3d's overload above), used instead of a pass over x for them where the
// batch norm folds; the composed ops take their own. y_stats (optional): the output's
// batch statistics, as conv3d's overload takes them.
Tensor batch_norm_relu_conv3d(const Tensor& x, const Tensor& bn_weight, const Tensor& bn_bias,
                              const Tensor& running_mean, const Tensor& running_var, const BatchNormOptions& bn_opts,
                              const Tensor& weight, const Tensor& bias = {}, const Conv3dOptions& opts = {},
                              const ChannelStatistics* x_stats = nullptr, ChannelStatistics* y_stats = nullptr);

}  // namespace vidgrad
