// The batch loader: worker threads build whole batches ahead of the trainer into a
// bounded queue; batches come out in order.
//
// Determinism: the order of an epoch is a permutation drawn from (seed, epoch), and every
// clip's randomness (frames, crop, flip, replacement) from (seed, epoch, position,
// attempt) — so the same seed gives the same batches whatever the thread timing, and
// start_epoch(e, b) resumes mid-epoch with exactly the batches a full run would see.
//
// Bad samples: in training a sample that fails to load is logged with its path, counted,
// and replaced by another (chosen deterministically) up to max_retries times; the run
// fails once more than max_failure_fraction of attempts have failed (after
// min_attempts_for_fraction attempts). In evaluation nothing is substituted: the batch
// leaves the sample out and lists it in Batch::failures.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "vidgrad/core/tensor.h"
#include "vidgrad/data/clip.h"
#include "vidgrad/data/dataset.h"

namespace vidgrad::data {

struct LoaderOptions {
  std::int64_t batch_size = 8;
  int workers = 2;               // 0: batches are built in the calling thread
  int prefetch = 4;              // batches ready or in flight ahead of the consumer
  bool training = true;          // sampling, augmentation and bad-sample policy
  bool shuffle = true;
  bool drop_last = true;
  std::uint64_t seed = 0;
  int max_retries = 8;
  double max_failure_fraction = 0.01;
  std::int64_t min_attempts_for_fraction = 100;
  std::int64_t temporal_views = 1;  // evaluation: clips per video
  int spatial_views = 1;            // evaluation: 1 (centre) or 3 crops
  bool log_failures = true;         // print skipped samples to stderr
  ClipOptions clip;
};

struct Batch {
  std::int64_t index = 0;                   // batch number within the epoch
  Tensor clips;                             // (B * views, 3, T, S, S) float32
  Tensor labels;                            // (B) int64
  std::vector<std::int64_t> sample_indices; // dataset index of each clip's video
  std::vector<std::string> failures;        // "path: reason" for samples that failed
};

class Loader {
 public:
  Loader(Dataset dataset, LoaderOptions opts);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  std::int64_t batches_per_epoch() const;
  // Starts (or restarts) epoch `epoch` at batch `first_batch`.
  void start_epoch(std::int64_t epoch, std::int64_t first_batch = 0);
  // The next batch of the epoch, or nullopt when the epoch is done. Rethrows a worker's error.
  std::optional<Batch> next();

  std::int64_t epoch() const { return epoch_; }
  std::int64_t next_batch() const { return consumed_; }  // the resume position
  std::int64_t attempts() const;
  std::int64_t failures() const;
  const Dataset& dataset() const { return dataset_; }
  const LoaderOptions& options() const { return opts_; }

 private:
  Batch build(std::int64_t b);
  void worker_loop();
  void stop_workers();

  Dataset dataset_;
  LoaderOptions opts_;
  std::vector<std::int64_t> order_;
  std::int64_t epoch_ = 0, total_ = 0, consumed_ = 0, claimed_ = 0;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::int64_t, Batch> ready_;
  std::exception_ptr error_;
  bool stopping_ = false;
  std::int64_t attempts_ = 0, failures_ = 0;
  std::vector<std::thread> threads_;
};

}  // namespace vidgrad::data
