// CPU kernels of the fused point convolution (docs/fused_op_spec.md).
//
// Forward: the targets are cut into fixed chunks of consecutive CSR rows with
// about the same number of edges (the cut depends on rowptr only, never on
// the thread count); at::parallel_for runs the chunks.  A chunk walks its
// edges in tiles of kTile edges (a tile may span several rows): it evaluates
// the plan MLP of the tile with BLAS GEMMs on small per-thread buffers,
// forms g_e = [s_e u_e, s_e] and accumulates A_i += g_e (x) f_j for each
// row segment of the tile into a window of kRows rows (32; env
// PYG_IMPLICIT_CPU_ROWS); a full window is
// flushed with one GEMM out[rows] = A[rows] Wt^T.
//
// Backward: the same walk recomputes the MLP of each tile (keeping the
// tile's activations), with dA_i = Wt^T dout_i for the rows of the window
// (one GEMM per window).  Per edge: dg_e = dA_i f_j, df_e = dA_i^T g_e
// (stored per edge, E x C_in), back through the envelope and the MLP;
// parameter gradients go to per-chunk partial buffers that are summed in
// chunk order afterwards; dWt += dout^T A per window.  The gradients of
// sources (x_src, pos_src) are gathered per source node in CSC order
// (csc_perm), pos_dst per row: no atomics, bitwise deterministic.
//
// Fourier layers run on the AVX-512 register kernels of fourier_rows.h where
// the CPU has them (grid samples never stored, a short first layer folded into
// its sampler), else on the row kernels of small_gemm.h, which a backward that
// wants sampler/projector gradients also uses.
//
// Nothing proportional to E x H, E x grid samples or E x C_out x C_in is
// allocated (only E x C_in and E x d per-edge gradients in the backward).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "point_conv.h"
#include "fourier_rows.h"
#include "small_gemm.h"

// Fortran BLAS exported by libtorch_cpu (MKL or OpenBLAS).  Declared weak so
// that a torch without them still loads the extension (ATen fallback).
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n,
            const int* k, const float* alpha, const float* a, const int* lda,
            const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n,
            const int* k, const double* alpha, const double* a, const int* lda,
            const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

