// Pooling on the CPU, one input plane per thread at a time, so backward scatters never
// collide across threads.
#include "vidgrad/ops/cpu/pool_cpu.h"

#include "vidgrad/core/aligned_vector.h"
#include "vidgrad/core/parallel.h"
#include "vidgrad/ops/cpu/simd.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace vidgrad::cpu {

namespace {

// Window of output o along one axis: [lo, hi) clipped to the input, and the padded size.
struct Window {
  std::int64_t lo, hi, padded;
};

inline Window window(std::int64_t o, std::int64_t stride, std::int64_t pad, std::int64_t k, std::int64_t size) {
  std::int64_t lo = o * stride - pad;
  std::int64_t hi = std::min(lo + k, size + pad);
  const std::int64_t padded = hi - lo;
  return {std::max<std::int64_t>(lo, 0), std::min(hi, size), padded};
}

// Calls f(out_index, wt, wh, ww) for every output of one plane.
template <typename F>
void for_each_window(const Pool3dGeometry& g, F&& f) {
  for (std::int64_t to = 0; to < g.To; ++to) {
    const Window wt = window(to, g.sT, g.pT, g.kT, g.T);
    for (std::int64_t ho = 0; ho < g.Ho; ++ho) {
      const Window wh = window(ho, g.sH, g.pH, g.kH, g.H);
      for (std::int64_t wo = 0; wo < g.Wo; ++wo) {
        const Window ww = window(wo, g.sW, g.pW, g.kW, g.W);
        f((to * g.Ho + ho) * g.Wo + wo, wt, wh, ww);
      }
    }
  }
}

// Average pooling works on whole rows: per kernel column kw, the range of outputs wo that
// read an input column (one strided pass over a row, no per-output window arithmetic), and
// per axis the windows of the output rows.
struct RowTaps {
  std::vector<Window> wt, wh;
  std::vector<std::int64_t> lo, hi;  // per kw: outputs wo in [lo, hi) read an input column
  std::vector<std::int64_t> cw;      // per wo: columns counted by the divisor
};

inline RowTaps row_taps(const Pool3dGeometry& g) {
  RowTaps r;
  for (std::int64_t to = 0; to < g.To; ++to) r.wt.push_back(window(to, g.sT, g.pT, g.kT, g.T));
  for (std::int64_t ho = 0; ho < g.Ho; ++ho) r.wh.push_back(window(ho, g.sH, g.pH, g.kH, g.H));
  for (std::int64_t kw = 0; kw < g.kW; ++kw) {
    const std::int64_t off = kw - g.pW;  // wo * sW + off inside [0, W)
    std::int64_t lo = off >= 0 ? 0 : (-off + g.sW - 1) / g.sW;
    std::int64_t hi = g.W - 1 - off < 0 ? 0 : (g.W - 1 - off) / g.sW + 1;
    hi = std::min(hi, g.Wo);
    r.lo.push_back(std::min(lo, hi));
    r.hi.push_back(hi);
  }
  for (std::int64_t wo = 0; wo < g.Wo; ++wo) {
    const Window ww = window(wo, g.sW, g.pW, g.kW, g.W);
    r.cw.push_back(g.count_include_pad ? ww.padded : ww.hi - ww.lo);
  }
  return r;
}

inline std::int64_t row_divisor(const Pool3dGeometry& g, const Window& wt, const Window& wh) {
  return g.count_include_pad ? wt.padded * wh.padded : (wt.hi - wt.lo) * (wh.hi - wh.lo);
}

// Note [shortcut pool]: SEVNet's downsampling shortcut pools 1x3x3 with stride 2 and
// padding 1. The general row code below summed a padded row and then took every output's
// three columns value by value (forward), and zeroed the input gradient before adding each
// window's share to it, row by row (backward): 9-18 GB/s forward and 6-11 GB/s backward at
// SEVNet-G8's 16x224 shapes, against about 65 GB/s for a triad loop on the two cores. For
// this shape, with both phases of a row split by shuffles (simd.h):
// - forward: output row ho sums input rows 2ho - 1 .. 2ho + 1 into one row v; with
//   e[m] = v[2m] and o[m] = v[2m + 1], output wo is o[wo - 1] + e[wo] + o[wo];
// - backward: each output row's shares s spread to one input row as (s[m], s[m] + s[m+1])
//   pairs (column 2m lies in window m only, 2m + 1 in windows m and m + 1); input row 2ho is
//   output row ho's spread, row 2ho + 1 the sum of rows ho and ho + 1's: every input row
//   written once, none zeroed first.
// A timing loop over the kernels (2 threads, 64 MiB written before each call, best of 20
// calls, min of 2 interleaved runs; 16-frame planes), ms, before -> after, forward and
// backward: 32 channels of 112x112 1.96 -> 1.38 and 2.83 -> 1.83, 64 of 56x56 0.90 -> 0.47
// and 1.53 -> 0.50, 128 of 28x28 0.49 -> 0.41 and 0.91 -> 0.38, 256 of 14x14 0.44 -> 0.34
// and 0.67 -> 0.34. (Small planes stay far from the memory's speed: a 14-column row is
// less than a vector of either phase.)
bool shortcut_pool(const Pool3dGeometry& g) {
  return g.kT == 1 && g.sT == 1 && g.pT == 0 && g.kH == 3 && g.sH == 2 && g.pH == 1 && g.kW == 3 && g.sW == 2 &&
         g.pW == 1;
}

// Values per row buffer: room for whole vectors past either phase of a row.
inline std::int64_t shortcut_row_buffer(const Pool3dGeometry& g, std::int64_t lanes) {
  return (g.W + 4 * lanes) / lanes * lanes;
}

// Note [narrow shortcut pool]: on rows of two vectors or less (SEVNet-G8's 28x28, 14x14 and
// 7x7 planes at 8x112), the row code spent its time on loop overheads: a 7-column row went
// through a summed-row buffer, a deinterleave and a 4-output loop. There each row is one or
// two masked loads and each output row is computed in registers: the window rows' sum v,
// its even and odd lanes (e[m] = v[2m], o[m] = v[2m + 1]; lanes past W read zeros), output wo
// = o[wo - 1] + e[wo] + o[wo] (o shifted by a lane), in the row code's order of additions
// so the values are the same; the backward spreads each output row's shares s to input
// columns as zip(s, s + s shifted), the pairs (s[m], s[m] + s[m + 1]). A timing loop over
// avg_pool3d_forward / backward (2 threads, 64 MiB written before each call, best of 20
// calls, 4 interleaved runs; SEVNet-G8's shortcut pools at 4 x 8x112), ms, forward and
// backward, before -> after: 28x28 (256 planes of 8 frames) 0.40 -> 0.36 and 0.33 -> 0.23,
// 14x14 (512) 0.34 -> 0.21 and 0.30 -> 0.13, 7x7 (1024) 0.34 -> 0.12 and 0.27 -> 0.08.

// v shifted by one lane toward higher (up = true: lane m takes v[m - 1], lane 0 zero) or
// lower lanes (lane m takes v[m + 1], the last lane zero).
template <typename T>
inline typename Vec<T>::type shift_lane(typename Vec<T>::type v, bool up) {
  constexpr std::int64_t kL = Vec<T>::kLanes;
  typename LaneIndex<T>::type idx_up, idx_down;
  for (std::int64_t m = 0; m < kL; ++m) {
    idx_up[m] = m == 0 ? kL : m - 1;  // lane kL: the zero vector's first
    idx_down[m] = m + 1 < kL ? m + 1 : kL;
  }
  return __builtin_shuffle(v, typename Vec<T>::type{}, up ? idx_up : idx_down);
}

// The divisors of one output row's columns, a vector (lanes past Wo: 1).
template <typename T>
inline typename Vec<T>::type row_divisors(const std::vector<T>& cw, T dr) {
  typename Vec<T>::type d{};
  for (std::size_t wo = 0; wo < static_cast<std::size_t>(Vec<T>::kLanes); ++wo) d[wo] = wo < cw.size() ? dr * cw[wo] : T(1);
  return d;
}

// What both narrow kernels take from the geometry: an input row of up to two vectors as
// masks of its lanes [0, kL) and [kL, 2 kL), the output row's mask (Wo <= kL), and each
// output row's divisors as a vector.
template <typename T>
struct NarrowRows {
  using V = typename Vec<T>::type;
  std::uint32_t lo, hi, out;
  bool two;  // rows of more than one vector
  std::vector<V> divisors;
  NarrowRows(const Pool3dGeometry& g, const RowTaps& r)
      : lo(first_lanes<T>(g.W)),
        hi(first_lanes<T>(std::max<std::int64_t>(0, g.W - Vec<T>::kLanes))),
        out(first_lanes<T>(g.Wo)),
        two(g.W > Vec<T>::kLanes),
        divisors(static_cast<std::size_t>(g.Ho)) {
    const std::vector<T> cw(r.cw.begin(), r.cw.end());
    for (std::int64_t ho = 0; ho < g.Ho; ++ho)
      divisors[ho] = row_divisors(cw, static_cast<T>(row_divisor(g, r.wt[0], r.wh[ho])));
  }
};

template <typename T>
void shortcut_pool_forward_narrow(const Pool3dGeometry& g, const RowTaps& r, const T* x, T* y) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t kL = Vec<T>::kLanes;
  const std::int64_t frames = g.planes * g.T;
  const NarrowRows<T> nr(g, r);
  auto load = [&](const T* row, V& v0, V& v1) {
    v0 = load_lanes(row, nr.lo);
    v1 = nr.two ? load_lanes(row + kL, nr.hi) : V{};
  };
#pragma omp parallel for schedule(static) if (frames * g.H * g.W >= kMinParallelWork)
  for (std::int64_t f = 0; f < frames; ++f) {
    const T* xf = x + f * g.H * g.W;
    T* yf = y + f * g.Ho * g.Wo;
    for (std::int64_t ho = 0; ho < g.Ho; ++ho) {
      const T* r1 = xf + 2 * ho * g.W;
      V v0, v1, u0, u1;
      load(r1, v0, v1);
      if (ho > 0) {
        load(r1 - g.W, u0, u1);
        v0 = u0 + v0;
        v1 = u1 + v1;
      }
      if (2 * ho + 1 < g.H) {
        load(r1 + g.W, u0, u1);
        v0 = v0 + u0;
        v1 = v1 + u1;
      }
      const V e = even_lanes<T>(v0, v1), o = odd_lanes<T>(v0, v1);
      const V sum = shift_lane<T>(o, true) + e + o;
      const V dv = nr.divisors[ho];
      store_lanes(yf + ho * g.Wo, dv > T(0) ? sum / dv : V{}, nr.out);
    }
  }
}

