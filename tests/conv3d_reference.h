// The naive conv3d every conv test compares with, and a shorthand for its options.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "vidgrad/ops/ops.h"

namespace vidgrad::testing {

// The reference: every output element as an explicit sum, in double.
inline Tensor conv3d_reference(const Tensor& x, const Tensor& w, const Tensor& b, const Conv3dOptions& o) {
  const Shape& xs = x.shape();
  const Shape& ws = w.shape();
  const std::int64_t N = xs[0], C = xs[1], T = xs[2], H = xs[3], W = xs[4];
  const std::int64_t O = ws[0], Cg = ws[1], kT = ws[2], kH = ws[3], kW = ws[4], G = o.groups, Og = O / G;
  auto out = [&](int i, std::int64_t in, std::int64_t k) {
    return (in + 2 * o.padding[i] - o.dilation[i] * (k - 1) - 1) / o.stride[i] + 1;
  };
  const std::int64_t To = out(0, T, kT), Ho = out(1, H, kH), Wo = out(2, W, kW);
  const std::vector<double> xv = x.to_vector<double>(), wv = w.to_vector<double>();
  const std::vector<double> bv = b.defined() ? b.to_vector<double>() : std::vector<double>(O, 0.0);
  std::vector<double> y(N * O * To * Ho * Wo);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t oc = 0; oc < O; ++oc)
      for (std::int64_t to = 0; to < To; ++to)
        for (std::int64_t ho = 0; ho < Ho; ++ho)
          for (std::int64_t wo = 0; wo < Wo; ++wo) {
            double acc = bv[oc];
            const std::int64_t g = oc / Og;
            for (std::int64_t c = 0; c < Cg; ++c)
              for (std::int64_t kt = 0; kt < kT; ++kt)
                for (std::int64_t kh = 0; kh < kH; ++kh)
                  for (std::int64_t kw = 0; kw < kW; ++kw) {
                    const std::int64_t t = to * o.stride[0] - o.padding[0] + kt * o.dilation[0];
                    const std::int64_t h = ho * o.stride[1] - o.padding[1] + kh * o.dilation[1];
                    const std::int64_t ww = wo * o.stride[2] - o.padding[2] + kw * o.dilation[2];
                    if (t < 0 || t >= T || h < 0 || h >= H || ww < 0 || ww >= W) continue;
                    const std::int64_t ci = g * Cg + c;
                    acc += xv[(((n * C + ci) * T + t) * H + h) * W + ww] *
                           wv[(((oc * Cg + c) * kT + kt) * kH + kh) * kW + kw];
                  }
            y[(((n * O + oc) * To + to) * Ho + ho) * Wo + wo] = acc;
          }
  return Tensor::from_vector(y, {N, O, To, Ho, Wo});
}

inline Conv3dOptions opt(std::array<std::int64_t, 3> stride, std::array<std::int64_t, 3> pad,
                  std::array<std::int64_t, 3> dil, std::int64_t groups) {
  return Conv3dOptions{stride, pad, dil, groups};
}

}  // namespace vidgrad::testing
