// Pooling on the CPU, one input plane per thread at a time, so backward scatters never
// collide across threads.
#include "vidgrad/ops/cpu/pool_cpu.h"

#include "vidgrad/core/parallel.h"

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

}  // namespace

// Separably: first each input row's sums over the kernel columns (one strided pass per
// kw into a row of Wo partial sums, every input row once), then each output row as the sum
// of its window's (t, h) partial rows, contiguous adds. Summing every output's 3x3 window
// straight from the input instead re-read each input row for every output row and kernel
// column that covers it.
template <typename T>
void avg_pool3d_forward(const Pool3dGeometry& g, const T* x, T* y) {
  const std::int64_t in_plane = g.T * g.H * g.W, out_plane = g.To * g.Ho * g.Wo;
  const RowTaps r = row_taps(g);
  // Column phases of an input row: phase b holds columns b, b + sW, ...; output wo of
  // kernel column kw then reads element wo + (kw - pW - b) / sW of phase b = (kw - pW) mod sW,
  // so every kw is a contiguous pass.
  const std::int64_t phase_len = (g.W + g.sW - 1) / g.sW;
  const std::vector<T> cw(r.cw.begin(), r.cw.end());  // column divisors, exact small integers
  std::vector<std::int64_t> src_off(static_cast<std::size_t>(g.kW));  // kernel column kw: its phase and shift
  for (std::int64_t kw = 0; kw < g.kW; ++kw) {
    const std::int64_t off = kw - g.pW, b = ((off % g.sW) + g.sW) % g.sW;
    src_off[kw] = (g.sW == 1 ? 0 : b * phase_len) + (off - b) / g.sW;
  }
#pragma omp parallel if (g.planes * in_plane >= kMinParallelWork)
  {
    std::vector<T> partial(static_cast<std::size_t>(g.T * g.H * g.Wo)), phases(static_cast<std::size_t>(g.sW * phase_len));
#pragma omp for schedule(static)
    for (std::int64_t p = 0; p < g.planes; ++p) {
      const T* xp = x + p * in_plane;
      for (std::int64_t row = 0; row < g.T * g.H; ++row) {
        const T* in = xp + row * g.W;
        T* ps = partial.data() + row * g.Wo;
        const T* ph = in;  // unit stride: the row itself
        // Rows under 16 columns: strided passes beat building the phases. From 16 on the
        // de-interleave wins (profile, inference batch 4 8x112, where the shortcut pools read
        // rows of 56, 28 and 14: avg_pool3d 5.57/5.46/4.37 -> 4.53/4.10/3.65 ms per step,
        // three interleaved pairs, against strided passes below 64 columns).
        if (g.sW > 1 && g.W < 16) {
          std::fill(ps, ps + g.Wo, T(0));
          for (std::int64_t kw = 0; kw < g.kW; ++kw)
            for (std::int64_t wo = r.lo[kw]; wo < r.hi[kw]; ++wo) ps[wo] += in[wo * g.sW + kw - g.pW];
          continue;
        }
        if (g.sW == 2) {
          T *even = phases.data(), *odd = phases.data() + phase_len;
          for (std::int64_t i = 0; i < g.W / 2; ++i) {  // a de-interleave the compiler vectorises
            even[i] = in[2 * i];
            odd[i] = in[2 * i + 1];
          }
          if (g.W % 2) even[g.W / 2] = in[g.W - 1];
          ph = phases.data();
        } else if (g.sW > 2) {
          for (std::int64_t b = 0; b < g.sW; ++b)
            for (std::int64_t i = 0; b + i * g.sW < g.W; ++i) phases[b * phase_len + i] = in[b + i * g.sW];
          ph = phases.data();
        }
        std::fill(ps, ps + g.Wo, T(0));
        for (std::int64_t kw = 0; kw < g.kW; ++kw) {
          const T* src = ph + src_off[kw];  // src[wo] = input column wo * sW + kw - pW
#pragma omp simd
          for (std::int64_t wo = r.lo[kw]; wo < r.hi[kw]; ++wo) ps[wo] += src[wo];
        }
      }
      for (std::int64_t to = 0; to < g.To; ++to)
        for (std::int64_t ho = 0; ho < g.Ho; ++ho) {
          const Window &wt = r.wt[to], &wh = r.wh[ho];
          T* yrow = y + p * out_plane + (to * g.Ho + ho) * g.Wo;
          std::fill(yrow, yrow + g.Wo, T(0));
          for (std::int64_t t = wt.lo; t < wt.hi; ++t)
            for (std::int64_t h = wh.lo; h < wh.hi; ++h) {
              const T* ps = partial.data() + (t * g.H + h) * g.Wo;
#pragma omp simd
              for (std::int64_t wo = 0; wo < g.Wo; ++wo) yrow[wo] += ps[wo];
            }
          const T dr = static_cast<T>(row_divisor(g, wt, wh));
#pragma omp simd
          for (std::int64_t wo = 0; wo < g.Wo; ++wo) {
            const T d = dr * cw[wo];
            yrow[wo] = d > T(0) ? yrow[wo] / d : T(0);
          }
        }
    }
  }
}

template <typename T>
void avg_pool3d_backward(const Pool3dGeometry& g, const T* gy, T* gx) {
  const std::int64_t in_plane = g.T * g.H * g.W, out_plane = g.To * g.Ho * g.Wo;
  const RowTaps r = row_taps(g);
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
