"""``.npz`` archives of named arrays, read safely: never unpickled, no array read that was not asked for, and each
array's declared size checked against its zip entry before anything is allocated (a crafted archive cannot make
pfm allocate what the file does not hold)."""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
from torch import Tensor

from ... import validate as V
from ...io import atomic_file, check_regular_file
from ...errors import FileFormatError, InvalidInputError, MissingFileError
from . import as_numpy

NPZ_NOT_ARRAYS = "neither a zip archive of arrays nor a NumPy array; pfm never unpickles files"

# deflate packs at most about 1032 bytes into one; an entry that says it holds more than this per byte it stores lies
_MAX_DEFLATE_RATIO = 1100


def _open_npz(path: Path) -> zipfile.ZipFile:
    if not path.exists():
        raise MissingFileError(f"no such file: {str(path)!r}")
    check_regular_file(path, ".npz file")
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        with open(path, "rb") as f:
            head = f.read(6)
        why = ("a single .npy array, not a .npz archive of named arrays; write it with np.savez(path, y=array)"
               if head == b"\x93NUMPY" else f"BadZipFile: {exc}" if head.startswith(b"PK") else NPZ_NOT_ARRAYS)
        raise FileFormatError(f"{str(path)!r} is not a readable .npz file ({why})") from None
    except OSError as exc:
        raise FileFormatError(f"{str(path)!r} is not a readable .npz file ({type(exc).__name__}: {exc})") from None


def npz_keys(path: str | os.PathLike) -> list[str]:
    """The names of the arrays in a ``.npz``, without reading any of them."""
    with _open_npz(Path(path)) as z:
        return [n[:-4] for n in z.namelist() if n.endswith(".npy")]


def _read_member(z: zipfile.ZipFile, path: Path, key: str) -> np.ndarray:
    """One array of a ``.npz``, its declared size checked against what its zip entry holds before anything is
    allocated; object arrays (pickles) are refused."""
    bad = f"array {key!r} of {str(path)!r}"
    info = z.getinfo(key + ".npy")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 4096:
        raise FileFormatError(f"{bad} claims {info.file_size:,} bytes from {info.compress_size:,} compressed; the "
                            "file is damaged or crafted")
    try:
        with z.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            if dtype.hasobject:
                raise FileFormatError(f"{bad} holds Python objects ({dtype}); pfm never unpickles files")
            nbytes = math.prod(shape) * dtype.itemsize
            header = f.tell()
            if nbytes != info.file_size - header:
                raise FileFormatError(f"{bad} declares shape {tuple(shape)} ({nbytes:,} bytes) but its entry holds "
                                    f"{info.file_size - header:,} bytes; the file is damaged or crafted")
            V.check_allocation(nbytes, bad)
            arr = np.empty(shape, dtype, order="F" if fortran else "C")
            view, got = memoryview(arr.reshape(-1, order="A")).cast("B"), 0
            while got < nbytes:  # straight into the array: no second copy of it
                k = f.readinto(view[got:])
                if not k:
                    raise EOFError(f"the entry ended after {got:,} of {nbytes:,} bytes")
                got += k
    except (FileFormatError, InvalidInputError):
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as exc:
        raise FileFormatError(f"{bad} is not readable ({type(exc).__name__}: {exc})") from None
    return arr


def read_npz(path: str | os.PathLike, required: tuple[str, ...] = (),
             optional: Optional[tuple[str, ...]] = None) -> dict[str, np.ndarray]:
    """The arrays ``required`` (an error names those missing) and those of ``optional`` present, of a ``.npz``
    (``optional=None``: every array); never unpickles, never reads an array not asked for, and checks each
    array's declared size against the file before allocating it."""
    path = Path(path)
    with _open_npz(path) as z:
        names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
        missing = [k for k in required if k not in names]
        if missing:
            raise FileFormatError(f"{str(path)!r} lacks array(s) {missing}; it holds {sorted(names)}")
        wanted = list(required) + [k for k in (names if optional is None else optional)
                                   if k in names and k not in required]
        return {k: _read_member(z, path, k) for k in wanted}


def save_npz(path: Path, chosen: Tensor, rejected: Tensor, context: Optional[Tensor]) -> None:
    """Arrays ``chosen``, ``rejected`` and, when there is one, ``context``, written atomically."""
    arrays = {"chosen": as_numpy(chosen), "rejected": as_numpy(rejected)}
    if context is not None:
        arrays["context"] = as_numpy(context)
    with atomic_file(path) as f:
        np.savez(f, **arrays)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """``{"chosen", "rejected"[, "context"]}``: the data set's arrays of a ``.npz`` (others unread)."""
    return read_npz(path, required=("chosen", "rejected"), optional=("context",))
