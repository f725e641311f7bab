// The strided kernels Tensor itself needs on a CUDA device: copy (with dtype conversion),
// fill and accumulate. Shapes arrive collapsed to at most kMaxDims dims (see strided.h).
#pragma once

#include <cstdint>

#include "vidgrad/core/dtype.h"
#include "vidgrad/core/error.h"
#include "vidgrad/core/shape.h"
#include "vidgrad/core/strided.h"

namespace vidgrad::cuda {

inline constexpr int kMaxDims = 8;

// One shape walked with two stride sets (destination a, source b), in elements.
struct StridedPair {
  int rank = 0;
  std::int64_t size[kMaxDims] = {};
  std::int64_t stride_a[kMaxDims] = {};
  std::int64_t stride_b[kMaxDims] = {};
};

// `shape` walked with strides a and b, collapsed (strided.h); throws naming `op` when more
// than kMaxDims dims remain (only views with many non-mergeable dims do).
inline StridedPair make_strided_pair(const char* op, const Shape& shape, const Shape& strides_a,
                                     const Shape& strides_b) {
  Shape sh = shape;
  std::array<Shape, 2> st{strides_a, strides_b};
  collapse_dims<2>(sh, st);
  VG_CHECK(static_cast<int>(sh.size()) <= kMaxDims, op << ": a strided walk over " << shape_str(shape)
                                                        << " keeps more than " << kMaxDims
                                                        << " non-mergeable dims on cuda; call contiguous() first");
  StridedPair p;
  p.rank = static_cast<int>(sh.size());
  for (int d = 0; d < p.rank; ++d) {
    p.size[d] = sh[d];
    p.stride_a[d] = st[0][d];
    p.stride_b[d] = st[1][d];
  }
  return p;
}

// dst[a] = convert(src[b]) for every index of the shape; both on `device`.
void copy_strided(void* dst, DType dst_type, const void* src, DType src_type, const StridedPair& layout,
                  std::int64_t numel, int device);
// dst[a] = value.
void fill_strided(void* dst, DType type, double value, const StridedPair& layout, std::int64_t numel, int device);
// dst[a] += src[b], same dtype.
void add_strided(void* dst, const void* src, DType type, const StridedPair& layout, std::int64_t numel, int device);

}  // namespace vidgrad::cuda
