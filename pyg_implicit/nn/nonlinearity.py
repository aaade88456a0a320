r"""``EquivariantNonlinearity``: gated, norm, pointwise and Fourier nonlinearities."""
from __future__ import annotations

from typing import List, Optional

import torch
from escnn import gspaces
from escnn import nn as enn
from torch import Tensor

from .._exact import fourier_masters, restore_masters
from ..kernel import _default_dtype
from ..nonlinearities import _ESCNN_FUNCTIONS, _set_function, build_hidden_block, default_kind
from ..plan import _ACT_FN, ACTIVATIONS
from .fields import (FieldModule, check_field_type, field_channels, fiber_type,
                     trivial_field_mask)

NONLINEARITY_KINDS = ("auto", "gated", "norm", "pointwise", "fourier", "quotient")
NORM_FUNCTIONS = {"n_relu": torch.relu, "n_sigmoid": torch.sigmoid,
                  "n_softplus": torch.nn.functional.softplus}
_ACTIVATIONS = {name: _ACT_FN[code] for name, code in ACTIVATIONS.items()}
_MAX_BAND_LIMIT = 8


class EquivariantNonlinearity(FieldModule):
    r"""An equivariant nonlinearity for the fields of ``out_type``, for any
    subgroup :math:`G` of O(2)/O(3).

    - ``"gated"`` (exact): trivial fields go through ``activation``; every
      non-trivial field :math:`f` is multiplied by :math:`\sigma(\gamma_f)`, a
      sigmoid of its own scalar gate. The gates come first in :attr:`in_type`
      (``[gates, out_type]``), so the layer before produces them;
    - ``"norm"`` (exact): trivial fields through ``activation``, non-trivial ones
      rescaled by their norm, :math:`f \mapsto \eta(\|f\| - b_f)\, f / \|f\|`
      (``norm_function`` :math:`\eta`, learnable :math:`b_f = e^{\beta_f} > 0`);
    - ``"pointwise"`` (exact): ``activation`` on every channel (escnn's
      ``PointwiseNonLinearity``); needs fields
      that allow it (trivial, regular or permutation representations of a
      finite group);
    - ``"fourier"`` / ``"quotient"``: band-limited functions on the group
      (continuous groups) or the sphere (SO(3), O(3)) sampled on a grid,
      ``activation`` at the samples, projected back (escnn's
      ``FourierPointwise`` / ``QuotientFourierPointwise``). Exactly equivariant
      to the grid's symmetries (:attr:`exact_elements`), approximately to the
      rest of :math:`G` (``docs/design.md`` gives the measured error);
    - ``"auto"``: the kernel MLP's choice for the group (``"pointwise"`` on
      regular fields of a finite group, ``"quotient"``/``"fourier"`` on
      continuous groups) when ``out_type`` is made of such fields (e.g. from
      :func:`~pyg_implicit.nn.field_type`), else ``"gated"``.

    Gated and norm nonlinearities are computed here (dtype-preserving,
    vectorised, ``torch.compile``-clean) and tested against escnn's
    ``GatedNonLinearity1`` / ``NormNonLinearity``, whose outputs are float32.

    Args:
        out_type (escnn.nn.FieldType): the fields the nonlinearity outputs.
        kind (str, optional): see above. (default: ``"auto"``)
        activation (str, optional): pointwise function, ``"silu"``, ``"elu"``,
            ``"relu"``, ``"tanh"`` or ``"sigmoid"``. (default: ``"silu"``)
        norm_function (str, optional): :math:`\eta` of ``"norm"``:
            ``"n_relu"``, ``"n_sigmoid"`` or ``"n_softplus"``. (default: ``"n_relu"``)
        grid_size (int, optional): samples of a Fourier grid (default: escnn's
            choice, see :mod:`pyg_implicit.nonlinearities`).
        grid (str, optional): sphere grid of ``"quotient"``, ``"thomson"`` or ``"ico"``.

    Shapes:
        - **input:** :math:`(N, |\text{in\_type}|)` (a tensor or ``GeometricTensor``)
        - **output:** :math:`(N, |\text{out\_type}|)`
    """

    def __init__(self, out_type: enn.FieldType, kind: str = "auto", activation: str = "silu",
                 norm_function: str = "n_relu", grid_size: Optional[int] = None,
                 grid: Optional[str] = None):
        super().__init__()
        check_field_type(out_type, "out_type")
        if kind not in NONLINEARITY_KINDS:
            raise ValueError(f"kind must be one of {NONLINEARITY_KINDS}, got {kind!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(_ACTIVATIONS)}, "
                             f"got {activation!r}")
        if norm_function not in NORM_FUNCTIONS:
            raise ValueError(f"norm_function must be one of {tuple(NORM_FUNCTIONS)}, "
                             f"got {norm_function!r}")
        self.out_type, self.activation, self.norm_function = out_type, activation, norm_function
        self.exact_elements = None  # None: exact for every element of G
        fourier = None  # the escnn Fourier block "auto" found, if any
        if kind == "auto":
            kind, fourier = self._auto_kind(out_type, grid_size, grid, activation)
        self.kind = kind

        trivial = trivial_field_mask(out_type)
        nontrivial = [i for i, t in enumerate(trivial) if not t]
        self.num_gates = len(nontrivial) if kind == "gated" else 0
        self.in_type = gated_input_type(out_type) if kind == "gated" else out_type

        if kind in ("gated", "norm"):
            self._register_field_layout(out_type, trivial, nontrivial)
            if kind == "norm":
                self.log_bias = torch.nn.Parameter(torch.zeros(len(nontrivial)))
        elif kind == "pointwise":
            unsupported = [r.name for r in out_type.representations
                           if "pointwise" not in r.supported_nonlinearities]
            if unsupported:
                raise ValueError(f"kind='pointwise' needs fields that allow a pointwise "
                                 f"function (trivial, regular, permutation); out_type has "
                                 f"{sorted(set(unsupported))}")
            self.pointwise_module = _set_function(enn.PointwiseNonLinearity(
                fiber_type(out_type), function=_ESCNN_FUNCTIONS[activation]), activation)
        elif kind in ("fourier", "quotient"):
            if fourier is None:
                fourier = self._find_fourier(out_type, kind, grid_size, grid, activation)
                if fourier is None:
                    raise ValueError(
                        f"kind={kind!r} needs out_type made of one band-limited "
                        f"{'sphere' if kind == 'quotient' else 'group'} representation "
                        f"per field (build it with field_type(gspace, channels, {kind!r}, "
                        f"band_limit)); got {sorted({r.name for r in out_type.representations})}")
            self.exact_elements = fourier.exact_elements
            self.fourier_module = fourier.module
            self._exact_fourier = fourier_masters([self.fourier_module])  # float64
            self.fourier_module.to(torch.get_default_dtype())

    def _apply(self, fn, *args, **kwargs):
        # dtype/device moves round the sampling matrices; rewrite them from float64
        super()._apply(fn, *args, **kwargs)
        restore_masters(getattr(self, "_exact_fourier", []))
        return self

    # ------------------------------------------------------------ construction
    def _auto_kind(self, out_type, grid_size, grid, activation):
        """``(kind, Fourier block or None)`` that ``"auto"`` picks for ``out_type``."""
        G = out_type.fibergroup
        if all("pointwise" in r.supported_nonlinearities for r in out_type.representations):
            return "pointwise", None
        default = default_kind(G)
        if default in ("fourier", "quotient"):
            block = self._find_fourier(out_type, default, grid_size, grid, activation)
            if block is not None:
                return default, block
        return "gated", None

    @staticmethod
    def _find_fourier(out_type, kind, grid_size, grid, activation):
        """escnn's Fourier module whose fields are exactly those of ``out_type``."""
        reps = out_type.representations
        if not out_type.fibergroup.continuous or len({r.name for r in reps}) != 1:
            return None
        prefix = "quotient[" if kind == "quotient" else "regular_["
        if not reps[0].name.startswith(prefix):
            return None
        nbs = gspaces.no_base_space(out_type.fibergroup)
        for band_limit in range(_MAX_BAND_LIMIT + 1):
            try:
                with _default_dtype(torch.float64):  # exact float64 sampling matrices
                    block = build_hidden_block(nbs, len(reps), band_limit, kind, activation,
                                               grid_size, grid)
            except (ValueError, AssertionError):
                return None
            if block.module.in_type.representations[0].name == reps[0].name:
                return block
        return None

    def _register_field_layout(self, out_type, trivial: List[bool], nontrivial: List[int]):
        scalars = [i for i, t in enumerate(trivial) if t]
        idx_s, idx_v = field_channels(out_type, scalars), field_channels(out_type, nontrivial)
        sizes = torch.tensor([out_type.representations[i].size for i in nontrivial],
                             dtype=torch.long)
        self.register_buffer("scalar_channels", idx_s, persistent=False)
        self.register_buffer("field_channels", idx_v, persistent=False)
        # field (among the non-trivial ones) of each channel of idx_v
        self.register_buffer("field_of_channel",
                             torch.repeat_interleave(torch.arange(len(nontrivial)), sizes),
                             persistent=False)
        order = torch.cat([idx_s, idx_v])
        self.register_buffer("inverse_order", torch.argsort(order), persistent=False)
        self.num_fields = len(nontrivial)

    # ---------------------------------------------------------------- forward
    def forward(self, x):
        t = self._tensor(x)
        if self.kind in ("pointwise", "fourier", "quotient"):  # escnn's modules
            module = self.pointwise_module if self.kind == "pointwise" else self.fourier_module
            y = module(enn.GeometricTensor(t, module.in_type)).tensor
        else:
            act = _ACTIVATIONS[self.activation]
            fields = t[:, self.num_gates:]
            scalars = act(fields.index_select(1, self.scalar_channels))
            v = fields.index_select(1, self.field_channels)
            if self.kind == "gated":
                scale = torch.sigmoid(t[:, :self.num_gates])
            else:
                scale = self._norm_scale(v)
            v = v * scale.index_select(1, self.field_of_channel)
            y = torch.cat([scalars, v], dim=1).index_select(1, self.inverse_order)
        return self._like(y, x)

    def _norm_scale(self, v: Tensor) -> Tensor:
        """``eta(|f| - b) / |f|`` per non-trivial field (0 where ``|f| = 0``)."""
        sq = v.new_zeros(v.shape[0], self.num_fields).index_add_(
            1, self.field_of_channel, v * v)
        norm = sq.clamp_min(1e-20).sqrt()
        eta = NORM_FUNCTIONS[self.norm_function](norm - self.log_bias.exp().to(v.dtype))
        return torch.where(sq > 1e-20, eta / norm, torch.zeros_like(norm))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kind={self.kind}, activation={self.activation}"


def gated_input_type(out_type: enn.FieldType) -> enn.FieldType:
    """``[gates, out_type]``: one trivial gate per non-trivial field of ``out_type``
    (what a layer must produce for ``EquivariantNonlinearity(out_type, "gated")``)."""
    check_field_type(out_type, "out_type")
    n = sum(not t for t in trivial_field_mask(out_type))
    return enn.FieldType(out_type.gspace, [out_type.fibergroup.trivial_representation] * n) \
        + out_type


__all__ = ["EquivariantNonlinearity", "gated_input_type", "NONLINEARITY_KINDS"]
