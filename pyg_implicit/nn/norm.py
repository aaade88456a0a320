r"""Equivariant normalisation of node features: batch norm and per-graph / per-node layer norm."""
from __future__ import annotations

from typing import Optional

import torch
from escnn import nn as enn
from torch import Tensor
from torch_geometric.utils import scatter

from .fields import (FieldModule, check_batch, check_field_type, field_index,
                     invariant_basis, trivial_field_mask)

LAYER_NORM_MODES = ("graph", "node")


def _num_graphs(batch: Tensor, num_graphs: Optional[int]) -> int:
    if num_graphs is not None:
        return int(num_graphs)
    return int(batch.max()) + 1 if batch.numel() > 0 else 0


class EquivariantBatchNorm(FieldModule):
    r"""Batch normalisation of equivariant fields over all nodes of a mini-batch
    (escnn's ``IIDBatchNorm1d``, for every field type of any group).

    .. math::
        f' = w_f \frac{f - P_f \mu_f}{\sqrt{\sigma_f^2 + \epsilon}} + B_f b_f

    per field :math:`f`, with :math:`\mu_f` its mean over the nodes,
    :math:`P_f` the projector onto the field's invariant subspace (only invariant
    components can be centred without breaking equivariance),
    :math:`\sigma^2_f` the mean over its channels of the (unbiased) variance over
    the nodes (the trace of its covariance, an invariant), learnable
    :math:`w_f` and a bias :math:`b_f` on each trivial irrep (:math:`B_f` its
    basis vectors). In eval mode running estimates replace the batch statistics.
    Same outputs as escnn's ``IIDBatchNorm1d`` (tested), but gradients flow
    through the statistics (escnn detaches them), the dtype is kept and the
    forward has no data-dependent assertion, so it compiles with
    ``torch.compile(fullgraph=True)``.

    Args:
        in_type (escnn.nn.FieldType): the fields to normalise.
        eps (float, optional): added to the variance. (default: ``1e-5``)
        momentum (float, optional): of the running estimates. (default: ``0.1``)
        affine (bool, optional): learn :math:`w_f`, :math:`b_f`. (default: ``True``)
        track_running_stats (bool, optional): keep running estimates for eval
            mode; without them batch statistics are used in eval mode too.
            (default: ``True``)

    Shapes:
        - **input:** :math:`(N, |\text{in\_type}|)`, ``batch`` :math:`(N)` *(optional,
          unused: statistics run over all nodes, as PyG's ``BatchNorm``)*
        - **output:** :math:`(N, |\text{in\_type}|)`
    """

    def __init__(self, in_type: enn.FieldType, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True):
        super().__init__()
        self.in_type = self.out_type = check_field_type(in_type, "in_type")
        self.eps, self.momentum = float(eps), float(momentum)
        self.affine, self.track_running_stats = affine, track_running_stats
        basis = invariant_basis(in_type).to(torch.get_default_dtype())
        sizes = torch.tensor([r.size for r in in_type.representations],
                             dtype=torch.get_default_dtype())
        fields = field_index(in_type)
        self.register_buffer("projector", basis @ basis.t(), persistent=False)
        self.register_buffer("bias_basis", basis, persistent=False)
        self.register_buffer("field_of_channel", fields, persistent=False)
        # [C, F]: averages a channel quantity over each field
        average = torch.zeros(in_type.size, len(in_type))
        average[torch.arange(in_type.size), fields] = 1.0 / sizes[fields]
        self.register_buffer("field_average", average, persistent=False)
        if affine:
            self.weight = torch.nn.Parameter(torch.ones(len(in_type)))
            self.bias = torch.nn.Parameter(torch.zeros(basis.shape[1]))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(in_type.size))
            self.register_buffer("running_var", torch.ones(len(in_type)))
            self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))
        self.reset_parameters()

    def reset_parameters(self):
        if self.affine:
            torch.nn.init.ones_(self.weight)
            torch.nn.init.zeros_(self.bias)
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    def forward(self, x, batch: Optional[Tensor] = None, num_graphs: Optional[int] = None):
        t = self._tensor(x)
        check_batch(batch, t.shape[0])
        if self.training or not self.track_running_stats:
            if t.shape[0] < 2:
                raise ValueError(f"EquivariantBatchNorm needs more than one node per batch "
                                 f"in training, got x of shape {list(t.shape)}")
            mean = t.mean(0) @ self.projector.to(t.dtype)
            var = t.var(0, unbiased=True) @ self.field_average.to(t.dtype)
            if self.training and self.track_running_stats:
                with torch.no_grad():
                    m = self.momentum
                    self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                    self.running_var.mul_(1 - m).add_(var.detach(), alpha=m)
                    self.num_batches_tracked.add_(1)
        else:
            mean, var = self.running_mean.to(t.dtype), self.running_var.to(t.dtype)
        scale = (var + self.eps).rsqrt()
        if self.affine:
            scale = scale * self.weight.to(t.dtype)
        y = (t - mean) * scale.index_select(0, self.field_of_channel)
        if self.affine:
            y = y + self.bias_basis.to(t.dtype) @ self.bias.to(t.dtype)
        return self._like(y, x)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}")


