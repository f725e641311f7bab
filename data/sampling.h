// Which frames of a video form a clip (paper Section 4.1, after TSN):
//   training: the video is split into T equal segments and one random frame is taken
//             from each;
//   testing:  the middle frame of each segment.
// Videos with fewer frames than T repeat frames (segment i maps to frame floor(i n / T)).
// Multi-view evaluation takes `clips` evenly offset positions inside every segment.
#pragma once

#include <cstdint>
#include <vector>

#include "vidgrad/core/random.h"

namespace vidgrad::data {

std::vector<std::int64_t> train_frame_indices(std::int64_t num_frames, std::int64_t T, Generator& gen);
std::vector<std::int64_t> test_frame_indices(std::int64_t num_frames, std::int64_t T);
// Clip k of `clips` takes, in segment i, the frame at fraction (k + 0.5) / clips of it.
std::vector<std::int64_t> multi_view_frame_indices(std::int64_t num_frames, std::int64_t T, std::int64_t clips,
                                                   std::int64_t k);

}  // namespace vidgrad::data
