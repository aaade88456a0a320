// Operator library `pyg_implicit`: schema of the fused point convolution and
// the input checks shared by every backend.  See docs/fused_op_spec.md.
//
// The CPU kernels are registered in csrc/cpu/point_conv_cpu.cpp, the CUDA
// kernels (when built) in csrc/cuda/.
#include <Python.h>

#include <torch/library.h>

#include "point_conv.h"

namespace pyg_implicit {

namespace {

void check_defined(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
}

void check_float(const at::Tensor& t, const char* op, const char* name,
                 at::ScalarType dtype, const at::Device& device) {
  check_defined(t, op, name);
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must have dtype ",
              dtype, " like x_src, got ", t.scalar_type());
  TORCH_CHECK(t.device() == device, op, ": ", name, " must be on ", device,
              " like x_src, got ", t.device());
  TORCH_CHECK(t.layout() == at::kStrided, op, ": ", name,
              " must be a dense (strided) tensor");
}

void check_index(const at::Tensor& t, const char* op, const char* name,
                 const at::Device& device) {
  check_defined(t, op, name);
  TORCH_CHECK(t.scalar_type() == at::kLong, op, ": ", name,
              " must be int64, got ", t.scalar_type());
  TORCH_CHECK(t.device() == device, op, ": ", name, " must be on ", device,
              " like x_src, got ", t.device());
  TORCH_CHECK(t.dim() == 1, op, ": ", name, " must be 1-D, got shape ",
              t.sizes());
  TORCH_CHECK(t.layout() == at::kStrided, op, ": ", name,
              " must be a dense (strided) tensor");
}

}  // namespace

