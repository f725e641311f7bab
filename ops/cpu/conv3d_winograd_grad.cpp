// The weight gradient of the Winograd temporal conv (Note [Winograd temporal conv] in
// conv3d_winograd.cpp; Notes [Winograd weight gradient], [Winograd weight-gradient
// packing], [Winograd weight-gradient blocks] and [Winograd weight-gradient points] below).
#include "vidgrad/ops/cpu/conv3d_internal.h"
#include "vidgrad/ops/cpu/micro_kernel.h"
#include "vidgrad/ops/cpu/simd.h"
#include "vidgrad/ops/cpu/winograd.h"

#include "vidgrad/core/storage.h"

#include <omp.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace vidgrad::cpu {

namespace {

using namespace kernel;
using namespace winograd;

// transform_rows for the weight gradient's input operand, stored transposed as packed B
// panels for the micro-kernel (Note [Winograd weight-gradient packing]): row k < count of
// point p in [R0, R1) at column j0 + j (j < len) goes to
//   dst + (p - R0) * dst_point + (k / NR) * kc * NR + (j0 + j) * NR + k % NR,
// panels of NR rows (a multiple of kL), each kc columns. Rows past count up to the next
// multiple of kL are stored as zeros. kL rows at a time, a chunk of columns at a time: each
// row's points go to tmp ((R1 - R0) x kL rows of kChunk values, in L1), a row after
// another (a few streams from memory at a time), then each point's kL x kL blocks are
// transposed in registers and stored a column at a time. With kPro, rows pass through
// pro's prologue as in transform_rows.
template <typename T>
constexpr std::int64_t kPackChunk = 4 * Vec<T>::kLanes;  // columns a row at a time

template <std::int64_t NR, typename T, int R, int J, int R0, int R1, bool kPro>
void transform_packed(const double (&m)[R][J], const T* const (&src)[J], std::int64_t src_stride, std::int64_t count,
                      std::int64_t len, std::int64_t j0, T* dst, std::int64_t dst_point, std::int64_t kc, T* tmp,
                      const InputPrologue<T>& pro) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t L = Vec<T>::kLanes, kChunk = kPackChunk<T>;
  static_assert(NR % L == 0, "a block of kL rows lies within one panel");
  for (std::int64_t k0 = 0; k0 < count; k0 += L) {
    const std::int64_t rows = std::min(L, count - k0);
    T* const panel = dst + (k0 / NR) * kc * NR + k0 % NR;
    for (std::int64_t c0 = 0; c0 < len; c0 += kChunk) {
      const std::int64_t chunk = std::min(kChunk, len - c0);
      for (std::int64_t i = 0; i < L; ++i)
        for (std::int64_t v = 0; v < chunk; v += L) {
          V e[R1 - R0];
          if (i < rows) {
            V d[J];
            const std::int64_t at = (k0 + i) * src_stride + c0 + v, n = std::min(L, chunk - v);
            const RowPrologue<T, kPro> in(pro, k0 + i);
#pragma GCC unroll 16
            for (int j = 0; j < J; ++j)
              d[j] = !src[j]   ? V{}
                     : n == L ? in(load_vec(src[j] + at))
                              : in(load_lanes(src[j] + at, first_lanes<T>(n)));
            transform<T, R, J, V, R0, R1>(m, d, e);
          } else {
#pragma GCC unroll 16
            for (int p = 0; p < R1 - R0; ++p) e[p] = V{};
          }
#pragma GCC unroll 16
          for (int p = 0; p < R1 - R0; ++p) store_vec(tmp + (p * L + i) * kChunk + v, e[p]);
        }
      for (int p = 0; p < R1 - R0; ++p)
        for (std::int64_t v = 0; v < chunk; v += L) {
          V r[L];
          for (std::int64_t i = 0; i < L; ++i) r[i] = load_vec(tmp + (p * L + i) * kChunk + v);
          transpose_lanes<T>(r);  // r[j]: rows k0 .. k0 + kL - 1 at column j0 + c0 + v + j
          T* const out = panel + p * dst_point + (j0 + c0 + v) * NR;
          for (std::int64_t j = 0; j < std::min(L, chunk - v); ++j) store_vec(out + j * NR, r[j]);
        }
    }
  }
}

