"""The text experiment's figure (``results/text-scores.png``): every method's annotator score and VADER score (the
independent judge) with their spread over seeds, and PFM applied k = 0 .. K times to the reference's sentences, the
text and the vector scored (:func:`scores_figure`).

``summary`` is :func:`.report.summarize`'s (``{"methods": {name: {metric: {"mean", "std"}}}}``); ``runs`` the
per-seed records of :func:`.experiment.run_one`, whose ``"rounds"`` are ``[{"k", "score", "vader",
"score_of_vector"?}]`` (runs made before the rounds were recorded have none: the figure then has only the first two
panels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..cost import at_largest_n
from ..figures import pyplot, save_figure


def shown_methods(methods: dict[str, Any]) -> list[str]:
    """The rows the figure draws: the table's, and best-of-n and PFM-select at their largest n only."""
    ns = [e["n"] for e in methods.values() if "n" in e]
    return at_largest_n(list(methods), max(ns)) if ns else list(methods)


def rounds_curve(runs: list[dict[str, Any]], metric: str) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(k, mean, sample std)`` of ``metric`` over the seeds at every round k, or None where a seed has no rounds
    or no such metric (a user's classifier scores no vectors)."""
    if not runs or not all(r.get("rounds") and all(metric in x for x in r["rounds"]) for r in runs):
        return None
    values = np.array([[x[metric] for x in r["rounds"]] for r in runs], dtype=float)  # (seeds, K + 1)
    std = values.std(0, ddof=1) if len(runs) > 1 else np.zeros(values.shape[1])
    return np.array([x["k"] for x in runs[0]["rounds"]]), values.mean(0), std


def scores_figure(runs: list[dict[str, Any]], summary: dict[str, Any], path: Path, title: str) -> None:
    """Write the figure to ``path`` (atomically): the annotator's and VADER's mean ± sample std over seeds for every
    row of :func:`shown_methods`, and, where the runs have them, both against the number of applications of PFM."""
    methods = summary["methods"]
    names = [n for n in shown_methods(methods) if "score" in methods[n] and "vader" in methods[n]]
    curves = {label: rounds_curve(runs, metric) for metric, label in
              (("score", "annotator score of the text"), ("score_of_vector", "annotator score of the vector"),
               ("vader", "VADER of the text"))}
    curves = {label: c for label, c in curves.items() if c is not None}
    plt = pyplot()
    panels = 3 if curves else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 0.32 * len(names) + 2.2), squeeze=False)
    y = np.arange(len(names))[::-1]
    for ax, metric, label in ((axes[0][0], "score", "annotator score (the pairs' labeller)"),
                              (axes[0][1], "vader", "VADER compound (the independent judge)")):
        mean = [methods[n][metric]["mean"] for n in names]
        err = [methods[n][metric]["std"] or 0.0 for n in names]
        colors = ["tab:red" if n.startswith("PFM") else "tab:purple" if n.startswith("RLHF")
                  else "tab:blue" if n.startswith("best-of") else "tab:gray" for n in names]
        ax.barh(y, mean, xerr=err, color=colors, alpha=0.8, capsize=2)
        ax.set_yticks(y)
        ax.set_yticklabels(names if ax is axes[0][0] else [], fontsize=8)
        ax.axvline(0.0, color="k", lw=0.5)
        ax.set_xlabel(label)
        ax.grid(True, axis="x", alpha=0.3)
    if curves:
        ax = axes[0][2]
        for (label, (k, mean, std)), color in zip(curves.items(), ("tab:red", "tab:orange", "tab:green")):
            ax.errorbar(k, mean, yerr=std, marker="o", capsize=2, color=color, label=label)
        ax.set_xlabel("k, applications of PFM (0: the reference through the codec)")
        ax.set_ylabel("mean score over the test prompts")
        ax.set_xticks(list(next(iter(curves.values()))[0]))
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    save_figure(fig, path, dpi=80)