template <typename T>
void shortcut_pool_backward_narrow(const Pool3dGeometry& g, const RowTaps& r, const T* gy, T* gx) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t kL = Vec<T>::kLanes;
  const std::int64_t frames = g.planes * g.T;
  const NarrowRows<T> nr(g, r);
  auto store = [&](T* row, const V& v0, const V& v1) {
    store_lanes(row, v0, nr.lo);
    if (nr.two) store_lanes(row + kL, v1, nr.hi);
  };
#pragma omp parallel for schedule(static) if (frames * g.H * g.W >= kMinParallelWork)
  for (std::int64_t f = 0; f < frames; ++f) {
    const T* gf = gy + f * g.Ho * g.Wo;
    T* xf = gx + f * g.H * g.W;
    V prev0{}, prev1{};
    for (std::int64_t ho = 0; ho < g.Ho; ++ho) {
      const V dv = nr.divisors[ho];
      const V s = dv > T(0) ? load_lanes(gf + ho * g.Wo, nr.out) / dv : V{};  // zero past Wo
      const V s2 = s + shift_lane<T>(s, false);
      const V cur0 = zip_low<T>(s, s2), cur1 = zip_high<T>(s, s2);  // (s[m], s[m] + s[m + 1]) pairs
      T* row = xf + 2 * ho * g.W;
      store(row, cur0, cur1);
      if (ho > 0) store(row - g.W, prev0 + cur0, prev1 + cur1);  // row 2ho - 1: windows ho - 1 and ho
      prev0 = cur0;
      prev1 = cur1;
    }
    if (2 * g.Ho - 1 < g.H) store(xf + (2 * g.Ho - 1) * g.W, prev0, prev1);  // the last, odd row
  }
}

