// conv3d on the CPU. Which computation each conv gets (docs/design.md has the table):
//   3x1x1 with time padding 1, ungrouped, >= 32 channels (SEVNet's temporal convs):
//     Winograd F(4, 3) along time (conv3d_winograd.cpp, Note [Winograd temporal conv]),
//     forward and input gradient; the weight gradient too where it pays.
//   other 1x1x1 and kT x 1 x 1 (pointwise, temporal_only): row GEMM over (time-shifted) input
//     rows for the forward and input gradient (Note [row GEMM]); for the weight gradient,
//     over (sample, frame) ranges, the transposed row GEMM (kT > 1, Note [transposed row
//     GEMM]) or an Eigen GEMM (pointwise).
//   1 x kH x kW with 8 output channels per group or a multiple of 8 and at most 16 input
//     channels per group (the grouped 1x3x3 convs, the stem): direct kernels on padded,
//     stride-split frame planes (direct_planes.h, Notes [direct planes] and
//     [output-channel blocks]; the forward in conv3d_direct.cpp, the weight gradient in
//     conv3d_direct_grad.cpp, the strided input gradient in conv3d_strided_grad.cpp).
//   other ungrouped convs with wide output rows: one row GEMM per output row
//     (Note [strided rows]) for the forward.
//   everything else, and the remaining passes: im2col in cache-sized tiles + Eigen GEMM
//     per (sample, group): Y = W_g * col(X), col = W_g^T * GY then col2im, GW += GY * col^T.
// Work is spread over (sample, group) items when there are enough to feed every thread;
// otherwise the GEMMs and copies use the threads.
#include "vidgrad/ops/cpu/conv3d_cpu.h"
#include "vidgrad/ops/cpu/batch_norm_cpu.h"
#include "vidgrad/ops/cpu/conv3d_internal.h"
#include "vidgrad/ops/cpu/row_gemm.h"
#include "vidgrad/ops/cpu/micro_kernel.h"
#include "vidgrad/ops/cpu/simd.h"

#include "vidgrad/core/error.h"
#include "vidgrad/core/parallel.h"
#include "vidgrad/core/storage.h"

#include <Eigen/Core>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <optional>
#include <cstring>
#include <vector>

namespace vidgrad::cpu {

namespace {

template <typename T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using Map = Eigen::Map<RowMat<T>>;
template <typename T>
using ConstMap = Eigen::Map<const RowMat<T>>;

// dst[i] += sum over p < parts of partials[p * size + i], i < size: the other threads'
// partial weight gradients (Note [weight-gradient partials]). Contiguous, so vectorised.
template <typename T>
void add_partials(T* dst, const T* partials, int parts, std::int64_t size) {
  if (parts == 0) return;
#pragma omp parallel for schedule(static) if (size >= kMinParallelWork)
  for (std::int64_t i0 = 0; i0 < size; i0 += 1024) {
    const std::int64_t i1 = std::min(size, i0 + 1024);
    for (int p = 0; p < parts; ++p) {
      const T* src = partials + p * size;
      for (std::int64_t i = i0; i < i1; ++i) dst[i] += src[i];
    }
  }
}

// Output positions o in [lo, hi) read input index o * stride + off inside [0, size).
inline void valid_range(std::int64_t off, std::int64_t stride, std::int64_t size, std::int64_t out,
                        std::int64_t& lo, std::int64_t& hi) {
  lo = off >= 0 ? 0 : (-off + stride - 1) / stride;
  hi = size - 1 - off < 0 ? 0 : (size - 1 - off) / stride + 1;
  hi = std::min(hi, out);
  lo = std::min(lo, hi);
}

// dst[wo] = src[2 * wo] for wo in [lo, hi), where src[j] may be read for j < limit: the
// even lanes of two vector loads (the stem's stride-2 im2col rows; scalar, this gather was
// a fifth of the stem's weight gradient).
template <typename T>
inline void every_other(const T* src, T* dst, std::int64_t lo, std::int64_t hi, std::int64_t limit) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t kL = Vec<T>::kLanes;
  std::int64_t wo = lo;
  for (; wo + kL <= hi && 2 * (wo + kL) <= limit; wo += kL) {
    const V a = load_vec(src + 2 * wo), b = load_vec(src + 2 * wo + kL);
    store_vec(dst + wo, even_lanes<T>(a, b));
  }
  for (; wo < hi; ++wo) dst[wo] = src[2 * wo];
}

// col[K, cols] from one sample-group of x (Cg, T, H, W) for output rows (to, ho) with
// to * Ho + ho in [p0, p1); cols = (p1 - p0) * Wo. Rows of col are (c, kt, kh, kw).
template <typename T>
void im2col(const Conv3dGeometry& g, const T* x, T* col, std::int64_t p0, std::int64_t p1) {
  const std::int64_t rows = g.K(), L = (p1 - p0) * g.Wo;
#pragma omp parallel for schedule(static) if (rows * L >= kMinParallelWork)
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t kw = r % g.kW, kh = (r / g.kW) % g.kH, kt = (r / (g.kW * g.kH)) % g.kT;
    const std::int64_t c = r / (g.kW * g.kH * g.kT);
    const std::int64_t offw = kw * g.dW - g.pW;
    std::int64_t wlo, whi;
    valid_range(offw, g.sW, g.W, g.Wo, wlo, whi);
    T* dst_row = col + r * L;
    for (std::int64_t p = p0; p < p1; ++p) {
      const std::int64_t to = p / g.Ho, ho = p % g.Ho;
      const std::int64_t ti = to * g.sT + kt * g.dT - g.pT;
      const std::int64_t hi = ho * g.sH + kh * g.dH - g.pH;
      T* dst = dst_row + (p - p0) * g.Wo;
      if (ti < 0 || ti >= g.T || hi < 0 || hi >= g.H) {
        std::fill(dst, dst + g.Wo, T(0));
        continue;
      }
      const T* src = x + ((c * g.T + ti) * g.H + hi) * g.W + offw;
      std::fill(dst, dst + wlo, T(0));
      if (g.sW == 1) {
        std::memcpy(dst + wlo, src + wlo, static_cast<std::size_t>(whi - wlo) * sizeof(T));
      } else if (g.sW == 2) {
        every_other(src, dst, wlo, whi, g.W - offw);
      } else {
        for (std::int64_t wo = wlo; wo < whi; ++wo) dst[wo] = src[wo * g.sW];
      }
      std::fill(dst + whi, dst + g.Wo, T(0));
    }
  }
}

