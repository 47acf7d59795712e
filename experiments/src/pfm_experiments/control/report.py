"""Tables and figures of the control experiment, from the per-cell records of :func:`.experiment.run_cell`
(statistics: :mod:`pfm_experiments.stats`: mean ± sample std over seeds, paired per-seed differences with a 95% CI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..figures import pyplot, save_figure
from ..stats import best, compare, describe, format_difference, format_mean_std

PAPER = {  # ../shared/PAPER.md (the paper's D4RL v2 table): BC, DPO fine-tuned, PFM, Marginal BC, means over seeds
    "ant-random": (31.59, 31.52, 31.62, 25.01),
    "ant-medium": (90.16, 95.04, 96.73, 99.67),
    "ant-expert": (125.83, 134.96, 132.20, 99.29),
    "hopper-random": (3.17, 3.23, 7.69, 5.48),
    "hopper-medium": (52.83, 53.47, 58.76, 40.44),
    "hopper-expert": (111.27, 111.51, 111.70, 32.39),
    "halfcheetah-random": (2.25, 2.26, 2.26, 2.21),
    "halfcheetah-medium": (40.97, 41.94, 43.49, 38.79),
    "halfcheetah-expert": (91.02, 92.15, 90.05, 4.77),
    "walker2d-random": (1.47, 1.38, 1.77, 2.45),
    "walker2d-medium": (60.35, 74.05, 72.59, 65.29),
    "walker2d-expert": (108.62, 108.38, 108.36, 15.8),
}
PAPER_METHODS = ("BC", "DPO", "PFM", "Marginal BC")
PAPER_AVERAGE = (59.97, 62.49, 63.10, 35.97)  # over all twelve data sets, ant included


BASELINES = ("BC", "DPO", "Marginal BC")


def _score(protocol: str) -> Callable[[dict[str, Any], str, str], Any]:
    return lambda record, method, metric: record["scores"][protocol][method][metric]


def summarize(cells: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """``{dataset: {"scores": {protocol: {method: describe(...)}}, "comparisons": {protocol: [...]}, ...}}``: the
    normalized return over seeds, the segment test's returns, and PFM and PFM x k paired against the baseline
    (BC, DPO or Marginal BC) with the best mean return under each protocol."""
    out: dict[str, Any] = {}
    for name, runs in cells.items():
        d: dict[str, Any] = {"seeds": len(runs), "scores": {}, "comparisons": {}}
        for protocol, methods in runs[0]["scores"].items():
            d["scores"][protocol] = {m: describe([r["scores"][protocol][m]["score"] for r in runs]) for m in methods}
            baseline = best(d["scores"][protocol], BASELINES)
            pfm = [m for m in methods if m.startswith("PFM")]
            d["comparisons"][protocol] = compare(runs, [(m, baseline) for m in pfm] if baseline else [], ["score"],
                                                 _score(protocol))
        for key in ("segment_returns", "teacher_returns"):  # the latter with a teacher's lookahead only
            if key in runs[0]:
                d[key] = {m: describe([r[key][m] for r in runs]) for m in runs[0][key]}
        d["dpo_beta"] = [r["dpo"]["beta"] for r in runs]
        d["flow_best_step"] = [r["flow"]["best_step"] for r in runs]
        out[name] = d
    return out


def table(summary: dict[str, Any], protocol: str) -> str:
    """Normalized return per data set (rows) and method (columns) under one protocol, mean ± sample std over
    seeds, with the paper's numbers."""
    first = next(iter(summary.values()))
    methods = list(first["scores"][protocol])
    lines = ["| data set (D4RL-style) | seeds | " + " | ".join(methods) + " | paper: BC / DPO / PFM / MBC |",
             "|---|---|" + "---|" * len(methods) + "---|"]
    means: dict[str, list[float]] = {m: [] for m in methods}
    for name, d in summary.items():
        row = d["scores"][protocol]
        for m in methods:
            means[m].append(row[m]["mean"])
        paper = PAPER.get(name)
        lines.append(f"| {name} | {d['seeds']} | " + " | ".join(format_mean_std(row[m], ".1f") for m in methods)
                     + " | " + (" / ".join(f"{v:.1f}" for v in paper) if paper else "-") + " |")
    if len(summary) > 1:
        lines.extend(average_rows(list(summary), means))
    return "\n".join(lines)


