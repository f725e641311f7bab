// The SGD update: one fused loop over all parameters (Note [one pass over the parameters]).
#include "vidgrad/optim/sgd.h"

#include <omp.h>

#include <algorithm>

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

// Note [one pass over the parameters]: the update is a few arithmetic operations per value
// over five streams (parameter, gradient and momentum read, parameter and momentum
// written), so it runs at the memory's speed; SEVNet-G8 has 164 parameter tensors (4.4M
// values), 140 of them under the 32768 values of a parallel loop of their own (batch-norm
// vectors, grouped-conv filters).
// All CPU parameters are therefore updated in one parallel region, the values of all of
// them split evenly between threads in order (a thread's share runs over consecutive
// parameters), instead of a loop (and a team wake-up) per parameter with the small ones on
// one thread.
void Sgd::step() {
  profile::Scope scope("sgd step");
  const float lr = static_cast<float>(opts_.lr), mom = static_cast<float>(opts_.momentum);
  const float damp = static_cast<float>(1.0 - opts_.dampening);
  const bool nesterov = opts_.nesterov;
  struct Update {
    float* p;
    const float* g;
    float* buf;  // null without momentum
    std::int64_t n;
    float wd;
    bool first;
  };
  std::vector<Update> cpu_updates;
  std::vector<Tensor> keep;  // contiguous copies of strided gradients, alive until the updates ran
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
    switch (s.param.device().type) {
      case DeviceType::kCPU:
        cpu_updates.push_back({s.param.data<float>(), g_c.data<float>(),
                               mom != 0.0f ? s.momentum.data<float>() : nullptr, n, wd, first});
        keep.push_back(g_c);
        continue;
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
  }
  // Values [lo, hi) of update u.
  auto update = [&](const Update& u, std::int64_t lo, std::int64_t hi) {
    float* __restrict p = u.p;
    const float* __restrict g = u.g;
    float* __restrict buf = u.buf;
    const float wd = u.wd;
    if (!buf) {
#pragma omp simd
      for (std::int64_t i = lo; i < hi; ++i) p[i] -= lr * (g[i] + wd * p[i]);
    } else if (u.first) {
#pragma omp simd
      for (std::int64_t i = lo; i < hi; ++i) {
        const float d = g[i] + wd * p[i];
        buf[i] = d;
        p[i] -= lr * (nesterov ? d + mom * d : d);
      }
    } else {
#pragma omp simd
      for (std::int64_t i = lo; i < hi; ++i) {
        const float d = g[i] + wd * p[i];
        const float b = mom * buf[i] + damp * d;
        buf[i] = b;
        p[i] -= lr * (nesterov ? d + mom * b : b);
      }
    }
  };
  std::int64_t total = 0;
  for (const Update& u : cpu_updates) total += u.n;
#pragma omp parallel if (total >= kMinParallelWork)
  {
    const std::int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const std::int64_t v0 = total * t / nt, v1 = total * (t + 1) / nt;  // this thread's values, flat
    std::int64_t start = 0;
    for (const Update& u : cpu_updates) {
      const std::int64_t lo = std::max(v0, start), hi = std::min(v1, start + u.n);
      if (lo < hi) update(u, lo - start, hi - start);
      start += u.n;
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
