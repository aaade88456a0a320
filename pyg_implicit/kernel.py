r"""``ImplicitKernel``: a G-equivariant MLP that maps an edge to a steerable kernel.

For a gspace on :math:`\mathbb{R}^d` with fibre group :math:`G \le O(d)`, the
MLP takes the relative position :math:`x` (the standard representation,
restricted to G) and optional edge attributes :math:`a` (any escnn field type of
G) and outputs :math:`\mathrm{vec}(K) \in \mathrm{Hom}(\rho_{in}, \rho_{out})`,
i.e. the representation :math:`\rho_{out} \otimes \rho_{in}` field by field, for
arbitrary (also non-uniform) input and output field types. Equivariance of the
MLP gives :math:`K(gx, ga) = \rho_{out}(g) K(x, a) \rho_{in}(g)^T`.

The kernel is multiplied by a Gaussian envelope with a learnable width and a
constant chosen at initialisation so that a layer's output on unit-variance
inputs has roughly unit variance (see :meth:`ImplicitKernel.reset_parameters`).
"""
from __future__ import annotations

import contextlib
import math
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from escnn import gspaces
from escnn import nn as enn
from escnn.group import InsufficientIrrepsException, Representation

from ._exact import (ExactLinearBases, InjectiveGather, dense_gather, dense_gather_index,
                     expand_bias, expand_linear, fourier_masters, injective_gather_inverse,
                     linear_blocks, restore_masters, sparse_bias_index)
from .nonlinearities import build_hidden_block, default_kind, instantiate_irreps
from .plan import KernelPlan, edge_kernels, envelope, lift

FieldTypeLike = Union[enn.FieldType, Sequence[Representation], None]


def _max_frequency(in_type: enn.FieldType, out_type: enn.FieldType, band_limit: int) -> int:
    """An upper bound of the frequencies a kernel between these types involves
    (irrep ids of the continuous groups carry their frequency)."""
    def ints(x):
        return [v for y in x for v in ints(y)] if isinstance(x, tuple) else [int(x)]
    ids = [psi for t in (in_type, out_type) for r in t.representations for psi in r.irreps]
    return 2 * max([0, *(v for psi in ids for v in ints(psi))]) + band_limit


