// Pooling over (N, C, T, H, W): average, max and global average.
#pragma once

#include <array>
#include <cstdint>
#include <optional>

#include "vidgrad/core/tensor.h"

namespace vidgrad {

struct Pool3dOptions {
  std::array<std::int64_t, 3> kernel{1, 1, 1};
  std::optional<std::array<std::int64_t, 3>> stride;  // unset: equal to kernel, as in PyTorch
  std::array<std::int64_t, 3> padding{0, 0, 0};       // at most kernel / 2 on each axis
  bool count_include_pad = true;                      // avg only: divide by the padded window size
};

// Output size per axis: (in + 2 pad - kernel) / stride + 1 (floor).
Tensor avg_pool3d(const Tensor& x, const Pool3dOptions& opts);
// Padding counts as -infinity. Ties go to the first maximum in the window.
Tensor max_pool3d(const Tensor& x, const Pool3dOptions& opts);
// Mean over T, H, W: (N, C, T, H, W) -> (N, C).
Tensor global_avg_pool3d(const Tensor& x);

}  // namespace vidgrad
