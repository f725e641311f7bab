// Note [channels-last]: in NCDHW a conv's operand for one position is spread over C
// channel rows, so the NCDHW kernels copy panels of their operands (row GEMM B panels,
// Winograd transforms, padded planes) before the micro-kernel reads them, and each copy
// reads C streams from memory. Stored channels-last, the P positions of an activation are
// the rows of a (P, C) matrix: a 1x1x1 conv is y (P, O) = x (P, C) w^T, whose micro-tile
// broadcasts x's values straight from the tensor (6 rows, each read in order) and loads
// rows of w^T, with no copy at all; its weight gradient reads x and gy row by row. At
// batch 4 8x112 shapes a prototype of these kernels ran 1.2-1.7 times as fast as the row
// GEMM from memory at 64-256 channels (bench/blocked_layout, docs/performance.md,
// "Twenty-seventh session"). The layout is a stride order, not a new tensor kind: every
// op without a channels-last kernel reads such a tensor through its strides or
// contiguous(), and stays correct.
#include "vidgrad/ops/cpu/channels_last.h"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "vidgrad/core/aligned_vector.h"
#include "vidgrad/core/cpu_memory.h"
#include "vidgrad/core/layout.h"
#include "vidgrad/core/parallel.h"

namespace vidgrad::cpu {

namespace {

template <typename T>
using V = typename Vec<T>::type;

constexpr int kRows = 6;                  // positions per micro-tile
constexpr int kVecs = 4;                  // vectors of output channels per micro-tile
constexpr std::int64_t kChunk = 96;       // positions a thread takes at a time (forward)
constexpr std::int64_t kWgChunk = 128;    // positions per weight-gradient block (gy's lines stay in L1)
constexpr int kWgCols = 6;                // input channels per weight-gradient tile

// Scratch from the tensor allocator (core/cpu_memory.h: 64-byte aligned, large blocks
// cached between calls), not zeroed.
template <typename T>
class UninitBuffer {
 public:
  explicit UninitBuffer(std::int64_t n)
      : bytes_(static_cast<std::size_t>(n) * sizeof(T)), p_(static_cast<T*>(cpu_memory::allocate(bytes_))) {}
  ~UninitBuffer() { cpu_memory::release(p_, bytes_); }
  UninitBuffer(const UninitBuffer&) = delete;
  UninitBuffer& operator=(const UninitBuffer&) = delete;
  T* data() const { return p_; }

 private:
  std::size_t bytes_;
  T* p_;
};

// The threads for `work` multiply-adds over `units` units (one below kMinParallelWork).
int team_size(std::int64_t work, std::int64_t units) {
  if (work < kMinParallelWork || units < 2) return 1;
  return static_cast<int>(std::min<std::int64_t>(get_num_threads(), units));
}

// c (R rows ldc apart, J vectors from column col) = ep(a b) (+ the old c with accumulate):
// a is R rows lda apart of K values, b K rows ldb apart. Every loop over acc is unrolled,
// so that it lives in registers (Note [register accumulators] in micro_kernel.h).
template <typename T, int R, int J>
void tile(const T* a, std::int64_t lda, const T* b, std::int64_t ldb, std::int64_t K, T* c, std::int64_t ldc,
          std::int64_t col, const GemmEpilogue<T>& ep, bool accumulate) {
  constexpr std::int64_t kL = Vec<T>::kLanes;
  V<T> acc[R][J];
#pragma GCC unroll 24
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) acc[i][j] = V<T>{};
  for (std::int64_t k = 0; k < K; ++k) {
    V<T> bv[J];
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) bv[j] = load_vec<T>(b + k * ldb + j * kL);
#pragma GCC unroll 24
    for (int i = 0; i < R; ++i) {
      const T s = a[i * lda + k];  // scalar * vector: a broadcast (V{} + s would add a zero first)
#pragma GCC unroll 4
      for (int j = 0; j < J; ++j) acc[i][j] += s * bv[j];
    }
  }
#pragma GCC unroll 24
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) {
      T* dst = c + i * ldc + j * kL;
      V<T> v = accumulate ? acc[i][j] + load_vec<T>(dst) : acc[i][j];
      if (ep.active()) {
        const std::int64_t o = col + j * kL;
        if (ep.scale) v *= load_vec<T>(ep.scale + o);
        if (ep.bias) v += load_vec<T>(ep.bias + o);
        if (ep.residual) v += load_vec<T>(ep.residual + i * ldc + j * kL);
        if (ep.relu) v = v > T(0) ? v : V<T>{};  // as relu(): NaN becomes 0
      }
      store_vec<T>(dst, v);
    }
}

