// conv3d: float32 forward against a naive 8-deep loop, float64 gradients (input, weight,
// bias) against finite differences, over shapes covering odd sizes, stride 2, padding,
// dilation and groups in {1, 2, C/8, C}; and the error messages.
#include "test_util.h"
#include "conv3d_reference.h"

#include "vidgrad/autograd/grad_mode.h"
#include "vidgrad/core/parallel.h"
#include "vidgrad/ops/cpu/conv3d_cpu.h"

#include <cmath>

namespace vidgrad {
namespace {

using testing::all_close;
using testing::conv3d_reference;
using testing::opt;
using testing::param;
using testing::randn;

struct ConvCase {
  const char* name;
  Shape input;  // (N, C, T, H, W)
  std::int64_t out_channels;
  std::array<std::int64_t, 3> kernel;
  Conv3dOptions opts;
  bool bias;
};

std::ostream& operator<<(std::ostream& os, const ConvCase& c) { return os << c.name; }

class Conv3dShapes : public ::testing::TestWithParam<ConvCase> {
 protected:
  Shape weight_shape() const {
    const auto& c = GetParam();
    return {c.out_channels, c.input[1] / c.opts.groups, c.kernel[0], c.kernel[1], c.kernel[2]};
  }
};

TEST_P(Conv3dShapes, ForwardMatchesNaiveLoopInFloat32) {
  const auto& c = GetParam();
  Tensor x = randn(c.input, 1, DType::kFloat32), w = randn(weight_shape(), 2, DType::kFloat32);
  Tensor b = c.bias ? randn({c.out_channels}, 3, DType::kFloat32) : Tensor();
  Tensor y = conv3d(x, w, b, c.opts);
  EXPECT_TRUE(all_close(y, conv3d_reference(x, w, b, c.opts), 1e-4, 1e-4));
  // Non-contiguous input gives the same result.
  Tensor xt = x.permute({0, 1, 2, 4, 3}).contiguous().permute({0, 1, 2, 4, 3});
  ASSERT_FALSE(xt.is_contiguous());
  EXPECT_TRUE(all_close(conv3d(xt, w, b, c.opts), y, 0, 0));
}

TEST_P(Conv3dShapes, GradMatchesFiniteDifference) {
  const auto& c = GetParam();
  std::vector<Tensor> in{param(c.input, 4), param(weight_shape(), 5)};
  if (c.bias) in.push_back(param({c.out_channels}, 6));
  const Conv3dOptions opts = c.opts;
  EXPECT_GRADCHECK(
      [opts](const std::vector<Tensor>& t) { return conv3d(t[0], t[1], t.size() > 2 ? t[2] : Tensor(), opts); }, in);
}

// The float32 kernels' gradients (input, weight, bias) against the float64 ones, which
// the finite differences above check: float32 paths differ from float64 ones in vector
// width and blocking (the lanes of Note [stride-2 input gradient in lanes], say).
TEST_P(Conv3dShapes, GradientsInFloat32MatchFloat64) {
  const auto& c = GetParam();
  const Conv3dOptions opts = c.opts;
  auto grads = [&](DType dt) {
    std::vector<Tensor> in{randn(c.input, 41, dt), randn(weight_shape(), 42, dt)};
    if (c.bias) in.push_back(randn({c.out_channels}, 43, dt));
    for (Tensor& t : in) t.set_requires_grad(true);
    Tensor y = conv3d(in[0], in[1], in.size() > 2 ? in[2] : Tensor(), opts);
    y.backward(randn(y.shape(), 44, dt));
    std::vector<Tensor> out;
    for (const Tensor& t : in) out.push_back(t.grad().to(DType::kFloat64));
    return out;
  };
  const auto single = grads(DType::kFloat32), dbl = grads(DType::kFloat64);
  for (std::size_t i = 0; i < dbl.size(); ++i)
    EXPECT_TRUE(all_close(single[i], dbl[i], 1e-4, 1e-4)) << "gradient " << i;
}

// With one output row per im2col tile (Note [im2col tiles]), every tile boundary is
// exercised: the forward and all gradients must match the default tiling and finite
// differences.
TEST_P(Conv3dShapes, TiledIm2colMatchesUntiled) {
  const auto& c = GetParam();
  std::vector<Tensor> in{param(c.input, 7), param(weight_shape(), 8)};
  if (c.bias) in.push_back(param({c.out_channels}, 9));
  const Conv3dOptions opts = c.opts;
  auto f = [opts](const std::vector<Tensor>& t) { return conv3d(t[0], t[1], t.size() > 2 ? t[2] : Tensor(), opts); };
  auto run = [&] {
    for (const Tensor& t : in) t.set_grad(Tensor());
    Tensor y = f(in);
    y.backward(testing::randn(y.shape(), 10));
    std::vector<Tensor> out{y.detach()};
    for (const Tensor& t : in) out.push_back(t.grad());
    return out;
  };
  const auto reference = run();
  cpu::set_conv_tile_elements(1);
  const auto tiled = run();
  EXPECT_GRADCHECK(f, in);
  cpu::set_conv_tile_elements(std::int64_t{1} << 21);
  for (std::size_t i = 0; i < reference.size(); ++i)
    EXPECT_TRUE(all_close(tiled[i], reference[i], 1e-12, 1e-10)) << "output/gradient " << i;
}

// opts.relu: relu(conv + b) as each output is stored, on every conv path; the gradient
// passes where the output is positive.
TEST_P(Conv3dShapes, FusedReluMatchesReferenceAndGradient) {
  const auto& c = GetParam();
  Conv3dOptions opts = c.opts;
  opts.relu = true;
  Tensor x = randn(c.input, 21, DType::kFloat32), w = randn(weight_shape(), 22, DType::kFloat32);
  Tensor b = c.bias ? randn({c.out_channels}, 23, DType::kFloat32) : Tensor();
  EXPECT_TRUE(all_close(conv3d(x, w, b, opts), relu(conv3d_reference(x, w, b, c.opts)), 1e-4, 1e-4));
  std::vector<Tensor> in{param(c.input, 24), param(weight_shape(), 25)};
  if (c.bias) in.push_back(param({c.out_channels}, 26));
  EXPECT_GRADCHECK(
      [opts](const std::vector<Tensor>& t) { return conv3d(t[0], t[1], t.size() > 2 ? t[2] : Tensor(), opts); }, in);
}

// Inference conv + batch norm (+ ReLU) in one pass against the reference conv followed by
// the batch-norm formula, in float32 on every conv path, and float64 against the two ops.
TEST_P(Conv3dShapes, BatchNormInferenceMatchesComposition) {
  const auto& c = GetParam();
  const std::int64_t O = c.out_channels;
  autograd::NoGradGuard no_grad;
  for (bool with_relu : {false, true})
    for (bool with_residual : {false, true}) {  // fused in the row-GEMM convs, a pass of its own elsewhere
      Conv3dOptions opts = c.opts;
      opts.relu = with_relu;
      for (DType dt : {DType::kFloat32, DType::kFloat64}) {
        Tensor x = randn(c.input, 31, dt), w = randn(weight_shape(), 32, dt);
        Tensor b = c.bias ? randn({O}, 33, dt) : Tensor();
        Tensor gamma = randn({O}, 34, dt), beta = randn({O}, 35, dt), mean = randn({O}, 36, dt);
        Tensor var = add(mul(randn({O}, 37, dt), randn({O}, 37, dt)), Tensor::full({O}, 0.5, dt));
        Tensor expect = batch_norm(conv3d_reference(x, w, b, c.opts), gamma.to(DType::kFloat64),
                                   beta.to(DType::kFloat64), mean.to(DType::kFloat64), var.to(DType::kFloat64),
                                   {.training = false, .eps = 1e-3});
        Tensor residual;
        if (with_residual) {
          residual = randn(expect.shape(), 38, dt);
          expect = add(expect, residual.to(DType::kFloat64));
        }
        if (with_relu) expect = relu(expect);
        Tensor y = conv3d_batch_norm_inference(x, w, b, gamma, beta, mean, var, 1e-3, opts, residual);
        const double tol = dt == DType::kFloat32 ? 1e-4 : 1e-10;
        EXPECT_TRUE(all_close(y, expect, tol, tol))
            << "relu " << with_relu << " residual " << with_residual << " " << dtype_name(dt);
      }
    }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, Conv3dShapes,
    ::testing::Values(
        ConvCase{"Pointwise1x1x1", {2, 8, 3, 5, 7}, 8, {1, 1, 1}, opt({1, 1, 1}, {0, 0, 0}, {1, 1, 1}, 1), true},
        ConvCase{"Spatial1x3x3Stride2Groups2", {1, 8, 2, 7, 5}, 8, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 2),
                 true},
        ConvCase{"Temporal3x1x1", {2, 6, 5, 3, 4}, 6, {3, 1, 1}, opt({1, 1, 1}, {1, 0, 0}, {1, 1, 1}, 1), false},
        ConvCase{"Temporal3x1x1DilatedGrouped", {1, 4, 4, 3, 2}, 4, {3, 1, 1}, opt({1, 1, 1}, {2, 0, 0}, {2, 1, 1}, 2),
                 true},
        // Full 8 x 48 micro-kernel tiles and a partial one (Note [row GEMM]).
        ConvCase{"Temporal3x1x1FullTiles", {1, 16, 3, 4, 13}, 16, {3, 1, 1}, opt({1, 1, 1}, {1, 0, 0}, {1, 1, 1}, 1),
                 false},
        // 128 input channels: the weight gradient takes the transposed row GEMM
        // (kPointwiseNtChannels).
        ConvCase{"PointwiseWideTransposedGemm", {2, 128, 2, 3, 4}, 8, {1, 1, 1}, opt({1, 1, 1}, {0, 0, 0}, {1, 1, 1}, 1),
                 true},
        // 32 and 40 input channels (SEVNet's stage-2 downsampling 1x1x1 has 32): the
        // transposed row GEMM from kPointwiseNtChannels on, with a partial 16-channel vector.
        ConvCase{"PointwiseTransposedGemm32", {2, 32, 2, 3, 5}, 24, {1, 1, 1}, opt({1, 1, 1}, {0, 0, 0}, {1, 1, 1}, 1),
                 true},
        ConvCase{"PointwiseTransposedGemm40", {1, 40, 3, 2, 7}, 9, {1, 1, 1}, opt({1, 1, 1}, {0, 0, 0}, {1, 1, 1}, 1),
                 false},
        // Weight gradient split over (sample, frame) between threads, across samples.
        ConvCase{"PointwiseFramesSplit", {3, 16, 3, 4, 8}, 16, {1, 1, 1}, opt({1, 1, 1}, {0, 0, 0}, {1, 1, 1}, 1),
                 false},
        // Large frames: shifted rows whose valid column ranges start and end mid-panel
        // (shifted_rows_gemm in conv3d_cpu.cpp).
        ConvCase{"Temporal3x1x1LargeFrames", {1, 4, 3, 12, 17}, 5, {3, 1, 1}, opt({1, 1, 1}, {1, 0, 0}, {1, 1, 1}, 1),
                 true},
        ConvCase{"Temporal2x1x1ShortClip", {2, 2, 1, 2, 3}, 3, {2, 1, 1}, opt({1, 1, 1}, {1, 0, 0}, {1, 1, 1}, 1), true},
        // Groups of 8 output channels with unit width stride take the direct kernel
        // (Note [direct grouped conv]): long rows, a partial last block, height stride,
        // dilation, and 8-wide rows.
        ConvCase{"Direct8WideGroups", {2, 16, 1, 2, 17}, 16, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2), true},
        ConvCase{"DirectHeightStrideDilated", {1, 16, 1, 5, 16}, 16, {1, 3, 3}, opt({1, 2, 1}, {0, 2, 2}, {1, 2, 2}, 2),
                 false},
        ConvCase{"DirectDilatedUnitStride", {1, 16, 2, 4, 16}, 16, {1, 3, 3}, opt({1, 1, 1}, {0, 2, 1}, {1, 2, 1}, 2),
                 false},
        ConvCase{"DirectShortRows", {1, 8, 2, 4, 9}, 8, {1, 3, 3}, opt({2, 1, 1}, {1, 1, 1}, {1, 1, 1}, 1), true},
        // Narrow planes (SEVNet's 7x7 and 4x4 stages) through the padded-plane kernel
        // (Note [direct planes]), forward and input gradient.
        ConvCase{"DirectNarrowPlanes", {2, 16, 2, 4, 4}, 16, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2), true},
        ConvCase{"DirectNarrowPlanesUnpadded", {1, 8, 2, 5, 3}, 8, {1, 2, 3}, opt({1, 1, 1}, {0, 0, 0}, {1, 1, 1}, 1),
                 false},
        ConvCase{"DirectPlanesWidth5Kernel", {1, 8, 2, 4, 6}, 8, {1, 2, 5}, opt({1, 1, 1}, {0, 1, 2}, {1, 1, 1}, 1),
                 false},
        // Narrow frames with unit strides stack all frames of a sample-group into one grid
        // (Note [stacked frames]): SEVNet's 7x7 stage, and dilation.
        ConvCase{"DirectStackedFrames7x7", {2, 16, 3, 7, 7}, 16, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2),
                 true},
        ConvCase{"DirectStackedFramesDilated", {1, 16, 3, 5, 6}, 16, {1, 3, 3}, opt({1, 1, 1}, {0, 2, 2}, {1, 2, 2}, 2),
                 false},
        // Frames sharing their zero rows and columns (Note [shared padding]): rows wider than
        // a float64 vector, and padding wider than the kernel reaches (outputs past the
        // input's size).
        ConvCase{"DirectStackedFramesWideRows", {1, 8, 2, 3, 11}, 8, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 1),
                 true},
        ConvCase{"DirectStackedFramesWidePadding", {1, 8, 2, 3, 5}, 8, {1, 2, 2}, opt({1, 1, 1}, {0, 2, 2}, {1, 1, 1}, 1),
                 false},
        // Strided grouped convs on phase-split planes: SEVNet's downsampling shape with odd
        // sizes, and unequal strides with dilation.
        ConvCase{"DirectPlanesStride2Odd", {1, 16, 1, 7, 9}, 16, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 2),
                 true},
        // Strided convs on narrow planes stack their frames' phase planes (Note [strided
        // stacks]): SEVNet's 7x7 -> 4x4 downsampling over several frames.
        ConvCase{"DirectStridedStacks", {2, 16, 3, 7, 7}, 16, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 2), true},
        // 3x3 outputs on 4-wide phase grids: the weight gradient's grids are shorter than a
        // vector per row (their fill once wrote past the scratch; at this shape the heap
        // corruption aborted autograd_test's Profile case, not this one).
        ConvCase{"DirectStridedTinyPlanes", {1, 16, 2, 5, 5}, 16, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 2),
                 false},
        ConvCase{"DirectPlanesStride3Dilated", {1, 8, 1, 10, 13}, 8, {1, 3, 2}, opt({1, 3, 2}, {0, 2, 1}, {1, 2, 3}, 1),
                 false},
        // The input gradient of strided direct convs by phase (Note [input gradient by
        // phase]; output planes of at least kPhaseMinPlane = 40 values, smaller ones take
        // the spread path above): an unpadded stride 2 leaves the last row out of every
        // window (it gets no gradient), stride 3 with a 2-wide kernel leaves a phase
        // without taps, and the stride may differ between the axes (phase convs on stacked
        // 7x14 frames). SEVNet's shape (stride 2, padding 1) takes the lanes below; with
        // padding 2 it goes by phase.
        ConvCase{"PhasesPadding2", {1, 16, 1, 20, 20}, 16, {1, 3, 3}, opt({1, 2, 2}, {0, 2, 2}, {1, 1, 1}, 2), true},
        ConvCase{"PhasesStackedFrames", {1, 8, 2, 14, 14}, 8, {1, 3, 3}, opt({1, 2, 1}, {0, 1, 1}, {1, 1, 1}, 1),
                 false},
        // SEVNet's downsampling 1x3x3 (stride 2, padding 1, input channels per group a
        // multiple of 8): the input gradient in lanes (Note [stride-2 input gradient in
        // lanes]): even and odd sizes, rows over one vector of output columns (two chunks
        // in float32 and float64), two blocks of 8 input channels, 16 output channels a
        // group, planes narrower than a vector.
        ConvCase{"LanesSevNetDownsample", {1, 16, 1, 20, 20}, 16, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 2),
                 true},
        ConvCase{"LanesOddSizes", {1, 16, 1, 13, 15}, 16, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 2), false},
        ConvCase{"LanesWideRows", {1, 8, 1, 5, 40}, 8, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 1), true},
        ConvCase{"LanesChannelBlocks", {1, 16, 2, 9, 10}, 16, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 1), false},
        ConvCase{"LanesOutputChannels16", {1, 16, 1, 8, 9}, 32, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 2), false},
        ConvCase{"LanesNarrowPlanes", {2, 8, 3, 7, 7}, 8, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 1), true},
        // 8 channels a group on 4-, 7- and 14-wide planes: frame pairs in lanes in float32
        // (Note [frame pairs in lanes]; DirectNarrowPlanes and DirectStackedFrames7x7 take
        // them too), an odd frame count leaving the last pair half empty.
        ConvCase{"PairFrames14Wide", {1, 16, 3, 5, 14}, 16, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2), true},
        ConvCase{"PairFramesOneGroup", {2, 8, 1, 4, 4}, 8, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 1), false},
        // with stride 2 from 7- and 14-wide inputs (DirectStridedStacks: 7x7)
        ConvCase{"PairFramesStride2From14", {1, 16, 3, 5, 14}, 16, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 2),
                 true},
        ConvCase{"PairFramesStride2OneGroup", {2, 8, 1, 7, 7}, 8, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 1),
                 false},
        // Frame pairs' stride-2 weight gradient summed over two samples, an odd input height
        // (13 rows to 7) and frames with an unpaired last one.
        ConvCase{"PairFramesStride2TwoSamples", {2, 16, 3, 13, 14}, 16, {1, 3, 3},
                 opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 2), false},
        // ... and from a 28-wide input (the weight gradient only; the forward takes the planes).
        ConvCase{"PairFramesStride2From28", {1, 16, 3, 6, 28}, 16, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 2),
                 true},
        ConvCase{"PhasesUnpaddedUncoveredRow", {1, 8, 1, 22, 21}, 8, {1, 3, 3}, opt({1, 2, 2}, {0, 0, 0}, {1, 1, 1}, 1),
                 false},
        ConvCase{"PhasesStride3PhaseWithoutTaps", {1, 8, 1, 29, 30}, 8, {1, 2, 2},
                 opt({1, 3, 3}, {0, 1, 1}, {1, 1, 1}, 1), true},
        ConvCase{"PhasesHeightStride2Only", {1, 8, 1, 21, 10}, 8, {1, 3, 3}, opt({1, 2, 1}, {0, 1, 1}, {1, 1, 1}, 1),
                 false},
        // More than 8 output channels per group with at most 16 input channels: the direct
        // kernels in blocks of 8 output channels (Note [output-channel blocks]): the stem's
        // shape, two groups of 16, and the transposed convs of the input gradient (unit
        // stride on stacked narrow frames, and by phase).
        ConvCase{"DirectOutputBlocksStem", {1, 3, 2, 9, 12}, 16, {1, 7, 7}, opt({1, 2, 2}, {0, 3, 3}, {1, 1, 1}, 1),
                 true},
        ConvCase{"DirectOutputBlocksGrouped", {2, 8, 2, 5, 6}, 32, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2),
                 false},
        ConvCase{"DirectOutputBlocksTransposed", {1, 32, 2, 4, 5}, 8, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 1),
                 true},
        ConvCase{"DirectOutputBlocksPhases", {1, 16, 1, 20, 22}, 8, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 1),
                 false},
        ConvCase{"GroupsCOver8", {1, 16, 3, 5, 5}, 8, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2), true},
        ConvCase{"GroupWidth8", {1, 32, 2, 5, 3}, 32, {1, 3, 3}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 4), false},
        ConvCase{"Depthwise3x3x3", {2, 4, 4, 5, 5}, 4, {3, 3, 3}, opt({1, 1, 1}, {1, 1, 1}, {1, 1, 1}, 4), true},
        ConvCase{"DepthwiseMultiplier2", {1, 3, 3, 4, 5}, 6, {1, 3, 3}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 3), true},
        ConvCase{"Dilated", {1, 2, 5, 7, 7}, 3, {2, 3, 3}, opt({1, 1, 1}, {1, 2, 2}, {2, 2, 2}, 1), true},
        ConvCase{"Stride2AllAxesOddSizes", {1, 3, 5, 7, 9}, 4, {3, 3, 3}, opt({2, 2, 2}, {1, 0, 1}, {1, 1, 1}, 1),
                 true},
        ConvCase{"StemLike1x7x7", {1, 3, 2, 9, 9}, 4, {1, 7, 7}, opt({1, 2, 2}, {0, 3, 3}, {1, 1, 1}, 1), false},
        // Ungrouped convs with output rows of 32 or more take the phase-split row GEMM
        // (Note [strided rows]): the stem's shape, dilation in every axis, width stride 3.
        ConvCase{"StemLikeWideRows", {1, 3, 1, 3, 66}, 6, {1, 7, 7}, opt({1, 2, 2}, {0, 3, 3}, {1, 1, 1}, 1), true},
        ConvCase{"DilatedWideRows", {1, 2, 3, 4, 36}, 9, {2, 3, 3}, opt({1, 1, 1}, {1, 2, 2}, {2, 2, 2}, 1), false},
        ConvCase{"WidthStride3WideRows", {2, 2, 2, 3, 100}, 3, {1, 2, 5}, opt({1, 1, 3}, {0, 0, 2}, {1, 1, 2}, 1),
                 false},
        ConvCase{"PointwiseStride2", {1, 4, 3, 5, 5}, 2, {1, 1, 1}, opt({1, 2, 2}, {0, 0, 0}, {1, 1, 1}, 2), true}),
    [](const ::testing::TestParamInfo<ConvCase>& info) { return std::string(info.param.name); });

