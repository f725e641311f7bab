// Note [row GEMM]: SEVNet's 1x1x1 and 3x1x1 convolutions are GEMMs with small M and K
// (32..512 channels, times 3 taps) and a long N (T*H*W output positions, 784..200704).
// Through Eigen, the 3x1x1 conv was three GEMMs of depth C accumulating into the output
// (three read-modify-write passes over it), and Eigen re-packed the whole input for each
// one. Here B is a list of row pointers, so a kT x 1 x 1 conv is one GEMM of depth
// C*kT whose rows are time-shifted views of the input, and the output is written once.
//
// Blocking, in the usual way (BLIS): a thread owns a range of blocks of up to kPanels
// NR-column panels (and may steal others': Note [stealing ranges] in core/parallel.h);
// for a block and kKc rows of B at a time it copies B into a contiguous
// buffer ([k][pitch], one copy per row, zero past N; rows of B lie a multiple of 4 KiB
// apart at most SEVNet sizes, so reading them in place would thrash the L1 sets; see Note
// [packed pitch] for the buffer's own), then for each panel
// runs the MR x NR micro-kernel down all row panels of A (packed once by the caller, see
// PackedA). The B panel (kKc x NR) stays in L1 while A streams from L2. The micro-kernel
// keeps MR x NR = 8 x 48 floats in 24 vector registers (AVX-512) and does 24 FMAs per
// k for 3 loads and 8 broadcasts.
#include "vidgrad/ops/cpu/row_gemm.h"
#include "vidgrad/ops/cpu/micro_kernel.h"
#include "vidgrad/ops/cpu/moments.h"
#include "vidgrad/ops/cpu/simd.h"

#include "vidgrad/core/error.h"
#include "vidgrad/core/parallel.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

