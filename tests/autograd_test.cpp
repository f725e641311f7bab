// The engine: backward from scalars and with explicit gradients, accumulation, no_grad,
// detach, graph release, skipped inputs, and a gradcheck that does catch a wrong gradient.
#include "test_util.h"

#include "vidgrad/autograd/node.h"

namespace vidgrad {
namespace {

using testing::param;

TEST(Autograd, BackwardFromScalarGivesAnalyticGradient) {
  Tensor x = Tensor::from_vector<double>({1, 2, 3}, {3}).set_requires_grad(true);
  Tensor loss = sum(mul(x, x));  // d/dx = 2x
  loss.backward();
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{2, 4, 6}));
}

TEST(Autograd, GradientsAccumulateIntoLeavesAcrossCalls) {
  Tensor x = Tensor::from_vector<double>({1, -1}, {2}).set_requires_grad(true);
  sum(mul(x, 3.0)).backward();
  sum(mul(x, 3.0)).backward();
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{6, 6}));
}

TEST(Autograd, ExplicitGradientForNonScalarRoot) {
  Tensor x = Tensor::from_vector<double>({1, 2}, {2}).set_requires_grad(true);
  Tensor y = mul(x, 2.0);
  EXPECT_THROW_MSG(y.backward(), "backward", "one-element", "[2]");
  y.backward(Tensor::from_vector<double>({10, 100}, {2}));
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{20, 200}));
}

TEST(Autograd, DiamondGraphSumsBothPaths) {
  Tensor x = Tensor::from_vector<double>({2}, {1}).set_requires_grad(true);
  Tensor a = mul(x, 3.0), b = mul(x, x);
  sum(add(a, b)).backward();  // 3 + 2x
  EXPECT_EQ(x.grad().item(), 7.0);
}

TEST(Autograd, NoGradGuardRecordsNothing) {
  Tensor x = Tensor::ones({2}, DType::kFloat64).set_requires_grad(true);
  {
    autograd::NoGradGuard guard;
    Tensor y = mul(x, 2.0);
    EXPECT_FALSE(y.requires_grad());
    EXPECT_EQ(y.grad_fn(), nullptr);
  }
  EXPECT_TRUE(mul(x, 2.0).requires_grad());
}

TEST(Autograd, DetachCutsTheGraphButSharesData) {
  Tensor x = Tensor::ones({2}, DType::kFloat64).set_requires_grad(true);
  Tensor y = mul(x, 2.0);
  Tensor d = y.detach();
  EXPECT_FALSE(d.requires_grad());
  EXPECT_EQ(d.storage(), y.storage());
  EXPECT_THROW_MSG(sum(d).backward(), "does not require grad");
}

TEST(Autograd, GraphIsFreedAfterBackwardUnlessRetained) {
  Tensor x = Tensor::ones({2}, DType::kFloat64).set_requires_grad(true);
  Tensor loss = sum(mul(x, x));
  loss.backward(Tensor(), /*retain_graph=*/true);
  loss.backward();
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{4, 4}));
  EXPECT_THROW_MSG(loss.backward(), "already freed", "retain_graph");
}

TEST(Autograd, BackwardSkipsInputsThatNeedNoGradient) {
  Tensor x = testing::randn({1, 2, 3, 4, 4}, 1);
  Tensor w = param({2, 2, 1, 3, 3}, 2);
  Tensor y = conv3d(x, w);
  // The node was told the input needs no gradient.
  ASSERT_NE(y.grad_fn(), nullptr);
  EXPECT_FALSE(y.grad_fn()->needs[0]);
  EXPECT_TRUE(y.grad_fn()->needs[1]);
  EXPECT_FALSE(y.grad_fn()->needs[2]);
  sum(y).backward();
  EXPECT_FALSE(x.grad().defined());
  EXPECT_TRUE(w.grad().defined());
}

TEST(Autograd, OnlyLeavesCanBeMarked) {
  Tensor x = Tensor::ones({2}, DType::kFloat64).set_requires_grad(true);
  Tensor y = mul(x, 2.0);
  EXPECT_THROW_MSG(y.set_requires_grad(false), "leaf");
}

// An op whose backward is off by a factor: gradcheck must report it.
Tensor wrong_square(const Tensor& x) {
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  y.copy_(x);
  {
    autograd::NoGradGuard g;
    y = mul(y, x.detach());
  }
  if (autograd::needs_graph({&x})) {
    autograd::attach(y, "wrong_square", {x}, [x = x.detach()](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{mul(mul(g, x), 2.1)};  // should be 2.0
    });
  }
  return y;
}

TEST(Gradcheck, ReportsAWrongGradient) {
  const auto r = autograd::gradcheck([](const std::vector<Tensor>& in) { return wrong_square(in[0]); },
                                     {param({3, 2}, 11)});
  EXPECT_FALSE(r.ok);
  EXPECT_THAT(r.message, ::testing::HasSubstr("gradient mismatch for input 0"));
}

TEST(Gradcheck, RejectsFloat32Inputs) {
  Tensor x = Tensor::ones({2}).set_requires_grad(true);
  EXPECT_THROW_MSG(autograd::gradcheck([](const std::vector<Tensor>& in) { return in[0]; }, {x}), "float64");
}

}  // namespace
}  // namespace vidgrad
