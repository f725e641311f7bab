// Note [Winograd temporal conv]: SEVNet's 3x1x1 convolutions (time padding 1, no
// groups) are 42% of a training step and half of an inference step, and the row GEMM
// already runs them near the FMA peak, so the remaining lever is fewer multiplications.
// Along time each (output channel, position) is a 1-D correlation of a 3-tap filter with
// the input frames, and Winograd's minimal filtering F(m, 3) gives m outputs from m + 2
// inputs with m + 2 multiplications instead of 3m (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", 2016):
//   y[tile] = AT * ((G * w) . (BT * d)),   d the m + 2 input frames of a tile of m
// output frames, "." elementwise. With channels the elementwise product becomes, for each
// of the P = m + 2 transform points p, one GEMM  M_p (O x cols) = (G w)_p (O x C) *
// (BT x)_p (C x cols), columns being (tile, position) pairs: 6 GEMMs of depth C per 4
// output frames instead of the direct conv's 12 (F(4, 3)), half the multiplications.
// Transforms are sums of a few frames with small constant coefficients.
//
// Nothing transformed goes to memory: a thread packs one block of 48-column panels of
// (BT x)_p for all p straight from the input frames (the GEMM's B packing, with the
// transform folded in), and for each 8-row panel of output channels runs the micro-kernel
// (micro_kernel.h) once per point into a small tile buffer, then applies AT and the
// epilogue (batch norm, residual, ReLU) while storing the m output frames. The input
// gradient of the same conv is the same correlation of gy with the taps reversed and the
// channels swapped, so it takes the same path.
//
// F(4, 3) uses the points 0, +-1, +-2 and infinity; its transforms amplify rounding
// (AT has entries up to 8): in float32 the largest error is about 1e-5 of the output's
// RMS at 176-512 channels, 4-12 times the direct GEMM's (docs/performance.md, "Rounding");
// the Winograd test scales its tolerance with the depth of each sum.
#include "vidgrad/ops/cpu/conv3d_internal.h"
#include "vidgrad/ops/cpu/micro_kernel.h"
#include "vidgrad/ops/cpu/simd.h"
#include "vidgrad/ops/cpu/winograd.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <type_traits>
#include <vector>

