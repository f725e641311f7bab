// Module: a building block with named parameters, buffers, random generators and child
// modules. Names are hierarchical ("layers.3.conv_b.weight"), as in PyTorch's state_dict,
// so checkpoints map one-to-one onto PyTorch modules written with the same names.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "vidgrad/core/random.h"
#include "vidgrad/core/tensor.h"

namespace vidgrad::nn {

class Module {
 public:
  virtual ~Module() = default;
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  virtual Tensor forward(const Tensor& x) = 0;
  Tensor operator()(const Tensor& x) { return forward(x); }
  // The type, for summaries ("Conv3d", "BatchNorm3d", ...).
  virtual std::string type_name() const = 0;

  // train(true) / eval(): switches this module and every descendant.
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Depth-first, in registration order, names joined with '.'.
  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  std::vector<std::pair<std::string, Tensor>> named_buffers() const;
  std::vector<std::pair<std::string, std::shared_ptr<Generator>>> named_generators() const;
  std::vector<std::pair<std::string, const Module*>> named_modules() const;  // "" is this module
  std::vector<Tensor> parameters() const;

  void zero_grad();

  // Moves every floating-point parameter and buffer (this module's and its descendants')
  // to `device`, in place: tensor handles already taken (by an optimizer, say) stay valid
  // and see the new device. Gradients are dropped. Integer buffers (num_batches_tracked)
  // are host-side counters and stay on the CPU. Make the optimizer after moving the model.
  void to(Device device);

  // Parameters and buffers by name (shared handles: writing into them changes the model).
  std::map<std::string, Tensor> state_dict() const;
  // Copies values into the model's tensors. Every name must exist with the same shape;
  // with strict, every model tensor must be present too. Errors list the names.
  void load_state_dict(const std::map<std::string, Tensor>& state, bool strict = true);

 protected:
  Tensor register_parameter(const std::string& name, Tensor t);
  Tensor register_buffer(const std::string& name, Tensor t);
  std::shared_ptr<Generator> register_generator(const std::string& name, std::shared_ptr<Generator> g);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    add_child(name, m);
    return m;
  }

 private:
  void add_child(const std::string& name, std::shared_ptr<Module> m);
  void check_new_name(const std::string& name) const;

  std::vector<std::pair<std::string, Tensor>> params_;
  std::vector<std::pair<std::string, Tensor>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Generator>>> generators_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

}  // namespace vidgrad::nn
