// Direct kernels for convs with a 1 x kH x kW kernel, 8 output channels per group or a
// multiple of 8 taken 8 at a time, and at most 16 input channels per group (SEVNet's 1x3x3
// gw8 and its 1x7x7 stem): forward and weight gradient on zero-padded, stride-split frame
// planes (Notes below). conv3d_cpu.cpp dispatches here; the unit-stride input gradient is
// the same forward kernel on the transposed conv, the strided one is in
// conv3d_strided_grad.cpp.
#include "vidgrad/ops/cpu/conv3d_internal.h"
#include "vidgrad/ops/cpu/simd.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace vidgrad::cpu {

namespace {

// ---- direct kernels for 8-channel groups with a 1 x kH x kW kernel ----
// Note [direct grouped conv]: with 8 channels per group (SEVNet's 1x3x3 convs) im2col
// writes kH*kW copies of the input for a GEMM only 8 rows tall. Instead the output is
// computed directly, in blocks of 48 output positions (3 vectors) x 8 output channels
// accumulated in 24 registers over (c, kh, kw), from zero-padded copies of the input
// planes: per tap, 3 loads and 8 broadcasts feed 24 FMAs.
//
// Note [direct planes]: pad each input plane of a frame with zeros (pH rows above and
// below, pW columns left and right: Hp x Wp) and split it into its sH x sW phases (phase
// (a, b) holds padded rows a, a + sH, ... and columns b, b + sW, ...; Hq x Wq each). Output
// (ho, wo) of tap (kh, kw) reads padded (ho*sH + kh*dH, wo*sW + kw*dW), which is element
// (ho + kh*dH / sH, wo + kw*dW / sW) of phase (kh*dH % sH, kw*dW % sW). On an output grid
// of width Wq, q = ho * Wq + wo, every tap is then a fixed offset into one phase plane:
// the whole frame is one long row of Ho * Wq outputs (columns wo >= Wo are computed and
// dropped), so narrow planes (7x7 and 4x4 at SEVNet's last stages) and stride 2 (its
// downsampling blocks) fill the blocks like wide unit-stride ones, with no im2col.
//
// Note [output-channel blocks]: a conv with more output channels per group (a multiple of
// 8) and few input channels (at most 16) runs the same kernels once per block of 8 output
// channels: in the weight gradient each block is an independent item (its slice of the
// weight gradient) that fills the input planes it reads itself; the forward fills a
// group's frame planes once for all its blocks (below). That is the stem (1x7x7 stride
// 2, 3 -> 32 channels: 4 blocks of 147 taps), which took a row GEMM with an output row
// per call (forward, Note [strided rows] in conv3d_cpu.cpp: 56 columns at 8x112 leave
// the second 48-column tile mostly empty) and an im2col GEMM (weight gradient).
// conv3d_bench --cold, 2 threads, stem 1x7x7 ms, before -> after: 4 x 8x112 forward 5.58
// -> 2.90, weight gradient 8.55 -> 4.50; 1 x 16x224 9.55 -> 7.60 and 16.8 -> 10.8. The
// input gradient keeps its path (its transposed conv has 3 output channels). The forward
// then filled each frame's planes once for all blocks of a group (direct_plane's nob) and
// runs the blocks one after another over them: computing all four blocks per 48 positions
// stored 32 output rows at a time and was slower (timing loop over the stem's forward at
// 4 x 8x112, 5 interleaved runs, ms: a fill per block 3.1-3.9, all blocks per position
// block 3.9-4.4, block after block 3.2-3.7; the fills were 6.5% of its perf samples).
constexpr std::int64_t kDirectOg = 8;
constexpr std::int64_t kDirectVecs = 3;     // output vectors per block: 8 x 3 accumulators
constexpr std::int64_t kPlaneTail = 64;     // zeros after each phase plane, >= one block


struct PlaneShape {
  std::int64_t Hq, Wq, phase;  // phase plane rows, columns, and values (with tail zeros)
};

PlaneShape plane_shape(const Conv3dGeometry& g) {
  const std::int64_t Hq = (g.H + 2 * g.pH + g.sH - 1) / g.sH, Wq = (g.W + 2 * g.pW + g.sW - 1) / g.sW;
  return {Hq, Wq, Hq * Wq + kPlaneTail + (g.kW - 1) * g.dW};
}

// Values of scratch one channel's phase planes take.
std::int64_t plane_scratch(const Conv3dGeometry& g) { return g.sH * g.sW * plane_shape(g).phase; }

// Note [direct prologue]: with an input prologue (Note [input prologue] in conv3d_cpu.h)
// the fills below normalise each value of an input plane as they copy it into the
// thread's padded planes (their shapes: phase planes, the stride-2 split, stacked rows),
// and the padding they add stays zero, as it pads the normalised input. They normalised
// each plane into a buffer of its own first, then copied that (perf, batch 4 8x112
// training: that pass 1.4% of the samples); measured in docs/performance.md, "Twenty-fourth
// session".
template <typename T>
struct PlanePrologue {  // one input channel's v -> relu(a v + b), or v as it is
  using V = typename Vec<T>::type;
  bool on = false;
  T a = T(1), b = T(0);
  PlanePrologue() = default;
  // Channel c of pro (already offset to the group's first channel).
  PlanePrologue(const InputPrologue<T>& pro, std::int64_t c) : on(pro.active()) {
    if (on) {
      a = pro.scale[c];
      b = pro.shift[c];
    }
  }
  V operator()(V v) const { return on ? relu_fma<T>(v, V{} + a, V{} + b) : v; }
  T operator()(T v) const {
    if (!on) return v;
    const T r = std::fma(v, a, b);
    return r > T(0) ? r : T(0);  // as relu_fma (NaN becomes 0)
  }
};

// dst[0, n) = 0 in whole vectors and a masked last one (Note [stacked fill]).
template <typename T>
inline void zero_values(T* dst, std::int64_t n) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t kL = Vec<T>::kLanes;
  std::int64_t i = 0;
  for (; i + kL <= n; i += kL) store_vec(dst + i, V{});
  if (i < n) store_lanes(dst + i, V{}, first_lanes<T>(n - i));
}

// `rows` rows of `width` <= one vector of values, row r from src + r * src_stride to
// dst + r * dst_stride: one masked load and store per row (Note [stacked fill]).
// Through pro (Note [direct prologue]).
template <typename T>
inline void place_rows(const T* src, std::int64_t rows, std::int64_t width, std::int64_t src_stride, T* dst,
                       std::int64_t dst_stride, const PlanePrologue<T>& pro = {}) {
  const std::uint32_t mask = first_lanes<T>(width);
  for (std::int64_t r = 0; r < rows; ++r)
    store_lanes(dst + r * dst_stride, pro(load_lanes(src + r * src_stride, mask)), mask);
}

