"""ImplicitR2Conv / ImplicitR3Conv: implicit kernels on regular grids."""
import math

import pytest
import torch
from escnn import gspaces
from escnn import nn as enn

from pyg_implicit import ImplicitR2Conv, ImplicitR3Conv


def _types(gs):
    G = gs.fibergroup
    extra = [G.regular_representation] if not G.continuous and G.order() <= 8 else []
    tin = enn.FieldType(gs, [gs.trivial_repr, gs.basespace_action, *extra])
    tout = enn.FieldType(gs, [gs.basespace_action, gs.trivial_repr, *extra])
    return tin, tout


def _conv(gs, attrs=False, **kwargs):
    tin, tout = _types(gs)
    cls = ImplicitR2Conv if gs.dimensionality == 2 else ImplicitR3Conv
    attr_type = [gs.trivial_repr, gs.basespace_action] if attrs else None
    options = {"kernel_size": 5 if gs.dimensionality == 2 else 3, "hidden_channels": 3,
               **kwargs}
    conv = cls(tin, tout, padding=options["kernel_size"] // 2, attr_type=attr_type,
               **options).double()
    with torch.no_grad():
        if conv.bias is not None:
            conv.bias.uniform_(-1, 1)
    return conv


def _input(conv, batch=2, size=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    d = conv.dimension
    size = size or (13 if d == 2 else 7)
    x = torch.randn(batch, conv.in_type.size, *(size,) * d, generator=gen, dtype=torch.float64)
    a = torch.randn(batch, conv.kernel.attr_dim, generator=gen, dtype=torch.float64) \
        if conv.kernel.attr_dim else None
    return enn.GeometricTensor(x, conv.in_type), a


def _attr_action(conv, g, a):
    if a is None:
        return None
    reps = conv.kernel.attr_reps
    R = torch.block_diag(*[torch.as_tensor(r(g), dtype=a.dtype) for r in reps])
    return a @ R.t()


def equivariance_error(conv, x, a, elements):
    y = conv(x, a)
    worst = 0.0
    for g in elements:
        lhs = conv(x.transform(g), _attr_action(conv, g, a)).tensor
        rhs = y.transform(g).tensor
        worst = max(worst, float((lhs - rhs).abs().max() / rhs.abs().max()))
    return worst


GRID_GROUPS = {
    "C4": lambda: gspaces.rot2dOnR2(4),
    "D4": lambda: gspaces.flipRot2dOnR2(4),
    "C2": lambda: gspaces.rot2dOnR2(2),
    "octa": lambda: gspaces.octaOnR3(),
    "full_octa": lambda: gspaces.fullOctaOnR3(),
}


@pytest.mark.parametrize("nonlinearity", ["auto", "gated"])
@pytest.mark.parametrize("attrs", [False, True])
@pytest.mark.parametrize("name", list(GRID_GROUPS))
def test_exact_equivariance_to_the_grid_symmetries(name, attrs, nonlinearity):
    gs = GRID_GROUPS[name]()
    conv = _conv(gs, attrs, nonlinearity=nonlinearity,
                 **({"hidden_channels": 1} if "octa" in name else {}))
    x, a = _input(conv)
    elements = list(gs.fibergroup.elements)
    elements = elements if len(elements) <= 16 else elements[::3]
    for mode in (True, False):  # training (filter rebuilt) and eval (cached filter)
        conv.train(mode)
        assert equivariance_error(conv, x, a, elements) <= 1e-9


@pytest.mark.parametrize("nonlinearity", ["auto", "gated"])
def test_continuous_group_discretisation_error(nonlinearity):
    """SO(2) on a grid: exact for rotations by multiples of 90 degrees; for other
    angles (escnn interpolates the rotated input) the relative error on a smooth
    input, inside the disc the rotation keeps, is small and bounded. Measured
    (kernel 7, hidden 16 channels, seeds 0-2, angles 0.3, 0.7, 2.0 rad): at most
    1.7e-3 (Fourier) and 3.4e-3 (gated); asserted below 7e-3 (2x)."""
    gs = gspaces.rot2dOnR2(-1)
    G = gs.fibergroup
    torch.manual_seed(0)
    conv = _conv(gs, kernel_size=7, nonlinearity=nonlinearity, hidden_channels=16).eval()
    n = 33
    c = (n - 1) / 2
    coords = torch.arange(n, dtype=torch.float64) - c
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    blobs = sum(torch.exp(-((xx - u) ** 2 + (yy - v) ** 2) / 18)
                for u, v in [(3, -2), (-4, 5), (1, 1)])
    f = blobs * torch.exp(-(xx ** 2 + yy ** 2) / 150)
    x = enn.GeometricTensor(torch.stack([f, 0.5 * f, -f])[None], conv.in_type)
    y = conv(x)
    disc = xx ** 2 + yy ** 2 < (c - 4) ** 2
    for angle, bound in ((math.pi / 2, 1e-9), (math.pi, 1e-9), (0.3, 7e-3), (0.7, 7e-3),
                         (2.0, 7e-3)):
        g = G.element(angle)
        lhs, rhs = conv(x.transform(g)).tensor[..., disc], y.transform(g).tensor[..., disc]
        err = float((lhs - rhs).abs().max() / rhs.abs().max())
        assert err <= bound, (angle, err)


def test_batch_of_attributes_equals_samples_one_by_one():
    conv = _conv(gspaces.rot2dOnR2(4), attrs=True)
    x, a = _input(conv, batch=3)
    assert not torch.allclose(a[0], a[1])
    out = conv(x, a).tensor
    for b in range(3):
        single = conv(enn.GeometricTensor(x.tensor[b:b + 1], conv.in_type), a[b:b + 1]).tensor
        assert torch.allclose(out[b:b + 1], single, rtol=1e-12, atol=1e-12)
    # different attributes give different filters
    f = conv.filter(a)
    assert not torch.allclose(f[0], f[1])


def test_gradients_reach_every_parameter():
    conv = _conv(gspaces.flipRot2dOnR2(4), attrs=True, nonlinearity="gated").train()
    x, a = _input(conv)
    conv(x, a).tensor.square().sum().backward()
    for name, p in conv.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_filter_cache_in_eval_mode():
    conv = _conv(gspaces.rot2dOnR2(4))
    x, _ = _input(conv)
    train_out = conv.train()(x).tensor
    conv.eval()
    assert torch.allclose(conv(x).tensor, train_out, rtol=1e-13, atol=1e-13)
    assert conv._filter_cache is not None
    with torch.no_grad():
        conv.kernel.log_width.add_(0.2)
    conv.eval()  # rebuilt from the parameters (escnn's R2Conv semantics)
    assert not torch.allclose(conv(x).tensor, train_out)
    conv.train()
    assert conv._filter_cache is None


def test_escnn_interop_in_a_sequential_module():
    gs = gspaces.rot2dOnR2(4)
    tin, tout = _types(gs)
    hidden = enn.FieldType(gs, [gs.regular_repr] * 2)
    model = enn.SequentialModule(
        ImplicitR2Conv(tin, hidden, kernel_size=3, padding=1, hidden_channels=2),
        enn.ReLU(hidden),
        enn.R2Conv(hidden, tout, kernel_size=3, padding=1),
    ).double().eval()
    x = enn.GeometricTensor(torch.randn(2, tin.size, 11, 11, dtype=torch.float64), tin)
    y = model(x)
    assert isinstance(y, enn.GeometricTensor) and y.type == tout
    assert y.shape == model.evaluate_output_shape(x.shape)
    for g in gs.fibergroup.elements:  # escnn's R2Conv samples its basis in float32
        assert torch.allclose(model(x.transform(g)).tensor, y.transform(g).tensor,
                              atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride,dilation,padding,mode", [(1, 1, 0, "zeros"),
                                                          (2, 1, 2, "zeros"),
                                                          (1, 2, 4, "circular"),
                                                          (2, 1, 2, "reflect")])
