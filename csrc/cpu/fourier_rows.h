// Fourier layers with the grid samples in registers (AVX-512).
//
// A Fourier layer maps each row z of a tile (one (edge, field) pair, F
// coefficients) to u = P act(Q z): G grid samples, F' outputs.  The row
// kernels of small_gemm.h write the rows x G samples to memory, activate them
// there and read them back; here one AVX-512 register holds one grid sample of
// W rows (16 float / 8 double lanes) and the kernel walks the grid one sample
// at a time: F FMAs to sample, the activation, F' FMAs to project, with the
// entries of Q and P broadcast from L1.  No sample is written.
//
// The backward recomputes the samples the same way:
//     dz = Q^T (act'(Q z) * (P^T du)),
// The gradients of Q and P need every sample of every row (they are constant
// buffers in ImplicitKernel, so they are rarely requested): those calls keep the
// row kernels.
//
// Q and P^T come padded to N columns (zeros beyond F and F'): N is a
// compile-time width, so the coefficients of a block live in registers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "plan_contract.h"
#include "small_gemm.h"

namespace pyg_implicit {
namespace fourier_rows {

#ifdef PYGI_SMALL_GEMM
#define PYGI_FOURIER_ROWS 1

// AVX-512 present (F, DQ, BW, VL) and not switched off by
// PYG_IMPLICIT_CPU_FOURIER_ROWS=0 (read at every call: tests compare both).
bool available();

// The smallest instantiated width N >= max(F, F'), or 0 when there is none.
inline int padded_width(int64_t F, int64_t Fp) {
  const int64_t need = std::max(F, Fp);
  for (int n : {3, 4, 5, 8, 9, 12, 16})
    if (need <= n) return n;
  return 0;
}

// The first layer folded into its sampler (forward_folded_n) when its input
// is short: the padded input width IN, or 0 (not worth it / not instantiated).
inline int folded_width(int64_t in, int64_t F) {
  if (in + 1 >= F) return 0;  // IN + 1 operations per sample instead of F
  for (int n : {2, 3, 4, 8})
    if (in <= n) return n;
  return 0;
}

inline bool supports_activation(int64_t code) {
  return code == kElu || code == kRelu;
}

#define PYGI_TARGET512 \
  __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))

template <typename T>
struct V512 {
  typedef T type __attribute__((vector_size(64)));
  // the same for memory without 64-byte alignment
  typedef T utype __attribute__((vector_size(64), aligned(sizeof(T)), may_alias));
  static constexpr int W = 64 / sizeof(T);
};

// min / max / 2^n scaling as single AVX-512 instructions (the generic vector
// code compiles a compare and a blend for each select).  vmin/vmax return their
// second operand where either is NaN: callers put the input second, so NaN
// propagates as in the reference.
PYGI_TARGET512 PYGI_INLINE __m512 vmin(__m512 a, __m512 b) { return _mm512_min_ps(a, b); }
PYGI_TARGET512 PYGI_INLINE __m512d vmin(__m512d a, __m512d b) { return _mm512_min_pd(a, b); }
PYGI_TARGET512 PYGI_INLINE __m512 vmax(__m512 a, __m512 b) { return _mm512_max_ps(a, b); }
PYGI_TARGET512 PYGI_INLINE __m512d vmax(__m512d a, __m512d b) { return _mm512_max_pd(a, b); }
PYGI_TARGET512 PYGI_INLINE __m512 vscale(__m512 a, __m512 n) { return _mm512_scalef_ps(a, n); }
PYGI_TARGET512 PYGI_INLINE __m512d vscale(__m512d a, __m512d n) { return _mm512_scalef_pd(a, n); }

template <typename T>
using Native512 = typename std::conditional<sizeof(T) == 4, __m512, __m512d>::type;

