// The SGD update, one fused loop per parameter.
#include "vidgrad/optim/sgd.h"

#include "vidgrad/core/parallel.h"
#include "vidgrad/core/profile.h"
#ifdef VIDGRAD_WITH_CUDA
#include "vidgrad/optim/cuda/sgd_cuda.h"
#endif

namespace vidgrad::optim {

Sgd::Sgd(std::vector<std::pair<std::string, Tensor>> named_params, const SgdOptions& opts) : opts_(opts) {
  VG_CHECK(opts.lr >= 0, "Sgd: lr must be >= 0, got " << opts.lr);
  VG_CHECK(opts.momentum >= 0, "Sgd: momentum must be >= 0, got " << opts.momentum);
  VG_CHECK(opts.weight_decay >= 0, "Sgd: weight_decay must be >= 0, got " << opts.weight_decay);
  VG_CHECK(!opts.nesterov || (opts.momentum > 0 && opts.dampening == 0),
           "Sgd: Nesterov needs momentum > 0 and dampening 0, got momentum " << opts.momentum << ", dampening "
                                                                               << opts.dampening);
  for (auto& [name, p] : named_params) {
    VG_CHECK(p.defined() && p.is_leaf() && p.requires_grad(),
             "Sgd: parameter '" << name << "' must be a leaf tensor that requires grad");
    VG_CHECK(p.dtype() == DType::kFloat32 && p.is_contiguous(),
             "Sgd: parameter '" << name << "' must be contiguous float32, got " << dtype_name(p.dtype()));
    slots_.push_back({name, p, Tensor(), opts.decay_bn_and_bias || p.dim() > 1});
  }
}

void Sgd::step() {
  profile::Scope scope("sgd step");
  const float lr = static_cast<float>(opts_.lr), mom = static_cast<float>(opts_.momentum);
  const float damp = static_cast<float>(1.0 - opts_.dampening);
  for (Slot& s : slots_) {
    const Tensor g_t = s.param.grad();
    if (!g_t.defined()) continue;
    const Tensor g_c = g_t.contiguous();
    const float wd = s.decay ? static_cast<float>(opts_.weight_decay) : 0.0f;
    const bool first = !s.momentum.defined();
    if (mom != 0.0f && first) s.momentum = Tensor::empty(s.param.shape(), DType::kFloat32, s.param.device());
    VG_CHECK(!s.momentum.defined() || s.momentum.device() == s.param.device(),
             "Sgd: momentum of '" << s.name << "' is on " << s.momentum.device() << ", the parameter on "
                                  << s.param.device() << " (make the optimizer after moving the model)");
    VG_CHECK(g_c.device() == s.param.device(), "Sgd: gradient of '" << s.name << "' is on " << g_c.device()
                                                                    << ", the parameter on " << s.param.device());
    const std::int64_t n = s.param.numel();
    const bool nesterov = opts_.nesterov;
    switch (s.param.device().type) {
      case DeviceType::kCPU: break;
      case DeviceType::kCUDA:
#ifdef VIDGRAD_WITH_CUDA
        cuda::sgd_update(s.param.device_data<float>(), g_c.device_data<float>(),
                         mom != 0.0f ? s.momentum.device_data<float>() : nullptr, n, lr, mom, damp, wd, first,
                         nesterov, s.param.device().index);
        continue;
#else
        VG_THROW("Sgd: parameter '" << s.name << "' is on " << s.param.device() << " but this build has no CUDA");
#endif
    }
    float* p = s.param.data<float>();
    const float* g = g_c.data<float>();
    float* buf = mom != 0.0f ? s.momentum.data<float>() : nullptr;
#pragma omp parallel for simd schedule(static) if (n >= kMinParallelWork)
    for (std::int64_t i = 0; i < n; ++i) {
      float d = g[i] + wd * p[i];
      if (buf) {
        buf[i] = first ? d : mom * buf[i] + damp * d;
        d = nesterov ? d + mom * buf[i] : buf[i];
      }
      p[i] -= lr * d;
    }
  }
}

void Sgd::zero_grad() {
  for (Slot& s : slots_) s.param.set_grad(Tensor());
}

std::map<std::string, Tensor> Sgd::state() const {
  std::map<std::string, Tensor> out;
  for (const Slot& s : slots_)
    if (s.momentum.defined()) out["momentum_buffer." + s.name] = s.momentum;
  return out;
}

void Sgd::load_state(const std::map<std::string, Tensor>& state) {
  std::map<std::string, Slot*> by_key;
  for (Slot& s : slots_) by_key["momentum_buffer." + s.name] = &s;
  for (const auto& [key, t] : state)
    VG_CHECK(by_key.count(key), "Sgd::load_state: '" << key << "' does not name a parameter of this optimizer");
  for (auto& [key, s] : by_key) {
    auto it = state.find(key);
    if (it == state.end()) {
      s->momentum = Tensor();
      continue;
    }
    VG_CHECK(it->second.shape() == s->param.shape(), "Sgd::load_state: '" << key << "' has shape "
                                                                          << shape_str(it->second.shape())
                                                                          << ", the parameter has "
                                                                          << shape_str(s->param.shape()));
    s->momentum = Tensor::empty(s->param.shape(), DType::kFloat32, s->param.device()).copy_(it->second);
  }
}

}  // namespace vidgrad::optim
