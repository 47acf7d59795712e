"""Argument checks that raise a :class:`pfm.PFMError` subclass naming the argument and what was expected.

The public, stable home of the checks pfm's own functions use, for code written on pfm (the experiments in
``pfm-experiments`` use them), so that its errors read like pfm's: :class:`pfm.InvalidInputError` for a wrong value,
shape or length (NaN/inf, empty), :class:`pfm.InvalidTypeError` for a wrong type. They keep their signatures within
a major version.

- conversions: :func:`as_tensor` (any array-like to a tensor, or an error naming ``name``), :func:`as_float`
  (the same, floating point), :func:`shape_of` (a tensor's shape as text, for messages)
- tensors: :func:`check_finite`, :func:`check_nonempty`, :func:`check_min_dim`, :func:`check_trailing_shape`
- numbers and choices: :func:`check_positive_int`, :func:`check_int`, :func:`check_positive_float`,
  :func:`check_nonneg_float`, :func:`check_beta` (a KL weight: a number > 0, returned as a float),
  :func:`check_choice`, :func:`check_shape` (a shape tuple), :func:`check_device` (returns the ``torch.device``)
"""

from __future__ import annotations

import math
import os
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
        if not x.dtype.isnative:  # big-endian data (torch reads native byte order only)
            if isinstance(x, np.memmap):
                raise InvalidTypeError(f"{name} is a memory-mapped array in non-native byte order ({x.dtype.str}); "
                                       "convert the file once, e.g. np.save(path, arr.astype(arr.dtype.newbyteorder"
                                       "('=')))")
            x = x.astype(x.dtype.newbyteorder("="))
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


def check_int(value: Any, name: str, *, low: int | None = None, high: int | None = None,
              allow_none: bool = False) -> None:
    """An integer (not a bool, not a float such as 2.7) in ``[low, high]``."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidTypeError(f"{name} must be an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        rng = (f">= {low}" if high is None else f"<= {high:,}" if low is None else f"in [{low}, {high:,}]")
        raise InvalidInputError(f"{name} must be an integer {rng}, got {value!r}")


def check_beta(beta: Any, name: str = "beta") -> float:
    """A KL weight: a number > 0 (not inf or NaN), returned as a float."""
    check_nonneg_float(beta, name)
    if beta <= 0:
        raise InvalidInputError(f"{name} must be > 0, got {beta!r}")
    return float(beta)


def check_positive_float(value: Any, name: str, allow_none: bool = False) -> None:
    check_nonneg_float(value, name, allow_none)
    if value is not None and float(value) <= 0:
        raise InvalidInputError(f"{name} must be a finite number > 0, got {value!r}")


def check_shape(value: Any, name: str, *, allow_none: bool = False, max_elements: int | None = None) -> None:
    """A non-empty list or tuple of positive integers (a shape), whose product is at most ``max_elements``."""
    if value is None and allow_none:
        return
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
        raise InvalidInputError(f"{name} must be a non-empty list of positive integers, got {value!r}")
    for s in value:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s <= 0:
            raise InvalidInputError(f"{name} must be a non-empty list of positive integers, got {list(value)!r}")
    if max_elements is not None and math.prod(int(s) for s in value) > max_elements:
        raise InvalidInputError(f"{name} {list(value)!r} has {math.prod(int(s) for s in value):,} elements, more "
                                f"than the {max_elements:,} pfm accepts")


def check_device(device: Any, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine."""
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise InvalidTypeError(f"{name} must be a string such as 'cpu' or 'cuda:0', or a torch.device; got "
                               f"{type(device).__name__}")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidInputError(f"{name} must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError(f"{name}={str(device)!r}, but no CUDA GPU is available here "
                                    "(torch.cuda.is_available() is False); use 'cpu'")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise InvalidInputError(f"{name}={str(device)!r}, but this machine has {torch.cuda.device_count()} "
                                    "CUDA device(s)")
    elif d.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise InvalidInputError(f"{name}={str(device)!r}, but MPS is not available here; use 'cpu'")
    elif d.type != "cpu":
        raise InvalidInputError(f"{name} must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    return d


def available_memory() -> int:
    """Bytes this process may still allocate: the smaller of the system's available memory and the room left
    under an address-space limit (``ulimit -v``), if one is set."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 1 << 62
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            avail = min(avail, max(0, soft - used))
    except (ImportError, OSError, ValueError):
        pass
    return int(avail)


def check_allocation(nbytes: int, what: str) -> None:
    """Refuse to allocate ``nbytes`` (a size declared by a file or an argument) beyond what this process can get."""
    room = available_memory()
    if nbytes > room:
        raise InvalidInputError(f"{what} would need {nbytes / 2**30:,.1f} GiB of memory, more than the "
                                f"{room / 2**30:,.1f} GiB available")


__all__ = ["as_tensor", "as_float", "shape_of", "check_finite", "check_nonempty", "check_min_dim",
           "check_trailing_shape", "check_positive_int", "check_int", "check_positive_float", "check_nonneg_float",
           "check_beta", "check_choice", "check_shape", "check_device"]
