// Direct kernels for convs with a 1 x kH x kW kernel, 8 output channels per group or a
// multiple of 8 taken 8 at a time, and at most 16 input channels per group (SEVNet's 1x3x3
// gw8 and its 1x7x7 stem): the forward, on zero-padded, stride-split frame planes (Notes in
// direct_planes.h and below). conv3d_cpu.cpp dispatches here; the unit-stride input
// gradient is the same forward kernel on the transposed conv, the strided one is in
// conv3d_strided_grad.cpp, the weight gradient in conv3d_direct_grad.cpp.
#include "vidgrad/ops/cpu/direct_planes.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
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

#if defined(__AVX512F__)
// The convs the frame-pair kernels compute: 1x3x3, padding 1, 8 channels a group in and out.
bool pair_conv(const Conv3dGeometry& g) {
  return g.kT == 1 && g.sT == 1 && g.pT == 0 && g.To == g.T && g.kH == 3 && g.kW == 3 && g.pH == 1 && g.pW == 1 &&
         g.dH == 1 && g.dW == 1 && g.Cg() == 8 && g.Og() == 8;
}

// Unit stride, output as large as the input.
bool same_size(const Conv3dGeometry& g) { return g.sH == 1 && g.sW == 1 && g.Ho == g.H && g.Wo == g.W; }

// Stride 2 in both directions, to half the input's height and width (rounded up).
bool halving(const Conv3dGeometry& g) {
  return g.sH == 2 && g.sW == 2 && g.Ho == (g.H + 1) / 2 && g.Wo == (g.W + 1) / 2;
}

// Note [frame pairs in lanes]: on small planes (7x7 and 4x4 at SEVNet's last stages) the
// plane kernels above leave a quarter to a half of their lanes on padding (a 7x7 frame is
// 8x8 grid positions, a 4x4 one 5x5) and stored outputs lane by lane. With 8 channels a
// group, 16 lanes hold instead the 8 output channels of two frames of one output position
// (lane 2o + k: channel o, frame k of the pair), and every lane is an output: each tap's
// weights are one vector (w[o][c][tap] in lanes 2o and 2o + 1), and the input is one 64-bit
// broadcast of channel c of both frames at the tap's position, from a zero-padded scratch
// holding each position's 8 channels x 2 frames side by side (one cache line), packed by
// 16x16 transposes. Blocks of R rows of W outputs (R W <= 16 accumulators) address the
// scratch at compile-time offsets from one pointer; the outputs go back to channel-frame
// rows by one more transpose and masked stores. float only (double lanes are 8). With
// stride 2 (the downsampling convs from 14x14 and 7x7 inputs) the taps are the same
// compile-time offsets on the input's padded grid, output positions two apart: the
// stage-4 and stage-5 downsampling forwards at batch 4 8x112 took 0.50-0.53 and 0.43 ms
// a step on phase planes, 0.45-0.46 and 0.22-0.24 in pairs (--profile, three alternations).
// conv3d_bench --batch=4 --frames=8 --size=112 --threads=2, warm, two alternations, ms,
// planes -> pairs: 7x7 forward 0.288, 0.289 -> 0.240, 0.249, input gradient 0.313, 0.308
// -> 0.287, 0.276; 4x4 0.299, 0.299 -> 0.173, 0.170 and 0.433, 0.441 -> 0.202, 0.202. In
// the step (`vidgrad bench ... --profile`, three alternations) the 256- and 512-channel
// forwards and input gradients took 5.25 / 5.58 / 5.27 -> 4.59 / 4.65 / 4.55 ms at batch 4
// 8x112; at batch 1 16x224 the 14x14 ones about the same, the 7x7 ones 4-10% shorter.
// Each next item's input is prefetched and one pair at a time is packed: the first
// version, without the prefetch and packing all pairs first, ran the 7x7 forward from
// memory (--cold) at 0.52-0.79 ms against the planes' 0.40.
bool pair_frames(const Conv3dGeometry& g) {
  if (!pair_conv(g)) return false;
  if (g.sH == 1 && g.sW == 1) return same_size(g) && (g.W == 4 || g.W == 7 || g.W == 14);
  // Stride 2 to 4- and 7-wide outputs (from 28-wide inputs the plane kernels were faster
  // in the step: 0.72-0.77 ms against 0.78-0.80 at batch 4 8x112).
  return halving(g) && (g.W == 7 || g.W == 14);
}

using V16 = Vec<float>::type;

inline V16 pair_broadcast(const float* p) {  // (p[0], p[1]) in every pair of lanes
  double d;
  std::memcpy(&d, p, sizeof d);
  return reinterpret_cast<V16>(_mm512_set1_pd(d));
}

