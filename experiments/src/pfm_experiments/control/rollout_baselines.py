"""The baselines of the ``rollout`` protocol (issue 26), on the same pairs and under the same acting loop as PFM.

A baseline cell starts from exactly what the protocol's cell of that seed starts from
(:func:`.rollout_protocol.prepare`: pi_ref, the on-policy start states, the pairs and their split; its record keeps
the pairs' stats, which the report checks against the protocol cell's), and adds these rows:

- ``best-of-n (reward model)``, n in ``best_of_n`` (2 and 8): a Bradley-Terry reward model
  (:class:`pfm.baselines.RewardModel`) on the flow's own input, the flattened segment given the start observation,
  fitted on the training pairs. At every acting step n pi_ref segments of ``horizon`` steps are rolled out closed
  loop (sampled) in scratch copies restored to the current state, as PFM's input is, and the first action of the
  one the reward model scores highest is executed. Its simulator budget is n segments a step (PFM's is one).
- ``DPO``: pi_ref itself (the per-step Gaussian) fine-tuned with the DPO loss (:func:`pfm.baselines.dpo`) on the
  pairs, a segment's log-likelihood being the sum over its actions of the step policy's log-density at the
  observation the action was taken in (:class:`SegmentLikelihood`); beta swept over ``betas`` and picked by the
  held-out pairs' implicit accuracy (:func:`..sweeps.sweep_betas`). It acts with its mean.
- ``Marginal BC (fine-tuned)``: pi_ref fine-tuned by maximum likelihood on the preferred segments' (observation,
  action) steps; ``Marginal BC (from scratch)``: a new step policy of pi_ref's size trained on them alone (the
  paper's Marginal BC collapses on expert data, which suggests from scratch). Both early-stopped on the held-out
  pairs' preferred steps, and both act with their mean.

The rows' scores are D4RL-style normalized returns of ``eval_episodes`` episodes run side by side, with the
protocol's reset seeds (:func:`.rollout_protocol.act_episodes`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from pfm.baselines import RewardModel, behavior_cloning, dpo
from pfm.data import PreferenceDataset
from pfm.errors import InvalidInputError
from pfm.policies import GaussianPolicy, Policy
from ..sweeps import sweep_betas
from .experiment import split_pairs
from .rollout import Simulators
from .rollout_protocol import Planner, RolloutConfig, States, mean_of, prepare, rollouts, score_rows
from .step_policy import StepPolicy

SCHEMA = 1
KEY = {"omit": (), "unset": {}}
"""How :func:`..runner.config_key` keys a baseline cell (with the protocol's config key and the data's digest as
context)."""


@dataclass
class BaselinesConfig:
    best_of_n: tuple[int, ...] = (2, 8)  # best-of-n by the reward model
    reward_steps: int = 2000
    reward_hidden: int = 128
    betas: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)  # DPO's, picked by held-out implicit accuracy
    dpo_steps: int = 500
    dpo_lr: float = 1e-4
    mbc_steps: int = 500  # Marginal BC fine-tuned from pi_ref, at lr 1e-4
    scratch_steps: int = 4000  # Marginal BC from scratch, at lr 1e-3 (pi_ref's own length)
    schema: int = SCHEMA

    @classmethod
    def quick_config(cls) -> "BaselinesConfig":
        return cls(best_of_n=(2,), reward_steps=200, betas=(1.0,), dpo_steps=50, mbc_steps=50, scratch_steps=300)

    def check(self) -> "BaselinesConfig":
        if not self.best_of_n or any(not isinstance(n, int) or n < 2 for n in self.best_of_n):
            raise InvalidInputError(f"best_of_n must be integers of at least 2, got {self.best_of_n!r}")
        for f in ("reward_steps", "dpo_steps", "mbc_steps", "scratch_steps"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 1:
                raise InvalidInputError(f"{f} must be a positive integer, got {getattr(self, f)!r}")
        if not self.betas or any(not b > 0 for b in self.betas):
            raise InvalidInputError(f"betas must be positive, got {self.betas!r}")
        return self


class SegmentLikelihood(Policy):
    """A per-step policy's likelihood of whole segments: ``y (N, H * A + H * O)`` holds a segment's ``H`` actions
    ``(H, A)`` flattened, then the (standardized) observations ``(H, O)`` they were taken in, flattened;
    ``log_prob(y) = sum_t log step(a_t | o_t)`` ``(N,)``. The context is not used (each action's observation is in
    ``y``). What DPO fine-tunes is ``step``."""

    def __init__(self, step: GaussianPolicy, horizon: int, obs_dim: int) -> None:
        super().__init__()
        self.step, self.horizon, self.obs_dim = step, int(horizon), int(obs_dim)
        self.act_dim = int(math.prod(step.output_shape))
        self.output_shape = (self.horizon * (self.act_dim + self.obs_dim),)

    def log_prob(self, y: Tensor, context: Optional[Tensor] = None) -> Tensor:
        y = self._check_y(y, None)
        n, H = y.shape[0], self.horizon
        a = y[:, :H * self.act_dim].reshape(n * H, self.act_dim)
        o = y[:, H * self.act_dim:].reshape(n * H, self.obs_dim)
        return self.step.log_prob(a, o).reshape(n, H).sum(1)


def segment_dataset(prep: Any, norm: Any) -> PreferenceDataset:
    """The pairs as :class:`SegmentLikelihood` reads them: each side's actions and standardized observations."""
    n, H, O = prep.paths["chosen"].shape

    def side(y: Tensor, path: np.ndarray) -> Tensor:
        return torch.cat([y, norm(path.reshape(n * H, O)).reshape(n, H * O)], 1)

    return PreferenceDataset(side(prep.pairs.chosen, prep.paths["chosen"]),
                             side(prep.pairs.rejected, prep.paths["rejected"]))


