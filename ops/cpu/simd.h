// The vector type of vidgrad's own CPU kernels (row GEMM, direct planes): a GCC/Clang
// vector extension one register wide (64 bytes with AVX-512, else 32), so the kernels are
// plain C++ arithmetic on vectors and the compiler picks the instructions.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

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

// Requests [p, p + bytes) into L2, a 64-byte cache line at a time: data a kernel reads
// soon from rows the hardware prefetchers do not follow (Note [B prefetch] in row_gemm.cpp).
inline void prefetch_l2(const void* p, std::int64_t bytes) {
  const char* b = static_cast<const char*>(p);
  for (std::int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(b + off, 0, 2);
}

// v = p[0 .. kLanes), p[0 .. kLanes) = v, for any element-aligned p.
template <typename T>
inline typename Vec<T>::type load_vec(const T* p) {
  return *reinterpret_cast<const typename Vec<T>::unaligned*>(p);
}
template <typename T>
inline void store_vec(T* p, typename Vec<T>::type v) {
  *reinterpret_cast<typename Vec<T>::unaligned*>(p) = v;
}

// a * b + c per lane, rounded once (as std::fma), whatever the compiler's contraction
// setting: batch norm's backward recomputes its forward's ReLU input bit for bit.
template <typename T>
inline typename Vec<T>::type fma_vec(typename Vec<T>::type a, typename Vec<T>::type b, typename Vec<T>::type c) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>)
    return reinterpret_cast<typename Vec<T>::type>(
        _mm512_fmadd_ps(reinterpret_cast<__m512>(a), reinterpret_cast<__m512>(b), reinterpret_cast<__m512>(c)));
  else
    return reinterpret_cast<typename Vec<T>::type>(
        _mm512_fmadd_pd(reinterpret_cast<__m512d>(a), reinterpret_cast<__m512d>(b), reinterpret_cast<__m512d>(c)));
#else
  typename Vec<T>::type r;
  for (int i = 0; i < static_cast<int>(Vec<T>::kLanes); ++i) r[i] = std::fma(a[i], b[i], c[i]);
  return r;
#endif
}

// relu(fma(v, a, b)) per lane, as relu() after batch_norm_apply (NaN becomes 0): a batch
// norm with its ReLU applied to values a conv reads (Note [input prologue] in conv3d_cpu.h).
template <typename T>
inline typename Vec<T>::type relu_fma(typename Vec<T>::type v, typename Vec<T>::type a, typename Vec<T>::type b) {
  v = fma_vec<T>(v, a, b);
  return v > T(0) ? v : typename Vec<T>::type{};
}

// g where y > 0, else 0, per lane (a ReLU's backward; as relu(): NaN passes nothing). g is
// pinned to a register first: g++ otherwise folds the select into g's load as a masked
// load, about twice as slow on this CPU (Note [backward in vectors] in batch_norm_cpu.cpp).
template <typename V>
inline V relu_pass(V y, V g) {
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+v"(g));
#endif
  return y > V{} ? g : V{};
}

// The mask of the first min(n, kLanes) lanes (n >= 0): a run's last, partial vector.
template <typename T>
inline std::uint32_t first_lanes(std::int64_t n) {
  return n >= Vec<T>::kLanes ? ~0u : (1u << n) - 1u;
}

// v[i] = p[i] for the lanes i whose bit is set in mask, else 0; the other lanes' memory is
// not read (AVX-512 masked loads do not fault there).
template <typename T>
inline typename Vec<T>::type load_lanes(const T* p, std::uint32_t mask) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>)
    return reinterpret_cast<typename Vec<T>::type>(_mm512_maskz_loadu_ps(static_cast<__mmask16>(mask), p));
  else
    return reinterpret_cast<typename Vec<T>::type>(_mm512_maskz_loadu_pd(static_cast<__mmask8>(mask), p));
#else
  typename Vec<T>::type v{};
  for (int i = 0; i < static_cast<int>(Vec<T>::kLanes); ++i)
    if (mask >> i & 1u) v[i] = p[i];
  return v;
#endif
}

// v[i] for the lanes i whose bit is set in mask, else 0.
template <typename T>
inline typename Vec<T>::type keep_lanes(typename Vec<T>::type v, std::uint32_t mask) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>)
    return reinterpret_cast<typename Vec<T>::type>(
        _mm512_maskz_mov_ps(static_cast<__mmask16>(mask), reinterpret_cast<__m512>(v)));
  else
    return reinterpret_cast<typename Vec<T>::type>(
        _mm512_maskz_mov_pd(static_cast<__mmask8>(mask), reinterpret_cast<__m512d>(v)));
