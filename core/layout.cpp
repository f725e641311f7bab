// Channels-last strides, density, and the CPU conversions between NCDHW and channels-last.
#include "vidgrad/core/layout.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "vidgrad/core/parallel.h"

namespace vidgrad {

Shape channels_last_strides(const Shape& shape) {
  VG_CHECK(shape.size() == 5, "channels_last_strides: needs a 5-D shape (N, C, T, H, W), got " << shape_str(shape));
  const std::int64_t C = shape[1], T = shape[2], H = shape[3], W = shape[4];
  return {T * H * W * C, 1, H * W * C, W * C, C};
}

bool is_channels_last(const Tensor& t) {
  if (!t.defined() || t.dim() != 5) return false;
  const Shape expected = channels_last_strides(t.shape());
  for (int d = 0; d < 5; ++d)
    if (t.shape()[d] != 1 && t.strides()[d] != expected[d]) return false;
  return true;
}

Tensor empty_channels_last(const Shape& shape, DType dtype, Device device) {
  VG_CHECK(shape.size() == 5,
           "empty_channels_last: needs a 5-D shape (N, C, T, H, W), got " << shape_str(shape));
  const Tensor base = Tensor::empty({shape[0], shape[2], shape[3], shape[4], shape[1]}, dtype, device);
  return make_view(base, shape, channels_last_strides(shape), 0);
}

Tensor channels_last_copy(const Tensor& t) {
  if (is_channels_last(t)) return t;
  Tensor c = empty_channels_last(t.shape(), t.dtype(), t.device());
  c.copy_(t);
  return c;
}

bool is_dense(const Tensor& t) {
  if (!t.defined()) return false;
  // Dims of size > 1 in increasing stride order must each step over all the ones before.
  std::vector<int> dims;
  for (int d = 0; d < t.dim(); ++d)
    if (t.shape()[d] != 1) dims.push_back(d);
  std::sort(dims.begin(), dims.end(), [&](int a, int b) { return t.strides()[a] < t.strides()[b]; });
  std::int64_t expected = 1;
  for (int d : dims) {
    if (t.strides()[d] != expected) return false;
    expected *= t.shape()[d];
  }
  return true;
}

Tensor empty_like_dense(const Tensor& t) {
  if (!is_dense(t) || t.is_contiguous()) return Tensor::empty(t.shape(), t.dtype(), t.device());
  const Tensor base = Tensor::empty({t.numel()}, t.dtype(), t.device());
  return make_view(base, t.shape(), t.strides(), 0);
}

namespace cpu {

namespace {

constexpr std::int64_t kB = 16;  // a block of 16 channels x 16 positions: 1 KiB of float

// out[s * ld_out + c] = in[c * ld_in + s] over a (rows, cols) block of `in` (rows channels).
template <typename T>
void transpose_block(const T* in, std::int64_t ld_in, T* out, std::int64_t ld_out, std::int64_t rows,
                     std::int64_t cols) {
  for (std::int64_t s = 0; s < cols; ++s)
    for (std::int64_t c = 0; c < rows; ++c) out[s * ld_out + c] = in[c * ld_in + s];
}

// dst = src^T for each of N (R, S) matrices (dst (S, R)). Threads take tiles of 64 x 64,
// transposed in blocks of kB x kB.
template <typename T>
void transpose_each(std::int64_t N, std::int64_t R, std::int64_t S, const T* src, T* dst) {
  constexpr std::int64_t kTile = 64;
  const std::int64_t rt = (R + kTile - 1) / kTile, st = (S + kTile - 1) / kTile;
#pragma omp parallel for schedule(static) if (N * R * S >= kMinParallelWork)
  for (std::int64_t u = 0; u < N * rt * st; ++u) {
    const std::int64_t n = u / (rt * st), r0 = u / st % rt * kTile, s0 = u % st * kTile;
    const std::int64_t r1 = std::min(R, r0 + kTile), s1 = std::min(S, s0 + kTile);
    const T* in = src + n * R * S;
    T* out = dst + n * S * R;
    for (std::int64_t r = r0; r < r1; r += kB)
      for (std::int64_t s = s0; s < s1; s += kB)
        transpose_block(in + r * S + s, S, out + s * R + r, R, std::min(kB, r1 - r), std::min(kB, s1 - s));
  }
}

}  // namespace

template <typename T>
void to_channels_last(std::int64_t N, std::int64_t C, std::int64_t S, const T* src, T* dst) {
  transpose_each(N, C, S, src, dst);
}

template <typename T>
void from_channels_last(std::int64_t N, std::int64_t C, std::int64_t S, const T* src, T* dst) {
  transpose_each(N, S, C, src, dst);
}

template void to_channels_last<float>(std::int64_t, std::int64_t, std::int64_t, const float*, float*);
template void to_channels_last<double>(std::int64_t, std::int64_t, std::int64_t, const double*, double*);
template void to_channels_last<std::int64_t>(std::int64_t, std::int64_t, std::int64_t, const std::int64_t*,
                                             std::int64_t*);
template void from_channels_last<float>(std::int64_t, std::int64_t, std::int64_t, const float*, float*);
template void from_channels_last<double>(std::int64_t, std::int64_t, std::int64_t, const double*, double*);
template void from_channels_last<std::int64_t>(std::int64_t, std::int64_t, std::int64_t, const std::int64_t*,
                                               std::int64_t*);

}  // namespace cpu

}  // namespace vidgrad
