// Element types and the helper that turns a runtime dtype into a kernel template argument.
#pragma once

#include <cstddef>
#include <cstdint>
#include <ostream>

#include "vidgrad/core/error.h"

namespace vidgrad {

enum class DType : std::uint8_t { kFloat32, kFloat64, kInt64 };

inline constexpr std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::kFloat32: return 4;
    case DType::kFloat64: return 8;
    case DType::kInt64: return 8;
  }
  return 0;
}

inline constexpr const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kInt64: return "int64";
  }
  return "?";
}

inline constexpr bool is_floating(DType t) { return t == DType::kFloat32 || t == DType::kFloat64; }

inline std::ostream& operator<<(std::ostream& os, DType t) { return os << dtype_name(t); }

template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::kFloat32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::kFloat64; };
template <> struct dtype_of<std::int64_t> { static constexpr DType value = DType::kInt64; };

// Calls f.template operator()<T>() with T = float or double; any other dtype is an error
// naming `op`. Kernels are written once as templates and instantiated for both.
template <typename F>
decltype(auto) dispatch_floating(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::kFloat32: return f.template operator()<float>();
    case DType::kFloat64: return f.template operator()<double>();
    default: VG_THROW(op << ": expected a float32 or float64 tensor, got " << dtype_name(t));
  }
}

}  // namespace vidgrad
