"""CUDA backend of the fused point convolution (csrc/cuda) against the pure-torch oracle.

Marked ``backend("cuda")``: skipped without a CUDA GPU or without CUDA kernels
in ``pyg_implicit._C``, failed instead when ``PYG_IMPLICIT_REQUIRE`` lists cuda
(``benchmarks/gpu_check.sh``). Needs neither escnn nor torch-scatter/torch-cluster: the plans are random
``KernelPlan`` objects built here.

Tolerances: float64 relative error (norm-wise) <= 1e-10, float32 <= 1e-5
against a float64 oracle. TF32 is switched off for these tests (the node-level
GEMMs run through cuBLAS and would otherwise follow the user's TF32 setting).

``csrc/cuda/emulate_on_cpu.py`` runs this file on the CUDA source built for CPU
threads (backend ``cuda_emulated``). For debugging the test logic, set
``PYG_IMPLICIT_TEST_DEVICE=cpu``: the same tests then run the CPU kernels.
"""
from __future__ import annotations

import math
import os

import pytest
import torch

import backends
from compare import ROW_TOL, TOL, max_row_error, relative_error
from pyg_implicit.plan import ACTIVATIONS, KernelPlan, edge_kernels
from pyg_implicit.ops import build_csr, fused_point_conv

DEV = os.environ.get("PYG_IMPLICIT_TEST_DEVICE", "cuda")
if DEV not in ("cuda", "cpu"):
    raise ValueError(f"PYG_IMPLICIT_TEST_DEVICE must be 'cuda' or 'cpu', got {DEV!r}")
# the backend these tests exercise: the CUDA source on a GPU, the CUDA source on
# CPU threads (emulate_on_cpu.py) or, for debugging the tests, the CPU kernels
BACKEND = "cuda" if DEV == "cuda" else (
    "cuda_emulated" if backends.emulated() else "fused_cpu")
# the CUDA source runs (on a GPU or emulated): its host-side limits and knobs apply
CUDA_SOURCE = BACKEND in ("cuda", "cuda_emulated")
cuda_source_only = pytest.mark.skipif(
    not CUDA_SOURCE, reason="tests a limit or knob of the CUDA source (csrc/cuda); the "
                            "CPU kernels' knobs are tested in test_fused_op.py")

pytestmark = pytest.mark.backend(BACKEND)


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


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

# layer specs: ("fourier", M, F, G, F', act) or ("pointwise", H', act)
SPEC_3D = [("fourier", 3, 4, 10, 4, "elu"), ("pointwise", 9, "silu"),
           ("fourier", 2, 6, 7, 3, "tanh")]
SPEC_2D = [("fourier", 4, 3, 8, 3, "elu"), ("fourier", 4, 3, 8, 2, "sigmoid")]
SPEC_SMOOTH = [("fourier", 2, 2, 3, 2, "tanh"), ("pointwise", 4, "silu")]
SPEC_ALL_ACTS = [("pointwise", 6, "relu"), ("pointwise", 6, "elu"),
                 ("fourier", 2, 3, 5, 2, "sigmoid"), ("pointwise", 5, "tanh"),
                 ("fourier", 1, 5, 6, 4, "silu")]


