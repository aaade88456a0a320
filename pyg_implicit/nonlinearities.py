"""Choice and construction of the hidden nonlinearity of the kernel MLP, per group.

Every choice here lowers to a layer of the plan of :mod:`pyg_implicit.plan`:
a pointwise function between two dense maps (sample on a grid ``Q``, apply
the function, project back ``P``), a plain pointwise function on regular
fields, or a gated or norm nonlinearity on irreducible fields.

- ``"gated"`` / ``"norm"``, every group, exactly equivariant: hidden fields are
  ``channels`` copies of each irrep up to ``band_limit`` (all irreps of a
  finite group); trivial fields go through the activation, every other field
  is multiplied by the sigmoid of its own gate (``"gated"``) or rescaled by
  ``relu(|f| - b_f) / |f|`` (``"norm"``), as
  :class:`pyg_implicit.nn.EquivariantNonlinearity`;
- finite groups: regular fields, pointwise function (exactly equivariant);
- SO(3), O(3): band-limited functions on the sphere (quotient by SO(2) resp.
  the conical O(2)), sampled on a 120-point Thomson grid (or a 60/120-point
  icosahedral orbit, ``grid="ico"``);
- other continuous groups (SO(2), O(2), cylindrical): band-limited functions on
  the group, sampled on a regular grid.

A Fourier nonlinearity is exactly equivariant to the symmetries of its grid (a
finite subgroup of G) and approximately to the rest of G, as in the paper;
:attr:`HiddenBlock.exact_elements` lists those symmetries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
from escnn import group as egroup
from escnn import nn as enn
from escnn.group import Group, GroupElement

from .plan import ACTIVATIONS, LAYER_KINDS

NONLINEARITIES = ("auto", "fourier", "quotient", "regular", "gated", "norm")
_ESCNN_FUNCTIONS = {"elu": "p_elu", "relu": "p_relu", "tanh": "p_tanh",
                    "sigmoid": "p_sigmoid", "silu": "p_relu"}
# functions escnn has no name for: its module is built with a named one and then
# applies this instead (every pointwise function keeps these modules equivariant)
_OTHER_FUNCTIONS = {"silu": torch.nn.functional.silu}


def _set_function(module: enn.EquivariantModule, activation: str) -> enn.EquivariantModule:
    if activation in _OTHER_FUNCTIONS:
        module._function = _OTHER_FUNCTIONS[activation]
    return module


@dataclass
class HiddenBlock:
    """One hidden nonlinearity: the escnn module and its plan entries."""

    module: enn.EquivariantModule  # its buffers A (Q [G, F]) and Ainv (P [F', G]), if any
    kind: str
    code: int
    exact_elements: Optional[List[GroupElement]]  # None: exact for all of G

    def sampler_projector(self):
        """``(Q, P)`` of the plan, or ``(None, None)`` for a pointwise function."""
        return getattr(self.module, "A", None), getattr(self.module, "Ainv", None)

    @property
    def layer_kind(self) -> int:
        """The plan's layer kind (``LAYER_KINDS``) of this block."""
        if self.kind in ("gated", "norm"):
            return LAYER_KINDS[self.kind]
        return LAYER_KINDS["fourier" if self.kind in ("fourier", "quotient") else "pointwise"]

    def field_map(self) -> Optional[torch.Tensor]:
        """``fields[l]`` of the plan (gated/norm): -1 for a trivial channel, else the
        index of the channel's gate or field among the non-trivial fields."""
        if self.kind not in ("gated", "norm"):
            return None
        m = self.module
        fields = torch.full((m.out_type.size,), -1, dtype=torch.long,
                            device=m.field_channels.device)
        return fields.index_copy(0, m.field_channels, m.field_of_channel)

    def field_biases(self) -> Optional[torch.Tensor]:
        """``field_biases[l]`` of the plan (norm): ``b_f = exp(log_bias_f)``."""
        return self.module.log_bias.exp() if self.kind == "norm" else None


def default_kind(G: Group) -> str:
    """The nonlinearity ``"auto"`` picks for ``G``."""
    if not G.continuous:
        return "regular"
    return "quotient" if isinstance(G, (egroup.SO3, egroup.O3)) else "fourier"


