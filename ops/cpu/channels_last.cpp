// Note [channels-last]: in NCDHW a conv's operand for one position is spread over C
// channel rows, so the NCDHW kernels copy panels of their operands (row GEMM B panels,
// Winograd transforms, padded planes) before the micro-kernel reads them, and each copy
// reads C streams from memory. Stored channels-last, the P positions of an activation are
// the rows of a (P, C) matrix: a 1x1x1 conv is y (P, O) = x (P, C) w^T, whose micro-tile
// broadcasts x's values straight from the tensor (6 rows, each read in order) and loads
// rows of w^T (packed, Note [column blocks]), with no copy of the activations; its weight
// gradient reads x and gy row by row. At batch 4 8x112 shapes a prototype of these kernels
// ran 1.2-1.7 times as fast as the row GEMM from memory at 64-256 channels
// (bench/blocked_layout, docs/performance.md, "Twenty-seventh session"); as ops, with the
// output's allocation and the weight's packing, 1.0-1.15 times ("Twenty-eighth session",
// which also measures the 3x1x1 and the batch norm here). The layout is a stride order,
// not a new tensor kind: every op without a channels-last kernel reads such a tensor
// through its strides or contiguous(), and stays correct.
#include "vidgrad/ops/cpu/channels_last.h"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "vidgrad/core/aligned_vector.h"
#include "vidgrad/core/cpu_memory.h"
#include "vidgrad/core/layout.h"
#include "vidgrad/core/parallel.h"
#include "vidgrad/ops/cpu/batch_norm_cpu.h"
#include "vidgrad/ops/cpu/winograd.h"

