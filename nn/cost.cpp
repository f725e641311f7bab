// The thread's active CostRecorder, as a stack so recorders may nest.
#include "vidgrad/nn/cost.h"

namespace vidgrad::nn {

namespace {
thread_local CostRecorder* active = nullptr;
}

CostRecorder::CostRecorder() : previous_(active) { active = this; }
CostRecorder::~CostRecorder() { active = previous_; }

void CostRecorder::record(const Module* m, std::int64_t macs, const Shape& output) {
  if (!active) return;
  LayerCost& c = active->costs_[m];
  c.macs += macs;
  c.output = output;
}

}  // namespace vidgrad::nn
