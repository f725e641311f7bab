// Input checks shared by the ops. Each names the op and the offending values.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "vidgrad/core/cuda/tensor_kernels.h"
#include "vidgrad/core/strided.h"
#include "vidgrad/core/tensor.h"

namespace vidgrad::ops_detail {

inline void check_defined(const char* op, const char* arg, const Tensor& t) {
  VG_CHECK(t.defined(), op << ": " << arg << " is an undefined tensor");
}

inline void check_rank(const char* op, const char* arg, const Tensor& t, int rank, const char* layout) {
  check_defined(op, arg, t);
  VG_CHECK(t.dim() == rank, op << ": " << arg << " must have rank " << rank << " " << layout << ", got rank "
                               << t.dim() << " with shape " << shape_str(t.shape()));
}

inline void check_floating(const char* op, const char* arg, const Tensor& t) {
  check_defined(op, arg, t);
  VG_CHECK(is_floating(t.dtype()), op << ": " << arg << " must be float32 or float64, got " << dtype_name(t.dtype()));
}

// All defined tensors in `ts` share dtype and device with the first.
inline void check_same(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> ts) {
  const Tensor* first = nullptr;
  const char* first_name = nullptr;
  for (auto [name, t] : ts) {
    if (!t->defined()) continue;
    if (!first) {
      first = t;
      first_name = name;
      continue;
    }
    VG_CHECK(t->dtype() == first->dtype(), op << ": " << name << " has dtype " << dtype_name(t->dtype()) << " but "
                                              << first_name << " has " << dtype_name(first->dtype()));
    VG_CHECK(t->device() == first->device(), op << ": " << name << " is on " << t->device() << " but " << first_name
                                                << " is on " << first->device());
  }
}

// The error for a device that has no kernel for this op in this build.
[[noreturn]] inline void no_kernel(const char* op, Device d) {
  VG_THROW(op << ": no kernel for device " << d << " in this build of vidgrad");
}

// The layout a CUDA kernel walks for out = f(a, b) with a and b broadcast to `shape` (out
// contiguous): a's and b's strides, 0 on broadcast dims, collapsed.
inline cuda::StridedPair broadcast_layout(const char* op, const Tensor& a, const Tensor& b, const Shape& shape) {
  auto expanded = [&](const Tensor& t) {
    const std::size_t lead = shape.size() - t.shape().size();
    Shape st(shape.size(), 0);
    for (std::size_t i = lead; i < shape.size(); ++i) st[i] = t.shape()[i - lead] == 1 ? 0 : t.strides()[i - lead];
    return st;
  };
  Shape sh = shape;
  std::array<Shape, 3> st{expanded(a), expanded(b), contiguous_strides(shape)};
  collapse_dims<3>(sh, st);
  VG_CHECK(static_cast<int>(sh.size()) <= cuda::kMaxDims,
           op << ": broadcasting " << shape_str(a.shape()) << " with " << shape_str(b.shape()) << " walks more than "
              << cuda::kMaxDims << " dims on cuda");
  cuda::StridedPair p;
  p.rank = static_cast<int>(sh.size());
  for (int d = 0; d < p.rank; ++d) {
    p.size[d] = sh[d];
    p.stride_a[d] = st[0][d];
    p.stride_b[d] = st[1][d];
  }
  return p;
}

inline std::string triple_str(const std::array<std::int64_t, 3>& a) {
  return "(" + std::to_string(a[0]) + ", " + std::to_string(a[1]) + ", " + std::to_string(a[2]) + ")";
}

}  // namespace vidgrad::ops_detail
