// dropout: the mask is drawn sequentially from the generator (reproducible whatever the
// thread count), applied as a multiply, and reused by the backward. On CUDA the mask is
// drawn on the host from the same generator and uploaded, so a seed gives the same mask on
// both devices (dropout acts on the classifier's input: a few thousand values a step).
#include "vidgrad/ops/dropout.h"

#include "vidgrad/autograd/grad_mode.h"
#include "vidgrad/autograd/node.h"
#include "vidgrad/core/profile.h"
#include "vidgrad/ops/common.h"
#include "vidgrad/ops/cpu/elementwise_cpu.h"
#include "vidgrad/ops/elementwise.h"

namespace vidgrad {

Tensor dropout(const Tensor& x_in, double p, bool training, Generator& gen) {
  profile::Scope scope("dropout");
  ops_detail::check_floating("dropout", "input", x_in);
  VG_CHECK(p >= 0.0 && p <= 1.0, "dropout: probability must be in [0, 1], got " << p);
  if (!training || p == 0.0) return x_in;
  const Tensor x = x_in.contiguous();
  Tensor mask = Tensor::empty(x.shape(), x.dtype());
  dispatch_floating(x.dtype(), "dropout", [&]<typename T>() {
    const T scale = p < 1.0 ? static_cast<T>(1.0 / (1.0 - p)) : T(0);
    T* m = mask.data<T>();
    for (std::int64_t i = 0, n = x.numel(); i < n; ++i) m[i] = gen.uniform() >= p ? scale : T(0);
  });
  Tensor y;
  switch (x.device().type) {
    case DeviceType::kCPU:
      y = Tensor::empty(x.shape(), x.dtype());
      dispatch_floating(x.dtype(), "dropout", [&]<typename T>() {
        cpu::binary_map<T>(x.data<T>(), mask.data<T>(), y.data<T>(), x.numel(), [](T a, T b) { return a * b; });
      });
      break;
    case DeviceType::kCUDA: {
      autograd::NoGradGuard no_grad;  // the node below is dropout's own
      mask = mask.to(x.device(), /*non_blocking=*/true);  // no stall: the host copy is staged
      y = mul(x.detach(), mask);
      break;
    }
  }
  if (autograd::needs_graph({&x_in})) {
    autograd::attach(y, "dropout", {x_in}, [mask](const Tensor& g_in, const std::vector<bool>&) {
      if (!g_in.device().is_cpu()) return std::vector<Tensor>{mul(g_in, mask)};
      const Tensor g = g_in.contiguous();
      Tensor gx = Tensor::empty(g.shape(), g.dtype());
      dispatch_floating(g.dtype(), "dropout backward", [&]<typename T>() {
        cpu::binary_map<T>(g.data<T>(), mask.data<T>(), gx.data<T>(), g.numel(), [](T a, T b) { return a * b; });
      });
      return std::vector<Tensor>{gx};
    });
  }
  return y;
}

}  // namespace vidgrad
