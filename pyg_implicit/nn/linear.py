r"""Per-node equivariant maps: linear maps between field types, scalar embeddings,
invariant maps and global pooling over the graphs of a batch."""
from __future__ import annotations

from typing import Optional

import torch
from escnn import nn as enn
from escnn.nn import init as enn_init
from torch import Tensor
from torch_geometric.utils import scatter

from .._exact import ExactLinearBases, dense_gather_index, expand_linear, sparse_bias_index
from ..kernel import _default_dtype
from .fields import (FieldModule, check_batch, check_field_type, fiber_type, field_index,
                     invariant_basis, trivial_field_mask)
from .norm import _num_graphs

INVARIANT_KINDS = ("norm", "invariant")
POOL_REDUCTIONS = ("sum", "mean")


class EquivariantLinear(FieldModule):
    r"""Equivariant linear map between field types, per node (escnn's ``Linear``).

    .. math::
        \mathbf{x}'_i = W \mathbf{x}_i + \mathbf{b},\qquad
        W \rho_{in}(g) = \rho_{out}(g) W \;\; \forall g \in G

    :math:`W` is a learned combination of escnn's basis of equivariant
    matrices, :math:`\mathbf{b}` a bias on the trivial irreps of ``out_type``.
    escnn samples that basis in float32; it is projected onto the exact
    intertwiners in float64 (and restored after every dtype move), so a float64
    model is equivariant to rounding error. The matrix is expanded with one
    gather, which ``torch.compile(fullgraph=True)`` traces.

    Args:
        in_type (escnn.nn.FieldType): input fields.
        out_type (escnn.nn.FieldType): output fields, same gspace.
        bias (bool, optional): learn the bias. (default: ``True``)

    Shapes:
        - **input:** :math:`(N, |\text{in\_type}|)` (a tensor or ``GeometricTensor``)
        - **output:** :math:`(N, |\text{out\_type}|)`
    """

    def __init__(self, in_type: enn.FieldType, out_type: enn.FieldType, bias: bool = True):
        super().__init__()
        self.in_type = check_field_type(in_type, "in_type")
        self.out_type = check_field_type(out_type, "out_type", in_type.gspace)
        with _default_dtype(torch.float32) as dtype:  # escnn's bases need float32
            self.linear = enn.Linear(fiber_type(in_type), fiber_type(out_type), bias=bias)
        self._exact = ExactLinearBases([self.linear])
        self.register_buffer("_gather", dense_gather_index(self.linear), persistent=False)
        rows, cols = sparse_bias_index(self.linear)
        self.register_buffer("_bias_rows", rows, persistent=False)
        self.register_buffer("_bias_cols", cols, persistent=False)
        self.to(dtype)

    def _apply(self, fn, *args, **kwargs):
        # dtype/device moves round escnn's buffers; rewrite them from float64 masters
        super()._apply(fn, *args, **kwargs)
        if hasattr(self, "_exact"):
            self._exact.restore()
        return self

    def reset_parameters(self):
        enn_init.generalized_he_init(self.linear.weights.data, self.linear.basisexpansion)
        if self.linear.bias is not None:
            torch.nn.init.zeros_(self.linear.bias)

    def matrix(self) -> Tensor:
        """``(W [C_out, C_in], b [C_out] or None)`` with the current weights."""
        return expand_linear(self.linear, self._gather,
                             bias_index=(self._bias_rows, self._bias_cols))

    def forward(self, x):
        t = self._tensor(x)
        W, b = self.matrix()
        y = t @ W.to(t.dtype).t()
        if b is not None:
            y = y + b.to(t.dtype)
        return self._like(y, x)


class ScalarEmbedding(EquivariantLinear):
    r"""Embeds scalar node features (atom types, charges, ...) into a field type:
    an equivariant linear map from ``in_channels`` trivial fields, i.e. into the
    invariant subspace of ``out_type`` (e.g. the constant functions of regular
    or Fourier fields, the scalars of a mixed type).

    Args:
        in_channels (int): number of scalar input features.
        out_type (escnn.nn.FieldType): the fields to embed into; must have
            an invariant subspace.
        bias (bool, optional): learn a bias. (default: ``True``)

    Shapes:
        - **input:** :math:`(N, \text{in\_channels})`
        - **output:** :math:`(N, |\text{out\_type}|)`
    """

    def __init__(self, in_channels: int, out_type: enn.FieldType, bias: bool = True):
        check_field_type(out_type, "out_type")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if invariant_basis(out_type).shape[1] == 0:
            raise ValueError(f"out_type has no invariant (trivial) component to embed "
                             f"scalars into: {out_type}")
        G = out_type.fibergroup
        super().__init__(enn.FieldType(out_type.gspace, [G.trivial_representation] * in_channels),
                         out_type, bias)


