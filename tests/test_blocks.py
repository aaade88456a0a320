"""Building blocks of pyg_implicit.nn: equivariance on many groups (float64), graph-batch
semantics, escnn's modules as oracles, torch.compile, bad input."""
import copy

import pytest
import torch
from escnn import nn as enn

from compare import assert_rows_close
from helpers import GROUPS, gspace
from pyg_implicit.nonlinearities import _band_limited_irreps
from pyg_implicit.nn import (EquivariantBatchNorm, EquivariantGlobalPool, EquivariantLayerNorm,
                             EquivariantLinear, EquivariantNonlinearity, ImplicitSteerableNet,
                             InvariantMap, ResidualBlock, ScalarEmbedding, field_type)
from pyg_implicit.testing import check_equivariance, check_node_equivariance

# 2D and 3D, finite and continuous
BLOCK_GROUPS = ["C4", "D3", "SO2", "O2", "inv3d", "octa", "full_octa", "SO2z", "O2_conical",
                "cylindrical", "SO3", "O3"]
EXACT = 1e-9
# Fourier nonlinearities off their grids (docs/design.md §"Building blocks"): measured
# <= 1.3e-3 (regular grids of 16 elements, band limit 2) and <= 1.4e-2 (the 120-point
# Thomson grid of SO(3)/O(3))
FOURIER_BOUND = 5e-2


def block_types(name: str, mixed: bool = True):
    """(mixed or uniform type, its gspace): trivial, the standard action, irreps, and a
    regular field for small finite groups."""
    gs = gspace(name)
    G = gs.fibergroup
    if not mixed:
        return enn.FieldType(gs, [gs.basespace_action] * 3), gs
    irreps = list(G.irreps()) if not G.continuous else \
        [G.irrep(*i) for i in _band_limited_irreps(G, 2)]
    extra = [G.regular_representation] if not G.continuous and G.order() <= 8 else []
    return enn.FieldType(gs, [G.trivial_representation, gs.basespace_action, *irreps[1:4],
                              *extra, G.trivial_representation]), gs


def features(ftype, n=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, ftype.size, generator=gen, dtype=torch.float64)


def assert_node_equivariant(module, x, tol=EXACT, **kwargs):
    err = check_node_equivariance(module, module.in_type, module.out_type, x, num=6, **kwargs)
    assert err < tol, err
    return err


# ---------------------------------------------------------------- per-node blocks
@pytest.mark.parametrize("kind", ["gated", "norm"])
@pytest.mark.parametrize("mixed", [True, False], ids=["mixed", "uniform"])
@pytest.mark.parametrize("name", BLOCK_GROUPS)
def test_gated_and_norm_nonlinearities_are_exact(name, mixed, kind):
    ftype, _ = block_types(name, mixed)
    act = EquivariantNonlinearity(ftype, kind).double()
    with torch.no_grad():
        if kind == "norm":
            act.log_bias.uniform_(-2, 0)
    assert act.kind == kind and act.exact_elements is None
    assert (act.in_type.size - ftype.size) == (act.num_gates if kind == "gated" else 0)
    x = features(act.in_type)
    assert_node_equivariant(act, x, elements="random")
    assert torch.isfinite(act(x)).all()


@pytest.mark.parametrize("name", BLOCK_GROUPS)
def test_auto_nonlinearity_on_the_hidden_type_of_the_group(name):
    """``field_type(gs, C)`` + ``"auto"``: pointwise on regular fields (exact), Fourier on
    the group or the sphere (exact on its grid, within FOURIER_BOUND elsewhere)."""
    gs = gspace(name)
    act = EquivariantNonlinearity(field_type(gs, 3, band_limit=2)).double()
    x = features(act.in_type)
    if not gs.fibergroup.continuous:
        assert act.kind == "pointwise"
        assert_node_equivariant(act, x)
        return
    assert act.kind in ("fourier", "quotient")
    if act.exact_elements:  # regular grids of continuous groups: finite subgroups
        assert_node_equivariant(act, x)
    assert_node_equivariant(act, x, FOURIER_BOUND, exact=[])


def test_auto_falls_back_to_gated_on_mixed_types():
    ftype, _ = block_types("SO3")
    assert EquivariantNonlinearity(ftype).kind == "gated"


