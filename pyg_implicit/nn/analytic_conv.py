r"""``AnalyticPointConv``: escnn's analytic steerable kernels behind the call signature
of :class:`~pyg_implicit.ImplicitPointConv` (the "standard" row of the paper's tables)."""
from __future__ import annotations

import copy
from typing import Optional

import torch
from escnn import nn as enn
from torch import Tensor
from torch_geometric.nn.aggr import SumAggregation

from . import _checks
from .fields import FieldModule, check_field_type, escnn_sharing_memo


class AnalyticPointConv(FieldModule):
    r"""Steerable point convolution over escnn's analytic kernel basis.

    .. math::
        \mathbf{x}'_i = c \sum_{j \in \mathcal{N}(i)}
            \sum_b w_b\, \kappa_b(\mathbf{p}_j - \mathbf{p}_i)\, \mathbf{x}_j
            \; + \; \mathbf{b}

    with :math:`\kappa_b` the basis of G-steerable kernels that escnn derives
    analytically for the field types (a Gaussian radial profile on ``n_rings``
    rings up to ``width``, angular parts up to a frequency cut-off), learnable
    weights :math:`w_b`, a bias on the trivial output fields and :math:`c` fixed
    at initialisation as for the implicit kernel: ``num_neighbors *
    E||K(x)||_F^2 / C_out = 1`` for ``x`` uniform in the support ball, so that a sum
    over ``num_neighbors`` edges of unit-variance features has about unit variance
    (escnn's He-type initialisation alone left the outputs ~30x smaller, and batch
    norms' running statistics far from the batch statistics for many steps). It wraps escnn's ``R2PointConv`` /
    ``R3PointConv`` (same basis, weights and initialisation; a scaled sum over the
    neighbours where escnn takes their mean) and takes the inputs
    of :class:`~pyg_implicit.ImplicitPointConv`, bipartite ones included, so the
    two are interchangeable in a model: the implicit kernel against the
    standard one at the same field types.

    Args:
        in_type (escnn.nn.FieldType): input field type, of a gspace on R^2/R^3.
        out_type (escnn.nn.FieldType): output field type, same gspace.
        width (float, optional): radius of the kernels' support. (default: ``1.0``)
        n_rings (int, optional): rings the support is split into. (default: ``3``)
        frequencies_cutoff (float, optional): maximum angular frequency per unit
            radius (escnn's default when ``None``). (default: ``None``)
        num_neighbors (float, optional): typical in-degree, for the scale :math:`c`.
            (default: ``16.0``)
        bias (bool, optional): bias on the trivial output fields. (default: ``True``)

    Edges follow PyG's ``source_to_target`` flow (``edge_index[0]`` sources j,
    ``edge_index[1]`` targets i).

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, C_{in})` or
          :math:`((|\mathcal{V_s}|, C_{in}), (|\mathcal{V_t}|, *))`, positions
          :math:`(|\mathcal{V}|, d)` or :math:`((|\mathcal{V_s}|, d), (|\mathcal{V_t}|, d))`,
          edge indices :math:`(2, |\mathcal{E}|)`
        - **output:** node features :math:`(|\mathcal{V}_t|, C_{out})`
    """

    def __init__(self, in_type: enn.FieldType, out_type: enn.FieldType, width: float = 1.0,
                 n_rings: int = 3, frequencies_cutoff: Optional[float] = None,
                 num_neighbors: float = 16.0, bias: bool = True):
        super().__init__()
        self.in_type = check_field_type(in_type, "in_type")
        self.out_type = check_field_type(out_type, "out_type", in_type.gspace)
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        if not (isinstance(n_rings, int) and n_rings >= 1):
            raise ValueError(f"n_rings must be a positive int, got {n_rings!r}")
        if not num_neighbors > 0:
            raise ValueError(f"num_neighbors must be positive, got {num_neighbors}")
        self.pos_dim = in_type.gspace.dimensionality
        conv_class = {2: enn.R2PointConv, 3: enn.R3PointConv}.get(self.pos_dim)
        if conv_class is None:
            raise ValueError(f"in_type must be on a gspace over R^2 or R^3, got "
                             f"R^{self.pos_dim}")
        kwargs = {} if frequencies_cutoff is None else {"frequencies_cutoff": frequencies_cutoff}
        self.conv = conv_class(in_type, out_type, bias=bias, width=width, n_rings=n_rings,
                               **kwargs)
        # escnn caches the kernel bases of irreps and shares them between every layer (also
        # through lists it does not register): `.double()` of one layer would convert the
        # others' buffers. This layer samples from its own copy.
        sampler = copy.deepcopy(self.conv._modules["_basissampler"],
                                escnn_sharing_memo(self.conv._modules["_basissampler"]))
        # escnn registers blocks while iterating over sets, so the order of buffers() would
        # follow PYTHONHASHSEED; DDP matches buffers between processes by position
        for module in sampler.modules():
            module._modules = dict(sorted(module._modules.items()))
            module._buffers = dict(sorted(module._buffers.items()))
        self.conv._modules["_basissampler"] = sampler
        # escnn averages over the neighbours; summed (and scaled by c) as ImplicitPointConv
        self.conv.aggr, self.conv.aggr_module = "add", SumAggregation()
        if self.conv.basissampler.dimension() == 0:
            raise ValueError(f"escnn's analytic basis between {in_type} and {out_type} is "
                             f"empty at width={width}, n_rings={n_rings}: the layer would "
                             "be zero")
        self.width, self.n_rings, self.num_neighbors = width, n_rings, float(num_neighbors)
        self.in_channels, self.out_channels = in_type.size, out_type.size
        self.register_buffer("scale", torch.ones(()))
        self.reset_parameters()

    def _apply(self, fn, recurse=True):
        # escnn's basis modules compare by value (__eq__ with torch.allclose): torch's own
        # walk over children dedupes them through a set, so it skipped value-equal copies
        # and compared half-converted ones (float against double). The constant sampler
        # is converted here, walking by identity.
        sampler = self.conv._modules.pop("_basissampler")
        try:
            super()._apply(fn, recurse)
        finally:
            self.conv._modules["_basissampler"] = sampler
        seen, todo = set(), [sampler]
        while todo:
            module = todo.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            if module._parameters:
                raise RuntimeError("escnn's basis sampler holds parameters; cannot convert")
            for name, buf in module._buffers.items():
                if buf is not None:
                    module._buffers[name] = fn(buf)
            todo += [m for m in module._modules.values() if m is not None]
        return self

    @property
    def weight(self) -> Tensor:
        return self.conv.weights

    def reset_parameters(self, num_samples: int = 512, seed: int = 0):
        enn.init.generalized_he_init(self.conv.weights.data, self.conv.basissampler)
        if self.conv.bias is not None:
            self.conv.bias.data.zero_()
        with torch.no_grad():
            gen = torch.Generator().manual_seed(seed)
            w = self.conv.weights
            x = torch.randn(num_samples, self.pos_dim, generator=gen, dtype=w.dtype)
            radius = torch.rand(num_samples, 1, generator=gen, dtype=w.dtype) ** (
                1.0 / self.pos_dim)
            x = x / x.norm(dim=1, keepdim=True) * radius * self.width
            K = self.conv.expand_filter(x.to(w.device))  # [samples, C_out, C_in]
            power = K.pow(2).sum((1, 2)).mean() / self.out_channels
            self.scale.fill_(float(1.0 / torch.sqrt(self.num_neighbors * power)))

    def forward(self, x, pos, edge_index: Tensor, edge_attr: Optional[Tensor] = None,
                csr=None) -> Tensor:
        """``edge_attr`` must be ``None`` (the analytic basis sees positions only);
        ``csr`` is accepted for interchangeability with ImplicitPointConv and ignored."""
        x_src, _, pos_src, pos_dst = _checks.split_inputs(x, pos, self.in_type)
        _checks.check_inputs(x_src, pos_src, pos_dst, edge_index, edge_attr, self.pos_dim,
                             self.in_channels, 0, self.conv.weights)
        edge_index = edge_index.long()
        src, dst = edge_index
        if edge_index.shape[1] == 0:  # escnn's sampler asserts on zero edges
            out = x_src.new_zeros(pos_dst.shape[0], self.out_channels)
        else:  # escnn's message: sum_b w_b kappa_b(delta) x_j with delta = p_j - p_i
            out = self.conv.propagate(edge_index, x=(x_src, None),
                                      edge_delta=pos_src[src] - pos_dst[dst],
                                      size=(pos_src.shape[0], pos_dst.shape[0]))
            out = out * self.scale.to(out.dtype)
        if self.conv.bias is not None:
            bias = self.conv.expanded_bias if not self.training else self.conv.expand_bias()
            out = out + bias
        return out

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, width={self.width}, n_rings={self.n_rings}, "
                f"basis={self.conv.basissampler.dimension()}")


__all__ = ["AnalyticPointConv"]
