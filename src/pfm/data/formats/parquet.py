"""A data set as a ``.parquet`` table: list columns ``chosen`` and ``rejected`` (one row a pair), an optional
``context`` column (labels, or lists), and pfm's metadata (the shapes the flat lists are reshaped to). Reading and
writing need pyarrow (``pip install 'pfm[parquet]'``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from torch import Tensor

from ... import validate as V
from ...io import atomic_file, check_regular_file
from ...errors import FileFormatError, InvalidInputError, MissingDependencyError
from . import as_numpy

if TYPE_CHECKING:
    import pyarrow as pa

FORMAT_VERSION = 1


def _pyarrow(doing: str) -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, or an error that says how to install them."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError(f"{doing} parquet needs pyarrow: pip install 'pfm[parquet]'") from None
    return pa, pq


def _fixed_list(pa: Any, t: Tensor) -> "pa.Array":
    flat = as_numpy(t.reshape(t.shape[0], -1))
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def save_parquet(path: Path, chosen: Tensor, rejected: Tensor, context: Optional[Tensor],
                 context_is_label: bool = False) -> None:
    """Fixed-size list columns (labels, ``context_is_label``, as a plain column) and the shapes in the ``pfm``
    metadata, atomically."""
    pa, pq = _pyarrow("writing")
    cols = {"chosen": _fixed_list(pa, chosen), "rejected": _fixed_list(pa, rejected)}
    meta = {"format_version": FORMAT_VERSION, "output_shape": list(chosen.shape[1:])}
    if context is not None:
        if context_is_label:
            cols["context"] = pa.array(as_numpy(context))
        else:
            cols["context"] = _fixed_list(pa, context)
            meta["context_shape"] = list(context.shape[1:])
    table = pa.table(cols).replace_schema_metadata({"pfm": json.dumps(meta)})
    with atomic_file(path) as f:
        pq.write_table(table, f)


def _read_table(pa: Any, pq: Any, path: Path) -> tuple[dict, "pa.Table"]:
    """pfm's metadata (:func:`_read_metadata`), and the columns chosen, rejected and context (the others are never
    read), their declared size checked first (:func:`_check_declared_size`)."""
    check_regular_file(path, "parquet file")
    try:
        schema = pq.read_schema(path)
        missing = [k for k in ("chosen", "rejected") if k not in schema.names]
        if missing:
            raise FileFormatError(f"{str(path)!r} lacks column(s) {missing}; it has {schema.names}")
        wanted = [k for k in ("chosen", "rejected", "context") if k in schema.names]
        meta = _read_metadata(schema, path)
        _check_declared_size(pa, pq.read_metadata(path).num_rows, schema, meta, wanted, path)
        table = pq.read_table(path, columns=wanted)
    except (pa.ArrowException, OSError) as exc:
        raise FileFormatError(f"{str(path)!r} is not a readable parquet file ({exc})") from None
    if table.num_rows == 0:
        raise FileFormatError(f"{str(path)!r} has no rows; at least one preference pair is needed")
    return meta, table


def memory_budget() -> int:
    """The most bytes a data file may make pfm allocate: ``$PFM_MEMORY_BUDGET`` (bytes) if set, else half of the
    physical memory, and at most half of the address-space limit (``ulimit -v``) where one is set (on a system
    without those, such as Windows, no bound but ``$PFM_MEMORY_BUDGET``)."""
    import os

    env = os.environ.get("PFM_MEMORY_BUDGET")
    if env is not None:
        try:
            value = int(env)
        except ValueError:
            raise InvalidInputError(f"PFM_MEMORY_BUDGET must be a number of bytes, got {env!r}") from None
        V.check_positive_int(value, "PFM_MEMORY_BUDGET")
        return value
    try:  # POSIX; elsewhere the budget is only the environment's (or none)
        import resource

        budget = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, AttributeError, ValueError, OSError):
        return 1 << 62
    return int(min(budget, soft // 2) if soft != resource.RLIM_INFINITY else budget)


def _check_declared_size(pa: Any, rows: int, schema: "pa.Schema", meta: dict, wanted: list[str], path: Path) -> None:
    """Refuse a file whose declared ``rows``, times the values a row of the wanted columns holds at least (a
    fixed-size list's length or the shape in pfm's checked metadata ``meta``; one otherwise) and 8 bytes a value,
    exceed :func:`memory_budget`, before anything is read: encodings such as run lengths let a small file declare
    many millions of rows."""
    per_row = 0
    for name in wanted:
        kind = schema.field(name).type
        shape = meta.get("context_shape" if name == "context" else "output_shape")
        if pa.types.is_fixed_size_list(kind):
            width = kind.list_size
        elif shape:
            width = math.prod(shape)
        else:
            width = 1
        per_row += max(1, width)
    need, budget = int(rows) * per_row * 8, memory_budget()
    if need > budget:
        raise FileFormatError(f"{str(path)!r} declares {rows:,} rows of {per_row} values, {need:,} bytes to "
                              f"read, over the memory budget of {budget:,} bytes (PFM_MEMORY_BUDGET, default half the "
                              "memory); split the file or raise the budget")


def _read_metadata(schema: "pa.Schema", path: Path) -> dict:
    """pfm's metadata (``{}`` when the file has none), its shapes checked."""
    raw = (schema.metadata or {}).get(b"pfm", b"{}")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FileFormatError(f"the pfm metadata of {str(path)!r} is not valid JSON") from None
    if not isinstance(meta, dict):
        raise FileFormatError(f"the pfm metadata of {str(path)!r} must be a JSON object, got {type(meta).__name__}")
    for key in ("output_shape", "context_shape"):
        try:
            V.check_shape(meta.get(key), f"its {key}", allow_none=True)
        except InvalidInputError as exc:
            raise FileFormatError(f"the pfm metadata of {str(path)!r} is wrong: {exc}") from None
    return meta