namespace vidgrad::cpu {

namespace {

using namespace kernel;

// Note [B prefetch]: at the high-resolution layers (the stem's 3x1x1 conv at 112x112: 26 MB
// of input) the rows of B come from memory, 96 to 768 rows of 1.5 KiB each per block, too
// many streams for the hardware prefetchers; the copy then waited on memory for most of
// its time (perf: memmove 20% of the samples beside the micro-kernel's 26%, one thread).
// While a block computes, row_gemm_panels prefetches the rows of the block it copies next
// into L2, a share before each micro-tile (Note [packed pitch]), so the requests overlap
// the FMAs instead of stalling the copy. conv3d_bench, 16x224 stem 3x1x1 forward, min of 4
// interleaved runs (a share before each panel then): 7.44 -> 5.96 ms on 2 threads, 10.7 ->
// 10.0 ms on one; the cached stage shapes within noise.

// Note [C prefetch]: accumulating into C (an input gradient added into a residual
// junction's pending gradient: autograd's Note [accumulating in place]), the micro-kernel
// loads each C tile once, at the end of its first block, from memory: 8 rows of 3 cache
// lines at the row stride, which the hardware prefetchers do not follow. The next panel's
// tiles are prefetched (for writing) a tile at a time while this panel computes. Not
// accumulating, the first block's stores meet the same lines cold (each store a
// read-for-ownership from memory), so they are prefetched the same way. Timing loop over
// conv3d_forward, 2 threads, 64 MiB written before each call, min of 20 calls over 5-6
// alternations, ms: 1x1x1 64 channels 1 x 16x56x56 3.99 / 4.98 / 4.18 -> 2.85 / 4.24 /
// 3.64, 128 channels 1 x 16x28x28 3.95 / 4.07 -> 3.59 / 3.46, 256 channels 4 x 8x7x7 even
// (1.75-1.80); in the step (batch 4 8x112 training, --profile, 3 alternations) the 1x1x1
// forwards went from 73-78% of the 3x1x1 forwards' time to 70-71%.

// Note [packed pitch]: the packed block's rows were kPanels * NR floats (1.5 KiB, 24 cache
// lines) apart, and 24 * k mod 64 takes 8 values: a panel's 128 rows of 3 lines fell on 24
// of L1's 64 sets, 16 lines a set against 12 ways (48 KiB L1; 8 ways on the AMD VM), so the
// panel the micro-kernel rereads for every A panel did not stay in L1. The pitch is now an
// odd number of lines (one line of padding when the width is even), which visits every set.
// Also, the next block's B rows are prefetched a share per micro-tile rather than a share
// per panel (Note [B prefetch]): 16 rows of 24 lines at once before each panel stalled on
// the full line-fill buffers (perf put half of row_gemm_panels' own samples on those
// prefetches). Both together, `vidgrad bench --model sevnet_g8 --batch 4 --frames 8 --size
// 112 --threads 2 --profile`, 3 alternations of the two binaries, 2026-11-22 (Intel VM):
// 1x1x1 forward + input gradient over 3x1x1 forward + input gradient (Winograd, which this
// does not touch) 0.691 / 0.676 / 0.680 -> 0.646 / 0.641 / 0.647, about 3 ms a step.

// Note [output statistics]: in training, a batch norm needs its input's per-channel mean
// and variance before it can normalise any of it. With the batch norm folded into the
// next conv (Note [input prologue] in conv3d_cpu.h) that left one pass of its own, over the
// previous conv's output read back from memory (3-26 MB per conv at 16x224; 33 passes, 10 ms
// of a 426 ms batch 1 16x224 step). The convs that write those outputs now take them while
// the values are still in cache: row_gemm sums each panel's rows (M x 48 values, just
// stored, in L1 or L2) after the panel's last block of k, the Winograd forward sums its
// outputs in registers as it stores them (conv3d_winograd.cpp), and the direct-plane
// forward (conv3d_direct.cpp) reads back each output plane or stack of frames it wrote. The sums are of v - shift, with shift the
// first value of the run, as batch_norm_stats sums x - (its first value) (Note [one-pass
// statistics] in batch_norm_cpu.cpp): no cancellation when |mean| >> std. Each slot (a run
// of 1 to 8 panels whose size depends only on N) has its own sums, and the caller adds the
// slots' parts in a fixed order (ChannelMoments in moments.h): the statistics depend
// on neither which thread took which panel nor the thread count. Reducing a row's vector
// sums lane by lane cost a chain of dependent adds per row and panel (the 1x1x1 forwards
// became 15-50% slower); rows are reduced 16 at a time by a transpose, once per slot.

// acc[2m], acc[2m + 1] += the vectors of c[m, n] - shift[m] and its square over the
// columns n < cols of one panel, rows m < M (lane j: the columns j, j + kL, ...). With
// first (a slot's first panel), shift[m] = c[m, 0] first.
template <typename T>
void add_panel_sums(const T* c, std::int64_t ldc, std::int64_t M, std::int64_t cols, bool first, T* shift,
                    typename Vec<T>::type* acc) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t L = Vec<T>::kLanes;
  const std::int64_t whole = cols / L * L;
  V keep{};  // 1 in the lanes of the last, partial vector that hold values
  for (std::int64_t k = 0; k < cols - whole; ++k) keep[k] = T(1);
  for (std::int64_t m = 0; m < M; ++m) {
    const T* row = c + m * ldc;
    if (first) shift[m] = row[0];
    const V sv = V{} + shift[m];
    V s = first ? V{} : acc[2 * m], ss = first ? V{} : acc[2 * m + 1];
    for (std::int64_t n = 0; n < whole; n += L) {
      const V d = load_vec(row + n) - sv;
      s += d;
      ss += d * d;
    }
    if (whole < cols) {
      const V d = (load_lanes(row + whole, first_lanes<T>(cols - whole)) - sv) * keep;
      s += d;
      ss += d * d;
    }
    acc[2 * m] = s;
    acc[2 * m + 1] = ss;
  }
}

}  // namespace

template <typename T>
std::int64_t row_sums_panels(std::int64_t N);

