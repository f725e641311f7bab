// The data pipeline on files generated during the test: JPEG and video decoding (VP9,
// VP8, H.264), damaged inputs, frame sampling, the spatial transform, dataset parsers,
// the loader's determinism and bad-sample policy, and the synthetic generator.
#include "test_util.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "vidgrad/core/file_io.h"
#include "vidgrad/data/clip.h"
#include "vidgrad/data/dataset.h"
#include "vidgrad/data/jpeg.h"
#include "vidgrad/data/loader.h"
#include "vidgrad/data/sampling.h"
#include "vidgrad/data/synthetic.h"
#include "vidgrad/data/video.h"
#include "vidgrad/data/video_writer.h"

namespace vidgrad::data {
namespace {

namespace fs = std::filesystem;

using DataTest = vidgrad::testing::TempDirTest;

// A frame whose pixels encode (frame, y, x) smoothly, so lossy codecs keep it recognisable.
Image pattern(int h, int w, int t) {
  Image img{h, w, std::vector<std::uint8_t>(static_cast<std::size_t>(h) * w * 3)};
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      std::uint8_t* p = &img.rgb[(static_cast<std::size_t>(y) * w + x) * 3];
      p[0] = static_cast<std::uint8_t>(x * 255 / (w - 1));
      p[1] = static_cast<std::uint8_t>(y * 255 / (h - 1));
      p[2] = static_cast<std::uint8_t>(t * 20);
    }
  return img;
}

double mean_abs_diff(const Image& a, const Image& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.rgb.size(); ++i) s += std::abs(int(a.rgb[i]) - int(b.rgb[i]));
  return s / static_cast<double>(a.rgb.size());
}

std::vector<Image> pattern_video(int frames, int h = 48, int w = 64) {
  std::vector<Image> v;
  for (int t = 0; t < frames; ++t) v.push_back(pattern(h, w, t));
  return v;
}

// ---- JPEG ----

TEST_F(DataTest, JpegRoundTripAndCorruptFiles) {
  const Image img = pattern(30, 40, 3);
  const std::string bytes = encode_jpeg(img, 95);
  const Image back = decode_jpeg(bytes, "mem.jpg");
  EXPECT_EQ(back.height, 30);
  EXPECT_EQ(back.width, 40);
  EXPECT_LT(mean_abs_diff(img, back), 3.0);
  EXPECT_THROW_MSG(decode_jpeg(bytes.substr(0, bytes.size() / 2), "cut.jpg"), "jpeg 'cut.jpg'", "corrupt");
  EXPECT_THROW_MSG(decode_jpeg(bytes.substr(0, bytes.size() - 2), "tail.jpg"), "jpeg 'tail.jpg'", "corrupt");
  EXPECT_THROW_MSG(decode_jpeg("this is not a jpeg", "text.jpg"), "jpeg 'text.jpg'", "not a JPEG");
  EXPECT_THROW_MSG(decode_jpeg("", "empty.jpg"), "jpeg 'empty.jpg'", "empty");
  EXPECT_THROW_MSG(decode_jpeg(bytes, "big.jpg", {.max_pixels = 100}), "40x30", "limit");
  EXPECT_THROW_MSG(read_jpeg(path("missing.jpg")), "cannot open", "missing.jpg");
}

// ---- video ----

TEST_F(DataTest, DecodesVp9Vp8AndH264WithTheRightFrameCount) {
  const auto frames = pattern_video(10);
  for (const auto& [file, codec] : std::vector<std::pair<std::string, std::string>>{
           {"a.webm", "libvpx-vp9"}, {"b.webm", "libvpx"}, {"c.mp4", "libx264"}}) {
    SCOPED_TRACE(codec);
    write_video(path(file), frames, {.codec = codec});
    const DecodedVideo v = decode_video(path(file));
    EXPECT_EQ(v.num_frames(), 10);
    EXPECT_EQ(v.height(), 48);
    EXPECT_EQ(v.width(), 64);
    EXPECT_EQ(v.corrupt_packets(), 0);
    for (int t : {0, 5, 9}) EXPECT_LT(mean_abs_diff(v.rgb(t), frames[t]), 12.0) << "frame " << t;
    EXPECT_THROW_MSG(v.rgb(10), "frame 10 of 10");
  }
}

