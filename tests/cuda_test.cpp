// The CUDA backend: tensors and memory on the device, and every op's forward output and
// gradients on CUDA against the CPU implementation (float32: atol 1e-4 + rtol 1e-3;
// float64: 1e-10 + 1e-8), SEVNet-G8 forward/backward parity and a few GPU training steps.
//
// On a machine without a visible GPU (CI) every test but the first skips with the reason;
// the first checks that such a machine gets a clear error instead of a crash.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>

#include "test_util.h"

#include "vidgrad/autograd/grad_mode.h"
#include "vidgrad/core/cuda/context.h"
#include "vidgrad/models/sevnet.h"
#include "vidgrad/nn/layers.h"
#include "vidgrad/optim/sgd.h"
#ifdef VIDGRAD_WITH_CUDA
#include "vidgrad/ops/cuda/kernels.h"
#endif

namespace vidgrad {
namespace {

using testing::all_close;
using testing::randn;

const Device kGpu = Device::cuda(0);

#define REQUIRE_CUDA()                                                                    \
  do {                                                                                    \
    if (!cuda::is_available()) GTEST_SKIP() << "needs a CUDA device: " << cuda::unavailable_reason(); \
  } while (0)

struct Tolerance {
  double atol, rtol;
};
Tolerance tolerance_for(DType t) { return t == DType::kFloat64 ? Tolerance{1e-10, 1e-8} : Tolerance{1e-4, 1e-3}; }

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

// Runs f on CPU copies of `inputs` and on CUDA copies, then backward with the same random
// output gradient; expects the outputs and every floating input's gradient to match.
void expect_parity(const std::string& what, const std::vector<Tensor>& inputs, const Fn& f,
                   std::optional<Tolerance> tol_in = std::nullopt) {
  SCOPED_TRACE(what);
  std::vector<Tensor> on_cpu, on_gpu;
  for (const Tensor& t : inputs) {
    Tensor c = t.detach().clone();
    Tensor g = t.detach().to(kGpu);
    if (is_floating(t.dtype())) {
      c.set_requires_grad(true);
      g.set_requires_grad(true);
    }
    on_cpu.push_back(c);
    on_gpu.push_back(g);
  }
  const Tensor y_cpu = f(on_cpu);
  const Tensor y_gpu = f(on_gpu);
  ASSERT_EQ(y_gpu.device(), kGpu);
  const Tolerance tol = tol_in.value_or(tolerance_for(y_cpu.dtype()));
  EXPECT_TRUE(all_close(y_gpu.to(Device::cpu()), y_cpu, tol.atol, tol.rtol)) << "forward";
  if (!y_cpu.requires_grad()) return;
  Generator gen(99);
  const Tensor gy = Tensor::randn(y_cpu.shape(), gen, y_cpu.dtype());
  y_cpu.backward(gy);
  y_gpu.backward(gy.to(kGpu));
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    if (!on_cpu[i].requires_grad() || !on_cpu[i].grad().defined()) continue;
    ASSERT_TRUE(on_gpu[i].grad().defined()) << "input " << i << " has no gradient on cuda";
    EXPECT_EQ(on_gpu[i].grad().device(), kGpu);
    EXPECT_TRUE(all_close(on_gpu[i].grad().to(Device::cpu()), on_cpu[i].grad(), tol.atol, tol.rtol))
        << "gradient of input " << i;
  }
}

// ---- runs everywhere ----

TEST(Cuda, WithoutADeviceTensorsOnCudaFailWithAClearMessage) {
  if (cuda::is_available()) {
    EXPECT_TRUE(cuda::built_with_cuda());
    EXPECT_GT(cuda::device_count(), 0);
    EXPECT_EQ(cuda::unavailable_reason(), "");
    EXPECT_THROW_MSG(Tensor::empty({2}, DType::kFloat32, Device::cuda(cuda::device_count())), "does not exist");
    return;
  }
  EXPECT_EQ(cuda::device_count(), 0);
  EXPECT_FALSE(cuda::unavailable_reason().empty());
  try {
    Tensor::zeros({2, 3}, DType::kFloat32, kGpu);
    FAIL() << "allocating on cuda without a device did not throw";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_TRUE(msg.find("cuda") != std::string::npos || msg.find("CUDA") != std::string::npos) << msg;
  }
  EXPECT_THROW(Tensor::ones({3}).to(kGpu), Error);
}

TEST(Cuda, DeviceNamesParse) {
  EXPECT_EQ(parse_device("cpu"), Device::cpu());
  EXPECT_EQ(parse_device("cuda"), Device::cuda(0));
  EXPECT_EQ(parse_device("cuda:3"), Device::cuda(3));
  EXPECT_THROW_MSG(parse_device("gpu"), "'gpu' is not a device", "cuda:N");
  EXPECT_THROW_MSG(parse_device("cuda:x"), "'cuda:x' is not a device");
}

// ---- tensors and memory ----

TEST(Cuda, TensorsRoundTripWithViewsAndDtypes) {
  REQUIRE_CUDA();
  const Tensor x = randn({3, 4, 5}, 1, DType::kFloat32);
  EXPECT_TRUE(all_close(x.to(kGpu).to(Device::cpu()), x, 0, 0));
  // Non-contiguous source on either side, dtype conversion on the device.
  const Tensor xt = x.permute({2, 0, 1});
  EXPECT_TRUE(all_close(xt.to(kGpu).to(Device::cpu()), xt, 0, 0));
  const Tensor g = x.to(kGpu);
  EXPECT_TRUE(all_close(g.permute({2, 0, 1}).contiguous().to(Device::cpu()), xt.contiguous(), 0, 0));
  EXPECT_TRUE(all_close(g.narrow(1, 1, 2).to(Device::cpu()), x.narrow(1, 1, 2), 0, 0));
  EXPECT_TRUE(all_close(g.to(DType::kFloat64).to(Device::cpu()), x.to(DType::kFloat64), 0, 0));
  Tensor h = Tensor::empty({3, 4, 5}, DType::kFloat64, kGpu);
  h.copy_(x);  // host float32 -> device float64
  EXPECT_TRUE(all_close(h.to(Device::cpu()), x.to(DType::kFloat64), 0, 0));
  // fill_, zeros, add_, item, int64.
  Tensor z = Tensor::zeros({4, 4}, DType::kFloat32, kGpu);
  z.narrow(0, 1, 2).fill_(2.5);
  z.add_(Tensor::ones({4, 4}, DType::kFloat32, kGpu));
  const std::vector<float> v = z.to_vector<float>();
  EXPECT_FLOAT_EQ(v[0], 1.0f);
  EXPECT_FLOAT_EQ(v[5], 3.5f);
  EXPECT_DOUBLE_EQ(Tensor::full({}, 7.0, DType::kInt64, kGpu).item(), 7.0);
  // A non-blocking upload is ordered before later work on the compute stream.
  const Tensor big = randn({1 << 20}, 2, DType::kFloat32);
  const Tensor up = big.to(kGpu, /*non_blocking=*/true);
  EXPECT_TRUE(all_close(mul(up, 2.0).to(Device::cpu()), mul(big, 2.0), 0, 0));
}

TEST(Cuda, GradientsFlowBackAcrossDevices) {
  REQUIRE_CUDA();
  Tensor x = randn({5}, 3, DType::kFloat32);
  x.set_requires_grad(true);
  sum(mul(x.to(kGpu), 3.0)).backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_EQ(x.grad().device(), Device::cpu());
  EXPECT_TRUE(all_close(x.grad(), Tensor::full({5}, 3.0), 1e-6, 0));
}

TEST(Cuda, CachingAllocatorReusesBlocksAcrossSteps) {
  REQUIRE_CUDA();
  auto step = [] {
    Tensor a = Tensor::empty({1000, 1000}, DType::kFloat32, kGpu);
    Tensor b = Tensor::empty({37}, DType::kFloat32, kGpu);
    Tensor c = Tensor::empty({3 << 20}, DType::kFloat32, kGpu);
  };
  step();
  const std::int64_t mallocs = cuda::memory_stats().device_mallocs;
  const std::size_t live = cuda::memory_stats().allocated;
  for (int i = 0; i < 20; ++i) step();
  EXPECT_EQ(cuda::memory_stats().device_mallocs, mallocs);
  EXPECT_EQ(cuda::memory_stats().allocated, live);
  EXPECT_GE(cuda::memory_stats().reserved, std::size_t{4} << 20);
}

TEST(Cuda, OpsRejectMixedDevices) {
  REQUIRE_CUDA();
  const Tensor a = Tensor::ones({3}, DType::kFloat32, kGpu), b = Tensor::ones({3});
  EXPECT_THROW_MSG(add(a, b), "add", "cuda:0", "cpu");
}

// ---- op parity ----

TEST(CudaParity, Elementwise) {
  REQUIRE_CUDA();
  for (DType dt : {DType::kFloat32, DType::kFloat64}) {
    const Tensor a = randn({2, 3, 4, 5}, 1, dt), b = randn({3, 1, 5}, 2, dt), c = randn({2, 3, 4, 5}, 3, dt);
    expect_parity("relu", {a}, [](const auto& in) { return relu(in[0]); });
    expect_parity("sigmoid", {a}, [](const auto& in) { return sigmoid(in[0]); });
    expect_parity("add broadcast", {a, b}, [](const auto& in) { return add(in[0], in[1]); });
    expect_parity("sub", {a, c}, [](const auto& in) { return sub(in[0], in[1]); });
    expect_parity("mul broadcast", {b, a}, [](const auto& in) { return mul(in[0], in[1]); });
    expect_parity("mul non-contiguous", {a, c},
                  [](const auto& in) { return mul(in[0].permute({3, 1, 2, 0}), in[1].permute({3, 1, 2, 0})); });
    expect_parity("mul scalar", {a}, [](const auto& in) { return mul(in[0], -1.5); });
    expect_parity("add_relu", {a, c}, [](const auto& in) { return add_relu(in[0], in[1]); });
    expect_parity("add_relu broadcast", {a, b}, [](const auto& in) { return add_relu(in[0], in[1]); });
  }
}

// The fused conv forms: conv3d with opts.relu (forward and backward through the mask), and
// the forward-only inference conv + batch norm (+ ReLU), CPU epilogue against the GPU's
// conv followed by its batch norm.
TEST(CudaParity, FusedConvReluAndInferenceBatchNorm) {
  REQUIRE_CUDA();
  for (DType dt : {DType::kFloat32, DType::kFloat64}) {
    const Tensor x = randn({2, 16, 3, 6, 7}, 60, dt), gamma = randn({16}, 62, dt), beta = randn({16}, 63, dt);
    const Tensor mean = randn({16}, 64, dt), var = add(mul(gamma, gamma), Tensor::full({16}, 0.3, dt));
    for (const auto& [kernel, opts] : {std::pair<Shape, Conv3dOptions>{{16, 16, 1, 1, 1}, {}},
                                       {{16, 2, 1, 3, 3}, {.stride = {1, 2, 2}, .padding = {0, 1, 1}, .groups = 8}},
                                       {{16, 16, 3, 1, 1}, {.padding = {1, 0, 0}}}}) {
      const Tensor w = randn(kernel, 61, dt);
      Conv3dOptions o = opts;
      o.relu = true;
      expect_parity("conv3d relu", {x, w}, [o](const auto& in) { return conv3d(in[0], in[1], Tensor(), o); });
      autograd::NoGradGuard no_grad;
      for (bool r : {false, true})
        for (bool with_residual : {false, true}) {
          o.relu = r;
          const Tensor res = with_residual ? randn(conv3d(x, w, Tensor(), opts).shape(), 65, dt) : Tensor();
          const Tensor on_cpu = conv3d_batch_norm_inference(x, w, {}, gamma, beta, mean, var, 1e-5, o, res);
          const Tensor on_gpu = conv3d_batch_norm_inference(
              x.to(kGpu), w.to(kGpu), {}, gamma.to(kGpu), beta.to(kGpu), mean.to(kGpu), var.to(kGpu), 1e-5, o,
              with_residual ? res.to(kGpu) : Tensor());
          const Tolerance tol = tolerance_for(dt);
          EXPECT_TRUE(all_close(on_gpu.to(Device::cpu()), on_cpu, tol.atol, tol.rtol))
              << "relu " << r << " residual " << with_residual;
          // Into channels [3, 19) of a 21-channel tensor (Note [concat in place]): the same
          // values, the other channels untouched.
          const Shape& ys = on_cpu.shape();
          Tensor into = Tensor::full({ys[0], 21, ys[2], ys[3], ys[4]}, 5.0, dt, kGpu);
          conv3d_batch_norm_inference_into(into, 3, x.to(kGpu), w.to(kGpu), {}, gamma.to(kGpu), beta.to(kGpu),
                                           mean.to(kGpu), var.to(kGpu), 1e-5, o,
                                           with_residual ? res.to(kGpu) : Tensor());
          const Tensor back = into.to(Device::cpu());
          EXPECT_TRUE(all_close(back.narrow(1, 3, 16).contiguous(), on_cpu, tol.atol, tol.rtol));
          EXPECT_TRUE(all_close(back.narrow(1, 19, 2).contiguous(),
                                Tensor::full({ys[0], 2, ys[2], ys[3], ys[4]}, 5.0, dt), 0, 0));
        }
    }
  }
}

TEST(CudaParity, ReductionsAndShapes) {
  REQUIRE_CUDA();
  for (DType dt : {DType::kFloat32, DType::kFloat64}) {
    const Tensor a = randn({3, 4, 5, 6}, 4, dt), b = randn({3, 2, 5, 6}, 5, dt);
    expect_parity("sum all", {a}, [](const auto& in) { return sum(in[0]); });
    expect_parity("sum dims", {a}, [](const auto& in) { return sum(in[0], {0, 2}); });
    expect_parity("mean keepdim", {a}, [](const auto& in) { return mean(in[0], {1, 3}, true); });
    expect_parity("mean of a view", {a}, [](const auto& in) { return mean(in[0].permute({2, 0, 3, 1}), {1}); });
    expect_parity("concat", {a, b}, [](const auto& in) { return concat({in[0], in[1]}, 1); });
    expect_parity("narrow", {a}, [](const auto& in) { return in[0].narrow(2, 1, 3); });
    expect_parity("reshape", {a}, [](const auto& in) { return in[0].permute({1, 0, 2, 3}).reshape({4, -1}); });
  }
}

struct ConvCase {
  Shape x;
  Shape w;
  Conv3dOptions opts;
  bool bias;
};

[[maybe_unused]] std::vector<ConvCase> conv_cases() {  // unused without the CUDA backend
  auto opt = [](std::array<std::int64_t, 3> s, std::array<std::int64_t, 3> p, std::array<std::int64_t, 3> d,
                std::int64_t groups) {
    Conv3dOptions o;
    o.stride = s;
    o.padding = p;
    o.dilation = d;
    o.groups = groups;
    return o;
  };
  return {
      {{2, 3, 5, 9, 11}, {4, 3, 3, 3, 3}, opt({1, 1, 1}, {1, 1, 1}, {1, 1, 1}, 1), true},
      {{1, 3, 4, 13, 13}, {8, 3, 1, 7, 7}, opt({1, 2, 2}, {0, 3, 3}, {1, 1, 1}, 1), false},  // the stem
      {{2, 6, 3, 7, 5}, {4, 6, 1, 1, 1}, opt({1, 1, 1}, {0, 0, 0}, {1, 1, 1}, 1), true},     // pointwise
      {{2, 6, 5, 4, 4}, {6, 6, 3, 1, 1}, opt({1, 1, 1}, {1, 0, 0}, {1, 1, 1}, 1), false},    // temporal
      {{2, 4, 3, 7, 9}, {6, 2, 1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2), true},     // groups 2
      {{1, 16, 3, 9, 9}, {16, 8, 1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 2), false},  // width 8, stride 2
      {{2, 24, 2, 8, 8}, {24, 8, 1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 3), false},  // width 8
      {{1, 6, 4, 6, 7}, {6, 1, 3, 3, 3}, opt({1, 1, 1}, {1, 1, 1}, {1, 1, 1}, 6), true},     // depthwise
      {{1, 4, 5, 9, 9}, {4, 1, 3, 3, 3}, opt({2, 2, 1}, {2, 2, 2}, {2, 2, 2}, 4), false},    // dilated depthwise
  };
}

TEST(CudaParity, Conv3dEveryGroupingThroughEachImplementation) {
  REQUIRE_CUDA();
#ifdef VIDGRAD_WITH_CUDA
  for (int policy : {1, 2, 0}) {  // cuDNN only, direct only, timed choice
    cuda::set_conv3d_policy(policy);
    for (DType dt : {DType::kFloat32, DType::kFloat64}) {
      int i = 0;
      for (const ConvCase& c : conv_cases()) {
        const Tensor x = randn(c.x, 10 + i, dt), w = randn(c.w, 20 + i, dt);
        const Tensor b = c.bias ? randn({c.w[0]}, 30 + i, dt) : Tensor();
        const Conv3dOptions o = c.opts;
        std::vector<Tensor> in{x, w};
        if (c.bias) in.push_back(b);
        expect_parity("conv case " + std::to_string(i) + " policy " + std::to_string(policy) + " " + dtype_name(dt),
                      in, [o](const auto& t) { return conv3d(t[0], t[1], t.size() > 2 ? t[2] : Tensor(), o); });
        ++i;
      }
    }
  }
  cuda::set_conv3d_policy(0);
#endif
}

TEST(CudaParity, BatchNormTrainingAndEvalWithRunningStats) {
  REQUIRE_CUDA();
  for (DType dt : {DType::kFloat32, DType::kFloat64}) {
    const Tensor x = randn({3, 5, 2, 3, 4}, 40, dt), w = randn({5}, 41, dt), b = randn({5}, 42, dt);
    for (bool training : {true, false}) {
      Tensor rm_cpu = randn({5}, 43, dt), rv_cpu = add(mul(randn({5}, 44, dt), randn({5}, 44, dt)), Tensor::scalar(0.5, dt));
      Tensor rm_gpu = rm_cpu.to(kGpu), rv_gpu = rv_cpu.to(kGpu);
      BatchNormOptions o;
      o.training = training;
      expect_parity(training ? "batch_norm train" : "batch_norm eval", {x, w, b}, [&](const auto& in) {
        const bool gpu = in[0].device().is_cuda();
        return batch_norm(in[0], in[1], in[2], gpu ? rm_gpu : rm_cpu, gpu ? rv_gpu : rv_cpu, o);
      });
      const Tolerance tol = tolerance_for(dt);
      EXPECT_TRUE(all_close(rm_gpu.to(Device::cpu()), rm_cpu, tol.atol, tol.rtol)) << "running_mean";
      EXPECT_TRUE(all_close(rv_gpu.to(Device::cpu()), rv_cpu, tol.atol, tol.rtol)) << "running_var";
    }
    expect_parity("batch_norm without affine", {x}, [](const auto& in) {
      return batch_norm(in[0], Tensor(), Tensor(), Tensor(), Tensor(), BatchNormOptions{});
    });
    expect_parity("batch_norm with fused relu", {x, w, b}, [](const auto& in) {
      return batch_norm(in[0], in[1], in[2], Tensor(), Tensor(), BatchNormOptions{.relu = true});
    });
  }
}

TEST(CudaParity, Pooling) {
  REQUIRE_CUDA();
  for (DType dt : {DType::kFloat32, DType::kFloat64}) {
    const Tensor x = randn({2, 3, 5, 7, 9}, 50, dt);
    for (bool include_pad : {true, false}) {
      Pool3dOptions o;
      o.kernel = {3, 3, 2};
      o.stride = std::array<std::int64_t, 3>{2, 1, 2};
      o.padding = {1, 1, 1};
      o.count_include_pad = include_pad;
      expect_parity("avg_pool3d", {x}, [o](const auto& in) { return avg_pool3d(in[0], o); });
      expect_parity("max_pool3d", {x}, [o](const auto& in) { return max_pool3d(in[0], o); });
    }
    Pool3dOptions plain;
    plain.kernel = {1, 2, 2};
    expect_parity("avg_pool3d 1x2x2", {x}, [plain](const auto& in) { return avg_pool3d(in[0], plain); });
    expect_parity("global_avg_pool3d", {x}, [](const auto& in) { return global_avg_pool3d(in[0]); });
  }
}

TEST(CudaParity, TemporalShiftLinearSoftmaxLossDropout) {
  REQUIRE_CUDA();
  for (DType dt : {DType::kFloat32, DType::kFloat64}) {
    const Tensor x = randn({2, 9, 4, 3, 2}, 60, dt);
    expect_parity("temporal_shift", {x}, [](const auto& in) { return temporal_shift(in[0], 4); });
    const Tensor a = randn({5, 7}, 61, dt), w = randn({3, 7}, 62, dt), b = randn({3}, 63, dt);
    expect_parity("linear", {a, w, b}, [](const auto& in) { return linear(in[0], in[1], in[2]); });
    expect_parity("linear 3-D without bias", {randn({2, 4, 7}, 64, dt), w},
                  [](const auto& in) { return linear(in[0], in[1], Tensor()); });
    expect_parity("log_softmax", {randn({4, 6, 3}, 65, dt)}, [](const auto& in) { return log_softmax(in[0], 1); });
    const Tensor targets = Tensor::from_vector<std::int64_t>({2, 0, 6, 3, 1}, {5});
    for (double smoothing : {0.0, 0.1}) {
      expect_parity("cross_entropy", {a, targets}, [smoothing](const auto& in) {
        const Tensor t = in[0].device().is_cuda() ? in[1].to(in[0].device()) : in[1];
        return cross_entropy(in[0], t, smoothing);
      });
    }
    expect_parity("dropout", {a}, [](const auto& in) {
      Generator gen(5);  // the same draws on both devices
      return dropout(in[0], 0.4, true, gen);
    });
  }
}

TEST(CudaParity, SgdStepMatchesTheCpu) {
  REQUIRE_CUDA();
  const Tensor init = randn({6, 5}, 70, DType::kFloat32), grad = randn({6, 5}, 71, DType::kFloat32);
  optim::SgdOptions o;
  o.lr = 0.1;
  o.momentum = 0.9;
  o.weight_decay = 1e-2;
  o.nesterov = true;
  auto run = [&](Device d) {
    Tensor p = init.detach().clone().to(d);
    p.set_requires_grad(true);
    optim::Sgd sgd({{"p", p}}, o);
    for (int i = 0; i < 3; ++i) {
      p.set_grad(grad.to(d));
      sgd.step();
    }
    return p.detach().to(Device::cpu());
  };
  EXPECT_TRUE(all_close(run(kGpu), run(Device::cpu()), 1e-6, 1e-5));
}

// ---- the network ----

models::SevNetConfig small_g8() {
  models::SevNetConfig cfg = models::config_for("sevnet_g8", {});
  cfg.num_classes = 5;
  cfg.dropout = 0.0;
  cfg.seed = 3;
  return cfg;
}

TEST(CudaParity, SevNetG8ForwardAndBackward) {
  REQUIRE_CUDA();
  models::SevNet cpu_net(small_g8()), gpu_net(small_g8());
  gpu_net.to(kGpu);
  const Tensor x = randn({2, 3, 4, 32, 32}, 80, DType::kFloat32);
  const Tensor targets = Tensor::from_vector<std::int64_t>({1, 4}, {2});
  const Tensor loss_cpu = cross_entropy(cpu_net.forward(x), targets);
  const Tensor loss_gpu = cross_entropy(gpu_net.forward(x.to(kGpu)), targets.to(kGpu));
  EXPECT_NEAR(loss_gpu.item(), loss_cpu.item(), 1e-4 + 1e-3 * std::abs(loss_cpu.item()));
  loss_cpu.backward();
  loss_gpu.backward();
  // 50 layers deep in float32 with batch statistics over 2 clips: differences of summation
  // order grow with depth, so whole-network gradients get atol 1e-3 + rtol 1e-2.
  const auto gpu_params = gpu_net.named_parameters();
  const auto cpu_params = cpu_net.named_parameters();
  ASSERT_EQ(gpu_params.size(), cpu_params.size());
  for (std::size_t i = 0; i < cpu_params.size(); ++i) {
    ASSERT_TRUE(gpu_params[i].second.grad().defined()) << gpu_params[i].first;
    EXPECT_TRUE(all_close(gpu_params[i].second.grad().to(Device::cpu()), cpu_params[i].second.grad(), 1e-3, 1e-2))
        << cpu_params[i].first;
  }
  for (const auto& [name, buf] : gpu_net.named_buffers()) {
    if (is_floating(buf.dtype())) {
      EXPECT_EQ(buf.device(), kGpu) << name;
    }
  }
}

TEST(CudaTraining, AFewStepsOnTheGpuLowerTheLoss) {
  REQUIRE_CUDA();
  models::SevNetConfig cfg = small_g8();
  cfg.depths = {1, 1, 1, 1};
  models::SevNet net(cfg);
  net.to(kGpu);
  optim::SgdOptions o;
  o.lr = 0.05;
  o.momentum = 0.9;
  optim::Sgd sgd(net.named_parameters(), o);
  const Tensor x = randn({4, 3, 4, 32, 32}, 90, DType::kFloat32).to(kGpu, /*non_blocking=*/true);
  const Tensor targets = Tensor::from_vector<std::int64_t>({0, 1, 2, 3}, {4}).to(kGpu);
  double first = 0, last = 0;
  for (int step = 0; step < 12; ++step) {
    sgd.zero_grad();
    const Tensor loss = cross_entropy(net.forward(x), targets);
    loss.backward();
    sgd.step();
    (step == 0 ? first : last) = loss.item();
  }
  EXPECT_LT(last, 0.5 * first) << "loss " << first << " -> " << last;
}

}  // namespace
}  // namespace vidgrad