// autograd's Note [accumulating in place]: where the input of a pointwise or temporal
// conv also feeds another branch, the conv's input gradient is added into the other
// branch's pending gradient as the GEMM computes it. Both orders of the branches (the
// engine runs the last input's branch of the add first, so only one order accumulates),
// both kinds of conv, against finite differences; and a conv whose input is a leaf.
TEST(Conv3d, InputGradientAddsIntoAPendingBranchGradient) {
  for (std::int64_t kt : {1, 3})
    for (bool conv_first : {true, false}) {
      SCOPED_TRACE("kT " + std::to_string(kt) + (conv_first ? ", conv branch first" : ", conv branch last"));
      const Conv3dOptions o = opt({1, 1, 1}, {kt / 2, 0, 0}, {1, 1, 1}, 1);
      std::vector<Tensor> in{param({2, 6, 3, 4, 5}, 81), param({6, 6, kt, 1, 1}, 82)};
      const auto f = [&](const std::vector<Tensor>& t) {
        const Tensor x = mul(t[0], 1.5);  // produced by an op: its gradient is pending between the branches
        const Tensor c = conv3d(x, t[1], {}, o), other = mul(x, x);
        return conv_first ? add(c, other) : add(other, c);
      };
      EXPECT_GRADCHECK(f, in);
    }
}