namespace pyg_implicit {

#ifdef PYGI_SMALL_GEMM
bool small_gemm::available() {
  static const bool ok = [] {
    if (std::getenv("PYG_IMPLICIT_NO_SMALL_GEMM") != nullptr) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
}
#endif
#ifdef PYGI_FOURIER_ROWS
bool fourier_rows::available() {
  static const bool hw = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  }();
  const char* v = std::getenv("PYG_IMPLICIT_CPU_FOURIER_ROWS");
  return hw && !(v != nullptr && v[0] == '0');
}
#endif

namespace {

// ---------------------------------------------------------------------------
// Row-major GEMM on raw pointers: C[m, n] = alpha op(A)[m, k] op(B)[k, n]
// + beta C.  beta == 0 ignores the old content of C.
// ---------------------------------------------------------------------------

template <typename T>
void blas_colmajor(char ta, char tb, int m, int n, int k, T alpha, const T* a,
                   int lda, const T* b, int ldb, T beta, T* c, int ldc);

template <>
void blas_colmajor<float>(char ta, char tb, int m, int n, int k, float alpha,
                          const float* a, int lda, const float* b, int ldb,
                          float beta, float* c, int ldc) {
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

template <>
void blas_colmajor<double>(char ta, char tb, int m, int n, int k, double alpha,
                           const double* a, int lda, const double* b, int ldb,
                           double beta, double* c, int ldc) {
  dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

template <typename T>
at::Tensor wrap(const T* p, at::IntArrayRef sizes, at::IntArrayRef strides) {
  return at::from_blob(const_cast<T*>(p), sizes, strides,
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

template <typename T>
at::Tensor wrap1(const T* p, int64_t n) {
  return at::from_blob(const_cast<T*>(p), {n},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

template <typename T>
void gemm_aten(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha,
               const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c,
               int64_t ldc) {
  at::Tensor A = ta ? wrap(a, {k, m}, {lda, 1}).t() : wrap(a, {m, k}, {lda, 1});
  at::Tensor B = tb ? wrap(b, {n, k}, {ldb, 1}).t() : wrap(b, {k, n}, {ldb, 1});
  at::Tensor C = wrap(c, {m, n}, {ldc, 1});
  if (beta == T(0)) {
    C.zero_();
  }
  C.addmm_(A, B, beta == T(0) ? T(1) : beta, alpha);
}

template <typename T>
bool blas_self_test() {
  if (std::is_same<T, float>::value ? sgemm_ == nullptr : dgemm_ == nullptr) {
    return false;
  }
  // C[2, 3] = A[2, 4] B^T, B[3, 4]; compare with a plain loop.
  T a[8], b[12], c[6], r[6];
  for (int i = 0; i < 8; ++i) a[i] = T(i + 1) * T(0.5);
  for (int i = 0; i < 12; ++i) b[i] = T(i % 5) - T(1.5);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) {
      T s = 0;
      for (int q = 0; q < 4; ++q) s += a[i * 4 + q] * b[j * 4 + q];
      r[i * 3 + j] = s + T(1);
      c[i * 3 + j] = T(1);
    }
  blas_colmajor<T>('T', 'N', 3, 2, 4, T(1), b, 4, a, 4, T(1), c, 3);
  for (int i = 0; i < 6; ++i) {
    if (std::abs(c[i] - r[i]) > T(1e-4)) return false;
  }
  return true;
}

template <typename T>
bool use_blas() {
  static const bool ok = blas_self_test<T>();
  return ok;
}

template <typename T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha,
          const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c,
          int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j)
        c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return;
  }
  lda = std::max<int64_t>(lda, 1);
  ldb = std::max<int64_t>(ldb, 1);
  ldc = std::max<int64_t>(ldc, 1);
  const int64_t big = std::max({m, n, k, lda, ldb, ldc});
  if (use_blas<T>() && big < INT_MAX) {
    // Row-major C = op(A) op(B)  <=>  column-major C^T = op(B)^T op(A)^T.
    blas_colmajor<T>(tb ? 'T' : 'N', ta ? 'T' : 'N', static_cast<int>(n),
                     static_cast<int>(m), static_cast<int>(k), alpha, b,
                     static_cast<int>(ldb), a, static_cast<int>(lda), beta, c,
                     static_cast<int>(ldc));
  } else {
    gemm_aten<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

// ---------------------------------------------------------------------------
// Activations on raw buffers.  The formulas are those of plan_contract.h;
// known codes take ATen's vectorised CPU kernels (same functions as the
// reference), any other code the contract's scalar loop.
// PYG_IMPLICIT_CPU_GENERIC_ACT=1 forces the scalar loop (tests).
// ---------------------------------------------------------------------------

bool generic_activations();

// Vectorised y = act(x) for the codes ATen has; false for any other code.
template <typename T>
bool act_forward_aten(int64_t code, const T* in, T* out, int64_t count) {
#ifdef PYGI_SMALL_GEMM
  if (code == kElu && small_gemm::available()) {
    if (out != in) std::memcpy(out, in, sizeof(T) * count);
    small_gemm::elu_inplace<T>(out, count);
    return true;
  }
#endif
  at::Tensor x = wrap1(in, count);
  at::Tensor y = wrap1(out, count);
  switch (code) {
    case kElu: at::elu_out(y, x); return true;
    case kRelu: at::clamp_min_out(y, x, 0); return true;
    case kSilu: at::silu_out(y, x); return true;
    case kTanh: at::tanh_out(y, x); return true;
    case kSigmoid: at::sigmoid_out(y, x); return true;
    default: return false;
  }
}

template <typename T>
void act_forward(int64_t code, const T* in, T* out, int64_t count) {
  if (count <= 0) return;
  if (!generic_activations() && act_forward_aten<T>(code, in, out, count)) return;
  for (int64_t i = 0; i < count; ++i) out[i] = activation_value<T>(code, in[i]);
}

// Vectorised grad_in = act'(.) * grad_out for the codes ATen has; false otherwise.
template <typename T>
bool act_backward_aten(int64_t code, const T* grad_out, const T* in, const T* out,
                       T* grad_in, int64_t count) {
  at::Tensor go = wrap1(grad_out, count);
  at::Tensor gi = wrap1(grad_in, count);
  switch (code) {
    case kElu:
      at::elu_backward_out(gi, go, 1, 1, 1, /*is_result=*/true, wrap1(out, count));
      return true;
    case kRelu: at::threshold_backward_out(gi, go, wrap1(out, count), 0); return true;
    case kSilu: at::silu_backward_out(gi, go, wrap1(in, count)); return true;
    case kTanh: at::tanh_backward_out(gi, go, wrap1(out, count)); return true;
    case kSigmoid: at::sigmoid_backward_out(gi, go, wrap1(out, count)); return true;
    default: return false;
  }
}

// grad_in = act'(.) * grad_out; `in` is the pre-activation (read only where
// derivative_reads_input(code)), `out` the activation's result.  grad_in may
// alias grad_out.
template <typename T>
void act_backward(int64_t code, const T* grad_out, const T* in, const T* out,
                  T* grad_in, int64_t count) {
  if (count <= 0) return;
  if (!generic_activations() &&
      act_backward_aten<T>(code, grad_out, in, out, grad_in, count))
    return;
  const bool reads_in = derivative_reads_input(code);
  for (int64_t i = 0; i < count; ++i)
    grad_in[i] = grad_out[i] *
                 activation_derivative<T>(code, reads_in ? in[i] : T(0), out[i]);
}

// ---------------------------------------------------------------------------
// Tuning knobs (read once).
// ---------------------------------------------------------------------------

int64_t env_int(const char* name, int64_t def, int64_t lo, int64_t hi) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return def;
  const long long x = std::atoll(v);
  return std::min<int64_t>(std::max<int64_t>(x, lo), hi);
}

bool generic_activations() {
  static const bool g = env_int("PYG_IMPLICIT_CPU_GENERIC_ACT", 0, 0, 1) != 0;
  return g;
}

int64_t tile_edges() {
  static const int64_t t = env_int("PYG_IMPLICIT_CPU_TILE", 64, 1, 4096);
  return t;
}

// rows per A / dA window: larger windows mean fewer passes over Wt (forward)
// and over the dWt partial (backward), at kRows x (H + 1) C_in per buffer
int64_t rows_per_window() {
  static const int64_t r = env_int("PYG_IMPLICIT_CPU_ROWS", 32, 1, 4096);
  return r;
}
constexpr int64_t kMaxChunks = 32;   // fixed chunks of rows (partials)
constexpr int64_t kMinChunkEdges = 128;

// Chunk boundaries (rows) with about equal edge counts; depends on rowptr
// only, so results never depend on the number of threads.
std::vector<int64_t> make_chunks(const int64_t* rowptr, int64_t n_dst,
                                 int64_t num_edges) {
  int64_t nc = (num_edges + kMinChunkEdges - 1) / kMinChunkEdges;
  nc = std::max<int64_t>(1, std::min<int64_t>(nc, kMaxChunks));
  const int64_t per = (num_edges + nc - 1) / nc;
  std::vector<int64_t> b{0};
  for (int64_t c = 1; c < nc; ++c) {
    const int64_t r =
        std::lower_bound(rowptr, rowptr + n_dst + 1, c * per) - rowptr;
    if (r > b.back() && r < n_dst) b.push_back(r);
  }
  b.push_back(n_dst);
  return b;
}

// ---------------------------------------------------------------------------
// Per-thread tile workspace and the plan MLP on a tile.
// ---------------------------------------------------------------------------

template <typename T>
struct Plan {
  const ConvDims* dims;
  std::vector<const T*> W, b, Q, P;
  std::vector<const T*> QT;  // samplers transposed: [F, G] (row kernels only)
  std::vector<const int64_t*> M;  // field maps (gated / norm layers)
  std::vector<const T*> Bf;       // field biases (norm layers)
  // Fourier layers on the register kernels of fourier_rows.h: their width N
  // (0: row kernels) and Q, P^T padded to [G, N]
  std::vector<int> fr_n;
  std::vector<const T*> Qp, PTp;
  // a first Fourier layer folded into its sampler (fourier_rows.h): the padded
  // input width (0: not folded) and [Q W_f, Q b_f] per field, [fields, G, IN + 1]
  int fold_in = 0;
  const T* QWb = nullptr;
  T width;
  bool small = false;        // use the small_gemm row kernels
};

template <typename T>
struct Tile {
  int64_t cap = 0;                  // kTile
  std::vector<int64_t> rows;        // row (target) of each edge of the tile
  std::vector<std::vector<T>> u;    // u_0 .. u_L: [n, H_l]
  std::vector<std::vector<T>> z;    // z_1 .. z_L (pre-activations): [n, H'_l]
  // Fourier layers on the row kernels (the register kernels store no sample):
  std::vector<std::vector<T>> S;    // grid pre-activations (if the derivative reads them)
  std::vector<std::vector<T>> Y;    // grid activations [n M, G]
  std::vector<T> s;                 // envelope [n]
  std::vector<T> g;                 // [n, H + 1]
  std::vector<T> f;                 // gathered x_src rows [n, C_in]
  std::vector<T> scratch;           // norm layers: 2 x fields of one edge
  std::vector<T> grid;              // fourier_rows backward: G x 16

  // fr_n: Plan::fr_n (which Fourier layers run on the register kernels)
  Tile(const ConvDims& d, int64_t tile, const std::vector<int>& fr_n) : cap(tile) {
    const int64_t L = static_cast<int64_t>(d.layers.size());
    rows.resize(tile);
    u.resize(L + 1);
    z.resize(L);
    S.resize(L);
    Y.resize(L);
    u[0].resize(tile * d.h0);
    int64_t nf = 0;
    for (int64_t l = 0; l < L; ++l) {
      const auto& ld = d.layers[l];
      nf = std::max(nf, ld.nf);
      u[l + 1].resize(tile * ld.out);
      z[l].resize(tile * ld.pre);
      if (ld.fourier && fr_n[l] > 0) {
        grid.resize(std::max<size_t>(grid.size(), ld.G * 16));
      } else if (ld.fourier) {
        Y[l].resize(tile * ld.fields * ld.G);
        if (derivative_reads_input(ld.act)) S[l].resize(tile * ld.fields * ld.G);
      }
    }
    s.resize(tile);
    g.resize(tile * (d.hidden + 1));
    f.resize(tile * d.c_in);
    scratch.resize(2 * nf + 1);
  }
};

// The kernel-side plan of a call; `keep` holds the contiguous (and transposed)
// copies its pointers refer to.
template <typename T>
T* kept(std::vector<at::Tensor>& keep, const at::Tensor& t) {
  keep.push_back(t.contiguous());
  return keep.back().data_ptr<T>();
}

// grid_grads: the call computes the gradients of samplers or projectors (the
// Fourier layers then keep the row kernels, which see every grid sample).
template <typename T>
Plan<T> make_plan(const ConvDims& d, const PlanArgs& a, std::vector<at::Tensor>& keep,
                  bool grid_grads) {
  Plan<T> plan;
  plan.dims = &d;
  const bool registers = !grid_grads && fourier_rows::available();
  for (size_t l = 0; l < a.weights.size(); ++l) {
    const LayerDims& ld = d.layers[l];
    const int n = ld.fourier && registers && fourier_rows::supports_activation(ld.act)
                      ? fourier_rows::padded_width(ld.F, ld.Fp) : 0;
    plan.fr_n.push_back(n);
    if (n > 0) {
      at::Tensor qp = at::zeros({ld.G, n}, a.samplers[l].options());
      at::Tensor ptp = at::zeros({ld.G, n}, a.projectors[l].options());
      qp.narrow(1, 0, ld.F).copy_(a.samplers[l]);
      ptp.narrow(1, 0, ld.Fp).copy_(a.projectors[l].t());
      plan.Qp.push_back(kept<T>(keep, qp));
      plan.PTp.push_back(kept<T>(keep, ptp));
    } else {
      plan.Qp.push_back(nullptr);
      plan.PTp.push_back(nullptr);
    }
    plan.W.push_back(kept<T>(keep, a.weights[l]));
    plan.b.push_back(kept<T>(keep, a.biases[l]));
    plan.Q.push_back(kept<T>(keep, a.samplers[l]));
    plan.QT.push_back(n > 0 ? nullptr : kept<T>(keep, a.samplers[l].t()));  // row kernels
    plan.P.push_back(kept<T>(keep, a.projectors[l]));
    plan.M.push_back(kept<int64_t>(keep, a.fields[l]));
    plan.Bf.push_back(kept<T>(keep, a.field_biases[l]));
  }
  if (!d.layers.empty() && plan.fr_n[0] > 0) {
    const LayerDims& ld = d.layers[0];
    plan.fold_in = fourier_rows::folded_width(ld.in, ld.F);
    if (plan.fold_in > 0) {
      const at::Tensor& Q = a.samplers[0];
      at::Tensor qwb = at::zeros({ld.fields, ld.G, plan.fold_in + 1}, Q.options());
      qwb.narrow(2, 0, ld.in).copy_(at::matmul(Q, a.weights[0].reshape({ld.fields, ld.F, ld.in})));
      qwb.select(2, plan.fold_in).copy_(at::matmul(a.biases[0].reshape({ld.fields, ld.F}), Q.t()));
      plan.QWb = kept<T>(keep, qwb);
    }
  }
  plan.width = a.width.item<T>();
  plan.small = small_gemm::available();
  return plan;
}

// Fills rows/u_0/s/f for the edges [p0, p0 + n) and runs the MLP -> g.
// keep_pre: every layer's pre-activation z is formed (the backward reads them;
// the forward may skip the first layer's when it is folded).
template <typename T>
void tile_forward(const Plan<T>& plan, Tile<T>& tl, int64_t p0, int64_t n,
                  int64_t& row, const int64_t* rowptr, const int64_t* col,
                  const T* x_src, const T* pos_src, const T* pos_dst,
                  const T* edge_attr, bool keep_pre) {
  const ConvDims& d = *plan.dims;
  const int64_t D = d.d, A = d.attr, H0 = d.h0, X = d.lifted, C = d.c_in;
  const T inv_w2 = T(1) / (plan.width * plan.width);
  T* u0 = tl.u[0].data();
  for (int64_t t = 0; t < n; ++t) {
    const int64_t p = p0 + t;
    while (rowptr[row + 1] <= p) ++row;
    tl.rows[t] = row;
    const int64_t j = col[p];
    T r2 = 0;
    for (int64_t k = 0; k < D; ++k) {
      const T x = pos_src[j * D + k] - pos_dst[row * D + k];
      u0[t * H0 + k] = x;
      r2 += x * x;
    }
    lift_forward<T>(D, d.lift, u0 + t * H0, u0 + t * H0);
    for (int64_t a = 0; a < A; ++a) u0[t * H0 + X + a] = edge_attr[p * A + a];
    tl.s[t] = std::exp(T(-0.5) * r2 * inv_w2);
    std::memcpy(tl.f.data() + t * C, x_src + j * C, sizeof(T) * C);
  }
  const int64_t L = static_cast<int64_t>(d.layers.size());
  for (int64_t l = 0; l < L; ++l) {
    const LayerDims& ld = d.layers[l];
    T* zp = tl.z[l].data();
    const T* bl = plan.b[l];
    const bool folded = l == 0 && plan.fold_in > 0;
    if (keep_pre || !folded) {
      for (int64_t t = 0; t < n; ++t) std::memcpy(zp + t * ld.pre, bl, sizeof(T) * ld.pre);
      gemm<T>(false, true, n, ld.pre, ld.in, T(1), tl.u[l].data(), ld.in,
              plan.W[l], ld.in, T(1), zp, ld.pre);
    }
    if (folded) {  // make_plan folds only what forward_folded instantiates
      const bool done = fourier_rows::forward_folded<T>(
          plan.fr_n[0], plan.fold_in, ld.act, n, ld.fields, ld.in, ld.Fp, ld.G,
          tl.u[0].data(), ld.in, plan.QWb, plan.PTp[0], tl.u[1].data(), ld.out);
      TORCH_INTERNAL_ASSERT(done, "point_conv: folded first layer not instantiated");
      continue;
    }
    if (ld.fourier) {
      const int64_t nm = n * ld.fields;
      if (plan.fr_n[l] > 0) {  // make_plan picks only instantiated widths (no Y, S)
        const bool done = fourier_rows::forward<T>(plan.fr_n[l], ld.act, nm, ld.F, ld.Fp,
                                                   ld.G, zp, ld.F, plan.Qp[l], plan.PTp[l],
                                                   tl.u[l + 1].data(), ld.Fp);
        TORCH_INTERNAL_ASSERT(done, "point_conv: Fourier register kernel not instantiated");
        continue;
      }
      T* Y = tl.Y[l].data();
      T* Sp = derivative_reads_input(ld.act) ? tl.S[l].data() : Y;
#ifdef PYGI_SMALL_GEMM
      if (plan.small) {
        small_gemm::rows_axpy<T>(nm, ld.F, ld.G, zp, ld.F, plan.QT[l], Sp, ld.G);
        act_forward<T>(ld.act, Sp, Y, nm * ld.G);
        small_gemm::rows_dot<T>(nm, ld.G, ld.Fp, Y, ld.G, plan.P[l],
                                tl.u[l + 1].data(), ld.Fp);
        continue;
      }
#endif
      gemm<T>(false, true, nm, ld.G, ld.F, T(1), zp, ld.F, plan.Q[l], ld.F,
              T(0), Sp, ld.G);
      act_forward<T>(ld.act, Sp, Y, nm * ld.G);
      gemm<T>(false, true, nm, ld.Fp, ld.G, T(1), Y, ld.G, plan.P[l], ld.G,
              T(0), tl.u[l + 1].data(), ld.Fp);
    } else if (ld.kind == kGated) {
      T* up = tl.u[l + 1].data();
      for (int64_t t = 0; t < n; ++t)
        gated_forward<T>(ld.act, ld.pre, ld.out, plan.M[l], zp + t * ld.pre,
                         up + t * ld.out);
    } else if (ld.kind == kNorm) {
      T* up = tl.u[l + 1].data();
      for (int64_t t = 0; t < n; ++t)
        norm_forward<T>(ld.act, ld.pre, ld.nf, plan.M[l], plan.Bf[l],
                        zp + t * ld.pre, up + t * ld.out, tl.scratch.data());
    } else {
      act_forward<T>(ld.act, zp, tl.u[l + 1].data(), n * ld.pre);
    }
  }
  const int64_t H = d.hidden;
  const T* uL = tl.u[L].data();
  T* g = tl.g.data();
  for (int64_t t = 0; t < n; ++t) {
    const T st = tl.s[t];
    for (int64_t k = 0; k < H; ++k) g[t * (H + 1) + k] = st * uL[t * H + k];
    g[t * (H + 1) + H] = st;
  }
}

// ---------------------------------------------------------------------------
// Products of one row segment (ns edges of one target).  With few edges per
// target (the N-body model's edge graphs have one) BLAS's call and threading
// overhead outweighs the arithmetic; the row kernels of small_gemm.h do them.
// ---------------------------------------------------------------------------
constexpr int64_t kSmallSegment = 8;

// A[H1, C] += g[ns, H1]^T f[ns, C]
template <typename T>
void segment_outer_acc(const Plan<T>& plan, int64_t ns, int64_t H1, int64_t C,
                       const T* g, const T* f, T* A) {
#ifdef PYGI_SMALL_GEMM
  if (plan.small && ns <= kSmallSegment) {
    small_gemm::outer_acc<T>(ns, H1, C, g, H1, f, C, A);
    return;
  }
#endif
  gemm<T>(true, false, H1, C, ns, T(1), g, H1, f, C, T(1), A, C);
}

// dg[ns, H1] = f[ns, C] dA[H1, C]^T
template <typename T>
void segment_dg(const Plan<T>& plan, int64_t ns, int64_t H1, int64_t C, const T* f,
                const T* dA, T* dg) {
#ifdef PYGI_SMALL_GEMM
  if (plan.small && ns <= kSmallSegment) {
    small_gemm::rows_dot<T>(ns, C, H1, f, C, dA, dg, H1);
    return;
  }
#endif
  gemm<T>(false, true, ns, H1, C, T(1), f, C, dA, C, T(0), dg, H1);
}

// df[ns, C] = g[ns, H1] dA[H1, C]
template <typename T>
void segment_df(const Plan<T>& plan, int64_t ns, int64_t H1, int64_t C, const T* g,
                const T* dA, T* df) {
#ifdef PYGI_SMALL_GEMM
  if (plan.small && ns <= kSmallSegment) {
    small_gemm::rows_axpy<T>(ns, H1, C, g, H1, dA, df, C);
    return;
  }
#endif
  gemm<T>(false, false, ns, C, H1, T(1), g, H1, dA, C, T(0), df, C);
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------

template <typename T>
void forward_impl(const ConvDims& d, const Plan<T>& plan, const int64_t* rowptr,
                  const int64_t* col, const T* x_src, const T* pos_src,
                  const T* pos_dst, const T* edge_attr, const T* Wt, T* out) {
  const int64_t H1 = d.hidden + 1, C = d.c_in, K = H1 * C, Co = d.c_out;
  const auto chunks = make_chunks(rowptr, d.n_dst, d.num_edges);
  const int64_t nchunks = static_cast<int64_t>(chunks.size()) - 1;
  const int64_t tile = tile_edges();
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    Tile<T> tl(d, tile, plan.fr_n);
    const int64_t kRows = rows_per_window();
    std::vector<T> Aw(kRows * K);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = chunks[c], r1 = chunks[c + 1];
      const int64_t e0 = rowptr[r0], e1 = rowptr[r1];
      int64_t win0 = r0, nwin = std::min(kRows, r1 - r0);
      std::fill(Aw.begin(), Aw.end(), T(0));
      auto flush = [&]() {
        gemm<T>(false, true, nwin, Co, K, T(1), Aw.data(), K, Wt, K, T(0),
                out + win0 * Co, Co);
      };
      int64_t row = r0;
      for (int64_t p0 = e0; p0 < e1; p0 += tile) {
        const int64_t n = std::min(tile, e1 - p0);
        tile_forward<T>(plan, tl, p0, n, row, rowptr, col, x_src, pos_src,
                        pos_dst, edge_attr, false);
        for (int64_t t = 0; t < n;) {
          const int64_t r = tl.rows[t];
          int64_t t2 = t + 1;
          while (t2 < n && tl.rows[t2] == r) ++t2;
          if (r - win0 >= kRows) {
            flush();
            win0 = r;
            nwin = std::min(kRows, r1 - r);
            std::fill(Aw.begin(), Aw.end(), T(0));
          }
          segment_outer_acc<T>(plan, t2 - t, H1, C, tl.g.data() + t * H1,
                               tl.f.data() + t * C, Aw.data() + (r - win0) * K);
          t = t2;
        }
      }
      flush();
    }
  });
}

at::Tensor point_conv_forward_cpu(
    const at::Tensor& x_src, const at::Tensor& pos_src,
    const at::Tensor& pos_dst, const at::Tensor& edge_attr,
    const at::Tensor& rowptr, const at::Tensor& col,
    const at::Tensor& csc_rowptr, const at::Tensor& csc_perm,
    at::TensorList weights, at::TensorList biases, at::TensorList samplers,
    at::TensorList projectors, at::TensorList fields,
    at::TensorList field_biases, at::IntArrayRef kinds,
    at::IntArrayRef activations, int64_t lift_degree,
    const at::Tensor& width, const at::Tensor& Wt) {
  const PlanArgs args{weights, biases,      samplers, projectors,
                      fields,  field_biases, kinds,   activations,
                      lift_degree, width,   Wt};
  const ConvDims d = check_point_conv_inputs(
      "point_conv_forward", x_src, pos_src, pos_dst, edge_attr, rowptr, col,
      csc_rowptr, csc_perm, args);
  TORCH_CHECK(x_src.device().is_cpu(), "point_conv_forward: CPU kernel got ",
              x_src.device());
  check_csr_values_cpu(d, rowptr, col);  // the CSC is not read by the forward
  check_field_values_cpu(d, fields);
  at::Tensor out = at::zeros({d.n_dst, d.c_out}, x_src.options());
  if (d.num_edges == 0 || d.n_dst == 0) return out;

  const auto xs = x_src.contiguous(), ps = pos_src.contiguous(),
             pd = pos_dst.contiguous(), ea = edge_attr.contiguous(),
             rp = rowptr.contiguous(), cl = col.contiguous(),
             wt = Wt.contiguous();
  std::vector<at::Tensor> keep;
  AT_DISPATCH_FLOATING_TYPES(x_src.scalar_type(), "point_conv_forward_cpu", [&] {
    const Plan<scalar_t> plan = make_plan<scalar_t>(d, args, keep, false);
    forward_impl<scalar_t>(d, plan, rp.data_ptr<int64_t>(),
                           cl.data_ptr<int64_t>(), xs.data_ptr<scalar_t>(),
                           ps.data_ptr<scalar_t>(), pd.data_ptr<scalar_t>(),
                           ea.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(),
                           out.data_ptr<scalar_t>());
  });
  return out;
}

// ---------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------

// Offsets of the parameter gradients in one flat partial buffer.
struct GradLayout {
  std::vector<int64_t> W, b, Q, P, Bf;
  int64_t Wt = 0, width = 0, total = 0;
  explicit GradLayout(const ConvDims& d) {
    int64_t o = 0;
    for (const auto& ld : d.layers) {
      W.push_back(o); o += ld.pre * ld.in;
      b.push_back(o); o += ld.pre;
      Q.push_back(o); o += ld.fourier ? ld.G * ld.F : 0;
      P.push_back(o); o += ld.fourier ? ld.Fp * ld.G : 0;
      Bf.push_back(o); o += ld.kind == kNorm ? ld.nf : 0;
    }
    Wt = o; o += d.c_out * (d.hidden + 1) * d.c_in;
    width = o; o += 1;
    total = o;
  }
};

struct Needs {
  bool x, pos_src, pos_dst, attr, params, width, Wt;
  bool grid;  // samplers or projectors
  bool chain() const { return pos_src || pos_dst || attr || params; }
  bool input_grads() const { return pos_src || pos_dst || attr; }
  bool ds() const { return chain() || width; }
};

template <typename T>
struct BackBuffers {
  std::vector<T> du0, du1, dz, dY, dg, ds;
  BackBuffers(const ConvDims& d, int64_t tile, const std::vector<int>& fr_n) {
    int64_t hmax = d.h0, pmax = 1, ymax = 1;
    for (size_t l = 0; l < d.layers.size(); ++l) {
      const auto& ld = d.layers[l];
      hmax = std::max({hmax, ld.in, ld.out});
      pmax = std::max(pmax, ld.pre);
      if (ld.fourier && fr_n[l] == 0) ymax = std::max(ymax, ld.fields * ld.G);  // row kernels
    }
    du0.resize(tile * hmax);
    du1.resize(tile * hmax);
    dz.resize(tile * pmax);
    dY.resize(tile * ymax);
    dg.resize(tile * (d.hidden + 1));
    ds.resize(tile);
  }
};

template <typename T>
void backward_impl(const ConvDims& d, const Plan<T>& plan, const Needs& need,
                   const int64_t* rowptr, const int64_t* col, const T* x_src,
                   const T* pos_src, const T* pos_dst, const T* edge_attr,
                   const T* Wt, const T* dout, T* dfe, T* dxe, T* dpos_dst,
                   T* dattr, T* partials, const GradLayout& lay) {
  const int64_t H = d.hidden, H1 = H + 1, C = d.c_in, K = H1 * C,
                Co = d.c_out, D = d.d, A = d.attr, H0 = d.h0, X = d.lifted;
  const int64_t L = static_cast<int64_t>(d.layers.size());
  const auto chunks = make_chunks(rowptr, d.n_dst, d.num_edges);
  const int64_t nchunks = static_cast<int64_t>(chunks.size()) - 1;
  const int64_t tile = tile_edges();
  const T w = plan.width, inv_w2 = T(1) / (w * w), inv_w3 = inv_w2 / w;

  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    Tile<T> tl(d, tile, plan.fr_n);
    BackBuffers<T> bb(d, tile, plan.fr_n);
    const int64_t kRows = rows_per_window();
    std::vector<T> Aw(need.Wt ? kRows * K : 0), dAw(kRows * K);
    for (int64_t c = c0; c < c1; ++c) {
      T* part = partials + c * lay.total;
      const int64_t r0 = chunks[c], r1 = chunks[c + 1];
      const int64_t e0 = rowptr[r0], e1 = rowptr[r1];
      int64_t win0 = r0, nwin = 0;
      auto open = [&](int64_t r) {
        win0 = r;
        nwin = std::min(kRows, r1 - r);
        gemm<T>(false, false, nwin, K, Co, T(1), dout + win0 * Co, Co, Wt, K,
                T(0), dAw.data(), K);
        if (need.Wt) std::fill(Aw.begin(), Aw.end(), T(0));
      };
      auto close = [&]() {
        if (need.Wt)
          gemm<T>(true, false, Co, K, nwin, T(1), dout + win0 * Co, Co,
                  Aw.data(), K, T(1), part + lay.Wt, K);
      };
      open(r0);
      int64_t row = r0;
      for (int64_t p0 = e0; p0 < e1; p0 += tile) {
        const int64_t n = std::min(tile, e1 - p0);
        tile_forward<T>(plan, tl, p0, n, row, rowptr, col, x_src, pos_src,
                        pos_dst, edge_attr, true);
        const T* g = tl.g.data();
        const T* f = tl.f.data();
        for (int64_t t = 0; t < n;) {
          const int64_t r = tl.rows[t];
          int64_t t2 = t + 1;
          while (t2 < n && tl.rows[t2] == r) ++t2;
          if (r - win0 >= kRows) {
            close();
            open(r);
          }
          const int64_t ns = t2 - t;
          const T* dA = dAw.data() + (r - win0) * K;  // [H + 1, C]
          if (need.Wt)
            segment_outer_acc<T>(plan, ns, H1, C, g + t * H1, f + t * C,
                                 Aw.data() + (r - win0) * K);
          if (need.ds()) segment_dg<T>(plan, ns, H1, C, f + t * C, dA, bb.dg.data() + t * H1);
          if (need.x) segment_df<T>(plan, ns, H1, C, g + t * H1, dA, dfe + (p0 + t) * C);
          t = t2;
        }
        if (!need.ds()) continue;

        // ---- back through the envelope: g = [s u_L, s] ----
        const T* uL = tl.u[L].data();
        const T* dg = bb.dg.data();
        T* du = bb.du0.data();
        T* du_next = bb.du1.data();
        for (int64_t t = 0; t < n; ++t) {
          const T st = tl.s[t];
          T acc = dg[t * H1 + H];
          for (int64_t k = 0; k < H; ++k) {
            acc += dg[t * H1 + k] * uL[t * H + k];
            du[t * H + k] = st * dg[t * H1 + k];
          }
          bb.ds[t] = acc;
        }
        // ---- back through the layers ----
        if (need.chain()) {
          for (int64_t l = L - 1; l >= 0; --l) {
            const LayerDims& ld = d.layers[l];
            const T* zp = tl.z[l].data();
            T* dz = bb.dz.data();
            if (ld.fourier && plan.fr_n[l] > 0) {
              // no sampler / projector gradients requested (else fr_n is 0)
              const bool done = fourier_rows::backward<T>(
                  plan.fr_n[l], ld.act, n * ld.fields, ld.F, ld.Fp, ld.G, zp, ld.F, du,
                  ld.Fp, plan.Qp[l], plan.PTp[l], dz, ld.F, tl.grid.data());
              TORCH_INTERNAL_ASSERT(done, "point_conv: Fourier register kernel not instantiated");
            } else if (ld.fourier) {
              const int64_t nm = n * ld.fields;
              const T* Y = tl.Y[l].data();
              T* dY = bb.dY.data();
              const T* Sl = derivative_reads_input(ld.act) ? tl.S[l].data() : nullptr;
              // the sampler gradient is accumulated transposed ([F, G])
#ifdef PYGI_SMALL_GEMM
              if (plan.small) {
                small_gemm::rows_axpy<T>(nm, ld.Fp, ld.G, du, ld.Fp, plan.P[l],
                                         dY, ld.G);
                if (need.grid)
                  small_gemm::outer_acc<T>(nm, ld.Fp, ld.G, du, ld.Fp, Y, ld.G,
                                           part + lay.P[l]);
                act_backward<T>(ld.act, dY, Sl, Y, dY, nm * ld.G);
                if (need.grid)
                  small_gemm::outer_acc<T>(nm, ld.F, ld.G, zp, ld.F, dY, ld.G,
                                           part + lay.Q[l]);
                small_gemm::rows_dot<T>(nm, ld.G, ld.F, dY, ld.G, plan.QT[l],
                                        dz, ld.F);
              } else
#endif
              {
                gemm<T>(false, false, nm, ld.G, ld.Fp, T(1), du, ld.Fp,
                        plan.P[l], ld.G, T(0), dY, ld.G);
                if (need.grid)
                  gemm<T>(true, false, ld.Fp, ld.G, nm, T(1), du, ld.Fp, Y, ld.G,
                          T(1), part + lay.P[l], ld.G);
                act_backward<T>(ld.act, dY, Sl, Y, dY, nm * ld.G);
                if (need.grid)
                  gemm<T>(true, false, ld.F, ld.G, nm, T(1), zp, ld.F, dY, ld.G,
                          T(1), part + lay.Q[l], ld.G);
                gemm<T>(false, false, nm, ld.F, ld.G, T(1), dY, ld.G,
                        plan.Q[l], ld.F, T(0), dz, ld.F);
              }
            } else if (ld.kind == kGated) {
              const T* up = tl.u[l + 1].data();
              for (int64_t t = 0; t < n; ++t)
                gated_backward<T>(ld.act, ld.pre, ld.out, plan.M[l],
                                  zp + t * ld.pre, up + t * ld.out,
                                  du + t * ld.out, dz + t * ld.pre);
            } else if (ld.kind == kNorm) {
              const T* up = tl.u[l + 1].data();
              for (int64_t t = 0; t < n; ++t)
                norm_backward<T>(ld.act, ld.pre, ld.nf, plan.M[l], plan.Bf[l],
                                 zp + t * ld.pre, up + t * ld.out,
                                 du + t * ld.out, dz + t * ld.pre,
                                 part + lay.Bf[l], tl.scratch.data());
            } else {
              act_backward<T>(ld.act, du, zp, tl.u[l + 1].data(), dz,
                              n * ld.pre);
            }
            T* db = part + lay.b[l];
            for (int64_t t = 0; t < n; ++t)
              for (int64_t k = 0; k < ld.pre; ++k) db[k] += dz[t * ld.pre + k];
            gemm<T>(true, false, ld.pre, ld.in, n, T(1), dz, ld.pre,
                    tl.u[l].data(), ld.in, T(1), part + lay.W[l], ld.in);
            if (l > 0 || need.input_grads()) {
              gemm<T>(false, false, n, ld.in, ld.pre, T(1), dz, ld.pre,
                      plan.W[l], ld.in, T(0), du_next, ld.in);
              std::swap(du, du_next);
            }
          }
        }
        // du now holds d u_0 = d [lift(x_e), a_e] (when input grads are needed).
        const T* u0 = tl.u[0].data();
        if (need.pos_src || need.pos_dst)
          for (int64_t t = 0; t < n; ++t)
            lift_backward<T>(D, d.lift, u0 + t * H0, u0 + t * H0, du + t * H0);
        T dwidth = 0;
        for (int64_t t = 0; t < n; ++t) {
          const int64_t p = p0 + t, r = tl.rows[t];
          const T st = tl.s[t], c_s = bb.ds[t] * st;
          T r2 = 0;
          for (int64_t k = 0; k < D; ++k) r2 += u0[t * H0 + k] * u0[t * H0 + k];
          dwidth += c_s * r2 * inv_w3;
          if (!need.input_grads()) continue;
          for (int64_t k = 0; k < D; ++k) {
            const T dx = du[t * H0 + k] - c_s * u0[t * H0 + k] * inv_w2;
            if (need.pos_src) dxe[p * D + k] = dx;
            if (need.pos_dst) dpos_dst[r * D + k] -= dx;
          }
          if (need.attr)
            for (int64_t a = 0; a < A; ++a) dattr[p * A + a] = du[t * H0 + X + a];
        }
        part[lay.width] += dwidth;
      }
      close();
    }
  });
}

// out[j] = sum over q in [ptr[j], ptr[j+1]) of src[perm[q]] (rows of width w).
template <typename T>
void gather_csc(const int64_t* ptr, const int64_t* perm, int64_t n, int64_t w,
                const T* src, T* out) {
  at::parallel_for(0, n, 256, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      T* o = out + j * w;
      for (int64_t q = ptr[j]; q < ptr[j + 1]; ++q) {
        const T* s = src + perm[q] * w;
        for (int64_t k = 0; k < w; ++k) o[k] += s[k];
      }
    }
  });
}

