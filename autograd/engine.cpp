// The reverse-mode engine: topological walk from the root, gradient accumulation into
// nodes and leaves, graph release. Also GradMode and graph recording (node.h).
#include <unordered_map>

#include "vidgrad/autograd/grad_mode.h"
#include "vidgrad/autograd/node.h"
#include "vidgrad/core/layout.h"
#include "vidgrad/core/profile.h"
#include "vidgrad/core/strided.h"

namespace vidgrad::autograd {

namespace {

thread_local bool grad_mode_enabled = true;

// The pending gradients a running closure may add into (Note [accumulating in place]):
// one entry per input, null where it may not.
thread_local const std::vector<Tensor*>* accumulation_targets = nullptr;
// Whether the running closure's incoming gradient is the engine's alone (Note [reusing
// the output gradient]).
thread_local bool grad_output_exclusive = false;

// dst += src (same shape, dtype and device; dst owned by the engine or a leaf's .grad).
void add_into(Tensor& dst, const Tensor& src) { dst.add_(src); }

// A copy in t's own layout when t is dense (a channels-last gradient stays channels-last).
Tensor fresh_copy(const Tensor& t) { return empty_like_dense(t).copy_(t); }

// True when `t` is the only handle on its data: no view, saved tensor or other gradient
// shares the storage, so adding into it in place cannot be observed elsewhere. (Closures
// may return the incoming gradient itself, or views of it, for several inputs: those
// share storage and are copied before accumulating.)
bool exclusively_owned(const Tensor& t) {
  return t.shared_impl().use_count() == 1 && t.storage().use_count() == 1;
}

void check_grad(const Tensor& g, const Shape& shape, DType dtype, Device device, const std::string& producer,
                const std::string& target) {
  VG_CHECK(g.defined(), "backward: " << producer << " returned no gradient for " << target);
  VG_CHECK(g.shape() == shape, "backward: " << producer << " returned a gradient of shape " << shape_str(g.shape())
                                            << " for " << target << " of shape " << shape_str(shape));
  VG_CHECK(g.dtype() == dtype, "backward: " << producer << " returned a " << dtype_name(g.dtype())
                                            << " gradient for " << target << " of dtype " << dtype_name(dtype));
  VG_CHECK(g.device() == device, "backward: " << producer << " returned a gradient on " << g.device() << " for "
                                              << target << " on " << device);
}

// Note [taking a leaf's gradient]: a leaf's first gradient is its own copy, never an alias
// of a gradient another node may still hold. A gradient a closure made for this input alone
// (the engine's grads entry the only handle on it and on its storage, a whole dense array:
// contiguous or channels-last) is taken as it is: copying every parameter's gradient once a step cost about as
// much as the autograd engine's own work (perf, 4 x 8x112 SEVNet-G8 training: the copy in
// 32 of 70 engine samples).
void accumulate_leaf(TensorImpl& leaf, const Tensor& g, bool owned = false) {
  if (!leaf.grad.defined()) {
    leaf.grad = owned ? g : fresh_copy(g);
  } else {
    add_into(leaf.grad, g);
  }
}

// True when g may become a leaf's gradient without a copy (Note [taking a leaf's gradient]).
bool takeable(const Tensor& g) {
  return exclusively_owned(g) && is_dense(g) && g.offset() == 0 &&
         g.storage()->nbytes() == static_cast<std::size_t>(g.numel()) * dtype_size(g.dtype());
}

}  // namespace

Tensor accumulation_target(std::size_t input) {
  if (!accumulation_targets || input >= accumulation_targets->size() || !(*accumulation_targets)[input]) return {};
  return *(*accumulation_targets)[input];
}

bool grad_output_reusable() { return grad_output_exclusive; }

bool GradMode::enabled() { return grad_mode_enabled; }
void GradMode::set_enabled(bool enabled) { grad_mode_enabled = enabled; }

bool needs_graph(std::initializer_list<const Tensor*> inputs) {
  if (!GradMode::enabled()) return false;
  for (const Tensor* t : inputs)
    if (t->requires_grad()) return true;
  return false;
}

bool needs_graph(const std::vector<Tensor>& inputs) {
  if (!GradMode::enabled()) return false;
  for (const Tensor& t : inputs)
    if (t.requires_grad()) return true;
  return false;
}

void attach(const Tensor& output, const char* name, const std::vector<Tensor>& inputs, Node::BackwardFn fn) {
  auto node = std::make_shared<Node>();
  node->name = name;
  node->edges.resize(inputs.size());
  node->needs.resize(inputs.size());
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& in = inputs[i];
    if (in.defined() && in.requires_grad()) {
      if (in.grad_fn()) {
        node->edges[i].node = in.grad_fn();
      } else {
        // A leaf: hold its impl so the gradient lands in the user's tensor.
        node->edges[i].leaf = in.shared_impl();
      }
    }
    node->needs[i] = node->edges[i].needed();
  }
  node->output_shape = output.shape();
  node->output_dtype = output.dtype();
  node->output_device = output.device();
  node->backward = std::move(fn);
  output.set_grad_fn(std::move(node));
}

}  // namespace vidgrad::autograd

