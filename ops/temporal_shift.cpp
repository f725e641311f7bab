// temporal_shift: whole (H, W) planes are copied, so the op is memory-bound and simple.
#include "vidgrad/ops/temporal_shift.h"

#include <algorithm>
#include <cstring>

#include "vidgrad/autograd/node.h"
#include "vidgrad/core/parallel.h"
#include "vidgrad/core/profile.h"
#include "vidgrad/ops/common.h"
#ifdef VIDGRAD_WITH_CUDA
#include "vidgrad/ops/cuda/kernels.h"
#endif

namespace vidgrad {

namespace {

// out[n, c, t] = x[n, c, t + dir] for c < fold, x[n, c, t - dir] for fold <= c < 2 fold,
// x[n, c, t] otherwise; zero where the source frame is outside [0, T).
template <typename T>
void shift_kernel(const T* x, T* out, std::int64_t N, std::int64_t C, std::int64_t Tn, std::int64_t HW,
                  std::int64_t fold, int dir) {
#pragma omp parallel for collapse(2) schedule(static) if (N * C * Tn * HW >= kMinParallelWork)
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c) {
      const std::int64_t delta = c < fold ? dir : (c < 2 * fold ? -dir : 0);
      const T* src = x + (n * C + c) * Tn * HW;
      T* dst = out + (n * C + c) * Tn * HW;
      for (std::int64_t t = 0; t < Tn; ++t) {
        const std::int64_t s = t + delta;
        if (s < 0 || s >= Tn)
          std::fill(dst + t * HW, dst + (t + 1) * HW, T(0));
        else
          std::memcpy(dst + t * HW, src + s * HW, static_cast<std::size_t>(HW) * sizeof(T));
      }
    }
}

Tensor shift(const Tensor& x, std::int64_t fold, int dir) {
  const Tensor xc = x.contiguous();
  const Shape& s = xc.shape();
  Tensor out = Tensor::empty(s, xc.dtype(), xc.device());
  switch (xc.device().type) {
    case DeviceType::kCPU:
      dispatch_floating(xc.dtype(), "temporal_shift", [&]<typename T>() {
        shift_kernel<T>(xc.data<T>(), out.data<T>(), s[0], s[1], s[2], s[3] * s[4], fold, dir);
      });
      break;
#ifdef VIDGRAD_WITH_CUDA
    case DeviceType::kCUDA:
      dispatch_floating(xc.dtype(), "temporal_shift", [&]<typename T>() {
        cuda::temporal_shift<T>(xc.device_data<T>(), out.device_data<T>(), s[0], s[1], s[2], s[3] * s[4], fold, dir,
                                xc.device().index);
      });
      break;
#endif
    default: ops_detail::no_kernel("temporal_shift", xc.device());
  }
  return out;
}

}  // namespace

Tensor temporal_shift(const Tensor& x, std::int64_t fold_div) {
  profile::Scope scope("temporal_shift");
  ops_detail::check_rank("temporal_shift", "input", x, 5, "(N,C,T,H,W)");
  ops_detail::check_floating("temporal_shift", "input", x);
  VG_CHECK(fold_div >= 2, "temporal_shift: fold_div must be >= 2 (two folds are shifted), got " << fold_div);
  const std::int64_t C = x.shape()[1];
  VG_CHECK(C >= fold_div, "temporal_shift: fold_div " << fold_div << " leaves no channel to shift in input "
                                                      << shape_str(x.shape()) << " with " << C << " channels");
  const std::int64_t fold = C / fold_div;
  Tensor y = shift(x, fold, +1);
  if (autograd::needs_graph({&x})) {
    autograd::attach(y, "temporal_shift", {x}, [fold](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{shift(g, fold, -1)};
    });
  }
  return y;
}

}  // namespace vidgrad
