"""Tables of the text experiment, from the per-seed records of :func:`.experiment.run_one` (statistics:
:mod:`pfm_experiments.stats`: mean ± sample std over seeds, paired per-seed differences with a 95% CI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pfm.io import atomic_file
from ..cost import matched_best_of_n
from ..cost_figure import cost_grid
from ..cost_table import cost_table as shared_cost_table
from ..rows import SOURCE_REFERENCE, UNCONDITIONAL
from ..runner import read_results
from ..stats import compare, comparison_table, describe, format_mean_std
from .config import stem
from .figure import rounds_curve, scores_figure

METRICS = (("score", "annotator score"), ("score_of_vector", "score of the vector"), ("vader", "VADER"),
           ("vader_win_rate_vs_rlhf", "VADER win rate vs RLHF"), ("perplexity", "perplexity under pi_ref"),
           ("distinct_1", "distinct-1"), ("distinct_2", "distinct-2"), ("words", "words"))
SPECS = {"perplexity": ".1f", "words": ".1f"}
COMPARED = {"score": "annotator score", "vader": "VADER", "distinct_2": "distinct-2"}


def _metric(record: dict[str, Any], method: str, metric: str) -> Any:
    return record["methods"][method].get(metric)


def comparisons(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PFM and PFM x k against the reference through the same codec (the fair baseline: what the codec alone
    does), PFM x k against RLHF, RLHF + PFM (x k) against RLHF through the codec, the ``source="reference"``
    flow against the reference through the codec and against PFM, and (where the run has it) the flow without the
    prompt, x 1 and x k, against the reference through the codec and against PFM; paired over seeds."""
    names = list(runs[0]["methods"])
    k = _iterated(names)
    free_k = _unconditional_iterated(k)
    pairs = [("PFM", "reference (codec)"), (k, "reference (codec)"), (k, "RLHF"), ("RLHF + PFM", "RLHF (codec)"),
             (f"RLHF + {k}", "RLHF (codec)"), (SOURCE_REFERENCE, "reference (codec)"), (SOURCE_REFERENCE, "PFM"),
             (UNCONDITIONAL, "reference (codec)"), (free_k, "reference (codec)"), (UNCONDITIONAL, "PFM")]
    return compare(runs, [(a, b) for a, b in pairs if a in names and b in names], COMPARED, _metric)


def _iterated(names: list[str]) -> str:
    return next(n for n in names if n.startswith("PFM x "))


