"""Builders shared by the tests of the fused op: random plans, random graphs,
the materialised oracle and the backends the op tests run on.

Needs neither escnn nor Hypothesis (the GPU image and the CUDA emulation
have neither escnn nor, possibly, Hypothesis).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import pytest
import torch

from pyg_implicit.plan import ACTIVATIONS, LAYER_KINDS, KernelPlan, edge_kernels

# --------------------------------------------------------------------------
# where the op tests run
# --------------------------------------------------------------------------

#: (backend, device) pairs: the CPU kernels, the CUDA kernels on a GPU, the
#: CUDA source on CPU threads (csrc/cuda/emulate_on_cpu.py). Unavailable ones
#: skip, or fail where PYG_IMPLICIT_REQUIRE lists them (conftest.py).
TARGETS = [
    pytest.param("cpu", id="fused_cpu", marks=pytest.mark.backend("fused_cpu")),
    pytest.param("cuda", id="cuda", marks=pytest.mark.backend("cuda")),
    pytest.param("cpu", id="cuda_emulated", marks=pytest.mark.backend("cuda_emulated")),
]

#: parametrises a test over every target as its ``device`` argument
on_every_backend = pytest.mark.parametrize("device", TARGETS)


#: the CUDA source only (on a GPU or emulated): its own knobs and limits
on_cuda_source = pytest.mark.parametrize("device", TARGETS[1:])


# --------------------------------------------------------------------------
# plans
# --------------------------------------------------------------------------

#: a layer is ("fourier", act, M, F, G, F'), ("pointwise", act, H'), or
#: ("gated" | "norm", act, scalars, field sizes): trivial channels and fields in a
#: shuffled order (a gated layer's gates come first)
DEFAULT_SPEC = (("fourier", "elu", 3, 4, 7, 4), ("pointwise", "silu", 10),
                ("fourier", "tanh", 2, 3, 5, 2))
SPEC_2D = (("fourier", "elu", 4, 3, 8, 3), ("fourier", "sigmoid", 4, 3, 8, 2))
SPEC_SMOOTH = (("fourier", "tanh", 2, 2, 3, 2), ("pointwise", "silu", 4))
SPEC_ALL_ACTS = (("pointwise", "relu", 6), ("pointwise", "elu", 6),
                 ("fourier", "sigmoid", 2, 3, 5, 2), ("pointwise", "tanh", 5),
                 ("fourier", "silu", 1, 5, 6, 4))
SPEC_EXACT = (("gated", "elu", 2, (3, 1, 5, 3)), ("norm", "silu", 3, (3, 2, 5)),
              ("gated", "tanh", 1, (2, 2)))


def random_plan(dtype=torch.float64, d: int = 3, attr: int = 0, c_in: int = 3,
                c_out: int = 4, seed: int = 0, layers: Sequence = DEFAULT_SPEC,
                width: float = 0.7, requires_grad: bool = False,
                lift_degree: int = 1) -> KernelPlan:
    """A random plan with unit-variance activations (weights scaled by fan-in)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    weights, biases, samplers, projectors, acts = [], [], [], [], []
    kinds, fields, field_biases = [], [], []
    h = sum(d ** m for m in range(1, lift_degree + 1)) + attr
    empty = torch.empty(0, dtype=dtype)
    for spec in layers:
        m, bf = torch.empty(0, dtype=torch.long), empty
        if spec[0] in ("gated", "norm"):
            _, act, n_scalars, sizes = spec
            channels = [-1] * n_scalars + [f for f, size in enumerate(sizes) for _ in range(size)]
            # fields keep their entries together, in a shuffled order with the scalars
            blocks = [[-1]] * n_scalars + [[f] * size for f, size in enumerate(sizes)]
            order = torch.randperm(len(blocks), generator=g).tolist()
            m = torch.tensor([c for k in order for c in blocks[k]], dtype=torch.long)
            assert m.numel() == len(channels)
            n_gates = len(sizes) if spec[0] == "gated" else 0
            weights.append(rnd(n_gates + m.numel(), h, scale=h ** -0.5))
            samplers.append(empty)
            projectors.append(empty)
            if spec[0] == "norm":
                bf = (0.1 + 0.4 * torch.rand(len(sizes), generator=g, dtype=torch.float64)
                      ).to(dtype)
            h = m.numel()
        elif spec[0] == "fourier":
            _, act, M, F, G, Fp = spec
            weights.append(rnd(M * F, h, scale=h ** -0.5))
            samplers.append(rnd(G, F, scale=F ** -0.5))
            projectors.append(rnd(Fp, G, scale=G ** -0.5))
            h = M * Fp
        elif spec[0] == "pointwise":
            _, act, pre = spec
            weights.append(rnd(pre, h, scale=h ** -0.5))
            samplers.append(torch.empty(0, dtype=dtype))
            projectors.append(torch.empty(0, dtype=dtype))
            h = pre
        else:
            raise ValueError(f"unknown layer kind {spec[0]!r}")
        biases.append(rnd(weights[-1].shape[0], scale=0.5))
        acts.append(ACTIVATIONS[act])
        kinds.append(LAYER_KINDS[spec[0]])
        fields.append(m)
        field_biases.append(bf)
    Wt = rnd(c_out, (h + 1) * c_in, scale=((h + 1) * c_in) ** -0.5)
    plan = KernelPlan(weights, biases, samplers, projectors, acts,
                      torch.tensor(width, dtype=dtype), Wt, d, attr, c_in, c_out,
                      kinds=kinds, fields=fields, field_biases=field_biases,
                      lift_degree=lift_degree)
    if requires_grad:
        for t in plan.tensors():
            t.requires_grad_(True)
    return plan


