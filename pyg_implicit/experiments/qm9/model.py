r"""Models of the QM9 experiment: the O(3)-invariant steerable regressor of the
paper's ablation (implicit kernels conditioned on bond and atom types, or escnn's
analytic kernels) and PyG's SchNet and DimeNet++ as baselines.

PyG 2.8's ``radius_graph`` needs pyg-lib (no wheels here), which SchNet's default
interaction graph and DimeNet's ``forward`` call, and DimeNet's ``triplets`` needs
torch-sparse (source-only on PyPI). :class:`SchNetQM9` passes SchNet an interaction
graph built with torch_cluster; :class:`DimeNetPlusPlusQM9` repeats DimeNet's
``forward`` with torch_cluster's radius graph and :func:`triplets` in plain torch
(tested against a brute-force enumeration). The networks themselves are PyG's.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from escnn import gspaces
from torch import Tensor
from torch_geometric.nn.models import DimeNetPlusPlus, SchNet
from torch_geometric.utils import scatter

from pyg_implicit.experiments.qm9.data import ATOM_TYPES, BOND_TYPES
from pyg_implicit.graph import _torch_cluster
from pyg_implicit.nn import ImplicitSteerableNet

ATTRIBUTES = ("none", "bond", "bond+atoms")
GRAPHS = ("bonds", "radius")
MODELS = ("steerable", "schnet", "dimenet++")
# published hyper-parameters (SchNet: Schütt et al. 2017, as in PyG's QM9 example;
# DimeNet++: Gasteiger et al. 2020, PyG's defaults for QM9)
SCHNET = dict(hidden_channels=128, num_filters=128, num_interactions=6, num_gaussians=50,
              cutoff=10.0, max_num_neighbors=32, readout="add")
DIMENET_PP = dict(hidden_channels=128, out_channels=1, num_blocks=4, int_emb_size=64,
                  basis_emb_size=8, out_emb_channels=256, num_spherical=7, num_radial=6,
                  cutoff=5.0, max_num_neighbors=32, envelope_exponent=5,
                  num_before_skip=1, num_after_skip=2, num_output_layers=3)


def edge_attr_width(attributes: str) -> int:
    """Scalars per edge the kernels see: bond type one-hot, plus both atoms' types."""
    if attributes not in ATTRIBUTES:
        raise ValueError(f"attributes must be one of {ATTRIBUTES}, got {attributes!r}")
    return {"none": 0, "bond": len(BOND_TYPES),
            "bond+atoms": len(BOND_TYPES) + 2 * len(ATOM_TYPES)}[attributes]


def bond_features(edge_index: Tensor, bond_index: Tensor, bond_attr: Tensor,
                  num_nodes: int) -> Tensor:
    """The bond-type one-hot of each edge of ``edge_index`` (zeros: not bonded)."""
    out = bond_attr.new_zeros(edge_index.shape[1], bond_attr.shape[1])
    if bond_index.numel() == 0 or edge_index.numel() == 0:
        return out
    keys = bond_index[0] * num_nodes + bond_index[1]
    keys, order = keys.sort()
    query = edge_index[0].long() * num_nodes + edge_index[1].long()
    at = torch.searchsorted(keys, query).clamp(max=keys.numel() - 1)
    found = keys[at] == query
    out[found] = bond_attr[order[at[found]]]
    return out


