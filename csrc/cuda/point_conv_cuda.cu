// CUDA implementation of pyg_implicit::point_conv_forward / point_conv_backward
// (contract: docs/fused_op_spec.md, maths: pyg_implicit/plan.py, docs/design.md §2).
//
// Design (see also the report in the commit history / docs):
//
// Forward, per chunk of target rows (bounded workspace, default 256 MiB):
//   1. point_conv_fwd_kernel: one block (256 threads) per target row i. The
//      row's incoming edges are processed in tiles of TE edges. For a tile the
//      block gathers x_e = pos_src[j] - pos_dst[i], a_e and f_j into shared
//      memory, evaluates the plan MLP for the TE edges (default 32) in shared
//      memory and registers (dense layers as small block-level GEMMs,
//      tile_gemm; a Fourier sample/activate/project step per (edge, field)
//      row in registers, tile_fourier_fused, when F, F' <= 16, else as two
//      tile_gemm calls through shared memory), forms g_e = [s_e u_e, s_e] and
//      accumulates A_i += sum_e g_e (x) f_j. A_i ((H+1) x C_in) is owned by the
//      block and stays in registers across the row's tiles (up to 8 entries
//      per thread, (H+1) C_in <= 2048; larger rows accumulate in the
//      workspace); it is written once per row into a per-chunk workspace.
//   2. out[chunk] = A_chunk @ Wt^T (cuBLAS through ATen: a tiled GEMM).
//   Nothing proportional to E x H, E x grid or E x C_out x C_in is allocated.
//
// Backward (recompute), per chunk of target rows:
//   1. dA_chunk = dout[chunk] @ Wt (cuBLAS), twice: k-major and c-major, so
//      that both per-edge products below read it coalesced.
//   2. point_conv_bwd_kernel: a persistent grid of NB blocks, block b owning
//      rows b, b + NB, ... of the chunk. Per tile it recomputes the MLP keeping
//      every activation of the tile in shared memory, recomputes g_e and
//      (if grad Wt is needed) A_i, computes dg_e = dA_i f_j, the per-edge
//      contribution dA_i^T g_e to grad x_src (written at its CSR position into
//      an [E, C_in] buffer: input-sized, like a gathered x_src), back-propagates
//      through the MLP and the envelope, writes d x_e ([E, d]) and grad
//      edge_attr ([E, A]), sums -d x_e of the row into grad_pos_dst[i], and
//      accumulates all plan-parameter gradients into the block's own slice of a
//      [NB, n_params] partial buffer (no atomics: each slice has one owner).
//   3. grad Wt += dout[chunk]^T @ A_chunk (cuBLAS).
//   After all chunks: grad x_src and grad pos_src are gathered per source
//   through csc_rowptr / csc_perm in a fixed order (csc_gather_kernel), and the
//   partials are summed over blocks in fixed order (reduce_partials_kernel).
//   Every reduction has a fixed order: the op is deterministic (bitwise).
//
// Indices are never trusted blindly: an out-of-range col entry contributes
// nothing (its envelope is forced to 0 and nothing is read through it), row
// ranges are clamped to [0, E]; the Python wrapper validates indices up front.

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "point_conv.h"  // shared input checks (csrc/point_conv.cpp)
#include "point_conv_tiles.cuh"