def _unconditional_iterated(iterated: str) -> str:
    """The row of the flow without the prompt applied as often as ``iterated`` ("PFM x k") applies PFM."""
    return f"{UNCONDITIONAL} x {iterated.removeprefix('PFM x ')}"


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"methods": {method: {metric: describe(...), "cost", "seconds_per_output", "n", "scorer"}}, "rlhf_beta":
    [per seed], "comparisons": [...], "cost_comparisons": [...]}``: every metric over seeds; each row's cost per
    output (the counts, and the measured wall time described over seeds) and, for best-of-n and PFM-select, its n
    and scorer; PFM, PFM x k and the ``source="reference"`` flow against best-of-n by the reward model at equal cost
    (:func:`pfm_experiments.cost.matched_best_of_n`). Runs made before best-of-n came to this experiment have no
    costs; their summary has none either."""
    methods: dict[str, dict[str, Any]] = {
        name: {metric: describe([r["methods"][name][metric] for r in runs]) for metric in runs[0]["methods"][name]}
        for name in runs[0]["methods"]}
    for name, entry in methods.items():
        if all(name in r.get("costs", {}) for r in runs):  # the counts are the same in every seed; the time varies
            entry["cost"] = {k: v for k, v in runs[0]["costs"][name].items() if k != "seconds_per_output"}
            entry["seconds_per_output"] = describe([r["costs"][name]["seconds_per_output"] for r in runs])
        entry.update({k: v for k, v in runs[0].get("selection", {}).get(name, {}).items() if k in ("n", "scorer")})
    k = _iterated(list(methods))
    matched = [{**compare(runs, [(name, row)], COMPARED, _metric)[0], "matched_by": how}
               for name in ("PFM", k, SOURCE_REFERENCE, UNCONDITIONAL, _unconditional_iterated(k))
               for row, how in matched_best_of_n(methods, name)]
    return {"methods": methods, "rlhf_beta": [r["rlhf"]["beta"] for r in runs], "comparisons": comparisons(runs),
            "cost_comparisons": matched}


def table(summary: dict[str, Any]) -> str:
    """A markdown table: one row per method, mean ± sample std over the seeds (the mean alone with one seed)."""
    head = "| method | " + " | ".join(label for _, label in METRICS) + " |"
    rows = [head, "|---" * (len(METRICS) + 1) + "|"]
    for name, m in summary["methods"].items():
        if "n" in m:  # best-of-n and PFM-select: in the cost table
            continue
        cells = [format_mean_std(m[key], SPECS.get(key, ".3f")) if key in m else "" for key, _ in METRICS]
        if name == "RLHF":
            name += f" (beta {', '.join(f'{b:g}' for b in summary['rlhf_beta'])})"
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


COST_METRICS = (("score", "annotator score"), ("vader", "VADER"), ("vader_win_rate_vs_reference",
                                                                      "VADER win rate vs reference"),
                ("perplexity", "perplexity under pi_ref"), ("distinct_2", "distinct-2"))


def cost_table(summary: dict[str, Any]) -> str:
    """Quality against inference cost (:func:`pfm_experiments.cost_table.cost_table`): every row with a cost (the
    methods, best-of-n by both scorers, PFM-select), its cost per output and measured ms per output, and PFM against
    best-of-n at equal cost. Empty for runs without costs."""
    return shared_cost_table(
        summary, COST_METRICS,
        "mean ± sample std over seeds; cost per output in samples of pi_ref (ref), of the fine-tuned policy, of the "
        "codec's decoder (a language model of pi_ref's size; each decoded candidate is encoded again) and flow "
        "solves; the wall time of making all test outputs at once, divided by their number. The annotator labelled "
        "the pairs, so best-of-n by it is an oracle that no pair-trained method gets, and its annotator score is "
        "what it maximizes: read VADER, the independent judge",
        "paired per-seed differences, 95% CI; best-of-n by RLHF's reward model at the n nearest in model calls per "
        "output, a solve and a decoder sample counted as one call each, or nearest in measured wall time",
        COMPARED, specs=SPECS, ms_spec=".1f")


POINTS = (("reference", "o", "k"), ("reference (codec)", "o", "tab:gray"), ("PFM", "D", "tab:red"),
          ("PFM x", "X", "tab:red"), (SOURCE_REFERENCE, "v", "tab:olive"), (UNCONDITIONAL, "h", "tab:brown"),
          ("RLHF", "s", "tab:purple"),
          ("RLHF + PFM", "P", "tab:pink"))
CURVES = (("best-of-n (annotator: the oracle)", "annotator", "tab:green", "o"),
          ("best-of-n (RLHF's reward model)", "reward model", "tab:blue", "s"),
          ("PFM-select (n candidates, 1 solve)", None, "tab:orange", "v"))


def cost_figure(summary: dict[str, Any], path: Path, title: str) -> None:
    """The annotator's score and VADER's (the independent judge) against model calls and against measured wall time
    per output (:func:`pfm_experiments.cost_figure.cost_grid`). Nothing is written for runs without costs."""
    m = summary["methods"]
    k = _iterated(list(m))
    points = tuple((k if p == "PFM x" else p, marker, color) for p, marker, color in POINTS)
    cost_grid([(m, "score", "annotator score (what the pairs' labeller scores)", None),
               (m, "vader", "VADER compound score (the independent judge)", None)], path, title, CURVES, points)


def write_report(result: dict[str, Any], base: Path) -> None:
    """``<base>.json`` (the result), ``<base>.md`` (the tables, the codec's reconstruction, RLHF's beta sweep and
    seed 0's examples), ``<base>-cost.png`` (quality against inference cost, for runs with costs) and
    ``<base>-scores.png`` (:func:`.figure.scores_figure`)."""
    runs, cfg, codec_report, summary = result["runs"], result["config"], result["codec"], result["summary"]
    with atomic_file(base.with_suffix(".json"), "w") as f:
        json.dump(result, f, indent=1)
    users = [f"{role}: `{path}`" for role, path in (("pi_ref", cfg.get("reference")),
                                                    ("annotator", cfg.get("annotator"))) if path]
    lines = [f"# Controlled text generation ({len(runs)} seed{'s' if len(runs) > 1 else ''})", "",
             *([", ".join(users) + " (a user's Hugging Face models)", ""] if users else []),
             table(summary), "", *([cost_table(summary), ""] if cost_table(summary) else []),
             "**Paired per-seed differences** (mean of the per-seed differences and its 95% Student-t confidence "
             "interval)", "", comparison_table(summary["comparisons"], COMPARED), "",
             "## The codec", "",
             "Held-out sentences encoded, decoded from their prompt and encoded again: " + ", ".join(
                 f"{k.replace('_', ' ')} {v:.3f}" for k, v in codec_report.items()) + ".", "",
             "## RLHF's beta sweep", "",
             "| seed | beta | annotator score (validation prompts) | perplexity | distinct-2 | reward (last 10 steps) "
             "| KL (nats a sentence) | picked |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for row in r["rlhf"]["sweep"]:
            lines.append(f"| {r['seed']} | {row['beta']:g} | {row['validation_score']:.3f} | "
                         f"{row['validation_perplexity']:.1f} | {row['validation_distinct_2']:.3f} | "
                         f"{row['final_reward']:.3f} | {row['final_kl']:.2f} | "
                         f"{'yes' if row['beta'] == r['rlhf']['beta'] else ''} |")
    lines += rounds_table(runs)
    lines += ["", "## Examples (seed 0)", ""]
    for ex in runs[0]["examples"]:
        lines.append(f"**{ex['prompt']}**")
        lines += [f"- {k}: {v}" for k, v in ex.items() if k != "prompt"]
        lines.append("")
    with atomic_file(base.with_suffix(".md"), "w") as f:
        f.write("\n".join(lines))
    seeds = f"{len(runs)} seed{'s' if len(runs) > 1 else ''}"
    cost_figure(summary, base.with_name(base.name + "-cost.png"), f"Text: quality against inference cost ({seeds})")
    scores_figure(runs, summary, base.with_name(base.name + "-scores.png"),
                  f"Text: each method's scores, and PFM applied k times (mean ± sample std over {seeds})")


def rounds_table(runs: list[dict[str, Any]]) -> list[str]:
    """The lines of a table of PFM applied k = 0 .. K times (the runs' ``"rounds"``): the annotator's score of the
    text and of the vector, and VADER's, mean ± sample std over seeds; none for runs without rounds."""
    curves = {m: rounds_curve(runs, m) for m in ("score", "score_of_vector", "vader")}
    cols = [(m, label) for m, label in (("score", "annotator score of the text"),
                                        ("score_of_vector", "annotator score of the vector"), ("vader", "VADER"))
            if curves[m] is not None]
    if not cols:
        return []
    lines = ["", "## PFM applied k times", "", "| k | " + " | ".join(label for _, label in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for i, k in enumerate(curves[cols[0][0]][0]):
        lines.append(f"| {int(k)} | " + " | ".join(
            f"{curves[m][1][i]:.3f} ± {curves[m][2][i]:.3f}" for m, _ in cols) + " |")
    return lines


def report_only(out_dir: str | Path = "results", *, quick: bool = False, pairs: str = "samples") -> dict[str, Any]:
    """Recompute the summary of ``<out_dir>/text[-<pairs>][-quick].json`` from its per-seed runs and rewrite that
    JSON's ``summary``, the ``.md`` and the figures (``pfm reproduce text --report-only``)."""
    base = Path(out_dir) / stem(pairs, quick)
    result = read_results(base.with_suffix(".json"), "pfm reproduce text" + (" --quick" if quick else "")
                          + ("" if pairs == "samples" else f" --pairs {pairs}"))
    result["summary"] = summarize(result["runs"])
    write_report(result, base)
    return result