def average_rows(names: list[str], means: dict[str, list[float]]) -> list[str]:
    """Rows of the averages of ``means`` (per method, one value per data set of ``names``): over the random,
    medium and expert sets where more than one kind is present, then over all; the paper's over the same sets
    beside them (over all twelve D4RL sets: 59.97 / 62.49 / 63.10 / 35.97)."""
    groups: list[tuple[str, list[int]]] = []
    kinds = [k for k in ("random", "medium", "expert") if any(n.endswith(f"-{k}") for n in names)]
    if len(kinds) > 1:
        groups += [(f"average, {k}", [i for i, n in enumerate(names) if n.endswith(f"-{k}")]) for k in kinds]
    groups.append(("**average**", list(range(len(names)))))
    rows = []
    for label, idx in groups:
        ours = " | ".join(f"{np.mean([v[i] for i in idx]):.1f}" for v in means.values())
        papers = [PAPER[names[i]] for i in idx if names[i] in PAPER]
        paper = (" / ".join(f"{np.mean(col):.2f}" for col in zip(*papers)) + f" ({len(papers)} sets)") if papers else ""
        rows.append(f"| {label} ({len(idx)} sets) | | {ours} | {paper} |")
    return rows


def comparisons_table(summary: dict[str, Any], protocol: str) -> str:
    """Per data set: PFM and PFM x k minus the best baseline's normalized return, paired over seeds, with the 95%
    Student-t confidence interval, and on how many seeds PFM is ahead."""
    first = next(iter(summary.values()))
    variants = [row["method"] for row in first["comparisons"][protocol]]
    lines = ["| data set | best baseline | " + " | ".join(f"{v} − baseline [95% CI]" for v in variants)
             + " | seeds PFM ahead |", "|---|---|" + "---|" * (len(variants) + 1)]
    for name, d in summary.items():
        rows = d["comparisons"][protocol]
        if not rows:
            continue
        score = rows[0]["score"]
        lines.append(f"| {name} | {rows[0]['baseline']} | "
                     + " | ".join(format_difference(r["score"], ".1f") for r in rows)
                     + f" | {score['wins']} of {score['n']} |")
    return "\n".join(lines)


