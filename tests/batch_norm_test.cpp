// batch_norm: training and eval forward against reference loops, running-statistics
// updates (unbiased variance, momentum), gradients of input, weight and bias.
#include "test_util.h"

namespace vidgrad {
namespace {

using testing::all_close;
using testing::param;
using testing::randn;

struct Stats {
  std::vector<double> mean, var;  // biased var
};

Stats reference_stats(const Tensor& x) {
  const std::int64_t N = x.shape()[0], C = x.shape()[1], S = x.numel() / (N * C);
  const std::vector<double> v = x.to_vector<double>();
  Stats s{std::vector<double>(C, 0.0), std::vector<double>(C, 0.0)};
  for (std::int64_t c = 0; c < C; ++c) {
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < S; ++i) s.mean[c] += v[(n * C + c) * S + i];
    s.mean[c] /= N * S;
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < S; ++i) s.var[c] += std::pow(v[(n * C + c) * S + i] - s.mean[c], 2);
    s.var[c] /= N * S;
  }
  return s;
}

Tensor reference_apply(const Tensor& x, const std::vector<double>& mean, const std::vector<double>& var,
                       const Tensor& w, const Tensor& b, double eps) {
  const std::int64_t N = x.shape()[0], C = x.shape()[1], S = x.numel() / (N * C);
  std::vector<double> v = x.to_vector<double>();
  const std::vector<double> wv = w.to_vector<double>(), bv = b.to_vector<double>();
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t i = 0; i < S; ++i) {
        double& e = v[(n * C + c) * S + i];
        e = (e - mean[c]) / std::sqrt(var[c] + eps) * wv[c] + bv[c];
      }
  return Tensor::from_vector(v, x.shape());
}

class BatchNormShapes : public ::testing::TestWithParam<Shape> {};

TEST_P(BatchNormShapes, TrainingForwardAndRunningStatsMatchReference) {
  const Shape shape = GetParam();
  const std::int64_t C = shape[1], M = shape_numel(shape) / C;
  Tensor x = add(mul(randn(shape, 1, DType::kFloat32), 3.0), Tensor::scalar(5.0));
  Tensor w = randn({C}, 2, DType::kFloat32), b = randn({C}, 3, DType::kFloat32);
  Tensor rm = Tensor::zeros({C}), rv = Tensor::ones({C});
  Tensor y = batch_norm(x, w, b, rm, rv, {.training = true, .momentum = 0.1, .eps = 1e-5});
  const Stats s = reference_stats(x);
  EXPECT_TRUE(all_close(y, reference_apply(x, s.mean, s.var, w, b, 1e-5), 1e-4, 1e-4));
  std::vector<double> em(C), ev(C);
  for (std::int64_t c = 0; c < C; ++c) {
    em[c] = 0.1 * s.mean[c];
    ev[c] = 0.9 + 0.1 * s.var[c] * M / (M - 1);  // unbiased, as PyTorch
  }
  EXPECT_TRUE(all_close(rm, Tensor::from_vector(em, {C}), 1e-5, 1e-5));
  EXPECT_TRUE(all_close(rv, Tensor::from_vector(ev, {C}), 1e-5, 1e-5));
}

TEST_P(BatchNormShapes, EvalUsesRunningStats) {
  const Shape shape = GetParam();
  const std::int64_t C = shape[1];
  Tensor x = randn(shape, 4, DType::kFloat32);
  Tensor w = randn({C}, 5, DType::kFloat32), b = randn({C}, 6, DType::kFloat32);
  Tensor rm = randn({C}, 7, DType::kFloat32), rv = add(mul(relu(randn({C}, 8, DType::kFloat32)), 1.0), Tensor::scalar(0.5));
  const std::vector<float> rm_before = rm.to_vector<float>();
  Tensor y = batch_norm(x, w, b, rm, rv, {.training = false});
  EXPECT_TRUE(all_close(y, reference_apply(x, rm.to_vector<double>(), rv.to_vector<double>(), w, b, 1e-5), 1e-4, 1e-4));
  EXPECT_EQ(rm.to_vector<float>(), rm_before);
}