// gx (Cg, T, H, W) += col2im(col) for the output rows [p0, p1) that col covers. Parallel
// over input channels: rows of one channel touch only that channel's slab, so threads
// never write the same element.
template <typename T>
void col2im_add(const Conv3dGeometry& g, const T* col, T* gx, std::int64_t p0, std::int64_t p1) {
  const std::int64_t L = (p1 - p0) * g.Wo, per_c = g.kT * g.kH * g.kW;
#pragma omp parallel for schedule(static) if (g.K() * L >= kMinParallelWork)
  for (std::int64_t c = 0; c < g.Cg(); ++c) {
    for (std::int64_t k = 0; k < per_c; ++k) {
      const std::int64_t r = c * per_c + k;
      const std::int64_t kw = k % g.kW, kh = (k / g.kW) % g.kH, kt = k / (g.kW * g.kH);
      const std::int64_t offw = kw * g.dW - g.pW;
      std::int64_t wlo, whi;
      valid_range(offw, g.sW, g.W, g.Wo, wlo, whi);
      const T* src_row = col + r * L;
      for (std::int64_t p = p0; p < p1; ++p) {
        const std::int64_t to = p / g.Ho, ho = p % g.Ho;
        const std::int64_t ti = to * g.sT + kt * g.dT - g.pT;
        const std::int64_t hi = ho * g.sH + kh * g.dH - g.pH;
        if (ti < 0 || ti >= g.T || hi < 0 || hi >= g.H) continue;
        const T* src = src_row + (p - p0) * g.Wo;
        T* dst = gx + ((c * g.T + ti) * g.H + hi) * g.W + offw;
        for (std::int64_t wo = wlo; wo < whi; ++wo) dst[wo * g.sW] += src[wo];
      }
    }
  }
}

// ---- pointwise and kT x 1 x 1 convolutions (temporal_only) ----
// With HW = H*W, tap kt reads input frame to + off (off = kt*dT - pT) for output frame
// to; the frames where that is inside [0, T) form one contiguous column range of both
// the (Cg, T*HW) input and the (Og, To*HW) output (tap_range).

template <typename T>
using StridedMap = Eigen::Map<RowMat<T>, 0, Eigen::OuterStride<>>;
template <typename T>
using ConstStridedMap = Eigen::Map<const RowMat<T>, 0, Eigen::OuterStride<>>;

struct TapRange {
  std::int64_t lo, hi, off;  // output frames [lo, hi) read input frames [lo + off, hi + off)
};

inline TapRange tap_range(const Conv3dGeometry& g, std::int64_t kt) {
  const std::int64_t off = kt * g.dT - g.pT;
  const std::int64_t lo = std::max<std::int64_t>(0, -off);
  const std::int64_t hi = std::max(lo, std::min(g.To, g.T - off));
  return {lo, hi, off};
}

// dst (M, frames*HW) = A * rows, where row j*kT + kt is source channel j (of src_frames
// frames, src_stride apart) shifted so that destination frame t reads source frame
// t + shift[kt]; taps that fall outside the source read zeros. One row_gemm over all
// destination frames: each shifted row is valid on a range of columns and the GEMM's
// packing writes zeros outside it, so there is no zero-padded copy of the source and no
// split into frame ranges (whose edge ranges left 48-column tiles mostly empty on 7x7 and
// 4x4 frames).
template <typename T>
void shifted_rows_gemm(const PackedA<T>& a, std::int64_t kT, const std::int64_t* shift, const T* src,
                       std::int64_t src_stride, std::int64_t src_frames, std::int64_t HW, T* dst, std::int64_t dst_stride,
                       std::int64_t frames, const GemmEpilogue<T>& ep, bool accumulate,
                       const RowSums<T>* row_sums = nullptr) {
  const std::int64_t J = a.K / kT;
  std::vector<const T*> rows(static_cast<std::size_t>(a.K));
  std::vector<std::int64_t> lo(static_cast<std::size_t>(a.K)), hi(static_cast<std::size_t>(a.K));
  for (std::int64_t kt = 0; kt < kT; ++kt) {
    // Destination frames t with 0 <= t + shift < src_frames.
    const std::int64_t t0 = std::clamp<std::int64_t>(-shift[kt], 0, frames);
    const std::int64_t t1 = std::clamp<std::int64_t>(src_frames - shift[kt], t0, frames);
    for (std::int64_t j = 0; j < J; ++j) {
      rows[j * kT + kt] = src + j * src_stride + shift[kt] * HW;  // read only at columns [lo, hi)
      lo[j * kT + kt] = t0 * HW;
      hi[j * kT + kt] = t1 * HW;
    }
  }
  row_gemm(a, frames * HW, rows.data(), dst, dst_stride, accumulate, ep, lo.data(), hi.data(), row_sums);
}

