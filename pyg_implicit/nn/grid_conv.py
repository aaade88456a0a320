r"""``ImplicitR2Conv`` / ``ImplicitR3Conv``: implicit steerable kernels on regular grids."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from escnn import nn as enn
from escnn.nn.modules.conv.rd_convolution import get_grid_coords
from torch import Tensor

from ..kernel import FieldTypeLike, ImplicitKernel
from ..plan import edge_kernels
from .fields import trivial_channels

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class _ImplicitRdConv(enn.EquivariantModule):
    r"""Shared body of :class:`ImplicitR2Conv` and :class:`ImplicitR3Conv`."""

    dimension = 0

    def __init__(self, in_type: enn.FieldType, out_type: enn.FieldType, kernel_size: int,
                 padding: int = 0, stride: int = 1, dilation: int = 1,
                 padding_mode: str = "zeros", groups: int = 1, bias: bool = True,
                 attr_type: FieldTypeLike = None, hidden_channels: int = 16,
                 hidden_layers: int = 2, width: Optional[float] = None, **kwargs):
        super().__init__()
        d = self.dimension
        for name, t in (("in_type", in_type), ("out_type", out_type)):
            if not isinstance(t, enn.FieldType):
                raise TypeError(f"{name} must be an escnn.nn.FieldType, got {type(t).__name__}")
            if t.gspace.dimensionality != d:
                raise ValueError(f"{name} must be a field type of a gspace on R^{d} for "
                                 f"{type(self).__name__}, got R^{t.gspace.dimensionality}")
        for name, v in (("kernel_size", kernel_size), ("stride", stride),
                        ("dilation", dilation)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be a non-negative integer, got {padding!r}")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got "
                             f"{padding_mode!r}")
        if groups != 1:
            raise ValueError(f"groups must be 1 (grouped implicit convolutions are not "
                             f"supported), got {groups!r}")
        self.in_type, self.out_type, self.space = in_type, out_type, in_type.gspace
        self.kernel_size, self.padding, self.stride = kernel_size, padding, stride
        self.dilation, self.padding_mode, self.groups = dilation, padding_mode, groups

        # the grid taps in R^d, escnn's convention (R2Conv / R3Conv), inside a ball
        points = torch.as_tensor(get_grid_coords(d, kernel_size, dilation), dtype=torch.float64)
        radius = dilation * (kernel_size - 1) / 2
        inside = points.pow(2).sum(1) <= radius ** 2 + 1e-9
        self.register_buffer("_points", points.float(), persistent=False)
        self.register_buffer("_inside", inside, persistent=False)
        width = max(radius, 1.0) / 1.5 if width is None else width
        self.kernel = ImplicitKernel(in_type, out_type, attr_type, hidden_channels,
                                     hidden_layers, width=width,
                                     num_neighbors=float(inside.sum()), **kwargs)
        self.register_buffer("bias_index", trivial_channels(out_type), persistent=False)
        self.bias = torch.nn.Parameter(torch.zeros(len(self.bias_index))) \
            if bias and len(self.bias_index) else None
        self._filter_cache = None
        self.reset_parameters()

    # ------------------------------------------------------------------ state
    def reset_parameters(self) -> None:
        self.kernel.reset_parameters()
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)
        self._filter_cache = None

    def train(self, mode: bool = True):
        self._filter_cache = None  # rebuilt from the parameters in eval mode
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._filter_cache = None
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ maths
    def filter(self, attr: Optional[Tensor] = None) -> Tensor:
        """The sampled filter ``[C_out, C_in, k, ..., k]`` (``[B, C_out, C_in, k, ...]``
        for per-sample attributes ``attr [B, A]``)."""
        kernel, k, d = self.kernel, self.kernel_size, self.dimension
        P = self._points.to(kernel.log_width.dtype)
        plan = kernel.plan()  # the point convolution's plan, evaluated in plain torch
        B = 1 if attr is None else attr.shape[0]
        K = edge_kernels(plan, P.repeat(B, 1),
                         None if attr is None else attr.repeat_interleave(P.shape[0], 0))
        K = K.view(B, P.shape[0], *K.shape[1:]) * self._inside[None, :, None, None]
        K = K.permute(0, 2, 3, 1).reshape(B, kernel.out_type.size, kernel.in_type.size,
                                          *(k,) * d)
        return K[0] if attr is None else K

    def forward(self, input: enn.GeometricTensor, attr: Optional[Tensor] = None
                ) -> enn.GeometricTensor:
        """Args:
            input (GeometricTensor): fields of ``in_type`` on a grid, ``[B, C_in, *spatial]``.
            attr (Tensor, optional): per-sample attributes ``[B, A]`` of ``attr_type``
                that condition the kernel (each sample gets its own filter).
        """
        if not isinstance(input, enn.GeometricTensor):
            raise TypeError(f"input must be an escnn GeometricTensor, got "
                            f"{type(input).__name__}")
        if input.type != self.in_type:
            raise ValueError(f"input has type {input.type}, expected {self.in_type}")
        x = input.tensor
        if x.dim() != self.dimension + 2:
            raise ValueError(f"input must be [B, C, {', '.join('*' * self.dimension)}], got "
                             f"shape {tuple(x.shape)}")
        dtype = self.kernel.log_width.dtype
        if x.dtype != dtype:
            raise TypeError(f"input has dtype {x.dtype} but the layer's parameters are "
                            f"{dtype}; convert one of them")
        if (attr is None) != (self.kernel.attr_dim == 0):
            raise ValueError(f"attr must be a [B, {self.kernel.attr_dim}] tensor for this "
                             f"layer's attr_type" if self.kernel.attr_dim else
                             "attr given, but the layer was built without attr_type")
        if attr is not None and (attr.dim() != 2 or attr.shape != (x.shape[0],
                                                                   self.kernel.attr_dim)):
            raise ValueError(f"attr must be [B, A] = [{x.shape[0]}, {self.kernel.attr_dim}], "
                             f"got shape {tuple(attr.shape)}")
        if self.padding_mode != "zeros" and self.padding > 0:
            x = F.pad(x, (self.padding,) * (2 * self.dimension), mode=self.padding_mode)
            padding = 0
        else:
            padding = self.padding
        conv = F.conv2d if self.dimension == 2 else F.conv3d
        if attr is None:
            weight = self._cached_filter()
            out = conv(x, weight, stride=self.stride, padding=padding, dilation=self.dilation)
        else:  # one filter per sample: a grouped convolution over the batch
            B = x.shape[0]
            weight = self.filter(attr.to(dtype))
            out = conv(x.reshape(1, B * x.shape[1], *x.shape[2:]),
                       weight.reshape(B * weight.shape[1], *weight.shape[2:]),
                       stride=self.stride, padding=padding, dilation=self.dilation, groups=B)
            out = out.view(B, -1, *out.shape[2:])
        if self.bias is not None:
            shape = (1, -1) + (1,) * self.dimension
            out = out.index_add(1, self.bias_index, self.bias.to(out.dtype).view(shape)
                                .expand(out.shape[0], -1, *out.shape[2:]))
        return enn.GeometricTensor(out, self.out_type, input.coords)

    def _cached_filter(self) -> Tensor:
        if self.training:
            return self.filter()
        if self._filter_cache is None:
            with torch.no_grad():
                self._filter_cache = self.filter()
        return self._filter_cache

    def evaluate_output_shape(self, input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        b, c, *spatial = input_shape
        if c != self.in_type.size:
            raise ValueError(f"input has {c} channels, expected {self.in_type.size}")
        span = self.dilation * (self.kernel_size - 1)
        out = [math.floor((s + 2 * self.padding - span - 1) / self.stride + 1) for s in spatial]
        return (b, self.out_type.size, *out)

    def extra_repr(self) -> str:
        return (f"{self.in_type.size} -> {self.out_type.size}, group={self.space.fibergroup.name}, "
                f"kernel_size={self.kernel_size}, padding={self.padding}, stride={self.stride}, "
                f"dilation={self.dilation}, attr={self.kernel.attr_dim}")


class ImplicitR2Conv(_ImplicitRdConv):
    r"""Convolution on a 2D grid whose filter is an implicit steerable kernel.

    .. math::
        \mathbf{y}(p) = \sum_{o \in \Lambda} m(o)\, K_\theta(o, \mathbf{a})\,
            \mathbf{x}(p + o) + \mathbf{b}

    :math:`K_\theta` is an :class:`~pyg_implicit.ImplicitKernel` (the point
    convolution's equivariant MLP, with its envelope and normalisation, lowered
    to its plan)
    evaluated at the grid offsets :math:`\Lambda` of a ``kernel_size`` window
    (escnn's ``R2Conv`` convention: x along the width, y against the height),
    :math:`m` a disc mask (radius ``dilation * (kernel_size - 1) / 2``); then one
    ``conv2d``. Equivariant to the symmetries of the grid exactly (C_4, D_4 and
    their subgroups) and approximately (discretisation) to the rest of a
    continuous group. The filter is cached in eval mode and rebuilt in training
    (and after ``.train()``/``.to()``); per-sample attributes ``a`` (``attr_type``,
    e.g. a scalar or vector per image) give each sample its own filter.

    Args:
        in_type (escnn.nn.FieldType): input fields, of a gspace on R^2.
        out_type (escnn.nn.FieldType): output fields, same gspace.
        kernel_size (int): side of the filter window.
        padding (int, optional): as in ``conv2d``. (default: ``0``)
        stride (int, optional): as in ``conv2d``. (default: ``1``)
        dilation (int, optional): as in ``conv2d``. (default: ``1``)
        padding_mode (str, optional): ``"zeros"``, ``"reflect"``, ``"replicate"``
            or ``"circular"``. (default: ``"zeros"``)
        groups (int, optional): only ``1``. (default: ``1``)
        bias (bool, optional): learnable bias on the trivial output fields.
            (default: ``True``)
        attr_type (FieldType or list of representations, optional): per-sample
            attributes conditioning the kernel. (default: ``None``)
        hidden_channels (int, optional): fields per hidden layer of the MLP. (default: ``16``)
        hidden_layers (int, optional): hidden layers of the MLP. (default: ``2``)
        width (float, optional): initial envelope width in grid units
            (default: ``max(radius, 1) / 1.5``).
        **kwargs: further arguments of :class:`~pyg_implicit.ImplicitKernel`
            (``band_limit``, ``nonlinearity``, ``activation``, ...).

    Shapes:
        - **input:** ``GeometricTensor`` :math:`(B, |\text{in\_type}|, H, W)`;
          attributes :math:`(B, A)` *(optional)*
        - **output:** ``GeometricTensor`` :math:`(B, |\text{out\_type}|, H', W')`
    """

    dimension = 2


class ImplicitR3Conv(_ImplicitRdConv):
    r"""Convolution on a 3D grid whose filter is an implicit steerable kernel:
    :class:`ImplicitR2Conv` on :math:`\mathbb{R}^3` (escnn's ``R3Conv`` convention,
    a ball mask, one ``conv3d``). Exactly equivariant to the cube's symmetries
    (e.g. ``gspaces.octaOnR3``) and their subgroups.

    Args: as :class:`ImplicitR2Conv`, with field types of a gspace on R^3.

    Shapes:
        - **input:** ``GeometricTensor`` :math:`(B, |\text{in\_type}|, D, H, W)`;
          attributes :math:`(B, A)` *(optional)*
        - **output:** ``GeometricTensor`` :math:`(B, |\text{out\_type}|, D', H', W')`
    """

    dimension = 3


__all__ = ["ImplicitR2Conv", "ImplicitR3Conv"]
