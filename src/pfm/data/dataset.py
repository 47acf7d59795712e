"""Preference data: triples (context x, preferred y+, rejected y-) and their validation.

Shapes: outputs are ``(N, *shape)`` of any shape; a context is class indices ``(N,)`` (integer dtype), a tensor
``(N, *cshape)`` (float dtype; a 1-D float context becomes ``(N, 1)``), or absent.

The file formats live in :mod:`pfm.data.formats` (``.npz``, ``.parquet``, a directory of ``.npy`` files): they read
and write arrays, and the data set is built here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from .. import validate as V
from ..errors import InvalidInputError, InvalidTypeError, MissingFileError
from .formats import as_numpy
from .formats.npy_dir import load_npy_dir, save_npy_dir
from .formats.npz import NPZ_NOT_ARRAYS, load_npz, npz_keys, read_npz, save_npz
from .formats.parquet import FORMAT_VERSION, load_parquet, save_parquet

ContextKind = Optional[Literal["label", "vector"]]


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
            a = as_numpy(t, exact=True)
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
        return self.hold_out(min(max(1, round(n * float(test_fraction))), n - 1), seed)

    def hold_out(self, n_test: int, seed: int = 0) -> tuple["PreferenceDataset", "PreferenceDataset"]:
        """Random (train, test) split with ``n_test`` test rows, ``1 <= n_test < len(self)``, drawn with ``seed``."""
        V.check_int(n_test, "n_test", low=1, high=len(self) - 1)
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
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
            save_npz(path, self.chosen, self.rejected, self.context)
        elif suffix == ".parquet":
            save_parquet(path, self.chosen, self.rejected, self.context, self.context_kind == "label")
        elif suffix == "":
            save_npy_dir(path, self.chosen, self.rejected, self.context)
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
                arrays = load_npy_dir(path)
                ds = cls(arrays["chosen"], arrays["rejected"], arrays.get("context"))
                ds.memory_mapped = True
                return ds
            raise InvalidInputError(f"{str(path)!r} is a directory without chosen.npy; expected a .npz or .parquet "
                                    "file, or a directory of .npy files")
        suffix = path.suffix.lower()
        if suffix in (".npz", ".parquet"):
            arrays = (load_npz if suffix == ".npz" else load_parquet)(path)
            return cls(arrays["chosen"], arrays["rejected"], arrays.get("context"))
        raise InvalidInputError(f"path must end in .npz or .parquet, got {str(path)!r}")

    @classmethod
    def from_dict(cls, columns: Any) -> "PreferenceDataset":
        """Build from columns ``chosen``, ``rejected`` and optional ``context``: a mapping of array-likes, or a
        Hugging Face ``datasets.Dataset`` (read in NumPy format: a column of equal-length lists becomes ``(N, d)``)."""
        names = getattr(columns, "column_names", None)
        if names is not None and callable(getattr(columns, "with_format", None)):  # a datasets.Dataset
            columns = columns.with_format("numpy")
            names = list(names)
        elif isinstance(columns, Mapping):
            names = [str(k) for k in columns]
        else:
            raise InvalidTypeError(f"columns must be a mapping of arrays or a datasets.Dataset, got "
                                   f"{type(columns).__name__}")
        missing = [k for k in ("chosen", "rejected") if k not in names]
        if missing:
            raise InvalidInputError(f"columns must include {missing}; got {sorted(names)}")
        context = columns["context"] if "context" in names else None
        return cls(np.asarray(columns["chosen"]), np.asarray(columns["rejected"]),
                   None if context is None else np.asarray(context))

    @classmethod
    def from_text_pairs(cls, rows: Any, codec: Any, batch_size: int = 64,
                        progress: bool = False) -> "PreferenceDataset":
        """Encode text preferences into a data set: ``chosen`` and ``rejected`` become ``codec.encode(...)`` vectors
        ``(N, d)`` and the prompts, if the rows have them, the contexts ``(N, d_prompt)``.

        Args:
            rows: TRL-style rows (``prompt``/``chosen``/``rejected``, strings or chat messages; see
                :mod:`pfm.text.pairs`), a JSONL file of them, or :class:`pfm.text.pairs.TextPair` objects.
            codec: anything with ``encode(list[str]) -> (N, d)`` tensor, e.g. :class:`pfm.text.codec.TextCodec`.
        """
        from ..text.pairs import read_text_pairs, text_pairs

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



__all__ = ["FORMAT_VERSION", "NPZ_NOT_ARRAYS", "ContextKind", "PreferenceDataset", "as_context", "context_kind",
           "npz_keys", "read_npz"]
