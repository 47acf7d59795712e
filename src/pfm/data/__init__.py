"""Preference data: the triples (context x, preferred y+, rejected y-), their files, and collecting them.

- :mod:`pfm.data.dataset`: :class:`PreferenceDataset` (validation, views, save/load by suffix) and :func:`as_context`.
- :mod:`pfm.data.collect`: :func:`collect_preferences`, two draws of a reference model judged by an annotator.
- :mod:`pfm.data.formats`: the files (``.npz``, ``.parquet``, a directory of ``.npy`` files); they read and write
  arrays, and the data set builds itself from them.
"""

from .collect import Reference, collect_preferences
from .dataset import (FORMAT_VERSION, NPZ_NOT_ARRAYS, ContextKind, PreferenceDataset, as_context, context_kind,
                      npz_keys, read_npz)

__all__ = ["FORMAT_VERSION", "NPZ_NOT_ARRAYS", "ContextKind", "PreferenceDataset", "Reference", "as_context",
           "collect_preferences", "context_kind", "npz_keys", "read_npz"]