namespace {

// Panel p (cols columns at c) of an N-column C is final: its rows go into its slot's sums
// (acc, shift), and the slot's parts to row_sums at its last panel.
template <typename T>
void take_panel_sums(const T* c, std::int64_t ldc, std::int64_t M, std::int64_t N, std::int64_t p,
                     std::int64_t cols, T* shift, typename Vec<T>::type* acc, const RowSums<T>& row_sums) {
  const std::int64_t per = row_sums_panels<T>(N), panels = (N + kernel::kNr<T> - 1) / kernel::kNr<T>;
  add_panel_sums(c, ldc, M, cols, p % per == 0, shift, acc);
  if ((p + 1) % per == 0 || p + 1 == panels) store_row_parts<T>(acc, shift, M, row_sums.sums + 3 * (p / per) * M);
}

}  // namespace

// 1, 2, 4 or 8 panels: at least 4 slots where there are 4 panels. row_gemm's blocks are
// made multiples of it, so that no slot spans two blocks (two threads). Each slot's
// reduction costs about as much as summing a panel, so slots are as large as the split
// of the columns between threads allows.
template <typename T>
std::int64_t row_sums_panels(std::int64_t N) {
  const std::int64_t panels = (N + kernel::kNr<T> - 1) / kernel::kNr<T>;
  std::int64_t per = 1;
  while (per < 8 && panels >= 8 * per) per *= 2;
  return per;
}

template <typename T>
std::int64_t row_sums_slots(std::int64_t N) {
  const std::int64_t panels = (N + kernel::kNr<T> - 1) / kernel::kNr<T>, per = row_sums_panels<T>(N);
  return (panels + per - 1) / per;
}
template std::int64_t row_sums_panels<float>(std::int64_t);
template std::int64_t row_sums_panels<double>(std::int64_t);
template std::int64_t row_sums_slots<float>(std::int64_t);
template std::int64_t row_sums_slots<double>(std::int64_t);

