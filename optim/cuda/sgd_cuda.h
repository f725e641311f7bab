// The fused SGD update on a CUDA device (the same arithmetic as Sgd::step's CPU loop).
#pragma once

#include <cstdint>

namespace vidgrad::cuda {

// p -= lr * d with d = g + wd p, through the momentum buffer when buf is not null
// (first: the buffer starts as d).
void sgd_update(float* p, const float* g, float* buf, std::int64_t n, float lr, float momentum, float damp, float wd,
                bool first, bool nesterov, int device);

}  // namespace vidgrad::cuda
