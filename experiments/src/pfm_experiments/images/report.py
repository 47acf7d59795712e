"""Tables and figures of the image experiment, from the per-seed records of :func:`.experiment.run_one`
(statistics: :mod:`pfm_experiments.stats`: mean ± sample std over seeds, paired per-seed differences with a 95% CI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..cost import matched_best_of_n
from ..cost_figure import cost_grid
from ..cost_table import cost_table
from ..figures import pyplot, save_figure
from ..rows import SOURCE_REFERENCE
from ..stats import best, compare, comparison_table, describe, format_mean_std

PAPER_MNIST = {"reference": 0.8389, "rejected (y-)": 0.3951, "preferred (y+)": 0.9976, "PFM": 0.9841,
               "PFM x 2": 0.9996, "RLHF": 0.9171, "DPO": 0.8936, "DPO, small beta": 0.5397}
"""The paper's MNIST numbers (mean annotator probability of the label); no trivial-shift row there."""

METRICS = (("annotator", "annotator prob."), ("judge_accuracy", "judge acc."), ("judge_probability", "judge prob."),
           ("frechet", "Fréchet dist."), ("diversity", "diversity"), ("out_of_range", "pixels out of [0, 1]"))
BASELINES = ("trivial shift", "RLHF", "RLHF, beta by implicit acc.", "DPO", "DPO, beta by implicit acc.",
             "DPO, small beta")
COMPARED = {"annotator": "annotator prob.", "judge_accuracy": "judge acc.", "frechet": "Fréchet dist."}


def _metric(record: dict[str, Any], method: str, metric: str) -> Any:
    return record["methods"][method]["metrics"].get(metric)


def _is_selection(entry: dict[str, Any]) -> bool:
    """A best-of-n or PFM-select row (it has an ``n``)."""
    return "n" in entry


