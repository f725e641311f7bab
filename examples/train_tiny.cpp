// Trains a tiny video network, written directly against vidgrad's ops, to tell a square
// moving right from one moving left. Any single frame is ambiguous (both classes visit
// the same positions); only the order of frames tells them apart, so the network has to
// use its temporal convolution.
//
//   build/examples/train_tiny [steps]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "vidgrad/ops/ops.h"

using namespace vidgrad;

namespace {

constexpr std::int64_t kT = 8, kH = 12, kW = 12;

// A batch of clips (N, 3, T, H, W) and labels: 0 = moving right, 1 = moving left.
std::pair<Tensor, Tensor> make_batch(std::int64_t n, Generator& gen) {
  Tensor x = Tensor::zeros({n, 3, kT, kH, kW});
  std::vector<std::int64_t> labels(n);
  float* p = x.data<float>();
  for (std::int64_t i = 0; i < n; ++i) {
    const int label = gen.uniform() < 0.5 ? 0 : 1;
    labels[i] = label;
    const std::int64_t row = static_cast<std::int64_t>(gen.uniform() * (kH - 1));
    const std::int64_t start = static_cast<std::int64_t>(gen.uniform() * (kW - kT - 1 + 1));  // 0..3
    float colour[3];
    for (float& c : colour) c = 0.5f + 0.5f * static_cast<float>(gen.uniform());
    for (std::int64_t t = 0; t < kT; ++t) {
      const std::int64_t col = label == 0 ? start + t : (kW - 2) - start - t;
      for (std::int64_t c = 0; c < 3; ++c)
        for (std::int64_t dy = 0; dy < 2; ++dy)
          for (std::int64_t dx = 0; dx < 2; ++dx)
            p[(((i * 3 + c) * kT + t) * kH + row + dy) * kW + col + dx] = colour[c];
    }
  }
  Generator noise_gen(gen.next_u64());
  Tensor noise = Tensor::randn(x.shape(), noise_gen);
  return {add(x, mul(noise, 0.1)), Tensor::from_vector(labels, {n})};
}

// Kaiming-normal (fan_out, ReLU) initialisation, marked as a trainable leaf.
Tensor kaiming(const Shape& shape, Generator& gen) {
  std::int64_t fan_out = shape[0];
  for (std::size_t i = 2; i < shape.size(); ++i) fan_out *= shape[i];
  return mul(Tensor::randn(shape, gen), std::sqrt(2.0 / static_cast<double>(fan_out))).set_requires_grad(true);
}

struct Net {
  Tensor w1, g1, b1, rm1, rv1;  // conv 1x3x3, 3 -> 8, BN
  Tensor w2, g2, b2, rm2, rv2;  // conv 3x1x1, 8 -> 8, BN
  Tensor fc_w, fc_b;            // linear 8 -> 2

  explicit Net(Generator& gen)
      : w1(kaiming({8, 3, 1, 3, 3}, gen)), g1(Tensor::ones({8}).set_requires_grad(true)),
        b1(Tensor::zeros({8}).set_requires_grad(true)), rm1(Tensor::zeros({8})), rv1(Tensor::ones({8})),
        w2(kaiming({8, 8, 3, 1, 1}, gen)), g2(Tensor::ones({8}).set_requires_grad(true)),
        b2(Tensor::zeros({8}).set_requires_grad(true)), rm2(Tensor::zeros({8})), rv2(Tensor::ones({8})),
        fc_w(mul(Tensor::randn({2, 8}, gen), 0.1).set_requires_grad(true)),
        fc_b(Tensor::zeros({2}).set_requires_grad(true)) {}

  std::vector<Tensor> parameters() const { return {w1, g1, b1, w2, g2, b2, fc_w, fc_b}; }

  Tensor forward(const Tensor& x, bool training) const {
    const BatchNormOptions bn{.training = training};
    Tensor h = conv3d(x, w1, {}, Conv3dOptions{.padding = {0, 1, 1}});
    h = relu(batch_norm(h, g1, b1, rm1, rv1, bn));
    h = max_pool3d(h, {.kernel = {1, 2, 2}});
    h = conv3d(h, w2, {}, Conv3dOptions{.padding = {1, 0, 0}});
    h = relu(batch_norm(h, g2, b2, rm2, rv2, bn));
    return linear(global_avg_pool3d(h), fc_w, fc_b);
  }
};

// SGD with momentum, written out: v = m v + g; p -= lr v.
void sgd_step(const std::vector<Tensor>& params, std::vector<Tensor>& velocity, double lr, double momentum) {
  autograd::NoGradGuard no_grad;
  for (std::size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    if (!velocity[i].defined()) velocity[i] = Tensor::zeros(p.shape());
    float* pv = p.data<float>();
    float* v = velocity[i].data<float>();
    const float* g = p.grad().data<float>();
    for (std::int64_t k = 0; k < p.numel(); ++k) {
      v[k] = static_cast<float>(momentum) * v[k] + g[k];
      pv[k] -= static_cast<float>(lr) * v[k];
    }
    p.set_grad(Tensor());
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 150;
  if (steps <= 0) {
    std::fprintf(stderr, "usage: train_tiny [steps > 0]\n");
    return 2;
  }
  Generator gen(2026);
  Net net(gen);
  std::vector<Tensor> velocity(net.parameters().size());
  std::printf("training a 2-conv video network on moving squares (%d steps, batch 16, %d threads)\n", steps,
              get_num_threads());
  double first_loss = 0, last_loss = 0;
  for (int step = 1; step <= steps; ++step) {
    auto [x, y] = make_batch(16, gen);
    Tensor loss = cross_entropy(net.forward(x, true), y);
    loss.backward();
    sgd_step(net.parameters(), velocity, 0.05, 0.9);
    last_loss = loss.item();
    if (step == 1) first_loss = last_loss;
    if (step == 1 || step % 10 == 0) std::printf("step %4d  loss %.4f\n", step, last_loss);
  }
  Generator test_gen(99);
  auto [x, y] = make_batch(256, test_gen);
  Tensor logits;
  {
    autograd::NoGradGuard no_grad;
    logits = net.forward(x, false);
  }
  const std::vector<float> l = logits.to_vector<float>();
  const std::vector<std::int64_t> labels = y.to_vector<std::int64_t>();
  int correct = 0;
  for (std::size_t i = 0; i < labels.size(); ++i) correct += (l[2 * i + 1] > l[2 * i]) == (labels[i] == 1);
  std::printf("loss %.4f -> %.4f; held-out accuracy %.1f%% on %zu clips\n", first_loss, last_loss,
              100.0 * correct / static_cast<double>(labels.size()), labels.size());
  return 0;
}
