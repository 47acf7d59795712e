"""Tables of the text experiment, from the per-seed records of :func:`.experiment.run_one` (statistics:
:mod:`pfm_experiments.stats`: mean ± sample std over seeds, paired per-seed differences with a 95% CI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pfm.io import atomic_file
from ..runner import read_results
from ..stats import compare, comparison_table, describe, format_mean_std

METRICS = (("score", "annotator score"), ("score_of_vector", "score of the vector"), ("vader", "VADER"),
           ("vader_win_rate_vs_rlhf", "VADER win rate vs RLHF"), ("perplexity", "perplexity under pi_ref"),
           ("distinct_1", "distinct-1"), ("distinct_2", "distinct-2"), ("words", "words"))
SPECS = {"perplexity": ".1f", "words": ".1f"}
COMPARED = {"score": "annotator score", "vader": "VADER", "distinct_2": "distinct-2"}


def _metric(record: dict[str, Any], method: str, metric: str) -> Any:
    return record["methods"][method].get(metric)


def comparisons(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PFM and PFM x k against the reference through the same codec (the fair baseline: what the codec alone
    does), PFM x k against RLHF, and RLHF + PFM (x k) against RLHF through the codec; paired over seeds."""
    names = list(runs[0]["methods"])
    k = next(n for n in names if n.startswith("PFM x "))
    pairs = [("PFM", "reference (codec)"), (k, "reference (codec)"), (k, "RLHF"), ("RLHF + PFM", "RLHF (codec)"),
             (f"RLHF + {k}", "RLHF (codec)")]
    return compare(runs, [(a, b) for a, b in pairs if a in names and b in names], COMPARED, _metric)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"methods": {method: {metric: describe(...)}}, "rlhf_beta": [per seed], "comparisons": [...]}``."""
    methods = {name: {metric: describe([r["methods"][name][metric] for r in runs])
                      for metric in runs[0]["methods"][name]} for name in runs[0]["methods"]}
    return {"methods": methods, "rlhf_beta": [r["rlhf"]["beta"] for r in runs], "comparisons": comparisons(runs)}


def table(summary: dict[str, Any]) -> str:
    """A markdown table: one row per method, mean ± sample std over the seeds (the mean alone with one seed)."""
    head = "| method | " + " | ".join(label for _, label in METRICS) + " |"
    rows = [head, "|---" * (len(METRICS) + 1) + "|"]
    for name, m in summary["methods"].items():
        cells = [format_mean_std(m[key], SPECS.get(key, ".3f")) if key in m else "" for key, _ in METRICS]
        if name == "RLHF":
            name += f" (beta {', '.join(f'{b:g}' for b in summary['rlhf_beta'])})"
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_report(result: dict[str, Any], base: Path) -> None:
    """``<base>.json`` (the result) and ``<base>.md``: the tables, the codec's reconstruction, RLHF's beta sweep and
    seed 0's examples."""
    runs, cfg, codec_report, summary = result["runs"], result["config"], result["codec"], result["summary"]
    with atomic_file(base.with_suffix(".json"), "w") as f:
        json.dump(result, f, indent=1)
    users = [f"{role}: `{path}`" for role, path in (("pi_ref", cfg.get("reference")),
                                                    ("annotator", cfg.get("annotator"))) if path]
    lines = [f"# Controlled text generation ({len(runs)} seed{'s' if len(runs) > 1 else ''})", "",
             *([", ".join(users) + " (a user's Hugging Face models)", ""] if users else []),
             table(summary), "",
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
    lines += ["", "## Examples (seed 0)", ""]
    for ex in runs[0]["examples"]:
        lines.append(f"**{ex['prompt']}**")
        lines += [f"- {k}: {v}" for k, v in ex.items() if k != "prompt"]
        lines.append("")
    with atomic_file(base.with_suffix(".md"), "w") as f:
        f.write("\n".join(lines))


def report_only(out_dir: str | Path = "results", *, quick: bool = False) -> dict[str, Any]:
    """Recompute the summary of ``<out_dir>/text[-quick].json`` from its per-seed runs and rewrite that JSON's
    ``summary`` and the ``.md`` (``pfm reproduce text --report-only``)."""
    base = Path(out_dir) / ("text-quick" if quick else "text")
    result = read_results(base.with_suffix(".json"), "pfm reproduce text" + (" --quick" if quick else ""))
    result["summary"] = summarize(result["runs"])
    write_report(result, base)
    return result