// Note [pair kernels in registers]: inlined into pair_item, pair_rows' accumulators went to
// the stack (g++ 12: 42 stack accesses around its 126 FMAs at 14x14, accumulators read and
// written through memory in the FMAs), and where R W = 16 or at stride 2 g++ also kept the
// broadcasts one tap shares with the next in registers, more than the 32 there are. Out of
// line, with the taps' input pointer opaque to the compiler (an empty asm) where that
// sharing spilled, every kernel keeps its accumulators in registers and broadcasts each
// value from memory as the FMA needs it (no stack access in any pair_rows). The weight
// gradient's loop (pair_weight_item) had the same problem worse: the positions one output
// column shares with the next carried through general registers and the stack, three
// instructions a broadcast; with the pointer opaque it is one vbroadcastsd per FMA. The
// same rows in isolation (all in L1, one thread) run at 97-99% of the FMA peak, 87% at
// stride 2 from 14-wide planes. conv3d_bench --batch=4
// --frames=8 --size=112 --threads=2, warm, medians of four interleaved runs, ms, before ->
// after (2026-11-24, AMD VM): forward 7x7 0.443 -> 0.393, 4x4 0.477 -> 0.336, stride 2 to
// 7x7 0.428 -> 0.348, to 4x4 0.316 -> 0.221; input gradient 7x7 0.501 -> 0.407, 4x4 0.519
// -> 0.361 (14x14, already without stack accumulators once out of line, unchanged); weight
// gradient (--cold) 4x4 0.599 -> 0.544, stride 2 to 7x7 0.592 -> 0.538, to 14x14 0.892 ->
// 0.839.

// Output rows h0 .. h0 + R - 1 of one frame pair (stride S): acc[r W + w] (lanes 2o + k),
// from the pair's padded scratch sp ((H + 2) x (Wi + 2) positions x 16) and wtab
// ([c][tap][16]). Out of line and with kOpaqueTaps: Note [pair kernels in registers].
template <int Wi, int W, int R, int S>
[[gnu::noinline]] void pair_rows(const float* sp, const float* wtab, std::int64_t h0, V16* acc) {
  constexpr int Wp = Wi + 2, N = R * W;
  constexpr bool kOpaqueTaps = N > 14 || S == 2;
  V16 a[N];
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) a[i] = V16{};
  const float* base = sp + S * h0 * Wp * 16;  // output row h0's windows: padded row S h0
  for (int c = 0; c < 8; ++c) {
    const float* bc = base + 2 * c;
    const float* wc = wtab + c * 9 * 16;
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) {
      const V16 wv = load_vec(wc + t * 16);
      const float* bt = bc + ((t / 3) * Wp + t % 3) * 16;
      if constexpr (kOpaqueTaps) asm("" : "+r"(bt));
#pragma GCC unroll 16
      for (int i = 0; i < N; ++i) a[i] += wv * pair_broadcast(bt + (S * (i / W) * Wp + S * (i % W)) * 16);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) acc[i] = a[i];
}

// The 16 rows (channel r / 2, frame 2 fp + r % 2; zero past T) of 8 channels (at src, T x
// HW each) at positions [p0, p0 + n) through pro, transposed: v[j] is position p0 + j's.
inline void pack_pair_block(const float* src, std::int64_t T, std::int64_t HW, std::int64_t fp, std::int64_t p0,
                            std::int64_t n, const InputPrologue<float>& pro, V16 (&v)[16]) {
  for (std::int64_t r = 0; r < 16; ++r) {
    const std::int64_t c = r / 2, f = 2 * fp + r % 2;
    v[r] = f < T ? load_lanes(src + (c * T + f) * HW + p0, first_lanes<float>(n)) : V16{};
    if (pro.active() && f < T) v[r] = relu_fma<float>(v[r], V16{} + pro.scale[c], V16{} + pro.shift[c]);
  }
  transpose_lanes<float>(v);
}

// Frame pair fp of 8 channels (src, T frames of H x Wi) through pro into the pair's padded
// scratch ((H + 2) x (Wi + 2) positions x 16; its border is left as it is: zero).
template <int Wi>
inline void pack_pair_padded(const float* src, std::int64_t H, std::int64_t T, std::int64_t fp,
                             const InputPrologue<float>& pro, float* scratch) {
  constexpr std::int64_t Wp = Wi + 2;
  const std::int64_t HW = H * Wi;
  for (std::int64_t p0 = 0; p0 < HW; p0 += 16) {
    const std::int64_t n = std::min<std::int64_t>(16, HW - p0);
    V16 v[16];
    pack_pair_block(src, T, HW, fp, p0, n, pro, v);
    for (std::int64_t j = 0; j < n; ++j) {
      const std::int64_t h = (p0 + j) / Wi, w = (p0 + j) % Wi;
      store_vec(scratch + ((h + 1) * Wp + w + 1) * 16, v[j]);
    }
  }
}

