// batch_norm_relu_conv3d, the batch norm with ReLU folded into the conv that reads its
// output (Note [input prologue] in ops/cpu/conv3d_cpu.h): the op against naive loops and
// against the two ops composed, its gradients against finite differences, and the CPU
// kernels' prologue on the paths that write the normalised input to a buffer.
#include "test_util.h"
#include "conv3d_reference.h"

#include "vidgrad/autograd/node.h"
#include "vidgrad/core/parallel.h"
#include "vidgrad/ops/cpu/conv3d_cpu.h"

#include <algorithm>
#include <cmath>

namespace vidgrad {
namespace {

using namespace testing;  // test_util.h and conv3d_reference.h

// relu(batch_norm(x)) in training (batch mean, biased variance), every value in double:
// the reference input of batch_norm_relu_conv3d's conv.
Tensor bn_relu_reference(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps) {
  const std::int64_t N = x.shape()[0], C = x.shape()[1], S = x.numel() / (N * C);
  const std::vector<double> xv = x.to_vector<double>(), g = gamma.to_vector<double>(), b = beta.to_vector<double>();
  std::vector<double> z(xv.size());
  for (std::int64_t c = 0; c < C; ++c) {
    double sum = 0, sq = 0;
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < S; ++i) sum += xv[(n * C + c) * S + i];
    const double mean = sum / static_cast<double>(N * S);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < S; ++i) sq += (xv[(n * C + c) * S + i] - mean) * (xv[(n * C + c) * S + i] - mean);
    const double invstd = 1 / std::sqrt(sq / static_cast<double>(N * S) + eps);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < S; ++i) {
        const std::int64_t at = (n * C + c) * S + i;
        z[at] = std::max(0.0, (xv[at] - mean) * invstd * g[c] + b[c]);
      }
  }
  return Tensor::from_vector(z, x.shape());
}

