// Dropout: in training, zeroes each element with probability p and scales the rest by
// 1 / (1 - p); in eval (or p == 0) it is the identity. The mask comes from `gen`, so the
// same seed gives the same mask.
#pragma once

#include "vidgrad/core/random.h"
#include "vidgrad/core/tensor.h"

namespace vidgrad {

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen);

}  // namespace vidgrad
