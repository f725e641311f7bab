// The 3x1x1 convs' Winograd F(4, 3) path (ops/cpu/conv3d_winograd.cpp and
// conv3d_winograd_grad.cpp): forward, batch-norm epilogue and gradients against the naive
// loop, finite differences and the direct GEMMs; the weight gradient's choice of path on one
// thread; and its scratch buffers, which keep what earlier calls left in them.
#include "test_util.h"
#include "conv3d_reference.h"

#include "vidgrad/autograd/grad_mode.h"
#include "vidgrad/core/parallel.h"
#include "vidgrad/ops/cpu/conv3d_cpu.h"

#include <cmath>
#include <limits>

namespace vidgrad {
namespace {

using testing::all_close;
using testing::conv3d_reference;
using testing::opt;
using testing::param;
using testing::randn;

// The Winograd path for 3x1x1 convs (Note [Winograd temporal conv]), reached on small
// shapes by lowering its channel threshold: F(4, 3) tiles with a partial last tile (5 and
// 9 frames), F(2, 3) below 4 frames, frame sizes whose (tile, position) columns cross the
// 48-column panels mid-tile (and the weight gradient's 512-column blocks: 16x20 frames),
// 176 channels, 171 in and out with 1026 columns (the weight gradient's 256-column blocks
// for many channels), output channels not a multiple of 8, output channels split between
// threads (one small sample with enough work to use them), more input than output
// channels and the reverse. For each: the float32 forward against the naive loop, conv +
// inference batch norm with a residual and ReLU against the composition, float64
// gradients against finite differences (input and weight gradients take the path too;
// not on the threaded case, too large for it), and float32 results (forward, both
// gradients) close to the direct row GEMMs' but not bitwise equal to them (so the path
// did run; the weight gradient stays direct where it would not pay,
// winograd_temporal_weight_grad_pays).
TEST(Conv3d, WinogradTemporalMatchesReference) {
  struct Case {
    Shape input;
    std::int64_t out;
    bool gradcheck = true;
    bool weight_grad = true;  // false: too few columns per channel, the direct weight gradient runs
  };
  const Conv3dOptions o = opt({1, 1, 1}, {1, 0, 0}, {1, 1, 1}, 1);
  for (const Case& c : {Case{{2, 3, 5, 3, 5}, 4}, Case{{1, 5, 9, 7, 7}, 11}, Case{{1, 4, 2, 5, 11}, 3},
                        Case{{1, 2, 3, 1, 50}, 24}, Case{{2, 9, 4, 2, 3}, 16, true, false},
                        Case{{1, 6, 8, 4, 13}, 6}, Case{{1, 2, 8, 16, 20}, 3}, Case{{1, 64, 4, 4, 5}, 40, false, false},
                        Case{{1, 176, 8, 16, 17}, 176, false, false}, Case{{1, 171, 4, 27, 38}, 171, false},
                        // 32 channels, 768 columns: on two threads, each thread's 384 columns
                        // in two blocks (of at most 368), the first prefetching the second's rows
                        Case{{1, 32, 8, 16, 24}, 32, false},
                        // 256 channels and more: on two threads or more, threads split the
                        // weight gradient's points (F(4, 3) and F(2, 3)), blocks of odd widths
                        Case{{3, 260, 5, 7, 9}, 256, false}, Case{{4, 256, 3, 8, 8}, 264, false}}) {
    SCOPED_TRACE(shape_str(c.input) + " -> " + std::to_string(c.out));
    const Shape ws{c.out, c.input[1], 3, 1, 1};
    // float32 rounding grows with the depth of each sum (values of unit variance sum to
    // about sqrt(depth)), and F(4, 3)'s transforms multiply it by a few: max error 1e-5 of
    // the output's RMS at 176 and 512 channels, 4-12 times the direct GEMM's.
    const auto tol = [](double depth) { return std::max(1e-4, 2e-5 * std::sqrt(depth)); };
    const double tol_y = tol(3.0 * c.input[1]), tol_gx = tol(3.0 * c.out);
    const double tol_gw = tol(static_cast<double>(c.input[0] * c.input[2] * c.input[3] * c.input[4]));
    cpu::set_winograd_temporal(true, 1);
    Tensor x = randn(c.input, 51, DType::kFloat32), w = randn(ws, 52, DType::kFloat32);
    Tensor b = randn({c.out}, 53, DType::kFloat32);
    Tensor y = conv3d(x, w, b, o);
    EXPECT_TRUE(all_close(y, conv3d_reference(x, w, b, o), tol_y, 1e-4));
    {
      autograd::NoGradGuard no_grad;
      Tensor gamma = randn({c.out}, 54, DType::kFloat32), beta = randn({c.out}, 55, DType::kFloat32);
      Tensor mean = randn({c.out}, 56, DType::kFloat32), var = Tensor::full({c.out}, 0.7, DType::kFloat32);
      Tensor residual = randn(y.shape(), 57, DType::kFloat32);
      double max_scale = 1;  // the batch norm scales the conv's rounding by |gamma| / sqrt(var + eps)
      for (double gm : gamma.to_vector<double>()) max_scale = std::max(max_scale, std::abs(gm) / std::sqrt(0.7 + 1e-3));
      Conv3dOptions fused = o;
      fused.relu = true;
      Tensor expect = relu(add(batch_norm(conv3d_reference(x, w, b, o), gamma.to(DType::kFloat64),
                                          beta.to(DType::kFloat64), mean.to(DType::kFloat64),
                                          var.to(DType::kFloat64), {.training = false, .eps = 1e-3}),
                               residual.to(DType::kFloat64)));
      EXPECT_TRUE(all_close(conv3d_batch_norm_inference(x, w, b, gamma, beta, mean, var, 1e-3, fused, residual),
                            expect, tol_y * max_scale, 1e-4));
    }
    if (c.gradcheck) {
      std::vector<Tensor> in{param(c.input, 58), param(ws, 59)};
      EXPECT_GRADCHECK([o](const std::vector<Tensor>& t) { return conv3d(t[0], t[1], {}, o); }, in);
    }
    Tensor gy = randn(y.shape(), 60, DType::kFloat32);
    auto grads = [&] {
      Tensor xg = x.clone(), wg = w.clone();
      xg.set_requires_grad(true);
      wg.set_requires_grad(true);
      conv3d(xg, wg, b, o).backward(gy);
      return std::pair{xg.grad(), wg.grad()};
    };
    const auto [gx, gw] = grads();
    cpu::set_winograd_temporal(false);
    Tensor direct = conv3d(x, w, b, o);
    const auto [gx_direct, gw_direct] = grads();
    cpu::set_winograd_temporal(true);
    EXPECT_TRUE(all_close(y, direct, tol_y, 1e-4));
    EXPECT_FALSE(all_close(y, direct, 0, 0)) << "the Winograd path did not run";
    EXPECT_TRUE(all_close(gx, gx_direct, tol_gx, 1e-4));
    EXPECT_FALSE(all_close(gx, gx_direct, 0, 0)) << "the Winograd input gradient did not run";
    EXPECT_TRUE(all_close(gw, gw_direct, tol_gw, 1e-4));
    EXPECT_EQ(all_close(gw, gw_direct, 0, 0), !c.weight_grad) << "the expected weight gradient path did not run";
  }
}

// Note [Winograd weight gradient on one thread] (conv3d_winograd_grad.cpp): with a team of
// one, the Winograd weight gradient runs from one column per twelve channels in and out
// (20 columns for 104 channels here, which two threads leave to the direct GEMM: the case
// above), and 3 columns for 104 stay direct. Each against the direct GEMM: close, and
// bitwise equal exactly where the direct path is expected; the float64 gradient of the
// first against finite differences on one thread too.
TEST(Conv3d, WinogradWeightGradientOnOneThread) {
  struct Case {
    Shape input;
    std::int64_t out;
    bool winograd;
  };
  const Conv3dOptions o = opt({1, 1, 1}, {1, 0, 0}, {1, 1, 1}, 1);
  const int saved = get_num_threads();
  set_num_threads(1);
  cpu::set_winograd_temporal(true, 1);
  for (const Case& c : {Case{{1, 64, 4, 4, 5}, 40, true}, Case{{1, 64, 2, 1, 3}, 40, false}}) {
    SCOPED_TRACE(shape_str(c.input) + " -> " + std::to_string(c.out));
    const Shape ws{c.out, c.input[1], 3, 1, 1};
    Tensor x = randn(c.input, 71, DType::kFloat32), w = randn(ws, 72, DType::kFloat32);
    Tensor gy = randn({c.input[0], c.out, c.input[2], c.input[3], c.input[4]}, 73, DType::kFloat32);
    auto weight_grad = [&] {
      Tensor wg = w.clone();
      wg.set_requires_grad(true);
      conv3d(x, wg, {}, o).backward(gy);
      return wg.grad();
    };
    const Tensor gw = weight_grad();
    cpu::set_winograd_temporal(false);
    const Tensor gw_direct = weight_grad();
    cpu::set_winograd_temporal(true, 1);
    const double depth = static_cast<double>(c.input[0] * c.input[2] * c.input[3] * c.input[4]);
    EXPECT_TRUE(all_close(gw, gw_direct, std::max(1e-4, 2e-5 * std::sqrt(depth)), 1e-4));
    EXPECT_EQ(all_close(gw, gw_direct, 0, 0), !c.winograd) << "the expected weight gradient path did not run";
    if (c.winograd) {
      std::vector<Tensor> in{param({1, 3, 4, 2, 2}, 74), param({2, 3, 3, 1, 1}, 75)};
      EXPECT_GRADCHECK([o](const std::vector<Tensor>& t) { return conv3d(t[0], t[1], {}, o); }, in);
    }
  }
  cpu::set_winograd_temporal(true);
  set_num_threads(saved);
}

// Note [uninitialised scratch] (core/aligned_vector.h): the Winograd filter transform's
// buffer, its packed panels, its weight gradient's scratch and row_gemm_nt's packs keep
// whatever a previous call left in them, including past their new size when they grow
// back within their capacity. A larger call on NaN operands fills them with NaN; then a
// smaller and a middle-sized call (3x1x1 through Winograd forward, input and weight
// gradients, a partial last tile and output channels not a multiple of 8; 1x1x1 with 20
// output rows, so that row_gemm_nt packs A) must match the same calls in float64 (their
// own buffers) and stay finite: a value read that the call did not write shows as NaN.
TEST(Conv3d, ScratchLeftByAnEarlierCallIsNeverRead) {
  cpu::set_winograd_temporal(true, 1);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  struct Kind {
    Conv3dOptions o;
    std::int64_t kt;
  };
  for (const Kind& k : {Kind{opt({1, 1, 1}, {1, 0, 0}, {1, 1, 1}, 1), 3}, Kind{Conv3dOptions{}, 1}}) {
    auto run = [&](const Shape& xs, std::int64_t out, DType dtype, bool poison) {
      const Shape ws{out, xs[1], k.kt, 1, 1};
      Tensor x = poison ? Tensor::full(xs, nan, dtype) : randn(xs, 61, dtype);
      Tensor w = poison ? Tensor::full(ws, nan, dtype) : randn(ws, 62, dtype);
      x.set_requires_grad(true);
      w.set_requires_grad(true);
      Tensor y = conv3d(x, w, {}, k.o);
      y.backward(poison ? Tensor::full(y.shape(), nan, dtype) : randn(y.shape(), 63, dtype));
      return std::vector<Tensor>{y, x.grad(), w.grad()};
    };
    run({1, 40, 8, 12, 12}, 44, DType::kFloat32, true);
    for (const auto& [xs, out] : {std::pair<Shape, std::int64_t>{{1, 16, 8, 12, 12}, 12}, {{1, 24, 5, 10, 13}, 20}}) {
      SCOPED_TRACE("kT " + std::to_string(k.kt) + ", " + shape_str(xs) + " -> " + std::to_string(out));
      const std::vector<Tensor> got = run(xs, out, DType::kFloat32, false);
      const std::vector<Tensor> want = run(xs, out, DType::kFloat64, false);
      const double depth[3] = {3.0 * static_cast<double>(xs[1]), 3.0 * static_cast<double>(out),
                               static_cast<double>(xs[2] * xs[3] * xs[4])};
      for (int i = 0; i < 3; ++i) {
        SCOPED_TRACE(i == 0 ? "forward" : i == 1 ? "input gradient" : "weight gradient");
        EXPECT_TRUE(all_close(got[i], want[i], std::max(1e-4, 2e-5 * std::sqrt(depth[i])), 1e-4));
      }
    }
  }
  cpu::set_winograd_temporal(true);
}

}  // namespace
}  // namespace vidgrad