// Note [stride-2 fill]: a stride-2 conv's phase planes take a row's even and odd columns
// apart. Value by value that copy was 45% of the perf samples of the stage-2 downsampling
// 1x3x3 conv (forward, input and weight gradients at 4 x 8x112), more than its
// arithmetic; two vectors of input give one vector of each phase by two shuffles.
// conv3d_bench, 4 x 8x112, min of 3 interleaved runs, downsampling 1x3x3 ms, forward and
// weight gradient: stage2 1.70 -> 0.786 and 1.94 -> 1.15, stage3 1.17 -> 0.567 and 1.14 ->
// 0.614, stage4 0.780 -> 0.446 and 0.843 -> 0.439, stage5 0.679 -> 0.454 and 0.764 -> 0.500
// (the input gradient's phase convs have unit stride: unchanged).

// Writes the values of one input plane src (H x W), through pro, to their places in phase
// planes at dst (ps.phase values apart, rows ps.Wq apart) that hold zeros elsewhere.
template <typename T>
void place_phases(const Conv3dGeometry& g, const PlaneShape& ps, const T* src, T* dst, const PlanePrologue<T>& pro) {
  for (std::int64_t h = 0; h < g.H; ++h) {
    const std::int64_t i = h + g.pH;  // padded row
    T* row = dst + (i % g.sH) * g.sW * ps.phase + (i / g.sH) * ps.Wq;
    const T* s = src + h * g.W;
    if (g.sW == 1) {
      for (std::int64_t j = 0; j < g.W; j += Vec<T>::kLanes)  // a vector (masked) at a time
        place_rows(s + j, 1, std::min<std::int64_t>(Vec<T>::kLanes, g.W - j), 0, row + g.pW + j, 0, pro);
      continue;
    }
    if (g.sW == 2) {  // input column 2m to phase pW % 2, 2m + 1 to the other (Note [stride-2 fill])
      deinterleave_row(s, g.W, row + (g.pW % 2) * ps.phase + g.pW / 2,
                       row + ((g.pW + 1) % 2) * ps.phase + (g.pW + 1) / 2, pro);
      continue;
    }
    for (std::int64_t b = 0; b < g.sW; ++b) {  // padded column j = jq * sW + b
      T* d = row + b * ps.phase;
      const std::int64_t j0 = std::max<std::int64_t>(0, (g.pW - b + g.sW - 1) / g.sW);
      const std::int64_t j1 = std::min(ps.Wq, (g.pW + g.W - b + g.sW - 1) / g.sW);
      for (std::int64_t jq = j0; jq < j1; ++jq) d[jq] = pro(s[jq * g.sW + b - g.pW]);
    }
  }
}

// Fills dst (plane_scratch(g) values) with the phase planes of one input plane src (H x W),
// through pro.
template <typename T>
void fill_phases(const Conv3dGeometry& g, const PlaneShape& ps, const T* src, T* dst, const PlanePrologue<T>& pro) {
  if (g.sH == 1 && g.sW == 1) {  // one phase: zero only the border and the tail
    std::fill(dst, dst + g.pH * ps.Wq, T(0));
    // Each padded row as whole vectors of masked loads (zeros in the padding columns); a
    // row's last vector may spill into the next row, written after it, or into the bottom
    // border and tail, zeroed last (the tail holds more than a vector).
    constexpr std::int64_t kL = Vec<T>::kLanes;
    static_assert(kPlaneTail >= kL);
    for (std::int64_t h = 0; h < g.H; ++h) {
      T* row = dst + (h + g.pH) * ps.Wq;
      const T* s = src + h * g.W - g.pW;  // s[j] for padded column j in [pW, pW + W)
      for (std::int64_t j0 = 0; j0 < ps.Wq; j0 += kL) {
        const std::int64_t a = std::clamp<std::int64_t>(g.pW - j0, 0, kL);
        const std::int64_t b = std::clamp<std::int64_t>(g.pW + g.W - j0, 0, kL);
        const std::uint32_t mask = ((std::uint32_t{1} << b) - 1) & ~((std::uint32_t{1} << a) - 1);
        store_vec(row + j0, keep_lanes<T>(pro(load_lanes(s + j0, mask)), mask));  // padding stays 0
      }
    }
    std::fill(dst + (g.H + g.pH) * ps.Wq, dst + ps.phase, T(0));
    return;
  }
  std::fill(dst, dst + plane_scratch(g), T(0));
  place_phases(g, ps, src, dst, pro);
}

// Note [plane prefetch]: the direct kernels copy each input plane into a zero-padded
// scratch before computing on it. At SEVNet-G8's 16x224 sizes that copy read its planes
// from memory, not from cache: timed inside the kernel (rdtsc, 16x224 stage2 gw8 forward,
// 2 threads) the first copy of a frame's planes took 2.03 G cycles in total, a second copy
// of the same planes right after it 0.52 G, the computation 2.73 G; the hardware
// prefetchers do not run ahead across the eight planes of a group. So while one frame
// computes, the next frame's planes are prefetched into L2, a share of their cache lines
// before each block of outputs (a burst of all of them at once did not help).

// The cache lines of `planes` runs of `values` values each, `stride` values apart (from
// `first`; null: none), prefetched into L2 in order: next() one line, share(i, n) the
// lines of block i of n.
template <typename T>
struct PlanePrefetch {
  const char* plane;
  std::int64_t stride_bytes, bytes, left, lines, off = 0;  // left: planes not yet done
  PlanePrefetch(const T* first, std::int64_t stride, std::int64_t values, std::int64_t planes)
      : plane(reinterpret_cast<const char*>(first)), stride_bytes(stride * static_cast<std::int64_t>(sizeof(T))),
        bytes(values * static_cast<std::int64_t>(sizeof(T))), left(first && values > 0 ? planes : 0),
        lines(left * ((bytes + 63) / 64)) {}
  void next() {
    if (left == 0) return;
    __builtin_prefetch(plane + off, 0, 2);
    off += 64;
    if (off >= bytes) {
      off = 0;
      plane += stride_bytes;
      --left;
    }
  }
  void share(std::int64_t i, std::int64_t n) {
    for (std::int64_t l = lines * i / n; l < lines * (i + 1) / n; ++l) next();
  }
};