// 1x1x1 and kT x 1 x 1 convs (pointwise or temporal_only) through row_gemm: the forward
// (y = W * shifted x) and the input gradient (gx = W^T * gy shifted back) are both one
// GEMM of depth channels * kT per sample-group, with no im2col (Note [row GEMM]). The
// forward's epilogue is applied as the output is stored (ep: all O channels). With
// item_sums, item n * groups + gr's GEMM takes the row sums item_sums[item] (RowSums).
// dst_sample: the distance between samples of dst (0: dense; Note [concat in place] in
// ops/conv3d.cpp).
template <typename T>
void rows_conv(const Conv3dGeometry& g, const T* w, const T* src, T* dst, bool input_grad,
               const GemmEpilogue<T>& ep = {}, bool accumulate = false, const RowSums<T>* item_sums = nullptr,
               std::int64_t dst_sample = 0) {
  const std::int64_t Cg = g.Cg(), Og = g.Og(), K = g.K(), HW = g.H * g.W, items = g.N * g.groups;
  const std::int64_t src_ch = input_grad ? Og : Cg, dst_ch = input_grad ? Cg : Og;
  const std::int64_t src_vol = input_grad ? g.L() : g.in_volume(), dst_vol = input_grad ? g.in_volume() : g.L();
  const std::int64_t dst_n = dst_sample ? dst_sample : g.groups * dst_ch * dst_vol;
  const std::int64_t src_frames = input_grad ? g.To : g.T, dst_frames = input_grad ? g.T : g.To;
  std::vector<std::int64_t> shift(static_cast<std::size_t>(g.kT));
  for (std::int64_t kt = 0; kt < g.kT; ++kt) shift[kt] = (input_grad ? -1 : 1) * (kt * g.dT - g.pT);
  std::vector<PackedA<T>> packed;
  for (std::int64_t gr = 0; gr < g.groups; ++gr) {
    const T* wg = w + gr * Og * K;
    if (input_grad) {  // A(c, o*kT + kt) = w[o][c][kt], the offset of (o, kt) from a table
      std::vector<std::int64_t> koff(static_cast<std::size_t>(Og * g.kT));
      for (std::int64_t o = 0; o < Og; ++o)
        for (std::int64_t kt = 0; kt < g.kT; ++kt) koff[o * g.kT + kt] = o * Cg * g.kT + kt;
      packed.emplace_back(Cg, Og * g.kT, [&](std::int64_t c, std::int64_t k) { return wg[koff[k] + c * g.kT]; });
    } else {  // A = W_g as stored, (Og, Cg*kT)
      packed.emplace_back(Og, K, [&](std::int64_t o, std::int64_t k) { return wg[o * K + k]; });
    }
  }
  auto run_item = [&](std::int64_t item) {
    const std::int64_t n = item / g.groups, gr = item % g.groups;
    GemmEpilogue<T> group_ep = ep.from_row(gr * Og);
    if (group_ep.residual) group_ep.residual += n * g.O * dst_vol;  // laid out like dst
    shifted_rows_gemm(packed[gr], g.kT, shift.data(), src + (n * g.groups + gr) * src_ch * src_vol, src_vol,
                      src_frames, HW, dst + n * dst_n + gr * dst_ch * dst_vol, dst_vol, dst_frames, group_ep,
                      accumulate, item_sums ? item_sums + item : nullptr);
  };
  // Small frames give each GEMM too few columns to split; then samples go to threads, each
  // its consecutive share (static), as the batch norm's and elementwise passes split the
  // batch, so a thread's operands are more often the ones it wrote. Against dynamic
  // (`vidgrad bench --model sevnet_g8 --batch 4 --frames 8 --size 112 --threads 2
  // --profile`, three alternations): the stage-4 1x1x1 input gradients 4.02 / 4.06 / 3.99
  // -> 3.81 / 3.89 / 3.94 ms a step, the forwards unchanged (twenty-ninth session).
  if (omp_get_max_threads() > 1 && items >= omp_get_max_threads() && dst_frames * HW < 4096) {
#pragma omp parallel for schedule(static)
    for (std::int64_t item = 0; item < items; ++item) run_item(item);
  } else {
    for (std::int64_t item = 0; item < items; ++item) run_item(item);
  }
}

// gtaps (Og, kT, Cg) += gyg (Og, cols) * shifted xg (kT * Cg, cols)^T over output frames
// [f0, f1) of one sample-group. With kT > 1, one transposed row GEMM (Note [transposed row
// GEMM]) whose B rows are the input channels shifted by each tap, zero where the tap reads
// padding: each output-gradient block is packed once for all taps, where Eigen packed it
// once per tap (conv3d_bench, min of 3 runs, two interleaved runs each: stage2 3x1x1
// 9.96/8.89 -> 6.79/7.03 ms, stage4 5.78/5.02 -> 4.34/4.62). Pointwise convs with fewer
// than kPointwiseNtChannels channels per group stay on Eigen (conv3d_bench, two runs each,
// Eigen / row_gemm_nt ms: 4 x 8x112 stage2 (64 ch) 1.42, 1.40 / 1.66, 1.85; stage3 (128)
// 1.51, 1.47 / 0.95, 1.14; stage4 (256) 0.88, 0.87 / 0.88, 0.94; stage5 (512) 1.10, 1.11 /
// 1.07, 0.94. 16x224: stage2 2.89, 3.13 / 3.94, 3.54; stage3 2.34, 2.08 / 2.16, 2.20;
// stage4 1.67, 1.73 / 1.93, 1.52; stage5 2.03, 1.94 / 1.44, 1.44). Since row_gemm_nt
// prefetches its rows (Note [nt prefetch]), 64 channels gain too (conv3d_bench, min of 3
// interleaved runs, Eigen / row_gemm_nt ms: stage2 1x1x1 (64 ch) 16x224 2.22 / 1.96, 4 x
// 8x112 1.20 / 0.96); at 32 (the stage2 downsampling 1x1x1) they are equal (3.07 / 3.05,
// 1.40 / 1.45). On the AMD EPYC VM (2026-11-24) 32 channels gained as well, Eigen /
// row_gemm_nt (conv3d_bench --cold, 2 threads, two interleaved runs, ms): 4 x 8x112 2.84,
// 3.06 / 2.41, 1.95; 16x224 5.93, 5.21 / 3.67, 3.91; in the step (`vidgrad bench
// --profile`, batch 4 8x112 training, three alternations) the 32-channel 1x1x1 weight
// gradients went from 3.14-3.44 to 1.90-2.06 ms a step. From 32 channels, then.
constexpr std::int64_t kPointwiseNtChannels = 32;

