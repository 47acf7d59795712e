"""The 2D experiment's figures: for one run the paper's panels (:func:`figure`) and the theorems'
(:func:`theory_figure`); over every seed, reward against inference cost (:func:`cost_figure`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pfm.objective import BOUND
from ..cost_figure import cost_grid
from ..figures import pyplot, save_figure
from .config import SOURCE_REFERENCE
from .task import LIMITS, grid, reference_policy, true_reward


def _iterated(methods: dict[str, Any]) -> str:
    """The name of the "PFM x k" row with the largest k (the config's ``iterations``; PFM x 2 is a row too)."""
    return max((k for k in methods if k.startswith("PFM x ")), key=lambda k: int(k.split()[-1]))


def figure(part: dict[str, Any], path: Path, title: str) -> None:
    """The paper's panels for one run, plus IPO, iterative PFM, PFM's trajectories and the beta sweeps."""
    plt = pyplot()
    gx, gy, points = grid()
    with torch.no_grad():
        true_r = true_reward(points, part["reward"]).numpy().reshape(gx.shape)
        log_ref = reference_policy().log_prob(points).numpy().reshape(gx.shape)
    learned = part["learned_reward_grid"]
    support = part["support_threshold"]
    samples = part["samples"]
    pfm_k = _iterated(part["methods"])
    names = ["reference", "preferred (y+)", "RLHF", "DPO", "IPO", "PFM", pfm_k,
             next(k for k in samples if k.startswith("iterative"))]
    fig, axes = plt.subplots(3, 4, figsize=(16, 12.5))
    axes = axes.ravel()

    def frame(ax, label: str) -> None:
        ax.set_xlim(*LIMITS)
        ax.set_ylim(*LIMITS)
        ax.set_aspect("equal")
        ax.set_title(label)
        ax.contour(gx, gy, log_ref, levels=[support], colors="0.4", linestyles="--", linewidths=1)
        ax.contour(gx, gy, true_r, levels=[0.25, 0.5, 0.75], colors="tab:orange", linewidths=0.8, alpha=0.8)

    im = axes[0].imshow(true_r, extent=(*LIMITS, *LIMITS), origin="lower", cmap="viridis")
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    frame(axes[0], "(a) true reward")
    im = axes[1].imshow(learned, extent=(*LIMITS, *LIMITS), origin="lower", cmap="viridis")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    frame(axes[1], "(b) learned reward (RLHF's reward model)")
    methods = part["methods"]
    for ax, name in zip(axes[2:10], names):
        y = samples[name][:2000]
        with torch.no_grad():
            outside = (reference_policy().log_prob(torch.as_tensor(y)) < support).numpy()
        ax.scatter(y[~outside, 0], y[~outside, 1], s=2, alpha=0.4, color="tab:blue", label="inside ref support")
        ax.scatter(y[outside, 0], y[outside, 1], s=2, alpha=0.6, color="tab:red", label="outside ref support")
        m = methods[name]["metrics"]
        beta = f", beta={methods[name]['beta']:g}" if "beta" in methods[name] else ""
        frame(ax, f"{name}{beta}\nreward {m['reward']:.3f}, outside {m['out_of_support']:.1%}")
    axes[2].legend(loc="lower left", markerscale=5, fontsize=8)
    ax = axes[10]
    traj = part["trajectory"]
    for i in range(min(traj.shape[1], 80)):
        ax.plot(traj[:, i, 0], traj[:, i, 1], color="0.25", lw=0.8, alpha=0.8)
    ax.scatter(traj[0, :80, 0], traj[0, :80, 1], s=12, color="tab:blue", label="start: reference sample", zorder=3)
    ax.scatter(traj[-1, :80, 0], traj[-1, :80, 1], s=12, color="tab:green", label="end: PFM output", zorder=3)
    frame(ax, "PFM trajectories t: 0 → 1")
    ax.legend(loc="lower left", fontsize=8)
    ax = axes[11]
    for name, color in (("RLHF", "tab:purple"), ("DPO", "tab:brown"), ("IPO", "tab:pink")):
        sweep = methods[name]["sweep"]
        ax.plot([r["beta"] for r in sweep], [r["reward"] for r in sweep], "o-", color=color, label=name)
    for name, style in (("reference", ":"), ("PFM", "-"), (pfm_k, "--")):
        ax.axhline(methods[name]["metrics"]["reward"], color="k", ls=style, lw=1, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("beta")
    ax.set_ylabel("mean true reward")
    ax.set_title("beta sweeps (test reward)")
    ax.legend(fontsize=8)
    handles = [plt.Line2D([], [], color="0.4", ls="--", label="reference support (99% of its mass)"),
               plt.Line2D([], [], color="tab:orange", label="true reward contours 0.25/0.5/0.75")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=10)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    save_figure(fig, path, dpi=80)


def theory_figure(part: dict[str, Any], path: Path, title: str) -> None:
    """Reward against KL (the frontier), Theorem 1's J, and Theorem 2's rounds, for one run."""
    plt = pyplot()
    th, methods = part["theorems"], part["methods"]
    it_name = next(k for k in methods if k.startswith("iterative"))
    pfm_k = _iterated(methods)
    fig, axes = plt.subplots(2, 2, figsize=(13, 10.5))
    (ax_f, ax_t), (ax_j, ax_r) = axes

    ax = ax_f
    fr = th["frontier"]
    ax.plot([r["kl"] for r in fr], [r["reward"] for r in fr], "-", color="0.3", lw=2,
            label="best possible: pi ∝ pi_ref exp(r/beta)")
    tp = th["tempered"]
    ax.plot([r["kl"] for r in tp], [r["mean_reward"] for r in tp], ":", marker=".", color="tab:green",
            label="pi ∝ pi_ref w^a (a = 0 … 8)")
    for name, color, marker in (("RLHF", "tab:purple", "s"), ("DPO", "tab:brown", "^"), ("IPO", "tab:pink", "v")):
        sw = methods[name]["sweep"]
        ax.plot([r["kl"] for r in sw], [r["reward"] for r in sw], marker=marker, ls="-", lw=0.8, color=color,
                label=f"{name} (beta sweep)")
        for r in sw:
            ax.annotate(f"{r['beta']:g}", (r["kl"], r["reward"]), fontsize=7, color=color,
                        xytext=(3, 3), textcoords="offset points")
    rounds = [methods["reference"]["metrics"]] + methods[it_name]["rounds"]
    ax.plot([r["kl"] for r in rounds], [r["reward"] for r in rounds], "o-", color="tab:blue", label=it_name)
    for scorer, color in (("oracle", "tab:green"), ("reward model", "tab:cyan")):
        bon = sorted((e for e in methods.values() if e.get("scorer") == scorer), key=lambda e: e["n"])
        if bon:
            ax.plot([e["metrics"]["kl"] for e in bon], [e["metrics"]["reward"] for e in bon], "--", marker="o",
                    ms=4, lw=1, color=color, label=f"best-of-n ({scorer}), n = {', '.join(str(e['n']) for e in bon)}")
    dial = th.get("strength") or []
    ax.plot([r["kl"] for r in dial], [r["reward"] for r in dial], "-", marker=".", color="tab:red", lw=1,
            label="PFM's flow, strength s = 0 … 3")
    for r in dial:
        if r["strength"] in (0.5, 1.0, 2.0, 3.0):
            ax.annotate(f"s={r['strength']:g}", (r["kl"], r["reward"]), fontsize=7, color="tab:red",
                        xytext=(-4, 6), textcoords="offset points", ha="right")
    for name, marker, color in (("preferred (y+)", "*", "tab:orange"), ("PFM", "D", "tab:red"),
                                (pfm_k, "X", "tab:red"), (SOURCE_REFERENCE, "P", "tab:olive")):
        if name not in methods:
            continue
        m = methods[name]["metrics"]
        ax.plot([m["kl"]], [m["reward"]], marker=marker, ms=10, ls="", color=color, label=name)
    ax.set_xlabel("KL(pi ‖ pi_ref) [nats]")
    ax.set_ylabel("mean true reward")
    ax.set_title("reward against KL to the reference")
    ax.legend(fontsize=7, loc="lower right")

    ax = ax_t
    ax.plot([r["power"] for r in tp], [r["J"] for r in tp], "o-", color="tab:green", label="J(pi ∝ pi_ref w^a)")
    ax.axhline(BOUND, color="k", ls="--", lw=1, label="bound -log 2 (Theorem 1)")
    ax.axvline(1.0, color="0.5", ls=":", lw=1)
    ax.set_xlabel("power a (a = 0: pi_ref, a = 1: p1 = 2 pi_ref w)")
    ax.set_ylabel("J = E[log w] - KL")
    ax.set_title("Theorem 1: J peaks at the preferred marginal")
    ax.legend(fontsize=8)

    ax = ax_j
    rows = [(n, methods[n]["metrics"]) for n in ("reference", "preferred (y+)", "RLHF", "DPO", "IPO", "PFM",
                                                   pfm_k, it_name, SOURCE_REFERENCE) if n in methods]
    rows.append(("PFM on fresh y-", th["PFM on y-"]))
    ys = np.arange(len(rows))
    gaps = [m["J_gap"] for _, m in rows]
    ax.barh(ys, gaps, xerr=[2 * m["J_se"] for _, m in rows], color="tab:cyan")
    for y, gap in zip(ys, gaps):
        ax.annotate(f"{gap:+.3f}", (0.0, y), xytext=(4, 0), textcoords="offset points", ha="left",
                    va="center", fontsize=8)
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlim(right=1.0)
    ax.set_yticks(ys, [n for n, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.0, color="k", ls="--", lw=1)
    ax.set_xlabel("J(pi) - plug-in bound log E_ref[w] (0 = Theorem 1's maximum; bars ± 2 s.e.)")
    ax.set_title("Theorem 1's objective per method")

    ax = ax_r
    pred = th["iterated"]
    ks = [r["round"] for r in pred]
    ax.plot(ks, [r["entropy"] for r in pred], "o--", color="tab:blue", label="entropy, predicted (Theorem 2)")
    ax.plot(ks, [r["entropy"] for r in rounds], "o-", color="tab:blue", label=f"entropy, {it_name}")
    ax.set_xlabel("round (0 = pi_ref)")
    ax.set_ylabel("entropy [nats]", color="tab:blue")
    ax.set_xticks(ks)
    ax2 = ax.twinx()
    ax2.plot(ks, [r["reward"] for r in pred], "s--", color="tab:orange", label="true reward, predicted")
    ax2.plot(ks, [r["reward"] for r in rounds], "s-", color="tab:orange", label=f"true reward, {it_name}")
    ax2.set_ylabel("mean true reward", color="tab:orange")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="center right")
    ax.set_title("Theorem 2: iterating sharpens toward the maximizers of w")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    save_figure(fig, path, dpi=80)


POINTS = (("reference", "o", "k"), ("PFM", "D", "tab:red"), ("PFM x 2", "X", "tab:red"),
          (SOURCE_REFERENCE, "P", "tab:olive"), ("RLHF", "s", "tab:purple"), ("DPO", "^", "tab:brown"),
          ("iterative PFM", "*", "tab:pink"))


CURVES = (("best-of-n (oracle: true reward)", "oracle", "tab:green", "o"),
          ("best-of-n (RLHF's reward model)", "reward model", "tab:blue", "s"),
          ("PFM-select (n candidates, 1 solve)", None, "tab:orange", "v"))


def cost_figure(summary: dict[str, Any], path: Path, title: str) -> None:
    """Per preference model: mean true reward (± sample std over seeds) against reference-model calls per output
    (a fine-tuned policy's call counted as one) and against the measured wall time per output, both log x:
    best-of-n by either scorer and PFM-select as curves over n, PFM, PFM x 2, the reference-source variant, RLHF,
    DPO and iterative PFM as points, their solves in the legend (:func:`pfm_experiments.cost_figure.cost_grid`)."""
    rows = [(summary[pref]["methods"], "reward", "mean true reward", f"{pref} preferences: reward")
            for pref in summary]
    cost_grid(rows, path, title, CURVES, POINTS, time_scale=1e6, time_unit="µs")