// Offset of tap (kh, kw) in a channel's phase planes, relative to output q.
inline std::int64_t tap_offset(const Conv3dGeometry& g, const PlaneShape& ps, std::int64_t kh, std::int64_t kw) {
  const std::int64_t a = kh * g.dH, b = kw * g.dW;
  return ((a % g.sH) * g.sW + b % g.sW) * ps.phase + (a / g.sH) * ps.Wq + b / g.sW;
}

// Offsets of every tap (kh, kw) in a channel's planes (tap_offset), computed once per call
// rather than with divisions in the block loop.
std::vector<std::int64_t> tap_offsets(const Conv3dGeometry& g, const PlaneShape& ps) {
  std::vector<std::int64_t> off(static_cast<std::size_t>(g.kH * g.kW));
  for (std::int64_t kh = 0; kh < g.kH; ++kh)
    for (std::int64_t kw = 0; kw < g.kW; ++kw) off[kh * g.kW + kw] = tap_offset(g, ps, kh, kw);
  return off;
}

// One block of outputs from grid position q0: acc[o][j] = the sum over (c, kh, kw) of
// wt(c, kh, kw, o) times channel c's planes (per_c values apart) at the tap's offset (off,
// from tap_offsets), then the bias and the ReLU (ep from the group's first channel; its
// scale is already in wt, Note [scale in the weights]).
template <typename T>
inline void block_sums(const Conv3dGeometry& g, const std::int64_t* off, const T* scratch, std::int64_t per_c,
                       const T* wt, std::int64_t q0, const GemmEpilogue<T>& ep,
                       typename Vec<T>::type (&acc)[kDirectOg][kDirectVecs]) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t kL = Vec<T>::kLanes;
  // Note [register accumulators]: the sums live in a local array that is only ever indexed
  // by constants once the o and j loops are unrolled, so the compiler keeps it in registers.
  // Summed straight into acc (which the caller indexes lane by lane, so it lives in memory),
  // every FMA read and wrote the stack: AMD's Zen cores forward such stack traffic cheaply,
  // but on an Intel Xeon VM (Sapphire Rapids features, g++ 12, -march=native) the grouped
  // 1x3x3 convs ran at 35-57 GFLOP/s and the stem at 51-65, of the two cores' 268 GFLOP/s
  // peak. --profile, batch 4 8x112 training, ms a step, before -> after both changes (4
  // runs after): grouped forward 29.6 -> 12.9-14.4, input gradient 30.4 -> 13.1-14.0; stem
  // forward 18.5 -> 6.7-7.4.
  V sum[kDirectOg][kDirectVecs];
#pragma GCC unroll 8
  for (std::int64_t o = 0; o < kDirectOg; ++o)
#pragma GCC unroll 3
    for (std::int64_t j = 0; j < kDirectVecs; ++j) sum[o][j] = V{};
  const std::int64_t Cg = g.Cg(), taps = g.kH * g.kW;
  for (std::int64_t c = 0; c < Cg; ++c)
    for (std::int64_t t = 0; t < taps; ++t) {  // t = kh * kW + kw
      const T* s = scratch + c * per_c + off[t] + q0;
      const T* wv = wt + (c * taps + t) * kDirectOg;
      V sv[kDirectVecs];
#pragma GCC unroll 3
      for (std::int64_t j = 0; j < kDirectVecs; ++j) sv[j] = load_vec(s + j * kL);
#pragma GCC unroll 8
      for (std::int64_t o = 0; o < kDirectOg; ++o) {
        const T w = wv[o];
#pragma GCC unroll 3
        for (std::int64_t j = 0; j < kDirectVecs; ++j) sum[o][j] += w * sv[j];
      }
    }
#pragma GCC unroll 8
  for (std::int64_t o = 0; o < kDirectOg; ++o)
#pragma GCC unroll 3
    for (std::int64_t j = 0; j < kDirectVecs; ++j) {
      V v = sum[o][j];
      if (ep.bias) v += ep.bias[o];
      if (ep.relu) v = v > T(0) ? v : V{};  // as relu(): NaN becomes 0
      acc[o][j] = v;
    }
}

// Output frame `to` of one sample-group: y (nob * 8, To*Ho*Wo) from x (Cg, T, H, W), in
// nob blocks of 8 output channels that share the input planes (Note [output-channel
// blocks]). wt holds each block's weight reordered to (Cg, kH, kW, 8), one after another;
// scratch holds Cg * plane_scratch(g) values. ep (from the group's first channel) applies
// as the outputs are stored.
template <typename T>
void direct_plane(const Conv3dGeometry& g, const T* x, const T* wt, T* y, std::int64_t to, T* scratch,
                  const GemmEpilogue<T>& ep, std::int64_t nob, const InputPrologue<T>& pro) {
  const PlaneShape ps = plane_shape(g);
  const std::int64_t Cg = g.Cg(), per_c = plane_scratch(g), L = g.L(), K = g.K();
  const std::int64_t HoWo = g.Ho * g.Wo, Q = g.Ho * ps.Wq, ti = to * g.sT - g.pT;
  if (ti < 0 || ti >= g.T) {  // every tap reads padding
    for (std::int64_t o = 0; o < nob * kDirectOg; ++o)
      std::fill(y + o * L + to * HoWo, y + o * L + (to + 1) * HoWo, ep.apply(T(0), o));
    return;
  }
  for (std::int64_t c = 0; c < Cg; ++c)
    fill_phases(g, ps, x + (c * g.T + ti) * g.H * g.W, scratch + c * per_c, PlanePrologue<T>(pro, c));
  const std::vector<std::int64_t> off = tap_offsets(g, ps);
  using V = typename Vec<T>::type;
  constexpr std::int64_t kL = Vec<T>::kLanes, kBlock = kDirectVecs * kL;
  static_assert(kBlock <= kPlaneTail);
  // The next output frame's input planes, a share before each block (Note [plane prefetch]).
  const std::int64_t next_ti = ti + g.sT, blocks = (Q + kBlock - 1) / kBlock;
  PlanePrefetch<T> next(next_ti < g.T ? x + next_ti * g.H * g.W : nullptr, g.T * g.H * g.W, g.H * g.W, Cg);
  for (std::int64_t ob = 0; ob < nob; ++ob) {  // block by block: 8 output rows stored at a time
    for (std::int64_t q0 = 0; q0 < Q; q0 += kBlock) {
      next.share(ob * blocks + q0 / kBlock, nob * blocks);
      T* yt = y + ob * kDirectOg * L + to * HoWo;
      V acc[kDirectOg][kDirectVecs];
      block_sums(g, off.data(), scratch, per_c, wt + ob * K * kDirectOg, q0, ep.from_row(ob * kDirectOg), acc);
      // Each vector's lanes are grid positions q .. q + kL - 1: a run in output row ho from
      // column wo (up to Wo), and, where the vector crosses the end of the grid row, a run at
      // the start of row ho + 1. Both are masked stores; planes narrower than a vector (a
      // vector then spans several rows) store lane by lane.
      for (std::int64_t j = 0; j < kDirectVecs; ++j) {
        const std::int64_t q = q0 + j * kL;
        if (q >= Q) break;
        const std::int64_t ho = q / ps.Wq, wo = q % ps.Wq, b = ps.Wq - wo;
        const std::int64_t first = std::clamp<std::int64_t>(g.Wo - wo, 0, kL);
        const std::int64_t second = b < kL && ho + 1 < g.Ho ? std::min(kL - b, g.Wo) : 0;
        const std::int64_t off1 = ho * g.Wo + wo, off2 = (ho + 1) * g.Wo - b;
        if (ps.Wq >= kL && (second == 0 || off2 >= 0)) {
          const std::uint32_t m1 = (std::uint32_t{1} << first) - 1;
          const std::uint32_t m2 = second > 0 ? ((std::uint32_t{1} << second) - 1) << b : 0;  // b < kL here
          for (std::int64_t o = 0; o < kDirectOg; ++o) {
            if (m1) store_lanes(yt + o * L + off1, acc[o][j], m1);
            if (m2) store_lanes(yt + o * L + off2, acc[o][j], m2);
          }
          continue;
        }
        for (std::int64_t i = 0; i < kL && q + i < Q; ++i) {
          const std::int64_t h = (q + i) / ps.Wq, w = (q + i) % ps.Wq;
          if (w < g.Wo)
            for (std::int64_t o = 0; o < kDirectOg; ++o) yt[o * L + h * g.Wo + w] = acc[o][j][i];
        }
      }
    }
  }
}

