"""What Theorems 1 and 2 predict for the 2D task, from reference samples alone, beside what PFM's flows do."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from pfm.flow import PreferenceFlow
from pfm.likelihood import log_prob
from pfm.objective import (BOUND, effective_sample_size, iterate_marginals, normalized_log_weights,
                           preference_objective, rejected_log_density, tempered_objective)
from .config import Config
from .metrics import Evaluator
from .task import on_rewards, reference_policy, true_reward

TEMPER_POWERS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0)


@torch.no_grad()
def theorems(cfg: Config, preference: str, flow: PreferenceFlow, rejected: Tensor, w: Callable[[Tensor], Tensor],
             ys: Tensor, gen: torch.Generator) -> dict[str, Any]:
    """What Theorems 1 and 2 predict for this reference and preference model, from reference samples ``ys``
    ``(M, 2)`` alone, and PFM's flow applied to the input it was trained on (fresh y- ``(N, 2)``, whose density
    2 pi_ref (1 - w) is known). (The flow from the reference's samples onto y+ is a method row of its own,
    ``fit(source="reference")``, see :mod:`.methods`.)"""
    ref = reference_policy()
    w_ys, log_ref, r = w(ys).double(), ref.log_prob(ys).double(), true_reward(ys, cfg.reward).double()
    tempered = tempered_objective(w_ys, TEMPER_POWERS, values={"reward": r, "w": w_ys})
    g = on_rewards(preference)
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
                          "reward": float(true_reward(dens.output, cfg.reward).mean())}}


@torch.no_grad()
def strength_dial(flow: PreferenceFlow, y_ref: Tensor, ref: Any, evaluate: Evaluator,
                  strengths: tuple[float, ...]) -> list[dict[str, Any]]:
    """PFM's one flow at every strength of ``strengths`` (``transform(y, strength=s)``, s = 1 is PFM, s = 2 PFM x
    2): the metrics of its outputs from the reference samples ``y_ref`` ``(N, 2)``, KL and J by the exact change of
    variables (:func:`pfm.likelihood.log_prob` with ``strength``)."""
    rows = []
    for s in strengths:
        d = log_prob(flow, y_ref, reference=ref, given="reference", strength=s)
        rows.append({"strength": float(s), **asdict(evaluate(None, d.output, d.log_prob))})
    return rows
