"""The 2D experiment's tables, from the per-seed records of :func:`.methods.run_one` (statistics:
:mod:`pfm_experiments.stats`: mean ± sample std over seeds, paired per-seed differences with a 95% CI)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..cost import Cost, matched_best_of_n
from ..stats import best, compare, comparison_table, describe, format_mean_std
from .config import SOURCE_REFERENCE

METRIC_NAMES = {"reward": "true reward ↑", "win_rate": "win rate vs ref ↑", "swd": "SW dist. to y+ ↓",
                "out_of_support": "outside ref support ↓"}
THEORY_NAMES = {"kl": "KL(pi ‖ pi_ref)", "J": "J(pi) (bound -log 2 = -0.693)",
                "J_gap": "J - plug-in bound (≤ 0)", "entropy": "entropy"}
BASELINES = ("RLHF", "DPO", "IPO")
COMPARED = {"reward": "true reward", "out_of_support": "outside ref support"}
LABELS = {"bt": "Bradley-Terry preferences", "threshold": "threshold (non-BT) preferences"}


def _metric(record: dict[str, Any], method: str, metric: str) -> Any:
    return record["methods"][method].get("metrics", {}).get(metric)


def _is_pfm(name: str) -> bool:
    return (name.startswith("PFM") and not name.startswith("PFM-select")) or name.startswith("iterative PFM")


def comparisons(runs: list[dict[str, Any]], methods: dict[str, Any]) -> list[dict[str, Any]]:
    """PFM against the reference, and every PFM variant against the baseline with the best mean true reward:
    paired per-seed differences of the true reward and the mass outside the support."""
    pfm = [n for n in methods if _is_pfm(n)]
    baseline = best({n: methods[n]["reward"] for n in BASELINES if n in methods}, BASELINES)
    pairs = [("PFM", "reference")] + ([(n, baseline) for n in pfm] if baseline else [])
    return compare(runs, pairs, COMPARED, _metric)


def cost_comparisons(runs: list[dict[str, Any]], methods: dict[str, Any]) -> list[dict[str, Any]]:
    """PFM (and its reference-source variant, and iterative PFM) against best-of-n by the reward model at the n of
    nearest cost (:func:`pfm_experiments.cost.matched_best_of_n`): by calls per output (a solve counted as one call;
    ties to the larger n), and, for PFM, by the measured wall time per output. Paired per-seed differences, each row
    with ``matched_by``; the rows matched by calls first."""
    names = [n for n in methods if n == "PFM" or n == SOURCE_REFERENCE or n.startswith("iterative PFM")]
    matched = [(name, row, how) for name in names for row, how in matched_best_of_n(methods, name, by_time=False)]
    matched += [("PFM", row, how) for row, how in matched_best_of_n(methods, "PFM") if how == "wall time"]
    return [{**compare(runs, [(name, row)], COMPARED, _metric)[0], "matched_by": how} for name, row, how in matched]


def summarize(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per preference model: every method's metrics described over seeds, and the paired comparisons."""
    summary: dict[str, Any] = {}
    for pref in dict.fromkeys(p["preference"] for p in parts):
        runs = [p for p in parts if p["preference"] == pref]
        methods: dict[str, Any] = {}
        for name in runs[0]["methods"]:
            entry: dict[str, Any] = {}
            first = runs[0]["methods"][name]
            for metric in (*METRIC_NAMES, *THEORY_NAMES):
                if first.get("metrics", {}).get(metric) is not None:
                    entry[metric] = describe([r["methods"][name]["metrics"][metric] for r in runs])
            if "beta" in first:
                entry["beta"] = [r["methods"][name]["beta"] for r in runs]
            if "heldout_accuracy" in first:
                entry["heldout_accuracy"] = describe([r["methods"][name]["heldout_accuracy"] for r in runs])
            for key in ("n", "scorer"):
                if key in first:
                    entry[key] = first[key]
            if "cost" in first:  # the counts are the same in every seed; the wall time is described over seeds
                entry["cost"] = {k: v for k, v in first["cost"].items() if k != "seconds_per_output"}
                entry["seconds_per_output"] = describe([r["methods"][name]["cost"]["seconds_per_output"]
                                                        for r in runs])
            methods[name] = entry
        summary[pref] = {"seeds": [r["seed"] for r in runs], "methods": methods,
                         "comparisons": comparisons(runs, methods),
                         "cost_comparisons": cost_comparisons(runs, methods)}
    return summary