#else
  for (int i = 0; i < static_cast<int>(Vec<T>::kLanes); ++i)
    if (!(mask >> i & 1u)) v[i] = T(0);
  return v;
#endif
}

// p[i] = v[i] for the lanes i whose bit is set in mask; the other lanes' memory is not
// touched (AVX-512 masked stores do not fault there).
template <typename T>
inline void store_lanes(T* p, typename Vec<T>::type v, std::uint32_t mask) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>)
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>(mask), reinterpret_cast<__m512>(v));
  else
    _mm512_mask_storeu_pd(p, static_cast<__mmask8>(mask), reinterpret_cast<__m512d>(v));
#else
  for (int i = 0; i < static_cast<int>(Vec<T>::kLanes); ++i)
    if (mask >> i & 1u) p[i] = v[i];
#endif
}

// Lane shuffles of two vectors (a, b), read as one run a0 .. a(L-1) b0 .. b(L-1):
// even_lanes (a0 a2 .. b0 b2 ..) and odd_lanes (a1 a3 .. b1 b3 ..) take a row apart into
// its two column phases; zip_low (a0 b0 a1 b1 ..) and zip_high (the same from the high
// halves) put two rows together again, and transpose kL x kL blocks in rounds.
template <typename T>
struct LaneIndex {  // the integer vector __builtin_shuffle takes for Vec<T>
  using I = std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t>;
  typedef I type __attribute__((vector_size(kVecBytes)));
};

template <typename T>
inline typename Vec<T>::type even_lanes(typename Vec<T>::type a, typename Vec<T>::type b) {
  typename LaneIndex<T>::type idx;
  for (std::int64_t k = 0; k < Vec<T>::kLanes; ++k) idx[k] = 2 * k;
  return __builtin_shuffle(a, b, idx);
}
template <typename T>
inline typename Vec<T>::type odd_lanes(typename Vec<T>::type a, typename Vec<T>::type b) {
  typename LaneIndex<T>::type idx;
  for (std::int64_t k = 0; k < Vec<T>::kLanes; ++k) idx[k] = 2 * k + 1;
  return __builtin_shuffle(a, b, idx);
}
template <typename T>
inline typename Vec<T>::type zip_low(typename Vec<T>::type a, typename Vec<T>::type b) {
  constexpr std::int64_t kL = Vec<T>::kLanes;
  typename LaneIndex<T>::type idx;
  for (std::int64_t k = 0; k < kL; ++k) idx[k] = (k % 2 ? kL : 0) + k / 2;
  return __builtin_shuffle(a, b, idx);
}
template <typename T>
inline typename Vec<T>::type zip_high(typename Vec<T>::type a, typename Vec<T>::type b) {
  constexpr std::int64_t kL = Vec<T>::kLanes;
  typename LaneIndex<T>::type idx;
  for (std::int64_t k = 0; k < kL; ++k) idx[k] = (k % 2 ? kL : 0) + kL / 2 + k / 2;
  return __builtin_shuffle(a, b, idx);
}

// r[k] = (r[0][k], ..., r[kL - 1][k]): a kL x kL block of kL rows transposed in registers
// by log2(kL) rounds of interleaving row i with row i + kL/2 (each round rotates the index
// bits; after all of them row k holds column k).
template <typename T>
inline void transpose_lanes(typename Vec<T>::type* r) {
  using V = typename Vec<T>::type;
  constexpr int L = static_cast<int>(Vec<T>::kLanes);
  for (int round = 1; round < L; round *= 2) {
    V t[L];
    for (int i = 0; i < L / 2; ++i) {
      t[2 * i] = zip_low<T>(r[i], r[i + L / 2]);
      t[2 * i + 1] = zip_high<T>(r[i], r[i + L / 2]);
    }
    for (int i = 0; i < L; ++i) r[i] = t[i];
  }
}