// The tile of r <= kRows rows and j <= kVecs vectors, by value.
template <typename T, int R>
void tile_cols(int j, const T* a, std::int64_t lda, const T* b, std::int64_t ldb, std::int64_t K, T* c,
               std::int64_t ldc, std::int64_t col, const GemmEpilogue<T>& ep, bool accumulate) {
  switch (j) {
    case 4: tile<T, R, 4>(a, lda, b, ldb, K, c, ldc, col, ep, accumulate); break;
    case 3: tile<T, R, 3>(a, lda, b, ldb, K, c, ldc, col, ep, accumulate); break;
    case 2: tile<T, R, 2>(a, lda, b, ldb, K, c, ldc, col, ep, accumulate); break;
    default: tile<T, R, 1>(a, lda, b, ldb, K, c, ldc, col, ep, accumulate); break;
  }
}

template <typename T>
void tile_any(int r, int j, const T* a, std::int64_t lda, const T* b, std::int64_t ldb, std::int64_t K, T* c,
              std::int64_t ldc, std::int64_t col, const GemmEpilogue<T>& ep, bool accumulate) {
  switch (r) {
    case 6: tile_cols<T, 6>(j, a, lda, b, ldb, K, c, ldc, col, ep, accumulate); break;
    case 5: tile_cols<T, 5>(j, a, lda, b, ldb, K, c, ldc, col, ep, accumulate); break;
    case 4: tile_cols<T, 4>(j, a, lda, b, ldb, K, c, ldc, col, ep, accumulate); break;
    case 3: tile_cols<T, 3>(j, a, lda, b, ldb, K, c, ldc, col, ep, accumulate); break;
    case 2: tile_cols<T, 2>(j, a, lda, b, ldb, K, c, ldc, col, ep, accumulate); break;
    default: tile_cols<T, 1>(j, a, lda, b, ldb, K, c, ldc, col, ep, accumulate); break;
  }
}

// c (P, M) = ep(a (P, K) b (K, M)) (+ the old c with accumulate), M a multiple of kL.
// Threads take chunks of kChunk rows (work-stealing, Note [stealing ranges] in
// core/parallel.h; each row of c is one thread's, so the result does not depend on the
// split); within a chunk, each block of kVecs vectors of columns runs over all its rows,
// so the chunk of a and the block of b are read from cache after their first use.
template <typename T>
void rows_gemm(std::int64_t P, std::int64_t K, std::int64_t M, const T* a, const T* b, T* c,
               const GemmEpilogue<T>& ep, bool accumulate) {
  constexpr std::int64_t kL = Vec<T>::kLanes;
  const std::int64_t chunks = (P + kChunk - 1) / kChunk;
  const int threads = team_size(P * K * M, chunks);
  StealingRanges ranges(chunks, threads);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int t = omp_get_thread_num();
    for (std::int64_t u; (u = ranges.next(t)) >= 0;) {
      const std::int64_t p0 = u * kChunk, p1 = std::min(P, p0 + kChunk);
      for (std::int64_t m0 = 0; m0 < M; m0 += kVecs * kL) {
        const int j = static_cast<int>(std::min<std::int64_t>(kVecs, (M - m0) / kL));
        // A full tile holds 24 sums: 6 rows of 4 vectors, 8 of 3, 12 of 2 (the 32-channel
        // convs), 24 of 1, so each broadcast feeds as many FMAs as the registers allow.
        const int rows = 24 / j;
        for (std::int64_t p = p0; p < p1;) {
          const int r = static_cast<int>(std::min<std::int64_t>(p1 - p, p1 - p >= rows ? rows : kRows));
          GemmEpilogue<T> ei = ep;  // the residual's tile is laid out as c's
          if (ei.residual) ei.residual = ep.residual + p * M + m0;
          const T* ap = a + p * K;
          T* cp = c + p * M + m0;
          if (r == rows && j == 3)
            tile<T, 8, 3>(ap, K, b + m0, M, K, cp, M, m0, ei, accumulate);
          else if (r == rows && j == 2)
            tile<T, 12, 2>(ap, K, b + m0, M, K, cp, M, m0, ei, accumulate);
          else if (r == rows && j == 1)
            tile<T, 24, 1>(ap, K, b + m0, M, K, cp, M, m0, ei, accumulate);
          else  // 6 rows of 4 vectors, and the last rows of a chunk 6 at a time
            tile_any<T>(r, j, ap, K, b + m0, M, K, cp, M, m0, ei, accumulate);
          p += r;
        }
      }
    }
  }
}

