// Reductions over dims: sum and mean. An empty dim list reduces over every dim.
#pragma once

#include <cstdint>
#include <vector>

#include "vidgrad/core/tensor.h"

namespace vidgrad {

Tensor sum(const Tensor& x, const std::vector<std::int64_t>& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<std::int64_t>& dims = {}, bool keepdim = false);

}  // namespace vidgrad
