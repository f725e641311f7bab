// log_softmax and cross_entropy. Cross-entropy is fused (one pass for the loss, and the
// backward (softmax - q) / N needs no second graph).
#include "vidgrad/ops/loss.h"

#include <cmath>
#include <limits>

#include "vidgrad/autograd/node.h"
#include "vidgrad/core/profile.h"
#include "vidgrad/ops/common.h"
#ifdef VIDGRAD_WITH_CUDA
#include "vidgrad/ops/cuda/kernels.h"
#endif

namespace vidgrad {

namespace {

// y[o, :, i] = log_softmax(x[o, :, i]) for a contiguous (outer, K, inner) view.
template <typename T>
void log_softmax_kernel(const T* x, T* y, std::int64_t outer, std::int64_t K, std::int64_t inner) {
#pragma omp parallel for collapse(2) schedule(static) if (outer * inner >= 64)
  for (std::int64_t o = 0; o < outer; ++o) {
    for (std::int64_t i = 0; i < inner; ++i) {
      const T* px = x + o * K * inner + i;
      T* py = y + o * K * inner + i;
      T mx = -std::numeric_limits<T>::infinity();
      for (std::int64_t k = 0; k < K; ++k) mx = std::max(mx, px[k * inner]);
      double s = 0.0;
      for (std::int64_t k = 0; k < K; ++k) s += std::exp(static_cast<double>(px[k * inner] - mx));
      const T lse = mx + static_cast<T>(std::log(s));
      for (std::int64_t k = 0; k < K; ++k) py[k * inner] = px[k * inner] - lse;
    }
  }
}

}  // namespace

Tensor log_softmax(const Tensor& x_in, std::int64_t dim_in) {
  profile::Scope scope("log_softmax");
  ops_detail::check_floating("log_softmax", "input", x_in);
  VG_CHECK(x_in.dim() >= 1, "log_softmax: input must have rank >= 1, got a scalar");
  const int d = normalize_dim(dim_in, x_in.dim(), "log_softmax");
  const Tensor x = x_in.contiguous();
  std::int64_t outer = 1, inner = 1;
  for (int i = 0; i < d; ++i) outer *= x.shape()[i];
  for (int i = d + 1; i < x.dim(); ++i) inner *= x.shape()[i];
  const std::int64_t K = x.shape()[d];
  VG_CHECK(K > 0, "log_softmax: dim " << d << " of " << shape_str(x.shape()) << " is empty");
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  switch (x.device().type) {
    case DeviceType::kCPU:
      dispatch_floating(x.dtype(), "log_softmax",
                        [&]<typename T>() { log_softmax_kernel<T>(x.data<T>(), y.data<T>(), outer, K, inner); });
      break;
#ifdef VIDGRAD_WITH_CUDA
    case DeviceType::kCUDA:
      dispatch_floating(x.dtype(), "log_softmax", [&]<typename T>() {
        cuda::log_softmax_forward<T>(x.device_data<T>(), y.device_data<T>(), outer, K, inner, x.device().index);
      });
      break;
#endif
    default: ops_detail::no_kernel("log_softmax", x.device());
  }
  if (autograd::needs_graph({&x_in})) {
    // d/dx: g - softmax * sum_k g
    autograd::attach(y, "log_softmax", {x_in},
                     [y = y.detach(), outer, K, inner](const Tensor& g_in, const std::vector<bool>&) {
                       const Tensor g = g_in.contiguous();
                       Tensor gx = Tensor::empty(g.shape(), g.dtype(), g.device());
                       dispatch_floating(g.dtype(), "log_softmax backward", [&]<typename T>() {
#ifdef VIDGRAD_WITH_CUDA
                         if (g.device().is_cuda()) {
                           cuda::log_softmax_backward<T>(g.device_data<T>(), y.device_data<T>(), gx.device_data<T>(),
                                                         outer, K, inner, g.device().index);
                           return;
                         }
#endif
                         const T* pg = g.data<T>();
                         const T* py = y.data<T>();
                         T* out = gx.data<T>();
                         for (std::int64_t o = 0; o < outer; ++o)
                           for (std::int64_t i = 0; i < inner; ++i) {
                             const std::int64_t base = o * K * inner + i;
                             T s = 0;
                             for (std::int64_t k = 0; k < K; ++k) s += pg[base + k * inner];
                             for (std::int64_t k = 0; k < K; ++k)
                               out[base + k * inner] = pg[base + k * inner] - std::exp(py[base + k * inner]) * s;
                           }
                       });
                       return std::vector<Tensor>{gx};
                     });
  }
  return y;
}

Tensor cross_entropy(const Tensor& logits_in, const Tensor& targets_in, double label_smoothing) {
  profile::Scope scope("cross_entropy");
  ops_detail::check_rank("cross_entropy", "logits", logits_in, 2, "(N, K)");
  ops_detail::check_floating("cross_entropy", "logits", logits_in);
  ops_detail::check_rank("cross_entropy", "targets", targets_in, 1, "(N)");
  VG_CHECK(targets_in.dtype() == DType::kInt64,
           "cross_entropy: targets must be int64 class indices, got " << dtype_name(targets_in.dtype()));
  const std::int64_t N = logits_in.shape()[0], K = logits_in.shape()[1];
  VG_CHECK(targets_in.shape()[0] == N, "cross_entropy: " << targets_in.shape()[0] << " targets for " << N
                                                         << " rows of logits " << shape_str(logits_in.shape()));
  VG_CHECK(N > 0 && K > 0, "cross_entropy: logits " << shape_str(logits_in.shape()) << " are empty");
  VG_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0,
           "cross_entropy: label_smoothing must be in [0, 1], got " << label_smoothing);
  // Targets are checked on the host (copied there from a device: N values, and a wait for
  // the device; pass host targets to avoid it).
  const Tensor targets_host = targets_in.detach().to(Device::cpu()).contiguous();
  const std::int64_t* t = targets_host.data<std::int64_t>();
  for (std::int64_t n = 0; n < N; ++n)
    VG_CHECK(t[n] >= 0 && t[n] < K, "cross_entropy: target " << t[n] << " at row " << n
                                                             << " is outside the class range [0, " << K << ")");
  const Device device = logits_in.device();
  const Tensor targets = targets_host.to(device, /*non_blocking=*/true);
  const Tensor logp = log_softmax(logits_in.detach(), 1);
  Tensor loss = Tensor::empty({}, logits_in.dtype(), device);
  const double eps = label_smoothing;
  dispatch_floating(logp.dtype(), "cross_entropy", [&]<typename T>() {
#ifdef VIDGRAD_WITH_CUDA
    if (device.is_cuda()) {
      cuda::cross_entropy_forward<T>(logp.device_data<T>(), targets.device_data<std::int64_t>(), loss.device_data<T>(),
                                     N, K, eps, device.index);
      return;
    }
#endif
    const T* lp = logp.data<T>();
    double total = 0.0;
    for (std::int64_t n = 0; n < N; ++n) {
      double row = (1.0 - eps) * lp[n * K + t[n]];
      if (eps > 0) {
        double s = 0.0;
        for (std::int64_t k = 0; k < K; ++k) s += lp[n * K + k];
        row += eps / static_cast<double>(K) * s;
      }
      total -= row;
    }
    *loss.data<T>() = static_cast<T>(total / static_cast<double>(N));
  });
  if (autograd::needs_graph({&logits_in})) {
    autograd::attach(loss, "cross_entropy", {logits_in},
                     [logp, targets, N, K, eps](const Tensor& g, const std::vector<bool>&) {
                       Tensor gx = Tensor::empty({N, K}, logp.dtype(), logp.device());
                       dispatch_floating(logp.dtype(), "cross_entropy backward", [&]<typename T>() {
#ifdef VIDGRAD_WITH_CUDA
                         if (logp.device().is_cuda()) {
                           // g stays on the device: no host round trip in the training step.
                           const Tensor gc = g.contiguous();
                           cuda::cross_entropy_backward<T>(logp.device_data<T>(), targets.device_data<std::int64_t>(),
                                                           gc.device_data<T>(), gx.device_data<T>(), N, K, eps,
                                                           logp.device().index);
                           return;
                         }
#endif
                         const T scale = static_cast<T>(g.item() / static_cast<double>(N));
                         const T* lp = logp.data<T>();
                         const std::int64_t* tg = targets.data<std::int64_t>();
                         T* out = gx.data<T>();
                         const T smooth = static_cast<T>(eps / static_cast<double>(K));
                         for (std::int64_t n = 0; n < N; ++n)
                           for (std::int64_t k = 0; k < K; ++k) {
                             const T q = (k == tg[n] ? static_cast<T>(1.0 - eps) : T(0)) + smooth;
                             out[n * K + k] = (std::exp(lp[n * K + k]) - q) * scale;
                           }
                       });
                       return std::vector<Tensor>{gx};
                     });
  }
  return loss;
}

}  // namespace vidgrad
