"""Preference data: triples (context x, preferred y+, rejected y-), their validation, files and collection.

Shapes: outputs are ``(N, *shape)`` of any shape; a context is class indices ``(N,)`` (integer dtype), a tensor
``(N, *cshape)`` (float dtype; a 1-D float context becomes ``(N, 1)``), or absent.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from . import _validate as V
from ._io import atomic_dir, atomic_file
from .errors import FlowFileError, InvalidInputError, InvalidTypeError, MissingDependencyError, MissingFileError

ContextKind = Optional[Literal["label", "vector"]]

FORMAT_VERSION = 1


def as_context(context: Any, name: str = "context", n: int | None = None) -> Optional[Tensor]:
    """Validate a context: integer ``(N,)`` -> labels (int64), float ``(N, *cshape)`` -> vectors; ``None`` stays."""
    if context is None:
        return None
    c = V.as_tensor(context, name)
    if c.dtype == torch.bool:
        raise InvalidTypeError(f"{name} must be integer class labels or a float tensor, got dtype torch.bool")
    V.check_min_dim(c, name, 1, "(N,) of labels or (N, *cshape)")
    if n is not None and c.shape[0] != n:
        raise InvalidInputError(f"{name} has {c.shape[0]} rows but the outputs have {n}; they must match")
    if c.is_floating_point():
        V.check_finite(c, name)
        return c.unsqueeze(1) if c.dim() == 1 else c
    if c.dim() != 1:  # integer tensors with more dims are vectors, e.g. one-hot codes
        return c.to(torch.float32)
    c = c.to(torch.int64)
    if c.numel() and int(c.min()) < 0:
        raise InvalidInputError(f"{name} holds class labels, which must be >= 0; found {int(c.min())}")
    return c


def context_kind(context: Optional[Tensor]) -> ContextKind:
    if context is None:
        return None
    return "vector" if context.is_floating_point() else "label"


class PreferenceDataset(torch.utils.data.Dataset):
    """N preference triples: ``chosen[i]`` (y+) was preferred to ``rejected[i]`` (y-) for ``context[i]``.

    Args:
        chosen: preferred outputs ``(N, *shape)``; tensor, array or list; integers become float32.
        rejected: rejected outputs ``(N, *shape)``, same shape as ``chosen``.
        context: ``None``, class labels ``(N,)`` of an integer dtype, or float contexts ``(N, *cshape)``.

    Indexing returns the layout of the paper's code: ``(context, chosen, rejected)``, or ``(chosen, rejected)``
    when there is no context.
    """

    def __init__(self, chosen: Any, rejected: Any, context: Any = None) -> None:
        # data, never part of a graph (a tensor that required grad failed at the second training step)
        chosen_t = V.as_float(chosen, "chosen").detach()
        rejected_t = V.as_float(rejected, "rejected").detach()
        for t, name in ((chosen_t, "chosen"), (rejected_t, "rejected")):
            V.check_min_dim(t, name, 1, "(N, *shape)")
            V.check_nonempty(t, name)
            if t.numel() == 0:
                raise InvalidInputError(f"{name} has outputs of size zero (shape {V.shape_of(t)}); each output "
                                        "needs at least one value")
        if chosen_t.shape != rejected_t.shape:
            raise InvalidInputError(
                f"chosen and rejected must have the same shape, got chosen {V.shape_of(chosen_t)} "
                f"and rejected {V.shape_of(rejected_t)}"
            )
        V.check_finite(chosen_t, "chosen")
        V.check_finite(rejected_t, "rejected")
        if chosen_t.dim() == 1:  # scalar outputs: (N,) -> (N, 1)
            chosen_t, rejected_t = chosen_t.unsqueeze(1), rejected_t.unsqueeze(1)
        if rejected_t.dtype != chosen_t.dtype:
            rejected_t = rejected_t.to(chosen_t.dtype)
        self.chosen: Tensor = chosen_t
        self.rejected: Tensor = rejected_t
        ctx = as_context(context, "context", n=len(chosen_t))
        self.context: Optional[Tensor] = None if ctx is None else ctx.detach()
        self.memory_mapped = False  # True when loaded from a directory of .npy files (rows stay on disk)

    # ----------------------------------------------------------------------------------------- description
    def __len__(self) -> int:
        return self.chosen.shape[0]

    def __getitem__(self, i: Any) -> tuple[Tensor, ...]:
        if self.context is None:
            return self.chosen[i], self.rejected[i]
        return self.context[i], self.chosen[i], self.rejected[i]

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(self.chosen.shape[1:])

    @property
    def context_kind(self) -> ContextKind:
        return context_kind(self.context)

    @property
    def context_shape(self) -> tuple[int, ...] | None:
        if self.context is None or self.context_kind == "label":
            return None
        return tuple(self.context.shape[1:])

    @property
    def num_classes(self) -> int | None:
        if self.context_kind != "label":
            return None
        return int(self.context.max()) + 1

    def __repr__(self) -> str:
        ctx = {None: "none", "label": f"labels (num_classes={self.num_classes})",
               "vector": f"vectors {self.context_shape}"}[self.context_kind]
        return f"PreferenceDataset(n={len(self)}, output_shape={self.output_shape}, context={ctx})"

    # ----------------------------------------------------------------------------------------- views
    def digest(self) -> str:
        """A SHA-1 of the shapes, dtypes and bytes of every tensor: identifies the data behind a checkpoint."""
        import hashlib

        h = hashlib.sha1()
        for t in (self.chosen, self.rejected, self.context):
            if t is None:
                h.update(b"none")
                continue
            a = _numpy(t, exact=True)
            h.update(f"{t.dtype}{a.shape}".encode())
            h.update(memoryview(a).cast("B"))
        return h.hexdigest()

    def to(self, device: torch.device | str) -> "PreferenceDataset":
        """A copy on ``device`` (no validation repeated)."""
        return self._new(self.chosen.to(device), self.rejected.to(device),
                         None if self.context is None else self.context.to(device))

    def subset(self, index: Any) -> "PreferenceDataset":
        """The rows selected by ``index`` (indices, a slice or a boolean mask)."""
        chosen = self.chosen[index]
        if chosen.shape[0] == 0:
            raise InvalidInputError("index selects no rows; a subset must keep at least one")
        return self._new(chosen, self.rejected[index], None if self.context is None else self.context[index])

    def split(self, test_fraction: float, seed: int = 0) -> tuple["PreferenceDataset", "PreferenceDataset"]:
        """Random (train, test) split; ``test_fraction`` in (0, 1), each side keeps at least one row."""
        if not 0.0 < float(test_fraction) < 1.0:
            raise InvalidInputError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        n = len(self)
        if n < 2:
            raise InvalidInputError("a data set of one row cannot be split")
        n_test = min(max(1, round(n * float(test_fraction))), n - 1)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return self.subset(perm[n_test:]), self.subset(perm[:n_test])

    @classmethod
    def _new(cls, chosen: Tensor, rejected: Tensor, context: Optional[Tensor]) -> "PreferenceDataset":
        ds = cls.__new__(cls)
        ds.chosen, ds.rejected, ds.context = chosen, rejected, context
        ds.memory_mapped = False  # a subset or a copy is a tensor in memory
        return ds

    # ----------------------------------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``.npz`` or ``.parquet`` (by suffix), atomically: an existing file survives a failed write."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".npz":
            arrays = {"chosen": _numpy(self.chosen), "rejected": _numpy(self.rejected)}
            if self.context is not None:
                arrays["context"] = _numpy(self.context)
            with atomic_file(path) as f:
                np.savez(f, **arrays)
        elif suffix == ".parquet":
            _save_parquet(self, path)
        elif suffix == "":
            if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / "chosen.npy").exists())):
                raise InvalidInputError(f"{str(path)!r} exists and is not a data set directory; refusing to replace it")
            with atomic_dir(path) as tmp:
                for name, t in (("chosen", self.chosen), ("rejected", self.rejected), ("context", self.context)):
                    if t is not None:
                        np.save(tmp / f"{name}.npy", _numpy(t))
        else:
            raise InvalidInputError(f"path must end in .npz or .parquet, or name a directory for .npy files, got "
                                    f"{str(path)!r}")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PreferenceDataset":
        """Read a data set written by :meth:`save`, or any ``.npz`` with arrays chosen/rejected[/context], or a
        ``.parquet`` table with list columns chosen/rejected and an optional context column."""
        path = Path(path)
        if not path.exists():
            raise MissingFileError(f"no such file: {str(path)!r}")
        if path.is_dir():
            if (path / "chosen.npy").exists():
                return _load_npy_dir(cls, path)
            raise InvalidInputError(f"{str(path)!r} is a directory without chosen.npy; expected a .npz or .parquet "
                                    "file, or a directory of .npy files")
        suffix = path.suffix.lower()
        if suffix == ".npz":
            arrays = read_npz(path, required=("chosen", "rejected"), optional=("context",))
            return cls(arrays["chosen"], arrays["rejected"], arrays.get("context"))
        if suffix == ".parquet":
            return _load_parquet(cls, path)
        raise InvalidInputError(f"path must end in .npz or .parquet, got {str(path)!r}")

    @classmethod
    def from_dict(cls, columns: Mapping[str, Any]) -> "PreferenceDataset":
        """Build from columns ``chosen``, ``rejected`` and optional ``context``, e.g. a Hugging Face
        ``datasets.Dataset`` as ``PreferenceDataset.from_dict(hf_dataset.with_format("numpy")[:])``."""
        missing = [k for k in ("chosen", "rejected") if k not in columns]
        if missing:
            raise InvalidInputError(f"columns must include {missing}; got {sorted(columns)}")
        return cls(np.asarray(columns["chosen"]), np.asarray(columns["rejected"]),
                   None if columns.get("context") is None else np.asarray(columns["context"]))


    @classmethod
    def from_text_pairs(cls, rows: Any, codec: Any, batch_size: int = 64,
                        progress: bool = False) -> "PreferenceDataset":
        """Encode text preferences into a data set: ``chosen`` and ``rejected`` become ``codec.encode(...)`` vectors
        ``(N, d)`` and the prompts, if the rows have them, the contexts ``(N, d_prompt)``.

        Args:
            rows: TRL-style rows (``prompt``/``chosen``/``rejected``, strings or chat messages; see
                :mod:`pfm.text_pairs`), a JSONL file of them, or :class:`pfm.text_pairs.TextPair` objects.
            codec: anything with ``encode(list[str]) -> (N, d)`` tensor, e.g. :class:`pfm.text.codec.TextCodec`.
        """
        from .text_pairs import read_text_pairs, text_pairs

        if not callable(getattr(codec, "encode", None)):
            raise InvalidTypeError(f"codec must have an encode(texts) method, got {type(codec).__name__}")
        pairs = read_text_pairs(rows) if isinstance(rows, (str, os.PathLike)) else text_pairs(rows)

        def encode(texts: list[str], name: str) -> Tensor:
            try:
                z = codec.encode(texts, batch_size=batch_size, progress=progress)
            except TypeError:  # a codec without those options
                z = codec.encode(texts)
            z = V.as_float(z, f"codec.encode({name})")
            if z.dim() < 2 or z.shape[0] != len(texts):
                raise InvalidInputError(f"codec.encode({name}) must return ({len(texts)}, d), got {V.shape_of(z)}")
            return z

        chosen = encode([p.chosen for p in pairs], "chosen")
        rejected = encode([p.rejected for p in pairs], "rejected")
        context = encode([p.prompt for p in pairs], "prompt") if pairs[0].prompt is not None else None
        return cls(chosen, rejected, context)


NPZ_NOT_ARRAYS = "neither a zip archive of arrays nor a NumPy array; pfm never unpickles files"

# deflate packs at most about 1032 bytes into one; an entry that says it holds more than this per byte it stores lies
_MAX_DEFLATE_RATIO = 1100


def _open_npz(path: Path) -> zipfile.ZipFile:
    if not path.exists():
        raise MissingFileError(f"no such file: {str(path)!r}")
    if path.is_dir():
        raise FlowFileError(f"{str(path)!r} is a directory, not a .npz file")
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        with open(path, "rb") as f:
            head = f.read(6)
        why = ("a single .npy array, not a .npz archive of named arrays; write it with np.savez(path, y=array)"
               if head == b"\x93NUMPY" else f"BadZipFile: {exc}" if head.startswith(b"PK") else NPZ_NOT_ARRAYS)
        raise FlowFileError(f"{str(path)!r} is not a readable .npz file ({why})") from None
    except OSError as exc:
        raise FlowFileError(f"{str(path)!r} is not a readable .npz file ({type(exc).__name__}: {exc})") from None


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
        raise FlowFileError(f"{bad} claims {info.file_size:,} bytes from {info.compress_size:,} compressed; the "
                            "file is damaged or crafted")
    try:
        with z.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            if dtype.hasobject:
                raise FlowFileError(f"{bad} holds Python objects ({dtype}); pfm never unpickles files")
            nbytes = math.prod(shape) * dtype.itemsize
            header = f.tell()
            if nbytes != info.file_size - header:
                raise FlowFileError(f"{bad} declares shape {tuple(shape)} ({nbytes:,} bytes) but its entry holds "
                                    f"{info.file_size - header:,} bytes; the file is damaged or crafted")
            V.check_allocation(nbytes, bad)
            arr = np.empty(shape, dtype, order="F" if fortran else "C")
            view, got = memoryview(arr.reshape(-1, order="A")).cast("B"), 0
            while got < nbytes:  # straight into the array: no second copy of it
                k = f.readinto(view[got:])
                if not k:
                    raise EOFError(f"the entry ended after {got:,} of {nbytes:,} bytes")
                got += k
    except (FlowFileError, InvalidInputError):
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as exc:
        raise FlowFileError(f"{bad} is not readable ({type(exc).__name__}: {exc})") from None
    return arr


def _numpy(t: Tensor, exact: bool = False) -> np.ndarray:
    """A tensor's values as a NumPy array; bfloat16, which NumPy lacks, as float32 (exactly: every bfloat16 is a
    float32), or with ``exact`` as its raw 16-bit patterns."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy() if exact else t.float().numpy()
    return t.numpy()


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
            raise FlowFileError(f"{str(path)!r} lacks array(s) {missing}; it holds {sorted(names)}")
        wanted = list(required) + [k for k in (names if optional is None else optional)
                                   if k in names and k not in required]
        return {k: _read_member(z, path, k) for k in wanted}