// gtaps (Og, Cg * kT), laid out as the weight (column c * kT + kt), = (accumulate: +=)
// gyg (Og, cols) * shifted xg (Cg * kT, cols)^T over output frames [f0, f1) of one
// sample-group.
template <typename T>
void temporal_backward_weight(const Conv3dGeometry& g, const T* gyg, const T* xg, T* gtaps, std::int64_t f0,
                              std::int64_t f1, bool accumulate) {
  const std::int64_t HW = g.H * g.W, Og = g.Og(), Cg = g.Cg(), N = g.kT * Cg;
  if (g.kT == 1 && Cg < kPointwiseNtChannels) {
    const TapRange r = tap_range(g, 0);
    const std::int64_t lo = std::max(r.lo, f0), hi = std::min(r.hi, f1);
    Map<T> out(gtaps, Og, Cg);
    if (hi <= lo) {
      if (!accumulate) out.setZero();
      return;
    }
    const std::int64_t cols = (hi - lo) * HW;
    ConstStridedMap<T> gy(gyg + lo * HW, Og, cols, Eigen::OuterStride<>(g.To * HW));
    ConstStridedMap<T> x(xg + (lo + r.off) * HW, Cg, cols, Eigen::OuterStride<>(g.T * HW));
    if (accumulate)
      out.noalias() += gy * x.transpose();
    else
      out.noalias() = gy * x.transpose();
    return;
  }
  std::vector<const T*> a_rows(static_cast<std::size_t>(Og)), b_rows(static_cast<std::size_t>(N));
  std::vector<std::int64_t> lo(static_cast<std::size_t>(N)), hi(static_cast<std::size_t>(N));
  for (std::int64_t o = 0; o < Og; ++o) a_rows[o] = gyg + o * g.L() + f0 * HW;
  for (std::int64_t kt = 0; kt < g.kT; ++kt) {
    const TapRange r = tap_range(g, kt);
    const std::int64_t t0 = std::max(r.lo, f0), t1 = std::max(t0, std::min(r.hi, f1));
    for (std::int64_t c = 0; c < Cg; ++c) {
      const std::int64_t n = c * g.kT + kt;  // the weight's column order
      b_rows[n] = xg + c * g.in_volume() + (f0 + r.off) * HW;  // row n at position k reads frame f0 + off + k / HW
      lo[n] = (t0 - f0) * HW;
      hi[n] = (t1 - f0) * HW;
    }
  }
  row_gemm_nt<T>(Og, N, (f1 - f0) * HW, a_rows.data(), b_rows.data(), lo.data(), hi.data(), gtaps, N, accumulate);
}

// Note [weight-gradient partials]: the weight gradient of pointwise and kT x 1 x 1 convs
// reduces over N * To frames, which are split between threads, each a single-threaded
// GEMM into its own partial sum (splitting the small (O, Cg * kT) output instead made the
// threads synchronise on every block of Eigen's parallel GEMM). B's rows are ordered as
// the weight's columns (c * kT + kt), so thread 0's partial is the weight gradient itself
// and the others are added to it in one contiguous pass; each thread's first GEMM stores
// rather than accumulates, so nothing is zeroed first. At 512 channels a partial is 3 MB:
// zeroing two, then a strided scalar sum of (O, kT, Cg) partials into (O, Cg, kT), took a
// third of the GEMMs' time.
template <typename T>
void temporal_weight_grad(const Conv3dGeometry& g, const T* gy, const T* x, T* gw) {
  const std::int64_t Cg = g.Cg(), Og = g.Og(), L = g.L(), units = g.N * g.To, per = g.O * Cg * g.kT;
  const bool parallel = !omp_in_parallel() && omp_get_max_threads() > 1 && units > 1 &&
                        g.N * g.O * Cg * g.kT * L >= kMinParallelWork;
  const int threads = parallel ? static_cast<int>(std::min<std::int64_t>(omp_get_max_threads(), units)) : 1;
  const Storage partial_buf(static_cast<std::size_t>((threads - 1) * per) * sizeof(T), Device::cpu());  // block cache
  T* partial = static_cast<T*>(partial_buf.data());
  int team = 1;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const std::int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    if (t == 0) team = static_cast<int>(nt);
    T* mine = t == 0 ? gw : partial + (t - 1) * per;
    const std::int64_t u0 = units * t / nt, u1 = units * (t + 1) / nt;
    for (std::int64_t n = u0 / g.To; n * g.To < u1; ++n) {
      const std::int64_t f0 = std::max<std::int64_t>(0, u0 - n * g.To), f1 = std::min(g.To, u1 - n * g.To);
      for (std::int64_t gr = 0; gr < g.groups; ++gr)
        temporal_backward_weight(g, gy + (n * g.O + gr * Og) * L, x + (n * g.C + gr * Cg) * g.in_volume(),
                                 mine + gr * Og * Cg * g.kT, f0, f1, n * g.To > u0);
    }
  }
  add_partials(gw, partial, team - 1, per);
}

