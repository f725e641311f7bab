// Shared between the CPU conv's files: conv3d_cpu.cpp (dispatch, row GEMM and im2col
// paths), conv3d_direct.cpp and conv3d_direct_grad.cpp (the direct kernels for 1 x kH x kW
// convs with 8-channel blocks, forward and weight gradient; direct_planes.h their shared
// pieces), conv3d_strided_grad.cpp (their strided input gradient), conv3d_winograd.cpp and
// conv3d_winograd_grad.cpp (3x1x1 convs by Winograd's F(4, 3), the second its weight
// gradient). Not installed API: include only from those.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "vidgrad/core/aligned_vector.h"
#include "vidgrad/core/parallel.h"
#include "vidgrad/ops/cpu/conv3d_cpu.h"
#include "vidgrad/ops/cpu/moments.h"
#include "vidgrad/ops/cpu/row_gemm.h"
#include "vidgrad/ops/cpu/simd.h"

namespace vidgrad::cpu {

// The im2col buffer of the calling thread. It grows to the largest size asked for and is
// kept, so steady-state training touches no fresh pages (first-touch page faults on a
// 100 MB buffer cost more than the GEMM at some layer shapes).
template <typename T>
inline T* col_buffer(std::int64_t elements) {
  thread_local AlignedVector<T> buf;
  if (static_cast<std::int64_t>(buf.size()) < elements) {
    buf.clear();
    buf.shrink_to_fit();
    buf.resize(static_cast<std::size_t>(elements));
  }
  return buf.data();
}

// dst[i] = relu(fma(src[i], a, b)) for i < n: one channel's values through an input
// prologue (Note [input prologue] in conv3d_cpu.h), in vectors and a masked last one.
template <typename T>
inline void normalise_values(const T* src, std::int64_t n, T a, T b, T* dst) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t kL = Vec<T>::kLanes;
  const V va = V{} + a, vb = V{} + b;
  std::int64_t i = 0;
  for (; i + kL <= n; i += kL) store_vec(dst + i, relu_fma<T>(load_vec(src + i), va, vb));
  if (i < n) {
    const std::uint32_t mask = first_lanes<T>(n - i);
    store_lanes(dst + i, relu_fma<T>(load_lanes(src + i, mask), va, vb), mask);
  }
}

// Parallelise over (n, g) items when there are enough for every thread.
inline bool items_parallel(std::int64_t items, std::int64_t work_per_item) {
  return omp_get_max_threads() > 1 && items >= 2 * omp_get_max_threads() && items * work_per_item >= kMinParallelWork;
}

// Note [direct weights per call]: the direct kernels take their weights reordered per call
// (the input gradient's also flipped first, Note [scale in the weights] in
// conv3d_direct.cpp). Those copies were std::vectors: at 512 channels 147 KB, and 295 KB
// for the frame pairs' table, above malloc's mmap threshold, so each call mapped fresh
// pages, faulted and zeroed them and then filled them on one thread while the other
// waited: memset 13.8% and OpenMP waits 22.6% of the perf samples of the 512-channel 4x4
// grouped input gradient at batch 4 8x112 (conv3d_bench, 2026-11-25). They are now
// buffers of the calling thread, kept between calls (each call writes every value), filled
// by all threads where large enough. conv3d_bench --batch=4 --frames=8 --size=112
// --threads=2, three alternations, ms: that input gradient 0.46-0.57 -> 0.32-0.40, its
// forward 0.35-0.45 -> 0.34-0.37 (256 channels at 7x7 and the stride-2 input gradients
// within the noise); in the step (--profile) every grouped conv together about 1.5 ms less.
inline bool weights_parallel(std::int64_t values) {
  return values >= (std::int64_t{1} << 14) && omp_get_max_threads() > 1 && !omp_in_parallel();
}