def _load_npy_dir(cls: type[PreferenceDataset], path: Path) -> PreferenceDataset:
    """``chosen.npy``, ``rejected.npy`` and an optional ``context.npy``, memory-mapped: rows are read from disk when
    a batch needs them, so the data may be larger than memory (copy-on-write maps; the files are never written)."""
    arrays = {}
    for name in ("chosen", "rejected", "context"):
        f = path / f"{name}.npy"
        if not f.exists():
            if name == "context":
                continue
            raise FlowFileError(f"{str(path)!r} holds chosen.npy but no {name}.npy")
        try:
            arrays[name] = np.load(f, mmap_mode="c", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise FlowFileError(f"{str(f)!r} is not a readable .npy file ({exc})") from None
    ds = cls(arrays["chosen"], arrays["rejected"], arrays.get("context"))
    ds.memory_mapped = True
    return ds


def _save_parquet(ds: PreferenceDataset, path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("writing parquet needs pyarrow: pip install 'pfm[parquet]'") from None

    def fixed_list(t: Tensor) -> "pa.Array":
        flat = _numpy(t.reshape(t.shape[0], -1))
        return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])

    cols = {"chosen": fixed_list(ds.chosen), "rejected": fixed_list(ds.rejected)}
    meta = {"format_version": FORMAT_VERSION, "output_shape": list(ds.output_shape)}
    if ds.context is not None:
        if ds.context_kind == "label":
            cols["context"] = pa.array(_numpy(ds.context))
        else:
            cols["context"] = fixed_list(ds.context)
            meta["context_shape"] = list(ds.context_shape)
    table = pa.table(cols).replace_schema_metadata({"pfm": json.dumps(meta)})
    with atomic_file(path) as f:
        pq.write_table(table, f)