namespace pyg_implicit_cuda {

using at::Tensor;

// ---------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------

// Gathers the edge tile [p0, p0 + ne) of target row `row` into shared memory:
// xb [ne, d] (edge vectors), u0 [ne, H0] (= [lift(x_e), a_e]), fb [ne, C_in]
// (source features) and env [ne] (Gaussian envelope, 0 for an invalid source).
// Contains one __syncthreads(); the caller syncs again before using env.
template <typename T>
__device__ void load_edge_tile(const PlanP<T>& p, int ne, int64_t p0, int64_t row,
                               const T* __restrict__ x_src, const T* __restrict__ pos_src,
                               const T* __restrict__ pos_dst, const T* __restrict__ edge_attr,
                               const int64_t* __restrict__ col, int64_t N_src, T inv2w2,
                               T* xb, T* u0, T* fb, T* env) {
  const int d = p.d, A = p.A, H0 = p.H0, X = p.X, Cin = p.C_in;
  for (int idx = threadIdx.x; idx < ne * d; idx += blockDim.x) {
    const int e = idx / d, t = idx - e * d;
    const int64_t j = col[p0 + e];
    const bool valid = j >= 0 && j < N_src;
    const T v = valid ? pos_src[j * d + t] - pos_dst[row * d + t] : T(0);
    xb[idx] = v;
    u0[e * H0 + t] = v;
  }
  for (int idx = threadIdx.x; idx < ne * A; idx += blockDim.x) {
    const int e = idx / A, a = idx - e * A;
    u0[e * H0 + X + a] = edge_attr[(p0 + e) * A + a];
  }
  for (int idx = threadIdx.x; idx < ne * Cin; idx += blockDim.x) {
    const int e = idx / Cin, c = idx - e * Cin;
    const int64_t j = col[p0 + e];
    const bool valid = j >= 0 && j < N_src;
    fb[idx] = valid ? x_src[j * Cin + c] : T(0);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < ne; e += blockDim.x) {
    const int64_t j = col[p0 + e];
    const bool valid = j >= 0 && j < N_src;
    T r2 = T(0);
    for (int t = 0; t < d; ++t) r2 += xb[e * d + t] * xb[e * d + t];
    env[e] = valid ? dev_exp(-r2 * inv2w2) : T(0);
    if (p.lift > 1) pyg_implicit::lift_forward<T>(d, p.lift, u0 + e * H0, u0 + e * H0);
  }
}

// A gated or norm layer for `ne` edges, one thread per edge: z [ne, hp] ->
// u [ne, out]; scratch: nf per edge (norm).  No barrier inside.
template <typename T>
__device__ void field_layer_forward(const LayerP<T>& Ly, int ne, const T* z, T* u, T* scratch) {
  for (int e = threadIdx.x; e < ne; e += blockDim.x) {
    if (Ly.kind == pyg_implicit::kGated)
      pyg_implicit::gated_forward<T>(Ly.act, Ly.hp, Ly.out, Ly.fields, z + e * Ly.hp,
                                     u + e * Ly.out);
    else
      pyg_implicit::norm_forward<T>(Ly.act, Ly.hp, Ly.nf, Ly.fields, Ly.fb, z + e * Ly.hp,
                                    u + e * Ly.out, scratch + e * Ly.nf);
  }
}

// Plan MLP for `ne` edges, input u0 in bufA ([ne, H0]); returns the buffer
// holding u_L ([ne, H]). Ping-pongs between bufA and bufB; zb / sb are
// scratch for the pre-activations and the grid samples.
template <typename T>
__device__ const T* mlp_forward_pingpong(const PlanP<T>& p, int ne, T* bufA, T* bufB,
                                         T* zb, T* sb, T* mma) {
  T* cur = bufA;
  T* nxt = bufB;
  for (int l = 0; l < p.L; ++l) {
    const LayerP<T>& Ly = p.layer[l];
    if (Ly.kind == pyg_implicit::kGated || Ly.kind == pyg_implicit::kNorm) {
      tile_gemm<T>(cur, ne, Ly.in, Ly.WT, Ly.hp, 1, Ly.b, Ly.hp, zb, Ly.hp, -1, mma);
      __syncthreads();
      field_layer_forward<T>(Ly, ne, zb, nxt, sb);
      __syncthreads();
    } else if (!Ly.fourier) {
      tile_gemm<T>(cur, ne, Ly.in, Ly.WT, Ly.hp, 1, Ly.b, Ly.hp, nxt, Ly.hp, Ly.act, mma);
      __syncthreads();
    } else {
      const int rows = ne * Ly.M;
      tile_gemm<T>(cur, ne, Ly.in, Ly.WT, Ly.hp, 1, Ly.b, Ly.hp, zb, Ly.hp, -1, mma);
      __syncthreads();
      if (fourier_fused(Ly)) {  // per (edge, field) in registers
        tile_fourier_fused<T>(zb, rows, Ly.F, Ly.Q, Ly.G, Ly.PT, Ly.Fp, Ly.act, nxt);
        __syncthreads();
        T* tmp = cur;
        cur = nxt;
        nxt = tmp;
        continue;
      }
      // Y = act(Z Q^T): rows (e, m) of F -> G;  B(f, g) = QT[f * G + g]
      tile_gemm<T>(zb, rows, Ly.F, Ly.QT, Ly.G, 1, nullptr, Ly.G, sb, Ly.G, Ly.act, mma);
      __syncthreads();
      // u = Y P^T: rows (e, m) of G -> Fp;  B(g, f') = PT[g * Fp + f']
      tile_gemm<T>(sb, rows, Ly.G, Ly.PT, Ly.Fp, 1, nullptr, Ly.Fp, nxt, Ly.Fp, -1, mma);
      __syncthreads();
    }
    T* tmp = cur;
    cur = nxt;
    nxt = tmp;
  }
  return cur;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
point_conv_fwd_kernel(const __grid_constant__ PlanP<T> p, const FwdLayout lay, const int TE,
                      const T* __restrict__ x_src, const T* __restrict__ pos_src,
                      const T* __restrict__ pos_dst, const T* __restrict__ edge_attr,
                      const int64_t* __restrict__ rowptr, const int64_t* __restrict__ col,
                      const int64_t N_src, const int64_t E, const int64_t row_begin,
                      const int64_t nrows, const bool allow_acc_regs, T* __restrict__ Aws) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sm = reinterpret_cast<T*>(smem_raw);
  T* bufA = sm + lay.bufA;
  T* bufB = sm + lay.bufB;
  T* zb = sm + lay.z;
  T* sb = sm + lay.s;
  T* xb = sm + lay.x;
  T* env = sm + lay.env;
  T* gb = sm + lay.g;
  T* fb = sm + lay.f;
  T* mma = p.tf32 ? sm + lay.mma : nullptr;  // TF32 tensor-core scratch (opt-in)

  const int H = p.H, H1 = p.H + 1, Cin = p.C_in;
  const int64_t arow = (int64_t)H1 * Cin;
  const bool acc_in_regs = allow_acc_regs && arow <= (int64_t)kAccPerThread * blockDim.x;
  const T w = *p.width;
  const T inv2w2 = T(0.5) / (w * w);

  for (int64_t lr = blockIdx.x; lr < nrows; lr += gridDim.x) {
    const int64_t row = row_begin + lr;
    const int64_t start = max(rowptr[row], (int64_t)0);
    const int64_t end = min(rowptr[row + 1], E);
    T* Arow = Aws + lr * arow;
    if (end <= start) {
      for (int64_t idx = threadIdx.x; idx < arow; idx += blockDim.x) Arow[idx] = T(0);
      continue;
    }
    T acc[kAccPerThread];
#pragma unroll
    for (int s = 0; s < kAccPerThread; ++s) acc[s] = T(0);
    bool first = true;
    for (int64_t p0 = start; p0 < end; p0 += TE) {
      const int ne = (int)min((int64_t)TE, end - p0);
      load_edge_tile<T>(p, ne, p0, row, x_src, pos_src, pos_dst, edge_attr, col, N_src, inv2w2,
                        xb, bufA, fb, env);
      __syncthreads();
      const T* uL = mlp_forward_pingpong<T>(p, ne, bufA, bufB, zb, sb, mma);
      for (int idx = threadIdx.x; idx < ne * H1; idx += blockDim.x) {
        const int e = idx / H1, k = idx - e * H1;
        const T s = env[e];
        gb[idx] = k < H ? s * uL[e * H + k] : s;
      }
      __syncthreads();
      // A_i[k, c] += sum_e g[e, k] f[e, c]  (in registers when it fits)
      if (acc_in_regs)
        tile_outer_acc_regs<T>(gb, H1, fb, Cin, H1, Cin, ne, acc);
      else
        tile_outer_acc<T>(gb, H1, H1, fb, Cin, Cin, ne, Arow, !first);
      first = false;
      __syncthreads();
    }
    if (acc_in_regs) store_acc_regs<T>(acc, (int)arow, Arow);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
point_conv_bwd_kernel(const __grid_constant__ PlanP<T> p, const BwdLayout lay, const int TE,
                      const T* __restrict__ x_src, const T* __restrict__ pos_src,
                      const T* __restrict__ pos_dst, const T* __restrict__ edge_attr,
                      const int64_t* __restrict__ rowptr, const int64_t* __restrict__ col,
                      const int64_t N_src, const int64_t E, const int64_t row_begin,
                      const int64_t nrows, const bool allow_acc_regs,
                      const T* __restrict__ dAws,   // [nrows, (H+1) C_in], k-major
                      const T* __restrict__ dATws,  // [nrows, C_in (H+1)], c-major
                      T* __restrict__ Aws,          // [nrows, (H+1) C_in] or null
                      T* __restrict__ dF,           // [E, C_in] or null
                      T* __restrict__ dX,           // [E, d]
                      T* __restrict__ gpos_dst,     // [N_dst, d]
                      T* __restrict__ gattr,        // [E, A]
                      T* __restrict__ partial) {    // [gridDim.x, n_params]
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sm = reinterpret_cast<T*>(smem_raw);
  T* xb = sm + lay.x;
  T* env = sm + lay.env;
  T* dsb = sm + lay.ds;
  T* wcon = sm + lay.wcon;
  T* dxs = sm + lay.dxs;
  T* u0 = sm + lay.u0;
  T* scratch = sm + lay.scratch;
  T* gb = sm + lay.g;
  T* fb = sm + lay.f;
  T* dgb = sm + lay.dg;
  T* du = sm + lay.du;
  T* dz = sm + lay.dz;
  T* mma = p.tf32 ? sm + lay.mma : nullptr;  // TF32 tensor-core scratch (opt-in)

  const int d = p.d, A = p.A, H0 = p.H0, H = p.H, H1 = p.H + 1, Cin = p.C_in;
  const int64_t arow = (int64_t)H1 * Cin;
  const bool acc_in_regs = allow_acc_regs && arow <= (int64_t)kAccPerThread * blockDim.x;
  const T w = *p.width;
  const T inv2w2 = T(0.5) / (w * w);
  const T inv_w2 = T(1) / (w * w);
  const T inv_w3 = inv_w2 / w;
  T* Pb = partial + (int64_t)blockIdx.x * p.n_params;

  for (int64_t lr = blockIdx.x; lr < nrows; lr += gridDim.x) {
    const int64_t row = row_begin + lr;
    const int64_t start = max(rowptr[row], (int64_t)0);
    const int64_t end = min(rowptr[row + 1], E);
    const T* dArow = dAws + lr * arow;
    const T* dATrow = dATws + lr * arow;
    T* Arow = Aws ? Aws + lr * arow : nullptr;
    T pd_acc = T(0);  // thread t < d: grad_pos_dst[row, t]
    T acc[kAccPerThread];  // A_i (recomputed for grad Wt) when it fits in registers
#pragma unroll
    for (int s = 0; s < kAccPerThread; ++s) acc[s] = T(0);
    bool first = true;
    for (int64_t p0 = start; p0 < end; p0 += TE) {
      const int ne = (int)min((int64_t)TE, end - p0);
      load_edge_tile<T>(p, ne, p0, row, x_src, pos_src, pos_dst, edge_attr, col, N_src, inv2w2,
                        xb, u0, fb, env);
      __syncthreads();

      // ---- forward recompute, every activation kept in shared memory ----
      const T* uin = u0;
      for (int l = 0; l < p.L; ++l) {
        const LayerP<T>& Ly = p.layer[l];
        T* z = sm + Ly.sm_z;
        T* uo = sm + Ly.sm_u_out;
        tile_gemm<T>(uin, ne, Ly.in, Ly.WT, Ly.hp, 1, Ly.b, Ly.hp, z, Ly.hp, -1, mma);
        __syncthreads();
        if (Ly.kind == pyg_implicit::kGated || Ly.kind == pyg_implicit::kNorm) {
          field_layer_forward<T>(Ly, ne, z, uo, scratch);
        } else if (Ly.fourier) {
          T* S = sm + Ly.sm_S;
          const int rows = ne * Ly.M;
          tile_gemm<T>(z, rows, Ly.F, Ly.QT, Ly.G, 1, nullptr, Ly.G, S, Ly.G, -1, mma);
          __syncthreads();
          for (int idx = threadIdx.x; idx < rows * Ly.G; idx += blockDim.x)
            scratch[idx] = act_f<T>(Ly.act, S[idx]);
          __syncthreads();
          tile_gemm<T>(scratch, rows, Ly.G, Ly.PT, Ly.Fp, 1, nullptr, Ly.Fp, uo, Ly.Fp, -1, mma);
        } else {
          for (int idx = threadIdx.x; idx < ne * Ly.hp; idx += blockDim.x)
            uo[idx] = act_f<T>(Ly.act, z[idx]);
        }
        __syncthreads();
        uin = uo;
      }
      const T* uL = uin;  // [ne, H]
      for (int idx = threadIdx.x; idx < ne * H1; idx += blockDim.x) {
        const int e = idx / H1, k = idx - e * H1;
        const T s = env[e];
        gb[idx] = k < H ? s * uL[e * H + k] : s;
      }
      __syncthreads();

      // ---- node-level quantities ----
      if (Arow && acc_in_regs)
        tile_outer_acc_regs<T>(gb, H1, fb, Cin, H1, Cin, ne, acc);
      else if (Arow)
        tile_outer_acc<T>(gb, H1, H1, fb, Cin, Cin, ne, Arow, !first);
      // dg[e, k] = sum_c dA[k, c] f[e, c]      B(c, k) = dAT[c * H1 + k]
      // (read from the c-major copy: consecutive threads (k) read consecutive words)
      tile_gemm<T>(fb, ne, Cin, dATrow, H1, 1, nullptr, H1, dgb, H1, -1, mma);
      // dF[p0 + e, c] = sum_k g[e, k] dA[k, c]  B(k, c) = dA[k * Cin + c]
      if (dF) tile_gemm<T>(gb, ne, H1, dArow, Cin, 1, nullptr, Cin, dF + p0 * Cin, Cin, -1, mma);
      __syncthreads();

      // ---- envelope: ds_e and du_L = s_e dg[:H] ----
      for (int e = threadIdx.x; e < ne; e += blockDim.x) {
        T acc = dgb[e * H1 + H];
        for (int k = 0; k < H; ++k) acc += dgb[e * H1 + k] * uL[e * H + k];
        dsb[e] = acc;
      }
      for (int idx = threadIdx.x; idx < ne * H; idx += blockDim.x) {
        const int e = idx / H, k = idx - e * H;
        du[idx] = env[e] * dgb[e * H1 + k];
      }
      __syncthreads();

      // ---- back through the MLP, layer by layer ----
      for (int l = p.L - 1; l >= 0; --l) {
        const LayerP<T>& Ly = p.layer[l];
        const T* uin_l = l == 0 ? u0 : sm + p.layer[l - 1].sm_u_out;
        T* z = sm + Ly.sm_z;
        if (Ly.kind == pyg_implicit::kGated || Ly.kind == pyg_implicit::kNorm) {
          const T* y = sm + Ly.sm_u_out;
          const int nf3 = 3 * Ly.nf;  // per edge: 2 nf work, nf d bias
          for (int e = threadIdx.x; e < ne; e += blockDim.x) {
            if (Ly.kind == pyg_implicit::kGated) {
              pyg_implicit::gated_backward<T>(Ly.act, Ly.hp, Ly.out, Ly.fields, z + e * Ly.hp,
                                              y + e * Ly.out, du + e * Ly.out, dz + e * Ly.hp);
            } else {
              T* db = scratch + e * nf3 + 2 * Ly.nf;
              for (int f = 0; f < Ly.nf; ++f) db[f] = T(0);
              pyg_implicit::norm_backward<T>(Ly.act, Ly.hp, Ly.nf, Ly.fields, Ly.fb,
                                             z + e * Ly.hp, y + e * Ly.out, du + e * Ly.out,
                                             dz + e * Ly.hp, db, scratch + e * nf3);
            }
          }
          if (Ly.kind == pyg_implicit::kNorm) {
            __syncthreads();
            // d bias: the tile's edges in a fixed order, one thread per field
            for (int f = threadIdx.x; f < Ly.nf; f += blockDim.x) {
              T acc = Pb[Ly.off_Bf + f];
              for (int e = 0; e < ne; ++e) acc += scratch[e * nf3 + 2 * Ly.nf + f];
              Pb[Ly.off_Bf + f] = acc;
            }
          }
        } else if (Ly.fourier) {
          T* S = sm + Ly.sm_S;
          const int rows = ne * Ly.M;
          const int nG = rows * Ly.G;
          for (int idx = threadIdx.x; idx < nG; idx += blockDim.x)
            scratch[idx] = act_f<T>(Ly.act, S[idx]);
          __syncthreads();
          // dP[f', g] += sum_rows dU[row, f'] Y[row, g]
          tile_outer_acc<T>(du, Ly.Fp, Ly.Fp, scratch, Ly.G, Ly.G, rows, Pb + Ly.off_P, true);
          __syncthreads();
          // dY = dU P:  B(f', g) = P[f' * G + g]
          tile_gemm<T>(du, rows, Ly.Fp, Ly.P, Ly.G, 1, nullptr, Ly.G, scratch, Ly.G, -1, mma);
          __syncthreads();
          for (int idx = threadIdx.x; idx < nG; idx += blockDim.x)
            S[idx] = scratch[idx] * act_df<T>(Ly.act, S[idx]);  // S := dS
          __syncthreads();
          // dQ[g, f] += sum_rows dS[row, g] Z[row, f]
          tile_outer_acc<T>(S, Ly.G, Ly.G, z, Ly.F, Ly.F, rows, Pb + Ly.off_Q, true);
          // dZ = dS Q:  B(g, f) = Q[g * F + f]
          tile_gemm<T>(S, rows, Ly.G, Ly.Q, Ly.F, 1, nullptr, Ly.F, dz, Ly.F, -1, mma);
        } else {
          const T* y = sm + Ly.sm_u_out;  // act(z), kept from the recompute
          for (int idx = threadIdx.x; idx < ne * Ly.hp; idx += blockDim.x)
            dz[idx] = du[idx] * pyg_implicit::activation_derivative<T>(Ly.act, z[idx], y[idx]);
        }
        __syncthreads();
        // dW[r, c] += sum_e dz[e, r] u_in[e, c];  db[r] += sum_e dz[e, r]
        tile_outer_acc<T>(dz, Ly.hp, Ly.hp, uin_l, Ly.in, Ly.in, ne, Pb + Ly.off_W, true);
        tile_colsum_acc<T>(dz, ne, Ly.hp, Pb + Ly.off_b);
        // du_in = dz W:  B(r, c) = W[r * in + c]
        tile_gemm<T>(dz, ne, Ly.hp, Ly.W, Ly.in, 1, nullptr, Ly.in, du, Ly.in, -1, mma);
        __syncthreads();
      }
      // du now holds d u_0 = [d lift(x_e) (MLP part), d a_e]
      if (p.lift > 1) {
        for (int e = threadIdx.x; e < ne; e += blockDim.x)
          pyg_implicit::lift_backward<T>(d, p.lift, xb + e * d, u0 + e * H0, du + e * H0);
        __syncthreads();
      }

      for (int e = threadIdx.x; e < ne; e += blockDim.x) {
        const T s = env[e];
        const T dse = dsb[e];
        T r2 = T(0);
        for (int t = 0; t < d; ++t) r2 += xb[e * d + t] * xb[e * d + t];
        const T coef = -dse * s * inv_w2;  // d s / d x = -s x / w^2
        for (int t = 0; t < d; ++t) {
          const T v = du[e * H0 + t] + coef * xb[e * d + t];
          dxs[e * d + t] = v;
          dX[(p0 + e) * d + t] = v;
        }
        wcon[e] = dse * s * r2 * inv_w3;  // d s / d w = s |x|^2 / w^3
      }
      for (int idx = threadIdx.x; idx < ne * A; idx += blockDim.x) {
        const int e = idx / A, a = idx - e * A;
        gattr[(p0 + e) * A + a] = du[e * H0 + p.X + a];
      }
      __syncthreads();
      if (threadIdx.x < d) {
        for (int e = 0; e < ne; ++e) pd_acc -= dxs[e * d + threadIdx.x];
      }
      if (threadIdx.x == 0) {
        T acc = Pb[p.off_width];
        for (int e = 0; e < ne; ++e) acc += wcon[e];
        Pb[p.off_width] = acc;
      }
      first = false;
      __syncthreads();
    }
    if (Arow && acc_in_regs) {
      store_acc_regs<T>(acc, (int)arow, Arow);  // zeros for a degree-0 row
    } else if (first && Arow) {  // degree-0 row: A_i = 0
      for (int64_t idx = threadIdx.x; idx < arow; idx += blockDim.x) Arow[idx] = T(0);
    }
    if (threadIdx.x < d) gpos_dst[row * d + threadIdx.x] = pd_acc;
  }
}

// out[j, c] = sum_{q in [csc_rowptr[j], csc_rowptr[j+1])} src[csc_perm[q], c]  (fixed order)
template <typename T>
__global__ void csc_gather_kernel(const T* __restrict__ src, const int64_t* __restrict__ csc_rowptr,
                                  const int64_t* __restrict__ csc_perm, const int64_t N_src,
                                  const int64_t W, const int64_t E, T* __restrict__ out) {
  const int64_t total = N_src * W;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t j = idx / W, c = idx - j * W;
    const int64_t q0 = max(csc_rowptr[j], (int64_t)0);
    const int64_t q1 = min(csc_rowptr[j + 1], E);
    T acc = T(0);
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t pp = csc_perm[q];
      if (pp >= 0 && pp < E) acc += src[pp * W + c];
    }
    out[idx] = acc;
  }
}

// out[k] = sum_{b < NB} partial[b, k]  (fixed order over b)
template <typename T>
__global__ void reduce_partials_kernel(const T* __restrict__ partial, const int64_t NB,
                                       const int64_t n, T* __restrict__ out) {
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
       idx += (int64_t)gridDim.x * blockDim.x) {
    T acc = T(0);
    for (int64_t b = 0; b < NB; ++b) acc += partial[b * n + idx];
    out[idx] = acc;
  }
}