// Note [Winograd weight gradient]: the weight gradient of the same conv reduces, for each
// tile, r[k] = sum over j < m of gy[j] d[j + k], k < 3: a correlation of the m output
// gradient frames with the m + 2 input frames. By the same bilinear identity as the
// forward (transposed), r = G^T ((AT^T gy) . (BT d)), so with channels
//   gw(:, :, k) = sum over p of G[p][k] Q_p,   Q_p (O x C) = sum over (tile, position) of
//                 (AT^T gy)_p (BT x)_p^T,
// P GEMMs along both operands' rows (as in Note [transposed row GEMM]), of depth (tiles x
// positions) instead of 3 GEMMs of depth (frames x positions): 6 of depth 1/4 for F(4, 3),
// half the multiplications again. Columns are split between threads in blocks; each transforms a
// block of both operands into its own scratch (small enough for L2), already laid out for
// the micro-kernel (Note [Winograd weight-gradient packing]), and accumulates its own Q;
// G^T is applied once at the end.
//
// It pays only with enough columns per channel: at least 1.5 per channel in and out where
// blocks of 128 or more columns fit in L2 (up to about 340 channels), and 3 where they do
// not (blocks of 256 columns from L3); with fewer, loading and storing Q per block and
// transforming both operands cost more than the multiplications saved. conv3d_bench, direct
// / Winograd ms: 16x224 stage3 (128 channels, 3136 columns) 3.92 / 2.95, stage2 (64) 5.62 /
// 4.82, stem (32) 9.76 / 8.17; 4 x 16x224 stage4 (256, 3136 columns, 3 interleaved runs
// each) 14.9-17.6 / 11.0-11.7; 16x224 stage4 (784 columns) 3.53-4.53 / 3.66-4.01, even
// (and, when every column was transformed first, slower in the network's profile: 3.6 ->
// 4.2 ms), stage5 (512, 196 columns) 3.68 / 4.65. At 256 channels and more, where threads
// split the points instead (Note [Winograd weight-gradient points]), half a column per
// channel in and out was enough there (conv3d_bench --cold, ms, min of 5 or 8 interleaved runs,
// direct / column split / point split: 16x224 stage4 (784 columns) 3.82 / 3.22 / 3.01,
// stage5 (196) 4.47 / 4.31 / 4.04; 4 x 8x112 stage4 (392) 1.96 / 1.94 / 1.86, stage5
// (128) 2.32 / 3.50 / 3.28): the threshold left both stage-5 shapes on the direct GEMM,
// which cost the one at 196 columns about 10% against a clear loss at 128. That was the AMD
// EPYC VM of sessions 1-11. On the Intel Xeon VM (2 MiB L2 a core, 2026-11-22), the point
// split won down to a twelfth of a column per channel: a timing loop over
// conv3d_backward_weight (2 threads, 64 MiB written before each call, min of 15-30 calls,
// 3 interleaved runs), direct / point split ms: 16x224 stage5 (512 channels, 196 columns)
// 11.2-11.3 / 8.1-8.7, its 256-channel downsampling conv (7x7, 196) 2.54-2.65 / 2.13-2.24;
// 4 x 8x112 stage5 (128) 7.0-9.6 / 5.4-5.5 and 256 channels at 4x4 (128) 1.65-1.88 /
// 1.23-1.64; 1 x 8x112 at 512 channels 7x7 (98) 5.8-6.0 / 4.4-4.5. With fewer it lost:
// 512 channels at 64 columns 3.15-3.54 / 3.51-3.68, 32 columns 2.27-3.45 / 3.15-3.17, 256
// at 32 0.73-0.74 / 0.78-0.80. The threshold is now this machine's (kPointSplitDepth).

