// A walk through two video ops, for teaching: how conv3d turns into a matrix product
// (im2col), and what temporal_shift does to a clip. Every number printed is computed
// twice — by the library and by the explanation — and compared.
//
//   build/examples/video_ops_walkthrough
#include <cstdio>
#include <vector>

#include "vidgrad/ops/ops.h"

using namespace vidgrad;

int main() {
  Generator gen(1);

  // ---- conv3d as im2col + GEMM ----
  // Input (N=1, C=2, T=3, H=4, W=4), weight (O=3, C=2, kT=1, kH=3, kW=3), padding (0,1,1).
  Tensor x = Tensor::randn({1, 2, 3, 4, 4}, gen);
  Tensor w = Tensor::randn({3, 2, 1, 3, 3}, gen);
  const Conv3dOptions opts{.padding = {0, 1, 1}};
  Tensor y = conv3d(x, w, {}, opts);
  std::printf("conv3d: input %s * weight %s -> output %s\n", shape_str(x.shape()).c_str(),
              shape_str(w.shape()).c_str(), shape_str(y.shape()).c_str());

  // im2col: one row per (input channel, kt, kh, kw) = 2*1*3*3 = 18 rows, one column per
  // output position (t, h, w) = 3*4*4 = 48 columns; each column holds the input values the
  // kernel sees at that position (zeros where it hangs over the padded border).
  const int K = 18, L = 48;
  const std::vector<float> xv = x.to_vector<float>(), wv = w.to_vector<float>(), yv = y.to_vector<float>();
  std::vector<float> col(K * L);
  for (int c = 0; c < 2; ++c)
    for (int kh = 0; kh < 3; ++kh)
      for (int kw = 0; kw < 3; ++kw)
        for (int t = 0; t < 3; ++t)
          for (int h = 0; h < 4; ++h)
            for (int ww = 0; ww < 4; ++ww) {
              const int hi = h + kh - 1, wi = ww + kw - 1;
              const bool inside = hi >= 0 && hi < 4 && wi >= 0 && wi < 4;
              col[((c * 3 + kh) * 3 + kw) * L + (t * 4 + h) * 4 + ww] = inside ? xv[((c * 3 + t) * 4 + hi) * 4 + wi] : 0.0f;
            }
  // The output is the weight, viewed as a (3 x 18) matrix, times col (18 x 48).
  double worst = 0;
  for (int o = 0; o < 3; ++o)
    for (int l = 0; l < L; ++l) {
      double acc = 0;
      for (int k = 0; k < K; ++k) acc += wv[o * K + k] * col[k * L + l];
      worst = std::max(worst, std::abs(acc - yv[o * L + l]));
    }
  std::printf("  weight (3 x 18) x im2col (18 x 48) reproduces conv3d: max difference %.2e\n", worst);
  std::printf("  vidgrad skips im2col for 1x1x1 convs (the input already is the matrix) and runs kT x 1 x 1\n"
              "  convs as kT products over time-shifted column ranges (docs/design.md).\n\n");

  // ---- temporal_shift ----
  // A clip whose value is its frame index, in 8 channels over 4 frames (1x1 pixels).
  Tensor clip = Tensor::empty({1, 8, 4, 1, 1});
  for (int c = 0; c < 8; ++c)
    for (int t = 0; t < 4; ++t) clip.data<float>()[c * 4 + t] = static_cast<float>(t + 1);
  Tensor shifted = temporal_shift(clip, 4);  // fold = 8 / 4 = 2 channels each way
  std::printf("temporal_shift(fold_div=4): frame values per channel (0 = zero-filled)\n");
  const std::vector<float> sv = shifted.to_vector<float>();
  for (int c = 0; c < 8; ++c) {
    std::printf("  channel %d: ", c);
    for (int t = 0; t < 4; ++t) std::printf("%g ", sv[c * 4 + t]);
    std::printf("%s\n", c < 2 ? " <- sees the next frame" : (c < 4 ? " <- sees the previous frame" : ""));
  }
  std::printf("  Each frame now mixes channels from its neighbours in time at no arithmetic cost;\n"
              "  the backward pass is the opposite shift.\n");
  return worst < 1e-4 ? 0 : 1;
}