// ---- any ungrouped conv, forward, one output row at a time ----
// Note [strided rows]: for one output row (n, to, ho), output column wo of tap
// (c, kt, kh, kw) reads input column wo * sW + kw * dW - pW of one input row. Splitting
// each zero-padded input row into its sW phases (phase q holds padded columns q, q + sW,
// ...) makes that a contiguous run starting at phase (kw*dW) % sW, offset (kw*dW) / sW,
// so the output row is one row_gemm of depth C*kT*kH*kW over pointers into a small
// scratch (Cg*kT*kH padded rows, in L1/L2) instead of an im2col matrix. Output rows go to
// threads. Used for wide rows of ungrouped convs the direct kernels do not take (the
// stem's 1x7x7 stride-2 conv took it until Note [output-channel blocks]); narrow rows
// would leave most of the 48-column micro-kernel tiles empty.
bool strided_rows_forward(const Conv3dGeometry& g) { return g.groups == 1 && g.Wo >= 32 && !g.pointwise(); }

template <typename T>
void strided_rows_conv(const Conv3dGeometry& g, const T* x, const T* w, T* y, const GemmEpilogue<T>& ep) {
  const std::int64_t K = g.K(), L = g.L(), rows = g.To * g.Ho, padded = g.W + 2 * g.pW;
  const std::int64_t phase_len = (padded + g.sW - 1) / g.sW, in_rows = g.C * g.kT * g.kH;
  const PackedA<T> a(g.O, K, [&](std::int64_t o, std::int64_t k) { return w[o * K + k]; });
#pragma omp parallel if (g.N * rows * g.O * K * g.Wo >= kMinParallelWork)
  {
    T* scratch = col_buffer<T>(in_rows * g.sW * phase_len);
    std::vector<const T*> ptrs(static_cast<std::size_t>(K));
#pragma omp for schedule(static)
    for (std::int64_t item = 0; item < g.N * rows; ++item) {
      const std::int64_t n = item / rows, p = item % rows, to = p / g.Ho, ho = p % g.Ho;
      for (std::int64_t q = 0; q < in_rows; ++q) {  // q = (c * kT + kt) * kH + kh
        const std::int64_t kh = q % g.kH, kt = (q / g.kH) % g.kT, c = q / (g.kH * g.kT);
        const std::int64_t ti = to * g.sT + kt * g.dT - g.pT, hi = ho * g.sH + kh * g.dH - g.pH;
        T* dst = scratch + q * g.sW * phase_len;
        std::fill(dst, dst + g.sW * phase_len, T(0));
        if (ti >= 0 && ti < g.T && hi >= 0 && hi < g.H) {
          const T* src = x + (((n * g.C + c) * g.T + ti) * g.H + hi) * g.W;
          for (std::int64_t ph = 0; ph < g.sW; ++ph) {  // padded column j = i * sW + ph
            T* d = dst + ph * phase_len;
            const std::int64_t i0 = std::max<std::int64_t>(0, (g.pW - ph + g.sW - 1) / g.sW);
            const std::int64_t i1 = std::min(phase_len, (g.pW + g.W - ph + g.sW - 1) / g.sW);
            for (std::int64_t i = i0; i < i1; ++i) d[i] = src[i * g.sW + ph - g.pW];
          }
        }
        for (std::int64_t kw = 0; kw < g.kW; ++kw) {
          const std::int64_t off = kw * g.dW;
          ptrs[q * g.kW + kw] = dst + (off % g.sW) * phase_len + off / g.sW;
        }
        // The input row this tap reads for the next output row, into L2 while this one
        // computes (the rows come from memory: Note [plane prefetch] in direct_planes.h).
        const std::int64_t next_hi = hi + g.sH;
        if (ho + 1 < g.Ho && ti >= 0 && ti < g.T && next_hi >= 0 && next_hi < g.H)
          prefetch_l2(x + (((n * g.C + c) * g.T + ti) * g.H + next_hi) * g.W,
                      g.W * static_cast<std::int64_t>(sizeof(T)));
      }
      row_gemm(a, g.Wo, ptrs.data(), y + n * g.O * L + p * g.Wo, L, false, ep);
    }
  }
}

// Note [im2col tiles]: im2col runs over tiles of whole output rows so that one tile of
// the column matrix (about kTileElements values) stays in cache between being written
// and being read by the GEMM; the stem's 1x7x7 conv at 224 px otherwise streams a 118 MB
// matrix through memory twice.
std::atomic<std::int64_t> tile_elements{std::int64_t{1} << 21};

std::int64_t tile_rows(const Conv3dGeometry& g) {
  const std::int64_t cols = std::max<std::int64_t>(1, tile_elements.load(std::memory_order_relaxed) / g.K());
  return std::max<std::int64_t>(1, cols / g.Wo);
}

// pro(x) written to a buffer of x's size: the input of the paths that do not apply the
// prologue in their kernels (Note [input prologue]), rounded as the kernels round it.
template <typename T>
std::unique_ptr<Storage> apply_prologue(const Conv3dGeometry& g, const T* x, const InputPrologue<T>& pro) {
  const std::int64_t S = g.in_volume(), planes = g.N * g.C;
  auto buf = std::make_unique<Storage>(static_cast<std::size_t>(planes * S) * sizeof(T), Device::cpu());
  T* z = static_cast<T*>(buf->data());
#pragma omp parallel for schedule(static) if (planes * S >= kMinParallelWork)
  for (std::int64_t p = 0; p < planes; ++p)
    normalise_values(x + p * S, S, pro.scale[p % g.C], pro.shift[p % g.C], z + p * S);
  return buf;
}

// The direct-plane kernels take g's weight gradient (the row GEMMs come first).
bool direct_weight_grad(const Conv3dGeometry& g) { return !g.temporal_only() && !g.pointwise() && direct_planes(g); }

}  // namespace