// Note [Winograd weight-gradient packing]: both transformed operands run along the
// reduction (columns), and the micro-kernel wants B k-major: a row of NR input channels
// per column. Until 2026-11-23 each block was transformed into rows (channel-major) and
// row_gemm_nt then transposed both operands into its packed panels, a second pass over
// P x (O + C) rows per block, a third of a 64-channel weight gradient's samples (perf,
// warm loop). Now the input's transform stores its result transposed, straight into packed
// B panels (transform_packed: kL channels at a time, each channel's points over 64 columns
// into an L1 buffer, read from memory a channel after another, then kL x kL register
// transposes), and A is not packed at all: the transformed output gradient stays in rows
// (transform_rows) and the micro-kernel broadcasts its values from eight rows `block`
// apart (micro_tile's kRowsA), which costs it nothing, every value of a row being used
// once per B panel from L1 or L2. Timing loop over conv3d_backward_weight (2 threads, 256
// MiB written before each call, min of 15 calls, 3 interleaved runs, 2026-11-23, Intel
// VM), before / after, ms: 1 x 16x112x112 at 32 channels 12.6-15.1 / 10.6-12.5; 1 x 16x28x28
// at 128 5.9-8.0 / 4.8-6.2; 1 x 16x7x7 at 512 5.8-7.2 / 5.1-5.8; 4 x 8x28x28 at 64
// 4.4-4.9 / 3.9-4.4; 4 x 8x14x14 at 128 3.0-3.6 / 2.5-3.0; 4 x 8x7x7 at 256 2.85-2.92 /
// 2.45-2.60 (1 x 16x14x14 at 256 5.3-6.2 / 5.4-5.7, 1 x 16x56x56 at 64 9.8-13.8 /
// 8.0-11.6: within the noise). Transposing straight from the input (kL channels x 6
// frames, 96 streams from memory, a column vector at a time) was slower than before at 32
// to 128 channels (32 channels 112x112: 16.1-18.8 -> 22.5-28.0), hence the row-by-row
// chunks; prefetching the next chunk's rows made no difference and was dropped.

// The point split pays from one column per kPointSplitDepth channels in and out (the Note).
constexpr std::int64_t kPointSplitDepth = 12;

// Columns of a weight-gradient block with both transformed operands (P points, C + O rows
// of `bytes`-sized values) within about 1 MiB of L2, in whole vectors of 16.
std::int64_t weight_grad_l2_columns(std::int64_t P, std::int64_t C, std::int64_t O, std::int64_t bytes) {
  return (std::int64_t{1} << 20) / (P * (O + C) * bytes) / 16 * 16;
}

// Columns per weight-gradient block: the L2-sized block up to 512 columns; where that
// leaves fewer than 128 (over about 340 channels in and out), 256 columns, from L3.
std::int64_t weight_grad_block(std::int64_t P, std::int64_t C, std::int64_t O, std::int64_t bytes) {
  const std::int64_t l2 = weight_grad_l2_columns(P, C, O, bytes);
  return l2 >= 128 ? std::min<std::int64_t>(l2, 512) : 256;
}

// Whether `threads` threads split the Winograd points of a weight gradient rather than
// its columns (Note [Winograd weight-gradient points]): at 256 channels and more, where a
// thread's share of columns made shallow GEMMs into large partial Qs.
bool split_points(const Conv3dGeometry& g, int threads) {
  return threads > 1 && Winograd<4>::P % threads == 0 && Winograd<2>::P % threads == 0 && std::min(g.C, g.O) >= 256;
}