// Note [stacked frames]: on narrow frames (padded width under one vector: SEVNet's 7x7 and
// 4x4 planes at stages 4 and 5) direct_plane computed each frame's grid in its own blocks
// (81 positions in two 48-blocks for a 7x7 frame) and stored outputs lane by lane. With
// unit strides and no time taps, each channel's padded frames are instead stacked one
// after another: tap (kh, kw) is still the fixed offset kh*dH*Wq + kw*dW from an output's
// grid position, rows ho >= Ho of each frame's grid read into the next frame and are
// dropped, and all frames of a sample-group are one long row of blocks. Outputs are stored
// as masked vector stores per grid row. conv3d_bench, 4 x 8x112, min of 3 interleaved
// runs: stage4 (7x7) forward 0.490 -> 0.457 ms, input gradient 0.697 -> 0.538; stage5 (4x4)
// 0.588 -> 0.421, 0.752 -> 0.499.
//
// Note [stacked fill]: frame by frame through fill_phases, the copy into the stacks was a
// fifth of the perf samples of 4 x 8x112 stage 4's grouped conv (forward and input
// gradient; 7 rows of 7 values per frame, each frame a call with its border fills), and
// in the weight gradient the planes' and output-gradient grids' fills (std::fill, std::copy
// per row) a third of the kernel's. Rows narrower than a vector are instead stored with
// one masked store each into scratch zeroed by whole vector stores (zero_values,
// place_rows).
// conv3d_bench 4 x 8x112 --cold, min of 5 interleaved runs, ms: stage4 forward 0.570 ->
// 0.518, input gradient 0.609 -> 0.545, weight gradient 0.735 -> 0.670; stage5 0.528 ->
// 0.394, 0.543 -> 0.515, 0.809 -> 0.741.
//
// Note [shared padding]: stacked, a frame's zero rows below it can be the next frame's
// zero rows above it, and a row's zero columns on the right the next row's on the left:
// frames of (H + sh) rows of (W + sw) values, sh and sw the larger padding a tap reaches
// past one edge (pH, pW) or the output's excess over the input (Ho - H, Wo - W), with pH
// rows and pW columns of zeros before the first frame. A tap (kh, kw) is the fixed offset
// (kh*dH - pH) rows and (kw*dW - pW) columns from an output's grid position: reads past
// a row's end land in its zero columns, reads before its start in the previous row's,
// and rows past a frame's end or before its start in the zero rows between frames. A 7x7
// frame is 8x8 grid positions instead of 9x9, a 4x4 one 5x5 instead of 6x6: a fifth to a
// quarter fewer blocks. A timing loop over conv3d_forward / conv3d_backward_input at
// 4 x 8x112 (2 threads, 64 MiB written before each call, min of 100 calls, 3 interleaved
// runs), ms: stage4 (7x7, 256 channels) forward 0.353-0.393 -> 0.283-0.287, input
// gradient 0.354-0.461 -> 0.282-0.295; stage5 (4x4, 512) 0.329-0.391 -> 0.285-0.300,
// 0.337-0.347 -> 0.303-0.310.
//
// Note [strided stacks]: strided convs on narrow planes (phase planes under a vector wide:
// SEVNet's downsampling 1x3x3 convs from 28x28, 14x14 and 7x7 inputs) stack the same way,
// each phase plane of every frame one after another in its phase's stack: a tap is still
// one offset from an output's grid position, valid outputs read only their own frame
// (ho + kh*dH / sH < Hq), and the 4x4 outputs of a 7x7 frame (5x5 phase planes) fill
// blocks of 48 from all frames instead of one 20-position grid per frame, stored lane by
// lane. Timing loop over conv3d_forward at 4 x 8x112 (as in Note [shared padding]; min of
// 60 calls, 2 interleaved runs), ms: 28x28 -> 14x14 (64 channels) 0.496-0.511 ->
// 0.413-0.440, 14x14 -> 7x7 (128) 0.410-0.430 -> 0.296-0.335, 7x7 -> 4x4 (256) 0.398-0.400
// -> 0.295-0.310.
bool stacked_frames(const Conv3dGeometry& g) {
  return g.sT == 1 && g.kT == 1 && g.pT == 0 && g.To == g.T && plane_shape(g).Wq < Vec<float>::kLanes;
}

struct StackShape {
  std::int64_t Hs, Ws;  // grid rows per frame, grid positions per row
  std::int64_t base;    // unit strides: zeros before the first frame's first value
  std::int64_t phase;   // values per phase stack (strided: sH * sW of them per channel)
  std::int64_t Q;       // grid positions from the first frame's to the last output's
  std::int64_t per_c;   // scratch values per channel (with zeros after the last frame)
};

