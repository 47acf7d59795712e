"""What the 2D experiment measures of a set of outputs: :class:`Metrics`, computed by an :class:`Evaluator` against
fixed test draws of the reference and of the preferred marginal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from pfm.objective import preference_objective
from pfm.policies import GaussianMixturePolicy
from .task import true_reward


@dataclass
class Metrics:
    reward: float
    win_rate: float
    swd: float
    out_of_support: float
    # with the method's log-density (see :mod:`pfm_experiments.toy2d`): KL(pi || pi_ref) in nats, Theorem 1's J (at most
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


@torch.no_grad()
def with_density(policy: GaussianMixturePolicy, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` samples of ``policy`` and their log-density under it."""
    y = policy.sample(None, n, generator=gen)
    return y, policy.log_prob(y)