// ---------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------
namespace {

int64_t env_int(const char* name, int64_t dflt) {
  const char* v = std::getenv(name);
  if (!v || !*v) return dflt;
  char* endp = nullptr;
  const long long r = std::strtoll(v, &endp, 10);
  return (endp && *endp == '\0' && r > 0) ? (int64_t)r : dflt;
}

// PYG_IMPLICIT_CUDA_REPORT=1: one line per launch configuration on stderr
// (edge tile, shared memory, occupancy, grid, row chunks), so that a first GPU
// run shows its occupancy (benchmarks/gpu_check.sh sets it for the smoke stage).
bool launch_report_on() {
  static const bool on = [] {
    const char* v = std::getenv("PYG_IMPLICIT_CUDA_REPORT");
    return v && *v && std::string(v) != "0";
  }();
  return on;
}

template <typename T>
void report_launch(const char* kernel, int64_t edges, int64_t rows, int edge_tile,
                   int64_t smem_bytes, int blocks_per_sm, int64_t grid,
                   int64_t rows_per_chunk) {
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  std::fprintf(stderr,
               "[pyg_implicit cuda] %s %s: E=%lld rows=%lld edge_tile=%d smem=%lld B "
               "threads=%d blocks/SM=%d SMs=%d occupancy=%.0f%% grid=%lld row_chunks=%lld "
               "(%lld rows each)\n",
               kernel, sizeof(T) == 4 ? "float32" : "float64", (long long)edges,
               (long long)rows, edge_tile, (long long)smem_bytes, kThreads, blocks_per_sm,
               prop->multiProcessorCount,
               100.0 * blocks_per_sm * kThreads / std::max(prop->maxThreadsPerMultiProcessor, 1),
               (long long)grid, (long long)((rows + rows_per_chunk - 1) / rows_per_chunk),
               (long long)rows_per_chunk);
}

int blocks_per_sm(const void* kernel, int64_t smem) {
  int n = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads,
                                                                (size_t)smem));
  return n;
}

