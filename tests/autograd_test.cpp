// The engine: backward from scalars and with explicit gradients, accumulation, no_grad,
// detach, graph release, skipped inputs, a gradcheck that does catch a wrong gradient, and
// the op profiler the engine feeds.
#include "test_util.h"

#include <chrono>
#include <thread>

#include "vidgrad/autograd/node.h"
#include "vidgrad/core/profile.h"

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

// Note [taking a leaf's gradient]: a gradient a closure made for one input alone becomes
// the leaf's gradient without a copy; one shared with another input, with the caller's
// output gradient or with a view is copied, so that no two gradients alias.
TEST(Autograd, LeafGradientsNeverAlias) {
  Tensor a = Tensor::from_vector<double>({1, 2}, {2}).set_requires_grad(true);
  Tensor b = Tensor::from_vector<double>({3, 4}, {2}).set_requires_grad(true);
  const Tensor gy = Tensor::from_vector<double>({10, 20}, {2});
  add(a, b).backward(gy);  // add's backward hands gy to both inputs
  a.grad().add_(Tensor::from_vector<double>({1, 1}, {2}));
  EXPECT_EQ(b.grad().to_vector<double>(), (std::vector<double>{10, 20}));
  EXPECT_EQ(gy.to_vector<double>(), (std::vector<double>{10, 20}));
  // mul's gradients are fresh tensors of their own: taken, and still each leaf's alone.
  Tensor c = Tensor::from_vector<double>({5, 6}, {2}).set_requires_grad(true);
  Tensor d = Tensor::from_vector<double>({7, 8}, {2}).set_requires_grad(true);
  sum(mul(c, d)).backward();
  EXPECT_EQ(c.grad().to_vector<double>(), (std::vector<double>{7, 8}));
  EXPECT_EQ(d.grad().to_vector<double>(), (std::vector<double>{5, 6}));
  c.grad().add_(Tensor::from_vector<double>({1, 1}, {2}));
  EXPECT_EQ(d.grad().to_vector<double>(), (std::vector<double>{5, 6}));
  // A second backward accumulates into the taken gradient.
  sum(mul(c, d)).backward();
  EXPECT_EQ(c.grad().to_vector<double>(), (std::vector<double>{15, 17}));
  // Views of one gradient (concat's backward) are copied.
  Tensor e = Tensor::from_vector<double>({1}, {1}).set_requires_grad(true);
  Tensor f = Tensor::from_vector<double>({2}, {1}).set_requires_grad(true);
  concat({e, f}, 0).backward(Tensor::from_vector<double>({3, 4}, {2}));
  e.grad().add_(Tensor::from_vector<double>({100}, {1}));
  EXPECT_EQ(f.grad().to_vector<double>(), (std::vector<double>{4}));
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

// Turns the profiler on for one test and leaves it off and empty.
struct ProfilerOn {
  ProfilerOn() {
    profile::reset();
    profile::set_enabled(true);
  }
  ~ProfilerOn() {
    profile::set_enabled(false);
    profile::reset();
  }
};

const profile::Entry* find_entry(const std::vector<profile::Entry>& entries, const std::string& name) {
  for (const auto& e : entries)
    if (e.name == name) return &e;
  return nullptr;
}

TEST(Profile, DisabledRecordsNothing) {
  profile::reset();
  ASSERT_FALSE(profile::enabled());
  Tensor x = Tensor::from_vector<double>({1, 2}, {2}).set_requires_grad(true);
  sum(relu(x)).backward();
  EXPECT_TRUE(profile::entries().empty());
}

TEST(Profile, TimesAreExclusiveOfNestedScopes) {
  ProfilerOn on;
  {
    profile::Scope outer("outer");
    profile::Scope inner("inner", "detail");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  { profile::Scope outer("outer"); }
  const auto entries = profile::entries();
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].name, "inner detail");  // largest first
  EXPECT_EQ(entries[0].calls, 1);
  EXPECT_GE(entries[0].seconds, 0.05);
  const profile::Entry* outer = find_entry(entries, "outer");
  ASSERT_NE(outer, nullptr);
  EXPECT_EQ(outer->calls, 2);
  EXPECT_LT(outer->seconds, entries[0].seconds);  // the sleep is the inner scope's only
  profile::reset();
  EXPECT_TRUE(profile::entries().empty());
}

TEST(Profile, ForwardAndBackwardOfEachOpAreNamed) {
  ProfilerOn on;
  Generator gen(3);
  Tensor x = Tensor::randn({1, 16, 2, 5, 5}, gen).set_requires_grad(true);
  Tensor w = Tensor::randn({16, 8, 1, 3, 3}, gen).set_requires_grad(true);
  Tensor y = conv3d(x, w, {}, {.stride = {1, 2, 2}, .padding = {0, 1, 1}, .groups = 2});
  sum(relu(y)).backward();
  const auto entries = profile::entries();
  const std::string conv = "conv3d 1x3x3 gw8 s(1,2,2) 16->16 @3x3";
  for (const std::string& name : {conv, conv + " backward", conv + " input grad", conv + " weight grad",
                                 std::string("relu"), std::string("relu backward"), std::string("sum"),
                                 std::string("autograd engine")}) {
    const profile::Entry* e = find_entry(entries, name);
    ASSERT_NE(e, nullptr) << "no profile entry " << name;
    EXPECT_GE(e->seconds, 0.0) << name;
  }
  EXPECT_EQ(find_entry(entries, conv)->calls, 1);
  EXPECT_EQ(find_entry(entries, conv + " weight grad")->calls, 1);
}

}  // namespace vidgrad
