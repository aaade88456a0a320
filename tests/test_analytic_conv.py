"""AnalyticPointConv (escnn's analytic kernels behind ImplicitPointConv's signature) and
the blocks' `kernel="standard"` option: escnn's own layer as the oracle, equivariance in
float64 on plain and bipartite graphs, bipartite == restricted plain, bad input."""
import pytest
import torch
from escnn import nn as enn

from helpers import gspace, random_graph
from pyg_implicit.nn import AnalyticPointConv, ImplicitSteerableNet, ResidualBlock
from pyg_implicit.nn.block import make_conv
from pyg_implicit.testing import check_equivariance

GROUPS_2D = ["C4", "D3", "SO2", "O2"]
GROUPS_3D = ["inv3d", "mir3d", "SO2z", "O2_conical", "O2_dihedral", "cylindrical", "SO3", "O3"]
EXACT = 1e-9
# escnn computes the SO(3)/O(3) bases from numerically solved Clebsch-Gordan
# coefficients (without py3nj): equivariant to ~1e-8 in float64 (measured <= 3e-8)
NUMERICAL = {"SO3": 1e-6, "O3": 1e-6}


def conv_types(name):
    gs = gspace(name)
    G = gs.fibergroup
    in_type = enn.FieldType(gs, [G.trivial_representation, gs.basespace_action])
    out_type = enn.FieldType(gs, [G.trivial_representation] * 2 + [gs.basespace_action] * 2)
    return in_type, out_type, gs


def inputs(in_type, num_src=30, num_dst=30, num_edges=120, seed=0):
    pos_src, pos_dst, edge_index = random_graph(num_src, num_dst, num_edges, seed,
                                                pos_dim=in_type.gspace.dimensionality)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(num_src, in_type.size, generator=gen, dtype=torch.float64)
    return x, pos_src, pos_dst, edge_index


@pytest.mark.parametrize("name", ["C4", "O2", "inv3d", "SO2z", "O3"])
def test_matches_escnn_point_conv(name):
    """escnn's own forward (through the wrapped layer, whose mean over the neighbours
    became a sum) and the explicit sum of escnn's sampled kernels, times the scale c."""
    in_type, out_type, _ = conv_types(name)
    conv = AnalyticPointConv(in_type, out_type, width=1.5, num_neighbors=4.0).double()
    with torch.no_grad():
        conv.conv.bias.normal_()
    x, pos, _, edge_index = inputs(in_type)
    src, dst = edge_index
    for mode in (True, False):
        conv.train(mode)
        bias = conv.conv.expand_bias()
        ours = conv(x, pos, edge_index) - bias
        theirs = conv.conv(enn.GeometricTensor(x, in_type, coords=pos), edge_index).tensor
        torch.testing.assert_close(ours, (theirs - bias) * conv.scale, rtol=1e-12, atol=1e-12)
        K = conv.conv.expand_filter(pos[src] - pos[dst])  # [E, C_out, C_in]
        summed = torch.zeros_like(ours).index_add_(0, dst, torch.einsum("eoi,ei->eo", K, x[src]))
        torch.testing.assert_close(ours, summed * conv.scale, rtol=1e-12, atol=1e-12)


def test_own_basis_buffers():
    """escnn shares kernel bases between layers over the same types: converting one
    layer must leave another (and escnn's own layers) untouched."""
    in_type, out_type, _ = conv_types("SO2z")
    a, b = AnalyticPointConv(in_type, out_type), AnalyticPointConv(in_type, out_type)
    escnn_conv = enn.R3PointConv(in_type, out_type, width=1.0, n_rings=3)
    before = [t.clone() for t in b.buffers()]
    a.double()
    assert all(t.dtype == torch.float32 for t in b.buffers() if t.is_floating_point())
    assert all(torch.equal(t, u) for t, u in zip(b.buffers(), before))
    x, pos, _, edge_index = inputs(in_type)
    b(x.float(), pos.float(), edge_index)
    escnn_conv(enn.GeometricTensor(x.float(), in_type, coords=pos.float()), edge_index)
    a(x, pos, edge_index)