def make_plan(d, A, c_in, c_out, spec, seed=0, width=0.7):
    """Random KernelPlan in float64 on the CPU."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, fan_in=1):
        return torch.randn(*shape, generator=g, dtype=torch.float64) / math.sqrt(fan_in)

    weights, biases, samplers, projectors, acts = [], [], [], [], []
    h = d + A
    for layer in spec:
        if layer[0] == "fourier":
            _, M, F, G, Fp, act = layer
            hp = M * F
            Q, P = rnd(G, F, fan_in=F), rnd(Fp, G, fan_in=G)
            h_out = M * Fp
        else:
            _, hp, act = layer
            Q, P = torch.empty(0, dtype=torch.float64), torch.empty(0, dtype=torch.float64)
            h_out = hp
        weights.append(rnd(hp, h, fan_in=h))
        biases.append(0.3 * rnd(hp))
        samplers.append(Q)
        projectors.append(P)
        acts.append(ACTIVATIONS[act])
        h = h_out
    Wt = rnd(c_out, (h + 1) * c_in, fan_in=(h + 1) * c_in)
    return KernelPlan(weights, biases, samplers, projectors, acts,
                      torch.tensor(width, dtype=torch.float64), Wt,
                      pos_dim=d, attr_dim=A, in_channels=c_in, out_channels=c_out)


def plan_from_tensors(plan, tensors):
    L = len(plan.weights)
    return KernelPlan(list(tensors[:L]), list(tensors[L:2 * L]), list(tensors[2 * L:3 * L]),
                      list(tensors[3 * L:4 * L]), list(plan.activations), tensors[4 * L],
                      tensors[4 * L + 1], plan.pos_dim, plan.attr_dim, plan.in_channels,
                      plan.out_channels)


def random_graph(n_src, n_dst, avg_deg, seed=0, n_isolated=3, big_degree=1100):
    """edge_index [2, E] with degree-0 targets (the last n_isolated) and one
    target (index 0) of in-degree >= big_degree; edges in random order."""
    g = torch.Generator().manual_seed(seed)
    e0 = n_dst * avg_deg
    src = torch.randint(0, n_src, (e0,), generator=g)
    dst = torch.randint(0, max(n_dst - n_isolated, 1), (e0,), generator=g)
    if big_degree:
        src = torch.cat([src, torch.randint(0, n_src, (big_degree,), generator=g)])
        dst = torch.cat([dst, torch.zeros(big_degree, dtype=torch.long)])
    order = torch.randperm(src.numel(), generator=g)
    return torch.stack([src[order], dst[order]])


def make_problem(d=3, A=2, c_in=5, c_out=4, n_src=60, n_dst=50, avg_deg=6, spec=SPEC_3D,
                 seed=0, big_degree=1100, n_isolated=3):
    g = torch.Generator().manual_seed(1000 + seed)
    ei = random_graph(n_src, n_dst, avg_deg, seed=seed, big_degree=big_degree,
                      n_isolated=n_isolated)
    E = ei.shape[1]
    x = torch.randn(n_src, c_in, generator=g, dtype=torch.float64)
    ps = torch.rand(n_src, d, generator=g, dtype=torch.float64)
    pd = torch.rand(n_dst, d, generator=g, dtype=torch.float64)
    ea = torch.randn(E, A, generator=g, dtype=torch.float64) if A else None
    plan = make_plan(d, A, c_in, c_out, spec, seed=seed)
    return x, ps, pd, ea, ei, plan


def oracle(x, ps, pd, ea, ei, plan):
    """Materialised reference: out_i = sum_e K_e f_j (plan.edge_kernels + index_add_)."""
    src, dst = ei[0], ei[1]
    vec = ps[src] - pd[dst]
    K = edge_kernels(plan, vec, ea)
    msg = torch.einsum("eoc,ec->eo", K, x[src])
    return x.new_zeros(pd.shape[0], plan.out_channels).index_add_(0, dst, msg)


def leaves(x, ps, pd, ea, plan, dtype, device):
    """Copies of every differentiable input on (device, dtype), requiring grad."""
    conv = lambda t: t.detach().to(device=device, dtype=dtype).requires_grad_(True)  # noqa
    xs, pss, pds = conv(x), conv(ps), conv(pd)
    eas = conv(ea) if ea is not None else None
    ts = [conv(t) for t in plan.tensors()]
    return xs, pss, pds, eas, ts


def run_fused(x, ps, pd, ea, ei, plan, dtype, device, grad_out=None):
    xs, pss, pds, eas, ts = leaves(x, ps, pd, ea, plan, dtype, device)
    p2 = plan_from_tensors(plan, ts)
    csr = build_csr(ei.to(device), x.shape[0], pd.shape[0])
    out = fused_point_conv(xs, pss, pds, eas, csr, p2)
    grads = None
    if grad_out is not None:
        inputs = [xs, pss, pds] + ([eas] if eas is not None else []) + ts
        grads = torch.autograd.grad(out, inputs, grad_out.to(device=device, dtype=dtype),
                                    allow_unused=True)
    return out, grads


def run_oracle(x, ps, pd, ea, ei, plan, grad_out):
    xs, pss, pds, eas, ts = leaves(x, ps, pd, ea, plan, torch.float64, "cpu")
    p2 = plan_from_tensors(plan, ts)
    out = oracle(xs, pss, pds, eas, ei, p2)
    inputs = [xs, pss, pds] + ([eas] if eas is not None else []) + ts
    grads = torch.autograd.grad(out, inputs, grad_out, allow_unused=True)
    return out, grads


def grad_names(plan, has_attr):
    L = len(plan.weights)
    return (["x_src", "pos_src", "pos_dst"] + (["edge_attr"] if has_attr else [])
            + [f"weights[{i}]" for i in range(L)] + [f"biases[{i}]" for i in range(L)]
            + [f"samplers[{i}]" for i in range(L)] + [f"projectors[{i}]" for i in range(L)]
            + ["width", "Wt"])


def _round_to(t, dtype):
    return t if t is None else t.to(dtype).to(torch.float64)


def assert_matches(problem, dtype, tol, seed=0):
    x, ps, pd, ea, ei, plan = problem
    if dtype != torch.float64:
        # the oracle sees the same (rounded) inputs: only the arithmetic differs
        x, ps, pd, ea = (_round_to(t, dtype) for t in (x, ps, pd, ea))
        plan = plan_from_tensors(plan, [_round_to(t, dtype) for t in plan.tensors()])
    g = torch.Generator().manual_seed(77 + seed)
    grad_out = torch.randn(pd.shape[0], plan.out_channels, generator=g, dtype=torch.float64)
    out_ref, grads_ref = run_oracle(x, ps, pd, ea, ei, plan, grad_out)
    out, grads = run_fused(x, ps, pd, ea, ei, plan, dtype, DEV, grad_out)
    assert out.device.type == DEV and out.dtype == dtype
    # as a whole and row by row (compare.py): a wrong row of small norm cannot hide
    row_tol = ROW_TOL[dtype] if tol == TOL[dtype] else tol
    pairs = [("out", out, out_ref)]
    for name, a, b in zip(grad_names(plan, ea is not None), grads, grads_ref):
        if b is None or b.numel() == 0:  # e.g. sampler of a pointwise layer
            continue
        assert a is not None, f"no gradient for {name}"
        pairs.append((name, a, b))
    bad = {}
    for name, a, b in pairs:
        whole, row = relative_error(a, b), max_row_error(a, b)
        if not (whole <= tol and row <= row_tol):
            bad[name] = f"whole {whole:.2e}, worst row {row:.2e}"
    assert not bad, f"relative errors above {tol} (rows {row_tol}): {bad}"


# ---------------------------------------------------------------------------
# correctness against the oracle
# ---------------------------------------------------------------------------

def test_forward_backward_float64_3d():
    assert_matches(make_problem(), torch.float64, 1e-10)


def test_forward_backward_float32_3d():
    assert_matches(make_problem(seed=1), torch.float32, 1e-5, seed=1)


def test_forward_backward_2d_no_attr():
    prob = make_problem(d=2, A=0, c_in=6, c_out=3, spec=SPEC_2D, seed=2)
    assert_matches(prob, torch.float64, 1e-10, seed=2)
    assert_matches(prob, torch.float32, 1e-5, seed=2)


def test_all_activations_bipartite():
    prob = make_problem(d=3, A=1, c_in=3, c_out=7, n_src=40, n_dst=23, spec=SPEC_ALL_ACTS,
                        seed=3, big_degree=300)
    assert_matches(prob, torch.float64, 1e-10, seed=3)


def test_no_hidden_layers():
    prob = make_problem(d=3, A=2, c_in=4, c_out=4, spec=[], seed=4, big_degree=50)
    assert_matches(prob, torch.float64, 1e-10, seed=4)


@cuda_source_only
@pytest.mark.parametrize("te", ["1", "3", "16"])
def test_edge_tile_sizes(monkeypatch, te):
    """Other edge-tile sizes (PYG_IMPLICIT_CUDA_TE) give the same results."""
    monkeypatch.setenv("PYG_IMPLICIT_CUDA_TE", te)
    assert_matches(make_problem(seed=5, big_degree=200), torch.float64, 1e-10, seed=5)


@cuda_source_only
def test_many_row_chunks(monkeypatch):
    """A tiny workspace budget forces many row chunks (PYG_IMPLICIT_CUDA_WS_MB=1)."""
    monkeypatch.setenv("PYG_IMPLICIT_CUDA_WS_MB", "1")
    # (H + 1) * C_in * 8 bytes = 10 * 16 * 8 = 1280 B per row -> 819 rows per chunk,
    # 2 workspaces in the backward -> 409 rows per chunk
    prob = make_problem(d=3, A=0, c_in=16, c_out=5, n_src=1500, n_dst=2000, avg_deg=3,
                        spec=[("fourier", 3, 3, 6, 3, "elu")], seed=6, big_degree=1000)
    assert_matches(prob, torch.float64, 1e-10, seed=6)


def test_empty_graph():
    x, ps, pd, ea, ei, plan = make_problem(seed=7, big_degree=0)
    ei = ei[:, :0]
    ea = ea[:0] if ea is not None else None
    out, grads = run_fused(x, ps, pd, ea, ei, plan, torch.float64, DEV,
                           grad_out=torch.randn(pd.shape[0], plan.out_channels,
                                                dtype=torch.float64))
    assert out.shape == (pd.shape[0], plan.out_channels)
    assert torch.count_nonzero(out) == 0
    for gr in grads:
        if gr is not None:
            assert torch.count_nonzero(gr) == 0


@pytest.mark.backend("fused_cpu")
@pytest.mark.skipif(DEV == "cpu", reason="compares the CUDA device with the CPU kernels")
def test_matches_cpu_backend():
    """Same op on CPU and CUDA (both fused) agree."""
    x, ps, pd, ea, ei, plan = make_problem(seed=8)
    g = torch.randn(pd.shape[0], plan.out_channels, dtype=torch.float64)
    out_c, gr_c = run_fused(x, ps, pd, ea, ei, plan, torch.float64, "cpu", g)
    out_g, gr_g = run_fused(x, ps, pd, ea, ei, plan, torch.float64, DEV, g)
    assert relative_error(out_g, out_c) <= 1e-10
    for a, b in zip(gr_g, gr_c):
        if a is not None and b is not None and b.numel():
            assert relative_error(a, b) <= 1e-10


# ---------------------------------------------------------------------------
# symmetry checks that need no escnn
# ---------------------------------------------------------------------------

def _octahedral_invariant_plan(c_in=4, c_out=3, seed=0):
    """A plan whose kernel is invariant under the 48 signed permutations of R^3:
    layer 1 = isotropic scaling of x viewed as one vector field, sampled on the
    14 directions +-e_i and (+-1, +-1, +-1)/sqrt(3) (an orbit union of the
    group), pointwise activation, uniform average (projector); then a pointwise
    layer on that invariant scalar."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.cat([torch.eye(3), -torch.eye(3)])
    diag = torch.tensor([[sx, sy, sz] for sx in (1, -1) for sy in (1, -1) for sz in (1, -1)],
                        dtype=torch.float64) / math.sqrt(3)
    Q = torch.cat([axes.double(), diag])  # [14, 3]
    P1 = torch.full((1, 14), 1 / 14, dtype=torch.float64)
    W1 = 2.0 * torch.eye(3, dtype=torch.float64)
    b1 = torch.zeros(3, dtype=torch.float64)
    W2 = torch.randn(5, 1, generator=g, dtype=torch.float64)
    b2 = torch.randn(5, generator=g, dtype=torch.float64)
    Wt = torch.randn(c_out, 6 * c_in, generator=g, dtype=torch.float64) / math.sqrt(6 * c_in)
    e = torch.empty(0, dtype=torch.float64)
    return KernelPlan([W1, W2], [b1, b2], [Q, e], [P1, e],
                      [ACTIVATIONS["elu"], ACTIVATIONS["tanh"]], torch.tensor(0.6).double(),
                      Wt, pos_dim=3, attr_dim=0, in_channels=c_in, out_channels=c_out)


