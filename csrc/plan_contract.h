// The plan contract: what the CPU (csrc/cpu) and CUDA (csrc/cuda) backends of
// the fused point convolution share.  Plain C++ (no ATen), usable from host
// and device code.  Maths: pyg_implicit/plan.py; op contract:
// docs/fused_op_spec.md.
//
// Adding an activation touches pyg_implicit/plan.py (ACTIVATIONS and its torch
// function) and this header (ActivationCode, activation_value,
// activation_derivative, derivative_reads_input) and nothing else: both
// backends evaluate activations through the two functions below.  Backends
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
// Sizes
// ---------------------------------------------------------------------------

// One plan layer l: z = W u + b (W: [pre, in]), then the activation, either
// pointwise (out = pre) or Fourier: z viewed as [fields, F], sampled by
// Q [G, F], activated, projected by P [Fp, G] (out = fields * Fp).
struct LayerDims {
  int64_t in = 0;        // H_{l-1}: columns of W
  int64_t pre = 0;       // H'_l: rows of W (length of z)
  int64_t out = 0;       // H_l: length of u_l
  bool fourier = false;  // sampler/projector present
  int64_t fields = 0;    // M_l (Fourier only)
  int64_t F = 0;         // sampler columns
  int64_t G = 0;         // grid samples (sampler rows)
  int64_t Fp = 0;        // projector rows
  int64_t act = 0;       // activation code
};

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
  kGradWidth = 8,
  kGradWt = 9,
};
constexpr int kNumGradGroups = 10;

// Which output groups a backward call computes (from its output_mask).
struct GradRequest {
  bool want[kNumGradGroups] = {};
  bool operator[](GradGroup g) const { return want[g]; }
  // any plan-MLP parameter (weights, biases, samplers, projectors)
  bool params() const {
    return want[kGradWeights] || want[kGradBiases] || want[kGradSamplers] ||
           want[kGradProjectors];
  }
  bool any() const {
    for (bool w : want)
      if (w) return true;
    return false;
  }
};

}  // namespace pyg_implicit
