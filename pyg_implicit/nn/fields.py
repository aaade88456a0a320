"""Field types and the plumbing every block shares.

Blocks take escnn field types of a gspace on R^2/R^3 (the type of the node
features a point convolution produces) and act on plain ``[N, C]`` tensors or on
``GeometricTensor`` s of that type. escnn's own modules for these per-node maps
(nonlinearities, ``Linear``, ``NormPool``) act on the gspace without a base
space, ``no_base_space(G)``, whose tensors are ``[N, C]``: :func:`fiber_type`
gives the same representations there.
"""
from __future__ import annotations

import copy
from typing import List, Optional

import torch
from escnn import gspaces
from escnn import nn as enn
from escnn.group import Group, GroupElement, Representation
from torch import Tensor

FIELD_KINDS = ("auto", "regular", "fourier", "quotient", "gated", "norm")


def check_field_type(ftype, name: str, gspace=None) -> enn.FieldType:
    """``ftype`` as a FieldType, of ``gspace`` when given (clear errors otherwise)."""
    if not isinstance(ftype, enn.FieldType):
        raise TypeError(f"{name} must be an escnn FieldType, got {type(ftype).__name__}")
    if gspace is not None and ftype.gspace != gspace:
        raise ValueError(f"{name} is a field type of {ftype.gspace}, expected one of {gspace} "
                         "(all types of a block must share one gspace)")
    return ftype


def fiber_type(ftype: enn.FieldType) -> enn.FieldType:
    """The same representations on ``no_base_space(G)``: tensors ``[N, C]``."""
    return enn.FieldType(gspaces.no_base_space(ftype.fibergroup), ftype.representations)


def trivial_field_mask(ftype: enn.FieldType) -> List[bool]:
    """Per field: is its representation trivial (an invariant scalar)?"""
    return [rep.is_trivial() for rep in ftype.representations]


def field_channels(ftype: enn.FieldType, fields: List[int]) -> Tensor:
    """The channel indices of the given fields, in order."""
    idx = [c for i in fields for c in range(int(ftype.fields_start[i]), int(ftype.fields_end[i]))]
    return torch.tensor(idx, dtype=torch.long)


def trivial_channels(ftype: enn.FieldType) -> Tensor:
    """The channels of the trivial fields (where a layer may add a bias), in order."""
    return field_channels(ftype, [i for i, t in enumerate(trivial_field_mask(ftype)) if t])


def field_index(ftype: enn.FieldType) -> Tensor:
    """``[C]``: the field of each channel."""
    return torch.repeat_interleave(torch.arange(len(ftype)),
                                   torch.tensor([r.size for r in ftype.representations]))


def invariant_basis(ftype: enn.FieldType) -> Tensor:
    """``[C, T]`` orthonormal basis of the invariant subspace (T trivial irreps in all)."""
    G = ftype.fibergroup
    columns = []
    for rep, start in zip(ftype.representations, map(int, ftype.fields_start)):
        Q = torch.as_tensor(rep.change_of_basis, dtype=torch.float64)
        offset = 0
        for irr in rep.irreps:
            irrep = G.irrep(*irr)
            if irrep.is_trivial():
                col = torch.zeros(ftype.size, dtype=torch.float64)
                col[start:start + rep.size] = Q[:, offset]
                columns.append(col)
            offset += irrep.size
    if not columns:
        return torch.zeros(ftype.size, 0, dtype=torch.float64)
    return torch.stack(columns, dim=1)