// expm1(x) for x <= 0: the algorithm of small_gemm::expm1_nonpos (x = n ln2 + r,
// clamped below where exp underflows, p = expm1(r), result 2^n p + (2^n - 1)),
// with 2^n from vscalef.  float: p = r + r^2 q(r) with q a degree-4 fit of
// (expm1(r) - r) / r^2 on |r| <= ln2 / 2 (relative error 1.3e-8 in exact
// arithmetic, 1.2e-7 evaluated in float, as the degree-7 Taylor polynomial);
// double: small_gemm::expm1_nonpos_f64 as it is.
template <typename T, typename V>
PYGI_TARGET512 PYGI_INLINE V expm1_512(V x) {
  using M = Native512<T>;
  x = (V)vmax((M)(V{} + T(sizeof(T) == 4 ? -87.0 : -708.0)), (M)x);
  if constexpr (sizeof(T) == 4) {
    const V shifter = V{} + 12582912.0f;  // 1.5 * 2^23: rounds to integer
    const V n = (x * 1.44269504088896341f + shifter) - shifter;
    V r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    V p = V{} + 0.0013888995163142681f;
    p = p * r + 0.008366494439542294f;
    p = p * r + 0.041667092591524124f;
    p = p * r + 0.1666654348373413f;
    p = p * r + 0.5f;
    p = p * (r * r) + r;
    const V one = V{} + 1.0f;
    const V two_n = (V)vscale((__m512)one, (__m512)n);
    return two_n * p + (two_n - one);
  } else {  // double: small_gemm's generic-vector version (its own clamp, 2^n by bits)
    return small_gemm::expm1_nonpos_f64<V>(x);
  }
}

template <typename T, typename V, int ACT>
PYGI_TARGET512 PYGI_INLINE V activate(V s) {
  using M = Native512<T>;
  const V zero = {};
  if constexpr (ACT == kRelu) {
    return (V)vmax((M)zero, (M)s);
  } else {  // elu(s) = max(s, expm1(min(s, 0))): expm1(x) >= x
    const V e = expm1_512<T, V>((V)vmin((M)zero, (M)s));
    return (V)vmax((M)e, (M)s);
  }
}

// act'(s), equal to the contract's activation_derivative(y = act(s)):
// relu: y > 0 ? 1 : 0; elu: y > 0 ? 1 : y + 1, which is expm1(min(s, 0)) + 1
// (1 for s > 0; NaN stays NaN).
template <typename T, typename V, int ACT>
PYGI_TARGET512 PYGI_INLINE V derivative(V s) {
  using M = Native512<T>;
  const V zero = {}, one = V{} + T(1);
  if constexpr (ACT == kRelu) {
    return activate<T, V, ACT>(s) > zero ? one : zero;
  } else {
    return expm1_512<T, V>((V)vmin((M)zero, (M)s)) + one;
  }
}

// buf[k * W + lane] = M[lane, k] for lane < nr, k < cols; zeros elsewhere.
template <typename T, int N, int W>
PYGI_INLINE void load_transposed(const T* M, int64_t ld, int64_t nr, int64_t cols,
                                 T* buf) {
  for (int k = 0; k < N; ++k)
    for (int lane = 0; lane < W; ++lane)
      buf[k * W + lane] = (k < cols && lane < nr) ? M[lane * ld + k] : T(0);
}

template <typename T, int W>
PYGI_INLINE void store_transposed(const T* buf, int64_t nr, int64_t cols, T* M,
                                  int64_t ld) {
  for (int64_t lane = 0; lane < nr; ++lane)
    for (int64_t k = 0; k < cols; ++k) M[lane * ld + k] = buf[k * W + lane];
}