// Large planes make the grouped weight gradient work through several frame chunks and
// several position blocks per frame (direct_plane_weight, Note [weight-gradient position
// blocks]); many frames of small planes, through blocks of several frames. Too big for
// finite differences, so checked by linearity in w: for y = conv(x, w),
// <dL/dw, v> = <gy, conv(x, v)> for any direction v.
TEST(Conv3d, GroupedWeightGradientOverFrameChunksMatchesLinearity) {
  for (const Shape& shape : {Shape{1, 16, 3, 60, 60}, Shape{2, 16, 13, 6, 5}})
    for (auto stride : {std::int64_t{1}, std::int64_t{2}}) {
      SCOPED_TRACE(shape_str(shape));
      const Conv3dOptions o = opt({1, stride, stride}, {0, 1, 1}, {1, 1, 1}, 2);
      Tensor x = randn(shape, 40), w = param({16, 8, 1, 3, 3}, 41);
      Tensor y = conv3d(x, w, {}, o);
      Tensor gy = randn(y.shape(), 42);
      y.backward(gy);
      for (std::uint64_t seed : {43, 44}) {
        Tensor v = randn(w.shape(), seed);
        const double lhs = sum(mul(w.grad(), v)).item();
        const double rhs = sum(mul(gy, conv3d(x, v, {}, o))).item();
        EXPECT_NEAR(lhs, rhs, 1e-9 * (1 + std::abs(rhs))) << "stride " << stride;
      }
    }
}