def table(summary: dict[str, Any]) -> str:
    """Markdown tables, one per preference model, each with its paired comparisons."""
    out = []
    for pref, s in summary.items():
        out.append(f"**{LABELS[pref]}** (mean ± sample std over seeds {', '.join(map(str, s['seeds']))})\n")
        out.append("| method | " + " | ".join(METRIC_NAMES.values()) + " | beta chosen | cost per output | "
                   "µs per output |")
        out.append("|---|" + "---|" * (len(METRIC_NAMES) + 3))
        for name, e in s["methods"].items():
            if name == "reward model":
                out.append(f"| reward model (held-out pair accuracy {format_mean_std(e['heldout_accuracy'])}) |"
                           + " |" * (len(METRIC_NAMES) + 3))
                continue
            cells = [format_mean_std(e[m]) for m in METRIC_NAMES]
            beta = ", ".join(f"{b:g}" for b in e["beta"]) if "beta" in e else ""
            cost = Cost.from_dict(e["cost"]).label() if "cost" in e else ""
            us = ""
            if "seconds_per_output" in e:
                us = format_mean_std({k: (None if v is None else 1e6 * v) for k, v in e["seconds_per_output"].items()
                                      if k in ("mean", "std")}, ".3g")
            out.append(f"| {name} | " + " | ".join(cells) + f" | {beta} | {cost} | {us} |")
        out.append("")
        out.append("Cost: reference-model samples (ref), calls of a fine-tuned policy and flow solves per output; the "
                   "wall time covers drawing the samples and scoring or solving them, for all test outputs at once, "
                   "divided by their number. The oracle scores by the true reward (what the annotator compares or "
                   "thresholds): an upper bound no pair-trained method gets.\n")
        if s.get("comparisons"):
            out.append(f"**Paired per-seed differences, {LABELS[pref]}** (mean of the per-seed differences, its "
                       "95% Student-t confidence interval; the baseline is the one of RLHF, DPO and IPO with the best "
                       "mean true reward)\n")
            out.append(comparison_table(s["comparisons"], COMPARED))
            out.append("")
        if s.get("cost_comparisons"):
            out.append(f"**PFM against best-of-n at equal cost, {LABELS[pref]}** (paired per-seed differences, "
                       "95% CI; best-of-n by the RLHF reward model at the n nearest in calls per output, a flow "
                       "solve counted as one call, or nearest in measured wall time)\n")
            shown = [{**r, "baseline": f"{r['baseline']}, nearest in {r['matched_by']}"}
                     for r in s["cost_comparisons"]]
            out.append(comparison_table(shown, COMPARED))
            out.append("")
    return "\n".join(out)


def sweep_table(parts: list[dict[str, Any]]) -> str:
    """Markdown: every beta of the RLHF, DPO and IPO sweeps, averaged over seeds, per preference model."""
    out = []
    for pref in dict.fromkeys(p["preference"] for p in parts):
        runs = [p for p in parts if p["preference"] == pref]
        out.append(f"**beta sweeps, {pref} preferences** (mean over {len(runs)} seed(s); `*` = chosen in every "
                   "seed)\n")
        out.append("| method | beta | held-out implicit accuracy | true reward | outside ref support | KL to ref | J |")
        out.append("|---|---|---|---|---|---|---|")
        for name in BASELINES:
            for i, row in enumerate(runs[0]["methods"][name]["sweep"]):
                vals = {k: float(np.mean([r["methods"][name]["sweep"][i][k] for r in runs]))
                        for k in ("heldout_accuracy", "reward", "out_of_support", "kl", "J")}
                chosen = all(r["methods"][name]["beta"] == row["beta"] for r in runs)
                out.append(f"| {name} | {row['beta']:g}{' *' if chosen else ''} | {vals['heldout_accuracy']:.3f} | "
                           f"{vals['reward']:.3f} | {vals['out_of_support']:.3f} | {vals['kl']:.3f} | "
                           f"{vals['J']:.3f} |")
        out.append("")
    return "\n".join(out)


