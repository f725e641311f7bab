// SGD with momentum, dampening, Nesterov and weight decay, with PyTorch's update rule:
//   g = grad + weight_decay * p
//   buf = g                                  (first step)
//   buf = momentum * buf + (1 - dampening) * g   (later steps)
//   g = nesterov ? g + momentum * buf : buf
//   p -= lr * g
// Parameters without a gradient are skipped. With decay_bn_and_bias = false, 1-D
// parameters (batch-norm weights and biases, conv and linear biases) get no weight decay.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "vidgrad/core/tensor.h"

namespace vidgrad::optim {

struct SgdOptions {
  double lr = 0.01;
  double momentum = 0.9;
  double dampening = 0.0;
  double weight_decay = 1e-4;
  bool nesterov = false;
  bool decay_bn_and_bias = true;
};

class Sgd {
 public:
  Sgd(std::vector<std::pair<std::string, Tensor>> named_params, const SgdOptions& opts);

  void step();
  void zero_grad();
  void set_lr(double lr) { opts_.lr = lr; }
  double lr() const { return opts_.lr; }
  const SgdOptions& options() const { return opts_; }

  // Momentum buffers keyed by parameter name (absent until a parameter's first step).
  std::map<std::string, Tensor> state() const;
  void load_state(const std::map<std::string, Tensor>& state);

 private:
  struct Slot {
    std::string name;
    Tensor param;
    Tensor momentum;  // undefined until the first step
    bool decay;
  };
  std::vector<Slot> slots_;
  SgdOptions opts_;
};

}  // namespace vidgrad::optim
