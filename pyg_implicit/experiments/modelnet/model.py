r"""A G-invariant point-cloud classifier: steerable convolutions from the sampled
points down a farthest-point-sampling hierarchy, pooled into invariant logits.

Every group the paper's ModelNet table uses is a gspace of escnn (:data:`GROUPS`);
the kernels are implicit (:class:`~pyg_implicit.ImplicitPointConv`) or escnn's
analytic ones (:class:`~pyg_implicit.nn.AnalyticPointConv`) at the same field types.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
from escnn import gspaces
from escnn import nn as enn
from torch import Tensor

from pyg_implicit.graph import _torch_cluster, knn_graph
from pyg_implicit.nn import (EquivariantGlobalPool, InvariantMap, ResidualBlock,
                             field_type)
from pyg_implicit.nn.models import _FIELD_KIND

# name -> (escnn gspace, the paper's name of the group, published ModelNet-40 test
# accuracy [%] of (standard, implicit) kernels, Zhdanov et al., NeurIPS 2023, Table 2).
# escnn's subgroups of O(3) around the z axis: "cone" reflections are mirrors through
# planes containing z, "dihedral" flips are pi rotations about horizontal axes, and
# "cylindrical" adds the inversion.
GROUPS: Dict[str, tuple] = {
    "mir": (gspaces.mirOnR3, "M", (81.7, 80.8)),
    "inv": (gspaces.invOnR3, "Inv", (80.0, 80.7)),
    "so2_inv": (gspaces.cylindricalOnR3, "SO(2)xInv", (83.2, 85.0)),
    "so2": (gspaces.rot2dOnR3, "SO(2)", (85.6, 86.5)),
    "so2_flip": (gspaces.dihedralOnR3, "SO(2)xF", (84.1, 85.2)),
    "so2_mir": (gspaces.conicalOnR3, "SO(2)xM", (82.9, 86.5)),
    "so3": (gspaces.rot3dOnR3, "SO(3)", (80.9, 80.2)),
    "o3": (gspaces.flipRot3dOnR3, "O(3)", (79.1, 78.9)),
}


def make_gspace(group: str):
    if group not in GROUPS:
        raise ValueError(f"group must be one of {tuple(GROUPS)}, got {group!r}")
    return GROUPS[group][0]()


def neighbourhood_radius(num_points: float, k: int) -> float:
    """Radius holding ``k`` of ``num_points`` points spread over the surface of a unit
    sphere (pi r^2 = 4 pi k / n): the kernels' initial width at each level."""
    return min(2.0, 2.0 * math.sqrt(k / num_points))


