// The input gradient of strided convs whose transposed conv the direct kernels take
// (SEVNet's downsampling 1x3x3 gw8): by stride phase (Note [input gradient by phase]) or,
// on small planes, on the output gradient spread over the stride-1 grid. Both compute
// through conv3d_forward / conv3d_backward_input on unit-stride convs; conv3d_cpu.cpp
// dispatches here.
#include "vidgrad/ops/cpu/conv3d_internal.h"

#include "vidgrad/core/storage.h"
#include "vidgrad/ops/cpu/simd.h"

#include <omp.h>

#include <algorithm>
#include <vector>

namespace vidgrad::cpu {

namespace {

// Whether the direct kernels take g's transposed conv (input and output channels swapped),
// on which both strided paths below compute the input gradient.
bool transposed_direct(const Conv3dGeometry& g) {
  Conv3dGeometry t = g;
  t.C = g.O;
  t.O = g.C;
  return direct_planes(t);
}

// Note [input gradient by phase]: for a conv with spatial stride s (SEVNet's downsampling
// 1x3x3, s = 2), input row h = s*i + r - p (phase r of the padded rows) receives only the
// taps kh = r + s*j, from output row i - j: per phase (r_h, r_w) the input gradient is a
// unit-stride conv of gy with the sub-kernel w[r_h + s*j][r_w + s*j'] flipped, padded by
// its size - 1, which the direct-plane kernel computes (on the transposed channels, as for
// unit strides). Its outputs i start at ceil((p - r) / s) and are scattered to every s-th
// row and column of gx. The phases together do exactly the useful multiplies; spreading gy
// onto the unit-stride grid (zeros between) did s*s times as many.
// Below this many outputs per plane (SEVNet's 4x4) the phases' per-conv costs outweigh
// the saved multiplies. First measured with the threshold at 100: conv3d_bench, 4 x 8x112,
// stage4/5 downsampling input gradient 0.70/0.62 ms spread, 0.80/0.73 by phase; above it
// (min of 3 interleaved runs, 2 threads), stage2/3: 4 x 8x112 4.14/1.33 -> 2.60/0.93 ms,
// 16x224 6.84/2.78 -> 5.35/2.26. With the phase convs on stacked frames (Notes [shared
// padding], [strided stacks]), a timing loop over conv3d_backward_input at 4 x 8x112 (min
// of 60 calls, 2 interleaved runs), spread / by phase, ms: 14x14 -> 7x7 (49 outputs, 128
// channels) 0.57-0.68 / 0.45, 7x7 -> 4x4 (16, 256) 0.36 / 0.47.
constexpr std::int64_t kPhaseMinPlane = 40;

bool strided_direct_input_grad(const Conv3dGeometry& g) {
  if (g.kT != 1 || g.sT != 1 || g.pT != 0 || g.dH != 1 || g.dW != 1 || (g.sH == 1 && g.sW == 1)) return false;
  if (g.pH >= g.kH || g.pW >= g.kW) return false;  // every phase's padding stays >= 0 below
  return transposed_direct(g);  // the phases' convs (kernel sizes vary)
}

struct PhaseAxis {
  std::int64_t taps;      // sub-kernel size J = ceil((k - r) / s)
  std::int64_t first;     // first i that lands inside the input
  std::int64_t size;      // last i that lands inside the input, + 1
  std::int64_t computed;  // i < computed read some output (out + J - 1); the rest get no tap
};

// One axis of phase r: kernel k, stride s, padding p, input size `in`, output size `out`.
PhaseAxis phase_axis(std::int64_t r, std::int64_t k, std::int64_t s, std::int64_t p, std::int64_t in,
                     std::int64_t out) {
  PhaseAxis a;
  a.taps = k > r ? (k - r + s - 1) / s : 0;
  a.first = p > r ? (p - r + s - 1) / s : 0;  // s*i + r - p >= 0
  a.size = (in - 1 + p - r) / s + 1;          // s*i + r - p <= in - 1
  a.computed = a.taps > 0 ? std::min(a.size, out + a.taps - 1) : 0;
  return a;
}

// Phase (rh, rw): the unit-stride transposed conv on the output gradient, whose output
// has (computed_h, computed_w) per plane.
struct Phase {
  PhaseAxis ah, aw;
  bool has;           // some input row and column of the phase reads the output
  std::int64_t taps;  // sub-kernel values per group: Cg * Og * J_h * J_w
};

Phase make_phase(const Conv3dGeometry& g, std::int64_t rh, std::int64_t rw) {
  Phase ph;
  ph.ah = phase_axis(rh, g.kH, g.sH, g.pH, g.H, g.Ho);
  ph.aw = phase_axis(rw, g.kW, g.sW, g.pW, g.W, g.Wo);
  ph.has = ph.ah.computed > ph.ah.first && ph.aw.computed > ph.aw.first;
  ph.taps = g.Cg() * g.Og() * ph.ah.taps * ph.aw.taps;
  return ph;
}

// The phase's conv over `samples` samples and `groups` groups of g's channels.
Conv3dGeometry phase_geometry(const Conv3dGeometry& g, const Phase& ph, std::int64_t samples, std::int64_t groups) {
  Conv3dGeometry t = g;
  t.N = samples;
  t.groups = groups;
  t.C = groups * g.Og();
  t.O = groups * g.Cg();
  t.H = g.Ho;
  t.W = g.Wo;
  t.kH = ph.ah.taps;
  t.kW = ph.aw.taps;
  t.sH = t.sW = 1;
  t.pH = ph.ah.taps - 1;
  t.pW = ph.aw.taps - 1;
  t.Ho = ph.ah.computed;
  t.Wo = ph.aw.computed;
  return t;
}

// The sub-kernels of phase (rh, rw) for every group, (groups, Cg, Og, J_h, J_w):
// wt[gr][c][o][jh][jw] = w[gr Og + o][c][rh + sH (J_h-1-jh)][rw + sW (J_w-1-jw)].
template <typename T>
std::vector<T> phase_kernel(const Conv3dGeometry& g, const Phase& ph, std::int64_t rh, std::int64_t rw, const T* w) {
  const std::int64_t Cg = g.Cg(), Og = g.Og(), Jh = ph.ah.taps, Jw = ph.aw.taps;
  std::vector<T> wt(static_cast<std::size_t>(g.groups * ph.taps));
  for (std::int64_t gr = 0; gr < g.groups; ++gr)
    for (std::int64_t c = 0; c < Cg; ++c)
      for (std::int64_t o = 0; o < Og; ++o)
        for (std::int64_t jh = 0; jh < Jh; ++jh)
          for (std::int64_t jw = 0; jw < Jw; ++jw) {
            const std::int64_t kh = rh + g.sH * (Jh - 1 - jh), kw = rw + g.sW * (Jw - 1 - jw);
            wt[(((gr * Cg + c) * Og + o) * Jh + jh) * Jw + jw] = w[(((gr * Og + o) * Cg + c) * g.kH + kh) * g.kW + kw];
          }
  return wt;
}

// Note [phases per item]: with a large input gradient (the batch's over 8 MB: 4 x 8x112,
// the 32-channel stride-2 conv's 56x56 input, 12.8 MB), the phase convs and the interleave
// that writes gx run item by item, (sample, group) pairs shared between threads: an item's
// output gradient (8 channels) is read by its sH * sW phase convs from L2, and their
// outputs (together as large as the item's gx) stay in L2 until its rows of gx are written.
// Phase by phase over the whole batch, the output gradient was read from memory once per
// phase and the phase outputs went to memory and came back. A timing loop over
// conv3d_backward_input (2 threads, 64 MiB written before each call, min of 30, 2 runs),
// whole batch / per item, ms: 4 x 8x112 32 channels 56x56 -> 28x28 1.23-1.24 / 1.07; 64
// channels 28x28 -> 14x14 0.60-0.64 / 0.70-0.74 and 128 of 14x14 -> 7x7 0.45 / 0.52 (the
// per-call costs of 4 small convs per item outweigh the traffic saved there), so smaller
// gradients stay whole-batch.
constexpr std::int64_t kPhaseItemBytes = std::int64_t{8} << 20;

// Per column phase of a row phase the outputs go to their own buffers; the rows of gx in
// that row phase are then written whole, column by column from the phase each belongs to
// (two interleaved sources for stride 2, a loop the compiler vectorises with permutes).
template <typename T>
void phase_input_grad(const Conv3dGeometry& g, const T* gy, const T* w, T* gx) {
  const std::int64_t Cg = g.Cg(), Og = g.Og(), HW = g.H * g.W;
  std::vector<Phase> phases;  // [rh * sW + rw]
  std::vector<std::vector<T>> kernels;
  std::int64_t height = 0, width = 0;  // largest computed_h, computed_w
  for (std::int64_t rh = 0; rh < g.sH; ++rh)
    for (std::int64_t rw = 0; rw < g.sW; ++rw) {
      phases.push_back(make_phase(g, rh, rw));
      kernels.push_back(phases.back().has ? phase_kernel(g, phases.back(), rh, rw, w) : std::vector<T>());
      height = std::max(height, phases.back().ah.computed);
      width = std::max(width, phases.back().aw.computed);
    }
  const std::int64_t per = std::max<std::int64_t>(height * width, 1);  // values per plane of one phase buffer
  // Stride 2 with every column phase computed for all its columns: rows are two interleaved sources.
  const bool pairs = g.sW == 2 && phases[0].aw.computed == phases[0].aw.size &&
                     phases[1].aw.computed == phases[1].aw.size;
  // Samples [n0, n0 + samples) and groups [gr0, gr0 + groups) (all of them, or one group of
  // one sample), phase outputs in `out` (sW buffers of planes * per values).
  auto run = [&](std::int64_t n0, std::int64_t samples, std::int64_t gr0, std::int64_t groups, T* out) {
    const std::int64_t planes = samples * groups * Cg * g.T;
    const T* gy_c = gy + (n0 * g.O + gr0 * Og) * g.To * g.Ho * g.Wo;
    T* gx_c = gx + (n0 * g.C + gr0 * Cg) * g.T * HW;
    for (std::int64_t rh = 0; rh < g.sH; ++rh) {
      const PhaseAxis& ah = phases[rh * g.sW].ah;
      if (ah.first >= ah.size) continue;  // no input row in this phase
      for (std::int64_t rw = 0; rw < g.sW; ++rw) {
        const Phase& ph = phases[rh * g.sW + rw];
        if (ph.has)
          conv3d_forward<T>(phase_geometry(g, ph, samples, groups), gy_c,
                            kernels[rh * g.sW + rw].data() + gr0 * ph.taps, out + rw * planes * per, {});
      }
      const bool has0 = phases[rh * g.sW].has, has1 = g.sW > 1 && phases[rh * g.sW + 1].has;
      auto src_of = [&](std::int64_t rw, std::int64_t pl, std::int64_t i) {  // a phase output's (planes, rows, cols)
        return out + rw * planes * per + (pl * ah.computed + i) * phases[rh * g.sW + rw].aw.computed;
      };
#pragma omp parallel for schedule(static) if (!omp_in_parallel() && planes * (ah.size - ah.first) * g.W >= kMinParallelWork)
      for (std::int64_t pl = 0; pl < planes; ++pl)
        for (std::int64_t i = ah.first; i < ah.size; ++i) {
          T* dst = gx_c + pl * HW + (g.sH * i + rh - g.pH) * g.W;
          if (pairs && has0 && has1 && i < ah.computed) {
            // Column w = 2m + e is phase (e + pW) % 2 at j = m + (e + pW) / 2.
            const T* a = src_of(g.pW % 2, pl, i) + g.pW / 2;
            const T* b = src_of((g.pW + 1) % 2, pl, i) + (g.pW + 1) / 2;
            const std::int64_t half = g.W / 2;
#pragma omp simd
            for (std::int64_t m = 0; m < half; ++m) {
              dst[2 * m] = a[m];
              dst[2 * m + 1] = b[m];
            }
            if (g.W % 2) dst[g.W - 1] = a[half];
            continue;
          }
          for (std::int64_t wi = 0; wi < g.W; ++wi) {  // general: column by column
            const std::int64_t rw = (wi + g.pW) % g.sW, j = (wi + g.pW) / g.sW;
            const Phase& ph = phases[rh * g.sW + rw];
            dst[wi] = ph.has && i < ah.computed && j < ph.aw.computed ? src_of(rw, pl, i)[j] : T(0);
          }
        }
    }
  };
  const std::int64_t items = g.N * g.groups, item_planes = Cg * g.T, item_buffer = g.sW * item_planes * per;
  const bool per_item = g.N * g.C * g.T * HW * static_cast<std::int64_t>(sizeof(T)) > kPhaseItemBytes &&
                        items_parallel(items, item_planes * HW);
  if (per_item) {
    const int threads = omp_get_max_threads();
    const Storage out_buf(static_cast<std::size_t>(threads * item_buffer) * sizeof(T), Device::cpu());  // block cache
#pragma omp parallel for schedule(static)
    for (std::int64_t item = 0; item < items; ++item)
      run(item / g.groups, 1, item % g.groups, 1, static_cast<T*>(out_buf.data()) + omp_get_thread_num() * item_buffer);
    return;
  }
  const Storage out_buf(static_cast<std::size_t>(items * item_buffer) * sizeof(T), Device::cpu());  // block cache
  run(0, g.N, 0, g.groups, static_cast<T*>(out_buf.data()));
}

// Note [stride-2 input gradient in lanes]: SEVNet's downsampling 1x3x3 convs (stride 2,
// padding 1, 8 channels a group) scatter each output-gradient value to a 3x3 window of
// every other input row and column. Input row h takes the kernel rows kh with h + 1 - kh
// even (one for even h, two for odd h), from output-gradient row (h + 1 - kh) / 2; within
// such a row, input column 2m takes only tap kw = 1 of gy column m, and column 2m + 1 taps
// kw = 2 of column m and kw = 0 of column m + 1. So for a vector of gy columns m (A = gy[m
// ..], B = gy[m + 1 ..]) the even input columns are sum w1 A and the odd ones sum w2 A +
// w0 B over (o, kh): three FMAs with broadcast weights per gy vector and input channel,
// exactly the useful multiplies, 8 input channels x (even, odd) = 16 accumulators; the two
// halves are interleaved (zip_low, zip_high) as the row is stored, whole, once. By phase
// (Note [input gradient by phase]) the same gradient took four small convs into buffers
// and an interleaving pass. conv3d_bench --batch=4 --frames=8 --size=112 --threads=2
// --cold, input gradient, two alternations, ms, by phase -> in lanes: stage 2 (56x56 ->
// 28x28) 1.77-1.88 -> 0.75-0.78, stage 3 1.20-1.30 -> 0.39-0.43, stage 4 0.72-0.76 ->
// 0.32-0.33, stage 5 (7x7 -> 4x4) 0.55-0.61 -> 0.34; `vidgrad bench --model sevnet_g8
// --batch 4 --frames 8 --size 112 --threads 2 --steps 10 --warmup 3`, three alternations,
// s a step: 0.1740 / 0.1692 / 0.1725 -> 0.1667 / 0.1672 / 0.1659 (2026-11-24). The odd
// columns' two products are two statements, so two FMAs: as one sum g++ 12 made them a
// multiply, an FMA and an add (warm, medians of four alternations, ms: stage 3 0.418 ->
// 0.399, stage 4 0.371 -> 0.345, stage 5 0.351 -> 0.340; stage 2 even, 0.967 -> 0.966).
bool lanes_stride2_input_grad(const Conv3dGeometry& g) {
  return g.kT == 1 && g.sT == 1 && g.pT == 0 && g.dT == 1 && g.kH == 3 && g.kW == 3 && g.sH == 2 && g.sW == 2 &&
         g.pH == 1 && g.pW == 1 && g.dH == 1 && g.dW == 1 && g.To == g.T && g.Cg() % 8 == 0 &&
         g.Ho == (g.H + 1) / 2 && g.Wo == (g.W + 1) / 2;
}

template <typename T>
void lanes_stride2_input_grad_impl(const Conv3dGeometry& g, const T* gy, const T* w, T* gx) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t kL = Vec<T>::kLanes, kC = 8;  // input channels a block
  const std::int64_t Cg = g.Cg(), Og = g.Og(), HW = g.H * g.W, HoWo = g.Ho * g.Wo, L = g.L();
  const std::int64_t cblocks = Cg / kC;
  // wt[((gr * cblocks + cb) * Og + o) * 9 + kh * 3 + kw][c]: the 8 input channels' weights
  // for one (o, kh, kw) side by side, broadcast one at a time.
  // Filled by all threads (Note [direct weights per call]).
  T* const wt = weight_buffer<T, WeightSlot::kReordered>(g.groups * Cg * Og * 9);
#pragma omp parallel for collapse(2) schedule(static) if (weights_parallel(g.groups * Cg * Og * 9))
  for (std::int64_t gr = 0; gr < g.groups; ++gr)
    for (std::int64_t o = 0; o < Og; ++o)
      for (std::int64_t c = 0; c < Cg; ++c)
        for (std::int64_t k = 0; k < 9; ++k)
          wt[(((gr * cblocks + c / kC) * Og + o) * 9 + k) * kC + c % kC] = w[((gr * Og + o) * Cg + c) * 9 + k];
  const std::int64_t items = g.N * g.groups * cblocks * g.T;
  auto run_item = [&](std::int64_t item) {
    const std::int64_t t = item % g.T, b = item / g.T;  // b = (n * groups + gr) * cblocks + cb
    const std::int64_t cb = b % cblocks, ng = b / cblocks, n = ng / g.groups, gr = ng % g.groups;
    const T* gyf = gy + (n * g.O + gr * Og) * L + t * HoWo;          // output channel o at o * L
    T* gxf = gx + (n * g.C + gr * Cg + cb * kC) * g.T * HW + t * HW;  // input channel c at c * T * HW
    const T* wb = wt + (gr * cblocks + cb) * Og * 9 * kC;
    for (std::int64_t h = 0; h < g.H; ++h) {
      std::int64_t taps[2], rows[2], n_taps = 0;  // kernel rows kh and the gy rows they read
      for (std::int64_t kh = 0; kh < 3; ++kh) {
        const std::int64_t r2 = h + 1 - kh;
        if (r2 % 2 == 0 && r2 >= 0 && r2 / 2 < g.Ho) {
          taps[n_taps] = kh;
          rows[n_taps++] = r2 / 2;
        }
      }
      for (std::int64_t m0 = 0; m0 < g.Wo; m0 += kL) {
        const std::uint32_t mask_a = first_lanes<T>(g.Wo - m0), mask_b = first_lanes<T>(g.Wo - m0 - 1);
        V even[kC], odd[kC];
#pragma GCC unroll 8
        for (std::int64_t c = 0; c < kC; ++c) even[c] = odd[c] = V{};
        for (std::int64_t i = 0; i < n_taps; ++i) {
          const std::int64_t kh = taps[i];
          for (std::int64_t o = 0; o < Og; ++o) {
            const T* src = gyf + o * L + rows[i] * g.Wo + m0;
            const V a = load_lanes(src, mask_a), bv = load_lanes(src + 1, mask_b);
            const T* w3 = wb + (o * 9 + kh * 3) * kC;  // kw = 0, 1, 2 at w3, w3 + kC, w3 + 2 kC
#pragma GCC unroll 8
            for (std::int64_t c = 0; c < kC; ++c) {
              even[c] += w3[kC + c] * a;
              odd[c] += w3[2 * kC + c] * a;  // two statements: two FMAs (as one sum g++ made it
              odd[c] += w3[c] * bv;          // a multiply, an FMA and an add)
            }
          }
        }
        // Input columns 2 m0 .. 2 m0 + 2 kL, clipped to W.
        const std::int64_t w0 = 2 * m0;
        const std::uint32_t lo = first_lanes<T>(g.W - w0), hi = g.W - w0 > kL ? first_lanes<T>(g.W - w0 - kL) : 0u;
#pragma GCC unroll 8
        for (std::int64_t c = 0; c < kC; ++c) {
          T* dst = gxf + c * g.T * HW + h * g.W + w0;
          store_lanes(dst, zip_low<T>(even[c], odd[c]), lo);
          if (hi) store_lanes(dst + kL, zip_high<T>(even[c], odd[c]), hi);
        }
      }
    }
  };
  if (items_parallel(items, kC * Og * 9 * HW)) {
#pragma omp parallel for schedule(static)
    for (std::int64_t item = 0; item < items; ++item) run_item(item);
  } else {
    for (std::int64_t item = 0; item < items; ++item) run_item(item);
  }
}

}  // namespace

