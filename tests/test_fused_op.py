"""The fused point convolution (torch.ops.pyg_implicit.*) on every backend.

One file for every backend of the op, parametrised over device x dtype
(``op_cases.TARGETS``): the CPU kernels (``fused_cpu``), the CUDA kernels on a
GPU (``cuda``), and the CUDA source built for CPU threads by
``csrc/cuda/emulate_on_cpu.py`` (``cuda_emulated``). An unavailable backend
skips, or fails where ``PYG_IMPLICIT_REQUIRE`` lists it (conftest.py).

The oracle is the materialised reference (``op_cases.reference_conv``) in
float64 on the CPU: out_i = sum_{e=(j->i)} edge_kernels(plan, pos_src[j] -
pos_dst[i], a_e) @ x_src[j]. Every output and gradient is compared as a whole
and row by row (tests/compare.py): float64 within 1e-10, float32 within 1e-5
(rows 1e-3), fixed bounds; the oracle sees the same float32-rounded inputs, so
only the arithmetic differs. TF32 is off for these tests (the CUDA backend's
node-level GEMMs go through cuBLAS).

Needs no escnn (the GPU image has none). Without Hypothesis the property
tests run their pinned examples only.
"""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

import backends
from compare import ROW_TOL, TOL, assert_rows_close, relative_error
from op_cases import (SPEC_2D, SPEC_ALL_ACTS, SPEC_EXACT, SPEC_SMOOTH, TARGETS, fused_with_grads,
                      gradient_names, octahedral_invariant_plan, on_cuda_source, on_every_backend,
                      plan_from_tensors, random_edge_index, random_plan, random_problem,
                      reference_conv)
from pyg_implicit.plan import KernelPlan
from pyg_implicit.ops import CSRGraph, build_csr, fused_point_conv

try:
    from hypothesis import example, given
    from hypothesis import strategies as st
except ImportError:  # the GPU image
    given = None

OPS = torch.ops.pyg_implicit
TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32],
                                 ids=["float64", "float32"])
on_cpu_kernels = pytest.mark.parametrize("device", TARGETS[:1])


@pytest.fixture(autouse=True)
def _no_tf32():
    if not torch.cuda.is_available():
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------
# fused (on a device) vs the float64 oracle (on the CPU)
# --------------------------------------------------------------------------

def leaf(t, dtype, device, noncontig):
    """A leaf tensor and the (possibly non-contiguous) view fed to the op."""
    t = t.to(device=device, dtype=dtype)
    if noncontig:
        big = torch.zeros(t.shape[0], 2 * t.shape[1] + 1, dtype=dtype, device=device)
        big[:, 1::2] = t
        big.requires_grad_(True)
        return big, big[:, 1::2]
    t = t.clone().requires_grad_(True)
    return t, t


def run_both(x, ps, pd, ea, ei, plan, dtype, device="cpu", int32=False, noncontig=False,
             seed=0, constant_grid=False):
    """Forward and all gradients of the fused op (dtype, device) and of the
    float64 oracle on the CPU, on the same dtype-rounded inputs; results on
    the CPU. ``constant_grid``: samplers and projectors need no gradient (as in
    ImplicitKernel, where they are buffers; the CPU kernels then take another path)."""
    g = torch.Generator().manual_seed(seed + 1)
    n_dst = pd.shape[0]
    R = torch.randn(n_dst, plan.out_channels, generator=g, dtype=torch.float64)
    rounded = lambda t: None if t is None else t.to(dtype).double()  # noqa: E731
    x, ps, pd, ea, R = (rounded(t) for t in (x, ps, pd, ea, R))
    plan = plan.to(dtype).to(torch.float64)
    results = []
    for variant in ("fused", "ref"):
        dt, dev = (dtype, device) if variant == "fused" else (torch.float64, "cpu")
        p = plan.to(device=dev, dtype=dt)
        grid = {id(t) for t in list(p.samplers) + list(p.projectors)} if constant_grid else set()
        for t in p.tensors():
            t.requires_grad_(id(t) not in grid)
        xl, xv = leaf(x, dt, dev, noncontig)
        psl, psv = leaf(ps, dt, dev, noncontig)
        pdl, pdv = leaf(pd, dt, dev, noncontig)
        inputs = [xl, psl, pdl]
        eav = None
        if ea is not None:
            eal, eav = leaf(ea, dt, dev, noncontig)
            inputs.append(eal)
        if variant == "fused":
            eic = ei.to(torch.int32) if int32 else ei
            csr = build_csr(eic.to(dev), x.shape[0], n_dst)
            out = fused_point_conv(xv, psv, pdv, eav, csr, p)
            assert out.device.type == torch.device(dev).type and out.dtype == dt
        else:
            out = reference_conv(xv, psv, pdv, eav, ei, p)
        params = p.tensors()
        grads = [None] * len(inputs + params)  # None: no gradient (also the E = 0 reference)
        if out.requires_grad:
            want = [k for k, t in enumerate(inputs + params) if t.requires_grad]
            got = torch.autograd.grad((out * R.to(device=dev, dtype=dt)).sum(),
                                      [(inputs + params)[k] for k in want], allow_unused=True)
            for k, gr in zip(want, got):
                grads[k] = gr
        results.append((out.detach().cpu(), [None if gr is None else gr.detach().cpu()
                                             for gr in grads]))
    results.append(dict(num_inputs=len(inputs),
                        names=gradient_names(plan, ea is not None),
                        width_scale=width_gradient_scale(xv, psv, pdv, eav, ei, p, R)))
    return results


def width_gradient_scale(x, ps, pd, ea, ei, plan, R):
    """sum_e |d loss / d width_e|: the size of the terms that the width gradient
    (one scalar, a sum over all edges that cancels) adds up. Its error is judged
    against this, not against the (possibly tiny) sum itself."""
    if ei.shape[1] == 0:
        return 0.0
    width_e = plan.width.detach().expand(ei.shape[1]).clone().requires_grad_(True)
    out = reference_conv(x.detach(), ps.detach(), pd.detach(),
                         None if ea is None else ea.detach(), ei,
                         dataclasses.replace(plan, width=width_e))
    (terms,) = torch.autograd.grad((out * R).sum(), [width_e])
    return float(terms.abs().sum())


#: float32 bound on any row of a gradient of the kernel MLP's weights, biases,
#: samplers and projectors: each entry is a sum over all edges that cancels
#: (largest seen on fuzzed graphs: 1.0e-3); node and edge rows keep ROW_TOL
MLP_ROW_TOL32 = 1e-2