// The calling thread's weight buffer `S`, at least n values, kept between calls and left
// uninitialised (Note [uninitialised scratch] in core/aligned_vector.h: the caller writes
// every value). Use it through the returned pointer: inside a parallel loop a thread_local's
// name is each thread's own. Buffers in use at once take different slots (the input
// gradient's flipped weights go to the forward, which reorders them into its own).
enum class WeightSlot { kFlipped, kReordered, kPairTable };
template <typename T, WeightSlot S>
inline T* weight_buffer(std::int64_t n) {
  thread_local UninitAlignedVector<T> buf;
  buf.resize(static_cast<std::size_t>(n));
  return buf.data();
}

// A multiple of 8 output channels per group, at most 16 input channels per group,
// 1 x kH x kW, not pointwise: the direct-plane kernels take it (Notes [direct grouped
// conv] and [output-channel blocks] in direct_planes.h).
bool direct_planes(const Conv3dGeometry& g);

// The direct-plane forward (y from x; ep from channel 0) and weight gradient (gw written),
// each with an optional input prologue (Note [direct prologue] in direct_planes.h). With
// plane_sums, the forward reads back the output it finishes for the parts of the batch
// statistics (run_sums): per sample n, run f < F = direct_sum_runs(g) of frames (To / F
// frames each) and channel o, at plane_sums + 3 * ((n * F + f) * O + o).
template <typename T>
void direct_conv_forward(const Conv3dGeometry& g, const T* x, const T* w, T* y, const GemmEpilogue<T>& ep,
                         const InputPrologue<T>& pro = {}, double* plane_sums = nullptr);
std::int64_t direct_sum_runs(const Conv3dGeometry& g);
template <typename T>
void direct_conv_weight_grad(const Conv3dGeometry& g, const T* gy, const T* x, T* gw,
                             const InputPrologue<T>& pro = {});

// The weight gradient (gw written) of the float32 grouped convs that Note [frame pairs in
// lanes] (conv3d_direct.cpp) takes; false, with nothing done, for any other conv.
bool pair_frames_weight_grad(const Conv3dGeometry& g, const float* gy, const float* x, float* gw,
                             const InputPrologue<float>& pro);

// The input gradient of a direct-plane conv with spatial stride (gx written); false, with
// nothing done, when g is not one (conv3d_strided_grad.cpp).
template <typename T>
bool direct_strided_input_grad(const Conv3dGeometry& g, const T* gy, const T* w, T* gx);

// A 3x1x1 conv with time padding 1, unit time stride and dilation, no groups, at least 2
// frames and set_winograd_temporal's channels in and out: the Winograd path takes its
// forward, input gradient and weight gradient (Note [Winograd temporal conv] in
// conv3d_winograd.cpp).
bool winograd_temporal(const Conv3dGeometry& g);

// y = ep(conv(x, w)) (ep, pro, reuse_weights and y_sample as conv3d_forward's), and gx written from
// gy, for such a conv. With moments (O of them), the forward adds y's batch statistics to
// them as it stores y (Note [output statistics] in row_gemm.cpp).
template <typename T>
void winograd_temporal_forward(const Conv3dGeometry& g, const T* x, const T* w, T* y, const GemmEpilogue<T>& ep,
                               const InputPrologue<T>& pro = {}, ChannelMoments* moments = nullptr,
                               bool reuse_weights = false, std::int64_t y_sample = 0);
template <typename T>
void winograd_temporal_input_grad(const Conv3dGeometry& g, const T* gy, const T* w, T* gx);
// gw written from gy and x (Note [Winograd weight gradient] in conv3d_winograd_grad.cpp),
// for convs where that pays (winograd_temporal_weight_grad_pays; the others take the
// direct transposed row GEMM).
bool winograd_temporal_weight_grad_pays(const Conv3dGeometry& g);
template <typename T>
void winograd_temporal_weight_grad(const Conv3dGeometry& g, const T* gy, const T* x, T* gw,
                                   const InputPrologue<T>& pro = {});

}  // namespace vidgrad::cpu
