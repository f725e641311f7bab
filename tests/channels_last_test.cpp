// Channels-last (NDHWC) activations: the layout itself (strides, density, conversions both
// ways), elementwise ops keeping it, and the channels-last 1x1x1 conv (forward against a
// naive loop in float32, gradients against finite differences in float64 through the
// conversion, parity with the NCDHW kernels, statistics, accumulation, the fallbacks).
#include "test_util.h"
#include "conv3d_reference.h"

#include "vidgrad/core/layout.h"
#include "vidgrad/ops/cpu/channels_last.h"

namespace vidgrad {
namespace {

using testing::all_close;
using testing::conv3d_reference;
using testing::param;
using testing::randn;

TEST(ChannelsLast, StridesDensityAndEmpty) {
  EXPECT_EQ(channels_last_strides({2, 3, 4, 5, 6}), (Shape{4 * 5 * 6 * 3, 1, 5 * 6 * 3, 6 * 3, 3}));
  const Tensor t = empty_channels_last({2, 3, 4, 5, 6});
  EXPECT_TRUE(is_channels_last(t));
  EXPECT_FALSE(t.is_contiguous());
  EXPECT_TRUE(is_dense(t));
  EXPECT_EQ(t.shape(), (Shape{2, 3, 4, 5, 6}));
  EXPECT_FALSE(is_channels_last(Tensor::empty({2, 3, 4, 5, 6})));
  EXPECT_TRUE(is_dense(Tensor::empty({2, 3, 4, 5, 6})));
  EXPECT_TRUE(is_channels_last(Tensor::empty({2, 1, 4, 5, 6})));  // one channel: both layouts
  EXPECT_FALSE(is_channels_last(Tensor::empty({2, 3, 4})));
  EXPECT_FALSE(is_dense(Tensor::empty({4, 6}).narrow(1, 0, 3)));
  EXPECT_TRUE(is_dense(Tensor::empty({4, 6}).permute({1, 0})));
  EXPECT_THROW_MSG(empty_channels_last({2, 3}), "empty_channels_last", "[2, 3]");
  EXPECT_THROW_MSG(to_channels_last(Tensor::empty({2, 3})), "to_channels_last", "rank 5");
}

TEST(ChannelsLast, ConversionsKeepEveryValue) {
  // Odd sizes: partial 16 x 16 blocks and 64 x 64 tiles on both sides, several samples.
  for (const Shape& s : {Shape{2, 3, 5, 7, 9}, Shape{1, 70, 3, 9, 11}, Shape{3, 17, 1, 1, 1}}) {
    for (DType dt : {DType::kFloat32, DType::kFloat64}) {
      const Tensor x = randn(s, 7, dt);
      const Tensor cl = to_channels_last(x);
      EXPECT_TRUE(is_channels_last(cl));
      EXPECT_EQ(cl.to_vector<double>(), x.to_vector<double>()) << shape_str(s);
      const Tensor back = cl.contiguous();
      EXPECT_TRUE(back.is_contiguous());
      EXPECT_EQ(back.to_vector<double>(), x.to_vector<double>()) << shape_str(s);
      // The raw storage of a channels-last tensor is (N, T, H, W, C).
      const Tensor raw = make_view(cl, {s[0], s[2], s[3], s[4], s[1]}, contiguous_strides({s[0], s[2], s[3], s[4], s[1]}), 0);
      EXPECT_EQ(raw.to_vector<double>(), x.permute({0, 2, 3, 4, 1}).to_vector<double>()) << shape_str(s);
    }
  }
  const Tensor i = Tensor::from_vector(std::vector<std::int64_t>{1, 2, 3, 4, 5, 6}, {1, 2, 3, 1, 1});
  EXPECT_EQ(to_channels_last(i).to_vector<std::int64_t>(), i.to_vector<std::int64_t>());
  const Tensor cl = to_channels_last(randn({1, 4, 2, 2, 2}, 3));
  EXPECT_TRUE(to_channels_last(cl).is_same(cl));  // already channels-last: itself
}

TEST(ChannelsLast, ConversionGradientPassesThrough) {
  EXPECT_GRADCHECK([](const std::vector<Tensor>& in) { return mul(to_channels_last(in[0]), in[1]); },
                   (std::vector<Tensor>{param({2, 3, 2, 3, 4}, 1), param({2, 3, 2, 3, 4}, 2)}));
}

TEST(ChannelsLast, ElementwiseOpsKeepTheLayout) {
  const Tensor a = randn({2, 16, 3, 4, 5}, 1, DType::kFloat32), b = randn({2, 16, 3, 4, 5}, 2, DType::kFloat32);
  const Tensor ca = to_channels_last(a), cb = to_channels_last(b);
  for (const auto& [name, got, want] :
       {std::tuple<const char*, Tensor, Tensor>{"relu", relu(ca), relu(a)},
        {"add", add(ca, cb), add(a, b)},
        {"add_relu", add_relu(ca, cb), add_relu(a, b)},
        {"mul", mul(ca, cb), mul(a, b)},
        {"relu_grad", relu_grad(ca, cb), relu_grad(a, b)}}) {
    EXPECT_TRUE(is_channels_last(got)) << name;
    EXPECT_EQ(got.to_vector<float>(), want.to_vector<float>()) << name;
  }
  // Mixed layouts and broadcasting read through the strides; the output is NCDHW.
  const Tensor mixed = add(ca, b);
  EXPECT_TRUE(mixed.is_contiguous());
  EXPECT_EQ(mixed.to_vector<float>(), add(a, b).to_vector<float>());
  const Tensor s = randn({1, 16, 1, 1, 1}, 3, DType::kFloat32);
  EXPECT_EQ(mul(ca, s).to_vector<float>(), mul(a, s).to_vector<float>());
  // In-place accumulation between two channels-last tensors (the engine's gradient sums).
  Tensor acc = to_channels_last(a.clone());
  acc.add_(cb);
  EXPECT_EQ(acc.to_vector<float>(), add(a, b).to_vector<float>());
}

// A conv with a channels-last kernel: 1x1x1, or 3x1x1 with time padding 1 (kt 3).
struct ConvCase {
  const char* name;
  Shape input;  // (N, C, T, H, W)
  std::int64_t out_channels;
  std::int64_t kt = 1;
  bool gradcheck = true;  // false: too many weights for finite differences (float64 parity with NCDHW instead)
};

std::ostream& operator<<(std::ostream& os, const ConvCase& c) { return os << c.name; }

Shape wshape(const ConvCase& c) { return {c.out_channels, c.input[1], c.kt, 1, 1}; }
Conv3dOptions opts(const ConvCase& c) {
  Conv3dOptions o;
  o.padding = {c.kt / 2, 0, 0};
  return o;
}

class ChannelsLastConv : public ::testing::TestWithParam<ConvCase> {};

// 1x1x1: positions not a multiple of the 6-row tile nor of the 96-row chunk; output
// channels that leave 1 to 3 vectors after the blocks of 4, or none (the weight's blocks
// then transposed straight from it); one sample with one position;
// channels from 256 on, whose weight gradient packs its operands (Note [weight gradient
// packing]). 3x1x1: frames that leave a partial tile of 4 (or are one tile, or one frame);
// runs of rows that span samples, more than one run, and the shorter runs from 129
// channels on (Note [channels-last Winograd]).
const std::vector<ConvCase> kConvCases{
    ConvCase{"c16_o16", {2, 16, 3, 5, 7}, 16},
    ConvCase{"c32_o80", {1, 32, 2, 9, 11}, 80},
    ConvCase{"c64_o48", {3, 64, 1, 6, 7}, 48},
    ConvCase{"c48_o96", {2, 48, 4, 4, 4}, 96},
    ConvCase{"c32_o128", {2, 32, 3, 4, 5}, 128},
    ConvCase{"one_position", {1, 16, 1, 1, 1}, 32},
    ConvCase{"c256_o272", {2, 256, 2, 9, 9}, 272, 1, false},
    ConvCase{"t3_c16_o16", {2, 16, 5, 3, 4}, 16, 3},
    ConvCase{"t3_c32_o48", {1, 32, 9, 5, 7}, 48, 3, false},
    ConvCase{"t3_c160_o64", {2, 160, 4, 3, 3}, 64, 3, false},
    ConvCase{"t3_c64_o64_rows", {3, 64, 2, 10, 10}, 64, 3, false},
    ConvCase{"t3_one_frame", {2, 16, 1, 4, 4}, 32, 3}};

// The cases small enough for finite differences.
std::vector<ConvCase> gradcheck_cases() {
  std::vector<ConvCase> out;
  for (const ConvCase& c : kConvCases)
    if (c.gradcheck) out.push_back(c);
  return out;
}

auto case_name = [](const auto& info) { return std::string(info.param.name); };
INSTANTIATE_TEST_SUITE_P(Shapes, ChannelsLastConv, ::testing::ValuesIn(kConvCases), case_name);

// Float64 finite differences, on the cases with few enough weights.
class ChannelsLastConvGrad : public ::testing::TestWithParam<ConvCase> {};
INSTANTIATE_TEST_SUITE_P(Shapes, ChannelsLastConvGrad, ::testing::ValuesIn(gradcheck_cases()), case_name);

TEST_P(ChannelsLastConv, ForwardMatchesNaiveLoopInFloat32) {
  const auto& c = GetParam();
  const Tensor x = randn(c.input, 1, DType::kFloat32), w = randn(wshape(c), 2, DType::kFloat32);
  const Tensor b = randn({c.out_channels}, 3, DType::kFloat32);
  for (bool relu_out : {false, true}) {
    Conv3dOptions o = opts(c);
    o.relu = relu_out;
    const Tensor y = conv3d(to_channels_last(x), w, b, o);
    EXPECT_TRUE(is_channels_last(y) || y.numel() == c.out_channels);
    Tensor expect = conv3d_reference(x, w, b, opts(c));
    if (relu_out) expect = relu(expect);
    EXPECT_TRUE(all_close(y, expect, 1e-4, 1e-4)) << "relu " << relu_out;
    EXPECT_TRUE(all_close(y, conv3d(x, w, b, o), 1e-4, 1e-4)) << "against NCDHW, relu " << relu_out;
  }
}

TEST_P(ChannelsLastConvGrad, GradientsMatchFiniteDifferencesInFloat64) {
  const auto& c = GetParam();
  // Double vectors hold half the lanes, so every case's channels are whole vectors too;
  // smaller spatial sizes keep the check quick.
  const Shape in{c.input[0], c.input[1], c.kt == 3 ? c.input[2] : 1, 2, 3};
  for (bool relu_out : {false, true}) {
    Conv3dOptions o = opts(c);
    o.relu = relu_out;
    EXPECT_GRADCHECK(
        [o](const std::vector<Tensor>& t) {
          const Tensor y = conv3d(to_channels_last(t[0]), t[1], t[2], o);
          EXPECT_TRUE(is_channels_last(y) || y.numel() == t[1].size(0));
          return y;
        },
        (std::vector<Tensor>{param(in, 4), param(wshape(c), 5), param({c.out_channels}, 6)}));
  }
}

TEST_P(ChannelsLastConv, BackwardMatchesTheNcdhwKernels) {
  const auto& c = GetParam();
  for (DType dt : {DType::kFloat32, DType::kFloat64}) {
    const double tol = dt == DType::kFloat32 ? 1e-4 : 1e-10;
    Tensor x = randn(c.input, 7, dt), w = randn(wshape(c), 8, dt);
    Tensor b = randn({c.out_channels}, 9, dt);
    const Tensor gy = randn({c.input[0], c.out_channels, c.input[2], c.input[3], c.input[4]}, 10, dt);
    std::vector<Tensor> grads[2];
    for (int layout = 0; layout < 2; ++layout) {
      Tensor xl = x.detach(), wl = w.detach(), bl = b.detach();
      xl.set_requires_grad(true);
      wl.set_requires_grad(true);
      bl.set_requires_grad(true);
      Conv3dOptions o = opts(c);
      o.relu = true;
      const Tensor y = conv3d(layout ? to_channels_last(xl) : xl, wl, bl, o);
      y.backward(layout ? to_channels_last(gy) : gy);
      grads[layout] = {xl.grad(), wl.grad(), bl.grad()};
    }
    for (int i = 0; i < 3; ++i)
      EXPECT_TRUE(all_close(grads[1][i], grads[0][i], tol, tol)) << "gradient " << i << ", " << dtype_name(dt);
  }
}

TEST_P(ChannelsLastConv, StatisticsMatchTheNcdhwKernels) {
  const auto& c = GetParam();
  // Values far from zero: the statistics are taken about each channel's first value.
  const Tensor x = add(randn(c.input, 11, DType::kFloat32), Tensor::full({}, 100.0));
  const Tensor w = randn(wshape(c), 12, DType::kFloat32);
  ChannelStatistics cl, ref;
  conv3d(to_channels_last(x), w, {}, opts(c), &cl);
  conv3d(x, w, {}, opts(c), &ref);
  ASSERT_EQ(cl.mean.size(), static_cast<std::size_t>(c.out_channels));
  for (std::int64_t o = 0; o < c.out_channels; ++o) {
    EXPECT_NEAR(cl.mean[o], ref.mean[o], 1e-3 * (1 + std::abs(ref.mean[o]))) << o;
    EXPECT_NEAR(cl.var[o], ref.var[o], 1e-3 * (1 + ref.var[o])) << o;
  }
}

TEST(ChannelsLast, InputGradientAccumulatesAcrossBranches) {
  // x feeds two channels-last convs and a relu: the engine's pending gradient is
  // channels-last, and the second conv adds into it.
  for (DType dt : {DType::kFloat32, DType::kFloat64}) {
    Tensor x = randn({2, 16, 2, 3, 5}, 1, dt), w1 = randn({32, 16, 1, 1, 1}, 2, dt), w2 = randn({32, 16, 1, 1, 1}, 3, dt);
    std::vector<double> gx[2];
    for (int layout = 0; layout < 2; ++layout) {
      Tensor leaf = x.detach();
      leaf.set_requires_grad(true);
      const Tensor xl = layout ? to_channels_last(leaf) : leaf;
      const Tensor y = add(conv3d(xl, w1, {}, {}), conv3d(xl, w2, {}, {}));
      sum(mul(y, y)).backward();
      gx[layout] = leaf.grad().to_vector<double>();
    }
    ASSERT_EQ(gx[0].size(), gx[1].size());
    for (std::size_t i = 0; i < gx[0].size(); ++i) EXPECT_NEAR(gx[1][i], gx[0][i], 1e-3 * (1 + std::abs(gx[0][i])));
  }
  EXPECT_GRADCHECK(
      [](const std::vector<Tensor>& t) {
        const Tensor xl = to_channels_last(t[0]);
        return add(conv3d(xl, t[1], {}, {}), relu(xl));  // O == C: the shapes match
      },
      (std::vector<Tensor>{param({1, 8, 1, 2, 3}, 1), param({8, 8, 1, 1, 1}, 2)}));
}

TEST(ChannelsLast, OtherConvsFallBackToNcdhw) {
  // A grouped 1x3x3, a 3x1x1 without padding, a strided 1x1x1 and one with channels that
  // are not whole vectors read a channels-last input through contiguous(): the same values
  // as from NCDHW, in NCDHW.
  const Tensor x = randn({2, 16, 4, 5, 6}, 1, DType::kFloat32);
  const Tensor wg = randn({16, 8, 1, 3, 3}, 2, DType::kFloat32), w3 = randn({16, 16, 3, 1, 1}, 3, DType::kFloat32);
  const Tensor w1 = randn({16, 16, 1, 1, 1}, 4, DType::kFloat32);
  Conv3dOptions grouped;
  grouped.padding = {0, 1, 1};
  grouped.groups = 2;
  Conv3dOptions strided;
  strided.stride = {1, 2, 2};
  for (const auto& [w, o] : {std::pair{wg, grouped}, std::pair{w3, Conv3dOptions{}}, std::pair{w1, strided}}) {
    const Tensor y = conv3d(to_channels_last(x), w, {}, o);
    EXPECT_TRUE(y.is_contiguous());
    EXPECT_TRUE(all_close(y, conv3d(x, w, {}, o), 1e-5, 1e-5));
  }
  const Tensor x3 = randn({2, 3, 4, 5, 6}, 5, DType::kFloat32), w13 = randn({16, 3, 1, 1, 1}, 6, DType::kFloat32);
  EXPECT_TRUE(all_close(conv3d(to_channels_last(x3), w13, {}, {}), conv3d_reference(x3, w13, {}, {}), 1e-4, 1e-4));
}

// ---- batch norm ----

// The batch norm written out: per channel mean and biased variance in double, then
// (x - mean) / sqrt(var + eps) * w + b (+ residual), then the ReLU.
Tensor naive_batch_norm(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& residual, bool relu) {
  const std::int64_t N = x.shape()[0], C = x.shape()[1], S = x.numel() / (N * C);
  std::vector<double> v = x.to_vector<double>();
  const std::vector<double> wv = w.to_vector<double>(), bv = b.to_vector<double>();
  const std::vector<double> rv = residual.defined() ? residual.to_vector<double>() : std::vector<double>(v.size(), 0.0);
  for (std::int64_t c = 0; c < C; ++c) {
    double mean = 0, var = 0;
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < S; ++i) mean += v[(n * C + c) * S + i];
    mean /= static_cast<double>(N * S);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < S; ++i) var += std::pow(v[(n * C + c) * S + i] - mean, 2);
    var /= static_cast<double>(N * S);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < S; ++i) {
        const std::size_t at = static_cast<std::size_t>((n * C + c) * S + i);
        const double e = (v[at] - mean) / std::sqrt(var + 1e-5) * wv[c] + bv[c] + rv[at];
        v[at] = relu && e < 0 ? 0.0 : e;
      }
  }
  return Tensor::from_vector(v, x.shape());
}

