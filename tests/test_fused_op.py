"""Tests of the fused C++ point convolution (torch.ops.pyg_implicit.*).

The oracle is the materialised reference of pyg_implicit.plan:
out_i = sum_{e=(j->i)} edge_kernels(plan, pos_src[j] - pos_dst[i], a_e) @ x_src[j].
"""
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyg_implicit.plan import ACTIVATIONS, KernelPlan, edge_kernels
from pyg_implicit.ops import CSRGraph, build_csr, fused_point_conv, is_available

pytestmark = pytest.mark.skipif(
    not is_available(), reason="pyg_implicit._C (compiled extension) not built")

OPS = torch.ops.pyg_implicit if is_available() else None
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def make_plan(dtype=torch.float64, d=3, attr=0, c_in=3, c_out=4, seed=0,
              layers=(("fourier", "elu", 3, 4, 7, 4), ("pointwise", "silu", 10),
                      ("fourier", "tanh", 2, 3, 5, 2)),
              width=0.7, requires_grad=False):
    """A random plan.  A Fourier layer is (kind, act, fields M, F, G, F'),
    a pointwise one (kind, act, H')."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
                                 * scale).to(dtype)
    weights, biases, samplers, projectors, acts = [], [], [], [], []
    h = d + attr
    for spec in layers:
        if spec[0] == "fourier":
            _, act, M, F, G, Fp = spec
            pre = M * F
            weights.append(rnd(pre, h, scale=h ** -0.5))
            samplers.append(rnd(G, F, scale=F ** -0.5))
            projectors.append(rnd(Fp, G, scale=G ** -0.5))
            h = M * Fp
        else:
            _, act, pre = spec
            weights.append(rnd(pre, h, scale=h ** -0.5))
            samplers.append(torch.empty(0, dtype=dtype))
            projectors.append(torch.empty(0, dtype=dtype))
            h = pre
        biases.append(rnd(weights[-1].shape[0], scale=0.5))
        acts.append(ACTIVATIONS[act])
    Wt = rnd(c_out, (h + 1) * c_in, scale=((h + 1) * c_in) ** -0.5)
    plan = KernelPlan(weights, biases, samplers, projectors, acts,
                      torch.tensor(width, dtype=dtype), Wt, d, attr, c_in, c_out)
    if requires_grad:
        for t in plan.tensors():
            t.requires_grad_(True)
    return plan


def reference_conv(x_src, pos_src, pos_dst, edge_attr, edge_index, plan):
    j, i = edge_index[0].long(), edge_index[1].long()
    if j.numel() == 0:  # plan.apply_activation cannot reshape E = 0 batches
        return x_src.new_zeros(pos_dst.shape[0], plan.out_channels)
    vec = pos_src[j] - pos_dst[i]
    K = edge_kernels(plan, vec, edge_attr)  # [E, C_out, C_in]
    msg = torch.bmm(K, x_src[j].unsqueeze(-1)).squeeze(-1)
    out = x_src.new_zeros(pos_dst.shape[0], plan.out_channels)
    return out.index_add(0, i, msg)


def rel_err(a, b):
    if a is None or b is None:
        return 0.0 if a is None and b is None else float("inf")
    a, b = a.double(), b.double()
    den = b.norm().item()
    num = (a - b).norm().item()
    return num / den if den > 0 else num


def random_graph(n_src, n_dst, num_edges, seed, self_loops=False):
    g = torch.Generator().manual_seed(seed)
    if n_src == 0 or n_dst == 0:
        return torch.zeros(2, 0, dtype=torch.long)
    src = torch.randint(0, n_src, (num_edges,), generator=g)
    dst = torch.randint(0, n_dst, (num_edges,), generator=g)
    ei = torch.stack([src, dst])
    if self_loops and num_edges > 0:
        k = min(n_src, n_dst, max(1, num_edges // 5))
        loops = torch.arange(k).repeat(2, 1)
        ei = torch.cat([ei, loops, ei[:, : num_edges // 7]], dim=1)  # + duplicates
    return ei


def leaf(t, dtype, noncontig):
    """A leaf tensor and the (possibly non-contiguous) view fed to the op."""
    t = t.to(dtype)
    if noncontig:
        big = torch.zeros(t.shape[0], 2 * t.shape[1] + 1, dtype=dtype)
        big[:, 1::2] = t
        big.requires_grad_(True)
        return big, big[:, 1::2]
    t = t.clone().requires_grad_(True)
    return t, t


def run_both(x, ps, pd, ea, ei, plan, dtype, int32=False, noncontig=False,
             seed=0):
    """Forward and all gradients of fused (in dtype) and reference (float64)."""
    g = torch.Generator().manual_seed(seed + 1)
    n_dst = pd.shape[0]
    R = torch.randn(n_dst, plan.out_channels, generator=g, dtype=torch.float64)
    results = []
    variants = ("fused", "ref") + (("ref32",) if dtype == torch.float32 else ())
    for variant in variants:
        dt = torch.float64 if variant == "ref" else dtype
        p = plan.to(dt)
        for t in p.tensors():
            t.requires_grad_(True)
        xl, xv = leaf(x, dt, noncontig)
        psl, psv = leaf(ps, dt, noncontig)
        pdl, pdv = leaf(pd, dt, noncontig)
        inputs = [xl, psl, pdl]
        eav = None
        if ea is not None:
            eal, eav = leaf(ea, dt, noncontig)
            inputs.append(eal)
        if variant == "fused":
            eic = ei.to(torch.int32) if int32 else ei
            csr = build_csr(eic, x.shape[0], n_dst)
            out = fused_point_conv(xv, psv, pdv, eav, csr, p)
        else:
            out = reference_conv(xv, psv, pdv, eav, ei, p)
        params = p.tensors()
        if out.requires_grad:
            grads = torch.autograd.grad((out * R.to(dt)).sum(), inputs + params,
                                        allow_unused=True)
        else:  # the E = 0 reference
            grads = [None] * len(inputs + params)
        results.append((out.detach(), [None if gr is None else gr.detach()
                                       for gr in grads]))
    return results


def assert_close(results, dtype, what=""):
    """Fused vs the float64 reference: rel err <= TOL[dtype].  In float32 a
    quantity that is a cancelling sum (e.g. the scalar width gradient) may
    be ill-conditioned: there the bound is relaxed to 4x the error of the
    float32 reference itself (the unfused op in the same precision)."""
    (out_f, g_f), (out_r, g_r) = results[:2]
    g_32 = results[2][1] if len(results) > 2 else [None] * len(g_f)
    tol = TOL[dtype]
    assert out_f.dtype == dtype
    e = rel_err(out_f, out_r)
    assert e <= tol, f"{what} forward rel err {e:.3e} > {tol}"
    assert len(g_f) == len(g_r)
    for k, (a, b, c) in enumerate(zip(g_f, g_r, g_32)):
        if b is None:  # reference does not depend on it (e.g. E = 0)
            assert a is None or a.numel() == 0 or a.abs().max().item() == 0, \
                f"{what} grad {k}"
            continue
        assert a is not None, f"{what} grad {k} missing"
        assert a.shape == b.shape, f"{what} grad {k} shape"
        e = rel_err(a, b)
        bound = tol if c is None else max(tol, 4 * rel_err(c, b))
        assert e <= bound, f"{what} grad {k} rel err {e:.3e} > {bound}"


# --------------------------------------------------------------------------
# fused == reference on random graphs
# --------------------------------------------------------------------------

@st.composite
def graphs(draw):
    bipartite = draw(st.booleans())
    n_src = draw(st.integers(0, 300))
    n_dst = draw(st.integers(0, 300)) if bipartite else n_src
    deg = draw(st.sampled_from([0, 1, 3, 8, 20]))
    num_edges = 0 if n_src == 0 or n_dst == 0 else draw(st.integers(0, max(deg * n_dst, 1)))
    return dict(bipartite=bipartite, n_src=n_src, n_dst=n_dst, num_edges=num_edges,
                seed=draw(st.integers(0, 2 ** 16)),
                attr=draw(st.sampled_from([0, 2])),
                int32=draw(st.booleans()), noncontig=draw(st.booleans()),
                self_loops=draw(st.booleans()))


def _check_graph(gr, dtype, d=3):
    g = torch.Generator().manual_seed(gr["seed"])
    n_src, n_dst = gr["n_src"], gr["n_dst"]
    ei = random_graph(n_src, n_dst, gr["num_edges"], gr["seed"],
                      self_loops=gr["self_loops"])
    E = ei.shape[1]
    x = torch.randn(n_src, 3, generator=g, dtype=torch.float64)
    ps = torch.rand(n_src, d, generator=g, dtype=torch.float64)
    pd = ps if not gr["bipartite"] else torch.rand(n_dst, d, generator=g,
                                                   dtype=torch.float64)
    ea = torch.randn(E, gr["attr"], generator=g, dtype=torch.float64) \
        if gr["attr"] else None
    plan = make_plan(torch.float64, d=d, attr=gr["attr"], seed=gr["seed"])
    res = run_both(x, ps, pd, ea, ei, plan, dtype, int32=gr["int32"],
                   noncontig=gr["noncontig"], seed=gr["seed"])
    assert_close(res, dtype, what=str(gr))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(gr=graphs())
def test_fused_matches_reference_float64(gr):
    _check_graph(gr, torch.float64)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(gr=graphs())
def test_fused_matches_reference_float32(gr):
    _check_graph(gr, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_high_degree_node(dtype):
    """One target with >= 1000 incoming edges and one source with >= 1000
    outgoing edges (spans many tiles and several chunks)."""
    g = torch.Generator().manual_seed(7)
    n = 60
    hub_in = torch.stack([torch.randint(0, n, (1200,), generator=g),
                          torch.full((1200,), 5)])
    hub_out = torch.stack([torch.full((1100,), 11),
                           torch.randint(0, n, (1100,), generator=g)])
    rest = random_graph(n, n, 400, 3, self_loops=True)
    ei = torch.cat([hub_in, rest, hub_out], dim=1)
    ei = ei[:, torch.randperm(ei.shape[1], generator=g)]
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    pos = torch.rand(n, 3, generator=g, dtype=torch.float64)
    ea = torch.randn(ei.shape[1], 2, generator=g, dtype=torch.float64)
    plan = make_plan(attr=2, seed=3)
    assert_close(run_both(x, pos, pos, ea, ei, plan, dtype), dtype)


@pytest.mark.parametrize("spec", [
    dict(d=2, layers=(("fourier", "relu", 4, 3, 6, 3),), act_note="2D relu"),
    dict(d=3, layers=(("pointwise", "sigmoid", 7), ("fourier", "silu", 2, 5, 9, 5)),
         act_note="sigmoid + silu"),
    dict(d=3, layers=(), act_note="no hidden layer"),
    dict(d=3, layers=(("fourier", "elu", 2, 4, 6, 2), ("fourier", "elu", 3, 4, 8, 4),
                      ("pointwise", "tanh", 5)), act_note="three layers"),
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_plan_variants(spec, dtype):
    g = torch.Generator().manual_seed(11)
    n_src, n_dst, d = 40, 30, spec["d"]
    ei = random_graph(n_src, n_dst, 300, 5)
    x = torch.randn(n_src, 3, generator=g, dtype=torch.float64)
    ps = torch.rand(n_src, d, generator=g, dtype=torch.float64)
    pd = torch.rand(n_dst, d, generator=g, dtype=torch.float64)
    ea = torch.randn(ei.shape[1], 1, generator=g, dtype=torch.float64)
    plan = make_plan(d=d, attr=1, c_in=3, c_out=2, layers=spec["layers"], seed=2)
    assert_close(run_both(x, ps, pd, ea, ei, plan, dtype, noncontig=True), dtype,
                 what=spec["act_note"])


def test_empty_graph_and_isolated_nodes():
    plan = make_plan()
    x = torch.randn(5, 3, dtype=torch.float64)
    pos = torch.rand(5, 3, dtype=torch.float64)
    csr = build_csr(torch.zeros(2, 0, dtype=torch.long), 5, 5)
    out = fused_point_conv(x, pos, pos, None, csr, plan)
    assert out.shape == (5, 4) and out.abs().max() == 0
    # no targets at all
    csr = build_csr(torch.zeros(2, 0, dtype=torch.long), 5, 0)
    out = fused_point_conv(x, pos, pos[:0], None, csr, plan)
    assert out.shape == (0, 4)
    # isolated targets get exactly zero
    ei = torch.tensor([[0, 1, 2], [1, 1, 3]])
    out = fused_point_conv(x, pos, pos, None, build_csr(ei, 5), plan)
    assert out[[0, 2, 4]].abs().max() == 0 and out[[1, 3]].abs().min() > 0


# --------------------------------------------------------------------------
# autograd machinery
# --------------------------------------------------------------------------

def _small_problem(attr=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_src, n_dst = 5, 4
    ei = torch.tensor([[0, 1, 2, 3, 4, 0, 2, 2, 1, 4, 3],
                       [0, 0, 1, 1, 2, 3, 3, 3, 2, 0, 1]])
    x = torch.randn(n_src, 2, generator=g, dtype=torch.float64, requires_grad=True)
    ps = torch.rand(n_src, 3, generator=g, dtype=torch.float64, requires_grad=True)
    pd = torch.rand(n_dst, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ea = torch.randn(ei.shape[1], attr, generator=g, dtype=torch.float64,
                     requires_grad=True)
    plan = make_plan(d=3, attr=attr, c_in=2, c_out=3, seed=seed,
                     layers=(("fourier", "elu", 2, 4, 5, 3), ("pointwise", "silu", 6)),
                     requires_grad=True)
    return x, ps, pd, ea, ei, plan


def test_gradcheck():
    x, ps, pd, ea, ei, plan = _small_problem()
    csr = build_csr(ei, 5, 4)
    L = len(plan.weights)

    def fn(x, ps, pd, ea, *pt):
        p = KernelPlan(list(pt[:L]), list(pt[L:2 * L]), list(pt[2 * L:3 * L]),
                       list(pt[3 * L:4 * L]), plan.activations, pt[4 * L], pt[4 * L + 1],
                       3, 2, 2, 3)
        return fused_point_conv(x, ps, pd, ea, csr, p)

    inputs = (x, ps, pd, ea, *plan.tensors())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def _op_args(x, ps, pd, ea, ei, plan):
    csr = build_csr(ei, x.shape[0], pd.shape[0])
    args = (x, ps, pd, ea[csr.perm].detach().requires_grad_(True), csr.rowptr, csr.col,
            plan.weights, plan.biases, plan.samplers, plan.projectors,
            list(plan.activations), plan.width, plan.Wt)
    return args, csr


def test_opcheck_forward():
    args, _ = _op_args(*_small_problem())
    torch.library.opcheck(OPS.point_conv_forward.default, args)
    # and without gradients
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else
                 ([t.detach() for t in a] if isinstance(a, list) and a and
                  isinstance(a[0], torch.Tensor) else a) for a in args)
    torch.library.opcheck(OPS.point_conv_forward.default, args)


@pytest.mark.parametrize("mask", [[True] * 10,
                                  [True, False, True, False, True, False, False,
                                   True, False, True]])
def test_opcheck_backward(mask):
    x, ps, pd, ea, ei, plan = _small_problem()
    args, csr = _op_args(x, ps, pd, ea, ei, plan)
    det = lambda a: a.detach() if isinstance(a, torch.Tensor) else (  # noqa: E731
        [t.detach() for t in a] if isinstance(a, list) and a and
        isinstance(a[0], torch.Tensor) else a)
    args = [det(a) for a in args]
    grad_out = torch.randn(4, 3, dtype=torch.float64)
    bargs = (grad_out, *args[:6], csr.csc_rowptr, csr.csc_perm, *args[6:], mask)
    torch.library.opcheck(OPS.point_conv_backward.default, bargs)
    res = OPS.point_conv_backward(*bargs)
    assert len(res) == 10


def test_backward_op_matches_autograd_and_masks():
    x, ps, pd, ea, ei, plan = _small_problem()
    args, csr = _op_args(x, ps, pd, ea, ei, plan)
    out = OPS.point_conv_forward(*args)
    R = torch.randn_like(out)
    ins = [args[0], args[1], args[2], args[3], *plan.tensors()]
    auto = torch.autograd.grad((out * R).sum(), ins)
    det = lambda a: a.detach() if isinstance(a, torch.Tensor) else (  # noqa: E731
        [t.detach() for t in a] if isinstance(a, list) and a and
        isinstance(a[0], torch.Tensor) else a)
    dargs = [det(a) for a in args]
    full = OPS.point_conv_backward(R, *dargs[:6], csr.csc_rowptr, csr.csc_perm,
                                   *dargs[6:], [True] * 10)
    flat = [full[0], full[1], full[2], full[3], *full[4], *full[5], *full[6],
            *full[7], full[8], full[9]]
    for a, b in zip(flat, auto):
        assert torch.equal(a, b)
    # one group at a time gives the same numbers for that group
    for k in range(10):
        mask = [False] * 10
        mask[k] = True
        part = OPS.point_conv_backward(R, *dargs[:6], csr.csc_rowptr, csr.csc_perm,
                                       *dargs[6:], mask)
        a, b = part[k], full[k]
        if isinstance(a, list):
            assert all(torch.allclose(u, v, rtol=1e-12, atol=1e-14) for u, v in zip(a, b))
        else:
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_partial_requires_grad():
    x, ps, pd, ea, ei, plan = _small_problem()
    csr = build_csr(ei, 5, 4)
    p = plan.to(torch.float64)  # copies
    for t in p.tensors():
        t.requires_grad_(False)
    p.Wt.requires_grad_(True)
    x2 = x.detach()
    out = fused_point_conv(x2, ps.detach(), pd.detach(), ea.detach(), csr, p)
    (gWt,) = torch.autograd.grad(out.sum(), [p.Wt])
    ref = reference_conv(x2, ps.detach(), pd.detach(), ea.detach(), ei, p)
    (rWt,) = torch.autograd.grad(ref.sum(), [p.Wt])
    assert rel_err(gWt, rWt) < 1e-10
    # nothing requires grad: plain tensor out
    with torch.no_grad():
        out = fused_point_conv(x, ps, pd, ea, csr, plan)
    assert not out.requires_grad


def test_double_backward_raises():
    x, ps, pd, ea, ei, plan = _small_problem()
    csr = build_csr(ei, 5, 4)
    out = fused_point_conv(x, ps, pd, ea, csr, plan)
    (gpos,) = torch.autograd.grad(out.square().sum(), [ps], create_graph=True)
    assert gpos.requires_grad
    with pytest.raises(RuntimeError, match="double backward not supported"):
        gpos.square().sum().backward()


def test_deterministic():
    g = torch.Generator().manual_seed(3)
    n = 400
    ei = random_graph(n, n, 8000, 9, self_loops=True)
    x = torch.randn(n, 3, generator=g)
    pos = torch.rand(n, 3, generator=g)
    ea = torch.randn(ei.shape[1], 2, generator=g)
    plan = make_plan(torch.float32, attr=2, seed=4, requires_grad=True)
    csr = build_csr(ei, n)

    def run():
        xs, ps, eas = (t.clone().requires_grad_(True) for t in (x, pos, ea))
        out = fused_point_conv(xs, ps, ps, eas, csr, plan)
        grads = torch.autograd.grad((out * out).sum(), [xs, ps, eas, *plan.tensors()])
        return [out, *grads]

    a, b = run(), run()
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    # the result does not depend on the number of threads either
    nt = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        c = run()
    finally:
        torch.set_num_threads(nt)
    for u, v in zip(a, c):
        assert torch.equal(u, v)


class _FusedModel(torch.nn.Module):
    def __init__(self, plan):
        super().__init__()
        self.weights = torch.nn.ParameterList(plan.weights)
        self.biases = torch.nn.ParameterList(plan.biases)
        self.samplers = torch.nn.ParameterList(plan.samplers)
        self.projectors = torch.nn.ParameterList(plan.projectors)
        self.width = torch.nn.Parameter(plan.width)
        self.Wt = torch.nn.Parameter(plan.Wt)
        self.acts = list(plan.activations)
        self.dims = (plan.pos_dim, plan.attr_dim, plan.in_channels, plan.out_channels)

    def forward(self, x, pos, edge_attr, csr: CSRGraph):
        plan = KernelPlan(list(self.weights), list(self.biases), list(self.samplers),
                          list(self.projectors), self.acts, self.width, self.Wt,
                          *self.dims)
        h = fused_point_conv(x, pos, pos, edge_attr, csr, plan)
        return torch.tanh(h).sum(-1)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    x, ps, pd, ea, ei, plan = _small_problem()
    plan = make_plan(d=3, attr=2, c_in=2, c_out=3, seed=0,
                     layers=(("fourier", "elu", 2, 4, 5, 3), ("pointwise", "silu", 6)))
    model = _FusedModel(plan)
    csr = build_csr(ei, 5, 5)
    x, pos, ea = x.detach(), ps.detach(), ea.detach()
    pos_g = pos.clone().requires_grad_(True)
    eager = model(x, pos_g, ea, csr)
    eager_grads = torch.autograd.grad(eager.sum(), [pos_g, *model.parameters()])
    compiled = torch.compile(model, fullgraph=True)
    pos_c = pos.clone().requires_grad_(True)
    out = compiled(x, pos_c, ea, csr)
    grads = torch.autograd.grad(out.sum(), [pos_c, *model.parameters()])
    assert torch.allclose(out, eager, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, eager_grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------

def _good():
    x, ps, pd, ea, ei, plan = _small_problem()
    pos = torch.rand(5, 3, dtype=torch.float64)
    return x.detach(), pos, ea.detach(), ei, make_plan(d=3, attr=2, c_in=2, c_out=3,
                                                       layers=(("pointwise", "elu", 4),))


def test_build_csr_bad_input():
    ei = torch.tensor([[0, 1, 2], [1, 2, 0]])
    with pytest.raises(TypeError, match="edge_index"):
        build_csr(ei.float(), 3)
    with pytest.raises(TypeError, match="edge_index"):
        build_csr(ei.tolist(), 3)
    with pytest.raises(ValueError, match="edge_index"):
        build_csr(ei[:1], 3)
    with pytest.raises(ValueError, match="edge_index"):
        build_csr(torch.tensor([[0, -1], [1, 0]]), 3)
    with pytest.raises(ValueError, match="num_src"):
        build_csr(torch.tensor([[0, 3], [1, 0]]), 3)
    with pytest.raises(ValueError, match="num_dst"):
        build_csr(torch.tensor([[0, 1], [1, 2]]), 3, 2)
    with pytest.raises(ValueError, match="num_src"):
        build_csr(ei, -1)
    with pytest.raises(TypeError, match="num_src"):
        build_csr(ei, 3.0)


def test_build_csr_structure():
    ei = torch.tensor([[2, 0, 1, 2, 0, 2], [1, 1, 0, 1, 2, 2]], dtype=torch.int32)
    csr = build_csr(ei, 3, 3)
    assert csr.rowptr.tolist() == [0, 1, 4, 6]
    assert csr.perm.tolist() == [2, 0, 1, 3, 4, 5]  # stable by target
    assert csr.col.tolist() == [1, 2, 0, 2, 0, 2]
    assert csr.csc_rowptr.tolist() == [0, 2, 3, 6]
    # q-th edge in source order -> CSR position (stable)
    assert csr.col[csr.csc_perm].tolist() == [0, 0, 1, 2, 2, 2]
    assert csr.csc_perm.tolist() == [2, 4, 0, 1, 3, 5]
    assert all(t.dtype == torch.int64 for t in csr[:5])


@pytest.mark.parametrize("case,exc,name", [
    ("x_width", ValueError, "x_src"),
    ("x_dtype", TypeError, "x_src"),
    ("x_not_tensor", TypeError, "x_src"),
    ("pos_dim", ValueError, "pos"),
    ("pos_rows", ValueError, "pos_src"),
    ("pos_dtype", TypeError, "pos_src"),
    ("pos_device", ValueError, "pos_dst"),
    ("attr_width", ValueError, "edge_attr"),
    ("attr_rows", ValueError, "edge_attr"),
    ("attr_missing", ValueError, "edge_attr"),
    ("attr_dtype", TypeError, "edge_attr"),
    ("csr_type", TypeError, "csr"),
    ("csr_nodes", ValueError, "csr"),
    ("plan_dtype", TypeError, "plan.weights"),
    ("plan_shape", ValueError, "plan.Wt"),
    ("plan_act", ValueError, "plan.activations"),
])
def test_fused_bad_input(case, exc, name):
    x, pos, ea, ei, plan = _good()
    csr = build_csr(ei, 5, 5)
    args = dict(x_src=x, pos_src=pos, pos_dst=pos, edge_attr=ea, csr=csr, plan=plan)
    if case == "x_width":
        args["x_src"] = torch.randn(5, 3, dtype=torch.float64)
    elif case == "x_dtype":
        args["x_src"] = x.to(torch.int64)
    elif case == "x_not_tensor":
        args["x_src"] = x.tolist()
    elif case == "pos_dim":
        args["pos_src"] = args["pos_dst"] = torch.rand(5, 2, dtype=torch.float64)
    elif case == "pos_rows":
        args["pos_src"] = torch.rand(4, 3, dtype=torch.float64)
    elif case == "pos_dtype":
        args["pos_src"] = pos.float()
    elif case == "pos_device":
        args["pos_dst"] = torch.empty(5, 3, dtype=torch.float64, device="meta")
    elif case == "attr_width":
        args["edge_attr"] = torch.randn(ea.shape[0], 3, dtype=torch.float64)
    elif case == "attr_rows":
        args["edge_attr"] = ea[:-1]
    elif case == "attr_missing":
        args["edge_attr"] = None
    elif case == "attr_dtype":
        args["edge_attr"] = ea.float()
    elif case == "csr_type":
        args["csr"] = ei
    elif case == "csr_nodes":
        args["csr"] = build_csr(ei, 6, 6)
    elif case == "plan_dtype":
        args["plan"] = plan.to(torch.float64)
        args["plan"].weights[0] = args["plan"].weights[0].float()
    elif case == "plan_shape":
        args["plan"] = plan.to(torch.float64)
        args["plan"].Wt = args["plan"].Wt[:, :-1]
    elif case == "plan_act":
        args["plan"] = plan.to(torch.float64)
        args["plan"].activations = [17]
    with pytest.raises(exc, match=name):
        fused_point_conv(**args)


def test_op_direct_bad_input_raises_runtime_error():
    x, pos, ea, ei, plan = _good()
    csr = build_csr(ei, 5, 5)
    args = [x, pos, pos, ea[csr.perm], csr.rowptr, csr.col, plan.weights,
            plan.biases, plan.samplers, plan.projectors, plan.activations,
            plan.width, plan.Wt]
    OPS.point_conv_forward(*args)  # fine

    def bad(k, v, match):
        a = list(args)
        a[k] = v
        with pytest.raises(RuntimeError, match=match):
            OPS.point_conv_forward(*a)

    bad(0, x[:, :1], "Wt")                       # C_in mismatch with Wt
    bad(1, pos[:, :2], "pos_dst")                # d mismatch
    bad(2, pos.float(), "pos_dst")               # dtype
    bad(3, ea[:-1], "edge_attr")                 # E mismatch
    bad(4, csr.rowptr[:-1], "rowptr")            # wrong length
    bad(4, csr.rowptr.int(), "rowptr")           # wrong index dtype
    bad(5, torch.full_like(csr.col, 99), "col")  # out of range source
    bad(5, -csr.col - 1, "col")                  # negative source
    bad(4, csr.rowptr.flip(0), "rowptr")         # not a valid CSR
    bad(6, [plan.weights[0][:, :2]], "weights")  # layer shape
    bad(10, [9], "activation")                   # unknown code
    bad(11, plan.width.reshape(1), "width")      # not 0-d
    bad(12, plan.Wt[:, 1:], "Wt")
    grad = torch.randn(5, plan.out_channels, dtype=torch.float64)
    bargs = [grad, *args[:6], csr.csc_rowptr, csr.csc_perm, *args[6:], [True] * 10]
    OPS.point_conv_backward(*bargs)
    with pytest.raises(RuntimeError, match="grad_out"):
        OPS.point_conv_backward(grad[:, :1], *bargs[1:])
    with pytest.raises(RuntimeError, match="output_mask"):
        OPS.point_conv_backward(*bargs[:-1], [True] * 3)
    with pytest.raises(RuntimeError, match="csc_perm"):
        OPS.point_conv_backward(*bargs[:8], csr.csc_perm + 100, *bargs[9:])


# --------------------------------------------------------------------------
# graceful failure without the compiled extension
# --------------------------------------------------------------------------

def test_unavailable_extension_is_graceful():
    code = r"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "pyg_implicit._C":
            raise ImportError("blocked for the test")
        return None
sys.meta_path.insert(0, Block())
import torch
from pyg_implicit.ops import is_available, fused_point_conv, build_csr
assert not is_available()
try:
    fused_point_conv(torch.zeros(1, 1), torch.zeros(1, 3), torch.zeros(1, 3), None,
                     build_csr(torch.zeros(2, 0, dtype=torch.long), 1), None)
except RuntimeError as e:
    assert "pyg_implicit._C" in str(e), e
    print("OK")
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=root, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]