bool conv3d_takes_prologue(const Conv3dGeometry& g) {
  if (winograd_temporal(g)) return winograd_temporal_weight_grad_pays(g);
  return direct_weight_grad(g);
}

template <typename T>
void conv3d_forward(const Conv3dGeometry& g, const T* x, const T* w, T* y, const GemmEpilogue<T>& ep,
                    const InputPrologue<T>& pro, bool reuse_weights, std::int64_t y_sample) {
  const std::int64_t Cg = g.Cg(), Og = g.Og(), K = g.K(), L = g.L(), items = g.N * g.groups;
  VG_CHECK(!ep.residual || (ep.ldr == L && fuses_residual(g)),
           "conv3d_forward: a residual epilogue needs a pointwise or temporal conv and row stride " << L);
  VG_CHECK(y_sample == 0 || y_sample >= g.O * L,
           "conv3d_forward: samples of y " << y_sample << " values apart overlap (each has " << g.O * L << ")");
  if (g.N == 1 || y_sample == g.O * L) y_sample = 0;
  if (winograd_temporal(g)) {
    winograd_temporal_forward(g, x, w, y, ep, pro, nullptr, reuse_weights, y_sample);
    return;
  }
  const bool plain_rows = !direct_planes(g) && !pro.active() && (g.temporal_only() || g.pointwise());
  if (y_sample != 0 && !plain_rows) {  // the other kernels write dense samples: a buffer, then copies
    const std::int64_t per = g.O * L;
    const Storage buf(static_cast<std::size_t>(g.N * per) * sizeof(T), Device::cpu());  // block cache
    T* const z = static_cast<T*>(buf.data());
    conv3d_forward(g, x, w, z, ep, pro, reuse_weights);
#pragma omp parallel for schedule(static) if (g.N * per >= kMinParallelWork)
    for (std::int64_t n = 0; n < g.N; ++n) std::copy(z + n * per, z + (n + 1) * per, y + n * y_sample);
    return;
  }
  if (direct_planes(g)) {
    direct_conv_forward(g, x, w, y, ep, pro);
    return;
  }
  if (pro.active()) {
    const auto z = apply_prologue(g, x, pro);
    conv3d_forward(g, static_cast<const T*>(z->data()), w, y, ep);
    return;
  }
  if (g.temporal_only() || g.pointwise() || strided_rows_forward(g)) {
    if (strided_rows_forward(g) && !g.temporal_only())
      strided_rows_conv(g, x, w, y, ep);
    else
      rows_conv<T>(g, w, x, y, false, ep, false, nullptr, y_sample);
    return;
  }
  const bool outer = items_parallel(items, Og * K * L);
  auto run_item = [&](std::int64_t item) {
    const std::int64_t n = item / g.groups, gr = item % g.groups;
    const T* xg = x + (n * g.C + gr * Cg) * g.in_volume();
    Map<T> yg(y + (n * g.O + gr * Og) * L, Og, L);
    const std::int64_t rows = g.To * g.Ho, step = tile_rows(g);
    for (std::int64_t p0 = 0; p0 < rows; p0 += step) {
      const std::int64_t p1 = std::min(rows, p0 + step), cols = (p1 - p0) * g.Wo;
      T* buf = col_buffer<T>(K * cols);
      im2col(g, xg, buf, p0, p1);
      StridedMap<T> tile(yg.data() + p0 * g.Wo, Og, cols, Eigen::OuterStride<>(L));
      tile.noalias() = ConstMap<T>(w + gr * Og * K, Og, K) * ConstMap<T>(buf, K, cols);
      if (ep.active())  // while the tile is in cache
        for (std::int64_t o = 0; o < Og; ++o)
          for (std::int64_t i = 0; i < cols; ++i) tile(o, i) = ep.apply(tile(o, i), gr * Og + o);
    }
  };
  if (outer) {
#pragma omp parallel for schedule(dynamic)
    for (std::int64_t item = 0; item < items; ++item) run_item(item);
  } else {
    for (std::int64_t item = 0; item < items; ++item) run_item(item);
  }
}

namespace {

// With unit strides the input gradient is itself a convolution: of gy with the kernel
// flipped in H and W and its in/out channels swapped, padded by d (k - 1) - p. When that
// convolution qualifies for the direct kernel (Note [direct grouped conv]), use it.
std::optional<Conv3dGeometry> transposed_geometry(const Conv3dGeometry& g) {
  if (g.kT != 1 || g.sT != 1 || g.sH != 1 || g.sW != 1 || g.pT != 0 || g.pointwise()) return std::nullopt;
  const std::int64_t pH = g.dH * (g.kH - 1) - g.pH, pW = g.dW * (g.kW - 1) - g.pW;
  if (pH < 0 || pW < 0) return std::nullopt;
  Conv3dGeometry t = g;
  t.C = g.O;
  t.O = g.C;
  t.T = g.To; t.H = g.Ho; t.W = g.Wo;
  t.To = g.T; t.Ho = g.H; t.Wo = g.W;
  t.pH = pH;
  t.pW = pW;
  if (!direct_planes(t)) return std::nullopt;
  return t;
}

}  // namespace