namespace vidgrad::cpu {

namespace {

using namespace kernel;
using namespace winograd;

// The 3x1x1 correlation y (N, O, T, HW) = ep(sum over c, k of w(o, c, k) x(n, c, t + k - 1)),
// x (N, C, T, HW), zero outside [0, T), by F(Mo, 3) (the Note). a holds (G w)_p, O x C,
// for each point p as transformed_filters packs it.
// With pro active, x's values pass through its prologue (per input channel) as they are
// packed.
// With moments (O of them), each output channel's batch statistics are taken as the
// outputs are stored (Note [output statistics] in row_gemm.cpp): vector sums per unit and
// channel, reduced at the unit's end to one part per (block, channel), added in block order.
// y_sample: the distance between samples of y (0: O * frames * HW, y dense; more: y is
// part of a wider tensor, Note [concat in place] in ops/conv3d.cpp); a residual is dense.
template <typename T, int Mo>
void winograd_correlate(std::int64_t N, std::int64_t C, std::int64_t O, std::int64_t frames, std::int64_t HW,
                        const T* x, const T* a, T* y, const GemmEpilogue<T>& ep, const InputPrologue<T>& pro = {},
                        ChannelMoments* moments = nullptr, std::int64_t y_sample = 0) {
  using W = Winograd<Mo>;
  using V = typename Vec<T>::type;
  constexpr int P = W::P;
  constexpr std::int64_t NR = kNr<T>, L = kLanes<T>;
  // Columns are (sample, tile, position) triples, flat over the batch, so that small frames
  // (4x4 at stage 5 of an 8x112 clip: 32 columns a sample) still fill whole panels and A
  // streams once per block of the batch rather than once per sample.
  const std::int64_t vol = frames * HW, tiles = (frames + Mo - 1) / Mo, cols_per_sample = tiles * HW;
  const std::int64_t y_n = y_sample ? y_sample : O * vol;
  const std::int64_t total_cols = N * cols_per_sample;
  const std::int64_t panels = (total_cols + NR - 1) / NR, m_panels = (O + kMr - 1) / kMr;
  // Panels packed together: all points of a block within about 384 KiB of L2, so A (all
  // P weight matrices) streams once per block.
  const std::int64_t block =
      std::clamp<std::int64_t>((std::int64_t{384} << 10) / (P * C * NR * static_cast<std::int64_t>(sizeof(T))), 1, 8);
  const std::int64_t blocks = (panels + block - 1) / block;
  // Few blocks (small frames, one sample) would leave threads idle, so output channels are
  // split too: units of (block, channel chunk), at least 4 per thread.
  const std::int64_t threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const std::int64_t chunks = std::clamp<std::int64_t>((4 * threads + blocks - 1) / blocks, 1, m_panels);
  const std::int64_t units = blocks * chunks, a_point = m_panels * C * kMr;

  // One run of columns [q, q + len) inside one tile of one sample: sample n, tile, positions
  // from pos, at offset j0 of its panel.
  struct Run {
    std::int64_t n, tile, pos, len, j0;
  };
  auto run_at = [&](std::int64_t q, std::int64_t end, std::int64_t j0) {
    const std::int64_t n = q / cols_per_sample, r = q % cols_per_sample, pos = r % HW;
    return Run{n, r / HW, pos, std::min(end - q, HW - pos), j0};
  };
  auto runs_of = [&](std::int64_t c0, std::int64_t cols, Run* out) {
    int count = 0;
    for (std::int64_t q = c0; q < c0 + cols; q += out[count++].len) out[count] = run_at(q, c0 + cols, q - c0);
    return count;
  };
  // Input frame j of a run's tile, or null where it is padding.
  auto frame_ptr = [&](const Run& run, int j) -> const T* {
    const std::int64_t f = run.tile * Mo - 1 + j;
    return f >= 0 && f < frames ? x + run.n * C * vol + f * HW + run.pos : nullptr;
  };
  // The input rows of a unit's block, for prefetching: (pointer, bytes) per channel and
  // frame of each run.
  auto block_rows = [&](std::int64_t unit, std::vector<std::pair<const char*, std::int64_t>>& rows) {
    rows.clear();
    if (unit >= units) return;
    const std::int64_t p0 = unit / chunks * block, p1 = std::min(panels, p0 + block);
    const std::int64_t c0 = p0 * NR, c1 = std::min(total_cols, p1 * NR);
    for (std::int64_t q = c0; q < c1;) {
      const Run run = run_at(q, c1, 0);
      for (int j = 0; j < P; ++j)
        if (const T* src = frame_ptr(run, j))
          for (std::int64_t c = 0; c < C; ++c)
            rows.emplace_back(reinterpret_cast<const char*>(src + c * vol), run.len * sizeof(T));
      q += run.len;
    }
  };

  std::vector<double> parts(moments ? static_cast<std::size_t>(blocks * O * 3) : 0);  // [block][o][3]
  V lane_index{};
  for (std::int64_t k = 0; k < L; ++k) lane_index[k] = static_cast<T>(k);
  auto run_unit = [&](std::int64_t unit, bool packed, T* bpack, T* tile_buf,
                      const std::vector<std::pair<const char*, std::int64_t>>& next, V* sums, T* shift) {
    const std::int64_t p0 = unit / chunks * block, p1 = std::min(panels, p0 + block), chunk = unit % chunks;
    const std::int64_t mp0 = m_panels * chunk / chunks, mp1 = m_panels * (chunk + 1) / chunks;
    const std::int64_t o0 = mp0 * kMr, o1 = std::min(O, mp1 * kMr);  // this unit's channels
    if (moments) std::fill(sums, sums + 2 * (o1 - o0), V{});
    Run runs[NR + 1];
    // Pack (BT x)_p for every panel of the block: [panel][p][c][NR], zero past the columns.
    for (std::int64_t pi = p0; pi < p1 && !packed; ++pi) {
      T* dst = bpack + (pi - p0) * P * C * NR;
      const std::int64_t c0 = pi * NR, cols = std::min(NR, total_cols - c0);
      const int nruns = runs_of(c0, cols, runs);
      if (cols < NR)
        for (std::int64_t r = 0; r < P * C; ++r) std::fill(dst + r * NR + cols, dst + (r + 1) * NR, T(0));
      for (int ri = 0; ri < nruns; ++ri) {
        const Run& run = runs[ri];
        const T* src[P];
        for (int j = 0; j < P; ++j) src[j] = frame_ptr(run, j);
        if (pro.active())
          transform_rows<T, P, P, 0, P, true>(W::BT, src, vol, C, run.len, dst + run.j0, C * NR, NR, pro);
        else
          transform_rows(W::BT, src, vol, C, run.len, dst + run.j0, C * NR, NR);
      }
    }
    // For each panel and 8-row panel of outputs: P micro-kernels, then AT and the epilogue.
    // Meanwhile the next unit's input rows are prefetched, a share per micro-tile group
    // (as Note [B prefetch] in row_gemm.cpp: they would otherwise come from memory in the
    // packing loop above, a few cache lines per row).
    const std::int64_t groups = (p1 - p0) * (mp1 - mp0);
    std::int64_t group = 0;
    for (std::int64_t pi = p0; pi < p1; ++pi) {
      const T* bp = bpack + (pi - p0) * P * C * NR;
      const std::int64_t c0 = pi * NR, cols = std::min(NR, total_cols - c0);
      const int nruns = runs_of(c0, cols, runs);
      for (std::int64_t mp = mp0; mp < mp1; ++mp, ++group) {
        const auto r0 = static_cast<std::int64_t>(next.size()) * group / groups;
        const auto r1 = static_cast<std::int64_t>(next.size()) * (group + 1) / groups;
        for (std::int64_t r = r0; r < r1; ++r) prefetch_l2(next[r].first, next[r].second);
        const std::int64_t rows = std::min(kMr, O - mp * kMr);
        // The output rows this group stores (8 channels x Mo frames, a few cache lines
        // each) and their residual: requested now, while the micro-kernels run. Into L2
        // (prefetcht1), not L1 for writing (prefetchw), which stalled on a full queue of L1
        // misses (11% of the 32-channel stem forward's transform samples, perf);
        // conv3d_bench --batch=4 --frames=8 --size=112 --threads=2 --cold, median of 4
        // alternations, ms, before / after: 32 channels at 56x56 forward 2.88 / 2.83, input
        // gradient 2.88 / 2.76; 64 at 28x28 2.08 / 2.06, 2.13 / 2.06; 256 at 7x7 1.81 /
        // 1.81, 1.92 / 1.80; 128 and 512 within 2% (2026-11-24, AMD VM).
        for (std::int64_t i = 0; i < rows; ++i)
          for (int ri = 0; ri < nruns; ++ri) {
            const Run& run = runs[ri];
            const std::int64_t f0 = run.tile * Mo, nf = std::min<std::int64_t>(Mo, frames - f0);
            const std::int64_t at = (mp * kMr + i) * vol + f0 * HW + run.pos;
            const T* yr = y + run.n * y_n + at;
            const T* rr = ep.residual ? ep.residual + run.n * O * vol + at : nullptr;
            for (std::int64_t r = 0; r < nf; ++r)
              for (std::int64_t v = 0; v < run.len; v += 64 / static_cast<std::int64_t>(sizeof(T))) {
                __builtin_prefetch(yr + r * HW + v, 0, 2);
                if (rr) __builtin_prefetch(rr + r * HW + v, 0, 3);
              }
          }
        for (int p = 0; p < P; ++p)
          micro_tile(C, a + p * a_point + mp * C * kMr, bp + p * C * NR, NR, tile_buf + p * kMr * NR, NR, rows, cols,
                     false, static_cast<const GemmEpilogue<T>*>(nullptr));
        // With kSums (moments), each channel's unit sums of d = y - shift and d^2, shift its
        // first value in the unit, in registers over the row's stores.
        auto store_rows = [&](auto sums_on) {
          constexpr bool kSums = decltype(sums_on)::value;
          for (std::int64_t i = 0; i < rows; ++i) {
            const std::int64_t o = mp * kMr + i;
            const V s = ep.scale ? V{} + ep.scale[o] : V{} + T(1), b = ep.bias ? V{} + ep.bias[o] : V{};
            V sv{}, s_acc{}, ss_acc{};
            bool shifted = pi != p0;
            if constexpr (kSums)
              if (shifted) sv = V{} + shift[o - o0];
            for (int ri = 0; ri < nruns; ++ri) {
              const Run& run = runs[ri];
              const std::int64_t f0 = run.tile * Mo, nf = std::min<std::int64_t>(Mo, frames - f0);
              T* out = y + run.n * y_n + o * vol + f0 * HW + run.pos;
              const T* res = ep.residual ? ep.residual + run.n * O * vol + o * ep.ldr + f0 * HW + run.pos : nullptr;
              for (std::int64_t v = 0; v < run.len; v += L) {
                const std::uint32_t mask = first_lanes<T>(run.len - v);
                V t[P], u[Mo];
#pragma GCC unroll 8
                for (int p = 0; p < P; ++p) t[p] = load_vec(tile_buf + (p * kMr + i) * NR + run.j0 + v);
                transform<T, Mo, P>(W::AT, t, u);
                const bool whole = v + L <= run.len;  // plain loads and stores
                for (std::int64_t r = 0; r < nf; ++r) {
                  V y_r = u[r] * s + b;
                  if (res) y_r += whole ? load_vec(res + r * HW + v) : load_lanes(res + r * HW + v, mask);
                  if (ep.relu) y_r = y_r > T(0) ? y_r : V{};  // as relu(): NaN becomes 0
                  if (whole)
                    store_vec(out + r * HW + v, y_r);
                  else
                    store_lanes(out + r * HW + v, y_r, mask);
                  if constexpr (kSums) {
                    if (!shifted) {
                      shift[o - o0] = y_r[0];
                      sv = V{} + y_r[0];
                      shifted = true;
                    }
                    V d = y_r - sv;
                    if (!whole) d = lane_index < static_cast<T>(run.len - v) ? d : V{};  // lanes past the run
                    s_acc += d;
                    ss_acc += d * d;
                  }
                }
              }
            }
            if constexpr (kSums) {
              sums[2 * (o - o0)] += s_acc;
              sums[2 * (o - o0) + 1] += ss_acc;
            }
          }
        };
        if (moments)
          store_rows(std::true_type{});
        else
          store_rows(std::false_type{});
      }
    }
    if (moments) store_row_parts<T>(sums, shift, o1 - o0, parts.data() + 3 * (unit / chunks * O + o0));
  };

  const bool parallel = threads > 1 && units > 1 && O * C * P * total_cols >= 4 * kMinParallelWork;
  StealingRanges ranges(units, parallel ? static_cast<int>(threads) : 1);
#pragma omp parallel if (parallel)
  {
    // bpack: every panel a unit reads is packed first (Note [uninitialised scratch]).
    thread_local UninitAlignedVector<T> bpack;
    thread_local AlignedVector<T> tile_buf;
    thread_local std::vector<std::pair<const char*, std::int64_t>> next;
    thread_local std::vector<V> sums;  // a unit's sums of d and d^2 per channel
    thread_local AlignedVector<T> shift;
    if (moments) {
      sums.resize(static_cast<std::size_t>(2 * O));
      shift.resize(static_cast<std::size_t>(O));
    }
    bpack.resize(static_cast<std::size_t>(block * P * C * NR));
    // One vector more: the output transform loads whole vectors from a run's offset in the
    // tile, past its last column (those lanes are not stored).
    tile_buf.resize(static_cast<std::size_t>(P * kMr * NR + L));
    // Contiguous unit ranges, so that a thread knows (and prefetches) its next unit; a
    // thread done with its own takes units from the back of another's (Note [stealing
    // ranges] in core/parallel.h). bpack holds the block of `packed_block`.
    const int t = omp_get_thread_num();
    std::int64_t packed_block = -1;
    for (std::int64_t unit = ranges.next(t); unit >= 0; unit = ranges.next(t)) {
      const std::int64_t ahead = ranges.peek(t);
      block_rows(ahead >= 0 && ahead / chunks != unit / chunks ? ahead : units, next);
      run_unit(unit, packed_block == unit / chunks, bpack.data(), tile_buf.data(), next, sums.data(), shift.data());
      packed_block = unit / chunks;
    }
  }
  if (!moments) return;
  for (std::int64_t b = 0; b < blocks; ++b) {
    // The block's values per channel: its columns times their tiles' output frames.
    const std::int64_t c1 = std::min(total_cols, (b + 1) * block * NR);
    double count = 0;
    for (std::int64_t q = b * block * NR; q < c1;) {
      const Run run = run_at(q, c1, 0);
      count += static_cast<double>(run.len * std::min<std::int64_t>(Mo, frames - run.tile * Mo));
      q += run.len;
    }
    for (std::int64_t o = 0; o < O; ++o) moments[o].add(count, parts.data() + 3 * (b * O + o));
  }
}

// Note [filter transform in vectors]: (G w)_p for every point p, packed as PackedA packs a
// matrix ([panel][k][kMr], rows past `out` zero), one point after another, into the calling
// thread's buffer (kept between calls: a fresh 6 MB each call at 512 channels cost page
// faults). The filter w (O, C, 3) holds each channel pair's three taps together. Value by
// value (three taps of eight rows gathered per depth index, six points of eight stored) the
// transform was 15% of a 4 x 8x112 stage-4 forward and 28% of a stage-5 one (perf, timing
// loop): it runs once per call, on O x C x 3 values, against a GEMM of depth C over only
// 392 or 128 columns. In vectors instead, kL depth or row indices at a time:
// - forward (rows the outputs o, depth the inputs c): each row's taps for kL inputs are
//   one run of 3 kL values, taken apart by load_deinterleaved3; each point's eight rows are
//   then combined and transposed to [c][8] by three rounds of lane zips (transpose_block's
//   rounds for 8 rows: after them, lane j of vector v holds row v' = (v kL + j) % 8 of depth
//   (v kL + j) / 8, the packed order);
// - input gradient (rows the inputs c, depth the outputs o, taps reversed): the taps of kL
//   consecutive inputs for one output are one run too, and their combinations are already
//   rows of the packed panels, stored eight at a time.
// Values transformed_filters writes for `out` rows (panels of kMr) of depth `in`.
template <int Mo>
std::int64_t transformed_filters_size(std::int64_t out, std::int64_t in) {
  return Winograd<Mo>::P * ((out + kMr - 1) / kMr) * in * kMr;
}

template <typename T, int Mo>
const T* transformed_filters(std::int64_t O, std::int64_t C, const T* w, bool rows_are_outputs) {
  using W = Winograd<Mo>;
  using V = typename Vec<T>::type;
  constexpr int P = W::P;
  constexpr std::int64_t L = Vec<T>::kLanes;
  static_assert(kMr == 8, "three rounds of zips transpose eight rows");
  const std::int64_t out = rows_are_outputs ? O : C, in = rows_are_outputs ? C : O;
  const std::int64_t m_panels = (out + kMr - 1) / kMr, a_point = m_panels * in * kMr;
  thread_local UninitAlignedVector<T> buf;  // every value written below (Note [uninitialised scratch])
  buf.resize(static_cast<std::size_t>(transformed_filters_size<Mo>(out, in)));
  T* a = buf.data();
  // r = sum over taps k of G[p][k] * taps[k] (the zeros and ones of G cost nothing).
  auto combine = [](int p, const V& t0, const V& t1, const V& t2) {
    V r{};
    if (W::G[p][0] != 0) r += static_cast<T>(W::G[p][0]) * t0;
    if (W::G[p][1] != 0) r += static_cast<T>(W::G[p][1]) * t1;
    if (W::G[p][2] != 0) r += static_cast<T>(W::G[p][2]) * t2;
    return r;
  };
  const bool parallel = O * C >= (1 << 13);
  if (rows_are_outputs) {
#pragma omp parallel for schedule(static) if (parallel)
    for (std::int64_t mp = 0; mp < m_panels; ++mp)
      for (std::int64_t c0 = 0; c0 < C; c0 += L) {
        const std::int64_t n = std::min(L, C - c0);  // depth indices in this run
        V taps[3][kMr];
        for (std::int64_t i = 0; i < kMr; ++i) {
          const std::int64_t o = mp * kMr + i;
          if (o < O)
            load_deinterleaved3(w + (o * C + c0) * 3, taps[0][i], taps[1][i], taps[2][i], 3 * n);
          else
            taps[0][i] = taps[1][i] = taps[2][i] = V{};
        }
        for (int p = 0; p < P; ++p) {
          V r[kMr];
          for (std::int64_t i = 0; i < kMr; ++i) r[i] = combine(p, taps[0][i], taps[1][i], taps[2][i]);
          for (int round = 0; round < 3; ++round) {
            V t[kMr];
            for (std::int64_t i = 0; i < kMr / 2; ++i) {
              t[2 * i] = zip_low<T>(r[i], r[i + kMr / 2]);
              t[2 * i + 1] = zip_high<T>(r[i], r[i + kMr / 2]);
            }
            for (std::int64_t i = 0; i < kMr; ++i) r[i] = t[i];
          }
          T* dst = a + p * a_point + (mp * in + c0) * kMr;
          for (std::int64_t v = 0; v < kMr; ++v) {  // n * kMr packed values
            const std::int64_t m = std::clamp<std::int64_t>(n * kMr - v * L, 0, L);
            if (m == L)
              store_vec(dst + v * L, r[v]);
            else if (m > 0)
              store_lanes(dst + v * L, r[v], first_lanes<T>(m));
          }
        }
      }
  } else {
    const std::int64_t rows = m_panels * kMr, blocks = (rows + L - 1) / L;
#pragma omp parallel for schedule(static) if (parallel)
    for (std::int64_t b = 0; b < blocks; ++b) {
      const std::int64_t c0 = b * L, n = std::clamp<std::int64_t>(C - c0, 0, L);  // rows of inputs with filters
      for (std::int64_t o = 0; o < O; ++o) {
        V t0, t1, t2;
        load_deinterleaved3(w + (o * C + c0) * 3, t0, t1, t2, 3 * n);
        for (int p = 0; p < P; ++p) {
          alignas(64) T r[L];
          store_vec(r, combine(p, t2, t1, t0));  // tap k of the input gradient is tap 2 - k
          for (std::int64_t q = 0; q < L; q += std::min(L, kMr)) {  // a panel's rows at a time
            const std::int64_t c = c0 + q;
            if (c >= rows) break;
            std::memcpy(a + p * a_point + ((c / kMr) * in + o) * kMr + c % kMr, r + q,
                        static_cast<std::size_t>(std::min(L, kMr)) * sizeof(T));
          }
        }
      }
    }
  }
  return a;
}

std::atomic<bool> winograd_enabled{true};
std::atomic<std::int64_t> winograd_min_channels{kWinogradMinChannels};

// Note [filter cache]: in inference the same weights come back at every call, and their
// transform ((G w)_p for the six points, packed: twice the weight's size written, 6.3 MB
// at 512 channels, then read back by the GEMMs) was 3.7% of a batch 4 8x112 inference
// step's perf samples (2026-11-24). A tensor has no version counter (whoever holds one
// may write its values through data()), so a kept transform is used only while the
// weights are bit for bit those it was made from: each entry keeps a copy of them, and a
// call compares (a read of twice the weight's size, against the transform's read of it and
// write of twice its size, with no arithmetic). An entry is found by (weight address,
// channels out and in, tile frames); an entry of the same key whose weights differ is
// remade in place. Entries belong to the calling thread. Room is bounded by
// kFilterCacheBytes: an entry not used for kFilterCacheIdleCalls calls of the cache makes
// way (a freed model's filters), others stay, and a filter that finds no room is
// transformed each call as without the cache (a cycle over more filters than fit keeps
// the first ones rather than evicting each before its next use). Measured 2026-11-24 (AMD
// VM, 2 threads): conv3d_bench --batch=4 --frames=8 --size=112, forward ms, median of 3
// alternations, uncached / cached (a test build with the cache on for conv3d_bench's
// forward): 3x1x1 at 512 channels 4x4 2.89 / 2.78 (--cold), 4.16 / 2.46 (warm); 256 at
// 7x7 2.16 / 2.10, 2.26 / 1.89; 128 at 14x14 2.43 / 2.25, 2.08 / 1.91. `vidgrad bench
// --model sevnet_g8 --batch 4 --frames 8 --size 112 --threads 2 --inference`, 8
// alternations: median 76.8 -> 74.7 ms a step, fastest 69.5 -> 67.4; peak RSS 96 -> 128
// MiB (PyTorch's 402 MiB in the same session's table).
template <typename T>
class FilterCache {
 public:
  // The transformed filter of w (O x C x 3 values) for F(Mo, 3), rows the outputs
  // (transformed_filters' layout, `size` values), made by make() (which returns it in a
  // buffer of its own) unless an entry holds the same weights.
  template <typename Make>
  const T* get(const T* w, std::int64_t O, std::int64_t C, int mo, std::int64_t size, Make&& make) {
    ++calls_;
    const std::int64_t nw = O * C * 3;
    Entry* hit = nullptr;
    for (Entry& e : entries_)
      if (e.w == w && e.O == O && e.C == C && e.mo == mo) hit = &e;
    if (hit && same_values(hit->weights.data(), w, nw)) {
      hit->used = calls_;
      return hit->filter.data();
    }
    const T* made = make();
    if (!hit) {
      std::erase_if(entries_, [&](const Entry& e) {
        const bool idle = calls_ - e.used > kFilterCacheIdleCalls;
        if (idle) bytes_ -= e.bytes();
        return idle;
      });
      const std::int64_t need = (nw + size) * static_cast<std::int64_t>(sizeof(T));
      if (bytes_ + need > kFilterCacheBytes) return made;
      hit = &entries_.emplace_back();
      hit->w = w, hit->O = O, hit->C = C, hit->mo = mo;
      bytes_ += need;
    }
    hit->weights.assign(w, w + nw);
    hit->filter.assign(made, made + size);
    hit->used = calls_;
    return hit->filter.data();
  }

