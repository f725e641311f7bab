// Shapes and strides: small helpers shared by the tensor, the ops and their error messages.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace vidgrad {

using Shape = std::vector<std::int64_t>;

// Number of elements; 1 for a 0-d shape. Throws on a negative size.
std::int64_t shape_numel(const Shape& shape);

// Row-major (C-order) strides in elements.
Shape contiguous_strides(const Shape& shape);

// "[2, 3, 8, 8]"
std::string shape_str(const Shape& shape);

// Resolves a possibly negative dim against `rank`; throws naming `op` if out of range.
int normalize_dim(std::int64_t dim, int rank, const char* op);

// Broadcast two shapes as NumPy/PyTorch do; throws naming `op` if incompatible.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

}  // namespace vidgrad

namespace std {
inline ostream& operator<<(ostream& os, const vidgrad::Shape& s) { return os << vidgrad::shape_str(s); }
}  // namespace std
