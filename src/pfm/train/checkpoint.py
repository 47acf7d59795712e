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
from pathlib import Path
from typing import Any, Optional

import torch

from ..io import atomic_file, check_regular_file
from ..errors import FileFormatError, InvalidInputError

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
    :class:`FileFormatError` naming it."""
    path = checkpoint_path(directory)
    if not path.exists():
        return None
    check_regular_file(path, "checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # whatever torch's reader trips on (KeyError, RuntimeError, UnpicklingError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileFormatError(f"{str(path)!r} is not a readable checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FileFormatError(f"{str(path)!r} is not a pfm training checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise FileFormatError(f"{str(path)!r} was written in checkpoint format {state.get('format_version')}; this "
                            f"version of pfm reads format {FORMAT_VERSION}")
    kinds = {"run": dict, "step": int, "module": dict, "optimizer": dict, "ema": dict, "gen": list, "loss": list,
             "extras": dict, "seconds": (int, float)}
    missing = [k for k in kinds if k not in state]
    if missing:
        raise FileFormatError(f"{str(path)!r} is damaged: it lacks {missing}")
    wrong = [k for k, t in kinds.items() if not isinstance(state[k], t) or isinstance(state[k], bool)]
    if wrong or state["step"] < 0 or not state["gen"]:
        raise FileFormatError(f"{str(path)!r} is damaged: {', '.join(wrong) or 'step or gen'} has the wrong type "
                            "or value")
    return state


def restore(path: str | os.PathLike, module: Any, state: dict[str, Any], what: str = "module") -> None:
    """``module.load_state_dict(state)``, a mismatch (renamed or missing keys, other shapes) being a
    :class:`FileFormatError` naming the checkpoint."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        first = next((ln for ln in lines if "size mismatch" in ln or "Missing key" in ln or "Unexpected key" in ln),
                     lines[0] if lines else type(exc).__name__)
        raise FileFormatError(f"the {what} state in {str(path)!r} does not fit this run: {first}") from None


def check_fingerprint(path: str | os.PathLike, found: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse to resume from a checkpoint written by a different run."""
    diffs = [f"{k}: checkpoint {found.get(k)!r}, this run {v!r}" for k, v in expected.items() if found.get(k) != v]
    if diffs:
        raise InvalidInputError(f"the checkpoint in {str(path)!r} belongs to another run ({'; '.join(diffs[:3])}); "
                                "resume with the same data and settings, or use another checkpoint_dir")
