// Device building blocks of the fused CUDA point convolution.
//
// Everything here is executed cooperatively by all threads of one block on
// small per-block tiles (TE edges) that live in shared memory. Loops have a
// fixed trip order, so every result is bitwise reproducible.
#pragma once

#include <cstdint>
#include <type_traits>
#include <cuda_runtime.h>
#include <mma.h>

#include "plan_contract.h"

namespace pyg_implicit_cuda {

constexpr int kMaxLayers = 8;  // plan layers supported by the CUDA kernels
constexpr int kThreads = 256;  // threads per block of the edge kernels
constexpr int kRowTile = 4;    // rows per thread in tile_gemm (register tile)
// columns per thread in tile_gemm's register tile: 4 in float32, 2 in float64
// (4 x 4 doubles pushed the kernels past 128 registers into spills, ptxas -v)
template <typename T>
constexpr int col_tile() { return sizeof(T) == 4 ? 4 : 2; }
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
  int kind;     // pyg_implicit::LayerKind
  int nf;       // gates (gated) or biased fields (norm)
  const int64_t* fields;  // field map (gated / norm), device
  const T* fb;            // field biases [nf] (norm)
  // offsets into the flat parameter-gradient vector (backward)
  int64_t off_W, off_b, off_Q, off_P, off_Bf;
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
  int lift;   // degree of the lift [x, x (x) x, ...] of the edge vector
  int X;      // its length d + d^2 + ...
  int H0;     // X + A
  int H;      // H_L (hidden size before the envelope column)
  int C_in;
  int maxU;   // max_l H_l (l = 0..L), >= 1
  int maxZ;   // max_l H'_l, >= 1
  int maxS;   // max_l M_l * G_l over Fourier layers and 3 nf_l over norm layers, >= 1
  int maxS_fwd;  // the same over Fourier layers the forward cannot fuse and nf_l, >= 0
  int tf32;   // 1: tile_gemm on TF32 tensor cores (float only, PYG_IMPLICIT_CUDA_TF32)
  const T* width;  // 0-d device tensor
  int64_t off_width;
  int64_t n_params;
};

// Shared-memory layout of the forward kernel (offsets in elements of T).
struct FwdLayout {
  int64_t mma, bufA, bufB, z, s, x, env, g, f, total;
};

// Per-warp staging buffers of the TF32 tile_gemm: A 16 x 8, B 8 x 16, C 16 x 16.
constexpr int kMmaScratch = 16 * 8 + 8 * 16 + 16 * 16;
constexpr int kWarps = kThreads / 32;

template <typename T>
__host__ __device__ inline FwdLayout fwd_layout(const PlanP<T>& p, int TE) {
  FwdLayout o;
  int64_t c = 0;
  o.mma = c;  c += p.tf32 ? (int64_t)kWarps * kMmaScratch : 0;  // first: 32-byte aligned
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
  int64_t mma, x, env, ds, wcon, dxs, u0, scratch, g, f, dg, du, dz, total;
};