TEST_F(DataTest, OddRowWidthsDoNotOverrunBuffers) {
  // 426 x 3 bytes per row is not a multiple of swscale's vector width.
  const auto frames = pattern_video(3, 240, 426);
  write_video(path("odd.webm"), frames);
  const DecodedVideo v = decode_video(path("odd.webm"));
  ASSERT_EQ(v.num_frames(), 3);
  for (int t = 0; t < 3; ++t) {
    const Image img = v.rgb(t);
    EXPECT_EQ(img.rgb.size(), 426u * 240 * 3);
    EXPECT_LT(mean_abs_diff(img, frames[t]), 12.0);
  }
}

TEST_F(DataTest, WriterIsBitExact) {
  write_video(path("a.webm"), pattern_video(6));
  write_video(path("b.webm"), pattern_video(6));
  EXPECT_EQ(read_file(path("a.webm")), read_file(path("b.webm")));
}

TEST_F(DataTest, DamagedAndWrongFilesGiveErrorsNotCrashes) {
  write_video(path("good.webm"), pattern_video(20));
  const std::string good = read_file(path("good.webm"));
  write("truncated.webm", good.substr(0, good.size() / 2));
  // A truncated file yields the frames before the cut, or an error; never a crash or hang.
  try {
    const DecodedVideo v = decode_video(path("truncated.webm"));
    EXPECT_GT(v.num_frames(), 0);
    EXPECT_LT(v.num_frames(), 20);
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("truncated.webm"));
  }
  write("header_only.webm", good.substr(0, 40));
  EXPECT_THROW_MSG(decode_video(path("header_only.webm")), "header_only.webm");
  write("zero.webm", "");
  EXPECT_THROW_MSG(decode_video(path("zero.webm")), "zero.webm", "empty");
  write("text.webm", "hello, this is not a video at all\n");
  EXPECT_THROW_MSG(decode_video(path("text.webm")), "text.webm");
  EXPECT_THROW_MSG(decode_video(path("missing.webm")), "missing.webm", "no such file");
  EXPECT_THROW_MSG(decode_video(path("good.webm"), {.max_pixels = 1000}), "good.webm", "64x48", "limit");
  EXPECT_THROW_MSG(decode_video(path("good.webm"), {.max_frames = 5}), "more than 5 frames");
}

// ---- sampling ----

TEST(Sampling, TrainTakesOneRandomFrameFromEachSegment) {
  Generator a(1), b(1);
  const auto ia = train_frame_indices(45, 16, a);
  EXPECT_EQ(ia, train_frame_indices(45, 16, b));
  for (std::int64_t i = 0; i < 16; ++i) {
    EXPECT_GE(ia[i], i * 45 / 16);
    EXPECT_LT(ia[i], (i + 1) * 45 / 16);
  }
  // Over many draws every frame of a segment is used.
  std::set<std::int64_t> seen;
  Generator g(2);
  for (int k = 0; k < 200; ++k) seen.insert(train_frame_indices(45, 16, g)[0]);
  EXPECT_EQ(seen, (std::set<std::int64_t>{0, 1}));
}

TEST(Sampling, TestTakesSegmentMiddlesAndShortVideosRepeatFrames) {
  EXPECT_EQ(test_frame_indices(32, 4), (std::vector<std::int64_t>{4, 12, 20, 28}));
  EXPECT_EQ(test_frame_indices(1, 4), (std::vector<std::int64_t>{0, 0, 0, 0}));
  EXPECT_EQ(test_frame_indices(2, 4), (std::vector<std::int64_t>{0, 0, 1, 1}));
  EXPECT_EQ(test_frame_indices(3, 4), (std::vector<std::int64_t>{0, 0, 1, 2}));
  Generator g(3);
  for (std::int64_t n : {1, 2, 3}) {
    const auto idx = train_frame_indices(n, 8, g);
    ASSERT_EQ(idx.size(), 8u);
    for (auto i : idx) EXPECT_LT(i, n);
    EXPECT_TRUE(std::is_sorted(idx.begin(), idx.end()));
  }
  EXPECT_THROW_MSG(test_frame_indices(0, 4), "0 frames");
  EXPECT_EQ(multi_view_frame_indices(40, 2, 2, 0), (std::vector<std::int64_t>{5, 25}));
  EXPECT_EQ(multi_view_frame_indices(40, 2, 2, 1), (std::vector<std::int64_t>{15, 35}));
}

// ---- transform ----