template <typename T>
bool direct_strided_input_grad(const Conv3dGeometry& g, const T* gy, const T* w, T* gx) {
  const std::int64_t L = g.L();
  if (lanes_stride2_input_grad(g)) {
    lanes_stride2_input_grad_impl(g, gy, w, gx);
    return true;
  }
  if (strided_direct_input_grad(g) && g.Ho * g.Wo >= kPhaseMinPlane) {
    phase_input_grad(g, gy, w, gx);
    return true;
  }
  if (transposed_direct(g) && g.kT == 1 && g.sT == 1 && g.pT == 0 && (g.sH > 1 || g.sW > 1)) {
    // Strided grouped convs with small output planes: the input gradient of a stride s
    // conv is that of the stride-1 conv with the same padding given gy spread onto the
    // stride-1 output grid (zeros in between), which the direct-plane kernel computes;
    // 1/(sH*sW) of its multiplies are useful, but it is one conv, not sH*sW of them.
    Conv3dGeometry u = g;
    u.sH = u.sW = 1;
    u.Ho = g.H + 2 * g.pH - g.dH * (g.kH - 1);
    u.Wo = g.W + 2 * g.pW - g.dW * (g.kW - 1);
    const std::size_t bytes = static_cast<std::size_t>(g.N * g.O * g.To * u.Ho * u.Wo) * sizeof(T);
    const Storage spread(bytes, Device::cpu());  // from the block cache: no fresh pages each call
    T* sp = static_cast<T*>(spread.data());
#pragma omp parallel for schedule(static) if (g.N * g.O * L >= kMinParallelWork)
    for (std::int64_t p = 0; p < g.N * g.O * g.To; ++p)
      for (std::int64_t h = 0; h < u.Ho; ++h) {
        T* row = sp + (p * u.Ho + h) * u.Wo;
        std::fill(row, row + u.Wo, T(0));
        if (h % g.sH != 0 || h / g.sH >= g.Ho) continue;
        const T* src = gy + (p * g.Ho + h / g.sH) * g.Wo;
        for (std::int64_t wo = 0; wo < g.Wo; ++wo) row[wo * g.sW] = src[wo];
      }
    conv3d_backward_input(u, sp, w, gx);
    return true;
  }
  return false;
}

template bool direct_strided_input_grad<float>(const Conv3dGeometry&, const float*, const float*, float*);
template bool direct_strided_input_grad<double>(const Conv3dGeometry&, const double*, const double*, double*);

}  // namespace vidgrad::cpu