// Fills the layer offsets of `p` and returns the rest of the layout.
template <typename T>
inline BwdLayout bwd_layout_fill(PlanP<T>& p, int TE) {
  BwdLayout o;
  int64_t c = 0;
  o.mma = c;  c += p.tf32 ? (int64_t)kWarps * kMmaScratch : 0;  // first: 32-byte aligned
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
// Register tiles: each thread computes kRowTile rows of col_tile<T>() columns,
// so each shared-memory read of `in` is reused for every column and each B
// read kRowTile times from registers (float32: 16 FMAs per 8 loads; with K
// even and aligned rows, `in` is read two k at a time by vector loads). When
// the tile has too few outputs to give every thread a full register tile,
// threads take kRowTile x 1 blocks instead (more parallelism). Either
// way every output is bias + sum over k in increasing k: the same bits.
// A thread's rows (and columns) are strided (g, g + ngroups, ...): when there
// are few column groups a warp spans several row groups, and neighbouring
// groups then read neighbouring rows (row stride K words) instead of rows
// kRowTile * K words apart, which for K = 120 (a grid size) would all fall
// into one shared-memory bank; neighbouring threads read neighbouring columns
// of B (coalesced when ldn = 1).
template <typename T> struct Vec2;
template <> struct Vec2<float> { using type = float2; };
template <> struct Vec2<double> { using type = double2; };

template <int kCols, bool kVec2, typename T>
__device__ __forceinline__ void tile_gemm_blocks(const T* __restrict__ in, int nrows, int K,
                                                 const T* __restrict__ B, int64_t ldk,
                                                 int64_t ldn, const T* __restrict__ bias, int N,
                                                 T* __restrict__ out, int64_t ldo, int act) {
  const int ngroups = (nrows + kRowTile - 1) / kRowTile;
  const int ncgroups = (N + kCols - 1) / kCols;
  const int total = ngroups * ncgroups;
  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int cg = idx % ncgroups;  // columns cg + u * ncgroups, u < kCols
    const int g = idx / ncgroups;   // rows g + t * ngroups, t < kRowTile
    T acc[kRowTile][kCols];
    const T* rowp[kRowTile];
    const T* colp[kCols];
#pragma unroll
    for (int u = 0; u < kCols; ++u) {
      const int n = min(cg + u * ncgroups, N - 1);  // clamp: valid address, discarded
      colp[u] = B + (int64_t)n * ldn;
      const T b0 = bias ? bias[n] : T(0);
#pragma unroll
      for (int t = 0; t < kRowTile; ++t) acc[t][u] = b0;
    }
#pragma unroll
    for (int t = 0; t < kRowTile; ++t) {
      const int r = min(g + t * ngroups, nrows - 1);  // clamp: valid address, discarded
      rowp[t] = in + (int64_t)r * K;
    }
    if constexpr (kVec2) {  // K even, rows 2-element aligned: one vector load per 2 k
      using V2 = typename Vec2<T>::type;
      for (int k = 0; k < K; k += 2) {
        T b0[kCols], b1[kCols];
#pragma unroll
        for (int u = 0; u < kCols; ++u) {
          b0[u] = colp[u][(int64_t)k * ldk];
          b1[u] = colp[u][(int64_t)(k + 1) * ldk];
        }
#pragma unroll
        for (int t = 0; t < kRowTile; ++t) {
          const V2 a = *reinterpret_cast<const V2*>(rowp[t] + k);
#pragma unroll
          for (int u = 0; u < kCols; ++u) {
            acc[t][u] += a.x * b0[u];  // k, then k + 1: the same order as below
            acc[t][u] += a.y * b1[u];
          }
        }
      }
    } else {
      for (int k = 0; k < K; ++k) {
        T bv[kCols];
#pragma unroll
        for (int u = 0; u < kCols; ++u) bv[u] = colp[u][(int64_t)k * ldk];
#pragma unroll
        for (int t = 0; t < kRowTile; ++t) {
          const T a = rowp[t][k];
#pragma unroll
          for (int u = 0; u < kCols; ++u) acc[t][u] += a * bv[u];
        }
      }
    }
#pragma unroll
    for (int t = 0; t < kRowTile; ++t) {
      const int r = g + t * ngroups;
#pragma unroll
      for (int u = 0; u < kCols; ++u) {
        const int n = cg + u * ncgroups;
        if (r < nrows && n < N) {
          T v = acc[t][u];
          if (act >= 0) v = act_f<T>(act, v);
          out[(int64_t)r * ldo + n] = v;
        }
      }
    }
  }
}