template <typename T>
StackShape stack_shape(const Conv3dGeometry& g) {
  constexpr std::int64_t kL = Vec<T>::kLanes, kBlock = kDirectVecs * kL;
  StackShape st;
  std::int64_t reach;  // largest tap offset past an output's grid position, in its phase
  if (g.sH == 1 && g.sW == 1) {  // Note [shared padding]
    st.Hs = g.H + std::max(g.pH, g.Ho - g.H);
    st.Ws = g.W + std::max(g.pW, g.Wo - g.W);
    st.base = g.pH * st.Ws + g.pW;
    reach = std::max<std::int64_t>(0, ((g.kH - 1) * g.dH - g.pH) * st.Ws + (g.kW - 1) * g.dW - g.pW);
  } else {  // each frame's zero-padded phase planes (Note [strided stacks])
    const PlaneShape ps = plane_shape(g);
    st.Hs = ps.Hq;
    st.Ws = ps.Wq;
    st.base = 0;
    reach = ((g.kH - 1) * g.dH / g.sH) * st.Ws + (g.kW - 1) * g.dW / g.sW;
  }
  st.Q = (g.T - 1) * st.Hs * st.Ws + g.Ho * st.Ws;
  st.phase = st.base + std::max(g.T * st.Hs * st.Ws, (st.Q + kBlock - 1) / kBlock * kBlock + reach);
  st.per_c = g.sH * g.sW * st.phase;
  return st;
}

// All frames of one sample-group (Notes [stacked frames], [shared padding] and [strided
// stacks]): y (8, T*Ho*Wo) from x (Cg, T, H, W), wt as for direct_plane, scratch of Cg *
// stack_shape(g).per_c values.
template <typename T>
void direct_frames(const Conv3dGeometry& g, const T* x, const T* wt, T* y, T* scratch, const GemmEpilogue<T>& ep,
                   const InputPrologue<T>& pro) {
  const StackShape st = stack_shape<T>(g);
  const std::int64_t Cg = g.Cg(), L = g.L(), frame = st.Hs * st.Ws, HoWo = g.Ho * g.Wo;
  using V = typename Vec<T>::type;
  constexpr std::int64_t kL = Vec<T>::kLanes, kBlock = kDirectVecs * kL;
  const bool unit = g.sH == 1 && g.sW == 1;
  const PlaneShape frames{st.Hs, st.Ws, st.phase};  // strided: phase planes, frames one after another
  // Zero each channel's stack, then store each input row at its place: with unit strides,
  // rows narrower than a vector in one masked load and store (Note [stacked fill]).
  for (std::int64_t c = 0; c < Cg; ++c) {
    T* dst = scratch + c * st.per_c;
    zero_values(dst, st.per_c);
    for (std::int64_t t = 0; t < g.T; ++t) {
      const T* src = x + (c * g.T + t) * g.H * g.W;
      const PlanePrologue<T> cp(pro, c);
      T* at = dst + st.base + t * frame;
      if (!unit) {
        place_phases(g, frames, src, at, cp);
      } else {
        for (std::int64_t j = 0; j < g.W; j += kL)  // one vector a row when it is narrow
          place_rows(src + j, g.H, std::min(kL, g.W - j), g.W, at + j, st.Ws, cp);
      }
    }
  }
  std::vector<std::int64_t> off(static_cast<std::size_t>(g.kH * g.kW));
  for (std::int64_t kh = 0; kh < g.kH; ++kh)
    for (std::int64_t kw = 0; kw < g.kW; ++kw)
      off[kh * g.kW + kw] =
          unit ? st.base + (kh * g.dH - g.pH) * st.Ws + kw * g.dW - g.pW : tap_offset(g, frames, kh, kw);
  for (std::int64_t q0 = 0; q0 < st.Q; q0 += kBlock) {
    V acc[kDirectOg][kDirectVecs];
    block_sums(g, off.data(), scratch, st.per_c, wt, q0, ep, acc);
    // Vector j holds grid positions [q, q + kL): the valid columns of each grid row r
    // (frame r / Hs, output row r % Hs < Ho) it meets, one masked store per channel.
    for (std::int64_t j = 0; j < kDirectVecs; ++j) {
      const std::int64_t q = q0 + j * kL, q_end = std::min(q + kL, st.Q);
      for (std::int64_t r = q / st.Ws; r * st.Ws < q_end; ++r) {
        const std::int64_t f = r / st.Hs, ho = r % st.Hs;
        if (ho >= g.Ho) continue;
        const std::int64_t a = std::max(q, r * st.Ws), b = std::min(q_end, r * st.Ws + g.Wo);
        if (a >= b) continue;
        // Lanes [a - q, b - q) go to output columns [a - r*Ws, ...) of row (f, ho).
        const std::int64_t at = f * HoWo + ho * g.Wo + (a - r * st.Ws) - (a - q);  // where lane 0 would go
        const std::uint32_t mask = ((std::uint32_t{1} << (b - q)) - 1) & ~((std::uint32_t{1} << (a - q)) - 1);
        for (std::int64_t o = 0; o < kDirectOg; ++o) {
          if (at >= 0) {
            store_lanes(y + o * L + at, acc[o][j], mask);
          } else {  // lane 0 would lie before the output: store the lanes one by one
            for (std::int64_t i = a - q; i < b - q; ++i) y[o * L + at + i] = acc[o][j][i];
          }
        }
      }
    }
  }
}

// Weight gradient on the phase planes of one sample-group:
// gw[o][c][kh][kw] += sum over frames and q of gy_grid[o][q] * planes_c[tap_offset + q],
// where gy_grid is the output gradient on the width-Wq grid, zero in the dropped columns.
// Vector accumulators, one per (c, kh, kw, o), live in acc (Cg*kH*kW*8 vectors) across
// frames; for each (c, kh) up to 3 x 8 of them stay in registers over the frame.

template <typename T>
std::int64_t grid_len(const Conv3dGeometry& g) {  // Ho * Wq rounded up to whole vectors
  constexpr std::int64_t kL = Vec<T>::kLanes;
  return (g.Ho * plane_shape(g).Wq + kL - 1) / kL * kL;
}

// Scratch values one frame of direct_plane_weight takes (phase planes of every channel,
// then the 8 output-gradient grids), and how many frames go in one chunk.
template <typename T>
std::int64_t weight_frame_scratch(const Conv3dGeometry& g) {
  return g.Cg() * plane_scratch(g) + kDirectOg * grid_len<T>(g);
}
template <typename T>
std::int64_t weight_chunk_frames(const Conv3dGeometry& g) {
  return std::clamp<std::int64_t>((std::int64_t{1} << 16) / weight_frame_scratch<T>(g), 1, g.To);
}

