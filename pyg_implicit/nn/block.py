r"""``ResidualBlock``: implicit convolution, normalisation, nonlinearity and a skip."""
from __future__ import annotations

from typing import Optional

from escnn import nn as enn
from torch import Tensor

from ..kernel import FieldTypeLike
from .analytic_conv import AnalyticPointConv
from .conv import ImplicitPointConv
from .fields import FieldModule, check_field_type
from .linear import EquivariantLinear
from .nonlinearity import EquivariantNonlinearity
from .norm import EquivariantBatchNorm, EquivariantLayerNorm

NORMS = ("batch", "layer", "node", None)
KERNELS = ("implicit", "standard")


def make_conv(kernel: str, in_type: enn.FieldType, out_type: enn.FieldType,
              edge_attr_type: FieldTypeLike = None, **conv_kwargs):
    """An :class:`ImplicitPointConv` (``kernel="implicit"``) or an
    :class:`AnalyticPointConv` (``"standard"``: escnn's analytic basis, no edge
    attributes) from ``in_type`` to ``out_type``."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "implicit":
        if "kernel_nonlinearity" in conv_kwargs:  # "nonlinearity" is the block's own
            conv_kwargs["nonlinearity"] = conv_kwargs.pop("kernel_nonlinearity")
        return ImplicitPointConv(in_type, out_type, edge_attr_type, **conv_kwargs)
    if edge_attr_type is not None:
        raise ValueError("kernel='standard' (escnn's analytic basis) sees relative positions "
                         "only: edge_attr_type must be None")
    return AnalyticPointConv(in_type, out_type, **conv_kwargs)


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
    (or, with ``kernel="standard"``, of an :class:`AnalyticPointConv`)
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
        kernel (str, optional): ``"implicit"`` or ``"standard"``. (default: ``"implicit"``)
        **conv_kwargs: arguments of :class:`~pyg_implicit.ImplicitPointConv`
            (``hidden_channels``, ``hidden_layers``, ``band_limit``, ``width``,
            ``backend``, ``kernel_nonlinearity`` for the kernel MLP's
            ``nonlinearity``, ...) or of :class:`AnalyticPointConv` (``width``,
            ``n_rings``, ``num_neighbors``, ...).

    Bipartite inputs (e.g. from a point cloud to a subsample of it) are pairs:
    ``x = (x_src, x_dst)`` and ``pos = (pos_src, pos_dst)``, with ``batch`` the
    targets' and ``x_dst`` needed for the skip only (``None`` with
    ``residual=False``).

    Shapes:
        - **input:** node features :math:`(N, |\text{in\_type}|)`, positions
          :math:`(N, d)`, ``edge_index`` :math:`(2, E)`, ``edge_attr``
          :math:`(E, A)` *(optional)*, ``batch`` :math:`(N)` *(optional)*; or the
          bipartite pairs above
        - **output:** :math:`(N, |\text{out\_type}|)` (targets)
    """

    def __init__(self, in_type: enn.FieldType, out_type: enn.FieldType,
                 edge_attr_type: FieldTypeLike = None, nonlinearity: str = "auto",
                 activation: str = "silu", norm: Optional[str] = "batch",
                 residual: bool = True, kernel: str = "implicit", **conv_kwargs):
        super().__init__()
        self.in_type = check_field_type(in_type, "in_type")
        self.out_type = check_field_type(out_type, "out_type", in_type.gspace)
        self.act = EquivariantNonlinearity(out_type, nonlinearity, activation)
        self.kernel = kernel
        self.conv = make_conv(kernel, in_type, self.act.in_type, edge_attr_type, **conv_kwargs)
        self.norm = make_norm(self.act.in_type, norm)
        self.residual = residual
        self.skip = None
        if residual and in_type != out_type:
            self.skip = EquivariantLinear(in_type, out_type, bias=False)

    @property
    def exact_elements(self):
        """Group elements the block is exactly equivariant to (``None``: all of G)."""
        conv = self.conv.kernel.exact_elements if self.kernel == "implicit" else None
        return _intersect(conv, self.act.exact_elements)

    def reset_parameters(self):
        for module in (self.conv, self.norm, self.skip):
            if module is not None:
                module.reset_parameters()

    def forward(self, x, pos: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor] = None,
                batch: Optional[Tensor] = None, num_graphs: Optional[int] = None, csr=None):
        if isinstance(x, (tuple, list)):
            if len(x) != 2:
                raise ValueError(f"x must be a tensor or a (x_src, x_dst) pair, got {len(x)} "
                                 "items")
            t_src = self._tensor(x[0], "x[0]")
            t_dst = None if x[1] is None else self._tensor(x[1], "x[1]")
            conv_in, like = (t_src, t_dst), x[1]
        else:
            conv_in = t_dst = self._tensor(x)
            like = x
        y = self.conv(conv_in, pos, edge_index, edge_attr, csr=csr)
        if self.norm is not None:
            y = self.norm(y, batch, num_graphs)
        y = self.act(y)
        if self.residual:
            if t_dst is None:
                raise ValueError("residual=True needs the targets' features: pass "
                                 "x = (x_src, x_dst) with x_dst, or use residual=False")
            y = y + (t_dst if self.skip is None else self.skip(t_dst))
        return y if like is None else self._like(y, like)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, kernel={self.kernel}, "
                f"nonlinearity={self.act.kind}, residual={self.residual}")


def _intersect(a, b):
    """Intersection of two element lists, ``None`` standing for the whole group."""
    if a is None:
        return b
    if b is None:
        return a
    return [g for g in a if any(g == h for h in b)]


__all__ = ["ResidualBlock", "make_conv", "make_norm", "NORMS", "KERNELS"]