// batch_norm_relu_conv3d (Note [input prologue] in conv3d_cpu.h): the float32 forward
// against the naive loops; the same output and gradients as the batch norm and conv one
// after the other, up to rounding, and the same running statistics, where the kernels take
// the prologue (Winograd F(4, 3), F(2, 3), the weight gradient's point split; the direct
// planes, stacked and strided) and where the two ops run composed; float64 gradients
// against finite differences in training and eval.
TEST(Conv3d, BatchNormReluFoldedIntoConvMatchesComposition) {
  struct Case {
    Shape input;
    std::int64_t out;
    std::array<std::int64_t, 3> kernel;
    Conv3dOptions opts;
    bool folded;
    bool gradcheck = true;
  };
  const Conv3dOptions temporal = opt({1, 1, 1}, {1, 0, 0}, {1, 1, 1}, 1);
  cpu::set_winograd_temporal(true, 1);
  for (const Case& c : {Case{{2, 5, 9, 3, 5}, 6, {3, 1, 1}, temporal, true},
                        Case{{1, 4, 3, 4, 7}, 3, {3, 1, 1}, temporal, true},
                        Case{{2, 256, 4, 6, 6}, 256, {3, 1, 1}, temporal, true, false},
                        Case{{2, 9, 4, 2, 3}, 16, {3, 1, 1}, temporal, false},  // too few columns: composed
                        // the direct-plane kernels: planes filled one by one, stacked, stride 2
                        Case{{1, 8, 3, 6, 6}, 8, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 1), true},
                        Case{{1, 16, 2, 5, 18}, 16, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2), true},
                        Case{{2, 16, 2, 4, 4}, 16, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2), true},
                        // frame pairs in lanes (float32; Note [frame pairs in lanes]): 7 and 14 wide, odd T
                        Case{{2, 16, 3, 7, 7}, 16, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2), true},
                        Case{{1, 16, 3, 3, 14}, 16, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2), true},
                        Case{{1, 16, 2, 5, 14}, 16, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 2), true},
                        Case{{2, 16, 3, 7, 7}, 16, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 2), true},
                        Case{{1, 16, 3, 6, 28}, 16, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 2), true},
                        Case{{1, 16, 2, 7, 19}, 16, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 2), true},
                        // 6 output channels: not a direct-plane conv, composed
                        Case{{1, 6, 3, 5, 5}, 6, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 1), false}}) {
    SCOPED_TRACE(shape_str(c.input) + " -> " + std::to_string(c.out));
    const std::int64_t C = c.input[1];
    const Shape ws{c.out, C / c.opts.groups, c.kernel[0], c.kernel[1], c.kernel[2]};
    const DType f32 = DType::kFloat32;
    const Tensor x = randn(c.input, 71, f32), gamma = randn({C}, 72, f32), beta = randn({C}, 73, f32);
    const Tensor w = randn(ws, 74, f32), b = randn({c.out}, 75, f32);
    const double eps = 1e-5;
    // One training step through the op (fold) or the two ops: output, gradients of x,
    // gamma, beta, w and b, then the running statistics.
    auto run = [&](bool fold) {
      std::vector<Tensor> leaves{x.clone(), gamma.clone(), beta.clone(), w.clone(), b.clone()};
      for (Tensor& t : leaves) t.set_requires_grad(true);
      Tensor rm = Tensor::zeros({C}, f32), rv = Tensor::full({C}, 1.0, f32);
      const BatchNormOptions bo{.training = true, .momentum = 0.1, .eps = eps, .relu = true};
      const auto& l = leaves;
      Tensor y = fold ? batch_norm_relu_conv3d(l[0], l[1], l[2], rm, rv, bo, l[3], l[4], c.opts)
                      : conv3d(batch_norm(l[0], l[1], l[2], rm, rv, bo), l[3], l[4], c.opts);
      EXPECT_EQ(y.grad_fn()->name == "batch_norm_relu_conv3d", fold && c.folded);
      y.backward(randn(y.shape(), 76, f32));
      std::vector<Tensor> out{y.detach()};
      for (const Tensor& t : leaves) out.push_back(t.grad());
      out.push_back(rm);
      out.push_back(rv);
      return out;
    };
    // The normalised values are the same bit for bit; the transforms' sums may round
    // differently (the compiler contracts them into FMAs per instantiation).
    const auto folded = run(true), composed = run(false);
    for (std::size_t i = 0; i < folded.size(); ++i) {
      const double tol = i + 2 < folded.size() ? 1e-5 : 0;  // the running statistics: exact
      EXPECT_TRUE(all_close(folded[i], composed[i], tol, tol)) << "output, gradient or running statistic " << i;
    }
    double scale = 1;  // the batch norm's output is about |gamma| + |beta| in size
    for (double v : gamma.to_vector<double>()) scale = std::max(scale, std::abs(v));
    for (double v : beta.to_vector<double>()) scale = std::max(scale, 1 + std::abs(v));
    const double depth = static_cast<double>(ws[1] * ws[2] * ws[3] * ws[4]);
    EXPECT_TRUE(all_close(folded[0], conv3d_reference(bn_relu_reference(x, gamma, beta, eps), w, b, c.opts),
                          std::max(1e-4, 2e-5 * std::sqrt(depth)) * scale * 2, 1e-4));
    if (!c.gradcheck) continue;
    const Conv3dOptions o = c.opts;
    std::vector<Tensor> in{param(c.input, 77), param({C}, 78), param({C}, 79), param(ws, 80), param({c.out}, 81)};
    const auto training = [o](const std::vector<Tensor>& t) {
      return batch_norm_relu_conv3d(t[0], t[1], t[2], {}, {}, {.relu = true}, t[3], t[4], o);
    };
    EXPECT_GRADCHECK(training, in);
    const Tensor rm = randn({C}, 82), rv = Tensor::full({C}, 0.6, DType::kFloat64);
    const auto eval = [o, rm, rv](const std::vector<Tensor>& t) {
      return batch_norm_relu_conv3d(t[0], t[1], t[2], rm, rv, {.training = false, .relu = true}, t[3], t[4], o);
    };
    EXPECT_GRADCHECK(eval, in);
  }
  cpu::set_winograd_temporal(true);
  Tensor x = randn({1, 4, 3, 2, 2}, 1, DType::kFloat32), w = randn({4, 4, 3, 1, 1}, 2, DType::kFloat32);
  EXPECT_THROW_MSG(batch_norm_relu_conv3d(x, {}, {}, {}, {}, {}, w, {}, temporal), "batch_norm_relu_conv3d",
                   "bn_opts.relu");
  EXPECT_THROW_MSG(batch_norm_relu_conv3d(x, Tensor::zeros({3}, DType::kFloat32), {}, {}, {}, {.relu = true}, w, {},
                                          temporal),
                   "batch_norm", "weight", "[4]", "[3]");
}

