// Training checkpoints: model state, optimizer state, schedule step, epoch and RNG states
// in one safetensors file, written atomically (a crash mid-write leaves the previous
// checkpoint loadable). Tensors are stored as "model/<name>" and "optimizer/<name>";
// scalars and generator states go in the metadata, so the file also opens in
// safetensors tooling (the "model/" tensors are a PyTorch state_dict with a prefix).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "vidgrad/core/tensor.h"

namespace vidgrad::optim {

struct TrainingCheckpoint {
  std::map<std::string, Tensor> model;      // Module::state_dict()
  std::map<std::string, Tensor> optimizer;  // Sgd::state()
  std::int64_t step = 0;                    // iterations done (the schedule's step)
  std::int64_t epoch = 0;                   // epochs completed
  std::map<std::string, std::string> rng;   // generator name -> Generator::state()
  std::map<std::string, std::string> extra; // free-form (resolved config, metrics)
};

void save_checkpoint(const std::string& path, const TrainingCheckpoint& ckpt);
TrainingCheckpoint load_checkpoint(const std::string& path);

}  // namespace vidgrad::optim