template <typename T>
void shortcut_pool_forward(const Pool3dGeometry& g, const RowTaps& r, const T* x, T* y) {
  constexpr std::int64_t kL = Vec<T>::kLanes;
  if (g.W <= 2 * kL) return shortcut_pool_forward_narrow(g, r, x, y);  // Note [narrow shortcut pool]
  const std::int64_t frames = g.planes * g.T, len = shortcut_row_buffer(g, kL), half = g.W / 2;
  std::vector<T> cw(r.cw.begin(), r.cw.end());  // column divisors, exact small integers
#pragma omp parallel if (frames * g.H * g.W >= kMinParallelWork)
  {
    AlignedVector<T> buf(static_cast<std::size_t>(3 * len), T(0));
    T* v = buf.data();
    T* e = v + len;
    T* o = e + len;  // o[0] = 0 (column -1); o[1 + m] = v[2m + 1]
#pragma omp for schedule(static)
    for (std::int64_t f = 0; f < frames; ++f) {
      const T* xf = x + f * g.H * g.W;
      T* yf = y + f * g.Ho * g.Wo;
      for (std::int64_t ho = 0; ho < g.Ho; ++ho) {
        const T* r1 = xf + 2 * ho * g.W;  // row 2ho < H: ho < Ho = ceil(H / 2)
        const T* r0 = ho > 0 ? r1 - g.W : nullptr;
        const T* r2 = 2 * ho + 1 < g.H ? r1 + g.W : nullptr;
        if (r0 && r2) {
#pragma omp simd
          for (std::int64_t w = 0; w < g.W; ++w) v[w] = r0[w] + r1[w] + r2[w];
        } else {
          const T* other = r0 ? r0 : r2;
#pragma omp simd
          for (std::int64_t w = 0; w < g.W; ++w) v[w] = r1[w] + (other ? other[w] : T(0));
        }
        deinterleave_row(v, g.W, e, o + 1);
        o[1 + half] = T(0);  // column W (past an odd row's end)
        const T dr = static_cast<T>(row_divisor(g, r.wt[0], r.wh[ho]));
        T* yrow = yf + ho * g.Wo;
#pragma omp simd
        for (std::int64_t wo = 0; wo < g.Wo; ++wo) {
          const T d = dr * cw[wo];
          yrow[wo] = d > T(0) ? (o[wo] + e[wo] + o[wo + 1]) / d : T(0);
        }
      }
    }
  }
}

