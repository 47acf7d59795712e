"""The paper's illustrative 2D experiment: PFM against a reward model + RLHF, DPO and IPO on the same pairs.

- Reference pi_ref: a fixed mixture of three Gaussians (a ``GaussianMixturePolicy``, so the baselines can fine-tune a
  copy of it through its ``log_prob``).
- True reward: a sum of three Gaussian bumps whose high-value regions the reference covers only partly: by default
  ("inside") every peak lies in the reference's support and the bumps reach beyond it; in the "edge" layout the
  highest peak lies just outside the support.
- Preferences, two models: ``bt`` (Bradley-Terry on the true reward at temperature 0.05) and ``threshold`` (the
  annotator only tells "good" outputs, reward >= 0.3, from the rest, and flips a coin between two of a kind: no
  finite Bradley-Terry reward gives those probabilities).
- Metrics on fresh test samples: mean true reward; win rate against the reference under the preference model
  (exact probabilities, ties half); sliced Wasserstein distance to held-out preferred samples (the y+ marginal); and
  the mass outside the reference's support, i.e. below the 1% quantile of log pi_ref over reference samples
  (over-optimization).
- Beta for RLHF, DPO and IPO is picked from a sweep by the held-out pairwise accuracy of the fine-tuned policy's
  implicit reward log pi/pi_ref (ties go to the larger beta): held-out pairs only, never the test metrics.

Entry point: :func:`reproduce` (``pfm reproduce toy2d``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from .._io import atomic_file
from ..baselines import RewardModel, dpo, implicit_accuracy, ipo, rlhf
from ..data import PreferenceDataset, collect_preferences
from ..errors import InvalidInputError
from ..flow import PreferenceFlow
from ..iterative import FlowChain, iterative_pfm
from ..policies import GaussianMixturePolicy

log = logging.getLogger("pfm")

REF_MEANS = torch.tensor([[-1.5, -1.0], [1.5, -1.0], [0.0, 1.2]])
REF_STDS = 0.7
REWARDS = {  # name -> (bump centers, heights, widths) of the true reward
    # default: every peak lies inside the reference's support; the high-value regions reach beyond it
    "inside": (torch.tensor([[1.7, 0.8], [-2.0, 0.9], [0.0, -2.0]]), torch.tensor([1.0, 0.7, 0.5]),
               torch.tensor([0.9, 0.7, 0.7])),
    # the highest peak lies just outside the reference's support (a harder case for PFM x k, see the README)
    "edge": (torch.tensor([[2.2, 1.2], [-2.2, 1.0], [0.0, -2.2]]), torch.tensor([1.0, 0.7, 0.5]),
             torch.tensor([1.0, 0.8, 0.8])),
}
BT_TEMPERATURE = 0.05
GOOD = 0.3
SUPPORT_QUANTILE = 0.01
PREFERENCES = ("bt", "threshold")
LIMITS = (-4.5, 4.5)


def reference_policy() -> GaussianMixturePolicy:
    """The pre-trained policy pi_ref (fixed parameters)."""
    return GaussianMixturePolicy(REF_MEANS, REF_STDS)


def true_reward(y: Tensor, layout: str = "inside") -> Tensor:
    """``(n, 2) -> (n,)``: a sum of Gaussian bumps (:data:`REWARDS`), in [0, ~1]."""
    if layout not in REWARDS:
        raise InvalidInputError(f"reward layout must be one of {tuple(REWARDS)}, got {layout!r}")
    centers, heights, widths = (t.to(y) for t in REWARDS[layout])
    d2 = (y[:, None, :] - centers[None]).pow(2).sum(-1)
    return (heights * torch.exp(-d2 / (2 * widths ** 2))).sum(1)


def preference_model(kind: str, layout: str = "inside") -> Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]:
    """``prefer(y_a, y_b, context) -> P(y_a preferred)``, ``(n,)``, for ``kind`` in :data:`PREFERENCES`."""
    true_reward(torch.zeros(1, 2), layout)  # checks the layout
    if kind == "bt":
        def prefer(a: Tensor, b: Tensor, context: Optional[Tensor] = None) -> Tensor:
            return torch.sigmoid((true_reward(a, layout) - true_reward(b, layout)) / BT_TEMPERATURE)
    elif kind == "threshold":
        def prefer(a: Tensor, b: Tensor, context: Optional[Tensor] = None) -> Tensor:
            ga, gb = (true_reward(a, layout) >= GOOD).float(), (true_reward(b, layout) >= GOOD).float()
            return 0.5 + 0.5 * (ga - gb)
    else:
        raise InvalidInputError(f"preference must be one of {PREFERENCES}, got {kind!r}")
    return prefer


@dataclass
class Config:
    """Everything that decides a run's numbers (its hash names the cache of finished parts)."""

    preferences: tuple[str, ...] = PREFERENCES
    seeds: tuple[int, ...] = (0, 1, 2)
    n_pairs: int = 3000
    heldout: float = 0.2
    n_test: int = 4000
    betas: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
    reward_steps: int = 1500
    rlhf_steps: int = 400
    dpo_steps: int = 600
    flow_steps: int = 1000
    flow_hidden: int = 128
    pfm_iterations: int = 5
    rounds: int = 3
    reward: str = "inside"
    quick: bool = False

    @classmethod
    def quick_config(cls) -> "Config":
        return cls(preferences=("bt",), seeds=(0,), n_pairs=1500, n_test=2000, betas=(0.1, 1.0, 10.0),
                   reward_steps=500, rlhf_steps=200, dpo_steps=300, flow_steps=600, rounds=2, quick=True)

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class Metrics:
    reward: float
    win_rate: float
    swd: float
    out_of_support: float


