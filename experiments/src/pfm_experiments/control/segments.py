"""Action segments: what the control experiment's policies output, and what the scripted teacher compares.

A segment is ``horizon`` consecutive actions ``(horizon, act_dim)`` from a start state; its context is the start
observation. The teacher restores the start state in a copy of the simulator, executes each of two segments
(actions clipped to the action space; an episode that ends early earns nothing after its end) and prefers the one
with the higher return. With ``lookahead > 0`` the teacher looks further: after the segment it goes on for
``lookahead`` steps with a given policy (pi_ref's mean, segment by segment) and compares the returns of the whole
rollout, so a segment that gains now but leaves the body falling loses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from pfm.errors import InvalidInputError
from .datasets import Episode, state_from_observation
from .envs import make_env, set_state


@dataclass
class Segments:
    """``obs (N, obs_dim)`` start observations, ``actions (N, H, act_dim)``, start states ``qpos (N, nq)``,
    ``qvel (N, nv)``."""

    obs: np.ndarray
    actions: np.ndarray
    qpos: np.ndarray
    qvel: np.ndarray

    def __len__(self) -> int:
        return len(self.obs)

    def subset(self, index: np.ndarray) -> "Segments":
        return Segments(self.obs[index], self.actions[index], self.qpos[index], self.qvel[index])


def make_segments(episodes: list[Episode], name: str, horizon: int, *, max_segments: Optional[int] = None,
                  seed: int = 0) -> Segments:
    """Every window of ``horizon`` actions inside an episode (at most ``max_segments``, drawn at random)."""
    if not isinstance(horizon, int) or horizon < 1:
        raise InvalidInputError(f"horizon must be a positive integer, got {horizon!r}")
    starts = [(i, t) for i, e in enumerate(episodes) for t in range(len(e) - horizon + 1)]
    if not starts:
        raise InvalidInputError(f"no episode has {horizon} steps: no segments to make")
    rng = np.random.default_rng(seed)
    if max_segments is not None and len(starts) > max_segments:
        starts = [starts[j] for j in np.sort(rng.choice(len(starts), max_segments, replace=False))]
    env = make_env(name)
    nq, nv = env.unwrapped.model.nq, env.unwrapped.model.nv
    env.close()
    obs, acts, qpos, qvel = [], [], [], []
    for i, t in starts:
        e = episodes[i]
        obs.append(e.observations[t])
        acts.append(e.actions[t:t + horizon])
        if e.qpos is not None and e.qvel is not None:
            qpos.append(e.qpos[t])
            qvel.append(e.qvel[t])
        else:
            q, v = state_from_observation(name, e.observations[t], nq, nv)
            qpos.append(q)
            qvel.append(v)
    return Segments(np.asarray(obs, np.float64), np.asarray(acts, np.float32), np.asarray(qpos), np.asarray(qvel))


class SegmentRoller:
    """Executes segments from restored states in one simulator: the scripted teacher's measurement."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.env = make_env(name)
        self.env.reset(seed=0)
        self.sim = self.env.unwrapped
        self.low, self.high = self.env.action_space.low, self.env.action_space.high

    def returns(self, qpos: np.ndarray, qvel: np.ndarray, segments: Any, *, lookahead: int = 0,
                then: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> np.ndarray:
        """Return ``(N,)`` of each segment ``(N, H, act_dim)`` executed from its start state; with ``lookahead``,
        plus the return of the next ``lookahead`` steps, acted by ``then(obs (1, obs_dim)) -> (1, H', act_dim)``
        (its whole segment executed, then asked again)."""
        segments = np.asarray(segments, np.float64)
        if segments.ndim != 3 or len(segments) != len(qpos) or len(qpos) != len(qvel):
            raise InvalidInputError(f"segments must be (N, H, act_dim) with N = len(qpos) = len(qvel); got "
                                    f"{segments.shape}, {len(qpos)}, {len(qvel)}")
        if not np.isfinite(segments).all():
            raise InvalidInputError("segments hold NaN or infinite actions")
        if not isinstance(lookahead, int) or lookahead < 0:
            raise InvalidInputError(f"lookahead must be a non-negative integer, got {lookahead!r}")
        if lookahead and then is None:
            raise InvalidInputError("lookahead > 0 needs the policy that acts after the segment (then)")
        out = np.zeros(len(segments))
        for i in range(len(segments)):
            obs = set_state(self.env, qpos[i], qvel[i])
            plan, left, terminated = np.clip(segments[i], self.low, self.high), len(segments[i]) + lookahead, False
            while left > 0 and not terminated:
                for a in plan[:left]:
                    obs, r, terminated, _, _ = self.sim.step(a)  # unwrapped: no time limit across segments
                    out[i] += r
                    left -= 1
                    if terminated:
                        break
                if left > 0 and not terminated:
                    assert then is not None
                    plan = np.clip(np.asarray(then(obs[None]), np.float64)[0], self.low, self.high)
                    if plan.ndim != 2 or len(plan) == 0:
                        raise InvalidInputError(f"then must return (1, H', act_dim) with H' >= 1, got a segment of "
                                                f"shape {plan.shape}")
        return out

    def close(self) -> None:
        self.env.close()