@pytest.mark.parametrize("bipartite", [False, True], ids=["plain", "bipartite"])
@pytest.mark.parametrize("name", GROUPS_2D + GROUPS_3D)
def test_equivariant(name, bipartite):
    in_type, out_type, _ = conv_types(name)
    conv = AnalyticPointConv(in_type, out_type, width=1.5).double()
    x, pos_src, pos_dst, edge_index = inputs(in_type, 30, 12 if bipartite else 30)
    if bipartite:  # the targets' positions move with the group too
        def layer(x_, p_, e_, a_):
            n = pos_src.shape[0]
            return conv((x_[:n], None), (p_[:n], p_[n:]), e_)
        x = torch.cat([x, torch.zeros(pos_dst.shape[0], in_type.size, dtype=x.dtype)])
        pos = torch.cat([pos_src, pos_dst])
    else:
        def layer(x_, p_, e_, a_):
            return conv(x_, p_, e_)
        pos = pos_src
    err = check_equivariance(layer, in_type, out_type, x, pos, edge_index, num=6)
    assert err < NUMERICAL.get(name, EXACT), err


def test_bipartite_equals_plain_restricted_to_the_targets():
    in_type, out_type, _ = conv_types("SO2z")
    conv = AnalyticPointConv(in_type, out_type).double()
    x, pos, _, edge_index = inputs(in_type, 40, 40, 200)
    targets = torch.tensor([3, 17, 5, 39, 0])
    keep = torch.isin(edge_index[1], targets)
    remap = torch.full((40,), -1, dtype=torch.long)
    remap[targets] = torch.arange(len(targets))
    bip_edges = torch.stack([edge_index[0, keep], remap[edge_index[1, keep]]])
    out = conv((x, None), (pos, pos[targets]), bip_edges.to(torch.int32))
    torch.testing.assert_close(out, conv(x, pos, edge_index)[targets], rtol=1e-12, atol=1e-12)


def test_initial_output_variance_is_about_one():
    """The scale c: unit-variance features summed over num_neighbors edges within the
    support give outputs of about unit variance (as ImplicitPointConv's)."""
    in_type, out_type, _ = conv_types("O3")
    n, k = 400, 16
    conv = AnalyticPointConv(in_type, out_type, width=1.0, num_neighbors=k).double()
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(n, 3, generator=gen, dtype=torch.float64) * 0.3
    src = torch.randint(0, n, (n * k,), generator=gen)
    edge_index = torch.stack([src, torch.arange(n).repeat_interleave(k)])
    far = (pos[edge_index[0]] - pos[edge_index[1]]).norm(dim=1) > 1.0
    edge_index = edge_index[:, ~far]
    y = conv(torch.randn(n, in_type.size, generator=gen, dtype=torch.float64), pos, edge_index)
    assert 0.2 < float(y.detach().pow(2).mean()) * k / (edge_index.shape[1] / n) < 5.0


def test_empty_graph_isolated_nodes_and_gradients():
    in_type, out_type, _ = conv_types("O2")
    conv = AnalyticPointConv(in_type, out_type).double()
    with torch.no_grad():
        conv.conv.bias.normal_()
    x, pos, _, _ = inputs(in_type, 6, 6)
    empty = conv(x, pos, torch.empty(2, 0, dtype=torch.long))
    torch.testing.assert_close(empty, conv.conv.expand_bias().expand(6, -1))
    edge_index = torch.tensor([[0, 1, 1, 4], [1, 0, 0, 4]])  # duplicates, a self loop
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x_: conv(x_, pos, edge_index), (x,))


