"""ImplicitPointConv: equivariance, backends agree, PyG conventions, bad input."""
import pytest
import torch
from escnn import nn as enn

from helpers import GROUPS, field_types, gspace, random_graph
from pyg_implicit import ImplicitPointConv
from pyg_implicit.testing import check_equivariance


def _fused_available():
    from pyg_implicit import ops
    return ops.is_available()


needs_fused = pytest.mark.skipif(not _fused_available(),
                                 reason="compiled extension pyg_implicit._C not built")
FAST_BACKENDS = ["factorized", pytest.param("fused", marks=needs_fused)]


def make_conv(name, mixed=True, attrs=True, backend="reference", **kwargs):
    in_type, out_type, attr_reps = field_types(name, mixed)
    options = {"hidden_channels": 3, **GROUPS[name][1], **kwargs}
    conv = ImplicitPointConv(in_type, out_type, attr_reps if attrs else None,
                             backend=backend, **options).double()
    with torch.no_grad():  # non-zero bias and width away from its init
        if conv.bias is not None:
            conv.bias.uniform_(-1, 1)
        conv.kernel.log_width.add_(0.3)
    return conv, attr_reps if attrs else None


def graph_inputs(conv, num_nodes=11, num_edges=40, seed=0):
    d = conv.kernel.pos_dim
    pos, _, edge_index = random_graph(num_nodes, num_nodes, num_edges, seed, pos_dim=d)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(num_nodes, conv.in_channels, generator=gen, dtype=torch.float64)
    attr = torch.randn(num_edges, conv.kernel.attr_dim, generator=gen, dtype=torch.float64) \
        if conv.kernel.attr_dim else None
    return x, pos, edge_index, attr


EQUIVARIANCE_CASES = [(name, mixed, attrs) for name, mixed, attrs in [
    ("C4", True, True), ("D3", True, False), ("flip2d", False, True), ("SO2", True, True),
    ("O2", False, False), ("inv3d", True, True), ("mir3d", True, False),
    ("octa", True, True), ("ico", False, True), ("SO2z", True, True),
    ("O2_conical", True, False), ("O2_dihedral", False, True),
    ("full_cylindrical", True, True), ("SO3", False, True), ("O3", True, True)]]


def assert_layer_equivariant(name, mixed, attrs, backend, num):
    conv, attr_reps = make_conv(name, mixed, attrs, backend=backend)
    x, pos, edge_index, attr = graph_inputs(conv)
    err = check_equivariance(conv, conv.in_type, conv.out_type, x, pos, edge_index, attr,
                             attr_reps, elements="random", num=num)
    assert err <= 1e-9


@pytest.mark.parametrize("name,mixed,attrs", EQUIVARIANCE_CASES)
def test_layer_equivariance(name, mixed, attrs):
    assert_layer_equivariant(name, mixed, attrs, "factorized", num=5)


@needs_fused
@pytest.mark.parametrize("name,mixed,attrs", [c for c in EQUIVARIANCE_CASES if c[0] in
                                              ("C4", "SO2", "inv3d", "octa", "SO2z", "O3",
                                               "full_cylindrical", "flip2d")])
def test_fused_layer_equivariance(name, mixed, attrs):
    assert_layer_equivariant(name, mixed, attrs, "fused", num=3)


def test_equivariance_check_detects_non_equivariant_layer():
    conv, attr_reps = make_conv("C4")
    x, pos, edge_index, attr = graph_inputs(conv)
    broken = lambda *a: conv(*a) + a[1][a[2][1] % a[1].shape[0]][:, :1].sum() * 0 + \
        a[1][:, :1].repeat(1, conv.out_channels)  # noqa: E731  (adds raw coordinates)
    err = check_equivariance(broken, conv.in_type, conv.out_type, x, pos, edge_index, attr,
                             attr_reps, exact=conv.kernel.exact_elements)
    assert err > 1e-3




def _outputs_and_grads(conv, backend, x, pos, edge_index, attr):
    conv.backend = backend
    inputs = [x, pos] + ([attr] if attr is not None else [])
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    params = list(conv.parameters())
    out = conv(inputs[0], inputs[1], edge_index, inputs[2] if attr is not None else None)
    grads = torch.autograd.grad(out.pow(2).sum() + out.sum(), inputs + params,
                                allow_unused=True)
    return out, grads


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("name,mixed", [("C4", True), ("SO2", True), ("O3", True),
                                        ("octa", True), ("flip2d", False), ("SO2z", True),
                                        ("SO3", False)])
