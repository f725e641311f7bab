// Note [row GEMM]: SEVNet's 1x1x1 and 3x1x1 convolutions are GEMMs with small M and K
// (32..512 channels, times 3 taps) and a long N (T*H*W output positions, 784..200704).
// Through Eigen, the 3x1x1 conv was three GEMMs of depth C accumulating into the output
// (three read-modify-write passes over it), and Eigen re-packed the whole input for each
// one. Here B is a list of row pointers, so a kT x 1 x 1 conv is one GEMM of depth
// C*kT whose rows are time-shifted views of the input, and the output is written once.
//
// Blocking, in the usual way (BLIS): a thread owns a range of NR-column panels; for a
// block of kPanels panels and kKc rows of B at a time it copies B into a contiguous
// buffer ([k][kPanels * NR], one copy per row, zero past N; rows of B lie a multiple of
// 4 KiB apart at most SEVNet sizes, so reading them in place would thrash the L1 sets;
// the buffer's 1.5 KiB row pitch spreads a panel over the sets), then for each panel
// runs the MR x NR micro-kernel down all row panels of A (packed once by the caller, see
// PackedA). The B panel (kKc x NR) stays in L1 while A streams from L2. The micro-kernel
// keeps MR x NR = 8 x 48 floats in 24 vector registers (AVX-512) and does 24 FMAs per
// k for 3 loads and 8 broadcasts.
#include "vidgrad/ops/cpu/row_gemm.h"
#include "vidgrad/ops/cpu/simd.h"

#include "vidgrad/core/parallel.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

namespace vidgrad::cpu {

namespace {

// Vectors per micro-tile row: 32 zmm hold 24 accumulators; 16 ymm only 8.
constexpr int kNv = kVecBytes == 64 ? 3 : 1;

template <typename T>
constexpr std::int64_t kLanes = Vec<T>::kLanes;
template <typename T>
constexpr std::int64_t kNr = kNv * kLanes<T>;
constexpr std::int64_t kMr = kRowGemmMr;
constexpr std::int64_t kKc = 128;     // rows of B per packed block
constexpr std::int64_t kPanels = 8;   // NR-column panels per packed block

// Stores a micro-tile that is not a full MR x NR (the right or bottom edge of C): c[i, n]
// (=|+=) tile[i][n], then the epilogue when given (on the sum, as for full tiles). Kept out
// of line so that the micro-kernel's accumulators stay in registers.
template <typename T>
[[gnu::noinline]] void store_edge(const T* tile, std::int64_t NR, T* c, std::int64_t ldc, std::int64_t rows,
                                  std::int64_t cols, bool load_c, const GemmEpilogue<T>* ep) {
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t n = 0; n < cols; ++n) {
      const T v = (load_c ? c[i * ldc + n] : T(0)) + tile[i * NR + n];
      c[i * ldc + n] = ep ? ep->apply(v, i) : v;
    }
}

// c[i, n] (i < rows, n < cols) (=|+=) sum over k < kc of a[k][i] * b[k * ldb + n]; a is an
// MR-row panel of packed A, b one NR-column panel of the packed B block. ep (null unless
// this is the last block of k) is applied with its rows starting at this panel's first.
template <typename T>
void micro_kernel(std::int64_t kc, const T* a, const T* b, std::int64_t ldb, T* c, std::int64_t ldc, std::int64_t rows,
                  std::int64_t cols, bool load_c, const GemmEpilogue<T>* ep) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t L = kLanes<T>, NR = kNr<T>;
  V acc[kMr][kNv];
#pragma GCC unroll 8
  for (auto& row : acc)
#pragma GCC unroll 8
    for (auto& v : row) v = V{};
  for (std::int64_t k = 0; k < kc; ++k) {
    V bv[kNv];
#pragma GCC unroll 8
    for (int j = 0; j < kNv; ++j) bv[j] = load_vec(b + k * ldb + j * L);
#pragma GCC unroll 8
    for (std::int64_t i = 0; i < kMr; ++i) {
      const T s = a[k * kMr + i];
#pragma GCC unroll 8
      for (int j = 0; j < kNv; ++j) acc[i][j] += s * bv[j];
    }
  }
  if (rows != kMr || cols != NR) {
    V tile[kMr][kNv];  // copied by value: taking acc's address would keep it in memory
#pragma GCC unroll 8
    for (std::int64_t i = 0; i < kMr; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < kNv; ++j) tile[i][j] = acc[i][j];
    store_edge(reinterpret_cast<const T*>(tile), NR, c, ldc, rows, cols, load_c, ep);  // vectors alias T
    return;
  }
#pragma GCC unroll 8
  for (std::int64_t i = 0; i < kMr; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < kNv; ++j) {
      if (load_c) acc[i][j] += load_vec(c + i * ldc + j * L);
      if (ep) {
        if (ep->scale) acc[i][j] *= ep->scale[i];
        if (ep->bias) acc[i][j] += ep->bias[i];
        if (ep->relu) acc[i][j] = acc[i][j] > T(0) ? acc[i][j] : V{};  // as relu(): NaN becomes 0
      }
      store_vec(c + i * ldc + j * L, acc[i][j]);
    }
}