@dataclass
class Evaluator:
    """Scores sets of outputs against fixed test draws of the reference and of the preferred marginal."""

    prefer: Callable
    layout: str
    y_ref: Tensor
    y_pref: Tensor
    log_ref_threshold: float
    reference: GaussianMixturePolicy
    seed: int = 0
    samples: dict[str, np.ndarray] = field(default_factory=dict)

    @torch.no_grad()
    def __call__(self, name: Optional[str], y: Tensor) -> Metrics:
        import ot

        y = y.detach().float()
        n = min(len(y), len(self.y_ref))
        perm = torch.randperm(len(self.y_ref), generator=torch.Generator().manual_seed(self.seed))[:n]
        win = float(self.prefer(y[:n], self.y_ref[perm]).mean())
        swd = float(ot.sliced_wasserstein_distance(y.double().numpy(), self.y_pref.double().numpy(),
                                                   n_projections=256, seed=self.seed))
        oos = float((self.reference.log_prob(y) < self.log_ref_threshold).float().mean())
        if name is not None:
            self.samples[name] = y.numpy().astype(np.float32)
        return Metrics(float(true_reward(y, self.layout).mean()), win, swd, oos)


def _sweep(name: str, train: Callable[[float], torch.nn.Module], betas: tuple[float, ...], ref, heldout,
           evaluate: Evaluator, gen: torch.Generator, n_test: int) -> dict[str, Any]:
    """Train one policy per beta; pick beta by held-out implicit-reward accuracy; score every beta on the test."""
    rows = []
    best, best_policy = None, None
    for beta in sorted(betas, reverse=True):  # largest first, so ties keep the larger beta
        policy = train(beta)
        acc = implicit_accuracy(policy, ref, heldout)
        m = evaluate(None, policy.sample(None, n_test, generator=gen))
        rows.append({"beta": beta, "heldout_accuracy": acc, **asdict(m)})
        if best is None or acc > best["heldout_accuracy"] + 1e-12:
            best, best_policy = rows[-1], policy
    assert best_policy is not None
    metrics = evaluate(name, best_policy.sample(None, n_test, generator=gen))
    return {"beta": best["beta"], "metrics": asdict(metrics), "sweep": sorted(rows, key=lambda r: r["beta"])}


