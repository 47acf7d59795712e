"""Writing files safely: the public, stable home of the helpers pfm itself writes with.

A reader never sees a half-written file or directory, and a crash mid-write keeps the old one:

- :func:`atomic_file` ``(path, mode="wb")``: a context manager yielding an open file; on success it replaces
  ``path`` in one step (``os.replace``), on an error it leaves ``path`` as it was.
- :func:`atomic_dir` ``(path)``: a context manager yielding a fresh temporary directory beside ``path``; on success
  it takes the place of ``path`` in one step (an old directory there is swapped out, then removed).
- :func:`check_output` ``(path, name, kind=..., inputs=..., suffixes=...)``: before any work starts, check that
  ``path`` can be written without destroying an input; raises :class:`pfm.InvalidInputError` naming ``name``.
- :func:`read_json` ``(path)``: a JSON file, or a :class:`pfm.FlowFileError` saying what is wrong with it.

These names are public: they keep their signatures within a major version (the experiments in ``pfm-experiments``
write with them). The implementations live in a private module; import them from here.
"""

from ._io import atomic_dir, atomic_file, check_output, read_json

__all__ = ["atomic_file", "atomic_dir", "check_output", "read_json"]
