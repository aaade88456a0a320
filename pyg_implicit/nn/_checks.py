"""Input validation shared by the layers: clear errors that name the argument."""
from __future__ import annotations

from typing import Optional

import torch
from escnn import nn as enn
from torch import Tensor


def _as_tensor(x, name: str, in_type: Optional[enn.FieldType] = None) -> Tensor:
    if isinstance(x, enn.GeometricTensor):
        if in_type is not None and x.type != in_type:
            raise ValueError(f"{name} is a GeometricTensor of type {x.type}, expected {in_type}")
        return x.tensor
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or escnn GeometricTensor, "
                        f"got {type(x).__name__}")
    return x


def split_inputs(x, pos, in_type: enn.FieldType):
    """``(x_src, x_dst, pos_src, pos_dst)`` from plain or bipartite inputs."""
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError(f"x must be a tensor or a (x_src, x_dst) pair, got {len(x)} items")
        x_src = _as_tensor(x[0], "x[0]", in_type)
        x_dst = None if x[1] is None else _as_tensor(x[1], "x[1]")
    else:
        x_src = _as_tensor(x, "x", in_type)
        x_dst = x_src
    if isinstance(pos, (tuple, list)):
        if len(pos) != 2:
            raise ValueError(f"pos must be a tensor or a (pos_src, pos_dst) pair, "
                             f"got {len(pos)} items")
        pos_src, pos_dst = _as_tensor(pos[0], "pos[0]"), _as_tensor(pos[1], "pos[1]")
    else:
        pos_src = pos_dst = _as_tensor(pos, "pos")
    return x_src, x_dst, pos_src, pos_dst


def check_inputs(x_src: Tensor, pos_src: Tensor, pos_dst: Tensor, edge_index: Tensor,
                 edge_attr: Optional[Tensor], pos_dim: int, in_channels: int,
                 attr_dim: int, param: Tensor) -> None:
    """Shapes, dtypes, devices and index ranges of a point convolution's inputs."""
    if x_src.dim() != 2 or x_src.shape[1] != in_channels:
        raise ValueError(f"x must have shape [num_nodes, {in_channels}] (in_type.size), "
                         f"got {list(x_src.shape)}")
    for name, p in (("pos (source)", pos_src), ("pos (target)", pos_dst)):
        if p.dim() != 2 or p.shape[1] != pos_dim:
            raise ValueError(f"{name} must have shape [num_nodes, {pos_dim}], got {list(p.shape)}")
    if pos_src.shape[0] != x_src.shape[0]:
        raise ValueError(f"pos and x must have the same number of (source) nodes, got "
                         f"{pos_src.shape[0]} and {x_src.shape[0]}")
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"edge_index must be a torch.Tensor, got {type(edge_index).__name__}")
    if edge_index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"edge_index must be an int32 or int64 tensor, got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape [2, num_edges], got {list(edge_index.shape)}")
    floats = [("x", x_src), ("pos", pos_src), ("pos (target)", pos_dst)]
    if attr_dim > 0:
        if edge_attr is None:
            raise ValueError(f"edge_attr is required: the layer was built with an "
                             f"edge_attr_type of size {attr_dim}")
        if not isinstance(edge_attr, Tensor):
            raise TypeError(f"edge_attr must be a torch.Tensor, got {type(edge_attr).__name__}")
        if edge_attr.dim() != 2 or edge_attr.shape != (edge_index.shape[1], attr_dim):
            raise ValueError(f"edge_attr must have shape [num_edges, {attr_dim}] = "
                             f"[{edge_index.shape[1]}, {attr_dim}], got {list(edge_attr.shape)}")
        floats.append(("edge_attr", edge_attr))
    elif edge_attr is not None:
        raise ValueError("edge_attr was given, but the layer was built without edge_attr_type")
    for name, t in floats:
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.dtype != param.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but the layer's parameters are "
                            f"{param.dtype}; convert one of them (e.g. layer.double())")
    for name, t in [*floats, ("edge_index", edge_index)]:
        if t.device != param.device:
            raise ValueError(f"{name} is on {t.device} but the layer's parameters are on "
                             f"{param.device}")
    if edge_index.numel() > 0 and not torch.compiler.is_compiling():
        lo, hi = int(edge_index.min()), int(edge_index[0].max())
        hi_dst = int(edge_index[1].max())
        if lo < 0:
            raise ValueError(f"edge_index contains negative indices (min {lo})")
        if hi >= pos_src.shape[0]:
            raise ValueError(f"edge_index[0] (sources) contains {hi}, out of range for "
                             f"{pos_src.shape[0]} source nodes")
        if hi_dst >= pos_dst.shape[0]:
            raise ValueError(f"edge_index[1] (targets) contains {hi_dst}, out of range for "
                             f"{pos_dst.shape[0]} target nodes")