def assert_results_close(results, dtype, what="", tol=None, row_tol=None):
    """Fused vs the float64 reference, whole and row by row (compare.py);
    ``tol``/``row_tol`` replace the bounds of ``dtype``."""
    (out_f, g_f), (out_r, g_r), info = results
    assert out_f.dtype == dtype
    tol = TOL[dtype] if tol is None else tol
    row_tol = ROW_TOL[dtype] if row_tol is None else row_tol
    mlp_row_tol = max(row_tol, MLP_ROW_TOL32) if dtype == torch.float32 else row_tol

    def check(a, b, name, rows=row_tol):
        assert_rows_close(a, b, tol, name, row_tol=rows)

    check(out_f, out_r, f"{what} forward")
    assert len(g_f) == len(g_r)
    # gradients: inputs (x, pos_src, pos_dst[, edge_attr]), MLP tensors, width, Wt
    mlp = range(info["num_inputs"], len(g_f) - 2)
    width, width_scale = len(g_f) - 2, info["width_scale"]
    for k, (a, b) in enumerate(zip(g_f, g_r)):
        name = f"{what} grad {info['names'][k]}"
        if b is None:  # reference does not depend on it (e.g. E = 0)
            assert a is None or a.numel() == 0 or a.abs().max().item() == 0, name
            continue
        assert a is not None, f"{name} missing"
        if k == width:
            err = abs(float(a) - float(b))
            assert err <= tol * width_scale, \
                f"{name}: error {err:.3e} > {tol:g} x {width_scale:.3e}"
        else:
            check(a, b, name, mlp_row_tol if k in mlp else row_tol)


def check_problem(problem, dtype, device, seed=0, **kw):
    x, ps, pd, ea, ei, plan = problem
    assert_results_close(run_both(x, ps, pd, ea, ei, plan, dtype, device, seed=seed, **kw),
                         dtype)


# --------------------------------------------------------------------------
# fused == reference on random graphs (Hypothesis), with pinned edge cases
# --------------------------------------------------------------------------

def _graph(**kw):
    base = dict(bipartite=False, n_src=40, n_dst=40, num_edges=200, seed=1, attr=2,
                int32=False, noncontig=False, self_loops=False, hub=False)
    return {**base, **kw}


#: the edge cases every run covers, whatever Hypothesis draws
EDGE_CASES = [
    _graph(n_src=0, n_dst=0, num_edges=0),                          # N = 0
    _graph(bipartite=True, n_src=6, n_dst=0, num_edges=0),          # no targets
    _graph(n_src=9, n_dst=9, num_edges=0, attr=0),                  # E = 0
    _graph(n_src=300, n_dst=300, num_edges=40, int32=True),         # mostly degree 0
    _graph(n_src=50, n_dst=50, num_edges=150, hub=True),            # degree >= 1000
    _graph(bipartite=True, n_src=30, n_dst=70, num_edges=90, hub=True, noncontig=True),
    _graph(n_src=25, n_dst=25, num_edges=120, self_loops=True),     # loops + duplicates
    _graph(n_src=1, n_dst=1, num_edges=5, self_loops=True),         # one node, loops only
]

#: largest fuzzed node count (the emulated CUDA source runs ~1000x slower)
MAX_FUZZ_NODES = 120 if backends.emulated() else 1000

if given is not None:
    @st.composite
    def graphs(draw):
        bipartite = draw(st.booleans())
        n_src = draw(st.integers(0, MAX_FUZZ_NODES))
        n_dst = draw(st.integers(0, MAX_FUZZ_NODES)) if bipartite else n_src
        # average in-degree from a fixed menu (Hypothesis draws small integers far
        # more often than large ones: a drawn edge count would keep graphs tiny)
        deg = draw(st.sampled_from([0, 1, 3, 8, 20, 64]))
        num_edges = 0 if n_src == 0 or n_dst == 0 else deg * n_dst + draw(st.integers(0, 9))
        return dict(bipartite=bipartite, n_src=n_src, n_dst=n_dst, num_edges=num_edges,
                    seed=draw(st.integers(0, 2 ** 16)),
                    attr=draw(st.sampled_from([0, 2])),
                    int32=draw(st.booleans()), noncontig=draw(st.booleans()),
                    self_loops=draw(st.booleans()), hub=draw(st.booleans()))

    def fuzzed(test):
        for case in EDGE_CASES:
            test = example(gr=case)(test)
        return given(gr=graphs())(test)
else:
    def fuzzed(test):
        return pytest.mark.parametrize("gr", EDGE_CASES)(test)


def _check_graph(gr, dtype, device, d=3):
    g = torch.Generator().manual_seed(gr["seed"])
    n_src, n_dst = gr["n_src"], gr["n_dst"]
    ei = random_edge_index(n_src, n_dst, gr["num_edges"], gr["seed"],
                           self_loops=gr["self_loops"], hub_degree=1000 if gr["hub"] else 0)
    if gr["hub"] and ei.shape[1]:
        assert int(torch.bincount(ei[1]).max()) >= 1000
    if gr["self_loops"] and ei.shape[1]:
        assert bool((ei[0] == ei[1]).any()) and \
            torch.unique(ei, dim=1).shape[1] < ei.shape[1]
    E = ei.shape[1]
    x = torch.randn(n_src, 3, generator=g, dtype=torch.float64)
    ps = torch.rand(n_src, d, generator=g, dtype=torch.float64)
    pd = ps if not gr["bipartite"] else torch.rand(n_dst, d, generator=g,
                                                   dtype=torch.float64)
    ea = torch.randn(E, gr["attr"], generator=g, dtype=torch.float64) \
        if gr["attr"] else None
    plan = random_plan(torch.float64, d=d, attr=gr["attr"], seed=gr["seed"])
    res = run_both(x, ps, pd, ea, ei, plan, dtype, device, int32=gr["int32"],
                   noncontig=gr["noncontig"], seed=gr["seed"])
    # float32 sums of >= 1000 terms of one row (the hub), which cancel in the
    # width and bias gradients, are rounded further: fixed bounds 1e-3 / 1e-2
    # (largest errors seen: 2.8e-4 / 3.1e-3)
    loose = dtype == torch.float32 and gr["hub"]
    assert_results_close(res, dtype, what=str(gr), tol=1e-3 if loose else None,
                         row_tol=1e-2 if loose else None)


@on_every_backend
@fuzzed
def test_fused_matches_reference_float64(device, gr):
    _check_graph(gr, torch.float64, device)


@on_every_backend
@fuzzed
def test_fused_matches_reference_float32(device, gr):
    _check_graph(gr, torch.float32, device)


