"""The MuJoCo locomotion tasks: which gymnasium environment each name means, D4RL's reference returns, and how to
save and restore the exact simulator state (qpos, qvel) that segment rollouts start from.

Scores are "D4RL-style": ``100 * (return - random) / (expert - random)`` with D4RL's reference returns. Our
environments are gymnasium's v5 and our data sets are our own, so they are not D4RL's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pfm.errors import InvalidInputError


@dataclass(frozen=True)
class Task:
    name: str
    env_id: str
    random_return: float
    expert_return: float
    healthy_reward: float  # the per-step survival bonus, which ARS removes while it trains (Mania et al. 2018)
    medium_score: float  # the level of D4RL's "medium" data: the paper's BC score on it (PAPER.md, item 4)


TASKS = {
    "hopper": Task("hopper", "Hopper-v5", -20.272305, 3234.3, 1.0, 52.83),
    "halfcheetah": Task("halfcheetah", "HalfCheetah-v5", -280.178953, 12135.0, 0.0, 40.97),
    "walker2d": Task("walker2d", "Walker2d-v5", 1.629008, 4592.3, 1.0, 60.35),
    "ant": Task("ant", "Ant-v5", -325.6, 3879.7, 1.0, 90.16),
}

DEFAULT_TASKS = ("hopper", "halfcheetah", "walker2d")
"""The tasks of our data sets that a run takes when none is named (the paper's D4RL tasks but ant)."""


def task(name: str) -> Task:
    if name not in TASKS:
        raise InvalidInputError(f"unknown control task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


def normalized_score(name: str, returns: Any) -> np.ndarray:
    """D4RL-style normalized score(s) of raw episode return(s)."""
    t = task(name)
    r = np.asarray(returns, dtype=np.float64)
    return 100.0 * (r - t.random_return) / (t.expert_return - t.random_return)


def make_env(name: str, **kwargs: Any):
    """``gymnasium.make`` of the task's environment (gymnasium and mujoco are imported here, not at package import)."""
    import gymnasium as gym

    return gym.make(task(name).env_id, **kwargs)


def get_state(env: Any) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the simulator's ``(qpos, qvel)``."""
    data = env.unwrapped.data
    return data.qpos.copy(), data.qvel.copy()


def set_state(env: Any, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
    """Restore ``(qpos, qvel)`` exactly and return the observation there."""
    u = env.unwrapped
    qpos, qvel = np.asarray(qpos, dtype=np.float64), np.asarray(qvel, dtype=np.float64)
    if qpos.shape != (u.model.nq,) or qvel.shape != (u.model.nv,):
        raise InvalidInputError(f"qpos and qvel must have shapes ({u.model.nq},) and ({u.model.nv},), got "
                                f"{qpos.shape} and {qvel.shape}")
    u.set_state(qpos, qvel)
    return u._get_obs()