def test_backends_match_reference(name, mixed, backend):
    """factorized/fused == reference, forward and every gradient, float64."""
    conv, _ = make_conv(name, mixed)
    x, pos, edge_index, attr = graph_inputs(conv, seed=3)
    o1, g1 = _outputs_and_grads(conv, "reference", x, pos, edge_index, attr)
    o2, g2 = _outputs_and_grads(conv, backend, x, pos, edge_index, attr)
    assert _rel(o2, o1) <= 1e-10
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            assert _rel(b, a) <= 1e-10


@needs_fused
@pytest.mark.parametrize("hidden_layers", [0, 1, 3])
def test_fused_float32_and_depths(hidden_layers):
    """float32 fused layer against the float64 reference (1e-5), any MLP depth."""
    conv, _ = make_conv("O2", hidden_layers=hidden_layers)
    x, pos, edge_index, attr = graph_inputs(conv, num_edges=200, seed=4)
    o64, g64 = _outputs_and_grads(conv, "reference", x, pos, edge_index, attr)
    conv32 = conv.float()
    o32, g32 = _outputs_and_grads(conv32, "fused", x.float(), pos.float(), edge_index,
                                  attr.float())
    assert _rel(o32.double(), o64) <= 1e-5
    for a, b in zip(g64, g32):
        if a is not None:
            assert _rel(b.double(), a) <= 1e-5


@needs_fused
def test_fused_layer_under_torch_compile():
    from pyg_implicit.ops import build_csr
    conv, _ = make_conv("SO2", backend="fused")
    x, pos, edge_index, attr = graph_inputs(conv, seed=6)
    csr = build_csr(edge_index, x.shape[0], x.shape[0])

    def model(x, pos, attr):
        return torch.tanh(conv(x, pos, edge_index, attr, csr=csr)).sum(-1)

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x, pos, attr)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    eager = model(x, pos, attr)
    pos_c = pos.clone().requires_grad_()
    compiled = torch.compile(model, fullgraph=True)(x, pos_c, attr)
    assert _rel(compiled, eager) <= 1e-12
    (grad,) = torch.autograd.grad(compiled.sum(), pos_c)
    pos_e = pos.clone().requires_grad_()
    (grad_e,) = torch.autograd.grad(model(x, pos_e, attr).sum(), pos_e)
    assert _rel(grad, grad_e) <= 1e-10


def test_edge_vector_convention_is_source_minus_target():
    # a layer with one scalar in/out field sees x_e = pos_src[j] - pos_dst[i]; check by
    # comparing with the kernel evaluated explicitly
    conv, _ = make_conv("C4", attrs=False)
    x, pos, edge_index, _ = graph_inputs(conv, num_edges=1)
    j, i = edge_index[:, 0]
    K = conv.kernel(pos[j:j + 1] - pos[i:i + 1])[0]
    out = conv(x, pos, edge_index)
    expected = K @ x[j]
    expected = expected.index_add(0, conv.bias_index, conv.bias)
    assert torch.allclose(out[i], expected, rtol=1e-12, atol=1e-12)
    K_wrong = conv.kernel(pos[i:i + 1] - pos[j:j + 1])[0]
    assert not torch.allclose(K_wrong @ x[j], K @ x[j])


def test_bias_only_on_trivial_fields():
    conv, _ = make_conv("SO2", attrs=False)
    assert conv.bias is not None and conv.bias.numel() == 1  # out = [std, triv]
    x, pos, edge_index, _ = graph_inputs(conv)
    empty = edge_index[:, :0]
    out = conv(x, pos, empty)
    assert torch.equal(out[:, :2], torch.zeros_like(out[:, :2]))
    assert torch.allclose(out[:, 2], conv.bias.expand(out.shape[0]))


@pytest.mark.parametrize("backend", ["reference", *FAST_BACKENDS])
def test_bipartite(backend):
    conv, _ = make_conv("O3", backend=backend)
    pos_src, pos_dst, edge_index = random_graph(7, 4, 25, seed=5)
    x_src = torch.randn(7, conv.in_channels, dtype=torch.float64)
    attr = torch.randn(25, conv.kernel.attr_dim, dtype=torch.float64)
    out = conv((x_src, None), (pos_src, pos_dst), edge_index, attr)
    assert out.shape == (4, conv.out_channels)
    # same result as a non-bipartite graph holding both node sets
    pos = torch.cat([pos_src, pos_dst])
    x = torch.cat([x_src, torch.zeros(4, conv.in_channels, dtype=torch.float64)])
    shifted = torch.stack([edge_index[0], edge_index[1] + 7])
    full = conv(x, pos, shifted, attr)
    assert torch.allclose(full[7:], out, rtol=1e-12, atol=1e-12)