// U[r, :Fp] = P act(Q Z[r, :F])  for r < rows.  Qp, PTp: [G, N].
template <typename T, int N, int ACT>
PYGI_TARGET512 void forward_n(int64_t rows, int64_t F, int64_t Fp, int64_t G,
                              const T* Z, int64_t ldz, const T* Qp,
                              const T* PTp, T* U, int64_t ldu) {
  using V = typename V512<T>::type;
  constexpr int W = V512<T>::W;
  alignas(64) T buf[N * W];
  for (int64_t r0 = 0; r0 < rows; r0 += W) {
    const int64_t nr = std::min<int64_t>(W, rows - r0);
    load_transposed<T, N, W>(Z + r0 * ldz, ldz, nr, F, buf);
    V z[N], acc[N];
    for (int k = 0; k < N; ++k) {
      z[k] = *reinterpret_cast<const V*>(buf + k * W);
      acc[k] = V{};
    }
    // two grid samples per step: independent dependency chains (the sample
    // and its activation are a long serial chain of FMAs)
    int64_t g = 0;
    for (; g + 2 <= G; g += 2) {
      const T* q = Qp + g * N;
      const T* pt = PTp + g * N;
      V s0 = z[0] * q[0], s1 = z[0] * q[N];
      for (int k = 1; k < N; ++k) {
        s0 += z[k] * q[k];
        s1 += z[k] * q[N + k];
      }
      const V y0 = activate<T, V, ACT>(s0), y1 = activate<T, V, ACT>(s1);
      for (int p = 0; p < N; ++p) {
        acc[p] += y0 * pt[p];
        acc[p] += y1 * pt[N + p];
      }
    }
    for (; g < G; ++g) {
      const T* q = Qp + g * N;
      const T* pt = PTp + g * N;
      V s = z[0] * q[0];
      for (int k = 1; k < N; ++k) s += z[k] * q[k];
      const V y = activate<T, V, ACT>(s);
      for (int p = 0; p < N; ++p) acc[p] += y * pt[p];
    }
    for (int p = 0; p < N; ++p) *reinterpret_cast<V*>(buf + p * W) = acc[p];
    store_transposed<T, W>(buf, nr, Fp, U + r0 * ldu, ldu);
  }
}

// dZ[r, :F] = Q^T (act'(Q Z[r]) * (P^T dU[r, :Fp]))  for r < rows.
// scratch: G * W entries.
template <typename T, int N, int ACT>
PYGI_TARGET512 void backward_n(int64_t rows, int64_t F, int64_t Fp, int64_t G,
                               const T* Z, int64_t ldz, const T* dU,
                               int64_t lddu, const T* Qp, const T* PTp, T* dZ,
                               int64_t lddz, T* scratch) {
  using V = typename V512<T>::type;
  constexpr int W = V512<T>::W;
  alignas(64) T buf[N * W];
  using U = typename V512<T>::utype;  // scratch: aligned to T only
  U* ds = reinterpret_cast<U*>(scratch);
  for (int64_t r0 = 0; r0 < rows; r0 += W) {
    const int64_t nr = std::min<int64_t>(W, rows - r0);
    V z[N], du[N];
    load_transposed<T, N, W>(Z + r0 * ldz, ldz, nr, F, buf);
    for (int k = 0; k < N; ++k) z[k] = *reinterpret_cast<const V*>(buf + k * W);
    load_transposed<T, N, W>(dU + r0 * lddu, lddu, nr, Fp, buf);
    for (int p = 0; p < N; ++p) du[p] = *reinterpret_cast<const V*>(buf + p * W);
    int64_t g = 0;
    for (; g + 2 <= G; g += 2) {  // ds_g = act'(s_g) (P^T du)_g, two at a time
      const T* q = Qp + g * N;
      const T* pt = PTp + g * N;
      V s0 = z[0] * q[0], dy0 = du[0] * pt[0];
      V s1 = z[0] * q[N], dy1 = du[0] * pt[N];
      for (int k = 1; k < N; ++k) {
        s0 += z[k] * q[k];
        dy0 += du[k] * pt[k];
        s1 += z[k] * q[N + k];
        dy1 += du[k] * pt[N + k];
      }
      ds[g] = (U)(dy0 * derivative<T, V, ACT>(s0));
      ds[g + 1] = (U)(dy1 * derivative<T, V, ACT>(s1));
    }
    for (; g < G; ++g) {
      const T* q = Qp + g * N;
      const T* pt = PTp + g * N;
      V s = z[0] * q[0], dy = du[0] * pt[0];
      for (int k = 1; k < N; ++k) {
        s += z[k] * q[k];
        dy += du[k] * pt[k];
      }
      ds[g] = (U)(dy * derivative<T, V, ACT>(s));
    }
    V dz[N];
    for (int k = 0; k < N; ++k) dz[k] = V{};
    for (int64_t g = 0; g < G; ++g) {  // dz = Q^T ds
      const T* q = Qp + g * N;
      const V d = (V)ds[g];
      for (int k = 0; k < N; ++k) dz[k] += d * q[k];
    }
    for (int k = 0; k < N; ++k) *reinterpret_cast<V*>(buf + k * W) = dz[k];
    store_transposed<T, W>(buf, nr, F, dZ + r0 * lddz, lddz);
  }
}