def summarize(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"methods": {method: {metric: describe(...), "beta": [...], "cost": {...}, "seconds_per_output":
    describe(...)}}, "comparisons": [...], "cost_comparisons": [...]}``: every metric over seeds, and PFM and
    PFM x 2 paired against the reference, against the baseline with the best mean annotator probability and (PFM)
    against the trivial shift; the ``source="reference"`` flow against PFM and the reference; PFM against best-of-n
    at equal cost (:func:`cost_comparisons`). Runs made before issue 27 have no cost and no best-of-n rows; their
    summary has none either."""
    methods: dict[str, dict[str, Any]] = {}
    for method in parts[0]["methods"]:
        rows = [p["methods"][method] for p in parts]
        methods[method] = {m: describe([r["metrics"][m] for r in rows]) for m, _ in METRICS}
        if "beta" in rows[0]:
            methods[method]["beta"] = [r["beta"] for r in rows]
        for key in ("n", "scorer"):
            if key in rows[0]:
                methods[method][key] = rows[0][key]
        if all("cost" in r for r in rows):  # the counts are the same in every seed; the wall time varies
            methods[method]["cost"] = {k: v for k, v in rows[0]["cost"].items() if k != "seconds_per_output"}
            methods[method]["seconds_per_output"] = describe([r["cost"]["seconds_per_output"] for r in rows])
    baseline = best({n: methods[n]["annotator"] for n in BASELINES if n in methods}, BASELINES)
    pairs = [("PFM", "reference")] + ([("PFM", baseline), ("PFM x 2", baseline)] if baseline else [])
    if baseline != "trivial shift" and "trivial shift" in methods:  # the cheapest baseline, always beside
        pairs.append(("PFM", "trivial shift"))
    if SOURCE_REFERENCE in methods:
        pairs += [(SOURCE_REFERENCE, "PFM"), (SOURCE_REFERENCE, "reference")]
    return {"methods": methods, "comparisons": compare(parts, pairs, COMPARED, _metric),
            "cost_comparisons": cost_comparisons(parts, methods)}


def cost_comparisons(parts: list[dict[str, Any]], methods: dict[str, Any]) -> list[dict[str, Any]]:
    """PFM, PFM x 2 and the reference-source flow against best-of-n by the reward model at the n of nearest cost
    (:func:`pfm_experiments.cost.matched_best_of_n`): in calls per output (a solve counted as one call; ties to the
    larger n) and in measured wall time per output (mean over seeds). Paired per-seed differences, each row with
    ``matched_by``."""
    return [{**compare(parts, [(name, row)], COMPARED, _metric)[0], "matched_by": how}
            for name in ("PFM", "PFM x 2", SOURCE_REFERENCE) for row, how in matched_best_of_n(methods, name)]


def table(summary: dict[str, Any], dataset: str) -> str:
    """Every method's metrics but the best-of-n and PFM-select rows (:func:`selection_table`), mean ± sample
    std over seeds (the mean alone with one seed)."""
    paper = dataset == "mnist"
    head = "| method | " + " | ".join(label for _, label in METRICS) + (" | paper: annotator prob. |" if paper
                                                                          else " |")
    lines = [head, "|" + "---|" * (len(METRICS) + 1 + paper)]
    for method, row in summary["methods"].items():
        if _is_selection(row):
            continue
        cells = [format_mean_std(row[m], ".1f" if m == "frechet" else ".3f") for m, _ in METRICS]
        name = method + (f" (beta {', '.join(f'{b:g}' for b in row['beta'])})" if "beta" in row else "")
        lines.append(f"| {name} | " + " | ".join(cells) + (f" | {PAPER_MNIST.get(method, float('nan')):.4f} |"
                                                           if paper else " |"))
    return "\n".join(lines).replace("| nan |", "| - |")


SELECTION_METRICS = (("annotator", "annotator prob."), ("judge_accuracy", "judge acc."), ("frechet", "Fréchet dist."),
                     ("diversity", "diversity"))


def selection_table(summary: dict[str, Any]) -> str:
    """Quality against inference cost (:func:`pfm_experiments.cost_table.cost_table`): every method with a cost
    (best-of-n by both scorers, PFM-select, PFM, RLHF, ...), its cost per output in model calls and solves and its
    measured ms per output, and PFM against best-of-n at equal cost. Empty for runs without costs (before issue
    27)."""
    return cost_table(
        summary, SELECTION_METRICS,
        "mean ± sample std over seeds; cost per output in reference-model samples (ref), fine-tuned policy calls and "
        "flow solves, and the measured wall time of drawing and scoring or solving all test outputs at once, divided "
        "by their number; the annotator is the labeller of the pairs, so best-of-n by it is an oracle that no "
        "pair-trained method gets, and its annotator score is what it maximizes: read the judge",
        "paired per-seed differences, 95% CI; best-of-n by RLHF's reward model at the n nearest in calls per output, "
        "a flow solve counted as one call, or nearest in measured wall time", COMPARED, specs={"frechet": ".1f"})


POINTS = (("reference", "o", "k"), ("PFM", "D", "tab:red"), ("PFM x 2", "X", "tab:red"),
          (SOURCE_REFERENCE, "v", "tab:cyan"), ("trivial shift", "P", "tab:olive"), ("RLHF", "s", "tab:purple"),
          ("DPO", "^", "tab:brown"))
CURVES = (("best-of-n (annotator: the oracle)", "annotator", "tab:green", "o"),
          ("best-of-n (RLHF's reward model)", "reward model", "tab:blue", "s"),
          ("PFM-select (n candidates, 1 solve)", None, "tab:orange", "v"))


def cost_figure(summary: dict[str, Any], path: Path, title: str) -> None:
    """The annotator's probability and the independent judge's accuracy (mean ± sample std over seeds) against
    model calls per output (a policy call counted as one) and against measured wall time per output, log x:
    best-of-n by either scorer and PFM-select as curves over n; PFM, PFM x 2, the trivial shift, RLHF and DPO as
    points (:func:`pfm_experiments.cost_figure.cost_grid`). Nothing is written for runs without costs."""
    m = summary["methods"]
    cost_grid([(m, "annotator", "annotator prob. (what the pairs' labeller scores)", None),
               (m, "judge_accuracy", "independent judge's accuracy", None)], path, title, CURVES, POINTS)


def comparisons_table(summary: dict[str, Any]) -> str:
    """The paired per-seed differences of :func:`summarize`."""
    return comparison_table(summary["comparisons"], COMPARED, specs={"frechet": ".1f"})


def sweep_table(parts: list[dict[str, Any]]) -> str:
    """Every beta of the RLHF and DPO sweeps (first seed): the two selection criteria, RLHF's learned reward and
    the test metrics."""
    lines = ["| method | beta | held-out implicit acc. | validation annotator prob. | learned reward | "
             "annotator prob. | judge acc. | Fréchet dist. | diversity |", "|---|---|---|---|---|---|---|---|---|"]
    for method in ("RLHF", "DPO"):
        for r in parts[0]["methods"][method]["sweep"]:
            reward = f"{r['learned_reward']:.2f}" if "learned_reward" in r else "-"
            lines.append(f"| {method} | {r['beta']:g} | {r['heldout_accuracy']:.3f} | {r['validation']:.3f} | "
                         f"{reward} | {r['annotator']:.3f} | {r['judge_accuracy']:.3f} | {r['frechet']:.1f} | "
                         f"{r['diversity']:.3f} |")
    return "\n".join(lines)


def grids(samples: dict[str, np.ndarray], labels: np.ndarray, classes: tuple[str, ...], path: Path,
          title: str) -> None:
    """A 10x10 grid per method (one row per label, the first ten samples of each), clipped to [0, 1]."""
    plt = pyplot()
    names = list(samples)
    cols = 3
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows))
    k = len(classes)
    for ax, name in zip(np.ravel(axes), names):
        x = np.clip(samples[name], 0, 1).reshape(len(labels), 28, 28)
        tiles = np.ones((k * 29, 10 * 29))
        for c in range(k):
            picks = np.nonzero(labels == c)[0][:10]
            for j, i in enumerate(picks):
                tiles[c * 29:c * 29 + 28, j * 29:j * 29 + 28] = x[i]
        ax.imshow(tiles, cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    for ax in np.ravel(axes)[len(names):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def curve_figure(parts: list[dict[str, Any]], path: Path, title: str) -> None:
    """RLHF's learned reward beside the annotator's and the judge's scores along its training (every seed)."""
    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(15, 3.8))
    for p in parts:
        sweep = p["methods"]["RLHF"]["sweep"]
        ax[2].plot([r["learned_reward"] for r in sweep], [r["judge_probability"] for r in sweep], "o-",
                   label=f"seed {p['seed']}")
        if p is parts[0]:
            for r in sweep:
                ax[2].annotate(f"{r['beta']:g}", (r["learned_reward"], r["judge_probability"]), fontsize=7)
        c = p["methods"]["RLHF"]["curve"]
        steps = [r["step"] for r in c]
        ax[0].plot(steps, [r["learned_reward"] for r in c], "o-", label=f"seed {p['seed']}")
        ax[1].plot(steps, [r["judge_probability"] for r in c], "o-", label=f"judge, seed {p['seed']}")
        ax[1].plot(steps, [r["annotator"] for r in c], "x--", label=f"annotator, seed {p['seed']}")
    ax[0].set_xlabel("RLHF step")
    ax[0].set_ylabel("learned reward of its samples")
    ax[1].set_xlabel("RLHF step")
    ax[1].set_ylabel("mean probability of the label")
    ax[2].set_xlabel("learned reward of its samples")
    ax[2].set_ylabel("judge's probability of the label")
    ax[2].set_title("RLHF across beta (labels), end of training", fontsize=8)
    for a in ax:
        a.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
