// conv3d_batch_norm_inference, the forward-only conv + inference batch norm (+ residual,
// + ReLU) in one pass: its argument checks, its writing into a channel range of a wider
// tensor (conv3d_batch_norm_inference_into, Note [concat in place] in ops/conv3d.cpp), and
// the Winograd filter transforms it keeps (Note [filter cache] in
// ops/cpu/conv3d_winograd.cpp). Its values on every conv path are checked with the conv
// shapes in conv3d_test.cpp (BatchNormInferenceMatchesComposition).
#include "test_util.h"
#include "conv3d_reference.h"

#include "vidgrad/autograd/grad_mode.h"
#include "vidgrad/ops/cpu/conv3d_cpu.h"

#include <cmath>
#include <string>
#include <vector>

namespace vidgrad {
namespace {

using testing::all_close;
using testing::conv3d_reference;
using testing::opt;
using testing::randn;

// Note [filter cache] (ops/cpu/conv3d_winograd.cpp): an inference conv keeps its Winograd
// filter transform, and uses it only while the weights are bit for bit the same: a second
// call gives the first's output exactly; after one weight value changes in place, or the
// same weight memory is read as another shape, the output follows the new weights (against
// the naive loops). Training convs keep nothing.
TEST(Conv3d, InferenceFilterCacheFollowsTheWeights) {
  const Conv3dOptions o = opt({1, 1, 1}, {1, 0, 0}, {1, 1, 1}, 1);
  cpu::set_winograd_temporal(true, 1);
  cpu::clear_filter_cache();
  Tensor x = randn({2, 24, 8, 5, 6}, 71, DType::kFloat32), w = randn({32, 24, 3, 1, 1}, 72, DType::kFloat32);
  {  // training: nothing kept
    Tensor wp = w.clone();
    wp.set_requires_grad(true);
    sum(conv3d(x, wp, {}, o)).backward();
    EXPECT_EQ(cpu::filter_cache_bytes(), 0);
  }
  autograd::NoGradGuard no_grad;
  const auto infer = [&](const Tensor& input, const Tensor& weight) {
    const std::int64_t O = weight.shape()[0];
    const Tensor ones = Tensor::ones({O}, DType::kFloat32), zeros = Tensor::zeros({O}, DType::kFloat32);
    return conv3d_batch_norm_inference(input, weight, {}, ones, zeros, zeros, ones, 0.0, o);
  };
  const auto reference_close = [&](const Tensor& y, const Tensor& input, const Tensor& weight) {
    return all_close(y, conv3d_reference(input, weight, {}, o), 1e-4, 1e-4);
  };
  const Tensor y1 = infer(x, w);
  EXPECT_TRUE(reference_close(y1, x, w));
  EXPECT_GT(cpu::filter_cache_bytes(), 0) << "the inference conv kept no transform";
  const Tensor y2 = infer(x, w);
  EXPECT_TRUE(all_close(y2, y1, 0, 0)) << "the kept transform gave another output";
  w.data<float>()[5 * 24 * 3 + 7] += 0.5f;  // one tap of output channel 5, in place
  const Tensor y3 = infer(x, w);
  EXPECT_TRUE(reference_close(y3, x, w));
  EXPECT_FALSE(all_close(y3, y1, 1e-3, 0)) << "a stale transform after the weights changed";
  // The same memory as a (24, 32, 3) weight: another key, never the (32, 24, 3) transform.
  const Tensor w_other = w.reshape({24, 32, 3, 1, 1});
  Tensor x_other = randn({1, 32, 8, 5, 6}, 73, DType::kFloat32);
  EXPECT_TRUE(reference_close(infer(x_other, w_other), x_other, w_other));
  EXPECT_TRUE(all_close(infer(x, w), y3, 0, 0));
  cpu::clear_filter_cache();
  EXPECT_EQ(cpu::filter_cache_bytes(), 0);
  EXPECT_TRUE(all_close(infer(x, w), y3, 0, 0));
  cpu::set_winograd_temporal(true);
}

// Note [filter cache]: the kept transforms stay within kFilterCacheBytes (a weight that
// finds no room is transformed each call, with the same output), and entries unused for
// kFilterCacheIdleCalls calls make way for a new one.
TEST(Conv3d, InferenceFilterCacheStaysWithinItsBudget) {
  const Conv3dOptions o = opt({1, 1, 1}, {1, 0, 0}, {1, 1, 1}, 1);
  cpu::set_winograd_temporal(true, 1);
  cpu::clear_filter_cache();
  autograd::NoGradGuard no_grad;
  const auto infer = [&](const Tensor& input, const Tensor& weight) {
    const std::int64_t O = weight.shape()[0];
    const Tensor ones = Tensor::ones({O}, DType::kFloat32), zeros = Tensor::zeros({O}, DType::kFloat32);
    return conv3d_batch_norm_inference(input, weight, {}, ones, zeros, zeros, ones, 0.0, o);
  };
  // An entry: the weight (O x C x 3) and its transform (6 x O x C), float32.
  const std::int64_t C = 512, per = 9 * C * C * static_cast<std::int64_t>(sizeof(float));
  const std::int64_t fit = cpu::kFilterCacheBytes / per;
  ASSERT_GE(fit, 1);
  Tensor x = randn({1, C, 4, 1, 2}, 81, DType::kFloat32);
  std::vector<Tensor> ws;
  for (std::int64_t i = 0; i < fit; ++i) {
    ws.push_back(randn({C, C, 3, 1, 1}, 82 + static_cast<std::uint64_t>(i), DType::kFloat32));
    infer(x, ws.back());
    EXPECT_EQ(cpu::filter_cache_bytes(), (i + 1) * per);
  }
  const Tensor extra = randn({C, C, 3, 1, 1}, 99, DType::kFloat32);
  const Tensor y = infer(x, extra);
  EXPECT_EQ(cpu::filter_cache_bytes(), fit * per) << "an entry past the budget was kept";
  EXPECT_TRUE(all_close(y, conv3d_reference(x, extra, {}, o), 1e-3, 1e-3));
  EXPECT_TRUE(all_close(infer(x, extra), y, 0, 0));
  // A small weight used kFilterCacheIdleCalls times more: the large entries are idle then.
  Tensor xs = randn({1, 8, 4, 1, 2}, 100, DType::kFloat32), ws8 = randn({8, 8, 3, 1, 1}, 101, DType::kFloat32);
  const std::int64_t small = 9 * 8 * 8 * static_cast<std::int64_t>(sizeof(float));
  for (std::uint64_t i = 0; i <= cpu::kFilterCacheIdleCalls; ++i) infer(xs, ws8);
  EXPECT_EQ(cpu::filter_cache_bytes(), fit * per + small);
  EXPECT_TRUE(all_close(infer(x, extra), y, 0, 0));
  EXPECT_EQ(cpu::filter_cache_bytes(), per + small) << "idle entries did not make way";
  cpu::clear_filter_cache();
  cpu::set_winograd_temporal(true);
}

TEST(Conv3d, BatchNormInferenceRefusesGraphsAndBadShapes) {
  Tensor x = randn({1, 8, 2, 4, 4}, 1, DType::kFloat32), w = randn({8, 8, 1, 1, 1}, 2, DType::kFloat32);
  Tensor ones = Tensor::full({8}, 1.0, DType::kFloat32), zeros = Tensor::zeros({8}, DType::kFloat32);
  Tensor wp = w.clone();
  wp.set_requires_grad(true);
  EXPECT_THROW_MSG(conv3d_batch_norm_inference(x, wp, {}, ones, zeros, zeros, ones, 1e-5), "conv3d_batch_norm_inference",
                   "forward-only", "requires grad");
  {
    autograd::NoGradGuard no_grad;  // then allowed, and equal to the plain conv with an identity BN
    EXPECT_TRUE(all_close(conv3d_batch_norm_inference(x, wp, {}, ones, zeros, zeros, ones, 0), conv3d(x, w), 1e-6, 1e-6));
  }
  EXPECT_THROW_MSG(conv3d_batch_norm_inference(x, w, {}, ones, zeros, Tensor::zeros({7}, DType::kFloat32), ones, 1e-5),
                   "conv3d_batch_norm_inference", "running_mean", "[8]", "[7]");
  EXPECT_THROW_MSG(conv3d_batch_norm_inference(x, w, {}, ones, zeros, zeros, Tensor::full({8}, -1.0, DType::kFloat32),
                                               1e-5),
                   "conv3d_batch_norm_inference", "running_var[0]", "not positive");
  EXPECT_THROW_MSG(conv3d_batch_norm_inference(x, w, {}, ones, zeros, zeros, ones.to(DType::kFloat64), 1e-5),
                   "conv3d_batch_norm_inference", "running_var", "float64");
  EXPECT_THROW_MSG(conv3d_batch_norm_inference(x, w, {}, ones, zeros, zeros, ones, 1e-5, {},
                                               randn({1, 8, 2, 4, 3}, 3, DType::kFloat32)),
                   "conv3d_batch_norm_inference", "residual", "[1, 8, 2, 4, 4]", "[1, 8, 2, 4, 3]");
  EXPECT_THROW_MSG(conv3d_batch_norm_inference(x, w, {}, ones, zeros, zeros, ones, 1e-5, {},
                                               randn({1, 8, 2, 4, 4}, 3, DType::kFloat64)),
                   "conv3d_batch_norm_inference", "residual", "float64");
}

// Note [concat in place] (ops/conv3d.cpp): conv3d_batch_norm_inference_into writes the
// conv into a channel range of a wider tensor, the same values as the op's own output bit
// for bit (and the naive loops' within rounding), and leaves every other channel as it
// was: Winograd (3x1x1), row GEMM (3x1x1 without Winograd, 1x1x1), which store at the
// range's sample stride, and the direct-plane and im2col convs, which go through a buffer;
// one and three samples, float32 and float64.
TEST(Conv3d, BatchNormInferenceIntoChannelRanges) {
  struct Case {
    const char* name;
    std::int64_t C, O, groups;
    std::array<std::int64_t, 3> kernel;
    Conv3dOptions opts;
    bool winograd;
  };
  const Case cases[] = {
      {"3x1x1 winograd", 16, 16, 1, {3, 1, 1}, opt({1, 1, 1}, {1, 0, 0}, {1, 1, 1}, 1), true},
      {"3x1x1 rows", 16, 24, 1, {3, 1, 1}, opt({1, 1, 1}, {1, 0, 0}, {1, 1, 1}, 1), false},
      {"1x1x1 rows", 16, 8, 1, {1, 1, 1}, opt({1, 1, 1}, {0, 0, 0}, {1, 1, 1}, 1), true},
      {"1x3x3 gw8 stride 2", 16, 16, 2, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 2), true},
      {"1x3x3 im2col", 8, 8, 1, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 1), true},
  };
  autograd::NoGradGuard no_grad;
  std::uint64_t seed = 300;
  for (const Case& c : cases)
    for (std::int64_t N : {1, 3})
      for (DType dt : {DType::kFloat32, DType::kFloat64}) {
        SCOPED_TRACE(std::string(c.name) + ", N " + std::to_string(N) + (dt == DType::kFloat32 ? ", float32" : ", float64"));
        cpu::set_winograd_temporal(c.winograd, 1);
        const Tensor x = randn({N, c.C, 6, 9, 8}, seed++, dt);
        const Tensor w = randn({c.O, c.C / c.groups, c.kernel[0], c.kernel[1], c.kernel[2]}, seed++, dt);
        const Tensor gamma = randn({c.O}, seed++, dt), beta = randn({c.O}, seed++, dt);
        const Tensor mean = randn({c.O}, seed++, dt), var = Tensor::full({c.O}, 0.8, dt);
        Conv3dOptions o = c.opts;
        o.relu = true;
        const Tensor own = conv3d_batch_norm_inference(x, w, {}, gamma, beta, mean, var, 1e-3, o);
        const Tensor expect = relu(batch_norm(conv3d_reference(x, w, {}, c.opts), gamma.to(DType::kFloat64),
                                              beta.to(DType::kFloat64), mean.to(DType::kFloat64),
                                              var.to(DType::kFloat64), {.training = false, .eps = 1e-3}));
        const double tol = dt == DType::kFloat32 ? 1e-4 : 1e-10;
        ASSERT_TRUE(all_close(own, expect, tol, tol));
        // Channels [2, 2 + O) of 2 + O + 3, the rest a sentinel that must stay.
        const Shape& ys = own.shape();
        const std::int64_t wide = c.O + 5;
        Tensor into = Tensor::full({N, wide, ys[2], ys[3], ys[4]}, 7.0, dt);
        const Tensor range = conv3d_batch_norm_inference_into(into, 2, x, w, {}, gamma, beta, mean, var, 1e-3, o);
        EXPECT_EQ(range.shape(), own.shape());
        EXPECT_TRUE(all_close(into.narrow(1, 2, c.O).contiguous(), own, 0, 0));
        EXPECT_TRUE(all_close(range.contiguous(), own, 0, 0));
        EXPECT_TRUE(all_close(into.narrow(1, 0, 2).contiguous(), Tensor::full({N, 2, ys[2], ys[3], ys[4]}, 7.0, dt), 0, 0));
        EXPECT_TRUE(all_close(into.narrow(1, 2 + c.O, 3).contiguous(),
                              Tensor::full({N, 3, ys[2], ys[3], ys[4]}, 7.0, dt), 0, 0));
      }
  cpu::set_winograd_temporal(true);
}

