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

from ..plan import ACTIVATIONS, KernelPlan
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
                  csc_perm, weights, biases, samplers, projectors, activations,
                  width, Wt):
    return x_src.new_empty((pos_dst.shape[0], Wt.shape[0]))


def _backward_fake(grad_out, x_src, pos_src, pos_dst, edge_attr, rowptr, col,
                   csc_rowptr, csc_perm, weights, biases, samplers, projectors,
                   activations, width, Wt, output_mask):
    # Every group has its full shape (masked-out groups are zeros).
    new = lambda t: t.new_empty(t.shape)  # noqa: E731
    return (new(x_src), new(pos_src), new(pos_dst), new(edge_attr),
            [new(t) for t in weights], [new(t) for t in biases],
            [new(t) for t in samplers], [new(t) for t in projectors],
            width.new_empty(()), new(Wt))


def _forward_setup_context(ctx, inputs, output):
    (x_src, pos_src, pos_dst, edge_attr, rowptr, col, csc_rowptr, csc_perm,
     weights, biases, samplers, projectors, activations, width, Wt) = inputs
    ctx.num_layers = len(weights)
    ctx.activations = list(activations)
    ctx.save_for_backward(x_src, pos_src, pos_dst, edge_attr, rowptr, col,
                          csc_rowptr, csc_perm, width, Wt, *weights, *biases,
                          *samplers, *projectors)


def _forward_backward(ctx, grad_out):
    saved = ctx.saved_tensors
    (x_src, pos_src, pos_dst, edge_attr, rowptr, col, csc_rowptr, csc_perm,
     width, Wt) = saved[:10]
    L = ctx.num_layers
    rest = saved[10:]
    weights, biases = list(rest[:L]), list(rest[L:2 * L])
    samplers, projectors = list(rest[2 * L:3 * L]), list(rest[3 * L:4 * L])
    # inputs: x_src 0, pos_src 1, pos_dst 2, edge_attr 3, rowptr 4, col 5,
    # csc_rowptr 6, csc_perm 7, weights 8, biases 9, samplers 10, projectors 11,
    # activations 12, width 13, Wt 14; mask order: csrc/plan_contract.h GradGroup
    nig = ctx.needs_input_grad
    mask = [bool(nig[0]), bool(nig[1]), bool(nig[2]), bool(nig[3]),
            any(nig[8]), any(nig[9]), any(nig[10]), any(nig[11]),
            bool(nig[13]), bool(nig[14])]
    # autograd's pytree spec needs an empty list (not None) for an empty int[]
    g_acts = [] if L == 0 else None
    none_lists = ([None] * L, [None] * L, [None] * L, [None] * L)
    if not any(mask):
        return (None,) * 8 + (*none_lists, g_acts, None, None)
    (g_x, g_ps, g_pd, g_ea, g_W, g_b, g_Q, g_P, g_w, g_Wt) = \
        torch.ops.pyg_implicit.point_conv_backward(
            grad_out, x_src, pos_src, pos_dst, edge_attr, rowptr, col,
            csc_rowptr, csc_perm, weights, biases, samplers, projectors,
            ctx.activations, width, Wt, mask)

    def pick(flag, t):
        return t if flag else None

    def pick_list(flags, ts):
        return [t if f else None for f, t in zip(flags, ts)]

    return (pick(nig[0], g_x), pick(nig[1], g_ps), pick(nig[2], g_pd),
            pick(nig[3], g_ea), None, None, None, None,
            pick_list(nig[8], g_W), pick_list(nig[9], g_b),
            pick_list(nig[10], g_Q), pick_list(nig[11], g_P),
            g_acts, pick(nig[13], g_w), pick(nig[14], g_Wt))


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
    for name in ("weights", "biases", "samplers", "projectors", "activations",
                 "width", "Wt"):
        if not hasattr(plan, name):
            raise TypeError(f"plan must be a KernelPlan, got {type(plan).__name__} "
                            f"without '{name}'")
    L = len(plan.weights)
    for name in ("biases", "samplers", "projectors", "activations"):
        if len(getattr(plan, name)) != L:
            raise ValueError(f"plan.{name} has {len(getattr(plan, name))} entries, "
                             f"plan.weights has {L}")
    h = d + attr
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
        if Q.numel() == 0:
            if P.numel() != 0:
                raise ValueError(f"plan.projectors[{l}] must be empty when "
                                 f"plan.samplers[{l}] is empty")
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
        csr.csc_rowptr, csr.csc_perm, list(plan.weights), list(plan.biases), list(plan.samplers),
        list(plan.projectors), [int(a) for a in plan.activations], plan.width,
        plan.Wt)
