// Views, copies, concatenation and broadcasting, with their backward rules:
// reshape <-> reshape back, permute <-> inverse permute, narrow <-> pad with zeros,
// concat <-> narrow per input, broadcast <-> sum.
#include "vidgrad/ops/shape.h"

#include <algorithm>

#include "vidgrad/autograd/node.h"
#include "vidgrad/core/layout.h"
#include "vidgrad/core/profile.h"
#include "vidgrad/ops/common.h"
#include "vidgrad/ops/reduce.h"

namespace vidgrad {

using autograd::attach;
using autograd::needs_graph;

namespace {

Tensor narrow_view(const Tensor& x, int dim, std::int64_t start, std::int64_t length) {
  Shape shape = x.shape();
  shape[dim] = length;
  return make_view(x, shape, x.strides(), x.offset() + start * x.strides()[dim]);
}

Shape resolve_shape(const Shape& requested, std::int64_t numel, const Shape& from) {
  Shape shape = requested;
  int infer = -1;
  std::int64_t known = 1;
  for (int i = 0; i < static_cast<int>(shape.size()); ++i) {
    if (shape[i] == -1) {
      VG_CHECK(infer < 0, "reshape: only one dim may be -1, got " << shape_str(requested));
      infer = i;
    } else {
      VG_CHECK(shape[i] >= 0, "reshape: invalid size " << shape[i] << " in " << shape_str(requested));
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    VG_CHECK(known > 0 && numel % known == 0,
             "reshape: cannot infer -1 in " << shape_str(requested) << " for " << numel << " elements");
    shape[infer] = numel / known;
  }
  VG_CHECK(shape_numel(shape) == numel, "reshape: shape " << shape_str(from) << " (" << numel
                                                          << " elements) cannot be viewed as " << shape_str(requested));
  return shape;
}

}  // namespace

Tensor Tensor::reshape(const Shape& requested) const {
  check_defined("reshape");
  const Shape shape = resolve_shape(requested, numel(), this->shape());
  if (!is_contiguous()) return contiguous().reshape(shape);
  Tensor out = make_view(*this, shape, contiguous_strides(shape), offset());
  if (needs_graph({this})) {
    attach(out, "reshape", {*this}, [in_shape = this->shape()](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{g.reshape(in_shape)};
    });
  }
  return out;
}

Tensor Tensor::permute(const std::vector<int>& dims) const {
  check_defined("permute");
  const int rank = dim();
  VG_CHECK(static_cast<int>(dims.size()) == rank,
           "permute: got " << dims.size() << " dims for a tensor of rank " << rank);
  std::vector<int> inverse(rank, -1);
  Shape shape(rank), strides(rank);
  for (int i = 0; i < rank; ++i) {
    const int d = normalize_dim(dims[i], rank, "permute");
    VG_CHECK(inverse[d] < 0, "permute: dim " << d << " appears twice");
    inverse[d] = i;
    shape[i] = this->shape()[d];
    strides[i] = this->strides()[d];
  }
  Tensor out = make_view(*this, shape, strides, offset());
  if (needs_graph({this})) {
    attach(out, "permute", {*this}, [inverse](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{g.permute(inverse)};
    });
  }
  return out;
}

Tensor Tensor::narrow(std::int64_t dim_in, std::int64_t start, std::int64_t length) const {
  check_defined("narrow");
  const int d = normalize_dim(dim_in, dim(), "narrow");
  const std::int64_t size = shape()[d];
  VG_CHECK(start >= 0 && length >= 0 && start + length <= size,
           "narrow: range [" << start << ", " << start + length << ") is outside dim " << d << " of size " << size
                             << " (shape " << shape_str(shape()) << ")");
  Tensor out = narrow_view(*this, d, start, length);
  if (needs_graph({this})) {
    attach(out, "narrow", {*this},
           [in_shape = shape(), dtype = dtype(), d, start, length](const Tensor& g, const std::vector<bool>&) {
             Tensor gx = Tensor::zeros(in_shape, dtype, g.device());
             narrow_view(gx, d, start, length).copy_(g);
             return std::vector<Tensor>{gx};
           });
  }
  return out;
}

Tensor Tensor::contiguous() const {
  check_defined("contiguous");
  return is_contiguous() ? *this : clone();
}

Tensor Tensor::clone() const {
  check_defined("clone");
  Tensor out = Tensor::empty(shape(), dtype(), device());
  out.copy_(*this);
  if (needs_graph({this})) {
    attach(out, "clone", {*this}, [](const Tensor& g, const std::vector<bool>&) { return std::vector<Tensor>{g}; });
  }
  return out;
}

Tensor Tensor::to(DType target) const {
  check_defined("to");
  if (target == dtype()) return *this;
  Tensor out = Tensor::empty(shape(), target, device());
  out.copy_(*this);
  if (needs_graph({this}) && is_floating(target)) {
    attach(out, "to", {*this}, [src = dtype()](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{g.to(src)};
    });
  }
  return out;
}

Tensor Tensor::to(Device target, bool non_blocking) const {
  check_defined("to");
  if (target == device()) return *this;
  Tensor out = Tensor::empty(shape(), dtype(), target);
  out.copy_(*this, non_blocking);
  if (needs_graph({this})) {
    attach(out, "to(device)", {*this}, [src = device()](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{g.to(src)};
    });
  }
  return out;
}

Tensor to_channels_last(const Tensor& x) {
  ops_detail::check_rank("to_channels_last", "x", x, 5, "(N,C,T,H,W)");
  if (is_channels_last(x)) return x;
  profile::Scope scope("to_channels_last");
  Tensor out = channels_last_copy(x);
  if (needs_graph({&x})) {
    attach(out, "to_channels_last", {x},
           [](const Tensor& g, const std::vector<bool>&) { return std::vector<Tensor>{g}; });
  }
  return out;
}

Tensor concat(const std::vector<Tensor>& tensors, std::int64_t dim_in) {
  profile::Scope scope("concat");
  VG_CHECK(!tensors.empty(), "concat: needs at least one tensor");
  const Tensor& first = tensors[0];
  ops_detail::check_defined("concat", "tensors[0]", first);
  const int d = normalize_dim(dim_in, first.dim(), "concat");
  Shape out_shape = first.shape();
  out_shape[d] = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    VG_CHECK(t.defined(), "concat: tensors[" << i << "] is undefined");
    VG_CHECK(t.dtype() == first.dtype() && t.device() == first.device(),
             "concat: tensors[" << i << "] is " << dtype_name(t.dtype()) << " on " << t.device() << ", tensors[0] is "
                                << dtype_name(first.dtype()) << " on " << first.device());
    VG_CHECK(t.dim() == first.dim(), "concat: tensors[" << i << "] has rank " << t.dim() << ", tensors[0] has rank "
                                                        << first.dim());
    for (int k = 0; k < t.dim(); ++k)
      VG_CHECK(k == d || t.shape()[k] == first.shape()[k],
               "concat: tensors[" << i << "] has shape " << shape_str(t.shape()) << ", which differs from tensors[0] "
                                  << shape_str(first.shape()) << " outside the concat dim " << d);
    out_shape[d] += t.shape()[d];
  }
  Tensor out = Tensor::empty(out_shape, first.dtype(), first.device());
  std::vector<std::int64_t> starts;
  std::int64_t start = 0;
  for (const Tensor& t : tensors) {
    narrow_view(out, d, start, t.shape()[d]).copy_(t);
    starts.push_back(start);
    start += t.shape()[d];
  }
  if (needs_graph(tensors)) {
    std::vector<std::int64_t> lengths;
    for (const Tensor& t : tensors) lengths.push_back(t.shape()[d]);
    attach(out, "concat", tensors, [d, starts, lengths](const Tensor& g, const std::vector<bool>& needs) {
      std::vector<Tensor> grads(needs.size());
      for (std::size_t i = 0; i < needs.size(); ++i)
        if (needs[i]) grads[i] = narrow_view(g, d, starts[i], lengths[i]);
      return grads;
    });
  }
  return out;
}

Tensor broadcast_to(const Tensor& x, const Shape& shape) {
  ops_detail::check_defined("broadcast_to", "x", x);
  VG_CHECK(broadcast_shapes(x.shape(), shape, "broadcast_to") == shape,
           "broadcast_to: shape " << shape_str(x.shape()) << " cannot be expanded to " << shape_str(shape));
  const std::size_t lead = shape.size() - x.shape().size();
  Shape strides(shape.size(), 0);
  for (std::size_t i = lead; i < shape.size(); ++i)
    strides[i] = x.shape()[i - lead] == 1 ? 0 : x.strides()[i - lead];
  Tensor out = make_view(x, shape, strides, x.offset());
  if (needs_graph({&x})) {
    attach(out, "broadcast_to", {x}, [in_shape = x.shape()](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{sum_to(g, in_shape)};
    });
  }
  return out;
}

Tensor sum_to(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  const std::size_t lead = g.shape().size() - shape.size();
  std::vector<std::int64_t> dims;
  for (std::size_t i = 0; i < g.shape().size(); ++i)
    if (i < lead || (shape[i - lead] == 1 && g.shape()[i] != 1)) dims.push_back(static_cast<std::int64_t>(i));
  return sum(g, dims, /*keepdim=*/true).reshape(shape);
}

}  // namespace vidgrad
