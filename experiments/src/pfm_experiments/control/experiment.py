"""The offline RL experiment: PFM against BC, DPO and Marginal BC on D4RL-style MuJoCo data sets.

One *cell* is one task x one data set x one seed:

1. Segments of ``horizon`` actions from the data set; observations standardized with the data set's statistics.
2. pi_ref: a Gaussian behavior-cloning policy over segments given the start observation (held-out NLL, early stop).
3. ``n_pairs`` preference pairs: from a data-set start state, two segments sampled from pi_ref, each executed from
   the restored state in the simulator, the higher return preferred (a scripted teacher). A fraction is held out.
4. Methods on those pairs: PFM (the flow over flattened segments given the start observation, trained with the
   held-out pairs' flow-matching loss for early stopping; PFM x k applies it k = ``iterations`` times), DPO
   fine-tuning of pi_ref (beta swept, picked by held-out implicit accuracy), Marginal BC (pi_ref fine-tuned on the
   preferred segments).
5. Segment test: on held-out start states, the simulated return of each method's segment.
6. Episodes, both protocols: ``replan`` (a segment every step, its first action executed: the paper's text) and
   ``chunk`` (the whole segment executed, then the next one proposed). BC, DPO and Marginal BC act with their
   mean; PFM starts from pi_ref's mean (``start="mean"``) or a sample (``"sample"``).

Scores are D4RL-style normalized returns (see :mod:`.envs`).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from pfm.baselines import behavior_cloning, dpo
from pfm.data import PreferenceDataset
from pfm.errors import InvalidInputError
from pfm.flow import PreferenceFlow
from pfm.policies import GaussianPolicy
from ..runner import Stages
from ..sweeps import sweep_betas
from .config import PROTOCOLS, Config
from .envs import normalized_score
from .episodes import play
from .segments import SegmentRoller, Segments, make_segments

log = logging.getLogger("pfm")


class Normalizer:
    """Observations to standardized float32 tensors (the data set's mean and std)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)

    @classmethod
    def fit(cls, obs: np.ndarray) -> "Normalizer":
        return cls(obs.mean(0), obs.std(0).clip(1e-3, None))

    def __call__(self, obs: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((np.asarray(obs) - self.mean) / self.std, dtype=torch.float32)


def fit_bc(segs: Segments, norm: Normalizer, cfg: Config, seed: int, progress: bool) -> tuple[GaussianPolicy, Any]:
    """pi_ref: a Gaussian over flattened segments given the start observation, by maximum likelihood (5% held
    out for early stopping)."""
    H, A = segs.actions.shape[1:]
    policy = GaussianPolicy((H, A), context_shape=(segs.obs.shape[1],), hidden=cfg.bc_hidden, depth=2, std=0.5)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(segs))
    n_val = max(1, len(segs) // 20)
    val, tr = perm[:n_val], perm[n_val:]
    y = torch.as_tensor(segs.actions)
    c = norm(segs.obs)
    return behavior_cloning(policy, y[tr], c[tr], steps=cfg.bc_steps, batch_size=256, lr=1e-3,
                            validation=(y[val], c[val]), validate_every=max(1, cfg.bc_steps // 20), seed=seed,
                            progress=progress)


def _mean(policy: GaussianPolicy, ctx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return policy.distribution(ctx, len(ctx))[0].reshape(len(ctx), *policy.output_shape)


def collect_pairs(roller: SegmentRoller, segs: Segments, policy: GaussianPolicy, norm: Normalizer, n: int,
                  seed: int, lookahead: int = 0) -> tuple[PreferenceDataset, np.ndarray, dict[str, float]]:
    """``n`` pairs of pi_ref segments from random data-set start states, the higher simulated return preferred
    (ties by a coin; with ``lookahead``, the return of the segment and the next ``lookahead`` steps acted by
    pi_ref's mean). Returns the pairs (contexts: standardized start observations), the start indices and stats."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(segs), n, replace=n > len(segs))
    ctx = norm(segs.obs[idx])
    gen = torch.Generator().manual_seed(seed)
    a = policy.sample(ctx, n, generator=gen)
    b = policy.sample(ctx, n, generator=gen)
    then = proposer(policy, norm) if lookahead else None
    ra = roller.returns(segs.qpos[idx], segs.qvel[idx], a.numpy(), lookahead=lookahead, then=then)
    rb = roller.returns(segs.qpos[idx], segs.qvel[idx], b.numpy(), lookahead=lookahead, then=then)
    first = torch.as_tensor((ra > rb) | ((ra == rb) & (rng.random(n) < 0.5)))
    f = first.view(-1, 1, 1)
    ds = PreferenceDataset(torch.where(f, a, b), torch.where(f, b, a), ctx)
    stats = {"chosen_return": float(np.maximum(ra, rb).mean()), "rejected_return": float(np.minimum(ra, rb).mean()),
             "ties": float((ra == rb).mean())}
    return ds, idx, stats


Propose = Callable[[np.ndarray], np.ndarray]


def episodes_score(name: str, propose: Propose, protocol: str, episodes: int, seed: int, horizon: int,
                   max_steps: int) -> np.ndarray:
    """Returns of ``episodes`` episodes run side by side (:func:`.episodes.play`; one batched ``propose(obs (E,
    obs_dim)) -> (E, H, A)`` call per step for the envs that need a new segment: every step with ``replan``, when
    the last segment's ``horizon`` actions are taken with ``chunk``)."""
    if protocol not in PROTOCOLS:
        raise InvalidInputError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")

    def replan(envs: list[Any], obs: np.ndarray, alive: np.ndarray, plans: list[Optional[np.ndarray]],
               ptr: np.ndarray) -> dict[int, np.ndarray]:
        idx = [i for i in np.nonzero(alive)[0] if plans[i] is None or ptr[i] >= horizon or protocol == "replan"]
        new = np.asarray(propose(obs[idx]), dtype=np.float64) if idx else []
        return {i: new[j] for j, i in enumerate(idx)}

    return play(name, episodes, seed, max_steps, replan)


def save_models(directory: Path, bc: GaussianPolicy, flow: PreferenceFlow, norm: Normalizer) -> None:
    """pi_ref, the flow and the observation statistics of a cell, for :func:`load_models` (e.g. to render)."""
    from safetensors.torch import save_file

    from pfm.io import atomic_dir

    with atomic_dir(directory) as tmp:
        flow.save(tmp / "flow")
        save_file({k: v.contiguous() for k, v in bc.state_dict().items()}, tmp / "bc.safetensors")
        np.savez(tmp / "normalizer.npz", mean=norm.mean, std=norm.std)


def load_models(directory: Path, cfg: Config, obs_dim: int, act_dim: int
                ) -> tuple[GaussianPolicy, PreferenceFlow, Normalizer]:
    from safetensors.torch import load_file

    bc = GaussianPolicy((cfg.horizon, act_dim), context_shape=(obs_dim,), hidden=cfg.bc_hidden, depth=2)
    bc.load_state_dict(load_file(Path(directory) / "bc.safetensors"))
    flow = PreferenceFlow.load(Path(directory) / "flow")
    with np.load(Path(directory) / "normalizer.npz") as z:
        norm = Normalizer(z["mean"], z["std"])
    return bc.eval(), flow, norm


def proposer(bc: GaussianPolicy, norm: Normalizer, flow: Optional[PreferenceFlow] = None, iterations: int = 1,
             start: str = "mean", seed: int = 0) -> Propose:
    """``obs (E, obs_dim) -> segments (E, H, A)``: pi_ref's mean (``flow=None``), or PFM: pi_ref's mean or a
    sample pushed through ``flow`` ``iterations`` times."""
    gen = torch.Generator().manual_seed(seed)

    def propose(obs: np.ndarray) -> np.ndarray:
        ctx = norm(obs)
        if flow is None:
            return _mean(bc, ctx).numpy()
        y = _mean(bc, ctx) if start == "mean" else bc.sample(ctx, len(ctx), generator=gen)
        for _ in range(iterations):
            y = flow.transform(y, ctx)
        return y.numpy()
    return propose


def split_pairs(pairs: PreferenceDataset, heldout: float, seed: int) -> tuple[PreferenceDataset, PreferenceDataset]:
    """``(train, held)``: a ``heldout`` share of ``pairs`` (at least 2) held out by a permutation seeded by
    ``seed``."""
    perm = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
    n_held = max(2, int(round(heldout * len(pairs))))
    return pairs.subset(perm[n_held:]), pairs.subset(perm[:n_held])


def fit_flow(train: PreferenceDataset, held: PreferenceDataset, cfg: Any, seed: int, progress: bool
             ) -> tuple[PreferenceFlow, Any]:
    """PFM's flow on ``train`` (an MLP of ``cfg.flow_depth`` x ``cfg.flow_hidden``, ``cfg.flow_steps`` steps), the
    held-out pairs' loss for early stopping (``cfg.validate_every``, ``cfg.patience``): ``(flow, history)``. Every
    protocol of the control experiment fits its flow so."""
    flow = PreferenceFlow.for_dataset(train, hidden=cfg.flow_hidden, depth=cfg.flow_depth)
    history = flow.fit(train, steps=cfg.flow_steps, batch_size=min(256, len(train)), validation=held,
                       validate_every=cfg.validate_every, patience=cfg.patience, seed=seed, progress=progress)
    return flow, history

class ControlCell(Stages):
    """Every method on one data set and seed, stage by stage (see :func:`run_cell`). The stages draw from torch's
    global generator in turn after one ``torch.manual_seed(seed)``, as they always did, so the cached cells keep
    their numbers."""

    STAGES = (("BC", "bc"), ("pairs", "pairs"), ("PFM fit", "fit"), ("DPO", "dpo"), ("Marginal BC", "mbc"),
              (None, "save"), ("segment test", "segment_test"), (None, "evaluate"))

    def __init__(self, name: str, episodes_data: list, cfg: Config, seed: int, progress: bool = False,
                 save_dir: Optional[Path] = None) -> None:
        super().__init__(seed)
        self.name, self.episodes_data, self.cfg, self.progress, self.save_dir = (name, episodes_data, cfg, progress,
                                                                                save_dir)
        torch.manual_seed(seed)

    def bc(self) -> None:
        """The segments, their observation normalizer, the held-out start states, and pi_ref (BC)."""
        cfg, seed = self.cfg, self.seed
        self.segs = segs = make_segments(self.episodes_data, self.name, cfg.horizon, max_segments=cfg.max_segments,
                                         seed=seed)
        self.norm = Normalizer.fit(segs.obs)
        rng = np.random.default_rng(seed)
        test_idx = rng.choice(len(segs), min(cfg.test_states, len(segs) // 5), replace=False)
        pool = np.setdiff1d(np.arange(len(segs)), test_idx)
        self.train_segs, self.test_segs = segs.subset(pool), segs.subset(test_idx)
        self.bc_policy, self.bc_hist = fit_bc(self.train_segs, self.norm, cfg, seed, self.progress)

    def pairs(self) -> None:
        """Pairs of pi_ref's segments, the teacher's return deciding, split into train and held-out."""
        cfg = self.cfg
        self.roller = SegmentRoller(self.name)
        pairs, _, self.pair_stats = collect_pairs(self.roller, self.train_segs, self.bc_policy, self.norm,
                                                  cfg.n_pairs, self.seed + 1, cfg.teacher_lookahead)
        self.train, self.held = split_pairs(pairs, cfg.heldout, self.seed)

    def fit(self) -> None:
        self.flow, self.fhist = fit_flow(self.train, self.held, self.cfg, self.seed, self.progress)

    def dpo(self) -> None:
        cfg, seed, bc = self.cfg, self.seed, self.bc_policy

        def dpo_fit(beta: float) -> nn.Module:
            return dpo(bc, self.train, beta=beta, steps=cfg.dpo_steps, batch_size=min(128, len(self.train)),
                       lr=1e-4, seed=seed, progress=self.progress)[0]

        s = sweep_betas(dpo_fit, cfg.betas, bc, self.held)
        self.beta, self.dpo_policy, self.dpo_rows = s.beta, s.policy, s.rows

    def mbc(self) -> None:
        """Marginal BC: pi_ref fine-tuned on the preferred segments."""
        self.mbc_policy, _ = behavior_cloning(self.bc_policy, self.train.chosen, self.train.context,
                                              steps=self.cfg.mbc_steps, batch_size=min(128, len(self.train)),
                                              lr=1e-4, seed=self.seed, progress=self.progress)

    def save(self) -> None:
        """pi_ref and the flow, with ``save_dir``; the methods as planners."""
        cfg, bc, norm, flow, seed = self.cfg, self.bc_policy, self.norm, self.flow, self.seed
        if self.save_dir is not None:
            save_models(self.save_dir, bc, flow, norm)
        self.methods: dict[str, Propose] = {
            "BC": proposer(bc, norm), "DPO": proposer(self.dpo_policy, norm),
            "Marginal BC": proposer(self.mbc_policy, norm),
            "PFM": proposer(bc, norm, flow, 1, cfg.start, seed + 7),
            f"PFM x {cfg.iterations}": proposer(bc, norm, flow, cfg.iterations, cfg.start, seed + 7)}

    def segment_test(self) -> None:
        """Each method's segment on held-out start states, scored by the simulator: the teacher's own measure."""
        cfg, test_segs, roller, bc, norm = self.cfg, self.test_segs, self.roller, self.bc_policy, self.norm
        gen = torch.Generator().manual_seed(self.seed + 11)
        ctx = norm(test_segs.obs)
        sample = bc.sample(ctx, len(ctx), generator=gen)
        seg_props = {"BC sample": sample.numpy(), "PFM from a sample": self.flow.transform(sample, ctx).numpy(),
                     **{m: f(test_segs.obs) for m, f in self.methods.items()}}
        self.segment_returns = {m: float(roller.returns(test_segs.qpos, test_segs.qvel, y).mean())
                                for m, y in seg_props.items()}
        self.segment_returns["data set"] = float(roller.returns(test_segs.qpos, test_segs.qvel,
                                                                test_segs.actions).mean())
        self.teacher_returns = {}
        if cfg.teacher_lookahead:  # the teacher's own measure, with its lookahead
            then = proposer(bc, norm)
            self.teacher_returns = {m: float(roller.returns(test_segs.qpos, test_segs.qvel, y,
                                                            lookahead=cfg.teacher_lookahead, then=then).mean())
                                    for m, y in seg_props.items()}
        roller.close()

    def evaluate(self) -> None:
        """Each method's episodes under each protocol, normalized D4RL-style (each timed as ``eval <protocol>
        <method>``)."""
        cfg, name, seed = self.cfg, self.name, self.seed
        self.scores: dict[str, dict[str, Any]] = {}
        for protocol in cfg.protocols:
            for m, f in self.methods.items():
                t = time.perf_counter()
                rets = episodes_score(name, f, protocol, cfg.eval_episodes, 1000 + seed, cfg.horizon,
                                      cfg.max_episode_steps)
                s = normalized_score(name, rets)
                self.scores.setdefault(protocol, {})[m] = {"score": float(s.mean()), "score_std": float(s.std()),
                                                           "return": float(rets.mean())}
                self.seconds[f"eval {protocol} {m}"] = time.perf_counter() - t
                log.info("control %s seed %d %s %s: %.1f", name, seed, protocol, m, s.mean())

    def record(self) -> dict[str, Any]:
        fhist, bc_hist = self.fhist, self.bc_hist
        zero = fhist.extras.get("validation_zero_field", [math.nan])[0]
        return {
            "seed": self.seed, "segments": len(self.segs), "pairs": self.pair_stats,
            "n_train_pairs": len(self.train), "n_heldout_pairs": len(self.held),
            "bc": {"steps": bc_hist.steps, "best_step": bc_hist.best_step,
                   "heldout_nll": min(v for _, v in bc_hist.validation)},
            "flow": {"validation": fhist.validation, "best_step": fhist.best_step, "zero_field": zero,
                     "steps": fhist.steps},
            "dpo": {"beta": self.beta, "sweep": self.dpo_rows}, "segment_returns": self.segment_returns,
            **({"teacher_returns": self.teacher_returns} if self.teacher_returns else {}), "scores": self.scores,
            "seconds": self.seconds,
        }


def run_cell(name: str, episodes_data: list, cfg: Config, seed: int, progress: bool = False,
             save_dir: Optional[Path] = None) -> dict[str, Any]:
    """Every method on one data set and seed; see the module docstring (:class:`ControlCell`'s stages). Returns a
    JSON-able record; with ``save_dir``, pi_ref and the flow are saved there (:func:`save_models`)."""
    return ControlCell(name, episodes_data, cfg, seed, progress, save_dir).run()
