"""pyg_implicit: implicit steerable kernels for PyTorch Geometric."""
from .plan import KernelPlan
from .kernel import ImplicitKernel

__version__ = "0.1.0"
__all__ = ["KernelPlan", "ImplicitKernel"]