ConvDims check_point_conv_inputs(
    const char* op, const at::Tensor& x_src, const at::Tensor& pos_src,
    const at::Tensor& pos_dst, const at::Tensor& edge_attr,
    const at::Tensor& rowptr, const at::Tensor& col,
    const at::Tensor& csc_rowptr, const at::Tensor& csc_perm,
    const PlanArgs& plan) {
  check_defined(x_src, op, "x_src");
  const auto dtype = x_src.scalar_type();
  const auto device = x_src.device();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, op,
              ": x_src must be float32 or float64, got ", dtype);
  TORCH_CHECK(x_src.layout() == at::kStrided, op,
              ": x_src must be a dense (strided) tensor");
  TORCH_CHECK(x_src.dim() == 2, op, ": x_src must be 2-D [N_src, C_in], got ",
              x_src.sizes());
  check_float(pos_src, op, "pos_src", dtype, device);
  check_float(pos_dst, op, "pos_dst", dtype, device);
  check_float(edge_attr, op, "edge_attr", dtype, device);
  check_float(plan.width, op, "width", dtype, device);
  check_float(plan.Wt, op, "Wt", dtype, device);
  check_index(rowptr, op, "rowptr", device);
  check_index(col, op, "col", device);
  check_index(csc_rowptr, op, "csc_rowptr", device);
  check_index(csc_perm, op, "csc_perm", device);

  ConvDims dims;
  dims.n_src = x_src.size(0);
  dims.c_in = x_src.size(1);
  TORCH_CHECK(dims.c_in >= 1, op, ": x_src must have at least one channel");
  TORCH_CHECK(pos_src.dim() == 2 && pos_src.size(0) == dims.n_src, op,
              ": pos_src must be [N_src, d] with N_src = ", dims.n_src,
              " (x_src rows), got ", pos_src.sizes());
  dims.d = pos_src.size(1);
  TORCH_CHECK(dims.d >= 1, op, ": positions must have at least one coordinate");
  TORCH_CHECK(pos_dst.dim() == 2 && pos_dst.size(1) == dims.d, op,
              ": pos_dst must be [N_dst, ", dims.d, "], got ", pos_dst.sizes());
  dims.n_dst = pos_dst.size(0);
  dims.num_edges = col.size(0);
  TORCH_CHECK(rowptr.size(0) == dims.n_dst + 1, op,
              ": rowptr must have N_dst + 1 = ", dims.n_dst + 1,
              " entries, got ", rowptr.size(0));
  TORCH_CHECK(edge_attr.dim() == 2 && edge_attr.size(0) == dims.num_edges, op,
              ": edge_attr must be [E, A] with E = ", dims.num_edges,
              " (col entries), got ", edge_attr.sizes());
  dims.attr = edge_attr.size(1);
  TORCH_CHECK(csc_rowptr.size(0) == dims.n_src + 1, op,
              ": csc_rowptr must have N_src + 1 = ", dims.n_src + 1,
              " entries, got ", csc_rowptr.size(0));
  TORCH_CHECK(csc_perm.size(0) == dims.num_edges, op,
              ": csc_perm must have E = ", dims.num_edges, " entries, got ",
              csc_perm.size(0));
  TORCH_CHECK(plan.lift_degree >= 1 && plan.lift_degree <= kMaxLiftDegree, op,
              ": lift_degree must be in [1, ", kMaxLiftDegree, "], got ",
              plan.lift_degree);
  dims.lift = plan.lift_degree;
  dims.lifted = lifted_size(dims.d, dims.lift);
  dims.h0 = dims.lifted + dims.attr;

  const int64_t L = static_cast<int64_t>(plan.weights.size());
  TORCH_CHECK(static_cast<int64_t>(plan.biases.size()) == L &&
                  static_cast<int64_t>(plan.samplers.size()) == L &&
                  static_cast<int64_t>(plan.projectors.size()) == L &&
                  static_cast<int64_t>(plan.fields.size()) == L &&
                  static_cast<int64_t>(plan.field_biases.size()) == L &&
                  static_cast<int64_t>(plan.kinds.size()) == L &&
                  static_cast<int64_t>(plan.activations.size()) == L,
              op, ": weights, biases, samplers, projectors, fields, field_biases, "
              "kinds and activations must have the same length, got ",
              plan.weights.size(), ", ", plan.biases.size(), ", ", plan.samplers.size(),
              ", ", plan.projectors.size(), ", ", plan.fields.size(), ", ",
              plan.field_biases.size(), ", ", plan.kinds.size(), ", ",
              plan.activations.size());
  int64_t h = dims.h0;
  for (int64_t l = 0; l < L; ++l) {
    const std::string ls = "[" + std::to_string(l) + "]";
    const std::string wl = "weights" + ls, bl = "biases" + ls, ql = "samplers" + ls,
                      pl = "projectors" + ls, ml = "fields" + ls,
                      fl = "field_biases" + ls;
    const at::Tensor &W = plan.weights[l], &b = plan.biases[l], &Q = plan.samplers[l],
                     &P = plan.projectors[l], &m = plan.fields[l],
                     &bf = plan.field_biases[l];
    check_float(W, op, wl.c_str(), dtype, device);
    check_float(b, op, bl.c_str(), dtype, device);
    check_float(Q, op, ql.c_str(), dtype, device);
    check_float(P, op, pl.c_str(), dtype, device);
    check_index(m, op, ml.c_str(), device);
    check_float(bf, op, fl.c_str(), dtype, device);
    LayerDims ld;
    ld.in = h;
    TORCH_CHECK(W.dim() == 2 && W.size(1) == h, op, ": ", wl, " must be [H', ", h,
                "], got ", W.sizes());
    ld.pre = W.size(0);
    TORCH_CHECK(b.dim() == 1 && b.size(0) == ld.pre, op, ": ", bl, " must be [",
                ld.pre, "], got ", b.sizes());
    ld.act = plan.activations[l];
    TORCH_CHECK(is_activation_code(ld.act), op, ": activations", ls, " = ", ld.act,
                " is not an activation code (0 .. ", kNumActivations - 1,
                ", pyg_implicit.plan.ACTIVATIONS)");
    ld.kind = plan.kinds[l];
    TORCH_CHECK(ld.kind >= 0 && ld.kind < kNumLayerKinds, op, ": kinds", ls, " = ",
                ld.kind, " is not a layer kind (0 .. ", kNumLayerKinds - 1,
                ", pyg_implicit.plan.LAYER_KINDS)");
    const bool fourier = ld.kind == kFourier;
    const bool field_layer = ld.kind == kGated || ld.kind == kNorm;
    TORCH_CHECK(fourier == (Q.numel() > 0) && fourier == (P.numel() > 0), op, ": ", ql,
                " and ", pl, " must be non-empty exactly for a Fourier layer (kinds",
                ls, " = ", ld.kind, ")");
    TORCH_CHECK(field_layer || m.numel() == 0, op, ": ", ml,
                " must be empty unless layer ", l, " is gated or norm");
    TORCH_CHECK(ld.kind == kNorm || bf.numel() == 0, op, ": ", fl,
                " must be empty unless layer ", l, " is a norm layer");
    if (fourier) {
      TORCH_CHECK(Q.dim() == 2, op, ": ", ql, " must be 2-D [G, F], got ", Q.sizes());
      ld.fourier = true;
      ld.G = Q.size(0);
      ld.F = Q.size(1);
      TORCH_CHECK(ld.pre % ld.F == 0, op, ": the length ", ld.pre, " of layer ", l,
                  " is not a multiple of the sampler width ", ld.F);
      TORCH_CHECK(P.dim() == 2 && P.size(1) == ld.G && P.size(0) >= 1, op, ": ", pl,
                  " must be [F', ", ld.G, "], got ", P.sizes());
      ld.Fp = P.size(0);
      ld.fields = ld.pre / ld.F;
      ld.out = ld.fields * ld.Fp;
    } else if (ld.kind == kGated) {
      TORCH_CHECK(m.size(0) <= ld.pre, op, ": ", ml, " (one entry per output) must "
                  "have at most H' = ", ld.pre, " entries, got ", m.size(0));
      ld.out = m.size(0);
      ld.nf = ld.pre - ld.out;
    } else if (ld.kind == kNorm) {
      TORCH_CHECK(m.size(0) == ld.pre, op, ": ", ml, " must have H' = ", ld.pre,
                  " entries, got ", m.size(0));
      TORCH_CHECK(bf.dim() == 1, op, ": ", fl, " must be 1-D, got ", bf.sizes());
      ld.out = ld.pre;
      ld.nf = bf.size(0);
    } else {
      ld.out = ld.pre;
    }
    h = ld.out;
    dims.layers.push_back(ld);
  }
  dims.hidden = h;
  TORCH_CHECK(plan.width.dim() == 0, op, ": width must be a 0-d tensor, got shape ",
              plan.width.sizes());
  TORCH_CHECK(plan.Wt.dim() == 2 && plan.Wt.size(1) == (h + 1) * dims.c_in, op,
              ": Wt must be [C_out, (H + 1) * C_in] = [C_out, ",
              (h + 1) * dims.c_in, "], got ", plan.Wt.sizes());
  dims.c_out = plan.Wt.size(0);
  return dims;
}

