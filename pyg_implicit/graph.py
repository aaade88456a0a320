"""Graph construction helpers over torch_cluster (batch-aware).

PyG 2.8's own ``radius_graph``/``knn_graph`` need pyg-lib; these call
torch_cluster directly. ``max_num_neighbors`` of ``radius_graph`` silently
truncates neighbourhoods in torch_cluster: here it is exposed, and a warning
names the nodes that were truncated.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor


def _torch_cluster():
    try:
        import torch_cluster
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("pyg_implicit.graph needs torch-cluster (pip install "
                          "--no-build-isolation torch-cluster); the convolution layers "
                          "themselves work without it") from exc
    return torch_cluster


def _check_pos(pos: Tensor, batch: Optional[Tensor]) -> None:
    if not isinstance(pos, Tensor) or pos.dim() != 2 or not pos.is_floating_point():
        raise ValueError("pos must be a floating-point tensor of shape [num_nodes, d], got "
                         f"{getattr(pos, 'shape', type(pos))}")
    if batch is not None:
        if batch.dim() != 1 or batch.shape[0] != pos.shape[0] or batch.dtype != torch.long:
            raise ValueError(f"batch must be an int64 tensor of shape [{pos.shape[0]}], got "
                             f"{batch.dtype} {list(batch.shape)}")
        if batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any()):
            raise ValueError("batch must be sorted (as in a PyG Batch)")


def radius_graph(pos: Tensor, r: float, batch: Optional[Tensor] = None, loop: bool = False,
                 max_num_neighbors: int = 32, flow: str = "source_to_target",
                 warn: bool = True) -> Tensor:
    """Edges between nodes within distance ``r`` (same graph of the batch only).

    Returns ``edge_index [2, E]`` with sources in row 0. When a node has more
    than ``max_num_neighbors`` neighbours within ``r``, torch_cluster keeps an
    arbitrary subset: a warning says how many nodes were affected.
    """
    _check_pos(pos, batch)
    tc = _torch_cluster()
    edge_index = tc.radius_graph(pos, r, batch, loop, max_num_neighbors, flow)
    if edge_index.numel() == 0:
        return edge_index
    target = edge_index[1] if flow == "source_to_target" else edge_index[0]
    degree = torch.bincount(target, minlength=pos.shape[0])
    full = int((degree >= max_num_neighbors).sum())
    if warn and full > 0:
        warnings.warn(f"radius_graph: {full} node(s) reached max_num_neighbors="
                      f"{max_num_neighbors}; their neighbourhoods within r={r} may be "
                      "truncated. Increase max_num_neighbors to keep every neighbour.",
                      stacklevel=2)
    if int(degree.max()) > max_num_neighbors:
        # without self-loops torch_cluster may keep max_num_neighbors + 1 edges
        edge_index = edge_index[:, _first_per_target(target, max_num_neighbors)]
    return edge_index


def _first_per_target(target: Tensor, cap: int) -> Tensor:
    """Indices of the first ``cap`` edges of every target, in their original order."""
    order = torch.argsort(target, stable=True)
    counts = torch.bincount(target)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(target.numel(), device=target.device) - starts[target[order]]
    return order[rank < cap].sort().values


def knn_graph(pos: Tensor, k: int, batch: Optional[Tensor] = None, loop: bool = False,
              flow: str = "source_to_target") -> Tensor:
    """Edges from the ``k`` nearest neighbours of each node (same graph only)."""
    _check_pos(pos, batch)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return _torch_cluster().knn_graph(pos, k, batch, loop, flow)
