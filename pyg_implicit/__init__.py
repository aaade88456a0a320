"""pyg_implicit: implicit steerable kernels for PyTorch Geometric.

The reference path (``ImplicitKernel``, ``ImplicitPointConv`` with the
``"reference"``/``"factorized"`` backends) needs torch, torch-geometric and
escnn only. The fused op needs the compiled extension (``pyg_implicit.ops``
says when it is missing and why); the graph helpers need torch-cluster.

The names below are imported on first use, so ``import pyg_implicit`` and
``pyg_implicit.ops`` / ``pyg_implicit.plan`` work without escnn (e.g. on a GPU
machine that only runs the fused op).
"""
import importlib

__version__ = "0.1.0"
__all__ = ["KernelPlan", "ImplicitKernel", "ImplicitPointConv", "ImplicitR2Conv",
           "ImplicitR3Conv", "testing"]

# public name -> (submodule, attribute or None for the module itself)
_LAZY = {
    "KernelPlan": (".plan", "KernelPlan"),
    "ImplicitKernel": (".kernel", "ImplicitKernel"),
    "ImplicitPointConv": (".nn", "ImplicitPointConv"),
    "ImplicitR2Conv": (".nn", "ImplicitR2Conv"),
    "ImplicitR3Conv": (".nn", "ImplicitR3Conv"),
    "testing": (".testing", None),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'pyg_implicit' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name, __name__)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
