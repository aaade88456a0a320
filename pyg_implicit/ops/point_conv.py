"""Python side of the fused point convolution ``torch.ops.pyg_implicit.*``.

The ops themselves live in the compiled extension ``pyg_implicit._C``
(schema and checks in ``csrc/point_conv.cpp``, CPU kernels in ``csrc/cpu``,
CUDA kernels in ``csrc/cuda``); see ``docs/fused_op_spec.md``.  This module
registers their fake (meta) kernels and autograd, and offers the validated
entry point :func:`fused_point_conv`.
"""
from __future__ import annotations

import importlib
from typing import List, Optional

import torch
from torch import Tensor

from ..plan import ACTIVATIONS, LAYER_KINDS, KernelPlan
from .csr import CSRGraph

__all__ = ["fused_point_conv", "is_available", "unavailable_reason"]

try:
    _C = importlib.import_module("pyg_implicit._C")
    _IMPORT_ERROR: Optional[BaseException] = None
except (ImportError, OSError) as exc:  # extension not built / ABI mismatch
    _C = None
    _IMPORT_ERROR = exc


def is_available() -> bool:
    """Whether the compiled extension ``pyg_implicit._C`` loaded."""
    return _C is not None


def unavailable_reason() -> str:
    if _C is not None:
        return ""
    return (f"the compiled extension pyg_implicit._C could not be imported "
            f"({type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR}); build it with "
            f"`pip install --no-build-isolation -e .` or use backend='reference'/"
            f"'factorized'")


_FLOAT_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------
# fake kernels and autograd (registered only when the ops exist)
# --------------------------------------------------------------------------

def _forward_fake(x_src, pos_src, pos_dst, edge_attr, rowptr, col, csc_rowptr,
                  csc_perm, weights, biases, samplers, projectors, fields, field_biases,
                  kinds, activations, lift_degree, width, Wt):
    return x_src.new_empty((pos_dst.shape[0], Wt.shape[0]))


def _backward_fake(grad_out, x_src, pos_src, pos_dst, edge_attr, rowptr, col,
                   csc_rowptr, csc_perm, weights, biases, samplers, projectors, fields,
                   field_biases, kinds, activations, lift_degree, width, Wt, output_mask):
    # Every group has its full shape (masked-out groups are zeros).
    new = lambda t: t.new_empty(t.shape)  # noqa: E731
    return (new(x_src), new(pos_src), new(pos_dst), new(edge_attr),
            [new(t) for t in weights], [new(t) for t in biases],
            [new(t) for t in samplers], [new(t) for t in projectors],
            [new(t) for t in field_biases], width.new_empty(()), new(Wt))


# positions of the forward op's inputs (and of their gradients)
_X, _POS_SRC, _POS_DST, _ATTR = 0, 1, 2, 3
_WEIGHTS, _BIASES, _SAMPLERS, _PROJECTORS, _FIELDS, _FIELD_BIASES = 8, 9, 10, 11, 12, 13
_KINDS, _ACTS, _LIFT, _WIDTH, _WT = 14, 15, 16, 17, 18
_NUM_INPUTS = 19


def _forward_setup_context(ctx, inputs, output):
    (x_src, pos_src, pos_dst, edge_attr, rowptr, col, csc_rowptr, csc_perm,
     weights, biases, samplers, projectors, fields, field_biases, kinds, activations,
     lift_degree, width, Wt) = inputs
    ctx.num_layers = len(weights)
    ctx.kinds, ctx.activations, ctx.lift_degree = list(kinds), list(activations), lift_degree
    ctx.save_for_backward(x_src, pos_src, pos_dst, edge_attr, rowptr, col,
                          csc_rowptr, csc_perm, width, Wt, *weights, *biases,
                          *samplers, *projectors, *fields, *field_biases)