// The first layer, folded into its sampler: for an edge with input u (in
// entries, the MLP's u_0) and a field f the samples are
//     Q (W_f u + b_f) = (Q W_f) u + Q b_f,
// so with QWb_f = [Q W_f, Q b_f] ([G, IN + 1], zero-padded beyond in) a sample
// costs in + 1 FMAs instead of F, and z is never formed.  Lanes are W edges, one
// field at a time (QWb differs per field).  QWb: [fields, G, IN + 1];
// U1[e, f Fp + p] for e < edges.
template <typename T, int N, int IN, int ACT>
PYGI_TARGET512 void forward_folded_n(int64_t edges, int64_t fields, int64_t in,
                                     int64_t Fp, int64_t G, const T* U0, int64_t ldu0,
                                     const T* QWb, const T* PTp, T* U1, int64_t ldu1) {
  using V = typename V512<T>::type;
  constexpr int W = V512<T>::W;
  constexpr int B = N > IN ? N : IN;
  alignas(64) T buf[B * W];
  for (int64_t e0 = 0; e0 < edges; e0 += W) {
    const int64_t nr = std::min<int64_t>(W, edges - e0);
    load_transposed<T, IN, W>(U0 + e0 * ldu0, ldu0, nr, in, buf);
    V u[IN];
    for (int k = 0; k < IN; ++k) u[k] = *reinterpret_cast<const V*>(buf + k * W);
    for (int64_t f = 0; f < fields; ++f) {
      const T* qw = QWb + f * G * (IN + 1);
      V acc[N];
      for (int p = 0; p < N; ++p) acc[p] = V{};
      int64_t g = 0;
      for (; g + 2 <= G; g += 2) {
        const T* q = qw + g * (IN + 1);
        const T* pt = PTp + g * N;
        V s0 = V{} + q[IN], s1 = V{} + q[2 * IN + 1];
        for (int k = 0; k < IN; ++k) {
          s0 += u[k] * q[k];
          s1 += u[k] * q[IN + 1 + k];
        }
        const V y0 = activate<T, V, ACT>(s0), y1 = activate<T, V, ACT>(s1);
        for (int p = 0; p < N; ++p) {
          acc[p] += y0 * pt[p];
          acc[p] += y1 * pt[N + p];
        }
      }
      for (; g < G; ++g) {
        const T* q = qw + g * (IN + 1);
        const T* pt = PTp + g * N;
        V s = V{} + q[IN];
        for (int k = 0; k < IN; ++k) s += u[k] * q[k];
        const V y = activate<T, V, ACT>(s);
        for (int p = 0; p < N; ++p) acc[p] += y * pt[p];
      }
      for (int p = 0; p < N; ++p) *reinterpret_cast<V*>(buf + p * W) = acc[p];
      store_transposed<T, W>(buf, nr, Fp, U1 + e0 * ldu1 + f * Fp, ldu1);
    }
  }
}

