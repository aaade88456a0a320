"""Compiled ops of pyg_implicit (fused point convolution) and graph helpers.

``is_available()`` tells whether the C++/CUDA extension ``pyg_implicit._C``
loaded; without it :func:`fused_point_conv` raises a ``RuntimeError`` that
says why, and the rest of the package keeps working (reference backends).
"""
from .csr import CSRGraph, build_csr, check_csr, debug_checks
from .point_conv import fused_point_conv, is_available, unavailable_reason

__all__ = ["CSRGraph", "build_csr", "check_csr", "debug_checks", "fused_point_conv",
           "is_available", "unavailable_reason"]