@on_every_backend
@DTYPES
def test_high_degree_node(device, dtype):
    """One target with >= 1000 incoming edges and one source with >= 1000
    outgoing edges (spans many tiles and several chunks)."""
    g = torch.Generator().manual_seed(7)
    n = 60
    hub_in = torch.stack([torch.randint(0, n, (1200,), generator=g),
                          torch.full((1200,), 5)])
    hub_out = torch.stack([torch.full((1100,), 11),
                           torch.randint(0, n, (1100,), generator=g)])
    rest = random_edge_index(n, n, 400, 3, self_loops=True)
    ei = torch.cat([hub_in, rest, hub_out], dim=1)
    ei = ei[:, torch.randperm(ei.shape[1], generator=g)]
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    pos = torch.rand(n, 3, generator=g, dtype=torch.float64)
    ea = torch.randn(ei.shape[1], 2, generator=g, dtype=torch.float64)
    plan = random_plan(attr=2, seed=3)
    assert_results_close(run_both(x, pos, pos, ea, ei, plan, dtype, device), dtype)


PLAN_VARIANTS = {
    "2d_relu": dict(d=2, layers=(("fourier", "relu", 4, 3, 6, 3),)),
    "2d_elu_sigmoid": dict(d=2, layers=SPEC_2D),
    "sigmoid_silu": dict(d=3, layers=(("pointwise", "sigmoid", 7),
                                      ("fourier", "silu", 2, 5, 9, 5))),
    "every_activation": dict(d=3, layers=SPEC_ALL_ACTS),
    "no_hidden_layer": dict(d=3, layers=()),
    # F, F' > 16: the CUDA forward's unfused (shared-memory) Fourier path
    "wide_fourier_fields": dict(d=3, layers=(("fourier", "tanh", 2, 18, 20, 17),
                                             ("pointwise", "elu", 5))),
    "three_layers": dict(d=3, layers=(("fourier", "elu", 2, 4, 6, 2),
                                      ("fourier", "elu", 3, 4, 8, 4),
                                      ("pointwise", "tanh", 5))),
    # exactly equivariant layers (gated, norm) after a tensor-power lift of x
    "gated_norm_lift2": dict(d=3, layers=SPEC_EXACT, lift=2),
    "gated_norm_2d_lift3": dict(d=2, layers=(("norm", "elu", 1, (2, 2, 2)),
                                             ("gated", "relu", 2, (2, 2))), lift=3),
    "mixed_kinds": dict(d=3, layers=(("fourier", "elu", 2, 4, 6, 2),
                                     ("norm", "sigmoid", 0, (3, 1)),
                                     ("gated", "silu", 0, (3, 5))), lift=1),
    "gated_no_gates_lift4": dict(d=3, layers=(("gated", "elu", 4, ()),), lift=4),
}


@on_every_backend
@pytest.mark.parametrize("variant", list(PLAN_VARIANTS))
@DTYPES
def test_plan_variants(device, variant, dtype):
    spec = PLAN_VARIANTS[variant]
    g = torch.Generator().manual_seed(11)
    n_src, n_dst, d = 40, 30, spec["d"]
    ei = random_edge_index(n_src, n_dst, 300, 5)
    x = torch.randn(n_src, 3, generator=g, dtype=torch.float64)
    ps = torch.rand(n_src, d, generator=g, dtype=torch.float64)
    pd = torch.rand(n_dst, d, generator=g, dtype=torch.float64)
    ea = torch.randn(ei.shape[1], 1, generator=g, dtype=torch.float64)
    plan = random_plan(d=d, attr=1, c_in=3, c_out=2, layers=spec["layers"], seed=2,
                       lift_degree=spec.get("lift", 1))
    assert_results_close(run_both(x, ps, pd, ea, ei, plan, dtype, device, noncontig=True),
                         dtype, what=variant)


#: Fourier layers of the CPU register kernels (csrc/cpu/fourier_rows.h): every
#: padded width N (3, 4, 5, 8, 9, 12, 16, F != F'), ELU and ReLU, odd and even grids,
#: a first layer folded into its sampler (input + 1 < F: d = 3 without attributes)
REGISTER_SPECS = {
    "folded_n9_elu": dict(attr=0, layers=(("fourier", "elu", 3, 9, 13, 9),
                                          ("fourier", "elu", 2, 9, 12, 9))),
    "folded_n8_relu_then_n3": dict(attr=0, layers=(("fourier", "relu", 2, 7, 10, 5),
                                                   ("fourier", "elu", 3, 3, 5, 3))),
    "folded_lift2_n16": dict(attr=0, lift=2, layers=(("fourier", "elu", 2, 16, 21, 16),)),
    "n4_n5_attr": dict(attr=2, layers=(("fourier", "elu", 3, 4, 7, 4),
                                       ("fourier", "relu", 2, 5, 8, 5))),
    "n12_pointwise_mixed": dict(attr=1, layers=(("pointwise", "silu", 6),
                                                ("fourier", "elu", 2, 12, 15, 10),
                                                ("fourier", "tanh", 2, 3, 5, 2))),
}


@on_cpu_kernels
@pytest.mark.parametrize("spec", list(REGISTER_SPECS))
@pytest.mark.parametrize("registers", ["1", "0"])
@DTYPES
def test_cpu_fourier_register_kernels(device, spec, registers, dtype, monkeypatch):
    """The Fourier layers on AVX-512 registers (PYG_IMPLICIT_CPU_FOURIER_ROWS=1, the
    default where the CPU has AVX-512) and on the row kernels (=0) match the
    reference, forward and backward, with constant samplers/projectors (the
    backward's register path) and with their gradients requested (row kernels)."""
    monkeypatch.setenv("PYG_IMPLICIT_CPU_FOURIER_ROWS", registers)
    sp = REGISTER_SPECS[spec]
    g = torch.Generator().manual_seed(5)
    n, d = 45, 3
    ei = random_edge_index(n, n, 333, 7, self_loops=True)  # 333 edges: ragged tiles
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    pos = torch.rand(n, d, generator=g, dtype=torch.float64)
    ea = torch.randn(ei.shape[1], sp["attr"], generator=g, dtype=torch.float64) \
        if sp["attr"] else None
    plan = random_plan(d=d, attr=sp["attr"], c_in=3, c_out=2, layers=sp["layers"], seed=4,
                       lift_degree=sp.get("lift", 1))
    for constant_grid in (True, False):
        assert_results_close(run_both(x, pos, pos, ea, ei, plan, dtype, device,
                                      constant_grid=constant_grid),
                             dtype, what=f"{spec} constant_grid={constant_grid}")