def _forward_backward(ctx, grad_out):
    saved = ctx.saved_tensors
    (x_src, pos_src, pos_dst, edge_attr, rowptr, col, csc_rowptr, csc_perm,
     width, Wt) = saved[:10]
    L = ctx.num_layers
    lists = [list(saved[10 + k * L:10 + (k + 1) * L]) for k in range(6)]
    weights, biases, samplers, projectors, fields, field_biases = lists
    # mask order: csrc/plan_contract.h GradGroup
    nig = ctx.needs_input_grad
    mask = [bool(nig[_X]), bool(nig[_POS_SRC]), bool(nig[_POS_DST]), bool(nig[_ATTR]),
            any(nig[_WEIGHTS]), any(nig[_BIASES]), any(nig[_SAMPLERS]),
            any(nig[_PROJECTORS]), any(nig[_FIELD_BIASES]), bool(nig[_WIDTH]),
            bool(nig[_WT])]
    grads = [None] * _NUM_INPUTS
    # autograd's pytree spec needs lists (empty ones for an empty int[])
    for k in (_WEIGHTS, _BIASES, _SAMPLERS, _PROJECTORS, _FIELDS, _FIELD_BIASES):
        grads[k] = [None] * L
    grads[_KINDS] = grads[_ACTS] = [] if L == 0 else None
    if not any(mask):
        return tuple(grads)
    out = torch.ops.pyg_implicit.point_conv_backward(
        grad_out, x_src, pos_src, pos_dst, edge_attr, rowptr, col, csc_rowptr, csc_perm,
        weights, biases, samplers, projectors, fields, field_biases, ctx.kinds,
        ctx.activations, ctx.lift_degree, width, Wt, mask)
    for k, g in zip((_X, _POS_SRC, _POS_DST, _ATTR), out[:4]):
        grads[k] = g if nig[k] else None
    for k, gs in zip((_WEIGHTS, _BIASES, _SAMPLERS, _PROJECTORS, _FIELD_BIASES), out[4:9]):
        grads[k] = [g if f else None for f, g in zip(nig[k], gs)]
    grads[_WIDTH] = out[9] if nig[_WIDTH] else None
    grads[_WT] = out[10] if nig[_WT] else None
    return tuple(grads)


def _backward_setup_context(ctx, inputs, output):
    pass


def _backward_backward(ctx, *grads):
    raise RuntimeError(
        "pyg_implicit.point_conv_backward: double backward not supported "
        "(second-order gradients through the fused point convolution); use "
        "backend='reference' or 'factorized' for higher-order derivatives")


if _C is not None:
    torch.library.register_fake("pyg_implicit::point_conv_forward")(_forward_fake)
    torch.library.register_fake("pyg_implicit::point_conv_backward")(_backward_fake)
    torch.library.register_autograd(
        "pyg_implicit::point_conv_forward", _forward_backward,
        setup_context=_forward_setup_context)
    torch.library.register_autograd(
        "pyg_implicit::point_conv_backward", _backward_backward,
        setup_context=_backward_setup_context)


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------

def _check_tensor(name: str, t, dtype: torch.dtype, device: torch.device,
                  dim: Optional[int] = None) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (like x_src), got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} must be on device {device} (like x_src), got {t.device}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")


def _check_index(name: str, t, device: torch.device, length: int) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if t.dtype != torch.int64:
        raise TypeError(f"{name} must be int64, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} must be on device {device} (like x_src), got {t.device}")
    if t.dim() != 1 or t.shape[0] != length:
        raise ValueError(f"{name} must have shape [{length}], got {tuple(t.shape)}")


