// The plan contract: what the CPU (csrc/cpu) and CUDA (csrc/cuda) backends of
// the fused point convolution share.  Plain C++ (no ATen), usable from host
// and device code.  Maths: pyg_implicit/plan.py; op contract:
// docs/fused_op_spec.md.
//
// Adding an activation touches pyg_implicit/plan.py (ACTIVATIONS and its torch
// function) and this header (ActivationCode, activation_value,
// activation_derivative, derivative_reads_input) and nothing else: both
// backends evaluate activations through the two functions below, and the
// per-edge gated and norm layers and the tensor-power lift of the edge vector
// through the functions further down.  Backends
// may route known codes to a vendor-optimised routine (e.g. ATen's
// vectorised CPU kernels); every code has the generic path here.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define PYGI_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PYGI_HOST_DEVICE inline
#endif

namespace pyg_implicit {

// ---------------------------------------------------------------------------
// Activations (codes of pyg_implicit.plan.ACTIVATIONS)
// ---------------------------------------------------------------------------
enum ActivationCode : int64_t {
  kElu = 0,
  kRelu = 1,
  kSilu = 2,
  kTanh = 3,
  kSigmoid = 4,
};
constexpr int64_t kNumActivations = 5;

PYGI_HOST_DEVICE constexpr bool is_activation_code(int64_t code) {
  return code >= 0 && code < kNumActivations;
}

// Whether activation_derivative needs the pre-activation z (otherwise the
// activation's value y suffices, so a backend may keep only y).
PYGI_HOST_DEVICE constexpr bool derivative_reads_input(int64_t code) {
  return code == kSilu;
}

namespace detail {
PYGI_HOST_DEVICE float c_exp(float v) { return expf(v); }
PYGI_HOST_DEVICE double c_exp(double v) { return exp(v); }
PYGI_HOST_DEVICE float c_expm1(float v) { return expm1f(v); }
PYGI_HOST_DEVICE double c_expm1(double v) { return expm1(v); }
PYGI_HOST_DEVICE float c_tanh(float v) { return tanhf(v); }
PYGI_HOST_DEVICE double c_tanh(double v) { return tanh(v); }
template <typename T>
PYGI_HOST_DEVICE T sigmoid(T z) { return T(1) / (T(1) + c_exp(-z)); }
template <typename T>
PYGI_HOST_DEVICE T nan() { return static_cast<T>(NAN); }
}  // namespace detail

// y = act(z).  An unknown code gives NaN (never a plausible number); the op
// front end (csrc/point_conv.cpp) rejects unknown codes before any kernel runs.
template <typename T>
PYGI_HOST_DEVICE T activation_value(int64_t code, T z) {
  switch (code) {
    case kElu: return z > T(0) ? z : detail::c_expm1(z);
    case kRelu: return z > T(0) ? z : T(0);
    case kSilu: return z * detail::sigmoid(z);
    case kTanh: return detail::c_tanh(z);
    case kSigmoid: return detail::sigmoid(z);
    default: return detail::nan<T>();
  }
}

// d act / d z at z, given y = act(z) (z is read only where
// derivative_reads_input(code)).  Conventions of torch's backward formulas:
// relu'(0) = 0, elu'(z) = y + 1 for z <= 0.
template <typename T>
PYGI_HOST_DEVICE T activation_derivative(int64_t code, T z, T y) {
  switch (code) {
    case kElu: return y > T(0) ? T(1) : y + T(1);
    case kRelu: return y > T(0) ? T(1) : T(0);
    case kSilu: {
      const T sg = detail::sigmoid(z);
      return sg * (T(1) + z * (T(1) - sg));
    }
    case kTanh: return T(1) - y * y;
    case kSigmoid: return y * (T(1) - y);
    default: return detail::nan<T>();
  }
}

// ---------------------------------------------------------------------------
// Layer kinds (codes of pyg_implicit.plan.LAYER_KINDS)
// ---------------------------------------------------------------------------
enum LayerKind : int64_t {
  kPointwise = 0,
  kFourier = 1,
  kGated = 2,
  kNorm = 3,
};
constexpr int64_t kNumLayerKinds = 4;
// squared field norm at or below which a norm layer outputs 0 for the field
// (pyg_implicit.plan.NORM_EPS2)
constexpr double kNormEps2 = 1e-20;
// largest degree of the tensor-power lift of the edge vector
constexpr int64_t kMaxLiftDegree = 4;

// ---------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------

// One plan layer l: z = W u + b (W: [pre, in]), then its nonlinearity:
// pointwise (out = pre); Fourier: z viewed as [fields, F], sampled by
// Q [G, F], activated, projected by P [Fp, G] (out = fields * Fp); gated:
// z = [nf gates | out entries], an entry either activated or multiplied by
// the sigmoid of its gate (out = pre - nf); norm: out = pre entries, an entry
// either activated or scaled by relu(|field| - b) / |field| (nf fields).
struct LayerDims {
  int64_t in = 0;        // H_{l-1}: columns of W
  int64_t pre = 0;       // H'_l: rows of W (length of z)
  int64_t out = 0;       // H_l: length of u_l
  int64_t kind = kPointwise;
  bool fourier = false;  // sampler/projector present (kind == kFourier)
  int64_t fields = 0;    // M_l (Fourier only)
  int64_t F = 0;         // sampler columns
  int64_t G = 0;         // grid samples (sampler rows)
  int64_t Fp = 0;        // projector rows
  int64_t nf = 0;        // gates (gated) or fields with a bias (norm)
  int64_t act = 0;       // activation code
};

// Length of the lift [x, x (x) x, ..., x^(x)k] of a d-vector.
PYGI_HOST_DEVICE constexpr int64_t lifted_size(int64_t d, int64_t k) {
  return k <= 0 ? 0 : d * (1 + lifted_size(d, k - 1));
}

// ---------------------------------------------------------------------------
// Per-edge building blocks (one edge, contiguous rows; host and device)
// ---------------------------------------------------------------------------

// u0[0 .. lifted_size(d, k)) = [x, x (x) x, ..., x^(x)k] (row-major powers).
template <typename T>
PYGI_HOST_DEVICE void lift_forward(int64_t d, int64_t k, const T* x, T* u0) {
  for (int64_t j = 0; j < d; ++j) u0[j] = x[j];
  int64_t prev = 0, len = d, next = d;
  for (int64_t m = 2; m <= k; ++m) {
    for (int64_t I = 0; I < len; ++I)
      for (int64_t j = 0; j < d; ++j) u0[next + I * d + j] = u0[prev + I] * x[j];
    prev = next;
    next += len * d;
    len *= d;
  }
}

// Folds the gradient du0 of the lift back onto its first d entries (d x):
// du0[0 .. d) += the contributions of every higher power; du0 is overwritten.
template <typename T>
PYGI_HOST_DEVICE void lift_backward(int64_t d, int64_t k, const T* x, const T* u0, T* du0) {
  if (k < 2) return;
  int64_t off[kMaxLiftDegree + 1] = {};  // off[m]: start of the degree-m block
  int64_t len = d;
  off[1] = 0;
  for (int64_t m = 2; m <= k; ++m) {
    off[m] = off[m - 1] + len;
    len *= d;
  }
  for (int64_t m = k; m >= 2; --m) {
    int64_t n_prev = 1;
    for (int64_t q = 1; q < m; ++q) n_prev *= d;
    for (int64_t I = 0; I < n_prev; ++I) {
      const T p = u0[off[m - 1] + I];
      T left = T(0);
      for (int64_t j = 0; j < d; ++j) {
        const T g = du0[off[m] + I * d + j];
        left += g * x[j];
        du0[j] += g * p;
      }
      du0[off[m - 1] + I] += left;
    }
  }
}

// Gated layer: z = [gates (pre - out) | v (out)]; u[i] = act(v[i]) where
// fields[i] < 0, else sigmoid(z[fields[i]]) v[i].
template <typename T>
PYGI_HOST_DEVICE void gated_forward(int64_t act, int64_t pre, int64_t out,
                                    const int64_t* fields, const T* z, T* u) {
  const int64_t n = pre - out;
  for (int64_t i = 0; i < out; ++i) {
    const int64_t k = fields[i];
    const T v = z[n + i];
    u[i] = k < 0 ? activation_value<T>(act, v) : v * detail::sigmoid(z[k]);
  }
}

// dz of the gated layer from du (u: its output, for the activation's derivative).
template <typename T>
PYGI_HOST_DEVICE void gated_backward(int64_t act, int64_t pre, int64_t out,
                                     const int64_t* fields, const T* z, const T* u,
                                     const T* du, T* dz) {
  const int64_t n = pre - out;
  for (int64_t k = 0; k < n; ++k) dz[k] = T(0);
  for (int64_t i = 0; i < out; ++i) {
    const int64_t k = fields[i];
    const T v = z[n + i];
    if (k < 0) {
      dz[n + i] = du[i] * activation_derivative<T>(act, v, u[i]);
    } else {
      const T sg = detail::sigmoid(z[k]);
      dz[n + i] = du[i] * sg;
      dz[k] += du[i] * v * sg * (T(1) - sg);
    }
  }
}

namespace detail {
PYGI_HOST_DEVICE float c_sqrt(float v) { return sqrtf(v); }
PYGI_HOST_DEVICE double c_sqrt(double v) { return sqrt(v); }
// scratch[f] = sum of z[i]^2 over the entries of field f
template <typename T>
PYGI_HOST_DEVICE void field_sq(int64_t n, int64_t nf, const int64_t* fields, const T* z,
                               T* scratch) {
  for (int64_t f = 0; f < nf; ++f) scratch[f] = T(0);
  for (int64_t i = 0; i < n; ++i)
    if (fields[i] >= 0) scratch[fields[i]] += z[i] * z[i];
}
}  // namespace detail

// Norm layer: u[i] = act(z[i]) where fields[i] < 0, else m_f z[i] with
// m_f = relu(r_f - bias[f]) / r_f, r_f = |z over field f| (0 if r_f^2 <= eps).
// scratch: nf entries.
template <typename T>
PYGI_HOST_DEVICE void norm_forward(int64_t act, int64_t n, int64_t nf, const int64_t* fields,
                                   const T* bias, const T* z, T* u, T* scratch) {
  detail::field_sq(n, nf, fields, z, scratch);
  for (int64_t f = 0; f < nf; ++f) {
    const T sq = scratch[f];
    if (sq > T(kNormEps2)) {
      const T r = detail::c_sqrt(sq);
      const T a = r - bias[f];
      scratch[f] = a > T(0) ? a / r : T(0);
    } else {
      scratch[f] = T(0);
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    const int64_t f = fields[i];
    u[i] = f < 0 ? activation_value<T>(act, z[i]) : z[i] * scratch[f];
  }
}

// dz of the norm layer from du; adds d bias to dbias[0 .. nf).  scratch: 2 nf.
template <typename T>
PYGI_HOST_DEVICE void norm_backward(int64_t act, int64_t n, int64_t nf, const int64_t* fields,
                                    const T* bias, const T* z, const T* u, const T* du, T* dz,
                                    T* dbias, T* scratch) {
  T* m = scratch;        // m_f
  T* coef = scratch + nf;  // s_f dm/dr / r, with s_f = sum du z over field f
  detail::field_sq(n, nf, fields, z, m);
  for (int64_t f = 0; f < nf; ++f) coef[f] = T(0);
  for (int64_t i = 0; i < n; ++i)
    if (fields[i] >= 0) coef[fields[i]] += du[i] * z[i];
  for (int64_t f = 0; f < nf; ++f) {
    const T sq = m[f], sf = coef[f];
    if (sq > T(kNormEps2)) {
      const T r = detail::c_sqrt(sq);
      const T a = r - bias[f];
      const T eta = a > T(0) ? a : T(0);
      const T deta = a > T(0) ? T(1) : T(0);
      m[f] = eta / r;
      coef[f] = sf * (deta / r - eta / sq) / r;
      dbias[f] -= sf * deta / r;
    } else {
      m[f] = T(0);
      coef[f] = T(0);
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    const int64_t f = fields[i];
    dz[i] = f < 0 ? du[i] * activation_derivative<T>(act, z[i], u[i])
                  : du[i] * m[f] + coef[f] * z[i];
  }
}

// ---------------------------------------------------------------------------
// Gradient layout of point_conv_backward: one output group per entry of
// output_mask, in this order.
// ---------------------------------------------------------------------------
enum GradGroup : int {
  kGradXSrc = 0,
  kGradPosSrc = 1,
  kGradPosDst = 2,
  kGradEdgeAttr = 3,
  kGradWeights = 4,
  kGradBiases = 5,
  kGradSamplers = 6,
  kGradProjectors = 7,
  kGradFieldBiases = 8,
  kGradWidth = 9,
  kGradWt = 10,
};
constexpr int kNumGradGroups = 11;

// Which output groups a backward call computes (from its output_mask).
struct GradRequest {
  bool want[kNumGradGroups] = {};
  bool operator[](GradGroup g) const { return want[g]; }
  // any plan-MLP parameter (weights, biases, samplers, projectors, field biases)
  bool params() const {
    return want[kGradWeights] || want[kGradBiases] || want[kGradSamplers] ||
           want[kGradProjectors] || want[kGradFieldBiases];
  }
  bool any() const {
    for (bool w : want)
      if (w) return true;
    return false;
  }
};

}  // namespace pyg_implicit
