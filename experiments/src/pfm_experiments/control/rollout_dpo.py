"""DPO of the ``rollout`` protocol with beta picked by return on validation episodes (issue 26).

The ``DPO`` row of :mod:`.rollout_baselines` picks beta by the held-out pairs' implicit accuracy, the rule of the
other experiments; under this protocol that rule picks the smallest betas (0.01, 0.1), whose fine-tuned policies
drift furthest from pi_ref, and the row collapses (normalized return 0.5-15 where pi_ref's mean earns 33-41). A
practitioner who has the simulator at acting time, as every row here does, would pick beta by what it is for: the
return. This row does that: the same DPO fits (pi_ref's per-step Gaussian fine-tuned on the segment pairs,
:class:`.rollout_baselines.SegmentLikelihood`, the same betas, steps and seeds, so the accuracy pick's policy is one
of them), each acted with its mean for ``validation_episodes`` episodes whose reset seeds no scored episode uses,
the best one then scored on the protocol's episodes as the row ``DPO (beta by return)``.

Its cells are cached on their own (``control/rollout-dpo/<data set>/<key>/seed-<seed>.json``), so adding this row
left the protocol's and the other baselines' cells valid. Acting with the mean costs no simulation beyond the
episodes themselves; the validation episodes are counted in the record (``validation_episodes`` x betas).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pfm.errors import InvalidInputError
from ..sweeps import sweep_betas
from .envs import normalized_score
from .rollout_baselines import SegmentLikelihood, segment_dpo
from .rollout_protocol import RolloutConfig, act_episodes, mean_of, score_rows
from .step_policy import StepPolicy

SCHEMA = 1
KEY = {"omit": (), "unset": {}}
"""How :func:`..runner.config_key` keys a cell (with the protocol's config key and the data's digest as context)."""
ROW = "DPO (beta by return)"
VALIDATION_SEEDS = 3000
"""Validation episodes of cell ``seed`` reset with seeds ``(3000 + seed) * 10_000 + i``; the scored episodes use
``1000 + seed`` (:func:`.rollout_protocol.score_rows`), so no validation episode is scored."""


@dataclass
class DPOReturnConfig:
    betas: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)  # as rollout_baselines.BaselinesConfig's DPO
    dpo_steps: int = 500
    dpo_lr: float = 1e-4
    validation_episodes: int = 10
    schema: int = SCHEMA

    @classmethod
    def quick_config(cls) -> "DPOReturnConfig":
        return cls(betas=(1.0, 100.0), dpo_steps=50, validation_episodes=2)

    def check(self) -> "DPOReturnConfig":
        if not self.betas or any(not isinstance(b, (int, float)) or not b > 0 for b in self.betas):
            raise InvalidInputError(f"betas must be positive numbers, got {self.betas!r}")
        for f in ("dpo_steps", "validation_episodes"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 1:
                raise InvalidInputError(f"{f} must be a positive integer, got {getattr(self, f)!r}")
        if not self.dpo_lr > 0:
            raise InvalidInputError(f"dpo_lr must be positive, got {self.dpo_lr!r}")
        return self


def run_dpo_return_cell(name: str, episodes_data: list, cfg: RolloutConfig, dcfg: DPOReturnConfig, seed: int,
                        progress: bool = False) -> dict[str, Any]:
    """The ``DPO (beta by return)`` row on one data set and seed (see the module docstring): a JSON-able record
    with the pairs' stats (checked against the protocol cell's), every beta's held-out implicit accuracy and
    validation score, the pick, and the row's score."""
    dcfg.check()
    segs = segment_dpo(name, episodes_data, cfg, seed, progress)
    prep = segs.prep
    ref, times = prep.ref, dict(prep.seconds)

    def validation_return(policy: SegmentLikelihood) -> float:
        rets = act_episodes(name, mean_of(StepPolicy(policy.step, ref.norm)), dcfg.validation_episodes,
                            VALIDATION_SEEDS + seed, cfg.max_episode_steps, cfg.rollout_frequency)
        return float(np.mean(normalized_score(name, rets)))

    t = time.perf_counter()
    sweep = sweep_betas(lambda beta: segs.fit(beta, dcfg.dpo_steps, dcfg.dpo_lr, seed, progress), dcfg.betas,
                        segs.base, segs.held, validate=validation_return)
    times["DPO sweep"] = time.perf_counter() - t
    scores = score_rows(name, {ROW: mean_of(StepPolicy(sweep.policy.step, ref.norm))}, cfg, seed, times,
                        label="control rollout DPO by return")
    return {"seed": seed, "pairs": prep.pair_stats,
            "dpo_return": {"beta": sweep.beta, "accuracy_pick": sweep.pick("heldout_accuracy"),
                           "sweep": sweep.rows},
            "scores": {"rollout": scores}, "seconds": times}