// dst[k * ldd + j kL ..] += sum over n positions of xv[p * ldx + cols[k]] * g[p * ldg + j kL ..]
// for k < nc: a tile of kWgCols input channels by J vectors of output channels of a
// weight gradient (C, O), its sums in registers over the whole run.
template <typename T, int J>
void weight_tile(const T* g, std::int64_t ldg, const T* xv, std::int64_t ldx, const std::int64_t* cols, int nc,
                 std::int64_t n, T* dst, std::int64_t ldd) {
  constexpr std::int64_t kL = Vec<T>::kLanes;
  V<T> acc[kWgCols][J];
#pragma GCC unroll 6
  for (int k = 0; k < kWgCols; ++k)
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) acc[k][j] = V<T>{};
  for (std::int64_t p = 0; p < n; ++p) {
    const T* gr = g + p * ldg;
    const T* xr = xv + p * ldx;
    V<T> gv[J];
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) gv[j] = load_vec<T>(gr + j * kL);
#pragma GCC unroll 6
    for (int k = 0; k < kWgCols; ++k) {
      const T s = xr[cols[k]];
#pragma GCC unroll 4
      for (int j = 0; j < J; ++j) acc[k][j] += s * gv[j];
    }
  }
  for (int k = 0; k < nc; ++k)
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) {
      T* d = dst + k * ldd + j * kL;
      store_vec<T>(d, load_vec<T>(d) + acc[k][j]);
    }
}

}  // namespace

template <typename T>
void pointwise_channels_last_forward(std::int64_t P, std::int64_t C, std::int64_t O, const T* x, const T* w, T* y,
                                     const GemmEpilogue<T>& ep, bool accumulate) {
  // w^T (C, O): its rows are what the micro-tile loads (the library repacks a weight on
  // every call; it is small next to the activations).
  AlignedVector<T> wt(static_cast<std::size_t>(C * O));
  to_channels_last<T>(1, O, C, w, wt.data());  // a blocked transpose: (O, C) -> (C, O)
  rows_gemm<T>(P, C, O, x, wt.data(), y, ep, accumulate);
}

template <typename T>
void pointwise_channels_last_backward_input(std::int64_t P, std::int64_t C, std::int64_t O, const T* gy, const T* w,
                                            T* gx, bool accumulate) {
  rows_gemm<T>(P, O, C, gy, w, gx, {}, accumulate);  // w (O, C) is already the (K, M) operand
}

