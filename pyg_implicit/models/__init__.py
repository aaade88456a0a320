"""Models built from implicit-kernel layers (:mod:`pyg_implicit.models.nbody`)."""
import importlib

__all__ = ["NBodyModel", "fully_connected_edges", "make_gspace"]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module(".nbody", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
