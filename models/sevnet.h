// SEVNet (Wang & Yang, "An Efficient 3D CNN with Channel-wise, Spatial-grouped, and
// Temporal Convolutions", Section 3 and Table 1), and the ablation blocks of Section 4.6.
//
// input (N, 3, T, H, W) -> logits (N, classes). With group width G:
//   stem      conv 1x7x7 s(1,2,2) 3 -> 4G, BN, ReLU; conv 3x1x1 4G -> 4G, BN, ReLU
//   stage2-5  (3, 4, 6, 3) modules; the first of each stage is the downsample module,
//             which halves H and W and doubles the channels: 8G, 16G, 32G, 64G
//   head      global average pool, dropout, fully connected
//
// SEV module (C):  a = ReLU(BN(conv 1x1x1 C->C (x)))
//                  b = ReLU(BN(conv 1x3x3 C->C, groups C/G (a)))
//                  c = BN(conv 3x1x1 C->C (b))            [SE(c) with +SE]
//                  out = ReLU(x + c)
// downsample (C -> 2C): the same branch with the 1x3x3 conv at stride (1,2,2);
//                  shortcut = BN(conv 1x1x1 C->C (avgpool 1x3x3 s(1,2,2) p(0,1,1) (x)))
//                  out = ReLU(concat(branch, shortcut))
// "R(2+1)D" block: 1x1x1 C->C/2, 1x3x3 C/2->C/2 (not grouped), 3x1x1 C/2->C
// "R3D" block:     1x1x1 C->m, 3x3x3 m->m, 1x1x1 m->C with m = round(C / 2.6)
//
// Parameter names (docs/sevnet_parameters.md): stem.conv1, stem.bn1, stem.conv2, stem.bn2,
// stage{2..5}.{i}.{conv_a,bn_a,conv_b,bn_b,conv_c,bn_c,se.fc1,se.fc2,shortcut_conv,
// shortcut_bn}, fc.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "vidgrad/nn/layers.h"

namespace vidgrad::models {

enum class SevBlock { kSev, kR2plus1d, kR3d };

struct SevNetConfig {
  std::int64_t group_width = 8;  // G
  std::int64_t num_classes = 174;
  SevBlock block = SevBlock::kSev;
  bool squeeze_excitation = false;  // +SE, on the residual branch before the add
  std::int64_t se_reduction = 4;
  double dropout = 0.5;
  bool zero_init_last_bn = false;  // BN weight 0 at the end of every residual branch
  std::array<int, 4> depths{3, 4, 6, 3};
  std::uint64_t seed = 0;  // initialisation and dropout
};

class SevNet : public nn::Module {
 public:
  explicit SevNet(const SevNetConfig& cfg);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "SevNet"; }
  const SevNetConfig& config() const { return cfg_; }

 private:
  SevNetConfig cfg_;
  std::shared_ptr<nn::Module> stem_;
  std::vector<std::shared_ptr<nn::Sequential>> stages_;
  std::shared_ptr<nn::Dropout> dropout_;
  std::shared_ptr<nn::Linear> fc_;
};

// Names understood by make_model: sevnet_g6, sevnet_g8, sevnet_g12, the same with "_se"
// appended, and r2plus1d_g{6,8,12}, r3d_g{6,8,12}.
std::vector<std::string> model_names();
// Fills the block, group width and SE fields of `base` from the name; throws on an unknown name.
SevNetConfig config_for(const std::string& name, SevNetConfig base = {});
std::shared_ptr<SevNet> make_model(const std::string& name, SevNetConfig base = {});

}  // namespace vidgrad::models