// The kernels' prologue on the paths that write the normalised input to a buffer of their
// own (cpu::conv3d_takes_prologue false): the same values as the conv of that input.
TEST(Conv3d, InputPrologueOutsideWinogradMatchesNormalisedInput) {
  cpu::Conv3dGeometry g{};
  g.N = 2; g.C = 9; g.T = 4; g.H = 2; g.W = 3;
  g.O = 16; g.kT = 3; g.kH = 1; g.kW = 1;
  g.To = 4; g.Ho = 2; g.Wo = 3;
  g.sT = g.sH = g.sW = 1; g.pT = 1; g.pH = g.pW = 0; g.dT = g.dH = g.dW = 1; g.groups = 1;
  ASSERT_FALSE(cpu::conv3d_takes_prologue(g));
  const Tensor x = randn({g.N, g.C, g.T, g.H, g.W}, 91, DType::kFloat32);
  const Tensor w = randn({g.O, g.C, 3, 1, 1}, 92, DType::kFloat32);
  const Tensor gy = randn({g.N, g.O, g.T, g.H, g.W}, 93, DType::kFloat32);
  const std::vector<float> scale = randn({g.C}, 94, DType::kFloat32).to_vector<float>();
  const std::vector<float> shift = randn({g.C}, 95, DType::kFloat32).to_vector<float>();
  std::vector<float> z = x.to_vector<float>();
  for (std::size_t i = 0; i < z.size(); ++i) {
    const float v = std::fma(z[i], scale[i / (g.T * g.H * g.W) % g.C], shift[i / (g.T * g.H * g.W) % g.C]);
    z[i] = v > 0 ? v : 0;
  }
  const cpu::InputPrologue<float> pro{scale.data(), shift.data()};
  std::vector<float> y(g.N * g.O * g.L()), y_ref(y.size()), gw(g.O * g.C * 3), gw_ref(gw.size());
  cpu::conv3d_forward<float>(g, x.data<float>(), w.data<float>(), y.data(), {}, pro);
  cpu::conv3d_forward<float>(g, z.data(), w.data<float>(), y_ref.data());
  EXPECT_EQ(y, y_ref);  // the same kernels on the same values
  cpu::conv3d_backward_weight<float>(g, gy.data<float>(), x.data<float>(), gw.data(), pro);
  cpu::conv3d_backward_weight<float>(g, gy.data<float>(), z.data(), gw_ref.data());
  EXPECT_EQ(gw, gw_ref);
}

// The mean and biased variance of each channel of y (N, C, ...), in double.
std::pair<std::vector<double>, std::vector<double>> channel_moments(const Tensor& y) {
  const std::int64_t N = y.shape()[0], C = y.shape()[1], S = y.numel() / (N * C);
  const std::vector<double> v = y.to_vector<double>();
  std::vector<double> mean(static_cast<std::size_t>(C)), var(static_cast<std::size_t>(C));
  for (std::int64_t c = 0; c < C; ++c) {
    double sum = 0, sq = 0;
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < S; ++i) sum += v[(n * C + c) * S + i];
    mean[c] = sum / static_cast<double>(N * S);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < S; ++i) sq += (v[(n * C + c) * S + i] - mean[c]) * (v[(n * C + c) * S + i] - mean[c]);
    var[c] = sq / static_cast<double>(N * S);
  }
  return {mean, var};
}

