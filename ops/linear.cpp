// linear: y = x W^T + b as one GEMM over the flattened leading dims.
#include "vidgrad/ops/linear.h"

#include "vidgrad/autograd/node.h"
#include "vidgrad/core/profile.h"
#include "vidgrad/ops/common.h"
#include "vidgrad/ops/cpu/gemm.h"
#ifdef VIDGRAD_WITH_CUDA
#include "vidgrad/ops/cuda/kernels.h"
#endif

namespace vidgrad {

Tensor linear(const Tensor& x_in, const Tensor& weight_in, const Tensor& bias_in) {
  profile::Scope scope("linear");
  ops_detail::check_floating("linear", "input", x_in);
  ops_detail::check_rank("linear", "weight", weight_in, 2, "(out, in)");
  ops_detail::check_same("linear", {{"input", &x_in}, {"weight", &weight_in}, {"bias", &bias_in}});
  VG_CHECK(x_in.dim() >= 1, "linear: input must have rank >= 1, got a scalar");
  const std::int64_t in = weight_in.shape()[1], out = weight_in.shape()[0];
  VG_CHECK(x_in.shape().back() == in, "linear: input " << shape_str(x_in.shape()) << " has " << x_in.shape().back()
                                                      << " features, weight " << shape_str(weight_in.shape())
                                                      << " expects " << in);
  if (bias_in.defined())
    VG_CHECK(bias_in.dim() == 1 && bias_in.shape()[0] == out,
             "linear: bias must have shape [" << out << "], got " << shape_str(bias_in.shape()));
  const Tensor x = x_in.contiguous(), w = weight_in.contiguous();
  const Tensor b = bias_in.defined() ? bias_in.contiguous() : Tensor();
  const std::int64_t M = x.numel() / std::max<std::int64_t>(in, 1);
  Shape out_shape = x.shape();
  out_shape.back() = out;
  Tensor y = Tensor::empty(out_shape, x.dtype(), x.device());
  switch (x.device().type) {
    case DeviceType::kCPU:
      dispatch_floating(x.dtype(), "linear", [&]<typename T>() {
        T* py = y.data<T>();
        if (b.defined()) {
          for (std::int64_t m = 0; m < M; ++m) std::copy(b.data<T>(), b.data<T>() + out, py + m * out);
        }
        cpu::gemm<T>(false, true, M, out, in, x.data<T>(), w.data<T>(), py, b.defined());
      });
      break;
#ifdef VIDGRAD_WITH_CUDA
    case DeviceType::kCUDA:
      dispatch_floating(x.dtype(), "linear", [&]<typename T>() {
        const int dev = x.device().index;
        if (b.defined()) cuda::broadcast_rows<T>(b.device_data<T>(), y.device_data<T>(), M, out, dev);
        cuda::gemm<T>(false, true, M, out, in, x.device_data<T>(), w.device_data<T>(), y.device_data<T>(),
                      b.defined(), dev);
      });
      break;
#endif
    default: ops_detail::no_kernel("linear", x.device());
  }
  if (autograd::needs_graph({&x_in, &weight_in, &bias_in})) {
    autograd::attach(y, "linear", {x_in, weight_in, bias_in},
                     [x_saved = weight_in.requires_grad() ? x.detach() : Tensor(),
                      w_saved = x_in.requires_grad() ? w.detach() : Tensor(), in_shape = x.shape(), M, in,
                      out](const Tensor& gy_in, const std::vector<bool>& needs) {
                       const Tensor gy = gy_in.contiguous();
                       std::vector<Tensor> grads(3);
#ifdef VIDGRAD_WITH_CUDA
                       if (gy.device().is_cuda()) {
                         dispatch_floating(gy.dtype(), "linear backward", [&]<typename T>() {
                           const int dev = gy.device().index;
                           if (needs[0]) {
                             grads[0] = Tensor::empty(in_shape, gy.dtype(), gy.device());
                             cuda::gemm<T>(false, false, M, in, out, gy.device_data<T>(), w_saved.device_data<T>(),
                                           grads[0].device_data<T>(), false, dev);
                           }
                           if (needs[1]) {
                             grads[1] = Tensor::empty({out, in}, gy.dtype(), gy.device());
                             cuda::gemm<T>(true, false, out, in, M, gy.device_data<T>(), x_saved.device_data<T>(),
                                           grads[1].device_data<T>(), false, dev);
                           }
                           if (needs[2]) {
                             grads[2] = Tensor::empty({out}, gy.dtype(), gy.device());
                             cuda::col_sum<T>(gy.device_data<T>(), grads[2].device_data<T>(), M, out, dev);
                           }
                         });
                         return grads;
                       }
#endif
                       dispatch_floating(gy.dtype(), "linear backward", [&]<typename T>() {
                         if (needs[0]) {  // gx[M, in] = gy[M, out] * W[out, in]
                           grads[0] = Tensor::empty(in_shape, gy.dtype());
                           cpu::gemm<T>(false, false, M, in, out, gy.data<T>(), w_saved.data<T>(),
                                        grads[0].data<T>(), false);
                         }
                         if (needs[1]) {  // gW[out, in] = gy^T * x
                           grads[1] = Tensor::empty({out, in}, gy.dtype());
                           cpu::gemm<T>(true, false, out, in, M, gy.data<T>(), x_saved.data<T>(),
                                        grads[1].data<T>(), false);
                         }
                         if (needs[2]) {
                           grads[2] = Tensor::zeros({out}, gy.dtype());
                           T* gb = grads[2].data<T>();
                           const T* g = gy.data<T>();
                           for (std::int64_t m = 0; m < M; ++m)
                             for (std::int64_t o = 0; o < out; ++o) gb[o] += g[m * out + o];
                         }
                       });
                       return grads;
                     });
  }
  return y;
}

}  // namespace vidgrad
