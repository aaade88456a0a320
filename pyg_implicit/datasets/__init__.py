"""Datasets: simulated charged N-body systems (:mod:`pyg_implicit.datasets.nbody`).

Names are imported lazily so that ``python -m pyg_implicit.datasets.nbody``
runs the module once, without importing torch_geometric up front.
"""
import importlib

__all__ = ["SimConfig", "generate", "load_split", "simulate", "NBodyDataset"]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module(".nbody", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