def _fused64(x, ps, pd, ei, plan):
    out, _ = run_fused(x, ps, pd, None, ei, plan, torch.float64, DEV)
    return out.detach().cpu()


def test_rotation_invariance_octahedral():
    plan = _octahedral_invariant_plan()
    x, ps, pd, _, ei, _ = make_problem(A=0, c_in=4, seed=9, big_degree=100)
    base = _fused64(x, ps, pd, ei, plan)
    g = torch.Generator().manual_seed(9)
    for _ in range(3):
        R = torch.eye(3, dtype=torch.float64)[torch.randperm(3, generator=g)]
        R = R * (torch.randint(0, 2, (3,), generator=g) * 2 - 1).double()[:, None]
        rot = _fused64(x, ps @ R.T, pd @ R.T, ei, plan)
        assert relative_error(rot, base) <= 1e-10


def test_translation_invariance_and_relabeling():
    x, ps, pd, ea, ei, plan = make_problem(seed=10, big_degree=200)
    g = torch.randn(pd.shape[0], plan.out_channels, dtype=torch.float64)
    out, _ = run_fused(x, ps, pd, ea, ei, plan, torch.float64, DEV)
    shift = torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64)
    out_t, _ = run_fused(x, ps + shift, pd + shift, ea, ei, plan, torch.float64, DEV)
    assert relative_error(out_t, out) <= 1e-10
    # relabel sources and targets, shuffle the edge order
    ps_perm = torch.randperm(ps.shape[0])
    pd_perm = torch.randperm(pd.shape[0])
    inv_s = torch.empty_like(ps_perm)
    inv_s[ps_perm] = torch.arange(ps.shape[0])
    inv_d = torch.empty_like(pd_perm)
    inv_d[pd_perm] = torch.arange(pd.shape[0])
    eperm = torch.randperm(ei.shape[1])
    ei2 = torch.stack([inv_s[ei[0]], inv_d[ei[1]]])[:, eperm]
    ea2 = ea[eperm] if ea is not None else None
    out2, _ = run_fused(x[ps_perm], ps[ps_perm], pd[pd_perm], ea2, ei2, plan, torch.float64,
                        DEV)
    assert relative_error(out2, out[pd_perm]) <= 1e-10


