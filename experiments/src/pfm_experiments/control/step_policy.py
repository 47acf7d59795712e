"""pi_ref of the ``rollout`` protocol: a per-step Gaussian behavior-cloning policy on the data set,
``obs (obs_dim,) -> N(mean(obs), diag(std(obs)^2))`` over one action ``(act_dim,)``.

A small MLP (pfm's :class:`pfm.policies.GaussianPolicy`, its mean and log-std heads on the observation
standardized with the data set's statistics), fitted by maximum likelihood with :func:`pfm.baselines.behavior_cloning`
on every transition of the data set (5% held out for early stopping); deterministic under its seed.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from pfm.baselines import behavior_cloning
from pfm.policies import GaussianPolicy
from .experiment import Normalizer


class StepPolicy:
    """pi_ref: ``mean(obs (k, obs_dim)) -> (k, act_dim)`` and ``sample(obs, generator) -> (k, act_dim)`` (float64
    arrays, not clipped; the simulators clip)."""

    def __init__(self, policy: GaussianPolicy, norm: Normalizer) -> None:
        self.policy, self.norm = policy.eval(), norm

    def distribution(self, obs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)``, each ``(k, act_dim)``."""
        with torch.no_grad():
            return self.policy.distribution(self.norm(obs), len(obs))

    def mean(self, obs: np.ndarray) -> np.ndarray:
        return self.distribution(obs)[0].double().numpy()

    def sample(self, obs: np.ndarray, generator: Optional[torch.Generator] = None) -> np.ndarray:
        mu, std = self.distribution(obs)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        return (mu + std * eps).double().numpy()

    def sampler(self, seed: int):
        """A per-step policy (:data:`.rollout.Act`) that samples, with its own generator seeded by ``seed``."""
        gen = torch.Generator().manual_seed(int(seed))
        return lambda obs: self.sample(obs, gen)


def fit_step_policy(episodes: list, *, steps: int, hidden: int, seed: int, progress: bool = False
                    ) -> tuple[StepPolicy, Any]:
    """pi_ref on every ``(observation, action)`` of ``episodes`` (:class:`.datasets.Episode`); returns it and the
    fit's history."""
    obs = np.concatenate([e.observations[:-1] for e in episodes]).astype(np.float64)
    act = np.concatenate([e.actions for e in episodes]).astype(np.float32)
    norm = Normalizer.fit(obs)
    policy = GaussianPolicy((act.shape[1],), context_shape=(obs.shape[1],), hidden=hidden, depth=2, std=0.5)
    perm = np.random.default_rng(seed).permutation(len(obs))
    n_val = max(1, len(obs) // 20)
    val, tr = perm[:n_val], perm[n_val:]
    y, c = torch.as_tensor(act), norm(obs)
    fitted, hist = behavior_cloning(policy, y[tr], c[tr], steps=steps, batch_size=256, lr=1e-3,
                                    validation=(y[val], c[val]), validate_every=max(1, steps // 20), seed=seed,
                                    progress=progress)
    return StepPolicy(fitted, norm), hist