// One float32 training step of fn(leaves, running mean, running variance) over copies of
// leaves that require grad, running statistics fresh (16 channels): the output, the
// running statistics, then each leaf's gradient.
template <typename F>
std::vector<Tensor> step_results(const std::vector<Tensor>& leaves_in, std::uint64_t seed, F&& fn) {
  std::vector<Tensor> leaves;
  for (const Tensor& t : leaves_in) {
    leaves.push_back(t.clone());
    leaves.back().set_requires_grad(true);
  }
  Tensor rm = Tensor::zeros({16}, DType::kFloat32), rv = Tensor::full({16}, 1.0, DType::kFloat32);
  Tensor y = fn(leaves, rm, rv);
  y.backward(randn(y.shape(), seed, DType::kFloat32));
  std::vector<Tensor> out{y.detach(), rm, rv};
  for (const Tensor& t : leaves) out.push_back(t.grad());
  return out;
}

// Two steps' results the same up to the rounding of statistics summed in another order.
void expect_same_step(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(all_close(a[i], b[i], 1e-5, 1e-5)) << "output, running statistic or gradient " << i;
}

// conv3d's overload with statistics (Note [output statistics] in ops/cpu/row_gemm.cpp): the
// same output bit for bit, and the output's mean and variance, against double sums over it,
// on the row GEMM's paths (one GEMM split over panels, small frames by sample, slots of 1,
// 2, 4 and 8 panels and a narrow last one, time shifts, groups, a bias far from zero), the
// Winograd forward's (partial tiles and row panels, channel chunks, F(2, 3)), the direct
// planes' (stacked frames, frame by frame, stride 2, the stem's shape) and on convs that
// take them in a pass (im2col, strided rows); the same values on 1, 2 and 3 threads; the fold given them against the
// fold taking its own, and the fold's own output statistics; gradients through the chain
// of a conv and two folds, each given the statistics of the one before, float64.
TEST(Conv3d, OutputStatisticsMatchTheOutput) {
  struct Case {
    Shape input;
    std::int64_t out;
    std::array<std::int64_t, 3> kernel;
    Conv3dOptions opts;
    double bias = 0;  // added to a random bias: a mean far from zero
  };
  const Conv3dOptions unit = opt({1, 1, 1}, {0, 0, 0}, {1, 1, 1}, 1);
  const int saved = get_num_threads();
  // Columns (positions a sample): the GEMM's 48-column panels, slots of 1-8 of them.
  for (const Case& c : {Case{{1, 64, 4, 10, 25}, 64, {1, 1, 1}, unit},     // 1000: 21 panels (a narrow
                                                                            // last one), slots of 4, split
                        Case{{1, 64, 2, 10, 25}, 64, {1, 1, 1}, unit},     // 500: slots of 2, split
                        Case{{1, 16, 8, 50, 60}, 9, {1, 1, 1}, unit},      // 24000: slots of 8, split
                        Case{{2, 6, 3, 20, 34}, 7, {1, 1, 1}, unit, 1e3},  // 2040 a sample, one thread
                        Case{{3, 24, 2, 5, 7}, 16, {1, 1, 1}, unit},       // 70: slots of 1, samples to threads
                        Case{{2, 8, 6, 3, 5}, 8, {1, 1, 1}, opt({1, 1, 1}, {0, 0, 0}, {1, 1, 1}, 2)},
                        Case{{2, 6, 9, 12, 13}, 5, {3, 1, 1}, opt({1, 1, 1}, {1, 0, 0}, {1, 1, 1}, 1), -40},
                        // Winograd F(4, 3): a partial last tile, channels split between units,
                        // 36 outputs (a partial row panel); F(2, 3) on 3 frames
                        Case{{1, 32, 9, 6, 7}, 32, {3, 1, 1}, opt({1, 1, 1}, {1, 0, 0}, {1, 1, 1}, 1), 5},
                        Case{{2, 32, 5, 20, 30}, 36, {3, 1, 1}, opt({1, 1, 1}, {1, 0, 0}, {1, 1, 1}, 1)},
                        Case{{2, 40, 3, 9, 11}, 32, {3, 1, 1}, opt({1, 1, 1}, {1, 0, 0}, {1, 1, 1}, 1), -7},
                        // the direct planes: stacked frames, frame by frame, stride 2
                        Case{{2, 16, 3, 9, 9}, 16, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2)},
                        // frame pairs in lanes: statistics over all frames (7x7) and per frame (14 wide)
                        Case{{2, 16, 3, 7, 7}, 16, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2)},
                        Case{{2, 16, 3, 4, 14}, 16, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2)},
                        Case{{2, 16, 2, 4, 4}, 16, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2)},
                        Case{{2, 16, 3, 5, 14}, 16, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 2)},
                        Case{{2, 16, 3, 8, 20}, 16, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2), 30},
                        Case{{3, 8, 2, 11, 34}, 8, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 1)},
                        // the stem's shape (1x7x7 stride 2, 3 input channels): direct planes
                        Case{{1, 3, 2, 20, 70}, 8, {1, 7, 7}, opt({1, 2, 2}, {0, 3, 3}, {1, 1, 1}, 1)},
                        // taken in a pass: 6 outputs, im2col; strided rows
                        Case{{2, 4, 3, 6, 7}, 6, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 1)},
                        Case{{1, 2, 2, 6, 70}, 5, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 1)}}) {
    SCOPED_TRACE(shape_str(c.input) + " -> " + std::to_string(c.out));
    const Shape ws{c.out, c.input[1] / c.opts.groups, c.kernel[0], c.kernel[1], c.kernel[2]};
    for (const DType dt : {DType::kFloat32, DType::kFloat64}) {
      const Tensor x = randn(c.input, 101, dt), w = randn(ws, 102, dt);
      std::vector<double> bv = randn({c.out}, 103, DType::kFloat64).to_vector<double>();
      for (double& v : bv) v += c.bias;
      const Tensor b = Tensor::from_vector(bv, {c.out}).to(dt);
      const Tensor plain = conv3d(x, w, b, c.opts);
      ChannelStatistics first;
      for (const int threads : {1, 2, 3}) {
        set_num_threads(threads);
        ChannelStatistics stats;
        const Tensor y = conv3d(x, w, b, c.opts, &stats);
        EXPECT_TRUE(all_close(y, plain, 0, 0)) << threads << " threads";
        ASSERT_EQ(std::ssize(stats.mean), c.out);
        ASSERT_EQ(std::ssize(stats.var), c.out);
        if (threads == 1) {
          first = stats;
          const auto [mean, var] = channel_moments(y);
          const double tol = dt == DType::kFloat32 ? 2e-6 : 1e-13;
          for (std::int64_t o = 0; o < c.out; ++o) {
            EXPECT_NEAR(stats.mean[o], mean[o], tol * (std::abs(mean[o]) + std::sqrt(var[o]))) << "channel " << o;
            EXPECT_NEAR(stats.var[o], var[o], tol * var[o]) << "channel " << o;
          }
        } else {  // the same sums in the same order, whoever took which panel
          EXPECT_EQ(stats.mean, first.mean) << threads << " threads";
          EXPECT_EQ(stats.var, first.var) << threads << " threads";
        }
      }
      set_num_threads(saved);
    }
  }
  // The fold given the statistics: the same step as the fold taking its own, up to their
  // rounding; gradients through the pair (conv with statistics, fold given them).
  const Conv3dOptions gw8 = opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2);
  const DType f32 = DType::kFloat32;
  const Tensor x = randn({2, 16, 3, 12, 10}, 111, f32), wa = randn({16, 16, 1, 1, 1}, 112, f32);
  const Tensor gamma = randn({16}, 113, f32), beta = randn({16}, 114, f32), wb = randn({16, 8, 1, 3, 3}, 115, f32);
  auto step = [&](bool given) {
    return step_results({x, wa, gamma, beta, wb}, 116, [&](const std::vector<Tensor>& l, Tensor& rm, Tensor& rv) {
      ChannelStatistics stats, y_stats;
      const Tensor h = conv3d(l[0], l[1], {}, unit, given ? &stats : nullptr);
      Tensor y = batch_norm_relu_conv3d(h, l[2], l[3], rm, rv, {.relu = true}, l[4], {}, gw8, given ? &stats : nullptr,
                                        &y_stats);
      EXPECT_EQ(y.grad_fn()->name, "batch_norm_relu_conv3d");
      const auto [mean, var] = channel_moments(y);
      for (std::int64_t o = 0; o < 16; ++o) {
        EXPECT_NEAR(y_stats.mean[o], mean[o], 2e-6 * (std::abs(mean[o]) + std::sqrt(var[o]))) << "channel " << o;
        EXPECT_NEAR(y_stats.var[o], var[o], 2e-6 * var[o]) << "channel " << o;
      }
      return y;
    });
  };
  expect_same_step(step(true), step(false));
  std::vector<Tensor> in{param({2, 16, 3, 5, 4}, 117), param({16, 16, 1, 1, 1}, 118), param({16}, 119),
                         param({16}, 120), param({16, 8, 1, 3, 3}, 121), param({16}, 122),
                         param({16}, 123), param({16, 8, 1, 3, 3}, 124)};
  const auto chain = [unit, gw8](const std::vector<Tensor>& t) {
    ChannelStatistics sa, sb;
    const Tensor a = conv3d(t[0], t[1], {}, unit, &sa);
    const Tensor b = batch_norm_relu_conv3d(a, t[2], t[3], {}, {}, {.relu = true}, t[4], {}, gw8, &sa, &sb);
    return batch_norm_relu_conv3d(b, t[5], t[6], {}, {}, {.relu = true}, t[7], {}, gw8, &sb);
  };
  EXPECT_GRADCHECK(chain, in);
  // batch_norm and batch_norm_add given the statistics of a Winograd conv's output (a
  // module's last conv and its join): the same step as taking their own, up to rounding;
  // gradients through the pair.
  cpu::set_winograd_temporal(true, 1);
  const Conv3dOptions temporal = opt({1, 1, 1}, {1, 0, 0}, {1, 1, 1}, 1);
  const Tensor wc = randn({16, 16, 3, 1, 1}, 125, f32), res = randn({2, 16, 3, 12, 10}, 126, f32);
  for (const bool join : {false, true}) {
    SCOPED_TRACE(join ? "batch_norm_add" : "batch_norm");
    auto last = [&](bool given) {
      return step_results({x, wc, gamma, beta}, 127, [&](const std::vector<Tensor>& l, Tensor& rm, Tensor& rv) {
        ChannelStatistics stats;
        const Tensor h = conv3d(l[0], l[1], {}, temporal, given ? &stats : nullptr);
        const BatchNormOptions bo{.relu = true};
        return join ? batch_norm_add(h, l[2], l[3], rm, rv, res, bo, given ? &stats : nullptr)
                    : batch_norm(h, l[2], l[3], rm, rv, bo, given ? &stats : nullptr);
      });
    };
    expect_same_step(last(true), last(false));
    std::vector<Tensor> inputs{param({2, 16, 3, 5, 4}, 128), param({16, 16, 3, 1, 1}, 129), param({16}, 130),
                               param({16}, 131), param({2, 16, 3, 5, 4}, 132)};
    const auto pair = [temporal, join](const std::vector<Tensor>& t) {
      ChannelStatistics stats;
      const Tensor h = conv3d(t[0], t[1], {}, temporal, &stats);
      return join ? batch_norm_add(h, t[2], t[3], {}, {}, t[4], {.relu = true}, &stats)
                  : batch_norm(h, t[2], t[3], {}, {}, {.relu = true}, &stats);
    };
    EXPECT_GRADCHECK(pair, inputs);
  }
  cpu::set_winograd_temporal(true);
  // Statistics of another size than the input's channels.
  ChannelStatistics wrong{{0.0, 0.0}, {1.0, 1.0}};
  EXPECT_THROW_MSG(batch_norm(x, gamma, beta, {}, {}, {}, &wrong), "batch_norm", "2 means", "16 channels");
  EXPECT_THROW_MSG(batch_norm_relu_conv3d(x, gamma, beta, {}, {}, {.relu = true}, wb, {}, gw8, &wrong),
                   "batch_norm", "2 means", "16 channels");
}

}  // namespace
}  // namespace vidgrad
