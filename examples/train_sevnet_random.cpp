// Trains a small SEVNet on a fixed set of random clips with random labels, using the
// library's optimizer, schedule and checkpoints: the loss falls as the network memorises
// the set. A minimal training loop against the C++ API.
//
//   build/examples/train_sevnet_random [epochs=15] [checkpoint=sevnet_random.safetensors]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "vidgrad/models/sevnet.h"
#include "vidgrad/optim/checkpoint.h"
#include "vidgrad/optim/schedule.h"
#include "vidgrad/optim/sgd.h"
#include "vidgrad/ops/ops.h"

using namespace vidgrad;

int main(int argc, char** argv) {
  const int epochs = argc > 1 ? std::atoi(argv[1]) : 15;
  const std::string ckpt_path = argc > 2 ? argv[2] : "sevnet_random.safetensors";
  if (epochs <= 0) {
    std::fprintf(stderr, "usage: train_sevnet_random [epochs > 0] [checkpoint path]\n");
    return 2;
  }
  constexpr std::int64_t kClips = 16, kBatch = 4, kClasses = 4;

  // SEVNet with group width 4 and one module per stage, for 8x32x32 clips.
  models::SevNetConfig cfg;
  cfg.group_width = 4;
  cfg.num_classes = kClasses;
  cfg.depths = {1, 1, 1, 1};
  cfg.dropout = 0.0;
  models::SevNet net(cfg);

  Generator data_gen(1);
  const Tensor clips = Tensor::randn({kClips, 3, 8, 32, 32}, data_gen);
  std::vector<std::int64_t> labels(kClips);
  for (auto& l : labels) l = static_cast<std::int64_t>(data_gen.next_u64() % kClasses);

  const std::int64_t steps_per_epoch = kClips / kBatch;
  optim::Sgd sgd(net.named_parameters(), {.lr = 0.0, .momentum = 0.9, .weight_decay = 1e-4});
  optim::WarmupCosine schedule({.base_lr = optim::linear_scaled_lr(0.1, kBatch),
                                .warmup_steps = steps_per_epoch,
                                .total_steps = epochs * steps_per_epoch});

  std::printf("SEVNet-G4 (1,1,1,1) on %lld random 8x32x32 clips, %d epochs, batch %lld, %d threads\n",
              static_cast<long long>(kClips), epochs, static_cast<long long>(kBatch), get_num_threads());
  const auto start = std::chrono::steady_clock::now();
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    double total = 0;
    for (std::int64_t b = 0; b < steps_per_epoch; ++b) {
      const Tensor x = clips.narrow(0, b * kBatch, kBatch);
      const Tensor y = Tensor::from_vector(
          std::vector<std::int64_t>(labels.begin() + b * kBatch, labels.begin() + (b + 1) * kBatch), {kBatch});
      sgd.set_lr(schedule.lr());
      Tensor loss = cross_entropy(net.forward(x), y);
      net.zero_grad();
      loss.backward();
      sgd.step();
      schedule.advance();
      total += loss.item();
    }
    std::printf("epoch %2d  loss %.4f  lr %.4f\n", epoch, total / static_cast<double>(steps_per_epoch),
                sgd.lr());
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  optim::TrainingCheckpoint ckpt;
  ckpt.model = net.state_dict();
  ckpt.optimizer = sgd.state();
  ckpt.step = schedule.step();
  ckpt.epoch = epochs;
  optim::save_checkpoint(ckpt_path, ckpt);
  std::printf("%.1f s, %.1f clips/s; checkpoint written to %s\n", seconds,
              static_cast<double>(epochs * kClips) / seconds, ckpt_path.c_str());
  return 0;
}