// Note [stealing ranges] (core/parallel.h): the Winograd temporal conv's units and the row
// GEMM's panel blocks go to threads in even ranges, and a thread done first takes units
// from the back of another's, reusing a packed block only when it holds the unit's own.
// Each output value is summed the same way whichever thread computes it, so the forward
// and the input gradient on 3 and 5 threads (more than this machine's cores: threads are
// descheduled, and others steal their units) equal the one-thread results bit for bit, and
// those match the naive loop (row GEMMs of many panel blocks: 131 and 78 panels).
TEST(Conv3d, StolenUnitsGiveTheOneThreadResultsBitForBit) {
  const int saved = get_num_threads();
  cpu::set_winograd_temporal(true, 1);
  struct Case {
    Shape input;
    std::int64_t kT;
  };
  // Winograd with output channels split into chunks (few blocks), Winograd with many
  // blocks, and pointwise convs large enough for the row GEMM's panel split.
  for (const Case& c : {Case{{2, 32, 8, 14, 14}, 3}, Case{{1, 24, 8, 28, 28}, 3}, Case{{1, 32, 8, 28, 28}, 1},
                        Case{{2, 40, 4, 30, 31}, 1}}) {
    SCOPED_TRACE(shape_str(c.input) + " kT " + std::to_string(c.kT));
    const Conv3dOptions o = opt({1, 1, 1}, {(c.kT - 1) / 2, 0, 0}, {1, 1, 1}, 1);
    const Tensor x = randn(c.input, 61, DType::kFloat32);
    const Tensor w = randn({c.input[1], c.input[1], c.kT, 1, 1}, 62, DType::kFloat32);
    const Tensor gy = randn(c.input, 63, DType::kFloat32);
    Tensor y[3], gx[3];
    const int threads[3] = {1, 3, 5};
    for (int i = 0; i < 3; ++i) {
      set_num_threads(threads[i]);
      for (int rep = 0; rep < (i == 0 ? 1 : 4); ++rep) {  // several tries: stealing is up to the scheduler
        Tensor xi = x.detach();
        xi.set_requires_grad(true);
        Tensor yi = conv3d(xi, w, {}, o);
        yi.backward(gy);
        if (rep == 0) {
          y[i] = yi.detach();
          gx[i] = xi.grad();
        } else {
          EXPECT_TRUE(all_close(yi.detach(), y[i], 0, 0)) << threads[i] << " threads, try " << rep;
          EXPECT_TRUE(all_close(xi.grad(), gx[i], 0, 0)) << threads[i] << " threads, try " << rep;
        }
      }
    }
    set_num_threads(saved);
    EXPECT_TRUE(all_close(y[0], conv3d_reference(x, w, {}, o), 1e-4, 1e-4)) << "one thread";
    for (int i = 1; i < 3; ++i) {
      EXPECT_TRUE(all_close(y[i], y[0], 0, 0)) << threads[i] << " threads";
      EXPECT_TRUE(all_close(gx[i], gx[0], 0, 0)) << threads[i] << " threads";
    }
  }
  cpu::set_winograd_temporal(true);
}