# ---------------------------------------------------------------------------
# op machinery: opcheck, gradcheck, determinism
# ---------------------------------------------------------------------------

def _op_args(dtype=torch.float64, requires_grad=True, seed=11):
    x, ps, pd, ea, ei, plan = make_problem(n_src=9, n_dst=7, avg_deg=3, spec=SPEC_SMOOTH,
                                           seed=seed, big_degree=12, n_isolated=1)
    csr = build_csr(ei, x.shape[0], pd.shape[0])
    conv = lambda t: t.detach().to(device=DEV, dtype=dtype).requires_grad_(requires_grad)  # noqa
    L = len(plan.weights)
    ts = [conv(t) for t in plan.tensors()]
    args = (conv(x), conv(ps), conv(pd), conv(ea[csr.perm]), csr.rowptr.to(DEV),
            csr.col.to(DEV), ts[:L], ts[L:2 * L], ts[2 * L:3 * L], ts[3 * L:4 * L],
            list(plan.activations), ts[4 * L], ts[4 * L + 1])
    return args, csr


def test_opcheck_forward():
    args, _ = _op_args()
    torch.library.opcheck(torch.ops.pyg_implicit.point_conv_forward.default, args)


def test_opcheck_backward():
    args, csr = _op_args(requires_grad=False)
    out = torch.ops.pyg_implicit.point_conv_forward(*args)
    g = torch.randn_like(out)
    bargs = (g, *args[:6], csr.csc_rowptr.to(DEV), csr.csc_perm.to(DEV), *args[6:],
             [True] * 10)
    torch.library.opcheck(torch.ops.pyg_implicit.point_conv_backward.default, bargs,
                          test_utils=("test_schema", "test_faketensor"))
    mask = [True, False, True, False, True, True, False, True, False, True]
    bargs = bargs[:-1] + (mask,)
    torch.library.opcheck(torch.ops.pyg_implicit.point_conv_backward.default, bargs,
                          test_utils=("test_schema", "test_faketensor"))


