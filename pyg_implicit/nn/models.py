r"""``ImplicitSteerableNet``: a generic equivariant point-cloud / graph model."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

import torch
from escnn import nn as enn
from torch import Tensor

from ..kernel import FieldTypeLike
from .block import ResidualBlock, _intersect
from .fields import check_batch, check_field_type, deepcopy_sharing_escnn, field_type
from .linear import EquivariantGlobalPool, EquivariantLinear, InvariantMap, ScalarEmbedding

TASKS = ("graph", "node")
HEADS = ("invariant", "equivariant")
GRAPHS = ("knn", "radius")
# hidden field type per nonlinearity kind (see field_type)
_FIELD_KIND = {"auto": "auto", "gated": "gated", "norm": "norm", "pointwise": "regular",
               "fourier": "fourier", "quotient": "quotient"}


class ImplicitSteerableNet(torch.nn.Module):
    r"""A G-equivariant network of implicit steerable convolutions, for any
    subgroup :math:`G` of O(2)/O(3) that escnn provides.

    .. math::
        \mathbf{h}^{(0)} = E\,\mathbf{x}, \qquad
        \mathbf{h}^{(l)} = \mathrm{Block}_l(\mathbf{h}^{(l-1)}, \mathbf{p},
        \mathcal{E}), \qquad
        \mathbf{y} = \mathrm{head}(\mathbf{h}^{(L)})

    :math:`E` embeds the scalar node features into the first hidden type
    (:class:`ScalarEmbedding`), every block is a :class:`ResidualBlock` over a
    kNN or radius graph :math:`\mathcal{E}` of the positions (or a given
    ``edge_index``), and the head is

    - ``head="invariant"``: field norms (:class:`InvariantMap`), pooled over each
      graph for ``task="graph"``, then an MLP to ``out_channels`` (invariant);
    - ``head="equivariant"``: an :class:`EquivariantLinear` to ``out_type``,
      pooled for ``task="graph"`` (equivariant, e.g. vectors or dipoles).

    Hidden field types come from :func:`~pyg_implicit.nn.field_type`:
    ``channels[l]`` fields of the kind ``nonlinearity`` needs (regular fields
    for finite groups, band-limited Fourier/sphere fields for continuous ones
    with ``"auto"``; irreps up to ``band_limit`` with ``"gated"``/``"norm"``,
    which are exactly equivariant for every group).

    Args:
        gspace: escnn gspace on R^2 or R^3 (e.g. ``gspaces.flipRot3dOnR3()``).
        in_channels (int): scalar node features (0: none, ``x`` may be ``None``).
        out_channels (int, optional): outputs of the invariant head.
        channels (int or list of int, optional): fields per hidden layer; an int
            repeats ``num_layers`` times. (default: ``16``)
        num_layers (int, optional): residual blocks when ``channels`` is an int.
            (default: ``3``)
        out_type (escnn.nn.FieldType, optional): output type of the
            equivariant head.
        task (str, optional): ``"graph"`` (one output per graph) or ``"node"``.
            (default: ``"graph"``)
        head (str, optional): ``"invariant"`` or ``"equivariant"``.
            (default: ``"invariant"``)
        nonlinearity (str, optional): of the blocks. (default: ``"auto"``)
        band_limit (int, optional): of the hidden field types. (default: ``1``)
        norm (str, optional): ``"batch"``, ``"layer"``, ``"node"`` or ``None``.
            (default: ``"batch"``)
        pool (str, optional): ``"mean"`` or ``"sum"`` over each graph.
            (default: ``"mean"``)
        graph (str, optional): ``"knn"`` (``k`` neighbours) or ``"radius"``
            (within ``r``, at most ``max_num_neighbors``), built when ``forward``
            gets no ``edge_index``. (default: ``"knn"``)
        k (int, optional): (default: ``16``)
        r (float, optional): (default: ``None``)
        max_num_neighbors (int, optional): (default: ``32``)
        edge_attr_type (FieldType or list of representations, optional):
            of the edge attributes given to every convolution.
        mlp_channels (int, optional): hidden width of the invariant head's MLP.
            (default: ``64``)
        conv_kwargs (dict, optional): arguments of every
            :class:`~pyg_implicit.ImplicitPointConv` (kernel MLP size,
            ``band_limit`` of the kernel, ``width``, ``backend``, ...).
        kernel (str, optional): ``"implicit"`` (:class:`~pyg_implicit.ImplicitPointConv`)
            or ``"standard"`` (:class:`~pyg_implicit.nn.AnalyticPointConv`, escnn's
            analytic basis; ``conv_kwargs`` then holds its arguments).
            (default: ``"implicit"``)

    Shapes:
        - **input:** ``x`` :math:`(N, \text{in\_channels})` or ``None``, ``pos``
          :math:`(N, d)`, ``batch`` :math:`(N)` *(optional)*, ``edge_index``
          :math:`(2, E)` *(optional)*, ``edge_attr`` :math:`(E, A)` *(optional)*
        - **output:** :math:`(B, \text{out})` for ``task="graph"``,
          :math:`(N, \text{out})` for ``task="node"``; ``out`` is
          ``out_channels`` or ``out_type.size``

    Under ``torch.compile(fullgraph=True)`` pass ``edge_index``, ``num_graphs``
    and (fused backend) ``csr = pyg_implicit.ops.build_csr(edge_index, N, N)``.
    """

    def __init__(self, gspace, in_channels: int, out_channels: Optional[int] = None,
                 channels: Union[int, Sequence[int]] = 16, num_layers: int = 3,
                 out_type: Optional[enn.FieldType] = None, task: str = "graph",
                 head: str = "invariant", nonlinearity: str = "auto", band_limit: int = 1,
                 norm: Optional[str] = "batch", pool: str = "mean", graph: str = "knn",
                 k: int = 16, r: Optional[float] = None, max_num_neighbors: int = 32,
                 edge_attr_type: FieldTypeLike = None, mlp_channels: int = 64,
                 activation: str = "silu", conv_kwargs: Optional[Dict] = None,
                 kernel: str = "implicit"):
        super().__init__()
        for name, value, allowed in (("task", task, TASKS), ("head", head, HEADS),
                                     ("graph", graph, GRAPHS),
                                     ("nonlinearity", nonlinearity, tuple(_FIELD_KIND))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if in_channels < 0:
            raise ValueError(f"in_channels must be >= 0, got {in_channels}")
        widths = [channels] * num_layers if isinstance(channels, int) else list(channels)
        if not widths or min(widths) < 1:
            raise ValueError(f"channels must be positive with at least one layer, got "
                             f"{channels} (num_layers={num_layers})")
        if head == "invariant" and (out_channels is None or out_channels < 1):
            raise ValueError("head='invariant' needs out_channels >= 1")
        if head == "equivariant":
            if out_type is None:
                raise ValueError("head='equivariant' needs out_type")
            check_field_type(out_type, "out_type", gspace)
        if graph == "radius" and r is None:
            raise ValueError("graph='radius' needs r")
        self.gspace, self.in_channels, self.task, self.head = gspace, in_channels, task, head
        self.graph, self.k, self.r, self.max_num_neighbors = graph, k, r, max_num_neighbors
        self.edge_attr_type = edge_attr_type
        self.hidden_types = [field_type(gspace, c, _FIELD_KIND[nonlinearity], band_limit)
                             for c in widths]
        self.embedding = ScalarEmbedding(max(in_channels, 1), self.hidden_types[0])
        self.blocks = torch.nn.ModuleList()
        t_in = self.hidden_types[0]
        for t_out in self.hidden_types:
            self.blocks.append(ResidualBlock(t_in, t_out, edge_attr_type, nonlinearity,
                                             activation, norm, kernel=kernel,
                                             **dict(conv_kwargs or {})))
            t_in = t_out
        if head == "invariant":
            self.invariant = InvariantMap(t_in, "norm")
            self.pool = EquivariantGlobalPool(self.invariant.out_type, pool)
            self.mlp = torch.nn.Sequential(
                torch.nn.Linear(self.invariant.out_type.size, mlp_channels), torch.nn.SiLU(),
                torch.nn.Linear(mlp_channels, out_channels))
            self.out_channels = out_channels
        else:
            self.out_linear = EquivariantLinear(t_in, out_type)
            self.pool = EquivariantGlobalPool(out_type, pool)
            self.out_channels = out_type.size
        self.out_type = out_type

    def __deepcopy__(self, memo):
        return deepcopy_sharing_escnn(self, memo)

    @property
    def exact_elements(self):
        """Group elements the model is exactly equivariant to (``None``: all of G)."""
        exact = None
        for block in self.blocks:
            exact = _intersect(exact, block.exact_elements)
        return exact

    def reset_parameters(self):
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def build_graph(self, pos: Tensor, batch: Optional[Tensor] = None) -> Tensor:
        """The kNN or radius ``edge_index`` of ``pos`` (per graph of ``batch``)."""
        from .. import graph as graphs

        if self.graph == "knn":
            return graphs.knn_graph(pos, self.k, batch, loop=False)
        return graphs.radius_graph(pos, self.r, batch, loop=False,
                                   max_num_neighbors=self.max_num_neighbors)

    def forward(self, x: Optional[Tensor], pos: Tensor, batch: Optional[Tensor] = None,
                edge_index: Optional[Tensor] = None, edge_attr: Optional[Tensor] = None,
                num_graphs: Optional[int] = None, csr=None) -> Tensor:
        if not isinstance(pos, Tensor) or pos.dim() != 2:
            raise ValueError(f"pos must be a [num_nodes, d] tensor, got "
                             f"{getattr(pos, 'shape', type(pos).__name__)}")
        check_batch(batch, pos.shape[0])
        if x is None:
            if self.in_channels > 0:
                raise ValueError(f"x is required: the model was built with "
                                 f"in_channels={self.in_channels}")
            x = pos.new_ones(pos.shape[0], 1)
        elif x.dim() != 2 or x.shape != (pos.shape[0], self.in_channels):
            raise ValueError(f"x must have shape [num_nodes, in_channels] = "
                             f"[{pos.shape[0]}, {self.in_channels}], got {list(x.shape)}")
        if edge_index is None:
            edge_index = self.build_graph(pos, batch)
        h = self.embedding(x)
        for block in self.blocks:
            h = block(h, pos, edge_index, edge_attr, batch, num_graphs, csr=csr)
        if self.head == "invariant":
            h = self.invariant(h)
            if self.task == "graph":
                h = self.pool(h, batch, num_graphs)
            return self.mlp(h)
        h = self.out_linear(h)
        return self.pool(h, batch, num_graphs) if self.task == "graph" else h

    def __repr__(self) -> str:
        widths = [len(t) for t in self.hidden_types]
        return (f"{self.__class__.__name__}(group={self.gspace.fibergroup.name}, "
                f"in_channels={self.in_channels}, out={self.out_channels}, "
                f"channels={widths}, task={self.task}, head={self.head}, graph={self.graph})")


__all__ = ["ImplicitSteerableNet", "TASKS", "HEADS", "GRAPHS"]
