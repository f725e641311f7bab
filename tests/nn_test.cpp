// Modules: hierarchical names, train/eval, zero_grad, state dicts, initialisation and the
// behaviour of each layer module.
#include "test_util.h"

#include "vidgrad/models/sevnet.h"
#include "vidgrad/nn/layers.h"

namespace vidgrad {
namespace {

using nn::BatchNorm3d;
using nn::Conv3d;

models::SevNetConfig tiny_config() {
  models::SevNetConfig c;
  c.group_width = 2;
  c.num_classes = 5;
  c.depths = {2, 1, 1, 1};
  c.dropout = 0.0;
  return c;
}

bool has(const std::vector<std::pair<std::string, Tensor>>& v, const std::string& name) {
  for (const auto& [n, t] : v)
    if (n == name) return true;
  return false;
}

TEST(Module, NamesAreHierarchicalLikePyTorch) {
  models::SevNet net(tiny_config());
  const auto params = net.named_parameters();
  for (const char* name : {"stem.conv1.weight", "stem.bn1.weight", "stem.bn2.bias", "stage2.0.conv_a.weight",
                           "stage2.0.conv_b.weight", "stage2.0.shortcut_conv.weight", "stage2.1.bn_c.weight",
                           "stage5.0.conv_c.weight", "fc.weight", "fc.bias"})
    EXPECT_TRUE(has(params, name)) << name;
  EXPECT_FALSE(has(params, "stage2.1.shortcut_conv.weight"));  // only downsample modules have a shortcut
  const auto buffers = net.named_buffers();
  for (const char* name : {"stem.bn1.running_mean", "stem.bn1.running_var", "stem.bn1.num_batches_tracked"})
    EXPECT_TRUE(has(buffers, name)) << name;
  EXPECT_EQ(net.named_generators().size(), 1u);
  EXPECT_EQ(net.named_generators()[0].first, "dropout.generator");
  EXPECT_EQ(net.state_dict().size(), params.size() + buffers.size());
}

TEST(Module, TrainEvalReachesEveryDescendant) {
  models::SevNet net(tiny_config());
  net.eval();
  for (const auto& [name, m] : net.named_modules()) EXPECT_FALSE(m->is_training()) << name;
  net.train();
  for (const auto& [name, m] : net.named_modules()) EXPECT_TRUE(m->is_training()) << name;
}

TEST(Module, ZeroGradClearsEveryParameter) {
  models::SevNet net(tiny_config());
  sum(net.forward(testing::randn({1, 3, 2, 16, 16}, 1, DType::kFloat32))).backward();
  for (const auto& [name, p] : net.named_parameters()) EXPECT_TRUE(p.grad().defined()) << name;
  net.zero_grad();
  for (const auto& [name, p] : net.named_parameters()) EXPECT_FALSE(p.grad().defined()) << name;
}

TEST(Module, LoadStateDictCopiesValuesAndRejectsMismatches) {
  auto cfg = tiny_config();
  models::SevNet a(cfg);
  cfg.seed = 99;
  models::SevNet b(cfg);
  EXPECT_NE(a.state_dict().at("fc.weight").to_vector<float>(), b.state_dict().at("fc.weight").to_vector<float>());
  b.load_state_dict(a.state_dict());
  for (const auto& [name, t] : a.state_dict())
    EXPECT_EQ(t.to_vector<double>(), b.state_dict().at(name).to_vector<double>()) << name;

  auto state = a.state_dict();
  state["fc.weight"] = Tensor::zeros({3, 3});
  EXPECT_THROW_MSG(b.load_state_dict(state), "load_state_dict", "fc.weight", "[3, 3]");
  state = a.state_dict();
  state["fc.extra"] = Tensor::zeros({1});
  EXPECT_THROW_MSG(b.load_state_dict(state), "load_state_dict", "fc.extra");
  state = a.state_dict();
  state.erase("fc.bias");
  EXPECT_THROW_MSG(b.load_state_dict(state), "load_state_dict", "missing", "fc.bias");
  EXPECT_NO_THROW(b.load_state_dict(state, /*strict=*/false));
}

TEST(Conv3dModule, KaimingNormalFanOutInitialisation) {
  Generator gen(3);
  Conv3d conv({.in_channels = 64, .out_channels = 128, .kernel = {3, 1, 1}}, gen);
  const auto w = conv.weight.to_vector<double>();
  double m = 0, v = 0;
  for (double x : w) m += x;
  m /= w.size();
  for (double x : w) v += (x - m) * (x - m);
  v /= w.size();
  EXPECT_NEAR(m, 0.0, 0.01);
  EXPECT_NEAR(std::sqrt(v), std::sqrt(2.0 / (128 * 3)), 0.003);
  EXPECT_FALSE(conv.bias.defined());
  EXPECT_THROW_MSG(Conv3d({.in_channels = 6, .out_channels = 4, .opts = {.groups = 4}}, gen), "Conv3d", "groups 4");
}

TEST(BatchNorm3dModule, TracksBatchesInTrainingAndUsesRunningStatsInEval) {
  BatchNorm3d bn(3);
  Tensor x = testing::randn({2, 3, 2, 4, 4}, 4, DType::kFloat32);
  bn.forward(x);
  bn.forward(x);
  EXPECT_EQ(bn.num_batches_tracked.item(), 2.0);
  EXPECT_NE(bn.running_mean.to_vector<float>(), std::vector<float>(3, 0.0f));
  bn.eval();
  Tensor y = bn.forward(x);
  EXPECT_EQ(bn.num_batches_tracked.item(), 2.0);
  EXPECT_TRUE(testing::all_close(y, batch_norm(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, {.training = false}), 0, 0));
  BatchNorm3d zero(4, /*zero_init=*/true);
  EXPECT_EQ(zero.weight.to_vector<float>(), std::vector<float>(4, 0.0f));
}

TEST(DropoutModule, IdentityInEvalAndSeededInTraining) {
  nn::Dropout a(0.5, 7), b(0.5, 7);
  Tensor x = Tensor::ones({100});
  EXPECT_EQ(a.forward(x).to_vector<float>(), b.forward(x).to_vector<float>());
  a.eval();
  EXPECT_TRUE(a.forward(x).is_same(x));
}

TEST(SequentialModule, AppliesChildrenInOrderWithIndexNames) {
  Generator gen(1);
  nn::Sequential seq;
  seq.push_back(std::make_shared<nn::Linear>(4, 3, gen));
  seq.push_back(std::make_shared<nn::ReLU>());
  seq.push_back(std::make_shared<nn::Linear>(3, 2, gen));
  const auto params = seq.named_parameters();
  ASSERT_EQ(params.size(), 4u);
  EXPECT_EQ(params[0].first, "0.weight");
  EXPECT_EQ(params[2].first, "2.weight");
  EXPECT_EQ(seq.forward(Tensor::ones({5, 4})).shape(), (Shape{5, 2}));
}

TEST(SqueezeExcitationModule, ScalesChannelsByAGateInZeroOne) {
  Generator gen(2);
  nn::SqueezeExcitation3d se(8, 4, gen);
  Tensor x = relu(testing::randn({2, 8, 2, 3, 3}, 5, DType::kFloat32));
  Tensor y = se.forward(x);
  const auto xv = x.to_vector<float>(), yv = y.to_vector<float>();
  for (std::size_t i = 0; i < xv.size(); ++i) {
    EXPECT_LE(yv[i], xv[i] + 1e-6f);
    EXPECT_GE(yv[i], 0.0f);
  }
  EXPECT_EQ(se.named_parameters().size(), 4u);  // fc1.weight, fc1.bias, fc2.weight, fc2.bias
}

}  // namespace
}  // namespace vidgrad
