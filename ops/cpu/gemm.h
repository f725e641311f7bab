// Row-major GEMM on contiguous buffers (Eigen underneath, threads from set_num_threads):
//   C[M, N] = op(A) * op(B)          (accumulate == false)
//   C[M, N] += op(A) * op(B)         (accumulate == true)
// op(A) is A[M, K] or, with trans_a, A[K, M] transposed; likewise B[K, N] / B[N, K].
#pragma once

#include <cstdint>

namespace vidgrad::cpu {

template <typename T>
void gemm(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, const T* A, const T* B, T* C,
          bool accumulate);

}  // namespace vidgrad::cpu