def preferred_steps(pairs: PreferenceDataset, obs_dim: int, act_dim: int) -> tuple[Tensor, Tensor]:
    """The preferred segments' steps of :func:`segment_dataset`'s pairs: ``(actions (N H, A), standardized
    observations (N H, O))``."""
    y = pairs.chosen
    H = y.shape[1] // (act_dim + obs_dim)
    return y[:, :H * act_dim].reshape(-1, act_dim), y[:, H * act_dim:].reshape(-1, obs_dim)


def reward_best_of(ref: StepPolicy, rm: RewardModel, scratch: Simulators, n: int, horizon: int, seed: int
                   ) -> Planner:
    """Best-of-``n`` by ``rm`` among pi_ref's closed-loop ``horizon``-step segments from the current states."""
    act = ref.sampler(seed)

    def plan(obs: np.ndarray, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        k = len(obs)
        ro = rollouts(scratch, States(qpos, qvel, obs).repeat(n), act, horizon)
        with torch.no_grad():
            r = rm.score(torch.as_tensor(ro.actions.reshape(k * n, -1), dtype=torch.float32),
                         torch.as_tensor(np.repeat(obs, n, 0), dtype=torch.float32)).reshape(k, n)
        pick = r.argmax(1).numpy()
        return ro.actions.reshape(k, n, horizon, -1)[np.arange(k), pick]
    return plan


@dataclass
class SegmentDPO:
    """What both DPO rows of the ``rollout`` protocol (``DPO`` here, ``DPO (beta by return)`` in
    :mod:`.rollout_dpo`) start from on one data set and seed: the protocol's pairs drawn again (``prep``, its
    simulators closed), split as the flow's are, and pi_ref's likelihood of whole segments."""

    prep: Any
    train: PreferenceDataset
    held: PreferenceDataset
    base: SegmentLikelihood

    def fit(self, beta: float, steps: int, lr: float, seed: int, progress: bool = False) -> nn.Module:
        """DPO of pi_ref's segment likelihood on the training pairs: the fine-tuned :class:`SegmentLikelihood`."""
        return dpo(self.base, self.train, beta=beta, steps=steps, batch_size=min(128, len(self.train)), lr=lr,
                   seed=seed, progress=progress)[0]


def segment_dpo(name: str, episodes_data: list, cfg: RolloutConfig, seed: int, progress: bool = False) -> SegmentDPO:
    """Draw the protocol cell's pairs again (:func:`.rollout_protocol.prepare`) and set them up for DPO."""
    prep = prepare(name, episodes_data, cfg, seed, progress)
    prep.sims.close()
    train, held = split_pairs(segment_dataset(prep, prep.ref.norm), cfg.heldout, seed)  # the flow's split
    obs_dim = prep.paths["chosen"].shape[2]
    return SegmentDPO(prep, train, held, SegmentLikelihood(prep.ref.policy, cfg.horizon, obs_dim))


def run_baselines_cell(name: str, episodes_data: list, cfg: RolloutConfig, bcfg: BaselinesConfig, seed: int,
                       progress: bool = False) -> dict[str, Any]:
    """The baseline rows of the ``rollout`` protocol on one data set and seed (see the module docstring); a
    JSON-able record with the pairs' stats (to check against the protocol cell's) and every row's score."""
    bcfg.check()
    segs = segment_dpo(name, episodes_data, cfg, seed, progress)
    prep, seg_train, seg_held, base = segs.prep, segs.train, segs.held, segs.base
    ref, times = prep.ref, dict(prep.seconds)
    obs_dim, act_dim = base.obs_dim, base.act_dim

    t = time.perf_counter()
    torch.manual_seed(seed)
    rm = RewardModel.for_dataset(prep.train, hidden=bcfg.reward_hidden)
    rm.fit(prep.train, steps=bcfg.reward_steps, batch_size=min(256, len(prep.train)), seed=seed, progress=progress)
    rm_acc = {"train": rm.accuracy(prep.train), "heldout": rm.accuracy(prep.held)}
    times["reward model"] = time.perf_counter() - t

    t = time.perf_counter()
    sweep = sweep_betas(lambda beta: segs.fit(beta, bcfg.dpo_steps, bcfg.dpo_lr, seed, progress), bcfg.betas, base,
                        seg_held)
    times["DPO"] = time.perf_counter() - t

    t = time.perf_counter()
    a_tr, o_tr = preferred_steps(seg_train, obs_dim, act_dim)
    a_val, o_val = preferred_steps(seg_held, obs_dim, act_dim)
    tuned, tuned_hist = behavior_cloning(ref.policy, a_tr, o_tr, steps=bcfg.mbc_steps, batch_size=256, lr=1e-4,
                                         validation=(a_val, o_val), validate_every=max(1, bcfg.mbc_steps // 20),
                                         seed=seed, progress=progress)
    torch.manual_seed(seed)
    fresh = GaussianPolicy((act_dim,), context_shape=(obs_dim,), hidden=cfg.bc_hidden, depth=2, std=0.5)
    scratch_pol, scratch_hist = behavior_cloning(fresh, a_tr, o_tr, steps=bcfg.scratch_steps, batch_size=256,
                                                 lr=1e-3, validation=(a_val, o_val),
                                                 validate_every=max(1, bcfg.scratch_steps // 20), seed=seed,
                                                 progress=progress)
    times["Marginal BC"] = time.perf_counter() - t

    scratch = Simulators(name, 2 * cfg.eval_episodes)
    rows: dict[str, Planner] = {f"best-of-{n} (reward model)": reward_best_of(ref, rm, scratch, n, cfg.horizon,
                                                                              seed + 30_000 + n)
                                for n in bcfg.best_of_n}
    rows.update({"DPO": mean_of(StepPolicy(sweep.policy.step, ref.norm)),
                 "Marginal BC (fine-tuned)": mean_of(StepPolicy(tuned, ref.norm)),
                 "Marginal BC (from scratch)": mean_of(StepPolicy(scratch_pol, ref.norm))})
    scores = score_rows(name, rows, cfg, seed, times, label="control rollout baselines")
    scratch.close()

    def nll(hist: Any) -> float:
        return min(v for _, v in hist.validation)

    return {"seed": seed, "pairs": prep.pair_stats, "reward_model": rm_acc,
            "dpo": {"beta": sweep.beta, "sweep": sweep.rows},
            "marginal_bc": {"fine_tuned_heldout_nll": nll(tuned_hist), "from_scratch_heldout_nll": nll(scratch_hist),
                            "steps": len(a_tr)},
            "scores": {"rollout": scores}, "seconds": times}
