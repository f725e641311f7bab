// Finite-difference gradient checking in float64.
//
// For a function f of several tensors, gradcheck draws a random projection v of the
// output and compares, for every element x_j of every input that requires grad, the
// analytic d(v . f)/dx_j from one backward pass with the central difference
// (v . f(x + eps e_j) - v . f(x - eps e_j)) / 2 eps. Every element of every
// differentiable input (bias included) is checked, so a wrong gradient anywhere fails.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "vidgrad/core/tensor.h"

namespace vidgrad::autograd {

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-5;
  double rtol = 1e-3;
  int projections = 2;              // random output projections v to test
  bool check_noncontiguous = true;  // repeat with every input as a non-contiguous view
  std::uint64_t seed = 1234;
};

struct GradcheckResult {
  bool ok = true;
  std::string message;  // the first mismatch: input, element, analytic and numeric values
  explicit operator bool() const { return ok; }
};

using TensorFn = std::function<Tensor(const std::vector<Tensor>& inputs)>;

// Inputs with requires_grad() are checked and must be float64; the others are passed
// through unchanged (labels, running statistics). f must be deterministic.
GradcheckResult gradcheck(const TensorFn& f, const std::vector<Tensor>& inputs, const GradcheckOptions& opts = {});

}  // namespace vidgrad::autograd
