// Device building blocks of the fused CUDA point convolution.
//
// Everything here is executed cooperatively by all threads of one block on
// small per-block tiles (TE edges) that live in shared memory. Loops have a
// fixed trip order, so every result is bitwise reproducible.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "plan_contract.h"

namespace pyg_implicit_cuda {

constexpr int kMaxLayers = 8;  // plan layers supported by the CUDA kernels
constexpr int kThreads = 256;  // threads per block of the edge kernels
constexpr int kRowTile = 4;    // rows per thread in tile_gemm (register tile)
// entries of A_i = sum_e g_e (x) f_j each thread keeps in registers across the
// tiles of a row: rows with (H + 1) C_in <= kAccPerThread * kThreads (2048)
// never go through global memory until the row is done
constexpr int kAccPerThread = 8;
// Fourier layers with F <= kMaxFusedF and F' <= kMaxFusedFp are sampled,
// activated and projected per (edge, field) in registers by the forward
// (tile_fourier_fused): their grid samples never touch shared memory
constexpr int kMaxFusedF = 16;
constexpr int kMaxFusedFp = 16;

// ---------------------------------------------------------------------------
// Plan description passed by value (as a __grid_constant__ kernel parameter).
// ---------------------------------------------------------------------------
template <typename T>
struct LayerP {
  const T* W;   // [hp, in]   (original layout, used by the backward)
  const T* WT;  // [in, hp]   (transposed copy, coalesced forward reads)
  const T* b;   // [hp]
  const T* Q;   // [G, F]     (Fourier only)
  const T* QT;  // [F, G]
  const T* P;   // [Fp, G]
  const T* PT;  // [G, Fp]
  int in;       // H_{l-1}
  int hp;       // H'_l (rows of W)
  int out;      // H_l
  int M, F, G, Fp;
  int act;      // activation code
  int fourier;  // 1 if sampler/projector are present
  // offsets into the flat parameter-gradient vector (backward)
  int64_t off_W, off_b, off_Q, off_P;
  // offsets (in elements of T, for TE edges) of the stored activations in the
  // backward kernel's shared memory
  int64_t sm_z, sm_S, sm_u_out;
};

template <typename T>
struct PlanP {
  LayerP<T> layer[kMaxLayers];
  int L;      // number of layers
  int d;      // position dimension
  int A;      // edge attribute dimension
  int H0;     // d + A
  int H;      // H_L (hidden size before the envelope column)
  int C_in;
  int maxU;   // max_l H_l (l = 0..L), >= 1
  int maxZ;   // max_l H'_l, >= 1
  int maxS;   // max_l M_l * G_l over Fourier layers, >= 1
  int maxS_fwd;  // the same over Fourier layers the forward cannot fuse, >= 0
  const T* width;  // 0-d device tensor
  int64_t off_width;
  int64_t n_params;
};

// Shared-memory layout of the forward kernel (offsets in elements of T).
struct FwdLayout {
  int64_t bufA, bufB, z, s, x, env, g, f, total;
};

template <typename T>
__host__ __device__ inline FwdLayout fwd_layout(const PlanP<T>& p, int TE) {
  FwdLayout o;
  int64_t c = 0;
  o.bufA = c; c += (int64_t)TE * p.maxU;
  o.bufB = c; c += (int64_t)TE * p.maxU;
  o.z = c;    c += (int64_t)TE * p.maxZ;
  o.s = c;    c += (int64_t)TE * p.maxS_fwd;
  o.x = c;    c += (int64_t)TE * p.d;
  o.env = c;  c += TE;
  o.g = c;    c += (int64_t)TE * (p.H + 1);
  o.f = c;    c += (int64_t)TE * p.C_in;
  o.total = c;
  return o;
}

// Shared-memory layout of the backward kernel. The per-layer stored
// activations (z_l, S_l, u_l) are written into p.layer[l].sm_* by the host
// (see bwd_layout_fill); the remaining buffers are here.
struct BwdLayout {
  int64_t x, env, ds, wcon, dxs, u0, scratch, g, f, dg, du, dz, total;
};

// Fills the layer offsets of `p` and returns the rest of the layout.
template <typename T>
inline BwdLayout bwd_layout_fill(PlanP<T>& p, int TE) {
  BwdLayout o;
  int64_t c = 0;
  o.x = c;    c += (int64_t)TE * p.d;
  o.env = c;  c += TE;
  o.ds = c;   c += TE;
  o.wcon = c; c += TE;
  o.dxs = c;  c += (int64_t)TE * p.d;
  o.u0 = c;   c += (int64_t)TE * p.H0;
  for (int l = 0; l < p.L; ++l) {
    LayerP<T>& Ly = p.layer[l];
    Ly.sm_z = c; c += (int64_t)TE * Ly.hp;
    Ly.sm_S = c; c += Ly.fourier ? (int64_t)TE * Ly.M * Ly.G : 0;
    Ly.sm_u_out = c; c += (int64_t)TE * Ly.out;
  }
  o.scratch = c; c += (int64_t)TE * p.maxS;
  o.g = c;    c += (int64_t)TE * (p.H + 1);
  o.f = c;    c += (int64_t)TE * p.C_in;
  o.dg = c;   c += (int64_t)TE * (p.H + 1);
  o.du = c;   c += (int64_t)TE * p.maxU;
  o.dz = c;   c += (int64_t)TE * p.maxZ;
  o.total = c;
  return o;
}

// ---------------------------------------------------------------------------
// Scalar helpers
// ---------------------------------------------------------------------------
__device__ __forceinline__ float dev_exp(float v) { return expf(v); }
__device__ __forceinline__ double dev_exp(double v) { return exp(v); }

// Activations: the contract's formulas (csrc/plan_contract.h).  act < 0 in
// tile_gemm means identity.
template <typename T>
__device__ __forceinline__ T act_f(int code, T z) {
  return pyg_implicit::activation_value<T>(code, z);
}

// d act / d z from the pre-activation alone (recomputes the activation).
template <typename T>
__device__ __forceinline__ T act_df(int code, T z) {
  return pyg_implicit::activation_derivative<T>(code, z, act_f<T>(code, z));
}

// ---------------------------------------------------------------------------
// Block-cooperative tile operations. The caller places __syncthreads()
// between dependent calls.
// ---------------------------------------------------------------------------

// out[r * ldo + n] = act( bias[n] + sum_k in[r * K + k] * B[k * ldk + n * ldn] )
// for r < nrows, n < N. `in` is row-major [nrows, K] (shared memory), B is a
// read-only matrix (global memory), bias may be null, act < 0 means identity.
// Each thread computes kRowTile rows of one column n, so each B element read
// is reused kRowTile times from a register. Summation order over k is fixed.
// A thread's rows are strided (g, g + ngroups, ...): when N < 32 a warp spans
// several row groups, and neighbouring groups then read neighbouring rows
// (row stride K words) instead of rows kRowTile * K words apart, which for
// K = 120 (a grid size) would all fall into one shared-memory bank.
template <typename T>
__device__ __forceinline__ void tile_gemm(const T* __restrict__ in, int nrows, int K,
                                          const T* __restrict__ B, int64_t ldk, int64_t ldn,
                                          const T* __restrict__ bias, int N,
                                          T* __restrict__ out, int64_t ldo, int act) {
  if (nrows <= 0 || N <= 0) return;
  const int ngroups = (nrows + kRowTile - 1) / kRowTile;
  const int total = ngroups * N;
  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int n = idx % N;
    const int g = idx / N;  // rows g + t * ngroups, t < kRowTile
    const T b0 = bias ? bias[n] : T(0);
    T acc[kRowTile];
    const T* rowp[kRowTile];
#pragma unroll
    for (int t = 0; t < kRowTile; ++t) {
      acc[t] = b0;
      const int r = min(g + t * ngroups, nrows - 1);  // clamp: valid address, result discarded
      rowp[t] = in + (int64_t)r * K;
    }
    const T* bp = B + (int64_t)n * ldn;
    for (int k = 0; k < K; ++k) {
      const T w = bp[(int64_t)k * ldk];
#pragma unroll
      for (int t = 0; t < kRowTile; ++t) acc[t] += rowp[t][k] * w;
    }
#pragma unroll
    for (int t = 0; t < kRowTile; ++t) {
      const int r = g + t * ngroups;
      if (r < nrows) {
        T v = acc[t];
        if (act >= 0) v = act_f<T>(act, v);
        out[(int64_t)r * ldo + n] = v;
      }
    }
  }
}

