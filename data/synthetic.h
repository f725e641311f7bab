// A synthetic temporal dataset in the Something-Something V2 layout (labels.json,
// train.json, validation.json, videos/<id>.webm encoded as VP9), whose classes differ
// only in motion over time. Classes come in pairs: the second of each pair is rendered
// as the first one's frames played backwards, so single frames — and any model that
// ignores frame order — cannot tell the two apart.
//
//   0/1   moving left -> right      / right -> left
//   2/3   moving up                 / down
//   4/5   moving closer (growing)   / away (shrinking)
//   6/7   rotating clockwise        / anticlockwise
//   8/9   appearing (fading in)     / disappearing (fading out)
//   10/11 moving diagonally down    / diagonally up
//
// Each video draws its shape (square, disc, triangle, bar with a marked tip), colours,
// stripes, textured background, speed, start position and pixel noise from a generator
// seeded by (seed, video id): the output is identical for the same options.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "vidgrad/data/image.h"

namespace vidgrad::data {

struct SyntheticOptions {
  std::string out_dir;
  std::int64_t train_per_class = 20;
  std::int64_t validation_per_class = 5;
  int width = 96;    // even
  int height = 72;   // even
  int frames = 16;
  int fps = 12;
  std::uint64_t seed = 0;
  std::string codec = "libvpx-vp9";
};

struct SyntheticSummary {
  std::int64_t train = 0, validation = 0, classes = 0;
};

// Class templates in label order ("Moving [something] from left to right", ...).
const std::vector<std::string>& synthetic_templates();
// The class of each template's time-reversed twin.
std::int64_t synthetic_twin(std::int64_t label);

// Renders the frames of one video (exposed for tests).
std::vector<Image> render_synthetic_video(std::int64_t label, std::uint64_t seed, int width, int height, int frames);

SyntheticSummary generate_synthetic(const SyntheticOptions& opts);

}  // namespace vidgrad::data
