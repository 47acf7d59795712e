"""Evaluation episodes run side by side, each acting from a plan of actions that its caller renews.

:func:`play` ``(name, episodes, seed, max_steps, replan)``: ``episodes`` environments of task ``name`` (reset seeds
``seed * 10_000 + i``), stepped together for at most ``max_steps`` steps. Before each step ``replan(envs, obs,
alive, plans, ptr)`` returns ``{i: plan (H, act_dim)}`` for the live episodes that need a new plan (``plans[i]`` is
None before the first; ``ptr[i]`` is how many of its actions were taken); each live episode then takes its plan's
next action, clipped to the action space. Returns ``(episodes,)`` undiscounted returns. The chunked and
re-planning protocols (:func:`.experiment.episodes_score`) and the released code's rollout protocol
(:func:`.rollout_protocol.act_episodes`) differ only in ``replan``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from pfm.train import intra_op_threads

from .envs import make_env
from .rollout import ACTING_THREADS

Replan = Callable[[list[Any], np.ndarray, np.ndarray, list[Optional[np.ndarray]], np.ndarray],
                  dict[int, np.ndarray]]


def play(name: str, episodes: int, seed: int, max_steps: int, replan: Replan) -> np.ndarray:
    """See the module docstring."""
    envs = [make_env(name) for _ in range(episodes)]
    try:
        low, high = envs[0].action_space.low, envs[0].action_space.high
        obs = np.stack([e.reset(seed=seed * 10_000 + i)[0] for i, e in enumerate(envs)])
        alive = np.ones(episodes, bool)
        total = np.zeros(episodes)
        plans: list[Optional[np.ndarray]] = [None] * episodes
        ptr = np.zeros(episodes, int)
        with intra_op_threads(ACTING_THREADS):  # small calls between simulator steps: see ACTING_THREADS
            for _ in range(max_steps):
                for i, plan in replan(envs, obs, alive, plans, ptr).items():
                    plans[i], ptr[i] = plan, 0
                for i in np.nonzero(alive)[0]:
                    o, r, terminated, truncated, _ = envs[i].step(np.clip(plans[i][ptr[i]], low, high))
                    obs[i], total[i] = o, total[i] + r
                    ptr[i] += 1
                    if terminated or truncated:
                        alive[i] = False
                if not alive.any():
                    break
    finally:
        for e in envs:
            e.close()
    return total