TEST_P(BatchNormShapes, TrainingGradMatchesFiniteDifference) {
  const Shape shape = GetParam();
  const std::int64_t C = shape[1];
  Tensor rm = Tensor::zeros({C}, DType::kFloat64), rv = Tensor::ones({C}, DType::kFloat64);
  EXPECT_GRADCHECK(
      [&](const std::vector<Tensor>& t) { return batch_norm(t[0], t[1], t[2], rm, rv, {.training = true}); },
      (std::vector<Tensor>{param(shape, 9), param({C}, 10), param({C}, 11)}));
}

TEST_P(BatchNormShapes, EvalGradMatchesFiniteDifference) {
  const Shape shape = GetParam();
  const std::int64_t C = shape[1];
  Tensor rm = randn({C}, 12), rv = Tensor::full({C}, 1.7, DType::kFloat64);
  EXPECT_GRADCHECK(
      [&](const std::vector<Tensor>& t) { return batch_norm(t[0], t[1], t[2], rm, rv, {.training = false}); },
      (std::vector<Tensor>{param(shape, 13), param({C}, 14), param({C}, 15)}));
}

// autograd's Note [reusing the output gradient]: behind another op, batch norm's incoming
// gradient is the engine's alone, and the input gradient is written over it.
TEST_P(BatchNormShapes, InputGradientOverTheOutputGradientMatchesFiniteDifference) {
  const Shape shape = GetParam();
  const std::int64_t C = shape[1];
  for (bool training : {true, false})
    for (bool relu : {false, true}) {
      SCOPED_TRACE(std::string(training ? "training" : "eval") + (relu ? ", relu" : ""));
      Tensor rm = randn({C}, 26), rv = Tensor::full({C}, 1.7, DType::kFloat64);
      const BatchNormOptions o{.training = training, .relu = relu};
      const auto f = [&](const std::vector<Tensor>& t) { return mul(batch_norm(t[0], t[1], t[2], rm, rv, o), 1.5); };
      EXPECT_GRADCHECK(f, (std::vector<Tensor>{param(shape, 27), param({C}, 28), param({C}, 29)}));
    }
}

// BatchNormOptions::relu: the same values as relu(batch_norm(x)), and gradients (masked
// inside the batch-norm backward) that match finite differences in training and eval.
TEST_P(BatchNormShapes, FusedReluMatchesSeparateReluAndFiniteDifferences) {
  const Shape shape = GetParam();
  const std::int64_t C = shape[1];
  Tensor x = randn(shape, 17, DType::kFloat32);
  Tensor w = randn({C}, 18, DType::kFloat32), b = randn({C}, 19, DType::kFloat32);
  for (bool training : {true, false}) {
    Tensor rm = randn({C}, 20, DType::kFloat32), rv = Tensor::full({C}, 1.3, DType::kFloat32);
    Tensor rm2 = rm.clone(), rv2 = rv.clone();
    Tensor fused = batch_norm(x, w, b, rm, rv, {.training = training, .relu = true});
    Tensor separate = relu(batch_norm(x, w, b, rm2, rv2, {.training = training}));
    EXPECT_TRUE(all_close(fused, separate, 0, 0)) << "training=" << training;
    EXPECT_TRUE(all_close(rm, rm2, 0, 0));
    // float32 gradients: the backward recomputes the ReLU's mask from x (Note [ReLU mask
    // from x]); it must be the forward's, element for element.
    {
      Tensor xs[2], ws[2], bs[2];
      const Tensor gy = randn(shape, 25, DType::kFloat32);
      for (int f = 0; f < 2; ++f) {
        xs[f] = x.clone().set_requires_grad(true);
        ws[f] = w.clone().set_requires_grad(true);
        bs[f] = b.clone().set_requires_grad(true);
        Tensor m = rm.clone(), v = rv.clone();
        Tensor y = f == 0 ? batch_norm(xs[f], ws[f], bs[f], m, v, {.training = training, .relu = true})
                          : relu(batch_norm(xs[f], ws[f], bs[f], m, v, {.training = training}));
        y.backward(gy);
      }
      EXPECT_TRUE(all_close(xs[0].grad(), xs[1].grad(), 1e-5, 1e-6)) << "training=" << training;
      EXPECT_TRUE(all_close(ws[0].grad(), ws[1].grad(), 1e-5, 1e-6)) << "training=" << training;
      EXPECT_TRUE(all_close(bs[0].grad(), bs[1].grad(), 1e-5, 1e-6)) << "training=" << training;
    }
    Tensor rmd = randn({C}, 21), rvd = Tensor::full({C}, 1.7, DType::kFloat64);
    EXPECT_GRADCHECK(
        [&](const std::vector<Tensor>& t) {
          return batch_norm(t[0], t[1], t[2], rmd, rvd, {.training = training, .relu = true});
        },
        (std::vector<Tensor>{param(shape, 22), param({C}, 23), param({C}, 24)}));
  }
}