def _load_parquet(cls: type[PreferenceDataset], path: Path) -> PreferenceDataset:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("reading parquet needs pyarrow: pip install 'pfm[parquet]'") from None
    try:
        schema = pq.read_schema(path)
        missing = [k for k in ("chosen", "rejected") if k not in schema.names]
        if missing:
            raise FlowFileError(f"{str(path)!r} lacks column(s) {missing}; it has {schema.names}")
        wanted = [k for k in ("chosen", "rejected", "context") if k in schema.names]  # the others are never read
        table = pq.read_table(path, columns=wanted)
    except (pa.ArrowException, OSError) as exc:
        raise FlowFileError(f"{str(path)!r} is not a readable parquet file ({exc})") from None
    if table.num_rows == 0:
        raise FlowFileError(f"{str(path)!r} has no rows; at least one preference pair is needed")
    raw = (schema.metadata or {}).get(b"pfm", b"{}")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FlowFileError(f"the pfm metadata of {str(path)!r} is not valid JSON") from None
    if not isinstance(meta, dict):
        raise FlowFileError(f"the pfm metadata of {str(path)!r} must be a JSON object, got {type(meta).__name__}")
    for key in ("output_shape", "context_shape"):
        try:
            V.check_shape(meta.get(key), f"its {key}", allow_none=True)
        except InvalidInputError as exc:
            raise FlowFileError(f"the pfm metadata of {str(path)!r} is wrong: {exc}") from None

    def column(name: str, shape: list[int] | None) -> np.ndarray:
        col = table.column(name).combine_chunks()
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
            lengths = np.asarray(col.value_lengths())
            if len(lengths) and (lengths != lengths[0]).any():
                raise FlowFileError(f"column {name!r} of {str(path)!r} holds lists of different lengths; "
                                    "every row must have the same size")
            if col.null_count:
                raise FlowFileError(f"column {name!r} of {str(path)!r} has {col.null_count} empty (null) row(s)")
            flat = np.asarray(col.flatten())
            width = int(lengths[0]) if len(lengths) else 0
            if shape and math.prod(shape) != width:
                raise FlowFileError(f"column {name!r} of {str(path)!r} holds lists of {width} values, but its pfm "
                                    f"metadata says shape {list(shape)} ({math.prod(shape)} values)")
            arr = flat.reshape(len(col), width)
            if shape:
                arr = arr.reshape(len(col), *shape)
            return arr
        if pa.types.is_nested(col.type):
            raise FlowFileError(f"column {name!r} of {str(path)!r} has type {col.type}; expected lists of numbers")
        return col.to_numpy(zero_copy_only=False)

    context = None
    if "context" in table.column_names:
        context = column("context", meta.get("context_shape"))
    shape = meta.get("output_shape")
    return cls(column("chosen", shape), column("rejected", shape), context)


