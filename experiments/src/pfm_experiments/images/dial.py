"""How far to align, on images: PFM's strength dial beside RLHF's and DPO's beta and best-of-n's n (issue 27).

Every knob trades the annotator's score against a move away from pi_ref. No method here has KL(pi || pi_ref) in
closed form (the reference is a latent-variable model, the baselines fine-tune it), so the divergence axis is
``frechet_to_reference`` (:mod:`.metrics`): the Fréchet distance, in the judge's features, from the reference's own
samples of the same label. The quality axes are the annotator's probability (what the pairs' labeller scores) and the
independent judge's accuracy.

- :func:`dial_curves` ``(parts)``: per knob, its points described over seeds (mean ± sample std):
  ``{"PFM, strength s": [{"knob": s, metric: describe(...)}, ...], "RLHF, beta": [...], "DPO, beta": [...],
  "best-of-n (reward model)": [...]}``; a knob is left out when the records predate it.
- :func:`floor` ``(parts)``: the metrics of a second draw of pi_ref's test samples, described over seeds: the
  Fréchet distance between two finite samples of the same model is not 0, so a knob's move is only told from
  sampling noise above this distance.
- :func:`dial_table` / :func:`dial_figure`: the same as Markdown and as a figure (empty / not written for runs
  without the dial).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from ..cost import bon_name
from ..figures import pyplot, save_figure
from ..stats import describe, format_mean_std

AXES = (("frechet_to_reference", "Fréchet dist. to pi_ref", ".1f"), ("annotator", "annotator prob.", ".3f"),
        ("judge_accuracy", "judge acc.", ".3f"), ("frechet", "Fréchet dist. to real", ".1f"))
"""``(metric, label, format)``: the columns of :func:`dial_table`; the first is the figure's x axis."""


def _points(parts: list[dict[str, Any]], rows: Callable[[dict[str, Any]], Optional[list[dict[str, Any]]]],
            knob: str) -> list[dict[str, Any]]:
    """The points of one knob: ``rows(part)`` lists one seed's ``{knob: value, metric: value, ...}``; every metric
    of :data:`AXES` is described over the seeds at each knob value the first seed has."""
    per_seed = [rows(p) for p in parts]
    if not per_seed or any(r is None or not all(m in x for x in r for m, _, _ in AXES) for r in per_seed):
        return []
    out = []
    for value in [x[knob] for x in per_seed[0]]:
        at = [next((x for x in r if x[knob] == value), None) for r in per_seed]
        if any(x is None for x in at):
            continue
        out.append({"knob": value, **{m: describe([x[m] for x in at]) for m, _, _ in AXES}})
    return out


def dial_curves(parts: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """See the module docstring."""
    def bon(p: dict[str, Any]) -> Optional[list[dict[str, Any]]]:
        rows = [{"n": e["n"], **e["metrics"]} for name, e in p["methods"].items()
                if e.get("scorer") == "reward model" and "n" in e and name == bon_name(e["n"], "reward model")]
        return rows or None

    curves = {"PFM, strength s": _points(parts, lambda p: p["methods"]["PFM"].get("strength"), "strength"),
              "RLHF, beta": _points(parts, lambda p: p["methods"].get("RLHF", {}).get("sweep"), "beta"),
              "DPO, beta": _points(parts, lambda p: p["methods"].get("DPO", {}).get("sweep"), "beta"),
              "best-of-n (reward model)": _points(parts, bon, "n")}
    return {k: v for k, v in curves.items() if v}


def floor(parts: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """See the module docstring; None for records without the second draw."""
    draws = [p["methods"]["reference"].get("another_draw") for p in parts]
    if any(d is None for d in draws):
        return None
    return {m: describe([d[m] for d in draws]) for m, _, _ in AXES}


def dial_table(parts: list[dict[str, Any]]) -> str:
    """Every point of :func:`dial_curves`, one row each (mean ± sample std over seeds); empty without the dial."""
    curves = dial_curves(parts)
    if "PFM, strength s" not in curves:
        return ""
    lines = [f"**How far to align** (every knob against the distance from pi_ref, the Fréchet distance in the judge's "
             f"features to the reference's samples of the same label; mean ± sample std over {len(parts)} seed(s); "
             "strength s = 1 is PFM, s = 2 is PFM x 2; RLHF's and DPO's betas are their sweeps, not only the picked "
             "one. PFM's points move the reference's own test samples, so s = 0 is at 0; every other knob draws "
             "fresh samples and starts from the noise floor of the last row)", "",
             "| knob | value | " + " | ".join(label for _, label, _ in AXES) + " |",
             "|---|---|" + "---|" * len(AXES)]
    for name, points in curves.items():
        for pt in points:
            cells = [format_mean_std(pt[m], spec) for m, _, spec in AXES]
            lines.append(f"| {name} | {pt['knob']:g} | " + " | ".join(cells) + " |")
    base = floor(parts)
    if base is not None:
        lines.append("| pi_ref, a second draw (the distance's noise floor) | - | "
                     + " | ".join(format_mean_std(base[m], spec) for m, _, spec in AXES) + " |")
    return "\n".join(lines)


STYLE = {"PFM, strength s": ("tab:red", "D", "s"), "RLHF, beta": ("tab:purple", "s", "β"),
         "DPO, beta": ("tab:brown", "^", "β"), "best-of-n (reward model)": ("tab:blue", "o", "n")}


def dial_figure(parts: list[dict[str, Any]], path: Path, title: str) -> None:
    """The annotator's probability and the judge's accuracy against the distance from pi_ref, a curve per knob
    (:func:`dial_curves`), every point labelled with its value; error bars are the sample std over seeds. Nothing
    is written for runs without the dial."""
    curves = dial_curves(parts)
    if "PFM, strength s" not in curves:
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    x_metric, x_label, _ = AXES[0]
    base = floor(parts)
    for ax, (metric, label, _) in zip(axes, AXES[1:3]):
        if base is not None:
            ax.axvline(base[x_metric]["mean"], color="k", ls=":", lw=1,
                       label="a second draw of pi_ref (the distance's noise floor)")
        for name, points in curves.items():
            color, marker, letter = STYLE[name]
            x = [p[x_metric]["mean"] for p in points]
            y = [p[metric]["mean"] for p in points]
            ax.errorbar(x, y, xerr=[p[x_metric]["std"] or 0.0 for p in points],
                        yerr=[p[metric]["std"] or 0.0 for p in points], marker=marker, color=color, label=name,
                        capsize=2)
            for xi, yi, p in zip(x, y, points):
                ax.annotate(f"{letter}={p['knob']:g}", (xi, yi), fontsize=7, color=color, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_xscale("symlog", linthresh=10.0)  # linear up to the noise floor's scale, then logarithmic
        ax.set_xlabel(f"{x_label} (the reference is at 0; linear below 10, log above)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
