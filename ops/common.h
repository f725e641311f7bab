// Input checks shared by the ops. Each names the op and the offending values.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "vidgrad/core/cuda/tensor_kernels.h"
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

// t's strides when broadcast to `shape` (0 on broadcast and leading dims).
inline Shape broadcast_strides(const Tensor& t, const Shape& shape) {
  const std::size_t lead = shape.size() - t.shape().size();
  Shape st(shape.size(), 0);
  for (std::size_t i = lead; i < shape.size(); ++i) st[i] = t.shape()[i - lead] == 1 ? 0 : t.strides()[i - lead];
  return st;
}

// The layout a CUDA kernel walks for out = f(a, b), a and b broadcast to `shape` and out
// contiguous (so any dims a and b allow may merge).
inline cuda::StridedPair broadcast_layout(const char* op, const Tensor& a, const Tensor& b, const Shape& shape) {
  return cuda::make_strided_pair(op, shape, broadcast_strides(a, shape), broadcast_strides(b, shape));
}

inline std::string triple_str(const std::array<std::int64_t, 3>& a) {
  return "(" + std::to_string(a[0]) + ", " + std::to_string(a[1]) + ", " + std::to_string(a[2]) + ")";
}

}  // namespace vidgrad::ops_detail