TEST(ChannelsLastBatchNorm, TrainingForwardMatchesNaiveLoopAndNcdhw) {
  // Values far from zero (the statistics are shifted sums); 48 channels: three vectors.
  const Shape shape{3, 48, 2, 5, 7};
  const Tensor x = add(mul(randn(shape, 1, DType::kFloat32), 3.0), Tensor::scalar(50.0));
  const Tensor w = randn({48}, 2, DType::kFloat32), b = randn({48}, 3, DType::kFloat32);
  const Tensor r = randn(shape, 4, DType::kFloat32);
  for (bool relu_out : {false, true}) {
    Tensor rm_cl = Tensor::zeros({48}), rv_cl = Tensor::ones({48}), rm = Tensor::zeros({48}), rv = Tensor::ones({48});
    const BatchNormOptions o{.training = true, .relu = relu_out};
    const Tensor y = batch_norm(to_channels_last(x), w, b, rm_cl, rv_cl, o);
    EXPECT_TRUE(is_channels_last(y));
    EXPECT_TRUE(all_close(y, naive_batch_norm(x, w, b, {}, relu_out), 1e-4, 1e-4)) << "relu " << relu_out;
    EXPECT_TRUE(all_close(y, batch_norm(x, w, b, rm, rv, o), 1e-5, 1e-5)) << "relu " << relu_out;
    EXPECT_TRUE(all_close(rm_cl, rm, 1e-5, 1e-6));
    EXPECT_TRUE(all_close(rv_cl, rv, 1e-5, 1e-6));
  }
  // The residual join, the residual in either layout.
  for (const Tensor& res : {to_channels_last(r), r}) {
    const Tensor y = batch_norm_add(to_channels_last(x), w, b, {}, {}, res, {.training = true, .relu = true});
    EXPECT_TRUE(is_channels_last(y));
    EXPECT_TRUE(all_close(y, naive_batch_norm(x, w, b, r, true), 1e-4, 1e-4));
  }
  // Statistics given by the conv that wrote x, and evaluation with running statistics.
  const Tensor w1 = randn({48, 48, 1, 1, 1}, 5, DType::kFloat32);
  ChannelStatistics st;
  const Tensor h = conv3d(to_channels_last(x), w1, {}, {}, &st);
  EXPECT_TRUE(all_close(batch_norm(h, w, b, {}, {}, {.training = true}, &st),
                        naive_batch_norm(h.contiguous(), w, b, {}, false), 1e-3, 1e-3));
  const Tensor rm = randn({48}, 6, DType::kFloat32), rv = add(mul(rm, rm), Tensor::scalar(0.5));
  EXPECT_TRUE(all_close(batch_norm(to_channels_last(x), w, b, rm, rv, {.training = false, .relu = true}),
                        batch_norm(x, w, b, rm, rv, {.training = false, .relu = true}), 1e-5, 1e-5));
}

