// relu, sigmoid and broadcasting add/sub/mul. Backward of a broadcast input sums the
// gradient over the broadcast dims (sum_to).
#include "vidgrad/ops/elementwise.h"

#include "vidgrad/autograd/node.h"
#include "vidgrad/core/layout.h"
#include "vidgrad/core/profile.h"
#include "vidgrad/ops/common.h"
#include "vidgrad/ops/cpu/elementwise_cpu.h"
#include "vidgrad/ops/shape.h"
#ifdef VIDGRAD_WITH_CUDA
#include "vidgrad/ops/cuda/kernels.h"
#endif

namespace vidgrad {

using autograd::attach;
using autograd::needs_graph;

namespace {

enum class BinaryOp { kAdd, kSub, kMul, kAddRelu };

// out = a op b; same shapes and contiguous take the flat path.
Tensor binary(const char* name, BinaryOp op, const Tensor& a, const Tensor& b) {
  profile::Scope scope(name);
  ops_detail::check_floating(name, "a", a);
  ops_detail::check_floating(name, "b", b);
  ops_detail::check_same(name, {{"a", &a}, {"b", &b}});
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  // Two operands laid out alike and dense (both contiguous, or both channels-last) map
  // flat, and the output takes their layout.
  const bool flat = a.shape() == b.shape() && ((a.is_contiguous() && b.is_contiguous()) ||
                                                (a.strides() == b.strides() && is_dense(a)));
  Tensor out = flat ? empty_like_dense(a) : Tensor::empty(shape, a.dtype(), a.device());
  switch (a.device().type) {
    case DeviceType::kCPU:
      dispatch_floating(a.dtype(), name, [&]<typename T>() {
        auto run = [&](auto f) {
          if (flat)
            cpu::binary_map<T>(a.data<T>(), b.data<T>(), out.data<T>(), out.numel(), f);
          else
            cpu::broadcast_binary<T>(a, b, out, f);
        };
        switch (op) {
          case BinaryOp::kAdd: run([](T x, T y) { return x + y; }); break;
          case BinaryOp::kSub: run([](T x, T y) { return x - y; }); break;
          case BinaryOp::kMul: run([](T x, T y) { return x * y; }); break;
          case BinaryOp::kAddRelu:
            run([](T x, T y) {
              const T v = x + y;
              return v > T(0) ? v : T(0);  // as relu(): NaN becomes 0
            });
            break;
        }
      });
      break;
#ifdef VIDGRAD_WITH_CUDA
    case DeviceType::kCUDA: {
      // Flat operands walk as one run in storage order, as the output is laid out.
      const cuda::StridedPair layout = flat ? cuda::make_strided_pair(name, {a.numel()}, {1}, {1})
                                            : ops_detail::broadcast_layout(name, a, b, shape);
      const cuda::Binary kind = op == BinaryOp::kAdd || op == BinaryOp::kAddRelu ? cuda::Binary::kAdd
                                : op == BinaryOp::kSub                              ? cuda::Binary::kSub
                                                                                    : cuda::Binary::kMul;
      dispatch_floating(a.dtype(), name, [&]<typename T>() {
        cuda::binary<T>(kind, a.device_data<T>(), b.device_data<T>(), out.device_data<T>(), layout, out.numel(),
                        a.device().index);
        if (op == BinaryOp::kAddRelu)
          cuda::relu_forward<T>(out.device_data<T>(), out.device_data<T>(), out.numel(), a.device().index);
      });
      break;
    }
#endif
    default: ops_detail::no_kernel(name, a.device());
  }
  return out;
}

}  // namespace

Tensor relu_grad(const Tensor& g_in, const Tensor& y_in) {
  profile::Scope scope("relu_grad");
  ops_detail::check_floating("relu_grad", "g", g_in);
  ops_detail::check_same("relu_grad", {{"g", &g_in}, {"y", &y_in}});
  VG_CHECK(g_in.shape() == y_in.shape(), "relu_grad: g has shape " << shape_str(g_in.shape()) << " but y has "
                                                                   << shape_str(y_in.shape()));
  const bool flat = !(g_in.is_contiguous() && y_in.is_contiguous()) && g_in.strides() == y_in.strides() &&
                    is_dense(g_in);  // both channels-last, say: as binary's
  const Tensor g = flat ? g_in : g_in.contiguous(), y = flat ? y_in : y_in.contiguous();
  Tensor gx = empty_like_dense(g);
  dispatch_floating(g.dtype(), "relu backward", [&]<typename T>() {
    switch (g.device().type) {
      case DeviceType::kCPU:
        cpu::relu_grad_map<T>(g.data<T>(), y.data<T>(), gx.data<T>(), g.numel());
        break;
#ifdef VIDGRAD_WITH_CUDA
      case DeviceType::kCUDA:
        cuda::relu_backward<T>(g.device_data<T>(), y.device_data<T>(), gx.device_data<T>(), g.numel(),
                               g.device().index);
        break;
#endif
      default: ops_detail::no_kernel("relu backward", g.device());
    }
  });
  return gx;
}

Tensor relu(const Tensor& x_in) {
  profile::Scope scope("relu");
  ops_detail::check_floating("relu", "x", x_in);
  const Tensor x = is_dense(x_in) ? x_in : x_in.contiguous();  // a dense x keeps its layout
  Tensor y = empty_like_dense(x);
  switch (x.device().type) {
    case DeviceType::kCPU:
      dispatch_floating(x.dtype(), "relu", [&]<typename T>() {
        cpu::unary_map<T>(x.data<T>(), y.data<T>(), x.numel(), [](T v) { return v > T(0) ? v : T(0); });
      });
      break;
#ifdef VIDGRAD_WITH_CUDA
    case DeviceType::kCUDA:
      dispatch_floating(x.dtype(), "relu", [&]<typename T>() {
        cuda::relu_forward<T>(x.device_data<T>(), y.device_data<T>(), x.numel(), x.device().index);
      });
      break;
#endif
    default: ops_detail::no_kernel("relu", x.device());
  }
  if (needs_graph({&x_in})) {
    // Saves the output, not the input: y > 0 exactly where x > 0.
    attach(y, "relu", {x_in}, [y = y.detach()](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{relu_grad(g, y)};
    });
  }
  return y;
}

Tensor sigmoid(const Tensor& x_in) {
  profile::Scope scope("sigmoid");
  ops_detail::check_floating("sigmoid", "x", x_in);
  const Tensor x = x_in.contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  switch (x.device().type) {
    case DeviceType::kCPU:
      dispatch_floating(x.dtype(), "sigmoid", [&]<typename T>() {
        cpu::unary_map<T>(x.data<T>(), y.data<T>(), x.numel(), [](T v) { return T(1) / (T(1) + std::exp(-v)); });
      });
      break;
#ifdef VIDGRAD_WITH_CUDA
    case DeviceType::kCUDA:
      dispatch_floating(x.dtype(), "sigmoid", [&]<typename T>() {
        cuda::sigmoid_forward<T>(x.device_data<T>(), y.device_data<T>(), x.numel(), x.device().index);
      });
      break;
#endif
    default: ops_detail::no_kernel("sigmoid", x.device());
  }
  if (needs_graph({&x_in})) {
    attach(y, "sigmoid", {x_in}, [y = y.detach()](const Tensor& g_in, const std::vector<bool>&) {
      const Tensor g = g_in.contiguous();
      Tensor gx = Tensor::empty(g.shape(), g.dtype(), g.device());
      dispatch_floating(g.dtype(), "sigmoid backward", [&]<typename T>() {
        switch (g.device().type) {
          case DeviceType::kCPU:
            cpu::binary_map<T>(g.data<T>(), y.data<T>(), gx.data<T>(), g.numel(),
                               [](T gv, T yv) { return gv * yv * (T(1) - yv); });
            break;
#ifdef VIDGRAD_WITH_CUDA
          case DeviceType::kCUDA:
            cuda::sigmoid_backward<T>(g.device_data<T>(), y.device_data<T>(), gx.device_data<T>(), g.numel(),
                                  g.device().index);
            break;
#endif
          default: ops_detail::no_kernel("sigmoid backward", g.device());
        }
      });
      return std::vector<Tensor>{gx};
    });
  }
  return y;
}

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary("add", BinaryOp::kAdd, a, b);
  if (needs_graph({&a, &b})) {
    attach(out, "add", {a, b}, [sa = a.shape(), sb = b.shape()](const Tensor& g, const std::vector<bool>& needs) {
      return std::vector<Tensor>{needs[0] ? sum_to(g, sa) : Tensor(), needs[1] ? sum_to(g, sb) : Tensor()};
    });
  }
  return out;
}

