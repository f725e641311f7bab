// The pieces the direct kernels' forward (conv3d_direct.cpp) and weight gradient
// (conv3d_direct_grad.cpp) share: the zero-padded, stride-split frame planes they compute
// on, the fills that copy (and normalise, Note [direct prologue]) input planes into them,
// their prefetch and the taps' offsets. Not installed API.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "vidgrad/ops/cpu/conv3d_internal.h"
#include "vidgrad/ops/cpu/simd.h"

namespace vidgrad::cpu::direct {

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

inline PlaneShape plane_shape(const Conv3dGeometry& g) {
  const std::int64_t Hq = (g.H + 2 * g.pH + g.sH - 1) / g.sH, Wq = (g.W + 2 * g.pW + g.sW - 1) / g.sW;
  return {Hq, Wq, Hq * Wq + kPlaneTail + (g.kW - 1) * g.dW};
}

// Values of scratch one channel's phase planes take.
inline std::int64_t plane_scratch(const Conv3dGeometry& g) { return g.sH * g.sW * plane_shape(g).phase; }

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

// dst[0, n) = 0 in whole vectors and a masked last one (Note [stacked fill] in
// conv3d_direct.cpp).
template <typename T>
inline void zero_values(T* dst, std::int64_t n) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t kL = Vec<T>::kLanes;
  std::int64_t i = 0;
  for (; i + kL <= n; i += kL) store_vec(dst + i, V{});
  if (i < n) store_lanes(dst + i, V{}, first_lanes<T>(n - i));
}

// `rows` rows of `width` <= one vector of values, row r from src + r * src_stride to
// dst + r * dst_stride: one masked load and store per row (Note [stacked fill] in
// conv3d_direct.cpp). Through pro (Note [direct prologue]).
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
inline std::vector<std::int64_t> tap_offsets(const Conv3dGeometry& g, const PlaneShape& ps) {
  std::vector<std::int64_t> off(static_cast<std::size_t>(g.kH * g.kW));
  for (std::int64_t kh = 0; kh < g.kH; ++kh)
    for (std::int64_t kw = 0; kw < g.kW; ++kw) off[kh * g.kW + kw] = tap_offset(g, ps, kh, kw);
  return off;
}

}  // namespace vidgrad::cpu::direct