// batch_norm_add: relu(batch_norm(x) + r) in one op on the CPU (the mask from the saved
// output, the residual's gradient masked while the sums are taken), against the composed
// ops in float32 (values and all four gradients) and finite differences in float64, in
// training and eval, with the incoming gradient reused or not; without the ReLU, composed.
TEST_P(BatchNormShapes, AddReluMatchesComposedOpsAndFiniteDifferences) {
  const Shape shape = GetParam();
  const std::int64_t C = shape[1];
  Tensor x = randn(shape, 40, DType::kFloat32), r = randn(shape, 41, DType::kFloat32);
  Tensor w = randn({C}, 42, DType::kFloat32), b = randn({C}, 43, DType::kFloat32);
  const Tensor gy = randn(shape, 44, DType::kFloat32);
  for (bool training : {true, false})
    for (bool relu : {true, false}) {
      SCOPED_TRACE(std::string(training ? "training" : "eval") + (relu ? ", relu" : ""));
      Tensor ys[2], grads[2][4];
      Tensor rms[2], rvs[2];
      for (int f = 0; f < 2; ++f) {
        Tensor xf = x.clone().set_requires_grad(true), rf = r.clone().set_requires_grad(true);
        Tensor wf = w.clone().set_requires_grad(true), bf = b.clone().set_requires_grad(true);
        rms[f] = randn({C}, 45, DType::kFloat32);
        rvs[f] = Tensor::full({C}, 1.3, DType::kFloat32);
        const BatchNormOptions o{.training = training, .relu = relu};
        if (f == 0) {
          ys[f] = batch_norm_add(xf, wf, bf, rms[f], rvs[f], rf, o);
        } else {
          const Tensor h = batch_norm(xf, wf, bf, rms[f], rvs[f], {.training = training});
          ys[f] = relu ? add_relu(h, rf) : add(h, rf);
        }
        ys[f].backward(gy);
        grads[f][0] = xf.grad();
        grads[f][1] = wf.grad();
        grads[f][2] = bf.grad();
        grads[f][3] = rf.grad();
      }
      EXPECT_TRUE(all_close(ys[0], ys[1], 1e-6, 1e-6));
      EXPECT_TRUE(all_close(rms[0], rms[1], 0, 0));
      for (int i = 0; i < 4; ++i) EXPECT_TRUE(all_close(grads[0][i], grads[1][i], 1e-5, 1e-5)) << "gradient " << i;
      Tensor rmd = randn({C}, 46), rvd = Tensor::full({C}, 1.7, DType::kFloat64);
      const BatchNormOptions o{.training = training, .relu = relu};
      EXPECT_GRADCHECK(
          [&](const std::vector<Tensor>& t) { return batch_norm_add(t[0], t[1], t[2], rmd, rvd, t[3], o); },
          (std::vector<Tensor>{param(shape, 47), param({C}, 48), param({C}, 49), param(shape, 50)}));
      // Behind another op the incoming gradient is the engine's alone: the residual's
      // gradient is written over it.
      EXPECT_GRADCHECK(
          [&](const std::vector<Tensor>& t) { return mul(batch_norm_add(t[0], t[1], t[2], rmd, rvd, t[3], o), 1.5); },
          (std::vector<Tensor>{param(shape, 51), param({C}, 52), param({C}, 53), param(shape, 54)}));
    }
}

