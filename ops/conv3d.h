// 3-D convolution over video tensors, grouped and depthwise included.
//
//   input  (N, C, T, H, W)
//   weight (O, C/groups, kT, kH, kW)
//   bias   (O) or undefined
//   output (N, O, To, Ho, Wo), To = (T + 2 pT - dT (kT - 1) - 1) / sT + 1, likewise H, W.
//
// Axis order of stride/padding/dilation is (T, H, W). groups must divide C and O;
// groups == C is depthwise.
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
};

Tensor conv3d(const Tensor& input, const Tensor& weight, const Tensor& bias = {}, const Conv3dOptions& opts = {});

}  // namespace vidgrad
