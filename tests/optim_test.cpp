// SGD against PyTorch's update rule written out by hand, optimizer state round trips, and
// the warmup + cosine schedule.
#include "test_util.h"

#include <numbers>

#include "vidgrad/optim/schedule.h"
#include "vidgrad/optim/sgd.h"

namespace vidgrad {
namespace {

using optim::Sgd;
using optim::SgdOptions;

// One parameter p with gradient g (both 1-element float32), `steps` SGD steps with the
// same gradient each time; returns p after every step.
std::vector<double> run_sgd(const SgdOptions& o, double p0, double g, int steps, int dim = 2) {
  Tensor p = Tensor::full(dim == 2 ? Shape{1, 1} : Shape{1}, p0).set_requires_grad(true);
  Sgd sgd({{"p", p}}, o);
  std::vector<double> out;
  for (int i = 0; i < steps; ++i) {
    p.set_grad(Tensor::full(p.shape(), g));
    sgd.step();
    out.push_back(p.item());
  }
  return out;
}

// The reference: torch.optim.SGD's algorithm in double.
std::vector<double> reference_sgd(const SgdOptions& o, double p, double g0, int steps, bool decay = true) {
  std::vector<double> out;
  double buf = 0;
  for (int i = 0; i < steps; ++i) {
    double g = g0 + (decay ? o.weight_decay * p : 0.0);
    if (o.momentum != 0) {
      buf = i == 0 ? g : o.momentum * buf + (1 - o.dampening) * g;
      g = o.nesterov ? g + o.momentum * buf : buf;
    }
    p -= o.lr * g;
    out.push_back(p);
  }
  return out;
}

void expect_near_all(const std::vector<double>& a, const std::vector<double>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-6 * (1 + std::abs(b[i]))) << "step " << i;
}

TEST(Sgd, MatchesPyTorchRule) {
  const SgdOptions cases[] = {
      {.lr = 0.1, .momentum = 0.0, .weight_decay = 0.0},
      {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.0},
      {.lr = 0.05, .momentum = 0.9, .dampening = 0.3, .weight_decay = 1e-2},
      {.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-4, .nesterov = true},
  };
  for (const SgdOptions& o : cases) expect_near_all(run_sgd(o, 1.5, 0.7, 5), reference_sgd(o, 1.5, 0.7, 5));
}

TEST(Sgd, OptionallySkipsDecayOnBatchNormAndBiases) {
  SgdOptions o{.lr = 0.1, .momentum = 0.9, .weight_decay = 0.5, .decay_bn_and_bias = false};
  expect_near_all(run_sgd(o, 1.0, 0.2, 3, /*dim=*/1), reference_sgd(o, 1.0, 0.2, 3, /*decay=*/false));
  expect_near_all(run_sgd(o, 1.0, 0.2, 3, /*dim=*/2), reference_sgd(o, 1.0, 0.2, 3, /*decay=*/true));
}

TEST(Sgd, SkipsParametersWithoutGradient) {
  Tensor p = Tensor::full({2}, 3.0).set_requires_grad(true);
  Sgd sgd({{"p", p}}, {});
  sgd.step();
  EXPECT_EQ(p.to_vector<float>(), (std::vector<float>{3, 3}));
  EXPECT_TRUE(sgd.state().empty());
}

TEST(Sgd, StateRoundTripContinuesIdentically) {
  const SgdOptions o{.lr = 0.1, .momentum = 0.9};
  Tensor a = Tensor::full({3}, 1.0).set_requires_grad(true), b = Tensor::full({3}, 1.0).set_requires_grad(true);
  Sgd sa({{"w", a}}, o), sb({{"w", b}}, o);
  for (int i = 0; i < 3; ++i) {
    a.set_grad(Tensor::full({3}, 0.5 + i));
    sa.step();
  }
  b.copy_(a);
  sb.load_state(sa.state());
  a.set_grad(Tensor::full({3}, 2.0));
  b.set_grad(Tensor::full({3}, 2.0));
  sa.step();
  sb.step();
  EXPECT_EQ(a.to_vector<float>(), b.to_vector<float>());
  EXPECT_THROW_MSG(sb.load_state({{"momentum_buffer.nope", Tensor::zeros({3})}}), "load_state", "nope");
  EXPECT_THROW_MSG(sb.load_state({{"momentum_buffer.w", Tensor::zeros({4})}}), "load_state", "[4]", "[3]");
}

// Many parameters of mixed sizes, together over the parallel threshold: the update runs
// over all of them at once, split between threads by value (Note [one pass over the
// parameters]); every value must follow the rule with its own gradient, momentum and decay.
TEST(Sgd, ManyParametersOfMixedSizes) {
  const SgdOptions o{.lr = 0.05, .momentum = 0.9, .dampening = 0.1, .weight_decay = 1e-2, .decay_bn_and_bias = false};
  const std::vector<Shape> shapes = {{1}, {7, 3}, {40001}, {3}, {70, 1001}, {2, 2}, {5}};
  std::vector<std::pair<std::string, Tensor>> named;
  std::vector<std::vector<double>> p_ref, buf_ref(shapes.size());
  for (std::size_t k = 0; k < shapes.size(); ++k) {
    Tensor p = Tensor::zeros(shapes[k]);
    std::vector<float> v(static_cast<std::size_t>(p.numel()));
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(std::sin(0.37 * i + k));
    p = Tensor::from_vector(v, shapes[k]).set_requires_grad(true);
    named.push_back({"p" + std::to_string(k), p});
    p_ref.emplace_back(v.begin(), v.end());
  }
  Sgd sgd(named, o);
  for (int step = 0; step < 3; ++step) {
    for (std::size_t k = 0; k < shapes.size(); ++k) {
      Tensor& p = named[k].second;
      std::vector<float> g(static_cast<std::size_t>(p.numel()));
      for (std::size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(std::cos(0.11 * i + 3 * k + step));
      p.set_grad(Tensor::from_vector(g, shapes[k]));
      const double wd = shapes[k].size() > 1 ? o.weight_decay : 0.0;  // 1-D: no decay
      buf_ref[k].resize(g.size());
      for (std::size_t i = 0; i < g.size(); ++i) {
        const double d = g[i] + wd * p_ref[k][i];
        buf_ref[k][i] = step == 0 ? d : o.momentum * buf_ref[k][i] + (1 - o.dampening) * d;
        p_ref[k][i] -= o.lr * buf_ref[k][i];
      }
    }
    sgd.step();
    for (std::size_t k = 0; k < shapes.size(); ++k) {
      const std::vector<float> got = named[k].second.to_vector<float>();
      for (std::size_t i = 0; i < got.size(); ++i)
        ASSERT_NEAR(got[i], p_ref[k][i], 1e-5) << "parameter " << k << " value " << i << " step " << step;
    }
  }
}

TEST(Sgd, BadOptionsThrow) {
  Tensor p = Tensor::zeros({1}).set_requires_grad(true);
  EXPECT_THROW_MSG(Sgd({{"p", p}}, {.lr = -1}), "Sgd", "lr");
  EXPECT_THROW_MSG(Sgd({{"p", p}}, {.momentum = 0, .nesterov = true}), "Sgd", "Nesterov");
  EXPECT_THROW_MSG(Sgd({{"q", Tensor::zeros({1})}}, {}), "Sgd", "'q'", "requires grad");
}

TEST(WarmupCosine, LinearWarmupThenCosineToMinimum) {
  optim::WarmupCosine s({.base_lr = 0.08, .warmup_steps = 4, .total_steps = 14, .min_lr = 0.0});
  EXPECT_DOUBLE_EQ(s.lr_at(0), 0.02);
  EXPECT_DOUBLE_EQ(s.lr_at(3), 0.08);
  EXPECT_DOUBLE_EQ(s.lr_at(4), 0.08);
  EXPECT_NEAR(s.lr_at(9), 0.04, 1e-12);  // halfway through the cosine
  EXPECT_NEAR(s.lr_at(6), 0.04 * (1 + std::cos(std::numbers::pi * 0.2)), 1e-12);
  EXPECT_NEAR(s.lr_at(14), 0.0, 1e-12);
  EXPECT_NEAR(s.lr_at(100), 0.0, 1e-12);  // stays at the minimum past the end
  EXPECT_EQ(s.step(), 0);
  s.advance();
  EXPECT_DOUBLE_EQ(s.lr(), 0.04);
  s.set_step(9);
  EXPECT_NEAR(s.lr(), 0.04, 1e-12);
}

TEST(WarmupCosine, PaperRecipeScalesTheBaseRateWithBatch) {
  EXPECT_DOUBLE_EQ(optim::linear_scaled_lr(0.01, 64), 0.08);
  EXPECT_DOUBLE_EQ(optim::linear_scaled_lr(0.01, 8), 0.01);
  EXPECT_THROW_MSG(optim::linear_scaled_lr(0.01, 0), "batch size");
  EXPECT_THROW_MSG(optim::WarmupCosine({.warmup_steps = 5, .total_steps = 4}), "warmup_steps 5");
}

}  // namespace
}  // namespace vidgrad