template <typename T>
void shortcut_pool_backward(const Pool3dGeometry& g, const RowTaps& r, const T* gy, T* gx) {
  constexpr std::int64_t kL = Vec<T>::kLanes;
  if (g.W <= 2 * kL) return shortcut_pool_backward_narrow(g, r, gy, gx);  // Note [narrow shortcut pool]
  const std::int64_t frames = g.planes * g.T, len = shortcut_row_buffer(g, kL);
  std::vector<T> cw(r.cw.begin(), r.cw.end());
#pragma omp parallel if (frames * g.H * g.W >= kMinParallelWork)
  {
    AlignedVector<T> buf(static_cast<std::size_t>(5 * len), T(0));
    T* s = buf.data();        // shares of one output row, zero past Wo
    T* s2 = s + len;          // s[m] + s[m + 1]
    T* spread[2] = {s2 + len, s2 + 2 * len};  // the current and the previous output row's spread
#pragma omp for schedule(static)
    for (std::int64_t f = 0; f < frames; ++f) {
      const T* gf = gy + f * g.Ho * g.Wo;
      T* xf = gx + f * g.H * g.W;
      for (std::int64_t ho = 0; ho < g.Ho; ++ho) {
        const T dr = static_cast<T>(row_divisor(g, r.wt[0], r.wh[ho]));
        const T* grow = gf + ho * g.Wo;
#pragma omp simd
        for (std::int64_t wo = 0; wo < g.Wo; ++wo) {
          const T d = dr * cw[wo];
          s[wo] = d > T(0) ? grow[wo] / d : T(0);
        }
#pragma omp simd
        for (std::int64_t m = 0; m < g.Wo; ++m) s2[m] = s[m] + s[m + 1];
        T* cur = spread[ho % 2];
        const T* prev = spread[(ho + 1) % 2];
        interleave_rows(s, s2, g.Wo, cur);  // cur[2m] = s[m], cur[2m + 1] = s[m] + s[m + 1]
        T* row = xf + 2 * ho * g.W;
        std::copy(cur, cur + g.W, row);
        if (ho > 0) {  // row 2ho - 1: windows ho - 1 and ho
          T* up = row - g.W;
#pragma omp simd
          for (std::int64_t w = 0; w < g.W; ++w) up[w] = prev[w] + cur[w];
        }
      }
      if (2 * g.Ho - 1 < g.H) {  // the last, odd row: window Ho - 1 only
        const T* last = spread[(g.Ho - 1) % 2];
        std::copy(last, last + g.W, xf + (2 * g.Ho - 1) * g.W);
      }
    }
  }
}

}  // namespace