BackwardResult point_conv_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x_src,
    const at::Tensor& pos_src, const at::Tensor& pos_dst,
    const at::Tensor& edge_attr, const at::Tensor& rowptr,
    const at::Tensor& col, const at::Tensor& csc_rowptr,
    const at::Tensor& csc_perm, at::TensorList weights, at::TensorList biases,
    at::TensorList samplers, at::TensorList projectors, at::TensorList fields,
    at::TensorList field_biases, at::IntArrayRef kinds,
    at::IntArrayRef activations, int64_t lift_degree, const at::Tensor& width,
    const at::Tensor& Wt, c10::List<bool> output_mask) {
  const PlanArgs args{weights, biases,      samplers, projectors,
                      fields,  field_biases, kinds,   activations,
                      lift_degree, width,   Wt};
  const ConvDims d = check_point_conv_inputs(
      "point_conv_backward", x_src, pos_src, pos_dst, edge_attr, rowptr, col,
      csc_rowptr, csc_perm, args);
  check_point_conv_backward_inputs(d, grad_out, x_src, output_mask);
  TORCH_CHECK(x_src.device().is_cpu(), "point_conv_backward: CPU kernel got ",
              x_src.device());
  check_csr_values_cpu(d, rowptr, col);
  check_csc_values_cpu(d, csc_rowptr, csc_perm);
  check_field_values_cpu(d, fields);

  const GradRequest req = grad_request(output_mask);
  Needs need;
  need.x = req[kGradXSrc];
  need.pos_src = req[kGradPosSrc];
  need.pos_dst = req[kGradPosDst];
  need.attr = req[kGradEdgeAttr];
  need.params = req.params();
  need.width = req[kGradWidth];
  need.Wt = req[kGradWt];
  need.grid = req[kGradSamplers] || req[kGradProjectors];

  // Every group is returned with its full shape (zeros where masked out).
  const auto opts = x_src.options();
  at::Tensor g_x = at::zeros_like(x_src, at::MemoryFormat::Contiguous);
  at::Tensor g_ps = at::zeros_like(pos_src, at::MemoryFormat::Contiguous);
  at::Tensor g_pd = at::zeros_like(pos_dst, at::MemoryFormat::Contiguous);
  at::Tensor g_ea = at::zeros_like(edge_attr, at::MemoryFormat::Contiguous);
  const GradLayout lay(d);
  at::Tensor flat = at::zeros({lay.total}, opts);

  if (d.num_edges > 0 && d.n_dst > 0) {
    const auto xs = x_src.contiguous(), ps = pos_src.contiguous(),
               pd = pos_dst.contiguous(), ea = edge_attr.contiguous(),
               rp = rowptr.contiguous(), cl = col.contiguous(),
               cp = csc_rowptr.contiguous(), cq = csc_perm.contiguous(),
               wt = Wt.contiguous(), go = grad_out.contiguous();
    const int64_t nchunks =
        static_cast<int64_t>(make_chunks(rp.data_ptr<int64_t>(), d.n_dst,
                                         d.num_edges).size()) - 1;
    at::Tensor partials = at::zeros({nchunks, lay.total}, opts);
    at::Tensor dfe = need.x ? at::empty({d.num_edges, d.c_in}, opts) : at::Tensor();
    at::Tensor dxe = need.pos_src ? at::empty({d.num_edges, d.d}, opts) : at::Tensor();
    std::vector<at::Tensor> keep;
    AT_DISPATCH_FLOATING_TYPES(x_src.scalar_type(), "point_conv_backward_cpu", [&] {
      const Plan<scalar_t> plan = make_plan<scalar_t>(d, args, keep, need.grid);
      auto ptr_or_null = [](const at::Tensor& t) {
        return t.defined() ? t.data_ptr<scalar_t>() : nullptr;
      };
      backward_impl<scalar_t>(
          d, plan, need, rp.data_ptr<int64_t>(), cl.data_ptr<int64_t>(),
          xs.data_ptr<scalar_t>(), ps.data_ptr<scalar_t>(),
          pd.data_ptr<scalar_t>(), ea.data_ptr<scalar_t>(),
          wt.data_ptr<scalar_t>(), go.data_ptr<scalar_t>(), ptr_or_null(dfe),
          ptr_or_null(dxe), g_pd.data_ptr<scalar_t>(), g_ea.data_ptr<scalar_t>(),
          partials.data_ptr<scalar_t>(), lay);
      // Sum the chunk partials in chunk order.
      scalar_t* fp = flat.data_ptr<scalar_t>();
      const scalar_t* pp = partials.data_ptr<scalar_t>();
      const int64_t total = lay.total;
      at::parallel_for(0, total, 4096, [&](int64_t i0, int64_t i1) {
        for (int64_t c = 0; c < nchunks; ++c)
          for (int64_t i = i0; i < i1; ++i) fp[i] += pp[c * total + i];
      });
      if (need.x)
        gather_csc<scalar_t>(cp.data_ptr<int64_t>(), cq.data_ptr<int64_t>(),
                             d.n_src, d.c_in, dfe.data_ptr<scalar_t>(),
                             g_x.data_ptr<scalar_t>());
      if (need.pos_src)
        gather_csc<scalar_t>(cp.data_ptr<int64_t>(), cq.data_ptr<int64_t>(),
                             d.n_src, d.d, dxe.data_ptr<scalar_t>(),
                             g_ps.data_ptr<scalar_t>());
    });
  }

  std::vector<at::Tensor> gW, gb, gQ, gP, gBf;
  for (size_t l = 0; l < d.layers.size(); ++l) {
    const auto& ld = d.layers[l];
    gW.push_back(flat.narrow(0, lay.W[l], ld.pre * ld.in).view({ld.pre, ld.in}).clone());
    gb.push_back(flat.narrow(0, lay.b[l], ld.pre).clone());
    if (ld.fourier) {
      gQ.push_back(flat.narrow(0, lay.Q[l], ld.G * ld.F).view({ld.F, ld.G}).t().contiguous());
      gP.push_back(flat.narrow(0, lay.P[l], ld.Fp * ld.G).view({ld.Fp, ld.G}).clone());
    } else {
      gQ.push_back(at::zeros_like(samplers[l], at::MemoryFormat::Contiguous));
      gP.push_back(at::zeros_like(projectors[l], at::MemoryFormat::Contiguous));
    }
    gBf.push_back(ld.kind == kNorm ? flat.narrow(0, lay.Bf[l], ld.nf).clone()
                                   : at::zeros_like(field_biases[l],
                                                    at::MemoryFormat::Contiguous));
  }
  at::Tensor g_w = flat.narrow(0, lay.width, 1).squeeze(0).clone();
  at::Tensor g_Wt = flat.narrow(0, lay.Wt, d.c_out * (d.hidden + 1) * d.c_in)
                        .view({d.c_out, (d.hidden + 1) * d.c_in})
                        .clone();
  // Masked-out groups: zeros (their partials were not all computed).
  if (!need.pos_src) g_ps.zero_();
  if (!need.params) {
    for (auto& t : gW) t.zero_();
    for (auto& t : gb) t.zero_();
    for (auto& t : gQ) t.zero_();
    for (auto& t : gP) t.zero_();
    for (auto& t : gBf) t.zero_();
  }
  if (!need.width) g_w.zero_();
  return BackwardResult(g_x, g_ps, g_pd, g_ea, gW, gb, gQ, gP, gBf, g_w, g_Wt);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyg_implicit, CPU, m) {
  m.impl("point_conv_forward", &point_conv_forward_cpu);
  m.impl("point_conv_backward", &point_conv_backward_cpu);
}

}  // namespace pyg_implicit