class SteerableQM9(torch.nn.Module):
    r"""O(3)-invariant molecular regressor (the implicit-kernel paper's QM9 model, from
    the library's blocks).

    .. math::
        \hat y = \mathrm{MLP}\Big(\tfrac{1}{|\mathcal{V}|}\textstyle\sum_i
            \|\mathbf{h}^{(L)}_i\|\Big), \qquad
        \mathbf{h}^{(l)}_i = \mathrm{Block}_l\big(\mathbf{h}^{(l-1)}\big)_i
            \text{ with kernels } K(\mathbf{p}_j - \mathbf{p}_i, \mathbf{a}_{ji})

    an :class:`~pyg_implicit.nn.ImplicitSteerableNet` on ``gspaces.flipRot3dOnR3()``
    whose input is the atom-type one-hot and whose convolutions run over the bonds
    (``graph="bonds"``, as the paper's code) or all pairs within ``cutoff``. The edge
    attributes :math:`\mathbf{a}_{ji}` are, by ``attributes``: none; the bond type
    (one-hot over single/double/triple/aromatic/unperceived, zeros for non-bonded
    pairs); or the bond type and the atom types of both ends. ``kernel="standard"``
    uses escnn's analytic basis instead (relative positions only).

    Args:
        attributes (str, optional): ``"none"``, ``"bond"``, ``"bond+atoms"``.
            (default: ``"bond+atoms"``)
        kernel (str, optional): ``"implicit"`` or ``"standard"``. (default: ``"implicit"``)
        graph (str, optional): ``"bonds"`` or ``"radius"``. (default: ``"bonds"``)
        cutoff (float, optional): of the radius graph, Å. (default: ``2.0``)
        channels (int, optional): fields per block. (default: ``8``)
        num_layers (int, optional): blocks. (default: ``4``)
        band_limit (int, optional): of the hidden irreps. (default: ``1``)
        mlp_channels (int, optional): of the head. (default: ``32``)
        width (float, optional): initial kernel width, Å. (default: ``1.5``)
        pool (str, optional): ``"mean"`` or ``"sum"`` over each molecule's atoms.
            (default: ``"mean"``)
        conv_kwargs (dict, optional): more arguments of every convolution.

    Shapes:
        - **input:** a PyG batch of :class:`~.data.QM9Molecules` items
        - **output:** :math:`(B)`
    """

    def __init__(self, attributes: str = "bond+atoms", kernel: str = "implicit",
                 graph: str = "bonds", cutoff: float = 2.0, channels: int = 8,
                 num_layers: int = 4, band_limit: int = 1, mlp_channels: int = 32,
                 width: float = 1.5, pool: str = "mean", conv_kwargs: Optional[Dict] = None):
        super().__init__()
        if graph not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
        n_attr = edge_attr_width(attributes)
        if kernel == "standard" and n_attr:
            raise ValueError("kernel='standard' (escnn's analytic basis) sees relative "
                             "positions only: attributes must be 'none'")
        self.attributes, self.kernel, self.graph, self.cutoff = attributes, kernel, graph, cutoff
        gspace = gspaces.flipRot3dOnR3()
        edge_type = [gspace.fibergroup.trivial_representation] * n_attr or None
        conv = {"width": width, "num_neighbors": 2.0 if graph == "bonds" else 6.0,
                **dict(conv_kwargs or {})}
        self.net = ImplicitSteerableNet(
            gspace, len(ATOM_TYPES), 1, channels=channels, num_layers=num_layers,
            nonlinearity="gated", band_limit=band_limit, norm="batch", pool=pool,
            edge_attr_type=edge_type, mlp_channels=mlp_channels, conv_kwargs=conv,
            kernel=kernel)

    def edges(self, data) -> Tuple[Tensor, Optional[Tensor]]:
        """The convolution's ``edge_index`` and edge attributes for a batch."""
        if self.graph == "bonds":
            edge_index = data.edge_index
            bond = data.edge_attr
        else:
            tc = _torch_cluster()
            edge_index = tc.radius_graph(data.pos, self.cutoff, data.batch, loop=False,
                                         max_num_neighbors=64)
            bond = bond_features(edge_index, data.edge_index, data.edge_attr, data.num_nodes)
        if self.attributes == "none":
            return edge_index, None
        if self.attributes == "bond":
            return edge_index, bond
        return edge_index, torch.cat([bond, data.x[edge_index[0]], data.x[edge_index[1]]], 1)

    def forward(self, data) -> Tensor:
        edge_index, edge_attr = self.edges(data)
        return self.net(data.x, data.pos, data.batch, edge_index, edge_attr,
                        num_graphs=data.num_graphs).squeeze(-1)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(kernel={self.kernel}, attributes={self.attributes}, "
                f"graph={self.graph}, {self.net!r})")


class _RadiusGraph(torch.nn.Module):
    """SchNet's interaction graph (edges within ``cutoff`` and their lengths) on
    torch_cluster."""

    def __init__(self, cutoff: float, max_num_neighbors: int):
        super().__init__()
        self.cutoff, self.max_num_neighbors = cutoff, max_num_neighbors

    def forward(self, pos: Tensor, batch: Tensor) -> Tuple[Tensor, Tensor]:
        edge_index = _torch_cluster().radius_graph(pos, self.cutoff, batch, loop=False,
                                                   max_num_neighbors=self.max_num_neighbors)
        row, col = edge_index
        return edge_index, (pos[row] - pos[col]).norm(dim=-1)


