// 8-bit RGB frames and the per-clip spatial transform: one bilinear pass that resizes,
// crops, optionally flips and normalises a frame straight into a float tensor slice.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace vidgrad::data {

// Interleaved RGB, row-major: rgb[(y * width + x) * 3 + c].
struct Image {
  int height = 0;
  int width = 0;
  std::vector<std::uint8_t> rgb;
};

// Where a clip's output window lies in the frame once its shorter side is resized.
struct SpatialTransform {
  int resized_height = 0;  // the frame resized (aspect kept) to these sizes
  int resized_width = 0;
  int crop_y = 0;          // top-left of the crop in the resized frame
  int crop_x = 0;
  int crop_height = 0;
  int crop_width = 0;
  bool flip = false;       // horizontal flip after cropping
};

// Sizes of a frame of (height, width) whose shorter side is resized to `shorter`.
std::array<int, 2> resized_size(int height, int width, int shorter);

// Writes channel c of the transformed frame to out[c * plane_stride + y * crop_width + x]
// as (value / 255 - mean[c]) / std[c]. Bilinear sampling with half-pixel centres
// (OpenCV's INTER_LINEAR, PyTorch's align_corners=False), edges clamped.
void transform_frame(const Image& frame, const SpatialTransform& t, const std::array<float, 3>& mean,
                     const std::array<float, 3>& std, float* out, std::int64_t plane_stride);

}  // namespace vidgrad::data
