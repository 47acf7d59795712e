"""What Theorems 1 and 2 predict for the 2D task, from reference samples alone, beside what PFM's flows do."""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from pfm.data import PreferenceDataset
from pfm.flow import PreferenceFlow
from pfm.likelihood import log_prob
from pfm.objective import (BOUND, effective_sample_size, iterate_marginals, normalized_log_weights,
                           preference_objective, rejected_log_density, tempered_objective)
from .config import Config
from .task import on_rewards, reference_policy, true_reward

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