  void clear() {
    entries_.clear();
    bytes_ = 0;
  }
  std::int64_t bytes() const { return bytes_; }

 private:
  struct Entry {
    const T* w = nullptr;
    std::int64_t O = 0, C = 0;
    int mo = 0;
    std::vector<T> weights;
    AlignedVector<T> filter;
    std::uint64_t used = 0;
    std::int64_t bytes() const { return static_cast<std::int64_t>((weights.size() + filter.size()) * sizeof(T)); }
  };

  // a and b hold the same n values bit for bit (threads compare chunks when n is large).
  static bool same_values(const T* a, const T* b, std::int64_t n) {
    constexpr std::int64_t kChunk = 4096;
    int differ = 0;
#pragma omp parallel for schedule(static) reduction(| : differ) if (n >= 16 * kChunk && !omp_in_parallel())
    for (std::int64_t i = 0; i < n; i += kChunk)
      differ |= std::memcmp(a + i, b + i, static_cast<std::size_t>(std::min(kChunk, n - i)) * sizeof(T)) != 0;
    return differ == 0;
  }

  std::vector<Entry> entries_;
  std::int64_t bytes_ = 0;
  std::uint64_t calls_ = 0;
};

template <typename T>
FilterCache<T>& filter_cache() {
  thread_local FilterCache<T> cache;
  return cache;
}

template <typename T, int Mo>
void forward_impl(const Conv3dGeometry& g, const T* x, const T* w, T* y, const GemmEpilogue<T>& ep,
                  const InputPrologue<T>& pro, ChannelMoments* moments, bool reuse_weights, std::int64_t y_sample) {
  const std::int64_t C = g.C;
  auto make = [&] { return transformed_filters<T, Mo>(g.O, C, w, true); };
  const T* a =
      reuse_weights ? filter_cache<T>().get(w, g.O, C, Mo, transformed_filters_size<Mo>(g.O, C), make) : make();
  winograd_correlate<T, Mo>(g.N, g.C, g.O, g.T, g.H * g.W, x, a, y, ep, pro, moments, y_sample);
}

template <typename T, int Mo>
void input_grad_impl(const Conv3dGeometry& g, const T* gy, const T* w, T* gx) {
  const std::int64_t C = g.C;
  // gx(c, t) = sum over o, k of w(o, c, k) gy(o, t + 1 - k): the correlation of gy with
  // the taps reversed, rows c and depth o.
  const T* a = transformed_filters<T, Mo>(g.O, C, w, false);
  winograd_correlate<T, Mo>(g.N, g.O, g.C, g.To, g.H * g.W, gy, a, gx, {});
}

}  // namespace

bool winograd_temporal(const Conv3dGeometry& g) {
  return winograd_enabled.load(std::memory_order_relaxed) && g.temporal_only() && g.groups == 1 && g.kT == 3 &&
         g.dT == 1 && g.pT == 1 && g.To == g.T && g.To >= 2 &&
         std::min(g.C, g.O) >= winograd_min_channels.load(std::memory_order_relaxed);
}

template <typename T>
void winograd_temporal_forward(const Conv3dGeometry& g, const T* x, const T* w, T* y, const GemmEpilogue<T>& ep,
                               const InputPrologue<T>& pro, ChannelMoments* moments, bool reuse_weights,
                               std::int64_t y_sample) {
  with_tile_frames(g, [&](auto mo) {
    forward_impl<T, decltype(mo)::value>(g, x, w, y, ep, pro, moments, reuse_weights, y_sample);
  });
}

void clear_filter_cache() {
  filter_cache<float>().clear();
  filter_cache<double>().clear();
}

std::int64_t filter_cache_bytes() { return filter_cache<float>().bytes() + filter_cache<double>().bytes(); }

template <typename T>
void winograd_temporal_input_grad(const Conv3dGeometry& g, const T* gy, const T* w, T* gx) {
  with_tile_frames(g, [&](auto mo) { input_grad_impl<T, decltype(mo)::value>(g, gy, w, gx); });
}

void set_winograd_temporal(bool enabled, std::int64_t min_channels) {
  winograd_enabled.store(enabled, std::memory_order_relaxed);
  winograd_min_channels.store(min_channels, std::memory_order_relaxed);
}

#define VIDGRAD_INSTANTIATE(T)                                                                                \
  template void winograd_temporal_forward<T>(const Conv3dGeometry&, const T*, const T*, T*,                 \
                                             const GemmEpilogue<T>&, const InputPrologue<T>&, ChannelMoments*,  \
                                             bool, std::int64_t);                                                \
  template void winograd_temporal_input_grad<T>(const Conv3dGeometry&, const T*, const T*, T*);
VIDGRAD_INSTANTIATE(float)
VIDGRAD_INSTANTIATE(double)
#undef VIDGRAD_INSTANTIATE

}  // namespace vidgrad::cpu
