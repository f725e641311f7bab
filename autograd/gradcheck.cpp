// gradcheck: analytic vector-Jacobian products against central differences.
#include "vidgrad/autograd/gradcheck.h"

#include <cmath>
#include <numeric>
#include <sstream>

#include "vidgrad/autograd/grad_mode.h"

namespace vidgrad::autograd {

namespace {

// Offset (in elements, from the data pointer) of the j-th element in row-major order.
std::int64_t element_offset(const Tensor& t, std::int64_t j) {
  std::int64_t off = 0;
  for (int d = t.dim() - 1; d >= 0; --d) {
    off += (j % t.shape()[d]) * t.strides()[d];
    j /= t.shape()[d];
  }
  return off;
}

double dot(const Tensor& out, const std::vector<double>& v) {
  const std::vector<double> o = out.to_vector<double>();
  double s = 0.0;
  for (std::size_t i = 0; i < o.size(); ++i) s += o[i] * v[i];
  return s;
}

// Same values, non-contiguous memory: the data lives in a buffer with the dims reversed
// and twice the last size, and the input is a strided view of it.
Tensor noncontiguous_copy(const Tensor& t) {
  if (t.dim() == 0) return t.detach();
  Shape big(t.shape().rbegin(), t.shape().rend());
  big.back() *= 2;
  Tensor buf = Tensor::zeros(big, t.dtype());
  Shape strides(t.dim());
  const Shape bs = buf.strides();
  for (int d = 0; d < t.dim(); ++d) strides[d] = bs[t.dim() - 1 - d];
  strides[0] *= 2;  // skip every other element along what was the last buffer dim
  Tensor view = make_view(buf, t.shape(), strides, 0);
  view.copy_(t);
  return view;
}

GradcheckResult check_once(const TensorFn& f, const std::vector<Tensor>& inputs, const GradcheckOptions& opts,
                           const char* variant) {
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].defined() || !inputs[i].requires_grad()) continue;
    VG_CHECK(inputs[i].dtype() == DType::kFloat64,
             "gradcheck: input " << i << " requires grad but is " << dtype_name(inputs[i].dtype())
                                 << "; gradients are checked in float64");
    VG_CHECK(inputs[i].is_leaf(), "gradcheck: input " << i << " must be a leaf tensor");
  }
  Generator gen(opts.seed);
  for (int p = 0; p < opts.projections; ++p) {
    for (const Tensor& in : inputs)
      if (in.defined() && in.requires_grad()) in.set_grad(Tensor());
    Tensor out = f(inputs);
    VG_CHECK(out.dtype() == DType::kFloat64, "gradcheck: f returned " << dtype_name(out.dtype())
                                                                      << ", expected float64");
    std::vector<double> v(static_cast<std::size_t>(out.numel()));
    for (double& x : v) x = 2.0 * gen.uniform() - 1.0;
    if (!out.requires_grad()) return {false, std::string(variant) + ": output does not require grad"};
    out.backward(Tensor::from_vector(v, out.shape()));

    for (std::size_t i = 0; i < inputs.size(); ++i) {
      const Tensor& in = inputs[i];
      if (!in.defined() || !in.requires_grad()) continue;
      const Tensor g = in.grad();
      const std::vector<double> analytic =
          g.defined() ? g.to_vector<double>() : std::vector<double>(static_cast<std::size_t>(in.numel()), 0.0);
      double* base = in.data<double>();
      NoGradGuard no_grad;
      for (std::int64_t j = 0; j < in.numel(); ++j) {
        double& x = base[element_offset(in, j)];
        const double saved = x;
        x = saved + opts.eps;
        const double plus = dot(f(inputs), v);
        x = saved - opts.eps;
        const double minus = dot(f(inputs), v);
        x = saved;
        const double numeric = (plus - minus) / (2.0 * opts.eps);
        const double a = analytic[static_cast<std::size_t>(j)];
        if (!(std::abs(a - numeric) <= opts.atol + opts.rtol * std::abs(numeric))) {
          std::ostringstream os;
          os.precision(10);
          os << variant << ": gradient mismatch for input " << i << " (shape " << shape_str(in.shape())
             << ") at flat element " << j << ": analytic " << a << ", numeric " << numeric << " (projection " << p
             << ", atol " << opts.atol << ", rtol " << opts.rtol << ")";
          return {false, os.str()};
        }
      }
    }
  }
  return {};
}

}  // namespace

GradcheckResult gradcheck(const TensorFn& f, const std::vector<Tensor>& inputs, const GradcheckOptions& opts) {
  GradcheckResult r = check_once(f, inputs, opts, "contiguous inputs");
  if (!r || !opts.check_noncontiguous) return r;
  std::vector<Tensor> nc;
  nc.reserve(inputs.size());
  for (const Tensor& in : inputs) {
    if (!in.defined()) {
      nc.push_back(in);
      continue;
    }
    Tensor c = noncontiguous_copy(in);
    if (in.requires_grad()) c.set_requires_grad(true);
    nc.push_back(c);
  }
  return check_once(f, nc, opts, "non-contiguous inputs");
}

}  // namespace vidgrad::autograd
