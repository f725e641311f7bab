// Row-major GEMM through cuBLAS (column-major): C = A * B row-major is C^T = B^T * A^T
// column-major, so the operands are passed swapped and no transpose is materialised.
#include <cublas_v2.h>

#include <mutex>

#include "vidgrad/core/cuda/context.h"
#include "vidgrad/core/cuda/runtime.h"
#include "vidgrad/ops/cuda/kernels.h"

namespace vidgrad::cuda {

namespace {

#define VG_CUBLAS_CHECK(expr)                                                                        \
  do {                                                                                               \
    const cublasStatus_t vg_status_ = (expr);                                                        \
    VG_CHECK(vg_status_ == CUBLAS_STATUS_SUCCESS,                                                    \
             "cuBLAS call " #expr " failed: " << cublasGetStatusName(vg_status_));                   \
  } while (0)

// One handle per device, bound to the device's compute stream.
cublasHandle_t handle(int device) {
  static std::once_flag once[64];
  static cublasHandle_t handles[64];
  check_device(device, "cuBLAS");
  std::call_once(once[device], [&] {
    DeviceGuard guard(device);
    VG_CUBLAS_CHECK(cublasCreate(&handles[device]));
    VG_CUBLAS_CHECK(cublasSetStream(handles[device], compute_stream(device)));
  });
  return handles[device];
}

}  // namespace

template <typename T>
void gemm(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, const T* A, const T* B, T* C,
          bool accumulate, int device) {
  if (M == 0 || N == 0) return;
  DeviceGuard guard(device);
  if (K == 0) {  // cuBLAS rejects a zero leading dimension; the product is all zeros
    if (!accumulate) VG_CUDA_CHECK(cudaMemsetAsync(C, 0, M * N * sizeof(T), compute_stream(device)));
    return;
  }
  cublasHandle_t h = handle(device);
  const T alpha = 1, beta = accumulate ? 1 : 0;
  // Column-major view: C^T[N, M] = op(B)^T[N, K] * op(A)^T[K, M].
  const cublasOperation_t ob = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t oa = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int ldb = static_cast<int>(trans_b ? K : N);
  const int lda = static_cast<int>(trans_a ? M : K);
  const int ldc = static_cast<int>(N);
  if constexpr (std::is_same_v<T, float>) {
    VG_CUBLAS_CHECK(cublasSetMathMode(h, allow_tf32() ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    VG_CUBLAS_CHECK(cublasSgemm(h, ob, oa, static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), &alpha, B,
                                ldb, A, lda, &beta, C, ldc));
  } else {
    VG_CUBLAS_CHECK(cublasDgemm(h, ob, oa, static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), &alpha, B,
                                ldb, A, lda, &beta, C, ldc));
  }
}

template void gemm<float>(bool, bool, std::int64_t, std::int64_t, std::int64_t, const float*, const float*, float*,
                          bool, int);
template void gemm<double>(bool, bool, std::int64_t, std::int64_t, std::int64_t, const double*, const double*,
                           double*, bool, int);

}  // namespace vidgrad::cuda
