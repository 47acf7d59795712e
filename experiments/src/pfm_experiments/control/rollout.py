"""Batched simulators: ``n`` copies of one task's MuJoCo simulator, set to given states and stepped together, and
closed-loop rollouts of a per-step policy in them (one policy call per step for all copies).

This is what the ``rollout`` protocol (:mod:`.rollout_protocol`) is built on: the released code's PbRL example
rolls pi_ref out in copies of the simulator to make its pairs, and again at every acting step to give the flow its
input. A copy is a gymnasium environment's unwrapped simulator (no time limit), restored exactly with
``(qpos, qvel)`` (:func:`.envs.set_state`). Actions are clipped to the action space before they are executed and
returned clipped (what was executed). A copy whose rollout terminates earns nothing after that step, but it is
still stepped (its actions are still asked for), so every rollout has ``horizon`` actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from pfm.errors import InvalidInputError
from pfm.train import intra_op_threads
from .envs import make_env, set_state

ACTING_THREADS = 1
"""Torch intra-op threads of an acting loop (here and in :func:`pfm_experiments.control.episodes.play`): each
simulator step makes one policy or flow call on a few rows, the size rule's one thread (:func:`pfm.train.step_threads`);
at torch's 2, beside one busy process, the quick rollout reproduction took 118 s against 43 s at one (40 s idle),
with the same results (the products are thread-invariant: :func:`pfm.train.threads.reproducible_blas`)."""

Act = Callable[[np.ndarray], np.ndarray]
"""A per-step policy: ``obs (k, obs_dim) -> actions (k, act_dim)``, one call for all ``k`` rows."""


class Simulators:
    """``n`` copies of task ``name``'s simulator.

    Attributes: ``obs_dim``, ``act_dim``, ``nq``, ``nv``, the action bounds ``low``/``high`` ``(act_dim,)``.
    """

    def __init__(self, name: str, n: int) -> None:
        if not isinstance(n, int) or n < 1:
            raise InvalidInputError(f"n must be a positive integer, got {n!r}")
        self.name = name
        self.envs = [make_env(name) for _ in range(n)]
        for i, e in enumerate(self.envs):
            e.reset(seed=i)
        self.sims = [e.unwrapped for e in self.envs]
        space = self.envs[0].action_space
        self.low, self.high = space.low.astype(np.float64), space.high.astype(np.float64)
        self.act_dim = int(self.low.shape[0])
        self.obs_dim = int(self.envs[0].observation_space.shape[0])
        self.nq, self.nv = int(self.sims[0].model.nq), int(self.sims[0].model.nv)

    def __len__(self) -> int:
        return len(self.sims)

    def _check_k(self, k: int) -> None:
        if k > len(self.sims):
            raise InvalidInputError(f"{k} rows but only {len(self.sims)} simulator copies")

    def set_states(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """Copies ``0..k-1`` set to ``qpos (k, nq)``, ``qvel (k, nv)``; returns their observations ``(k, obs_dim)``."""
        qpos, qvel = np.asarray(qpos, np.float64), np.asarray(qvel, np.float64)
        if qpos.ndim != 2 or qvel.ndim != 2 or len(qpos) != len(qvel):
            raise InvalidInputError(f"qpos and qvel must be (k, nq) and (k, nv), got {qpos.shape} and {qvel.shape}")
        self._check_k(len(qpos))
        return np.stack([set_state(self.envs[i], qpos[i], qvel[i]) for i in range(len(qpos))])

    def get_states(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(qpos (k, nq), qvel (k, nv))`` of copies ``0..k-1``."""
        self._check_k(k)
        return (np.stack([s.data.qpos.copy() for s in self.sims[:k]]),
                np.stack([s.data.qvel.copy() for s in self.sims[:k]]))

    def clip(self, actions: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(actions, np.float64), self.low, self.high)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step copies ``0..k-1`` with ``actions (k, act_dim)`` (clipped): ``obs (k, obs_dim)``, ``rewards (k,)``,
        ``terminated (k,)``."""
        actions = self.clip(actions)
        if actions.ndim != 2 or actions.shape[1] != self.act_dim:
            raise InvalidInputError(f"actions must be (k, {self.act_dim}), got {actions.shape}")
        if not np.isfinite(actions).all():
            raise InvalidInputError("actions hold NaN or infinite values")
        k = len(actions)
        self._check_k(k)
        obs = np.empty((k, self.obs_dim))
        rew = np.empty(k)
        term = np.empty(k, bool)
        for i in range(k):
            obs[i], rew[i], term[i], _, _ = self.sims[i].step(actions[i])
        return obs, rew, term

    def close(self) -> None:
        for e in self.envs:
            e.close()


@dataclass
class Rollout:
    """``k`` rollouts of ``horizon`` steps: executed (clipped) ``actions (k, H, act_dim)``, ``rewards (k, H)``
    (0 from the step after a termination on), ``returns (k,)``, ``terminated (k,)`` (whether each ended within the
    horizon), the start observations ``obs (k, obs_dim)``, and the observation each action was taken in,
    ``path_obs (k, H, obs_dim)`` (``path_obs[:, 0]`` is ``obs``)."""

    actions: np.ndarray
    rewards: np.ndarray
    returns: np.ndarray
    terminated: np.ndarray
    obs: np.ndarray
    path_obs: np.ndarray


def rollout(sims: Simulators, qpos: np.ndarray, qvel: np.ndarray, act: Act, horizon: int,
            prefix: Optional[np.ndarray] = None) -> Rollout:
    """Closed-loop rollouts of ``act`` for ``horizon`` steps from ``k`` states ``qpos (k, nq)``, ``qvel (k, nv)``
    in copies ``0..k-1`` of ``sims``. With ``prefix (k, P, act_dim)`` (``P <= horizon``), its actions are executed
    first (open loop) and ``act`` takes over after them."""
    if not isinstance(horizon, int) or horizon < 1:
        raise InvalidInputError(f"horizon must be a positive integer, got {horizon!r}")
    obs = sims.set_states(qpos, qvel)
    k = len(obs)
    P = 0
    if prefix is not None:
        prefix = np.asarray(prefix, np.float64)
        if prefix.ndim != 3 or len(prefix) != k or prefix.shape[1] > horizon or prefix.shape[2] != sims.act_dim:
            raise InvalidInputError(f"prefix must be (k, P <= horizon, act_dim) with k = {k}, got {prefix.shape}")
        P = prefix.shape[1]
    start = obs.copy()
    actions = np.empty((k, horizon, sims.act_dim))
    path_obs = np.empty((k, horizon, sims.obs_dim))
    rewards = np.zeros((k, horizon))
    alive = np.ones(k, bool)
    with intra_op_threads(ACTING_THREADS):  # one small call a simulator step: see ACTING_THREADS
        for t in range(horizon):
            a = prefix[:, t] if t < P else np.asarray(act(obs), np.float64)
            if a.shape != (k, sims.act_dim):
                raise InvalidInputError(f"the policy must return ({k}, {sims.act_dim}) actions, got {a.shape}")
            a = sims.clip(a)
            actions[:, t] = a
            path_obs[:, t] = obs
            obs, r, term = sims.step(a)
            rewards[:, t] = np.where(alive, r, 0.0)
            alive &= ~term
    return Rollout(actions, rewards, rewards.sum(1), ~alive, start, path_obs)