@pytest.mark.parametrize("mode", ["batch-train", "batch-eval", "layer-graph", "layer-node"])
@pytest.mark.parametrize("name", BLOCK_GROUPS)
def test_norms_are_equivariant(name, mode):
    ftype, _ = block_types(name)
    batch = torch.arange(24) % 3
    if mode.startswith("batch"):
        norm = EquivariantBatchNorm(ftype).double()
        with torch.no_grad():
            norm.weight.uniform_(0.5, 2)
            norm.bias.uniform_(-1, 1)
            norm(features(ftype, seed=3) * 3 + 1)  # running statistics away from 0 / 1
        norm.train(mode == "batch-train")
    else:
        norm = EquivariantLayerNorm(ftype, mode=mode.split("-")[1]).double()
        with torch.no_grad():
            norm.weight.uniform_(0.5, 2)
            norm.bias.uniform_(-1, 1)
    x = features(ftype) * 2 + 0.5
    assert_node_equivariant(norm, x, batch=batch)


@pytest.mark.parametrize("name", BLOCK_GROUPS)
def test_linear_embedding_invariants_and_pooling(name):
    ftype, gs = block_types(name)
    other, _ = block_types(name, mixed=False)
    lin = EquivariantLinear(ftype, other).double()
    assert_node_equivariant(lin, features(ftype))
    lin2 = EquivariantLinear(other, ftype).double()
    with torch.no_grad():
        lin2.linear.bias.uniform_(-1, 1)
    assert_node_equivariant(lin2, features(other))
    emb = ScalarEmbedding(4, ftype).double()
    y = emb(torch.randn(5, 4, dtype=torch.float64))
    assert_node_equivariant(emb, torch.randn(5, 4, dtype=torch.float64))
    assert y.shape == (5, ftype.size)
    # the embedding lands in the invariant subspace: every group element fixes it
    err = check_node_equivariance(lambda t: emb(torch.randn(5, 4, dtype=torch.float64,
                                                            generator=torch.Generator()
                                                            .manual_seed(1))) + 0 * t.sum(),
                                  ftype, ftype, features(ftype, n=5), num=4)
    assert err < EXACT
    for kind in ("norm", "invariant"):
        inv = InvariantMap(ftype, kind).double()
        assert all(r.is_trivial() for r in inv.out_type.representations)
        assert_node_equivariant(inv, features(ftype))
    batch = torch.arange(24) % 4
    for reduce in ("sum", "mean"):
        pool = EquivariantGlobalPool(ftype, reduce)
        assert_node_equivariant(pool, features(ftype), batch=batch)


# ---------------------------------------------------- escnn's modules as the oracle
def test_gated_nonlinearity_matches_escnn():
    """escnn's GatedNonLinearity1 on ``[gates, fields]`` (its output is float32; its
    gate bias set to 0) plus a pointwise function on the scalars is exactly ours."""
    ftype, _ = block_types("SO3")
    act = EquivariantNonlinearity(ftype, "gated", "elu")
    nontrivial = [r for r in ftype.representations if not r.is_trivial()]
    fiber = act.in_type.gspace.fibergroup
    from pyg_implicit.nn.fields import fiber_type

    gated_in = fiber_type(enn.FieldType(act.in_type.gspace,
                                        [fiber.trivial_representation] * len(nontrivial)
                                        + nontrivial))
    escnn_gate = enn.GatedNonLinearity1(gated_in, ["gate"] * len(nontrivial)
                                        + ["gated"] * len(nontrivial))
    with torch.no_grad():  # escnn's own gate bias (random); ours is the convolution's
        escnn_gate.bias.zero_()
    x = torch.randn(16, act.in_type.size)
    ours = act(x)
    fields = x[:, act.num_gates:]
    expected = torch.empty_like(ours)
    expected[:, act.scalar_channels] = torch.nn.functional.elu(fields[:, act.scalar_channels])
    expected[:, act.field_channels] = escnn_gate(enn.GeometricTensor(
        torch.cat([x[:, :act.num_gates], fields[:, act.field_channels]], 1), gated_in)).tensor
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)


