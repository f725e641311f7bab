// relu, sigmoid, broadcasting add/sub/mul/add_relu, sum and mean: forward against reference loops
// in float32, gradients against finite differences in float64.
#include "test_util.h"

namespace vidgrad {
namespace {

using testing::all_close;
using testing::param;
using testing::randn;

// Reference broadcast: index each operand by the output's multi-index.
std::vector<double> broadcast_ref(const Tensor& a, const Tensor& b, const Shape& out, double (*f)(double, double)) {
  const std::vector<double> av = a.to_vector<double>(), bv = b.to_vector<double>();
  const std::int64_t n = shape_numel(out);
  std::vector<double> r(n);
  auto index = [&](const Shape& s, std::int64_t flat) {
    std::int64_t off = 0, mul = 1;
    for (int d = static_cast<int>(out.size()) - 1; d >= 0; --d) {
      const std::int64_t i = flat % out[d];
      flat /= out[d];
      const int sd = d - static_cast<int>(out.size() - s.size());
      if (sd >= 0) {
        off += (s[sd] == 1 ? 0 : i) * mul;
        mul *= s[sd];
      }
    }
    return off;
  };
  for (std::int64_t i = 0; i < n; ++i) r[i] = f(av[index(a.shape(), i)], bv[index(b.shape(), i)]);
  return r;
}

struct BroadcastCase {
  Shape a, b;
};

class Broadcast : public ::testing::TestWithParam<BroadcastCase> {};

TEST_P(Broadcast, ForwardMatchesReferenceLoop) {
  const auto& c = GetParam();
  Tensor a = randn(c.a, 1, DType::kFloat32), b = randn(c.b, 2, DType::kFloat32);
  const Shape out = broadcast_shapes(c.a, c.b, "test");
  const auto check = [&](const Tensor& got, double (*f)(double, double)) {
    EXPECT_TRUE(all_close(got, Tensor::from_vector(broadcast_ref(a, b, out, f), out).to(DType::kFloat32), 1e-6, 1e-6));
  };
  check(add(a, b), [](double x, double y) { return x + y; });
  check(sub(a, b), [](double x, double y) { return x - y; });
  check(mul(a, b), [](double x, double y) { return x * y; });
  check(add_relu(a, b), [](double x, double y) { return std::max(x + y, 0.0); });
}

TEST_P(Broadcast, GradMatchesFiniteDifference) {
  const auto& c = GetParam();
  const std::vector<Tensor> in{param(c.a, 3), param(c.b, 4)};
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return add(x[0], x[1]); }, in);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return sub(x[0], x[1]); }, in);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return mul(x[0], x[1]); }, in);
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return add_relu(x[0], x[1]); }, in);
}

INSTANTIATE_TEST_SUITE_P(Shapes, Broadcast,
                         ::testing::Values(BroadcastCase{{2, 3, 4}, {2, 3, 4}},
                                           BroadcastCase{{2, 4, 3, 3, 2}, {2, 4, 1, 1, 1}},  // squeeze-excitation
                                           BroadcastCase{{3, 1, 5}, {4, 1}},
                                           BroadcastCase{{5}, {}},
                                           BroadcastCase{{1, 3}, {2, 1}}));

TEST(Elementwise, ReluAndSigmoidMatchReference) {
  Tensor x = randn({3, 5, 7}, 5, DType::kFloat32);
  std::vector<double> r, s;
  for (double v : x.to_vector<double>()) {
    r.push_back(v > 0 ? v : 0);
    s.push_back(1.0 / (1.0 + std::exp(-v)));
  }
  EXPECT_TRUE(all_close(relu(x), Tensor::from_vector(r, x.shape()), 0, 0));
  EXPECT_TRUE(all_close(sigmoid(x), Tensor::from_vector(s, x.shape()), 1e-6, 1e-6));
}

TEST(Elementwise, ReluGradPassesWhereTheOutputIsPositive) {
  const Tensor g = Tensor::from_vector(std::vector<double>{1, 2, 3, 4}, {4});
  const Tensor y = Tensor::from_vector(std::vector<double>{0.5, 0, -1, 2}, {4});
  EXPECT_EQ(relu_grad(g, y).to_vector<double>(), (std::vector<double>{1, 0, 0, 4}));
  EXPECT_THROW_MSG(relu_grad(g, Tensor::zeros({3}, DType::kFloat64)), "relu_grad", "[4]", "[3]");
}