// Behind concat, batch norm's incoming gradient is a channel slice of the concat's (a view,
// contiguous within each sample): read in place, with the same gradients as from a copy.
TEST(BatchNorm, ChannelSliceOfTheOutputGradientReadInPlace) {
  for (bool relu : {false, true}) {
    SCOPED_TRACE(relu ? "relu" : "plain");
    const BatchNormOptions o{.training = true, .relu = relu};
    EXPECT_GRADCHECK(
        [&](const std::vector<Tensor>& t) {
          return concat({batch_norm(t[0], t[1], {}, {}, {}, o), batch_norm(t[2], {}, t[3], {}, {}, o)}, 1);
        },
        (std::vector<Tensor>{param({3, 2, 2, 3, 2}, 60), param({2}, 61), param({3, 3, 2, 3, 2}, 62), param({3}, 63)}));
    // float32: the same gradients as through a contiguous copy of the slice.
    Tensor x1 = randn({4, 3, 2, 5, 5}, 64, DType::kFloat32), x2 = randn({4, 5, 2, 5, 5}, 65, DType::kFloat32);
    Tensor gy = randn({4, 8, 2, 5, 5}, 66, DType::kFloat32);
    Tensor grads[2][2];
    for (int f = 0; f < 2; ++f) {
      Tensor a = x1.clone().set_requires_grad(true), b = x2.clone().set_requires_grad(true);
      Tensor ya = batch_norm(a, {}, {}, {}, {}, o), yb = batch_norm(b, {}, {}, {}, {}, o);
      if (f == 0) {
        concat({ya, yb}, 1).backward(gy);
      } else {
        ya.backward(gy.narrow(1, 0, 3).contiguous());
        yb.backward(gy.narrow(1, 3, 5).contiguous());
      }
      grads[f][0] = a.grad();
      grads[f][1] = b.grad();
    }
    EXPECT_TRUE(all_close(grads[0][0], grads[1][0], 0, 0));
    EXPECT_TRUE(all_close(grads[0][1], grads[1][1], 0, 0));
  }
}

// A channel with |mean| >> std (Note [one-pass statistics] and the blocked float sums in
// the backward): float32 forward and gradients stay close to the float64 ones.
TEST(BatchNorm, LargeMeanStaysAccurateInFloat32) {
  Tensor x64 = add(mul(randn({2, 3, 4, 5, 6}, 30), 0.05), Tensor::scalar(800.0, DType::kFloat64));
  Tensor w64 = randn({3}, 31), b64 = randn({3}, 32), gy64 = randn({2, 3, 4, 5, 6}, 33);
  for (bool relu : {false, true}) {
    std::vector<Tensor> grads[2];
    Tensor ys[2];
    for (int f = 0; f < 2; ++f) {
      const DType dt = f == 0 ? DType::kFloat64 : DType::kFloat32;
      Tensor x = x64.to(dt).detach(), w = w64.to(dt).detach(), b = b64.to(dt).detach();
      for (Tensor* t : {&x, &w, &b}) t->set_requires_grad(true);
      ys[f] = batch_norm(x, w, b, {}, {}, {.training = true, .relu = relu});
      ys[f].backward(gy64.to(dt));
      grads[f] = {x.grad(), w.grad(), b.grad()};
    }
    EXPECT_TRUE(all_close(ys[1], ys[0], 1e-3, 1e-3)) << "relu=" << relu;
    for (int i = 0; i < 3; ++i)
      EXPECT_TRUE(all_close(grads[1][i], grads[0][i], 2e-2, 1e-3)) << "gradient " << i << " relu=" << relu;
  }
}