class SchNetQM9(SchNet):
    """PyG's :class:`~torch_geometric.nn.models.SchNet` on a torch_cluster radius graph."""

    def __init__(self, **kwargs):
        kwargs = {**SCHNET, **kwargs}
        super().__init__(**kwargs, interaction_graph=_RadiusGraph(
            kwargs["cutoff"], kwargs["max_num_neighbors"]))

    def forward(self, data) -> Tensor:  # noqa: D102 - a batch in, [B] out
        return super().forward(data.z, data.pos, data.batch).squeeze(-1)


def triplets(edge_index: Tensor, num_nodes: int):
    """DimeNet's triplets in plain torch: for each edge ``j -> i`` every other edge
    ``k -> j`` with ``k != i``. Returns ``(i, j, idx_i, idx_j, idx_k, idx_kj, idx_ji)``
    as ``torch_geometric.nn.models.dimenet.triplets`` does (same sets; order may differ)."""
    row, col = edge_index  # j -> i
    order = torch.argsort(col, stable=True)  # edges grouped by target
    ptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=row.device)
    ptr[1:] = torch.bincount(col, minlength=num_nodes).cumsum(0)
    count = ptr[row + 1] - ptr[row]  # edges into j, for each edge j -> i
    idx_ji = torch.arange(row.numel(), device=row.device).repeat_interleave(count)
    start = torch.cumsum(count, 0) - count
    offset = torch.arange(idx_ji.numel(), device=row.device) - start.repeat_interleave(count)
    idx_kj = order[ptr[row].repeat_interleave(count) + offset]
    idx_i, idx_j, idx_k = col[idx_ji], row[idx_ji], row[idx_kj]
    keep = idx_i != idx_k
    return (col, row, idx_i[keep], idx_j[keep], idx_k[keep], idx_kj[keep], idx_ji[keep])


class DimeNetPlusPlusQM9(DimeNetPlusPlus):
    """PyG's :class:`~torch_geometric.nn.models.DimeNetPlusPlus`, its ``forward``
    repeated on a torch_cluster radius graph and :func:`triplets`."""

    def __init__(self, **kwargs):
        super().__init__(**{**DIMENET_PP, **kwargs})

    def forward(self, data) -> Tensor:  # noqa: D102 - a batch in, [B] out
        z, pos, batch = data.z, data.pos, data.batch
        edge_index = _torch_cluster().radius_graph(pos, self.cutoff, batch, loop=False,
                                                   max_num_neighbors=self.max_num_neighbors)
        i, j, idx_i, idx_j, idx_k, idx_kj, idx_ji = triplets(edge_index, z.size(0))
        dist = (pos[i] - pos[j]).pow(2).sum(dim=-1).sqrt()
        pos_jk, pos_ij = pos[idx_j] - pos[idx_k], pos[idx_i] - pos[idx_j]
        angle = torch.atan2(torch.cross(pos_ij, pos_jk, dim=1).norm(dim=-1),
                            (pos_ij * pos_jk).sum(dim=-1))
        rbf = self.rbf(dist)
        sbf = self.sbf(dist, angle, idx_kj)
        x = self.emb(z, rbf, i, j)
        P = self.output_blocks[0](x, rbf, i, num_nodes=pos.size(0))
        for interaction, output in zip(self.interaction_blocks, self.output_blocks[1:]):
            x = interaction(x, rbf, sbf, idx_kj, idx_ji)
            P = P + output(x, rbf, i, num_nodes=pos.size(0))
        return scatter(P, batch, dim=0, dim_size=data.num_graphs, reduce="sum").squeeze(-1)


def build_model(config: Dict) -> torch.nn.Module:
    """A model from its recorded configuration (``{"model": ..., **kwargs}``)."""
    config = dict(config)
    name = config.pop("model")
    if name == "steerable":
        return SteerableQM9(**config)
    if name == "schnet":
        return SchNetQM9(**config)
    if name == "dimenet++":
        return DimeNetPlusPlusQM9(**config)
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


__all__ = ["SteerableQM9", "SchNetQM9", "DimeNetPlusPlusQM9", "triplets", "bond_features",
           "build_model", "ATTRIBUTES", "GRAPHS", "MODELS", "SCHNET", "DIMENET_PP"]
