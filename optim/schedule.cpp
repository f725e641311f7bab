// WarmupCosine arithmetic.
#include "vidgrad/optim/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "vidgrad/core/error.h"

namespace vidgrad::optim {

WarmupCosine::WarmupCosine(const WarmupCosineOptions& opts) : opts_(opts) {
  VG_CHECK(opts.total_steps >= 1, "WarmupCosine: total_steps must be >= 1, got " << opts.total_steps);
  VG_CHECK(opts.warmup_steps >= 0 && opts.warmup_steps <= opts.total_steps,
           "WarmupCosine: warmup_steps " << opts.warmup_steps << " must be in [0, total_steps = " << opts.total_steps
                                         << "]");
  VG_CHECK(opts.base_lr >= 0 && opts.min_lr >= 0 && opts.min_lr <= opts.base_lr,
           "WarmupCosine: need 0 <= min_lr <= base_lr, got min_lr " << opts.min_lr << ", base_lr " << opts.base_lr);
}

double WarmupCosine::lr_at(std::int64_t step) const {
  VG_CHECK(step >= 0, "WarmupCosine: step must be >= 0, got " << step);
  if (step < opts_.warmup_steps)
    return opts_.base_lr * static_cast<double>(step + 1) / static_cast<double>(opts_.warmup_steps);
  const std::int64_t span = std::max<std::int64_t>(opts_.total_steps - opts_.warmup_steps, 1);
  const double t = std::min(1.0, static_cast<double>(step - opts_.warmup_steps) / static_cast<double>(span));
  return opts_.min_lr + (opts_.base_lr - opts_.min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * t));
}

void WarmupCosine::set_step(std::int64_t step) {
  VG_CHECK(step >= 0, "WarmupCosine: step must be >= 0, got " << step);
  step_ = step;
}

double linear_scaled_lr(double base_per_8, std::int64_t batch_size) {
  VG_CHECK(batch_size >= 1, "linear_scaled_lr: batch size must be >= 1, got " << batch_size);
  return base_per_8 * static_cast<double>(batch_size) / 8.0;
}

}  // namespace vidgrad::optim
