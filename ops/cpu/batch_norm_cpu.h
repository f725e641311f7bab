// CPU batch-norm kernels. x and y are contiguous (N, C, S) with S the product of the
// trailing dims; per-channel arrays have C entries.
#pragma once

#include <cstdint>

namespace vidgrad::cpu {

// mean[c] and biased var[c] over N*S elements, accumulated in double.
template <typename T>
void batch_norm_stats(const T* x, std::int64_t N, std::int64_t C, std::int64_t S, double* mean, double* var);

// y = (x - mean[c]) * invstd[c] * w[c] + b[c]; w and b may be null (1 and 0). With relu,
// y = max(that, 0) in the same pass. Computed as fma(x, a, shift) with a and shift from
// bn_affine(): the backward recomputes the ReLU's mask bit for bit (Note [ReLU mask from x]).
template <typename T>
struct BnAffine {
  T a, shift;
};
template <typename T>
inline BnAffine<T> bn_affine(double mean, double invstd, const T* w, const T* b, std::int64_t c) {
  const double scale = invstd * (w ? static_cast<double>(w[c]) : 1.0);
  return {static_cast<T>(scale), static_cast<T>((b ? static_cast<double>(b[c]) : 0.0) - mean * scale)};
}
// With residual (x's layout), y = that + residual before the ReLU (batch_norm_add).
template <typename T>
void batch_norm_apply(const T* x, std::int64_t N, std::int64_t C, std::int64_t S, const double* mean,
                      const double* invstd, const T* w, const T* b, T* y, bool relu = false,
                      const T* residual = nullptr);

// The input gradient's coefficients of channel c, gx = alpha * gm + beta * (x - m) + gamma
// with m = mean rounded to T, from the sums of gm and gm * (x - m) over the channel; writes
// the weight and bias gradients (gw, gb may be null).
template <typename T>
struct GradCoefficients {
  T alpha, beta, gamma;
};
template <typename T>
inline GradCoefficients<T> grad_coefficients(std::int64_t c, double M, double sum_g, double sum_gd, const double* mean,
                                      const double* invstd, const T* w, bool batch_stats, T* gw, T* gb) {
  const T m = static_cast<T>(mean[c]);
  // d weight; the rounding of mean to T shifts x - mean by a constant, corrected here.
  const double sum_gxhat = (sum_gd - (mean[c] - static_cast<double>(m)) * sum_g) * invstd[c];
  if (gb) gb[c] = static_cast<T>(sum_g);
  if (gw) gw[c] = static_cast<T>(sum_gxhat);
  const double wc = w ? static_cast<double>(w[c]) : 1.0;
  const double k = wc * invstd[c];
  // training: gx = k * (g - mean(g) - xhat * mean(g * xhat)); eval: gx = k * g. With
  // xhat = (x - mean) * invstd that is linear in g and x per element.
  const double mg = batch_stats ? sum_g / M : 0.0;
  const double mgx = batch_stats ? sum_gxhat / M : 0.0;
  // As alpha * g + beta * (x - m) + gamma, with m = mean rounded to T: no cancellation
  // between two large terms when |mean| >> std.
  const double b = -k * invstd[c] * mgx;
  return {static_cast<T>(k), static_cast<T>(b), static_cast<T>(-k * mg + b * (static_cast<double>(m) - mean[c]))};
}

// Training forward: mean[c], biased var[c] and invstd[c] = 1 / sqrt(var[c] + eps) from x,
// and y as batch_norm_apply writes it, channel by channel (Note [statistics and output per
// channel]); the same values as batch_norm_stats then batch_norm_apply.
template <typename T>
void batch_norm_train_forward(const T* x, std::int64_t N, std::int64_t C, std::int64_t S, double eps, const T* w,
                              const T* b, T* y, bool relu, double* mean, double* var, double* invstd,
                              const T* residual = nullptr);

// Gradients given gy. With `batch_stats`, mean/invstd came from this batch and the input
// gradient includes their dependence on x; otherwise they are constants (eval).
// Any of gx, gw, gb may be null to skip it; all are written, not accumulated. gx may be gy
// itself (each value is read before it is overwritten, in the same pass). With relu,
// the forward had a fused ReLU: gy counts only where its output was > 0, recomputed from x,
// mean, invstd, w and b exactly as batch_norm_apply did (b is read only then). gy's samples
// lie gy_stride values apart (0: C * S; more for a channel slice of a larger tensor, as
// concat's backward hands out), each contiguous.
template <typename T>
void batch_norm_backward(const T* x, const T* gy, std::int64_t N, std::int64_t C, std::int64_t S,
                         const double* mean, const double* invstd, const T* w, const T* b, bool batch_stats, T* gx,
                         T* gw, T* gb, bool relu = false, std::int64_t gy_stride = 0);

// The backward of y = relu(batch_norm(x) + residual) (batch_norm_add with its ReLU), given
// the output y: gres = gy where y > 0, else 0 (the residual's gradient, and the masked
// gradient the batch norm's backward then takes as above, without a ReLU of its own). gres
// may be gy itself; gx, gw, gb as batch_norm_backward writes them.
template <typename T>
void batch_norm_add_relu_backward(const T* x, const T* y, const T* gy, std::int64_t N, std::int64_t C,
                                  std::int64_t S, const double* mean, const double* invstd, const T* w,
                                  bool batch_stats, T* gres, T* gx, T* gw, T* gb);

}  // namespace vidgrad::cpu