// out[3i + k] = (a, b, c)[k][i] for i < kL: three vectors stored interleaved (a weight
// gradient's three taps per (output, input) channel pair), each of the three output
// vectors by two two-source shuffles.
template <typename T>
inline void store_interleaved3(typename Vec<T>::type a, typename Vec<T>::type b, typename Vec<T>::type c, T* out) {
  constexpr std::int64_t kL = Vec<T>::kLanes;
  for (std::int64_t j = 0; j < 3; ++j) {
    typename LaneIndex<T>::type ab, tc;
    for (std::int64_t l = 0; l < kL; ++l) {
      const std::int64_t f = j * kL + l, i = f / 3, k = f % 3;
      ab[l] = k == 1 ? kL + i : i;  // a[i] or b[i] (lanes of c: a[i], replaced next)
      tc[l] = k == 2 ? kL + i : l;
    }
    store_vec(out + j * kL, __builtin_shuffle(__builtin_shuffle(a, b, ab), c, tc));
  }
}

// (a, b, c)[k][i] = in[3i + k] for i < kL: the inverse of store_interleaved3 (a filter's
// three taps per (output, input) channel pair, taken apart), each output vector by two
// two-source shuffles of the three loaded ones. n < 3 kL values: the rest read as zeros.
template <typename T>
inline void load_deinterleaved3(const T* in, typename Vec<T>::type& a, typename Vec<T>::type& b,
                                typename Vec<T>::type& c, std::int64_t n = 3 * Vec<T>::kLanes) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t kL = Vec<T>::kLanes;
  V v[3];
  for (std::int64_t j = 0; j < 3; ++j) {
    const std::int64_t m = std::clamp<std::int64_t>(n - j * kL, 0, kL);
    v[j] = m == kL ? load_vec(in + j * kL) : m > 0 ? load_lanes(in + j * kL, first_lanes<T>(m)) : V{};
  }
  V* out[3] = {&a, &b, &c};
  for (std::int64_t k = 0; k < 3; ++k) {
    typename LaneIndex<T>::type lo, hi;
    for (std::int64_t i = 0; i < kL; ++i) {
      const std::int64_t f = 3 * i + k;  // in v[f / kL], lane f % kL
      lo[i] = f < 2 * kL ? f : i;       // from v0 and v1 (lanes from v2: a placeholder, replaced next)
      hi[i] = f < 2 * kL ? i : kL + f - 2 * kL;
    }
    *out[k] = __builtin_shuffle(__builtin_shuffle(v[0], v[1], lo), v[2], hi);
  }
}

// even[m] = f(s[2m]) and odd[m] = f(s[2m + 1]) for 2m (+ 1) < n: a row's two column
// phases (stride-2 convs and pools), f applied to vectors of values as they are loaded
// (lanes past n are not stored).
struct SameValues {
  template <typename V>
  V operator()(V v) const {
    return v;
  }
};
template <typename T, typename F = SameValues>
inline void deinterleave_row(const T* s, std::int64_t n, T* even, T* odd, const F& f = {}) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t kL = Vec<T>::kLanes;
  std::int64_t i = 0;
  for (; i + 2 * kL <= n; i += 2 * kL) {
    const V v0 = f(load_vec(s + i)), v1 = f(load_vec(s + i + kL));
    store_vec(even + i / 2, even_lanes<T>(v0, v1));
    store_vec(odd + i / 2, odd_lanes<T>(v0, v1));
  }
  if (i < n) {  // the last 1 .. 2 kL - 1 values: masked
    const std::int64_t r = n - i;
    const V v0 = f(load_lanes(s + i, first_lanes<T>(r)));
    const V v1 = r > kL ? f(load_lanes(s + i + kL, first_lanes<T>(r - kL))) : V{};
    store_lanes(even + i / 2, even_lanes<T>(v0, v1), first_lanes<T>((r + 1) / 2));
    store_lanes(odd + i / 2, odd_lanes<T>(v0, v1), first_lanes<T>(r / 2));
  }
}

// out[2m] = a[m] and out[2m + 1] = b[m] for m < n: the inverse of deinterleave_row; out
// takes 2n values rounded up to whole vectors, a and b n rounded up (lanes past n are
// stored, not read by the caller).
template <typename T>
inline void interleave_rows(const T* a, const T* b, std::int64_t n, T* out) {
  using V = typename Vec<T>::type;
  constexpr std::int64_t kL = Vec<T>::kLanes;
  for (std::int64_t m = 0; m < n; m += kL) {
    const V va = load_vec(a + m), vb = load_vec(b + m);
    store_vec(out + 2 * m, zip_low<T>(va, vb));
    store_vec(out + 2 * m + kL, zip_high<T>(va, vb));
  }
}

}  // namespace vidgrad::cpu