def segment_table(summary: dict[str, Any], key: str = "segment_returns") -> str:
    """Mean simulated return of one segment from held-out start states, per method (``key="teacher_returns"``:
    the segment and the teacher's lookahead)."""
    first = next(iter(summary.values()))
    methods = list(first[key])
    lines = ["| data set | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for name, d in summary.items():
        lines.append(f"| {name} | " + " | ".join(f"{d[key][m]['mean']:.2f}" for m in methods) + " |")
    return "\n".join(lines)


def bars(summary: dict[str, Any], path: Path, title: str) -> None:
    """One panel per data set: the methods' normalized returns (mean ± sample std over seeds) under each
    protocol."""
    plt = pyplot()
    names = list(summary)
    cols = min(3, len(names))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        d = summary[name]["scores"]
        protocols = list(d)
        methods = list(d[protocols[0]])
        width = 0.8 / len(protocols)
        x = np.arange(len(methods))
        for j, p in enumerate(protocols):
            ax.bar(x + j * width, [d[p][m]["mean"] for m in methods], width,
                   yerr=[d[p][m]["std"] or 0.0 for m in methods], label=p, capsize=2)
        ax.set_xticks(x + width * (len(protocols) - 1) / 2)
        ax.set_xticklabels(methods, rotation=30, fontsize=7, ha="right")
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("normalized return")
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def frame_strip(name: str, proposes: dict[str, Any], path: Path, *, horizon: int, frames: int = 8,
                every: int = 20, seed: int = 0, title: str = "") -> dict[str, float]:
    """Render one episode per method offscreen (MuJoCo, ``chunk`` protocol): ``frames`` frames ``every`` steps
    apart, one row per method; returns each episode's return. Needs an offscreen OpenGL (``MUJOCO_GL=egl`` is set
    when unset)."""
    import os

    os.environ.setdefault("MUJOCO_GL", "egl")
    plt = pyplot()

    from .envs import make_env

    shots: dict[str, list[np.ndarray]] = {}
    returns: dict[str, float] = {}
    for method, propose in proposes.items():
        env = make_env(name, render_mode="rgb_array", width=240, height=180)
        obs, _ = env.reset(seed=seed)
        low, high = env.action_space.low, env.action_space.high
        total, pics, step, done = 0.0, [env.render()], 0, False
        while not done and len(pics) < frames:
            for a in propose(obs[None])[0]:
                obs, r, terminated, truncated, _ = env.step(np.clip(a, low, high))
                total += float(r)
                step += 1
                if step % every == 0 and len(pics) < frames:
                    pics.append(env.render())
                if terminated or truncated:
                    done = True
                    break
        env.close()
        shots[method], returns[method] = pics, total
    fig, axes = plt.subplots(len(shots), frames, figsize=(1.6 * frames, 1.4 * len(shots)), squeeze=False)
    for row, (method, pics) in zip(axes, shots.items()):
        for j, ax in enumerate(row):
            if j < len(pics):
                ax.imshow(pics[j])
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(method, fontsize=8)
            if row is axes[0]:
                ax.set_title(f"step {j * every}", fontsize=7)
    fig.suptitle(title or f"{name}: one episode per method", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return returns


# ------------------------------------------------------------------------------------------ the rollout protocol
ROLLOUT_BASELINES = ("BC mean", "BC sampled", "simulated best-of-2")
"""The protocol's own baseline rows: PFM and PFM x k are paired against each; PFM alone against every other row
(the baselines', :mod:`.rollout_baselines`)."""


def rollout_summary(cells: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per data set, the ``rollout`` protocol's cells (:func:`.rollout_protocol.run_rollout_cell`) over seeds:
    ``{"seeds", "scores": {method: describe}, "comparisons": [PFM and PFM x k minus each baseline, paired per
    seed], "segment_returns": {method: describe}, "segment_returns_10": ..., "pfm_ahead": describe}``."""
    get = _score("rollout")
    out: dict[str, Any] = {}
    for name, runs in cells.items():
        methods = _variants_after([m for m in runs[0]["scores"]["rollout"]
                                   if all(m in r["scores"]["rollout"] for r in runs)])
        pfm = [m for m in methods if m.startswith("PFM")]
        pairs = [(m, b) for m in pfm for b in ROLLOUT_BASELINES if b in methods]
        pairs += [("PFM", b) for b in methods if b not in ROLLOUT_BASELINES and not b.startswith("PFM")]
        d: dict[str, Any] = {
            "seeds": len(runs),
            "scores": {m: describe([r["scores"]["rollout"][m]["score"] for r in runs]) for m in methods},
            "comparisons": compare(runs, pairs, ["score"], get),
            "pfm_ahead": describe([r["pfm_ahead"] for r in runs]),
            "pairs": {k: describe([r["pairs"][k] for r in runs]) for k in ("chosen_return", "rejected_return")},
        }
        for key in ("segment_returns", "segment_returns_10"):
            d[key] = {m: describe([r[key][m] for r in runs]) for m in runs[0][key]}
        out[name] = d
    return out


def _variants_after(methods: list[str]) -> list[str]:
    """``methods`` with each variant of a row (``"DPO (beta by return)"`` of ``"DPO"``) moved right after it."""
    out = [m for m in methods if not any(m.startswith(b + " (") for b in methods)]
    for m in methods:
        if m not in out:
            base = next(b for b in methods if m.startswith(b + " ("))
            at = out.index(base) + 1
            while at < len(out) and out[at].startswith(base + " ("):
                at += 1
            out.insert(at, m)
    return out


def rollout_table(summary: dict[str, Any]) -> str:
    """Normalized return per data set and row of the ``rollout`` protocol (mean ± sample std over seeds), with the
    paper's numbers."""
    methods = _variants_after(list(dict.fromkeys(m for d in summary.values() for m in d["scores"])))  # lacking: -
    lines = ["| data set (D4RL-style) | seeds | " + " | ".join(methods) + " | paper: BC / DPO / PFM / MBC |",
             "|---|---|" + "---|" * len(methods) + "---|"]
    for name, d in summary.items():
        paper = PAPER.get(name)
        lines.append(f"| {name} | {d['seeds']} | " + " | ".join(format_mean_std(d["scores"][m], ".1f")
                                                             if m in d["scores"] else "-" for m in methods)
                     + " | " + (" / ".join(f"{v:.1f}" for v in paper) if paper else "-") + " |")
    return "\n".join(lines)


def rollout_comparisons_table(summary: dict[str, Any]) -> str:
    """PFM and PFM x k minus each baseline row, paired per seed: mean difference [95% CI] and seeds ahead."""
    lines = ["| data set | comparison | Δ normalized return [95% CI] | seeds ahead |", "|---|---|---|---|"]
    for name, d in summary.items():
        for row in d["comparisons"]:
            s = row["score"]
            lines.append(f"| {name} | {row['method']} − {row['baseline']} | {format_difference(s, '.1f')} | "
                         f"{s['wins']} of {s['n']} |")
    return "\n".join(lines)
