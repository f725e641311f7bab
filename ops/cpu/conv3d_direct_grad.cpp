// The weight gradient of the direct kernels (conv3d_direct.cpp: convs with a 1 x kH x kW
// kernel, 8 output channels per group or a multiple of 8, at most 16 input channels per
// group), on the same zero-padded, stride-split frame planes (direct_planes.h).
#include "vidgrad/ops/cpu/direct_planes.h"

#include <algorithm>
#include <type_traits>
#include <vector>

namespace vidgrad::cpu {

namespace {

using namespace direct;

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
      if (narrow) {  // rows within one vector, one phase (Note [stacked fill], conv3d_direct.cpp)
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
                  // store forwarding cannot serve (Note [register accumulators] in
                  // conv3d_direct.cpp). Before -> after this and the forward's change together
                  // (not measured apart), --profile,
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

// Each block of 8 output channels owns its slice of gw, so blocks can run in parallel with
// samples in order.
template <typename T>
void direct_conv_weight_grad(const Conv3dGeometry& g, const T* gy, const T* x, T* gw, const InputPrologue<T>& pro) {
  if constexpr (std::is_same_v<T, float>)
    if (pair_frames_weight_grad(g, gy, x, gw, pro)) return;
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

#define VIDGRAD_INSTANTIATE(T) \
  template void direct_conv_weight_grad<T>(const Conv3dGeometry&, const T*, const T*, T*, const InputPrologue<T>&);
VIDGRAD_INSTANTIATE(float)
VIDGRAD_INSTANTIATE(double)
#undef VIDGRAD_INSTANTIATE

}  // namespace vidgrad::cpu
