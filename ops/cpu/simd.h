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
  // For loads and stores at any element-aligned address; may alias T.
  typedef T unaligned __attribute__((vector_size(kVecBytes), aligned(sizeof(T)), may_alias));
  static constexpr std::int64_t kLanes = kVecBytes / sizeof(T);
};

// v = p[0 .. kLanes), p[0 .. kLanes) = v, for any element-aligned p.
template <typename T>
inline typename Vec<T>::type load_vec(const T* p) {
  return *reinterpret_cast<const typename Vec<T>::unaligned*>(p);
}
template <typename T>
inline void store_vec(T* p, typename Vec<T>::type v) {
  *reinterpret_cast<typename Vec<T>::unaligned*>(p) = v;
}

}  // namespace vidgrad::cpu