def test_bad_input_names_the_argument():
    in_type, out_type, _ = conv_types("SO2z")
    conv = AnalyticPointConv(in_type, out_type).double()
    x, pos, _, edge_index = inputs(in_type)
    with pytest.raises(ValueError, match="edge_attr"):
        conv(x, pos, edge_index, torch.zeros(edge_index.shape[1], 1, dtype=x.dtype))
    with pytest.raises(ValueError, match="x must have shape"):
        conv(x[:, :2], pos, edge_index)
    with pytest.raises(ValueError, match=r"edge_index\[0\]"):
        conv(x, pos, edge_index + 100)
    with pytest.raises(TypeError, match="dtype"):
        conv(x.float(), pos.float(), edge_index)
    with pytest.raises(ValueError, match="width"):
        AnalyticPointConv(in_type, out_type, width=0.0)
    with pytest.raises(ValueError, match="edge_attr_type"):
        make_conv("standard", in_type, out_type, [in_type.fibergroup.trivial_representation])
    with pytest.raises(ValueError, match="kernel must be one of"):
        make_conv("analytic", in_type, out_type)


@pytest.mark.parametrize("kernel", ["implicit", "standard"])
def test_bipartite_residual_block(kernel):
    """A downsampling block: bipartite, batch norm over the targets, no skip; with the
    skip it needs the targets' features."""
    in_type, _, gs = conv_types("O2_conical")
    out_type = enn.FieldType(gs, [gs.fibergroup.trivial_representation, gs.basespace_action])
    conv = {"hidden_channels": 4, "hidden_layers": 1, "kernel_nonlinearity": "gated"} \
        if kernel == "implicit" else {}
    block = ResidualBlock(in_type, out_type, nonlinearity="gated", residual=False,
                          kernel=kernel, **conv).double().eval()
    x, pos_src, pos_dst, edge_index = inputs(in_type, 30, 10, 80)
    y = block((x, None), (pos_src, pos_dst), edge_index)
    assert y.shape == (10, out_type.size)
    x_all = torch.cat([x, torch.zeros(10, in_type.size, dtype=x.dtype)])

    def layer(x_, p_, e_, a_):
        return block((x_[:30], None), (p_[:30], p_[30:]), e_)
    err = check_equivariance(layer, in_type, out_type, x_all, torch.cat([pos_src, pos_dst]),
                             edge_index, num=4, exact=block.exact_elements)
    assert err < EXACT, err
    skip = ResidualBlock(in_type, in_type, nonlinearity="gated", kernel=kernel, **conv).double()
    with pytest.raises(ValueError, match="x_dst"):
        skip((x, None), (pos_src, pos_dst), edge_index)
    assert f"kernel={kernel}" in repr(block)


def test_generic_model_with_standard_kernels_is_invariant():
    gs = gspace("O3")
    model = ImplicitSteerableNet(gs, 1, 3, channels=2, num_layers=2, nonlinearity="gated",
                                 kernel="standard", conv_kwargs={"width": 2.0}).double().eval()
    pos, _, edge_index = random_graph(20, 20, 100, seed=3)
    x = torch.randn(20, 1, dtype=torch.float64)
    trivial = enn.FieldType(gs, [gs.fibergroup.trivial_representation])
    out = enn.FieldType(gs, [gs.fibergroup.trivial_representation] * 3)
    err = check_equivariance(lambda x_, p_, e_, a_: model(x_, p_, edge_index=e_), trivial, out,
                             x, pos, edge_index, num=4)
    assert err < NUMERICAL["O3"], err


def test_buffer_order_does_not_follow_the_hash_seed():
    """DDP matches buffers between processes by position: the order (and the names that
    deduplication keeps) must not depend on PYTHONHASHSEED, which escnn's sets follow."""
    import os
    import subprocess
    import sys

    code = ("from escnn import gspaces, nn as enn\n"
            "from pyg_implicit.nn import AnalyticPointConv\n"
            "gs = gspaces.rot2dOnR3()\n"
            "ti = enn.FieldType(gs, [gs.trivial_repr, gs.basespace_action] * 2)\n"
            "to = enn.FieldType(gs, [gs.trivial_repr] * 2 + [gs.basespace_action] * 2)\n"
            "c = AnalyticPointConv(ti, to)\n"
            "print([(n, tuple(b.shape)) for n, b in c.named_buffers()])\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    outs = set()
    for seed in ("1", "3"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=repo)
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.add(r.stdout)
    assert len(outs) == 1
