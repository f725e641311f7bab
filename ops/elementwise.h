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
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, double s);  // a * s, s a constant

}  // namespace vidgrad