// Note [direct weights per call] (ops/cpu/conv3d_internal.h): from 228 grouped channels
// the direct kernels' reordered (and, for the input gradient, flipped) weights are filled
// by both threads into the calling thread's buffers. 256 channels, 8 a group: the frame
// pairs at 4x4, the planes at 9x9, the stride-2 input gradient in lanes from 7x7. On one
// and two threads: the forward against the naive loop, and the input gradient by its
// adjoint identity <gx, d> = <gy, conv(d)> (the conv is linear in x) for a random d, the
// two threads' results equal to one thread's. A smaller conv first leaves the buffers
// holding other values.
TEST(Conv3d, WideGroupedConvWeightsFilledByThreads) {
  struct Case {
    Shape input;
    Conv3dOptions o;
  };
  const int saved = get_num_threads();
  for (const Case& c : {Case{{1, 256, 3, 4, 4}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 32)},
                        Case{{1, 256, 2, 9, 9}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 32)},
                        Case{{1, 256, 2, 7, 7}, opt({1, 2, 2}, {0, 1, 1}, {1, 1, 1}, 32)}}) {
    SCOPED_TRACE(shape_str(c.input) + " stride " + std::to_string(c.o.stride[1]));
    const Tensor x = randn(c.input, 81, DType::kFloat32), w = randn({256, 8, 1, 3, 3}, 82, DType::kFloat32);
    const Tensor d = randn(c.input, 83, DType::kFloat32);
    const Tensor expect = conv3d_reference(x, w, {}, c.o), conv_d = conv3d_reference(d, w, {}, c.o);
    const Tensor gy = randn(expect.shape(), 84, DType::kFloat32);
    std::vector<double> first_y, first_gx;
    for (const int threads : {1, 2}) {
      set_num_threads(threads);
      {  // other values in the buffers
        const Tensor xs = randn({1, 16, 2, 4, 4}, 85, DType::kFloat32), ws = randn({16, 8, 1, 3, 3}, 86, DType::kFloat32);
        Tensor xg = xs.clone();
        xg.set_requires_grad(true);
        sum(conv3d(xg, ws, {}, opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2))).backward();
      }
      Tensor xg = x.clone();
      xg.set_requires_grad(true);
      const Tensor y = conv3d(xg, w, {}, c.o);
      y.backward(gy);
      EXPECT_TRUE(all_close(y, expect, 2e-5 * std::sqrt(72.0), 1e-4)) << threads << " threads";
      const std::vector<double> gx = xg.grad().to_vector<double>(), dv = d.to_vector<double>();
      const std::vector<double> gyv = gy.to_vector<double>(), cd = conv_d.to_vector<double>();
      double lhs = 0, rhs = 0, scale = 0;
      for (std::size_t i = 0; i < gx.size(); ++i) lhs += gx[i] * dv[i];
      for (std::size_t i = 0; i < gyv.size(); ++i) {
        rhs += gyv[i] * cd[i];
        scale += std::abs(gyv[i] * cd[i]);
      }
      EXPECT_NEAR(lhs, rhs, 1e-5 * scale) << threads << " threads";
      if (threads == 1) {
        first_y = y.to_vector<double>();
        first_gx = gx;
      } else {
        EXPECT_EQ(y.to_vector<double>(), first_y);
        EXPECT_EQ(gx, first_gx);
      }
    }
  }
  set_num_threads(saved);
}