def _column(pa: Any, table: "pa.Table", name: str, shape: list[int] | None, path: Path) -> np.ndarray:
    """A column as an array: lists of one length as ``(N, width)``, reshaped to ``(N, *shape)`` if a shape is given;
    a column of numbers as ``(N,)``."""
    col = table.column(name).combine_chunks()
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        lengths = np.asarray(col.value_lengths())
        if len(lengths) and (lengths != lengths[0]).any():
            raise FileFormatError(f"column {name!r} of {str(path)!r} holds lists of different lengths; "
                                "every row must have the same size")
        if col.null_count:
            raise FileFormatError(f"column {name!r} of {str(path)!r} has {col.null_count} empty (null) row(s)")
        flat = np.asarray(col.flatten())
        width = int(lengths[0]) if len(lengths) else 0
        if shape and math.prod(shape) != width:
            raise FileFormatError(f"column {name!r} of {str(path)!r} holds lists of {width} values, but its pfm "
                                f"metadata says shape {list(shape)} ({math.prod(shape)} values)")
        arr = flat.reshape(len(col), width)
        if shape:
            arr = arr.reshape(len(col), *shape)
        return arr
    if pa.types.is_nested(col.type):
        raise FileFormatError(f"column {name!r} of {str(path)!r} has type {col.type}; expected lists of numbers")
    return col.to_numpy(zero_copy_only=False)


def load_parquet(path: Path) -> dict[str, np.ndarray]:
    """``{"chosen", "rejected"[, "context"]}`` of a table written by :func:`save_parquet`, or of any with list
    columns chosen/rejected and an optional context column."""
    pa, pq = _pyarrow("reading")
    meta, table = _read_table(pa, pq, path)
    shape = meta.get("output_shape")
    arrays = {"chosen": _column(pa, table, "chosen", shape, path), "rejected": _column(pa, table, "rejected", shape, path)}
    if "context" in table.column_names:
        arrays["context"] = _column(pa, table, "context", meta.get("context_shape"), path)
    return arrays
