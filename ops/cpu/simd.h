// The vector type of vidgrad's own CPU kernels (row GEMM, direct planes): a GCC/Clang
// vector extension one register wide (64 bytes with AVX-512, else 32), so the kernels are
// plain C++ arithmetic on vectors and the compiler picks the instructions.
#pragma once

#include <cstdint>

namespace vidgrad::cpu {

#if defined(__AVX512F__)
inline constexpr int kVecBytes = 64;
#else
inline constexpr int kVecBytes = 32;
#endif

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(kVecBytes)));
  static constexpr std::int64_t kLanes = kVecBytes / sizeof(T);
};

}  // namespace vidgrad::cpu