// dst[i * J + j] = (accumulate ? dst[i * J + j] : 0) + sum_{r < nrows} a[r * lda + i] * b[r * ldb + j]
// for i < I, j < J. a, b in shared memory; dst owned by this block (global).
// The sum over r runs in increasing r.
template <typename T>
__device__ __forceinline__ void tile_outer_acc(const T* __restrict__ a, int lda, int I,
                                               const T* __restrict__ b, int ldb, int J,
                                               int nrows, T* __restrict__ dst, bool accumulate) {
  const int total = I * J;
  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int i = idx / J;
    const int j = idx - i * J;
    T acc = accumulate ? dst[idx] : T(0);
    for (int r = 0; r < nrows; ++r) acc += a[r * lda + i] * b[r * ldb + j];
    dst[idx] = acc;
  }
}

// The register-resident form of tile_outer_acc: thread t owns the entries
// idx = t + s * blockDim.x (s < kAccPerThread, idx < I * J, i = idx / J,
// j = idx % J) of the block's I x J accumulator and adds
// sum_{r < nrows} a[r * lda + i] * b[r * ldb + j] (increasing r: the same
// order, hence the same bits, as tile_outer_acc on a global accumulator).
template <typename T>
__device__ __forceinline__ void tile_outer_acc_regs(const T* __restrict__ a, int lda,
                                                    const T* __restrict__ b, int ldb, int I,
                                                    int J, int nrows, T (&acc)[kAccPerThread]) {
  const int total = I * J;
#pragma unroll
  for (int s = 0; s < kAccPerThread; ++s) {
    const int idx = threadIdx.x + s * blockDim.x;
    if (idx < total) {
      const int i = idx / J;
      const int j = idx - i * J;
      T v = acc[s];
      for (int r = 0; r < nrows; ++r) v += a[r * lda + i] * b[r * ldb + j];
      acc[s] = v;
    }
  }
}