namespace vidgrad {

void Tensor::backward(const Tensor& grad_in, bool retain_graph) const {
  using autograd::Node;
  VG_CHECK(requires_grad(), "backward: the tensor does not require grad (no input of the graph that made it "
                            "requires grad, or it was computed under NoGradGuard)");
  Tensor grad = grad_in;
  if (!grad.defined()) {
    VG_CHECK(numel() == 1, "backward: a gradient can only be implied for a one-element output, got shape "
                               << shape_str(shape()) << "; pass the gradient explicitly");
    grad = Tensor::ones(shape(), dtype(), device());
  }
  autograd::NoGradGuard no_grad;  // closures must not record graphs of their own

  if (!grad_fn()) {  // backward on a leaf: its gradient is the incoming one
    autograd::check_grad(grad, shape(), dtype(), device(), "backward", "the root");
    autograd::accumulate_leaf(*impl(), grad);
    return;
  }

  // Count, for every node reachable from the root, how many edges point at it.
  std::unordered_map<Node*, int> deps;
  std::vector<Node*> stack{grad_fn().get()};
  deps[grad_fn().get()] = 0;
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const autograd::Edge& e : n->edges) {
      if (!e.node) continue;
      auto [it, inserted] = deps.try_emplace(e.node.get(), 0);
      ++it->second;
      if (inserted) stack.push_back(e.node.get());
    }
  }

  autograd::check_grad(grad, shape(), dtype(), device(), "backward", "the root");
  std::unordered_map<Node*, Tensor> pending{{grad_fn().get(), grad}};
  std::vector<Node*> ready{grad_fn().get()};
  while (!ready.empty()) {
    Node* n = ready.back();
    ready.pop_back();
    VG_CHECK(n->backward != nullptr, "backward: the graph through " << n->name
                                         << " was already freed by an earlier backward(); pass retain_graph=true "
                                            "to the first call to backward through it twice");
    Tensor g = std::move(pending[n]);
    pending.erase(n);
    // Pending gradients the closure may add into: defined, the only handle on their data,
    // and fed by no other input of this node (Note [accumulating in place]).
    std::vector<Tensor*> targets(n->edges.size(), nullptr);
    for (std::size_t i = 0; i < n->edges.size(); ++i) {
      Node* target = n->edges[i].node.get();
      if (!target || !n->edges[i].needed()) continue;
      bool shared = false;
      for (std::size_t j = 0; j < n->edges.size(); ++j) shared = shared || (j != i && n->edges[j].node.get() == target);
      auto it = pending.find(target);
      if (!shared && it != pending.end() && it->second.defined() && autograd::exclusively_owned(it->second))
        targets[i] = &it->second;
    }
    std::vector<Tensor> grads;
    {
      profile::Scope scope(n->name.c_str(), profile::enabled() ? (n->detail.empty() ? "" : n->detail + " ") + "backward"
                                                               : std::string());
      struct Offer {  // restored however the closure leaves
        const std::vector<Tensor*>* saved;
        bool saved_exclusive;
        Offer(const std::vector<Tensor*>* t, bool exclusive)
            : saved(autograd::accumulation_targets), saved_exclusive(autograd::grad_output_exclusive) {
          autograd::accumulation_targets = t;
          autograd::grad_output_exclusive = exclusive;
        }
        ~Offer() {
          autograd::accumulation_targets = saved;
          autograd::grad_output_exclusive = saved_exclusive;
        }
      } offer(&targets, autograd::exclusively_owned(g));
      grads = n->backward(g, n->needs);
    }
    profile::Scope engine_scope("autograd engine");  // accumulating gradients, freeing the node
    VG_CHECK(grads.size() == n->edges.size(), "backward: " << n->name << " returned " << grads.size()
                                                          << " gradients for " << n->edges.size() << " inputs");
    for (std::size_t i = 0; i < n->edges.size(); ++i) {
      const autograd::Edge& e = n->edges[i];
      if (!e.needed()) continue;
      const std::string target = "input " + std::to_string(i);
      if (e.node) {
        autograd::check_grad(grads[i], e.node->output_shape, e.node->output_dtype, e.node->output_device, n->name,
                             target);
        Tensor& slot = pending[e.node.get()];
        if (!slot.defined()) {
          slot = grads[i];
        } else if (targets[i] && grads[i].shared_impl() == slot.shared_impl()) {
          // the closure added into the pending gradient itself (Note [accumulating in place])
        } else if (autograd::exclusively_owned(slot)) {
          autograd::add_into(slot, grads[i]);  // residual junctions: one pass, no copy
        } else {
          Tensor sum = autograd::fresh_copy(slot);
          autograd::add_into(sum, grads[i]);
          slot = sum;
        }
        if (--deps[e.node.get()] == 0) ready.push_back(e.node.get());
      } else {
        autograd::check_grad(grads[i], e.leaf->shape, e.leaf->dtype, e.leaf->storage->device(), n->name, target);
        autograd::accumulate_leaf(*e.leaf, grads[i], autograd::takeable(grads[i]));
      }
    }
    if (!retain_graph) n->backward = nullptr;  // frees the tensors the closure saved
  }
}

}  // namespace vidgrad