// Note [weight-gradient position blocks]: each run of taps (Note [flat tap runs]) streams
// the 8 output-gradient grids and its channel's planes past 24 accumulators: 11 vector
// loads per 24 FMAs. Over a whole chunk (up to 256 KB) those loads came from L2, about 40
// bytes a cycle at two FMAs a cycle, more than L2 delivers: the stem's weight gradient ran
// at 70 GFLOP/s, under its forward's 120. The runs now sweep blocks of 2 KiB of each grid
// (512 floats; a block spans several frames of small planes), all runs of all channels per
// block, so a block's 16 KiB of grids and the channel's planes stay in L1 while the 24
// accumulators of each run are loaded and stored once per block instead of once per chunk.
// Timing loop over conv3d_backward_weight (2 threads, 64 MiB written before each call,
// min of 6-12 calls, 3 interleaved runs), ms, whole chunk -> 2 KiB blocks: stem 1 x 16x224
// 24.4-27.9 -> 18.9-23.1, 4 x 8x112 11.9-12.2 -> 7.8-10.2; grouped 64 channels 16x56x56
// 6.2-6.7 -> 4.7-5.5, 128 of 16x28x28 3.2-3.5 -> 2.7-3.2, 4 x 64 of 8x28x28 3.4-3.8 ->
// 2.9-3.1, 4 x 128 of 8x14x14 1.78-1.98 -> 1.39-1.53; 7x7 planes and the stride-2 convs
// even (1 KiB and 1.5 KiB blocks: slower than 2 KiB at 56x56 and the stem, 2.5 KiB about
// the same).
constexpr std::int64_t kWeightBlockBytes = 2048;

