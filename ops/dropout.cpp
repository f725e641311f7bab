// dropout: the mask is drawn sequentially from the generator (reproducible whatever the
// thread count), applied as a multiply, and reused by the backward.
#include "vidgrad/ops/dropout.h"

#include "vidgrad/autograd/node.h"
#include "vidgrad/ops/common.h"
#include "vidgrad/ops/cpu/elementwise_cpu.h"

namespace vidgrad {

Tensor dropout(const Tensor& x_in, double p, bool training, Generator& gen) {
  ops_detail::check_floating("dropout", "input", x_in);
  VG_CHECK(p >= 0.0 && p <= 1.0, "dropout: probability must be in [0, 1], got " << p);
  if (!training || p == 0.0) return x_in;
  const Tensor x = x_in.contiguous();
  Tensor mask = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  switch (x.device().type) {
    case DeviceType::kCPU:
      dispatch_floating(x.dtype(), "dropout", [&]<typename T>() {
        const T scale = p < 1.0 ? static_cast<T>(1.0 / (1.0 - p)) : T(0);
        T* m = mask.data<T>();
        for (std::int64_t i = 0, n = x.numel(); i < n; ++i) m[i] = gen.uniform() >= p ? scale : T(0);
        cpu::binary_map<T>(x.data<T>(), m, y.data<T>(), x.numel(), [](T a, T b) { return a * b; });
      });
      break;
    default: ops_detail::no_kernel("dropout", x.device());
  }
  if (autograd::needs_graph({&x_in})) {
    autograd::attach(y, "dropout", {x_in}, [mask](const Tensor& g_in, const std::vector<bool>&) {
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