def test_output_shape_and_padding_modes(stride, dilation, padding, mode):
    gs = gspaces.rot2dOnR2(4)
    tin, tout = _types(gs)
    conv = ImplicitR2Conv(tin, tout, kernel_size=5, padding=padding, stride=stride,
                          dilation=dilation, padding_mode=mode, hidden_channels=2)
    x = enn.GeometricTensor(torch.randn(2, tin.size, 16, 15), tin)
    y = conv(x)
    assert y.shape == conv.evaluate_output_shape(x.shape)
    if mode == "circular" and stride == 1:  # C4 on a periodic grid: exact rotations
        g = gs.fibergroup.elements[1]
        x = enn.GeometricTensor(torch.randn(1, tin.size, 16, 16, dtype=torch.float64), tin)
        conv = conv.double()
        assert torch.allclose(conv(x.transform(g)).tensor, conv(x).transform(g).tensor,
                              atol=1e-10)


def test_bad_input():
    gs = gspaces.rot2dOnR2(4)
    tin, tout = _types(gs)
    with pytest.raises(ValueError, match="R\\^2"):
        ImplicitR3Conv(tin, tout, kernel_size=3)
    with pytest.raises(ValueError, match="groups"):
        ImplicitR2Conv(tin, tout, kernel_size=3, groups=2)
    with pytest.raises(ValueError, match="kernel_size"):
        ImplicitR2Conv(tin, tout, kernel_size=0)
    with pytest.raises(ValueError, match="padding_mode"):
        ImplicitR2Conv(tin, tout, kernel_size=3, padding_mode="mirror")
    conv = ImplicitR2Conv(tin, tout, kernel_size=3)
    x = torch.randn(1, tin.size, 8, 8)
    with pytest.raises(TypeError, match="GeometricTensor"):
        conv(x)
    with pytest.raises(ValueError, match="attr given"):
        conv(enn.GeometricTensor(x, tin), torch.randn(1, 3))
    with pytest.raises(TypeError, match="dtype"):
        conv(enn.GeometricTensor(x.double(), tin))
    conv_a = ImplicitR2Conv(tin, tout, kernel_size=3, attr_type=[gs.trivial_repr])
    with pytest.raises(ValueError, match="attr must be"):
        conv_a(enn.GeometricTensor(x, tin))
    with pytest.raises(ValueError, match="attr must be"):
        conv_a(enn.GeometricTensor(x, tin), torch.randn(2, 1))
