"""Quality against inference cost, drawn one way for every experiment: on one axis (:func:`cost_panel`), best-of-n
by each scorer and PFM-select as curves over n, the other methods as points, against model calls per output or
against measured wall time per output (log x); :func:`cost_grid` a figure of such panels.

``methods`` is a summary's ``{name: {metric: {"mean", "std"}, "cost": {...}, "seconds_per_output": {"mean", ...},
"n" and "scorer" (the rows that choose among n samples)}}``; only the rows with a ``cost`` are drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from .cost import Cost
from .figures import pyplot, save_figure

Curve = tuple[str, Optional[str], str, str]
"""``(legend label, scorer, color, marker)``: the rows with an ``n`` and that ``scorer`` (None: PFM-select, the
rows with an ``n`` and no scorer), joined in order of n."""
Point = tuple[str, str, str]
"""``(method, marker, color)``: one method's point, found by its name or by its name followed by `` (``."""


def _xy(methods: dict[str, Any], names: list[str], metric: str, timed: bool,
        time_scale: float) -> tuple[list[float], list[float], list[float]]:
    x = [time_scale * methods[n]["seconds_per_output"]["mean"] if timed
         else Cost.from_dict(methods[n]["cost"]).model_calls for n in names]
    return x, [methods[n][metric]["mean"] for n in names], [methods[n][metric]["std"] or 0.0 for n in names]


def cost_panel(ax: Any, methods: dict[str, Any], metric: str, timed: bool, curves: Sequence[Curve],
               points: Sequence[Point], time_scale: float = 1e3, time_unit: str = "ms") -> None:
    """Draw ``metric`` against cost on the matplotlib axis ``ax``: model calls per output (a policy or decoder call
    counted as one) or, with ``timed``, the measured wall time per output times ``time_scale`` (in ``time_unit``)."""
    methods = {n: e for n, e in methods.items() if "cost" in e}
    for label, scorer, color, marker in curves:
        names = sorted((n for n, e in methods.items() if "n" in e and e.get("scorer") == scorer),
                       key=lambda n: methods[n]["n"])
        if names:
            x, y, err = _xy(methods, names, metric, timed, time_scale)
            ax.errorbar(x, y, yerr=err, marker=marker, color=color, label=label, capsize=2)
            for xi, yi, n in zip(x, y, names):
                ax.annotate(f"n={methods[n]['n']}", (xi, yi), fontsize=7, color=color, xytext=(3, -10),
                            textcoords="offset points")
    for prefix, marker, color in points:
        name = next((n for n in methods if n == prefix or n.startswith(prefix + " (")), None)
        if name is None or "n" in methods[name]:
            continue
        x, y, err = _xy(methods, [name], metric, timed, time_scale)
        ax.errorbar(x, y, yerr=err, marker=marker, ms=9, ls="", color=color, capsize=2,
                    label=f"{name} ({Cost.from_dict(methods[name]['cost']).label()})",
                    mfc="none" if " x " in name else color)
    ax.set_xscale("log")
    ax.set_xlabel(f"measured wall time per output [{time_unit}]" if timed
                  else "model calls per output (a policy or decoder call counts as one reference call)")
    ax.grid(True, which="both", alpha=0.3)


Row = tuple[dict[str, Any], str, str, Optional[str]]
"""``(methods, metric, y label, panel title or None)``: one row of :func:`cost_grid`."""


def cost_grid(rows: Sequence[Row], path: Path, title: str, curves: Sequence[Curve], points: Sequence[Point],
              time_scale: float = 1e3, time_unit: str = "ms") -> None:
    """One figure of :func:`cost_panel` panels: a row per ``(methods, metric, y label, title)``, against model
    calls (left) and measured wall time (right); written atomically to ``path``. Nothing is written when no row
    has a method with a cost (runs made before costs were measured)."""
    if not any("cost" in e for methods, *_ in rows for e in methods.values()):
        return
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 2, figsize=(13, 4.75 * len(rows) + 1.5), squeeze=False)
    for ax_row, (methods, metric, ylabel, panel) in zip(axes, rows):
        for ax, timed in zip(ax_row, (False, True)):
            cost_panel(ax, methods, metric, timed, curves, points, time_scale, time_unit)
            ax.set_ylabel(ylabel)
            if panel:
                ax.set_title(f"{panel} against " + ("wall time" if timed else "model calls"))
    # one legend for every panel, below them: inside a panel it hid the points it names
    handles, labels = axes[0][0].get_legend_handles_labels()
    ncol = 3
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    legend_in = 0.3 * (-(-len(labels) // ncol)) + 0.2  # inches the legend's rows take
    fig.suptitle(title)
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 0.96))
    save_figure(fig, path, dpi=80)
