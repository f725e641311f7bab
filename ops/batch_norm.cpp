// batch_norm: checks, statistics, running-stat update, dispatch and backward node.
#include "vidgrad/ops/batch_norm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "vidgrad/autograd/node.h"
#include "vidgrad/core/layout.h"
#include "vidgrad/core/profile.h"
#include "vidgrad/ops/common.h"
#include "vidgrad/ops/elementwise.h"
#include "vidgrad/ops/cpu/batch_norm_cpu.h"
#include "vidgrad/ops/cpu/channels_last.h"
#ifdef VIDGRAD_WITH_CUDA
#include "vidgrad/ops/cuda/kernels.h"
#endif

namespace vidgrad {

namespace {

// The distance between g's samples when g has x's shape, dtype and device and is
// contiguous within each sample but not as a whole (a channel slice); else 0.
std::int64_t sample_slice_stride(const Tensor& g, const Tensor& x) {
  if (g.is_contiguous() || g.shape() != x.shape() || g.dtype() != x.dtype() || g.device() != x.device() ||
      g.dim() < 2)
    return 0;
  std::int64_t expect = 1;
  for (int k = g.dim() - 1; k >= 1; --k) {
    if (g.shape()[k] != 1 && g.strides()[k] != expect) return 0;
    expect *= g.shape()[k];
  }
  return g.shape()[0] == 1 || g.strides()[0] >= expect ? std::max(g.strides()[0], expect) : 0;
}

void check_channel_vector(const char* arg, const Tensor& t, std::int64_t C) {
  if (!t.defined()) return;
  VG_CHECK(t.dim() == 1 && t.shape()[0] == C,
           "batch_norm: " << arg << " must have shape [" << C << "], got " << shape_str(t.shape()));
}

// batch_norm's argument checks.
void check_args(const Tensor& x_in, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                const Tensor& running_var, const BatchNormOptions& opts) {
  ops_detail::check_floating("batch_norm", "input", x_in);
  VG_CHECK(x_in.dim() >= 2, "batch_norm: input must have rank >= 2 (N, C, ...), got shape " << shape_str(x_in.shape()));
  ops_detail::check_same("batch_norm", {{"input", &x_in}, {"weight", &weight}, {"bias", &bias},
                                        {"running_mean", &running_mean}, {"running_var", &running_var}});
  const std::int64_t N = x_in.shape()[0], C = x_in.shape()[1], S = x_in.numel() / std::max<std::int64_t>(N * C, 1);
  check_channel_vector("weight", weight, C);
  check_channel_vector("bias", bias, C);
  check_channel_vector("running_mean", running_mean, C);
  check_channel_vector("running_var", running_var, C);
  VG_CHECK(running_mean.defined() == running_var.defined(),
           "batch_norm: running_mean and running_var must be given together");
  // Running statistics are updated in place, so they must be plain arrays.
  VG_CHECK(!running_mean.defined() || (running_mean.is_contiguous() && running_var.is_contiguous()),
           "batch_norm: running_mean and running_var must be contiguous (they are updated in place)");
  VG_CHECK(opts.training || running_mean.defined(), "batch_norm: eval mode needs running_mean and running_var");
  VG_CHECK(opts.eps > 0, "batch_norm: eps must be > 0, got " << opts.eps);
  VG_CHECK(opts.momentum >= 0 && opts.momentum <= 1, "batch_norm: momentum must be in [0, 1], got " << opts.momentum);
  VG_CHECK(!opts.training || N * S > 1, "batch_norm: training needs more than one value per channel, got input shape "
                                            << shape_str(x_in.shape()));
}

// running = (1 - momentum) running + momentum * the batch's (the variance unbiased).
template <typename T>
void update_running(const Tensor& running_mean, const Tensor& running_var, const double* mean, const double* var,
                    std::int64_t C, std::int64_t count, double momentum) {
  if (!running_mean.defined()) return;
  T* rm = running_mean.data<T>();
  T* rv = running_var.data<T>();
  const double unbias = static_cast<double>(count) / static_cast<double>(count - 1);
  for (std::int64_t c = 0; c < C; ++c) {
    rm[c] = static_cast<T>((1 - momentum) * rm[c] + momentum * mean[c]);
    rv[c] = static_cast<T>((1 - momentum) * rv[c] + momentum * var[c] * unbias);
  }
}

// Evaluation: mean and 1 / sqrt(var + eps) from the running statistics.
template <typename T>
void running_statistics(const Tensor& running_mean, const Tensor& running_var, double eps, std::int64_t C,
                        double* mean, double* invstd) {
  const T* rm = running_mean.data<T>();
  const T* rv = running_var.data<T>();
  for (std::int64_t c = 0; c < C; ++c) {
    mean[c] = rm[c];
    invstd[c] = 1.0 / std::sqrt(static_cast<double>(rv[c]) + eps);
  }
}

// Statistics given for C channels (ChannelStatistics), copied to mean and var.
void copy_given(const ChannelStatistics& given, std::int64_t C, double* mean, double* var) {
  VG_CHECK(std::ssize(given.mean) == C && std::ssize(given.var) == C,
           "batch_norm statistics: given statistics have " << given.mean.size() << " means and " << given.var.size()
                                                           << " variances for " << C << " channels");
  std::copy(given.mean.begin(), given.mean.end(), mean);
  std::copy(given.var.begin(), given.var.end(), var);
}

// Whether batch_norm takes x in its channels-last layout (ops/cpu/channels_last.h): a CPU
// tensor stored channels-last (not also NCDHW) whose channels are whole vectors.
bool runs_channels_last(const Tensor& x) {
  if (!x.device().is_cpu() || !is_channels_last(x) || x.is_contiguous()) return false;
  bool fits = false;
  dispatch_floating(x.dtype(), "batch_norm", [&]<typename T>() { fits = cpu::channels_last_vectors_fit<T>(x.shape()[1]); });
  return fits;
}

// batch_norm_impl on a channels-last CPU x: the same statistics, running-stat update and
// values, the output, the input gradient and a residual's gradient channels-last.
Tensor batch_norm_channels_last(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                                const Tensor& running_var, const BatchNormOptions& opts, const Tensor& residual_in,
                                const ChannelStatistics* given) {
  const std::int64_t C = x.shape()[1], P = x.numel() / C;
  const Tensor residual = residual_in.defined() ? channels_last_copy(residual_in) : Tensor();
  const Tensor weight_c = weight.defined() ? weight.contiguous() : Tensor();
  const Tensor bias_c = bias.defined() ? bias.contiguous() : Tensor();
  Tensor y = empty_channels_last(x.shape(), x.dtype(), x.device());
  auto mean = std::make_shared<std::vector<double>>(C);
  auto invstd = std::make_shared<std::vector<double>>(C);
  dispatch_floating(x.dtype(), "batch_norm", [&]<typename T>() {
    auto ptr = [](const Tensor& t) { return t.defined() ? t.data<T>() : nullptr; };
    if (opts.training) {
      std::vector<double> var(C);
      if (given)
        copy_given(*given, C, mean->data(), var.data());
      else
        cpu::channels_last_statistics<T>(P, C, x.data<T>(), mean->data(), var.data());
      for (std::int64_t c = 0; c < C; ++c) (*invstd)[c] = 1.0 / std::sqrt(var[c] + opts.eps);
      update_running<T>(running_mean, running_var, mean->data(), var.data(), C, P, opts.momentum);
    } else {
      running_statistics<T>(running_mean, running_var, opts.eps, C, mean->data(), invstd->data());
    }
    cpu::batch_norm_channels_last_apply<T>(x.data<T>(), P, C, mean->data(), invstd->data(), ptr(weight_c),
                                           ptr(bias_c), y.data<T>(), opts.relu, ptr(residual));
  });
  // The input gradient over the output gradient where the engine's is the only handle on
  // it (autograd's Note [reusing the output gradient]).
  // A converted copy is the closure's own.
  auto reusable = [](const Tensor& gy_in, const Tensor& gy) {
    return !gy.is_same(gy_in) || autograd::grad_output_reusable();
  };
  if (residual.defined()) {
    if (autograd::needs_graph({&x, &weight, &bias, &residual_in})) {
      autograd::attach(
          y, "batch_norm_add_relu", {x, weight, bias, residual_in},
          [x = x.detach(), w = weight_c.defined() ? weight_c.detach() : Tensor(), y_saved = y.detach(), mean, invstd,
           P, C, training = opts.training, reusable](const Tensor& gy_in, const std::vector<bool>& needs) {
            const Tensor gy = channels_last_copy(gy_in);
            std::vector<Tensor> grads(4);
            grads[3] = reusable(gy_in, gy) ? gy : empty_channels_last(x.shape(), x.dtype(), x.device());
            if (needs[0]) grads[0] = empty_channels_last(x.shape(), x.dtype(), x.device());
            if (needs[1]) grads[1] = Tensor::empty({C}, x.dtype(), x.device());
            if (needs[2]) grads[2] = Tensor::empty({C}, x.dtype(), x.device());
            dispatch_floating(x.dtype(), "batch_norm_add backward", [&]<typename T>() {
              auto ptr = [](const Tensor& t) { return t.defined() ? t.data<T>() : nullptr; };
              cpu::batch_norm_add_relu_channels_last_backward<T>(
                  x.data<T>(), y_saved.data<T>(), gy.data<T>(), P, C, mean->data(), invstd->data(), ptr(w), training,
                  grads[3].data<T>(), ptr(grads[0]), ptr(grads[1]), ptr(grads[2]));
            });
            if (!needs[3]) grads[3] = Tensor();
            return grads;
          });
    }
    return y;
  }
  if (autograd::needs_graph({&x, &weight, &bias})) {
    autograd::attach(y, opts.relu ? "batch_norm_relu" : "batch_norm", {x, weight, bias},
                     [x = x.detach(), w = weight_c.defined() ? weight_c.detach() : Tensor(),
                      b = bias_c.defined() && opts.relu ? bias_c.detach() : Tensor(), mean, invstd, P, C,
                      training = opts.training, relu = opts.relu,
                      reusable](const Tensor& gy_in, const std::vector<bool>& needs) {
                       const Tensor gy = channels_last_copy(gy_in);
                       std::vector<Tensor> grads(3);
                       if (needs[0])
                         grads[0] = reusable(gy_in, gy) ? gy : empty_channels_last(x.shape(), x.dtype(), x.device());
                       if (needs[1]) grads[1] = Tensor::empty({C}, x.dtype(), x.device());
                       if (needs[2]) grads[2] = Tensor::empty({C}, x.dtype(), x.device());
                       dispatch_floating(x.dtype(), "batch_norm backward", [&]<typename T>() {
                         auto ptr = [](const Tensor& t) { return t.defined() ? t.data<T>() : nullptr; };
                         cpu::batch_norm_channels_last_backward<T>(x.data<T>(), gy.data<T>(), P, C, mean->data(),
                                                                   invstd->data(), ptr(w), ptr(b), training,
                                                                   ptr(grads[0]), ptr(grads[1]), ptr(grads[2]), relu);
                       });
                       return grads;
                     });
  }
  return y;
}

// batch_norm, or with residual (CPU, with the ReLU: batch_norm_add) relu(batch_norm(x) + residual).
// given: x's batch statistics (CPU, training), instead of a pass over x for them.
Tensor batch_norm_impl(const Tensor& x_in, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                       const Tensor& running_var, const BatchNormOptions& opts, const Tensor& residual_in,
                       const ChannelStatistics* given) {
  profile::Scope scope(residual_in.defined() ? "batch_norm_add_relu" : "batch_norm");
  check_args(x_in, weight, bias, running_mean, running_var, opts);
  if (runs_channels_last(x_in))
    return batch_norm_channels_last(x_in, weight, bias, running_mean, running_var, opts, residual_in, given);
  const std::int64_t N = x_in.shape()[0], C = x_in.shape()[1], S = x_in.numel() / std::max<std::int64_t>(N * C, 1);
  const Tensor x = x_in.contiguous();
  const Tensor residual = residual_in.defined() ? residual_in.contiguous() : Tensor();
  const Tensor weight_c = weight.defined() ? weight.contiguous() : Tensor();
  const Tensor bias_c = bias.defined() ? bias.contiguous() : Tensor();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  // Per-channel mean and 1/std for the backward: host vectors on the CPU, a (2, C) float64
  // device tensor on CUDA.
  auto mean = std::make_shared<std::vector<double>>(C);
  auto invstd = std::make_shared<std::vector<double>>(C);
  Tensor stats;
  switch (x.device().type) {
    case DeviceType::kCPU:
      dispatch_floating(x.dtype(), "batch_norm", [&]<typename T>() {
        auto ptr = [](const Tensor& t) { return t.defined() ? t.data<T>() : nullptr; };
        const T* w = ptr(weight_c);
        const T* b = ptr(bias_c);
        if (opts.training && given) {  // the output pass alone
          std::vector<double> var(C);
          copy_given(*given, C, mean->data(), var.data());
          for (std::int64_t c = 0; c < C; ++c) (*invstd)[c] = 1.0 / std::sqrt(var[c] + opts.eps);
          update_running<T>(running_mean, running_var, mean->data(), var.data(), C, N * S, opts.momentum);
          cpu::batch_norm_apply<T>(x.data<T>(), N, C, S, mean->data(), invstd->data(), w, b, y.data<T>(), opts.relu,
                                   ptr(residual));
        } else if (opts.training) {
          std::vector<double> var(C);
          cpu::batch_norm_train_forward<T>(x.data<T>(), N, C, S, opts.eps, w, b, y.data<T>(), opts.relu, mean->data(),
                                           var.data(), invstd->data(), ptr(residual));
          update_running<T>(running_mean, running_var, mean->data(), var.data(), C, N * S, opts.momentum);
        } else {
          running_statistics<T>(running_mean, running_var, opts.eps, C, mean->data(), invstd->data());
          cpu::batch_norm_apply<T>(x.data<T>(), N, C, S, mean->data(), invstd->data(), w, b, y.data<T>(), opts.relu,
                                   ptr(residual));
        }
      });
      break;
#ifdef VIDGRAD_WITH_CUDA
    case DeviceType::kCUDA:
      stats = Tensor::empty({2, C}, DType::kFloat64, x.device());
      dispatch_floating(x.dtype(), "batch_norm", [&]<typename T>() {
        const int dev = x.device().index;
        double* m = stats.device_data<double>();
        double* is = m + C;
        auto ptr = [](const Tensor& t) { return t.defined() ? t.device_data<T>() : nullptr; };
        if (opts.training) {
          cuda::batch_norm_stats<T>(x.device_data<T>(), N, C, S, m, is, dev);
          const double unbias = static_cast<double>(N * S) / static_cast<double>(N * S - 1);
          cuda::batch_norm_finalize<T>(m, is, ptr(running_mean), ptr(running_var), C, opts.eps, opts.momentum, unbias,
                                       dev);
        } else {
          cuda::batch_norm_eval_stats<T>(running_mean.device_data<T>(), running_var.device_data<T>(), m, is, C,
                                         opts.eps, dev);
        }
        cuda::batch_norm_apply<T>(x.device_data<T>(), N, C, S, m, is, ptr(weight_c), ptr(bias_c), y.device_data<T>(),
                                  dev);
        if (opts.relu) cuda::relu_forward<T>(y.device_data<T>(), y.device_data<T>(), y.numel(), dev);
      });
      break;
#endif
    default: ops_detail::no_kernel("batch_norm", x.device());
  }
  if (residual.defined()) {
    if (autograd::needs_graph({&x_in, &weight, &bias, &residual_in})) {
      // The ReLU's mask comes from the saved output (the next layer's input, saved by it
      // anyway); the masked gradient is the residual's, written over the incoming one when
      // the engine holds the only handle on it (Note [reusing the output gradient]).
      autograd::attach(
          y, "batch_norm_add_relu", {x_in, weight, bias, residual_in},
          [x = x.detach(), w = weight_c.defined() ? weight_c.detach() : Tensor(), y_saved = y.detach(), mean, invstd,
           N, C, S, training = opts.training](const Tensor& gy_in, const std::vector<bool>& needs) {
            const bool over_gy = gy_in.is_contiguous() && gy_in.dtype() == x.dtype() && gy_in.shape() == x.shape() &&
                                 autograd::grad_output_reusable();
            const Tensor gy = gy_in.contiguous();
            std::vector<Tensor> grads(4);
            grads[3] = over_gy ? gy : Tensor::empty(x.shape(), x.dtype(), x.device());  // always: the masked gradient
            if (needs[0]) grads[0] = Tensor::empty(x.shape(), x.dtype(), x.device());
            if (needs[1]) grads[1] = Tensor::empty({C}, x.dtype(), x.device());
            if (needs[2]) grads[2] = Tensor::empty({C}, x.dtype(), x.device());
            dispatch_floating(x.dtype(), "batch_norm_add backward", [&]<typename T>() {
              auto ptr = [](const Tensor& t) { return t.defined() ? t.data<T>() : nullptr; };
              cpu::batch_norm_add_relu_backward<T>(x.data<T>(), y_saved.data<T>(), gy.data<T>(), N, C, S,
                                                   mean->data(), invstd->data(), ptr(w), training, grads[3].data<T>(),
                                                   ptr(grads[0]), ptr(grads[1]), ptr(grads[2]));
            });
            if (!needs[3]) grads[3] = Tensor();
            return grads;
          });
    }
    return y;
  }
  if (autograd::needs_graph({&x_in, &weight, &bias})) {
    autograd::attach(y, opts.relu ? "batch_norm_relu" : "batch_norm", {x_in, weight, bias},
                     [x = x.detach(), w = weight_c.defined() ? weight_c.detach() : Tensor(),
                      b = bias_c.defined() && opts.relu ? bias_c.detach() : Tensor(), mean, invstd, stats, N, C, S,
                      training = opts.training, relu = opts.relu,
                      relu_y = opts.relu && x.device().type != DeviceType::kCPU ? y.detach() : Tensor()](
                         const Tensor& gy_in, const std::vector<bool>& needs) {
                       // The input gradient over the output gradient where the engine's is the
                       // only handle on it (autograd's Note [reusing the output gradient]).
                       const bool over_gy = needs[0] && x.device().type == DeviceType::kCPU &&
                                            gy_in.is_contiguous() && gy_in.dtype() == x.dtype() &&
                                            gy_in.shape() == x.shape() && autograd::grad_output_reusable();
                       // A channel slice of a larger tensor (concat's backward hands out such
                       // views), contiguous within each sample, is read in place on the CPU.
                       const std::int64_t slice_stride = x.device().type == DeviceType::kCPU && !over_gy
                                                             ? sample_slice_stride(gy_in, x)
                                                             : 0;
                       Tensor gy = slice_stride > 0 ? gy_in : gy_in.contiguous();
                       std::vector<Tensor> grads(3);
                       if (needs[0]) grads[0] = over_gy ? gy : Tensor::empty(x.shape(), x.dtype(), x.device());
                       if (needs[1]) grads[1] = Tensor::empty({C}, x.dtype(), x.device());
                       if (needs[2]) grads[2] = Tensor::empty({C}, x.dtype(), x.device());
                       dispatch_floating(x.dtype(), "batch_norm backward", [&]<typename T>() {
                         auto ptr = [](const Tensor& t) { return t.defined() ? t.device_data<T>() : nullptr; };
                         switch (x.device().type) {
                           case DeviceType::kCPU:
                             // The ReLU's mask is recomputed from x (Note [ReLU mask from x]).
                             cpu::batch_norm_backward<T>(x.data<T>(), gy.data<T>(), N, C, S, mean->data(),
                                                         invstd->data(), ptr(w), ptr(b), training, ptr(grads[0]),
                                                         ptr(grads[1]), ptr(grads[2]), relu, slice_stride);
                             break;
#ifdef VIDGRAD_WITH_CUDA
                           case DeviceType::kCUDA: {
                             if (relu_y.defined()) {  // mask first, then the plain backward
                               Tensor masked = Tensor::empty(gy.shape(), gy.dtype(), gy.device());
                               cuda::relu_backward<T>(gy.device_data<T>(), relu_y.device_data<T>(),
                                                      masked.device_data<T>(), gy.numel(), x.device().index);
                               gy = masked;
                             }
                             const Tensor sums = Tensor::empty({2, C}, DType::kFloat64, x.device());
                             const double* m = stats.device_data<double>();
                             cuda::batch_norm_backward<T>(x.device_data<T>(), gy.device_data<T>(), N, C, S, m, m + C,
                                                          ptr(w), training, ptr(grads[0]), ptr(grads[1]),
                                                          ptr(grads[2]), sums.device_data<double>(), x.device().index);
                             break;
                           }
#endif
                           default: ops_detail::no_kernel("batch_norm backward", x.device());
                         }
                       });
                       return grads;
                     });
  }
  return y;
}

}  // namespace

namespace ops_detail {

void batch_norm_cpu_statistics(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                               const Tensor& running_var, const BatchNormOptions& opts, std::vector<double>& mean,
                               std::vector<double>& invstd, const ChannelStatistics* given) {
  check_args(x, weight, bias, running_mean, running_var, opts);
  VG_CHECK(x.device().type == DeviceType::kCPU && x.is_contiguous(),
           "batch_norm statistics: x must be a contiguous CPU tensor, got one on " << x.device());
  const std::int64_t N = x.shape()[0], C = x.shape()[1], S = x.numel() / std::max<std::int64_t>(N * C, 1);
  mean.assign(static_cast<std::size_t>(C), 0.0);
  invstd.assign(static_cast<std::size_t>(C), 0.0);
  dispatch_floating(x.dtype(), "batch_norm", [&]<typename T>() {
    if (opts.training) {
      // The statistics batch_norm_train_forward takes (its header: the same values).
      std::vector<double> var(static_cast<std::size_t>(C));
      if (given) {
        copy_given(*given, C, mean.data(), var.data());
      } else {
        cpu::batch_norm_stats<T>(x.data<T>(), N, C, S, mean.data(), var.data());
      }
      for (std::int64_t c = 0; c < C; ++c) invstd[c] = 1.0 / std::sqrt(var[c] + opts.eps);
      update_running<T>(running_mean, running_var, mean.data(), var.data(), C, N * S, opts.momentum);
    } else {
      running_statistics<T>(running_mean, running_var, opts.eps, C, mean.data(), invstd.data());
    }
  });
}

}  // namespace ops_detail

Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                  const Tensor& running_var, const BatchNormOptions& opts, const ChannelStatistics* x_stats) {
  return batch_norm_impl(x, weight, bias, running_mean, running_var, opts, Tensor(),
                         ops_detail::usable_statistics(x_stats, opts));
}

Tensor batch_norm_add(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                      const Tensor& running_var, const Tensor& residual, const BatchNormOptions& opts,
                      const ChannelStatistics* x_stats) {
  VG_CHECK(residual.defined(), "batch_norm_add: residual is undefined");
  ops_detail::check_same("batch_norm_add", {{"input", &x}, {"residual", &residual}});
  VG_CHECK(residual.shape() == x.shape(), "batch_norm_add: residual must have the input's shape "
                                              << shape_str(x.shape()) << ", got " << shape_str(residual.shape()));
  if (x.device().type != DeviceType::kCPU || !opts.relu) {  // composed: the plain batch norm, then the join
    BatchNormOptions plain = opts;
    plain.relu = false;
    const Tensor y = batch_norm(x, weight, bias, running_mean, running_var, plain, x_stats);
    return opts.relu ? add_relu(y, residual) : add(y, residual);
  }
  return batch_norm_impl(x, weight, bias, running_mean, running_var, opts, residual,
                         ops_detail::usable_statistics(x_stats, opts));
}

}  // namespace vidgrad
