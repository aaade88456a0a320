"""Exactly equivariant kernel MLPs (gated and norm nonlinearities after a
tensor-power lift of the edge vector) for every group, and layers that stay
correct under dtype changes, copies, int32 indices and higher-frequency fields."""
import copy
import io

import pytest
import torch
from escnn import gspaces
from escnn import nn as enn

from compare import assert_rows_close
from helpers import GROUPS, field_types, gspace
from pyg_implicit import ImplicitKernel, ImplicitPointConv
from pyg_implicit.nn import EquivariantNonlinearity
from pyg_implicit.ops import build_csr, fused_point_conv
from pyg_implicit.plan import LAYER_KINDS, edge_kernels
from pyg_implicit.testing import check_equivariance, check_kernel_constraint
from test_conv import FAST_BACKENDS, assert_backend_matches_reference, graph_inputs

fused_cpu = pytest.mark.backend("fused_cpu")

EXACT_GROUPS = ["SO2", "O2", "SO3", "O3", "SO2z", "O2_conical", "full_cylindrical",
                "cylindrical", "C4", "octa"]
KINDS = ["gated", "norm"]


def exact_conv(name, kind, mixed=True, attrs=True, backend="reference", **kwargs):
    in_type, out_type, attr_reps = field_types(name, mixed)
    options = {"hidden_channels": 3, "nonlinearity": kind, **kwargs}
    conv = ImplicitPointConv(in_type, out_type, attr_reps if attrs else None,
                             backend=backend, **options).double()
    with torch.no_grad():  # biases and norm thresholds away from their init
        if conv.bias is not None:
            conv.bias.uniform_(-1, 1)
        for p in conv.kernel.parameters():
            if p.dim() == 1 and p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return conv, attr_reps if attrs else None


# ----------------------------------------------------------------------------
# exactness, float64, arbitrary (random) group elements
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", EXACT_GROUPS)
@pytest.mark.parametrize("attrs", [True, False])
def test_exact_kernel_constraint(name, kind, attrs):
    """K(gx, ga) = rho_out(g) K(x, a) rho_in(g)^T for random elements of the whole
    group (not only a grid), float64, mixed field types."""
    in_type, out_type, attr_reps = field_types(name, mixed=True)
    kernel = ImplicitKernel(in_type, out_type, attr_reps if attrs else None,
                            hidden_channels=3, nonlinearity=kind).double()
    assert kernel.exact_elements is None  # exact for every element
    assert kernel.lift_degree == kernel.band_limit == 2
    assert check_kernel_constraint(kernel, elements="random", num=8) <= 1e-9


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name,mixed,attrs", [
    ("SO2", True, True), ("O2", False, False), ("SO3", True, False), ("O3", True, True),
    ("SO2z", True, True), ("O2_conical", False, True), ("full_cylindrical", True, False),
    ("D3", True, True)])
@pytest.mark.parametrize("backend", ["reference", *FAST_BACKENDS])
def test_exact_layer_equivariance(name, mixed, attrs, kind, backend):
    """The layer on random graphs (self-loops, duplicate edges), random elements of
    the continuous group: exact to 1e-9 in float64 on every backend."""
    conv, attr_reps = exact_conv(name, kind, mixed, attrs, backend=backend)
    x, pos, edge_index, attr = graph_inputs(conv, seed=4)
    err = check_equivariance(conv, conv.in_type, conv.out_type, x, pos, edge_index, attr,
                             attr_reps, elements="random", num=6, exact=[])
    assert err <= 1e-9


def test_fourier_default_is_only_approximate_where_exact_kinds_are_exact():
    """The same check detects the Fourier default's off-grid error (so the test
    above can fail) while the exact kinds stay at rounding level."""
    errors = {}
    for kind in ("auto", "gated"):
        conv, attr_reps = exact_conv("SO3", kind)
        x, pos, edge_index, attr = graph_inputs(conv, seed=4)
        errors[kind] = check_equivariance(conv, conv.in_type, conv.out_type, x, pos,
                                          edge_index, attr, attr_reps, num=6, exact=[])
    assert errors["auto"] > 1e-5 and errors["gated"] <= 1e-9, errors


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["SO2", "O3", "O2_conical", "C4"])
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_exact_backends_match_reference(name, kind, backend):
    """factorized / fused == reference, forward and every gradient (float64),
    including the norm thresholds and the gates."""
    conv, _ = exact_conv(name, kind)
    x, pos, edge_index, attr = graph_inputs(conv, seed=5)
    assert_backend_matches_reference(conv, backend, x, pos, edge_index, attr)


@pytest.mark.parametrize("kind", KINDS)
def test_plan_matches_escnn_modules(kind):
    """The lowered plan (pyg_implicit.plan, the backends' contract) equals the
    kernel evaluated through escnn's Linear modules and EquivariantNonlinearity
    (whose gated/norm are tested against escnn's GatedNonLinearity1 and
    NormNonLinearity in test_blocks.py)."""
    in_type, out_type, attr_reps = field_types("O3")
    kernel = ImplicitKernel(in_type, out_type, attr_reps, hidden_channels=2,
                            nonlinearity=kind, hidden_layers=3).double()
    for block in kernel._blocks:
        assert isinstance(block.module, EquivariantNonlinearity) and block.module.kind == kind
    plan = kernel.plan()
    assert plan.kinds == [LAYER_KINDS[kind]] * 3 and plan.lift_degree == 2
    x = torch.randn(40, 3, dtype=torch.float64)
    a = torch.randn(40, kernel.attr_dim, dtype=torch.float64)
    assert_rows_close(edge_kernels(plan, x, a), kernel(x, a), 1e-12, "plan vs escnn")


