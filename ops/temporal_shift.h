// Temporal shift (TSM): moves part of the channels one step along time at zero cost.
//   x (N, C, T, H, W), fold = C / fold_div
//   channels [0, fold):        out[t] = x[t + 1]  (shifted one step back in time)
//   channels [fold, 2 fold):   out[t] = x[t - 1]  (shifted one step forward)
//   the rest unchanged; frames shifted in from outside [0, T) are zero.
// Its backward is the opposite shift.
#pragma once

#include <cstdint>

#include "vidgrad/core/tensor.h"

namespace vidgrad {

Tensor temporal_shift(const Tensor& x, std::int64_t fold_div = 8);

}  // namespace vidgrad