namespace {

constexpr std::int64_t kKc = 128;        // rows of B per packed block
constexpr std::int64_t kPanels = 8;      // NR-column panels per packed block
constexpr std::int64_t kRowsAMax = 128;  // rows of A read in place by row_gemm_nt (Note [A in rows])

// The blocks of `per_block` (at most kPanels) panels of C that next_block() hands out
// (block b: panels from b * per_block; -1: done), with peek_block() the block it will
// likely hand out next (to prefetch; -1: none); see the Note.
template <typename T, typename Next, typename Peek>
void row_gemm_panels(const PackedA<T>& a, std::int64_t N, const T* const* b_rows, const std::int64_t* b_lo,
                     const std::int64_t* b_hi, T* c, std::int64_t ldc, bool accumulate,
                     const GemmEpilogue<T>& epilogue, std::int64_t per_block, Next&& next_block,
                     Peek&& peek_block, const RowSums<T>* row_sums) {
  const bool with_epilogue = epilogue.active();
  constexpr std::int64_t NR = kNr<T>;
  thread_local AlignedVector<T> packed;
  constexpr std::int64_t kLine = 64 / static_cast<std::int64_t>(sizeof(T));
  packed.resize(static_cast<std::size_t>((kPanels * NR + kLine) * kKc));
  T* bp = packed.data();
  const std::int64_t m_panels = (a.M + kMr - 1) / kMr, panels = (N + NR - 1) / NR;
  // The block's row sums (Note [output statistics]): two vectors a row, reduced at its end.
  using V = typename Vec<T>::type;
  thread_local std::vector<V> slot_sums;
  thread_local AlignedVector<T> slot_shift;
  const std::int64_t slot_panels = row_sums ? row_sums_panels<T>(N) : 1;
  if (row_sums) {
    slot_sums.resize(static_cast<std::size_t>(2 * a.M));
    slot_shift.resize(static_cast<std::size_t>(a.M));
    VG_CHECK(per_block % slot_panels == 0, "row_gemm: blocks of " << per_block << " panels split slots of "
                                                                  << slot_panels);
  }
  for (std::int64_t blk = next_block(); blk >= 0; blk = next_block()) {
    const std::int64_t pb = blk * per_block, pe = std::min(panels, pb + per_block);
    const std::int64_t ahead = peek_block(), ahead_pb = ahead >= 0 ? ahead * per_block : -1;
    for (std::int64_t k0 = 0; k0 < a.K; k0 += kKc) {
      const std::int64_t kc = std::min(kKc, a.K - k0);
      // Row k of the block is one copy of (pe - pb) * NR columns, zero past N and outside
      // the row's valid range.
      const std::int64_t width = (pe - pb) * NR, c0 = pb * NR, c1 = std::min(N, c0 + width);
      const std::int64_t pitch = (width / kLine) % 2 == 0 ? width + kLine : width;
      for (std::int64_t k = 0; k < kc; ++k) {
        T* dst = bp + k * pitch;
        const std::int64_t lo = b_lo ? std::clamp(b_lo[k0 + k], c0, c1) : c0;
        const std::int64_t hi = b_hi ? std::clamp(b_hi[k0 + k], lo, c1) : c1;
        std::fill(dst, dst + (lo - c0), T(0));
        std::memcpy(dst + (lo - c0), b_rows[k0 + k] + lo, static_cast<std::size_t>(hi - lo) * sizeof(T));
        std::fill(dst + (hi - c0), dst + width, T(0));
      }
      const bool last = k0 + kc == a.K && with_epilogue;
      // The block copied next: the next rows of these panels, or the first rows of the
      // next panels. Its rows are prefetched a share per micro-tile while this block
      // computes (Note [B prefetch]).
      const std::int64_t nk0 = k0 + kc < a.K ? k0 + kc : 0, npb = k0 + kc < a.K ? pb : ahead_pb;
      const std::int64_t nkc = npb >= 0 ? std::min(kKc, a.K - nk0) : 0;
      const std::int64_t nc0 = npb * NR, nc1 = std::min(N, std::min(panels, npb + per_block) * NR);
      auto prefetch_b = [&](std::int64_t k_lo, std::int64_t k_hi) {
        for (std::int64_t k = k_lo; k < k_hi; ++k) {
          const std::int64_t lo = b_lo ? std::clamp(b_lo[nk0 + k], nc0, nc1) : nc0;
          const std::int64_t hi = b_hi ? std::clamp(b_hi[nk0 + k], lo, nc1) : nc1;
          prefetch_l2(b_rows[nk0 + k] + lo, (hi - lo) * static_cast<std::int64_t>(sizeof(T)));
        }
      };
      for (std::int64_t p = pb; p < pe; ++p) {
        const std::int64_t pk0 = nkc * (p - pb) / (pe - pb), pk1 = nkc * (p - pb + 1) / (pe - pb);
        const std::int64_t n0 = p * NR, cols = std::min(NR, N - n0);
        // The first block loads (accumulating) or first stores C's tiles: the next panel's,
        // row by row from memory, are requested while this one computes (Note [C prefetch]).
        const std::int64_t np = p + 1 < pe ? p + 1 : ahead_pb;  // the next panel this thread stores
        const std::int64_t next_cols = k0 == 0 && np >= 0 ? std::min(NR, N - np * NR) : 0;
        for (std::int64_t mp = 0; mp < m_panels; ++mp) {
          prefetch_b(pk0 + (pk1 - pk0) * mp / m_panels, pk0 + (pk1 - pk0) * (mp + 1) / m_panels);
          if (next_cols > 0)
            for (std::int64_t i = mp * kMr; i < std::min(a.M, mp * kMr + kMr); ++i)
              for (std::int64_t j = 0; j < next_cols; j += 64 / static_cast<std::int64_t>(sizeof(T)))
                __builtin_prefetch(c + i * ldc + np * NR + j, 1, 3);
          const GemmEpilogue<T> ep = epilogue.from_row(mp * kMr).from_col(n0);
          micro_tile(kc, a.data.data() + (mp * a.K + k0) * kMr, bp + (p - pb) * NR, pitch,
                       c + mp * kMr * ldc + n0, ldc, std::min(kMr, a.M - mp * kMr), cols, accumulate || k0 > 0,
                       last ? &ep : nullptr);
        }
        if (row_sums && k0 + kc == a.K)  // the panel is final (Note [output statistics])
          take_panel_sums(c + n0, ldc, a.M, N, p, cols, slot_shift.data(), slot_sums.data(), *row_sums);
      }
    }
  }
}

// ---- C += A B^T with both operands along the reduction (weight gradients) ----

// out[k] = (rows[0][k0 + k], ..., rows[kL - 1][k0 + k]) for k < kL: a kL x kL block of
// kL rows, transposed in registers (transpose_lanes). Row r reads zeros outside
// [lo[r], hi[r]); rows without data have lo = hi = 0.
template <typename T>
inline void transpose_block(const T* const* rows, const std::int64_t* lo, const std::int64_t* hi, std::int64_t k0,
                            typename Vec<T>::type* out) {
  constexpr int L = static_cast<int>(Vec<T>::kLanes);
  for (int i = 0; i < L; ++i) {
    if (k0 >= lo[i] && k0 + L <= hi[i]) {
      out[i] = load_vec(rows[i] + k0);
    } else {
      out[i] = typename Vec<T>::type{};
      for (int k = 0; k < L; ++k)
        if (k0 + k >= lo[i] && k0 + k < hi[i]) out[i][k] = rows[i][k0 + k];
    }
  }
  transpose_lanes<T>(out);
}

// The distance in values from each of rows[0, n) to the next when it is the same for all
// (n >= 2), else 0. Addresses are compared as integers: the rows need not share an array.
template <typename T>
std::int64_t even_spacing(const T* const* rows, std::int64_t n) {
  if (n < 2) return 0;
  const auto at = [&](std::int64_t i) { return reinterpret_cast<std::intptr_t>(rows[i]); };
  const std::intptr_t step = at(1) - at(0);
  if (step % static_cast<std::intptr_t>(sizeof(T)) != 0) return 0;
  for (std::int64_t i = 2; i < n; ++i)
    if (at(i) - at(i - 1) != step) return 0;
  return static_cast<std::int64_t>(step / static_cast<std::intptr_t>(sizeof(T)));
}

// Packs rows [r0, r0 + count) of an operand (zero rows past n_rows) over k in
// [k0, k0 + kc): the value of row r0 + j at k0 + k goes to dst(j)[k * width + j % piece],
// where rows come in pieces of `piece` (a multiple of 8 dividing kL or a multiple of kL):
// B panels are one piece of 48 rows, A's 8-row panels pieces of 8.
template <typename T, typename Dst>
void pack_transposed(const T* const* rows, const std::int64_t* lo, const std::int64_t* hi, std::int64_t n_rows,
                     std::int64_t r0, std::int64_t count, std::int64_t k0, std::int64_t kc, std::int64_t width,
                     std::int64_t piece, Dst&& dst) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t L = Vec<T>::kLanes;
  for (std::int64_t j0 = 0; j0 < count; j0 += L) {
    const std::int64_t n = std::max<std::int64_t>(0, std::min({L, count - j0, n_rows - r0 - j0}));
    if (n == 0) {  // rows past the operand: zeros
      for (std::int64_t j = j0; j < std::min(count, j0 + L); ++j)
        for (std::int64_t k = 0; k < kc; ++k) dst(j)[k * width + j % piece] = T(0);
      continue;
    }
    const T* rp[L];
    std::int64_t rl[L], rh[L];
    for (std::int64_t i = 0; i < L; ++i) {
      const std::int64_t r = r0 + j0 + i;
      rp[i] = i < n ? rows[r] : nullptr;
      rl[i] = i < n ? (lo ? lo[r] : 0) : 0;
      rh[i] = i < n ? (hi ? hi[r] : k0 + kc) : 0;
    }
    const std::int64_t m = std::min(L, count - j0);  // lanes stored (zeros past n)
    std::int64_t k = 0;
    for (; k + L <= kc; k += L) {
      V out[L];
      for (std::int64_t i = 0; i < n; ++i)  // the same rows one block further on (Note [nt prefetch])
        __builtin_prefetch(rp[i] + k0 + k + kc, 0, 2);
      transpose_block<T>(rp, rl, rh, k0 + k, out);
      for (std::int64_t kk = 0; kk < L; ++kk)
        for (std::int64_t p0 = 0; p0 < m; p0 += std::min(piece, L)) {  // one piece (or all kL lanes) at a time
          const std::int64_t w = std::min({piece, L, m - p0});
          T* d = dst(j0 + p0) + (k + kk) * width + (j0 + p0) % piece;
          const T* src = reinterpret_cast<const T*>(&out[kk]) + p0;
          if (w == L)
            store_vec(d, out[kk]);
          else if (w == kMr)
            std::memcpy(d, src, kMr * sizeof(T));  // a constant size: one vector store
          else
            for (std::int64_t i = 0; i < w; ++i) d[i] = src[i];
        }
    }
    for (; k < kc; ++k)  // the last few positions, one value at a time
      for (std::int64_t i = 0; i < m; ++i) {
        const std::int64_t kk = k0 + k;
        dst(j0 + i)[k * width + (j0 + i) % piece] = i < n && kk >= rl[i] && kk < rh[i] ? rp[i][kk] : T(0);
      }
  }
}

}  // namespace

