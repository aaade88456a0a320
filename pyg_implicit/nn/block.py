r"""``ResidualBlock``: implicit convolution, normalisation, nonlinearity and a skip."""
from __future__ import annotations

from typing import Optional

from escnn import nn as enn
from torch import Tensor

from ..kernel import FieldTypeLike
from .conv import ImplicitPointConv
from .fields import FieldModule, check_field_type
from .linear import EquivariantLinear
from .nonlinearity import EquivariantNonlinearity
from .norm import EquivariantBatchNorm, EquivariantLayerNorm

NORMS = ("batch", "layer", "node", None)


def make_norm(ftype: enn.FieldType, norm: Optional[str]):
    """The normalisation named ``norm`` for ``ftype`` (``None``: identity)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm == "batch":
        return EquivariantBatchNorm(ftype)
    if norm in ("layer", "node"):
        return EquivariantLayerNorm(ftype, mode="graph" if norm == "layer" else "node")
    return None


class ResidualBlock(FieldModule):
    r"""A residual block of implicit steerable point convolutions.

    .. math::
        \mathbf{x}'_i = \sigma\Big(\mathrm{norm}\big(
            \textstyle\sum_{j \in \mathcal{N}(i)} K(\mathbf{p}_j - \mathbf{p}_i,
            \mathbf{a}_{j,i})\, \mathbf{x}_j\big)\Big) + S\, \mathbf{x}_i

    with :math:`K` the kernel of an :class:`~pyg_implicit.ImplicitPointConv`
    producing :math:`\sigma`'s input type (``out_type`` plus the gates of a gated
    nonlinearity), ``norm`` an equivariant batch or layer norm,
    :math:`\sigma` an :class:`~pyg_implicit.nn.EquivariantNonlinearity` and
    :math:`S` the identity when the types agree, else an
    :class:`~pyg_implicit.nn.EquivariantLinear` (no bias).

    Args:
        in_type (escnn.nn.FieldType): input fields, of a gspace on R^2/R^3.
        out_type (escnn.nn.FieldType): output fields, same gspace.
        edge_attr_type (FieldType or list of representations, optional): type
            of the edge attributes of the convolution. (default: ``None``)
        nonlinearity (str, optional): kind of :math:`\sigma` (``"auto"``,
            ``"gated"``, ``"norm"``, ``"pointwise"``, ``"fourier"``,
            ``"quotient"``). (default: ``"auto"``)
        activation (str, optional): its pointwise function. (default: ``"silu"``)
        norm (str, optional): ``"batch"`` (:class:`EquivariantBatchNorm`),
            ``"layer"`` (:class:`EquivariantLayerNorm` per graph), ``"node"``
            (per node) or ``None``. (default: ``"batch"``)
        residual (bool, optional): add the skip :math:`S \mathbf{x}_i`. (default: ``True``)
        **conv_kwargs: arguments of :class:`~pyg_implicit.ImplicitPointConv`
            (``hidden_channels``, ``hidden_layers``, ``band_limit``, ``width``,
            ``backend``, ...).

    Shapes:
        - **input:** node features :math:`(N, |\text{in\_type}|)`, positions
          :math:`(N, d)`, ``edge_index`` :math:`(2, E)`, ``edge_attr``
          :math:`(E, A)` *(optional)*, ``batch`` :math:`(N)` *(optional)*
        - **output:** :math:`(N, |\text{out\_type}|)`
    """

    def __init__(self, in_type: enn.FieldType, out_type: enn.FieldType,
                 edge_attr_type: FieldTypeLike = None, nonlinearity: str = "auto",
                 activation: str = "silu", norm: Optional[str] = "batch",
                 residual: bool = True, **conv_kwargs):
        super().__init__()
        self.in_type = check_field_type(in_type, "in_type")
        self.out_type = check_field_type(out_type, "out_type", in_type.gspace)
        self.act = EquivariantNonlinearity(out_type, nonlinearity, activation)
        self.conv = ImplicitPointConv(in_type, self.act.in_type, edge_attr_type, **conv_kwargs)
        self.norm = make_norm(self.act.in_type, norm)
        self.residual = residual
        self.skip = None
        if residual and in_type != out_type:
            self.skip = EquivariantLinear(in_type, out_type, bias=False)

    @property
    def exact_elements(self):
        """Group elements the block is exactly equivariant to (``None``: all of G)."""
        return _intersect(self.conv.kernel.exact_elements, self.act.exact_elements)

    def reset_parameters(self):
        for module in (self.conv, self.norm, self.skip):
            if module is not None:
                module.reset_parameters()

    def forward(self, x, pos: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor] = None,
                batch: Optional[Tensor] = None, num_graphs: Optional[int] = None, csr=None):
        t = self._tensor(x)
        y = self.conv(t, pos, edge_index, edge_attr, csr=csr)
        if self.norm is not None:
            y = self.norm(y, batch, num_graphs)
        y = self.act(y)
        if self.residual:
            y = y + (t if self.skip is None else self.skip(t))
        return self._like(y, x)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, nonlinearity={self.act.kind}, "
                f"residual={self.residual}")


def _intersect(a, b):
    """Intersection of two element lists, ``None`` standing for the whole group."""
    if a is None:
        return b
    if b is None:
        return a
    return [g for g in a if any(g == h for h in b)]


__all__ = ["ResidualBlock", "make_norm", "NORMS"]