TEST(Conv3d, BatchNormInferenceIntoRefusesBadOutputs) {
  Tensor x = randn({2, 8, 2, 4, 4}, 1, DType::kFloat32), w = randn({8, 8, 1, 1, 1}, 2, DType::kFloat32);
  Tensor ones = Tensor::full({8}, 1.0, DType::kFloat32), zeros = Tensor::zeros({8}, DType::kFloat32);
  auto into = [&](const Tensor& out, std::int64_t channel) {
    return conv3d_batch_norm_inference_into(out, channel, x, w, {}, ones, zeros, zeros, ones, 1e-5);
  };
  autograd::NoGradGuard no_grad;
  EXPECT_THROW_MSG(into(Tensor::zeros({2, 16, 2, 4, 3}, DType::kFloat32), 0), "conv3d_batch_norm_inference_into",
                   "(2, C, 2, 4, 4)", "[2, 16, 2, 4, 3]");
  EXPECT_THROW_MSG(into(Tensor::zeros({2, 12, 2, 4, 4}, DType::kFloat32), 6), "conv3d_batch_norm_inference_into",
                   "[6, 14)", "12");
  EXPECT_THROW_MSG(into(Tensor::zeros({2, 12, 2, 4, 4}, DType::kFloat32), -1), "conv3d_batch_norm_inference_into",
                   "[-1, 7)");
  EXPECT_THROW_MSG(into(Tensor::zeros({2, 16, 2, 4, 4}, DType::kFloat64), 0), "conv3d_batch_norm_inference_into",
                   "output", "float64");
  EXPECT_THROW_MSG(into(Tensor::zeros({2, 16, 2, 4, 8}, DType::kFloat32).narrow(4, 0, 4), 0),
                   "conv3d_batch_norm_inference_into", "contiguous");
  EXPECT_THROW_MSG(conv3d_batch_norm_inference_into(x, 0, x, w, {}, ones, zeros, zeros, ones, 1e-5),
                   "conv3d_batch_norm_inference_into", "shares its storage", "input");
  EXPECT_THROW_MSG(into(Tensor(), 0), "conv3d_batch_norm_inference_into", "undefined");
}

}  // namespace
}  // namespace vidgrad
