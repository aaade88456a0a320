"""Comparison of a result with its oracle: as a whole and row by row.

A whole-tensor relative error ``|a - b| / |b|`` lets a wrong row of small
norm hide behind the large rows, so every row (first dimension; a 0-d or 1-D
tensor has rows of one entry) is also compared on its own:

    err_i = |a_i - b_i| / max(|b_i|, floor * rms_k |b_k|)

The floor (a fraction of the root-mean-square row norm) keeps rows that are
zero, or tiny through cancellation, from demanding more than the arithmetic can
give. Bounds (fixed; the float32 oracle is float64 on the same rounded inputs):
whole tensor 1e-10 (float64) / 1e-5 (float32); any row 1e-10 / 1e-3 (a row
that cancels loses more of float32's 24 bits: fused op, fuzzed graphs,
largest row error measured 7e-13 / 1.7e-4). Imports neither escnn nor the
compiled op.
"""
from __future__ import annotations

import torch

#: rows smaller than this fraction of the RMS row norm are judged against it
ROW_FLOOR = 1e-3
#: bounds on the whole-tensor and on any row's relative error, per dtype
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
ROW_TOL = {torch.float64: 1e-10, torch.float32: 1e-3}


def _rows(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().to("cpu", torch.float64)
    if t.dim() == 0:
        return t.reshape(1, 1)
    return t.reshape(t.shape[0], t[:1].numel())  # explicit width: rows may be 0


def row_errors(actual: torch.Tensor, expected: torch.Tensor,
               floor: float = ROW_FLOOR) -> torch.Tensor:
    """``[rows]`` relative errors of ``actual`` against ``expected`` (see module doc)."""
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != expected "
                             f"{tuple(expected.shape)}")
    a, b = _rows(actual), _rows(expected)
    if a.numel() == 0:
        return a.new_zeros(a.shape[0])
    if not torch.isfinite(a).all():
        return torch.full((a.shape[0],), float("inf"), dtype=torch.float64)
    norms = b.norm(dim=1)
    rms = norms.square().mean().sqrt()
    scale = torch.maximum(norms, floor * rms)
    diff = (a - b).norm(dim=1)
    # an all-zero oracle: any non-zero entry is an error of its own size
    return torch.where(scale > 0, diff / torch.where(scale > 0, scale, 1.0), diff)


def relative_error(actual, expected) -> float:
    """Whole-tensor ``|a - b| / |b|`` (``|a - b|`` for an all-zero oracle)."""
    a, b = _rows(actual), _rows(expected)
    if a.shape != b.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != expected "
                             f"{tuple(expected.shape)}")
    if not torch.isfinite(a).all():
        return float("inf")
    den = float(b.norm())
    num = float((a - b).norm())
    return num / den if den > 0 else num


def max_row_error(actual, expected, floor: float = ROW_FLOOR) -> float:
    errs = row_errors(actual, expected, floor)
    return float(errs.max()) if errs.numel() else 0.0


def assert_rows_close(actual, expected, tol: float, what: str = "",
                      row_tol: float | None = None, floor: float = ROW_FLOOR) -> None:
    """Whole-tensor relative error <= ``tol`` and every row's <= ``row_tol``
    (default ``tol``)."""
    row_tol = tol if row_tol is None else row_tol
    whole = relative_error(actual, expected)
    if not whole <= tol:
        raise AssertionError(f"{what}: relative error {whole:.3e} > {tol:g}")
    errs = row_errors(actual, expected, floor)
    if errs.numel() and not float(errs.max()) <= row_tol:
        worst = int(errs.argmax())
        raise AssertionError(f"{what}: row {worst} of {errs.numel()} has relative error "
                             f"{float(errs[worst]):.3e} > {row_tol:g} "
                             f"({int((errs > row_tol).sum())} rows above)")


def assert_close(actual, expected, dtype: torch.dtype, what: str = "") -> None:
    """:func:`assert_rows_close` with the bounds of ``dtype`` (TOL, ROW_TOL)."""
    assert_rows_close(actual, expected, TOL[dtype], what, row_tol=ROW_TOL[dtype])