def test_norm_layer_at_a_zero_field():
    """A self-loop (x = 0) with zero biases on the non-trivial fields: every such
    field has norm 0; the output and the gradients stay finite, and fused ==
    reference there."""
    conv, _ = exact_conv("SO3", "norm", attrs=False, backend="fused")
    x, pos, _, _ = graph_inputs(conv)
    edge_index = torch.arange(x.shape[0]).repeat(2, 1)  # self-loops only
    for backend in ("reference", "fused"):
        conv.backend = backend
        pos_g = pos.clone().requires_grad_(True)
        out = conv(x, pos_g, edge_index)
        (g,) = torch.autograd.grad(out.square().sum(), [pos_g])
        assert torch.isfinite(out).all() and torch.isfinite(g).all()
    conv.backend = "fused"
    assert_backend_matches_reference(conv, "fused", x, pos, edge_index, None)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter(kind):
    conv, attr_reps = exact_conv("O3", kind, backend="auto")
    x, pos, edge_index, attr = graph_inputs(conv)
    conv(x, pos, edge_index, attr).square().sum().backward()
    for name, p in conv.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    if kind == "norm":
        assert any("log_bias" in n for n, _ in conv.named_parameters())


def test_lift_degree_option():
    in_type, out_type, _ = field_types("SO2")
    for k in (1, 3):
        kernel = ImplicitKernel(in_type, out_type, nonlinearity="gated", lift_degree=k)
        assert kernel.plan().lift_degree == k
        assert kernel.plan().weights[0].shape[1] == sum(2 ** m for m in range(1, k + 1))
    with pytest.raises(ValueError, match="lift_degree"):
        ImplicitKernel(in_type, out_type, lift_degree=0)


