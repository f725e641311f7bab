// The fused resize + crop + flip + normalise pass.
#include "vidgrad/data/image.h"

#include <algorithm>
#include <cmath>

#include "vidgrad/core/error.h"

namespace vidgrad::data {

std::array<int, 2> resized_size(int height, int width, int shorter) {
  VG_CHECK(height > 0 && width > 0 && shorter > 0,
           "resize: need positive sizes, got frame " << height << "x" << width << " and shorter side " << shorter);
  if (height <= width)
    return {shorter, std::max(1, static_cast<int>(std::lround(static_cast<double>(width) * shorter / height)))};
  return {std::max(1, static_cast<int>(std::lround(static_cast<double>(height) * shorter / width))), shorter};
}

void transform_frame(const Image& f, const SpatialTransform& t, const std::array<float, 3>& mean,
                     const std::array<float, 3>& std, float* out, std::int64_t plane_stride) {
  VG_CHECK(f.height > 0 && f.width > 0 && f.rgb.size() == static_cast<std::size_t>(f.height) * f.width * 3,
           "transform_frame: malformed image " << f.height << "x" << f.width << " with " << f.rgb.size() << " bytes");
  VG_CHECK(t.crop_y >= 0 && t.crop_x >= 0 && t.crop_y + t.crop_height <= t.resized_height &&
               t.crop_x + t.crop_width <= t.resized_width,
           "transform_frame: crop " << t.crop_height << "x" << t.crop_width << " at (" << t.crop_y << ", " << t.crop_x
                                    << ") is outside the resized frame " << t.resized_height << "x" << t.resized_width);
  const double sy = static_cast<double>(f.height) / t.resized_height;
  const double sx = static_cast<double>(f.width) / t.resized_width;
  // Per output column: the two source columns and the weight of the right one.
  std::vector<int> x0(t.crop_width), x1(t.crop_width);
  std::vector<float> wx(t.crop_width);
  for (int x = 0; x < t.crop_width; ++x) {
    const int rx = t.crop_x + (t.flip ? t.crop_width - 1 - x : x);
    const double s = std::clamp((rx + 0.5) * sx - 0.5, 0.0, static_cast<double>(f.width - 1));
    x0[x] = static_cast<int>(s);
    x1[x] = std::min(x0[x] + 1, f.width - 1);
    wx[x] = static_cast<float>(s - x0[x]);
  }
  float scale[3], shift[3];
  for (int c = 0; c < 3; ++c) {
    scale[c] = 1.0f / (255.0f * std[c]);
    shift[c] = -mean[c] / std[c];
  }
  for (int y = 0; y < t.crop_height; ++y) {
    const double s = std::clamp((t.crop_y + y + 0.5) * sy - 0.5, 0.0, static_cast<double>(f.height - 1));
    const int y0 = static_cast<int>(s), y1 = std::min(y0 + 1, f.height - 1);
    const float wy = static_cast<float>(s - y0);
    const std::uint8_t* r0 = f.rgb.data() + static_cast<std::size_t>(y0) * f.width * 3;
    const std::uint8_t* r1 = f.rgb.data() + static_cast<std::size_t>(y1) * f.width * 3;
    for (int x = 0; x < t.crop_width; ++x) {
      const float w = wx[x];
      for (int c = 0; c < 3; ++c) {
        const float top = r0[x0[x] * 3 + c] + w * (r0[x1[x] * 3 + c] - r0[x0[x] * 3 + c]);
        const float bottom = r1[x0[x] * 3 + c] + w * (r1[x1[x] * 3 + c] - r1[x0[x] * 3 + c]);
        out[c * plane_stride + static_cast<std::int64_t>(y) * t.crop_width + x] =
            (top + wy * (bottom - top)) * scale[c] + shift[c];
      }
    }
  }
}

}  // namespace vidgrad::data