// Note [output statistics] in row_gemm.cpp. The kernels' parts come per (sample-group,
// slot, row) from the row GEMM, per (sample, frames, channel) from the direct planes and
// per (block, channel) from the Winograd forward, each about its own shift, and are added
// in a fixed order (ChannelMoments), so the statistics depend on neither the thread count
// nor the schedule.
template <typename T>
void conv3d_forward_statistics(const Conv3dGeometry& g, const T* x, const T* w, T* y, const GemmEpilogue<T>& ep,
                               const InputPrologue<T>& pro, double* mean, double* var) {
  std::vector<ChannelMoments> moments(static_cast<std::size_t>(g.O));
  thread_local std::vector<double> parts;
  if (winograd_temporal(g)) {
    winograd_temporal_forward(g, x, w, y, ep, pro, moments.data());
  } else if (direct_planes(g)) {
    const std::int64_t runs = direct_sum_runs(g);
    parts.resize(static_cast<std::size_t>(g.N * runs * g.O * 3));
    direct_conv_forward(g, x, w, y, ep, pro, parts.data());
    for (std::int64_t n = 0; n < g.N; ++n)
      for (std::int64_t f = 0; f < runs; ++f)
        for (std::int64_t o = 0; o < g.O; ++o)
          moments[o].add(static_cast<double>(g.L() / runs), parts.data() + 3 * ((n * runs + f) * g.O + o));
  } else if (!pro.active() && !ep.residual &&
             (g.temporal_only() || (g.pointwise() && !strided_rows_forward(g)))) {
    const std::int64_t Og = g.Og(), items = g.N * g.groups, cols = g.L();
    const std::int64_t slots = row_sums_slots<T>(cols), per = row_sums_panels<T>(cols) * kernel::kNr<T>;
    parts.resize(static_cast<std::size_t>(items * slots * Og * 3));
    std::vector<RowSums<T>> item_sums(static_cast<std::size_t>(items));
    for (std::int64_t i = 0; i < items; ++i) item_sums[i] = {parts.data() + i * slots * Og * 3};
    rows_conv(g, w, x, y, false, ep, false, item_sums.data());
    for (std::int64_t n = 0; n < g.N; ++n)
      for (std::int64_t b = 0; b < slots; ++b) {
        const double nb = static_cast<double>(std::min(per, cols - b * per));  // the slot's columns
        for (std::int64_t gr = 0; gr < g.groups; ++gr)
          for (std::int64_t m = 0; m < Og; ++m)
            moments[gr * Og + m].add(nb, item_sums[n * g.groups + gr].sums + 3 * (b * Og + m));
      }
  } else {  // a pass over the output after it is written
    conv3d_forward(g, x, w, y, ep, pro);
    batch_norm_stats(y, g.N, g.O, g.L(), mean, var);
    return;
  }
  for (std::int64_t o = 0; o < g.O; ++o) {
    mean[o] = moments[o].mean();
    var[o] = moments[o].variance();
  }
}

template <typename T>
void conv3d_backward_input(const Conv3dGeometry& g, const T* gy, const T* w, T* gx, bool accumulate) {
  const std::int64_t Cg = g.Cg(), Og = g.Og(), K = g.K(), L = g.L(), items = g.N * g.groups;
  if (accumulate) {
    VG_CHECK(conv3d_input_grad_accumulates(g), "conv3d backward: this conv's input gradient cannot accumulate");
    rows_conv(g, w, gy, gx, true, {}, true);
    return;
  }
  if (const auto t = transposed_geometry(g)) {
    // w'[g][c][o][kh][kw] = w[g][o][c][kH-1-kh][kW-1-kw]: per group, (Cg, Og, 1, kH, kW).
    // Filled by all threads (Note [direct weights per call]).
    T* const wt = weight_buffer<T, WeightSlot::kFlipped>(g.O * K);
    const std::int64_t taps = g.kH * g.kW;
#pragma omp parallel for collapse(2) schedule(static) if (weights_parallel(g.O * K))
    for (std::int64_t gr = 0; gr < g.groups; ++gr)
      for (std::int64_t o = 0; o < Og; ++o)
        for (std::int64_t c = 0; c < Cg; ++c)
          for (std::int64_t k = 0; k < taps; ++k)
            wt[((gr * Cg + c) * Og + o) * taps + (taps - 1 - k)] = w[((gr * Og + o) * Cg + c) * taps + k];
    conv3d_forward<T>(*t, gy, wt, gx, {});
    return;
  }
  if (winograd_temporal(g)) {
    winograd_temporal_input_grad(g, gy, w, gx);
    return;
  }
  if (g.temporal_only() || g.pointwise()) {
    rows_conv(g, w, gy, gx, true);
    return;
  }
  if (direct_strided_input_grad(g, gy, w, gx)) return;
  const bool outer = items_parallel(items, Og * K * L);
  auto run_item = [&](std::int64_t item) {
    const std::int64_t n = item / g.groups, gr = item % g.groups;
    T* gxg = gx + (n * g.C + gr * Cg) * g.in_volume();
    ConstMap<T> wg(w + gr * Og * K, Og, K);
    ConstMap<T> gyg(gy + (n * g.O + gr * Og) * L, Og, L);
    std::fill(gxg, gxg + Cg * g.in_volume(), T(0));
    const std::int64_t rows = g.To * g.Ho, step = tile_rows(g);
    for (std::int64_t p0 = 0; p0 < rows; p0 += step) {
      const std::int64_t p1 = std::min(rows, p0 + step), cols = (p1 - p0) * g.Wo;
      T* buf = col_buffer<T>(K * cols);
      Map<T>(buf, K, cols).noalias() =
          wg.transpose() * ConstStridedMap<T>(gyg.data() + p0 * g.Wo, Og, cols, Eigen::OuterStride<>(L));
      col2im_add(g, buf, gxg, p0, p1);
    }
  };
  if (outer) {
#pragma omp parallel for schedule(dynamic)
    for (std::int64_t item = 0; item < items; ++item) run_item(item);
  } else {
    for (std::int64_t item = 0; item < items; ++item) run_item(item);
  }
}

