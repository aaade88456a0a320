"""``torch_geometric.nn``-style layers and the equivariant building blocks around them.

- :class:`ImplicitPointConv` — the implicit steerable point convolution;
- :class:`AnalyticPointConv` — escnn's analytic ("standard") steerable kernels
  behind the same call signature, the baseline of the paper's tables;
- :class:`ImplicitR2Conv`, :class:`ImplicitR3Conv` — the same kernels on regular grids;
- per-node blocks for any field type of any subgroup of O(2)/O(3):
  :class:`EquivariantNonlinearity` (gated, norm, pointwise, Fourier),
  :class:`EquivariantBatchNorm`, :class:`EquivariantLayerNorm`,
  :class:`EquivariantLinear`, :class:`ScalarEmbedding`, :class:`InvariantMap`,
  :class:`EquivariantGlobalPool`; :func:`field_type` builds the hidden types
  the nonlinearities need;
- :class:`ResidualBlock` and the generic model :class:`ImplicitSteerableNet`.
"""
from .analytic_conv import AnalyticPointConv
from .block import ResidualBlock
from .conv import ImplicitPointConv
from .fields import field_type
from .grid_conv import ImplicitR2Conv, ImplicitR3Conv
from .linear import EquivariantGlobalPool, EquivariantLinear, InvariantMap, ScalarEmbedding
from .models import ImplicitSteerableNet
from .nonlinearity import EquivariantNonlinearity, gated_input_type
from .norm import EquivariantBatchNorm, EquivariantLayerNorm

__all__ = ["ImplicitPointConv", "AnalyticPointConv", "ImplicitR2Conv", "ImplicitR3Conv",
           "EquivariantNonlinearity", "gated_input_type",
           "EquivariantBatchNorm", "EquivariantLayerNorm", "EquivariantLinear",
           "ScalarEmbedding", "InvariantMap", "EquivariantGlobalPool", "ResidualBlock",
           "ImplicitSteerableNet", "field_type"]