// PYG_IMPLICIT_CUDA_TF32=1: the block GEMMs of float32 calls on TF32 tensor
// cores (FP32 accumulation). Off by default: it changes float32 results by
// about 1e-3 relative (TF32 keeps 10 mantissa bits), beyond the 1e-5 the op
// promises; read on every call.
bool tf32_requested() {
  const char* v = std::getenv("PYG_IMPLICIT_CUDA_TF32");
  return v && std::string(v) == "1";
}

// PYG_IMPLICIT_CUDA_ACC_REGS=0 keeps A_i in the workspace instead of registers
// (an A/B switch for the benchmark; the results are bitwise the same).
bool acc_regs_allowed() {
  static const bool on = [] {
    const char* v = std::getenv("PYG_IMPLICIT_CUDA_ACC_REGS");
    return !(v && std::string(v) == "0");
  }();
  return on;
}

unsigned int grid_1d(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  b = std::max<int64_t>(1, std::min<int64_t>(b, 65535LL * 16));
  return (unsigned int)b;
}

struct Sizes {
  int64_t N_src, N_dst, E, d, A, C_in, C_out, H, L;
};

// The sizes of a call from the shared checks (csrc/point_conv.cpp), plus
// what only the CUDA kernels need: a CUDA device, at most kMaxLayers layers,
// int32 indexing inside a tile.
Sizes cuda_sizes(const char* op, const pyg_implicit::ConvDims& d, const Tensor& x_src) {
  TORCH_CHECK(x_src.is_cuda(), op, ": x_src must be a CUDA tensor, got ", x_src.device());
  Sizes s;
  s.N_src = d.n_src;
  s.N_dst = d.n_dst;
  s.E = d.num_edges;
  s.d = d.d;
  s.A = d.attr;
  s.C_in = d.c_in;
  s.C_out = d.c_out;
  s.H = d.hidden;
  s.L = (int64_t)d.layers.size();
  TORCH_CHECK(s.L <= kMaxLayers, op, ": the CUDA kernels support at most ", kMaxLayers,
              " plan layers, got ", s.L);
  TORCH_CHECK((s.H + 1) * s.C_in < (int64_t)1 << 31, op, ": (H + 1) * C_in too large");
  return s;
}

