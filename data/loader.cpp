// Loader: epoch order, batch assembly with the bad-sample policy, and the worker pool.
#include "vidgrad/data/loader.h"

#include <algorithm>
#include <cstdio>
#include <numeric>

#include "vidgrad/core/error.h"

namespace vidgrad::data {

namespace {

// SplitMix64 finaliser: decorrelates seeds built from small integers.
std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

std::uint64_t seed_of(std::uint64_t seed, std::int64_t a, std::int64_t b = 0, std::int64_t c = 0) {
  return mix(mix(mix(seed ^ 0x5eedULL) + static_cast<std::uint64_t>(a)) + static_cast<std::uint64_t>(b)) +
         static_cast<std::uint64_t>(c);
}

}  // namespace

Loader::Loader(Dataset dataset, LoaderOptions opts) : dataset_(std::move(dataset)), opts_(std::move(opts)) {
  VG_CHECK(!dataset_.samples.empty(), "Loader: the dataset has no samples");
  VG_CHECK(opts_.batch_size >= 1, "Loader: batch_size must be >= 1, got " << opts_.batch_size);
  VG_CHECK(opts_.workers >= 0 && opts_.prefetch >= 1,
           "Loader: need workers >= 0 and prefetch >= 1, got " << opts_.workers << " and " << opts_.prefetch);
  VG_CHECK(opts_.temporal_views >= 1 && (opts_.spatial_views == 1 || opts_.spatial_views == 3),
           "Loader: temporal_views must be >= 1 and spatial_views 1 or 3, got " << opts_.temporal_views << " and "
                                                                               << opts_.spatial_views);
  VG_CHECK(opts_.max_failure_fraction >= 0 && opts_.max_failure_fraction <= 1,
           "Loader: max_failure_fraction must be in [0, 1], got " << opts_.max_failure_fraction);
  for (const Sample& s : dataset_.samples)
    VG_CHECK(s.label >= 0, "Loader: sample '" << s.path << "' has a negative label " << s.label);
}

Loader::~Loader() { stop_workers(); }

std::int64_t Loader::batches_per_epoch() const {
  const auto n = static_cast<std::int64_t>(dataset_.samples.size());
  return opts_.drop_last ? n / opts_.batch_size : (n + opts_.batch_size - 1) / opts_.batch_size;
}

std::int64_t Loader::attempts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return attempts_;
}

std::int64_t Loader::failures() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failures_;
}

void Loader::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

void Loader::start_epoch(std::int64_t epoch, std::int64_t first_batch) {
  VG_CHECK(epoch >= 0, "Loader: epoch must be >= 0, got " << epoch);
  VG_CHECK(first_batch >= 0 && first_batch <= batches_per_epoch(),
           "Loader: first_batch " << first_batch << " is outside the epoch's " << batches_per_epoch() << " batches");
  stop_workers();
  const auto n = static_cast<std::int64_t>(dataset_.samples.size());
  order_.resize(static_cast<std::size_t>(n));
  std::iota(order_.begin(), order_.end(), 0);
  if (opts_.shuffle) {
    Generator g(seed_of(opts_.seed, epoch, -1));
    for (std::int64_t i = n - 1; i > 0; --i)  // Fisher-Yates
      std::swap(order_[i], order_[static_cast<std::int64_t>(g.next_u64() % static_cast<std::uint64_t>(i + 1))]);
  }
  epoch_ = epoch;
  total_ = batches_per_epoch();
  consumed_ = claimed_ = first_batch;
  ready_.clear();
  error_ = nullptr;
  stopping_ = false;
  for (int i = 0; i < opts_.workers; ++i) threads_.emplace_back([this] { worker_loop(); });
}