def run_one(cfg: Config, preference: str, seed: int, progress: bool = False) -> dict[str, Any]:
    """One seed under one preference model: every method on the same data. Returns metrics, times, samples."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    ref = reference_policy()
    prefer = preference_model(preference, cfg.reward)
    times: dict[str, float] = {}
    t = time.perf_counter()

    data = collect_preferences(lambda c, n: ref.sample(c, n, generator=gen), prefer, n=cfg.n_pairs,
                               kind="pairwise", seed=10_000 + seed)
    train, heldout = data.split(cfg.heldout, seed=seed)
    test_pairs = collect_preferences(lambda c, n: ref.sample(c, n, generator=gen), prefer, n=cfg.n_test,
                                     kind="pairwise", seed=20_000 + seed)
    y_ref = ref.sample(None, cfg.n_test, generator=gen)
    with torch.no_grad():
        threshold = float(torch.quantile(ref.log_prob(ref.sample(None, 100_000, generator=gen)), SUPPORT_QUANTILE))
    ev = Evaluator(prefer, cfg.reward, y_ref, test_pairs.chosen, threshold, ref, seed=seed)
    out: dict[str, Any] = {"preference": preference, "reward": cfg.reward, "seed": seed, "n_train": len(train),
                           "n_heldout": len(heldout), "support_threshold": threshold, "methods": {}}
    M = out["methods"]
    M["reference"] = {"metrics": asdict(ev("reference", ref.sample(None, cfg.n_test, generator=gen)))}
    M["preferred (y+)"] = {"metrics": asdict(ev("preferred (y+)", train.chosen))}
    times["data"] = time.perf_counter() - t

    t = time.perf_counter()
    rm = RewardModel.for_dataset(train, hidden=128, depth=2)
    rm.fit(train, steps=cfg.reward_steps, seed=seed, progress=progress)
    M["reward model"] = {"heldout_accuracy": rm.accuracy(heldout), "train_accuracy": rm.accuracy(train)}
    gx, _, grid = _grid()
    out["learned_reward_grid"] = rm.score(grid).numpy().reshape(gx.shape)
    times["reward model"] = time.perf_counter() - t

    t = time.perf_counter()
    M["RLHF"] = _sweep("RLHF", lambda b: rlhf(ref, rm.score, beta=b, steps=cfg.rlhf_steps, batch_size=64, lr=1e-2,
                                              seed=seed, progress=progress)[0], cfg.betas, ref, heldout, ev, gen,
                       cfg.n_test)
    times["RLHF"] = time.perf_counter() - t
    for name, fn in (("DPO", dpo), ("IPO", ipo)):
        t = time.perf_counter()
        M[name] = _sweep(name, lambda b: fn(ref, train, beta=b, steps=cfg.dpo_steps, batch_size=256, lr=1e-2,
                                            seed=seed, progress=progress)[0], cfg.betas, ref, heldout, ev, gen,
                         cfg.n_test)
        times[name] = time.perf_counter() - t

    t = time.perf_counter()
    flow = PreferenceFlow.for_dataset(train, hidden=cfg.flow_hidden, depth=3)
    flow.fit(train, steps=cfg.flow_steps, batch_size=256, seed=seed, progress=progress)
    times["PFM fit"] = time.perf_counter() - t
    y_pfm = flow.transform(y_ref)
    M["PFM"] = {"metrics": asdict(ev("PFM", y_pfm))}
    k = cfg.pfm_iterations
    M[f"PFM x {k}"] = {"metrics": asdict(ev(f"PFM x {k}", flow.iterate(y_pfm, k=k - 1)))}
    out["trajectory"] = flow.transform(y_ref[:150], return_trajectory=True).numpy()

    t = time.perf_counter()
    rounds: list[dict[str, Any]] = [M["PFM"]["metrics"]]

    def on_round(r: int, chain: FlowChain, ds: PreferenceDataset) -> None:
        if r > 1:
            rounds.append(asdict(ev(None, chain.transform(y_ref))))

    chain = iterative_pfm(lambda c, n: ref.sample(c, n, generator=gen), prefer, rounds=cfg.rounds,
                          n=len(train), start=FlowChain([flow]), on_round=on_round, seed=30_000 + seed,
                          collect_kwargs={"kind": "pairwise"},
                          flow_kwargs={"hidden": cfg.flow_hidden, "depth": 3},
                          fit_kwargs={"steps": cfg.flow_steps, "batch_size": 256, "progress": progress})
    name = f"iterative PFM ({cfg.rounds} rounds)"
    M[name] = {"metrics": asdict(ev(name, chain.transform(y_ref))), "rounds": rounds}
    times["iterative PFM"] = time.perf_counter() - t
    out["seconds"] = times
    out["samples"] = ev.samples
    return out


# ------------------------------------------------------------------------------------------------ reporting
def _grid(n: int = 200) -> tuple[np.ndarray, np.ndarray, Tensor]:
    g = np.linspace(*LIMITS, n)
    gx, gy = np.meshgrid(g, g)
    return gx, gy, torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float32)


METRIC_NAMES = {"reward": "true reward ↑", "win_rate": "win rate vs ref ↑", "swd": "SW dist. to y+ ↓",
                "out_of_support": "outside ref support ↓"}


def summarize(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of every method's metrics, per preference model."""
    summary: dict[str, Any] = {}
    for pref in dict.fromkeys(p["preference"] for p in parts):
        runs = [p for p in parts if p["preference"] == pref]
        methods: dict[str, Any] = {}
        for name in runs[0]["methods"]:
            entry: dict[str, Any] = {}
            if "metrics" in runs[0]["methods"][name]:
                for metric in METRIC_NAMES:
                    vals = np.array([r["methods"][name]["metrics"][metric] for r in runs])
                    entry[metric] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1
                                     else 0.0}
            if "beta" in runs[0]["methods"][name]:
                entry["beta"] = [r["methods"][name]["beta"] for r in runs]
            if "heldout_accuracy" in runs[0]["methods"][name]:
                vals = np.array([r["methods"][name]["heldout_accuracy"] for r in runs])
                entry["heldout_accuracy"] = {"mean": float(vals.mean()),
                                             "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
            methods[name] = entry
        summary[pref] = {"seeds": [r["seed"] for r in runs], "methods": methods}
    return summary


def table(summary: dict[str, Any]) -> str:
    """Markdown tables, one per preference model."""
    out = []
    for pref, s in summary.items():
        label = {"bt": "Bradley-Terry preferences", "threshold": "threshold (non-BT) preferences"}[pref]
        out.append(f"**{label}** (mean ± std over seeds {', '.join(map(str, s['seeds']))})\n")
        out.append("| method | " + " | ".join(METRIC_NAMES.values()) + " | beta chosen |")
        out.append("|---|" + "---|" * (len(METRIC_NAMES) + 1))
        for name, e in s["methods"].items():
            if name == "reward model":
                acc = e["heldout_accuracy"]
                out.append(f"| reward model (held-out pair accuracy {acc['mean']:.3f} ± {acc['std']:.3f}) |"
                           + " |" * (len(METRIC_NAMES) + 1))
                continue
            cells = [f"{e[m]['mean']:.3f} ± {e[m]['std']:.3f}" for m in METRIC_NAMES]
            beta = ", ".join(f"{b:g}" for b in e["beta"]) if "beta" in e else ""
            out.append(f"| {name} | " + " | ".join(cells) + f" | {beta} |")
        out.append("")
    return "\n".join(out)


def sweep_table(parts: list[dict[str, Any]]) -> str:
    """Markdown: every beta of the RLHF, DPO and IPO sweeps, averaged over seeds, per preference model."""
    out = []
    for pref in dict.fromkeys(p["preference"] for p in parts):
        runs = [p for p in parts if p["preference"] == pref]
        out.append(f"**beta sweeps, {pref} preferences** (mean over {len(runs)} seed(s); `*` = chosen in every "
                   "seed)\n")
        out.append("| method | beta | held-out implicit accuracy | true reward | outside ref support |")
        out.append("|---|---|---|---|---|")
        for name in ("RLHF", "DPO", "IPO"):
            for i, row in enumerate(runs[0]["methods"][name]["sweep"]):
                vals = {k: float(np.mean([r["methods"][name]["sweep"][i][k] for r in runs]))
                        for k in ("heldout_accuracy", "reward", "out_of_support")}
                chosen = all(r["methods"][name]["beta"] == row["beta"] for r in runs)
                out.append(f"| {name} | {row['beta']:g}{' *' if chosen else ''} | {vals['heldout_accuracy']:.3f} | "
                           f"{vals['reward']:.3f} | {vals['out_of_support']:.3f} |")
        out.append("")
    return "\n".join(out)


def figure(part: dict[str, Any], path: Path, title: str) -> None:
    """The paper's panels for one run, plus IPO, iterative PFM, PFM's trajectories and the beta sweeps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gx, gy, grid = _grid()
    with torch.no_grad():
        true_r = true_reward(grid, part["reward"]).numpy().reshape(gx.shape)
        log_ref = reference_policy().log_prob(grid).numpy().reshape(gx.shape)
    learned = part["learned_reward_grid"]
    support = part["support_threshold"]
    samples = part["samples"]
    names = ["reference", "preferred (y+)", "RLHF", "DPO", "IPO", "PFM", "PFM x 5",
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
    for name, style in (("reference", ":"), ("PFM", "-"), ("PFM x 5", "--")):
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
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)


def reproduce(
    out_dir: str | Path = "results",
    *,
    quick: bool = False,
    seeds: Optional[int] = None,
    preferences: Optional[tuple[str, ...]] = None,
    reward: str = "inside",
    cache_dir: Optional[str | Path] = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every method for every preference model and seed; write ``toy2d.json``, ``toy2d.md``, ``toy2d.png``.

    Finished (preference, seed) parts are cached under ``cache_dir`` (default: the data directory), so a run that
    was stopped goes on where it was.
    """
    from ..runtime import data_dir

    cfg = Config.quick_config() if quick else Config()
    if seeds is not None:
        cfg.seeds = tuple(range(seeds))
    if preferences is not None:
        for p in preferences:
            if p not in PREFERENCES:
                raise InvalidInputError(f"preferences must be among {PREFERENCES}, got {p!r}")
        cfg.preferences = tuple(preferences)
    true_reward(torch.zeros(1, 2), reward)  # checks the layout
    cfg.reward = reward
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else data_dir() / "toy2d" / cfg.key()
    cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    parts: list[dict[str, Any]] = []
    figures: dict[str, dict[str, Any]] = {}
    arrays = ("samples", "learned_reward_grid", "trajectory")
    for pref in cfg.preferences:
        for seed in cfg.seeds:
            path = cache / f"{pref}-{seed}.json"
            if path.exists() and path.with_suffix(".npz").exists():
                record = json.loads(path.read_text())
                with np.load(path.with_suffix(".npz")) as z:
                    extra = {"samples": {k[8:]: z[k] for k in z.files if k.startswith("samples/")},
                             "learned_reward_grid": z["learned_reward_grid"], "trajectory": z["trajectory"]}
                log.info("toy2d: reusing %s", path)
            else:
                log.info("toy2d: preference %s, seed %d", pref, seed)
                t = time.perf_counter()
                part = run_one(cfg, pref, seed, progress=progress)
                part["wall_seconds"] = time.perf_counter() - t
                record = {k: v for k, v in part.items() if k not in arrays}
                extra = {k: part[k] for k in arrays}
                with atomic_file(path.with_suffix(".npz"), "wb") as f:
                    np.savez_compressed(f, learned_reward_grid=extra["learned_reward_grid"],
                                        trajectory=extra["trajectory"],
                                        **{f"samples/{k}": v for k, v in extra["samples"].items()})
                with atomic_file(path, "w") as f:
                    json.dump(record, f)
            parts.append(record)
            if seed == cfg.seeds[0]:
                figures[pref] = {**record, **extra}
    summary = summarize(parts)
    suffix = "" if reward == "inside" else f"-{reward}"
    for pref, part in figures.items():
        label = {"bt": "Bradley-Terry", "threshold": "threshold (non-BT)"}[pref]
        figure(part, out_dir / f"toy2d{suffix}-{pref}.png", f"2D preference alignment, {label} preferences, seed "
               f"{part['seed']}: same {part['n_train']} training pairs for every method")
    result = {"config": asdict(cfg), "summary": summary, "runs": parts,
              "seconds": time.perf_counter() - start, "torch_threads": torch.get_num_threads(),
              "compute_seconds": float(sum(p["wall_seconds"] for p in parts))}
    with atomic_file(out_dir / f"toy2d{suffix}.json", "w") as f:
        json.dump(result, f, indent=1)
    md = table(summary) + "\n" + sweep_table(parts)
    with atomic_file(out_dir / f"toy2d{suffix}.md", "w") as f:
        f.write(md + f"\nComputing every part took {result['compute_seconds']:.0f} s with {torch.get_num_threads()} "
                f"torch threads (this invocation: {result['seconds']:.0f} s; finished parts are cached).\n")
    return result