// Note [phases per item]: a strided grouped conv whose input gradient is over 8 MB takes
// the phases item by item. Its input gradient must equal, sample for sample, the one
// computed for each sample alone (under the threshold: the phases over the whole batch),
// and satisfy the adjoint identity <gy, conv(x)> = <gx, x>.
TEST(Conv3d, StridedInputGradientPerItemMatchesWholeBatch) {
  const Conv3dOptions o{.stride = {1, 2, 2}, .padding = {0, 1, 1}, .groups = 2};
  const Shape shape{2, 16, 2, 240, 240};  // 14.7 MB of float32 gradient; 7.4 MB a sample
  Tensor x = randn(shape, 61, DType::kFloat32), w = randn({16, 8, 1, 3, 3}, 62, DType::kFloat32);
  auto input_grad = [&](const Tensor& xs, const Tensor& gy) {
    Tensor xg = xs.clone().set_requires_grad(true);
    conv3d(xg, w, {}, o).backward(gy);
    return xg.grad();
  };
  Tensor y = conv3d(x, w, {}, o);
  Tensor gy = randn(y.shape(), 63, DType::kFloat32);
  Tensor gx = input_grad(x, gy);
  for (std::int64_t n = 0; n < 2; ++n) {
    Tensor alone = input_grad(x.narrow(0, n, 1), gy.narrow(0, n, 1).contiguous());
    EXPECT_TRUE(all_close(gx.narrow(0, n, 1).contiguous(), alone, 1e-6, 1e-6)) << "sample " << n;
  }
  double lhs = 0, rhs = 0;
  const std::vector<double> yv = y.to_vector<double>(), gyv = gy.to_vector<double>();
  const std::vector<double> xv = x.to_vector<double>(), gxv = gx.to_vector<double>();
  for (std::size_t i = 0; i < yv.size(); ++i) lhs += yv[i] * gyv[i];
  for (std::size_t i = 0; i < xv.size(); ++i) rhs += xv[i] * gxv[i];
  EXPECT_NEAR(lhs, rhs, 1e-4 * std::sqrt(static_cast<double>(xv.size())) * 10);
}