TEST(ChannelsLastBatchNorm, GradientsMatchFiniteDifferencesInFloat64) {
  const Shape shape{2, 16, 1, 2, 3};  // 16 channels: two vectors of double
  for (bool training : {true, false}) {
    for (bool relu_out : {false, true}) {
      const BatchNormOptions o{.training = training, .relu = relu_out};
      auto f = [o](const std::vector<Tensor>& t) {
        const Tensor rm = Tensor::zeros({16}, DType::kFloat64), rv = Tensor::ones({16}, DType::kFloat64);
        const Tensor y = batch_norm(to_channels_last(t[0]), t[1], t[2], o.training ? Tensor() : rm,
                                    o.training ? Tensor() : rv, o);
        EXPECT_TRUE(is_channels_last(y));
        return y;
      };
      EXPECT_GRADCHECK(f, (std::vector<Tensor>{param(shape, 1), param({16}, 2), param({16}, 3)}));
    }
  }
  auto join = [](const std::vector<Tensor>& t) {
    return batch_norm_add(to_channels_last(t[0]), t[1], t[2], {}, {}, to_channels_last(t[3]),
                          {.training = true, .relu = true});
  };
  EXPECT_GRADCHECK(join, (std::vector<Tensor>{param(shape, 4), param({16}, 5), param({16}, 6), param(shape, 7)}));
}

