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

from pfm.io import atomic_file
from pfm.baselines import RewardModel, dpo, ipo, rlhf, sweep_beta
from pfm.data import PreferenceDataset, collect_preferences
from pfm.errors import InvalidInputError
from pfm.flow import PreferenceFlow
from pfm.iterative import FlowChain, iterative_pfm
from pfm.likelihood import log_prob
from pfm.objective import (BOUND, effective_sample_size, iterate_marginals, normalized_log_weights,
                         preference_objective, preferred_log_density, rejected_log_density, tempered_objective,
                         win_probability)
from pfm.policies import GaussianMixturePolicy

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


def _on_rewards(kind: str) -> Callable[[Tensor, Tensor], Tensor]:
    """``P(a preferred)`` as a function of the two true rewards: both preference models depend on nothing else."""
    if kind == "bt":
        return lambda ra, rb: torch.sigmoid((ra - rb) / BT_TEMPERATURE)
    if kind == "threshold":
        return lambda ra, rb: 0.5 + 0.5 * ((ra >= GOOD).to(ra.dtype) - (rb >= GOOD).to(rb.dtype))
    raise InvalidInputError(f"preference must be one of {PREFERENCES}, got {kind!r}")


def preference_model(kind: str, layout: str = "inside") -> Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]:
    """``prefer(y_a, y_b, context) -> P(y_a preferred)``, ``(n,)``, for ``kind`` in :data:`PREFERENCES`."""
    true_reward(torch.zeros(1, 2), layout)  # checks the layout
    g = _on_rewards(kind)

    def prefer(a: Tensor, b: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return g(true_reward(a, layout), true_reward(b, layout))

    return prefer


def win_rate_function(kind: str, layout: str, opponents: Tensor) -> Callable[[Tensor], Tensor]:
    """``y -> w(y)``, the chance that ``y`` beats a draw of ``opponents`` (Theorem 1's ``w`` when they are reference
    samples), computed on the rewards: one ``(N, M)`` table of probabilities instead of ``N M`` reward calls."""
    g = _on_rewards(kind)
    r_opp = true_reward(opponents, layout)[:, None]

    def w(y: Tensor) -> Tensor:
        return win_probability(lambda a, b, c: g(a[:, 0], b[:, 0]), true_reward(y, layout)[:, None], r_opp)

    return w


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
    schema: int = 4  # bumped whenever a part's record changes, so stale cached parts are not reused
    w_samples: int = 20_000  # reference samples behind the Monte Carlo w(y) of Theorem 1, and its expectations
    iterate_samples: int = 4000  # reference samples carrying Theorem 2's iterated marginals (an M x M table)
    frontier_samples: int = 100_000  # reference samples behind the optimal reward-KL frontier
    quick: bool = False

    @classmethod
    def quick_config(cls) -> "Config":
        return cls(preferences=("bt",), seeds=(0,), n_pairs=1500, n_test=2000, betas=(0.1, 1.0, 10.0),
                   reward_steps=500, rlhf_steps=200, dpo_steps=300, flow_steps=600, rounds=2, w_samples=8000,
                   iterate_samples=2000, frontier_samples=20_000, quick=True)

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class Metrics:
    reward: float
    win_rate: float
    swd: float
    out_of_support: float
    # with the method's log-density (see the module docstring): KL(pi || pi_ref) in nats, Theorem 1's J (at most
    # -log 2), their standard errors, and the entropy -E[log pi]
    kl: Optional[float] = None
    kl_se: Optional[float] = None
    J: Optional[float] = None
    J_se: Optional[float] = None
    J_gap: Optional[float] = None  # J minus the plug-in bound log E_ref[w] of the same estimated w: <= 0
    entropy: Optional[float] = None


@dataclass
class Evaluator:
    """Scores sets of outputs against fixed test draws of the reference and of the preferred marginal."""

    prefer: Callable
    layout: str
    y_ref: Tensor
    y_pref: Tensor
    log_ref_threshold: float
    reference: GaussianMixturePolicy
    w: Callable[[Tensor], Tensor]
    log_bound: float  # log E_ref[w] for this estimate of w: Theorem 1's bound, -log 2 up to Monte Carlo error
    seed: int = 0
    samples: dict[str, np.ndarray] = field(default_factory=dict)

    @torch.no_grad()
    def __call__(self, name: Optional[str], y: Tensor, log_pi: Optional[Tensor] = None) -> Metrics:
        """Metrics of outputs ``y`` ``(n, 2)``; with their log-density ``log_pi`` ``(n,)`` also KL, J and entropy."""
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
        m = Metrics(float(true_reward(y, self.layout).mean()), win, swd, oos)
        if log_pi is not None:
            est = preference_objective(self.w(y), log_pi.double(), self.reference.log_prob(y))
            m.kl, m.kl_se, m.J, m.J_se = est.kl, est.kl_stderr, est.J, est.stderr
            m.J_gap = est.J - self.log_bound
            m.entropy = float(-log_pi.double().mean())
        return m


def _sweep(name: str, train: Callable[[float], torch.nn.Module], betas: tuple[float, ...], ref, heldout,
           evaluate: Evaluator, gen: torch.Generator, n_test: int) -> dict[str, Any]:
    """Train one policy per beta; pick beta by held-out implicit-reward accuracy; score every beta on the test."""
    beta, policy, rows = sweep_beta(train, betas, ref, heldout,
                                    lambda p: asdict(evaluate(None, *_with_density(p, n_test, gen))))
    metrics = evaluate(name, *_with_density(policy, n_test, gen))
    return {"beta": beta, "metrics": asdict(metrics), "sweep": rows}


@torch.no_grad()
def _with_density(policy: GaussianMixturePolicy, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    y = policy.sample(None, n, generator=gen)
    return y, policy.log_prob(y)


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
    w = win_rate_function(preference, cfg.reward, ref.sample(None, cfg.w_samples, generator=gen))
    ys = ref.sample(None, cfg.w_samples, generator=gen)  # independent of the opponents behind w
    z = float(w(ys).mean())  # E_ref[w]: 1/2 exactly, here its estimate for this w
    ev = Evaluator(prefer, cfg.reward, y_ref, test_pairs.chosen, threshold, ref, w, float(np.log(z)), seed=seed)
    out: dict[str, Any] = {"preference": preference, "reward": cfg.reward, "seed": seed, "n_train": len(train),
                           "n_heldout": len(heldout), "support_threshold": threshold, "methods": {}}
    M = out["methods"]
    M["reference"] = {"metrics": asdict(ev("reference", *_with_density(ref, cfg.n_test, gen)))}
    with torch.no_grad():  # y+ has the closed-form density p1 = 2 pi_ref w (Theorem 1)
        log_p1 = preferred_log_density(ref.log_prob(train.chosen), w(train.chosen), z)
    M["preferred (y+)"] = {"metrics": asdict(ev("preferred (y+)", train.chosen, log_p1))}
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
    pfm = log_prob(flow, y_ref, reference=ref, given="reference")  # outputs and their log-density
    M["PFM"] = {"metrics": asdict(ev("PFM", pfm.output, pfm.log_prob))}
    k = cfg.pfm_iterations
    pfm_k = log_prob(flow, y_ref, reference=ref, given="reference", k=k)
    M[f"PFM x {k}"] = {"metrics": asdict(ev(f"PFM x {k}", pfm_k.output, pfm_k.log_prob))}
    out["trajectory"] = flow.transform(y_ref[:150], return_trajectory=True).numpy()

    t = time.perf_counter()
    rounds: list[dict[str, Any]] = [M["PFM"]["metrics"]]

    last: list[Any] = []

    def on_round(r: int, chain: FlowChain, ds: PreferenceDataset) -> None:
        if r > 1:
            last[:] = [log_prob(chain, y_ref, reference=ref, given="reference")]
            rounds.append(asdict(ev(None, last[0].output, last[0].log_prob)))

    chain = iterative_pfm(lambda c, n: ref.sample(c, n, generator=gen), prefer, rounds=cfg.rounds,
                          n=len(train), start=FlowChain([flow]), on_round=on_round, seed=30_000 + seed,
                          collect_kwargs={"kind": "pairwise"},
                          flow_kwargs={"hidden": cfg.flow_hidden, "depth": 3},
                          fit_kwargs={"steps": cfg.flow_steps, "batch_size": 256, "progress": progress})
    name = f"iterative PFM ({cfg.rounds} rounds)"
    final = last[0] if last else log_prob(chain, y_ref, reference=ref, given="reference")
    M[name] = {"metrics": asdict(ev(name, final.output, final.log_prob)), "rounds": rounds}
    times["iterative PFM"] = time.perf_counter() - t

    t = time.perf_counter()
    out["theorems"] = theorems(cfg, preference, flow, train, test_pairs.rejected, y_ref, w, ys, gen, seed,
                               progress)
    times["theorems"] = time.perf_counter() - t
    out["seconds"] = times
    out["samples"] = ev.samples
    return out


TEMPER_POWERS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0)


@torch.no_grad()
def theorems(cfg: Config, preference: str, flow: PreferenceFlow, train: PreferenceDataset, rejected: Tensor,
             y_ref: Tensor, w: Callable[[Tensor], Tensor], ys: Tensor, gen: torch.Generator, seed: int,
             progress: bool = False) -> dict[str, Any]:
    """What Theorems 1 and 2 predict for this reference and preference model, from reference samples alone; PFM's
    flow applied to the input it was trained on (fresh y-, whose density 2 pi_ref (1 - w) is known); and a flow
    trained from the reference marginal (y- and y+ together) onto y+, applied to fresh reference samples."""
    ref = reference_policy()
    w_ys, log_ref, r = w(ys).double(), ref.log_prob(ys).double(), true_reward(ys, cfg.reward).double()
    tempered = tempered_objective(w_ys, TEMPER_POWERS, values={"reward": r, "w": w_ys})
    g = _on_rewards(preference)
    m = cfg.iterate_samples
    it = iterate_marginals(lambda a, b, c: g(a[:, 0], b[:, 0]), r[:m, None].float(), log_ref[:m], cfg.rounds)
    predicted_rounds = [{"round": k, "entropy": float(it.entropy[k]), "kl": float(it.kl[k]),
                         "reward": float((it.weights[k] * r[:m]).mean()),
                         "mean_w": float((it.weights[k] * w_ys[:m]).mean()), "ess": float(it.ess[k])}
                        for k in range(cfg.rounds + 1)]

    def log_p0(y: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return rejected_log_density(ref.log_prob(y), w(y), z)

    z = float(w_ys.mean())
    dens = log_prob(flow, rejected, reference=log_p0, given="reference")
    est = preference_objective(w(dens.output), dens.log_prob, ref.log_prob(dens.output))
    # the same pairs, but the source is the reference marginal (the y- and y+ of iid pairs together): its flow
    # carries fresh reference samples, rather than y-, onto p1
    both = PreferenceDataset(torch.cat([train.chosen, train.chosen]), torch.cat([train.rejected, train.chosen]))
    to_p1 = PreferenceFlow.for_dataset(both, hidden=cfg.flow_hidden, depth=3)
    with torch.enable_grad():
        to_p1.fit(both, steps=cfg.flow_steps, batch_size=256, seed=seed, progress=progress)
    d1 = log_prob(to_p1, y_ref, reference=ref, given="reference")
    est1 = preference_objective(w(d1.output), d1.log_prob, ref.log_prob(d1.output))
    # the reward-KL frontier: p ∝ pi_ref exp(r / beta) maximizes E[r] - beta KL (self-normalized importance weights)
    rf = true_reward(ref.sample(None, cfg.frontier_samples, generator=gen), cfg.reward).double()
    frontier = []
    for beta in np.geomspace(1.0, 0.01, 25):
        lu = normalized_log_weights(rf / beta)
        u = lu.exp()
        ess = float(effective_sample_size(u))
        if ess < 200:
            break
        frontier.append({"beta": float(beta), "reward": float((u * rf).mean()), "kl": float((u * lu).mean()),
                         "ess": ess})
    return {"bound": BOUND, "mean_w_reference": z, "plugin_bound": float(np.log(z)), "tempered": tempered,
            "iterated": predicted_rounds, "frontier": frontier,
            "PFM on y-": {"J": est.J, "J_se": est.stderr, "J_gap": est.J - float(np.log(z)), "kl": est.kl,
                          "kl_se": est.kl_stderr,
                          "reward": float(true_reward(dens.output, cfg.reward).mean())},
            "flow from pi_ref to y+": {"J": est1.J, "J_se": est1.stderr, "J_gap": est1.J - float(np.log(z)),
                                       "kl": est1.kl, "kl_se": est1.kl_stderr,
                                       "reward": float(true_reward(d1.output, cfg.reward).mean())}}


# ------------------------------------------------------------------------------------------------ reporting
def _grid(n: int = 200) -> tuple[np.ndarray, np.ndarray, Tensor]:
    g = np.linspace(*LIMITS, n)
    gx, gy = np.meshgrid(g, g)
    return gx, gy, torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float32)


METRIC_NAMES = {"reward": "true reward ↑", "win_rate": "win rate vs ref ↑", "swd": "SW dist. to y+ ↓",
                "out_of_support": "outside ref support ↓"}
THEORY_NAMES = {"kl": "KL(pi ‖ pi_ref)", "J": "J(pi) (bound -log 2 = -0.693)",
                "J_gap": "J - plug-in bound (≤ 0)", "entropy": "entropy"}


def summarize(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of every method's metrics, per preference model."""
    summary: dict[str, Any] = {}
    for pref in dict.fromkeys(p["preference"] for p in parts):
        runs = [p for p in parts if p["preference"] == pref]
        methods: dict[str, Any] = {}
        for name in runs[0]["methods"]:
            entry: dict[str, Any] = {}
            if "metrics" in runs[0]["methods"][name]:
                for metric in (*METRIC_NAMES, *THEORY_NAMES):
                    if runs[0]["methods"][name]["metrics"].get(metric) is None:
                        continue
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
        out.append("| method | beta | held-out implicit accuracy | true reward | outside ref support | KL to ref | J |")
        out.append("|---|---|---|---|---|---|---|")
        for name in ("RLHF", "DPO", "IPO"):
            for i, row in enumerate(runs[0]["methods"][name]["sweep"]):
                vals = {k: float(np.mean([r["methods"][name]["sweep"][i][k] for r in runs]))
                        for k in ("heldout_accuracy", "reward", "out_of_support", "kl", "J")}
                chosen = all(r["methods"][name]["beta"] == row["beta"] for r in runs)
                out.append(f"| {name} | {row['beta']:g}{' *' if chosen else ''} | {vals['heldout_accuracy']:.3f} | "
                           f"{vals['reward']:.3f} | {vals['out_of_support']:.3f} | {vals['kl']:.3f} | "
                           f"{vals['J']:.3f} |")
        out.append("")
    return "\n".join(out)


def theory_table(summary: dict[str, Any], parts: list[dict[str, Any]]) -> str:
    """Markdown: KL, J and entropy per method, and what the theorems predict from the reference alone."""
    out = []
    for pref, s in summary.items():
        runs = [p for p in parts if p["preference"] == pref]
        out.append(f"**What the theorems predict, {pref} preferences** (mean ± std over seeds "
                   f"{', '.join(map(str, s['seeds']))}; KL and J by Monte Carlo on the test samples)\n")
        out.append("| method | true reward | " + " | ".join(THEORY_NAMES.values()) + " |")
        out.append("|---|---|" + "---|" * len(THEORY_NAMES))
        for name, e in s["methods"].items():
            if "J" not in e:
                continue
            cells = [f"{e[m]['mean']:.3f} ± {e[m]['std']:.3f}" for m in THEORY_NAMES]
            out.append(f"| {name} | {e['reward']['mean']:.3f} | " + " | ".join(cells) + " |")

        def mean(f: Callable[[dict[str, Any]], float]) -> str:
            v = np.array([f(r["theorems"]) for r in runs])
            return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"

        p1 = lambda th: next(t for t in th["tempered"] if t["power"] == 1.0)  # noqa: E731
        out.append(f"| *PFM's flow on fresh y- (its training input)* | {mean(lambda th: th['PFM on y-']['reward'])} "
                   f"| {mean(lambda th: th['PFM on y-']['kl'])} | {mean(lambda th: th['PFM on y-']['J'])} | "
                   f"{mean(lambda th: th['PFM on y-']['J_gap'])} | |")
        out.append(f"| *flow from pi_ref (y- and y+) to y+, on fresh reference samples* | "
                   f"{mean(lambda th: th['flow from pi_ref to y+']['reward'])} "
                   f"| {mean(lambda th: th['flow from pi_ref to y+']['kl'])} | "
                   f"{mean(lambda th: th['flow from pi_ref to y+']['J'])} | "
                   f"{mean(lambda th: th['flow from pi_ref to y+']['J_gap'])} | |")
        out.append(f"| *p1 = 2 pi_ref w, predicted* | {mean(lambda th: p1(th)['mean_reward'])} | "
                   f"{mean(lambda th: p1(th)['kl'])} | {mean(lambda th: p1(th)['J'])} | 0 | |")
        out.append("")
        out.append(f"E_ref[w] = {mean(lambda th: th['mean_w_reference'])} (1/2 by the premise of Theorem 1); the "
                   f"plug-in bound log E_ref[w] = {mean(lambda th: th['plugin_bound'])}.\n")
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


def theory_figure(part: dict[str, Any], path: Path, title: str) -> None:
    """Reward against KL (the frontier), Theorem 1's J, and Theorem 2's rounds, for one run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    th, methods = part["theorems"], part["methods"]
    it_name = next(k for k in methods if k.startswith("iterative"))
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
    for name, marker, color in (("preferred (y+)", "*", "tab:orange"), ("PFM", "D", "tab:red"),
                                ("PFM x 5", "X", "tab:red")):
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
                                                   "PFM x 5", it_name)]
    rows.append(("PFM on fresh y-", th["PFM on y-"]))
    rows.append(("flow pi_ref -> y+", th["flow from pi_ref to y+"]))
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
    from pfm.runtime import data_dir

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
        theory_figure(part, out_dir / f"toy2d{suffix}-{pref}-theory.png", f"What the theorems predict, measured: "
                      f"{label} preferences, seed {part['seed']}")
    result = {"config": asdict(cfg), "summary": summary, "runs": parts,
              "seconds": time.perf_counter() - start, "torch_threads": torch.get_num_threads(),
              "compute_seconds": float(sum(p["wall_seconds"] for p in parts))}
    with atomic_file(out_dir / f"toy2d{suffix}.json", "w") as f:
        json.dump(result, f, indent=1)
    md = table(summary) + "\n" + sweep_table(parts) + "\n" + theory_table(summary, parts)
    with atomic_file(out_dir / f"toy2d{suffix}.md", "w") as f:
        f.write(md + f"\nComputing every part took {result['compute_seconds']:.0f} s with {torch.get_num_threads()} "
                f"torch threads (this invocation: {result['seconds']:.0f} s; finished parts are cached).\n")
    return result

