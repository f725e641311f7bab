// Segment arithmetic in integers: segment i covers [floor(i n / T), floor((i+1) n / T)).
#include "vidgrad/data/sampling.h"

#include "vidgrad/core/error.h"

namespace vidgrad::data {

namespace {

void check(std::int64_t n, std::int64_t T) {
  VG_CHECK(n >= 1, "frame sampling: the video has " << n << " frames; at least one is needed");
  VG_CHECK(T >= 1, "frame sampling: clip length must be >= 1, got " << T);
}

}  // namespace

std::vector<std::int64_t> train_frame_indices(std::int64_t n, std::int64_t T, Generator& gen) {
  check(n, T);
  std::vector<std::int64_t> idx(static_cast<std::size_t>(T));
  for (std::int64_t i = 0; i < T; ++i) {
    const std::int64_t lo = i * n / T, hi = (i + 1) * n / T;
    idx[i] = hi > lo ? lo + static_cast<std::int64_t>(gen.next_u64() % static_cast<std::uint64_t>(hi - lo)) : lo;
  }
  return idx;
}

std::vector<std::int64_t> test_frame_indices(std::int64_t n, std::int64_t T) { return multi_view_frame_indices(n, T, 1, 0); }

std::vector<std::int64_t> multi_view_frame_indices(std::int64_t n, std::int64_t T, std::int64_t clips, std::int64_t k) {
  check(n, T);
  VG_CHECK(clips >= 1 && k >= 0 && k < clips, "frame sampling: clip " << k << " of " << clips << " requested");
  std::vector<std::int64_t> idx(static_cast<std::size_t>(T));
  for (std::int64_t i = 0; i < T; ++i) {
    const std::int64_t lo = i * n / T, hi = (i + 1) * n / T;
    // lo + floor((hi - lo) * (2k + 1) / (2 clips)): the middle frame when clips == 1.
    idx[i] = hi > lo ? lo + (hi - lo) * (2 * k + 1) / (2 * clips) : lo;
  }
  return idx;
}

}  // namespace vidgrad::data
