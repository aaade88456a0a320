// Row kernels for the skinny products of a Fourier layer (a few sampler
// columns F against a grid of G samples).  BLAS handles these shapes
// (K = F or N = F with F ~ 9) poorly; here they are vectorised along the
// grid dimension G.  x86-64 with AVX2/FMA only (runtime check); everywhere
// else the caller uses BLAS.
//
// All matrices are row-major with the given leading dimensions.
#pragma once

#include <cstdint>
#include <cmath>
#include <cstring>

namespace pyg_implicit {
namespace small_gemm {

#if defined(__x86_64__) && defined(__GNUC__)
#define PYGI_SMALL_GEMM 1

bool available();  // AVX2 + FMA present

template <typename T>
struct Vec;
// `type` is a naturally aligned AVX register; `utype` the same for
// unaligned memory access.
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
  typedef float utype __attribute__((vector_size(32), aligned(4), may_alias));
  static constexpr int W = 8;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
  typedef double utype __attribute__((vector_size(32), aligned(8), may_alias));
  static constexpr int W = 4;
};

#define PYGI_TARGET __attribute__((target("avx2,fma")))

template <typename T>
PYGI_TARGET inline typename Vec<T>::type vload(const T* p) {
  return *reinterpret_cast<const typename Vec<T>::utype*>(p);
}

template <typename T>
PYGI_TARGET inline void vstore(T* p, typename Vec<T>::type v) {
  *reinterpret_cast<typename Vec<T>::utype*>(p) = v;
}

template <typename T>
PYGI_TARGET inline T hsum(typename Vec<T>::type v) {
  T s = 0;
  for (int i = 0; i < Vec<T>::W; ++i) s += v[i];
  return s;
}

// C[r, :G] = sum_k A[r, k] B[k, :G]   for r < rows   (B: [K, G], ld G)
template <typename T>
PYGI_TARGET void rows_axpy(int64_t rows, int64_t K, int64_t G, const T* A,
                           int64_t lda, const T* B, T* C, int64_t ldc) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::W;
  for (int64_t r = 0; r < rows; ++r) {
    const T* a = A + r * lda;
    T* c = C + r * ldc;
    int64_t g = 0;
    for (; g + 4 * W <= G; g += 4 * W) {
      V c0 = {}, c1 = {}, c2 = {}, c3 = {};
      for (int64_t k = 0; k < K; ++k) {
        const T* b = B + k * G + g;
        const T ak = a[k];
        c0 += ak * vload<T>(b);
        c1 += ak * vload<T>(b + W);
        c2 += ak * vload<T>(b + 2 * W);
        c3 += ak * vload<T>(b + 3 * W);
      }
      vstore<T>(c + g, c0);
      vstore<T>(c + g + W, c1);
      vstore<T>(c + g + 2 * W, c2);
      vstore<T>(c + g + 3 * W, c3);
    }
    for (; g + W <= G; g += W) {
      V c0 = {};
      for (int64_t k = 0; k < K; ++k) c0 += a[k] * vload<T>(B + k * G + g);
      vstore<T>(c + g, c0);
    }
    for (; g < G; ++g) {
      T s = 0;
      for (int64_t k = 0; k < K; ++k) s += a[k] * B[k * G + g];
      c[g] = s;
    }
  }
}

// C[r, p] = sum_g A[r, g] B[p, g]   for r < rows, p < P   (B: [P, G], ld G)
template <typename T>
PYGI_TARGET void rows_dot(int64_t rows, int64_t G, int64_t P, const T* A,
                          int64_t lda, const T* B, T* C, int64_t ldc) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::W;
  int64_t r = 0;
  for (; r + 2 <= rows; r += 2) {  // two rows share the loads of B
    const T* a0 = A + r * lda;
    const T* a1 = a0 + lda;
    for (int64_t p = 0; p < P; ++p) {
      const T* b = B + p * G;
      V s0 = {}, s1 = {}, t0 = {}, t1 = {};
      int64_t g = 0;
      for (; g + 2 * W <= G; g += 2 * W) {
        const V b0 = vload<T>(b + g), b1 = vload<T>(b + g + W);
        s0 += vload<T>(a0 + g) * b0;
        s1 += vload<T>(a0 + g + W) * b1;
        t0 += vload<T>(a1 + g) * b0;
        t1 += vload<T>(a1 + g + W) * b1;
      }
      for (; g + W <= G; g += W) {
        const V b0 = vload<T>(b + g);
        s0 += vload<T>(a0 + g) * b0;
        t0 += vload<T>(a1 + g) * b0;
      }
      T u0 = hsum<T>(s0 + s1), u1 = hsum<T>(t0 + t1);
      for (; g < G; ++g) {
        u0 += a0[g] * b[g];
        u1 += a1[g] * b[g];
      }
      C[r * ldc + p] = u0;
      C[(r + 1) * ldc + p] = u1;
    }
  }
  for (; r < rows; ++r) {
    const T* a0 = A + r * lda;
    for (int64_t p = 0; p < P; ++p) {
      const T* b = B + p * G;
      V s0 = {}, s1 = {};
      int64_t g = 0;
      for (; g + 2 * W <= G; g += 2 * W) {
        s0 += vload<T>(a0 + g) * vload<T>(b + g);
        s1 += vload<T>(a0 + g + W) * vload<T>(b + g + W);
      }
      for (; g + W <= G; g += W) s0 += vload<T>(a0 + g) * vload<T>(b + g);
      T u0 = hsum<T>(s0 + s1);
      for (; g < G; ++g) u0 += a0[g] * b[g];
      C[r * ldc + p] = u0;
    }
  }
}

