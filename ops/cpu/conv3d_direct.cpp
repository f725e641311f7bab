// Direct kernels for convs with a 1 x kH x kW kernel, 8 output channels per group or a
// multiple of 8 taken 8 at a time, and at most 16 input channels per group (SEVNet's 1x3x3
// gw8 and its 1x7x7 stem): the forward, on zero-padded, stride-split frame planes (Notes in
// direct_planes.h and below). conv3d_cpu.cpp dispatches here; the unit-stride input
// gradient is the same forward kernel on the transposed conv, the strided one is in
// conv3d_strided_grad.cpp, the weight gradient in conv3d_direct_grad.cpp.
#include "vidgrad/ops/cpu/direct_planes.h"

#include <algorithm>
#include <vector>

namespace vidgrad::cpu {

namespace {

using namespace direct;

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

#define VIDGRAD_INSTANTIATE(T)                                                                               \
  template void direct_conv_forward<T>(const Conv3dGeometry&, const T*, const T*, T*, const GemmEpilogue<T>&, \
                                       const InputPrologue<T>&, double*);
VIDGRAD_INSTANTIATE(float)
VIDGRAD_INSTANTIATE(double)
#undef VIDGRAD_INSTANTIATE

}  // namespace vidgrad::cpu