// Separably, with no per-output window arithmetic:
// - strided (SEVNet's 1x3x3 stride-2 shortcut pools): per output row, first the sum of its
//   window's input rows into one zero-padded row (contiguous adds), then that row's kernel
//   columns. Summing each input row's kernel columns first (a strided pass over every
//   input row, or building its column phases) did the strided work on twice as many rows
//   (a timing loop over avg_pool3d_forward at the shortcut pools' shapes, 2 threads, 3 runs
//   each, ms: rows of 14 0.76 -> 0.72, of 28 0.85 -> 0.43, of 56 1.23 -> 0.51-0.59, of
//   112 1.48 -> 1.14-1.22).
// - unit stride: each input row's sums over the kernel columns (contiguous passes), then
//   each output row as the sum of its window's partial rows.
template <typename T>
void avg_pool3d_forward(const Pool3dGeometry& g, const T* x, T* y) {
  const std::int64_t in_plane = g.T * g.H * g.W, out_plane = g.To * g.Ho * g.Wo;
  const RowTaps r = row_taps(g);
  if (shortcut_pool(g)) return shortcut_pool_forward(g, r, x, y);  // Note [shortcut pool]
  const std::vector<T> cw(r.cw.begin(), r.cw.end());  // column divisors, exact small integers
  const bool strided = g.sW > 1;
  // Divides an output row by its window sizes (count_include_pad or not).
  auto divide = [&](T* yrow, const Window& wt, const Window& wh) {
    const T dr = static_cast<T>(row_divisor(g, wt, wh));
#pragma omp simd
    for (std::int64_t wo = 0; wo < g.Wo; ++wo) {
      const T d = dr * cw[wo];
      yrow[wo] = d > T(0) ? yrow[wo] / d : T(0);
    }
  };
#pragma omp parallel if (g.planes * in_plane >= kMinParallelWork)
  {
    AlignedVector<T> partial(static_cast<std::size_t>(strided ? 0 : g.T * g.H * g.Wo));
    // One zero-padded row: pW zeros, W columns, then zeros up to the last window's end.
    AlignedVector<T> padded(static_cast<std::size_t>(strided ? g.pW + std::max(g.W, g.Wo * g.sW + g.kW) : 0), T(0));
#pragma omp for schedule(static)
    for (std::int64_t p = 0; p < g.planes; ++p) {
      const T* xp = x + p * in_plane;
      T* yp = y + p * out_plane;
      if (strided) {
        for (std::int64_t to = 0; to < g.To; ++to)
          for (std::int64_t ho = 0; ho < g.Ho; ++ho) {
            const Window &wt = r.wt[to], &wh = r.wh[ho];
            T* v = padded.data() + g.pW;  // v[w], zero outside [0, W)
            std::fill(v, v + g.W, T(0));
            for (std::int64_t t = wt.lo; t < wt.hi; ++t)
              for (std::int64_t h = wh.lo; h < wh.hi; ++h) {
                const T* in = xp + (t * g.H + h) * g.W;
#pragma omp simd
                for (std::int64_t w = 0; w < g.W; ++w) v[w] += in[w];
              }
            T* yrow = yp + (to * g.Ho + ho) * g.Wo;
            const T* u = padded.data();  // u[j] = v[j - pW]
            if (g.sW == 2 && g.kW == 3) {
              for (std::int64_t wo = 0; wo < g.Wo; ++wo) yrow[wo] = u[2 * wo] + u[2 * wo + 1] + u[2 * wo + 2];
            } else {
              for (std::int64_t wo = 0; wo < g.Wo; ++wo) {
                T acc = 0;
                for (std::int64_t kw = 0; kw < g.kW; ++kw) acc += u[wo * g.sW + kw];
                yrow[wo] = acc;
              }
            }
            divide(yrow, wt, wh);
          }
        continue;
      }
      for (std::int64_t row = 0; row < g.T * g.H; ++row) {
        const T* in = xp + row * g.W;
        T* ps = partial.data() + row * g.Wo;
        std::fill(ps, ps + g.Wo, T(0));
        for (std::int64_t kw = 0; kw < g.kW; ++kw) {
          const std::int64_t off = kw - g.pW;  // output wo reads input column wo + off
#pragma omp simd
          for (std::int64_t wo = r.lo[kw]; wo < r.hi[kw]; ++wo) ps[wo] += in[wo + off];
        }
      }
      for (std::int64_t to = 0; to < g.To; ++to)
        for (std::int64_t ho = 0; ho < g.Ho; ++ho) {
          const Window &wt = r.wt[to], &wh = r.wh[ho];
          T* yrow = yp + (to * g.Ho + ho) * g.Wo;
          std::fill(yrow, yrow + g.Wo, T(0));
          for (std::int64_t t = wt.lo; t < wt.hi; ++t)
            for (std::int64_t h = wh.lo; h < wh.hi; ++h) {
              const T* ps = partial.data() + (t * g.H + h) * g.Wo;
#pragma omp simd
              for (std::int64_t wo = 0; wo < g.Wo; ++wo) yrow[wo] += ps[wo];
            }
          divide(yrow, wt, wh);
        }
    }
  }
}