void check_field_values_cpu(const ConvDims& dims, at::TensorList fields) {
  for (size_t l = 0; l < dims.layers.size(); ++l) {
    const auto m = fields[l].contiguous();
    const int64_t* mp = m.data_ptr<int64_t>();
    const int64_t nf = dims.layers[l].nf;
    for (int64_t i = 0; i < m.numel(); ++i)
      TORCH_CHECK(mp[i] >= -1 && mp[i] < nf, "point_conv: fields[", l, "][", i,
                  "] = ", mp[i], " must be -1 or in [0, ", nf, ")");
  }
}

void check_point_conv_backward_inputs(const ConvDims& dims,
                                      const at::Tensor& grad_out,
                                      const at::Tensor& x_src,
                                      const c10::List<bool>& output_mask) {
  const char* op = "point_conv_backward";
  check_float(grad_out, op, "grad_out", x_src.scalar_type(), x_src.device());
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == dims.n_dst &&
                  grad_out.size(1) == dims.c_out,
              op, ": grad_out must be [N_dst, C_out] = [", dims.n_dst, ", ",
              dims.c_out, "], got ", grad_out.sizes());
  TORCH_CHECK(static_cast<int64_t>(output_mask.size()) == kNumGradGroups, op,
              ": output_mask must have ", kNumGradGroups, " entries, got ",
              output_mask.size());
}