@on_cpu_kernels
@pytest.mark.parametrize("registers", ["1", "0"])
def test_cpu_fourier_layers_propagate_nan_and_saturate(device, registers, monkeypatch):
    """A NaN edge vector gives NaN in its target row only (as the reference); huge
    negative samples give ELU's -1, not NaN or garbage (the exponential's clamp)."""
    from pyg_implicit.ops import build_csr, fused_point_conv
    monkeypatch.setenv("PYG_IMPLICIT_CPU_FOURIER_ROWS", registers)
    plan = random_plan(d=3, attr=0, c_in=2, c_out=2, seed=1,
                       layers=(("fourier", "elu", 2, 9, 12, 9),))
    ei = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])
    x = torch.ones(4, 2, dtype=torch.float64)
    pos = torch.rand(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pos[0, 0] = float("nan")
    out = fused_point_conv(x, pos, pos, None, build_csr(ei, 4), plan)
    ref = reference_conv(x, pos, pos, None, ei, plan)
    assert torch.isnan(out[:2]).all() and torch.isnan(ref[:2]).all()
    torch.testing.assert_close(out[2:], ref[2:], rtol=1e-10, atol=1e-12)
    # samples of about -1e30: elu = -1 exactly; finite output, equal to the reference
    pos = torch.rand(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    big = dataclasses.replace(plan, biases=[plan.biases[0] - 1e30])
    out = fused_point_conv(x, pos, pos, None, build_csr(ei, 4), big)
    ref = reference_conv(x, pos, pos, None, ei, big)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


@on_every_backend
def test_bipartite_with_isolated_targets_and_a_hub(device):
    """Bipartite graph, degree-0 targets, a target of in-degree 1100, every
    activation; float64 and float32."""
    prob = random_problem(d=3, attr=1, c_in=3, c_out=7, n_src=40, n_dst=23, num_edges=140,
                          layers=SPEC_ALL_ACTS, seed=3, hub_degree=1100)
    check_problem(prob, torch.float64, device, seed=3)
    check_problem(prob, torch.float32, device, seed=3)


@on_every_backend
def test_fifty_thousand_edges(device):
    """A graph of >= 50k edges (many tiles, rows and, on the CUDA source, many
    blocks per launch), float64."""
    prob = random_problem(d=3, attr=2, c_in=4, c_out=3, n_src=2000, n_dst=1800,
                          num_edges=50000, layers=SPEC_SMOOTH, seed=21, hub_degree=1500,
                          n_isolated=5, self_loops=True)
    assert prob[4].shape[1] >= 50000
    check_problem(prob, torch.float64, device, seed=21)


@on_every_backend
def test_empty_graph_and_isolated_nodes(device):
    plan = random_plan().to(device)
    x = torch.randn(5, 3, dtype=torch.float64, device=device)
    pos = torch.rand(5, 3, dtype=torch.float64, device=device)
    empty = torch.zeros(2, 0, dtype=torch.long, device=device)
    out = fused_point_conv(x, pos, pos, None, build_csr(empty, 5, 5), plan)
    assert out.shape == (5, 4) and out.abs().max() == 0
    # no targets at all
    out = fused_point_conv(x, pos, pos[:0], None, build_csr(empty, 5, 0), plan)
    assert out.shape == (0, 4)
    # isolated targets get exactly zero
    ei = torch.tensor([[0, 1, 2], [1, 1, 3]], device=device)
    out = fused_point_conv(x, pos, pos, None, build_csr(ei, 5), plan)
    assert out[[0, 2, 4]].abs().max() == 0 and out[[1, 3]].abs().min() > 0
    # E = 0 with gradients: all zero
    xs, ps = x.clone().requires_grad_(True), pos.clone().requires_grad_(True)
    p = plan_from_tensors(plan, [t.clone().requires_grad_(True) for t in plan.tensors()])
    out = fused_point_conv(xs, ps, ps, None, build_csr(empty, 5, 5), p)
    grads = torch.autograd.grad(out.sum(), [xs, ps, *p.tensors()], allow_unused=True)
    assert all(gr is None or torch.count_nonzero(gr) == 0 for gr in grads)


# --------------------------------------------------------------------------
# symmetries that need no escnn
# --------------------------------------------------------------------------

_REPORT_SCRIPT = r"""
import hashlib, sys, torch
sys.path.insert(0, sys.argv[2])
from op_cases import fused_with_grads, random_problem
prob = random_problem(n_src=30, n_dst=20, num_edges=80, hub_degree=40)
grad_out = torch.randn(20, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
res = fused_with_grads(prob, sys.argv[1], grad_out)
print(hashlib.sha256(b"".join(t.numpy().tobytes() for t in res if t is not None)).hexdigest())
"""


def _run_report_script(device, **env):
    r = subprocess.run([sys.executable, "-c", _REPORT_SCRIPT, device, TESTS], cwd=ROOT,
                       env={**os.environ, **env}, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@on_cuda_source
def test_cuda_launch_report(device):
    """PYG_IMPLICIT_CUDA_REPORT=1 prints each launch's configuration (read once
    per process: a fresh interpreter)."""
    r = _run_report_script(device, PYG_IMPLICIT_CUDA_REPORT="1")
    for kernel in ("point_conv_fwd_kernel", "point_conv_bwd_kernel"):
        lines = [ln for ln in r.stderr.splitlines() if f"[pyg_implicit cuda] {kernel}" in ln]
        assert lines, r.stderr[-3000:]
        for key in ("edge_tile=", "smem=", "blocks/SM=", "grid=", "row_chunks="):
            assert key in lines[0], lines[0]


@on_cuda_source
def test_cuda_register_accumulator_switch_is_bitwise_neutral(device):
    """A_i in registers (default) or in the workspace (PYG_IMPLICIT_CUDA_ACC_REGS=0):
    the same bits, forward and every gradient."""
    digests = {v: _run_report_script(device, PYG_IMPLICIT_CUDA_ACC_REGS=v).stdout.split()[-1]
               for v in ("0", "1")}
    assert digests["0"] == digests["1"], digests


def _fused64(x, ps, pd, ei, plan, device):
    csr = build_csr(ei.to(device), x.shape[0], pd.shape[0])
    return fused_point_conv(x.to(device), ps.to(device), pd.to(device), None, csr,
                            plan.to(device)).cpu()


@on_every_backend
def test_rotation_invariance_octahedral(device):
    plan = octahedral_invariant_plan()
    x, ps, pd, _, ei, _ = random_problem(attr=0, c_in=4, seed=9, hub_degree=100)
    base = _fused64(x, ps, pd, ei, plan, device)
    g = torch.Generator().manual_seed(9)
    for _ in range(3):
        R = torch.eye(3, dtype=torch.float64)[torch.randperm(3, generator=g)]
        R = R * (torch.randint(0, 2, (3,), generator=g) * 2 - 1).double()[:, None]
        rot = _fused64(x, ps @ R.T, pd @ R.T, ei, plan, device)
        assert relative_error(rot, base) <= 1e-10


@on_every_backend
def test_translation_invariance_and_relabeling(device):
    x, ps, pd, _, ei, plan = random_problem(attr=0, seed=10, hub_degree=200)
    out = _fused64(x, ps, pd, ei, plan, device)
    shift = torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64)
    assert relative_error(_fused64(x, ps + shift, pd + shift, ei, plan, device), out) <= 1e-10
    # relabel sources and targets, shuffle the edge order
    ps_perm, pd_perm = torch.randperm(ps.shape[0]), torch.randperm(pd.shape[0])
    inv_s, inv_d = torch.argsort(ps_perm), torch.argsort(pd_perm)
    ei2 = torch.stack([inv_s[ei[0]], inv_d[ei[1]]])[:, torch.randperm(ei.shape[1])]
    out2 = _fused64(x[ps_perm], ps[ps_perm], pd[pd_perm], ei2, plan, device)
    assert relative_error(out2, out[pd_perm]) <= 1e-10


# --------------------------------------------------------------------------
# knobs and limits of each backend
# --------------------------------------------------------------------------

@on_cuda_source
@pytest.mark.parametrize("te", ["1", "3", "16"])
def test_cuda_edge_tile_sizes(device, monkeypatch, te):
    """Other edge-tile sizes (PYG_IMPLICIT_CUDA_TE) give the same results."""
    monkeypatch.setenv("PYG_IMPLICIT_CUDA_TE", te)
    check_problem(random_problem(seed=5, hub_degree=200), torch.float64, device, seed=5)


@on_cuda_source
def test_cuda_many_row_chunks(device, monkeypatch):
    """A tiny workspace budget forces many row chunks (PYG_IMPLICIT_CUDA_WS_MB=1)."""
    monkeypatch.setenv("PYG_IMPLICIT_CUDA_WS_MB", "1")
    # (H + 1) * C_in * 8 bytes = 10 * 16 * 8 = 1280 B per row -> 819 rows per chunk,
    # 3 workspaces in the backward -> 273 rows per chunk
    prob = random_problem(d=3, attr=0, c_in=16, c_out=5, n_src=1500, n_dst=2000,
                          num_edges=6000, layers=(("fourier", "elu", 3, 3, 6, 3),), seed=6,
                          hub_degree=1000)
    check_problem(prob, torch.float64, device, seed=6)


@on_cuda_source
def test_cuda_wide_rows_accumulate_in_workspace(device):
    """(H + 1) C_in = 33 x 64 = 2112 > 2048 entries of A_i per row: more than
    the registers hold (kAccPerThread x 256 threads), so A_i accumulates in the
    workspace; float64 and float32."""
    prob = random_problem(d=3, attr=1, c_in=64, c_out=3, n_src=30, n_dst=20, num_edges=100,
                          layers=(("fourier", "elu", 8, 2, 5, 4),), seed=16, hub_degree=60)
    assert (prob[5].hidden_dim + 1) * 64 > 2048
    check_problem(prob, torch.float64, device, seed=16)
    check_problem(prob, torch.float32, device, seed=16)


#: float32 with PYG_IMPLICIT_CUDA_TF32=1 (the CUDA block GEMMs on TF32 tensor
#: cores, FP32 accumulation) against the float64 oracle: TF32 keeps 10 mantissa
#: bits (unit roundoff 4.9e-4). Largest errors measured (emulated wmma, three
#: seeds): whole tensors 2.0e-3, rows 1.0e-1 (gradient rows of edge attributes
#: and biases: sums that cancel); bounds 5x / 3x those
TF32_TOL, TF32_ROW_TOL = 1e-2, 3e-1


@on_cuda_source
def test_cuda_tf32_option(device, monkeypatch):
    """The opt-in TF32 tensor-core path: within its documented float32 bound,
    and really used (its results differ from the FP32 path's)."""
    x, ps, pd, ea, ei, plan = random_problem(seed=17, hub_degree=200)
    monkeypatch.setenv("PYG_IMPLICIT_CUDA_TF32", "1")
    tf32 = run_both(x, ps, pd, ea, ei, plan, torch.float32, device, seed=17)
    assert_results_close(tf32, torch.float32, "tf32", tol=TF32_TOL, row_tol=TF32_ROW_TOL)
    monkeypatch.delenv("PYG_IMPLICIT_CUDA_TF32")
    fp32 = run_both(x, ps, pd, ea, ei, plan, torch.float32, device, seed=17)
    assert not torch.equal(tf32[0][0], fp32[0][0])
    # float64 ignores the option: bitwise the FP32-path result
    grad_out = torch.ones(pd.shape[0], plan.out_channels, dtype=torch.float64)
    monkeypatch.setenv("PYG_IMPLICIT_CUDA_TF32", "1")
    with_option = fused_with_grads((x, ps, pd, ea, ei, plan), device, grad_out)
    monkeypatch.delenv("PYG_IMPLICIT_CUDA_TF32")
    without = fused_with_grads((x, ps, pd, ea, ei, plan), device, grad_out)
    assert all((a is None and b is None) or torch.equal(a, b)
               for a, b in zip(with_option, without))


@on_cuda_source
def test_cuda_plan_too_large_for_shared_memory(device):
    """A grid far beyond shared memory gives a clear error, not a bad launch
    (host code: it runs under the CPU emulation too). F = 20 > 16: the forward
    stores the grid samples; F = 4: only the backward does."""
    for F, forward_fits in ((20, False), (4, True)):
        x, ps, pd, ea, ei, plan = random_problem(
            layers=(("fourier", "elu", 8, F, 20000, 4),), seed=15, hub_degree=0)
        csr = build_csr(ei.to(device), x.shape[0], pd.shape[0])
        xs = x.to(device).requires_grad_(True)
        args = (xs, ps.to(device), pd.to(device), ea.to(device), csr, plan.to(device))
        if not forward_fits:
            with pytest.raises(RuntimeError, match="shared memory"):
                fused_point_conv(*args)
            continue
        out = fused_point_conv(*args)
        with pytest.raises(RuntimeError, match="shared memory"):
            out.sum().backward()
    _sync(device)


@pytest.mark.backend("fused_cpu")
@pytest.mark.parametrize("device", TARGETS[1:2])
@pytest.mark.parametrize("num_edges", [6000, 300000])
def test_cuda_matches_cpu_kernels(device, num_edges):
    """CUDA fused vs CPU fused, float64, forward and every gradient; up to
    300k edges (the oracle would not fit: the CPU kernels are checked against it
    everywhere else)."""
    n = max(50, num_edges // 30)
    prob = random_problem(d=3, attr=2, c_in=5, c_out=4, n_src=n, n_dst=n,
                          num_edges=num_edges, seed=8, hub_degree=1100, self_loops=True)
    grad_out = torch.randn(n, 4, dtype=torch.float64)
    on_gpu = fused_with_grads(prob, device, grad_out)
    on_cpu = fused_with_grads(prob, "cpu", grad_out)
    names = ["out"] + gradient_names(prob[5], True)
    for name, a, b in zip(names, on_gpu, on_cpu):
        if b is None or b.numel() == 0:
            continue
        assert_rows_close(a, b, 1e-10, f"{name} ({num_edges} edges)")


# --------------------------------------------------------------------------
# autograd machinery
# --------------------------------------------------------------------------

#: plans of the autograd tests: Fourier + pointwise, and gated + norm after a lift
SMALL_PLANS = {
    "fourier": dict(layers=(("fourier", "elu", 2, 4, 5, 3), ("pointwise", "silu", 6))),
    "exact": dict(layers=(("gated", "elu", 1, (3, 1)), ("norm", "tanh", 1, (3, 2))),
                  lift_degree=2),
}
on_small_plans = pytest.mark.parametrize("kind", list(SMALL_PLANS))


def _small_problem(device="cpu", attr=2, seed=0, kind="fourier"):
    g = torch.Generator().manual_seed(seed)
    n_src, n_dst = 5, 4
    ei = torch.tensor([[0, 1, 2, 3, 4, 0, 2, 2, 1, 4, 3],
                       [0, 0, 1, 1, 2, 3, 3, 3, 2, 0, 1]])
    leafs = [torch.randn(n_src, 2, generator=g, dtype=torch.float64),
             torch.rand(n_src, 3, generator=g, dtype=torch.float64),
             torch.rand(n_dst, 3, generator=g, dtype=torch.float64),
             torch.randn(ei.shape[1], attr, generator=g, dtype=torch.float64)]
    x, ps, pd, ea = (t.to(device).requires_grad_(True) for t in leafs)
    plan = random_plan(d=3, attr=attr, c_in=2, c_out=3, seed=seed, **SMALL_PLANS[kind])
    plan = plan.to(device)
    for t in plan.tensors():
        t.requires_grad_(True)
    return x, ps, pd, ea, ei.to(device), plan


@on_every_backend
@on_small_plans
def test_gradcheck(device, kind):
    x, ps, pd, ea, ei, plan = _small_problem(device, kind=kind)
    csr = build_csr(ei, 5, 4)

    def fn(x, ps, pd, ea, *pt):
        return fused_point_conv(x, ps, pd, ea, csr, plan_from_tensors(plan, pt))

    inputs = (x, ps, pd, ea, *plan.tensors())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def _op_args(x, ps, pd, ea, ei, plan):
    """Arguments of point_conv_forward (edge attributes in CSR order)."""
    csr = build_csr(ei, x.shape[0], pd.shape[0])
    args = (x, ps, pd, ea[csr.perm].detach().requires_grad_(ea.requires_grad), csr.rowptr,
            csr.col, csr.csc_rowptr, csr.csc_perm, plan.weights, plan.biases,
            plan.samplers, plan.projectors, plan.fields, plan.field_biases, list(plan.kinds),
            list(plan.activations), plan.lift_degree, plan.width, plan.Wt)
    return args, csr


def _detached(args):
    """The op arguments with every tensor (also inside tensor lists) detached."""
    def det(a):
        if isinstance(a, torch.Tensor):
            return a.detach()
        if isinstance(a, list) and a and isinstance(a[0], torch.Tensor):
            return [t.detach() for t in a]
        return a
    return [det(a) for a in args]


def _backward_args(grad_out, args, mask):
    """Arguments of point_conv_backward from those of the forward."""
    return (grad_out, *args, mask)


@on_every_backend
@on_small_plans
def test_opcheck_forward(device, kind):
    args, _ = _op_args(*_small_problem(device, kind=kind))
    torch.library.opcheck(OPS.point_conv_forward.default, args)
    # and without gradients
    torch.library.opcheck(OPS.point_conv_forward.default, tuple(_detached(args)))


@on_every_backend
@on_small_plans
@pytest.mark.parametrize("mask", [[True] * 11,
                                  [True, False, True, False, True, False, False,
                                   True, True, False, True]])
def test_opcheck_backward(device, mask, kind):
    args, csr = _op_args(*_small_problem(device, kind=kind))
    args = _detached(args)
    grad_out = torch.randn(4, 3, dtype=torch.float64, device=device)
    bargs = _backward_args(grad_out, args, mask)
    torch.library.opcheck(OPS.point_conv_backward.default, bargs)
    assert len(OPS.point_conv_backward(*bargs)) == 11


def _flat_groups(groups):
    """The 11 gradient groups of point_conv_backward as a flat tensor list."""
    return [t for g in groups for t in (g if isinstance(g, (list, tuple)) else [g])]


@on_every_backend
@on_small_plans
def test_backward_op_matches_reference_and_masks(device, kind):
    """point_conv_backward, called directly, against the gradients of the
    materialised reference (an independent oracle), with every output mask."""
    x, ps, pd, ea, ei, plan = _small_problem("cpu", kind=kind)
    args, csr = _op_args(x, ps, pd, ea, ei, plan)
    dargs = [a.to(device) if isinstance(a, torch.Tensor) else
             [t.to(device) for t in a] if isinstance(a, list) and a and
             isinstance(a[0], torch.Tensor) else a for a in _detached(args)]
    R = torch.randn(pd.shape[0], plan.out_channels, dtype=torch.float64)
    # the oracle: autograd through the reference, edge attributes in CSR order
    ref = reference_conv(x, ps, pd, ea, ei, plan)
    ins = [x, ps, pd, ea, *plan.tensors()]
    expected = [torch.zeros_like(t) if g is None else g for t, g in zip(
        ins, torch.autograd.grad((ref * R).sum(), ins, allow_unused=True))]
    expected[3] = expected[3][csr.perm]
    L = len(plan.weights)
    sizes = [1, 1, 1, 1, L, L, L, L, L, 1, 1]  # tensors per gradient group
    bounds = [sum(sizes[:k]) for k in range(12)]
    for k in [None, *range(11)]:
        mask = [True] * 11 if k is None else [i == k for i in range(11)]
        got = [t.cpu() for t in _flat_groups(
            OPS.point_conv_backward(*_backward_args(R.to(device), dargs, mask)))]
        assert len(got) == len(expected)
        for group in range(11):
            for t in range(bounds[group], bounds[group + 1]):
                if mask[group]:
                    assert_rows_close(got[t], expected[t], 1e-10,
                                      f"mask {mask}: gradient {t} (group {group})")
                else:  # masked out: full shape, content unspecified (fused_op_spec.md)
                    assert got[t].shape == expected[t].shape, (mask, t)


@on_every_backend
def test_partial_requires_grad(device):
    x, ps, pd, ea, ei, plan = _small_problem(device)
    csr = build_csr(ei, 5, 4)
    p = plan.to(torch.float64)  # copies
    p = plan_from_tensors(p, [t.detach().clone() for t in p.tensors()])
    p.Wt.requires_grad_(True)
    x2, ps2, pd2, ea2 = (t.detach() for t in (x, ps, pd, ea))
    out = fused_point_conv(x2, ps2, pd2, ea2, csr, p)
    (gWt,) = torch.autograd.grad(out.sum(), [p.Wt])
    ref = reference_conv(x2, ps2, pd2, ea2, ei, p)
    (rWt,) = torch.autograd.grad(ref.sum(), [p.Wt])
    assert_rows_close(gWt.cpu(), rWt.cpu(), 1e-10, "Wt gradient")
    # nothing requires grad: plain tensor out
    with torch.no_grad():
        out = fused_point_conv(x, ps, pd, ea, csr, plan)
    assert not out.requires_grad


@on_every_backend
def test_double_backward_raises(device):
    x, ps, pd, ea, ei, plan = _small_problem(device)
    out = fused_point_conv(x, ps, pd, ea, build_csr(ei, 5, 4), plan)
    (gpos,) = torch.autograd.grad(out.square().sum(), [ps], create_graph=True)
    assert gpos.requires_grad
    with pytest.raises(RuntimeError, match="double backward not supported"):
        gpos.square().sum().backward()


@on_every_backend
@DTYPES
@pytest.mark.parametrize("exact", [False, True], ids=["fourier", "gated_norm"])
def test_deterministic(device, dtype, exact):
    g = torch.Generator().manual_seed(3)
    n = 400
    ei = random_edge_index(n, n, 8000, 9, self_loops=True, hub_degree=300).to(device)
    x, pos = (torch.randn(n, 3, generator=g).to(device, dtype) for _ in range(2))
    ea = torch.randn(ei.shape[1], 2, generator=g).to(device, dtype)
    plan = random_plan(dtype, attr=2, seed=4, requires_grad=True,
                       **(dict(layers=SPEC_EXACT, lift_degree=2) if exact else {}))
    plan = plan_from_tensors(plan, [t.detach().to(device).requires_grad_(True)
                                    for t in plan.tensors()])
    csr = build_csr(ei, n)

    def run():
        xs, ps, eas = (t.clone().requires_grad_(True) for t in (x, pos, ea))
        out = fused_point_conv(xs, ps, ps, eas, csr, plan)
        grads = torch.autograd.grad((out * out).sum(), [xs, ps, eas, *plan.tensors()])
        return [out, *grads]

    a, b = run(), run()
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    # the result does not depend on the number of CPU threads either
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
        self.field_biases = torch.nn.ParameterList(plan.field_biases)
        for l, m in enumerate(plan.fields):
            self.register_buffer(f"fields_{l}", m)
        self.width = torch.nn.Parameter(plan.width)
        self.Wt = torch.nn.Parameter(plan.Wt)
        self.acts, self.kinds, self.lift = list(plan.activations), list(plan.kinds), \
            plan.lift_degree
        self.dims = (plan.pos_dim, plan.attr_dim, plan.in_channels, plan.out_channels)

    def forward(self, x, pos, edge_attr, csr: CSRGraph):
        fields = [getattr(self, f"fields_{l}") for l in range(len(self.kinds))]
        plan = KernelPlan(list(self.weights), list(self.biases), list(self.samplers),
                          list(self.projectors), self.acts, self.width, self.Wt,
                          *self.dims, kinds=self.kinds, fields=fields,
                          field_biases=list(self.field_biases), lift_degree=self.lift)
        h = fused_point_conv(x, pos, pos, edge_attr, csr, plan)
        return torch.tanh(h).sum(-1)


@pytest.mark.parametrize("device", TARGETS[:2])
@on_small_plans
def test_torch_compile_fullgraph(device, kind):
    torch._dynamo.reset()
    x, ps, pd, ea, ei, _ = _small_problem(device)
    plan = random_plan(d=3, attr=2, c_in=2, c_out=3, seed=0, **SMALL_PLANS[kind])
    model = _FusedModel(plan.to(device))
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
# knobs and memory of the CPU kernels
# --------------------------------------------------------------------------

@pytest.mark.parametrize("knobs", [
    {"PYG_IMPLICIT_CPU_TILE": "1"},
    {"PYG_IMPLICIT_CPU_TILE": "3", "PYG_IMPLICIT_CPU_ROWS": "1"},
    {"PYG_IMPLICIT_CPU_ROWS": "5", "PYG_IMPLICIT_NO_SMALL_GEMM": "1"},
    {"PYG_IMPLICIT_CPU_GENERIC_ACT": "1"},
])
@on_cpu_kernels
def test_cpu_tile_and_window_knobs(device, knobs):
    """Other edge tiles, row windows, the BLAS fallback and the contract's scalar
    activations (csrc/plan_contract.h) in the CPU kernels give the same results.
    The knobs are read once per process: a fresh pytest each."""
    env = {**os.environ, **knobs, "PYG_IMPLICIT_REQUIRE": "fused_cpu"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "tests/test_fused_op.py", "-k",
           "fused_cpu and (test_high_degree_node or test_plan_variants)"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    expected = f"{2 + 2 * len(PLAN_VARIANTS)} passed"
    assert r.returncode == 0 and expected in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]


_PEAK_SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[4])
from op_cases import random_plan, random_edge_index
from pyg_implicit.ops import build_csr, fused_point_conv
from pyg_implicit.plan import hidden_features

torch.set_num_threads(1)
backend, H, E, kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[5]
n, c = 2000, 4
if kind == "pointwise":
    layer, lift = ("pointwise", "silu", H), 1
else:  # H outputs: vector-sized fields and a few scalars, after a lift of degree 2
    fields = (H - 2) // 3
    layer, lift = (kind, "elu", H - 3 * fields, (3,) * fields), 2
plan = random_plan(c_in=c, c_out=c, layers=(layer,), requires_grad=True, lift_degree=lift)


def step(num_edges):
    ei = random_edge_index(n, n, num_edges, 0)
    x = torch.randn(n, c, dtype=torch.float64, requires_grad=True)
    pos = torch.rand(n, 3, dtype=torch.float64, requires_grad=True)
    if backend == "fused":
        out = fused_point_conv(x, pos, pos, None, build_csr(ei, n), plan)
    else:  # the factorised path: g_e (x) f_j materialised, [E, (H + 1) C_in]
        j, i = ei
        g = hidden_features(plan, pos[j] - pos[i])
        m = (g[:, :, None] * x[j][:, None, :]).reshape(num_edges, -1)
        out = torch.zeros(n, m.shape[1], dtype=m.dtype).index_add(0, i, m) @ plan.Wt.t()
    out.square().sum().backward()


def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024


step(100)  # warm-up (thread pools, lazily built state) on a tiny graph
before = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak resident set size (VmHWM)
step(E)
print(json.dumps({"peak_bytes": status("VmHWM:") - before}))
"""


def _peak_bytes(backend, hidden, num_edges, kind="pointwise"):
    # large blocks always come from mmap and go back to the OS when freed, so
    # the resident-set peak is the allocation peak (no recycled heap)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, backend, str(hidden),
                        str(num_edges), TESTS, kind], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])["peak_bytes"]


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="needs Linux's /proc/self/clear_refs to reset the peak RSS")
@on_cpu_kernels
@pytest.mark.parametrize("kind", ["pointwise", "gated", "norm"])
def test_no_allocation_proportional_to_edges_times_hidden(device, kind):
    """Forward + backward of the CPU op: the peak memory does not grow with
    E x H (the hidden size of the kernel MLP); the factorised path, which
    materialises E x (H + 1) x C_in, does, which shows the measurement works."""
    E, small, large = 40000, 8, 264
    e_h = E * (large - small) * 8  # bytes of one float64 E x (H_large - H_small) tensor
    fused = {h: _peak_bytes("fused", h, E, kind) for h in (small, large)}
    factorized_large = _peak_bytes("factorized", large, E, kind)
    assert factorized_large > e_h, (factorized_large, e_h)  # the probe sees E x H
    growth = fused[large] - fused[small]
    assert growth < 0.1 * e_h, f"fused peak grew by {growth / 2**20:.1f} MiB with H " \
        f"({e_h / 2**20:.1f} MiB = one E x H tensor); peaks {fused}"


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------

def _good(device="cpu"):
    x, ps, pd, ea, ei, plan = _small_problem(device)
    pos = torch.rand(5, 3, dtype=torch.float64, device=device)
    plan = random_plan(d=3, attr=2, c_in=2, c_out=3, layers=(("pointwise", "elu", 4),))
    return x.detach(), pos, ea.detach(), ei, plan.to(device)


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
@on_every_backend
def test_fused_bad_input(device, case, exc, name):
    x, pos, ea, ei, plan = _good(device)
    csr = build_csr(ei, 5, 5)
    args = dict(x_src=x, pos_src=pos, pos_dst=pos, edge_attr=ea, csr=csr, plan=plan)
    if case == "x_width":
        args["x_src"] = torch.randn(5, 3, dtype=torch.float64, device=device)
    elif case == "x_dtype":
        args["x_src"] = x.to(torch.int64)
    elif case == "x_not_tensor":
        args["x_src"] = x.tolist()
    elif case == "pos_dim":
        args["pos_src"] = args["pos_dst"] = torch.rand(5, 2, dtype=torch.float64, device=device)
    elif case == "pos_rows":
        args["pos_src"] = torch.rand(4, 3, dtype=torch.float64, device=device)
    elif case == "pos_dtype":
        args["pos_src"] = pos.float()
    elif case == "pos_device":
        args["pos_dst"] = torch.empty(5, 3, dtype=torch.float64, device="meta")
    elif case == "attr_width":
        args["edge_attr"] = torch.randn(ea.shape[0], 3, dtype=torch.float64, device=device)
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


@on_every_backend
def test_op_direct_bad_input_raises_runtime_error(device):
    """The op's own checks (csrc/point_conv.cpp), shared by every backend."""
    x, pos, ea, ei, plan = _good(device)
    csr = build_csr(ei, 5, 5)
    args = [x, pos, pos, ea[csr.perm], csr.rowptr, csr.col, csr.csc_rowptr, csr.csc_perm,
            plan.weights, plan.biases, plan.samplers, plan.projectors, plan.fields,
            plan.field_biases, plan.kinds, plan.activations, plan.lift_degree,
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
    bad(6, csr.csc_rowptr[:-1], "csc_rowptr")    # wrong length
    bad(7, csr.csc_perm[:-1], "csc_perm")        # wrong length
    bad(8, [plan.weights[0][:, :2]], "weights")  # layer shape
    bad(12, [plan.fields[0].float()], "fields")  # field map dtype
    bad(13, [plan.Wt.new_ones(2)], "field_biases")  # biases on a pointwise layer
    bad(14, [7], "kinds")                        # unknown layer kind
    bad(14, [1], "samplers")                     # Fourier without a sampler
    bad(15, [9], "activation")                   # unknown code
    bad(16, 0, "lift_degree")                    # no lift
    bad(16, 2, "weights")                        # lift of another length
    bad(17, plan.width.reshape(1), "width")      # not 0-d
    bad(18, plan.Wt[:, 1:], "Wt")
    if device == "cuda":
        bad(5, csr.col.cpu(), "col")             # another device
    if device == "cpu" and not backends.emulated():
        # the CPU kernels read the indices on the host and check their values
        bad(5, torch.full_like(csr.col, 99), "col")  # out of range source
        bad(5, -csr.col - 1, "col")                  # negative source
        bad(4, csr.rowptr.flip(0), "rowptr")         # not a valid CSR
    grad = torch.randn(5, plan.out_channels, dtype=torch.float64, device=device)
    bargs = [grad, *args, [True] * 11]
    OPS.point_conv_backward(*bargs)
    with pytest.raises(RuntimeError, match="grad_out"):
        OPS.point_conv_backward(grad[:, :1], *bargs[1:])
    with pytest.raises(RuntimeError, match="output_mask"):
        OPS.point_conv_backward(*bargs[:-1], [True] * 3)
    if device == "cpu" and not backends.emulated():
        with pytest.raises(RuntimeError, match="csc_perm"):
            OPS.point_conv_backward(*bargs[:8], csr.csc_perm + 100, *bargs[9:])
    # the device is still usable (no kernel ran on bad data)
    _sync(device)
    assert torch.isfinite(OPS.point_conv_forward(*args)).all()


@on_every_backend
def test_bad_field_maps(device):
    """A field map with an entry out of range, or of the wrong length, is refused
    by the wrapper (ValueError naming plan.fields) and by the op itself."""
    x, ps, pd, ea, ei, plan = _small_problem(device, kind="exact")
    csr = build_csr(ei, 5, 4)
    args = dict(x_src=x.detach(), pos_src=ps.detach(), pos_dst=pd.detach(),
                edge_attr=ea.detach(), csr=csr)
    # layer 0 is gated (3 gates), layer 1 norm (one map entry per pre-activation)
    for l, change, match in ((0, lambda m: m.fill_(7), r"plan.fields\[0\] entries"),
                             (0, lambda m: m.fill_(-2), r"plan.fields\[0\] entries"),
                             (1, lambda m: m[:-1], r"plan.fields\[1\] has")):
        bad = plan.with_tensors([t.detach() for t in plan.tensors()])
        bad.fields = list(plan.fields)
        bad.fields[l] = change(plan.fields[l].clone())
        with pytest.raises(ValueError, match=match):
            fused_point_conv(plan=bad, **args)
        if device == "cpu" and not backends.emulated() or device == "cuda":
            op_args, _ = _op_args(x.detach(), ps.detach(), pd.detach(), ea.detach(), ei, bad)
            with pytest.raises(RuntimeError, match="fields"):
                OPS.point_conv_forward(*op_args)
    bad = plan.with_tensors([t.detach() for t in plan.tensors()])
    bad.kinds = [9, *plan.kinds[1:]]
    with pytest.raises(ValueError, match=r"plan.kinds\[0\]"):
        fused_point_conv(plan=bad, **args)
