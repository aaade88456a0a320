// Host-side declarations of the fused point-convolution ops (schema and
// checks in point_conv.cpp, contract in docs/fused_op_spec.md, what the
// backends share in plan_contract.h).  Every backend's entry point calls
// check_point_conv_inputs() (and, for the backward,
// check_point_conv_backward_inputs()) first and checks nothing else but what
// is specific to it (its device, its own limits); kernels are check-free.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "plan_contract.h"

namespace pyg_implicit {

// The plan arguments of the ops (pyg_implicit.plan.KernelPlan), by reference.
struct PlanArgs {
  at::TensorList weights, biases, samplers, projectors, fields, field_biases;
  at::IntArrayRef kinds, activations;
  int64_t lift_degree;
  const at::Tensor& width;
  const at::Tensor& Wt;
};

// All sizes of one call, as validated by check_point_conv_inputs().
struct ConvDims {
  int64_t n_src = 0, n_dst = 0, num_edges = 0;
  int64_t d = 0;        // position dimension
  int64_t lift = 1;     // degree k of the lift [x, x (x) x, ..., x^(x)k]
  int64_t lifted = 0;   // its length d + d^2 + .. + d^k
  int64_t h0 = 0;       // lifted + attr: length of u_0
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
    const at::Tensor& rowptr, const at::Tensor& col,
    const at::Tensor& csc_rowptr, const at::Tensor& csc_perm,
    const PlanArgs& plan);

// Extra checks of the backward op (grad_out, output_mask).
void check_point_conv_backward_inputs(const ConvDims& dims,
                                      const at::Tensor& grad_out,
                                      const at::Tensor& x_src,
                                      const c10::List<bool>& output_mask);

// Value checks of the CSR (and optionally CSC) index arrays; reads host
// memory, so CPU tensors only: rowptr[0] == 0, non-decreasing,
// rowptr[N_dst] == E, 0 <= col < N_src; csc likewise, 0 <= perm < E.
void check_csr_values_cpu(const ConvDims& dims, const at::Tensor& rowptr,
                          const at::Tensor& col);
void check_csc_values_cpu(const ConvDims& dims, const at::Tensor& csc_rowptr,
                          const at::Tensor& csc_perm);
// Value checks of the field maps of gated / norm layers (host memory: a
// device backend passes copies): every entry is -1 or in [0, nf).
void check_field_values_cpu(const ConvDims& dims, at::TensorList fields);

using BackwardResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor,
               std::vector<at::Tensor>, std::vector<at::Tensor>,
               std::vector<at::Tensor>, std::vector<at::Tensor>,
               std::vector<at::Tensor>, at::Tensor, at::Tensor>;

// output_mask of the backward op as a GradRequest (length checked before).
inline GradRequest grad_request(const c10::List<bool>& output_mask) {
  GradRequest r;
  for (int k = 0; k < kNumGradGroups; ++k) r.want[k] = output_mask.get(k);
  return r;
}

}  // namespace pyg_implicit