// C[k, :G] += sum_r A[r, k] B[r, :G]   for k < K   (C: [K, G], ld G)
template <typename T>
PYGI_TARGET void outer_acc(int64_t rows, int64_t K, int64_t G, const T* A,
                           int64_t lda, const T* B, int64_t ldb, T* C) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::W;
  constexpr int64_t RB = 16;  // rows per block (B block stays in L1)
  for (int64_t r0 = 0; r0 < rows; r0 += RB) {
    const int64_t r1 = r0 + RB < rows ? r0 + RB : rows;
    for (int64_t k = 0; k < K; ++k) {
      T* c = C + k * G;
      int64_t g = 0;
      for (; g + 2 * W <= G; g += 2 * W) {
        V c0 = vload<T>(c + g), c1 = vload<T>(c + g + W);
        for (int64_t r = r0; r < r1; ++r) {
          const T a = A[r * lda + k];
          c0 += a * vload<T>(B + r * ldb + g);
          c1 += a * vload<T>(B + r * ldb + g + W);
        }
        vstore<T>(c + g, c0);
        vstore<T>(c + g + W, c1);
      }
      for (; g + W <= G; g += W) {
        V c0 = vload<T>(c + g);
        for (int64_t r = r0; r < r1; ++r)
          c0 += A[r * lda + k] * vload<T>(B + r * ldb + g);
        vstore<T>(c + g, c0);
      }
      for (; g < G; ++g) {
        T s = c[g];
        for (int64_t r = r0; r < r1; ++r) s += A[r * lda + k] * B[r * ldb + g];
        c[g] = s;
      }
    }
  }
}


// ---- ELU (alpha = 1): x > 0 ? x : exp(x) - 1 -------------------------------
// exp(x) - 1 = 2^n (1 + p) - 1 = 2^n p + (2^n - 1) with x = n ln2 + r,
// |r| <= ln2 / 2 and p = expm1(r) by its Taylor polynomial (n = 0 gives p
// itself, so small |x| keep full relative accuracy).  Written for any GCC
// vector of float / double lanes (AVX2 here, AVX-512 in fourier_rows.h); always
// inlined, so they compile for the instruction set of their caller.
#define PYGI_INLINE __attribute__((always_inline)) inline

template <typename V>
PYGI_INLINE V expm1_nonpos_f32(V x) {
  typedef int32_t VI __attribute__((vector_size(sizeof(V))));
  const V lo = V{} - 87.0f;
  x = x < lo ? lo : x;
  const V shifter = V{} + 12582912.0f;  // 1.5 * 2^23: rounds to integer
  const V t = x * 1.44269504088896341f + shifter;
  const V n = t - shifter;
  V r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  V p = V{} + 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * (r * r) + r;
  const VI bits = (VI)t;
  const V two_n = (V)((bits - 0x4B400000 + 127) << 23);
  return two_n * p + (two_n - 1.0f);
}

template <typename V>
PYGI_INLINE V expm1_nonpos_f64(V x) {
  typedef int64_t VI __attribute__((vector_size(sizeof(V))));
  const V lo = V{} - 708.0;
  x = x < lo ? lo : x;
  const V shifter = V{} + 6755399441055744.0;  // 1.5 * 2^52
  const V t = x * 1.4426950408889634074 + shifter;
  const V n = t - shifter;
  V r = x - n * 6.93147180369123816490e-01;
  r = r - n * 1.90821492927058770002e-10;
  V p = V{} + 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * (r * r) + r;
  const VI bits = (VI)t;
  const V two_n = (V)((bits - (VI{} + 0x4338000000000000LL) + 1023) << 52);
  return two_n * p + (two_n - 1.0);
}

// expm1 of x <= 0 for a vector of T lanes.
template <typename T, typename V>
PYGI_INLINE V expm1_nonpos(V x) {
  if constexpr (sizeof(T) == 4) {
    return expm1_nonpos_f32<V>(x);
  } else {
    return expm1_nonpos_f64<V>(x);
  }
}

template <typename T>
PYGI_TARGET void elu_inplace(T* x, int64_t n) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::W;
  const V zero = {};
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const V v = vload<T>(x + i);
    const V e = expm1_nonpos<T, V>(v < zero ? v : zero);
    vstore<T>(x + i, v > zero ? v : e);
  }
  for (; i < n; ++i) x[i] = x[i] > T(0) ? x[i] : std::expm1(x[i]);
}

#undef PYGI_TARGET
#else
inline bool available() { return false; }
#endif

}  // namespace small_gemm
}  // namespace pyg_implicit