def test_gradcheck_float64():
    x, ps, pd, ea, ei, plan = make_problem(n_src=7, n_dst=5, avg_deg=2, spec=SPEC_SMOOTH,
                                           seed=12, big_degree=6, n_isolated=1, c_in=2,
                                           c_out=2, A=1)
    xs, pss, pds, eas, ts = leaves(x, ps, pd, ea, plan, torch.float64, DEV)
    csr = build_csr(ei.to(DEV), x.shape[0], pd.shape[0])

    def f(xs, pss, pds, eas, *ts):
        return fused_point_conv(xs, pss, pds, eas, csr, plan_from_tensors(plan, ts))

    inputs = (xs, pss, pds, eas, *ts)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_deterministic(dtype):
    x, ps, pd, ea, ei, plan = make_problem(seed=13)
    g = torch.randn(pd.shape[0], plan.out_channels, dtype=torch.float64)
    out1, gr1 = run_fused(x, ps, pd, ea, ei, plan, dtype, DEV, g)
    out2, gr2 = run_fused(x, ps, pd, ea, ei, plan, dtype, DEV, g)
    assert torch.equal(out1, out2)
    for a, b in zip(gr1, gr2):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)


# ---------------------------------------------------------------------------
# bad inputs: clear errors, raised before any kernel runs
# ---------------------------------------------------------------------------