# --------------------------------------------------------------------------------------------- collection
Reference = Callable[[Optional[Tensor], int], Tensor]
"""A black-box sampler: ``reference(context, n) -> (n, *shape)``, one sample per row of ``context`` (``n`` rows),
or ``n`` unconditional samples when ``context`` is None."""


def _annotator_kind(annotator: Callable) -> str:
    try:
        params = [p for p in inspect.signature(annotator).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        params = []
    if len(params) == 2:
        return "score"
    if len(params) == 3:
        return "pairwise"
    raise InvalidInputError("cannot tell whether annotator is a score function score(y, context) or a pairwise "
                            "one prefer(y_a, y_b, context); pass kind='score' or kind='pairwise'")


@torch.no_grad()
def collect_preferences(
    reference: Reference,
    annotator: Callable,
    contexts: Any = None,
    pairs_per_context: int = 1,
    *,
    n: int | None = None,
    kind: Literal["auto", "score", "pairwise"] = "auto",
    batch_size: int = 4096,
    drop_ties: bool = True,
    seed: int | None = None,
    progress: bool = False,
) -> PreferenceDataset:
    """Sample two outputs per context from ``reference`` and let ``annotator`` say which is preferred.

    Args:
        reference: black-box sampler ``reference(context, n) -> (n, *shape)`` (never differentiated).
        annotator: a score ``score(y, context) -> (n,)`` (higher preferred) or a pairwise judge
            ``prefer(y_a, y_b, context) -> (n,)`` returning booleans (True: y_a preferred) or probabilities in
            [0, 1] that y_a is preferred, which are sampled.
        contexts: ``(M,)`` labels or ``(M, *cshape)`` contexts; ``None`` for an unconditional reference (give ``n``).
        pairs_per_context: pairs drawn for each context row.
        n: number of pairs when ``contexts`` is None.
        kind: ``"score"``, ``"pairwise"`` or ``"auto"`` (decided by the annotator's number of arguments).
        batch_size: contexts handed to the reference and annotator at once.
        drop_ties: drop pairs whose scores are equal (score annotators only).
        seed: seeds the sampling of probabilistic pairwise judgements.
    """
    if not callable(reference):
        raise InvalidTypeError(f"reference must be callable as reference(context, n), got {type(reference).__name__}")
    if not callable(annotator):
        raise InvalidTypeError(f"annotator must be callable, got {type(annotator).__name__}")
    V.check_positive_int(pairs_per_context, "pairs_per_context")
    V.check_positive_int(batch_size, "batch_size")
    V.check_choice(kind, "kind", ("auto", "score", "pairwise"))
    kind = _annotator_kind(annotator) if kind == "auto" else kind
    if contexts is None:
        if n is None:
            raise InvalidInputError("n (the number of pairs) is required when contexts is None")
        V.check_positive_int(n, "n")
        ctx, total = None, int(n)
    else:
        ctx = as_context(contexts, "contexts")
        V.check_nonempty(ctx, "contexts")
        ctx = ctx.repeat_interleave(pairs_per_context, dim=0)
        total = ctx.shape[0]
    gen = torch.Generator().manual_seed(seed) if seed is not None else None

    from tqdm.auto import tqdm

    chosen, rejected, kept_ctx = [], [], []
    with tqdm(total=total, desc="collecting preferences", unit="pair", disable=not progress) as bar:
        for start in range(0, total, batch_size):
            m = min(batch_size, total - start)
            c = None if ctx is None else ctx[start:start + m]
            a = _draw(reference, c, m)
            b = _draw(reference, c, m)
            if a.shape != b.shape:
                raise InvalidInputError(f"reference returned shapes {V.shape_of(a)} and {V.shape_of(b)} for the "
                                        "same contexts; it must return a fixed shape")
            if kind == "score":
                sa, sb = _score(annotator, a, c, m), _score(annotator, b, c, m)
                a_wins = sa > sb
                keep = sa != sb if drop_ties else torch.ones_like(a_wins)
            else:
                p = _as_vector(annotator(a, b, c), "annotator(y_a, y_b, context)", m)
                if p.dtype == torch.bool:
                    a_wins = p
                else:
                    p = p.float().cpu()
                    if bool(((p < 0) | (p > 1)).any()):
                        raise InvalidInputError("a pairwise annotator must return booleans or probabilities in "
                                                f"[0, 1]; got values in [{float(p.min())}, {float(p.max())}]")
                    a_wins = (torch.rand(m, generator=gen) < p).to(a.device)
                keep = torch.ones_like(a_wins)
            keep, a_wins = keep.to(a.device), a_wins.to(a.device)
            mask = a_wins.view(-1, *([1] * (a.dim() - 1)))
            chosen.append(torch.where(mask, a, b)[keep])
            rejected.append(torch.where(mask, b, a)[keep])
            if c is not None:
                kept_ctx.append(c[keep.to(c.device)])
            bar.update(m)
    chosen_t, rejected_t = torch.cat(chosen), torch.cat(rejected)
    if chosen_t.shape[0] == 0:
        raise InvalidInputError("every pair was a tie: the annotator never preferred one output to the other")
    return PreferenceDataset(chosen_t, rejected_t, None if ctx is None else torch.cat(kept_ctx))


def _draw(reference: Reference, c: Optional[Tensor], m: int) -> Tensor:
    y = reference(c, m)
    y = V.as_float(y, "reference(context, n)")
    if y.dim() == 0 or y.shape[0] != m:
        raise InvalidInputError(f"reference(context, n) must return n={m} rows, got shape {V.shape_of(y)}")
    V.check_finite(y, "reference(context, n)")
    return y


def _as_vector(s: Any, name: str, m: int) -> Tensor:
    s = V.as_tensor(s, name)
    if s.dim() == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.shape != (m,):
        raise InvalidInputError(f"{name} must return shape ({m},), got {V.shape_of(s)}")
    return s


def _score(annotator: Callable, y: Tensor, c: Optional[Tensor], m: int) -> Tensor:
    s = _as_vector(annotator(y, c), "annotator(y, context)", m)
    s = V.as_float(s, "annotator(y, context)")
    V.check_finite(s, "annotator(y, context)")
    return s