TEST(Transform, IdentityGeometryNormalisesExactlyAndFlipMirrors) {
  const Image img = pattern(6, 8, 1);
  std::vector<float> out(3 * 6 * 8), flipped(3 * 6 * 8);
  const SpatialTransform t{6, 8, 0, 0, 6, 8, false};
  transform_frame(img, t, {0.5f, 0.5f, 0.5f}, {0.25f, 0.25f, 0.25f}, out.data(), 48);
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 6; ++y)
      for (int x = 0; x < 8; ++x)
        EXPECT_NEAR(out[c * 48 + y * 8 + x], (img.rgb[(y * 8 + x) * 3 + c] / 255.0 - 0.5) / 0.25, 1e-5);
  SpatialTransform tf = t;
  tf.flip = true;
  transform_frame(img, tf, {0.5f, 0.5f, 0.5f}, {0.25f, 0.25f, 0.25f}, flipped.data(), 48);
  for (int y = 0; y < 6; ++y)
    for (int x = 0; x < 8; ++x) EXPECT_EQ(flipped[y * 8 + x], out[y * 8 + 7 - x]);
  EXPECT_EQ(resized_size(240, 426, 224), (std::array<int, 2>{224, 398}));
  EXPECT_EQ(resized_size(426, 240, 256), (std::array<int, 2>{454, 256}));
  EXPECT_THROW_MSG(transform_frame(img, SpatialTransform{6, 8, 2, 0, 6, 8, false}, {}, {1, 1, 1}, out.data(), 48),
                   "outside the resized frame");
}

// ---- datasets ----

TEST_F(DataTest, SomethingSomethingV2LayoutFromTheGenerator) {
  const SyntheticSummary s = generate_synthetic(
      {.out_dir = path("ssv2"), .train_per_class = 1, .validation_per_class = 1, .width = 32, .height = 24, .frames = 6});
  EXPECT_EQ(s.classes, 12);
  const Dataset train = load_ssv2(path("ssv2"), "train"), val = load_ssv2(path("ssv2"), "validation");
  EXPECT_EQ(train.samples.size(), 12u);
  EXPECT_EQ(val.samples.size(), 12u);
  EXPECT_EQ(train.class_names[0], "Moving something from left to right");
  EXPECT_EQ(train.flip_labels[0], 1);  // left <-> right
  EXPECT_EQ(train.flip_labels[2], 2);
  for (const Sample& smp : train.samples) {
    EXPECT_TRUE(fs::exists(smp.path)) << smp.path;
    EXPECT_EQ(decode_video(smp.path).num_frames(), 6);
  }
  EXPECT_THROW_MSG(load_ssv2(path("ssv2"), "test"), "split", "'test'");
}

TEST_F(DataTest, SomethingSomethingV2BadFilesAreClearErrors) {
  fs::create_directories(path("bad"));
  write("bad/labels.json", R"({"Moving something up": "0"})");
  write("bad/train.json", R"([{"id": "1", "template": "Moving [something) up"}])");
  EXPECT_THROW_MSG(load_ssv2(path("bad"), "train"), "entry 0", "id 1", "not in");
  write("bad/train.json", R"([{"id": "1", "template": )");
  EXPECT_THROW_MSG(load_ssv2(path("bad"), "train"), "train.json", "not valid JSON");
  write("bad/labels.json", R"({"Moving something up": "zero"})");
  write("bad/train.json", "[]");
  EXPECT_THROW_MSG(load_ssv2(path("bad"), "train"), "labels.json", "not a non-negative integer");
  EXPECT_THROW_MSG(load_ssv2(path("nowhere"), "train"), "cannot find", "labels");
  EXPECT_EQ(strip_template("Putting [something] on [something]"), "Putting something on something");
}