def test_norm_nonlinearity_matches_escnn():
    gs = gspace("O3")
    G = gs.fibergroup
    ftype = enn.FieldType(gs, [G.irrep(0, 1), G.irrep(1, 1), G.irrep(0, 2)] * 2)
    act = EquivariantNonlinearity(ftype, "norm")
    from pyg_implicit.nn.fields import fiber_type

    reference = enn.NormNonLinearity(fiber_type(ftype), "n_relu", bias=True)
    with torch.no_grad():
        act.log_bias.uniform_(-1, 0.5)
        # escnn orders its biases by field size, then by position
        sizes = [r.size for r in ftype.representations]
        order = sorted(range(len(sizes)), key=lambda i: (sizes[i], i))
        reference.log_bias.copy_(act.log_bias[order].view(1, -1, 1, 1))
    x = torch.randn(16, ftype.size) * 2
    expected = reference(enn.GeometricTensor(x, fiber_type(ftype))).tensor
    torch.testing.assert_close(act(x), expected, rtol=1e-6, atol=1e-6)


def test_batch_norm_matches_escnn_iid_batch_norm():
    """Train-mode outputs, running statistics and eval-mode outputs of escnn's
    IIDBatchNorm1d, on a type with trivial, mixed and non-trivial fields."""
    ftype, _ = block_types("SO2z")
    from pyg_implicit.nn.fields import fiber_type

    ours = EquivariantBatchNorm(ftype)
    reference = enn.IIDBatchNorm1d(fiber_type(ftype))
    x = torch.randn(40, ftype.size) * 3 + 1
    for _ in range(2):
        torch.testing.assert_close(ours(x), reference(enn.GeometricTensor(
            x, fiber_type(ftype))).tensor, rtol=1e-5, atol=1e-5)
    ours.eval(), reference.eval()
    x2 = torch.randn(7, ftype.size)
    torch.testing.assert_close(ours(x2), reference(enn.GeometricTensor(
        x2, fiber_type(ftype))).tensor, rtol=1e-5, atol=1e-5)


def test_invariant_norms_match_escnn_norm_pool():
    ftype, _ = block_types("octa")
    from pyg_implicit.nn.fields import fiber_type

    x = torch.randn(9, ftype.size)
    norms = enn.NormPool(fiber_type(ftype))(enn.GeometricTensor(x, fiber_type(ftype))).tensor
    ours = InvariantMap(ftype, "norm")(x)
    trivial = torch.tensor([r.is_trivial() for r in ftype.representations])
    torch.testing.assert_close(ours[:, ~trivial], norms[:, ~trivial])
    torch.testing.assert_close(ours[:, trivial].abs(), norms[:, trivial])  # signed scalars