template <typename T>
void avg_pool3d_backward(const Pool3dGeometry& g, const T* gy, T* gx) {
  const std::int64_t in_plane = g.T * g.H * g.W, out_plane = g.To * g.Ho * g.Wo;
  const RowTaps r = row_taps(g);
  if (shortcut_pool(g)) return shortcut_pool_backward(g, r, gy, gx);  // Note [shortcut pool]
  // Per output row, its gradient spread over one input row's columns (every kernel column's
  // share), then added to each input row of the window as one contiguous pass: the strided
  // scalar adds per (input row, kernel column) ran kH * kW times over the row.
#pragma omp parallel for schedule(static) if (g.planes * in_plane >= kMinParallelWork)
  for (std::int64_t p = 0; p < g.planes; ++p) {
    T* gxp = gx + p * in_plane;
    std::fill(gxp, gxp + in_plane, T(0));
    std::vector<T> share(static_cast<std::size_t>(g.Wo)), spread(static_cast<std::size_t>(g.W));
    for (std::int64_t to = 0; to < g.To; ++to)
      for (std::int64_t ho = 0; ho < g.Ho; ++ho) {
        const Window &wt = r.wt[to], &wh = r.wh[ho];
        const T* grow = gy + p * out_plane + (to * g.Ho + ho) * g.Wo;
        const std::int64_t dr = row_divisor(g, wt, wh);
        for (std::int64_t wo = 0; wo < g.Wo; ++wo) {
          const std::int64_t d = dr * r.cw[wo];
          share[wo] = d > 0 ? grow[wo] / static_cast<T>(d) : T(0);
        }
        std::fill(spread.begin(), spread.end(), T(0));
        for (std::int64_t kw = 0; kw < g.kW; ++kw) {
          const std::int64_t off = kw - g.pW;
          for (std::int64_t wo = r.lo[kw]; wo < r.hi[kw]; ++wo) spread[wo * g.sW + off] += share[wo];
        }
        for (std::int64_t t = wt.lo; t < wt.hi; ++t)
          for (std::int64_t h = wh.lo; h < wh.hi; ++h) {
            T* row = gxp + (t * g.H + h) * g.W;
            const T* sp = spread.data();
#pragma omp simd
            for (std::int64_t w = 0; w < g.W; ++w) row[w] += sp[w];
          }
      }
  }
}

