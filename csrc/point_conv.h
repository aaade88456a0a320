// Shared declarations of the fused point-convolution ops (schema in
// point_conv.cpp, contract in docs/fused_op_spec.md).  Every backend
// (csrc/cpu, csrc/cuda) validates its inputs with check_point_conv_inputs()
// before touching any pointer.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>
#include <vector>

namespace pyg_implicit {

// Activation codes (pyg_implicit.plan.ACTIVATIONS).
enum ActivationCode : int64_t {
  kElu = 0,
  kRelu = 1,
  kSilu = 2,
  kTanh = 3,
  kSigmoid = 4,
};
constexpr int64_t kNumActivations = 5;

// Sizes of one plan layer l (z = W u + b, then the activation).
struct LayerDims {
  int64_t in = 0;       // H_{l-1}: columns of W
  int64_t pre = 0;      // H'_l: rows of W (length of z)
  int64_t out = 0;      // H_l: length of u_l
  bool fourier = false; // sampler/projector present
  int64_t fields = 0;   // M_l (Fourier only): z viewed as [M, F]
  int64_t F = 0;        // sampler columns
  int64_t G = 0;        // grid samples (sampler rows)
  int64_t Fp = 0;       // projector rows
  int64_t act = 0;      // activation code
};

// All sizes of one call, as validated by check_point_conv_inputs().
struct ConvDims {
  int64_t n_src = 0, n_dst = 0, num_edges = 0;
  int64_t d = 0;        // position dimension
  int64_t attr = 0;     // edge attribute width A (may be 0)
  int64_t c_in = 0, c_out = 0;
  int64_t hidden = 0;   // H (length of u_L)
  std::vector<LayerDims> layers;
};

// Shape / dtype / device / layout checks shared by all backends (TORCH_CHECK,
// no data is read).  `op` names the operator in the messages.
ConvDims check_point_conv_inputs(
    const char* op, const at::Tensor& x_src, const at::Tensor& pos_src,
    const at::Tensor& pos_dst, const at::Tensor& edge_attr,
    const at::Tensor& rowptr, const at::Tensor& col, at::TensorList weights,
    at::TensorList biases, at::TensorList samplers, at::TensorList projectors,
    at::IntArrayRef activations, const at::Tensor& width, const at::Tensor& Wt);

// Extra checks of the backward op (grad_out, CSC arrays, output_mask).
void check_point_conv_backward_inputs(const ConvDims& dims,
                                      const at::Tensor& grad_out,
                                      const at::Tensor& x_src,
                                      const at::Tensor& csc_rowptr,
                                      const at::Tensor& csc_perm,
                                      const c10::List<bool>& output_mask);

// Value checks of the CSR (and optionally CSC) index arrays; reads host
// memory, so CPU tensors only: rowptr[0] == 0, non-decreasing,
// rowptr[N_dst] == E, 0 <= col < N_src; csc likewise, 0 <= perm < E.
void check_csr_values_cpu(const ConvDims& dims, const at::Tensor& rowptr,
                          const at::Tensor& col);
void check_csc_values_cpu(const ConvDims& dims, const at::Tensor& csc_rowptr,
                          const at::Tensor& csc_perm);

using BackwardResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor,
               std::vector<at::Tensor>, std::vector<at::Tensor>,
               std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor,
               at::Tensor>;

// Number of bools in output_mask (one per output group of the backward op).
constexpr int64_t kNumGradGroups = 10;

}  // namespace pyg_implicit