def test_linear_matches_escnn_expansion():
    ftype, _ = block_types("D3")
    lin = EquivariantLinear(ftype, ftype)
    W, b = lin.linear.expand_parameters()
    x = torch.randn(5, ftype.size)
    torch.testing.assert_close(lin(x), x @ W.t() + b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------- graph batches
def _two_graphs(d=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sizes = [9, 13]
    pos = torch.randn(sum(sizes), d, generator=gen, dtype=torch.float64)
    batch = torch.repeat_interleave(torch.arange(2), torch.tensor(sizes))
    return pos, batch, sizes


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_per_graph_norm_and_pooling_see_one_graph_at_a_time(train):
    ftype, _ = block_types("SO2z")
    _, batch, sizes = _two_graphs()
    x = features(ftype, n=sum(sizes))
    for module in (EquivariantLayerNorm(ftype, "graph"), EquivariantLayerNorm(ftype, "node"),
                   EquivariantGlobalPool(ftype, "mean"), EquivariantGlobalPool(ftype, "sum")):
        module = module.double().train(train)
        together = module(x, batch)
        apart = torch.cat([module(part) for part in x.split(sizes)])
        assert_rows_close(together, apart, 1e-12, type(module).__name__)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_model_on_a_batch_equals_graph_by_graph(train):
    gs = gspace("O3")
    model = ImplicitSteerableNet(gs, 2, 3, channels=2, num_layers=2, nonlinearity="gated",
                                 norm="layer", k=4, conv_kwargs=_small_conv()).double()
    model.train(train)
    pos, batch, sizes = _two_graphs()
    x = torch.randn(pos.shape[0], 2, dtype=torch.float64)
    together = model(x, pos, batch)
    apart = torch.cat([model(xp, pp) for xp, pp in zip(x.split(sizes), pos.split(sizes))])
    assert together.shape == (2, 3)
    assert_rows_close(together, apart, 1e-10, "batched model")


# ------------------------------------------------- convolutional block and model
def _small_conv(name=None):
    return {"hidden_channels": 2, "hidden_layers": 1, **(GROUPS[name][1] if name else {})}


def _random_graph_inputs(d, n=14, k=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randn(n, d, generator=gen, dtype=torch.float64)
    src = torch.randint(0, n, (n * k,), generator=gen)
    dst = torch.arange(n).repeat_interleave(k)
    return pos, torch.stack([src, dst])  # random neighbours, self loops and duplicates


@pytest.mark.parametrize("name", BLOCK_GROUPS)
def test_residual_block_is_equivariant(name):
    ftype, gs = block_types(name)
    out_type, _ = block_types(name, mixed=False)
    block = ResidualBlock(ftype, out_type, nonlinearity="gated", norm="batch",
                          **_small_conv(name)).double().eval()
    with torch.no_grad():
        block.norm(features(block.norm.in_type) * 2)  # eval with non-trivial statistics
    pos, edge_index = _random_graph_inputs(gs.dimensionality)
    x = features(ftype, n=pos.shape[0])
    err = check_equivariance(lambda x_, p_, e_, a_: block(x_, p_, e_), ftype, out_type, x,
                             pos, edge_index, num=6, exact=block.exact_elements)
    assert err < EXACT, err


@pytest.mark.parametrize("head", ["invariant", "equivariant"])
@pytest.mark.parametrize("name", BLOCK_GROUPS)
def test_generic_model_is_equivariant(name, head):
    gs = gspace(name)
    out_type = enn.FieldType(gs, [gs.basespace_action]) if head == "equivariant" else None
    model = ImplicitSteerableNet(gs, 2, 3, channels=2, num_layers=2, nonlinearity="gated",
                                 task="node", head=head, out_type=out_type,
                                 norm="layer", conv_kwargs=_small_conv(name)).double()
    pos, edge_index = _random_graph_inputs(gs.dimensionality)
    x = torch.randn(pos.shape[0], 2, dtype=torch.float64)
    trivial = enn.FieldType(gs, [gs.fibergroup.trivial_representation] * 2)
    out = out_type or enn.FieldType(gs, [gs.fibergroup.trivial_representation] * 3)
    err = check_equivariance(lambda x_, p_, e_, a_: model(x_, p_, edge_index=e_), trivial, out,
                             x, pos, edge_index, num=6, exact=model.exact_elements)
    assert err < EXACT, err


@pytest.mark.parametrize("name", ["C4", "SO2", "SO3"])
def test_generic_model_with_auto_nonlinearity(name):
    """The per-group default (pointwise on regular fields, Fourier on the group or the
    sphere): exact on the grids' symmetries, within FOURIER_BOUND elsewhere."""
    gs = gspace(name)
    model = ImplicitSteerableNet(gs, 0, 2, channels=2, num_layers=2, task="graph",
                                 conv_kwargs=_small_conv(name)).double().eval()
    pos, edge_index = _random_graph_inputs(gs.dimensionality)
    trivial = enn.FieldType(gs, [gs.fibergroup.trivial_representation])
    out = enn.FieldType(gs, [gs.fibergroup.trivial_representation] * 2)

    def f(x_, p_, e_, a_):
        return model(None, p_, edge_index=e_)

    x = torch.ones(pos.shape[0], 1, dtype=torch.float64)
    exact = model.exact_elements
    if exact is None or len(exact) > 0:
        assert check_equivariance(f, trivial, out, x, pos, edge_index, num=6,
                                  exact=exact) < EXACT
    assert check_equivariance(f, trivial, out, x, pos, edge_index, num=6,
                              exact=[]) < FOURIER_BOUND


def test_model_builds_its_graph_and_deep_copies():
    gs = gspace("SO2")
    model = ImplicitSteerableNet(gs, 1, 2, channels=[2, 3], graph="radius", r=0.8,
                                 conv_kwargs=_small_conv()).double()
    pos, batch, _ = _two_graphs(d=2)
    x = torch.randn(pos.shape[0], 1, dtype=torch.float64)
    edge_index = model.build_graph(pos, batch)
    assert (batch[edge_index[0]] == batch[edge_index[1]]).all()
    out = model(x, pos, batch)
    torch.testing.assert_close(out, model(x, pos, batch, edge_index))
    twin = copy.deepcopy(model)
    torch.testing.assert_close(twin(x, pos, batch), out)
    assert "ImplicitSteerableNet(group=SO(2)" in repr(model)


@pytest.mark.backend("fused_cpu")
@pytest.mark.parametrize("name,nonlinearity", [("SO2z", "gated"), ("C4", "auto"),
                                               ("SO2", "auto")],
                         ids=["gated", "pointwise", "fourier"])
def test_generic_model_under_torch_compile(name, nonlinearity):
    """``torch.compile(fullgraph=True)`` with a precomputed CSR matches eager, forward and
    gradients, with batch norm in training mode (gated nonlinearities, and escnn's
    pointwise and Fourier modules)."""
    from pyg_implicit.ops import build_csr

    torch._dynamo.reset()
    gs = gspace(name)
    model = ImplicitSteerableNet(gs, 2, 3, channels=2, num_layers=2, nonlinearity=nonlinearity,
                                 norm="batch", conv_kwargs={**_small_conv(),
                                                            "backend": "fused"}).double()
    pos, batch, sizes = _two_graphs(d=gs.dimensionality)
    _, edge_index = _random_graph_inputs(gs.dimensionality, n=pos.shape[0])
    edge_index = edge_index[:, batch[edge_index[0]] == batch[edge_index[1]]]
    csr = build_csr(edge_index, pos.shape[0], pos.shape[0])
    x = torch.randn(pos.shape[0], 2, dtype=torch.float64)

    def run(m, p):
        return m(x, p, batch, edge_index, num_graphs=2, csr=csr)

    pos_e, pos_c = pos.clone().requires_grad_(), pos.clone().requires_grad_()
    eager = run(model, pos_e)
    compiled = run(torch.compile(model, fullgraph=True), pos_c)
    assert_rows_close(compiled, eager, 1e-10, "compiled forward")
    (g_c,) = torch.autograd.grad(compiled.sum(), pos_c)
    (g_e,) = torch.autograd.grad(eager.sum(), pos_e)
    assert_rows_close(g_c, g_e, 1e-10, "compiled gradient")


# ------------------------------------------------------------------- bad input
def test_bad_input_names_the_argument():
    ftype, gs = block_types("SO2")
    other_type, _ = block_types("O2")
    act = EquivariantNonlinearity(ftype, "gated")
    with pytest.raises(ValueError, match=r"x must have shape \[num_nodes, %d\]"
                       % act.in_type.size):
        act(torch.randn(4, act.in_type.size + 1))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        act([1.0, 2.0])
    with pytest.raises(ValueError, match="x is a GeometricTensor of type"):
        from pyg_implicit.nn.fields import fiber_type
        act(enn.GeometricTensor(torch.randn(4, ftype.size), fiber_type(ftype)))
    with pytest.raises(ValueError, match="out_type is a field type of"):
        EquivariantLinear(ftype, other_type)
    with pytest.raises(ValueError, match="out_type is a field type of"):
        ResidualBlock(ftype, other_type)
    norm = EquivariantLayerNorm(ftype)
    with pytest.raises(ValueError, match=r"batch must be an integer vector \[num_nodes\]"):
        norm(torch.randn(5, ftype.size), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="batch must be"):
        EquivariantGlobalPool(ftype)(torch.randn(5, ftype.size), torch.zeros(5))
    with pytest.raises(ValueError, match="kind must be one of"):
        EquivariantNonlinearity(ftype, "cubic")
    with pytest.raises(ValueError, match="kind='pointwise' needs fields"):
        EquivariantNonlinearity(ftype, "pointwise")
    with pytest.raises(ValueError, match="kind='fourier' needs out_type"):
        EquivariantNonlinearity(ftype, "fourier")
    with pytest.raises(ValueError, match="more than one node"):
        EquivariantBatchNorm(ftype)(torch.randn(1, ftype.size))
    with pytest.raises(ValueError, match="no invariant"):
        ScalarEmbedding(2, enn.FieldType(gs, [gs.basespace_action]))
    model = ImplicitSteerableNet(gs, 2, 1, channels=1, num_layers=1, k=2,
                                 conv_kwargs=_small_conv())
    pos = torch.randn(6, 2)
    with pytest.raises(ValueError, match=r"x must have shape \[num_nodes, in_channels\]"):
        model(torch.randn(6, 3), pos)
    with pytest.raises(ValueError, match="x is required"):
        model(None, pos)
    with pytest.raises(ValueError, match="batch must be"):
        model(torch.randn(6, 2), pos, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="head='equivariant' needs out_type"):
        ImplicitSteerableNet(gs, 2, head="equivariant")