def plan_from_tensors(plan: KernelPlan, tensors: Sequence[torch.Tensor]) -> KernelPlan:
    """``plan`` with its tensors replaced by ``tensors`` (order of plan.tensors())."""
    return plan.with_tensors(tensors)


def octahedral_invariant_plan(c_in: int = 4, c_out: int = 3, seed: int = 0) -> KernelPlan:
    """A plan whose kernel is invariant under the 48 signed permutations of R^3:
    layer 1 scales x (one vector field) isotropically, samples it on the 14
    directions +-e_i and (+-1, +-1, +-1)/sqrt(3) (a union of orbits), applies a
    pointwise activation and averages (projector); layer 2 is pointwise on that
    invariant scalar. Needs no escnn."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.cat([torch.eye(3), -torch.eye(3)]).double()
    diag = torch.tensor([[sx, sy, sz] for sx in (1, -1) for sy in (1, -1) for sz in (1, -1)],
                        dtype=torch.float64) / math.sqrt(3)
    Q = torch.cat([axes, diag])  # [14, 3]
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


# --------------------------------------------------------------------------
# graphs
# --------------------------------------------------------------------------

def random_edge_index(n_src: int, n_dst: int, num_edges: int, seed: int = 0,
                      self_loops: bool = False, hub_degree: int = 0,
                      n_isolated: int = 0) -> torch.Tensor:
    """Unsorted random edges ``[2, E]`` (source row 0, target row 1).

    ``self_loops``: adds self-loops (node k -> k) and duplicated edges;
    ``hub_degree``: adds a target (0) of that in-degree and a source (the
    last) of that out-degree; ``n_isolated``: the last targets get no edge.
    """
    g = torch.Generator().manual_seed(seed)
    n_targets = n_dst - n_isolated
    if n_src == 0 or n_targets <= 0:
        return torch.zeros(2, 0, dtype=torch.long)
    ei = torch.stack([torch.randint(0, n_src, (num_edges,), generator=g),
                      torch.randint(0, n_targets, (num_edges,), generator=g)])
    parts = [ei]
    if self_loops:
        k = min(n_src, n_targets, max(1, num_edges // 5))
        parts.append(torch.arange(k).repeat(2, 1))
        parts.append(ei[:, : max(1, num_edges // 7)] if num_edges else parts[-1][:, :1])
    if hub_degree:
        parts.append(torch.stack([torch.randint(0, n_src, (hub_degree,), generator=g),
                                  torch.zeros(hub_degree, dtype=torch.long)]))
        parts.append(torch.stack([torch.full((hub_degree,), n_src - 1),
                                  torch.randint(0, n_targets, (hub_degree,), generator=g)]))
    ei = torch.cat(parts, dim=1)
    return ei[:, torch.randperm(ei.shape[1], generator=g)]


def random_problem(d: int = 3, attr: int = 2, c_in: int = 5, c_out: int = 4,
                   n_src: int = 60, n_dst: int = 50, num_edges: int = 300,
                   layers: Sequence = DEFAULT_SPEC, seed: int = 0, hub_degree: int = 1100,
                   n_isolated: int = 3, self_loops: bool = False):
    """``(x, pos_src, pos_dst, edge_attr or None, edge_index, plan)`` in float64
    on the CPU: random features and positions in the unit cube, a random graph
    with isolated targets and a hub, a random plan."""
    g = torch.Generator().manual_seed(1000 + seed)
    ei = random_edge_index(n_src, n_dst, num_edges, seed=seed, self_loops=self_loops,
                           hub_degree=hub_degree, n_isolated=n_isolated)
    x = torch.randn(n_src, c_in, generator=g, dtype=torch.float64)
    ps = torch.rand(n_src, d, generator=g, dtype=torch.float64)
    pd = torch.rand(n_dst, d, generator=g, dtype=torch.float64)
    ea = torch.randn(ei.shape[1], attr, generator=g, dtype=torch.float64) if attr else None
    plan = random_plan(d=d, attr=attr, c_in=c_in, c_out=c_out, seed=seed, layers=layers)
    return x, ps, pd, ea, ei, plan


# --------------------------------------------------------------------------
# the oracle
# --------------------------------------------------------------------------

def reference_conv(x_src, pos_src, pos_dst, edge_attr: Optional[torch.Tensor],
                   edge_index, plan: KernelPlan) -> torch.Tensor:
    """Materialised reference: ``out_i = sum_{e=(j->i)} K_e x_src[j]`` with the
    per-edge kernels ``K_e = plan.edge_kernels(...)`` (plain torch)."""
    j, i = edge_index[0].long(), edge_index[1].long()
    out = x_src.new_zeros(pos_dst.shape[0], plan.out_channels)
    if j.numel() == 0:  # plan.apply_activation cannot reshape E = 0 batches
        return out
    K = edge_kernels(plan, pos_src[j] - pos_dst[i], edge_attr)  # [E, C_out, C_in]
    msg = torch.bmm(K, x_src[j].unsqueeze(-1)).squeeze(-1)
    return out.index_add(0, i, msg)


def fused_with_grads(problem, device, grad_out: torch.Tensor, dtype=torch.float64):
    """The fused op on ``device`` in ``dtype`` for a ``random_problem``: its output
    and the gradients of ``<out, grad_out>`` w.r.t. x, pos_src, pos_dst,
    edge_attr (if any) and every plan tensor, all on the CPU in ``dtype``."""
    from pyg_implicit.ops import build_csr, fused_point_conv
    x, ps, pd, ea, ei, plan = problem
    conv = lambda t: t.detach().to(device, dtype).requires_grad_(True)  # noqa: E731
    inputs = [conv(t) for t in (x, ps, pd)] + ([conv(ea)] if ea is not None else [])
    ts = [conv(t) for t in plan.tensors()]
    csr = build_csr(ei.to(device), x.shape[0], pd.shape[0])
    out = fused_point_conv(*inputs[:3], inputs[3] if ea is not None else None, csr,
                           plan_from_tensors(plan, ts))
    grads = torch.autograd.grad(out, inputs + ts, grad_out.to(device, dtype),
                                allow_unused=True)
    return [out.detach().cpu()] + [None if gr is None else gr.cpu() for gr in grads]


def gradient_names(plan: KernelPlan, has_attr: bool) -> List[str]:
    """Names of the differentiable inputs in the order the op tests use."""
    L = len(plan.weights)
    return (["x_src", "pos_src", "pos_dst"] + (["edge_attr"] if has_attr else [])
            + [f"weights[{i}]" for i in range(L)] + [f"biases[{i}]" for i in range(L)]
            + [f"samplers[{i}]" for i in range(L)] + [f"projectors[{i}]" for i in range(L)]
            + [f"field_biases[{i}]" for i in range(L)] + ["width", "Wt"])


__all__ = ["TARGETS", "on_every_backend", "on_cuda_source", "DEFAULT_SPEC", "SPEC_2D",
           "SPEC_SMOOTH", "SPEC_ALL_ACTS", "SPEC_EXACT", "random_plan", "plan_from_tensors",
           "octahedral_invariant_plan", "random_edge_index", "random_problem",
           "reference_conv", "fused_with_grads", "gradient_names"]
