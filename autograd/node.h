// A node of the backward graph: one op application, its inputs' edges and a closure
// that maps the gradient of the op's output to gradients of its inputs.
//
// Gradient rule (as in llm.c): closures *return* fresh input gradients; the engine
// accumulates them (+=) into other nodes' pending gradients and into leaves' .grad. The
// one exception, a closure adding into a pending gradient the engine offers it, is Note
// [accumulating in place] below.
#pragma once

#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "vidgrad/core/tensor.h"

namespace vidgrad::autograd {

struct Node;

// Where an input's gradient goes: into another node (the input was produced by an op)
// or into a leaf's .grad. Neither is set when the input needs no gradient.
struct Edge {
  std::shared_ptr<Node> node;
  std::shared_ptr<TensorImpl> leaf;
  bool needed() const { return node != nullptr || leaf != nullptr; }
};

struct Node {
  // Returns one gradient per input, in input order. Entries for inputs with
  // needs[i] == false may be left undefined; the closure should skip computing them.
  using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_output, const std::vector<bool>& needs)>;

  std::string name;          // the op, for error messages and graph dumps
  std::string detail;        // set by some ops while profiling (core/profile.h): "1x3x3 gw8 s2 ..."
  std::vector<Edge> edges;   // one per input
  std::vector<bool> needs;   // edges[i].needed(), cached
  Shape output_shape;        // shape of the output: incoming gradients are checked against it
  DType output_dtype = DType::kFloat32;
  Device output_device;
  BackwardFn backward;       // released after backward() unless the graph is retained
};

// Note [accumulating in place]: where two branches meet (a residual block's input feeds
// its first conv and the shortcut), the engine added the second gradient to the first
// in a separate pass: read both, write one, after the op had written its gradient to a
// fresh tensor. While a node's backward runs, accumulation_target(i) is the pending
// gradient of input i when the engine lets the closure add into it (it is the only handle
// on its data, and no other input of the node feeds the same node); undefined otherwise.
// A closure that adds its gradient into it returns that tensor itself as the input's
// gradient, and the engine then adds nothing. Ops may ignore it.
Tensor accumulation_target(std::size_t input);

// Note [reusing the output gradient]: while a node's backward runs, true when the engine
// holds the only handle on the incoming gradient's data (nothing else, not another
// pending gradient, not a saved tensor, shares it). A closure may then write an input
// gradient over it and return a tensor on that data: an elementwise backward such as batch
// norm's writes where it has just read, instead of into fresh memory the cache has to
// fetch first (the fused-ReLU batch-norm backward, 2 threads, caches flushed: 17-40%
// faster at SEVNet-G8's 16x224 shapes; docs/performance.md, ninth session).
bool grad_output_reusable();

// True when an op applied to `inputs` must record a node: grad mode is on and at least
// one input requires a gradient.
bool needs_graph(std::initializer_list<const Tensor*> inputs);
bool needs_graph(const std::vector<Tensor>& inputs);

// Records `fn` as the producer of `output`, with one edge per input (undefined inputs,
// e.g. a missing bias, get an empty edge). Call only when needs_graph(...) is true.
void attach(const Tensor& output, const char* name, const std::vector<Tensor>& inputs, Node::BackwardFn fn);

}  // namespace vidgrad::autograd