TEST_F(DataTest, SomethingSomethingV1FrameFolders) {
  fs::create_directories(path("v1/20bn-something-something-v1/42"));
  for (int t = 1; t <= 5; ++t) {
    char name[64];
    std::snprintf(name, sizeof name, "v1/20bn-something-something-v1/42/%05d.jpg", t);
    write(name, encode_jpeg(pattern(24, 32, t)));
  }
  write("v1/something-something-v1-labels.csv", "Pushing something from left to right\nPushing something from right to left\n");
  write("v1/something-something-v1-train.csv", "42;Pushing something from right to left\n");
  const Dataset ds = load_ssv1(path("v1"), "train");
  ASSERT_EQ(ds.samples.size(), 1u);
  EXPECT_EQ(ds.samples[0].label, 1);
  EXPECT_EQ(ds.flip_labels, (std::vector<std::int64_t>{1, 0}));
  const auto src = open_frames(ds.samples[0].path);
  EXPECT_EQ(src->num_frames(), 5);
  EXPECT_LT(mean_abs_diff(src->frame(2), pattern(24, 32, 3)), 4.0);
  write("v1/something-something-v1-train.csv", "42;Juggling\n");
  EXPECT_THROW_MSG(load_ssv1(path("v1"), "train"), "line 1", "Juggling", "not in");
  // A corrupt frame in a folder is an error when that frame is read.
  write("v1/20bn-something-something-v1/42/00003.jpg", encode_jpeg(pattern(24, 32, 3)).substr(0, 100));
  EXPECT_THROW_MSG(open_frames(ds.samples[0].path)->frame(2), "00003.jpg", "corrupt");
}

TEST_F(DataTest, GenericListFile) {
  write("list.txt", "# path label\nvideos/a.webm 0\n\nclips/b 2\n");
  const Dataset ds = load_list(path("list.txt"), "/data");
  ASSERT_EQ(ds.samples.size(), 2u);
  EXPECT_EQ(ds.samples[1].path, "/data/clips/b");
  EXPECT_EQ(ds.samples[1].label, 2);
  EXPECT_EQ(ds.class_names.size(), 3u);
  write("list.txt", "videos/a.webm cat\n");
  EXPECT_THROW_MSG(load_list(path("list.txt"), "/data"), "line 1", "'cat'");
  write("list.txt", "videos/a.webm 5\n");
  EXPECT_THROW_MSG(load_list(path("list.txt"), "/data", {"a", "b"}), "label 5", "2 classes");
}

// ---- loader ----

Dataset small_dataset(const std::string& dir, int per_class = 1) {
  generate_synthetic({.out_dir = dir, .train_per_class = per_class, .validation_per_class = 0, .width = 32,
                      .height = 24, .frames = 8});
  return load_ssv2(dir, "train");
}

LoaderOptions small_options(int workers) {
  LoaderOptions o;
  o.batch_size = 4;
  o.workers = workers;
  o.prefetch = 2;
  o.seed = 5;
  o.clip = {.frames = 4, .crop = 16, .train_resize_min = 16, .train_resize_max = 24, .test_resize = 16};
  return o;
}

std::vector<std::pair<std::vector<float>, std::vector<std::int64_t>>> epoch_batches(Loader& l, std::int64_t epoch,
                                                                                      std::int64_t first = 0) {
  std::vector<std::pair<std::vector<float>, std::vector<std::int64_t>>> out;
  l.start_epoch(epoch, first);
  while (auto b = l.next()) out.emplace_back(b->clips.to_vector<float>(), b->labels.to_vector<std::int64_t>());
  return out;
}

TEST_F(DataTest, LoaderIsDeterministicWhateverTheThreadCount) {
  const Dataset ds = small_dataset(path("ds"));
  Loader l0(ds, small_options(0)), l1(ds, small_options(1)), l3(ds, small_options(3));
  EXPECT_EQ(l0.batches_per_epoch(), 3);
  const auto a = epoch_batches(l0, 0), b = epoch_batches(l1, 0), c = epoch_batches(l3, 0);
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, c);
  EXPECT_EQ(a[0].first.size(), 4u * 3 * 4 * 16 * 16);
  EXPECT_NE(epoch_batches(l1, 1), a);  // reshuffled and re-augmented each epoch
}

TEST_F(DataTest, LoaderResumesMidEpochWithTheRemainingBatches) {
  const Dataset ds = small_dataset(path("ds"));
  Loader full(ds, small_options(2)), resumed(ds, small_options(2));
  const auto all = epoch_batches(full, 3);
  const auto rest = epoch_batches(resumed, 3, 1);
  ASSERT_EQ(rest.size(), 2u);
  EXPECT_EQ(rest[0], all[1]);
  EXPECT_EQ(rest[1], all[2]);
  EXPECT_THROW_MSG(resumed.start_epoch(0, 9), "first_batch 9");
}

