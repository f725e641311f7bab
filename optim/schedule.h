// Learning-rate schedule of the SEVNet paper (Section 4.1): linear warmup, then cosine
// decay, stepped once per iteration.
//   step < warmup:  lr = base * (step + 1) / warmup
//   otherwise:      lr = min + (base - min) * (1 + cos(pi * (step - warmup) / (total - warmup))) / 2
// The paper: 64 epochs with 4 of warmup, base lr 0.01 per 8 clips scaled linearly with
// the batch size (linear_scaled_lr).
#pragma once

#include <cstdint>

namespace vidgrad::optim {

struct WarmupCosineOptions {
  double base_lr = 0.01;
  std::int64_t warmup_steps = 0;
  std::int64_t total_steps = 1;
  double min_lr = 0.0;
};

class WarmupCosine {
 public:
  explicit WarmupCosine(const WarmupCosineOptions& opts);
  double lr_at(std::int64_t step) const;
  double lr() const { return lr_at(step_); }  // the rate for the current step
  void advance() { ++step_; }
  std::int64_t step() const { return step_; }
  void set_step(std::int64_t step);  // for resuming
  const WarmupCosineOptions& options() const { return opts_; }

 private:
  WarmupCosineOptions opts_;
  std::int64_t step_ = 0;
};

// base_per_8 * batch / 8: the paper's 0.01 per 8 clips.
double linear_scaled_lr(double base_per_8, std::int64_t batch_size);

}  // namespace vidgrad::optim