def _check_plan(plan, dtype, device, d: int, attr: int, c_in: int) -> None:
    if not isinstance(plan, KernelPlan):
        raise TypeError(f"plan must be a KernelPlan, got {type(plan).__name__}")
    L = len(plan.weights)
    for name in ("biases", "samplers", "projectors", "activations", "kinds", "fields",
                 "field_biases"):
        if len(getattr(plan, name)) != L:
            raise ValueError(f"plan.{name} has {len(getattr(plan, name))} entries, "
                             f"plan.weights has {L}")
    k = plan.lift_degree
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 4:
        raise ValueError(f"plan.lift_degree must be an integer in [1, 4], got {k!r}")
    h = plan.lifted_dim + attr
    codes = set(ACTIVATIONS.values())
    for l in range(L):
        W, b = plan.weights[l], plan.biases[l]
        Q, P = plan.samplers[l], plan.projectors[l]
        _check_tensor(f"plan.weights[{l}]", W, dtype, device, 2)
        _check_tensor(f"plan.biases[{l}]", b, dtype, device, 1)
        _check_tensor(f"plan.samplers[{l}]", Q, dtype, device)
        _check_tensor(f"plan.projectors[{l}]", P, dtype, device)
        if W.shape[1] != h:
            raise ValueError(f"plan.weights[{l}] must have {h} columns, got "
                             f"shape {tuple(W.shape)}")
        if b.shape[0] != W.shape[0]:
            raise ValueError(f"plan.biases[{l}] must have {W.shape[0]} entries, got "
                             f"{b.shape[0]}")
        code = plan.activations[l]
        if isinstance(code, bool) or not isinstance(code, int) or code not in codes:
            raise ValueError(f"plan.activations[{l}] = {code!r} is not an activation "
                             f"code {sorted(codes)}")
        kind = plan.kinds[l]
        if isinstance(kind, bool) or not isinstance(kind, int) or \
                kind not in LAYER_KINDS.values():
            raise ValueError(f"plan.kinds[{l}] = {kind!r} is not a layer kind "
                             f"{LAYER_KINDS}")
        m, bf = plan.fields[l], plan.field_biases[l]
        _check_tensor(f"plan.field_biases[{l}]", bf, dtype, device, 1)
        if not isinstance(m, Tensor) or m.dtype != torch.int64 or m.dim() != 1 or \
                m.device != device:
            raise TypeError(f"plan.fields[{l}] must be a 1-D int64 tensor on {device}, got "
                            f"{getattr(m, 'dtype', type(m).__name__)}")
        fourier = kind == LAYER_KINDS["fourier"]
        if fourier != (Q.numel() > 0) or fourier != (P.numel() > 0):
            raise ValueError(f"plan.samplers[{l}] and plan.projectors[{l}] must be "
                             f"non-empty exactly for a Fourier layer (kinds[{l}] = {kind})")
        if kind in (LAYER_KINDS["gated"], LAYER_KINDS["norm"]):
            gated = kind == LAYER_KINDS["gated"]
            n_fields = W.shape[0] - m.shape[0] if gated else bf.shape[0]
            if (m.shape[0] > W.shape[0]) if gated else (m.shape[0] != W.shape[0]):
                raise ValueError(f"plan.fields[{l}] has {m.shape[0]} entries, expected "
                                 f"{'at most ' if gated else ''}{W.shape[0]}")
            if gated and bf.numel():
                raise ValueError(f"plan.field_biases[{l}] must be empty for a gated layer")
            # values: here in eager mode (the CPU op checks them again, also compiled)
            if m.numel() and not torch.compiler.is_compiling() and \
                    (int(m.min()) < -1 or int(m.max()) >= n_fields):
                raise ValueError(f"plan.fields[{l}] entries must be -1 or in "
                                 f"[0, {n_fields}), got [{int(m.min())}, {int(m.max())}]")
            h = m.shape[0]
            continue
        if m.numel() or bf.numel():
            raise ValueError(f"plan.fields[{l}] and plan.field_biases[{l}] must be empty "
                             f"for a {('pointwise', 'Fourier')[kind]} layer")
        if Q.numel() == 0:
            h = W.shape[0]
        else:
            if Q.dim() != 2 or W.shape[0] % Q.shape[1] != 0:
                raise ValueError(f"plan.samplers[{l}] must be [G, F] with F dividing "
                                 f"{W.shape[0]}, got shape {tuple(Q.shape)}")
            if P.dim() != 2 or P.shape[1] != Q.shape[0] or P.shape[0] < 1:
                raise ValueError(f"plan.projectors[{l}] must be [F', {Q.shape[0]}], "
                                 f"got shape {tuple(P.shape)}")
            h = (W.shape[0] // Q.shape[1]) * P.shape[0]
    _check_tensor("plan.width", plan.width, dtype, device, 0)
    _check_tensor("plan.Wt", plan.Wt, dtype, device, 2)
    if plan.Wt.shape[1] != (h + 1) * c_in:
        raise ValueError(f"plan.Wt must have (H + 1) * C_in = {(h + 1) * c_in} "
                         f"columns, got shape {tuple(plan.Wt.shape)}")


def fused_point_conv(x_src: Tensor, pos_src: Tensor, pos_dst: Tensor,
                     edge_attr: Optional[Tensor], csr: CSRGraph,
                     plan: KernelPlan) -> Tensor:
    r"""Fused implicit-kernel point convolution.

    .. math::
        \mathrm{out}_i = \sum_{e = (j \to i)} K(p^{src}_j - p^{dst}_i, a_e)\, f_j

    with ``K`` the kernel described by ``plan`` (see :mod:`pyg_implicit.plan`),
    evaluated on the fly per edge: no per-edge kernel is stored.

    Args:
        x_src: ``[N_src, C_in]`` source features.
        pos_src: ``[N_src, d]`` source positions.
        pos_dst: ``[N_dst, d]`` target positions.
        edge_attr: ``[E, A]`` edge attributes in the *original* edge order of
            the ``edge_index`` given to :func:`build_csr`, or ``None`` (A = 0).
        csr: the graph from :func:`pyg_implicit.ops.build_csr`.
        plan: the kernel plan (``ImplicitKernel.plan()``).

    Returns:
        ``[N_dst, C_out]``; differentiable w.r.t. every tensor input and every
        plan tensor (first order only).
    """
    if _C is None:
        raise RuntimeError("fused_point_conv is unavailable: " + unavailable_reason())
    if not isinstance(x_src, Tensor):
        raise TypeError(f"x_src must be a Tensor, got {type(x_src).__name__}")
    if x_src.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x_src must be float32 or float64, got {x_src.dtype}")
    dtype, device = x_src.dtype, x_src.device
    if x_src.dim() != 2:
        raise ValueError(f"x_src must be 2-D [N_src, C_in], got shape {tuple(x_src.shape)}")
    if not isinstance(csr, CSRGraph):
        raise TypeError(f"csr must be a CSRGraph (from build_csr), got {type(csr).__name__}")
    _check_tensor("pos_src", pos_src, dtype, device, 2)
    _check_tensor("pos_dst", pos_dst, dtype, device, 2)
    n_src, c_in = x_src.shape
    n_dst = pos_dst.shape[0]
    d = pos_src.shape[1]
    if pos_src.shape[0] != n_src:
        raise ValueError(f"pos_src must have N_src = {n_src} rows (like x_src), got "
                         f"shape {tuple(pos_src.shape)}")
    if pos_dst.shape[1] != d:
        raise ValueError(f"pos_dst must have {d} columns (like pos_src), got shape "
                         f"{tuple(pos_dst.shape)}")
    pos_dim = getattr(plan, "pos_dim", d)
    if d != pos_dim:
        raise ValueError(f"pos_src/pos_dst must have plan.pos_dim = {pos_dim} columns, "
                         f"got {d}")
    in_channels = getattr(plan, "in_channels", c_in)
    if c_in != in_channels:
        raise ValueError(f"x_src must have plan.in_channels = {in_channels} columns, "
                         f"got shape {tuple(x_src.shape)}")
    if csr.num_src != n_src:
        raise ValueError(f"csr was built for num_src = {csr.num_src}, x_src has "
                         f"{n_src} rows")
    if csr.num_dst != n_dst:
        raise ValueError(f"csr was built for num_dst = {csr.num_dst}, pos_dst has "
                         f"{n_dst} rows")
    E = csr.col.shape[0] if isinstance(csr.col, Tensor) else -1
    _check_index("csr.rowptr", csr.rowptr, device, n_dst + 1)
    _check_index("csr.col", csr.col, device, E)
    _check_index("csr.perm", csr.perm, device, E)
    _check_index("csr.csc_rowptr", csr.csc_rowptr, device, n_src + 1)
    _check_index("csr.csc_perm", csr.csc_perm, device, E)
    attr_dim = getattr(plan, "attr_dim", None)
    if edge_attr is None:
        if attr_dim:
            raise ValueError(f"edge_attr is None but the plan expects {attr_dim} "
                             f"edge attributes")
        edge_attr_csr = x_src.new_zeros((E, 0))
    else:
        _check_tensor("edge_attr", edge_attr, dtype, device, 2)
        if edge_attr.shape[0] != E:
            raise ValueError(f"edge_attr must have E = {E} rows, got shape "
                             f"{tuple(edge_attr.shape)}")
        if attr_dim is not None and edge_attr.shape[1] != attr_dim:
            raise ValueError(f"edge_attr must have plan.attr_dim = {attr_dim} columns, "
                             f"got shape {tuple(edge_attr.shape)}")
        edge_attr_csr = edge_attr.index_select(0, csr.perm)
    _check_plan(plan, dtype, device, d, edge_attr_csr.shape[1], c_in)
    return torch.ops.pyg_implicit.point_conv_forward(
        x_src, pos_src, pos_dst, edge_attr_csr, csr.rowptr, csr.col,
        csr.csc_rowptr, csr.csc_perm, list(plan.weights), list(plan.biases),
        list(plan.samplers), list(plan.projectors), list(plan.fields), list(plan.field_biases),
        [int(k) for k in plan.kinds], [int(a) for a in plan.activations],
        int(plan.lift_degree), plan.width, plan.Wt)