def field_type(gspace, channels: int, kind: str = "auto", band_limit: int = 1) -> enn.FieldType:
    r"""A hidden field type of ``channels`` fields for a nonlinearity ``kind``.

    - ``"auto"``: what the kernel MLP uses for the group (``"regular"`` for
      finite groups, ``"quotient"`` for SO(3)/O(3), ``"fourier"`` otherwise);
    - ``"regular"``: regular representations of a finite group (pointwise
      nonlinearities, exact);
    - ``"fourier"``: band-limited regular representations of a continuous group
      (functions on the group sampled on a grid; exact on the grid's symmetries);
    - ``"quotient"``: band-limited functions on the sphere, SO(3)/O(3);
    - ``"gated"``/``"norm"``: ``channels`` copies of every irrep up to
      ``band_limit`` (all irreps of a finite group), trivial ones first. A
      gated nonlinearity then needs one gate per non-trivial field on top:
      its ``in_type``.
    """
    from ..nonlinearities import _band_limited_irreps, build_hidden_block, default_kind

    if kind not in FIELD_KINDS:
        raise ValueError(f"kind must be one of {FIELD_KINDS}, got {kind!r}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    G = gspace.fibergroup
    if kind == "auto":
        kind = default_kind(G)
    if kind in ("regular", "fourier", "quotient"):
        block = build_hidden_block(gspaces.no_base_space(G), channels, band_limit, kind)
        return enn.FieldType(gspace, block.module.in_type.representations)
    if G.continuous:
        irreps = [G.irrep(*irr) for irr in _band_limited_irreps(G, band_limit)]
    else:
        irreps = list(G.irreps())
    irreps.sort(key=lambda irrep: not irrep.is_trivial())
    return enn.FieldType(gspace, [irrep for irrep in irreps for _ in range(channels)])


# immutable escnn objects, shared rather than copied by the deep copies below
_ESCNN_SHARED = (enn.FieldType, gspaces.GSpace, GroupElement, Group)


def _is_escnn_object(value) -> bool:
    return isinstance(value, _ESCNN_SHARED)


def share_escnn_objects(module: torch.nn.Module, memo: dict) -> None:
    """Mark the escnn types, gspaces, groups and group elements held by ``module`` (also
    in lists) as shared in a ``deepcopy`` memo: they are immutable, and escnn's group
    elements cannot be deep-copied in every order (their hash needs their group)."""
    for value in module.__dict__.values():
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if _is_escnn_object(item):
                memo[id(item)] = item


def escnn_sharing_memo(root) -> dict:
    """A ``copy.deepcopy`` memo that shares every escnn type, gspace, group, group element
    and representation reachable from ``root`` (not only its own attributes, as
    :func:`share_escnn_objects`), while the modules and tensors around them are copied."""
    shared = (*_ESCNN_SHARED, Representation)
    memo, seen, todo = {}, set(), [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, Tensor, type)):
            continue
        seen.add(id(obj))
        if isinstance(obj, shared):
            memo[id(obj)] = obj
        elif isinstance(obj, dict):
            todo += [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            todo += list(obj)
        elif hasattr(obj, "__dict__"):
            todo += list(vars(obj).values())
    return memo


def deepcopy_sharing_escnn(module: torch.nn.Module, memo: dict):
    """``copy.deepcopy`` of ``module`` that shares its escnn objects (see above)."""
    share_escnn_objects(module, memo)
    new = module.__class__.__new__(module.__class__)
    memo[id(module)] = new
    for key, value in module.__dict__.items():
        new.__dict__[key] = copy.deepcopy(value, memo)
    return new


class FieldModule(torch.nn.Module):
    """Base of the per-node blocks: ``in_type`` -> ``out_type`` on ``[N, C]`` tensors.

    Inputs may be tensors or ``GeometricTensor`` s of ``in_type``; the output is
    of the same kind (a ``GeometricTensor`` keeps the input's ``coords``).
    """

    in_type: enn.FieldType
    out_type: enn.FieldType

    def __deepcopy__(self, memo):
        return deepcopy_sharing_escnn(self, memo)

    def _tensor(self, x, name: str = "x") -> Tensor:
        if isinstance(x, enn.GeometricTensor):
            if x.type != self.in_type:
                raise ValueError(f"{name} is a GeometricTensor of type {x.type}, expected "
                                 f"{self.in_type}")
            x = x.tensor
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or escnn GeometricTensor, "
                            f"got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.in_type.size:
            raise ValueError(f"{name} must have shape [num_nodes, {self.in_type.size}] "
                             f"(in_type.size), got {list(x.shape)}")
        return x

    def _like(self, y: Tensor, x):
        if isinstance(x, enn.GeometricTensor):
            return enn.GeometricTensor(y, self.out_type, coords=x.coords)
        return y

    def extra_repr(self) -> str:
        return (f"{self.in_type.size} -> {self.out_type.size}, "
                f"group={self.in_type.fibergroup.name}")


def check_batch(batch: Optional[Tensor], num_nodes: int, name: str = "batch") -> None:
    """``batch`` is None or an integer vector with one entry per node."""
    if batch is None:
        return
    if not isinstance(batch, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(batch).__name__}")
    if batch.dtype not in (torch.int32, torch.int64) or batch.dim() != 1 \
            or batch.shape[0] != num_nodes:
        raise ValueError(f"{name} must be an integer vector [num_nodes] = [{num_nodes}], "
                         f"got {batch.dtype} {list(batch.shape)}")
