// The backend's own CUDA kernels — every one is a __host__ __device__ lambda given to
// for_each_index or reduce_each (core/cuda/kernel_util.cuh) — run on the host under host
// emulation (core/cuda/context.h) over host memory, against the CPU ops. This checks their
// index arithmetic and formulas (strides, broadcasting, windows, groups, reductions,
// backward rules) on every CI run, though CI has no GPU. What only a GPU can check (the
// launch and block-reduction machinery itself, cuBLAS, cuDNN, streams) is in cuda_test.cpp.
#include <gtest/gtest.h>

#include <type_traits>

#include "test_util.h"
#include "vidgrad/core/cuda/context.h"
#include "vidgrad/ops/common.h"
#include "vidgrad/ops/cpu/batch_norm_cpu.h"
#include "vidgrad/optim/sgd.h"
#ifdef VIDGRAD_WITH_CUDA
#include "vidgrad/ops/cuda/kernels.h"
#include "vidgrad/optim/cuda/sgd_cuda.h"
#endif

namespace vidgrad {
namespace {

#ifdef VIDGRAD_WITH_CUDA

using testing::all_close;
using testing::randn;

class HostEmulation : public ::testing::Test {
 protected:
  void SetUp() override { cuda::set_host_emulation(true); }
  void TearDown() override {
    cuda::set_host_emulation(false);
    cuda::set_conv3d_policy(0);
  }
};

template <typename T>
T* ptr(const Tensor& t) {
  return t.data<T>();
}

// x with requires_grad, f(x) backward with g: the CPU's input gradient.
Tensor cpu_grad(const Tensor& x_in, const std::function<Tensor(const Tensor&)>& f, const Tensor& g) {
  Tensor x = x_in.detach().clone();
  x.set_requires_grad(true);
  f(x).backward(g);
  return x.grad();
}

cuda::StridedPair pair_of(const Shape& shape, const Shape& a, const Shape& b) {
  cuda::StridedPair p;
  p.rank = static_cast<int>(shape.size());
  for (int d = 0; d < p.rank; ++d) {
    p.size[d] = shape[d];
    p.stride_a[d] = a[d];
    p.stride_b[d] = b[d];
  }
  return p;
}

template <typename T>
void elementwise_case(DType dt) {
  const Tensor x = randn({2, 3, 4, 5}, 1, dt), g = randn({2, 3, 4, 5}, 2, dt);
  const std::int64_t n = x.numel();
  Tensor y = Tensor::empty(x.shape(), dt), gx = Tensor::empty(x.shape(), dt);
  cuda::relu_forward<T>(ptr<T>(x), ptr<T>(y), n, 0);
  EXPECT_TRUE(all_close(y, relu(x), 0, 0));
  cuda::relu_backward<T>(ptr<T>(g), ptr<T>(y), ptr<T>(gx), n, 0);
  EXPECT_TRUE(all_close(gx, cpu_grad(x, [](const Tensor& t) { return relu(t); }, g), 0, 0));
  cuda::sigmoid_forward<T>(ptr<T>(x), ptr<T>(y), n, 0);
  EXPECT_TRUE(all_close(y, sigmoid(x), 1e-6, 1e-6));
  cuda::sigmoid_backward<T>(ptr<T>(g), ptr<T>(y), ptr<T>(gx), n, 0);
  EXPECT_TRUE(all_close(gx, cpu_grad(x, [](const Tensor& t) { return sigmoid(t); }, g), 1e-6, 1e-6));

  // Broadcasting, and a non-contiguous operand.
  const Tensor b = randn({3, 1, 5}, 3, dt);
  const Tensor a = randn({5, 4, 3, 2}, 4, dt).permute({3, 2, 1, 0});
  const Shape shape{2, 3, 4, 5};
  for (auto [kind, ref] : {std::pair{cuda::Binary::kAdd, add(a, b)}, std::pair{cuda::Binary::kSub, sub(a, b)},
                           std::pair{cuda::Binary::kMul, mul(a, b)}}) {
    Tensor out = Tensor::empty(shape, dt);
    cuda::binary<T>(kind, a.data<T>(), b.data<T>(), ptr<T>(out), ops_detail::broadcast_layout("t", a, b, shape),
                    out.numel(), 0);
    EXPECT_TRUE(all_close(out, ref, 0, 0));
  }

  // Row/column helpers against sum, the global-pool backward and broadcast_to.
  const Tensor m = randn({6, 7}, 5, dt);
  Tensor cols = Tensor::empty({7}, dt), rows = Tensor::empty({6, 7}, dt);
  cuda::col_sum<T>(ptr<T>(m), ptr<T>(cols), 6, 7, 0);
  EXPECT_TRUE(all_close(cols, sum(m, {0}), 1e-6, 1e-6));
  const Tensor bias = randn({7}, 6, dt);
  cuda::broadcast_rows<T>(ptr<T>(bias), ptr<T>(rows), 6, 7, 0);
  EXPECT_TRUE(all_close(rows, broadcast_to(bias, {6, 7}), 0, 0));
  const Tensor v = randn({6}, 7, dt);
  cuda::expand_rows<T>(ptr<T>(v), ptr<T>(rows), 6, 7, 0.5, 0);
  EXPECT_TRUE(all_close(rows, broadcast_to(mul(v, 0.5).reshape({6, 1}), {6, 7}), 1e-7, 1e-7));
  Tensor means = Tensor::empty({6}, dt);
  cuda::row_sum<T>(ptr<T>(m), ptr<T>(means), 6, 7, 1.0 / 7, 0);
  EXPECT_TRUE(all_close(means, mean(m, {1}), 1e-6, 1e-6));
}

TEST_F(HostEmulation, ElementwiseBroadcastingAndRowHelpers) {
  elementwise_case<float>(DType::kFloat32);
  elementwise_case<double>(DType::kFloat64);
}

TEST_F(HostEmulation, StridedCopyFillAndAccumulate) {
  const Tensor src = randn({4, 3, 5}, 8, DType::kFloat32);
  const Tensor view = src.permute({2, 0, 1});  // (5, 4, 3), strides (1, 15, 5)
  Tensor dst = Tensor::empty({5, 4, 3}, DType::kFloat64);
  cuda::copy_strided(ptr<double>(dst), DType::kFloat64, src.data<float>(), DType::kFloat32,
                     pair_of(view.shape(), dst.strides(), view.strides()), view.numel(), 0);
  EXPECT_TRUE(all_close(dst, view.to(DType::kFloat64), 0, 0));

  Tensor z = Tensor::zeros({4, 6}, DType::kFloat32);
  const Tensor part = z.narrow(1, 2, 3);
  cuda::fill_strided(part.data<float>(), DType::kFloat32, 2.5, pair_of(part.shape(), part.strides(), part.strides()),
                     part.numel(), 0);
  Tensor expected = Tensor::zeros({4, 6}, DType::kFloat32);
  expected.narrow(1, 2, 3).fill_(2.5);
  EXPECT_TRUE(all_close(z, expected, 0, 0));

  const Tensor add_src = randn({6, 4}, 9, DType::kFloat32).permute({1, 0});
  cuda::add_strided(z.data<float>(), add_src.data<float>(), DType::kFloat32,
                    pair_of(z.shape(), z.strides(), add_src.strides()), z.numel(), 0);
  EXPECT_TRUE(all_close(z, add(expected, add_src), 0, 0));
}

template <typename T>
void batch_norm_case(DType dt) {
  const std::int64_t N = 3, C = 5, S = 2 * 3 * 4;
  const Tensor x = randn({N, C, 2, 3, 4}, 10, dt), w = randn({C}, 11, dt), b = randn({C}, 12, dt);
  const Tensor g = randn(x.shape(), 13, dt);
  const double eps = 1e-5, momentum = 0.1;
  for (bool training : {true, false}) {
    SCOPED_TRACE(training ? "training" : "eval");
    const Tensor rm0 = randn({C}, 14, dt), rv0 = add(mul(rm0, rm0), Tensor::scalar(0.5, dt));
    Tensor rm_ref = rm0.clone(), rv_ref = rv0.clone();
    Tensor xr = x.clone();
    xr.set_requires_grad(true);
    BatchNormOptions o;
    o.training = training;
    const Tensor y_ref = batch_norm(xr, w, b, rm_ref, rv_ref, o);
    y_ref.backward(g);

    Tensor rm = rm0.clone(), rv = rv0.clone();
    std::vector<double> mean(C), var(C);
    if (training) {
      std::vector<double> cpu_mean(C), cpu_var(C);
      cpu::batch_norm_stats<T>(ptr<T>(x), N, C, S, cpu_mean.data(), cpu_var.data());
      cuda::batch_norm_stats<T>(ptr<T>(x), N, C, S, mean.data(), var.data(), 0);
      // The CPU sums float32 values in float32 blocks (Note [one-pass statistics]), the
      // CUDA kernels in double: equal to float32's precision there, to double's for double.
      const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-12;
      for (std::int64_t c = 0; c < C; ++c) {
        EXPECT_NEAR(mean[c], cpu_mean[c], tol);
        EXPECT_NEAR(var[c], cpu_var[c], tol);
      }
      const double unbias = static_cast<double>(N * S) / static_cast<double>(N * S - 1);
      cuda::batch_norm_finalize<T>(mean.data(), var.data(), ptr<T>(rm), ptr<T>(rv), C, eps, momentum, unbias, 0);
    } else {
      cuda::batch_norm_eval_stats<T>(ptr<T>(rm), ptr<T>(rv), mean.data(), var.data(), C, eps, 0);
    }
    const std::vector<double>& invstd = var;  // finalize / eval_stats leave 1/std there
    EXPECT_TRUE(all_close(rm, rm_ref, 1e-6, 1e-6));
    EXPECT_TRUE(all_close(rv, rv_ref, 1e-6, 1e-6));
    Tensor y = Tensor::empty(x.shape(), dt);
    cuda::batch_norm_apply<T>(ptr<T>(x), N, C, S, mean.data(), invstd.data(), ptr<T>(w), ptr<T>(b), ptr<T>(y), 0);
    EXPECT_TRUE(all_close(y, y_ref, 1e-5, 1e-5));
    std::vector<double> sums(2 * C, 0.0);
    Tensor gw = Tensor::empty({C}, dt), gb = Tensor::empty({C}, dt);
    cuda::batch_norm_backward_sums<T>(ptr<T>(x), ptr<T>(g), N, C, S, mean.data(), invstd.data(), ptr<T>(gw),
                                      ptr<T>(gb), sums.data(), 0);
    Tensor wr = w.clone(), br = b.clone();
    wr.set_requires_grad(true);
    br.set_requires_grad(true);
    Tensor rm2 = rm0.clone(), rv2 = rv0.clone();
    batch_norm(x, wr, br, rm2, rv2, o).backward(g);
    EXPECT_TRUE(all_close(gw, wr.grad(), 1e-5, 1e-4));
    EXPECT_TRUE(all_close(gb, br.grad(), 1e-5, 1e-4));
    Tensor gx = Tensor::empty(x.shape(), dt);
    cuda::batch_norm_backward_input<T>(ptr<T>(x), ptr<T>(g), N, C, S, mean.data(), invstd.data(), ptr<T>(w),
                                       training, sums.data(), ptr<T>(gx), 0);
    EXPECT_TRUE(all_close(gx, xr.grad(), 1e-5, 1e-4));
  }
}

TEST_F(HostEmulation, BatchNormStatisticsApplyAndGradients) {
  batch_norm_case<float>(DType::kFloat32);
  batch_norm_case<double>(DType::kFloat64);
}

template <typename T>
void pool_case(DType dt) {
  const Tensor x = randn({2, 3, 5, 7, 9}, 20, dt);
  for (bool include_pad : {true, false}) {
    Pool3dOptions o;
    o.kernel = {3, 3, 2};
    o.stride = std::array<std::int64_t, 3>{2, 1, 2};
    o.padding = {1, 1, 1};
    o.count_include_pad = include_pad;
    const Tensor avg = avg_pool3d(x, o), mx = max_pool3d(x, o);
    const cpu::Pool3dGeometry geo{6,          5,           7,           9,           avg.shape()[2], avg.shape()[3],
                                  avg.shape()[4], 3,        3,           2,           2,              1,
                                  2,          1,           1,           1,           include_pad};
    const Tensor g = randn(avg.shape(), 21, dt);
    Tensor y = Tensor::empty(avg.shape(), dt), gx = Tensor::empty(x.shape(), dt);
    cuda::avg_pool3d_forward<T>(geo, ptr<T>(x), ptr<T>(y), 0);
    EXPECT_TRUE(all_close(y, avg, 1e-6, 1e-6));
    cuda::avg_pool3d_backward<T>(geo, ptr<T>(g), ptr<T>(gx), 0);
    EXPECT_TRUE(all_close(gx, cpu_grad(x, [&](const Tensor& t) { return avg_pool3d(t, o); }, g), 1e-6, 1e-6));
    Tensor argmax = Tensor::empty(mx.shape(), DType::kInt64);
    cuda::max_pool3d_forward<T>(geo, ptr<T>(x), ptr<T>(y), argmax.data<std::int64_t>(), 0);
    EXPECT_TRUE(all_close(y, mx, 0, 0));
    cuda::max_pool3d_backward<T>(geo, ptr<T>(g), argmax.data<std::int64_t>(), ptr<T>(gx), 0);
    EXPECT_TRUE(all_close(gx, cpu_grad(x, [&](const Tensor& t) { return max_pool3d(t, o); }, g), 1e-6, 1e-6));
  }
}

TEST_F(HostEmulation, PoolingWindowsForwardAndGatheredBackward) {
  pool_case<float>(DType::kFloat32);
  pool_case<double>(DType::kFloat64);
}

TEST_F(HostEmulation, TemporalShiftSoftmaxCrossEntropy) {
  using T = double;
  const DType dt = DType::kFloat64;
  const Tensor x = randn({2, 9, 4, 3, 2}, 30, dt), g = randn(x.shape(), 31, dt);
  Tensor y = Tensor::empty(x.shape(), dt);
  cuda::temporal_shift<T>(ptr<T>(x), ptr<T>(y), 2, 9, 4, 6, 9 / 4, +1, 0);
  EXPECT_TRUE(all_close(y, temporal_shift(x, 4), 0, 0));
  cuda::temporal_shift<T>(ptr<T>(g), ptr<T>(y), 2, 9, 4, 6, 9 / 4, -1, 0);
  EXPECT_TRUE(all_close(y, cpu_grad(x, [](const Tensor& t) { return temporal_shift(t, 4); }, g), 0, 0));

  const Tensor s = randn({4, 6, 3}, 32, dt), gs = randn(s.shape(), 33, dt);
  Tensor ls = Tensor::empty(s.shape(), dt), gls = Tensor::empty(s.shape(), dt);
  cuda::log_softmax_forward<T>(ptr<T>(s), ptr<T>(ls), 4, 6, 3, 0);
  EXPECT_TRUE(all_close(ls, log_softmax(s, 1), 1e-12, 1e-12));
  cuda::log_softmax_backward<T>(ptr<T>(gs), ptr<T>(ls), ptr<T>(gls), 4, 6, 3, 0);
  EXPECT_TRUE(all_close(gls, cpu_grad(s, [](const Tensor& t) { return log_softmax(t, 1); }, gs), 1e-12, 1e-12));

  const Tensor logits = randn({5, 7}, 34, dt);
  const Tensor targets = Tensor::from_vector<std::int64_t>({2, 0, 6, 3, 1}, {5});
  const Tensor lp = log_softmax(logits, 1);
  for (double smoothing : {0.0, 0.1}) {
    Tensor loss = Tensor::empty({}, dt);
    cuda::cross_entropy_forward<T>(ptr<T>(lp), targets.data<std::int64_t>(), ptr<T>(loss), 5, 7, smoothing, 0);
    EXPECT_NEAR(loss.item(), cross_entropy(logits, targets, smoothing).item(), 1e-12);
    const Tensor g0 = Tensor::full({}, 0.7, dt);
    Tensor gx = Tensor::empty({5, 7}, dt);
    cuda::cross_entropy_backward<T>(ptr<T>(lp), targets.data<std::int64_t>(), ptr<T>(g0), ptr<T>(gx), 5, 7, smoothing,
                                    0);
    EXPECT_TRUE(all_close(
        gx, cpu_grad(logits, [&](const Tensor& t) { return cross_entropy(t, targets, smoothing); }, g0), 1e-12,
        1e-12));
  }
}

TEST_F(HostEmulation, SgdUpdateMatchesTheOptimizer) {
  const Tensor init = randn({6, 5}, 40, DType::kFloat32), grad = randn({6, 5}, 41, DType::kFloat32);
  Tensor p_ref = init.clone();
  p_ref.set_requires_grad(true);
  optim::Sgd sgd({{"p", p_ref}}, {.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-2, .nesterov = true});
  Tensor p = init.clone(), buf = Tensor::empty({6, 5});
  for (int step = 0; step < 3; ++step) {
    p_ref.set_grad(grad);
    sgd.step();
    cuda::sgd_update(p.data<float>(), grad.data<float>(), buf.data<float>(), p.numel(), 0.1f, 0.9f, 1.0f, 1e-2f,
                     step == 0, true, 0);
  }
  EXPECT_TRUE(all_close(p, p_ref.detach(), 1e-7, 1e-6));  // nvcc and g++ contract multiply-adds differently
}

cpu::Conv3dGeometry conv_geometry(const Shape& x, const Shape& w, const Conv3dOptions& o, const Shape& y) {
  cpu::Conv3dGeometry g{};
  g.N = x[0]; g.C = x[1]; g.T = x[2]; g.H = x[3]; g.W = x[4];
  g.O = w[0]; g.kT = w[2]; g.kH = w[3]; g.kW = w[4];
  g.To = y[2]; g.Ho = y[3]; g.Wo = y[4];
  g.sT = o.stride[0]; g.sH = o.stride[1]; g.sW = o.stride[2];
  g.pT = o.padding[0]; g.pH = o.padding[1]; g.pW = o.padding[2];
  g.dT = o.dilation[0]; g.dH = o.dilation[1]; g.dW = o.dilation[2];
  g.groups = o.groups;
  return g;
}

TEST_F(HostEmulation, DirectGroupedConvForwardAndGradients) {
  using T = double;
  const DType dt = DType::kFloat64;
  cuda::set_conv3d_policy(2);  // the direct kernels for every grouped conv
  struct Case {
    Shape x, w;
    std::array<std::int64_t, 3> stride, pad, dil;
    std::int64_t groups;
  };
  const std::vector<Case> cases{
      {{2, 4, 3, 7, 9}, {6, 2, 1, 3, 3}, {1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2},
      {{1, 16, 3, 9, 9}, {16, 8, 1, 3, 3}, {1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 2},
      {{1, 6, 4, 6, 7}, {6, 1, 3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, 6},
      {{1, 4, 5, 9, 9}, {4, 1, 3, 3, 3}, {2, 2, 1}, {2, 2, 2}, {2, 2, 2}, 4},
  };
  int i = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE("case " + std::to_string(i));
    Conv3dOptions o;
    o.stride = c.stride;
    o.padding = c.pad;
    o.dilation = c.dil;
    o.groups = c.groups;
    const Tensor x = randn(c.x, 50 + i, dt), w = randn(c.w, 60 + i, dt), b = randn({c.w[0]}, 70 + i, dt);
    const Tensor y_ref = conv3d(x, w, b, o);
    const cpu::Conv3dGeometry g = conv_geometry(c.x, c.w, o, y_ref.shape());
    Tensor y = Tensor::empty(y_ref.shape(), dt);
    cuda::conv3d_forward<T>(g, ptr<T>(x), ptr<T>(w), ptr<T>(b), ptr<T>(y), 0);
    EXPECT_TRUE(all_close(y, y_ref, 1e-12, 1e-12));
    const Tensor gy = randn(y_ref.shape(), 80 + i, dt);
    Tensor gx = Tensor::empty(c.x, dt);
    cuda::conv3d_backward_input<T>(g, ptr<T>(gy), ptr<T>(w), ptr<T>(gx), 0);
    EXPECT_TRUE(all_close(gx, cpu_grad(x, [&](const Tensor& t) { return conv3d(t, w, b, o); }, gy), 1e-12, 1e-12));
    Tensor gw = Tensor::empty(c.w, dt), gb = Tensor::empty({c.w[0]}, dt);
    cuda::conv3d_backward_weight<T>(g, ptr<T>(gy), ptr<T>(x), ptr<T>(gw), 0);
    cuda::conv3d_backward_bias<T>(g, ptr<T>(gy), ptr<T>(gb), 0);
    EXPECT_TRUE(all_close(gw, cpu_grad(w, [&](const Tensor& t) { return conv3d(x, t, b, o); }, gy), 1e-12, 1e-10));
    EXPECT_TRUE(all_close(gb, cpu_grad(b, [&](const Tensor& t) { return conv3d(x, w, t, o); }, gy), 1e-12, 1e-10));
    ++i;
  }
}

#else

TEST(HostEmulation, NeedsTheCudaBackend) { GTEST_SKIP() << "this build has no CUDA backend to emulate"; }

#endif

}  // namespace
}  // namespace vidgrad