// Value checks of the field maps (csrc/point_conv.cpp) on host copies: the
// kernels index with them.  Tiny tensors; one copy each for gated/norm layers.
void check_field_values(const pyg_implicit::ConvDims& dims, at::TensorList fields) {
  std::vector<Tensor> host;
  for (const auto& m : fields) host.push_back(m.cpu());
  pyg_implicit::check_field_values_cpu(dims, host);
}

// Builds the kernel-side plan. `keep` holds the contiguous/transposed copies
// alive until the kernels are enqueued (the caching allocator is stream-safe).
template <typename T>
PlanP<T> make_plan(const Sizes& s, const pyg_implicit::PlanArgs& a, std::vector<Tensor>& keep) {
  const at::TensorList weights = a.weights, biases = a.biases, samplers = a.samplers,
                       projectors = a.projectors;
  const at::IntArrayRef activations = a.activations;
  const Tensor& width = a.width;
  PlanP<T> p{};
  p.L = (int)s.L;
  p.d = (int)s.d;
  p.A = (int)s.A;
  p.lift = (int)a.lift_degree;
  p.X = (int)pyg_implicit::lifted_size(s.d, a.lift_degree);
  p.H0 = p.X + (int)s.A;
  p.H = (int)s.H;
  p.C_in = (int)s.C_in;
  int maxU = p.H0, maxZ = 1, maxS = 1, maxS_fwd = 0;
  int64_t off = 0;
  auto hold = [&](Tensor t) -> const T* {
    keep.push_back(t);
    return t.data_ptr<T>();
  };
  for (int l = 0; l < p.L; ++l) {
    LayerP<T>& Ly = p.layer[l];
    const Tensor W = weights[l].contiguous();
    Ly.W = hold(W);
    Ly.WT = hold(W.t().contiguous());
    Ly.b = hold(biases[l].contiguous());
    Ly.hp = (int)W.size(0);
    Ly.in = (int)W.size(1);
    Ly.act = (int)activations[l];
    Ly.off_W = off; off += (int64_t)Ly.hp * Ly.in;
    Ly.off_b = off; off += Ly.hp;
    Ly.kind = (int)a.kinds[l];
    Ly.nf = 0;
    Ly.fields = nullptr;
    Ly.fb = nullptr;
    const Tensor& Q = samplers[l];
    if (Ly.kind == pyg_implicit::kGated || Ly.kind == pyg_implicit::kNorm) {
      Ly.fourier = 0;
      Ly.Q = Ly.QT = Ly.P = Ly.PT = nullptr;
      Ly.M = Ly.hp; Ly.F = 1; Ly.G = 0; Ly.Fp = 1;
      const Tensor m = a.fields[l].contiguous();
      keep.push_back(m);
      Ly.fields = m.data_ptr<int64_t>();
      Ly.off_Q = Ly.off_P = off;
      if (Ly.kind == pyg_implicit::kGated) {
        Ly.out = (int)m.numel();
        Ly.nf = Ly.hp - Ly.out;
      } else {
        Ly.out = Ly.hp;
        Ly.fb = hold(a.field_biases[l].contiguous());
        Ly.nf = (int)a.field_biases[l].numel();
        maxS = std::max(maxS, 3 * Ly.nf);
        maxS_fwd = std::max(maxS_fwd, Ly.nf);
      }
    } else if (Q.numel() == 0) {
      Ly.fourier = 0;
      Ly.Q = Ly.QT = Ly.P = Ly.PT = nullptr;
      Ly.M = Ly.hp; Ly.F = 1; Ly.G = 0; Ly.Fp = 1;
      Ly.out = Ly.hp;
      Ly.off_Q = Ly.off_P = off;
    } else {
      Ly.fourier = 1;
      const Tensor Qc = Q.contiguous();
      const Tensor Pc = projectors[l].contiguous();
      Ly.Q = hold(Qc);
      Ly.QT = hold(Qc.t().contiguous());
      Ly.P = hold(Pc);
      Ly.PT = hold(Pc.t().contiguous());
      Ly.G = (int)Qc.size(0);
      Ly.F = (int)Qc.size(1);
      Ly.Fp = (int)Pc.size(0);
      Ly.M = Ly.hp / Ly.F;
      Ly.out = Ly.M * Ly.Fp;
      Ly.off_Q = off; off += (int64_t)Ly.G * Ly.F;
      Ly.off_P = off; off += (int64_t)Ly.Fp * Ly.G;
      maxS = std::max(maxS, Ly.M * Ly.G);
      if (!fourier_fused(Ly)) maxS_fwd = std::max(maxS_fwd, Ly.M * Ly.G);
    }
    Ly.off_Bf = off; off += Ly.kind == pyg_implicit::kNorm ? Ly.nf : 0;
    maxU = std::max(maxU, Ly.out);
    maxZ = std::max(maxZ, Ly.hp);
  }
  p.maxU = std::max(maxU, 1);
  p.maxZ = maxZ;
  p.maxS = maxS;
  p.maxS_fwd = maxS_fwd;
  p.tf32 = std::is_same<T, float>::value && tf32_requested() ? 1 : 0;
  p.width = hold(width.contiguous());
  p.off_width = off; off += 1;
  p.n_params = off;
  return p;
}

