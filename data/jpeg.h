// JPEG decoding through libjpeg-turbo's TurboJPEG API. Truncated or corrupt files are
// errors (TurboJPEG's warnings are treated as failures), never half-decoded images.
#pragma once

#include <string>

#include "vidgrad/data/image.h"

namespace vidgrad::data {

struct JpegLimits {
  std::int64_t max_pixels = 16384LL * 16384;
};

Image decode_jpeg(const std::string& bytes, const std::string& source, const JpegLimits& limits = {});
Image read_jpeg(const std::string& path, const JpegLimits& limits = {});

// Encodes RGB to JPEG (tests and the frame-folder writer).
std::string encode_jpeg(const Image& image, int quality = 90);

}  // namespace vidgrad::data