namespace vidgrad::cpu {

namespace {

template <typename T>
using V = typename Vec<T>::type;

constexpr int kRows = 6;                  // positions per micro-tile
constexpr int kVecs = 4;                  // vectors of output channels per micro-tile
constexpr std::int64_t kChunk = 96;       // positions a thread takes at a time (forward)
// Depth of the GEMMs' blocks (Note [depth blocks]): 32 KiB of a column block of b.
template <typename T>
constexpr std::int64_t kDepth = 32768 / (kVecs * Vec<T>::kLanes * static_cast<std::int64_t>(sizeof(T)));
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

// Note [column blocks]: the micro-tile loads kVecs vectors of a row of b at each depth step;
// with b row-major (K, M) those runs lie M values apart, and from 1 KiB apart (256 float
// channels) they fall into a few L1 sets (12 lines each): the tile then streamed b from L2
// at every step (the 512-channel 3x1x1 forward 5.25-5.48 ms from memory; packed,
// 3.54-3.74). b is packed instead into column blocks (M / kBlock, K, kBlock), each block
// one contiguous run, zero past M.
template <typename T>
AlignedVector<T> pack_column_blocks(std::int64_t K, std::int64_t M, const T* b, std::int64_t ldb) {
  constexpr std::int64_t kBlock = kVecs * Vec<T>::kLanes;
  const std::int64_t blocks = (M + kBlock - 1) / kBlock;
  AlignedVector<T> out(static_cast<std::size_t>(blocks * K * kBlock));
  constexpr std::int64_t kL = Vec<T>::kLanes;
#pragma omp parallel for schedule(static) if (K * M >= kMinParallelWork)
  for (std::int64_t k = 0; k < K; ++k)
    for (std::int64_t m = 0; m < blocks * kBlock; m += kL)  // M is a multiple of kL
      store_vec<T>(out.data() + ((m / kBlock) * K + k) * kBlock + m % kBlock,
                   m < M ? load_vec<T>(b + k * ldb + m) : V<T>{});
  return out;
}

// Note [depth blocks]: a column block of b holds K x kBlock values, 128 KiB at K = 512; a
// tile that runs over all of K streams it from L2 (the 512-channel 3x1x1's products at
// 60% of the FMA peak, perf). The Winograd products therefore run over the depth in
// blocks of kDepth<T> rows of b (32 KiB, which stays in L1 while every row tile of a run
// uses it), adding into their sums after the first block (512 channels, from memory:
// 3.54-3.74 -> 2.50-2.63 ms). The 1x1x1's row GEMM gained nothing from them at 256-512
// channels (three alternations, 0.95-1.07x per pass), where it has few rows, and runs over
// all of K.
template <typename T>
void tile_depth_blocks(int r, int j, const T* a, std::int64_t lda, const T* b, std::int64_t K, T* c, std::int64_t ldc,
                       std::int64_t col, const GemmEpilogue<T>& ep, bool accumulate, std::int64_t k0, std::int64_t k1) {
  constexpr std::int64_t kBlock = kVecs * Vec<T>::kLanes;
  const bool last = k1 == K;
  const GemmEpilogue<T> e = last ? ep : GemmEpilogue<T>{};
  const bool acc = accumulate || k0 > 0;
  const T* ak = a + k0;
  const T* bk = b + k0 * kBlock;
  const std::int64_t depth = k1 - k0;
  // A full tile holds 24 sums: 6 rows of 4 vectors, 8 of 3, 12 of 2 (the 32-channel
  // convs), 24 of 1, so each broadcast feeds as many FMAs as the registers allow.
  if (r == 24 / j && j == 3)
    tile<T, 8, 3>(ak, lda, bk, kBlock, depth, c, ldc, col, e, acc);
  else if (r == 24 / j && j == 2)
    tile<T, 12, 2>(ak, lda, bk, kBlock, depth, c, ldc, col, e, acc);
  else if (r == 24 / j && j == 1)
    tile<T, 24, 1>(ak, lda, bk, kBlock, depth, c, ldc, col, e, acc);
  else  // 6 rows of 4 vectors, and the last rows of a chunk 6 at a time
    tile_any<T>(r, j, ak, lda, bk, kBlock, depth, c, ldc, col, e, acc);
}

// c (P, M) = ep(a (P, K) b (K, M)) (+ the old c with accumulate), M a multiple of kL, b in
// column blocks (Note [column blocks]). Threads take chunks of kChunk rows (work-stealing,
// Note [stealing ranges] in core/parallel.h; each row of c is one thread's, so the result
// does not depend on the split); within a chunk, each block of kVecs vectors of columns
// runs over all its rows, so the chunk of a and the block of b are read from cache after
// their first use.
template <typename T>
void rows_gemm(std::int64_t P, std::int64_t K, std::int64_t M, const T* a, const T* b, T* c,
               const GemmEpilogue<T>& ep, bool accumulate) {
  constexpr std::int64_t kL = Vec<T>::kLanes, kBlock = kVecs * kL;
  const std::int64_t chunks = (P + kChunk - 1) / kChunk;
  const int threads = team_size(P * K * M, chunks);
  StealingRanges ranges(chunks, threads);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int t = omp_get_thread_num();
    for (std::int64_t u; (u = ranges.next(t)) >= 0;) {
      const std::int64_t p0 = u * kChunk, p1 = std::min(P, p0 + kChunk);
      for (std::int64_t m0 = 0; m0 < M; m0 += kBlock) {
        const int j = static_cast<int>(std::min<std::int64_t>(kVecs, (M - m0) / kL));
        const int rows = 24 / j;
        for (std::int64_t p = p0; p < p1;) {
          const int r = static_cast<int>(std::min<std::int64_t>(p1 - p, p1 - p >= rows ? rows : kRows));
          GemmEpilogue<T> ei = ep;  // the residual's tile is laid out as c's
          if (ei.residual) ei.residual = ep.residual + p * M + m0;
          tile_depth_blocks<T>(r, j, a + p * K, K, b + m0 * K, K, c + p * M + m0, M, m0, ei, accumulate, 0, K);
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
  constexpr std::int64_t kBlock = kVecs * Vec<T>::kLanes;
  if (O % kBlock == 0) {  // w^T in column blocks: each block of kBlock rows of w transposed
    const UninitBuffer<T> packed(C * O);
    to_channels_last<T>(O / kBlock, kBlock, C, w, packed.data());
    rows_gemm<T>(P, C, O, x, packed.data(), y, ep, accumulate);
    return;
  }
  const UninitBuffer<T> wt(C * O);
  to_channels_last<T>(1, O, C, w, wt.data());  // a blocked transpose: (O, C) -> (C, O)
  rows_gemm<T>(P, C, O, x, pack_column_blocks<T>(C, O, wt.data(), O).data(), y, ep, accumulate);
}

template <typename T>
void pointwise_channels_last_backward_input(std::int64_t P, std::int64_t C, std::int64_t O, const T* gy, const T* w,
                                            T* gx, bool accumulate) {
  rows_gemm<T>(P, O, C, gy, pack_column_blocks<T>(O, C, w, C).data(), gx, {}, accumulate);  // w (O, C): (K, M)
}

namespace {

// Rows of a weight gradient's operands: `rows` rows of gy from gy, and as many of x from x.
template <typename T>
struct RowSegment {
  const T* gy;
  const T* x;
  std::int64_t rows;
};

// out (C, O) = the sum over the segments' rows of x^T gy (written).
template <typename T>
void weight_grad_rows(const std::vector<RowSegment<T>>& segs, std::int64_t C, std::int64_t O, T* out) {
  constexpr std::int64_t kL = Vec<T>::kLanes, kBlock = kVecs * kL;
  std::int64_t P = 0;
  for (const auto& sg : segs) P += sg.rows;
  const std::int64_t blocks = (O + kBlock - 1) / kBlock;  // of output channels
  const int threads = team_size(P * C * O, std::max((P + kWgChunk - 1) / kWgChunk, blocks));
  // Note [weight gradient split]: each thread sums an even share of the rows into its own
  // (C, O) part (thread 0's is out), and the parts are added at the end; where the rows are
  // few and the weight large (stage 5: 512 positions a clip batch, 512 x 512 weights),
  // zeroing and adding the parts cost more than the sums, and the threads split the output
  // channels instead, each reading every row. Either way the result does not depend on
  // timing.
  const bool split_outputs = threads > 1 && blocks >= threads && P < 3 * O;
  const UninitBuffer<T> parts(split_outputs ? 1 : std::max(1, threads - 1) * C * O);  // each thread zeroes its own
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    // The team may be smaller than asked for: the shares follow its size.
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    auto part_of = [&](int r) { return split_outputs || r == 0 ? out : parts.data() + (r - 1) * C * O; };
    T* part = part_of(t);
    const std::int64_t q0 = split_outputs ? 0 : P * t / nt, q1 = split_outputs ? P : P * (t + 1) / nt;
    const std::int64_t o_begin = split_outputs ? blocks * t / nt * kBlock : 0;
    const std::int64_t o_end = split_outputs ? std::min(O, blocks * (t + 1) / nt * kBlock) : O;
    for (std::int64_t c = 0; c < C; ++c) std::fill(part + c * O + o_begin, part + c * O + o_end, T(0));
    // Note [weight gradient packing]: a run of rows reads one line of x and J lines of gy
    // per row, C and O values apart. From 1 KiB apart (256 float channels) those lines fall
    // into a few L1 sets, which hold 12 lines each, and every read went to L2; such a chunk
    // is first copied into row-major panels: x's as kWgCols channels per row, a panel per
    // tile column, and gy's block of J vectors per row.
    const bool pack_x = C * static_cast<std::int64_t>(sizeof(T)) >= 1024;
    const bool pack_g = O * static_cast<std::int64_t>(sizeof(T)) >= 1024;
    const std::int64_t groups = (C + kWgCols - 1) / kWgCols;
    AlignedVector<T> xp(pack_x ? static_cast<std::size_t>(groups * kWgChunk * kWgCols) : 0);
    AlignedVector<T> gp(pack_g ? static_cast<std::size_t>(kWgChunk * kBlock) : 0);
    std::size_t seg = 0;
    std::int64_t seg_start = 0;  // the first row of segs[seg]
    for (std::int64_t p0 = q0; p0 < q1;) {
      while (p0 >= seg_start + segs[seg].rows) seg_start += segs[seg++].rows;
      const std::int64_t n = std::min({q1 - p0, kWgChunk, seg_start + segs[seg].rows - p0});
      const T* xs = segs[seg].x + (p0 - seg_start) * C;
      const T* gs = segs[seg].gy + (p0 - seg_start) * O;
      if (pack_x)
        for (std::int64_t gi = 0; gi < groups; ++gi)
          for (std::int64_t p = 0; p < n; ++p)
            for (int k = 0; k < kWgCols; ++k) {
              const std::int64_t c = gi * kWgCols + k;
              xp[(gi * n + p) * kWgCols + k] = c < C ? xs[p * C + c] : T(0);
            }
      for (std::int64_t o0 = o_begin; o0 < o_end; o0 += kBlock) {
        const std::int64_t j = std::min<std::int64_t>(kVecs, (O - o0) / kL);
        const T* g = gs + o0;
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
      p0 += n;
    }
    if (!split_outputs) {
#pragma omp barrier
#pragma omp for schedule(static)
      for (std::int64_t i = 0; i < C * O; ++i)  // the parts summed into out, in thread order
        for (int r = 1; r < nt; ++r) out[i] += part_of(r)[i];
    }
  }
}

}  // namespace

template <typename T>
void pointwise_channels_last_backward_weight(std::int64_t P, std::int64_t C, std::int64_t O, const T* gy, const T* x,
                                             T* gw) {
  const UninitBuffer<T> co(C * O);
  weight_grad_rows<T>({{gy, x, P}}, C, O, co.data());
  from_channels_last<T>(1, O, C, co.data(), gw);  // (C, O) -> (O, C), a blocked transpose
}

// Note [channels-last Winograd]: the 3x1x1 conv as the NCDHW kernels compute it
// (Note [Winograd temporal conv] in conv3d_winograd.cpp), F(4, 3) along time: six
// point products per tile of four output frames instead of twelve taps. On channels-last
// data a unit is a tile of frames and a run of rows (sample, position) of it: its six
// input frames are transformed a row at a time, whole vectors of channels, into six
// (run, C) matrices in L2 (vbuf); each point's product with the transformed filter
// (U[p], C x O in column blocks, Note [column blocks]; computed once per call) runs on the
// 1x1x1's micro-tile, its sums go to an L1 buffer (tbuf), and the output transform stores
// four frames of the tile's rows. Runs span samples, so that at small planes (stage 5: 16
// positions a frame) a unit still has enough rows to amortise reading U, which every unit
// reads whole: from 129 channels on, runs are as long as 768 KiB of vbuf allows.
namespace {

// y (N, T, S, O) = ep(conv(x)) for x (N, T, S, C), the filter given as taps (3, C, O):
// taps[k][c][o] weighs input frame t + k - 1 into output frame t (with reverse, frame
// t + 1 - k).
template <typename T>
void winograd_channels_last(std::int64_t N, std::int64_t T_, std::int64_t S, std::int64_t C, std::int64_t O,
                            const T* x, const T* taps, bool reverse, T* y, const GemmEpilogue<T>& ep) {
  using Wg = winograd::Winograd<4>;
  constexpr std::int64_t kL = Vec<T>::kLanes, kBlock = kVecs * kL;
  const std::int64_t OB = (O + kBlock - 1) / kBlock;
  // U[p] = G applied to the three taps, in column blocks (OB, C, kBlock), zero past O.
  const UninitBuffer<T> u(6 * OB * C * kBlock);
#pragma omp parallel for schedule(static) if (C * O >= 4096)
  for (std::int64_t c = 0; c < C; ++c)
    for (std::int64_t o0 = 0; o0 < OB * kBlock; o0 += kL) {
      V<T> tv[3], e[6];
      for (int k = 0; k < 3; ++k) tv[k] = o0 < O ? load_vec<T>(taps + ((reverse ? 2 - k : k) * C + c) * O + o0) : V<T>{};
      winograd::transform<T, 6, 3, V<T>>(Wg::G, tv, e);
      for (int p = 0; p < 6; ++p)
        store_vec<T>(u.data() + ((p * OB + o0 / kBlock) * C + c) * kBlock + o0 % kBlock, e[p]);
    }
  const std::int64_t R = N * S, run = std::min(R, C <= 128 ? 96 : std::max<std::int64_t>(48, 786432 / (24 * C)));
  const std::int64_t tiles = (T_ + 3) / 4, runs = (R + run - 1) / run;
  const int threads = team_size(6 * R * tiles * 4 * C * O, tiles * runs);
  StealingRanges ranges(tiles * runs, threads);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int t = omp_get_thread_num();
    // With one depth block tbuf holds one tile's rows (it stays in L1), else the run's;
    // each point's rows a cache line more than that, so that the six points' values of a
    // row are not a multiple of 4 KiB apart (they would share L1 sets).
    const std::int64_t vstride = run * C, tstride = (C <= kDepth<T> ? kRows : run) * kBlock + kL;
    const UninitBuffer<T> vbuf(6 * vstride), tbuf(6 * tstride);  // written before they are read
    for (std::int64_t unit; (unit = ranges.next(t)) >= 0;) {
      const std::int64_t t4 = unit / runs, r0 = unit % runs * run, len = std::min(run, R - r0);
      for (std::int64_t i = 0; i < len; ++i) {
        const std::int64_t n = (r0 + i) / S, s = (r0 + i) % S;
        for (std::int64_t c = 0; c < C; c += kL) {
          V<T> d[6], e[6];
          for (int j = 0; j < 6; ++j) {
            const std::int64_t f = 4 * t4 - 1 + j;
            d[j] = f >= 0 && f < T_ ? load_vec<T>(x + ((n * T_ + f) * S + s) * C + c) : V<T>{};
          }
          winograd::transform<T, 6, 6, V<T>>(Wg::BT, d, e);
          for (int p = 0; p < 6; ++p) store_vec<T>(vbuf.data() + p * vstride + i * C + c, e[p]);
        }
      }
      for (std::int64_t ob = 0; ob < OB; ++ob) {
        const std::int64_t o0 = ob * kBlock;
        const int j = static_cast<int>(std::min<std::int64_t>(kVecs, (O - o0) / kL));
        // The output transform of rows [i0, i1) from their point products in tbuf, row i at
        // tbuf row i - base.
        auto store_rows = [&](std::int64_t i0, std::int64_t i1, std::int64_t base) {
          for (std::int64_t i = i0; i < i1; ++i) {
            const std::int64_t n = (r0 + i) / S, s = (r0 + i) % S;
            for (int jj = 0; jj < j; ++jj) {
              V<T> tv[6], ov[4];
              for (int p = 0; p < 6; ++p)
                tv[p] = load_vec<T>(tbuf.data() + p * tstride + (i - base) * kBlock + jj * kL);
              winograd::transform<T, 4, 6, V<T>>(Wg::AT, tv, ov);
              const std::int64_t o = o0 + jj * kL;
              for (std::int64_t r = 0; r < 4 && 4 * t4 + r < T_; ++r) {
                const std::int64_t at = ((n * T_ + 4 * t4 + r) * S + s) * O + o;
                V<T> v = ov[r];
                if (ep.scale) v *= load_vec<T>(ep.scale + o);
                if (ep.bias) v += load_vec<T>(ep.bias + o);
                if (ep.residual) v += load_vec<T>(ep.residual + at);
                if (ep.relu) v = v > T(0) ? v : V<T>{};  // as relu(): NaN becomes 0
                store_vec<T>(y + at, v);
              }
            }
          }
        };
        // Point p's product for rows [i0, i0 + kRows), depth block k0, into tbuf (6, run,
        // kBlock) from row i0 - base.
        auto product = [&](int p, std::int64_t i0, std::int64_t k0, std::int64_t base) {
          tile_depth_blocks<T>(static_cast<int>(std::min<std::int64_t>(kRows, len - i0)), j,
                               vbuf.data() + p * vstride + i0 * C, C, u.data() + (p * OB + ob) * C * kBlock, C,
                               tbuf.data() + p * tstride + (i0 - base) * kBlock, kBlock, 0, {}, false, k0,
                               std::min(C, k0 + kDepth<T>));
        };
        if (C <= kDepth<T>) {  // one depth block: each tile's six products, then its outputs, in L1
          for (std::int64_t i0 = 0; i0 < len; i0 += kRows) {
            for (int p = 0; p < 6; ++p) product(p, i0, 0, i0);
            store_rows(i0, std::min(len, i0 + kRows), i0);
          }
        } else {  // a block of U[p] in L1 for all the run's rows (Note [depth blocks])
          for (int p = 0; p < 6; ++p)
            for (std::int64_t k0 = 0; k0 < C; k0 += kDepth<T>)
              for (std::int64_t i0 = 0; i0 < len; i0 += kRows) product(p, i0, k0, 0);
          store_rows(0, len, 0);
        }
      }
    }
  }
}

}  // namespace

template <typename T>
void temporal_channels_last_forward(std::int64_t N, std::int64_t T_, std::int64_t S, std::int64_t C, std::int64_t O,
                                    const T* x, const T* w, T* y, const GemmEpilogue<T>& ep) {
  // taps (3, C, O) from w (O, C, 3): the taps split out (3, O, C), then each transposed;
  // blocked transposes.
  const UninitBuffer<T> wk(3 * O * C), taps(3 * C * O);
  from_channels_last<T>(1, 3, O * C, w, wk.data());
  for (int k = 0; k < 3; ++k) to_channels_last<T>(1, O, C, wk.data() + k * O * C, taps.data() + k * C * O);
  winograd_channels_last<T>(N, T_, S, C, O, x, taps.data(), false, y, ep);
}

template <typename T>
void temporal_channels_last_backward_input(std::int64_t N, std::int64_t T_, std::int64_t S, std::int64_t C,
                                           std::int64_t O, const T* gy, const T* w, T* gx) {
  // The correlation of gy with the filter transposed and reversed in time, padding 1: tap
  // k of it is w's tap 2 - k as (O, C), the taps split out of w (O, C, 3).
  const UninitBuffer<T> wk(3 * O * C);
  from_channels_last<T>(1, 3, O * C, w, wk.data());
  winograd_channels_last<T>(N, T_, S, O, C, gy, wk.data(), true, gx, {});
}

template <typename T>
void temporal_channels_last_backward_weight(std::int64_t N, std::int64_t T_, std::int64_t S, std::int64_t C,
                                            std::int64_t O, const T* gy, const T* x, T* gw) {
  const UninitBuffer<T> co(C * O), oc(C * O);
  for (int k = 0; k < 3; ++k) {
    // Output frame t reads input frame t + k - 1: the frames where both exist, per sample.
    const std::int64_t lo = std::max(0, 1 - k), hi = std::min(T_, T_ + 1 - k);
    std::vector<RowSegment<T>> segs;
    for (std::int64_t n = 0; n < N && hi > lo; ++n)
      segs.push_back({gy + (n * T_ + lo) * S * O, x + (n * T_ + lo + k - 1) * S * C, (hi - lo) * S});
    if (segs.empty()) {
      std::fill(co.data(), co.data() + C * O, T(0));
    } else {
      weight_grad_rows<T>(segs, C, O, co.data());
    }
    from_channels_last<T>(1, O, C, co.data(), oc.data());
    for (std::int64_t i = 0; i < O * C; ++i) gw[i * 3 + k] = oc.data()[i];
  }
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

// ---- batch norm ----

namespace {

// Per channel as T: the forward's affine (a, shift: bn_affine) and the mean rounded to T.
template <typename T>
struct ChannelAffine {
  AlignedVector<T> a, shift, m;
  ChannelAffine(std::int64_t C, const double* mean, const double* invstd, const T* w, const T* b)
      : a(static_cast<std::size_t>(C)), shift(static_cast<std::size_t>(C)), m(static_cast<std::size_t>(C)) {
    for (std::int64_t c = 0; c < C; ++c) {
      const auto [ac, sc] = bn_affine(mean[c], invstd[c], w, b, c);
      a[c] = ac;
      shift[c] = sc;
      m[c] = static_cast<T>(mean[c]);
    }
  }
};

enum class Mask { kNone, kReluOfX, kReluOfY };  // what passes the output gradient

constexpr std::int64_t kBnRows = 64;  // rows summed in T before the sums go to double

// sums (2C doubles, added to): of gm and gm * (x - m) per channel over rows [r0, r1), with
// gm = g masked as `mask` says; kReluOfY also stores gm to gres.
template <typename T, Mask kMask>
void bn_sums(const T* x, const T* g, const T* y, T* gres, std::int64_t r0, std::int64_t r1, std::int64_t C,
             const ChannelAffine<T>& f, double* sums) {
  constexpr std::int64_t kL = Vec<T>::kLanes;
  for (std::int64_t q0 = r0; q0 < r1; q0 += kBnRows) {
    const std::int64_t q1 = std::min(r1, q0 + kBnRows);
    for (std::int64_t c = 0; c < C; c += kL) {
      const V<T> vm = load_vec<T>(f.m.data() + c), va = load_vec<T>(f.a.data() + c),
                 vs = load_vec<T>(f.shift.data() + c);
      V<T> bg{}, bgd{};
      for (std::int64_t r = q0; r < q1; ++r) {
        const std::int64_t at = r * C + c;
        const V<T> xv = load_vec<T>(x + at);
        V<T> gv = load_vec<T>(g + at);
        if constexpr (kMask == Mask::kReluOfX) gv = relu_pass(fma_vec<T>(xv, va, vs), gv);
        if constexpr (kMask == Mask::kReluOfY) {
          gv = relu_pass(load_vec<T>(y + at), gv);
          store_vec<T>(gres + at, gv);
        }
        bg += gv;
        bgd += gv * (xv - vm);
      }
      for (std::int64_t k = 0; k < kL; ++k) {
        sums[c + k] += static_cast<double>(bg[k]);
        sums[C + c + k] += static_cast<double>(bgd[k]);
      }
    }
  }
}

// The backward's two passes: the sums (each thread an even share of the rows into its own
// row of partial sums, added in thread order), the coefficients, then gx = alpha gm +
// beta (x - m) + gamma with gm from g (masked by the ReLU of x) or, after kReluOfY, gres.
template <typename T, Mask kMask>
void bn_backward(const T* x, const T* g, const T* y, T* gres, std::int64_t P, std::int64_t C, const double* mean,
                 const double* invstd, const T* w, const T* b, bool batch_stats, T* gx, T* gw, T* gb) {
  constexpr std::int64_t kL = Vec<T>::kLanes;
  const ChannelAffine<T> f(C, mean, invstd, w, b);
  const int threads = team_size(P * C, (P + kBnRows - 1) / kBnRows);
  std::vector<double> partial(static_cast<std::size_t>(threads * 2 * C), 0.0);
  AlignedVector<T> alpha(static_cast<std::size_t>(C)), beta(alpha.size()), gamma(alpha.size());
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    bn_sums<T, kMask>(x, g, y, gres, P * t / nt, P * (t + 1) / nt, C, f, partial.data() + t * 2 * C);
#pragma omp barrier
#pragma omp single
    for (std::int64_t c = 0; c < C; ++c) {
      double sum_g = 0, sum_gd = 0;
      for (int r = 0; r < nt; ++r) {
        sum_g += partial[r * 2 * C + c];
        sum_gd += partial[r * 2 * C + C + c];
      }
      const auto k = grad_coefficients(c, static_cast<double>(P), sum_g, sum_gd, mean, invstd, w, batch_stats, gw, gb);
      alpha[c] = k.alpha;
      beta[c] = k.beta;
      gamma[c] = k.gamma;
    }
    if (gx) {
      const T* gm = kMask == Mask::kReluOfY ? gres : g;
#pragma omp for schedule(static)
      for (std::int64_t r = 0; r < P; ++r)
        for (std::int64_t c = 0; c < C; c += kL) {
          const std::int64_t at = r * C + c;
          const V<T> xv = load_vec<T>(x + at);
          V<T> gv = load_vec<T>(gm + at);
          if constexpr (kMask == Mask::kReluOfX)
            gv = relu_pass(fma_vec<T>(xv, load_vec<T>(f.a.data() + c), load_vec<T>(f.shift.data() + c)), gv);
          store_vec<T>(gx + at, load_vec<T>(alpha.data() + c) * gv +
                                    load_vec<T>(beta.data() + c) * (xv - load_vec<T>(f.m.data() + c)) +
                                    load_vec<T>(gamma.data() + c));
        }
    }
  }
}

}  // namespace

template <typename T>
void batch_norm_channels_last_apply(const T* x, std::int64_t P, std::int64_t C, const double* mean,
                                    const double* invstd, const T* w, const T* b, T* y, bool relu,
                                    const T* residual) {
  constexpr std::int64_t kL = Vec<T>::kLanes;
  const ChannelAffine<T> f(C, mean, invstd, w, b);
#pragma omp parallel for schedule(static) if (P * C >= kMinParallelWork)
  for (std::int64_t r = 0; r < P; ++r)
    for (std::int64_t c = 0; c < C; c += kL) {
      const std::int64_t at = r * C + c;
      V<T> v = fma_vec<T>(load_vec<T>(x + at), load_vec<T>(f.a.data() + c), load_vec<T>(f.shift.data() + c));
      if (residual) v += load_vec<T>(residual + at);
      if (relu) v = v > T(0) ? v : V<T>{};  // as relu(): NaN becomes 0
      store_vec<T>(y + at, v);
    }
}

template <typename T>
void batch_norm_channels_last_backward(const T* x, const T* gy, std::int64_t P, std::int64_t C, const double* mean,
                                       const double* invstd, const T* w, const T* b, bool batch_stats, T* gx, T* gw,
                                       T* gb, bool relu) {
  if (relu)
    bn_backward<T, Mask::kReluOfX>(x, gy, nullptr, nullptr, P, C, mean, invstd, w, b, batch_stats, gx, gw, gb);
  else
    bn_backward<T, Mask::kNone>(x, gy, nullptr, nullptr, P, C, mean, invstd, w, b, batch_stats, gx, gw, gb);
}

template <typename T>
void batch_norm_add_relu_channels_last_backward(const T* x, const T* y, const T* gy, std::int64_t P, std::int64_t C,
                                                const double* mean, const double* invstd, const T* w,
                                                bool batch_stats, T* gres, T* gx, T* gw, T* gb) {
  bn_backward<T, Mask::kReluOfY>(x, gy, y, gres, P, C, mean, invstd, w, nullptr, batch_stats, gx, gw, gb);
}

#define VIDGRAD_INSTANTIATE(T)                                                                                     \
  template void pointwise_channels_last_forward<T>(std::int64_t, std::int64_t, std::int64_t, const T*, const T*, T*, \
                                                   const GemmEpilogue<T>&, bool);                                  \
  template void pointwise_channels_last_backward_input<T>(std::int64_t, std::int64_t, std::int64_t, const T*,      \
                                                          const T*, T*, bool);                                     \
  template void pointwise_channels_last_backward_weight<T>(std::int64_t, std::int64_t, std::int64_t, const T*,     \
                                                           const T*, T*);                                          \
  template void channels_last_channel_sums<T>(std::int64_t, std::int64_t, const T*, T*);                           \
  template void channels_last_statistics<T>(std::int64_t, std::int64_t, const T*, double*, double*);              \
  template void temporal_channels_last_forward<T>(std::int64_t, std::int64_t, std::int64_t, std::int64_t,          \
                                                  std::int64_t, const T*, const T*, T*, const GemmEpilogue<T>&);   \
  template void temporal_channels_last_backward_input<T>(std::int64_t, std::int64_t, std::int64_t, std::int64_t,   \
                                                         std::int64_t, const T*, const T*, T*);                    \
  template void temporal_channels_last_backward_weight<T>(std::int64_t, std::int64_t, std::int64_t, std::int64_t,  \
                                                          std::int64_t, const T*, const T*, T*);                   \
  template void batch_norm_channels_last_apply<T>(const T*, std::int64_t, std::int64_t, const double*,             \
                                                  const double*, const T*, const T*, T*, bool, const T*);          \
  template void batch_norm_channels_last_backward<T>(const T*, const T*, std::int64_t, std::int64_t, const double*, \
                                                     const double*, const T*, const T*, bool, T*, T*, T*, bool);   \
  template void batch_norm_add_relu_channels_last_backward<T>(const T*, const T*, const T*, std::int64_t,          \
                                                              std::int64_t, const double*, const double*, const T*, \
                                                              bool, T*, T*, T*, T*);
VIDGRAD_INSTANTIATE(float)
VIDGRAD_INSTANTIATE(double)
#undef VIDGRAD_INSTANTIATE

}  // namespace vidgrad::cpu
