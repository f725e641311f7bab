// The register-tile micro-kernel shared by the row GEMMs (row_gemm.cpp) and the Winograd
// temporal convolution (winograd_temporal.cpp): C tile (MR x NR) (=|+=) packed A panel
// (k-major, MR rows) times packed B panel (k rows of NR columns). Internal to ops/cpu.
#pragma once

#include <cstdint>

#include "vidgrad/ops/cpu/row_gemm.h"
#include "vidgrad/ops/cpu/simd.h"

namespace vidgrad::cpu::kernel {

// Vectors per micro-tile row: 32 zmm hold 24 accumulators; 16 ymm only 8.
constexpr int kNv = kVecBytes == 64 ? 3 : 1;

template <typename T>
constexpr std::int64_t kLanes = Vec<T>::kLanes;
template <typename T>
constexpr std::int64_t kNr = kNv * kLanes<T>;
constexpr std::int64_t kMr = kRowGemmMr;

// Stores a micro-tile that is not a full MR x NR (the right or bottom edge of C): c[i, n]
// (=|+=) tile[i][n], then the epilogue when given (on the sum, as for full tiles). Kept out
// of line so that the micro-kernel's accumulators stay in registers.
template <typename T>
[[gnu::noinline]] void store_edge(const T* tile, std::int64_t NR, T* c, std::int64_t ldc, std::int64_t rows,
                                  std::int64_t cols, bool load_c, const GemmEpilogue<T>* ep) {
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t n = 0; n < cols; ++n) {
      const T v = (load_c ? c[i * ldc + n] : T(0)) + tile[i * NR + n];
      c[i * ldc + n] = ep ? ep->apply(v, i, n) : v;
    }
}

// c[i, n] (i < rows, n < cols) (=|+=) sum over k < kc of a[k][i] * b[k * ldb + n]; a is an
// MR-row panel of packed A, b one NR-column panel of the packed B block. ep (null unless
// this is the last block of k) is applied with its rows starting at this panel's first.
// NV vectors per row of the tile: kNv, or fewer for a narrow last panel (micro_tile).
// With kRowsA, a is instead MR rows lda apart (a[i * lda + k]): the kernel broadcasts one
// value of A at a time, so A needs no packing where its rows are already in cache (the
// Winograd weight gradient's transformed output gradient).
template <typename T, int NV, bool kRowsA = false>
void micro_kernel(std::int64_t kc, const T* a, const T* b, std::int64_t ldb, T* c, std::int64_t ldc, std::int64_t rows,
                  std::int64_t cols, bool load_c, const GemmEpilogue<T>* ep, std::int64_t lda = 0) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t L = kLanes<T>, NR = NV * L;
  V acc[kMr][NV];
#pragma GCC unroll 8
  for (auto& row : acc)
#pragma GCC unroll 8
    for (auto& v : row) v = V{};
  for (std::int64_t k = 0; k < kc; ++k) {
    V bv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) bv[j] = load_vec(b + k * ldb + j * L);
#pragma GCC unroll 8
    for (std::int64_t i = 0; i < kMr; ++i) {
      const T s = kRowsA ? a[i * lda + k] : a[k * kMr + i];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i][j] += s * bv[j];
    }
  }
  if (rows != kMr || cols != NR) {
    V tile[kMr][NV];  // copied by value: taking acc's address would keep it in memory
#pragma GCC unroll 8
    for (std::int64_t i = 0; i < kMr; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) tile[i][j] = acc[i][j];
    store_edge(reinterpret_cast<const T*>(tile), NR, c, ldc, rows, cols, load_c, ep);  // vectors alias T
    return;
  }
#pragma GCC unroll 8
  for (std::int64_t i = 0; i < kMr; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
      if (load_c) acc[i][j] += load_vec(c + i * ldc + j * L);
      if (ep) {
        if (ep->scale) acc[i][j] *= ep->scale[i];
        if (ep->bias) acc[i][j] += ep->bias[i];
        if (ep->residual) acc[i][j] += load_vec(ep->residual + i * ep->ldr + j * L);
        if (ep->relu) acc[i][j] = acc[i][j] > T(0) ? acc[i][j] : V{};  // as relu(): NaN becomes 0
      }
      store_vec(c + i * ldc + j * L, acc[i][j]);
    }
}

// One micro-tile: a panel with at most 16 or 32 valid columns (the last one of a row of
// 56 outputs, 64 channels, ...) runs a one- or two-vector kernel instead of computing 48
// columns and dropping most of them. kRowsA and lda as for micro_kernel.
template <typename T, bool kRowsA = false>
inline void micro_tile(std::int64_t kc, const T* a, const T* b, std::int64_t ldb, T* c, std::int64_t ldc,
                       std::int64_t rows, std::int64_t cols, bool load_c, const GemmEpilogue<T>* ep,
                       std::int64_t lda = 0) {
  if constexpr (kNv == 3) {
    if (cols <= kLanes<T>) return micro_kernel<T, 1, kRowsA>(kc, a, b, ldb, c, ldc, rows, cols, load_c, ep, lda);
    if (cols <= 2 * kLanes<T>)
      return micro_kernel<T, 2, kRowsA>(kc, a, b, ldb, c, ldc, rows, cols, load_c, ep, lda);
  }
  micro_kernel<T, kNv, kRowsA>(kc, a, b, ldb, c, ldc, rows, cols, load_c, ep, lda);
}

}  // namespace vidgrad::cpu::kernel
