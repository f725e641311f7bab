// Data pipeline throughput on Something-Something-like videos (426x240 VP9, 45 frames),
// measured beside `ffmpeg -threads 1 -f concat -i list -f null -`, which decodes the same
// files in one process, in the same run.
//
//   build/bench/data_bench [videos=24] [workdir=/tmp/vidgrad_data_bench]
//
// Prints, per thread: plain ffmpeg decoding, vidgrad decoding alone, and vidgrad's full
// clip path (decode + sample 16 frames + resize/crop/normalise to 16x224x224), then the
// loader's clips/s with 1..N worker threads.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "vidgrad/data/clip.h"
#include "vidgrad/data/loader.h"
#include "vidgrad/data/synthetic.h"
#include "vidgrad/data/video.h"
#include "vidgrad/data/video_writer.h"

using namespace vidgrad;
using namespace vidgrad::data;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace

int main(int argc, char** argv) {
  const int videos = argc > 1 ? std::atoi(argv[1]) : 24;
  const fs::path dir = argc > 2 ? argv[2] : "/tmp/vidgrad_data_bench";
  if (videos < 2) {
    std::fprintf(stderr, "usage: data_bench [videos >= 2] [workdir]\n");
    return 2;
  }
  fs::create_directories(dir);
  std::vector<Sample> samples;
  std::ofstream list(dir / "concat.txt");
  for (int i = 0; i < videos; ++i) {
    const fs::path p = dir / ("v" + std::to_string(i) + ".webm");
    if (!fs::exists(p)) write_video(p.string(), render_synthetic_video(i % 12, 1000 + i, 426, 240, 45), {.fps = 12});
    samples.push_back({p.string(), i % 12});
    list << "file '" << p.string() << "'\n";
  }
  list.close();
  std::printf("%d videos, 426x240 VP9, 45 frames each, in %s\n", videos, dir.c_str());

  // 1. ffmpeg, one decoder thread, all files in one process.
  const std::string cmd = "ffmpeg -v error -threads 1 -f concat -safe 0 -i '" + (dir / "concat.txt").string() +
                          "' -f null - > /dev/null 2>&1";
  auto t = Clock::now();
  const int rc = std::system(cmd.c_str());
  const double ffmpeg_s = seconds_since(t);
  if (rc != 0) std::printf("ffmpeg exited with %d (is the ffmpeg package installed?)\n", rc);

  // 2. vidgrad decoding alone, one thread.
  t = Clock::now();
  std::int64_t frames = 0;
  for (const Sample& s : samples) frames += decode_video(s.path).num_frames();
  const double decode_s = seconds_since(t);

  // 3. vidgrad decode + sample + augment, one thread (the loader's per-thread work).
  ClipOptions co;  // 16 frames, shorter side in [224, 256], 224 crop
  std::vector<float> clip(static_cast<std::size_t>(3 * co.frames * co.crop * co.crop));
  Generator gen(1);
  t = Clock::now();
  for (const Sample& s : samples) load_clip(s, co, true, gen, {}, clip.data());
  const double clip_s = seconds_since(t);

  std::printf("\nper thread, %lld frames decoded\n", static_cast<long long>(frames));
  std::printf("  %-44s %8.3f s  %7.1f videos/s\n", "ffmpeg -threads 1 ... -f null -", ffmpeg_s, videos / ffmpeg_s);
  std::printf("  %-44s %8.3f s  %7.1f videos/s  %.2fx ffmpeg\n", "vidgrad decode", decode_s, videos / decode_s,
              decode_s / ffmpeg_s);
  std::printf("  %-44s %8.3f s  %7.1f clips/s   %.2fx ffmpeg\n", "vidgrad decode+sample+augment (16x224x224)",
              clip_s, videos / clip_s, clip_s / ffmpeg_s);

  // 4. The loader with 1..N workers.
  std::printf("\nloader, batch 4, training augmentation\n");
  Dataset ds;
  ds.samples = samples;
  ds.class_names.assign(12, "c");
  double one = 0;
  const int max_workers = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int w = 1; w <= max_workers; w *= 2) {
    LoaderOptions lo;
    lo.batch_size = 4;
    lo.workers = w;
    lo.prefetch = 2 * w;
    Loader loader(ds, lo);
    loader.start_epoch(0);
    t = Clock::now();
    std::int64_t n = 0;
    while (auto b = loader.next()) n += b->labels.numel();
    const double s = seconds_since(t);
    if (w == 1) one = n / s;
    std::printf("  %d worker%s  %7.1f clips/s  scaling %.2fx\n", w, w == 1 ? " " : "s", n / s, n / s / one);
  }
  return 0;
}
