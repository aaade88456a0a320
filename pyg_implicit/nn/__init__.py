"""``torch_geometric.nn``-style layers."""
from .conv import ImplicitPointConv

__all__ = ["ImplicitPointConv"]