// Dispatch on (N, activation); false when unsupported (the caller falls back).
template <typename T, template <typename, int, int> class Fn, typename... Args>
bool dispatch(int n, int64_t act, Args... args) {
  auto with_act = [&](auto act_tag) {
    constexpr int A = decltype(act_tag)::value;
    switch (n) {
      case 3: Fn<T, 3, A>::run(args...); return true;
      case 4: Fn<T, 4, A>::run(args...); return true;
      case 5: Fn<T, 5, A>::run(args...); return true;
      case 8: Fn<T, 8, A>::run(args...); return true;
      case 9: Fn<T, 9, A>::run(args...); return true;
      case 12: Fn<T, 12, A>::run(args...); return true;
      case 16: Fn<T, 16, A>::run(args...); return true;
      default: return false;
    }
  };
  if (act == kElu) return with_act(std::integral_constant<int, kElu>{});
  if (act == kRelu) return with_act(std::integral_constant<int, kRelu>{});
  return false;
}

template <typename T, int N, int ACT>
struct Forward {
  template <typename... Args>
  static void run(Args... a) { forward_n<T, N, ACT>(a...); }
};
template <typename T, int N, int ACT>
struct Backward {
  template <typename... Args>
  static void run(Args... a) { backward_n<T, N, ACT>(a...); }
};

template <int IN>
struct FoldedAt {
  template <typename T, int N, int ACT>
  struct Fn {
    template <typename... Args>
    static void run(Args... a) { forward_folded_n<T, N, IN, ACT>(a...); }
  };
};

template <typename T>
bool forward_folded(int n, int in_pad, int64_t act, int64_t edges, int64_t fields,
                    int64_t in, int64_t Fp, int64_t G, const T* U0, int64_t ldu0,
                    const T* QWb, const T* PTp, T* U1, int64_t ldu1) {
  switch (in_pad) {
#define PYGI_FOLDED(IN)                                                           \
  case IN:                                                                       \
    return dispatch<T, FoldedAt<IN>::template Fn>(n, act, edges, fields, in, Fp, G, \
                                                  U0, ldu0, QWb, PTp, U1, ldu1);
    PYGI_FOLDED(2)
    PYGI_FOLDED(3)
    PYGI_FOLDED(4)
    PYGI_FOLDED(8)
#undef PYGI_FOLDED
    default: return false;
  }
}

template <typename T>
bool forward(int n, int64_t act, int64_t rows, int64_t F, int64_t Fp, int64_t G,
             const T* Z, int64_t ldz, const T* Qp, const T* PTp, T* U, int64_t ldu) {
  return dispatch<T, Forward>(n, act, rows, F, Fp, G, Z, ldz, Qp, PTp, U, ldu);
}

template <typename T>
bool backward(int n, int64_t act, int64_t rows, int64_t F, int64_t Fp, int64_t G,
              const T* Z, int64_t ldz, const T* dU, int64_t lddu, const T* Qp,
              const T* PTp, T* dZ, int64_t lddz, T* scratch) {
  return dispatch<T, Backward>(n, act, rows, F, Fp, G, Z, ldz, dU, lddu, Qp, PTp,
                               dZ, lddz, scratch);
}

#undef PYGI_TARGET512
#else
inline bool available() { return false; }
inline int padded_width(int64_t, int64_t) { return 0; }
inline int folded_width(int64_t, int64_t) { return 0; }
inline bool supports_activation(int64_t) { return false; }
template <typename T, typename... Args>
bool forward(Args...) { return false; }
template <typename T, typename... Args>
bool backward(Args...) { return false; }
template <typename T, typename... Args>
bool forward_folded(Args...) { return false; }
#endif

}  // namespace fourier_rows
}  // namespace pyg_implicit