// Frames are taken in chunks (weight_chunk_frames): the accumulators of each (c, kh) are
// loaded once per chunk, not once per frame, which matters for 7x7 and 4x4 planes where a
// frame is only a few vectors long. scratch holds weight_chunk_frames * weight_frame_scratch.
// next_x and next_gy: the sample-group computed next (null: none), whose first chunk the
// last chunk prefetches.
template <typename T>
void direct_plane_weight(const Conv3dGeometry& g, const T* x, const T* gy, typename Vec<T>::type* acc,
                         T* scratch, const T* next_x, const T* next_gy, const InputPrologue<T>& pro) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t kL = Vec<T>::kLanes, kKw = 3;
  const PlaneShape ps = plane_shape(g);
  const std::int64_t Cg = g.Cg(), per_c = plane_scratch(g), L = g.L(), HoWo = g.Ho * g.Wo, Qv = grid_len<T>(g);
  const std::int64_t fs = weight_frame_scratch<T>(g), chunk = weight_chunk_frames<T>(g);
  const bool narrow = g.sH == 1 && g.sW == 1 && g.W <= kL && g.Wo <= kL;
  const std::int64_t taps_c = g.kH * g.kW;  // taps of one input channel, flat: t = kh * kW + kw
  const std::vector<std::int64_t> offs = tap_offsets(g, ps);
  for (std::int64_t to0 = 0; to0 < g.To; to0 += chunk) {
    std::int64_t nf = 0;  // frames of this chunk that read the input
    for (std::int64_t to = to0; to < std::min(g.To, to0 + chunk); ++to) {
      const std::int64_t ti = to * g.sT - g.pT;
      if (ti < 0 || ti >= g.T) continue;
      T* slot = scratch + nf++ * fs;
      if (narrow) {  // rows within one vector, one phase (Note [stacked fill])
        for (std::int64_t c = 0; c < Cg; ++c) {
          T* dst = slot + c * per_c;
          zero_values(dst, per_c);
          place_rows(x + (c * g.T + ti) * g.H * g.W, g.H, g.W, g.W, dst + g.pH * ps.Wq + g.pW, ps.Wq,
                     PlanePrologue<T>(pro, c));
        }
        for (std::int64_t o = 0; o < kDirectOg; ++o) {
          T* dst = slot + Cg * per_c + o * Qv;
          zero_values(dst, Qv);
          place_rows(gy + o * L + to * HoWo, g.Ho, g.Wo, g.Wo, dst, ps.Wq);
        }
        continue;
      }
      for (std::int64_t c = 0; c < Cg; ++c)
        fill_phases(g, ps, x + (c * g.T + ti) * g.H * g.W, slot + c * per_c, PlanePrologue<T>(pro, c));
      // Each output-gradient row as vectors of masked loads (zeros past Wo), rows in order:
      // a row's vectors may spill into the rows after it, written later, but not past the
      // grid (narrow rows would reach the next grid or past the scratch); the last row's
      // stay inside its own, and the grid's tail is zeroed after it.
      for (std::int64_t o = 0; o < kDirectOg; ++o) {
        T* dst = slot + Cg * per_c + o * Qv;
        const T* src = gy + o * L + to * HoWo;
        for (std::int64_t ho = 0; ho < g.Ho; ++ho)
          for (std::int64_t j0 = 0; j0 < ps.Wq; j0 += kL) {
            const V v = load_lanes(src + ho * g.Wo + j0, first_lanes<T>(std::clamp<std::int64_t>(g.Wo - j0, 0, kL)));
            const std::int64_t room = ho + 1 < g.Ho ? Qv - (ho * ps.Wq + j0) : ps.Wq - j0;
            if (room >= kL)
              store_vec(dst + ho * ps.Wq + j0, v);
            else
              store_lanes(dst + ho * ps.Wq + j0, v, first_lanes<T>(room));
          }
        zero_values(dst + g.Ho * ps.Wq, Qv - g.Ho * ps.Wq);
      }
    }
    // The chunk filled next (the next frames of this sample-group, or the first of the next
    // one): its input planes and output-gradient frames, a line per vector step (Note
    // [plane prefetch]; a share per (c, kh) step, 130 lines at once, did not help).
    // conv3d_bench 16x224, min of 3 interleaved runs: stage2 (one-frame chunks) 2.51 -> 2.07
    // ms. Smaller planes looked 2-7% slower with it while conv3d_bench kept a layer's
    // operands in cache between iterations; with --cold (operands from memory, as in a
    // training step), min of 6 interleaved runs, 4 x 8x112: stage2 2.11 -> 1.70, stage3
    // 1.04 -> 0.90, stage4 and 5 even (0.66, 0.70 -> 0.66, 0.74); 16x224, min of 4: stage3
    // 2.08 -> 1.74, stage4 1.32 -> 1.11, stage5 0.81 -> 0.63, stride-2 stage3-5 1.65 -> 1.16,
    // 0.92 -> 0.86, 0.89 -> 0.61.
    const bool last = to0 + chunk >= g.To;
    const T* const px = last ? next_x : x;
    const T* const pgy = last ? next_gy : gy;
    const std::int64_t n0 = last ? 0 : to0 + chunk, n1 = std::min(g.To, n0 + chunk);
    const std::int64_t ti0 = std::max<std::int64_t>(0, n0 * g.sT - g.pT);
    const std::int64_t ti1 = std::min(g.T, (n1 - 1) * g.sT - g.pT + 1);
    PlanePrefetch<T> next_x_lines(px && ti0 < ti1 ? px + ti0 * g.H * g.W : nullptr, g.T * g.H * g.W,
                                  (ti1 - ti0) * g.H * g.W, Cg);
    PlanePrefetch<T> next_gy_lines(pgy ? pgy + n0 * HoWo : nullptr, L, (n1 - n0) * HoWo, kDirectOg);
    // Position blocks (Note [weight-gradient position blocks]): frames [f0, f1) of the
    // chunk, grid positions [qa, qb) of each.
    constexpr std::int64_t qblock = kWeightBlockBytes / static_cast<std::int64_t>(sizeof(T));
    static_assert(qblock % kL == 0);
    const std::int64_t fb = Qv >= qblock ? 1 : std::max<std::int64_t>(1, qblock / Qv);
    for (std::int64_t f0 = 0; f0 < nf; f0 += fb)
      for (std::int64_t qa = 0; qa < Qv; qa += qblock) {
        const std::int64_t f1 = std::min(nf, f0 + fb), qb = std::min(Qv, qa + qblock);
        for (std::int64_t c = 0; c < Cg; ++c)
          for (std::int64_t t0 = 0; t0 < taps_c; t0 += kKw) {
            V* a = acc + (c * taps_c + t0) * kDirectOg;  // a[kw * 8 + o] for tap t0 + kw
            // Note [flat tap runs]: taps t0 .. t0 + K - 1 in K x 8 accumulators, runs taken over
            // the channel's taps in flat order, across kernel rows: each run streams the output
            // gradient's 8 grids once, so the stem's 49 taps take 17 runs (16 of 3, one of 1)
            // instead of 21 per kernel row (3 + 3 + 1 for each of 7 rows). A 3x3 kernel still
            // takes 3 runs of 3. A last run of fewer than kKw taps sweeps only its own. Timing
            // loop over the stem's weight gradient (min of 20 calls, 4 interleaved runs), ms:
            // 4 x 8x112 3.93-4.24 -> 3.48-3.97, 1 x 16x224 7.81-8.83 -> 7.06-7.72.
            auto sweep = [&](auto k_c, auto with_prefetch) {
              constexpr std::int64_t K = decltype(k_c)::value;
              V r[K][kDirectOg];
              std::int64_t off[K];
    #pragma GCC unroll 3
              for (std::int64_t kw = 0; kw < K; ++kw) {
                off[kw] = c * per_c + offs[t0 + kw];
    #pragma GCC unroll 8
                for (std::int64_t o = 0; o < kDirectOg; ++o) r[kw][o] = a[kw * kDirectOg + o];
              }
              for (std::int64_t f = f0; f < f1; ++f) {
                const T* slot = scratch + f * fs;
                const T* gpad = slot + Cg * per_c;
                for (std::int64_t q = qa; q < qb; q += kL) {
                  if constexpr (decltype(with_prefetch)::value) {
                    if (next_x_lines.left)
                      next_x_lines.next();
                    else
                      next_gy_lines.next();
                  }
                  // Whole-vector loads (load_vec), unrolled: a memcpy per vector left in a loop
                  // was expanded as two 32-byte copies through the stack (g++ 12's tuning for
                  // that VM's CPU prefers 256-bit moves), read back as one 64-byte load that
                  // store forwarding cannot serve (Note [register accumulators]). Before -> after
                  // this and the forward's change together (not measured apart), --profile,
                  // batch 4 8x112 training: this weight gradient 23.6 -> 17.4-19.2 ms a step
                  // for the grouped convs, 14.5 -> 11.8-12.7 for the stem.
                  V xv[K];
    #pragma GCC unroll 3
                  for (std::int64_t kw = 0; kw < K; ++kw) xv[kw] = load_vec(slot + off[kw] + q);
    #pragma GCC unroll 8
                  for (std::int64_t o = 0; o < kDirectOg; ++o) {
                    V gv = load_vec(gpad + o * Qv + q);
                    // In a register: g++ otherwise folds the load into each of the three
                    // FMAs below (27 loads per 24 FMAs instead of 11).
    #if defined(__x86_64__) || defined(__i386__)
                    asm("" : "+v"(gv));
    #endif
    #pragma GCC unroll 3
                    for (std::int64_t kw = 0; kw < K; ++kw) r[kw][o] += gv * xv[kw];
                  }
                }
              }
    #pragma GCC unroll 3
              for (std::int64_t kw = 0; kw < K; ++kw)
    #pragma GCC unroll 8
                for (std::int64_t o = 0; o < kDirectOg; ++o) a[kw * kDirectOg + o] = r[kw][o];
            };
            auto taps = [&](auto k_c) {
              if (next_x_lines.left || next_gy_lines.left)
                sweep(k_c, std::true_type{});
              else
                sweep(k_c, std::false_type{});
            };
            const std::int64_t nkw = std::min(kKw, taps_c - t0);
            if (nkw == 3)
              taps(std::integral_constant<std::int64_t, 3>{});
            else if (nkw == 2)
              taps(std::integral_constant<std::int64_t, 2>{});
            else
              taps(std::integral_constant<std::int64_t, 1>{});
          }
      }
  }
}

}  // namespace

// The stacked frames' item has all frames of its channels, in L2 (small planes: one run
// each, not one a frame, whose reductions cost more than their sums at 7x7).
std::int64_t direct_sum_runs(const Conv3dGeometry& g) { return stacked_frames(g) ? 1 : g.To; }

bool direct_planes(const Conv3dGeometry& g) {
  return g.kT == 1 && g.Og() % kDirectOg == 0 && g.Cg() <= 16 && !g.pointwise();
}