// Largest TE in [1, te_max] whose shared memory fits `limit` bytes (0 if none).
template <typename F>
int choose_tile(int te_max, int64_t limit, F bytes_of) {
  for (int te = te_max; te >= 1; --te)
    if (bytes_of(te) <= limit) return te;
  return 0;
}

int64_t chunk_rows_for(int64_t N_dst, int64_t row_bytes) {
  const int64_t budget = env_int("PYG_IMPLICIT_CUDA_WS_MB", 256) * (int64_t)1024 * 1024;
  const int64_t rows = std::max<int64_t>(1, budget / std::max<int64_t>(row_bytes, 1));
  return std::max<int64_t>(1, std::min<int64_t>(rows, N_dst));
}

template <typename T>
void forward_impl(const Sizes& s, const PlanP<T>& plan, const Tensor& x_src,
                  const Tensor& pos_src, const Tensor& pos_dst, const Tensor& edge_attr,
                  const Tensor& rowptr, const Tensor& col, const Tensor& Wt, Tensor& out) {
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  const int64_t limit = (int64_t)prop->sharedMemPerBlockOptin;
  // default forward tile: 32 edges (a typical kNN row in one tile, and with
  // fused Fourier layers enough (edge, field) rows for the 256 threads)
  const int te_max = (int)std::min<int64_t>(env_int("PYG_IMPLICIT_CUDA_TE", 32), 64);
  const int TE = choose_tile(te_max, limit, [&](int te) {
    return fwd_layout(plan, te).total * (int64_t)sizeof(T);
  });
  TORCH_CHECK(TE >= 1, "point_conv_forward (CUDA): the plan needs ",
              fwd_layout(plan, 1).total * (int64_t)sizeof(T),
              " bytes of shared memory per edge tile of one edge, more than this device's "
              "per-block limit of ", limit, " bytes (grid or hidden size too large for the "
              "CUDA kernels; use float32 or a smaller plan)");
  const FwdLayout lay = fwd_layout(plan, TE);
  const int64_t smem = lay.total * (int64_t)sizeof(T);
  auto kernel = point_conv_fwd_kernel<T>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)smem));
  auto stream = at::cuda::getCurrentCUDAStream();

  const int64_t arow = (s.H + 1) * s.C_in;
  const int64_t chunk = chunk_rows_for(s.N_dst, arow * (int64_t)sizeof(T));
  if (launch_report_on())
    report_launch<T>("point_conv_fwd_kernel", s.E, s.N_dst, TE, smem,
                     blocks_per_sm((const void*)kernel, smem),
                     std::min<int64_t>(chunk, (int64_t)1 << 30), chunk);
  Tensor Aws = at::empty({chunk, arow}, x_src.options());
  const Tensor WtT = Wt.t();
  for (int64_t r0 = 0; r0 < s.N_dst; r0 += chunk) {
    const int64_t n = std::min(chunk, s.N_dst - r0);
    const unsigned int grid = (unsigned int)std::min<int64_t>(n, (int64_t)1 << 30);
    kernel<<<grid, kThreads, (size_t)smem, stream>>>(
        plan, lay, TE, x_src.data_ptr<T>(), pos_src.data_ptr<T>(), pos_dst.data_ptr<T>(),
        edge_attr.data_ptr<T>(), rowptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(), s.N_src,
        s.E, r0, n, acc_regs_allowed(), Aws.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    Tensor out_rows = out.narrow(0, r0, n);
    at::mm_out(out_rows, Aws.narrow(0, 0, n), WtT);
  }
}

}  // namespace

