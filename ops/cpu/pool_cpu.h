// CPU pooling kernels over contiguous (N*C planes, T, H, W) data.
#pragma once

#include <cstdint>

namespace vidgrad::cpu {

struct Pool3dGeometry {
  std::int64_t planes;  // N * C
  std::int64_t T, H, W, To, Ho, Wo;
  std::int64_t kT, kH, kW, sT, sH, sW, pT, pH, pW;
  bool count_include_pad;
};

template <typename T>
void avg_pool3d_forward(const Pool3dGeometry& g, const T* x, T* y);
// gx written (zeroed, then each window's share added).
template <typename T>
void avg_pool3d_backward(const Pool3dGeometry& g, const T* gy, T* gx);
// argmax[i] is the flat index within its input plane of output i's maximum.
template <typename T>
void max_pool3d_forward(const Pool3dGeometry& g, const T* x, T* y, std::int64_t* argmax);
template <typename T>
void max_pool3d_backward(const Pool3dGeometry& g, const T* gy, const std::int64_t* argmax, T* gx);

}  // namespace vidgrad::cpu