TEST(ChannelsLastBatchNorm, BackwardMatchesTheNcdhwKernels) {
  const Shape shape{2, 32, 3, 6, 5};
  for (DType dt : {DType::kFloat32, DType::kFloat64}) {
    const double tol = dt == DType::kFloat32 ? 1e-4 : 1e-10;
    const Tensor x = randn(shape, 1, dt), w0 = randn({32}, 2, dt), b0 = randn({32}, 3, dt), r0 = randn(shape, 4, dt);
    const Tensor gy = randn(shape, 5, dt);
    for (int kind = 0; kind < 3; ++kind) {  // plain, with the ReLU, the residual join
      std::vector<Tensor> grads[2];
      for (int layout = 0; layout < 2; ++layout) {
        Tensor xl = x.detach(), w = w0.detach(), b = b0.detach(), r = r0.detach();
        for (Tensor* t : {&xl, &w, &b, &r}) t->set_requires_grad(true);
        auto cl = [&](const Tensor& t) { return layout ? to_channels_last(t) : t; };
        const Tensor y = kind == 2 ? batch_norm_add(cl(xl), w, b, {}, {}, cl(r), {.training = true, .relu = true})
                                   : batch_norm(cl(xl), w, b, {}, {}, {.training = true, .relu = kind == 1});
        EXPECT_EQ(is_channels_last(y), layout == 1);
        y.backward(cl(gy));
        grads[layout] = {xl.grad(), w.grad(), b.grad()};
        if (kind == 2) grads[layout].push_back(r.grad());
      }
      for (std::size_t i = 0; i < grads[0].size(); ++i)
        EXPECT_TRUE(all_close(grads[1][i], grads[0][i], tol, tol)) << "kind " << kind << ", gradient " << i << ", "
                                                                   << dtype_name(dt);
    }
  }
}

TEST(ChannelsLastBatchNorm, ChannelsThatAreNotWholeVectorsFallBack) {
  const Tensor x = randn({2, 3, 2, 3, 4}, 1, DType::kFloat32), w = randn({3}, 2, DType::kFloat32),
               b = randn({3}, 3, DType::kFloat32);
  EXPECT_TRUE(all_close(batch_norm(to_channels_last(x), w, b, {}, {}, {.training = true}),
                        naive_batch_norm(x, w, b, {}, false), 1e-4, 1e-4));
}

}  // namespace
}  // namespace vidgrad