template <typename T>
void max_pool3d_forward(const Pool3dGeometry& g, const T* x, T* y, std::int64_t* argmax) {
  const std::int64_t in_plane = g.T * g.H * g.W, out_plane = g.To * g.Ho * g.Wo;
#pragma omp parallel for schedule(static) if (g.planes * in_plane >= kMinParallelWork)
  for (std::int64_t p = 0; p < g.planes; ++p) {
    const T* xp = x + p * in_plane;
    for_each_window(g, [&](std::int64_t o, const Window& wt, const Window& wh, const Window& ww) {
      T best = -std::numeric_limits<T>::infinity();
      std::int64_t at = -1;
      for (std::int64_t t = wt.lo; t < wt.hi; ++t)
        for (std::int64_t h = wh.lo; h < wh.hi; ++h)
          for (std::int64_t w = ww.lo; w < ww.hi; ++w) {
            const std::int64_t i = (t * g.H + h) * g.W + w;
            // Once best is NaN nothing compares greater, so a NaN propagates as in PyTorch.
            if (at < 0 || xp[i] > best || std::isnan(xp[i])) {
              best = xp[i];
              at = i;
            }
          }
      y[p * out_plane + o] = best;
      argmax[p * out_plane + o] = at;
    });
  }
}

template <typename T>
void max_pool3d_backward(const Pool3dGeometry& g, const T* gy, const std::int64_t* argmax, T* gx) {
  const std::int64_t in_plane = g.T * g.H * g.W, out_plane = g.To * g.Ho * g.Wo;
#pragma omp parallel for schedule(static) if (g.planes * in_plane >= kMinParallelWork)
  for (std::int64_t p = 0; p < g.planes; ++p) {
    T* gxp = gx + p * in_plane;
    std::fill(gxp, gxp + in_plane, T(0));
    for (std::int64_t o = 0; o < out_plane; ++o) {
      const std::int64_t i = argmax[p * out_plane + o];
      if (i >= 0) gxp[i] += gy[p * out_plane + o];
    }
  }
}

#define VIDGRAD_INSTANTIATE(T)                                                                       \
  template void avg_pool3d_forward<T>(const Pool3dGeometry&, const T*, T*);                          \
  template void avg_pool3d_backward<T>(const Pool3dGeometry&, const T*, T*);                         \
  template void max_pool3d_forward<T>(const Pool3dGeometry&, const T*, T*, std::int64_t*);           \
  template void max_pool3d_backward<T>(const Pool3dGeometry&, const T*, const std::int64_t*, T*);
VIDGRAD_INSTANTIATE(float)
VIDGRAD_INSTANTIATE(double)
#undef VIDGRAD_INSTANTIATE

}  // namespace vidgrad::cpu
