// Turning one dataset sample into a normalised clip tensor (3, T, S, S): open the frames
// (a video file or a folder of JPEGs), pick T of them, and apply the spatial transform
// of the paper's Section 4.1.
//   training: shorter side resized to a random size in [train_resize_min, train_resize_max],
//             random S x S crop, optional horizontal flip (with the dataset's label swap);
//   testing:  shorter side resized to test_resize, centre S x S crop (or one of three
//             crops along the longer side for multi-view evaluation).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "vidgrad/core/random.h"
#include "vidgrad/data/dataset.h"
#include "vidgrad/data/image.h"
#include "vidgrad/data/jpeg.h"
#include "vidgrad/data/video.h"

namespace vidgrad::data {

struct ClipOptions {
  std::int64_t frames = 16;
  std::int64_t crop = 224;
  std::int64_t train_resize_min = 224;
  std::int64_t train_resize_max = 256;
  std::int64_t test_resize = 224;
  std::array<float, 3> mean{0.485f, 0.456f, 0.406f};
  std::array<float, 3> std{0.229f, 0.224f, 0.225f};
  bool flip = false;  // training only; mirrored clips take the dataset's flip label
  bool reverse_time = false;  // play the sampled frames backwards (tests of temporal reasoning)
  DecodeLimits limits;
};

// A readable sequence of frames.
class FrameSource {
 public:
  virtual ~FrameSource() = default;
  virtual std::int64_t num_frames() const = 0;
  virtual Image frame(std::int64_t i) const = 0;
};

// A folder becomes a frame folder (files NNNNN.jpg in numeric order); anything else is
// decoded as a video. Errors name the path.
std::unique_ptr<FrameSource> open_frames(const std::string& path, const DecodeLimits& limits = {});

struct ClipView {
  std::int64_t temporal_clip = 0, temporal_clips = 1;  // multi-view: clip k of K
  int spatial_crop = 1, spatial_crops = 1;             // 0, 1, 2: start, centre, end of the longer side
};

// Writes the clip to out[c][t][y][x] (contiguous (3, T, S, S)) and returns its label
// (the flipped label when the clip was mirrored).
std::int64_t load_clip(const Sample& sample, const ClipOptions& opts, bool training, Generator& gen,
                       const std::vector<std::int64_t>& flip_labels, float* out, const ClipView& view = {});

}  // namespace vidgrad::data