// One sample-group: y (8 channels at yb, L apart) from x (8 channels at xg), all frames.
template <int Wi, int W, int R, int S>
void pair_item(const Conv3dGeometry& g, const float* xg, const float* wtab, float* yb, float* scratch,
               const GemmEpilogue<float>& ep, const InputPrologue<float>& pro) {
  static_assert(R * W <= 16);
  constexpr std::int64_t Wp = Wi + 2;
  // H x Wi input, Ho x W output (stride S).
  const std::int64_t H = g.H, Ho = g.Ho, T = g.T, HW = Ho * W, L = g.L(), pairs = (T + 1) / 2;
  // One pair at a time in the scratch ((H + 2) x (Wi + 2) positions, 5-16 KiB: in L1): its
  // border stays zero, the inside is written by each pair's pack.
  zero_values(scratch, (H + 2) * Wp * 16);
  V16 bias{};
  if (ep.bias)
    for (std::int64_t l = 0; l < 16; ++l) bias[l] = ep.bias[l / 2];
  for (std::int64_t fp = 0; fp < pairs; ++fp) {
    pack_pair_padded<Wi>(xg, H, T, fp, pro, scratch);
    for (std::int64_t h0 = 0; h0 < Ho; h0 += R) {
      const std::int64_t rows = std::min<std::int64_t>(R, Ho - h0), N = rows * W;
      V16 acc[16];
      if (rows == R) {
        pair_rows<Wi, W, R, S>(scratch, wtab, h0, acc);
      } else {
        for (std::int64_t i = 0; i < rows; ++i) pair_rows<Wi, W, 1, S>(scratch, wtab, h0 + i, acc + i * W);
      }
      for (std::int64_t i = 0; i < 16; ++i) {
        if (i >= N) {
          acc[i] = V16{};
          continue;
        }
        V16 v = acc[i] + bias;
        if (ep.relu) v = v > 0.0f ? v : V16{};  // as relu(): NaN becomes 0
        acc[i] = v;
      }
      transpose_lanes<float>(acc);  // acc[2o + k]: positions h0 W .. h0 W + N - 1
      for (std::int64_t j = 0; j < 16; ++j) {
        const std::int64_t o = j / 2, f = 2 * fp + j % 2;
        if (f < T) store_lanes(yb + o * L + f * HW + h0 * W, acc[j], first_lanes<float>(N));
      }
    }
  }
}

