// avg_pool3d, max_pool3d and global_avg_pool3d: checks, dispatch, backward nodes.
#include "vidgrad/ops/pool.h"

#include <memory>
#include <vector>

#include "vidgrad/autograd/node.h"
#include "vidgrad/core/parallel.h"
#include "vidgrad/core/profile.h"
#include "vidgrad/ops/common.h"
#include "vidgrad/ops/cpu/pool_cpu.h"
#ifdef VIDGRAD_WITH_CUDA
#include "vidgrad/ops/cuda/kernels.h"
#endif

namespace vidgrad {

namespace {

cpu::Pool3dGeometry geometry(const char* op, const Tensor& x, const Pool3dOptions& o) {
  using ops_detail::triple_str;
  ops_detail::check_rank(op, "input", x, 5, "(N,C,T,H,W)");
  ops_detail::check_floating(op, "input", x);
  const std::array<std::int64_t, 3> stride = o.stride.value_or(o.kernel);
  const std::int64_t in[3] = {x.shape()[2], x.shape()[3], x.shape()[4]};
  std::int64_t out[3];
  for (int i = 0; i < 3; ++i) {
    VG_CHECK(o.kernel[i] >= 1, op << ": kernel must be >= 1 on every axis, got " << triple_str(o.kernel));
    VG_CHECK(stride[i] >= 1, op << ": stride must be >= 1 on every axis, got " << triple_str(stride));
    VG_CHECK(o.padding[i] >= 0 && 2 * o.padding[i] <= o.kernel[i],
             op << ": padding must be between 0 and half the kernel, got padding " << triple_str(o.padding)
                << " for kernel " << triple_str(o.kernel));
    VG_CHECK(in[i] + 2 * o.padding[i] >= o.kernel[i],
             op << ": kernel " << triple_str(o.kernel) << " is larger than the padded input " << shape_str(x.shape()));
    out[i] = (in[i] + 2 * o.padding[i] - o.kernel[i]) / stride[i] + 1;
  }
  return {x.shape()[0] * x.shape()[1], in[0], in[1], in[2], out[0], out[1], out[2],
          o.kernel[0], o.kernel[1], o.kernel[2], stride[0], stride[1], stride[2],
          o.padding[0], o.padding[1], o.padding[2], o.count_include_pad};
}

}  // namespace

Tensor avg_pool3d(const Tensor& x_in, const Pool3dOptions& opts) {
  profile::Scope scope("avg_pool3d");
  const cpu::Pool3dGeometry g = geometry("avg_pool3d", x_in, opts);
  const Tensor x = x_in.contiguous();
  Tensor y = Tensor::empty({x.shape()[0], x.shape()[1], g.To, g.Ho, g.Wo}, x.dtype(), x.device());
  switch (x.device().type) {
    case DeviceType::kCPU:
      dispatch_floating(x.dtype(), "avg_pool3d",
                        [&]<typename T>() { cpu::avg_pool3d_forward<T>(g, x.data<T>(), y.data<T>()); });
      break;
#ifdef VIDGRAD_WITH_CUDA
    case DeviceType::kCUDA:
      dispatch_floating(x.dtype(), "avg_pool3d", [&]<typename T>() {
        cuda::avg_pool3d_forward<T>(g, x.device_data<T>(), y.device_data<T>(), x.device().index);
      });
      break;
#endif
    default: ops_detail::no_kernel("avg_pool3d", x.device());
  }
  if (autograd::needs_graph({&x_in})) {
    autograd::attach(y, "avg_pool3d", {x_in}, [g, in_shape = x.shape()](const Tensor& gy_in, const std::vector<bool>&) {
      const Tensor gy = gy_in.contiguous();
      Tensor gx = Tensor::empty(in_shape, gy.dtype(), gy.device());
      dispatch_floating(gy.dtype(), "avg_pool3d backward", [&]<typename T>() {
        switch (gy.device().type) {
          case DeviceType::kCPU: cpu::avg_pool3d_backward<T>(g, gy.data<T>(), gx.data<T>()); break;
#ifdef VIDGRAD_WITH_CUDA
          case DeviceType::kCUDA:
            cuda::avg_pool3d_backward<T>(g, gy.device_data<T>(), gx.device_data<T>(), gy.device().index);
            break;
#endif
          default: ops_detail::no_kernel("avg_pool3d backward", gy.device());
        }
      });
      return std::vector<Tensor>{gx};
    });
  }
  return y;
}

Tensor max_pool3d(const Tensor& x_in, const Pool3dOptions& opts) {
  profile::Scope scope("max_pool3d");
  Pool3dOptions o = opts;
  o.count_include_pad = false;
  const cpu::Pool3dGeometry g = geometry("max_pool3d", x_in, o);
  const Tensor x = x_in.contiguous();
  Tensor y = Tensor::empty({x.shape()[0], x.shape()[1], g.To, g.Ho, g.Wo}, x.dtype(), x.device());
  // Where each maximum came from, for the backward: host vector on the CPU, device tensor on CUDA.
  auto argmax = std::make_shared<std::vector<std::int64_t>>(x.device().is_cpu() ? y.numel() : 0);
  Tensor argmax_dev;
  switch (x.device().type) {
    case DeviceType::kCPU:
      dispatch_floating(x.dtype(), "max_pool3d", [&]<typename T>() {
        cpu::max_pool3d_forward<T>(g, x.data<T>(), y.data<T>(), argmax->data());
      });
      break;
#ifdef VIDGRAD_WITH_CUDA
    case DeviceType::kCUDA:
      argmax_dev = Tensor::empty(y.shape(), DType::kInt64, x.device());
      dispatch_floating(x.dtype(), "max_pool3d", [&]<typename T>() {
        cuda::max_pool3d_forward<T>(g, x.device_data<T>(), y.device_data<T>(), argmax_dev.device_data<std::int64_t>(),
                                    x.device().index);
      });
      break;
#endif
    default: ops_detail::no_kernel("max_pool3d", x.device());
  }
  if (autograd::needs_graph({&x_in})) {
    autograd::attach(y, "max_pool3d", {x_in},
                     [g, argmax, argmax_dev, in_shape = x.shape()](const Tensor& gy_in, const std::vector<bool>&) {
                       const Tensor gy = gy_in.contiguous();
                       Tensor gx = Tensor::empty(in_shape, gy.dtype(), gy.device());
                       dispatch_floating(gy.dtype(), "max_pool3d backward", [&]<typename T>() {
                         switch (gy.device().type) {
                           case DeviceType::kCPU:
                             cpu::max_pool3d_backward<T>(g, gy.data<T>(), argmax->data(), gx.data<T>());
                             break;
#ifdef VIDGRAD_WITH_CUDA
                           case DeviceType::kCUDA:
                             cuda::max_pool3d_backward<T>(g, gy.device_data<T>(),
                                                          argmax_dev.device_data<std::int64_t>(),
                                                          gx.device_data<T>(), gy.device().index);
                             break;
#endif
                           default: ops_detail::no_kernel("max_pool3d backward", gy.device());
                         }
                       });
                       return std::vector<Tensor>{gx};
                     });
  }
  return y;
}

Tensor global_avg_pool3d(const Tensor& x_in) {
  profile::Scope scope("global_avg_pool3d");
  ops_detail::check_rank("global_avg_pool3d", "input", x_in, 5, "(N,C,T,H,W)");
  ops_detail::check_floating("global_avg_pool3d", "input", x_in);
  const Tensor x = x_in.contiguous();
  const std::int64_t N = x.shape()[0], C = x.shape()[1], S = x.shape()[2] * x.shape()[3] * x.shape()[4];
  VG_CHECK(S > 0, "global_avg_pool3d: input " << shape_str(x.shape()) << " has no positions to average");
  Tensor y = Tensor::empty({N, C}, x.dtype(), x.device());
  switch (x.device().type) {
    case DeviceType::kCPU:
      dispatch_floating(x.dtype(), "global_avg_pool3d", [&]<typename T>() {
        const T* px = x.data<T>();
        T* py = y.data<T>();
#pragma omp parallel for schedule(static) if (N * C * S >= kMinParallelWork)
        for (std::int64_t p = 0; p < N * C; ++p) {
          T acc = 0;
          for (std::int64_t i = 0; i < S; ++i) acc += px[p * S + i];
          py[p] = acc / static_cast<T>(S);
        }
      });
      break;
#ifdef VIDGRAD_WITH_CUDA
    case DeviceType::kCUDA:
      dispatch_floating(x.dtype(), "global_avg_pool3d", [&]<typename T>() {
        cuda::row_sum<T>(x.device_data<T>(), y.device_data<T>(), N * C, S, 1.0 / static_cast<double>(S),
                         x.device().index);
      });
      break;
#endif
    default: ops_detail::no_kernel("global_avg_pool3d", x.device());
  }
  if (autograd::needs_graph({&x_in})) {
    autograd::attach(y, "global_avg_pool3d", {x_in},
                     [in_shape = x.shape(), S](const Tensor& gy_in, const std::vector<bool>&) {
                       const Tensor gy = gy_in.contiguous();
                       Tensor gx = Tensor::empty(in_shape, gy.dtype(), gy.device());
                       dispatch_floating(gy.dtype(), "global_avg_pool3d backward", [&]<typename T>() {
#ifdef VIDGRAD_WITH_CUDA
                         if (gy.device().is_cuda()) {
                           cuda::expand_rows<T>(gy.device_data<T>(), gx.device_data<T>(), gy.numel(), S,
                                                1.0 / static_cast<double>(S), gy.device().index);
                           return;
                         }
#endif
                         const T* g = gy.data<T>();
                         T* out = gx.data<T>();
#pragma omp parallel for schedule(static) if (gx.numel() >= kMinParallelWork)
                         for (std::int64_t p = 0; p < gy.numel(); ++p) std::fill(out + p * S, out + (p + 1) * S, g[p] / static_cast<T>(S));
                       });
                       return std::vector<Tensor>{gx};
                     });
  }
  return y;
}

}  // namespace vidgrad