// Planes of 1200 values: the statistics' blocks of 1024 values in vectors, a partial block
// and a tail shorter than two vectors (Note [one-pass statistics]), in both dtypes.
TEST(BatchNorm, StatisticsOverLongPlanesMatchReference) {
  const Shape shape{3, 4, 5, 16, 15};
  const std::int64_t C = shape[1], M = shape_numel(shape) / C;
  for (DType dt : {DType::kFloat32, DType::kFloat64}) {
    Tensor x = add(mul(randn(shape, 40, dt), 3.0), Tensor::scalar(5.0, dt));
    Tensor w = randn({C}, 41, dt), b = randn({C}, 42, dt);
    Tensor rm = Tensor::zeros({C}, dt), rv = Tensor::ones({C}, dt);
    Tensor y = batch_norm(x, w, b, rm, rv, {.training = true, .momentum = 1.0, .eps = 1e-5});
    const Stats s = reference_stats(x);
    const double tol = dt == DType::kFloat32 ? 1e-4 : 1e-10;
    EXPECT_TRUE(all_close(y, reference_apply(x, s.mean, s.var, w, b, 1e-5), tol, tol)) << dtype_name(dt);
    std::vector<double> ev(C);
    for (std::int64_t c = 0; c < C; ++c) ev[c] = s.var[c] * M / (M - 1);
    EXPECT_TRUE(all_close(rm, Tensor::from_vector(s.mean, {C}), tol, tol)) << dtype_name(dt);
    EXPECT_TRUE(all_close(rv, Tensor::from_vector(ev, {C}), tol, tol)) << dtype_name(dt);
  }
}

// 40 channels: the training forward takes statistics and output channel by channel
// (batch_norm_train_forward) on up to 20 threads; 2 or 3 channels on 2 threads or more,
// the two passes over all channels.
INSTANTIATE_TEST_SUITE_P(Shapes, BatchNormShapes,
                         ::testing::Values(Shape{2, 3, 3, 5, 3}, Shape{1, 4, 2, 3, 3}, Shape{5, 3}, Shape{3, 2, 7},
                                           Shape{2, 40, 3, 4}));

TEST(BatchNorm, WithoutAffineOrRunningStats) {
  Tensor x = randn({2, 3, 2, 2, 2}, 16, DType::kFloat32);
  Tensor y = batch_norm(x, {}, {}, {}, {}, {.training = true});
  const Stats s = reference_stats(x);
  EXPECT_TRUE(all_close(y, reference_apply(x, s.mean, s.var, Tensor::ones({3}), Tensor::zeros({3}), 1e-5), 1e-4, 1e-4));
  EXPECT_GRADCHECK([](const std::vector<Tensor>& t) { return batch_norm(t[0], {}, {}, {}, {}, {.training = true}); },
                   {param({2, 3, 2, 2, 1}, 17)});
}

TEST(BatchNorm, BadArgumentsThrowWithValues) {
  Tensor x = Tensor::zeros({2, 3, 2, 2, 2});
  EXPECT_THROW_MSG(batch_norm(x, Tensor::ones({4}), {}, {}, {}), "batch_norm", "weight", "[3]", "[4]");
  EXPECT_THROW_MSG(batch_norm(x, {}, {}, {}, {}, {.training = false}), "batch_norm", "eval", "running_mean");
  EXPECT_THROW_MSG(batch_norm(Tensor::zeros({1, 3}), {}, {}, {}, {}, {.training = true}), "batch_norm",
                   "more than one value per channel", "[1, 3]");
  EXPECT_THROW_MSG(batch_norm(Tensor::zeros({3}), {}, {}, {}, {}), "batch_norm", "rank >= 2", "[3]");
  EXPECT_THROW_MSG(batch_norm(x, {}, {}, Tensor::zeros({3}), {}), "batch_norm", "together");
  EXPECT_THROW_MSG(batch_norm(x, {}, {}, {}, {}, {.momentum = 1.5}), "batch_norm", "momentum", "1.5");
  EXPECT_THROW_MSG(batch_norm_add(x, {}, {}, {}, {}, Tensor::zeros({2, 3, 2, 2, 1}), {.relu = true}), "batch_norm_add",
                   "residual", "[2, 3, 2, 2, 2]", "[2, 3, 2, 2, 1]");
  EXPECT_THROW_MSG(batch_norm_add(x, {}, {}, {}, {}, Tensor::zeros({2, 3, 2, 2, 2}, DType::kFloat64)),
                   "batch_norm_add", "residual");
}

}  // namespace
}  // namespace vidgrad
