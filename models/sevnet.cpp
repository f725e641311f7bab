// SEVNet construction: stem, four stages of SEV (or ablation) modules, head.
#include "vidgrad/models/sevnet.h"

#include <cmath>

#include "vidgrad/autograd/grad_mode.h"
#include "vidgrad/ops/elementwise.h"
#include "vidgrad/ops/shape.h"

namespace vidgrad::models {

namespace {

using nn::BatchNorm3d;
using nn::Conv3d;
using nn::Conv3dConfig;

Conv3dConfig conv(std::int64_t in, std::int64_t out, std::array<std::int64_t, 3> k, Conv3dOptions opts = {}) {
  return Conv3dConfig{in, out, k, opts, false};
}

// Evaluation (bn in eval mode, grad mode off): each conv + batch norm pair runs as one
// pass, the batch norm in the conv's output epilogue (Conv3d::forward_bn). Otherwise each
// batch norm with a ReLU whose output feeds one conv is folded into that conv's input
// (Conv3d::forward_after_bn_relu: on the CPU its output is then never stored), and the
// conv before takes that batch norm's statistics as it writes its output.
bool evaluating(const BatchNorm3d& bn) { return !bn.is_training() && !autograd::GradMode::enabled(); }

// One residual module: the branch (three or two convs with BN), optional SE, and either
// the identity (standard) or the pooled 1x1x1 shortcut concatenated (downsample).
class Block : public nn::Module {
 public:
  Block(std::int64_t C, bool downsample, const SevNetConfig& cfg, Generator& init) : downsample_(downsample) {
    const std::array<std::int64_t, 3> spatial_stride{1, downsample ? 2 : 1, downsample ? 2 : 1};
    const bool zero = cfg.zero_init_last_bn;
    switch (cfg.block) {
      case SevBlock::kSev:
        VG_CHECK(C % cfg.group_width == 0,
                 "SevNet: group width " << cfg.group_width << " does not divide " << C << " channels");
        add_conv_bn(conv(C, C, {1, 1, 1}), "a", init);
        add_conv_bn(conv(C, C, {1, 3, 3}, {.stride = spatial_stride, .padding = {0, 1, 1}, .groups = C / cfg.group_width}),
            "b", init);
        add_conv_bn(conv(C, C, {3, 1, 1}, {.padding = {1, 0, 0}}), "c", init, zero);
        break;
      case SevBlock::kR2plus1d: {
        const std::int64_t m = C / 2;
        add_conv_bn(conv(C, m, {1, 1, 1}), "a", init);
        add_conv_bn(conv(m, m, {1, 3, 3}, {.stride = spatial_stride, .padding = {0, 1, 1}}), "b", init);
        add_conv_bn(conv(m, C, {3, 1, 1}, {.padding = {1, 0, 0}}), "c", init, zero);
        break;
      }
      case SevBlock::kR3d: {
        const std::int64_t m = std::llround(static_cast<double>(C) / 2.6);
        add_conv_bn(conv(C, m, {1, 1, 1}), "a", init);
        add_conv_bn(conv(m, m, {3, 3, 3}, {.stride = spatial_stride, .padding = {1, 1, 1}}), "b", init);
        add_conv_bn(conv(m, C, {1, 1, 1}), "c", init, zero);
        break;
      }
    }
    if (cfg.squeeze_excitation)
      se_ = register_module("se", std::make_shared<nn::SqueezeExcitation3d>(C, cfg.se_reduction, init));
    if (downsample) {
      pool_ = std::make_shared<nn::AvgPool3d>(
          Pool3dOptions{.kernel = {1, 3, 3}, .stride = std::array<std::int64_t, 3>{1, 2, 2}, .padding = {0, 1, 1}});
      shortcut_conv_ = register_module("shortcut_conv", std::make_shared<Conv3d>(conv(C, C, {1, 1, 1}), init));
      shortcut_bn_ = register_module("shortcut_bn", std::make_shared<BatchNorm3d>(C));
    }
  }