// The TF32 tensor-core form of tile_gemm (opt-in, float only): each warp
// computes 16 x 16 output tiles with wmma m16n16k8 (TF32 inputs, FP32
// accumulation), staging zero-padded 16 x 8 / 8 x 16 operand tiles in its own
// shared-memory scratch (kMmaScratch floats, 32-byte aligned). Results differ
// from the FP32 path by TF32 rounding of the inputs (10-bit mantissa). Every
// warp runs the same number of iterations, so all __syncwarp() calls match.
__device__ __forceinline__ void tile_gemm_tf32(const float* __restrict__ in, int nrows, int K,
                                               const float* __restrict__ B, int64_t ldk,
                                               int64_t ldn, const float* __restrict__ bias,
                                               int N, float* __restrict__ out, int64_t ldo,
                                               int act, float* __restrict__ scratch) {
  using namespace nvcuda;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int nwarps = blockDim.x / 32;
  float* sa = scratch + warp * kMmaScratch;  // [16, 8]
  float* sb = sa + 16 * 8;                   // [8, 16]
  float* sc = sb + 8 * 16;                   // [16, 16]
  const int rt = (nrows + 15) / 16, ct = (N + 15) / 16;
  const int tiles = rt * ct;
  for (int t0 = 0; t0 < tiles; t0 += nwarps) {
    const int tile = t0 + warp;
    const bool active = tile < tiles;
    const int r0 = active ? (tile / ct) * 16 : 0, n0 = active ? (tile % ct) * 16 : 0;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int k0 = 0; k0 < K; k0 += 8) {
      for (int i = lane; i < 16 * 8; i += 32) {
        const int r = r0 + i / 8, k = k0 + i % 8;
        sa[i] = active && r < nrows && k < K ? in[(int64_t)r * K + k] : 0.0f;
        const int kb = k0 + i / 16, n = n0 + i % 16;
        sb[i] = active && kb < K && n < N ? B[(int64_t)kb * ldk + (int64_t)n * ldn] : 0.0f;
      }
      __syncwarp();
      wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb;
      wmma::load_matrix_sync(fa, sa, 8);
      wmma::load_matrix_sync(fb, sb, 16);
      for (int e = 0; e < fa.num_elements; ++e) fa.x[e] = wmma::__float_to_tf32(fa.x[e]);
      for (int e = 0; e < fb.num_elements; ++e) fb.x[e] = wmma::__float_to_tf32(fb.x[e]);
      wmma::mma_sync(acc, fa, fb, acc);
      __syncwarp();
    }
    wmma::store_matrix_sync(sc, acc, 16, wmma::mem_row_major);
    __syncwarp();
    for (int i = lane; i < 16 * 16; i += 32) {
      const int r = r0 + i / 16, n = n0 + i % 16;
      if (active && r < nrows && n < N) {
        float v = sc[i] + (bias ? bias[n] : 0.0f);
        if (act >= 0) v = act_f<float>(act, v);
        out[(int64_t)r * ldo + n] = v;
      }
    }
    __syncwarp();
  }
}

// `mma`: the warps' TF32 scratch when the plan runs tile_gemm on tensor cores
// (PlanP::tf32, float only), null for the FP32 path.
template <typename T>
__device__ __forceinline__ void tile_gemm(const T* __restrict__ in, int nrows, int K,
                                          const T* __restrict__ B, int64_t ldk, int64_t ldn,
                                          const T* __restrict__ bias, int N,
                                          T* __restrict__ out, int64_t ldo, int act,
                                          T* mma = nullptr) {
  if (nrows <= 0 || N <= 0) return;
  if constexpr (std::is_same<T, float>::value) {
    if (mma != nullptr) {
      tile_gemm_tf32(in, nrows, K, B, ldk, ldn, bias, N, out, ldo, act, mma);
      return;
    }
  }
  // both choices are uniform over the block: no divergence
  constexpr int kCols = col_tile<T>();
  const int64_t blocks = (int64_t)((nrows + kRowTile - 1) / kRowTile) *
                         ((N + kCols - 1) / kCols);
  const bool wide = blocks >= (int64_t)blockDim.x;
  const bool vec2 = K % 2 == 0 && reinterpret_cast<uintptr_t>(in) % (2 * sizeof(T)) == 0;
  if (wide && vec2)
    tile_gemm_blocks<kCols, true, T>(in, nrows, K, B, ldk, ldn, bias, N, out, ldo, act);
  else if (wide)
    tile_gemm_blocks<kCols, false, T>(in, nrows, K, B, ldk, ldn, bias, N, out, ldo, act);
  else if (vec2)
    tile_gemm_blocks<1, true, T>(in, nrows, K, B, ldk, ldn, bias, N, out, ldo, act);
  else
    tile_gemm_blocks<1, false, T>(in, nrows, K, B, ldk, ldn, bias, N, out, ldo, act);
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
