"""Figures, written one way: :func:`pyplot` gives matplotlib's pyplot on the non-interactive Agg backend, and
:func:`save_figure` writes a figure atomically (a reader never sees half a PNG), creating the directory, and closes
it, also when writing fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pfm.io import atomic_file


def pyplot() -> Any:
    """``matplotlib.pyplot``, with the Agg backend selected (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, *, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix, PNG without one) in one step and close it."""
    plt = pyplot()
    path = Path(path)
    try:
        with atomic_file(path, "wb") as f:
            fig.savefig(f, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi)
    finally:
        plt.close(fig)
    return path
