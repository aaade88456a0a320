"""The comparison helper itself (compare.py) must be able to fail."""
import pytest
import torch

from compare import assert_close, assert_rows_close, max_row_error, relative_error


def _oracle():
    g = torch.Generator().manual_seed(0)
    b = torch.randn(100, 4, generator=g, dtype=torch.float64)
    b[7] *= 1e-6  # a row of small norm
    return b


def test_wrong_small_row_is_caught_where_the_whole_tensor_error_is_tiny():
    b = _oracle()
    a = b.clone()
    a[7] *= 3  # the small row is completely wrong
    assert relative_error(a, b) < 1e-6  # hidden in the whole-tensor error
    with pytest.raises(AssertionError, match="row 7 of 100"):
        assert_rows_close(a, b, 1e-5)


def test_rounding_sized_errors_pass():
    b = _oracle()
    a = b * (1 + 1e-12)
    assert_rows_close(a, b, 1e-10)
    assert_close(b.float(), b, torch.float32)


def test_bounds_and_special_cases():
    b = _oracle()
    with pytest.raises(AssertionError, match="relative error"):
        assert_rows_close(b * (1 + 1e-4), b, 1e-5, row_tol=1.0)
    with pytest.raises(AssertionError, match="shape"):
        assert_rows_close(b[:, :3], b, 1e-5)
    nan = b.clone()
    nan[3, 1] = float("nan")
    with pytest.raises(AssertionError):
        assert_rows_close(nan, b, 1e-5)
    # an all-zero oracle: errors are absolute
    zero = torch.zeros(5, 2, dtype=torch.float64)
    assert max_row_error(zero, zero) == 0
    with pytest.raises(AssertionError):
        assert_rows_close(zero + 1e-3, zero, 1e-5)
    # empty tensors, 0-d and 1-D tensors
    assert_rows_close(torch.zeros(0, 3), torch.zeros(0, 3), 1e-10)
    assert_rows_close(torch.tensor(2.0), torch.tensor(2.0), 1e-10)
    with pytest.raises(AssertionError, match="row 1 of 3"):
        assert_rows_close(torch.tensor([1.0, 2e-3, 3.0]), torch.tensor([1.0, 1e-3, 3.0]),
                          1.0, row_tol=1e-3)