// Writes the register accumulator of tile_outer_acc_regs to dst (I * J).
template <typename T>
__device__ __forceinline__ void store_acc_regs(const T (&acc)[kAccPerThread], int total,
                                               T* __restrict__ dst) {
#pragma unroll
  for (int s = 0; s < kAccPerThread; ++s) {
    const int idx = threadIdx.x + s * blockDim.x;
    if (idx < total) dst[idx] = acc[s];
  }
}

// Whether the forward runs layer Ly through tile_fourier_fused.
template <typename T>
__host__ __device__ inline bool fourier_fused(const LayerP<T>& Ly) {
  return Ly.fourier && Ly.F <= kMaxFusedF && Ly.Fp <= kMaxFusedFp;
}

// One Fourier activation for `rows` = (edge, field) rows without storing the
// grid samples: u[r, f'] = sum_g act(sum_f z[r, f] Q[g, f]) P[f', g]. One
// thread per row; z's row and the F' sums live in registers, Q and P^T rows
// are read by all threads of a warp at once (broadcast). Same summation
// order as the two tile_gemm calls it replaces (f, then g, ascending).
template <typename T>
__device__ __forceinline__ void tile_fourier_fused(const T* __restrict__ z, int rows, int F,
                                                   const T* __restrict__ Q, int G,
                                                   const T* __restrict__ PT, int Fp, int act,
                                                   T* __restrict__ u) {
  for (int r = threadIdx.x; r < rows; r += blockDim.x) {
    T zr[kMaxFusedF];
#pragma unroll
    for (int f = 0; f < kMaxFusedF; ++f) zr[f] = f < F ? z[r * F + f] : T(0);
    T acc[kMaxFusedFp];
#pragma unroll
    for (int q = 0; q < kMaxFusedFp; ++q) acc[q] = T(0);
    for (int g = 0; g < G; ++g) {
      const T* qg = Q + (int64_t)g * F;
      T sample = T(0);
#pragma unroll
      for (int f = 0; f < kMaxFusedF; ++f)
        if (f < F) sample += zr[f] * qg[f];
      const T y = act_f<T>(act, sample);
      const T* pg = PT + (int64_t)g * Fp;
#pragma unroll
      for (int q = 0; q < kMaxFusedFp; ++q)
        if (q < Fp) acc[q] += y * pg[q];
    }
#pragma unroll
    for (int q = 0; q < kMaxFusedFp; ++q)
      if (q < Fp) u[r * Fp + q] = acc[q];
  }
}

// dst[n] += sum_{r < nrows} a[r * N + n]   (block-owned dst, fixed order)
template <typename T>
__device__ __forceinline__ void tile_colsum_acc(const T* __restrict__ a, int nrows, int N,
                                                T* __restrict__ dst) {
  for (int n = threadIdx.x; n < N; n += blockDim.x) {
    T acc = dst[n];
    for (int r = 0; r < nrows; ++r) acc += a[r * N + n];
    dst[n] = acc;
  }
}

}  // namespace pyg_implicit_cuda