def test_batch_of_graphs_equals_separate_graphs():
    from torch_geometric.data import Batch, Data
    conv, _ = make_conv("D3", attrs=False, backend="factorized")
    graphs = []
    for seed in range(3):
        x, pos, edge_index, _ = graph_inputs(conv, num_nodes=5 + seed, num_edges=12, seed=seed)
        graphs.append(Data(x=x, pos=pos, edge_index=edge_index))
    batch = Batch.from_data_list(graphs)
    out = conv(batch.x, batch.pos, batch.edge_index)
    separate = torch.cat([conv(g.x, g.pos, g.edge_index) for g in graphs])
    assert torch.allclose(out, separate, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", *FAST_BACKENDS])
def test_empty_graph_and_isolated_nodes(backend):
    conv, _ = make_conv("C4", attrs=True, backend=backend)
    x, pos, edge_index, attr = graph_inputs(conv)
    out = conv(x, pos, edge_index[:, :0], attr[:0])
    assert out.shape == (x.shape[0], conv.out_channels)
    bias_only = torch.zeros_like(out).index_add(1, conv.bias_index, conv.bias.expand(out.shape[0], -1))
    assert torch.equal(out, bias_only)
    no_nodes = conv(x[:0], pos[:0], edge_index[:, :0], attr[:0])
    assert no_nodes.shape == (0, conv.out_channels)
    out = conv(x, pos, edge_index, attr)
    isolated = torch.ones(x.shape[0], dtype=torch.bool)
    isolated[edge_index[1]] = False
    assert torch.equal(out[isolated], bias_only[isolated])
    out.sum().backward()
    for name, p in conv.named_parameters():
        assert p.grad is not None, name


def test_gradients_reach_every_parameter():
    conv, _ = make_conv("O3", backend="factorized")
    x, pos, edge_index, attr = graph_inputs(conv)
    conv(x, pos, edge_index, attr).pow(2).sum().backward()
    for name, p in conv.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_geometric_tensor_input_and_repr():
    conv, _ = make_conv("C4", attrs=False)
    x, pos, edge_index, _ = graph_inputs(conv)
    out = conv(enn.GeometricTensor(x, conv.in_type, coords=pos), pos, edge_index)
    assert torch.allclose(out, conv(x, pos, edge_index))
    text = repr(conv)
    assert "ImplicitPointConv" in text and "C4" in text and "reference" in text
    conv.reset_parameters()
    assert torch.equal(conv.bias, torch.zeros_like(conv.bias))


class TestBadInput:
    conv, _ = make_conv("C4", attrs=True)
    x, pos, edge_index, attr = graph_inputs(conv)

    def call(self, **kw):
        args = dict(x=self.x, pos=self.pos, edge_index=self.edge_index, edge_attr=self.attr)
        args.update(kw)
        return self.conv(args["x"], args["pos"], args["edge_index"], args["edge_attr"])

    def test_x_width(self):
        with pytest.raises(ValueError, match="x must have shape"):
            self.call(x=self.x[:, :-1])

    def test_pos_dim(self):
        with pytest.raises(ValueError, match="pos"):
            self.call(pos=torch.randn(self.pos.shape[0], 3, dtype=torch.float64))

    def test_edge_index_shape(self):
        with pytest.raises(ValueError, match="edge_index must have shape"):
            self.call(edge_index=self.edge_index.t())

    def test_edge_index_dtype(self):
        with pytest.raises(TypeError, match="edge_index must be an int32 or int64"):
            self.call(edge_index=self.edge_index.double())

    def test_edge_index_range(self):
        bad = self.edge_index.clone()
        bad[0, 3] = self.x.shape[0]
        with pytest.raises(ValueError, match=r"edge_index\[0\]"):
            self.call(edge_index=bad)
        bad = self.edge_index.clone()
        bad[1, 2] = -1
        with pytest.raises(ValueError, match="negative"):
            self.call(edge_index=bad)

    def test_edge_attr(self):
        with pytest.raises(ValueError, match="edge_attr must have shape"):
            self.call(edge_attr=self.attr[:, :-1])
        with pytest.raises(ValueError, match="edge_attr is required"):
            self.call(edge_attr=None)

    def test_mixed_dtypes(self):
        with pytest.raises(TypeError, match="pos has dtype torch.float32"):
            self.call(pos=self.pos.float())

    def test_wrong_device(self):
        with pytest.raises(ValueError, match="meta"):
            self.call(x=self.x.to("meta"))