  Tensor forward(const Tensor& x) override {
    // relu(concat(h, s)) = concat(relu(h), relu(s)): without SE, a downsample module's
    // ReLU runs inside the branch's last BN and the shortcut's BN, not as a pass of its own.
    // Without either, the residual join relu(x + h) is the last conv's too (added as its
    // outputs are stored, in evaluation).
    const bool relu_in_bn = downsample_ && !se_, join_in_bn = !downsample_ && !se_;
    Tensor h = x;
    if (evaluating(*bns_[0])) {  // each batch norm in its conv's output epilogue
      for (std::size_t i = 0; i + 1 < convs_.size(); ++i) h = convs_[i]->forward_bn(h, *bns_[i], true);
      Conv3d& last = *convs_.back();
      if (relu_in_bn && evaluating(*shortcut_bn_)) {
        // The branch and the shortcut write their halves of the joined output (Note [concat
        // in place] in ops/conv3d.cpp).
        const std::int64_t C = last.config().out_channels;
        Shape joined_shape = h.shape();
        joined_shape[1] = C + shortcut_conv_->config().out_channels;
        const Tensor joined = Tensor::empty(joined_shape, h.dtype(), h.device());
        last.forward_bn_into(joined, 0, h, *bns_.back(), true);
        shortcut_conv_->forward_bn_into(joined, C, pool_->forward(x), *shortcut_bn_, true);
        return joined;
      }
      h = last.forward_bn(h, *bns_.back(), relu_in_bn || join_in_bn, join_in_bn ? x : Tensor());
    } else {  // each batch norm but the last, with its ReLU, folded into the next conv's input
      // Each conv takes its output's batch statistics as it writes it, for its batch norm
      // (when that normalises with them).
      std::vector<ChannelStatistics> stats(convs_.size());
      auto want = [&](std::size_t i) { return bns_[i]->is_training() ? &stats[i] : nullptr; };
      h = convs_[0]->forward(x, want(0));
      for (std::size_t i = 1; i < convs_.size(); ++i)
        h = convs_[i]->forward_after_bn_relu(h, *bns_[i - 1], want(i - 1), want(i));
      BatchNorm3d& bn = *bns_.back();
      const ChannelStatistics* last = want(convs_.size() - 1);
      h = join_in_bn ? bn.forward_add(h, x, true, last) : relu_in_bn ? bn.forward_relu(h, last) : bn.forward(h, last);
    }
    if (join_in_bn) return h;
    if (se_) h = se_->forward(h);
    if (!downsample_) return add_relu(x, h);
    const Tensor s = shortcut_conv_->forward_bn(pool_->forward(x), *shortcut_bn_, relu_in_bn);
    const Tensor joined = concat({h, s}, 1);
    return relu_in_bn ? joined : relu(joined);
  }

  std::string type_name() const override { return downsample_ ? "SevDownsample" : "SevModule"; }

 private:
  void add_conv_bn(const Conv3dConfig& c, const std::string& tag, Generator& init, bool zero_bn = false) {
    convs_.push_back(register_module("conv_" + tag, std::make_shared<Conv3d>(c, init)));
    bns_.push_back(register_module("bn_" + tag, std::make_shared<BatchNorm3d>(c.out_channels, zero_bn)));
  }

  bool downsample_;
  std::vector<std::shared_ptr<Conv3d>> convs_;
  std::vector<std::shared_ptr<BatchNorm3d>> bns_;
  std::shared_ptr<nn::SqueezeExcitation3d> se_;
  std::shared_ptr<nn::AvgPool3d> pool_;
  std::shared_ptr<Conv3d> shortcut_conv_;
  std::shared_ptr<BatchNorm3d> shortcut_bn_;
};

// conv 1x7x7 s(1,2,2) 3 -> 4G, BN, ReLU, conv 3x1x1, BN, ReLU.
class Stem : public nn::Module {
 public:
  Stem(std::int64_t channels, Generator& init) {
    conv1_ = register_module(
        "conv1", std::make_shared<Conv3d>(conv(3, channels, {1, 7, 7}, {.stride = {1, 2, 2}, .padding = {0, 3, 3}}), init));
    bn1_ = register_module("bn1", std::make_shared<BatchNorm3d>(channels));
    conv2_ = register_module(
        "conv2", std::make_shared<Conv3d>(conv(channels, channels, {3, 1, 1}, {.padding = {1, 0, 0}}), init));
    bn2_ = register_module("bn2", std::make_shared<BatchNorm3d>(channels));
  }
  Tensor forward(const Tensor& x) override {
    if (evaluating(*bn1_)) return conv2_->forward_bn(conv1_->forward_bn(x, *bn1_, true), *bn2_, true);
    ChannelStatistics s1, s2;  // each conv's output's, as it writes it
    const Tensor c1 = conv1_->forward(x, bn1_->is_training() ? &s1 : nullptr);
    const Tensor h = conv2_->forward_after_bn_relu(c1, *bn1_, &s1, bn2_->is_training() ? &s2 : nullptr);
    return bn2_->forward_relu(h, &s2);
  }
  std::string type_name() const override { return "SevStem"; }