TEST_F(DataTest, LoaderKeepsTheLastPartialBatchWithoutDropLast) {
  Dataset ds = small_dataset(path("ds"));
  ds.samples.resize(10);
  LoaderOptions o = small_options(1);
  o.drop_last = false;
  o.training = false;
  Loader l(ds, o);
  EXPECT_EQ(l.batches_per_epoch(), 3);
  const auto b = epoch_batches(l, 0);
  EXPECT_EQ(b.back().second.size(), 2u);
}

TEST_F(DataTest, TrainingReplacesBadSamplesAndEvaluationReportsThem) {
  Dataset ds = small_dataset(path("ds"));
  write("bad.webm", "not a video");
  ds.samples[2].path = path("bad.webm");
  ds.samples[5].path = path("missing.webm");
  LoaderOptions o = small_options(2);
  o.log_failures = false;
  o.shuffle = false;
  o.min_attempts_for_fraction = 1000;  // allow the two failures
  Loader train(ds, o);
  train.start_epoch(0);
  std::int64_t clips = 0;
  while (auto b = train.next()) clips += b->labels.numel();
  EXPECT_EQ(clips, 12);  // replaced, so every batch is full
  EXPECT_GE(train.failures(), 2);  // the two bad samples, and any bad replacement drawn for them
  EXPECT_EQ(train.attempts(), 12 + train.failures());

  o.training = false;
  Loader eval(ds, o);
  eval.start_epoch(0);
  auto first = eval.next();
  EXPECT_EQ(first->labels.numel(), 3);  // the bad sample is left out, not substituted
  ASSERT_EQ(first->failures.size(), 1u);
  EXPECT_THAT(first->failures[0], ::testing::HasSubstr("bad.webm"));

  o.training = true;
  o.min_attempts_for_fraction = 1;
  o.max_failure_fraction = 0.05;
  Loader strict(ds, o);
  strict.start_epoch(0);
  EXPECT_THROW_MSG(while (strict.next()) {}, "failed to load", "more than the allowed");
}

TEST_F(DataTest, MultiViewEvaluationProducesViewsPerVideo) {
  const Dataset ds = small_dataset(path("ds"));
  LoaderOptions o = small_options(1);
  o.training = false;
  o.temporal_views = 2;
  o.spatial_views = 3;
  Loader l(ds, o);
  l.start_epoch(0);
  auto b = l.next();
  EXPECT_EQ(b->clips.shape(), (Shape{4 * 6, 3, 4, 16, 16}));
  EXPECT_EQ(b->labels.numel(), 4);
}

// ---- synthetic ----

TEST(Synthetic, TwinsAreTheSameFramesBackwards) {
  for (std::int64_t label : {0, 2, 4, 6, 8, 10}) {
    const auto fwd = render_synthetic_video(label, 123, 32, 24, 8);
    const auto back = render_synthetic_video(synthetic_twin(label), 123, 32, 24, 8);
    for (int t = 0; t < 8; ++t) EXPECT_EQ(fwd[t].rgb, back[7 - t].rgb) << "label " << label << " frame " << t;
  }
  EXPECT_EQ(synthetic_templates().size(), 12u);
  EXPECT_THROW_MSG(render_synthetic_video(12, 1, 32, 24, 8), "label 12");
}

TEST(Synthetic, MotionIsVisibleAndDeterministic) {
  // Left to right: the pixels that change between consecutive frames move right.
  const auto frames = render_synthetic_video(0, 7, 64, 48, 8);
  auto changed_centre = [](const Image& a, const Image& b) {
    double sx = 0, n = 0;
    for (int y = 0; y < a.height; ++y)
      for (int x = 0; x < a.width; ++x) {
        const std::size_t i = (static_cast<std::size_t>(y) * a.width + x) * 3;
        int d = 0;
        for (int c = 0; c < 3; ++c) d += std::abs(int(a.rgb[i + c]) - int(b.rgb[i + c]));
        if (d > 90) {
          sx += x;
          n += 1;
        }
      }
    return n > 0 ? sx / n : -1.0;
  };
  const double early = changed_centre(frames[0], frames[1]), late = changed_centre(frames[6], frames[7]);
  EXPECT_GE(early, 0.0);
  EXPECT_GT(late, early + 10);
  EXPECT_EQ(render_synthetic_video(0, 7, 64, 48, 8)[3].rgb, frames[3].rgb);
}

}  // namespace
}  // namespace vidgrad::data
