// CPU conv3d kernels (conv3d_cpu.cpp says which computation each conv shape gets). All
// pointers are contiguous NCTHW data.
#pragma once

#include <cstdint>

#include "vidgrad/ops/cpu/row_gemm.h"

namespace vidgrad::cpu {

struct Conv3dGeometry {
  std::int64_t N, C, T, H, W;       // input
  std::int64_t O, kT, kH, kW;       // weight (O, C/groups, kT, kH, kW)
  std::int64_t To, Ho, Wo;          // output
  std::int64_t sT, sH, sW, pT, pH, pW, dT, dH, dW;
  std::int64_t groups;

  std::int64_t Cg() const { return C / groups; }
  std::int64_t Og() const { return O / groups; }
  std::int64_t K() const { return Cg() * kT * kH * kW; }  // GEMM depth: one column of im2col
  std::int64_t L() const { return To * Ho * Wo; }         // output positions per sample
  std::int64_t in_volume() const { return T * H * W; }
  // 1x1x1, unit stride, no padding: the input already is the im2col matrix. (The output
  // size check excludes the cropped 1x1 convs that the phased input gradient runs.)
  bool pointwise() const {
    return kT == 1 && kH == 1 && kW == 1 && sT == 1 && sH == 1 && sW == 1 && pT == 0 && pH == 0 && pW == 0 &&
           To == T && Ho == H && Wo == W;
  }
  // kT x 1 x 1 with unit time stride and no spatial stride/padding: GEMMs over
  // time-shifted input rows, no im2col (SEVNet's 3x1x1 convs).
  bool temporal_only() const {
    return kH == 1 && kW == 1 && sT == 1 && sH == 1 && sW == 1 && pH == 0 && pW == 0 && Ho == H && Wo == W &&
           !pointwise();
  }
};

// Whether conv3d_forward can add a residual in its epilogue (GemmEpilogue::residual, the
// output's layout, ldr = To*Ho*Wo): only its row-GEMM convs, the pointwise and temporal ones.
inline bool fuses_residual(const Conv3dGeometry& g) { return g.pointwise() || g.temporal_only(); }

// Size, in values, of the im2col tiles (Note [im2col tiles] in conv3d_cpu.cpp). Tests
// shrink it to exercise tiling on small shapes; results do not depend on it.
void set_conv_tile_elements(std::int64_t elements);

// Whether 3x1x1 convs with at least min_channels channels in and out use Winograd's
// F(4, 3) (Note [Winograd temporal conv] in conv3d_winograd.cpp; on, from 32 channels, by
// default). Tests lower the threshold to reach it on small shapes and switch it off to
// compare with the direct row GEMM; benchmarks switch it off to measure the gain.
inline constexpr std::int64_t kWinogradMinChannels = 32;
void set_winograd_temporal(bool enabled, std::int64_t min_channels = kWinogradMinChannels);

// Note [input prologue]: a conv whose input is relu(batch_norm(x)) and nothing else's (in
// SEVNet, each module's grouped 1x3x3 and 3x1x1 convs, and the stem's 3x1x1) can read x
// itself and normalise each value as it packs it: each input value v of channel c enters
// the conv as relu(fma(v, scale[c], shift[c])), rounded exactly as batch_norm_apply rounds
// it (scale and shift from bn_affine), so the conv sees the same values bit for bit and the
// normalised tensor is never written (a write of its size saved in the forward, and its
// memory not held until the backward). Padding stays zero: it pads the normalised input.
template <typename T>
struct InputPrologue {
  const T* scale = nullptr;  // per input channel; null: no prologue
  const T* shift = nullptr;
  bool active() const { return scale != nullptr; }
  // The same prologue for the channels from `first` on (a group's).
  InputPrologue from_channel(std::int64_t first) const {
    return active() ? InputPrologue{scale + first, shift + first} : InputPrologue{};
  }
};

// Whether conv3d_forward and conv3d_backward_weight apply an input prologue inside their
// kernels for g (the Winograd paths and the direct-plane kernels); on other convs they
// first write the normalised input to a buffer of their own, a pass of its size each.
bool conv3d_takes_prologue(const Conv3dGeometry& g);

// y (N, O, To, Ho, Wo) = ep(conv(pro(x), w)): the epilogue (per output channel scale and
// bias, then ReLU, each optional) is applied as the output is stored, with no extra pass;
// pro (optional) as Note [input prologue]. A conv's bias is ep.bias; an inference batch
// norm folds into ep.scale and ep.bias. reuse_weights (inference, where the same w comes
// back every call): the Winograd convs keep w's transform and reuse it while w is bit for
// bit the same (Note [filter cache] in conv3d_winograd.cpp); the result is the same.
// y_sample: the distance in values between y's samples, 0 for O * To * Ho * Wo (y dense);
// more where y is a channel range of a wider tensor (Note [concat in place] in
// ops/conv3d.cpp). The Winograd and row-GEMM convs store there directly, the others
// through a buffer.
template <typename T>
void conv3d_forward(const Conv3dGeometry& g, const T* x, const T* w, T* y, const GemmEpilogue<T>& ep = {},
                    const InputPrologue<T>& pro = {}, bool reuse_weights = false, std::int64_t y_sample = 0);

// The calling thread's kept filter transforms (conv3d_forward's reuse_weights): dropped,
// and their size in bytes (copies of the weights included). At most kFilterCacheBytes are
// kept; an entry unused for kFilterCacheIdleCalls calls of the cache makes way for a new
// one, and a transform that finds no room is made each call.
inline constexpr std::int64_t kFilterCacheBytes = std::int64_t{64} << 20;
inline constexpr std::uint64_t kFilterCacheIdleCalls = 1024;
void clear_filter_cache();
std::int64_t filter_cache_bytes();

// conv3d_forward, and the per-channel mean and biased variance of y over (N, To, Ho, Wo),
// O values each: the batch statistics of a batch norm that follows. The row-GEMM convs
// (pointwise and temporal, without a prologue), the Winograd and the direct-plane convs
// take them as they store y (Note [output statistics] in row_gemm.cpp); other convs in a
// pass over y after it (batch_norm_stats).
template <typename T>
void conv3d_forward_statistics(const Conv3dGeometry& g, const T* x, const T* w, T* y, const GemmEpilogue<T>& ep,
                               const InputPrologue<T>& pro, double* mean, double* var);

// gx (N, C, T, H, W) = input gradient given gy (N, O, To, Ho, Wo); with accumulate, gx +=
// it (only where conv3d_input_grad_accumulates(g); autograd's Note [accumulating in place]).
template <typename T>
void conv3d_backward_input(const Conv3dGeometry& g, const T* gy, const T* w, T* gx, bool accumulate = false);

// Whether conv3d_backward_input can add into gx as it computes it: pointwise and kT x 1 x 1
// convs off the Winograd path (one row GEMM, which then loads the old gx in its tiles).
bool conv3d_input_grad_accumulates(const Conv3dGeometry& g);

// gw (O, C/groups, kT, kH, kW) = weight gradient, of the conv of pro(x) with pro as in
// conv3d_forward. Written, not accumulated.
template <typename T>
void conv3d_backward_weight(const Conv3dGeometry& g, const T* gy, const T* x, T* gw, const InputPrologue<T>& pro = {});

// gb (O) = sum of gy over N, To, Ho, Wo. Written.
template <typename T>
void conv3d_backward_bias(const Conv3dGeometry& g, const T* gy, T* gb);

}  // namespace vidgrad::cpu