 private:
  std::shared_ptr<Conv3d> conv1_, conv2_;
  std::shared_ptr<BatchNorm3d> bn1_, bn2_;
};

}  // namespace

SevNet::SevNet(const SevNetConfig& cfg) : cfg_(cfg) {
  VG_CHECK(cfg.group_width >= 1, "SevNet: group width must be >= 1, got " << cfg.group_width);
  VG_CHECK(cfg.num_classes >= 1, "SevNet: num_classes must be >= 1, got " << cfg.num_classes);
  for (int d : cfg.depths) VG_CHECK(d >= 1, "SevNet: every stage needs at least one module, got depth " << d);
  Generator init(cfg.seed);
  const std::int64_t G = cfg.group_width, stem = 4 * G;
  stem_ = register_module("stem", std::make_shared<Stem>(stem, init));
  std::int64_t C = stem;
  for (int s = 0; s < 4; ++s) {
    auto stage = register_module("stage" + std::to_string(s + 2), std::make_shared<nn::Sequential>());
    for (int i = 0; i < cfg.depths[s]; ++i) {
      stage->push_back(std::make_shared<Block>(C, i == 0, cfg, init));
      if (i == 0) C *= 2;
    }
    stages_.push_back(stage);
  }
  dropout_ = register_module("dropout", std::make_shared<nn::Dropout>(cfg.dropout, cfg.seed + 1));
  fc_ = register_module("fc", std::make_shared<nn::Linear>(C, cfg.num_classes, init));
}

Tensor SevNet::forward(const Tensor& x) {
  VG_CHECK(x.dim() == 5 && x.shape()[1] == 3,
           "SevNet: input must be (N, 3, T, H, W), got shape " << shape_str(x.shape()));
  Tensor h = stem_->forward(x);
  for (auto& stage : stages_) h = stage->forward(h);
  return fc_->forward(dropout_->forward(global_avg_pool3d(h)));
}

std::vector<std::string> model_names() {
  std::vector<std::string> names;
  for (const char* g : {"6", "8", "12"}) {
    names.push_back(std::string("sevnet_g") + g);
    names.push_back(std::string("sevnet_g") + g + "_se");
    names.push_back(std::string("r2plus1d_g") + g);
    names.push_back(std::string("r3d_g") + g);
  }
  return names;
}

SevNetConfig config_for(const std::string& name, SevNetConfig base) {
  std::string rest = name;
  auto eat = [&](const std::string& prefix) {
    if (rest.rfind(prefix, 0) != 0) return false;
    rest = rest.substr(prefix.size());
    return true;
  };
  if (eat("sevnet_g")) base.block = SevBlock::kSev;
  else if (eat("r2plus1d_g")) base.block = SevBlock::kR2plus1d;
  else if (eat("r3d_g")) base.block = SevBlock::kR3d;
  else rest.clear();
  base.squeeze_excitation = false;
  if (rest.size() > 3 && rest.compare(rest.size() - 3, 3, "_se") == 0 && base.block == SevBlock::kSev) {
    base.squeeze_excitation = true;
    rest.resize(rest.size() - 3);
  }
  const bool ok = rest == "6" || rest == "8" || rest == "12";
  if (!ok) {
    std::string known;
    for (const auto& n : model_names()) known += (known.empty() ? "" : ", ") + n;
    VG_THROW("make_model: unknown model '" << name << "'; known: " << known);
  }
  base.group_width = std::stoi(rest);
  return base;
}

std::shared_ptr<SevNet> make_model(const std::string& name, SevNetConfig base) {
  return std::make_shared<SevNet>(config_for(name, base));
}

}  // namespace vidgrad::models
