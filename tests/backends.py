"""Which compiled backends of the fused op this test run can exercise.

A test of a compiled backend carries ``@pytest.mark.backend(NAME)``; the
conftest skips it when NAME is unavailable, or fails it when NAME is listed in
``PYG_IMPLICIT_REQUIRE`` (comma-separated), so that a run that must test the
compiled op cannot go green by skipping. Names:

- ``fused_cpu``: the CPU kernels of ``pyg_implicit._C`` (``csrc/cpu``);
- ``cuda``: the CUDA kernels (``csrc/cuda``) on a CUDA GPU;
- ``cuda_emulated``: the CUDA kernel source built for CPU threads by
  ``csrc/cuda/emulate_on_cpu.py`` (which sets ``PYG_IMPLICIT_CUDA_EMULATED=1``).

Imports neither escnn nor the test helpers that need it (the GPU image lacks it).
"""
from __future__ import annotations

import os
from typing import Tuple

import torch

NAMES = ("fused_cpu", "cuda", "cuda_emulated")
REQUIRE_ENV = "PYG_IMPLICIT_REQUIRE"
EMULATED_ENV = "PYG_IMPLICIT_CUDA_EMULATED"


def emulated() -> bool:
    return os.environ.get(EMULATED_ENV) == "1"


def required() -> Tuple[str, ...]:
    names = tuple(n.strip() for n in os.environ.get(REQUIRE_ENV, "").split(",") if n.strip())
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(f"{REQUIRE_ENV}={os.environ[REQUIRE_ENV]!r}: unknown backend(s) "
                         f"{unknown}; expected a comma-separated subset of {NAMES}")
    return names


def _has_kernel(key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(
        "pyg_implicit::point_conv_forward", key)


def availability(name: str) -> Tuple[bool, str]:
    """``(available, reason)``; the reason says what is missing."""
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; expected one of {NAMES}")
    from pyg_implicit import ops
    if not ops.is_available():
        return False, ops.unavailable_reason()
    if name == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA GPU visible to torch"
        if not _has_kernel("CUDA"):
            return False, "pyg_implicit._C has no CUDA kernels (build with FORCE_CUDA=1)"
        return True, ""
    if name == "cuda_emulated" and not emulated():
        return False, (f"not running under csrc/cuda/emulate_on_cpu.py ({EMULATED_ENV} "
                       f"is not 1)")
    if name == "fused_cpu" and emulated():
        return False, "the CPU kernels of this _C are the emulated CUDA source"
    if not _has_kernel("CPU"):
        return False, "pyg_implicit._C has no CPU kernels"
    return True, ""