class EquivariantLayerNorm(FieldModule):
    r"""Layer normalisation of equivariant fields, per graph of a batch or per node.

    Trivial fields are standardised together,
    :math:`s' = w_s (s - \mu) / \sqrt{\sigma^2 + \epsilon} + b_s`, with the mean
    :math:`\mu` and variance :math:`\sigma^2` over all trivial channels (and,
    with ``mode="graph"``, all nodes of the graph). Non-trivial fields are
    grouped by representation; each group is divided by its RMS field norm,
    :math:`f' = w_f f / \sqrt{\langle \|f\|^2 \rangle + \epsilon}`, the mean
    taken over the group's fields (and the graph's nodes). Norms of fields and
    invariant channels are invariants, so the map is equivariant for every
    group; ``mode="graph"`` makes every graph of a batch independent of the others
    (PyG's ``LayerNorm(mode="graph")``), ``mode="node"`` every node.

    Args:
        in_type (escnn.nn.FieldType): the fields to normalise.
        mode (str, optional): ``"graph"`` or ``"node"``. (default: ``"graph"``)
        eps (float, optional): added to the variance and mean squared norms.
            (default: ``1e-5``)
        affine (bool, optional): learnable per-field scales :math:`w` and biases
            :math:`b` of the trivial fields. (default: ``True``)

    Shapes:
        - **input:** :math:`(N, |\text{in\_type}|)`, ``batch`` :math:`(N)` *(optional)*
        - **output:** :math:`(N, |\text{in\_type}|)`
    """

    def __init__(self, in_type: enn.FieldType, mode: str = "graph", eps: float = 1e-5,
                 affine: bool = True):
        super().__init__()
        self.in_type = self.out_type = check_field_type(in_type, "in_type")
        if mode not in LAYER_NORM_MODES:
            raise ValueError(f"mode must be one of {LAYER_NORM_MODES}, got {mode!r}")
        self.mode, self.eps, self.affine = mode, float(eps), affine
        trivial = trivial_field_mask(in_type)
        fields = field_index(in_type)
        # group 0: the trivial channels; then one group per non-trivial representation
        names = [r.name for r, t in zip(in_type.representations, trivial) if not t]
        groups = {name: k + 1 for k, name in enumerate(dict.fromkeys(names))}
        group_of_field = [0 if t else groups[r.name]
                          for r, t in zip(in_type.representations, trivial)]
        group_of_channel = torch.tensor(group_of_field, dtype=torch.long)[fields]
        self.num_groups = len(groups) + 1
        counts = torch.bincount(torch.tensor(group_of_field, dtype=torch.long),
                                minlength=self.num_groups).clamp_min(1)
        # [C, K]: sums squares over a group's channels / its number of fields
        mean_sq = torch.zeros(in_type.size, self.num_groups)
        mean_sq[torch.arange(in_type.size), group_of_channel] = 1.0
        mean_sq = mean_sq / counts.to(mean_sq.dtype)
        mean_sq[:, 0] = 0.0
        scalar = (group_of_channel == 0)
        self.num_scalar_channels = int(scalar.sum())
        self.register_buffer("group_of_channel", group_of_channel, persistent=False)
        self.register_buffer("field_of_channel", fields, persistent=False)
        self.register_buffer("group_mean_square", mean_sq, persistent=False)
        self.register_buffer("scalar_mask", scalar.to(torch.get_default_dtype()),
                             persistent=False)
        scalar_fields = [i for i, t in enumerate(trivial) if t]
        self.register_buffer("scalar_field_channels",
                             torch.tensor([int(in_type.fields_start[i]) for i in scalar_fields],
                                          dtype=torch.long), persistent=False)
        if affine:
            self.weight = torch.nn.Parameter(torch.ones(len(in_type)))
            self.bias = torch.nn.Parameter(torch.zeros(len(scalar_fields)))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self):
        if self.affine:
            torch.nn.init.ones_(self.weight)
            torch.nn.init.zeros_(self.bias)

    def _reduce(self, values: Tensor, batch: Optional[Tensor], num_graphs: Optional[int]):
        """Per-node values -> their mean over each node's graph (``mode="graph"``)."""
        if self.mode == "node":
            return values
        if batch is None:
            return values.mean(0, keepdim=True).expand_as(values)
        means = scatter(values, batch, dim=0, dim_size=_num_graphs(batch, num_graphs),
                        reduce="mean")
        return means.index_select(0, batch)

    def forward(self, x, batch: Optional[Tensor] = None, num_graphs: Optional[int] = None):
        t = self._tensor(x)
        check_batch(batch, t.shape[0])
        mask = self.scalar_mask.to(t.dtype)
        centred = t
        inv = t.new_ones(t.shape[0], self.num_groups)
        if self.num_scalar_channels > 0:
            n_s = self.num_scalar_channels
            mean = self._reduce((t @ mask / n_s)[:, None], batch, num_graphs)
            centred = t - mean * mask
            var = self._reduce(((centred * centred) @ mask / n_s)[:, None], batch, num_graphs)
            inv = torch.cat([(var + self.eps).rsqrt(), inv[:, 1:]], dim=1)
        if self.num_groups > 1:
            mean_sq = self._reduce((t * t) @ self.group_mean_square.to(t.dtype), batch,
                                   num_graphs)
            inv = torch.cat([inv[:, :1], (mean_sq[:, 1:] + self.eps).rsqrt()], dim=1)
        y = centred * inv.index_select(1, self.group_of_channel)
        if self.affine:
            y = y * self.weight.to(t.dtype).index_select(0, self.field_of_channel)
            y = y.index_add(1, self.scalar_field_channels,
                            self.bias.to(t.dtype).expand(t.shape[0], -1))
        return self._like(y, x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode}, eps={self.eps}, affine={self.affine}"


__all__ = ["EquivariantBatchNorm", "EquivariantLayerNorm", "LAYER_NORM_MODES"]
