// Row-major GEMM through cuBLAS (column-major): C = A * B row-major is C^T = B^T * A^T
// column-major, so the operands are passed swapped and no transpose is materialised.
//
// Note [cuBLAS loaded on first use]
// Merely loading libcublas (with libcublasLt) costs a process about 210 MB of resident
// memory (measured: an empty program linked against it peaks at 213,212 KB, against
// 1,452 KB with cudart alone and 2,612 KB with cuDNN). vidgrad is not linked against it:
// the first GEMM on a device dlopen()s it and looks up the six functions used here, so
// CPU-only runs of a CUDA-enabled build pay nothing.
#include <cublas_v2.h>
#include <dlfcn.h>

#include <mutex>
#include <string>

#include "vidgrad/core/cuda/context.h"
#include "vidgrad/core/cuda/runtime.h"
#include "vidgrad/ops/cuda/kernels.h"

namespace vidgrad::cuda {

namespace {

#define VG_CUBLAS_CHECK(expr)                                                                        \
  do {                                                                                               \
    const cublasStatus_t vg_status_ = (expr);                                                        \
    VG_CHECK(vg_status_ == CUBLAS_STATUS_SUCCESS,                                                    \
             "cuBLAS call " #expr " failed: " << api().status_name(vg_status_));                     \
  } while (0)

struct CublasApi {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSetMathMode) set_math_mode = nullptr;
  decltype(&cublasSgemm_v2) sgemm = nullptr;
  decltype(&cublasDgemm_v2) dgemm = nullptr;
  decltype(&cublasGetStatusName) status_name = nullptr;
};

const CublasApi& api() {
  static const CublasApi loaded = [] {
    const std::string soname = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
    void* lib = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
#ifdef VIDGRAD_CUDA_LIBRARY_DIR
    if (lib == nullptr) lib = dlopen((std::string(VIDGRAD_CUDA_LIBRARY_DIR) + "/" + soname).c_str(), RTLD_NOW | RTLD_LOCAL);
#endif
    VG_CHECK(lib != nullptr, "linear on cuda: cannot load cuBLAS (" << soname << "): " << dlerror());
    auto sym = [&](const char* name) {
      void* f = dlsym(lib, name);
      VG_CHECK(f != nullptr, "linear on cuda: " << soname << " has no " << name);
      return f;
    };
    CublasApi a;
    a.create = reinterpret_cast<decltype(a.create)>(sym("cublasCreate_v2"));
    a.set_stream = reinterpret_cast<decltype(a.set_stream)>(sym("cublasSetStream_v2"));
    a.set_math_mode = reinterpret_cast<decltype(a.set_math_mode)>(sym("cublasSetMathMode"));
    a.sgemm = reinterpret_cast<decltype(a.sgemm)>(sym("cublasSgemm_v2"));
    a.dgemm = reinterpret_cast<decltype(a.dgemm)>(sym("cublasDgemm_v2"));
    a.status_name = reinterpret_cast<decltype(a.status_name)>(sym("cublasGetStatusName"));
    return a;
  }();
  return loaded;
}

// One handle per device, bound to the device's compute stream.
cublasHandle_t handle(int device) {
  static std::once_flag once[64];
  static cublasHandle_t handles[64];
  check_device(device, "cuBLAS");
  std::call_once(once[device], [&] {
    DeviceGuard guard(device);
    VG_CUBLAS_CHECK(api().create(&handles[device]));
    VG_CUBLAS_CHECK(api().set_stream(handles[device], compute_stream(device)));
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
    VG_CUBLAS_CHECK(api().set_math_mode(h, allow_tf32() ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    VG_CUBLAS_CHECK(api().sgemm(h, ob, oa, static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), &alpha, B,
                                ldb, A, lda, &beta, C, ldc));
  } else {
    VG_CUBLAS_CHECK(api().dgemm(h, ob, oa, static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), &alpha, B,
                                ldb, A, lda, &beta, C, ldc));
  }
}

template void gemm<float>(bool, bool, std::int64_t, std::int64_t, std::int64_t, const float*, const float*, float*,
                          bool, int);
template void gemm<double>(bool, bool, std::int64_t, std::int64_t, std::int64_t, const double*, const double*,
                           double*, bool, int);

}  // namespace vidgrad::cuda