def build_hidden_block(nbs, channels: int, band_limit: int, kind: str = "auto",
                       activation: str = "elu", grid_size: Optional[int] = None,
                       grid: Optional[str] = None, reachable=None) -> HiddenBlock:
    """A nonlinearity on ``channels`` fields for the group of ``nbs``.

    ``reachable`` (gated/norm): ids of the irreps of the MLP's input. Gated and
    norm layers only rescale fields and linear maps only connect equal irreps,
    so hidden fields of any other non-trivial irrep would stay zero: they are
    left out (the same functions, fewer dimensions)."""
    G = nbs.fibergroup
    if kind not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {kind!r}")
    if activation not in _ESCNN_FUNCTIONS:
        raise ValueError(f"activation must be one of {tuple(_ESCNN_FUNCTIONS)}, "
                         f"got {activation!r}")
    kind = default_kind(G) if kind == "auto" else kind
    function, code = _ESCNN_FUNCTIONS[activation], ACTIVATIONS[activation]

    if kind in ("gated", "norm"):
        from .nn.nonlinearity import EquivariantNonlinearity  # nn imports this module
        irreps = [psi for psi in exact_hidden_irreps(G, band_limit)
                  if reachable is None or psi.is_trivial() or psi.id in reachable]
        out_type = enn.FieldType(nbs, irreps * channels)
        module = EquivariantNonlinearity(out_type, kind, activation, norm_function="n_relu")
        return HiddenBlock(module, kind, code, None)

    if kind == "regular":
        if G.continuous:
            raise ValueError(f"nonlinearity='regular' needs a finite group, got {G}")
        ftype = enn.FieldType(nbs, [G.regular_representation] * channels)
        module = _set_function(enn.PointwiseNonLinearity(ftype, function=function), activation)
        return HiddenBlock(module, kind, code, None)

    if kind == "quotient":
        if not isinstance(G, (egroup.SO3, egroup.O3)):
            raise ValueError(f"nonlinearity='quotient' (sphere grid) needs SO(3) or O(3), got {G}")
        stabiliser = (False, -1) if isinstance(G, egroup.SO3) else ("cone", -1)
        irreps = G.bl_sphere_representation(band_limit).irreps
        if grid in (None, "thomson"):
            points, exact = G.sphere_grid("thomson", N=grid_size or 120), []
        elif grid == "ico":
            exact = _ico_symmetries(G)
            points = _orbit(exact, _generic_element(G))
        else:
            raise ValueError(f"grid must be 'thomson' or 'ico' for the sphere, got {grid!r}")
        module = _set_function(enn.QuotientFourierPointwise(
            nbs, stabiliser, channels, irreps, grid=points, function=function, inplace=False),
            activation)
        return HiddenBlock(module, kind, code, exact)

    if kind == "fourier":
        if not G.continuous:
            raise ValueError(f"nonlinearity='fourier' is for continuous groups, got {G}")
        if grid not in (None, "regular"):
            raise ValueError(f"grid must be 'regular' for nonlinearity='fourier', got {grid!r}")
        grid_kwargs = _regular_grid_kwargs(G, grid_size or 16)
        module = _set_function(enn.FourierPointwise(
            nbs, channels, _band_limited_irreps(G, band_limit), function=function,
            inplace=False, **grid_kwargs), activation)
        # a regular grid of these groups is a finite subgroup: its elements are exact
        return HiddenBlock(module, kind, code, G.grid(**grid_kwargs))
    raise ValueError(f"nonlinearity {kind!r} is not available for {G}")


def instantiate_irreps(G: Group, frequency: int) -> None:
    """Build escnn's irreps of the continuous group ``G`` up to ``frequency`` (escnn
    decomposes tensor products only into irreps it has built)."""
    for psi in _band_limited_irreps(G, frequency):
        G.irrep(*psi)


def exact_hidden_irreps(G: Group, band_limit: int):
    """One copy of every irrep of ``G`` up to ``band_limit`` (every irrep of a finite
    group): the fields of one channel of a gated or norm hidden layer."""
    if not G.continuous:
        return list(G.irreps())
    return [G.irrep(*psi) for psi in _band_limited_irreps(G, band_limit)]


def _band_limited_irreps(G: Group, band_limit: int):
    if isinstance(G, egroup.DirectProductGroup):  # cylindrical groups: C2 x SO(2) / O(2)
        parts = [[psi.id for psi in sub.irreps()] if not sub.continuous
                 else sub.bl_irreps(band_limit) for sub in (G.G1, G.G2)]
        return [(a, b) for a in parts[0] for b in parts[1]]
    return G.bl_irreps(band_limit)


def _regular_grid_kwargs(G: Group, grid_size: int) -> dict:
    if isinstance(G, egroup.DirectProductGroup):
        kw = {}
        for name, sub in (("G1", G.G1), ("G2", G.G2)):
            kw[f"{name}_type"] = "regular"
            kw[f"{name}_N"] = sub.order() if not sub.continuous else grid_size
        return kw
    return {"type": "regular", "N": grid_size}


def _ico_symmetries(G: Group) -> List[GroupElement]:
    """The icosahedral rotations as elements of G = SO(3), times inversion for O(3)."""
    so3 = egroup.so3_group()
    _, ico_to_so3, _ = so3.subgroup("ico")
    rotations = [ico_to_so3(g) for g in egroup.ico_group().elements]
    if isinstance(G, egroup.SO3):
        return rotations
    _, so3_to_o3, _ = G.subgroup("so3")
    rotations = [so3_to_o3(r) for r in rotations]
    inversion = G.element((1, np.array([0.0, 0.0, 0.0, 1.0])), "Q")
    return rotations + [inversion @ r for r in rotations]


def _generic_element(G: Group, seed: int = 0) -> GroupElement:
    q = np.random.RandomState(seed).randn(4)
    q /= np.linalg.norm(q)
    return G.element(q, "Q") if isinstance(G, egroup.SO3) else G.element((0, q), "Q")


def _orbit(elements: List[GroupElement], h0: GroupElement) -> List[GroupElement]:
    """Cosets ``g h0 H``: a sphere grid mapped onto itself by every ``g``."""
    return [g @ h0 for g in elements]
