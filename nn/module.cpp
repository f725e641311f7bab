// Module bookkeeping: registration, traversal, train/eval and state dicts.
#include "vidgrad/nn/module.h"

#include <set>
#include <sstream>

namespace vidgrad::nn {

namespace {

std::string join(const std::string& prefix, const std::string& name) {
  if (prefix.empty()) return name;
  return name.empty() ? prefix : prefix + "." + name;
}

template <typename T, typename Get>
void collect(const Module& m, const std::string& prefix, std::vector<std::pair<std::string, T>>& out, Get get) {
  for (const auto& [name, v] : get(m)) out.emplace_back(join(prefix, name), v);
}

}  // namespace

void Module::check_new_name(const std::string& name) const {
  VG_CHECK(!name.empty() && name.find('.') == std::string::npos,
           "Module: name '" << name << "' must be non-empty and contain no '.'");
  auto taken = [&](const auto& list) {
    for (const auto& [n, v] : list)
      if (n == name) return true;
    return false;
  };
  VG_CHECK(!taken(params_) && !taken(buffers_) && !taken(children_) && !taken(generators_),
           "Module: name '" << name << "' is registered twice in " << type_name());
}

Tensor Module::register_parameter(const std::string& name, Tensor t) {
  check_new_name(name);
  VG_CHECK(t.defined() && t.is_leaf(), "Module: parameter '" << name << "' must be a defined leaf tensor");
  t.set_requires_grad(true);
  params_.emplace_back(name, t);
  return t;
}

Tensor Module::register_buffer(const std::string& name, Tensor t) {
  check_new_name(name);
  VG_CHECK(t.defined(), "Module: buffer '" << name << "' is undefined");
  buffers_.emplace_back(name, t);
  return t;
}

std::shared_ptr<Generator> Module::register_generator(const std::string& name, std::shared_ptr<Generator> g) {
  check_new_name(name);
  generators_.emplace_back(name, g);
  return g;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> m) {
  check_new_name(name);
  VG_CHECK(m != nullptr, "Module: child '" << name << "' is null");
  children_.emplace_back(name, std::move(m));
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

std::vector<std::pair<std::string, const Module*>> Module::named_modules() const {
  std::vector<std::pair<std::string, const Module*>> out{{"", this}};
  for (const auto& [name, child] : children_)
    for (const auto& [sub, m] : child->named_modules()) out.emplace_back(join(name, sub), m);
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& [prefix, m] : named_modules()) collect(*m, prefix, out, [](const Module& x) { return x.params_; });
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& [prefix, m] : named_modules()) collect(*m, prefix, out, [](const Module& x) { return x.buffers_; });
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<Generator>>> Module::named_generators() const {
  std::vector<std::pair<std::string, std::shared_ptr<Generator>>> out;
  for (const auto& [prefix, m] : named_modules())
    collect(*m, prefix, out, [](const Module& x) { return x.generators_; });
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

void Module::zero_grad() {
  for (Tensor& t : parameters()) t.set_grad(Tensor());
}

std::map<std::string, Tensor> Module::state_dict() const {
  std::map<std::string, Tensor> out;
  for (auto& [name, t] : named_parameters()) out[name] = t;
  for (auto& [name, t] : named_buffers()) out[name] = t;
  return out;
}

void Module::to(Device device) {
  auto move = [&](const Tensor& t) {
    if (!t.defined() || t.device() == device || !is_floating(t.dtype())) return;
    const Tensor moved = t.detach().to(device);  // a contiguous copy on `device`
    TensorImpl* impl = t.impl();
    impl->storage = moved.storage();
    impl->strides = moved.strides();
    impl->offset = 0;
    impl->grad = Tensor();
  };
  for (auto& [name, t] : params_) move(t);
  for (auto& [name, t] : buffers_) move(t);
  for (auto& [name, child] : children_) child->to(device);
}

void Module::load_state_dict(const std::map<std::string, Tensor>& state, bool strict) {
  std::map<std::string, Tensor> mine = state_dict();
  std::vector<std::string> unexpected, missing;
  for (const auto& [name, t] : state)
    if (!mine.count(name)) unexpected.push_back(name);
  for (const auto& [name, t] : mine)
    if (!state.count(name)) missing.push_back(name);
  auto list = [](const std::vector<std::string>& v) {
    std::ostringstream os;
    for (std::size_t i = 0; i < v.size() && i < 10; ++i) os << (i ? ", " : "") << v[i];
    if (v.size() > 10) os << ", ... (" << v.size() << " in all)";
    return os.str();
  };
  VG_CHECK(unexpected.empty(), "load_state_dict: names not in " << type_name() << ": " << list(unexpected));
  VG_CHECK(!strict || missing.empty(), "load_state_dict: " << type_name() << " tensors missing from the state: "
                                                           << list(missing));
  for (const auto& [name, src] : state) {
    const Tensor& dst = mine.at(name);
    VG_CHECK(src.shape() == dst.shape(), "load_state_dict: '" << name << "' has shape " << shape_str(src.shape())
                                                              << " in the state, " << shape_str(dst.shape())
                                                              << " in the model");
    Tensor(dst).copy_(src);
  }
}

}  // namespace vidgrad::nn