class PointCloudClassifier(torch.nn.Module):
    r"""G-invariant classifier of point clouds with normals.

    .. math::
        \mathbf{h}^{(0)} = \mathrm{Block}_0\big([1, \mathbf{n}, \mathbf{p}]\big), \qquad
        \mathbf{h}^{(l)} = \mathrm{Block}_l\big(\mathbf{h}^{(l-1)}
            \to \mathrm{FPS}(\mathcal{P}^{(l-1)})\big), \qquad
        \mathbf{y} = \mathrm{MLP}\Big(\tfrac{1}{|\mathcal{P}^{(L)}|}
            \textstyle\sum_i \|\mathbf{h}^{(L)}_i\|\Big)

    The input fields of each point are a scalar 1, its normal and its position
    (both vectors of the gspace's action on R^3, so a rotation of the cloud about
    its centre rotates them too). Block 0 convolves over the kNN graph of the
    points; every further block is a bipartite convolution from the previous
    level to a farthest-point subsample of it (``ratio`` of its points, torch_cluster's
    ``fps``; random start point in training, the first point in eval), over the
    ``k`` nearest previous-level points of each sampled point. Each block is a
    convolution, batch norm and a gated nonlinearity (:class:`ResidualBlock`,
    no skip). The head takes field norms (invariant), averages them over each
    cloud and classifies with an MLP: the logits are invariant under the group.

    Args:
        gspace: an escnn gspace on R^3 (:data:`GROUPS`).
        num_classes (int): outputs.
        kernel (str, optional): ``"implicit"`` or ``"standard"``. (default: ``"implicit"``)
        channels (sequence of int, optional): fields per level. (default: ``(8, 16, 32)``)
        num_points (int, optional): points per cloud, for the kernels' initial widths.
            (default: ``1024``)
        ratio (float, optional): subsampling ratio per level. (default: ``0.25``)
        k (int, optional): neighbours per point. (default: ``16``)
        band_limit (int, optional): of the hidden irreps. (default: ``1``)
        nonlinearity (str, optional): of the blocks. (default: ``"gated"``)
        mlp_channels (int, optional): hidden width of the head. (default: ``64``)
        dropout (float, optional): in the head. (default: ``0.0``)
        conv_kwargs (dict, optional): further arguments of every convolution.

    Shapes:
        - **input:** ``pos`` :math:`(N, 3)`, ``normal`` :math:`(N, 3)`, ``batch``
          :math:`(N)` (sorted), ``num_graphs``
        - **output:** logits :math:`(B, \text{num\_classes})`
    """

    def __init__(self, gspace, num_classes: int, kernel: str = "implicit",
                 channels: Sequence[int] = (8, 16, 32), num_points: int = 1024,
                 ratio: float = 0.25, k: int = 16, band_limit: int = 1,
                 nonlinearity: str = "gated", mlp_channels: int = 64, dropout: float = 0.0,
                 conv_kwargs: Optional[Dict] = None):
        super().__init__()
        if gspace.dimensionality != 3:
            raise ValueError(f"gspace must act on R^3, got R^{gspace.dimensionality}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"ratio must lie in (0, 1), got {ratio}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if nonlinearity not in _FIELD_KIND:
            raise ValueError(f"nonlinearity must be one of {tuple(_FIELD_KIND)}, got "
                             f"{nonlinearity!r}")
        self.gspace, self.kernel, self.ratio, self.k = gspace, kernel, ratio, k
        vector = gspace.basespace_action
        self.in_type = enn.FieldType(gspace, [gspace.trivial_repr, vector, vector])
        self.hidden_types = [field_type(gspace, c, _FIELD_KIND[nonlinearity], band_limit)
                             for c in channels]
        self.blocks = torch.nn.ModuleList()
        t_in, n = self.in_type, float(num_points)
        for level, t_out in enumerate(self.hidden_types):
            n = n * (ratio if level > 0 else 1.0)
            width = neighbourhood_radius(n, k)
            args = dict(conv_kwargs or {})
            # the implicit kernel's Gaussian envelope; the standard basis's rings reach
            # the edge of its support
            args.setdefault("width", width if kernel == "implicit" else 1.5 * width)
            args.setdefault("num_neighbors", float(k))
            self.blocks.append(ResidualBlock(t_in, t_out, nonlinearity=nonlinearity,
                                             norm="batch", residual=False, kernel=kernel,
                                             **args))
            t_in = t_out
        self.invariant = InvariantMap(t_in, "norm")
        self.pool = EquivariantGlobalPool(self.invariant.out_type, "mean")
        width = self.invariant.out_type.size
        self.head = torch.nn.Sequential(
            torch.nn.Linear(width, mlp_channels), torch.nn.SiLU(), torch.nn.Dropout(dropout),
            torch.nn.Linear(mlp_channels, num_classes))
        self.num_classes = num_classes

    def forward(self, pos: Tensor, normal: Tensor, batch: Tensor,
                num_graphs: Optional[int] = None) -> Tensor:
        tc = _torch_cluster()
        if pos.dim() != 2 or pos.shape[1] != 3 or normal.shape != pos.shape:
            raise ValueError(f"pos and normal must both have shape [num_points, 3], got "
                             f"{list(pos.shape)} and {list(normal.shape)}")
        if batch.shape != pos.shape[:1]:
            raise ValueError(f"batch must have shape [{pos.shape[0]}], got {list(batch.shape)}")
        num_graphs = int(batch.max()) + 1 if num_graphs is None else num_graphs
        x = torch.cat([pos.new_ones(pos.shape[0], 1), normal, pos], dim=1)
        edge_index = knn_graph(pos, self.k, batch, loop=False)
        h = self.blocks[0](x, pos, edge_index, batch=batch, num_graphs=num_graphs)
        for block in self.blocks[1:]:
            idx = tc.fps(pos, batch, ratio=self.ratio, random_start=self.training)
            pos_dst, batch_dst = pos[idx], batch[idx]
            dst, src = tc.knn(pos, pos_dst, self.k, batch, batch_dst)
            h = block((h, None), (pos, pos_dst), torch.stack([src, dst]), batch=batch_dst,
                      num_graphs=num_graphs)
            pos, batch = pos_dst, batch_dst
        pooled = self.pool(self.invariant(h), batch, num_graphs)
        return self.head(pooled)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(group={self.gspace.fibergroup.name}, "
                f"kernel={self.kernel}, channels={[len(t) for t in self.hidden_types]}, "
                f"classes={self.num_classes}, ratio={self.ratio}, k={self.k})")


__all__ = ["GROUPS", "make_gspace", "PointCloudClassifier", "neighbourhood_radius"]
