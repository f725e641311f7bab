// Writing your own differentiable op and checking its gradient, the way every op in
// vidgrad is checked. The op here is a "soft shrink" used in some sparse-coding layers:
//   y = x - lambda  if x > lambda,   x + lambda  if x < -lambda,   0 otherwise
// Its gradient is 1 outside [-lambda, lambda] and 0 inside.
//
//   build/examples/custom_op_gradcheck
#include <cstdio>

#include "vidgrad/autograd/node.h"
#include "vidgrad/ops/ops.h"

using namespace vidgrad;

// 1. The forward: checks, then a plain loop over contiguous data (float and double).
Tensor soft_shrink(const Tensor& x_in, double lambda) {
  VG_CHECK(lambda >= 0, "soft_shrink: lambda must be >= 0, got " << lambda);
  const Tensor x = x_in.contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  dispatch_floating(x.dtype(), "soft_shrink", [&]<typename T>() {
    const T* px = x.data<T>();
    T* py = y.data<T>();
    const T l = static_cast<T>(lambda);
    for (std::int64_t i = 0; i < x.numel(); ++i) py[i] = px[i] > l ? px[i] - l : (px[i] < -l ? px[i] + l : T(0));
  });
  // 2. The backward: recorded only when some input needs a gradient. The closure gets
  //    the output's gradient and returns one gradient per input.
  if (autograd::needs_graph({&x_in})) {
    autograd::attach(y, "soft_shrink", {x_in}, [x = x.detach(), lambda](const Tensor& g_in, const std::vector<bool>&) {
      const Tensor g = g_in.contiguous();
      Tensor gx = Tensor::empty(g.shape(), g.dtype());
      dispatch_floating(g.dtype(), "soft_shrink backward", [&]<typename T>() {
        const T* px = x.data<T>();
        const T* pg = g.data<T>();
        T* out = gx.data<T>();
        for (std::int64_t i = 0; i < g.numel(); ++i) out[i] = std::abs(px[i]) > lambda ? pg[i] : T(0);
      });
      return std::vector<Tensor>{gx};
    });
  }
  return y;
}

// The same op with a deliberate mistake in its gradient, to show what a failure looks like.
Tensor soft_shrink_wrong(const Tensor& x, double lambda) {
  Tensor y = soft_shrink(x.detach(), lambda);
  if (autograd::needs_graph({&x}))
    autograd::attach(y, "soft_shrink_wrong", {x}, [](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{g};  // forgets the zero band
    });
  return y;
}

int main() {
  // 3. gradcheck: float64 inputs, central differences against the backward, on contiguous
  //    and non-contiguous inputs. Keep inputs away from the kinks at +-lambda, where the
  //    function has no derivative (a finite difference straddling one would disagree).
  Generator gen(0);
  Tensor x = Tensor::randn({4, 5}, gen, DType::kFloat64);
  {
    double* p = x.data<double>();
    for (int i = 0; i < 20; ++i)
      if (std::abs(std::abs(p[i]) - 0.5) < 0.05) p[i] += 0.2;
  }
  x.set_requires_grad(true);
  auto good = autograd::gradcheck([](const std::vector<Tensor>& in) { return soft_shrink(in[0], 0.5); }, {x});
  std::printf("soft_shrink:       %s\n", good.ok ? "gradient matches finite differences" : good.message.c_str());
  auto bad = autograd::gradcheck([](const std::vector<Tensor>& in) { return soft_shrink_wrong(in[0], 0.5); }, {x});
  std::printf("soft_shrink_wrong: %s\n", bad.ok ? "passed (unexpected!)" : bad.message.c_str());
  // 4. Bad input is an exception naming the op and the value.
  try {
    soft_shrink(x, -1);
  } catch (const Error& e) {
    std::printf("bad input:         %s\n", e.what());
  }
  return good.ok && !bad.ok ? 0 : 1;
}