Batch Loader::build(std::int64_t b) {
  const auto n = static_cast<std::int64_t>(dataset_.samples.size());
  const std::int64_t begin = b * opts_.batch_size, end = std::min(n, begin + opts_.batch_size);
  const std::int64_t views = opts_.training ? 1 : opts_.temporal_views * opts_.spatial_views;
  const ClipOptions& co = opts_.clip;
  const std::int64_t clip_elems = 3 * co.frames * co.crop * co.crop;
  Batch batch;
  batch.index = b;
  // Clips are written straight into the batch tensor; in evaluation a failed sample's
  // slot is reused by the next one and the tensor is trimmed at the end.
  batch.clips = Tensor::empty({(end - begin) * views, 3, co.frames, co.crop, co.crop});
  float* data = batch.clips.data<float>();
  std::vector<std::int64_t> labels;
  for (std::int64_t pos = begin; pos < end; ++pos) {
    std::int64_t idx = order_[pos];
    float* slot = data + static_cast<std::int64_t>(labels.size()) * views * clip_elems;
    for (int attempt = 0;; ++attempt) {
      Generator gen(seed_of(opts_.seed, epoch_, pos, attempt));
      if (attempt > 0) idx = static_cast<std::int64_t>(gen.next_u64() % static_cast<std::uint64_t>(n));
      const Sample& s = dataset_.samples[idx];
      try {
        std::int64_t label = s.label;
        if (opts_.training) {
          label = load_clip(s, co, true, gen, dataset_.flip_labels, slot);
        } else {
          std::int64_t v = 0;
          for (std::int64_t k = 0; k < opts_.temporal_views; ++k)
            for (int c = 0; c < opts_.spatial_views; ++c, ++v)
              load_clip(s, co, false, gen, dataset_.flip_labels, slot + v * clip_elems,
                        ClipView{k, opts_.temporal_views, c, opts_.spatial_views});
        }
        labels.push_back(label);
        batch.sample_indices.push_back(idx);
        std::lock_guard<std::mutex> lock(mu_);
        ++attempts_;
        break;
      } catch (const Error& e) {
        std::int64_t attempts = 0, failures = 0;
        {
          std::lock_guard<std::mutex> lock(mu_);
          attempts = ++attempts_;
          failures = ++failures_;
        }
        batch.failures.push_back(s.path + ": " + e.what());
        if (opts_.log_failures)
          std::fprintf(stderr, "[vidgrad data] %s %s: %s\n", opts_.training ? "skipped" : "failed", s.path.c_str(),
                       e.what());
        if (!opts_.training) break;  // evaluation reports, never substitutes
        VG_CHECK(attempts < opts_.min_attempts_for_fraction ||
                     static_cast<double>(failures) <= opts_.max_failure_fraction * static_cast<double>(attempts),
                 "Loader: " << failures << " of " << attempts << " samples failed to load, more than the allowed "
                            << opts_.max_failure_fraction * 100 << "%; last: " << s.path << ": " << e.what());
        VG_CHECK(attempt < opts_.max_retries, "Loader: " << opts_.max_retries + 1
                                                         << " samples in a row failed to load; last: " << s.path
                                                         << ": " << e.what());
      }
    }
  }
  const auto clips = static_cast<std::int64_t>(labels.size()) * views;
  if (clips < batch.clips.shape()[0]) batch.clips = batch.clips.narrow(0, 0, clips).clone();
  batch.labels = Tensor::from_vector(labels, {static_cast<std::int64_t>(labels.size())});
  return batch;
}

void Loader::worker_loop() {
  while (true) {
    std::int64_t b = 0;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || error_ || (claimed_ < total_ && claimed_ < consumed_ + opts_.prefetch); });
      if (stopping_ || error_) return;
      b = claimed_++;
    }
    try {
      Batch batch = build(b);
      std::lock_guard<std::mutex> lock(mu_);
      ready_.emplace(b, std::move(batch));
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!error_) error_ = std::current_exception();
    }
    cv_.notify_all();
  }
}

std::optional<Batch> Loader::next() {
  VG_CHECK(!order_.empty(), "Loader::next: call start_epoch first");
  if (consumed_ >= total_) return std::nullopt;
  if (opts_.workers == 0) return build(consumed_++);
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return error_ || ready_.count(consumed_); });
  if (error_) std::rethrow_exception(error_);
  Batch batch = std::move(ready_.at(consumed_));
  ready_.erase(consumed_);
  ++consumed_;
  lock.unlock();
  cv_.notify_all();
  return batch;
}

}  // namespace vidgrad::data