template <typename T, int Mo>
void weight_grad_impl(const Conv3dGeometry& g, const T* gy, const T* x, T* gw, const InputPrologue<T>& pro) {
  using W = Winograd<Mo>;
  constexpr int P = W::P;
  const std::int64_t C = g.C, O = g.O, frames = g.T, HW = g.H * g.W, vol = frames * HW;
  const std::int64_t tiles = (frames + Mo - 1) / Mo, cols_per_sample = tiles * HW, per = P * O * C;
  const int max_threads = omp_in_parallel() ? 1 : omp_get_max_threads();

  // Columns [q0, q1) of the batch (flat over (sample, tile, position)), transformed at the
  // points [R0, R1) (r0, r1: std::integral_constant) and packed for the micro-kernel (Note
  // [Winograd weight-gradient packing]): (AT^T gy)_p in rows, u + (p - R0) * a_point + o *
  // a_ld, and (BT x)_p as packed B panels, v + (p - R0) * b_point, each of kc = q1 - q0
  // columns.
  using First = std::integral_constant<int, 0>;
  using Half = std::integral_constant<int, P / 2>;
  using All = std::integral_constant<int, P>;
  constexpr std::int64_t NR = kNr<T>, kSubKc = 128;
  const std::int64_t m_panels = (O + kMr - 1) / kMr, n_panels = (C + NR - 1) / NR;
  // The run of columns from q (at most to q1) inside one tile of one sample: its length
  // and its first column of the output gradient's Mo frames and the input's P frames of
  // the tile, channel 0 (null: a frame outside the clip).
  struct Run {
    std::int64_t len;
    const T* gsrc[Mo];
    const T* xsrc[P];
  };
  auto run_at = [&](std::int64_t q, std::int64_t q1) {
    const std::int64_t n = q / cols_per_sample, r = q % cols_per_sample;
    const std::int64_t tile = r / HW, pos = r % HW;
    Run run{std::min(q1 - q, HW - pos), {}, {}};
    for (int j = 0; j < Mo; ++j) {
      const std::int64_t f = tile * Mo + j;
      run.gsrc[j] = f < frames ? gy + n * O * vol + f * HW + pos : nullptr;
    }
    for (int j = 0; j < P; ++j) {
      const std::int64_t f = tile * Mo - 1 + j;
      run.xsrc[j] = f >= 0 && f < frames ? x + n * C * vol + f * HW + pos : nullptr;
    }
    return run;
  };
  auto transform_columns = [&](auto r0, auto r1, std::int64_t q0, std::int64_t q1, T* u, std::int64_t a_point,
                               std::int64_t a_ld, T* v, std::int64_t b_point, T* tmp) {
    constexpr int R0 = decltype(r0)::value, R1 = decltype(r1)::value;
    for (std::int64_t q = q0; q < q1;) {
      const Run run = run_at(q, q1);
      const std::int64_t j0 = q - q0;
      transform_rows<T, P, Mo, R0, R1>(W::A, run.gsrc, vol, O, run.len, u + j0, a_point, a_ld);
      if (pro.active())
        transform_packed<NR, T, P, P, R0, R1, true>(W::BT, run.xsrc, vol, C, run.len, j0, v, b_point, q1 - q0, tmp,
                                                    pro);
      else
        transform_packed<NR, T, P, P, R0, R1, false>(W::BT, run.xsrc, vol, C, run.len, j0, v, b_point, q1 - q0, tmp,
                                                     pro);
      q += run.len;
    }
  };
  // The source rows of columns [q0, q1): the output gradient's Mo frames and the input's P
  // frames of each run, (pointer, bytes) per channel and frame (Note [Winograd
  // weight-gradient prefetch]).
  using Rows = std::vector<std::pair<const char*, std::int64_t>>;
  auto block_rows = [&](std::int64_t q0, std::int64_t q1, Rows& rows) {
    rows.clear();
    for (std::int64_t q = q0; q < q1;) {
      const Run run = run_at(q, q1);
      const std::int64_t bytes = run.len * static_cast<std::int64_t>(sizeof(T));
      auto add = [&](const T* src, std::int64_t channels) {
        if (!src) return;
        for (std::int64_t c = 0; c < channels; ++c)
          rows.emplace_back(reinterpret_cast<const char*>(src + c * vol), bytes);
      };
      for (const T* src : run.gsrc) add(src, O);
      for (const T* src : run.xsrc) add(src, C);
      q += run.len;
    }
  };
  // Scratch of a thread for `points` points of blocks of `block` columns: packed A and B,
  // then tmp for transform_packed.
  auto scratch_size = [&](std::int64_t points, std::int64_t block) {
    return points * (m_panels * kMr + n_panels * NR) * block + P * kLanes<T> * kPackChunk<T>;
  };
  // The rows of A past O up to a whole panel, which the micro-kernel reads but never stores:
  // zeros, so that it multiplies no stale values.
  auto zero_pad_rows = [&](T* u, std::int64_t points, std::int64_t a_point, std::int64_t ld) {
    for (std::int64_t p = 0; p < points; ++p)
      std::fill(u + p * a_point + O * ld, u + p * a_point + m_panels * kMr * ld, T(0));
  };
  const std::int64_t total = g.N * cols_per_sample;
  // Each thread's first block stores its Q rather than adding to it: nothing is zeroed.
  // q (O x C) = (accumulate: +=) A B^T over kc columns, from the packed operands of one
  // point: each B panel against every A panel, kSubKc columns at a time so that the part
  // of the B panel read again for every A panel (128 x 48 floats) stays in L1 (as
  // row_gemm_nt, Note [transposed row GEMM] in row_gemm.cpp).
  // With next, the rows [share0, share1) of it are requested into L2 while the micro-kernels
  // run, a share per micro-tile (Note [Winograd weight-gradient prefetch]).
  auto gemm = [&](std::int64_t kc, const T* a, std::int64_t lda, const T* b, T* q, bool accumulate,
                  const Rows* next = nullptr, std::int64_t share0 = 0, std::int64_t share1 = 0) {
    const std::int64_t tiles_n = n_panels * ((kc + kSubKc - 1) / kSubKc) * m_panels;
    std::int64_t tile = 0;
    for (std::int64_t cp = 0; cp < n_panels; ++cp) {
      const std::int64_t cols = std::min(NR, C - cp * NR);
      for (std::int64_t s0 = 0; s0 < kc; s0 += kSubKc)
        for (std::int64_t mp = 0; mp < m_panels; ++mp, ++tile) {
          if (next) {
            const std::int64_t span = share1 - share0;
            const std::int64_t r0 = share0 + span * tile / tiles_n, r1 = share0 + span * (tile + 1) / tiles_n;
            for (std::int64_t r = r0; r < r1; ++r) prefetch_l2((*next)[r].first, (*next)[r].second);
          }
          micro_tile<T, true>(std::min(kSubKc, kc - s0), a + mp * kMr * lda + s0, b + cp * kc * NR + s0 * NR, NR,
                              q + mp * kMr * C + cp * NR, C, std::min(kMr, O - mp * kMr), cols, accumulate || s0 > 0,
                              nullptr, lda);
        }
    }
  };
  const bool by_points = split_points(g, max_threads);
  const int threads =
      by_points ? max_threads : static_cast<int>(std::clamp<std::int64_t>((total + 63) / 64, 1, max_threads));
  const Storage partial_buf(static_cast<std::size_t>((by_points ? 1 : threads) * per) * sizeof(T),
                            Device::cpu());  // block cache
  T* partial = static_cast<T*>(partial_buf.data());
  int team = 1;  // partial Qs to add up

  if (by_points) {
    // Note [Winograd weight-gradient points]: threads take the points rather than the
    // columns, each all columns of P / threads points: one Q_p per point and no partial sums
    // to add, each point transformed once, and a GEMM as deep as the batch's columns (the
    // column split gave 8x112 stage 5, 512 channels, 64 columns per thread at batch 4).
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      const int p0 = P * t / nt, p1 = P * (t + 1) / nt;
      const std::int64_t block_max = weight_grad_block(std::max(1, p1 - p0), C, O, sizeof(T));
      const std::int64_t nblocks = (total + block_max - 1) / block_max;
      const std::int64_t block = std::min(block_max, ((total + nblocks - 1) / nblocks + 15) / 16 * 16);
      thread_local UninitAlignedVector<T> scratch;  // Note [uninitialised scratch]
      scratch.resize(static_cast<std::size_t>(scratch_size(p1 - p0, block)));
      const std::int64_t a_point = m_panels * kMr * block, b_point = n_panels * NR * block;
      T* u = scratch.data();
      T* v = u + (p1 - p0) * a_point;
      T* tmp = v + (p1 - p0) * b_point;
      zero_pad_rows(u, p1 - p0, a_point, block);
      for (std::int64_t q0 = 0; q0 < total; q0 += block) {
        const std::int64_t q1 = std::min(total, q0 + block);
        // split_points leaves a team of two (one, if OpenMP gives fewer), so a thread's
        // points are one half of them or all, transformed in one read of the frames: point
        // by point, each frame was read and its rows loaded once per point. Timing loop
        // over conv3d_backward_weight, 2 threads, min of 15 calls, 5 interleaved runs,
        // 2026-11-22 (Intel VM), ms: 16x224 stage 4 (256 channels, 14x14) 6.42-7.05 ->
        // 5.99-6.42 cold, 6.08-6.73 -> 5.53-6.08 warm; stage 5 (512, 7x7) 5.37-7.37 ->
        // 5.21-7.13 cold.
        if (p1 - p0 == P)
          transform_columns(First{}, All{}, q0, q1, u, a_point, block, v, b_point, tmp);
        else if (p0 == 0)
          transform_columns(First{}, Half{}, q0, q1, u, a_point, block, v, b_point, tmp);
        else
          transform_columns(Half{}, All{}, q0, q1, u, a_point, block, v, b_point, tmp);
        for (int p = p0; p < p1; ++p)
          gemm(q1 - q0, u + (p - p0) * a_point, block, v + (p - p0) * b_point, partial + p * O * C, q0 > 0);
      }
    }
  } else {
    // Note [Winograd weight-gradient blocks]: the columns of the whole batch are split
    // evenly between threads, and each thread's share into equal blocks of at most
    // weight_grad_block columns (within L2, or 256 from L3 for many channels). Each block
    // costs a load and store of every Q_p (P x O x C) besides its multiplications, so blocks
    // run across samples: per sample, 8x112 stage 4 (256 channels at 7x7) had 98 columns,
    // 12 GEMMs of depth 98 per thread at 4 samples, and a 784-column 16x224 sample split
    // 512 / 272 between threads with a 16-column last block. Each thread transforms a block
    // of both operands into its own scratch and accumulates its own Q; the Qs are added up
    // below.
    //
    // Note [Winograd weight-gradient prefetch]: a block's transforms read its columns of
    // every channel's frames, O x Mo + C x P rows of a few hundred bytes each, from memory
    // (the operands were written a layer or more ago); with nothing requested ahead the
    // thread waited on those reads and then ran the GEMMs with the memory idle. The rows of
    // the thread's next block are now requested into L2 while this block's GEMMs run, a
    // share per micro-tile. In the step on the AMD EPYC VM (2026-11-24, `vidgrad bench
    // --model sevnet_g8 --batch 4 --frames 8 --size 112 --threads 2 --steps 10 --warmup 3
    // --profile`, four alternations of the two binaries), ms a step: 32 channels at 56x56
    // 3.03-3.42 -> 2.66-3.17, 64 at 28x28 4.77-4.98 -> 4.17-5.11, 128 at 14x14 6.10-6.34
    // -> 6.15-6.36 (its operands mostly in L3); batch 1 16x224 (three): 32 at 112x112
    // 6.17-6.32 -> 5.48-6.04, 64 at 56x56 8.92-9.35 -> 8.23-8.54. The point split (256
    // channels and more, operands of 1.6 MB or less) was not faster with it and has none.
    // The transformed operands of a 512-column block at 32 channels took 983 KB of L2, and
    // the next block's rows 640 KB more; blocks that leave room for both (368 columns at 32
    // channels, 176 at 64; unchanged from 128 on, where fewer than 128 would fit), the same
    // commands, four and three alternations: 64 at 28x28 4.06-4.72 -> 3.97-4.22, 64 at
    // 56x56 8.17-9.88 -> 7.83-8.13, 32 channels even (2.62-2.94 -> 2.59-2.79, 5.51-6.05 ->
    // 5.42-5.73); 128 channels at such blocks were mixed (14x14 5.78-6.12 -> 5.58-6.02,
    // 28x28 10.61-11.16 -> 11.11-11.42).
    const std::int64_t with_rows =
        (std::int64_t{1} << 20) / ((P * (O + C) + Mo * O + P * C) * static_cast<std::int64_t>(sizeof(T))) / 16 * 16;
    const std::int64_t l2_block = weight_grad_block(P, C, O, sizeof(T));
    const std::int64_t block_max = with_rows >= 128 ? std::min(l2_block, with_rows) : l2_block;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
      const std::int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
      if (t == 0) team = static_cast<int>(nt);
      const std::int64_t c0 = total * t / nt, c1 = total * (t + 1) / nt;
      const std::int64_t nblocks = std::max<std::int64_t>(1, (c1 - c0 + block_max - 1) / block_max);
      const std::int64_t block = std::min(block_max, ((c1 - c0 + nblocks - 1) / nblocks + 15) / 16 * 16);
      thread_local UninitAlignedVector<T> scratch;  // Note [uninitialised scratch]
      scratch.resize(static_cast<std::size_t>(scratch_size(P, block)));
      const std::int64_t a_point = m_panels * kMr * block, b_point = n_panels * NR * block;
      T* u = scratch.data();
      T* v = u + P * a_point;
      T* tmp = v + P * b_point;
      zero_pad_rows(u, P, a_point, block);
      thread_local Rows next;
      for (std::int64_t q0 = c0; q0 < c1; q0 += block) {
        const std::int64_t q1 = std::min(c1, q0 + block);
        transform_columns(First{}, All{}, q0, q1, u, a_point, block, v, b_point, tmp);
        block_rows(q1, std::min(c1, q1 + block), next);
        const std::int64_t nr = static_cast<std::int64_t>(next.size());
        for (int p = 0; p < P; ++p)
          gemm(q1 - q0, u + p * a_point, block, v + p * b_point, partial + t * per + p * O * C, q0 > c0, &next,
               nr * p / P, nr * (p + 1) / P);
      }
    }
  }
  // gw(o, c, k) = sum over p of G[p][k] Q_p(o, c), Q_p summed over the team's partials:
  // a vector of input channels at a time, the three taps stored interleaved. Value by value
  // this was a fifth of a 4 x 8x112 stage-4 weight gradient's perf samples.
  using V = typename Vec<T>::type;
  constexpr std::int64_t kL = Vec<T>::kLanes;
  // r[k] = sum over p of G[p][k] Q_p at (o, c): load reads a value or a vector of them.
  auto taps_at = [&](std::int64_t o, std::int64_t c, auto load, auto* r) {
    using Q = std::remove_cvref_t<decltype(load(partial))>;
    Q q[P];
    for (int p = 0; p < P; ++p) {
      q[p] = load(partial + p * O * C + o * C + c);
      for (int t = 1; t < team; ++t) q[p] += load(partial + t * per + p * O * C + o * C + c);
    }
#pragma GCC unroll 8
    for (int k = 0; k < 3; ++k) {
      r[k] = Q{};
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p)
        if (W::G[p][k] != 0) r[k] += static_cast<T>(W::G[p][k]) * q[p];
    }
  };