// Note [nt prefetch]: a weight gradient's operands (128 rows of output gradient and 128 of
// input at a 128-channel layer, each a channel plane 50 KB from the next at 16x224) are
// read from L3 once per block, dozens of rows at a time: too many streams for the hardware
// prefetchers, and perf put 73% of the packing's samples on its row loads, the packing as
// long as the micro-kernel. pack_transposed prefetches, as it loads each row's 16
// positions, the same row one block further on, so the next block's rows are in L2 when
// it is packed. conv3d_bench, 16x224, min of 3 interleaved runs, weight grad ms: stage3
// 1x1x1 1.69 -> 1.40, stage4 1x1x1 1.33 -> 1.22, stage4 3x1x1 3.58 -> 3.48, the others
// within noise. (Prefetching the whole next block in bursts, a share per B panel, as
// row_gemm then did for B, was slower: stage5 3x1x1 3.76 -> 5.15 ms.)

// Note [transposed row GEMM]: a weight gradient reduces over positions, along which both
// operands (output gradient rows, input rows) are contiguous, so neither is the k-major
// operand the micro-kernel wants. Blocks of 128 to 256 positions (so that packed A stays
// within about 128 KiB, 256 KiB at 512 rows) are transposed while packed (kL x kL register
// transposes): A (all M rows, 8-row panels) once per block, B in 48-row panels, each B
// panel then meeting every A panel in the same 8 x 48 micro-kernel as row_gemm. Eigen did
// the same packing, but once per tap and per call, through a generic packer.
//
// The micro-kernel runs over a packed B panel 128 positions at a time (kSubKc), so that
// the part it rereads for every A panel (128 x 48 floats, 24 KiB) stays in L1; the whole
// panel of a 256-position block is 48 KiB, all of L1, and came from L2. A last panel of
// 16 or 32 columns is packed only that wide (the micro-kernel reads no more; 32 rows of
// zeros were written per position for a 64-channel pointwise conv). conv3d_bench, 4 x
// 8x112, min of 4 interleaved runs, weight grad ms, before / after both: 3x1x1 stage3
// 1.56 / 1.40, stage4 2.14 / 1.83, stage5 3.42 / 2.90, stage2 2.17 / 2.35 (2.18 / 1.91 in
// an earlier run of 3); 1x1x1 stage2 1.16 / 1.00, stage3 0.762 / 0.651, stage4 0.643 /
// 0.679, stage5 0.951 / 0.811.
template <typename T>
void row_gemm_nt(std::int64_t M, std::int64_t N, std::int64_t K, const T* const* a_rows, const T* const* b_rows,
                 const std::int64_t* b_lo, const std::int64_t* b_hi, T* c, std::int64_t ldc, bool accumulate) {
  constexpr std::int64_t NR = kNr<T>, L = kLanes<T>;
  constexpr std::int64_t kSubKc = 128;  // positions per micro-kernel pass (see the Note)
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate)
      for (std::int64_t m = 0; m < M; ++m) std::fill(c + m * ldc, c + m * ldc + N, T(0));
    return;
  }
  const std::int64_t m_panels = (M + kMr - 1) / kMr;
  // Positions per block: packed A (all rows) within about 128 KiB of L2, 128 to 256. With
  // 512 rows that is 256 KiB: at 64 positions, the C tiles (512 x 1536 floats for a 3x1x1
  // conv, from L3) were loaded and stored once per 64 (conv3d_bench, min of 3 interleaved
  // runs, weight grad ms, 64 -> 128 positions: 16x224 stage5 3x1x1 4.27 -> 3.66, 1x1x1
  // 1.39 -> 1.13; 4 x 8x112 2.51 -> 2.43, 0.786 -> 0.750). 256 rows at 256 positions
  // instead of 128 were no faster (3.42 -> 3.65, 1.75 -> 1.72).
  const std::int64_t kc_max = std::clamp<std::int64_t>((std::int64_t{1} << 15) / (m_panels * kMr) / L * L, 128, 256);
  // Note [A in rows]: with at most kRowsAMax rows of A, whole panels of them, evenly
  // spaced (an output gradient's channel planes), A is not packed: the micro-kernel
  // broadcasts its values from the rows themselves (micro_tile's kRowsA). The transposed
  // packing of A was as long as B's at 64 channels (perf, warm loop over a 4 x 8x28x28
  // 1x1x1 weight gradient: 23% and 21% of the samples, the micro-kernel 37%). Timing loop
  // over conv3d_backward_weight, 2 threads, min of 15 calls with 256 MiB written before
  // each (cold) or of 30 (warm), 3-4 interleaved runs, 2026-11-23 (Intel VM), packed /
  // rows, ms: 4 x 8x28x28 at 64 channels cold 2.43 / 2.20, warm 2.32 / 1.85; 4 x 8x14x14
  // at 128 cold 2.05 / 1.90, warm 1.76 / 1.47; 1 x 16x28x28 at 128 cold 4.07 / 3.86, warm
  // 3.48 / 2.98; 1 x 16x56x56 at 64 cold 4.75 / 4.52; the stem's (32 rows, im2col) 9.99 /
  // 9.93. With more rows it was slower warm (the nineteenth session, 256 channels at
  // 14x14: 2.06-2.19 / 2.19-2.53), a block of A then being 32 panels' rows apart in L2
  // rather than one packed run.
  const std::int64_t lda = M % kMr == 0 && M <= kRowsAMax ? even_spacing(a_rows, M) : 0;
  const bool rows_a = lda != 0;
  thread_local UninitAlignedVector<T> ap, bp;  // Note [uninitialised scratch] in core/aligned_vector.h
  ap.resize(rows_a ? 0 : static_cast<std::size_t>(m_panels * kMr * kc_max));
  bp.resize(static_cast<std::size_t>(kc_max * NR));
  for (std::int64_t k0 = 0; k0 < K; k0 += kc_max) {
    const std::int64_t kc = std::min(kc_max, K - k0);
    T* const a_pack = ap.data();
    if (!rows_a)
      pack_transposed<T>(a_rows, nullptr, nullptr, M, 0, m_panels * kMr, k0, kc, kMr, kMr,
                         [&](std::int64_t j) { return a_pack + (j / kMr) * kc * kMr; });
    T* const b_pack = bp.data();
    for (std::int64_t n0 = 0; n0 < N; n0 += NR) {
      const std::int64_t cols = std::min(NR, N - n0);
      // Only the vectors micro_tile reads: a last panel of 16 columns leaves 32 rows unpacked.
      pack_transposed<T>(b_rows, b_lo, b_hi, N, n0, (cols + L - 1) / L * L, k0, kc, NR, NR,
                         [&](std::int64_t) { return b_pack; });
      for (std::int64_t s0 = 0; s0 < kc; s0 += kSubKc)
        for (std::int64_t mp = 0; mp < m_panels; ++mp) {
          const std::int64_t depth = std::min(kSubKc, kc - s0), rows = std::min(kMr, M - mp * kMr);
          T* const ct = c + mp * kMr * ldc + n0;
          const bool load_c = accumulate || k0 + s0 > 0;
          if (rows_a)
            micro_tile<T, true>(depth, a_rows[mp * kMr] + k0 + s0, b_pack + s0 * NR, NR, ct, ldc, rows, cols, load_c,
                                nullptr, lda);
          else
            micro_tile(depth, a_pack + mp * kc * kMr + s0 * kMr, b_pack + s0 * NR, NR, ct, ldc, rows, cols, load_c,
                       static_cast<const GemmEpilogue<T>*>(nullptr));
        }
    }
  }
}