class InvariantMap(FieldModule):
    r"""Invariant features of equivariant fields, per node.

    - ``"norm"``: trivial fields as they are, the norm :math:`\|f\|` of every
      other field (escnn's ``NormPool``, computed in the input's dtype);
    - ``"invariant"``: the coordinates of the projection onto the invariant
      subspace (one per trivial irrep contained in ``in_type``).

    Args:
        in_type (escnn.nn.FieldType): input fields.
        kind (str, optional): ``"norm"`` or ``"invariant"``. (default: ``"norm"``)

    Shapes:
        - **input:** :math:`(N, |\text{in\_type}|)`
        - **output:** :math:`(N, |\text{out\_type}|)`, ``out_type`` trivial fields
    """

    def __init__(self, in_type: enn.FieldType, kind: str = "norm"):
        super().__init__()
        self.in_type = check_field_type(in_type, "in_type")
        if kind not in INVARIANT_KINDS:
            raise ValueError(f"kind must be one of {INVARIANT_KINDS}, got {kind!r}")
        self.kind = kind
        G = in_type.fibergroup
        if kind == "norm":
            n = len(in_type)
            self.register_buffer("field_of_channel", field_index(in_type), persistent=False)
            self.register_buffer("trivial_field", torch.tensor(trivial_field_mask(in_type)),
                                 persistent=False)
            # a trivial field is its own (signed) invariant
            sign_channel = torch.tensor([int(s) for s in in_type.fields_start])
            self.register_buffer("field_start", sign_channel, persistent=False)
        else:
            basis = invariant_basis(in_type).to(torch.get_default_dtype())
            n = basis.shape[1]
            if n == 0:
                raise ValueError(f"in_type has no invariant subspace: {in_type}")
            self.register_buffer("basis", basis, persistent=False)
        self.out_type = enn.FieldType(in_type.gspace, [G.trivial_representation] * n)

    def forward(self, x):
        t = self._tensor(x)
        if self.kind == "invariant":
            y = t @ self.basis.to(t.dtype)
        else:
            sq = t.new_zeros(t.shape[0], len(self.in_type)).index_add_(
                1, self.field_of_channel, t * t)
            # sqrt'(0) is infinite: differentiate at sq + tiny, exact elsewhere
            norms = (sq + torch.finfo(t.dtype).tiny).sqrt()
            y = torch.where(self.trivial_field, t.index_select(1, self.field_start), norms)
        return self._like(y, x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kind={self.kind}"


class EquivariantGlobalPool(FieldModule):
    r"""Sum or mean of the node features of each graph of a batch.

    .. math::
        \mathbf{r}_b = \bigoplus_{i \in \mathcal{V}_b} \mathbf{x}_i

    A sum or mean of fields of one type is a field of that type, so the pooled
    features are equivariant (invariant fields stay invariant).

    Args:
        in_type (escnn.nn.FieldType): the fields to pool.
        reduce (str, optional): ``"sum"`` or ``"mean"``. (default: ``"mean"``)

    Shapes:
        - **input:** :math:`(N, |\text{in\_type}|)`, ``batch`` :math:`(N)` *(optional)*,
          ``num_graphs`` *(optional: pass it under* ``torch.compile`` *)*
        - **output:** :math:`(B, |\text{in\_type}|)`, a tensor
    """

    def __init__(self, in_type: enn.FieldType, reduce: str = "mean"):
        super().__init__()
        self.in_type = self.out_type = check_field_type(in_type, "in_type")
        if reduce not in POOL_REDUCTIONS:
            raise ValueError(f"reduce must be one of {POOL_REDUCTIONS}, got {reduce!r}")
        self.reduce = reduce

    def forward(self, x, batch: Optional[Tensor] = None, num_graphs: Optional[int] = None):
        t = self._tensor(x)
        check_batch(batch, t.shape[0])
        if batch is None:
            y = t.sum(0, keepdim=True) if self.reduce == "sum" else t.mean(0, keepdim=True)
        else:
            y = scatter(t, batch, dim=0, dim_size=_num_graphs(batch, num_graphs),
                        reduce=self.reduce)
        return y  # one row per graph: no coordinates left for a GeometricTensor

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reduce={self.reduce}"


__all__ = ["EquivariantLinear", "ScalarEmbedding", "InvariantMap", "EquivariantGlobalPool",
           "INVARIANT_KINDS", "POOL_REDUCTIONS"]
