// linear, dropout, log_softmax, cross_entropy and temporal_shift: forward against
// reference loops, gradients against finite differences, reproducibility and errors.
#include "test_util.h"

namespace vidgrad {
namespace {

using testing::all_close;
using testing::param;
using testing::randn;

// ---- linear ----

TEST(Linear, ForwardMatchesReferenceLoop) {
  Tensor x = randn({4, 5}, 1, DType::kFloat32), w = randn({3, 5}, 2, DType::kFloat32), b = randn({3}, 3, DType::kFloat32);
  const auto xv = x.to_vector<double>(), wv = w.to_vector<double>(), bv = b.to_vector<double>();
  std::vector<double> ref(12);
  for (int m = 0; m < 4; ++m)
    for (int o = 0; o < 3; ++o) {
      ref[m * 3 + o] = bv[o];
      for (int k = 0; k < 5; ++k) ref[m * 3 + o] += xv[m * 5 + k] * wv[o * 5 + k];
    }
  EXPECT_TRUE(all_close(linear(x, w, b), Tensor::from_vector(ref, {4, 3}), 1e-5, 1e-5));
  EXPECT_EQ(linear(randn({2, 3, 5}, 4, DType::kFloat32), w).shape(), (Shape{2, 3, 3}));
}

TEST(Linear, GradMatchesFiniteDifference) {
  EXPECT_GRADCHECK([](const std::vector<Tensor>& t) { return linear(t[0], t[1], t[2]); },
                   (std::vector<Tensor>{param({4, 5}, 5), param({3, 5}, 6), param({3}, 7)}));
  EXPECT_GRADCHECK([](const std::vector<Tensor>& t) { return linear(t[0], t[1]); },
                   (std::vector<Tensor>{param({2, 3, 5}, 8), param({2, 5}, 9)}));
}

TEST(Linear, BadArgumentsThrow) {
  EXPECT_THROW_MSG(linear(Tensor::zeros({2, 4}), Tensor::zeros({3, 5})), "linear", "[2, 4]", "4 features", "expects 5");
  EXPECT_THROW_MSG(linear(Tensor::zeros({2, 5}), Tensor::zeros({3, 5}), Tensor::zeros({2})), "linear", "bias", "[3]");
}

// ---- dropout ----

TEST(Dropout, SameSeedSameMaskAndCorrectScale) {
  Tensor x = Tensor::ones({1000});
  Generator g1(3), g2(3);
  Tensor a = dropout(x, 0.25, true, g1), b = dropout(x, 0.25, true, g2);
  EXPECT_EQ(a.to_vector<float>(), b.to_vector<float>());
  int kept = 0;
  for (float v : a.to_vector<float>()) {
    EXPECT_TRUE(v == 0.0f || std::abs(v - 1.0f / 0.75f) < 1e-6f) << v;
    kept += v != 0.0f;
  }
  EXPECT_NEAR(kept, 750, 60);
}

TEST(Dropout, EvalIsIdentity) {
  Tensor x = randn({3, 4}, 1, DType::kFloat32);
  Generator g(1);
  EXPECT_TRUE(dropout(x, 0.5, false, g).is_same(x));
}

TEST(Dropout, GradMatchesFiniteDifference) {
  // The function re-seeds its generator so every evaluation draws the same mask.
  EXPECT_GRADCHECK(
      [](const std::vector<Tensor>& t) {
        Generator g(42);
        return dropout(t[0], 0.3, true, g);
      },
      {param({4, 6}, 10)});
}

TEST(Dropout, BadProbabilityThrows) {
  Generator g(1);
  EXPECT_THROW_MSG(dropout(Tensor::ones({2}), 1.5, true, g), "dropout", "1.5");
}

// ---- log_softmax and cross_entropy ----

TEST(LogSoftmax, ForwardMatchesReferenceOnEveryDim) {
  Tensor x = mul(randn({3, 4, 5}, 11, DType::kFloat32), 5.0);
  for (int d = 0; d < 3; ++d) {
    Tensor y = log_softmax(x, d);
    // exp(y) sums to one along d, and y differs from x by a constant along d.
    EXPECT_TRUE(all_close(sum(Tensor::from_vector([&] {
                                auto v = y.to_vector<double>();
                                for (double& e : v) e = std::exp(e);
                                return v;
                              }(), y.shape()), {d}),
                          Tensor::ones(sum(x, {d}).shape(), DType::kFloat64), 1e-5, 1e-5));
    Tensor diff = sub(x, y);
    EXPECT_TRUE(all_close(diff, broadcast_to(diff.narrow(d, 0, 1), diff.shape()), 1e-4, 1e-5));
  }
}

TEST(LogSoftmax, GradMatchesFiniteDifference) {
  for (int d : {0, 1, -1})
    EXPECT_GRADCHECK([d](const std::vector<Tensor>& t) { return log_softmax(t[0], d); }, {param({3, 4, 2}, 12)});
}

double reference_cross_entropy(const Tensor& logits, const std::vector<std::int64_t>& t, double eps) {
  const std::int64_t N = logits.shape()[0], K = logits.shape()[1];
  const auto v = logits.to_vector<double>();
  double total = 0;
  for (std::int64_t n = 0; n < N; ++n) {
    double mx = -1e300, s = 0;
    for (std::int64_t k = 0; k < K; ++k) mx = std::max(mx, v[n * K + k]);
    for (std::int64_t k = 0; k < K; ++k) s += std::exp(v[n * K + k] - mx);
    for (std::int64_t k = 0; k < K; ++k) {
      const double q = (k == t[n] ? 1 - eps : 0) + eps / K;
      total -= q * (v[n * K + k] - mx - std::log(s));
    }
  }
  return total / N;
}

TEST(CrossEntropy, ForwardMatchesReferenceWithAndWithoutSmoothing) {
  Tensor logits = mul(randn({5, 7}, 13, DType::kFloat32), 3.0);
  const std::vector<std::int64_t> t{0, 6, 3, 3, 1};
  for (double eps : {0.0, 0.1}) {
    EXPECT_NEAR(cross_entropy(logits, Tensor::from_vector(t, {5}), eps).item(), reference_cross_entropy(logits, t, eps),
                1e-5);
  }
}

TEST(CrossEntropy, GradMatchesFiniteDifference) {
  Tensor t = Tensor::from_vector<std::int64_t>({2, 0, 4}, {3});
  for (double eps : {0.0, 0.2})
    EXPECT_GRADCHECK([&](const std::vector<Tensor>& in) { return cross_entropy(in[0], t, eps); }, {param({3, 5}, 14)});
}

TEST(CrossEntropy, BadTargetsThrowWithValues) {
  Tensor logits = Tensor::zeros({2, 3});
  EXPECT_THROW_MSG(cross_entropy(logits, Tensor::from_vector<std::int64_t>({0, 3}, {2})), "cross_entropy", "target 3",
                   "row 1", "[0, 3)");
  EXPECT_THROW_MSG(cross_entropy(logits, Tensor::from_vector<std::int64_t>({0}, {1})), "cross_entropy", "1 targets");
  EXPECT_THROW_MSG(cross_entropy(logits, Tensor::zeros({2})), "cross_entropy", "int64", "float32");
}

// ---- temporal_shift ----

TEST(TemporalShift, ForwardMatchesReferenceLoop) {
  const std::int64_t N = 2, C = 8, T = 4, H = 3, W = 2, fold_div = 4, fold = C / fold_div;
  Tensor x = randn({N, C, T, H, W}, 15, DType::kFloat32);
  const auto v = x.to_vector<double>();
  std::vector<double> ref(v.size(), 0.0);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t t = 0; t < T; ++t) {
        const std::int64_t src = c < fold ? t + 1 : (c < 2 * fold ? t - 1 : t);
        for (std::int64_t i = 0; i < H * W; ++i)
          ref[((n * C + c) * T + t) * H * W + i] = (src >= 0 && src < T) ? v[((n * C + c) * T + src) * H * W + i] : 0.0;
      }
  EXPECT_TRUE(all_close(temporal_shift(x, fold_div), Tensor::from_vector(ref, x.shape()), 0, 0));
}

TEST(TemporalShift, GradMatchesFiniteDifference) {
  for (std::int64_t fold_div : {2, 3, 8})
    EXPECT_GRADCHECK([fold_div](const std::vector<Tensor>& t) { return temporal_shift(t[0], fold_div); },
                     {param({2, 8, 3, 2, 3}, 16)});
}

TEST(TemporalShift, BadArgumentsThrow) {
  EXPECT_THROW_MSG(temporal_shift(Tensor::zeros({1, 4, 3, 2, 2}), 8), "temporal_shift", "fold_div 8", "4 channels");
  EXPECT_THROW_MSG(temporal_shift(Tensor::zeros({1, 4, 3, 2, 2}), 1), "temporal_shift", "fold_div", "got 1");
  EXPECT_THROW_MSG(temporal_shift(Tensor::zeros({4, 3, 2, 2}), 2), "temporal_shift", "rank 5");
}

}  // namespace
}  // namespace vidgrad