// Panels [p_lo, p_hi) of C; see the Note.
template <typename T>
void row_gemm_panels(const PackedA<T>& a, std::int64_t N, const T* const* b_rows, T* c, std::int64_t ldc,
                     bool accumulate, const GemmEpilogue<T>& epilogue, std::int64_t p_lo, std::int64_t p_hi) {
  const bool with_epilogue = epilogue.active();
  constexpr std::int64_t NR = kNr<T>;
  thread_local std::vector<T> packed;
  packed.resize(static_cast<std::size_t>(kPanels * kKc * NR));
  T* bp = packed.data();
  const std::int64_t m_panels = (a.M + kMr - 1) / kMr;
  for (std::int64_t pb = p_lo; pb < p_hi; pb += kPanels) {
    const std::int64_t pe = std::min(p_hi, pb + kPanels);
    for (std::int64_t k0 = 0; k0 < a.K; k0 += kKc) {
      const std::int64_t kc = std::min(kKc, a.K - k0);
      // Row k of the block is one copy of (pe - pb) * NR columns, zero past N.
      const std::int64_t width = (pe - pb) * NR, cols_all = std::min(width, N - pb * NR);
      for (std::int64_t k = 0; k < kc; ++k) {
        T* dst = bp + k * width;
        std::memcpy(dst, b_rows[k0 + k] + pb * NR, static_cast<std::size_t>(cols_all) * sizeof(T));
        std::fill(dst + cols_all, dst + width, T(0));
      }
      const bool last = k0 + kc == a.K && with_epilogue;
      for (std::int64_t p = pb; p < pe; ++p) {
        const std::int64_t n0 = p * NR, cols = std::min(NR, N - n0);
        for (std::int64_t mp = 0; mp < m_panels; ++mp) {
          const GemmEpilogue<T> ep = epilogue.from_row(mp * kMr);
          micro_kernel(kc, a.data.data() + (mp * a.K + k0) * kMr, bp + (p - pb) * NR, width,
                       c + mp * kMr * ldc + n0, ldc, std::min(kMr, a.M - mp * kMr), cols, accumulate || k0 > 0,
                       last ? &ep : nullptr);
        }
      }
    }
  }
}

}  // namespace

template <typename T>
void row_gemm(const PackedA<T>& a, std::int64_t N, const T* const* b_rows, T* c, std::int64_t ldc, bool accumulate,
              const GemmEpilogue<T>& epilogue) {
  if (a.M == 0 || N == 0) return;
  if (a.K == 0) {
    for (std::int64_t m = 0; m < a.M; ++m)
      for (std::int64_t n = 0; n < N; ++n) c[m * ldc + n] = epilogue.apply(accumulate ? c[m * ldc + n] : T(0), m);
    return;
  }
  const std::int64_t panels = (N + kNr<T> - 1) / kNr<T>;
  const bool parallel = !omp_in_parallel() && omp_get_max_threads() > 1 && panels > 1 &&
                        a.M * a.K * N >= 32 * kMinParallelWork;
  if (!parallel) {
    row_gemm_panels(a, N, b_rows, c, ldc, accumulate, epilogue, 0, panels);
    return;
  }
#pragma omp parallel
  {
    const std::int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    row_gemm_panels(a, N, b_rows, c, ldc, accumulate, epilogue, panels * t / nt, panels * (t + 1) / nt);
  }
}

template void row_gemm<float>(const PackedA<float>&, std::int64_t, const float* const*, float*, std::int64_t, bool,
                              const GemmEpilogue<float>&);
template void row_gemm<double>(const PackedA<double>&, std::int64_t, const double* const*, double*, std::int64_t,
                               bool, const GemmEpilogue<double>&);

}  // namespace vidgrad::cpu
