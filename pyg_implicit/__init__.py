"""pyg_implicit: implicit steerable kernels for PyTorch Geometric.

The reference path (``ImplicitKernel``, ``ImplicitPointConv`` with the
``"reference"``/``"factorized"`` backends) needs torch, torch-geometric and
escnn only. The fused op needs the compiled extension (``pyg_implicit.ops``
says when it is missing and why); the graph helpers need torch-cluster.
"""
from .plan import KernelPlan
from .kernel import ImplicitKernel
from .nn import ImplicitPointConv
from . import testing

__version__ = "0.1.0"
__all__ = ["KernelPlan", "ImplicitKernel", "ImplicitPointConv", "testing"]
