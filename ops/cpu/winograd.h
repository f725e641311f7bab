// The pieces of the Winograd F(m, 3) temporal conv (Note [Winograd temporal conv] in
// conv3d_winograd.cpp) that its forward and input gradient (conv3d_winograd.cpp) and its
// weight gradient (conv3d_winograd_grad.cpp) share: the transform matrices, the transforms
// of frame rows (with the input prologue), and the choice of tile. Not installed API.
#pragma once

#include <cstdint>
#include <type_traits>

#include "vidgrad/ops/cpu/conv3d_internal.h"
#include "vidgrad/ops/cpu/simd.h"

namespace vidgrad::cpu::winograd {

// The transforms of F(m, 3) for correlation, y[i] = sum_k g[k] d[i + k]:
//   y = AT ((G g) . (BT d)).  (Checked for both m against the direct sum in the tests.)
template <int Mo>
struct Winograd;

template <>
struct Winograd<2> {
  static constexpr int P = 4;
  static constexpr double BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
  static constexpr double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  static constexpr double AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
  static constexpr double A[4][2] = {{1, 0}, {1, 1}, {1, -1}, {0, -1}};  // AT transposed
};

template <>
struct Winograd<4> {
  static constexpr int P = 6;
  static constexpr double BT[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                                      {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
  static constexpr double G[6][3] = {{1.0 / 4, 0, 0},
                                     {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                     {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                     {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                     {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                     {0, 0, 1}};
  static constexpr double AT[4][6] = {
      {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
  static constexpr double A[6][4] = {{1, 0, 0, 0},  {1, 1, 1, 1},   {1, -1, 1, -1},
                                     {1, 2, 4, 8}, {1, -2, 4, -8}, {0, 0, 0, 1}};  // AT transposed
};

// out[r - R0] = sum over j of m[r][j] * in[j], for outputs r in [R0, R1) of J inputs;
// unrolled, so each coefficient is a constant and the zeros and ones cost nothing.
template <typename T, int R, int J, typename V, int R0 = 0, int R1 = R>
inline void transform(const double (&m)[R][J], const V* in, V* out) {
#pragma GCC unroll 8
  for (int r = R0; r < R1; ++r) {
    V v{};
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j)
      if (m[r][j] != 0) v += static_cast<T>(m[r][j]) * in[j];
    out[r - R0] = v;
  }
}

// The input prologue of a row of channel c (Note [input prologue] in conv3d_cpu.h): each
// value d becomes relu(fma(d, scale[c], shift[c])), rounded as batch_norm_apply rounds it;
// padding (a null source) stays zero. Off (kPro false), the values pass unchanged.
template <typename T, bool kPro>
struct RowPrologue {
  using V = typename Vec<T>::type;
  V a{}, s{};
  RowPrologue(const InputPrologue<T>& pro, std::int64_t c) {
    if constexpr (kPro) {
      a += pro.scale[c];
      s += pro.shift[c];
    }
  }
  V operator()(V d) const {
    if constexpr (kPro)
      return relu_fma<T>(d, a, s);
    else
      return d;
  }
};

// Rows k < count of J source rows each (row k of source j at src[j] + k * src_stride; a
// null source reads zeros), positions [0, len): output p in [R0, R1) of row k, sum over j
// of m[p][j] * source j, goes to dst + (p - R0) * dst_point + k * dst_stride. Masked
// vectors, so runs of any length touch nothing past their end. With kPro, row k's values
// pass through pro's prologue for channel k first.
template <typename T, int R, int J, int R0 = 0, int R1 = R, bool kPro = false>
void transform_rows(const double (&m)[R][J], const T* const (&src)[J], std::int64_t src_stride, std::int64_t count,
                    std::int64_t len, T* dst, std::int64_t dst_point, std::int64_t dst_stride,
                    const InputPrologue<T>& pro = {}) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t L = Vec<T>::kLanes;
  for (std::int64_t k = 0; k < count; ++k) {
    const RowPrologue<T, kPro> in(pro, k);
    std::int64_t v = 0;
    for (; v + L <= len; v += L) {  // whole vectors: plain loads and stores, cheaper than masked
      V d[J], e[R1 - R0];
#pragma GCC unroll 8
      for (int j = 0; j < J; ++j) d[j] = src[j] ? in(load_vec(src[j] + k * src_stride + v)) : V{};
      transform<T, R, J, V, R0, R1>(m, d, e);
#pragma GCC unroll 8
      for (int p = 0; p < R1 - R0; ++p) store_vec(dst + p * dst_point + k * dst_stride + v, e[p]);
    }
    if (v < len) {  // the last, partial vector
      const std::uint32_t mask = first_lanes<T>(len - v);
      V d[J], e[R1 - R0];
#pragma GCC unroll 8
      for (int j = 0; j < J; ++j) d[j] = src[j] ? in(load_lanes(src[j] + k * src_stride + v, mask)) : V{};
      transform<T, R, J, V, R0, R1>(m, d, e);
#pragma GCC unroll 8
      for (int p = 0; p < R1 - R0; ++p) store_lanes(dst + p * dst_point + k * dst_stride + v, e[p], mask);
    }
  }
}

// Output frames per tile: 4 where there are at least 4 frames, else 2.
inline int tile_frames(const Conv3dGeometry& g) { return g.To >= 4 ? 4 : 2; }

// f(std::integral_constant<int, Mo>{}) with Mo = tile_frames(g): the F(4, 3) or F(2, 3)
// instance of an implementation.
template <typename F>
void with_tile_frames(const Conv3dGeometry& g, F&& f) {
  if (tile_frames(g) == 4)
    f(std::integral_constant<int, 4>{});
  else
    f(std::integral_constant<int, 2>{});
}

}  // namespace vidgrad::cpu::winograd
