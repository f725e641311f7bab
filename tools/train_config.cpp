// TrainConfig <-> JSON, with every key listed once.
#include "train_config.h"

#include <set>

#include "vidgrad/core/error.h"
#include "vidgrad/models/sevnet.h"

namespace vidgrad::tools {

using nlohmann::json;

// X(key) for every field, in the order they are written.
#define VIDGRAD_TRAIN_CONFIG_FIELDS(X)                                                                         \
  X(dataset) X(data) X(train_split) X(val_split) X(train_list) X(val_list) X(model) X(depths) X(dropout)       \
  X(zero_init_last_bn) X(frames) X(crop) X(resize_min) X(resize_max) X(test_resize) X(flip) X(batch_size)      \
  X(epochs) X(warmup_epochs) X(lr_per_8) X(momentum) X(weight_decay) X(nesterov) X(decay_bn_and_bias)          \
  X(label_smoothing) X(workers) X(threads) X(device) X(seed) X(output) X(log_every) X(checkpoint_every)                  \
  X(max_train_batches) X(max_val_batches) X(max_failure_fraction)

json to_json(const TrainConfig& c) {
  json j;
#define X(k) j[#k] = c.k;
  VIDGRAD_TRAIN_CONFIG_FIELDS(X)
#undef X
  return j;
}

TrainConfig config_from_json(const json& j) {
  VG_CHECK(j.is_object(), "config: expected a JSON object, got " << j.type_name());
  TrainConfig c;
  std::set<std::string> known;
#define X(k) known.insert(#k);
  VIDGRAD_TRAIN_CONFIG_FIELDS(X)
#undef X
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (known.count(it.key())) continue;
    std::string list;
    for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
    VG_THROW("config: unknown key '" << it.key() << "'; known keys: " << list);
  }
#define X(k)                                                                                         \
  if (j.contains(#k)) {                                                                              \
    try {                                                                                            \
      j.at(#k).get_to(c.k);                                                                          \
    } catch (const json::exception& e) {                                                             \
      VG_THROW("config: '" #k "' has the wrong type (" << j.at(#k).dump() << "): " << e.what());     \
    }                                                                                                \
  }
  VIDGRAD_TRAIN_CONFIG_FIELDS(X)
#undef X
  return c;
}

void apply_override(json& j, const std::string& assignment) {
  const auto eq = assignment.find('=');
  VG_CHECK(eq != std::string::npos && eq > 0, "config: override '" << assignment << "' is not key=value");
  const std::string key = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  try {
    j[key] = json::parse(value);
  } catch (const json::exception&) {
    j[key] = value;  // a bare string such as model=sevnet_g6
  }
}

void validate(const TrainConfig& c) {
  VG_CHECK(c.dataset == "ssv2" || c.dataset == "ssv1" || c.dataset == "list",
           "config: dataset must be ssv2, ssv1 or list, got '" << c.dataset << "'");
  VG_CHECK(!c.data.empty(), "config: 'data' (the dataset root) is not set");
  VG_CHECK(c.dataset != "list" || (!c.train_list.empty() && !c.val_list.empty()),
           "config: dataset 'list' needs train_list and val_list");
  models::config_for(c.model);  // throws for an unknown model name
  VG_CHECK(c.depths.size() == 4, "config: depths must have 4 entries, got " << c.depths.size());
  VG_CHECK(c.dropout >= 0 && c.dropout < 1, "config: dropout must be in [0, 1), got " << c.dropout);
  VG_CHECK(c.frames >= 1 && c.crop >= 16, "config: need frames >= 1 and crop >= 16, got " << c.frames << ", " << c.crop);
  VG_CHECK(c.resize_min >= c.crop && c.resize_max >= c.resize_min && c.test_resize >= c.crop,
           "config: need crop <= resize_min <= resize_max and crop <= test_resize, got crop " << c.crop << ", resize_min "
               << c.resize_min << ", resize_max " << c.resize_max << ", test_resize " << c.test_resize);
  VG_CHECK(c.batch_size >= 1 && c.epochs >= 1, "config: need batch_size >= 1 and epochs >= 1");
  VG_CHECK(c.warmup_epochs >= 0 && c.warmup_epochs <= c.epochs,
           "config: warmup_epochs " << c.warmup_epochs << " must be in [0, epochs = " << c.epochs << "]");
  VG_CHECK(c.lr_per_8 > 0, "config: lr_per_8 must be > 0, got " << c.lr_per_8);
  VG_CHECK(c.workers >= 0 && c.threads >= 0, "config: workers and threads must be >= 0");
  parse_device(c.device);  // throws: device: 'x' is not a device; expected cpu, cuda or cuda:N
  VG_CHECK(!c.output.empty(), "config: 'output' is empty");
  VG_CHECK(c.log_every >= 1, "config: log_every must be >= 1, got " << c.log_every);
}

}  // namespace vidgrad::tools