Tensor add_relu(const Tensor& a, const Tensor& b) {
  Tensor out = binary("add_relu", BinaryOp::kAddRelu, a, b);
  if (needs_graph({&a, &b})) {
    attach(out, "add_relu", {a, b},
           [y = out.detach(), sa = a.shape(), sb = b.shape()](const Tensor& g, const std::vector<bool>& needs) {
             const Tensor masked = relu_grad(g, y);
             return std::vector<Tensor>{needs[0] ? sum_to(masked, sa) : Tensor(),
                                        needs[1] ? sum_to(masked, sb) : Tensor()};
           });
  }
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary("sub", BinaryOp::kSub, a, b);
  if (needs_graph({&a, &b})) {
    attach(out, "sub", {a, b}, [sa = a.shape(), sb = b.shape()](const Tensor& g, const std::vector<bool>& needs) {
      return std::vector<Tensor>{needs[0] ? sum_to(g, sa) : Tensor(), needs[1] ? sum_to(mul(g, -1.0), sb) : Tensor()};
    });
  }
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary("mul", BinaryOp::kMul, a, b);
  if (needs_graph({&a, &b})) {
    // Each side's gradient needs the other side's value, saved only when it is used.
    attach(out, "mul", {a, b},
           [a_saved = b.requires_grad() ? a.detach() : Tensor(), b_saved = a.requires_grad() ? b.detach() : Tensor(),
            sa = a.shape(), sb = b.shape()](const Tensor& g, const std::vector<bool>& needs) {
             return std::vector<Tensor>{needs[0] ? sum_to(mul(g, b_saved), sa) : Tensor(),
                                        needs[1] ? sum_to(mul(g, a_saved), sb) : Tensor()};
           });
  }
  return out;
}

Tensor mul(const Tensor& a, double s) {
  ops_detail::check_floating("mul", "a", a);
  return mul(a, Tensor::full({}, s, a.dtype(), a.device()));
}

}  // namespace vidgrad
