// Shape arithmetic with overflow and range checks.
#include "vidgrad/core/shape.h"

#include <limits>
#include <sstream>

#include "vidgrad/core/error.h"

namespace vidgrad {

std::int64_t shape_numel(const Shape& shape) {
  std::int64_t n = 1;
  for (std::int64_t s : shape) {
    VG_CHECK(s >= 0, "shape: sizes must be non-negative, got " << shape_str(shape));
    VG_CHECK(s == 0 || n <= std::numeric_limits<std::int64_t>::max() / s,
             "shape: element count overflows int64 for " << shape_str(shape));
    n *= s;
  }
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  std::int64_t s = 1;
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
    strides[i] = s;
    s *= shape[i] > 0 ? shape[i] : 1;
  }
  return strides;
}

std::string shape_str(const Shape& shape) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

int normalize_dim(std::int64_t dim, int rank, const char* op) {
  VG_CHECK(dim >= -rank && dim < rank,
           op << ": dim " << dim << " is out of range for a tensor of rank " << rank);
  return static_cast<int>(dim < 0 ? dim + rank : dim);
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const std::size_t rank = std::max(a.size(), b.size());
  Shape out(rank);
  for (std::size_t i = 0; i < rank; ++i) {
    const std::int64_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    const std::int64_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    VG_CHECK(da == db || da == 1 || db == 1,
             op << ": shapes " << shape_str(a) << " and " << shape_str(b)
                << " cannot be broadcast (dim " << i << ": " << da << " vs " << db << ")");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

}  // namespace vidgrad
