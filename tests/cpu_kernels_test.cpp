// The CPU conv kernels' building blocks: the vector helpers' lane shuffles (ops/cpu/simd.h)
// and the row GEMMs (ops/cpu/row_gemm.h) against plain loops at their block edges, in both
// precisions.
#include "vidgrad/ops/cpu/row_gemm.h"
#include "vidgrad/ops/cpu/simd.h"

#include <gtest/gtest.h>

#include <cmath>
#include <initializer_list>
#include <random>
#include <type_traits>
#include <vector>

namespace vidgrad {
namespace {

// row_gemm against the plain triple loop at block edges: M around the 8-row panel, K
// across the 128-row B blocks, N across the 48-column panels and the 8-panel blocks,
// rows of B scattered, C with a row stride, written and accumulated, in both precisions
// and on both sides of the threading threshold.
template <typename T>
void check_row_gemm(std::int64_t M, std::int64_t K, std::int64_t N, bool accumulate) {
  std::mt19937 rng(static_cast<unsigned>(M * 1000003 + K * 1009 + N));
  std::normal_distribution<double> dist;
  std::vector<T> a(M * K), pool((K + 3) * (N + 5)), c((N + 7) * M), expect;
  for (auto& v : a) v = static_cast<T>(dist(rng));
  for (auto& v : pool) v = static_cast<T>(dist(rng));
  for (auto& v : c) v = static_cast<T>(dist(rng));
  std::vector<const T*> rows(K);
  for (std::int64_t k = 0; k < K; ++k) rows[k] = pool.data() + ((k * 7) % (K + 3)) * (N + 5) + (k % 5);
  const std::int64_t ldc = N + 7;
  // Valid column ranges per row of B (zeros outside) on a third of the cases.
  const bool with_ranges = (M + K + N) % 3 == 0;
  std::vector<std::int64_t> lo(K, 0), hi(K, N);
  if (with_ranges)
    for (std::int64_t k = 0; k < K; ++k) {
      lo[k] = k % 4 == 0 ? 0 : (k * 7) % (N + 1);
      hi[k] = k % 4 == 0 ? N : std::min<std::int64_t>(N, lo[k] + (k * 13) % (N + 1));
    }
  expect = c;
  for (std::int64_t m = 0; m < M; ++m)
    for (std::int64_t n = 0; n < N; ++n) {
      double acc = accumulate ? static_cast<double>(c[m * ldc + n]) : 0.0;
      for (std::int64_t k = 0; k < K; ++k)
        if (n >= lo[k] && n < hi[k]) acc += static_cast<double>(a[m * K + k]) * rows[k][n];
      expect[m * ldc + n] = static_cast<T>(acc);
    }
  // The epilogue (scale, bias, ReLU per row) on half the cases.
  const bool with_epilogue = (M + K + N) % 2 == 0;
  std::vector<T> scale(M), bias(M);
  for (std::int64_t m = 0; m < M; ++m) {
    scale[m] = static_cast<T>(dist(rng));
    bias[m] = static_cast<T>(dist(rng));
  }
  const cpu::GemmEpilogue<T> ep{.scale = scale.data(), .bias = bias.data(), .relu = true};
  if (with_epilogue)
    for (std::int64_t m = 0; m < M; ++m)
      for (std::int64_t n = 0; n < N; ++n) expect[m * ldc + n] = ep.apply(expect[m * ldc + n], m);
  cpu::row_gemm(cpu::PackedA<T>(M, K, [&](std::int64_t m, std::int64_t k) { return a[m * K + k]; }), N, rows.data(),
                c.data(), ldc, accumulate, with_epilogue ? ep : cpu::GemmEpilogue<T>{}, with_ranges ? lo.data() : nullptr,
                with_ranges ? hi.data() : nullptr);
  const double tol = std::is_same_v<T, float> ? 1e-4 * std::sqrt(static_cast<double>(K)) : 1e-12;
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(c.size()); ++i)
    ASSERT_NEAR(c[i], expect[i], tol * (1 + std::abs(static_cast<double>(expect[i]))))
        << "M " << M << " K " << K << " N " << N << " accumulate " << accumulate << " at " << i / ldc << ", "
        << i % ldc;
}

// store_interleaved3 (the Winograd weight gradient's tap interleave): out[3i + k] is lane
// i of source k, in both precisions.
template <typename T>
void check_store_interleaved3() {
  using V = typename cpu::Vec<T>::type;
  constexpr std::int64_t kL = cpu::Vec<T>::kLanes;
  V src[3];
  for (int k = 0; k < 3; ++k)
    for (std::int64_t i = 0; i < kL; ++i) src[k][i] = static_cast<T>(100 * k + i);
  std::vector<T> out(3 * kL, T(-1));
  cpu::store_interleaved3<T>(src[0], src[1], src[2], out.data());
  for (std::int64_t i = 0; i < kL; ++i)
    for (int k = 0; k < 3; ++k) EXPECT_EQ(out[3 * i + k], static_cast<T>(100 * k + i)) << "lane " << i << " source " << k;
}

TEST(Simd, StoreInterleaved3PutsTheThreeSourcesSideBySide) {
  check_store_interleaved3<float>();
  check_store_interleaved3<double>();
}

// load_deinterleaved3 (the Winograd filter transform's tap split): lane i of output k is
// in[3i + k], and with n < 3 kL values the lanes past them read zeros (nothing past n read).
template <typename T>
void check_load_deinterleaved3() {
  using V = typename cpu::Vec<T>::type;
  constexpr std::int64_t kL = cpu::Vec<T>::kLanes;
  std::vector<T> in(3 * kL);
  for (std::int64_t f = 0; f < 3 * kL; ++f) in[f] = static_cast<T>(f + 1);
  for (std::int64_t n : std::initializer_list<std::int64_t>{3 * kL, 3 * kL - 1, 2 * kL + 1, kL, 4, 1, 0}) {
    V out[3];
    cpu::load_deinterleaved3<T>(in.data(), out[0], out[1], out[2], n);
    for (std::int64_t i = 0; i < kL; ++i)
      for (int k = 0; k < 3; ++k)
        EXPECT_EQ(out[k][i], 3 * i + k < n ? static_cast<T>(3 * i + k + 1) : T(0)) << "n " << n << " lane " << i << " output " << k;
  }
}

TEST(Simd, LoadDeinterleaved3TakesTheThreeSourcesApart) {
  check_load_deinterleaved3<float>();
  check_load_deinterleaved3<double>();
}

TEST(RowGemm, MatchesTripleLoopAtBlockEdges) {
  for (std::int64_t M : {1, 8, 13, 64})
    for (std::int64_t K : {1, 5, 128, 300})
      for (std::int64_t N : {1, 47, 48, 100, 401, 1000})
        for (bool accumulate : {false, true}) {
          check_row_gemm<float>(M, K, N, accumulate);
          check_row_gemm<double>(M, K, N, accumulate);
        }
}

// row_gemm_nt (C += A B^T, or C = A B^T without accumulate; both operands along the
// reduction, B rows zero outside their valid ranges) against the plain triple loop: M
// around the 8-row panels, N around the 48-row panels, K across the transposed kL-blocks
// and the position blocks, in both precisions.
template <typename T>
void check_row_gemm_nt(std::int64_t M, std::int64_t N, std::int64_t K, bool accumulate) {
  std::mt19937 rng(static_cast<unsigned>(M * 7919 + N * 104729 + K));
  std::normal_distribution<double> dist;
  std::vector<T> pool((M + N) * (K + 9)), c(M * (N + 3));
  for (auto& v : pool) v = static_cast<T>(dist(rng));
  for (auto& v : c) v = static_cast<T>(dist(rng));
  std::vector<const T*> a_rows(M), b_rows(N);
  std::vector<std::int64_t> lo(N), hi(N);
  for (std::int64_t m = 0; m < M; ++m) a_rows[m] = pool.data() + m * (K + 9) + m % 3;
  for (std::int64_t n = 0; n < N; ++n) {
    b_rows[n] = pool.data() + (M + n) * (K + 9) + n % 5;
    lo[n] = n % 4 == 0 ? 0 : (n * 7) % (K + 1);  // empty, partial and full ranges
    hi[n] = n % 4 == 0 ? K : std::min<std::int64_t>(K, lo[n] + (n * 13) % (K + 1));
  }
  const std::int64_t ldc = N + 3;
  std::vector<T> expect = c;
  for (std::int64_t m = 0; m < M; ++m)
    for (std::int64_t n = 0; n < N; ++n) {
      double acc = accumulate ? static_cast<double>(c[m * ldc + n]) : 0.0;
      for (std::int64_t k = lo[n]; k < hi[n]; ++k) acc += static_cast<double>(a_rows[m][k]) * b_rows[n][k];
      expect[m * ldc + n] = static_cast<T>(acc);
    }
  cpu::row_gemm_nt<T>(M, N, K, a_rows.data(), b_rows.data(), lo.data(), hi.data(), c.data(), ldc, accumulate);
  const double tol = std::is_same_v<T, float> ? 1e-4 * std::sqrt(static_cast<double>(K)) : 1e-12;
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(c.size()); ++i)
    ASSERT_NEAR(c[i], expect[i], tol * (1 + std::abs(static_cast<double>(expect[i]))))
        << "M " << M << " N " << N << " K " << K << (accumulate ? " accumulating" : " storing") << " at " << i / ldc
        << ", " << i % ldc;
}

TEST(RowGemmNt, MatchesTripleLoopAtBlockEdges) {
  for (std::int64_t M : {1, 8, 13, 64, 300})  // 300 rows: the smallest position block (128)
    for (std::int64_t N : {1, 17, 48, 100})
      for (std::int64_t K : {0, 1, 15, 16, 100, 257, 700})
        for (bool accumulate : {true, false}) {
          check_row_gemm_nt<float>(M, N, K, accumulate);
          check_row_gemm_nt<double>(M, N, K, accumulate);
        }
}

}  // namespace
}  // namespace vidgrad
