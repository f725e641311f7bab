// Parameters and multiply-accumulates per layer, measured by running one forward pass
// (eval mode, no graph) on a zero input of the given shape. MACs count the convolutions
// and fully connected layers (batch norm, pooling and activations are not counted);
// FLOPs = 2 x MACs. The SEVNet paper's "GFLOPs" are MACs in this sense.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "vidgrad/nn/module.h"

namespace vidgrad::models {

struct LayerComplexity {
  std::string name;
  std::string type;
  Shape output;
  std::int64_t params = 0;  // this layer's own parameters
  std::int64_t macs = 0;
};

struct ComplexityReport {
  std::vector<LayerComplexity> layers;  // layers with parameters or MACs, in forward order of registration
  std::int64_t total_params = 0;
  std::int64_t total_macs = 0;

  // A fixed-width table, one row per layer and a total line with MACs and FLOPs.
  std::string table() const;
  // Only the total line.
  std::string summary() const;
};

ComplexityReport count_complexity(nn::Module& model, const Shape& input_shape);

}  // namespace vidgrad::models
