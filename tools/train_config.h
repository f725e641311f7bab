// The training configuration of `vidgrad train`: defaults reproduce the SEVNet paper's
// Something-Something recipe (Section 4.1). Read from a JSON file, overridden by
// key=value arguments, written back resolved into the run directory.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace vidgrad::tools {

struct TrainConfig {
  // data
  std::string dataset = "ssv2";  // ssv2 | ssv1 | list
  std::string data;              // dataset root
  std::string train_split = "train";
  std::string val_split = "validation";
  std::string train_list;        // list format: list files relative to data
  std::string val_list;
  // model
  std::string model = "sevnet_g8";  // sevnet_g6/g8/g12[_se], r2plus1d_g*, r3d_g*
  std::vector<int> depths{3, 4, 6, 3};
  double dropout = 0.5;
  bool zero_init_last_bn = false;
  // clips
  std::int64_t frames = 16;
  std::int64_t crop = 224;
  std::int64_t resize_min = 224;
  std::int64_t resize_max = 256;
  std::int64_t test_resize = 224;
  bool flip = false;
  // optimisation
  std::int64_t batch_size = 8;
  std::int64_t epochs = 64;
  std::int64_t warmup_epochs = 4;
  double lr_per_8 = 0.01;  // base learning rate per 8 clips, scaled linearly with batch_size
  double momentum = 0.9;
  double weight_decay = 1e-4;
  bool nesterov = false;
  bool decay_bn_and_bias = true;
  double label_smoothing = 0.0;
  // running
  int workers = 2;
  int threads = 0;  // 0: all cores
  std::string device = "cpu";  // cpu | cuda | cuda:N (batches go up through pinned memory)
  std::uint64_t seed = 0;
  std::string output = "runs/train";
  std::int64_t log_every = 10;          // steps between log lines when not on a terminal
  std::int64_t checkpoint_every = 0;    // steps between mid-epoch checkpoints (0: epoch ends only)
  std::int64_t max_train_batches = 0;   // per epoch, 0 = all (for quick runs)
  std::int64_t max_val_batches = 0;     // 0 = all
  double max_failure_fraction = 0.01;
};

nlohmann::json to_json(const TrainConfig& c);
// Unknown keys and wrong types are errors that name the key.
TrainConfig config_from_json(const nlohmann::json& j);
// Applies "key=value" (value parsed as JSON, falling back to a plain string).
void apply_override(nlohmann::json& j, const std::string& assignment);
// Checks ranges and consistency; throws naming the key and value.
void validate(const TrainConfig& c);

}  // namespace vidgrad::tools