TEST(Conv3d, FloatAndDoubleAgree) {
  Tensor x = randn({1, 8, 4, 9, 9}, 7), w = randn({8, 1, 1, 3, 3}, 8);
  const Conv3dOptions o = opt({1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 8);
  EXPECT_TRUE(all_close(conv3d(x.to(DType::kFloat32), w.to(DType::kFloat32), {}, o), conv3d(x, w, {}, o), 1e-5, 1e-5));
}

TEST(Conv3d, BadArgumentsThrowWithValues) {
  Tensor x = Tensor::zeros({1, 8, 3, 5, 5});
  Tensor w = Tensor::zeros({8, 8, 1, 3, 3});
  EXPECT_THROW_MSG(conv3d(Tensor::zeros({8, 3, 5, 5}), w), "conv3d", "input", "rank 5", "rank 4", "[8, 3, 5, 5]");
  EXPECT_THROW_MSG(conv3d(x, Tensor::zeros({8, 8, 3, 3})), "conv3d", "weight", "rank 4");
  EXPECT_THROW_MSG(conv3d(x, Tensor::zeros({6, 3, 1, 3, 3}), {}, opt({1, 1, 1}, {0, 0, 0}, {1, 1, 1}, 3)), "conv3d",
                   "groups 3", "8 input channels");
  EXPECT_THROW_MSG(conv3d(x, Tensor::zeros({6, 4, 1, 3, 3}), {}, opt({1, 1, 1}, {0, 0, 0}, {1, 1, 1}, 4)), "conv3d",
                   "groups 4", "6 output channels");
  EXPECT_THROW_MSG(conv3d(x, Tensor::zeros({8, 4, 1, 3, 3})), "conv3d", "[8, 4, 1, 3, 3]", "has 8");
  EXPECT_THROW_MSG(conv3d(x, w, Tensor::zeros({7})), "conv3d", "bias", "[8]", "[7]");
  EXPECT_THROW_MSG(conv3d(x, Tensor::zeros({8, 8, 5, 3, 3})), "conv3d", "smaller than the dilated kernel");
  EXPECT_THROW_MSG(conv3d(x, w, {}, opt({0, 1, 1}, {0, 0, 0}, {1, 1, 1}, 1)), "conv3d", "stride", "(0, 1, 1)");
  EXPECT_THROW_MSG(conv3d(x, w, {}, opt({1, 1, 1}, {0, -1, 0}, {1, 1, 1}, 1)), "conv3d", "padding", "(0, -1, 0)");
  EXPECT_THROW_MSG(conv3d(x, w.to(DType::kFloat64)), "conv3d", "weight", "float64", "float32");
  EXPECT_THROW_MSG(conv3d(x, w, {}, opt({1, 1, 1}, {0, 0, 0}, {1, 1, 1}, 0)), "conv3d", "groups must be >= 1");
}

}  // namespace
}  // namespace vidgrad