P1 = object()  # in a path of :func:`_mean`: the tempered distribution of power 1, p1 = 2 pi_ref w


def _mean(theorems: list[dict[str, Any]], *path: Any) -> str:
    """A theorem measurement, found by its keys ``path`` in each seed's ``theorems``: mean ± sample std."""
    values = []
    for value in theorems:
        for key in path:
            value = next(t for t in value["tempered"] if t["power"] == 1.0) if key is P1 else value[key]
        values.append(value)
    return format_mean_std(describe(values))


def theory_table(summary: dict[str, Any], parts: list[dict[str, Any]]) -> str:
    """Markdown: KL, J and entropy per method, and what the theorems predict from the reference alone."""
    out = []
    for pref, s in summary.items():
        runs = [p for p in parts if p["preference"] == pref]
        out.append(f"**What the theorems predict, {pref} preferences** (mean ± sample std over seeds "
                   f"{', '.join(map(str, s['seeds']))}; KL and J by Monte Carlo on the test samples)\n")
        out.append("| method | true reward | " + " | ".join(THEORY_NAMES.values()) + " |")
        out.append("|---|---|" + "---|" * len(THEORY_NAMES))
        for name, e in s["methods"].items():
            if "J" not in e:
                continue
            cells = [format_mean_std(e[m]) for m in THEORY_NAMES]
            out.append(f"| {name} | {e['reward']['mean']:.3f} | " + " | ".join(cells) + " |")

        theorems = [r["theorems"] for r in runs]
        mean = functools.partial(_mean, theorems)
        for label, key in (("*PFM's flow on fresh y- (its training input)*", "PFM on y-"),):
            out.append(f"| {label} | " + " | ".join(mean(key, m) for m in ("reward", "kl", "J", "J_gap")) + " | |")
        out.append(f"| *p1 = 2 pi_ref w, predicted* | {mean(P1, 'mean_reward')} | {mean(P1, 'kl')} | "
                   f"{mean(P1, 'J')} | 0 | |")
        out.append("")
        dial = [r["theorems"].get("strength") for r in runs]
        if all(dial):
            out.append("| PFM's flow at strength s | " + " | ".join(f"{row['strength']:g}" for row in dial[0]) + " |")
            out.append("|---|" + "---|" * len(dial[0]))
            for key, label in (("reward", "true reward"), ("kl", "KL(pi ‖ pi_ref)"), ("J_gap", "J - bound")):
                vals = [np.mean([d[i][key] for d in dial]) for i in range(len(dial[0]))]
                out.append(f"| {label} (mean over seeds) | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
            out.append("")
        out.append(f"E_ref[w] = {mean('mean_w_reference')} (1/2 by the premise of Theorem 1); the "
                   f"plug-in bound log E_ref[w] = {mean('plugin_bound')}.\n")
        rounds = runs[0]["theorems"]["iterated"]
        it_name = next(k for k in runs[0]["methods"] if k.startswith("iterative"))
        out.append("| round (Theorem 2) | entropy, predicted | entropy, iterative PFM | true reward, predicted | "
                   "true reward, iterative PFM | predicted ESS |")
        out.append("|---|---|---|---|---|---|")
        for k in range(len(rounds)):
            pe = np.mean([r["theorems"]["iterated"][k]["entropy"] for r in runs])
            pr = np.mean([r["theorems"]["iterated"][k]["reward"] for r in runs])
            ess = np.mean([r["theorems"]["iterated"][k]["ess"] for r in runs])
            if k == 0:
                me = np.mean([r["methods"]["reference"]["metrics"]["entropy"] for r in runs])
                mr = np.mean([r["methods"]["reference"]["metrics"]["reward"] for r in runs])
            else:
                me = np.mean([r["methods"][it_name]["rounds"][k - 1]["entropy"] for r in runs])
                mr = np.mean([r["methods"][it_name]["rounds"][k - 1]["reward"] for r in runs])
            out.append(f"| {k} | {pe:.3f} | {me:.3f} | {pr:.3f} | {mr:.3f} | {ess:.0f} |")
        out.append("")
    return "\n".join(out)
