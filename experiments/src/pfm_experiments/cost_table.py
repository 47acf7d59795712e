"""The quality-against-cost table, one way for every experiment that has best-of-n rows (images, text).

:func:`cost_table` ``(summary, metrics, intro, matching, compared, specs, ms_spec)``: Markdown, one row per method
with a cost (best-of-n by both scorers, PFM-select, PFM, the fine-tuned baselines, ...): its metrics (mean ± sample
std over seeds), its cost per output (:meth:`pfm_experiments.cost.Cost.label`) and its measured ms per output; then
PFM against best-of-n at equal cost (``summary["cost_comparisons"]``, paired per-seed differences). The drawing of
the same numbers is :func:`pfm_experiments.cost_figure.cost_grid`.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from .cost import Cost
from .stats import comparison_table, format_mean_std


def cost_table(summary: Mapping[str, Any], metrics: Sequence[tuple[str, str]], intro: str, matching: str,
               compared: Mapping[str, str], specs: Optional[Mapping[str, str]] = None, ms_spec: str = ".3g") -> str:
    """The table of the module docstring. ``summary``: ``{"methods": {name: {metric: {"mean", "std"}, "cost":
    Cost.as_dict(), "seconds_per_output": {"mean", "std"}, ...}}, "cost_comparisons": [...]}``; ``metrics``:
    ``[(metric, column label), ...]`` (a method without a metric gets an empty cell); ``intro``: the caption of
    the table, ``matching``: that of the equal-cost comparisons (each inside the bold title's parentheses);
    ``compared``: ``{metric: label}`` of the comparisons; ``specs``: ``{metric: format}`` (else ``.3f``) of both
    tables; ``ms_spec``: the format of the ms per output. Empty for runs without costs."""
    specs = dict(specs or {})
    methods = {n: e for n, e in summary["methods"].items() if "cost" in e}
    if not methods:
        return ""
    lines = [f"**Quality against inference cost** ({intro})", "",
             "| method | " + " | ".join(label for _, label in metrics) + " | cost per output | ms per output |",
             "|---|" + "---|" * (len(metrics) + 2)]
    for name, e in methods.items():
        cells = [format_mean_std(e[m], specs.get(m, ".3f")) if m in e else "" for m, _ in metrics]
        ms = format_mean_std({k: (None if e["seconds_per_output"][k] is None else 1e3 * e["seconds_per_output"][k])
                              for k in ("mean", "std")}, ms_spec)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {Cost.from_dict(e['cost']).label()} | {ms} |")
    if summary.get("cost_comparisons"):
        shown = [{**r, "baseline": f"{r['baseline']}, nearest in {r['matched_by']}"}
                 for r in summary["cost_comparisons"]]
        lines += ["", f"**PFM against best-of-n at equal cost** ({matching})", "",
                  comparison_table(shown, compared, specs=specs)]
    return "\n".join(lines)
