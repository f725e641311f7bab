// Per-module cost recording for the params/MACs counter: while a CostRecorder is active
// on this thread, layers that do multiply-accumulates report them with their output shape.
#pragma once

#include <cstdint>
#include <map>

#include "vidgrad/core/shape.h"

namespace vidgrad::nn {

class Module;

struct LayerCost {
  std::int64_t macs = 0;
  Shape output;
};

class CostRecorder {
 public:
  CostRecorder();
  ~CostRecorder();
  CostRecorder(const CostRecorder&) = delete;
  CostRecorder& operator=(const CostRecorder&) = delete;

  const std::map<const Module*, LayerCost>& costs() const { return costs_; }

  // Called by layers; does nothing when no recorder is active on this thread.
  static void record(const Module* m, std::int64_t macs, const Shape& output);

 private:
  std::map<const Module*, LayerCost> costs_;
  CostRecorder* previous_;
};

}  // namespace vidgrad::nn