namespace {

// Weight gradient through im2col (the stem's 1x7x7, any conv the other paths do not take):
// gw[o][k] = sum over positions of gy[o][p] * col[k][p]. The (sample, output row) space is
// split between threads; each im2cols its own tiles (small enough to stay in L2: the
// transposed row GEMM reads each tile once) and accumulates into its own partial sum with
// row_gemm_nt (Note [transposed row GEMM]); the partials are added at the end. Through
// Eigen, one GEMM per tile with a serial im2col between them: 4 x 8x112 stem weight
// gradient 9.2 ms of a 238 ms training step (profile).
template <typename T>
void im2col_weight_grad(const Conv3dGeometry& g, const T* gy, const T* x, T* gw) {
  const std::int64_t Cg = g.Cg(), Og = g.Og(), K = g.K(), L = g.L(), rows = g.To * g.Ho, units = g.N * rows;
  const std::int64_t step = std::min(tile_rows(g), std::max<std::int64_t>(1, (std::int64_t{1} << 17) / K / g.Wo));
  const int threads = static_cast<int>(std::min<std::int64_t>(
      omp_in_parallel() || g.N * g.O * K * L < 4 * kMinParallelWork ? 1 : omp_get_max_threads(), units));
  const std::int64_t per = g.groups * Og * K;  // one partial: all of gw (Note [weight-gradient partials])
  const Storage partial_buf(static_cast<std::size_t>((threads - 1) * per) * sizeof(T), Device::cpu());
  T* partial = static_cast<T*>(partial_buf.data());
  int team = 1;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const std::int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    if (t == 0) team = static_cast<int>(nt);
    T* mine = t == 0 ? gw : partial + (t - 1) * per;
    const std::int64_t u0 = units * t / nt, u1 = units * (t + 1) / nt;
    std::vector<const T*> a_rows(static_cast<std::size_t>(Og)), b_rows(static_cast<std::size_t>(K));
    for (std::int64_t n = u0 / rows; n * rows < u1; ++n) {
      const std::int64_t r0 = std::max<std::int64_t>(0, u0 - n * rows), r1 = std::min(rows, u1 - n * rows);
      for (std::int64_t p0 = r0; p0 < r1; p0 += step) {
        const std::int64_t p1 = std::min(r1, p0 + step), cols = (p1 - p0) * g.Wo;
        T* buf = col_buffer<T>(K * cols);
        for (std::int64_t k = 0; k < K; ++k) b_rows[k] = buf + k * cols;
        for (std::int64_t gr = 0; gr < g.groups; ++gr) {
          im2col(g, x + (n * g.C + gr * Cg) * g.in_volume(), buf, p0, p1);
          for (std::int64_t o = 0; o < Og; ++o) a_rows[o] = gy + (n * g.O + gr * Og + o) * L + p0 * g.Wo;
          row_gemm_nt<T>(Og, K, cols, a_rows.data(), b_rows.data(), nullptr, nullptr, mine + gr * Og * K, K,
                         n * rows + p0 > u0);
        }
      }
    }
  }
  add_partials(gw, partial, team - 1, per);
}

}  // namespace

template <typename T>
void conv3d_backward_weight(const Conv3dGeometry& g, const T* gy, const T* x, T* gw, const InputPrologue<T>& pro) {
  if (winograd_temporal(g) && winograd_temporal_weight_grad_pays(g)) {
    winograd_temporal_weight_grad(g, gy, x, gw, pro);
    return;
  }
  if (direct_weight_grad(g)) {
    direct_conv_weight_grad(g, gy, x, gw, pro);
    return;
  }
  if (pro.active()) {
    const auto z = apply_prologue(g, x, pro);
    conv3d_backward_weight(g, gy, static_cast<const T*>(z->data()), gw);
    return;
  }
  if (g.temporal_only() || g.pointwise()) {
    temporal_weight_grad(g, gy, x, gw);
    return;
  }
  im2col_weight_grad(g, gy, x, gw);
}

bool conv3d_input_grad_accumulates(const Conv3dGeometry& g) {
  return !transposed_geometry(g) && !winograd_temporal(g) && (g.temporal_only() || g.pointwise());
}

template <typename T>
void conv3d_backward_bias(const Conv3dGeometry& g, const T* gy, T* gb) {
  const std::int64_t L = g.L();
#pragma omp parallel for schedule(static) if (g.N * g.O * L >= kMinParallelWork)
  for (std::int64_t o = 0; o < g.O; ++o) {
    T acc = 0;
    for (std::int64_t n = 0; n < g.N; ++n) {
      const T* row = gy + (n * g.O + o) * L;
      for (std::int64_t i = 0; i < L; ++i) acc += row[i];
    }
    gb[o] = acc;
  }
}

void set_conv_tile_elements(std::int64_t elements) {
  tile_elements.store(std::max<std::int64_t>(1, elements), std::memory_order_relaxed);
}

#define VIDGRAD_INSTANTIATE(T)                                                              \
  template void conv3d_forward<T>(const Conv3dGeometry&, const T*, const T*, T*, const GemmEpilogue<T>&,      \
                                  const InputPrologue<T>&, bool, std::int64_t);                               \
  template void conv3d_forward_statistics<T>(const Conv3dGeometry&, const T*, const T*, T*,                     \
                                             const GemmEpilogue<T>&, const InputPrologue<T>&, double*, double*); \
  template void conv3d_backward_input<T>(const Conv3dGeometry&, const T*, const T*, T*, bool);                \
  template void conv3d_backward_weight<T>(const Conv3dGeometry&, const T*, const T*, T*, const InputPrologue<T>&); \
  template void conv3d_backward_bias<T>(const Conv3dGeometry&, const T*, T*);
VIDGRAD_INSTANTIATE(float)
VIDGRAD_INSTANTIATE(double)
#undef VIDGRAD_INSTANTIATE

}  // namespace vidgrad::cpu