namespace {
void check_ptr_values(const char* op, const char* ptr_name,
                      const char* idx_name, const at::Tensor& ptr,
                      const at::Tensor& idx, int64_t n_rows, int64_t bound,
                      const char* bound_name) {
  const auto p = ptr.contiguous();
  const auto c = idx.contiguous();
  const int64_t* pp = p.data_ptr<int64_t>();
  const int64_t* cp = c.data_ptr<int64_t>();
  const int64_t E = c.size(0);
  TORCH_CHECK(pp[0] == 0, op, ": ", ptr_name, "[0] must be 0, got ", pp[0]);
  for (int64_t r = 0; r < n_rows; ++r) {
    TORCH_CHECK(pp[r + 1] >= pp[r], op, ": ", ptr_name,
                " must be non-decreasing (entry ", r + 1, ")");
  }
  TORCH_CHECK(pp[n_rows] == E, op, ": ", ptr_name, "[-1] must equal E = ", E,
              ", got ", pp[n_rows]);
  for (int64_t e = 0; e < E; ++e) {
    TORCH_CHECK(cp[e] >= 0 && cp[e] < bound, op, ": ", idx_name, "[", e,
                "] = ", cp[e], " is out of range [0, ", bound, ") (", bound_name,
                ")");
  }
}
}  // namespace

void check_csr_values_cpu(const ConvDims& dims, const at::Tensor& rowptr,
                          const at::Tensor& col) {
  check_ptr_values("point_conv", "rowptr", "col", rowptr, col, dims.n_dst,
                   dims.n_src, "N_src");
}

void check_csc_values_cpu(const ConvDims& dims, const at::Tensor& csc_rowptr,
                          const at::Tensor& csc_perm) {
  check_ptr_values("point_conv", "csc_rowptr", "csc_perm", csc_rowptr,
                   csc_perm, dims.n_src, dims.num_edges, "E");
}

}  // namespace pyg_implicit

TORCH_LIBRARY(pyg_implicit, m) {
  m.def(
      "point_conv_forward(Tensor x_src, Tensor pos_src, Tensor pos_dst, "
      "Tensor edge_attr, Tensor rowptr, Tensor col, Tensor csc_rowptr, "
      "Tensor csc_perm, Tensor[] weights, Tensor[] biases, Tensor[] samplers, "
      "Tensor[] projectors, Tensor[] fields, Tensor[] field_biases, int[] kinds, "
      "int[] activations, int lift_degree, Tensor width, Tensor Wt) -> Tensor");
  m.def(
      "point_conv_backward(Tensor grad_out, Tensor x_src, Tensor pos_src, "
      "Tensor pos_dst, Tensor edge_attr, Tensor rowptr, Tensor col, "
      "Tensor csc_rowptr, Tensor csc_perm, Tensor[] weights, Tensor[] biases, "
      "Tensor[] samplers, Tensor[] projectors, Tensor[] fields, "
      "Tensor[] field_biases, int[] kinds, int[] activations, int lift_degree, "
      "Tensor width, Tensor Wt, bool[] output_mask) -> (Tensor grad_x_src, "
      "Tensor grad_pos_src, Tensor grad_pos_dst, Tensor grad_edge_attr, "
      "Tensor[] grad_weights, Tensor[] grad_biases, Tensor[] grad_samplers, "
      "Tensor[] grad_projectors, Tensor[] grad_field_biases, Tensor grad_width, "
      "Tensor grad_Wt)");
}

// `import pyg_implicit._C` loads this library (and with it the registrations
// above); the Python module itself is empty.
extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "Compiled ops of pyg_implicit (torch.ops.pyg_implicit.*)",
      -1,    // size of per-interpreter state
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
