"""The 2D experiment's settings: everything that decides a run's numbers (:func:`..runner.config_key` of them,
less the seeds and the preference models, names the cache of finished parts)."""

from __future__ import annotations

from dataclasses import dataclass

from ..rows import SOURCE_REFERENCE  # noqa: F401 (the row of the library's fit(source="reference") variant)
from .task import PREFERENCES

RENAMED = {"pfm_iterations": "iterations"}
"""Config fields renamed since results were written: old name -> new (for :func:`..runner.config_from_dict`)."""


@dataclass
class Config:
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
    iterations: int = 5  # PFM x k: how many times the one trained flow is applied (was pfm_iterations)
    rounds: int = 3
    reward: str = "inside"
    ns: tuple[int, ...] = (2, 4, 16, 64)  # best-of-n and PFM-select: candidates per output
    strengths: tuple[float, ...] = tuple(i / 4 for i in range(13))  # the strength dial of transform: 0, 0.25, ..., 3
    cdf_samples: int = 100_000  # reference samples behind best-of-n's score CDF (its density)
    schema: int = 5  # bumped whenever a part's record changes, so stale cached parts are not reused
    w_samples: int = 20_000  # reference samples behind the Monte Carlo w(y) of Theorem 1, and its expectations
    iterate_samples: int = 4000  # reference samples carrying Theorem 2's iterated marginals (an M x M table)
    frontier_samples: int = 100_000  # reference samples behind the optimal reward-KL frontier
    quick: bool = False

    @classmethod
    def quick_config(cls) -> "Config":
        return cls(preferences=("bt",), seeds=(0,), n_pairs=1500, n_test=2000, betas=(0.1, 1.0, 10.0),
                   reward_steps=500, rlhf_steps=200, dpo_steps=300, flow_steps=600, rounds=2, w_samples=8000,
                   iterate_samples=2000, frontier_samples=20_000, cdf_samples=20_000, quick=True)
