// Elementwise ops. Binary ops broadcast as NumPy/PyTorch do, so squeeze-excitation's
// x (N,C,T,H,W) * s (N,C,1,1,1) is a plain mul.
#pragma once

#include "vidgrad/core/tensor.h"

namespace vidgrad {

Tensor relu(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor add(const Tensor& a, const Tensor& b);
// relu(add(a, b)) in one pass over memory (a residual connection's join).
Tensor add_relu(const Tensor& a, const Tensor& b);
// The gradient through a ReLU given its output y: g where y > 0, else 0. Records no graph;
// for the backward of ops that fuse a ReLU (relu, add_relu, conv3d with opts.relu).
Tensor relu_grad(const Tensor& g, const Tensor& y);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, double s);  // a * s, s a constant

}  // namespace vidgrad
