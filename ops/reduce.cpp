// sum/mean: one strided accumulation loop; backward broadcasts the gradient back.
#include "vidgrad/ops/reduce.h"

#include <algorithm>

#include "vidgrad/autograd/node.h"
#include "vidgrad/core/profile.h"
#include "vidgrad/core/strided.h"
#include "vidgrad/ops/common.h"
#include "vidgrad/ops/elementwise.h"
#include "vidgrad/ops/shape.h"
#ifdef VIDGRAD_WITH_CUDA
#include "vidgrad/ops/cuda/kernels.h"
#endif

namespace vidgrad {

namespace {

struct Reduction {
  std::vector<bool> reduced;  // per input dim
  Shape keep_shape;           // input shape with reduced dims set to 1
  Shape out_shape;            // keep_shape, or with reduced dims dropped
  std::int64_t count = 1;     // elements folded into each output
};

Reduction plan(const char* op, const Tensor& x, const std::vector<std::int64_t>& dims, bool keepdim) {
  Reduction r;
  const int rank = x.dim();
  r.reduced.assign(rank, dims.empty());
  for (std::int64_t d : dims) {
    const int nd = normalize_dim(d, rank, op);
    VG_CHECK(!r.reduced[nd], op << ": dim " << nd << " listed twice");
    r.reduced[nd] = true;
  }
  for (int d = 0; d < rank; ++d) {
    r.keep_shape.push_back(r.reduced[d] ? 1 : x.shape()[d]);
    if (r.reduced[d]) r.count *= x.shape()[d];
    if (!r.reduced[d] || keepdim) r.out_shape.push_back(r.keep_shape.back());
  }
  return r;
}

// out (keep_shape, contiguous, zeroed) += x summed over the reduced dims.
template <typename T>
void sum_kernel(const Tensor& x, const Reduction& r, const Tensor& out) {
  Shape shape = x.shape();
  Shape out_strides = contiguous_strides(r.keep_shape);
  for (int d = 0; d < x.dim(); ++d)
    if (r.reduced[d]) out_strides[d] = 0;
  std::array<Shape, 2> strides{x.strides(), out_strides};
  collapse_dims<2>(shape, strides);
  const T* in = x.data<T>();
  T* o = out.data<T>();
  for_each_run<2>(shape, {&strides[0], &strides[1]},
                  [&](const std::array<std::int64_t, 2>& off, std::int64_t n,
                      const std::array<std::int64_t, 2>& step) {
                    if (step[1] == 0) {
                      T acc = 0;
                      for (std::int64_t i = 0; i < n; ++i) acc += in[off[0] + i * step[0]];
                      o[off[1]] += acc;
                    } else {
                      for (std::int64_t i = 0; i < n; ++i) o[off[1] + i * step[1]] += in[off[0] + i * step[0]];
                    }
                  });
}

Tensor reduce(const char* op, const Tensor& x, const std::vector<std::int64_t>& dims, bool keepdim, bool average) {
  profile::Scope scope(op);
  ops_detail::check_floating(op, "x", x);
  const Reduction r = plan(op, x, dims, keepdim);
  Tensor out = Tensor::zeros(r.keep_shape, x.dtype(), x.device());
  switch (x.device().type) {
    case DeviceType::kCPU:
      dispatch_floating(x.dtype(), op, [&]<typename T>() {
        sum_kernel<T>(x, r, out);
        if (average && r.count > 0) {
          T* o = out.data<T>();
          const T scale = T(1) / static_cast<T>(r.count);
          for (std::int64_t i = 0, n = out.numel(); i < n; ++i) o[i] *= scale;
        }
      });
      break;
#ifdef VIDGRAD_WITH_CUDA
    case DeviceType::kCUDA: {
      // Kept dims first, reduced dims last, made contiguous: then one row per output.
      std::vector<int> order;
      for (int d = 0; d < x.dim(); ++d)
        if (!r.reduced[d]) order.push_back(d);
      for (int d = 0; d < x.dim(); ++d)
        if (r.reduced[d]) order.push_back(d);
      const Tensor rows = x.detach().permute(order).contiguous();
      const std::int64_t n_rows = out.numel();
      const double scale = average && r.count > 0 ? 1.0 / static_cast<double>(r.count) : 1.0;
      dispatch_floating(x.dtype(), op, [&]<typename T>() {
        cuda::row_sum<T>(rows.device_data<T>(), out.device_data<T>(), n_rows, r.count, scale, x.device().index);
      });
      break;
    }
#endif
    default: ops_detail::no_kernel(op, x.device());
  }
  out = make_view(out, r.out_shape, contiguous_strides(r.out_shape), 0);
  if (autograd::needs_graph({&x})) {
    autograd::attach(out, op, {x}, [r, in_shape = x.shape(), average](const Tensor& g, const std::vector<bool>&) {
      // When averaging over more than one element the broadcast view has a stride-0 dim,
      // so contiguous() copies and the in-place scaling below never touches g.
      Tensor gx = broadcast_to(g.reshape(r.keep_shape), in_shape).contiguous();
      if (average && r.count > 1 && !gx.device().is_cpu()) return std::vector<Tensor>{mul(gx, 1.0 / r.count)};
      if (average && r.count > 1) {
        dispatch_floating(gx.dtype(), "mean", [&]<typename T>() {
          T* p = gx.data<T>();
          const T scale = T(1) / static_cast<T>(r.count);
          for (std::int64_t i = 0, n = gx.numel(); i < n; ++i) p[i] *= scale;
        });
      }
      return std::vector<Tensor>{gx};
    });
  }
  return out;
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<std::int64_t>& dims, bool keepdim) {
  return reduce("sum", x, dims, keepdim, false);
}

Tensor mean(const Tensor& x, const std::vector<std::int64_t>& dims, bool keepdim) {
  return reduce("mean", x, dims, keepdim, true);
}

}  // namespace vidgrad
