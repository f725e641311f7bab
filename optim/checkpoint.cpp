// Mapping TrainingCheckpoint onto safetensors tensors and metadata.
#include "vidgrad/optim/checkpoint.h"

#include <charconv>

#include "vidgrad/core/safetensors.h"

namespace vidgrad::optim {

namespace {

constexpr const char* kFormat = "vidgrad.training_checkpoint.v1";

std::int64_t parse_int(const std::map<std::string, std::string>& meta, const std::string& key, const std::string& path) {
  auto it = meta.find(key);
  VG_CHECK(it != meta.end(), "load_checkpoint '" << path << "': metadata has no '" << key << "'");
  std::int64_t v = 0;
  const auto [ptr, ec] = std::from_chars(it->second.data(), it->second.data() + it->second.size(), v);
  VG_CHECK(ec == std::errc() && ptr == it->second.data() + it->second.size() && v >= 0,
           "load_checkpoint '" << path << "': '" << key << "' is '" << it->second << "', not a non-negative integer");
  return v;
}

}  // namespace

void save_checkpoint(const std::string& path, const TrainingCheckpoint& ckpt) {
  std::map<std::string, Tensor> tensors;
  for (const auto& [name, t] : ckpt.model) tensors["model/" + name] = t;
  for (const auto& [name, t] : ckpt.optimizer) tensors["optimizer/" + name] = t;
  std::map<std::string, std::string> meta{
      {"format", kFormat}, {"step", std::to_string(ckpt.step)}, {"epoch", std::to_string(ckpt.epoch)}};
  for (const auto& [name, s] : ckpt.rng) meta["rng/" + name] = s;
  for (const auto& [name, s] : ckpt.extra) meta["extra/" + name] = s;
  save_safetensors(path, tensors, meta);
}

TrainingCheckpoint load_checkpoint(const std::string& path) {
  SafetensorsFile f = load_safetensors(path);
  auto format = f.metadata.find("format");
  VG_CHECK(format != f.metadata.end() && format->second == kFormat,
           "load_checkpoint '" << path << "': not a vidgrad training checkpoint (metadata format is '"
                               << (format == f.metadata.end() ? std::string("missing") : format->second) << "')");
  TrainingCheckpoint ckpt;
  ckpt.step = parse_int(f.metadata, "step", path);
  ckpt.epoch = parse_int(f.metadata, "epoch", path);
  auto strip = [](const std::string& key, const std::string& prefix, std::string& rest) {
    if (key.compare(0, prefix.size(), prefix) != 0) return false;
    rest = key.substr(prefix.size());
    return true;
  };
  std::string rest;
  for (auto& [key, t] : f.tensors) {
    if (strip(key, "model/", rest)) ckpt.model[rest] = t;
    else if (strip(key, "optimizer/", rest)) ckpt.optimizer[rest] = t;
    else VG_THROW("load_checkpoint '" << path << "': unexpected tensor '" << key << "'");
  }
  for (auto& [key, v] : f.metadata) {
    if (strip(key, "rng/", rest)) ckpt.rng[rest] = v;
    else if (strip(key, "extra/", rest)) ckpt.extra[rest] = v;
  }
  return ckpt;
}

}  // namespace vidgrad::optim
