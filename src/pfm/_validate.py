"""Input checks shared by the public functions. Each check names the argument and what it expected."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import InvalidInputError, InvalidTypeError


def shape_of(x: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in x.shape) + ("," if x.dim() == 1 else "") + ")"


def as_tensor(x: Any, name: str) -> Tensor:
    """Turn a tensor, NumPy array or nested list into a tensor without copying where possible.

    Rejects strings, objects, complex numbers and anything else that is not a real number array.
    """
    if isinstance(x, Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        if x.dtype.kind not in "biuf":
            raise InvalidTypeError(f"{name} must hold real numbers, got a NumPy array of dtype {x.dtype}")
        arr = np.ascontiguousarray(x).reshape(x.shape)  # ascontiguousarray makes a 0-d array 1-d
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    elif isinstance(x, (list, tuple)):
        try:
            arr = np.asarray(x)
        except ValueError as exc:  # ragged lists
            raise InvalidInputError(f"{name} must be a rectangular array; got a ragged list ({exc})") from None
        return as_tensor(arr, name)
    else:
        raise InvalidTypeError(f"{name} must be a torch.Tensor or a NumPy array, got {type(x).__name__}")
    if t.is_complex():
        raise InvalidTypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    return t


def as_float(x: Any, name: str) -> Tensor:
    """A floating tensor: floats keep their dtype, integers become float32; bools are refused."""
    t = as_tensor(x, name)
    if t.dtype == torch.bool:
        raise InvalidTypeError(f"{name} must hold numbers, got dtype torch.bool")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    return t


CHUNK = 1 << 22  # elements looked at at once by the checks below, so a memory-mapped array is never copied whole


def row_chunks(x: Tensor, elements: int = CHUNK):
    """Slices of ``x`` along its first dimension, each about ``elements`` values (views, no copies)."""
    per_row = max(1, x[0].numel()) if x.dim() and x.shape[0] else 1
    rows = max(1, elements // per_row)
    for s in range(0, max(x.shape[0], 1) if x.dim() else 1, rows):
        yield x[s:s + rows] if x.dim() else x


def check_finite(x: Tensor, name: str) -> None:
    if not x.is_floating_point():
        return
    bad = sum(int((~torch.isfinite(c)).sum()) for c in row_chunks(x))
    if bad:
        raise InvalidInputError(f"{name} contains {bad} NaN or infinite value(s); clean or drop those rows first")


def abs_max(x: Tensor) -> float:
    """The largest magnitude in ``x``, chunk by chunk."""
    return max((float(c.abs().max()) for c in row_chunks(x) if c.numel()), default=0.0)


def check_min_dim(x: Tensor, name: str, min_dim: int, what: str) -> None:
    if x.dim() < min_dim:
        raise InvalidInputError(f"{name} must have shape {what}, got a tensor of shape {shape_of(x)}")


def check_nonempty(x: Tensor, name: str) -> None:
    if x.dim() == 0 or x.shape[0] == 0:
        raise InvalidInputError(f"{name} is empty (shape {shape_of(x)}); at least one row is needed")


def check_trailing_shape(x: Tensor, name: str, expected: Sequence[int], what: str = "outputs") -> None:
    expected = tuple(int(s) for s in expected)
    if tuple(x.shape[1:]) != expected:
        want = "(N, " + ", ".join(str(s) for s in expected) + ")"
        raise InvalidInputError(f"{name} must have shape {want} to match the {what}, got {shape_of(x)}")


def check_positive_int(value: Any, name: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")


def check_nonneg_float(value: Any, name: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise InvalidTypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(float(value)) or value < 0:
        raise InvalidInputError(f"{name} must be a finite number >= 0, got {value!r}")


def check_choice(value: Any, name: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise InvalidInputError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
