"""Compressed sparse row (by target) and column (by source) views of a graph.

Edges follow PyG's ``source_to_target`` flow: ``edge_index[0]`` are the sources
``j``, ``edge_index[1]`` the targets ``i``.  :func:`build_csr` sorts the edges
by target (stable) once; the fused op consumes that order.
"""
from __future__ import annotations

import contextlib
import os
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["CSRGraph", "build_csr", "check_csr", "debug_checks"]

# PYG_IMPLICIT_DEBUG=1 (or the debug_checks() context) turns on the checks that
# read index data, e.g. that a user-supplied CSR matches its edge_index
_DEBUG = [os.environ.get("PYG_IMPLICIT_DEBUG", "") == "1"]


@contextlib.contextmanager
def debug_checks(enabled: bool = True):
    """Turn the data-reading checks on (or off) inside a ``with`` block."""
    previous = _DEBUG[0]
    _DEBUG[0] = bool(enabled)
    try:
        yield
    finally:
        _DEBUG[0] = previous


def debug_enabled() -> bool:
    return _DEBUG[0]


class CSRGraph(NamedTuple):
    """A graph sorted by target (CSR) with its source-sorted (CSC) companion.

    Attributes:
        rowptr: ``[num_dst + 1]`` int64, edges of target ``i`` are the CSR
            positions ``rowptr[i] <= p < rowptr[i + 1]``.
        col: ``[E]`` int64, source of the edge at CSR position ``p``.
        perm: ``[E]`` int64, original edge id of CSR position ``p``
            (``edge_attr[perm]`` is ``edge_attr`` in CSR order).
        csc_rowptr: ``[num_src + 1]`` int64, the same edges grouped by source.
        csc_perm: ``[E]`` int64, CSR position of the ``q``-th edge in source
            order (stable).
        num_src: number of source nodes.
        num_dst: number of target nodes.
    """

    rowptr: Tensor
    col: Tensor
    perm: Tensor
    csc_rowptr: Tensor
    csc_perm: Tensor
    num_src: int
    num_dst: int

    @property
    def num_edges(self) -> int:
        return self.col.shape[0]

    def to(self, device) -> "CSRGraph":
        return CSRGraph(self.rowptr.to(device), self.col.to(device),
                        self.perm.to(device), self.csc_rowptr.to(device),
                        self.csc_perm.to(device), self.num_src, self.num_dst)


def _ptr_from_index(index: Tensor, num: int) -> Tensor:
    """``[num + 1]`` offsets of a sorted grouping by ``index`` (static shape)."""
    counts = torch.zeros(num, dtype=torch.long, device=index.device)
    counts.index_add_(0, index, torch.ones_like(index))
    return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])


def csc_from_col(col: Tensor, num_src: int):
    """``(csc_rowptr, csc_perm)`` of a CSR ``col`` array (stable by source)."""
    csc_perm = torch.sort(col, stable=True).indices
    return _ptr_from_index(col, num_src), csc_perm


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, Tensor) and value.numel() == 1 and \
                not value.is_floating_point():
            value = int(value)
        else:
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def build_csr(edge_index: Tensor, num_src: int, num_dst: int | None = None) -> CSRGraph:
    """Sort the edges of ``edge_index`` (``[2, E]``, int32 or int64) by target.

    Args:
        edge_index: ``[2, E]`` with ``edge_index[0]`` the sources (``< num_src``)
            and ``edge_index[1]`` the targets (``< num_dst``).
        num_src: number of source nodes.
        num_dst: number of target nodes (default ``num_src``).

    Raises ``TypeError``/``ValueError`` naming the bad argument.  The range
    check reads the indices, so it is skipped while ``torch.compile`` traces.
    """
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"edge_index must be a Tensor, got {type(edge_index).__name__}")
    if edge_index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"edge_index must be int32 or int64, got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {tuple(edge_index.shape)}")
    num_src = _check_count("num_src", num_src)
    num_dst = num_src if num_dst is None else _check_count("num_dst", num_dst)
    src = edge_index[0].long()
    dst = edge_index[1].long()
    if edge_index.shape[1] > 0 and not torch.compiler.is_compiling():
        if int(edge_index.min()) < 0:
            raise ValueError("edge_index contains negative indices")
        if int(src.max()) >= num_src:
            raise ValueError(f"edge_index[0] (sources) has index {int(src.max())} "
                             f"out of range for num_src={num_src}")
        if int(dst.max()) >= num_dst:
            raise ValueError(f"edge_index[1] (targets) has index {int(dst.max())} "
                             f"out of range for num_dst={num_dst}")
    perm = torch.sort(dst, stable=True).indices
    col = src.index_select(0, perm).contiguous()
    rowptr = _ptr_from_index(dst, num_dst)
    csc_rowptr, csc_perm = csc_from_col(col, num_src)
    return CSRGraph(rowptr, col, perm, csc_rowptr, csc_perm, num_src, num_dst)


def check_csr(csr: CSRGraph, edge_index: Tensor, num_src: int, num_dst: int,
              full: bool | None = None) -> None:
    """Raise ``ValueError`` when ``csr`` is not ``build_csr(edge_index, num_src, num_dst)``.

    Sizes (number of edges and nodes) are always compared. The contents are
    compared when ``full`` is true, or by default when debug checks are on
    (``PYG_IMPLICIT_DEBUG=1`` or :func:`debug_checks`): that rebuilds the CSR,
    reads the indices and is skipped while ``torch.compile`` traces.
    """
    if not isinstance(csr, CSRGraph):
        raise TypeError(f"csr must be a CSRGraph (from build_csr), got {type(csr).__name__}")
    if csr.num_src != num_src or csr.num_dst != num_dst:
        raise ValueError(f"csr was built for {csr.num_src} source and {csr.num_dst} target "
                         f"nodes, the inputs have {num_src} and {num_dst}")
    if csr.num_edges != edge_index.shape[1]:
        raise ValueError(f"csr has {csr.num_edges} edges, edge_index has "
                         f"{edge_index.shape[1]}: it was built for another graph")
    if full is None:
        full = debug_enabled()
    if not full or torch.compiler.is_compiling():
        return
    expected = build_csr(edge_index.to(csr.col.device), num_src, num_dst)
    for name in ("rowptr", "col", "perm", "csc_rowptr", "csc_perm"):
        if not torch.equal(getattr(csr, name), getattr(expected, name)):
            raise ValueError(f"csr.{name} does not match edge_index: csr must be "
                             f"build_csr(edge_index, {num_src}, {num_dst}) of this graph")
