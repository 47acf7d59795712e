"""The files a :class:`pfm.data.PreferenceDataset` is written to and read from, one module a format.

- :mod:`pfm.data.formats.npz`: ``.npz`` archives, read without unpickling and with every array's size checked first
  (:func:`~pfm.data.formats.npz.read_npz`, :func:`~pfm.data.formats.npz.npz_keys`).
- :mod:`pfm.data.formats.parquet`: ``.parquet`` tables with list columns (needs pyarrow: ``pip install 'pfm[parquet]'``).
- :mod:`pfm.data.formats.npy_dir`: a directory of ``.npy`` files, memory-mapped on loading.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def as_numpy(t: Tensor, exact: bool = False) -> np.ndarray:
    """A tensor's values as a NumPy array; bfloat16, which NumPy lacks, as float32 (exactly: every bfloat16 is a
    float32), or with ``exact`` as its raw 16-bit patterns."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy() if exact else t.float().numpy()
    return t.numpy()
