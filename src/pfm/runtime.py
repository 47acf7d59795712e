"""Where pfm keeps its files, and seeding."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from .errors import InvalidInputError


def data_dir(create: bool = True) -> Path:
    """The data directory for trained models and caches: ``$PFM_DATA_DIR``, else ``~/.cache/pfm``."""
    path = Path(os.environ.get("PFM_DATA_DIR") or Path.home() / ".cache" / "pfm").expanduser()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (network initialisation draws from torch's).

    Training itself draws from a generator of its own, seeded by ``fit(seed=...)``.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    torch.manual_seed(int(seed))
