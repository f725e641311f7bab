// Frame sources and the clip assembly.
#include "vidgrad/data/clip.h"

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "vidgrad/core/error.h"
#include "vidgrad/data/sampling.h"

namespace vidgrad::data {

namespace fs = std::filesystem;

namespace {

class VideoSource : public FrameSource {
 public:
  VideoSource(const std::string& path, const DecodeLimits& limits) : video_(decode_video(path, limits)) {}
  std::int64_t num_frames() const override { return video_.num_frames(); }
  Image frame(std::int64_t i) const override { return video_.rgb(i); }

 private:
  DecodedVideo video_;
};

class FolderSource : public FrameSource {
 public:
  FolderSource(const std::string& dir, const DecodeLimits& limits) : dir_(dir) {
    std::vector<std::pair<long long, std::string>> files;
    for (const auto& e : fs::directory_iterator(dir)) {
      const std::string name = e.path().filename().string();
      if (name.size() < 5 || name.compare(name.size() - 4, 4, ".jpg") != 0) continue;
      const std::string stem = name.substr(0, name.size() - 4);
      if (stem.empty() || stem.size() > 12 || !std::all_of(stem.begin(), stem.end(), ::isdigit)) continue;
      files.emplace_back(std::stoll(stem), e.path().string());
    }
    VG_CHECK(!files.empty(), "frames '" << dir << "': folder has no NNNNN.jpg frames");
    VG_CHECK(static_cast<std::int64_t>(files.size()) <= limits.max_frames,
             "frames '" << dir << "': " << files.size() << " frames exceed the limit of " << limits.max_frames);
    std::sort(files.begin(), files.end());
    for (auto& f : files) paths_.push_back(std::move(f.second));
    jpeg_limits_.max_pixels = limits.max_pixels;
  }
  std::int64_t num_frames() const override { return static_cast<std::int64_t>(paths_.size()); }
  Image frame(std::int64_t i) const override { return read_jpeg(paths_.at(static_cast<std::size_t>(i)), jpeg_limits_); }

 private:
  std::string dir_;
  std::vector<std::string> paths_;
  JpegLimits jpeg_limits_;
};

}  // namespace

std::unique_ptr<FrameSource> open_frames(const std::string& path, const DecodeLimits& limits) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return std::make_unique<FolderSource>(path, limits);
  return std::make_unique<VideoSource>(path, limits);
}

std::int64_t load_clip(const Sample& sample, const ClipOptions& o, bool training, Generator& gen,
                       const std::vector<std::int64_t>& flip_labels, float* out, const ClipView& view) {
  VG_CHECK(o.frames >= 1 && o.crop >= 1, "load_clip: frames and crop must be >= 1, got " << o.frames << ", " << o.crop);
  VG_CHECK(!training || (o.train_resize_min >= o.crop && o.train_resize_max >= o.train_resize_min),
           "load_clip: need crop <= train_resize_min <= train_resize_max, got " << o.crop << ", "
                                                                                << o.train_resize_min << ", "
                                                                                << o.train_resize_max);
  VG_CHECK(training || o.test_resize >= o.crop,
           "load_clip: test_resize " << o.test_resize << " is smaller than the crop " << o.crop);
  const auto source = open_frames(sample.path, o.limits);
  const std::int64_t n = source->num_frames();
  std::vector<std::int64_t> idx = training ? train_frame_indices(n, o.frames, gen)
                                           : multi_view_frame_indices(n, o.frames, view.temporal_clips, view.temporal_clip);
  if (o.reverse_time) std::reverse(idx.begin(), idx.end());

  // The geometry comes from the first sampled frame; later frames of another size (rare
  // resolution changes) are resized to it.
  Image first = source->frame(idx[0]);
  const int shorter = training ? static_cast<int>(o.train_resize_min +
                                                  static_cast<std::int64_t>(gen.next_u64() %
                                                      static_cast<std::uint64_t>(o.train_resize_max - o.train_resize_min + 1)))
                               : static_cast<int>(o.test_resize);
  const auto [rh, rw] = resized_size(first.height, first.width, shorter);
  SpatialTransform t{rh, rw, 0, 0, static_cast<int>(o.crop), static_cast<int>(o.crop), false};
  if (training) {
    t.crop_y = static_cast<int>(gen.next_u64() % static_cast<std::uint64_t>(rh - t.crop_height + 1));
    t.crop_x = static_cast<int>(gen.next_u64() % static_cast<std::uint64_t>(rw - t.crop_width + 1));
    t.flip = o.flip && gen.uniform() < 0.5;
  } else {
    const int spare_y = rh - t.crop_height, spare_x = rw - t.crop_width;
    const int pos = view.spatial_crops == 1 ? 1 : view.spatial_crop;  // 0 start, 1 centre, 2 end
    t.crop_y = rh >= rw ? spare_y * pos / 2 : spare_y / 2;
    t.crop_x = rw > rh ? spare_x * pos / 2 : spare_x / 2;
  }
  const std::int64_t plane = o.frames * o.crop * o.crop;
  for (std::int64_t i = 0; i < o.frames; ++i) {
    const Image frame = i == 0 ? std::move(first) : (idx[i] == idx[i - 1] ? Image() : source->frame(idx[i]));
    float* dst = out + i * o.crop * o.crop;
    if (frame.rgb.empty()) {  // a repeated frame: copy the previous one
      for (int c = 0; c < 3; ++c)
        std::copy(dst - o.crop * o.crop + c * plane, dst + c * plane, dst + c * plane);
      continue;
    }
    transform_frame(frame, t, o.mean, o.std, dst, plane);
  }
  std::int64_t label = sample.label;
  if (t.flip && label >= 0 && label < static_cast<std::int64_t>(flip_labels.size())) label = flip_labels[label];
  return label;
}

}  // namespace vidgrad::data
