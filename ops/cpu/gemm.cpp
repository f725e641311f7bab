// gemm() over Eigen maps; the four transpose cases are spelled out so Eigen sees the
// layout at compile time.
#include "vidgrad/ops/cpu/gemm.h"

#include <Eigen/Core>

namespace vidgrad::cpu {

template <typename T>
void gemm(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, const T* A, const T* B, T* C,
          bool accumulate) {
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::Map<Mat> c(C, M, N);
  auto run = [&](const auto& a, const auto& b) {
    if (accumulate)
      c.noalias() += a * b;
    else
      c.noalias() = a * b;
  };
  const Eigen::Map<const Mat> a(A, trans_a ? K : M, trans_a ? M : K);
  const Eigen::Map<const Mat> b(B, trans_b ? N : K, trans_b ? K : N);
  if (!trans_a && !trans_b) run(a, b);
  else if (!trans_a && trans_b) run(a, b.transpose());
  else if (trans_a && !trans_b) run(a.transpose(), b);
  else run(a.transpose(), b.transpose());
}

template void gemm<float>(bool, bool, std::int64_t, std::int64_t, std::int64_t, const float*, const float*, float*,
                          bool);
template void gemm<double>(bool, bool, std::int64_t, std::int64_t, std::int64_t, const double*, const double*,
                           double*, bool);

}  // namespace vidgrad::cpu