TEST(Elementwise, ReluGradMatchesFiniteDifference) {
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return relu(x[0]); }, {param({2, 3, 3, 5, 3}, 6)});
}

TEST(Elementwise, SigmoidGradMatchesFiniteDifference) {
  EXPECT_GRADCHECK([](const std::vector<Tensor>& x) { return sigmoid(x[0]); }, {param({2, 3, 3, 5, 3}, 7)});
}

TEST(Elementwise, BadInputsThrow) {
  Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({4});
  EXPECT_THROW_MSG(add(a, b), "add", "[2, 3]", "[4]", "cannot be broadcast");
  EXPECT_THROW_MSG(mul(a, Tensor::zeros({2, 3}, DType::kFloat64)), "mul", "float64", "float32");
  EXPECT_THROW_MSG(relu(Tensor::zeros({2}, DType::kInt64)), "relu", "int64");
}

// ---- reductions ----

struct ReduceCase {
  Shape shape;
  std::vector<std::int64_t> dims;
  bool keepdim;
};

class Reduce : public ::testing::TestWithParam<ReduceCase> {};

TEST_P(Reduce, SumAndMeanMatchReferenceLoop) {
  const auto& c = GetParam();
  Tensor x = randn(c.shape, 8, DType::kFloat32);
  const std::vector<double> xv = x.to_vector<double>();
  std::vector<bool> red(c.shape.size(), c.dims.empty());
  for (auto d : c.dims) red[d < 0 ? d + c.shape.size() : d] = true;
  Shape keep;
  std::int64_t count = 1;
  for (std::size_t d = 0; d < c.shape.size(); ++d) {
    keep.push_back(red[d] ? 1 : c.shape[d]);
    if (red[d]) count *= c.shape[d];
  }
  std::vector<double> ref(shape_numel(keep), 0.0);
  const Shape ks = contiguous_strides(keep);
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    std::int64_t rem = i, off = 0;
    for (int d = static_cast<int>(c.shape.size()) - 1; d >= 0; --d) {
      const std::int64_t idx = rem % c.shape[d];
      rem /= c.shape[d];
      if (!red[d]) off += idx * ks[d];
    }
    ref[off] += xv[i];
  }
  Tensor s = sum(x, c.dims, c.keepdim);
  Tensor expected = Tensor::from_vector(ref, keep).reshape(s.shape());
  EXPECT_TRUE(all_close(s, expected, 1e-5, 1e-5));
  Tensor m = mean(x, c.dims, c.keepdim);
  EXPECT_TRUE(all_close(mul(m, static_cast<double>(count)), expected.to(DType::kFloat32), 1e-5, 1e-5));
}

TEST_P(Reduce, GradMatchesFiniteDifference) {
  const auto& c = GetParam();
  EXPECT_GRADCHECK([&](const std::vector<Tensor>& x) { return sum(x[0], c.dims, c.keepdim); }, {param(c.shape, 9)});
  EXPECT_GRADCHECK([&](const std::vector<Tensor>& x) { return mean(x[0], c.dims, c.keepdim); }, {param(c.shape, 10)});
}

INSTANTIATE_TEST_SUITE_P(Dims, Reduce,
                         ::testing::Values(ReduceCase{{2, 3, 4}, {}, false}, ReduceCase{{2, 3, 4}, {1}, false},
                                           ReduceCase{{2, 3, 4}, {0, 2}, true},
                                           ReduceCase{{2, 3, 3, 5, 3}, {2, 3, 4}, true},
                                           ReduceCase{{2, 3, 3, 5, 3}, {-1}, false}));

TEST(Reduce, BadDimsThrow) {
  Tensor x = Tensor::zeros({2, 3});
  EXPECT_THROW_MSG(sum(x, {2}), "sum", "dim 2", "rank 2");
  EXPECT_THROW_MSG(mean(x, {1, -1}), "mean", "twice");
}

}  // namespace
}  // namespace vidgrad
