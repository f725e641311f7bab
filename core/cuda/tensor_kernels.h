// The strided kernels Tensor itself needs on a CUDA device: copy (with dtype conversion),
// fill and accumulate. Shapes arrive collapsed to at most kMaxDims dims (see strided.h).
#pragma once

#include <cstdint>

#include "vidgrad/core/dtype.h"

namespace vidgrad::cuda {

inline constexpr int kMaxDims = 8;

// One shape walked with two stride sets (destination a, source b), in elements.
struct StridedPair {
  int rank = 0;
  std::int64_t size[kMaxDims] = {};
  std::int64_t stride_a[kMaxDims] = {};
  std::int64_t stride_b[kMaxDims] = {};
};

// dst[a] = convert(src[b]) for every index of the shape; both on `device`.
void copy_strided(void* dst, DType dst_type, const void* src, DType src_type, const StridedPair& layout,
                  std::int64_t numel, int device);
// dst[a] = value.
void fill_strided(void* dst, DType type, double value, const StridedPair& layout, std::int64_t numel, int device);
// dst[a] += src[b], same dtype.
void add_strided(void* dst, const void* src, DType type, const StridedPair& layout, std::int64_t numel, int device);

}  // namespace vidgrad::cuda
