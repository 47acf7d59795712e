"""Figures the library draws (:meth:`pfm.StrengthCurve.figure`, :meth:`pfm.FlowReport.figure`,
``plot_trajectories``): matplotlib found or a one-line error naming the extra, and a figure written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError


def pyplot(what: str, headless: bool = False) -> Any:
    """``matplotlib.pyplot``, or :class:`pfm.errors.MissingDependencyError` naming ``what`` needs it. ``headless``
    (a figure only written to a file) selects the Agg backend unless one is already chosen."""
    try:
        import matplotlib

        if headless:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError(f"{what} needs matplotlib: pip install 'pfm[plot]'") from None
    return plt


def save_figure(fig: Any, path: Any, dpi: int = 120) -> None:
    """Write ``fig`` to ``path`` in the format its suffix names (png without one), atomically, and close it."""
    import matplotlib.pyplot as plt

    from ..io import atomic_file

    suffix = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_file(path) as f:
        fig.savefig(f, format=suffix, dpi=dpi)
    plt.close(fig)
