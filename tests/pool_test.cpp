// avg_pool3d, max_pool3d, global_avg_pool3d: forward against reference loops in float32,
// gradients against finite differences in float64, and argument errors.
#include "test_util.h"

#include <limits>

namespace vidgrad {
namespace {

using testing::all_close;
using testing::param;
using testing::randn;

// Reference pooling following PyTorch's definition of windows and divisors.
Tensor pool_reference(const Tensor& x, const Pool3dOptions& o, bool is_max) {
  const Shape& s = x.shape();
  const auto st = o.stride.value_or(o.kernel);
  std::int64_t out[3], in[3] = {s[2], s[3], s[4]};
  for (int i = 0; i < 3; ++i) out[i] = (in[i] + 2 * o.padding[i] - o.kernel[i]) / st[i] + 1;
  const std::vector<double> v = x.to_vector<double>();
  std::vector<double> y;
  for (std::int64_t p = 0; p < s[0] * s[1]; ++p)
    for (std::int64_t a = 0; a < out[0]; ++a)
      for (std::int64_t b = 0; b < out[1]; ++b)
        for (std::int64_t c = 0; c < out[2]; ++c) {
          const std::int64_t o3[3] = {a, b, c};
          std::int64_t lo[3], hi[3], padded = 1, inside = 1;
          for (int i = 0; i < 3; ++i) {
            lo[i] = o3[i] * st[i] - o.padding[i];
            hi[i] = std::min(lo[i] + o.kernel[i], in[i] + o.padding[i]);
            padded *= hi[i] - lo[i];
            lo[i] = std::max<std::int64_t>(lo[i], 0);
            hi[i] = std::min(hi[i], in[i]);
            inside *= hi[i] - lo[i];
          }
          double acc = is_max ? -std::numeric_limits<double>::infinity() : 0.0;
          for (std::int64_t t = lo[0]; t < hi[0]; ++t)
            for (std::int64_t h = lo[1]; h < hi[1]; ++h)
              for (std::int64_t w = lo[2]; w < hi[2]; ++w) {
                const double e = v[((p * in[0] + t) * in[1] + h) * in[2] + w];
                acc = is_max ? std::max(acc, e) : acc + e;
              }
          y.push_back(is_max ? acc : acc / static_cast<double>(o.count_include_pad ? padded : inside));
        }
  return Tensor::from_vector(y, {s[0], s[1], out[0], out[1], out[2]});
}

struct PoolCase {
  const char* name;
  Shape input;
  Pool3dOptions opts;
};

std::ostream& operator<<(std::ostream& os, const PoolCase& c) { return os << c.name; }

class PoolShapes : public ::testing::TestWithParam<PoolCase> {};

TEST_P(PoolShapes, AvgForwardMatchesReference) {
  const auto& c = GetParam();
  Tensor x = randn(c.input, 1, DType::kFloat32);
  for (bool include : {true, false}) {
    Pool3dOptions o = c.opts;
    o.count_include_pad = include;
    EXPECT_TRUE(all_close(avg_pool3d(x, o), pool_reference(x, o, false), 1e-5, 1e-5)) << "count_include_pad=" << include;
  }
}

TEST_P(PoolShapes, MaxForwardMatchesReference) {
  const auto& c = GetParam();
  Tensor x = randn(c.input, 2, DType::kFloat32);
  EXPECT_TRUE(all_close(max_pool3d(x, c.opts), pool_reference(x, c.opts, true), 0, 0));
}

TEST_P(PoolShapes, AvgGradMatchesFiniteDifference) {
  for (bool include : {true, false}) {
    Pool3dOptions o = GetParam().opts;
    o.count_include_pad = include;
    EXPECT_GRADCHECK([o](const std::vector<Tensor>& t) { return avg_pool3d(t[0], o); }, {param(GetParam().input, 3)});
  }
}

TEST_P(PoolShapes, MaxGradMatchesFiniteDifference) {
  const Pool3dOptions o = GetParam().opts;
  EXPECT_GRADCHECK([o](const std::vector<Tensor>& t) { return max_pool3d(t[0], o); }, {param(GetParam().input, 4)});
}

INSTANTIATE_TEST_SUITE_P(
    Cases, PoolShapes,
    ::testing::Values(
        PoolCase{"Kernel2Default", {1, 2, 4, 4, 6}, {.kernel = {2, 2, 2}}},
        PoolCase{"SevShortcut1x3x3Stride2Pad1", {2, 3, 2, 7, 5}, {{1, 3, 3}, std::array<std::int64_t, 3>{1, 2, 2}, {0, 1, 1}}},
        PoolCase{"Kernel3Stride1Pad1", {1, 2, 3, 5, 4}, {{3, 3, 3}, std::array<std::int64_t, 3>{1, 1, 1}, {1, 1, 1}}},
        PoolCase{"OddSizesStride2", {1, 3, 5, 7, 9}, {{3, 2, 3}, std::array<std::int64_t, 3>{2, 2, 2}, {1, 1, 0}}},
        // The strided average pool sums each output row's window rows first, then that
        // row's kernel columns: long rows, an odd width, SEVNet's shortcut shape at 16 and
        // 28 columns, stride 3 with a kernel of 4.
        PoolCase{"WideRowsStride2OddWidth", {1, 2, 1, 3, 67}, {{1, 3, 3}, std::array<std::int64_t, 3>{1, 2, 2}, {0, 1, 1}}},
        PoolCase{"RowsOf16Stride2", {2, 2, 2, 4, 16}, {{1, 3, 3}, std::array<std::int64_t, 3>{1, 2, 2}, {0, 1, 1}}},
        PoolCase{"SevShortcutRowsOf28", {1, 2, 2, 6, 28}, {{1, 3, 3}, std::array<std::int64_t, 3>{1, 2, 2}, {0, 1, 1}}},
        PoolCase{"WideRowsStride3", {1, 1, 2, 2, 70}, {{1, 2, 4}, std::array<std::int64_t, 3>{1, 1, 3}, {0, 1, 2}}},
        // Rows of one vector or less in registers (Note [narrow shortcut pool]): SEVNet-G8's
        // 7x7 and 14x14 planes at 8x112, and a width of 8 (one float64 vector exactly).
        PoolCase{"NarrowShortcut7x7", {2, 3, 2, 7, 7}, {{1, 3, 3}, std::array<std::int64_t, 3>{1, 2, 2}, {0, 1, 1}}},
        PoolCase{"NarrowShortcut14x14", {1, 2, 2, 14, 14}, {{1, 3, 3}, std::array<std::int64_t, 3>{1, 2, 2}, {0, 1, 1}}},
        PoolCase{"NarrowShortcutWidth8", {1, 2, 1, 5, 8}, {{1, 3, 3}, std::array<std::int64_t, 3>{1, 2, 2}, {0, 1, 1}}}),
    [](const ::testing::TestParamInfo<PoolCase>& info) { return std::string(info.param.name); });

TEST(GlobalAvgPool, ForwardAndGrad) {
  Tensor x = randn({2, 3, 3, 5, 3}, 5, DType::kFloat32);
  EXPECT_TRUE(all_close(global_avg_pool3d(x), mean(x, {2, 3, 4}), 1e-6, 1e-5));
  EXPECT_EQ(global_avg_pool3d(x).shape(), (Shape{2, 3}));
  EXPECT_GRADCHECK([](const std::vector<Tensor>& t) { return global_avg_pool3d(t[0]); }, {param({2, 3, 2, 3, 3}, 6)});
}

TEST(Pool, BadArgumentsThrowWithValues) {
  Tensor x = Tensor::zeros({1, 2, 4, 4, 4});
  EXPECT_THROW_MSG(avg_pool3d(x, {.kernel = {2, 2, 2}, .padding = {0, 2, 0}}), "avg_pool3d", "half the kernel",
                   "(0, 2, 0)");
  EXPECT_THROW_MSG(max_pool3d(x, {.kernel = {5, 1, 1}}), "max_pool3d", "larger than the padded input");
  EXPECT_THROW_MSG(max_pool3d(x, {.kernel = {0, 1, 1}}), "max_pool3d", "kernel", "(0, 1, 1)");
  EXPECT_THROW_MSG(avg_pool3d(Tensor::zeros({2, 4, 4, 4}), {}), "avg_pool3d", "rank 5", "rank 4");
  EXPECT_THROW_MSG(global_avg_pool3d(Tensor::zeros({2, 4})), "global_avg_pool3d", "rank 5");
}

}  // namespace
}  // namespace vidgrad
