// Video decoding through FFmpeg (libavformat, libavcodec, libswscale), restricted to local
// files. Every frame is decoded in order (no seeking); frames stay in the decoder's pixel
// format until a caller asks for some of them as RGB, so a clip that samples 16 of 45
// frames pays the colour conversion 16 times. Limits on pixels, frames and time keep a
// malformed file from exhausting memory or hanging a worker.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "vidgrad/data/image.h"

namespace vidgrad::data {

struct DecodeLimits {
  std::int64_t max_pixels = 4096LL * 2160;  // per frame
  std::int64_t max_frames = 10000;
  std::int64_t max_total_pixels = 1LL << 30;  // all decoded frames together (~1.5 GiB of YUV 4:2:0)
  double max_seconds = 60.0;                // wall time for the whole decode
};

class DecodedVideo {
 public:
  DecodedVideo();
  ~DecodedVideo();
  DecodedVideo(DecodedVideo&&) noexcept;
  DecodedVideo& operator=(DecodedVideo&&) noexcept;

  // Frames actually decoded (the container's frame count is never used).
  std::int64_t num_frames() const;
  int height() const;
  int width() const;
  // Packets the decoder rejected (a damaged or truncated file still yields the frames
  // before the damage).
  std::int64_t corrupt_packets() const;
  // Frame i converted to RGB.
  Image rgb(std::int64_t i) const;

 private:
  friend DecodedVideo decode_video(const std::string&, const DecodeLimits&);
  struct State;
  std::unique_ptr<State> s_;
};

// Lowers FFmpeg's own logging to errors only (its banners and warnings are noise next to
// vidgrad's exceptions). Called by decode_video and write_video; idempotent.
void quiet_ffmpeg_logs();

// Throws vidgrad::Error naming the file for: a missing or unreadable file, a file that is
// not a video, a video with no decodable frame, and any limit exceeded.
DecodedVideo decode_video(const std::string& path, const DecodeLimits& limits = {});

}  // namespace vidgrad::data