template <typename T>
void pointwise_channels_last_backward_weight(std::int64_t P, std::int64_t C, std::int64_t O, const T* gy, const T* x,
                                             T* gw) {
  constexpr std::int64_t kL = Vec<T>::kLanes, kBlock = kVecs * kL;
  const std::int64_t blocks = (O + kBlock - 1) / kBlock;  // of output channels
  const int threads = team_size(P * C * O, std::max((P + kWgChunk - 1) / kWgChunk, blocks));
  // Note [weight gradient split]: each thread sums an even share of the positions into its
  // own (C, O) part, and the parts are added at the end; where the positions are few and
  // the weight large (stage 5: 512 positions a clip batch, 512 x 512 weights), zeroing and
  // adding the parts cost more than the sums, and the threads split the output channels
  // instead, each reading every position. Either way the result does not depend on timing.
  const bool split_outputs = threads > 1 && blocks >= threads && P < 3 * O;
  const UninitBuffer<T> parts((split_outputs ? 1 : threads) * C * O);  // each thread zeroes its share
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    // The team may be smaller than asked for: the shares follow its size.
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    T* part = parts.data() + (split_outputs ? 0 : t * C * O);
    const std::int64_t q0 = split_outputs ? 0 : P * t / nt, q1 = split_outputs ? P : P * (t + 1) / nt;
    const std::int64_t o_begin = split_outputs ? blocks * t / nt * kBlock : 0;
    const std::int64_t o_end = split_outputs ? std::min(O, blocks * (t + 1) / nt * kBlock) : O;
    for (std::int64_t c = 0; c < C; ++c) std::fill(part + c * O + o_begin, part + c * O + o_end, T(0));
    // Note [weight gradient packing]: a run of positions reads one line of x and J lines of
    // gy per position, C and O values apart. From 1 KiB apart (256 float channels) those
    // lines fall into a few L1 sets, which hold 12 lines each, and every read went to L2;
    // such a chunk is first copied into position-major panels: x's as kWgCols channels per
    // position, a panel per tile column, and gy's block of J vectors per position.
    const bool pack_x = C * static_cast<std::int64_t>(sizeof(T)) >= 1024;
    const bool pack_g = O * static_cast<std::int64_t>(sizeof(T)) >= 1024;
    const std::int64_t groups = (C + kWgCols - 1) / kWgCols;
    AlignedVector<T> xp(pack_x ? static_cast<std::size_t>(groups * kWgChunk * kWgCols) : 0);
    AlignedVector<T> gp(pack_g ? static_cast<std::size_t>(kWgChunk * kBlock) : 0);
    for (std::int64_t p0 = q0; p0 < q1; p0 += kWgChunk) {
      const std::int64_t n = std::min(q1 - p0, kWgChunk);
      const T* xs = x + p0 * C;
      if (pack_x)
        for (std::int64_t gi = 0; gi < groups; ++gi)
          for (std::int64_t p = 0; p < n; ++p)
            for (int k = 0; k < kWgCols; ++k) {
              const std::int64_t c = gi * kWgCols + k;
              xp[(gi * n + p) * kWgCols + k] = c < C ? xs[p * C + c] : T(0);
            }
      for (std::int64_t o0 = o_begin; o0 < o_end; o0 += kBlock) {
        const std::int64_t j = std::min<std::int64_t>(kVecs, (O - o0) / kL);
        const T* g = gy + p0 * O + o0;
        std::int64_t ldg = O;
        if (pack_g) {
          for (std::int64_t p = 0; p < n; ++p)
            for (std::int64_t e = 0; e < j * kL; e += kL)
              store_vec<T>(gp.data() + p * j * kL + e, load_vec<T>(g + p * O + e));
          g = gp.data();
          ldg = j * kL;
        }
        for (std::int64_t c0 = 0, gi = 0; c0 < C; c0 += kWgCols, ++gi) {
          const int nc = static_cast<int>(std::min<std::int64_t>(kWgCols, C - c0));
          std::int64_t cols[kWgCols];
          const T* xv = pack_x ? xp.data() + gi * n * kWgCols : xs;
          for (int k = 0; k < kWgCols; ++k)  // unpacked, a column past C repeats the last (not stored)
            cols[k] = pack_x ? k : c0 + std::min(k, nc - 1);
          const std::int64_t ldx = pack_x ? kWgCols : C;
          T* dst = part + c0 * O + o0;
          switch (j) {
            case 4: weight_tile<T, 4>(g, ldg, xv, ldx, cols, nc, n, dst, O); break;
            case 3: weight_tile<T, 3>(g, ldg, xv, ldx, cols, nc, n, dst, O); break;
            case 2: weight_tile<T, 2>(g, ldg, xv, ldx, cols, nc, n, dst, O); break;
            default: weight_tile<T, 1>(g, ldg, xv, ldx, cols, nc, n, dst, O); break;
          }
        }
      }
    }
    if (!split_outputs) {
#pragma omp barrier
#pragma omp for schedule(static)
      for (std::int64_t i = 0; i < C * O; ++i)  // the parts summed into the first, in thread order
        for (int r = 1; r < nt; ++r) parts.data()[i] += parts.data()[r * C * O + i];
    }
  }
  from_channels_last<T>(1, O, C, parts.data(), gw);  // (C, O) -> (O, C), a blocked transpose
}