# ----------------------------------------------------------------------------
# dtype changes never leak into other layers
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("name,kind", [("SO2", "auto"), ("O3", "auto"), ("O3", "norm"),
                                       ("C4", "auto")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_converting_one_layer_leaves_the_others_alone(name, kind, dtype):
    """Two layers over the same field types (escnn caches bases per type pair):
    converting one changes nothing in the other, bit for bit, and no buffer
    or parameter shares storage between them."""
    in_type, out_type, attr_reps = field_types(name)
    a = ImplicitPointConv(in_type, out_type, attr_reps, nonlinearity=kind)
    b = ImplicitPointConv(in_type, out_type, attr_reps, nonlinearity=kind)
    ptrs = {t.data_ptr() for t in [*a.buffers(), *a.parameters()] if t.numel()}
    assert not ptrs & {t.data_ptr() for t in [*b.buffers(), *b.parameters()] if t.numel()}
    x, pos, edge_index, attr = (t.float() if t.is_floating_point() else t
                                for t in graph_inputs(a))
    before = a(x, pos, edge_index, attr)
    b.to(dtype)
    assert torch.equal(a(x, pos, edge_index, attr), before)
    assert all(t.dtype in (torch.float32, torch.int64, torch.bool) for t in a.buffers())


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_converting_one_linear_block_leaves_the_others_alone(dtype):
    from pyg_implicit.nn import EquivariantLinear
    in_type, out_type, _ = field_types("O3")
    a, b = EquivariantLinear(in_type, out_type), EquivariantLinear(in_type, out_type)
    x = torch.randn(7, in_type.size)
    before = a(x)
    b.to(dtype)
    assert torch.equal(a(x), before)


# ----------------------------------------------------------------------------
# half precision: one clear error; autocast runs the layer in float32
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_layer_raises_a_clear_error(dtype):
    in_type, out_type, attr_reps = field_types("SO2")
    conv = ImplicitPointConv(in_type, out_type, attr_reps).to(dtype)
    x, pos, edge_index, attr = graph_inputs(conv)
    with pytest.raises(TypeError, match=f"float32 or float64.*{dtype}"):
        conv(x.to(dtype), pos.to(dtype), edge_index, attr.to(dtype))


@pytest.mark.parametrize("backend", ["reference", *FAST_BACKENDS])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layer_under_autocast_computes_in_float32(backend, dtype):
    in_type, out_type, attr_reps = field_types("O3")
    conv = ImplicitPointConv(in_type, out_type, attr_reps, backend=backend, grid="ico")
    x, pos, edge_index, attr = (t.float() if t.is_floating_point() else t
                                for t in graph_inputs(conv))
    expected = conv(x, pos, edge_index, attr)
    with torch.autocast("cpu", dtype=dtype):
        out = conv(x, pos, edge_index, attr)
        # lower-precision inputs (e.g. from an autocast layer before) are cast up
        out_low = conv(x.to(dtype), pos, edge_index, attr.to(dtype))
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    assert out_low.dtype == torch.float32
    assert torch.equal(out_low, conv(x.to(dtype).float(), pos, edge_index,
                                     attr.to(dtype).float()))


@fused_cpu
def test_fused_op_under_autocast():
    """The op has no autocast rule: float32 in, float32 out, same bits."""
    from op_cases import random_edge_index, random_plan
    plan = random_plan(torch.float32, attr=0, c_in=3)
    ei = random_edge_index(20, 20, 100, 1)
    x, pos = torch.randn(20, 3), torch.randn(20, 3)
    csr = build_csr(ei, 20)
    expected = fused_point_conv(x, pos, pos, None, csr, plan)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused_point_conv(x, pos, pos, None, csr, plan)
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    with pytest.raises(TypeError, match="x_src must be float32 or float64"):
        fused_point_conv(x.bfloat16(), pos, pos, None, csr, plan)


# ----------------------------------------------------------------------------
# int32 indices, copies, state dicts
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", *FAST_BACKENDS])
@pytest.mark.parametrize("kind", ["auto", "gated"])
def test_int32_edge_index_on_every_backend(backend, kind):
    conv, attr_reps = exact_conv("SO2", kind, backend=backend)
    x, pos, edge_index, attr = graph_inputs(conv)
    out64 = conv(x, pos, edge_index, attr)
    out32 = conv(x, pos, edge_index.int(), attr)
    assert torch.equal(out32, out64)


@pytest.mark.parametrize("kind", ["auto", "norm"])
@pytest.mark.parametrize("backend", ["reference", *FAST_BACKENDS])
def test_deepcopy_and_state_dict_round_trip(kind, backend):
    conv, attr_reps = exact_conv("O3", kind, backend=backend)
    x, pos, edge_index, attr = graph_inputs(conv)
    expected = conv(x, pos, edge_index, attr)
    assert torch.equal(copy.deepcopy(conv)(x, pos, edge_index, attr), expected)
    buffer = io.BytesIO()
    torch.save(conv.state_dict(), buffer)
    buffer.seek(0)
    in_type, out_type, _ = field_types("O3")
    fresh = ImplicitPointConv(in_type, out_type, attr_reps, hidden_channels=3,
                              nonlinearity=kind, backend=backend).double()
    assert not torch.equal(fresh(x, pos, edge_index, attr), expected)
    fresh.load_state_dict(torch.load(buffer))
    assert torch.equal(fresh(x, pos, edge_index, attr), expected)


# ----------------------------------------------------------------------------
# field types of higher frequency build (escnn's irreps instantiated as needed)
# ----------------------------------------------------------------------------

def _high_frequency_types():
    cases = {}
    gs = gspaces.flipRot2dOnR2(N=-1, maximum_frequency=6)  # the example
    G = gs.fibergroup
    cases["O2"] = (gs, [G.trivial_representation, gs.basespace_action,
                        G.trivial_representation, G.irrep(1, 2)],
                   [gs.basespace_action, G.trivial_representation, gs.basespace_action,
                    G.irrep(1, 3)])
    gs = gspaces.rot2dOnR2(N=-1, maximum_frequency=3)
    G = gs.fibergroup
    cases["SO2"] = (gs, [G.irrep(3), G.irrep(0)], [G.irrep(2), G.irrep(3)])
    for name, make in (("SO3", gspaces.rot3dOnR3), ("O3", gspaces.flipRot3dOnR3)):
        gs = make()
        G = gs.fibergroup
        high = G.irrep(3) if name == "SO3" else G.irrep(1, 3)
        cases[name] = (gs, [G.trivial_representation, high], [high, gs.basespace_action])
    gs = gspaces.fullCylindricalOnR3(maximum_frequency=2)
    G = gs.fibergroup
    high = [psi for psi in G.irreps() if psi.size == 2][-1]
    cases["full_cylindrical"] = (gs, [G.trivial_representation, high],
                                 [high, gs.basespace_action])
    return cases


@pytest.mark.parametrize("kind", ["auto", "gated"])
@pytest.mark.parametrize("name", ["O2", "SO2", "SO3", "O3", "full_cylindrical"])
def test_higher_frequency_fields_build_and_are_equivariant(name, kind):
    gs, ins, outs = _high_frequency_types()[name]
    in_type, out_type = enn.FieldType(gs, ins), enn.FieldType(gs, outs)
    kernel = ImplicitKernel(in_type, out_type, hidden_channels=2, nonlinearity=kind,
                            band_limit=2).double()
    K = kernel(torch.randn(30, kernel.pos_dim, dtype=torch.float64))
    assert K.abs().max() > 0
    if kind == "gated":
        assert check_kernel_constraint(kernel, elements="random", num=4) <= 1e-9


def test_groups_of_the_suite_are_covered():
    continuous = {n for n in GROUPS if gspace(n).fibergroup.continuous}
    assert {"SO2", "O2", "SO3", "O3", "SO2z", "O2_conical", "full_cylindrical"} <= continuous
    assert set(EXACT_GROUPS) <= set(GROUPS)