Tensor point_conv_forward_cuda(const Tensor& x_src_, const Tensor& pos_src_,
                               const Tensor& pos_dst_, const Tensor& edge_attr_,
                               const Tensor& rowptr_, const Tensor& col_,
                               const Tensor& csc_rowptr_, const Tensor& csc_perm_,
                               at::TensorList weights, at::TensorList biases,
                               at::TensorList samplers, at::TensorList projectors,
                               at::TensorList fields, at::TensorList field_biases,
                               at::IntArrayRef kinds, at::IntArrayRef activations,
                               int64_t lift_degree, const Tensor& width, const Tensor& Wt_) {
  const char* op = "point_conv_forward";
  const pyg_implicit::PlanArgs args{weights, biases,      samplers, projectors,
                                    fields,  field_biases, kinds,   activations,
                                    lift_degree, width,   Wt_};
  const pyg_implicit::ConvDims dims = pyg_implicit::check_point_conv_inputs(
      op, x_src_, pos_src_, pos_dst_, edge_attr_, rowptr_, col_, csc_rowptr_, csc_perm_, args);
  const Sizes s = cuda_sizes(op, dims, x_src_);
  check_field_values(dims, fields);
  const c10::cuda::CUDAGuard guard(x_src_.device());
  const Tensor x_src = x_src_.contiguous();
  const Tensor pos_src = pos_src_.contiguous();
  const Tensor pos_dst = pos_dst_.contiguous();
  const Tensor edge_attr = edge_attr_.contiguous();
  const Tensor rowptr = rowptr_.contiguous();
  const Tensor col = col_.contiguous();
  const Tensor Wt = Wt_.contiguous();

  Tensor out = at::empty({s.N_dst, s.C_out}, x_src.options());
  if (s.N_dst == 0) return out;
  if (s.E == 0 || s.N_src == 0) return out.zero_();

  AT_DISPATCH_FLOATING_TYPES(x_src.scalar_type(), "point_conv_forward_cuda", [&] {
    std::vector<Tensor> keep;
    const PlanP<scalar_t> plan = make_plan<scalar_t>(s, args, keep);
    forward_impl<scalar_t>(s, plan, x_src, pos_src, pos_dst, edge_attr, rowptr, col, Wt, out);
  });
  return out;
}

using BwdResult = std::tuple<Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>,
                             std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>,
                             std::vector<Tensor>, Tensor, Tensor>;

