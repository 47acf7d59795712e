"""The ``rollout`` protocol: the released code's PbRL design (``example_pbrl.ipynb``, ``dataset/pbrl_dataset.py``,
``flow/flow_policy.py``; ../shared/PAPER.md, "what the released code does"), with its bugs fixed.

One cell is one task x one data set x one seed:

1. pi_ref: a per-step Gaussian BC policy on the data set (:mod:`.step_policy`).
2. On-policy start states: reset, then pi_ref (sampled actions) for a uniform ``start_steps`` number of steps
   (100-199); a path that terminates before is drawn again (after ``start_tries`` failed draws of one slot, a state
   from the failed path at least ``pair_horizon`` steps before its end is taken: counted as ``fallbacks``).
3. Pairs: from each start state, two closed-loop ``pair_horizon``-step (20) rollouts of pi_ref with sampled actions
   in copies of the simulator (:mod:`.rollout`); the one with the higher whole 20-step return is preferred (ties by
   a coin; the released code's swap, whose two branches did the same, always preferred the first); only its first
   ``horizon`` (10) actions are kept as the segment, flattened ``(horizon * act_dim,)``; the context is the raw start
   observation ``(obs_dim,)``. pfm's ``PreferenceDataset(chosen, rejected, context)`` gets (preferred, rejected) in
   that order (the released builders passed them reversed, so its flow ran backwards).
4. The flow: :class:`pfm.PreferenceFlow` over the flattened segment given the observation (an MLP of
   ``flow_depth`` x ``flow_hidden``, the released 3 x 128), fitted with pfm's defaults as the other protocols are
   (exact minibatch OT, sigma 0.1, Adam 1e-3; held-out pairs' loss for early stopping). pfm's loss has none of the
   released code's (B, D) against (B, 1, D) broadcast.
5. Segment test on held-out on-policy start states (drawn afresh with other seeds: no pair was made from them):
   pi_ref's own sampled segment (the first 10 actions of a closed-loop rollout), the flow's improvement of it (once
   and ``iterations`` times), pi_ref's mean rolled out closed loop, and the teacher's better of two; each segment's
   10 actions are executed from the start state and pi_ref then goes on closed loop with sampled actions to 20 steps
   (the same continuation noise for every method): the teacher's 20-step return. Also the 10 actions' own return.
6. Acting, all rows batched over episodes (one policy call per step for all of them):
   ``BC mean`` (pi_ref's mean action), ``BC sampled`` (a pi_ref sample), ``simulated best-of-2`` (two 20-step pi_ref
   rollouts in scratch copies restored to the current state, the first action of the better one executed: the
   teacher itself at acting time), ``PFM`` (pi_ref rolled out closed loop for 10 steps in a scratch copy restored
   to the current state, the 10 actions flowed given the observation, the first executed), ``PFM x k`` (flowed k
   times). With ``rollout_frequency`` r, r actions of a plan are executed before the next one is made.

Scores are D4RL-style normalized returns (:func:`.envs.normalized_score`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from pfm.data import PreferenceDataset
from pfm.errors import InvalidInputError
from pfm.flow import PreferenceFlow
from .envs import get_state, normalized_score
from .episodes import play
from .experiment import fit_flow, split_pairs
from .rollout import Act, Rollout, Simulators, rollout
from .step_policy import StepPolicy, fit_step_policy

log = logging.getLogger("pfm")
SCHEMA = 1
KEY = {"omit": (), "unset": {}}
"""How :func:`..runner.config_key` keys a rollout cell (with the data's digest as context)."""

Planner = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""``(obs (k, obs_dim), qpos (k, nq), qvel (k, nv)) -> plan (k, P, act_dim)``: the actions to execute next from
each of ``k`` current states (the first ``min(P, rollout_frequency)`` of them are executed)."""


@dataclass
class RolloutConfig:
    bc_steps: int = 4000
    bc_hidden: int = 256
    n_pairs: int = 1000
    heldout: float = 0.2
    start_steps: tuple[int, int] = (100, 200)  # pi_ref steps before a start state: uniform in [low, high)
    start_tries: int = 10
    pair_horizon: int = 20  # the teacher's rollouts
    horizon: int = 10  # actions kept as the segment
    flow_steps: int = 2000
    flow_hidden: int = 128
    flow_depth: int = 3
    validate_every: int = 50
    patience: int = 10
    iterations: int = 2  # PFM x k
    test_states: int = 200
    eval_episodes: int = 30
    max_episode_steps: int = 1000
    rollout_frequency: int = 1
    copies: int = 256  # simulator copies stepped together when making start states and pairs
    schema: int = SCHEMA

    @classmethod
    def quick_config(cls) -> "RolloutConfig":
        return cls(bc_steps=500, n_pairs=400, start_steps=(10, 30), flow_steps=600, validate_every=25, patience=8,
                   test_states=200, eval_episodes=2, max_episode_steps=100)

    def check(self) -> "RolloutConfig":
        lo, hi = self.start_steps
        if not (0 <= lo < hi):
            raise InvalidInputError(f"start_steps must be (low, high) with 0 <= low < high, got {self.start_steps}")
        if not 1 <= self.horizon <= self.pair_horizon:
            raise InvalidInputError(f"horizon must be in [1, pair_horizon], got {self.horizon}, {self.pair_horizon}")
        if not isinstance(self.rollout_frequency, int) or not 1 <= self.rollout_frequency <= self.horizon:
            raise InvalidInputError(f"rollout_frequency must be an integer in [1, horizon={self.horizon}], got "
                                    f"{self.rollout_frequency!r}")
        return self


# ------------------------------------------------------------------------------------------ start states, pairs
@dataclass
class States:
    """``k`` simulator states: ``qpos (k, nq)``, ``qvel (k, nv)``, ``obs (k, obs_dim)``."""

    qpos: np.ndarray
    qvel: np.ndarray
    obs: np.ndarray

    def __len__(self) -> int:
        return len(self.obs)

    def repeat(self, n: int) -> "States":
        """Each state ``n`` times in a row: ``(k * n, ...)``."""
        return States(np.repeat(self.qpos, n, 0), np.repeat(self.qvel, n, 0), np.repeat(self.obs, n, 0))


def start_states(sims: Simulators, ref: StepPolicy, n: int, steps: tuple[int, int], tries: int, margin: int,
                 seed: int) -> tuple[States, dict[str, float]]:
    """``n`` on-policy start states: each from a reset followed by a uniform ``[steps[0], steps[1])`` number of
    pi_ref steps (sampled actions), all copies of ``sims`` stepped together; a path that terminates first is drawn
    again, up to ``tries`` times per state, after which a state of the failed path at least ``margin`` steps before
    its end is taken. Returns the states and ``{"attempts", "fallbacks"}`` (per state)."""
    rng = np.random.default_rng(seed)
    act = ref.sampler(seed)
    k = len(sims)
    lo, hi = steps
    target = np.zeros(k, int)
    t = np.zeros(k, int)
    fails = np.zeros(k, int)
    hist_q: list[list[np.ndarray]] = [[] for _ in range(k)]
    hist_v: list[list[np.ndarray]] = [[] for _ in range(k)]
    hist_o: list[list[np.ndarray]] = [[] for _ in range(k)]
    obs = np.zeros((k, sims.obs_dim))

    def restart(i: int) -> None:
        obs[i] = sims.envs[i].reset(seed=int(rng.integers(2**31)))[0]
        target[i], t[i] = int(rng.integers(lo, hi)), 0
        q, v = sims.sims[i].data.qpos.copy(), sims.sims[i].data.qvel.copy()
        hist_q[i], hist_v[i], hist_o[i] = [q], [v], [obs[i].copy()]

    out_q, out_v, out_o = [], [], []
    attempts, fallbacks = 0, 0

    def harvest(i: int, j: int) -> None:
        out_q.append(hist_q[i][j])
        out_v.append(hist_v[i][j])
        out_o.append(hist_o[i][j])

    for i in range(k):
        restart(i)
        attempts += 1
    while len(out_o) < n:
        for i in np.nonzero(t >= target)[0]:  # reached its step count alive (target 0: the reset state itself)
            harvest(i, t[i])
            fails[i] = 0
            restart(i)
            attempts += 1
        if len(out_o) >= n:
            break
        obs[:], _, term = sims.step(act(obs))
        t += 1
        for i in range(k):
            hist_q[i].append(sims.sims[i].data.qpos.copy())
            hist_v[i].append(sims.sims[i].data.qvel.copy())
            hist_o[i].append(obs[i].copy())
        for i in np.nonzero(term)[0]:  # a terminal state is never a start state
            fails[i] += 1
            if fails[i] >= tries:
                harvest(i, int(rng.integers(0, max(1, t[i] - margin))))
                fallbacks += 1
                fails[i] = 0
            restart(i)
            attempts += 1
    m = len(out_o)
    return (States(np.stack(out_q[:n]), np.stack(out_v[:n]), np.stack(out_o[:n])),
            {"attempts": attempts / m, "fallbacks": fallbacks / m})


def rollouts(sims: Simulators, states: States, act: Act, horizon: int,
             prefix: Optional[np.ndarray] = None) -> Rollout:
    """:func:`.rollout.rollout` from every state, ``len(sims)`` at a time."""
    k = len(sims)
    parts = [rollout(sims, states.qpos[s:s + k], states.qvel[s:s + k], act, horizon,
                     None if prefix is None else prefix[s:s + k]) for s in range(0, len(states), k)]
    return Rollout(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                     ("actions", "rewards", "returns", "terminated", "obs", "path_obs")))


def collect_pairs(sims: Simulators, ref: StepPolicy, states: States, cfg: RolloutConfig, seed: int
                  ) -> tuple[PreferenceDataset, dict[str, Any], dict[str, np.ndarray]]:
    """From each start state two closed-loop pi_ref rollouts of ``cfg.pair_horizon`` steps, the higher whole return
    preferred (ties by a coin), their first ``cfg.horizon`` actions kept: ``PreferenceDataset(chosen (N, H *
    act_dim), rejected, context = raw start observations (N, obs_dim))``, the pairs' stats (with ``digest``, the
    pairs' own :meth:`pfm.PreferenceDataset.digest`, by which a cell that draws them again is checked), and the observations
    each kept action was taken in, ``{"chosen": (N, H, obs_dim), "rejected": ...}`` (for the per-step baselines,
    :mod:`.rollout_baselines`)."""
    n = len(states)
    ro = rollouts(sims, states.repeat(2), ref.sampler(seed), cfg.pair_horizon)
    ra, rb = ro.returns[0::2], ro.returns[1::2]
    seg = ro.actions[:, :cfg.horizon].reshape(2 * n, -1).astype(np.float32)
    a, b = seg[0::2], seg[1::2]
    coin = np.random.default_rng(seed).random(n) < 0.5
    first = (ra > rb) | ((ra == rb) & coin)
    chosen = np.where(first[:, None], a, b)
    rejected = np.where(first[:, None], b, a)
    ds = PreferenceDataset(torch.as_tensor(chosen), torch.as_tensor(rejected),
                           torch.as_tensor(states.obs, dtype=torch.float32))
    stats = {"chosen_return": float(np.maximum(ra, rb).mean()), "rejected_return": float(np.minimum(ra, rb).mean()),
             "ties": float((ra == rb).mean()), "terminated": float(ro.terminated.mean()),
             "segment_distance": float(np.linalg.norm(a - b, axis=1).mean()), "digest": ds.digest()}
    path = ro.path_obs[:, :cfg.horizon]
    pa, pb = path[0::2], path[1::2]
    paths = {"chosen": np.where(first[:, None, None], pa, pb), "rejected": np.where(first[:, None, None], pb, pa)}
    return ds, stats, paths


# ------------------------------------------------------------------------------------------ planners, acting
def improve(flow: PreferenceFlow, segments: np.ndarray, obs: np.ndarray, iterations: int) -> np.ndarray:
    """``segments (k, H, A)`` flowed ``iterations`` times given ``obs (k, obs_dim)``: ``(k, H, A)``."""
    k = len(segments)
    y = segments.reshape(k, -1).astype(np.float32)
    c = np.asarray(obs, np.float32)
    for _ in range(iterations):
        y = flow.transform(y, c)
    return np.asarray(y, np.float64).reshape(segments.shape)


def mean_of(policy: StepPolicy) -> Planner:
    """Acting with ``policy``'s mean action: a plan of one action."""
    return lambda obs, qpos, qvel: policy.mean(obs)[:, None]


def planners(ref: StepPolicy, flow: PreferenceFlow, scratch: Simulators, cfg: RolloutConfig, seed: int
             ) -> dict[str, Planner]:
    """The acting rows (see the module docstring), each with its own sampling generator."""
    sample = ref.sampler(seed + 1)

    def bc_sampled(obs, qpos, qvel):
        return sample(obs)[:, None]

    best_act = ref.sampler(seed + 2)

    def best_of_2(obs, qpos, qvel):
        k = len(obs)
        ro = rollouts(scratch, States(qpos, qvel, obs).repeat(2), best_act, cfg.pair_horizon)
        pick = np.argmax(ro.returns.reshape(k, 2), axis=1)  # ties: the first
        return ro.actions.reshape(k, 2, cfg.pair_horizon, -1)[np.arange(k), pick, :cfg.horizon]

    def pfm(iterations: int, s: int) -> Planner:
        act = ref.sampler(s)

        def plan(obs, qpos, qvel):
            ro = rollouts(scratch, States(qpos, qvel, obs), act, cfg.horizon)
            return improve(flow, ro.actions, obs, iterations)
        return plan

    return {"BC mean": mean_of(ref), "BC sampled": bc_sampled, "simulated best-of-2": best_of_2,
            "PFM": pfm(1, seed + 3), f"PFM x {cfg.iterations}": pfm(cfg.iterations, seed + 4)}


def act_episodes(name: str, planner: Planner, episodes: int, seed: int, max_steps: int, rollout_frequency: int
                 ) -> np.ndarray:
    """Returns ``(episodes,)`` of episodes run side by side (reset seeds ``seed * 10_000 + i``): every
    ``rollout_frequency`` steps (or when a plan runs out) one ``planner`` call for all live episodes that need a
    new plan, given their current observations and simulator states."""
    def replan(envs: list[Any], obs: np.ndarray, alive: np.ndarray, plans: list[Optional[np.ndarray]],
               ptr: np.ndarray) -> dict[int, np.ndarray]:
        idx = [i for i in np.nonzero(alive)[0]
               if plans[i] is None or ptr[i] >= min(len(plans[i]), rollout_frequency)]
        if not idx:
            return {}
        states = [get_state(envs[i]) for i in idx]
        new = planner(obs[idx], np.stack([q for q, _ in states]), np.stack([v for _, v in states]))
        return {i: new[j] for j, i in enumerate(idx)}

    return play(name, episodes, seed, max_steps, replan)


def score_rows(name: str, rows: dict[str, Planner], cfg: RolloutConfig, seed: int, times: dict[str, float],
               label: str = "control rollout") -> dict[str, dict[str, Any]]:
    """Each row's ``cfg.eval_episodes`` episodes (:func:`act_episodes`, reset seeds of cell ``seed``):
    ``{row: {"score": mean normalized return, "score_std", "return": mean return}}``; each row's seconds go into
    ``times`` as ``"eval <row>"``."""
    scores: dict[str, dict[str, Any]] = {}
    for m, plan in rows.items():
        t = time.perf_counter()
        rets = act_episodes(name, plan, cfg.eval_episodes, 1000 + seed, cfg.max_episode_steps, cfg.rollout_frequency)
        s = normalized_score(name, rets)
        scores[m] = {"score": float(s.mean()), "score_std": float(s.std()), "return": float(rets.mean())}
        times[f"eval {m}"] = time.perf_counter() - t
        log.info("%s %s seed %d %s: %.1f", label, name, seed, m, s.mean())
    return scores


# ------------------------------------------------------------------------------------------ the segment test
def segment_test(sims: Simulators, ref: StepPolicy, flow: PreferenceFlow, states: States, cfg: RolloutConfig,
                 seed: int) -> dict[str, dict[str, float]]:
    """On held-out start states: ``{"20": {method: mean 20-step return}, "10": {method: mean return of the 10
    actions}, "pfm_ahead": share of states where PFM's 20-step return beats pi_ref's sample's}`` (see the module
    docstring, item 5)."""
    base = rollouts(sims, states, ref.sampler(seed), cfg.pair_horizon)
    other = rollouts(sims, states, ref.sampler(seed + 1), cfg.pair_horizon)
    sample = base.actions[:, :cfg.horizon]
    best = np.where((base.returns >= other.returns)[:, None, None], sample, other.actions[:, :cfg.horizon])
    segs = {"BC sampled": sample,
            "BC mean": rollouts(sims, states, ref.mean, cfg.horizon).actions,
            "simulated best-of-2": best,
            "PFM": improve(flow, sample, states.obs, 1),
            f"PFM x {cfg.iterations}": improve(flow, sample, states.obs, cfg.iterations)}
    twenty, ten, per_state = {}, {}, {}
    for m, y in segs.items():
        ro = rollouts(sims, states, ref.sampler(seed + 2), cfg.pair_horizon, prefix=y)  # same continuation noise
        twenty[m], ten[m] = float(ro.returns.mean()), float(ro.rewards[:, :cfg.horizon].sum(1).mean())
        per_state[m] = ro.returns
    twenty["teacher's own rollout"] = float(base.returns.mean())
    return {"20": twenty, "10": ten, "pfm_ahead": float((per_state["PFM"] > per_state["BC sampled"]).mean()),
            "pfm_gain_sem": float((per_state["PFM"] - per_state["BC sampled"]).std(ddof=1) / math.sqrt(len(states)))}


# ------------------------------------------------------------------------------------------ one cell
@dataclass
class Prepared:
    """What every row of a cell starts from: pi_ref and its fit's history, the simulators the pairs were made
    in (open: the caller closes them), the pairs split into ``train`` and ``held`` (and the observations each
    kept action was taken in, ``paths``, before the split), their stats, and the seconds each stage took."""

    ref: StepPolicy
    bc_history: Any
    sims: Simulators
    pairs: PreferenceDataset
    paths: dict[str, np.ndarray]
    train: PreferenceDataset
    held: PreferenceDataset
    start_stats: dict[str, float]
    pair_stats: dict[str, Any]
    seconds: dict[str, float]


def prepare(name: str, episodes_data: list, cfg: RolloutConfig, seed: int, progress: bool = False) -> Prepared:
    """pi_ref, the on-policy start states and the pairs of cell ``seed`` (items 1-3 of the module docstring),
    deterministic under the seed: the protocol's rows and the baselines' (:mod:`.rollout_baselines`) start from
    the same ones."""
    cfg.check()
    torch.manual_seed(seed)
    times: dict[str, float] = {}
    t = time.perf_counter()
    ref, bc_hist = fit_step_policy(episodes_data, steps=cfg.bc_steps, hidden=cfg.bc_hidden, seed=seed,
                                   progress=progress)
    times["BC"] = time.perf_counter() - t

    t = time.perf_counter()
    sims = Simulators(name, min(cfg.copies, cfg.n_pairs))
    states, start_stats = start_states(sims, ref, cfg.n_pairs, tuple(cfg.start_steps), cfg.start_tries,
                                       cfg.pair_horizon, seed + 1)
    pairs, pair_stats, paths = collect_pairs(sims, ref, states, cfg, seed + 2)
    train, held = split_pairs(pairs, cfg.heldout, seed)
    times["pairs"] = time.perf_counter() - t
    return Prepared(ref, bc_hist, sims, pairs, paths, train, held, start_stats, pair_stats, times)


def run_rollout_cell(name: str, episodes_data: list, cfg: RolloutConfig, seed: int, progress: bool = False
                     ) -> dict[str, Any]:
    """Every row of the ``rollout`` protocol on one data set and seed; a JSON-able record."""
    prep = prepare(name, episodes_data, cfg, seed, progress)
    ref, bc_hist, sims, train, held = prep.ref, prep.bc_history, prep.sims, prep.train, prep.held
    start_stats, pair_stats, times = prep.start_stats, prep.pair_stats, prep.seconds

    t = time.perf_counter()
    flow, fhist = fit_flow(train, held, cfg, seed, progress)
    times["PFM fit"] = time.perf_counter() - t

    t = time.perf_counter()
    test_states, test_start = start_states(sims, ref, cfg.test_states, tuple(cfg.start_steps), cfg.start_tries,
                                           cfg.pair_horizon, seed + 10_001)
    seg = segment_test(sims, ref, flow, test_states, cfg, seed + 10_002)
    sims.close()
    times["segment test"] = time.perf_counter() - t

    scratch = Simulators(name, 2 * cfg.eval_episodes)
    scores = score_rows(name, planners(ref, flow, scratch, cfg, seed + 20_000), cfg, seed, times)
    scratch.close()
    zero = fhist.extras.get("validation_zero_field", [math.nan])[0]
    return {
        "seed": seed, "start_states": start_stats, "test_start_states": test_start, "pairs": pair_stats,
        "n_train_pairs": len(train), "n_heldout_pairs": len(held),
        "bc": {"steps": bc_hist.steps, "best_step": bc_hist.best_step,
               "heldout_nll": min(v for _, v in bc_hist.validation)},
        "flow": {"validation": fhist.validation, "best_step": fhist.best_step, "zero_field": zero,
                 "steps": fhist.steps},
        "segment_returns": seg["20"], "segment_returns_10": seg["10"], "pfm_ahead": seg["pfm_ahead"],
        "pfm_gain_sem": seg["pfm_gain_sem"], "scores": {"rollout": scores}, "seconds": times,
    }
