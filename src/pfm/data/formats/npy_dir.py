"""A data set as a directory of ``.npy`` files (``chosen.npy``, ``rejected.npy``, optional ``context.npy``), loaded
memory-mapped: rows stay on disk until a batch needs them, so the data may be larger than memory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from torch import Tensor

from ...io import atomic_dir, check_regular_file
from ...errors import FileFormatError, InvalidInputError
from . import as_numpy


def save_npy_dir(path: Path, chosen: Tensor, rejected: Tensor, context: Optional[Tensor]) -> None:
    """One ``.npy`` file an array (``context`` left out when None), the directory replaced atomically; refuses to
    replace anything else."""
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / "chosen.npy").exists())):
        raise InvalidInputError(f"{str(path)!r} exists and is not a data set directory; refusing to replace it")
    with atomic_dir(path) as tmp:
        for name, t in (("chosen", chosen), ("rejected", rejected), ("context", context)):
            if t is not None:
                np.save(tmp / f"{name}.npy", as_numpy(t))


def load_npy_dir(path: Path) -> dict[str, np.ndarray]:
    """``{"chosen", "rejected"[, "context"]}`` of ``chosen.npy``, ``rejected.npy`` and an optional ``context.npy``,
    memory-mapped: rows are read from disk when a batch needs them, so the data may be larger than memory
    (copy-on-write maps; the files are never written)."""
    arrays = {}
    for name in ("chosen", "rejected", "context"):
        f = path / f"{name}.npy"
        if not f.exists():
            if name == "context":
                continue
            raise FileFormatError(f"{str(path)!r} holds chosen.npy but no {name}.npy")
        check_regular_file(f, ".npy file")
        try:
            arrays[name] = np.load(f, mmap_mode="c", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise FileFormatError(f"{str(f)!r} is not a readable .npy file ({exc})") from None
    return arrays
