// The work behind `vidgrad train`, `eval` and `predict`: datasets from a config, the
// training loop with metrics, checkpoints and exact resume, and evaluation.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "train_config.h"
#include "vidgrad/data/dataset.h"
#include "vidgrad/data/loader.h"
#include "vidgrad/models/sevnet.h"

namespace vidgrad::tools {

data::Dataset load_dataset(const TrainConfig& c, bool train_split);
std::shared_ptr<models::SevNet> build_model(const TrainConfig& c, std::int64_t classes);
data::ClipOptions clip_options(const TrainConfig& c);

struct EvalResult {
  double top1 = 0, top5 = 0, mean_class = 0, loss = 0;
  std::int64_t videos = 0, failed = 0;
  std::vector<std::vector<std::int64_t>> confusion;  // [true][predicted]
  std::vector<std::string> failures;
};

struct EvalOptions {
  std::int64_t max_batches = 0;         // 0: all
  std::vector<std::int64_t> label_map;  // compare predictions with label_map[label] (e.g. time-reversal twins)
  std::int64_t log_every = 10;
  std::string progress_label = "eval";
  Device device;  // where the model is; batches are moved there
};

// Runs the model in eval mode over the loader's epoch 0; multi-view clips of one video
// are averaged (softmax) before ranking.
EvalResult evaluate(models::SevNet& model, data::Loader& loader, std::int64_t classes, const EvalOptions& opts);

// Trains per the config into c.output; with resume, continues from c.output/last.safetensors.
// stop_after_steps > 0 ends the run after that many steps in all, with a checkpoint to
// resume from (time-boxed runs, and the resume tests). Returns the best validation top-1.
double train(const TrainConfig& c, bool resume, std::int64_t stop_after_steps = 0);

// Loads a training or weights checkpoint written by train(): the model, its config and class names.
struct LoadedModel {
  std::shared_ptr<models::SevNet> model;
  TrainConfig config;
  std::vector<std::string> classes;
};
LoadedModel load_trained(const std::string& checkpoint);

// Writes the confusion matrix as CSV with class names.
void write_confusion_csv(const std::string& path, const EvalResult& r, const std::vector<std::string>& classes);

}  // namespace vidgrad::tools