template <typename T>
void channels_last_channel_sums(std::int64_t P, std::int64_t O, const T* gy, T* gb) {
  std::vector<double> s(static_cast<std::size_t>(O), 0.0);
  for (std::int64_t p = 0; p < P; ++p) {
    const T* r = gy + p * O;
#pragma omp simd
    for (std::int64_t o = 0; o < O; ++o) s[o] += static_cast<double>(r[o]);
  }
  for (std::int64_t o = 0; o < O; ++o) gb[o] = static_cast<T>(s[o]);
}

template <typename T>
void channels_last_statistics(std::int64_t P, std::int64_t O, const T* y, double* mean, double* var) {
  if (P == 0) {
    std::fill(mean, mean + O, 0.0);
    std::fill(var, var + O, 0.0);
    return;
  }
  // Sums of y - shift and its square, shift = each channel's first value (so a channel far
  // from zero loses no digits to cancellation); each thread an even share of the rows.
  std::vector<double> shift(static_cast<std::size_t>(O));
  for (std::int64_t o = 0; o < O; ++o) shift[o] = static_cast<double>(y[o]);
  const int threads = team_size(P * O, P);
  std::vector<double> sums(static_cast<std::size_t>(threads * 2 * O), 0.0);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();  // as in the weight gradient
    double* s1 = sums.data() + t * 2 * O;
    double* s2 = s1 + O;
    for (std::int64_t p = P * t / n; p < P * (t + 1) / n; ++p) {
      const T* r = y + p * O;
#pragma omp simd
      for (std::int64_t o = 0; o < O; ++o) {
        const double d = static_cast<double>(r[o]) - shift[o];
        s1[o] += d;
        s2[o] += d * d;
      }
    }
  }
  for (std::int64_t o = 0; o < O; ++o) {
    double s1 = 0, s2 = 0;
    for (int t = 0; t < threads; ++t) {
      s1 += sums[t * 2 * O + o];
      s2 += sums[t * 2 * O + O + o];
    }
    const double m = s1 / static_cast<double>(P);
    mean[o] = shift[o] + m;
    var[o] = std::max(0.0, s2 / static_cast<double>(P) - m * m);
  }
}

#define VIDGRAD_INSTANTIATE(T)                                                                                     \
  template void pointwise_channels_last_forward<T>(std::int64_t, std::int64_t, std::int64_t, const T*, const T*, T*, \
                                                   const GemmEpilogue<T>&, bool);                                  \
  template void pointwise_channels_last_backward_input<T>(std::int64_t, std::int64_t, std::int64_t, const T*,      \
                                                          const T*, T*, bool);                                     \
  template void pointwise_channels_last_backward_weight<T>(std::int64_t, std::int64_t, std::int64_t, const T*,     \
                                                           const T*, T*);                                          \
  template void channels_last_channel_sums<T>(std::int64_t, std::int64_t, const T*, T*);                           \
  template void channels_last_statistics<T>(std::int64_t, std::int64_t, const T*, double*, double*);
VIDGRAD_INSTANTIATE(float)
VIDGRAD_INSTANTIATE(double)
#undef VIDGRAD_INSTANTIATE

}  // namespace vidgrad::cpu
