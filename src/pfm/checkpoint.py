"""Training checkpoints: everything :func:`pfm.optimize` needs to go on exactly where a run stopped.

One file, ``checkpoint.pt`` in a directory: the module's and the optimizer's state, the EMA, the step, every rank's
noise generator, and the history so far (the batch order is a function of the seed and the step, so it is not
stored), with a fingerprint of the run (data size, batch size, seed, parameter shapes, ...) so that a checkpoint of
another run is refused. It is written
with ``torch.save`` to a temporary file, fsynced and renamed over the old one, so a crash mid-write leaves the previous
checkpoint whole; it is read with ``torch.load(weights_only=True)``, which never unpickles code.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch

from ._io import atomic_file
from .errors import FlowFileError, InvalidInputError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "pfm.checkpoint"
FORMAT_VERSION = 1


def checkpoint_path(directory: str | os.PathLike) -> Path:
    return Path(directory) / CHECKPOINT_NAME


def save_checkpoint(directory: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists and dicts of them) atomically into ``directory``."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InvalidInputError(f"checkpoint_dir {str(directory)!r} exists and is not a directory")
    path = checkpoint_path(directory)
    with atomic_file(path, "wb") as f:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, f)
    return path


def load_checkpoint(directory: str | os.PathLike) -> Optional[dict[str, Any]]:
    """The checkpoint in ``directory``, or None if there is none; a corrupt or foreign file raises
    :class:`FlowFileError` naming it."""
    path = checkpoint_path(directory)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FlowFileError(f"{str(path)!r} is not a readable checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FlowFileError(f"{str(path)!r} is not a pfm training checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise FlowFileError(f"{str(path)!r} was written in checkpoint format {state.get('format_version')}; this "
                            f"version of pfm reads format {FORMAT_VERSION}")
    return state


def check_fingerprint(path: str | os.PathLike, found: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse to resume from a checkpoint written by a different run."""
    diffs = [f"{k}: checkpoint {found.get(k)!r}, this run {v!r}" for k, v in expected.items() if found.get(k) != v]
    if diffs:
        raise InvalidInputError(f"the checkpoint in {str(path)!r} belongs to another run ({'; '.join(diffs[:3])}); "
                                "resume with the same data and settings, or use another checkpoint_dir")