BwdResult point_conv_backward_cuda(const Tensor& grad_out_, const Tensor& x_src_,
                                   const Tensor& pos_src_, const Tensor& pos_dst_,
                                   const Tensor& edge_attr_, const Tensor& rowptr_,
                                   const Tensor& col_, const Tensor& csc_rowptr_,
                                   const Tensor& csc_perm_, at::TensorList weights,
                                   at::TensorList biases, at::TensorList samplers,
                                   at::TensorList projectors, at::TensorList fields,
                                   at::TensorList field_biases, at::IntArrayRef kinds,
                                   at::IntArrayRef activations, int64_t lift_degree,
                                   const Tensor& width, const Tensor& Wt_,
                                   c10::List<bool> output_mask) {
  const char* op = "point_conv_backward";
  const pyg_implicit::PlanArgs args{weights, biases,      samplers, projectors,
                                    fields,  field_biases, kinds,   activations,
                                    lift_degree, width,   Wt_};
  const pyg_implicit::ConvDims dims = pyg_implicit::check_point_conv_inputs(
      op, x_src_, pos_src_, pos_dst_, edge_attr_, rowptr_, col_, csc_rowptr_, csc_perm_, args);
  pyg_implicit::check_point_conv_backward_inputs(dims, grad_out_, x_src_, output_mask);
  const Sizes s = cuda_sizes(op, dims, x_src_);
  check_field_values(dims, fields);
  const pyg_implicit::GradRequest req = pyg_implicit::grad_request(output_mask);

  const c10::cuda::CUDAGuard guard(x_src_.device());
  const Tensor grad_out = grad_out_.contiguous();
  const Tensor x_src = x_src_.contiguous();
  const Tensor pos_src = pos_src_.contiguous();
  const Tensor pos_dst = pos_dst_.contiguous();
  const Tensor edge_attr = edge_attr_.contiguous();
  const Tensor rowptr = rowptr_.contiguous();
  const Tensor col = col_.contiguous();
  const Tensor csc_rowptr = csc_rowptr_.contiguous();
  const Tensor csc_perm = csc_perm_.contiguous();
  const Tensor Wt = Wt_.contiguous();
  const auto opts = x_src.options();

  Tensor g_x = at::zeros({s.N_src, s.C_in}, opts);
  Tensor g_pos_src = at::zeros({s.N_src, s.d}, opts);
  Tensor g_pos_dst = at::zeros({s.N_dst, s.d}, opts);
  Tensor g_attr = at::zeros({s.E, s.A}, opts);
  Tensor g_Wt = at::zeros_like(Wt);
  std::vector<Tensor> g_W, g_b, g_Q, g_P, g_Bf;
  Tensor g_width;

  const bool any_edges = s.E > 0 && s.N_dst > 0 && s.N_src > 0;
  const bool need_edge_kernel = any_edges && req.any();

  AT_DISPATCH_FLOATING_TYPES(x_src.scalar_type(), "point_conv_backward_cuda", [&] {
    using T = scalar_t;
    std::vector<Tensor> keep;
    PlanP<T> plan = make_plan<T>(s, args, keep);
    Tensor flat = at::zeros({plan.n_params}, opts);

    if (need_edge_kernel) {
      const auto* prop = at::cuda::getCurrentDeviceProperties();
      const int64_t limit = (int64_t)prop->sharedMemPerBlockOptin;
      const int te_max = (int)std::min<int64_t>(env_int("PYG_IMPLICIT_CUDA_TE", 8), 64);
      const int TE = choose_tile(te_max, limit, [&](int te) {
        PlanP<T> tmp = plan;
        return bwd_layout_fill(tmp, te).total * (int64_t)sizeof(T);
      });
      if (TE < 1) {
        PlanP<T> tmp = plan;
        TORCH_CHECK(false, op, ": the plan needs ",
                    bwd_layout_fill(tmp, 1).total * (int64_t)sizeof(T),
                    " bytes of shared memory per edge tile of one edge, more than this "
                    "device's per-block limit of ", limit, " bytes (grid or hidden size too "
                    "large for the CUDA kernels; use float32 or a smaller plan)");
      }
      const BwdLayout lay = bwd_layout_fill(plan, TE);
      const int64_t smem = lay.total * (int64_t)sizeof(T);
      auto kernel = point_conv_bwd_kernel<T>;
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          (int)smem));
      const int per_sm = blocks_per_sm((const void*)kernel, smem);
      const int64_t NB = std::max<int64_t>(1, (int64_t)std::max(per_sm, 1) *
                                                  prop->multiProcessorCount);
      Tensor partial = at::zeros({NB, plan.n_params}, opts);

      const bool need_A = req[pyg_implicit::kGradWt];
      const bool need_dF = req[pyg_implicit::kGradXSrc];
      const int64_t arow = (s.H + 1) * s.C_in;
      const int64_t chunk = chunk_rows_for(s.N_dst, 3 * arow * (int64_t)sizeof(T));
      if (launch_report_on())
        report_launch<T>("point_conv_bwd_kernel", s.E, s.N_dst, TE, smem, per_sm,
                         std::min<int64_t>(NB, chunk), chunk);
      Tensor dAws = at::empty({chunk, arow}, opts);
      Tensor dATws = at::empty({chunk, arow}, opts);
      // Wt with its (H+1) and C_in axes swapped: dout Wt_c gives dA c-major
      const Tensor Wt_c = Wt.view({s.C_out, s.H + 1, s.C_in}).transpose(1, 2)
                              .reshape({s.C_out, arow});
      Tensor Aws = need_A ? at::empty({chunk, arow}, opts) : Tensor();
      Tensor dF = need_dF ? at::zeros({s.E, s.C_in}, opts) : Tensor();
      Tensor dX = at::zeros({s.E, s.d}, opts);
      auto stream = at::cuda::getCurrentCUDAStream();

      for (int64_t r0 = 0; r0 < s.N_dst; r0 += chunk) {
        const int64_t n = std::min(chunk, s.N_dst - r0);
        const Tensor dout_rows = grad_out.narrow(0, r0, n);
        Tensor dA_rows = dAws.narrow(0, 0, n);
        at::mm_out(dA_rows, dout_rows, Wt);
        Tensor dAT_rows = dATws.narrow(0, 0, n);
        at::mm_out(dAT_rows, dout_rows, Wt_c);
        const unsigned int grid = (unsigned int)std::min<int64_t>(NB, n);
        kernel<<<grid, kThreads, (size_t)smem, stream>>>(
            plan, lay, TE, x_src.data_ptr<T>(), pos_src.data_ptr<T>(), pos_dst.data_ptr<T>(),
            edge_attr.data_ptr<T>(), rowptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(),
            s.N_src, s.E, r0, n, acc_regs_allowed(), dAws.data_ptr<T>(),
            dATws.data_ptr<T>(),
            need_A ? Aws.data_ptr<T>() : nullptr,
            need_dF ? dF.data_ptr<T>() : nullptr, dX.data_ptr<T>(), g_pos_dst.data_ptr<T>(),
            g_attr.data_ptr<T>(), partial.data_ptr<T>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (need_A) g_Wt.addmm_(dout_rows.t(), Aws.narrow(0, 0, n));
      }

      const int threads = 256;
      if (need_dF) {
        csc_gather_kernel<T><<<grid_1d(s.N_src * s.C_in, threads), threads, 0, stream>>>(
            dF.data_ptr<T>(), csc_rowptr.data_ptr<int64_t>(), csc_perm.data_ptr<int64_t>(),
            s.N_src, s.C_in, s.E, g_x.data_ptr<T>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (req[pyg_implicit::kGradPosSrc]) {
        csc_gather_kernel<T><<<grid_1d(s.N_src * s.d, threads), threads, 0, stream>>>(
            dX.data_ptr<T>(), csc_rowptr.data_ptr<int64_t>(), csc_perm.data_ptr<int64_t>(),
            s.N_src, s.d, s.E, g_pos_src.data_ptr<T>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      reduce_partials_kernel<T><<<grid_1d(plan.n_params, threads), threads, 0, stream>>>(
          partial.data_ptr<T>(), NB, plan.n_params, flat.data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }

    // split the flat parameter gradient (clones: outputs must not alias each other)
    for (int l = 0; l < plan.L; ++l) {
      const LayerP<T>& Ly = plan.layer[l];
      g_W.push_back(flat.narrow(0, Ly.off_W, (int64_t)Ly.hp * Ly.in)
                        .view(weights[l].sizes()).clone());
      g_b.push_back(flat.narrow(0, Ly.off_b, Ly.hp).view(biases[l].sizes()).clone());
      if (Ly.fourier) {
        g_Q.push_back(flat.narrow(0, Ly.off_Q, (int64_t)Ly.G * Ly.F)
                          .view(samplers[l].sizes()).clone());
        g_P.push_back(flat.narrow(0, Ly.off_P, (int64_t)Ly.Fp * Ly.G)
                          .view(projectors[l].sizes()).clone());
      } else {
        g_Q.push_back(at::zeros(samplers[l].sizes(), opts));
        g_P.push_back(at::zeros(projectors[l].sizes(), opts));
      }
      g_Bf.push_back(Ly.kind == pyg_implicit::kNorm
                         ? flat.narrow(0, Ly.off_Bf, Ly.nf).view(field_biases[l].sizes()).clone()
                         : at::zeros(field_biases[l].sizes(), opts));
    }
    g_width = flat.narrow(0, plan.off_width, 1).view(width.sizes()).clone();
  });

  // Masked-out groups are returned as zeros of their full shape (like the CPU backend).
  if (!req[pyg_implicit::kGradPosDst]) g_pos_dst.zero_();
  if (!req[pyg_implicit::kGradEdgeAttr]) g_attr.zero_();
  if (!req.params()) {
    for (auto* group : {&g_W, &g_b, &g_Q, &g_P, &g_Bf})
      for (auto& t : *group) t.zero_();
  }
  if (!req[pyg_implicit::kGradWidth]) g_width.zero_();

  return BwdResult(g_x, g_pos_src, g_pos_dst, g_attr, g_W, g_b, g_Q, g_P, g_Bf, g_width, g_Wt);
}

}  // namespace pyg_implicit_cuda

TORCH_LIBRARY_IMPL(pyg_implicit, CUDA, m) {
  m.impl("point_conv_forward", &pyg_implicit_cuda::point_conv_forward_cuda);
  m.impl("point_conv_backward", &pyg_implicit_cuda::point_conv_backward_cuda);
}