def test_bad_inputs_wrapper():
    x, ps, pd, ea, ei, plan = make_problem(seed=14, big_degree=0)
    p = plan.to(device=DEV)
    csr = build_csr(ei.to(DEV), x.shape[0], pd.shape[0])
    xd, psd, pdd, ead = (t.to(DEV) for t in (x, ps, pd, ea))
    with pytest.raises(ValueError, match="pos_src"):
        fused_point_conv(xd, ps.cpu() if DEV != "cpu" else ps[:, :2], pdd, ead, csr, p)
    with pytest.raises(TypeError, match="pos_dst"):
        fused_point_conv(xd, psd, pdd.float(), ead, csr, p)
    with pytest.raises(ValueError, match="edge_attr"):
        fused_point_conv(xd, psd, pdd, ead[:-1], csr, p)
    bad_ei = ei.clone()
    bad_ei[0, 0] = x.shape[0]
    with pytest.raises(ValueError, match="out of range"):
        build_csr(bad_ei.to(DEV), x.shape[0], pd.shape[0])
    with pytest.raises(ValueError, match="num_src"):
        fused_point_conv(xd[:-1], psd[:-1], pdd, ead, csr, p)
    # the device is still usable (no kernel ran on bad data)
    out = fused_point_conv(xd, psd, pdd, ead, csr, p)
    if DEV == "cuda":
        torch.cuda.synchronize()
    assert torch.isfinite(out).all()


def test_bad_inputs_op():
    args, csr = _op_args(requires_grad=False)
    op = torch.ops.pyg_implicit.point_conv_forward
    a = list(args)
    if DEV == "cuda":
        a[5] = args[5].cpu()  # col on the CPU
        with pytest.raises(RuntimeError, match="col"):
            op(*a)
    a = list(args)
    a[12] = args[12][:, :-1]  # Wt with the wrong width
    with pytest.raises(RuntimeError, match="Wt"):
        op(*a)
    a = list(args)
    a[1] = args[1].float()  # pos_src float32, x_src float64
    with pytest.raises(RuntimeError, match="pos_src"):
        op(*a)
    a = list(args)
    a[4] = args[4][:-1]  # rowptr too short
    with pytest.raises(RuntimeError, match="rowptr"):
        op(*a)
    a = list(args)
    a[10] = [9] * len(args[10])  # unknown activation
    with pytest.raises(RuntimeError, match="activation"):
        op(*a)
    if DEV == "cuda":
        torch.cuda.synchronize()
    assert torch.isfinite(op(*args)).all()


@cuda_source_only
def test_plan_too_large_for_shared_memory():
    """A grid far beyond shared memory gives a clear error, not a bad launch
    (host code: it runs under the CPU emulation too)."""
    spec = [("fourier", 8, 4, 20000, 4, "elu")]
    x, ps, pd, ea, ei, plan = make_problem(spec=spec, seed=15, big_degree=0)
    with pytest.raises(RuntimeError, match="shared memory"):
        run_fused(x, ps, pd, ea, ei, plan, torch.float64, DEV)
    if DEV == "cuda":
        torch.cuda.synchronize()