// Note [frame pairs in lanes], weight gradient: gw[o][c][kh][kw] = the sum over samples,
// frames and positions of gy[o][f][p] x[c][f][p + tap]. Output-gradient vectors hold (o,
// frame) of a pair at one position; each (c, tap) accumulates gy times the broadcast of
// channel c of both frames at the tapped position, 8 channels x 3 taps of one kernel row
// at a time (24 accumulators, kept in L1 between pairs); the frame lanes are added at the
// end. One item per group, over the whole batch. Taken for 4-wide planes at stride 1:
// conv3d_bench 4 x 8x112 stage 5 (4x4), two alternations, ms, planes -> pairs: warm 0.500,
// 0.486 -> 0.257, 0.248, --cold 0.607, 0.585 -> 0.331, 0.316; in the step (--profile,
// three alternations) 0.99 / 1.02 / 1.02 -> 0.67 / 0.65 / 0.66 ms. At 7x7 and 14x14 it
// ran 0.4 and 1.5 ms a step slower than the plane kernel (batch 4 8x112 stage 4, batch 1
// 16x224 stage 4). And for stride 2 from 7- and 14-wide inputs (the downsampling convs of
// stages 4 and 5), where the plane kernel worked on phase planes of 4 and 7 positions:
// on the AMD EPYC VM, `conv3d_bench --cold`, three alternations, ms, planes -> pairs: 4 x
// 8x112 14 -> 7 0.71-0.77 -> 0.50-0.53, 7 -> 4 0.75-0.80 -> 0.30-0.32, 1 x 16x224 14 -> 7
// 0.69-0.75 -> 0.43-0.51; in the step (--profile, batch 4 8x112, three alternations) the
// two took 1.44-1.48 ms a step before and 0.82-0.83 after. From 28-wide inputs too (the
// forward stays on phase planes there): in the step 0.94-0.98 -> 0.75-0.91 ms at batch 4
// 8x112 (three alternations), 1.05-1.16 -> 0.82-0.83 at batch 1 16x224 (two). From 56-wide
// inputs pairs were slower in the step at batch 1 16x224 (1.42 -> 1.57-1.71 ms) and even at
// batch 4 8x112, from 112-wide slower alone (conv3d_bench --cold 2.61-3.22 -> 3.10-3.40).
template <int Wi, int W, int S>
void pair_weight_item(const Conv3dGeometry& g, const float* gy, const float* x, float* gw, std::int64_t gr,
                      const InputPrologue<float>& pro) {
  // H x Wi input, Ho x W output (stride S): output position (h, w) taps the padded input
  // at (S h + kh, S w + kw).
  constexpr std::int64_t Wp = Wi + 2;
  const std::int64_t H = g.H, Ho = g.Ho, T = g.T, HW = Ho * W, L = g.L(), pairs = (T + 1) / 2;
  float* xs = col_buffer<float>((H + 2) * Wp * 16 + HW * 16);
  float* gs = xs + (H + 2) * Wp * 16;
  zero_values(xs, (H + 2) * Wp * 16);
  const InputPrologue<float> gpro = pro.from_channel(gr * 8);  // the group's input channels
  V16 accm[72];  // [c][kh][kw], lanes 2o + k
  for (V16& a : accm) a = V16{};
  for (std::int64_t n = 0; n < g.N; ++n) {
    const float* xg = x + (n * g.C + gr * 8) * g.in_volume();
    const float* gyg = gy + (n * g.O + gr * 8) * L;
    for (std::int64_t fp = 0; fp < pairs; ++fp) {
      pack_pair_padded<Wi>(xg, H, T, fp, gpro, xs);
      for (std::int64_t p0 = 0; p0 < HW; p0 += 16) {  // the output gradient, unpadded
        const std::int64_t cnt = std::min<std::int64_t>(16, HW - p0);
        V16 v[16];
        pack_pair_block(gyg, T, HW, fp, p0, cnt, {}, v);
        for (std::int64_t j = 0; j < cnt; ++j) store_vec(gs + (p0 + j) * 16, v[j]);
      }
      for (int kh = 0; kh < 3; ++kh) {
        V16 a[24];
#pragma GCC unroll 24
        for (int i = 0; i < 24; ++i) a[i] = accm[(i / 3) * 9 + kh * 3 + i % 3];
        for (std::int64_t h = 0; h < Ho; ++h) {
          const float* xr = xs + (S * h + kh) * Wp * 16;
          const float* gr_ = gs + h * W * 16;
          for (std::int64_t w = 0; w < W; ++w) {
            const V16 gv = load_vec(gr_ + w * 16);
            const float* xw = xr + S * w * 16;
            asm("" : "+r"(xw));  // Note [pair kernels in registers]
#pragma GCC unroll 24
            for (int i = 0; i < 24; ++i) a[i] += gv * pair_broadcast(xw + (i % 3) * 16 + 2 * (i / 3));
          }
        }
#pragma GCC unroll 24
        for (int i = 0; i < 24; ++i) accm[(i / 3) * 9 + kh * 3 + i % 3] = a[i];
      }
    }
  }
  for (std::int64_t o = 0; o < 8; ++o)
    for (std::int64_t ct = 0; ct < 72; ++ct) gw[(gr * 8 + o) * 72 + ct] = accm[ct][2 * o] + accm[ct][2 * o + 1];
}
#else
bool pair_frames(const Conv3dGeometry&) { return false; }
#endif

}  // namespace

bool pair_frames_weight_grad(const Conv3dGeometry& g, const float* gy, const float* x, float* gw,
                             const InputPrologue<float>& pro) {
#if defined(__AVX512F__)
  // At stride 1, 4-wide planes only: at 7x7 and 14x14 the plane kernel's weight gradient
  // was faster in the step (twenty-ninth session, docs/performance.md); at stride 2 from
  // inputs up to 28 wide (Note [frame pairs in lanes], weight gradient).
  const bool unit = same_size(g) && g.W == 4;
  const bool half = halving(g) && (g.W == 7 || g.W == 14 || g.W == 28);
  if (!pair_conv(g) || !(unit || half)) return false;
  auto run = [&](std::int64_t gr) {
    if (unit)
      pair_weight_item<4, 4, 1>(g, gy, x, gw, gr, pro);
    else if (g.W == 7)
      pair_weight_item<7, 4, 2>(g, gy, x, gw, gr, pro);
    else if (g.W == 14)
      pair_weight_item<14, 7, 2>(g, gy, x, gw, gr, pro);
    else
      pair_weight_item<28, 14, 2>(g, gy, x, gw, gr, pro);
  };
  if (items_parallel(g.groups, g.N * 8 * g.K() * g.L())) {
#pragma omp parallel for schedule(static)
    for (std::int64_t gr = 0; gr < g.groups; ++gr) run(gr);
  } else {
    for (std::int64_t gr = 0; gr < g.groups; ++gr) run(gr);
  }
  return true;
#else
  (void)g, (void)gy, (void)x, (void)gw, (void)pro;
  return false;
#endif
}

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
  // conv(x, scale * w), so the kernels' epilogue is the bias and the ReLU only. Filled by
  // all threads (Note [direct weights per call]).
  T* const wt = weight_buffer<T, WeightSlot::kReordered>(g.O * K);
