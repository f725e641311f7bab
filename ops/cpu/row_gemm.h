// GEMM for convolutions whose column matrix is made of input rows, with no copy:
//   C[M, N] (=|+=) A[M, K] * B[K, N],   row k of B given by its own pointer b_rows[k].
// Note [row GEMM] in row_gemm.cpp says why and how; the 1x1x1 and kT x 1 x 1 convs in
// conv3d_cpu.cpp use it (forward and input gradient), where M and K are tens to hundreds
// and N (output positions) is tens of thousands.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "vidgrad/core/aligned_vector.h"

namespace vidgrad::cpu {

// Rows of A in panels of kRowGemmMr, each stored k-major ([panel][k][kRowGemmMr]) so the
// micro-kernel reads one contiguous run; rows past M are zero.
inline constexpr std::int64_t kRowGemmMr = 8;

template <typename T>
struct PackedA {
  std::int64_t M = 0, K = 0;
  UninitAlignedVector<T> data;  // Note [scratch alignment] in core/aligned_vector.h

  // a(m, k) gives A's element; any layout (a transposed or tap-reordered weight) packs
  // through the same loop.
  template <typename F>
  PackedA(std::int64_t m, std::int64_t k, F&& a) : M(m), K(k) {
    const std::int64_t panels = (M + kRowGemmMr - 1) / kRowGemmMr;
    data.resize(static_cast<std::size_t>(panels * K * kRowGemmMr));  // not zeroed: every value is written here
#pragma omp parallel for schedule(static) if (panels > 1 && M * K >= (1 << 15))
    for (std::int64_t p = 0; p < panels; ++p) {
      const std::int64_t rows = std::min<std::int64_t>(kRowGemmMr, M - p * kRowGemmMr);
      for (std::int64_t kk = 0; kk < K; ++kk) {  // writes in order; reads 8 rows at a time
        T* dst = data.data() + (p * K + kk) * kRowGemmMr;
        for (std::int64_t i = 0; i < rows; ++i) dst[i] = a(p * kRowGemmMr + i, kk);
        for (std::int64_t i = rows; i < kRowGemmMr; ++i) dst[i] = T(0);
      }
    }
  }
};

// Applied to each finished value as it is stored:
//   c[m, n] = relu?(sum * scale[m] + bias[m] + residual[m * ldr + n]),
// so a conv's bias, an inference batch norm, a residual join and a following ReLU cost no
// extra pass over the output. Only row_gemm applies the residual (other kernels' callers
// leave it null).
template <typename T>
struct GemmEpilogue {
  const T* scale = nullptr;     // per row of C, or null (1)
  const T* bias = nullptr;      // per row of C, or null (0)
  bool relu = false;
  const T* residual = nullptr;  // a matrix laid out like C with row stride ldr, or null (0)
  std::int64_t ldr = 0;
  bool active() const { return scale || bias || relu || residual; }
  // The same epilogue for the rows from `first` on.
  GemmEpilogue from_row(std::int64_t first) const {
    return {scale ? scale + first : nullptr, bias ? bias + first : nullptr, relu,
            residual ? residual + first * ldr : nullptr, ldr};
  }
  // The same epilogue for the columns from `first` on.
  GemmEpilogue from_col(std::int64_t first) const {
    GemmEpilogue e = *this;
    if (e.residual) e.residual += first;
    return e;
  }
  T apply(T v, std::int64_t m, std::int64_t n = 0) const {
    if (scale) v *= scale[m];
    if (bias) v += bias[m];
    if (residual) v += residual[m * ldr + n];
    return !relu || v > T(0) ? v : T(0);  // as relu(): NaN becomes 0
  }
};

// Per-row sums of C as row_gemm stores it, for the batch statistics of a conv's output
// (Note [output statistics] in row_gemm.cpp): for each slot b (a run of columns that
// depends on N only) and row m, sums[3 * (b * M + m)] is the row's value at the slot's
// first column (the shift), and the next two the sums over the slot's columns of
// C[m, n] - shift and of its square. Not with accumulate.
template <typename T>
struct RowSums {
  double* sums = nullptr;  // 3 * row_sums_slots<T>(N) * M values
};
// The slots of an N-column row_gemm<T> with row sums, and the micro-tile panels (48
// columns of float, 24 of double) in each.
template <typename T>
std::int64_t row_sums_slots(std::int64_t N);
template <typename T>
std::int64_t row_sums_panels(std::int64_t N);

// C[m, n] for m < a.M, n < N at c + m * ldc + n. Row k of B is b_rows[k][n], read only
// for n in [b_lo[k], b_hi[k]) and zero elsewhere (b_lo, b_hi null: all of [0, N)), so a
// time-shifted row needs no zero-padded copy. Threads split N (none when called inside a
// parallel region). With accumulate, the epilogue applies to the old value plus the product.
// With row_sums, the sums above are taken as well.
template <typename T>
void row_gemm(const PackedA<T>& a, std::int64_t N, const T* const* b_rows, T* c, std::int64_t ldc, bool accumulate,
              const GemmEpilogue<T>& epilogue = {}, const std::int64_t* b_lo = nullptr,
              const std::int64_t* b_hi = nullptr, const RowSums<T>* row_sums = nullptr);

// C[m, n] += sum over k < K of a_rows[m][k] * b_rows[n][k]: both operands run along the
// reduction (a weight gradient: m an output channel, n an input channel and tap, k a
// position). Row n of B reads zeros outside [b_lo[n], b_hi[n]) (null: all of [0, K)),
// so a time-shifted row needs no padded copy. Without accumulate, C = A B^T: the old C is
// never read (a partial sum needs no zeroing pass). Single-threaded: callers split the
// work. Note [transposed row GEMM] in row_gemm.cpp.
template <typename T>
void row_gemm_nt(std::int64_t M, std::int64_t N, std::int64_t K, const T* const* a_rows, const T* const* b_rows,
                 const std::int64_t* b_lo, const std::int64_t* b_hi, T* c, std::int64_t ldc, bool accumulate = true);

}  // namespace vidgrad::cpu
