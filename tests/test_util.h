// Shared test helpers: random tensors, closeness checks, the gradcheck assertion and the
// check that an exception names the op and the offending values.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "vidgrad/ops/ops.h"

namespace vidgrad::testing {

inline Tensor randn(const Shape& shape, std::uint64_t seed, DType dtype = DType::kFloat64) {
  Generator gen(seed);
  return Tensor::randn(shape, gen, dtype);
}

// A float64 leaf with requires_grad, for gradcheck.
inline Tensor param(const Shape& shape, std::uint64_t seed) {
  Tensor t = randn(shape, seed);
  t.set_requires_grad(true);
  return t;
}

inline ::testing::AssertionResult all_close(const Tensor& actual, const Tensor& expected, double atol, double rtol) {
  if (actual.shape() != expected.shape())
    return ::testing::AssertionFailure() << "shape " << shape_str(actual.shape()) << " != expected "
                                         << shape_str(expected.shape());
  const std::vector<double> a = actual.to_vector<double>(), e = expected.to_vector<double>();
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!(std::abs(a[i] - e[i]) <= atol + rtol * std::abs(e[i])))
      return ::testing::AssertionFailure() << "element " << i << ": " << a[i] << " vs expected " << e[i]
                                           << " (shape " << shape_str(actual.shape()) << ")";
  }
  return ::testing::AssertionSuccess();
}

// A fixture with a fresh scratch folder per test, removed afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("vidgrad_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
            std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  void write(const std::string& name, const std::string& bytes) const {
    std::ofstream(path(name), std::ios::binary) << bytes;
  }
  std::filesystem::path dir_;
};

}  // namespace vidgrad::testing

#define EXPECT_GRADCHECK(fn, inputs)                                   \
  do {                                                                 \
    const auto vg_result_ = ::vidgrad::autograd::gradcheck(fn, inputs); \
    EXPECT_TRUE(vg_result_.ok) << vg_result_.message;                  \
  } while (0)

// The statement throws vidgrad::Error and the message contains every listed fragment.
#define EXPECT_THROW_MSG(stmt, ...)                                                           \
  do {                                                                                        \
    try {                                                                                     \
      stmt;                                                                                   \
      ADD_FAILURE() << "expected vidgrad::Error from: " #stmt;                                \
    } catch (const ::vidgrad::Error& vg_e_) {                                                 \
      for (const char* vg_frag_ : {__VA_ARGS__})                                              \
        EXPECT_THAT(std::string(vg_e_.what()), ::testing::HasSubstr(vg_frag_));               \
    }                                                                                         \
  } while (0)
