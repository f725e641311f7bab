// The parts of per-channel batch statistics that kernels take as they write their output
// (Note [output statistics] in row_gemm.cpp): a part is (shift, sum of v - shift, sum of
// (v - shift)^2) over some of a channel's values v, shift one of them; ChannelMoments adds
// parts into a mean and variance. Internal to ops/cpu.
#pragma once

#include <algorithm>
#include <cstdint>

#include "vidgrad/ops/cpu/simd.h"

namespace vidgrad::cpu {

// Parts of channels' batch statistics (Note [output statistics] in row_gemm.cpp): for runs
// r < count of n values each (run r at p + r * stride), parts[3 * r .. 3 * r + 2] = (shift,
// sum of v - shift, sum of (v - shift)^2) over the run's values v, shift = its first value.
// Summed in T in vectors, then in double; kL runs at a time, their vectors reduced
// together by a transpose (transpose_lanes) rather than each lane by lane (a run's 2 x 15
// dependent adds cost more than summing a 7x7 plane).
template <typename T>
inline void run_sums(const T* p, std::int64_t stride, std::int64_t count, std::int64_t n, double* parts) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t kL = Vec<T>::kLanes;
  const std::int64_t whole = n / kL * kL;
  V keep{};  // 1 in the lanes of the last, partial vector that hold values
  for (std::int64_t k = 0; k < n - whole; ++k) keep[k] = T(1);
  for (std::int64_t r0 = 0; r0 < count; r0 += kL) {
    const std::int64_t runs = std::min(kL, count - r0);
    V s[kL], ss[kL];
    for (std::int64_t r = 0; r < kL; ++r) {
      s[r] = ss[r] = V{};
      if (r >= runs) continue;
      const T* run = p + (r0 + r) * stride;
      const V sv = V{} + run[0];
      V s1{}, ss1{};  // two accumulators each
      std::int64_t i = 0;
      for (; i + 2 * kL <= whole; i += 2 * kL) {
        const V d0 = load_vec(run + i) - sv, d1 = load_vec(run + i + kL) - sv;
        s[r] += d0;
        ss[r] += d0 * d0;
        s1 += d1;
        ss1 += d1 * d1;
      }
      if (i < whole) {
        const V d = load_vec(run + i) - sv;
        s[r] += d;
        ss[r] += d * d;
      }
      if (whole < n) {
        const V d = (load_lanes(run + whole, first_lanes<T>(n - whole)) - sv) * keep;
        s1 += d;
        ss1 += d * d;
      }
      s[r] += s1;
      ss[r] += ss1;
    }
    transpose_lanes<T>(s);  // lane r of s[k]: lane k of run r's sums
    transpose_lanes<T>(ss);
    V ts = s[0], tss = ss[0];
    for (std::int64_t k = 1; k < kL; ++k) {
      ts += s[k];
      tss += ss[k];
    }
    for (std::int64_t r = 0; r < runs; ++r) {
      double* part = parts + 3 * (r0 + r);
      part[0] = static_cast<double>(p[(r0 + r) * stride]);
      part[1] = static_cast<double>(ts[r]);
      part[2] = static_cast<double>(tss[r]);
    }
  }
}

// A channel's mean and biased variance from parts (shift_i, sum of d, sum of d^2 over n_i
// values, d = v - shift_i) added in a fixed order: each part moved to the first part's
// shift K (with delta = shift_i - K: sum (v - K) = s_i + n_i delta, sum (v - K)^2 = ss_i +
// delta (2 s_i + n_i delta)) and summed. The shifts are values of the channel, so K is
// within a few standard deviations of the mean and the shifted-data method's accuracy
// holds (Note [one-pass statistics] in batch_norm_cpu.cpp); no division per part.
struct ChannelMoments {
  double count = 0, shift = 0, s = 0, ss = 0;
  void add(double n, const double* part) {
    if (count == 0) shift = part[0];
    const double delta = part[0] - shift;
    s += part[1] + n * delta;
    ss += part[2] + delta * (2 * part[1] + n * delta);
    count += n;
  }
  double mean() const { return count > 0 ? shift + s / count : 0.0; }
  double variance() const {
    if (count == 0) return 0.0;
    const double d = s / count;
    return std::max(0.0, ss / count - d * d);
  }
};

// Parts from vector sums: sums[3m] = shift[m]; sums[3m + 1], sums[3m + 2] = the lane sums
// of acc[2m], acc[2m + 1] (in double), rows m < M. Rows go kL at a time, their vectors
// reduced together by a transpose (transpose_lanes) rather than lane by lane: each row's 15
// dependent adds, per panel, had made the 1x1x1 forwards 15-50% slower.
template <typename T>
void store_row_parts(const typename Vec<T>::type* acc, const T* shift, std::int64_t M, double* sums) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t L = Vec<T>::kLanes;
  for (std::int64_t m0 = 0; m0 < M; m0 += L) {
    const std::int64_t rows = std::min(L, M - m0);
    for (int j = 0; j < 2; ++j) {  // the sums, then the sums of squares
      V v[L];
      for (std::int64_t r = 0; r < L; ++r) v[r] = r < rows ? acc[2 * (m0 + r) + j] : V{};
      transpose_lanes<T>(v);  // lane r of v[k]: lane k of row r's vector
      V t = v[0];
      for (std::int64_t k = 1; k < L; ++k) t += v[k];
      for (std::int64_t r = 0; r < rows; ++r) sums[3 * (m0 + r) + 1 + j] = static_cast<double>(t[r]);
    }
    for (std::int64_t r = 0; r < rows; ++r) sums[3 * (m0 + r)] = static_cast<double>(shift[m0 + r]);
  }
}

}  // namespace vidgrad::cpu
