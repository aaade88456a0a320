"""``ImplicitPointConv``: steerable point convolution with an implicit kernel."""
from __future__ import annotations

import contextlib
import weakref
from typing import Optional, Tuple, Union

import torch
from escnn import nn as enn
from torch import Tensor
from torch_geometric.nn import MessagePassing

from ..kernel import FieldTypeLike, ImplicitKernel
from ..plan import KernelPlan, edge_kernels, hidden_features
from . import _checks
from .fields import trivial_channels

BACKENDS = ("auto", "reference", "factorized", "fused")
PairTensor = Tuple[Tensor, Tensor]


def _fused_ops():
    """The compiled op wrappers, or None when the extension is unavailable."""
    try:
        from .. import ops
    except ImportError:  # pragma: no cover - the ops package is part of the source tree
        return None
    return ops if ops.is_available() else None


class ImplicitPointConv(MessagePassing):
    r"""Steerable point convolution whose kernel is a G-equivariant MLP
    (Zhdanov, Hoffmann, Cesa, *Implicit Convolutional Kernels for Steerable
    CNNs*, NeurIPS 2023).

    .. math::
        \mathbf{x}'_i = \sum_{j \in \mathcal{N}(i)}
            s(\|\mathbf{p}_j - \mathbf{p}_i\|)\, c\,
            K_\theta(\mathbf{p}_j - \mathbf{p}_i, \mathbf{a}_{j,i})\, \mathbf{x}_j
            \; + \; \mathbf{b}

    with :math:`K_\theta` an :class:`~pyg_implicit.ImplicitKernel` (an
    equivariant MLP from the relative position and the edge attributes to
    :math:`\mathrm{Hom}(\rho_{in}, \rho_{out})`), :math:`s` a Gaussian envelope
    with learnable width, :math:`c` a normalisation constant fixed at
    initialisation and :math:`\mathbf{b}` a bias on the trivial output fields.
    The layer is equivariant: rotating/reflecting the positions by :math:`g`
    and transforming features and attributes by their representations
    transforms the output by :math:`\rho_{out}(g)`.

    Args:
        in_type (escnn.nn.FieldType): input field type, of a gspace on R^2/R^3.
        out_type (escnn.nn.FieldType): output field type, same gspace.
        edge_attr_type (FieldType or list of representations, optional): type of
            the edge attributes (e.g. scalars such as distances or q_i q_j,
            vectors such as velocities).
        hidden_channels (int): fields per hidden layer of the kernel MLP.
        hidden_layers (int): hidden layers of the kernel MLP.
        bias (bool): add a learnable bias to the trivial output fields.
        backend (str): ``"reference"`` (materialises ``[E, C_out, C_in]``
            kernels), ``"factorized"`` (plain-torch factorisation, docs/design.md §2),
            ``"fused"`` (compiled op, no per-edge tensors) or ``"auto"``
            (fused when the extension is built, else factorized).
        **kwargs: further arguments of :class:`~pyg_implicit.ImplicitKernel`
            (``band_limit``, ``nonlinearity``, ``activation``, ``grid_size``,
            ``grid``, ``width``, ``learn_width``, ``num_neighbors``,
            ``lift_degree``). ``nonlinearity="gated"`` or ``"norm"`` makes the
            layer exactly equivariant for every group (docs/design.md §1b).

    Precision: the layer computes in float32 or float64 (its parameters'
    dtype). Under ``torch.autocast`` it runs in its own dtype with autocast
    off (lower-precision inputs are cast up) and returns that dtype; a layer
    converted to float16/bfloat16 (``.half()``) raises a ``TypeError`` when
    called.

    Edges follow PyG's ``source_to_target`` flow: ``edge_index[0]`` holds the
    sources j, ``edge_index[1]`` the targets i, and the kernel is evaluated at
    ``pos_src[j] - pos_dst[i]``.

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, C_{in})` or
          :math:`((|\mathcal{V_s}|, C_{in}), (|\mathcal{V_t}|, *))` if bipartite
          (a tensor or an escnn ``GeometricTensor``), positions
          :math:`(|\mathcal{V}|, d)` or :math:`((|\mathcal{V_s}|, d), (|\mathcal{V_t}|, d))`,
          edge indices :math:`(2, |\mathcal{E}|)`, edge attributes
          :math:`(|\mathcal{E}|, A)` *(optional)*
        - **output:** node features :math:`(|\mathcal{V}_t|, C_{out})`
    """

    def __init__(self, in_type: enn.FieldType, out_type: enn.FieldType,
                 edge_attr_type: FieldTypeLike = None, hidden_channels: int = 16,
                 hidden_layers: int = 2, bias: bool = True, backend: str = "auto",
                 **kwargs):
        super().__init__(aggr="add", flow="source_to_target", node_dim=0)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.kernel = ImplicitKernel(in_type, out_type, edge_attr_type, hidden_channels,
                                     hidden_layers, **kwargs)
        self.in_type, self.out_type = in_type, out_type
        self.in_channels, self.out_channels = in_type.size, out_type.size
        self.backend = backend
        self.register_buffer("bias_index", trivial_channels(out_type), persistent=False)
        if bias and len(self.bias_index) > 0:
            self.bias = torch.nn.Parameter(torch.zeros(len(self.bias_index)))
        else:
            self.register_parameter("bias", None)
        self._csr_cache = None
        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        self.kernel.reset_parameters()
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)
        self._csr_cache = None

    @property
    def resolved_backend(self) -> str:
        """The backend a forward call will use."""
        if self.backend == "auto":
            return "fused" if _fused_ops() is not None else "factorized"
        return self.backend

    def forward(self, x: Union[Tensor, enn.GeometricTensor, PairTensor],
                pos: Union[Tensor, PairTensor], edge_index: Tensor,
                edge_attr: Optional[Tensor] = None, csr=None) -> Tensor:
        """Args:
            csr (optional): a precomputed :class:`pyg_implicit.ops.CSRGraph` of
                ``edge_index`` for the fused backend (built and cached otherwise).
                It must be ``build_csr(edge_index, N_src, N_dst)``: the numbers of
                edges and nodes are checked on every call, the indices only
                with debug checks on (``PYG_IMPLICIT_DEBUG=1`` or
                ``with pyg_implicit.ops.debug_checks():``).
        """
        x_src, x_dst, pos_src, pos_dst = _checks.split_inputs(x, pos, self.in_type)
        dtype = self.kernel.log_width.dtype
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"ImplicitPointConv computes in float32 or float64, but this layer "
                            f"was converted to {dtype}: convert it back with .float() (under "
                            f"torch.autocast the layer runs in float32 by itself)")
        device_type = self.kernel.log_width.device.type
        autocast = torch.is_autocast_enabled(device_type)
        if autocast:  # compute in the layer's dtype, inputs cast up to it
            def up(t):
                return t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t
            x_src, x_dst, pos_src, pos_dst, edge_attr = (
                up(t) for t in (x_src, x_dst, pos_src, pos_dst, edge_attr))
        with torch.autocast(device_type, enabled=False) if autocast else \
                contextlib.nullcontext():
            return self._forward(x_src, x_dst, pos_src, pos_dst, edge_index, edge_attr, csr)

    def _forward(self, x_src, x_dst, pos_src, pos_dst, edge_index, edge_attr, csr):
        _checks.check_inputs(x_src, pos_src, pos_dst, edge_index, edge_attr,
                             self.kernel.pos_dim, self.in_channels, self.kernel.attr_dim,
                             self.kernel.log_width)
        plan = self.kernel.plan()
        size = (pos_src.shape[0], pos_dst.shape[0])
        backend = self.resolved_backend
        if backend == "fused":
            ops = _fused_ops()
            if ops is None:
                raise RuntimeError("backend='fused' needs the compiled extension "
                                   "pyg_implicit._C, which is not available: "
                                   "reinstall with `pip install --no-build-isolation -e .`")
            if csr is None:
                csr = self._cached_csr(ops, edge_index, size)
            else:  # sizes always; contents with debug checks (ops.debug_checks)
                ops.check_csr(csr, edge_index, size[0], size[1])
            out = ops.fused_point_conv(x_src, pos_src, pos_dst, edge_attr, csr, plan)
        else:  # PyG's scatter wants int64 indices
            out = self.propagate(edge_index.long(), x=(x_src, x_dst), pos=(pos_src, pos_dst),
                                 edge_attr=edge_attr, plan=plan, backend=backend, size=size)
            if backend == "factorized":
                out = out @ plan.Wt.t()
        if self.bias is not None:
            out = out.index_add(1, self.bias_index, self.bias.to(out.dtype).expand(
                out.shape[0], -1))
        return out

    def message(self, x_j: Tensor, pos_i: Tensor, pos_j: Tensor,
                edge_attr: Optional[Tensor], plan: KernelPlan, backend: str) -> Tensor:
        edge_vec = pos_j - pos_i
        if backend == "reference":
            return torch.einsum("eoc,ec->eo", edge_kernels(plan, edge_vec, edge_attr), x_j)
        g = hidden_features(plan, edge_vec, edge_attr)  # [E, H + 1]
        return (g[:, :, None] * x_j[:, None, :]).reshape(g.shape[0], g.shape[1] * x_j.shape[1])

    def _cached_csr(self, ops, edge_index: Tensor, size):
        # keyed on the tensor object itself (weakly) and its version counter, so a
        # new or modified edge_index never hits a stale entry; inference tensors
        # (torch.inference_mode) have no version counter and are not cached
        if edge_index.is_inference():
            return ops.build_csr(edge_index, size[0], size[1])
        cache = self._csr_cache
        if cache is not None and cache[0]() is edge_index and \
                cache[1] == (edge_index._version, size):
            return cache[2]
        csr = ops.build_csr(edge_index, size[0], size[1])
        self._csr_cache = (weakref.ref(edge_index), (edge_index._version, size), csr)
        return csr

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"group={self.kernel.group.name}, edge_attr_dim={self.kernel.attr_dim}, "
                f"hidden={self.kernel.hidden_layers}x{self.kernel.hidden_channels}, "
                f"backend={self.backend})")
