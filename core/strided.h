// Walking strided tensors in logical row-major order: the one loop behind copies,
// broadcasting and every kernel that accepts arbitrary views.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "vidgrad/core/shape.h"

namespace vidgrad {

// Calls f(off, inner, step) once per run of the innermost dim: `inner` elements where
// operand k starts at element offset off[k] and steps by step[k]. All K operands share
// `shape`; strides[k] are operand k's strides (0 on broadcast dims).
template <std::size_t K, typename F>
void for_each_run(const Shape& shape, const std::array<const Shape*, K>& strides, F&& f) {
  const int rank = static_cast<int>(shape.size());
  std::array<std::int64_t, K> off{};
  if (rank == 0) {
    std::array<std::int64_t, K> step{};
    f(off, 1, step);
    return;
  }
  for (std::int64_t s : shape)
    if (s == 0) return;
  std::array<std::int64_t, K> step;
  for (std::size_t k = 0; k < K; ++k) step[k] = (*strides[k])[rank - 1];
  const std::int64_t inner = shape[rank - 1];
  std::vector<std::int64_t> idx(rank, 0);
  while (true) {
    f(off, inner, step);
    int d = rank - 2;
    for (; d >= 0; --d) {
      ++idx[d];
      for (std::size_t k = 0; k < K; ++k) off[k] += (*strides[k])[d];
      if (idx[d] < shape[d]) break;
      for (std::size_t k = 0; k < K; ++k) off[k] -= (*strides[k])[d] * shape[d];
      idx[d] = 0;
    }
    if (d < 0) return;
  }
}

}  // namespace vidgrad

namespace vidgrad {

// Merges adjacent dims that every operand walks contiguously (stride[d] ==
// stride[d+1] * shape[d+1]), so e.g. x * s with x (N,C,T,H,W) and s (N,C,1,1,1) becomes a
// 2-D walk [N*C, T*H*W] with long inner runs. Size-1 dims are dropped.
template <std::size_t K>
void collapse_dims(Shape& shape, std::array<Shape, K>& strides) {
  Shape s2;
  std::array<Shape, K> st2;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool merge = !s2.empty();
    for (std::size_t k = 0; k < K && merge; ++k) merge = st2[k].back() == strides[k][d] * shape[d];
    if (merge) {
      s2.back() *= shape[d];
      for (std::size_t k = 0; k < K; ++k) st2[k].back() = strides[k][d];
    } else {
      s2.push_back(shape[d]);
      for (std::size_t k = 0; k < K; ++k) st2[k].push_back(strides[k][d]);
    }
  }
  shape = std::move(s2);
  strides = std::move(st2);
}

// Like for_each_run, but rows (runs of the innermost dim) are spread over OpenMP threads
// when there are at least `min_elements` elements. f must be safe to call concurrently
// for different rows.
template <std::size_t K, typename F>
void parallel_for_each_run(const Shape& shape, const std::array<Shape, K>& strides, std::int64_t min_elements,
                           F&& f) {
  const int rank = static_cast<int>(shape.size());
  if (rank == 0) {
    std::array<std::int64_t, K> zero{};
    f(zero, 1, zero);
    return;
  }
  const std::int64_t inner = shape[rank - 1];
  std::int64_t rows = 1;
  for (int d = 0; d < rank - 1; ++d) rows *= shape[d];
  if (rows == 0 || inner == 0) return;
  std::array<std::int64_t, K> step;
  for (std::size_t k = 0; k < K; ++k) step[k] = strides[k][rank - 1];
#pragma omp parallel for schedule(static) if (rows > 1 && rows * inner >= min_elements)
  for (std::int64_t r = 0; r < rows; ++r) {
    std::array<std::int64_t, K> off{};
    std::int64_t rem = r;
    for (int d = rank - 2; d >= 0; --d) {
      const std::int64_t i = rem % shape[d];
      rem /= shape[d];
      for (std::size_t k = 0; k < K; ++k) off[k] += i * strides[k][d];
    }
    f(off, inner, step);
  }
}

}  // namespace vidgrad