def attr_representations(G, edge_attr_type: FieldTypeLike) -> List[Representation]:
    """Representations of the edge attributes, checked to be representations of ``G``."""
    if edge_attr_type is None:
        return []
    reps = list(edge_attr_type.representations) if isinstance(edge_attr_type, enn.FieldType) \
        else list(edge_attr_type)
    for rep in reps:
        if not isinstance(rep, Representation) or rep.group != G:
            raise TypeError(f"edge_attr_type must be an escnn FieldType (or list of "
                            f"representations) of the group {G}, got {rep!r}")
    return reps


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    """escnn builds its linear bases in float32 and breaks under another default
    dtype; its Fourier sampling matrices follow the default dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield previous
    finally:
        torch.set_default_dtype(previous)


class ImplicitKernel(torch.nn.Module):
    r"""G-equivariant kernel MLP :math:`(x, a) \mapsto K(x, a) \in \mathbb{R}^{C_{out} \times C_{in}}`.

    Args:
        in_type (escnn.nn.FieldType): input field type, of a gspace on R^2 or R^3.
        out_type (escnn.nn.FieldType): output field type, same gspace.
        edge_attr_type: optional field type (or list of representations) of the
            group, for the edge attributes fed to the MLP next to the position.
        hidden_channels (int): fields per hidden layer.
        hidden_layers (int): number of hidden (linear + nonlinearity) layers.
        band_limit (int): band limit of the hidden Fourier fields.
        nonlinearity (str): ``"auto"`` (per group, see
            :mod:`pyg_implicit.nonlinearities`), ``"gated"``, ``"norm"`` (exactly
            equivariant for every group), ``"fourier"``, ``"quotient"`` (exact only
            for their grid's symmetries) or ``"regular"`` (finite groups).
        activation (str): pointwise function: ``"elu"``, ``"relu"``, ``"tanh"``,
            ``"sigmoid"``, ``"silu"``.
        grid_size (int, optional): samples of the Fourier grid.
        grid (str, optional): grid type (``"thomson"`` or ``"ico"`` on the sphere).
        width (float): initial width of the Gaussian envelope.
        learn_width (bool): whether the width is a parameter.
        num_neighbors (float): typical number of incoming edges per node, used for
            the output normalisation at initialisation.
        lift_degree (int, optional): the MLP reads the tensor powers
            :math:`x, x^{\otimes 2}, \dots, x^{\otimes k}` of the edge vector
            (default: ``band_limit`` for ``"gated"``/``"norm"``, whose MLP can
            otherwise not leave the frequencies of :math:`x`; 1 for the others).
    """

    def __init__(self, in_type: enn.FieldType, out_type: enn.FieldType,
                 edge_attr_type: FieldTypeLike = None, hidden_channels: int = 16,
                 hidden_layers: int = 2, band_limit: int = 2, nonlinearity: str = "auto",
                 activation: str = "elu", grid_size: Optional[int] = None,
                 grid: Optional[str] = None, width: float = 1.0, learn_width: bool = True,
                 num_neighbors: float = 16.0, lift_degree: Optional[int] = None):
        super().__init__()
        args = (in_type, out_type, edge_attr_type, hidden_channels, hidden_layers, band_limit,
                nonlinearity, activation, grid_size, grid, width, learn_width, num_neighbors,
                lift_degree)
        frequency = None
        for attempt in range(4):
            try:
                with _default_dtype(torch.float32) as dtype:
                    self._build(*args)
                break
            except InsufficientIrrepsException as exc:
                # escnn decomposes tensor products only into irreps it has built: build
                # those up to a frequency that covers the field types, then retry
                G = in_type.fibergroup
                frequency = 2 * frequency if frequency else \
                    _max_frequency(in_type, out_type, band_limit)
                if attempt == 3 or not G.continuous:
                    raise ValueError(
                        f"the kernel between in_type and out_type cannot be built on {G}: "
                        f"escnn lacks irreps up to frequency {frequency} for the "
                        f"decompositions it needs; use fields of lower frequency in "
                        f"in_type/out_type or a smaller band_limit") from exc
                instantiate_irreps(G, frequency)
        self._exact_linear = ExactLinearBases([*self.linears, self.last])
        self._exact_fourier = fourier_masters(self.nonlinearities)
        self._build_plan_indices()
        self.to(dtype)
        self.reset_parameters()

    def _apply(self, fn, *args, **kwargs):
        # dtype/device moves round escnn's buffers; rewrite them from float64 masters
        super()._apply(fn, *args, **kwargs)
        if hasattr(self, "_exact_fourier"):
            self._exact_linear.restore()
            restore_masters(self._exact_fourier)
        return self

    def _build(self, in_type, out_type, edge_attr_type, hidden_channels, hidden_layers,
               band_limit, nonlinearity, activation, grid_size, grid, width, learn_width,
               num_neighbors, lift_degree):
        for name, t in (("in_type", in_type), ("out_type", out_type)):
            if not isinstance(t, enn.FieldType):
                raise TypeError(f"{name} must be an escnn.nn.FieldType, got {type(t).__name__}")
        if in_type.gspace != out_type.gspace:
            raise ValueError("in_type and out_type must belong to the same gspace, got "
                             f"{in_type.gspace} and {out_type.gspace}")
        gspace = in_type.gspace
        if gspace.dimensionality not in (2, 3):
            raise ValueError("in_type must be a field type of a gspace on R^2 or R^3, got "
                             f"dimensionality {gspace.dimensionality}")
        if hidden_layers < 0 or hidden_channels < 1:
            raise ValueError("hidden_layers must be >= 0 (0: a linear kernel) and "
                             f"hidden_channels >= 1, got {hidden_layers} and {hidden_channels}")
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        self.in_type, self.out_type, self.gspace = in_type, out_type, gspace
        self.group = gspace.fibergroup
        self.pos_dim = gspace.dimensionality
        self.hidden_channels, self.hidden_layers = hidden_channels, hidden_layers
        self.band_limit, self.num_neighbors = band_limit, float(num_neighbors)
        self.initial_width = float(width)

        nbs = gspaces.no_base_space(self.group)
        self.attr_reps = attr_representations(self.group, edge_attr_type)
        self.attr_dim = sum(r.size for r in self.attr_reps)
        kind = default_kind(self.group) if nonlinearity == "auto" else nonlinearity
        if lift_degree is None:
            lift_degree = max(band_limit, 1) if kind in ("gated", "norm") else 1
        if not isinstance(lift_degree, int) or not 1 <= lift_degree <= 4:
            raise ValueError(f"lift_degree must be an integer in [1, 4], got {lift_degree!r}")
        self.lift_degree = lift_degree
        powers, rep = [gspace.basespace_action], gspace.basespace_action
        for _ in range(lift_degree - 1):
            rep = rep.tensor(gspace.basespace_action)  # acts as kron(rho(g), std(g))
            powers.append(rep)
        self.mlp_in_type = enn.FieldType(nbs, powers + self.attr_reps)

        linears, blocks = [], []
        current = self.mlp_in_type
        reachable = {psi for rep in self.mlp_in_type.representations for psi in rep.irreps}
        for _ in range(hidden_layers):
            with _default_dtype(torch.float64):  # exact float64 sampling matrices
                block = build_hidden_block(nbs, hidden_channels, band_limit, nonlinearity,
                                           activation, grid_size, grid, reachable)
            linears.append(enn.Linear(current, block.module.in_type, bias=True))
            blocks.append(block)
            current = block.module.out_type
        self.hidden_type = current
        # vec(K), field pair by field pair; _vec_index reorders it to row-major K
        pairs = [(ro, ri) for ro in out_type.representations for ri in in_type.representations]
        self.kernel_type = enn.FieldType(nbs, [ro.tensor(ri) for ro, ri in pairs])
        self.linears = torch.nn.ModuleList(linears)
        self.nonlinearities = torch.nn.ModuleList([b.module for b in blocks])
        self._blocks = blocks
        self.last = enn.Linear(current, self.kernel_type, bias=True)
        self.register_buffer("_vec_index", self._kernel_vec_index(), persistent=False)
        for k, lin in enumerate([*linears, self.last]):
            self.register_buffer(f"_gather_{k}", dense_gather_index(lin), persistent=False)
        self.log_width = torch.nn.Parameter(torch.tensor(math.log(width)),
                                            requires_grad=learn_width)
        self.register_buffer("scale", torch.tensor(1.0))

    # ------------------------------------------------------------------ set-up
    def _kernel_vec_index(self) -> torch.Tensor:
        """``index[o * C_in + c]`` = position of ``K[o, c]`` in the MLP output."""
        C_out, C_in = self.out_type.size, self.in_type.size
        index = torch.empty(C_out * C_in, dtype=torch.long)
        offset = 0
        o0 = 0
        for ro in self.out_type.representations:
            c0 = 0
            for ri in self.in_type.representations:
                block = torch.arange(ro.size * ri.size).view(ro.size, ri.size) + offset
                rows = torch.arange(o0, o0 + ro.size)[:, None] * C_in + \
                    torch.arange(c0, c0 + ri.size)[None, :]
                index[rows.reshape(-1)] = block.reshape(-1)
                offset += ro.size * ri.size
                c0 += ri.size
            o0 += ro.size
        return index

    def _build_plan_indices(self) -> None:
        """Index buffers of :meth:`plan`: per linear, the inverse of its dense gather
        and the nonzeros of its bias expansion; for the last linear, one gather from
        ``[blocks, 0, bias]`` straight to the plan's ``Wt [C_out, (H + 1) C_in]``
        layout (so ``plan`` does one gather and no transposing copy)."""
        linears = [*self.linears, self.last]
        for k, lin in enumerate(linears):
            gather, pad = dense_gather(lin)
            self.register_buffer(f"_gather_inv_{k}",
                                 injective_gather_inverse(gather, pad + 1, pad),
                                 persistent=False)
            rows, cols = sparse_bias_index(lin)
            self.register_buffer(f"_bias_rows_{k}", rows, persistent=False)
            self.register_buffer(f"_bias_cols_{k}", cols, persistent=False)
        C_out, C_in = self.out_type.size, self.in_type.size
        H = self.last.basisexpansion._input_size
        gather, pad = dense_gather(self.last)
        n_blocks = pad + 1  # blocks and their padding zero
        r = self._vec_index.view(C_out, 1, C_in)  # MLP output row of K[o, c]
        h = torch.arange(H).view(1, H, 1)
        weight_part = gather.view(-1, H)[r, h]  # [C_out, H, C_in]
        bias_part = n_blocks + r  # [C_out, 1, C_in]
        index = torch.cat([weight_part, bias_part], dim=1).reshape(-1)
        self.register_buffer("_wt_index", index, persistent=False)
        self.register_buffer("_wt_inverse",
                             injective_gather_inverse(index, n_blocks + C_out * C_in,
                                                      n_blocks - 1), persistent=False)

    @property
    def exact_elements(self):
        """Group elements to which the kernel is exactly equivariant (None: all of G)."""
        exact = None
        for block in self._blocks:
            if block.exact_elements is not None:
                exact = block.exact_elements
        return exact

    @property
    def width(self) -> torch.Tensor:
        return self.log_width.exp()

    def reset_parameters(self, num_samples: int = 512, seed: int = 0) -> None:
        """Re-initialise the MLP (escnn's He-type init), the width, and the scale.

        The scale ``c`` makes ``num_neighbors * E||K(x)||_F^2 / C_out = 1`` for
        ``x ~ N(0, width^2 I)`` and unit-normal attributes, so that a sum over
        ``num_neighbors`` edges of unit-variance features has about unit variance.
        """
        for lin in [*self.linears, self.last]:
            enn.init.generalized_he_init(lin.weights.data, lin.basisexpansion)
            lin.bias.data.zero_()
        for block in self._blocks:
            if hasattr(block.module, "log_bias"):
                block.module.log_bias.data.fill_(math.log(0.1))
        with torch.no_grad():
            self.log_width.fill_(math.log(self.initial_width))
            self.scale.fill_(1.0)
            gen = torch.Generator().manual_seed(seed)
            dtype = self.log_width.dtype
            x = torch.randn(num_samples, self.pos_dim, generator=gen, dtype=dtype) * \
                self.initial_width
            a = torch.randn(num_samples, self.attr_dim, generator=gen, dtype=dtype)
            K = edge_kernels(self.plan(), x.to(self.scale.device), a.to(self.scale.device))
            power = K.pow(2).sum((1, 2)).mean() / self.out_type.size
            self.scale.fill_(float(1.0 / torch.sqrt(self.num_neighbors * power)))

    # ------------------------------------------------------------------ maths
    def forward(self, edge_vec: torch.Tensor, edge_attr: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """Kernels ``[E, C_out, C_in]`` through escnn's modules (the oracle of the plan)."""
        u = lift(edge_vec, self.lift_degree)
        u = u if self.attr_dim == 0 else torch.cat([u, edge_attr], dim=-1)
        h = enn.GeometricTensor(u, self.mlp_in_type)
        for lin, act in zip(self.linears, self.nonlinearities):
            h = act(lin(h))
        y = self.last(h).tensor[:, self._vec_index]
        s = envelope(edge_vec, self.width) * self.scale
        return (y * s[:, None]).view(-1, self.out_type.size, self.in_type.size)

    def plan(self) -> KernelPlan:
        """Lower the MLP to a :class:`~pyg_implicit.plan.KernelPlan` (differentiable)."""
        weights, biases, samplers, projectors, codes = [], [], [], [], []
        kinds, fields, field_biases = [], [], []
        for k, (lin, block) in enumerate(zip(self.linears, self._blocks)):
            W, b = expand_linear(lin, getattr(self, f"_gather_{k}"),
                                 getattr(self, f"_gather_inv_{k}"), self._bias_index(k))
            weights.append(W)
            biases.append(b)
            Q, P = block.sampler_projector()
            empty = W.new_zeros(0)
            samplers.append(Q if Q is not None else empty)
            projectors.append(P if P is not None else empty)
            codes.append(block.code)
            m, bf = block.field_map(), block.field_biases()
            fields.append(m if m is not None else self._vec_index.new_empty(0))
            field_biases.append(bf if bf is not None else empty)
            kinds.append(block.layer_kind)
        last = len(self.linears)
        source = torch.cat([linear_blocks(self.last),
                            expand_bias(self.last, *self._bias_index(last))])
        C_out, C_in = self.out_type.size, self.in_type.size
        Wt = InjectiveGather.apply(source, self._wt_index, self._wt_inverse)
        Wt = Wt.view(C_out, -1) * self.scale
        return KernelPlan(weights, biases, samplers, projectors, codes, self.width,
                          Wt.contiguous(), self.pos_dim, self.attr_dim, C_in, C_out,
                          kinds=kinds, fields=fields, field_biases=field_biases,
                          lift_degree=self.lift_degree)

    def _bias_index(self, k: int):
        return getattr(self, f"_bias_rows_{k}"), getattr(self, f"_bias_cols_{k}")

    def extra_repr(self) -> str:
        kinds = ",".join(sorted({b.kind for b in self._blocks}))
        if self.lift_degree > 1:
            kinds += f", lift_degree={self.lift_degree}"
        return (f"group={self.group.name}, in={self.in_type.size}, out={self.out_type.size}, "
                f"attr={self.attr_dim}, hidden={self.hidden_layers}x{self.hidden_channels} "
                f"fields ({self.hidden_type.size} dims, {kinds}), band_limit={self.band_limit}")