template <typename T>
void row_gemm(const PackedA<T>& a, std::int64_t N, const T* const* b_rows, T* c, std::int64_t ldc, bool accumulate,
              const GemmEpilogue<T>& epilogue, const std::int64_t* b_lo, const std::int64_t* b_hi,
              const RowSums<T>* row_sums) {
  if (a.M == 0 || N == 0) return;
  const std::int64_t panels = (N + kNr<T> - 1) / kNr<T>;
  VG_CHECK(!row_sums || !accumulate, "row_gemm: row sums are of a fresh product, not with accumulate");
  if (a.K == 0) {
    for (std::int64_t m = 0; m < a.M; ++m)
      for (std::int64_t n = 0; n < N; ++n) c[m * ldc + n] = epilogue.apply(accumulate ? c[m * ldc + n] : T(0), m, n);
    if (row_sums) {
      std::vector<typename Vec<T>::type> acc(static_cast<std::size_t>(2 * a.M));
      std::vector<T> shift(static_cast<std::size_t>(a.M));
      for (std::int64_t p = 0; p < panels; ++p)
        take_panel_sums(c + p * kNr<T>, ldc, a.M, N, p, std::min(kNr<T>, N - p * kNr<T>), shift.data(), acc.data(),
                        *row_sums);
    }
    return;
  }
  const bool parallel = !omp_in_parallel() && omp_get_max_threads() > 1 && panels > 1 &&
                        a.M * a.K * N >= 32 * kMinParallelWork;
  if (!parallel) {
    const std::int64_t blocks = (panels + kPanels - 1) / kPanels;
    std::int64_t blk = 0;
    row_gemm_panels(
        a, N, b_rows, b_lo, b_hi, c, ldc, accumulate, epilogue, kPanels, [&] { return blk < blocks ? blk++ : -1; },
        [&] { return blk < blocks ? blk : -1; }, row_sums);
    return;
  }
  // Blocks in even ranges, at least 4 a thread, stolen from the back by a thread done first
  // (Note [stealing ranges] in core/parallel.h).
  const int threads = omp_get_max_threads();
  // With row sums, a multiple of a slot's panels (Note [output statistics]).
  const std::int64_t slot = row_sums ? row_sums_panels<T>(N) : 1;
  const std::int64_t per_block =
      std::max(slot, std::clamp<std::int64_t>((panels + 4 * threads - 1) / (4 * threads), 1, kPanels) / slot * slot);
  StealingRanges ranges((panels + per_block - 1) / per_block, threads);
#pragma omp parallel
  {
    const int t = omp_get_thread_num();
    row_gemm_panels(
        a, N, b_rows, b_lo, b_hi, c, ldc, accumulate, epilogue, per_block, [&] { return ranges.next(t); },
        [&] { return ranges.peek(t); }, row_sums);
  }
}

template void row_gemm_nt<float>(std::int64_t, std::int64_t, std::int64_t, const float* const*, const float* const*,
                                 const std::int64_t*, const std::int64_t*, float*, std::int64_t, bool);
template void row_gemm_nt<double>(std::int64_t, std::int64_t, std::int64_t, const double* const*,
                                  const double* const*, const std::int64_t*, const std::int64_t*, double*, std::int64_t,
                                  bool);
template void row_gemm<float>(const PackedA<float>&, std::int64_t, const float* const*, float*, std::int64_t, bool,
                              const GemmEpilogue<float>&, const std::int64_t*, const std::int64_t*,
                              const RowSums<float>*);
template void row_gemm<double>(const PackedA<double>&, std::int64_t, const double* const*, double*, std::int64_t,
                               bool, const GemmEpilogue<double>&, const std::int64_t*, const std::int64_t*,
                               const RowSums<double>*);

}  // namespace vidgrad::cpu
