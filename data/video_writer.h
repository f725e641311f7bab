// Encoding RGB frames into a video file with libavcodec/libavformat (the container comes
// from the file extension: .webm, .mp4, .mkv). Used by the synthetic dataset generator
// and by tests that need real files. Output is bit-exact for the same frames and options.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "vidgrad/data/image.h"

namespace vidgrad::data {

struct VideoWriterOptions {
  std::string codec = "libvpx-vp9";  // or "libvpx" (VP8), "libx264"
  int fps = 12;
  // Passed to the encoder (av_opt_set); defaults tuned for small, fast files are added
  // for libvpx-vp9 / libvpx (deadline realtime, cpu-used 8, crf 32) and libx264
  // (preset ultrafast, crf 23) unless given here.
  std::map<std::string, std::string> codec_options;
};

void write_video(const std::string& path, const std::vector<Image>& frames, const VideoWriterOptions& opts = {});

}  // namespace vidgrad::data
