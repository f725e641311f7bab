// conv3d: argument checks, output geometry, device dispatch and the backward node.
#include "vidgrad/ops/conv3d.h"

#include <cmath>
#include <sstream>
#include <vector>

#include "vidgrad/autograd/grad_mode.h"
#include "vidgrad/autograd/node.h"
#include "vidgrad/core/profile.h"
#include "vidgrad/ops/batch_norm.h"
#include "vidgrad/ops/elementwise.h"
#include "vidgrad/ops/common.h"
#include "vidgrad/core/layout.h"
#include "vidgrad/ops/cpu/batch_norm_cpu.h"
#include "vidgrad/ops/cpu/channels_last.h"
#include "vidgrad/ops/cpu/conv3d_cpu.h"
#ifdef VIDGRAD_WITH_CUDA
#include "vidgrad/ops/cuda/kernels.h"
#endif

namespace vidgrad {

namespace {

cpu::Conv3dGeometry geometry(const Tensor& x, const Tensor& w, const Tensor& b, const Conv3dOptions& o) {
  using ops_detail::triple_str;
  ops_detail::check_rank("conv3d", "input", x, 5, "(N,C,T,H,W)");
  ops_detail::check_rank("conv3d", "weight", w, 5, "(O,C/groups,kT,kH,kW)");
  ops_detail::check_floating("conv3d", "input", x);
  ops_detail::check_same("conv3d", {{"input", &x}, {"weight", &w}, {"bias", &b}});
  for (int i = 0; i < 3; ++i) {
    VG_CHECK(o.stride[i] >= 1, "conv3d: stride must be >= 1 on every axis, got " << triple_str(o.stride));
    VG_CHECK(o.dilation[i] >= 1, "conv3d: dilation must be >= 1 on every axis, got " << triple_str(o.dilation));
    VG_CHECK(o.padding[i] >= 0, "conv3d: padding must be >= 0 on every axis, got " << triple_str(o.padding));
  }
  const Shape& xs = x.shape();
  const Shape& ws = w.shape();
  const std::int64_t C = xs[1], O = ws[0];
  VG_CHECK(o.groups >= 1, "conv3d: groups must be >= 1, got " << o.groups);
  VG_CHECK(C % o.groups == 0, "conv3d: groups " << o.groups << " does not divide the " << C << " input channels");
  VG_CHECK(O % o.groups == 0, "conv3d: groups " << o.groups << " does not divide the " << O << " output channels");
  VG_CHECK(ws[1] == C / o.groups, "conv3d: weight " << shape_str(ws) << " expects " << ws[1] * o.groups
                                                    << " input channels with groups=" << o.groups << ", input "
                                                    << shape_str(xs) << " has " << C);
  if (b.defined()) {
    VG_CHECK(b.dim() == 1 && b.shape()[0] == O,
             "conv3d: bias must have shape [" << O << "], got " << shape_str(b.shape()));
  }
  cpu::Conv3dGeometry g{};
  g.N = xs[0]; g.C = C; g.T = xs[2]; g.H = xs[3]; g.W = xs[4];
  g.O = O; g.kT = ws[2]; g.kH = ws[3]; g.kW = ws[4];
  g.sT = o.stride[0]; g.sH = o.stride[1]; g.sW = o.stride[2];
  g.pT = o.padding[0]; g.pH = o.padding[1]; g.pW = o.padding[2];
  g.dT = o.dilation[0]; g.dH = o.dilation[1]; g.dW = o.dilation[2];
  g.groups = o.groups;
  const std::int64_t in[3] = {g.T, g.H, g.W}, k[3] = {g.kT, g.kH, g.kW};
  std::int64_t out[3];
  for (int i = 0; i < 3; ++i) {
    VG_CHECK(k[i] >= 1, "conv3d: kernel sizes must be >= 1, got weight " << shape_str(ws));
    const std::int64_t span = o.dilation[i] * (k[i] - 1) + 1;
    VG_CHECK(in[i] + 2 * o.padding[i] >= span,
             "conv3d: input " << shape_str(xs) << " padded by " << triple_str(o.padding) << " is smaller than the "
                              << "dilated kernel (" << k[0] << ", " << k[1] << ", " << k[2] << ") with dilation "
                              << triple_str(o.dilation));
    out[i] = (in[i] + 2 * o.padding[i] - span) / o.stride[i] + 1;
  }
  g.To = out[0]; g.Ho = out[1]; g.Wo = out[2];
  return g;
}

// The profiler's name for a conv: kernel, group width, stride, channels and output size,
// e.g. "1x3x3 gw8 s2 64->128 @28x28"; empty when profiling is off.
std::string profile_label(const cpu::Conv3dGeometry& g) {
  if (!profile::enabled()) return {};
  std::ostringstream s;
  s << g.kT << "x" << g.kH << "x" << g.kW;
  if (g.groups > 1) s << " gw" << g.Cg();
  if (g.sT > 1 || g.sH > 1 || g.sW > 1) s << " s(" << g.sT << "," << g.sH << "," << g.sW << ")";
  s << " " << g.C << "->" << g.O << " @" << g.Ho << "x" << g.Wo;
  return s.str();
}

// The 3x1x1 conv with time padding 1 and unit strides (SEVNet's temporal convs).
bool temporal_3x1x1(const cpu::Conv3dGeometry& g) { return g.temporal_only() && g.kT == 3 && g.pT == 1 && g.To == g.T; }

// Whether conv3d runs g on `input` by the channels-last kernels (ops/cpu/channels_last.h):
// a CPU input stored channels-last (and not also NCDHW, as one with C == 1 is) into a
// 1x1x1 conv with unit strides or a 3x1x1 with time padding 1, ungrouped and undilated,
// whose channel counts are whole vectors.
bool runs_channels_last(const Tensor& input, const cpu::Conv3dGeometry& g) {
  if (!input.device().is_cpu() || !is_channels_last(input) || input.is_contiguous() ||
      !(g.pointwise() || temporal_3x1x1(g)) || g.groups != 1 || g.dT != 1 || g.dH != 1 || g.dW != 1)
    return false;
  bool fits = false;
  dispatch_floating(input.dtype(), "conv3d",
                    [&]<typename T>() { fits = cpu::pointwise_channels_last_fits<T>(g.C, g.O); });
  return fits;
}

// conv3d's channels-last path: y is channels-last too, and so is the input gradient (gy is
// converted first when it comes in another layout).
Tensor conv3d_channels_last(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv3dOptions& opts,
                            ChannelStatistics* stats, const cpu::Conv3dGeometry& g) {
  const std::string label = profile_label(g);
  profile::Scope scope("conv3d", profile::enabled() ? label + " channels-last" : "");
  const Tensor w = weight.contiguous();
  const Tensor b = bias.defined() ? bias.contiguous() : Tensor();
  const std::int64_t P = g.N * g.T * g.H * g.W;
  Tensor y = empty_channels_last({g.N, g.O, g.To, g.Ho, g.Wo}, x.dtype(), x.device());
  dispatch_floating(x.dtype(), "conv3d", [&]<typename T>() {
    const cpu::GemmEpilogue<T> ep{.bias = b.defined() ? b.data<T>() : nullptr, .relu = opts.relu};
    if (g.pointwise())
      cpu::pointwise_channels_last_forward<T>(P, g.C, g.O, x.data<T>(), w.data<T>(), y.data<T>(), ep);
    else
      cpu::temporal_channels_last_forward<T>(g.N, g.T, g.H * g.W, g.C, g.O, x.data<T>(), w.data<T>(), y.data<T>(), ep);
    if (stats) {
      stats->mean.assign(static_cast<std::size_t>(g.O), 0.0);
      stats->var.assign(static_cast<std::size_t>(g.O), 0.0);
      cpu::channels_last_statistics<T>(P, g.O, y.data<T>(), stats->mean.data(), stats->var.data());
    }
  });
  if (autograd::needs_graph({&x, &weight, &bias})) {
    autograd::attach(
        y, "conv3d", {x, weight, bias},
        [g, P, x_saved = weight.requires_grad() ? x.detach() : Tensor(),
         w_saved = x.requires_grad() ? w.detach() : Tensor(), y_saved = opts.relu ? y.detach() : Tensor()](
            const Tensor& gy_in, const std::vector<bool>& needs) {
          Tensor gy = channels_last_copy(gy_in);
          if (y_saved.defined()) gy = relu_grad(gy, y_saved);  // through the ReLU; keeps the layout
          std::vector<Tensor> grads(3);
          bool accumulate = false;  // into a pending channels-last gradient (Note [accumulating in place])
          if (needs[0]) {
            Tensor pending = g.pointwise() ? autograd::accumulation_target(0) : Tensor();
            if (pending.defined() && is_channels_last(pending) && pending.dtype() == gy.dtype() &&
                pending.device() == gy.device()) {
              grads[0] = pending;
              accumulate = true;
            } else {
              grads[0] = empty_channels_last({g.N, g.C, g.T, g.H, g.W}, gy.dtype(), gy.device());
            }
          }
          if (needs[1]) grads[1] = Tensor::empty({g.O, g.C, g.kT, 1, 1}, gy.dtype(), gy.device());
          if (needs[2]) grads[2] = Tensor::empty({g.O}, gy.dtype(), gy.device());
          dispatch_floating(gy.dtype(), "conv3d backward", [&]<typename T>() {
            if (needs[0]) {
              profile::Scope scope("conv3d", profile::enabled() ? profile_label(g) + " channels-last input grad" : "");
              if (g.pointwise())
                cpu::pointwise_channels_last_backward_input<T>(P, g.C, g.O, gy.data<T>(), w_saved.data<T>(),
                                                               grads[0].data<T>(), accumulate);
              else
                cpu::temporal_channels_last_backward_input<T>(g.N, g.T, g.H * g.W, g.C, g.O, gy.data<T>(),
                                                              w_saved.data<T>(), grads[0].data<T>());
            }
            if (needs[1]) {
              profile::Scope scope("conv3d", profile::enabled() ? profile_label(g) + " channels-last weight grad" : "");
              if (g.pointwise())
                cpu::pointwise_channels_last_backward_weight<T>(P, g.C, g.O, gy.data<T>(), x_saved.data<T>(),
                                                                grads[1].data<T>());
              else
                cpu::temporal_channels_last_backward_weight<T>(g.N, g.T, g.H * g.W, g.C, g.O, gy.data<T>(),
                                                               x_saved.data<T>(), grads[1].data<T>());
            }
            if (needs[2]) cpu::channels_last_channel_sums<T>(P, g.O, gy.data<T>(), grads[2].data<T>());
          });
          return grads;
        });
    y.grad_fn()->detail = label + " channels-last";
  }
  return y;
}

}  // namespace

Tensor conv3d(const Tensor& input, const Tensor& weight, const Tensor& bias, const Conv3dOptions& opts) {
  return conv3d(input, weight, bias, opts, nullptr);
}

Tensor conv3d(const Tensor& input, const Tensor& weight, const Tensor& bias, const Conv3dOptions& opts,
              ChannelStatistics* stats) {
  const cpu::Conv3dGeometry g = geometry(input, weight, bias, opts);
  if (runs_channels_last(input, g)) return conv3d_channels_last(input, weight, bias, opts, stats, g);
  const std::string label = profile_label(g);
  profile::Scope scope("conv3d", label);
  const Tensor x = input.contiguous(), w = weight.contiguous();
  const Tensor b = bias.defined() ? bias.contiguous() : Tensor();
  Tensor y = Tensor::empty({g.N, g.O, g.To, g.Ho, g.Wo}, x.dtype(), x.device());
  switch (x.device().type) {
    case DeviceType::kCPU:
      dispatch_floating(x.dtype(), "conv3d", [&]<typename T>() {
        const cpu::GemmEpilogue<T> ep{.bias = b.defined() ? b.data<T>() : nullptr, .relu = opts.relu};
        if (stats) {
          stats->mean.assign(static_cast<std::size_t>(g.O), 0.0);
          stats->var.assign(static_cast<std::size_t>(g.O), 0.0);
          cpu::conv3d_forward_statistics<T>(g, x.data<T>(), w.data<T>(), y.data<T>(), ep, {}, stats->mean.data(),
                                            stats->var.data());
        } else {
          cpu::conv3d_forward<T>(g, x.data<T>(), w.data<T>(), y.data<T>(), ep);
        }
      });
      break;
#ifdef VIDGRAD_WITH_CUDA
    case DeviceType::kCUDA:
      dispatch_floating(x.dtype(), "conv3d", [&]<typename T>() {
        cuda::conv3d_forward<T>(g, x.device_data<T>(), w.device_data<T>(), b.defined() ? b.device_data<T>() : nullptr,
                                y.device_data<T>(), x.device().index);
        if (opts.relu) cuda::relu_forward<T>(y.device_data<T>(), y.device_data<T>(), y.numel(), x.device().index);
      });
      break;
#endif
    default: ops_detail::no_kernel("conv3d", x.device());
  }
  if (stats && x.device().type != DeviceType::kCPU) *stats = {};
  if (autograd::needs_graph({&input, &weight, &bias})) {
    // The input is saved only for the weight gradient, the weight only for the input gradient.
    autograd::attach(
        y, "conv3d", {input, weight, bias},
        [g, x_saved = weight.requires_grad() ? x.detach() : Tensor(),
         w_saved = input.requires_grad() ? w.detach() : Tensor(), y_saved = opts.relu ? y.detach() : Tensor()](
            const Tensor& gy_in, const std::vector<bool>& needs) {
          Tensor gy = gy_in.contiguous();
          const Device dev = gy.device();
          if (y_saved.defined()) gy = relu_grad(gy, y_saved);  // through the ReLU: passes where y > 0
          std::vector<Tensor> grads(3);
          // Where the input also feeds another branch whose gradient is already pending, the
          // input gradient is added into it as it is computed (Note [accumulating in place]).
          bool accumulate = false;
          if (needs[0] && dev.type == DeviceType::kCPU && cpu::conv3d_input_grad_accumulates(g)) {
            Tensor pending = autograd::accumulation_target(0);
            if (pending.defined() && pending.is_contiguous() && pending.dtype() == gy.dtype() &&
                pending.device() == dev) {
              grads[0] = pending;
              accumulate = true;
            }
          }
          if (needs[0] && !accumulate) grads[0] = Tensor::empty({g.N, g.C, g.T, g.H, g.W}, gy.dtype(), dev);
          if (needs[1]) grads[1] = Tensor::empty({g.O, g.Cg(), g.kT, g.kH, g.kW}, gy.dtype(), dev);
          if (needs[2]) grads[2] = Tensor::empty({g.O}, gy.dtype(), dev);
          dispatch_floating(gy.dtype(), "conv3d backward", [&]<typename T>() {
            switch (dev.type) {
              case DeviceType::kCPU:
                if (needs[0]) {
                  profile::Scope scope("conv3d", profile::enabled() ? profile_label(g) + " input grad" : "");
                  cpu::conv3d_backward_input<T>(g, gy.data<T>(), w_saved.data<T>(), grads[0].data<T>(), accumulate);
                }
                if (needs[1]) {
                  profile::Scope scope("conv3d", profile::enabled() ? profile_label(g) + " weight grad" : "");
                  cpu::conv3d_backward_weight<T>(g, gy.data<T>(), x_saved.data<T>(), grads[1].data<T>());
                }
                if (needs[2]) cpu::conv3d_backward_bias<T>(g, gy.data<T>(), grads[2].data<T>());
                break;
#ifdef VIDGRAD_WITH_CUDA
              case DeviceType::kCUDA:
                if (needs[0])
                  cuda::conv3d_backward_input<T>(g, gy.device_data<T>(), w_saved.device_data<T>(),
                                                 grads[0].device_data<T>(), dev.index);
                if (needs[1])
                  cuda::conv3d_backward_weight<T>(g, gy.device_data<T>(), x_saved.device_data<T>(),
                                                  grads[1].device_data<T>(), dev.index);
                if (needs[2]) cuda::conv3d_backward_bias<T>(g, gy.device_data<T>(), grads[2].device_data<T>(), dev.index);
                break;
#endif
              default: ops_detail::no_kernel("conv3d backward", dev);
            }
          });
          return grads;
        });
    y.grad_fn()->detail = label;
  }
  return y;
}

Tensor batch_norm_relu_conv3d(const Tensor& input, const Tensor& bn_weight, const Tensor& bn_bias,
                              const Tensor& running_mean, const Tensor& running_var, const BatchNormOptions& bn_opts,
                              const Tensor& weight, const Tensor& bias, const Conv3dOptions& opts,
                              const ChannelStatistics* x_stats, ChannelStatistics* y_stats) {
  VG_CHECK(bn_opts.relu, "batch_norm_relu_conv3d: bn_opts.relu must be set (the op is a batch norm with its ReLU, "
                         "then the conv)");
  const cpu::Conv3dGeometry g = geometry(input, weight, bias, opts);
  if (input.device().type != DeviceType::kCPU || opts.relu || !cpu::conv3d_takes_prologue(g))
    return conv3d(batch_norm(input, bn_weight, bn_bias, running_mean, running_var, bn_opts), weight, bias, opts,
                  y_stats);
  const std::string label = profile_label(g);
  const Tensor x = input.contiguous(), w = weight.contiguous();
  const Tensor b = bias.defined() ? bias.contiguous() : Tensor();
  const Tensor bn_w = bn_weight.defined() ? bn_weight.contiguous() : Tensor();
  const Tensor bn_b = bn_bias.defined() ? bn_bias.contiguous() : Tensor();
  auto mean = std::make_shared<std::vector<double>>(), invstd = std::make_shared<std::vector<double>>();
  {
    profile::Scope scope("batch_norm", "statistics");
    ops_detail::batch_norm_cpu_statistics(x, bn_w, bn_b, running_mean, running_var, bn_opts, *mean, *invstd,
                                          ops_detail::usable_statistics(x_stats, bn_opts));
  }
  const std::int64_t C = g.C;
  // The prologue's scale (row 0) and shift (row 1), as batch_norm_apply computes them.
  Tensor affine = Tensor::empty({2, C}, x.dtype(), x.device());
  Tensor y = Tensor::empty({g.N, g.O, g.To, g.Ho, g.Wo}, x.dtype(), x.device());
  dispatch_floating(x.dtype(), "batch_norm_relu_conv3d", [&]<typename T>() {
    auto ptr = [](const Tensor& t) { return t.defined() ? t.data<T>() : nullptr; };
    T* a = affine.data<T>();
    for (std::int64_t c = 0; c < C; ++c) {
      const auto [scale, shift] = cpu::bn_affine<T>((*mean)[c], (*invstd)[c], ptr(bn_w), ptr(bn_b), c);
      a[c] = scale;
      a[C + c] = shift;
    }
    profile::Scope scope("conv3d", profile::enabled() ? "bn-relu " + label : "");
    if (y_stats) {
      y_stats->mean.assign(static_cast<std::size_t>(g.O), 0.0);
      y_stats->var.assign(static_cast<std::size_t>(g.O), 0.0);
      cpu::conv3d_forward_statistics<T>(g, x.data<T>(), w.data<T>(), y.data<T>(), {.bias = ptr(b)}, {a, a + C},
                                        y_stats->mean.data(), y_stats->var.data());
    } else {
      cpu::conv3d_forward<T>(g, x.data<T>(), w.data<T>(), y.data<T>(), {.bias = ptr(b)}, {a, a + C});
    }
  });
  if (autograd::needs_graph({&input, &bn_weight, &bn_bias, &weight, &bias})) {
    autograd::attach(
        y, "batch_norm_relu_conv3d", {input, bn_weight, bn_bias, weight, bias},
        [g, x = x.detach(), w = w.detach(), bn_w = bn_w.defined() ? bn_w.detach() : Tensor(),
         bn_b = bn_b.defined() ? bn_b.detach() : Tensor(), affine, mean, invstd, label,
         training = bn_opts.training](const Tensor& gy_in, const std::vector<bool>& needs) {
          const Tensor gy = gy_in.contiguous();
          std::vector<Tensor> grads(5);
          const Device dev = x.device();
          dispatch_floating(x.dtype(), "batch_norm_relu_conv3d backward", [&]<typename T>() {
            auto ptr = [](const Tensor& t) { return t.defined() ? t.data<T>() : nullptr; };
            const T* a = affine.data<T>();
            if (needs[3]) {
              profile::Scope scope("conv3d", profile::enabled() ? "bn-relu " + label + " weight grad" : "");
              grads[3] = Tensor::empty({g.O, g.Cg(), g.kT, g.kH, g.kW}, x.dtype(), dev);
              cpu::conv3d_backward_weight<T>(g, gy.data<T>(), x.data<T>(), grads[3].data<T>(), {a, a + g.C});
            }
            if (needs[4]) {
              grads[4] = Tensor::empty({g.O}, x.dtype(), dev);
              cpu::conv3d_backward_bias<T>(g, gy.data<T>(), grads[4].data<T>());
            }
            if (!needs[0] && !needs[1] && !needs[2]) return;
            // The normalised input's gradient, then the batch norm's backward over it in place,
            // the ReLU's mask recomputed from x (Note [ReLU mask from x]).
            Tensor gz = Tensor::empty({g.N, g.C, g.T, g.H, g.W}, x.dtype(), dev);
            {
              profile::Scope scope("conv3d", profile::enabled() ? "bn-relu " + label + " input grad" : "");
              cpu::conv3d_backward_input<T>(g, gy.data<T>(), w.data<T>(), gz.data<T>());
            }
            if (needs[1]) grads[1] = Tensor::empty({g.C}, x.dtype(), dev);
            if (needs[2]) grads[2] = Tensor::empty({g.C}, x.dtype(), dev);
            profile::Scope scope("batch_norm", "relu backward");
            cpu::batch_norm_backward<T>(x.data<T>(), gz.data<T>(), g.N, g.C, g.in_volume(), mean->data(),
                                        invstd->data(), ptr(bn_w), ptr(bn_b), training,
                                        needs[0] ? gz.data<T>() : nullptr, ptr(grads[1]), ptr(grads[2]), true);
            if (needs[0]) grads[0] = gz;
          });
          return grads;
        });
    y.grad_fn()->detail = label;
  }
  return y;
}

namespace {

// Note [concat in place]: SEVNet's downsampling module joins its branch and its shortcut
// along channels, relu(concat(h, s)), and concat copied both (0.7-2.1% of an inference step
// at batch 4 8x112, 1.2% at batch 1 16x224, --profile). In evaluation the two convs that make
// h and s write straight into their channel ranges of the joined tensor instead
// (conv3d_batch_norm_inference_into): an NCDHW channel range is one block per sample, so
// the kernels only need the distance between samples of their output (y_sample in
// cpu::conv3d_forward), which the Winograd and row-GEMM convs (the module's 3x1x1 and
// 1x1x1) take as they store; other convs, and other devices, write their own tensor and
// copy it there.

// conv3d_batch_norm_inference, into channels [channel, channel + O) of *into when into is
// not null (checked), else into a tensor of its own; returns the result (the channel range
// of *into: a view).
Tensor conv_bn_inference(const Tensor& input, const Tensor& weight, const Tensor& conv_bias, const Tensor& bn_weight,
                         const Tensor& bn_bias, const Tensor& running_mean, const Tensor& running_var, double eps,
                         const Conv3dOptions& opts, const Tensor& residual, const Tensor* into, std::int64_t channel) {
  VG_CHECK(!autograd::needs_graph({&input, &weight, &conv_bias, &bn_weight, &bn_bias, &residual}),
           "conv3d_batch_norm_inference: forward-only op, but an input requires grad with grad mode on; use conv3d "
           "and batch_norm to record a graph");
  const cpu::Conv3dGeometry g = geometry(input, weight, conv_bias, opts);
  if (into) {
    const char* op = "conv3d_batch_norm_inference_into";
    VG_CHECK(into->defined(), op << ": the output tensor is undefined");
    ops_detail::check_same(op, {{"input", &input}, {"output", into}});
    const Shape& os = into->shape();
    VG_CHECK(os.size() == 5 && os[0] == g.N && os[2] == g.To && os[3] == g.Ho && os[4] == g.Wo,
             op << ": the output must have shape (" << g.N << ", C, " << g.To << ", " << g.Ho << ", " << g.Wo
                << "), got " << shape_str(os));
    VG_CHECK(channel >= 0 && channel + g.O <= os[1],
             op << ": channels [" << channel << ", " << channel + g.O << ") do not fit in the output's " << os[1]);
    VG_CHECK(into->is_contiguous(), op << ": the output must be contiguous");
    VG_CHECK(!into->requires_grad() || !autograd::GradMode::enabled(),
             op << ": the output requires grad; this forward-only op writes it in place");
    for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"input", &input}, {"weight", &weight},
                                  {"residual", &residual}})
      VG_CHECK(!t->defined() || t->storage() != into->storage(),
               op << ": the output shares its storage with the " << name << ", which the conv still reads");
  }
  profile::Scope scope("conv3d+bn", profile_label(g));
  const std::int64_t O = g.O;
  ops_detail::check_same("conv3d_batch_norm_inference", {{"input", &input},
                                                          {"bn_weight", &bn_weight},
                                                          {"bn_bias", &bn_bias},
                                                          {"running_mean", &running_mean},
                                                          {"running_var", &running_var}});
  VG_CHECK(running_mean.defined() && running_var.defined(),
           "conv3d_batch_norm_inference: running_mean and running_var are required");
  VG_CHECK(eps >= 0, "conv3d_batch_norm_inference: eps must be >= 0, got " << eps);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"bn_weight", &bn_weight},
                                {"bn_bias", &bn_bias}, {"running_mean", &running_mean}, {"running_var", &running_var}})
    VG_CHECK(!t->defined() || (t->dim() == 1 && t->shape()[0] == O),
             "conv3d_batch_norm_inference: " << name << " must have shape [" << O << "] (the conv's output channels), got "
                                             << shape_str(t->shape()));
  if (residual.defined()) {
    ops_detail::check_same("conv3d_batch_norm_inference", {{"input", &input}, {"residual", &residual}});
    const Shape out{g.N, g.O, g.To, g.Ho, g.Wo};
    VG_CHECK(residual.shape() == out, "conv3d_batch_norm_inference: residual must have the output's shape "
                                          << shape_str(out) << ", got " << shape_str(residual.shape()));
  }
  if (input.device().type != DeviceType::kCPU || (residual.defined() && !cpu::fuses_residual(g))) {
    // Composed: the device's conv, then its fused BN (+ ReLU), then the residual join.
    Conv3dOptions plain = opts;
    plain.relu = false;
    Tensor y = batch_norm(conv3d(input, weight, conv_bias, plain), bn_weight, bn_bias, running_mean, running_var,
                          {.training = false, .eps = eps, .relu = opts.relu && !residual.defined()});
    if (residual.defined()) y = opts.relu ? add_relu(y, residual) : add(y, residual);
    if (!into) return y;
    Tensor slice = into->narrow(1, channel, g.O);
    slice.copy_(y);
    return slice;
  }
  const Tensor r = residual.defined() ? residual.contiguous() : Tensor();
  const Tensor x = input.contiguous(), w = weight.contiguous();
  // Into *into: the channel range's first value, samples into->shape()[1] * L apart.
  Tensor y = into ? into->narrow(1, channel, g.O) : Tensor::empty({g.N, g.O, g.To, g.Ho, g.Wo}, x.dtype(), x.device());
  const std::int64_t y_sample = into ? into->shape()[1] * g.L() : 0;
  dispatch_floating(x.dtype(), "conv3d_batch_norm_inference", [&]<typename T>() {
    auto values = [&](const Tensor& t, double fallback) {
      std::vector<double> v(static_cast<std::size_t>(O), fallback);
      if (t.defined()) {
        const Tensor c = t.contiguous();
        for (std::int64_t o = 0; o < O; ++o) v[o] = static_cast<double>(c.data<T>()[o]);
      }
      return v;
    };
    const std::vector<double> gamma = values(bn_weight, 1.0), beta = values(bn_bias, 0.0),
                              mean = values(running_mean, 0.0), var = values(running_var, 1.0),
                              cb = values(conv_bias, 0.0);
    std::vector<T> scale(static_cast<std::size_t>(O)), shift(static_cast<std::size_t>(O));
    for (std::int64_t o = 0; o < O; ++o) {
      VG_CHECK(var[o] + eps > 0, "conv3d_batch_norm_inference: running_var[" << o << "] + eps = " << var[o] + eps
                                                                             << " is not positive");
      const double s = gamma[o] / std::sqrt(var[o] + eps);
      scale[o] = static_cast<T>(s);
      shift[o] = static_cast<T>(beta[o] + (cb[o] - mean[o]) * s);
    }
    // reuse_weights: an inference conv meets the same weights at every call (Note [filter
    // cache] in ops/cpu/conv3d_winograd.cpp).
    cpu::conv3d_forward<T>(g, x.data<T>(), w.data<T>(), y.data<T>(),
                           {.scale = scale.data(),
                            .bias = shift.data(),
                            .relu = opts.relu,
                            .residual = r.defined() ? r.data<T>() : nullptr,
                            .ldr = g.L()},
                           {}, /*reuse_weights=*/true, y_sample);
  });
  return y;
}

}  // namespace

Tensor conv3d_batch_norm_inference(const Tensor& input, const Tensor& weight, const Tensor& conv_bias,
                                   const Tensor& bn_weight, const Tensor& bn_bias, const Tensor& running_mean,
                                   const Tensor& running_var, double eps, const Conv3dOptions& opts,
                                   const Tensor& residual) {
  return conv_bn_inference(input, weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, eps, opts,
                           residual, nullptr, 0);
}

Tensor conv3d_batch_norm_inference_into(const Tensor& into, std::int64_t channel, const Tensor& input,
                                        const Tensor& weight, const Tensor& conv_bias, const Tensor& bn_weight,
                                        const Tensor& bn_bias, const Tensor& running_mean, const Tensor& running_var,
                                        double eps, const Conv3dOptions& opts, const Tensor& residual) {
  return conv_bn_inference(input, weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, eps, opts,
                           residual, &into, channel);
}

}  // namespace vidgrad