#pragma omp parallel for schedule(static) if (weights_parallel(g.O * K))
  for (std::int64_t o = 0; o < g.O; ++o)
    for (std::int64_t k = 0; k < K; ++k)
      wt[(o / kDirectOg * K + k) * kDirectOg + o % kDirectOg] = ep.scale ? w[o * K + k] * ep.scale[o] : w[o * K + k];
  GemmEpilogue<T> ep_unscaled = ep;
  ep_unscaled.scale = nullptr;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    if (pair_frames(g)) {  // Note [frame pairs in lanes]: items of (sample, group)
      // wtab[gr][c][tap][2o + k] = the (scaled) weight of output o of group gr: wt holds the
      // 8 outputs of each (group, c, tap) side by side, each doubled here by one zip.
      float* const wtab = weight_buffer<float, WeightSlot::kPairTable>(g.groups * 8 * 9 * 16);
#pragma omp parallel for schedule(static) if (weights_parallel(g.groups * 8 * 9 * 16))
      for (std::int64_t q = 0; q < g.groups * 8 * 9; ++q) {
        const V16 v = load_lanes(wt + q * 8, first_lanes<float>(8));
        store_vec(wtab + q * 16, zip_low<float>(v, v));
      }
      const std::int64_t items = g.N * g.groups, runs = direct_sum_runs(g);
      const std::int64_t scratch = (g.H + 2) * (g.W + 2) * 16;
      auto run_item = [&](std::int64_t item) {
        // With 8 channels a group, item n * groups + gr has channels item * 8 .. + 8 in
        // and out.
        const std::int64_t n = item / g.groups, gr = item % g.groups, vol = 8 * g.in_volume();
        const float* xg = x + item * vol;
        float* yb = y + item * 8 * L;
        // The next item's input (the next 8 channels) into L2 while this one computes: the
        // pack would otherwise wait on memory for it (static shares: a thread's next item
        // is item + 1).
        if (item + 1 < items) prefetch_l2(xg + vol, vol * static_cast<std::int64_t>(sizeof(float)));
        const float* wg = wtab + gr * 8 * 9 * 16;
        float* buf = col_buffer<float>(scratch);
        const GemmEpilogue<float> gep = ep_unscaled.from_row(gr * 8);
        const InputPrologue<float> gpro = pro.from_channel(gr * 8);
        if (g.sH == 1) {
          if (g.W == 4) pair_item<4, 4, 4, 1>(g, xg, wg, yb, buf, gep, gpro);
          else if (g.W == 7) pair_item<7, 7, 2, 1>(g, xg, wg, yb, buf, gep, gpro);
          else pair_item<14, 14, 1, 1>(g, xg, wg, yb, buf, gep, gpro);
        } else {
          if (g.W == 7) pair_item<7, 4, 4, 2>(g, xg, wg, yb, buf, gep, gpro);
          else pair_item<14, 7, 2, 2>(g, xg, wg, yb, buf, gep, gpro);
        }
        if (plane_sums)
          for (std::int64_t f = 0; f < runs; ++f) plane_parts(n, gr * 8, 8, f);
      };
      if (items_parallel(items, 8 * K * L)) {
#pragma omp parallel for schedule(static)
        for (std::int64_t item = 0; item < items; ++item) run_item(item);
      } else {
        for (std::int64_t item = 0; item < items; ++item) run_item(item);
      }
      return;
    }
  }
#endif
  if (stacked_frames(g)) {  // items of (sample, 8 output channels), all frames at once
    const std::int64_t blocks = g.O / kDirectOg, items = g.N * blocks;
    auto run_item = [&](std::int64_t item) {
      const std::int64_t n = item / blocks, o0 = item % blocks * kDirectOg, gr = o0 / Og;
      direct_frames(g, x + (n * g.C + gr * Cg) * g.in_volume(), wt + o0 * K, y + (n * g.O + o0) * L,
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
    const T* wg = wt + gr * Og * K;
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