#pragma omp parallel for schedule(static) if (max_threads > 1 && O * C >= kMinParallelWork / 8)
  for (std::int64_t o = 0; o < O; ++o) {
    std::int64_t c = 0;
    for (; c + kL <= C; c += kL) {
      V r[3];
      taps_at(o, c, [](const T* src) { return load_vec(src); }, r);
      store_interleaved3<T>(r[0], r[1], r[2], gw + (o * C + c) * 3);
    }
    for (; c < C; ++c) taps_at(o, c, [](const T* src) { return *src; }, gw + (o * C + c) * 3);
  }
}

}  // namespace

// Note [Winograd weight gradient on one thread]: the column split's thresholds (Note
// [Winograd weight gradient]) were measured on two threads, where each thread's partial Qs
// are added up at the end and its share of the columns is half the batch's. A team of one
// (one thread, or a call from inside a parallel region) has no partials and all the
// columns, and there the Winograd weight gradient pays down to about the point split's
// depth. conv3d_bench --threads=1, two alternations, direct / Winograd ms (2026-11-25, AMD
// VM): 4 x 8x112 stage 4 (256 channels, 392 columns) 6.49-6.72 / 4.68-5.34, stage 5 (512,
// 128) 8.84-8.88 / 5.78-6.67; 1 x 16x224 stage 4 (256, 784) 12.5-12.8 / 9.2-10.2, stage 5
// (512, 196) 14.0-16.2 / 8.25-8.49; 1 x 8x112 stage 4 (256, 98) 1.56-1.89 / 1.19-1.33, and
// stage 5 (512, 32 columns: a thirty-second of a column per channel) 2.13-2.49 / 2.65-2.66,
// where it loses. Until then the four where it wins took the direct GEMM on one thread.
bool winograd_temporal_weight_grad_pays(const Conv3dGeometry& g) {
  const std::int64_t Mo = tile_frames(g), cols = g.N * ((g.To + Mo - 1) / Mo) * g.H * g.W;
  // Split by points, or one thread: at least one column per kPointSplitDepth channels in
  // and out (Notes [Winograd weight-gradient points], [Winograd weight gradient on one
  // thread]).
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (split_points(g, threads) || threads == 1) return kPointSplitDepth * cols >= g.C + g.O;
  const bool in_l2 = weight_grad_l2_columns(Mo + 2, g.C, g.O, sizeof(float)) >= 128;
  return in_l2 ? 2 * cols >= 3 * (g.C + g.O) : cols >= 3 * (g.C + g.O);
}

template <typename T>
void winograd_temporal_weight_grad(const Conv3dGeometry& g, const T* gy, const T* x, T* gw,
                                   const InputPrologue<T>& pro) {
  with_tile_frames(g, [&](auto mo) { weight_grad_impl<T, decltype(mo)::value>(g, gy, x, gw, pro); });
}

#define VIDGRAD_INSTANTIATE(T)                                                                    \
  template void winograd_temporal_weight_grad<T>(const Conv3dGeometry&, const T*, const T*, T*, \
                                                 const InputPrologue<T>&);
VIDGRAD_INSTANTIATE(float)
VIDGRAD_INSTANTIATE(double)
#undef VIDGRAD_INSTANTIATE

}  // namespace vidgrad::cpu