template <typename T>
void direct_conv_forward(const Conv3dGeometry& g, const T* x, const T* w, T* y, const GemmEpilogue<T>& ep,
                         const InputPrologue<T>& pro, double* plane_sums) {
  const std::int64_t Cg = g.Cg(), Og = g.Og(), K = g.K(), L = g.L(), nob = Og / kDirectOg;
  // The statistics' parts of output channels [o0, o0 + count) of sample n, run f of
  // frames, just written (in L2).
  const std::int64_t runs = direct_sum_runs(g), run_len = L / runs;
  auto plane_parts = [&](std::int64_t n, std::int64_t o0, std::int64_t count, std::int64_t f) {
    run_sums(y + (n * g.O + o0) * L + f * run_len, L, count, run_len, plane_sums + 3 * ((n * runs + f) * g.O + o0));
  };
  // Note [scale in the weights]: the weight of each block of 8 output channels reordered to
  // (Cg, kH, kW, 8), times the epilogue's scale (inference batch norm): scale * conv(x, w) =
  // conv(x, scale * w), so the kernels' epilogue is the bias and the ReLU only.
  std::vector<T> wt(static_cast<std::size_t>(g.O * K));
  for (std::int64_t o = 0; o < g.O; ++o)
    for (std::int64_t k = 0; k < K; ++k)
      wt[(o / kDirectOg * K + k) * kDirectOg + o % kDirectOg] = ep.scale ? w[o * K + k] * ep.scale[o] : w[o * K + k];
  GemmEpilogue<T> ep_unscaled = ep;
  ep_unscaled.scale = nullptr;
  if (stacked_frames(g)) {  // items of (sample, 8 output channels), all frames at once
    const std::int64_t blocks = g.O / kDirectOg, items = g.N * blocks;
    auto run_item = [&](std::int64_t item) {
      const std::int64_t n = item / blocks, o0 = item % blocks * kDirectOg, gr = o0 / Og;
      direct_frames(g, x + (n * g.C + gr * Cg) * g.in_volume(), wt.data() + o0 * K, y + (n * g.O + o0) * L,
                    col_buffer<T>(Cg * stack_shape<T>(g).per_c), ep_unscaled.from_row(o0), pro.from_channel(gr * Cg));
      if (plane_sums) plane_parts(n, o0, kDirectOg, 0);  // all frames at once
    };
    if (items_parallel(items, kDirectOg * K * L)) {
#pragma omp parallel for schedule(dynamic)
      for (std::int64_t item = 0; item < items; ++item) run_item(item);
    } else {
      for (std::int64_t item = 0; item < items; ++item) run_item(item);
    }
    return;
  }
  // Items of (sample, group), frame by frame, each frame's planes filled once for all the
  // group's output-channel blocks (Note [output-channel blocks]).
  const std::int64_t items = g.N * g.groups, scratch = Cg * plane_scratch(g);
  const bool outer = items_parallel(items, Og * K * L);
  auto run_item = [&](std::int64_t item) {
    const std::int64_t n = item / g.groups, gr = item % g.groups;
    const T* xg = x + (n * g.C + gr * Cg) * g.in_volume();
    const T* wg = wt.data() + gr * Og * K;
    T* yg = y + (n * g.O + gr * Og) * L;
    const GemmEpilogue<T> group_ep = ep_unscaled.from_row(gr * Og);
    const InputPrologue<T> group_pro = pro.from_channel(gr * Cg);
    auto frame = [&](std::int64_t to, T* buf) {
      direct_plane(g, xg, wg, yg, to, buf, group_ep, nob, group_pro);
      if (plane_sums) plane_parts(n, gr * Og, Og, to);
    };
    if (outer) {  // this thread owns the item
      T* buf = col_buffer<T>(scratch);
      for (std::int64_t to = 0; to < g.To; ++to) frame(to, buf);
    } else {
#pragma omp parallel if (g.To > 1 && L * Og * K >= kMinParallelWork)
      {
        T* buf = col_buffer<T>(scratch);
#pragma omp for schedule(static)
        for (std::int64_t to = 0; to < g.To; ++to) frame(to, buf);
      }
    }
  };
  if (outer) {
#pragma omp parallel for schedule(dynamic)
    for (std::int64_t item = 0; item < items; ++item) run_item(item);
  } else {
    for (std::int64_t item = 0; item < items; ++item) run_item(item);
  }
}

// Each block of 8 output channels owns its slice of gw, so blocks can run in parallel with
// samples in order.
template <typename T>
void direct_conv_weight_grad(const Conv3dGeometry& g, const T* gy, const T* x, T* gw, const InputPrologue<T>& pro) {
  const std::int64_t Cg = g.Cg(), K = g.K(), L = g.L(), blocks = g.O / kDirectOg;
  auto run_block = [&](std::int64_t ob) {  // output channels [o0, o0 + 8) (Note [output-channel blocks])
    using V = typename Vec<T>::type;
    constexpr std::int64_t kL = Vec<T>::kLanes;
    const std::int64_t o0 = ob * kDirectOg, gr = o0 / g.Og();
    std::vector<V> acc(static_cast<std::size_t>(K * kDirectOg), V{});
    T* buf = col_buffer<T>(weight_chunk_frames<T>(g) * weight_frame_scratch<T>(g));
    const auto xs = [&](std::int64_t n) { return n < g.N ? x + (n * g.C + gr * Cg) * g.in_volume() : nullptr; };
    const auto gys = [&](std::int64_t n) { return n < g.N ? gy + (n * g.O + o0) * L : nullptr; };
    const InputPrologue<T> group_pro = pro.from_channel(gr * Cg);
    for (std::int64_t n = 0; n < g.N; ++n)
      direct_plane_weight(g, xs(n), gys(n), acc.data(), buf, xs(n + 1), gys(n + 1), group_pro);
    T* gwb = gw + o0 * K;
    for (std::int64_t k = 0; k < K; ++k)
      for (std::int64_t o = 0; o < kDirectOg; ++o) {
        T sum = 0;
        for (std::int64_t j = 0; j < kL; ++j) sum += acc[k * kDirectOg + o][j];
        gwb[o * K + k] = sum;
      }
  };
  if (items_parallel(blocks, g.N * kDirectOg * K * L)) {
#pragma omp parallel for schedule(dynamic)
    for (std::int64_t ob = 0; ob < blocks; ++ob) run_block(ob);
  } else {
    for (std::int64_t ob = 0; ob < blocks; ++ob) run_block(ob);
  }
}

#define VIDGRAD_INSTANTIATE(T)                                                                                  \
  template void direct_conv_forward<T>(const Conv3dGeometry&, const T*, const T*, T*, const GemmEpilogue<T>&,    \
                                       const InputPrologue<T>&, double*);                                       \
  template void direct_conv_weight_grad<T>(const Conv3dGeometry&, const T*, const T*, T*, const InputPrologue<T>&);
VIDGRAD_INSTANTIATE(float)
VIDGRAD_INSTANTIATE(double)
#undef VIDGRAD_INSTANTIATE

}  // namespace vidgrad::cpu
