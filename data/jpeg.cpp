// TurboJPEG wrappers with RAII handles.
#include "vidgrad/data/jpeg.h"

#include <turbojpeg.h>

#include <memory>

#include "vidgrad/core/error.h"
#include "vidgrad/core/file_io.h"

namespace vidgrad::data {

namespace {

struct TjDeleter {
  void operator()(void* h) const { tjDestroy(h); }
};
using TjHandle = std::unique_ptr<void, TjDeleter>;

}  // namespace

Image decode_jpeg(const std::string& bytes, const std::string& source, const JpegLimits& limits) {
  VG_CHECK(!bytes.empty(), "jpeg '" << source << "': file is empty");
  TjHandle tj(tjInitDecompress());
  VG_CHECK(tj != nullptr, "jpeg '" << source << "': cannot create a TurboJPEG decompressor");
  int width = 0, height = 0, subsamp = 0, colorspace = 0;
  const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  if (tjDecompressHeader3(tj.get(), data, bytes.size(), &width, &height, &subsamp, &colorspace) != 0)
    VG_THROW("jpeg '" << source << "': corrupt, truncated or not a JPEG: " << tjGetErrorStr2(tj.get()));
  VG_CHECK(width > 0 && height > 0, "jpeg '" << source << "': corrupt or truncated: the header gives size " << width
                                            << "x" << height);
  VG_CHECK(static_cast<std::int64_t>(width) * height <= limits.max_pixels,
           "jpeg '" << source << "': size " << width << "x" << height << " is outside the limit of "
                    << limits.max_pixels << " pixels");
  Image img{height, width, std::vector<std::uint8_t>(static_cast<std::size_t>(width) * height * 3)};
  // TJFLAG_STOPONWARNING turns "premature end of data" and similar warnings into errors.
  if (tjDecompress2(tj.get(), data, bytes.size(), img.rgb.data(), width, 0, height, TJPF_RGB,
                    TJFLAG_STOPONWARNING | TJFLAG_ACCURATEDCT) != 0)
    VG_THROW("jpeg '" << source << "': corrupt or truncated: " << tjGetErrorStr2(tj.get()));
  return img;
}

Image read_jpeg(const std::string& path, const JpegLimits& limits) { return decode_jpeg(read_file(path), path, limits); }

std::string encode_jpeg(const Image& image, int quality) {
  VG_CHECK(image.height > 0 && image.width > 0 &&
               image.rgb.size() == static_cast<std::size_t>(image.height) * image.width * 3,
           "encode_jpeg: malformed image " << image.height << "x" << image.width);
  TjHandle tj(tjInitCompress());
  VG_CHECK(tj != nullptr, "encode_jpeg: cannot create a TurboJPEG compressor");
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  if (tjCompress2(tj.get(), image.rgb.data(), image.width, 0, image.height, TJPF_RGB, &buf, &size, TJSAMP_420,
                  quality, TJFLAG_ACCURATEDCT) != 0)
    VG_THROW("encode_jpeg: " << tjGetErrorStr2(tj.get()));
  std::string out(reinterpret_cast<const char*>(buf), size);
  tjFree(buf);
  return out;
}

}  // namespace vidgrad::data
