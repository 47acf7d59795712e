"""Behavior policies trained by SAC (sbx, the JAX Stable-Baselines), for the tasks where a linear ARS policy stalls
(walker2d: four ARS runs stayed at a return of about 430 after 2-3M steps, where rl-zoo spends 75M).

``python -m pfm_experiments.control.sac_experts walker2d --steps 400000 --checkpoint DIR`` trains SAC (an actor and
critics of ``--hidden`` units, 128 x 128 by default: 190-220 env steps/s on 2 CPU cores against 110-130 for 256 x 256),
evaluates the deterministic actor every ``--eval-every`` steps and keeps each evaluated actor as a numpy
:class:`~.experts.MLPPolicy` snapshot. The expert is the best snapshot, the medium policy the one nearest
:func:`~.experts.medium_target`, as for ARS, and the file (``experts/<task>.npz`` beside this module) has the same
layout, so the data sets and the experiment read it without sbx. With ``--checkpoint`` the model, its replay
buffer and the snapshots are saved at every evaluation and a killed run goes on from there.

sbx (``pip install sbx-rl``) is needed only to train; it is not a dependency of pfm.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from pfm.io import atomic_dir
from pfm.errors import InvalidInputError
from .envs import make_env, normalized_score
from .experts import (EXPERTS_DIR, MEDIUM_CAP, ARSResult, MLPPolicy, finish, pick_medium, policy_from_dict, repick,
                      rollout)

log = logging.getLogger("pfm")


@dataclass
class SACConfig:
    steps: int = 400_000
    hidden: tuple[int, ...] = (128, 128)
    learning_starts: int = 10_000
    train_freq: int = 16  # gradient steps are done 16 at a time (the same number, less overhead)
    eval_every: int = 20_000
    eval_episodes: int = 5
    seed: int = 0


def actor_policy(model: Any, env: Any) -> MLPPolicy:
    """The deterministic actor of an sbx SAC ``model`` as an :class:`MLPPolicy` (numpy, no JAX needed to act)."""
    params = model.policy.actor_state.params["params"]
    dense = sorted((k for k in params if k.startswith("Dense_")), key=lambda k: int(k.split("_")[1]))
    layers = dense[:-1]  # the last Dense is log_std; the one before it is the mean
    ws = [np.asarray(params[k]["kernel"], dtype=np.float64).T for k in layers]
    bs = [np.asarray(params[k]["bias"], dtype=np.float64) for k in layers]
    return MLPPolicy(ws, bs, env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64))


def _save(directory: Path, model: Any, snapshots: list[tuple[float, MLPPolicy]], history: list[dict],
          seconds: float) -> None:
    with atomic_dir(directory) as tmp:
        model.save(str(tmp / "model.zip"))
        model.save_replay_buffer(str(tmp / "replay.pkl"))
        snaps = {k: v for i, (_, p) in enumerate(snapshots) for k, v in p.to_dict(f"snapshot{i}").items()}
        np.savez(tmp / "snapshots.npz", **snaps)
        (tmp / "state.json").write_text(json.dumps({"returns": [r for r, _ in snapshots], "history": history,
                                                    "seconds": seconds, "timesteps": model.num_timesteps}))


def train_sac(name: str, cfg: SACConfig, checkpoint: Optional[Path] = None, progress: bool = True) -> ARSResult:
    """SAC on task ``name``; returns the expert, the medium policy and every snapshot (an :class:`ARSResult`, the
    record the policy files share)."""
    from pfm import validate as V

    for key in ("steps", "train_freq", "eval_every", "eval_episodes"):
        V.check_positive_int(getattr(cfg, key), key)
    if not cfg.hidden or any(not isinstance(h, int) or h < 1 for h in cfg.hidden):
        raise InvalidInputError(f"hidden must be positive layer widths, got {cfg.hidden!r}")
    try:
        from sbx import SAC
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise InvalidInputError("training SAC behavior policies needs sbx: pip install sbx-rl") from e
    from stable_baselines3.common.callbacks import BaseCallback

    env, eval_env = make_env(name), make_env(name)
    snapshots: list[tuple[float, MLPPolicy]] = []
    history: list[dict[str, float]] = []
    spent = 0.0
    if checkpoint is not None and (Path(checkpoint) / "state.json").exists():
        ck = Path(checkpoint)
        state = json.loads((ck / "state.json").read_text())
        model = SAC.load(str(ck / "model.zip"), env=env)
        model.load_replay_buffer(str(ck / "replay.pkl"))
        with np.load(ck / "snapshots.npz") as d:
            snapshots = [(float(r), policy_from_dict(d, f"snapshot{i}")) for i, r in enumerate(state["returns"])]
        history, spent = state["history"], state["seconds"]
        log.info("SAC %s: going on from %d steps of checkpoint %s", name, model.num_timesteps, ck)
    else:
        model = SAC("MlpPolicy", env, learning_starts=cfg.learning_starts, train_freq=cfg.train_freq,
                    gradient_steps=cfg.train_freq, policy_kwargs={"net_arch": list(cfg.hidden)}, seed=cfg.seed,
                    verbose=0)
    start = time.perf_counter() - spent

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            n = self.model.num_timesteps
            if n % cfg.eval_every == 0:
                pol = actor_policy(self.model, eval_env)
                rets = [rollout(eval_env, pol, seed=10**6 + n + e)[0] for e in range(cfg.eval_episodes)]
                mean = float(np.mean(rets))
                snapshots.append((mean, pol))
                history.append({"env_steps": n, "return": mean, "score": float(normalized_score(name, mean)),
                                "seconds": time.perf_counter() - start})
                log.info("SAC %s: %d env steps, return %.0f (%.1f D4RL-style), %.0f s", name, n, mean,
                         normalized_score(name, mean), time.perf_counter() - start)
                if checkpoint is not None:
                    _save(Path(checkpoint), self.model, snapshots, history, time.perf_counter() - start)
            return True

    remaining = cfg.steps - model.num_timesteps
    if remaining > 0:
        model.learn(remaining, callback=Evaluate(), reset_num_timesteps=False, progress_bar=progress)
    if not snapshots:
        raise InvalidInputError(f"no evaluated actor after {cfg.steps} steps (eval_every={cfg.eval_every})")
    best = max(snapshots, key=lambda s: s[0])
    medium = pick_medium(name, snapshots, best[0])
    return ARSResult(best[1], medium[1], best[0], medium[0], history, time.perf_counter() - start,
                     int(model.num_timesteps), snapshots)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Train SAC behavior policies of a control task (needs sbx-rl).")
    p.add_argument("task", choices=["hopper", "halfcheetah", "walker2d", "ant"])
    p.add_argument("--steps", type=int, default=SACConfig.steps)
    p.add_argument("--hidden", type=int, nargs="+", default=list(SACConfig.hidden))
    p.add_argument("--eval-every", type=int, default=SACConfig.eval_every)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="default: experts/<task>.npz beside this module")
    p.add_argument("--checkpoint", type=Path, help="a directory: save the run at every evaluation and go on from it")
    p.add_argument("--final-episodes", type=int, default=20)
    p.add_argument("--medium-score", type=float, help="D4RL-style score the medium policy aims at (default: the "
                   f"level of D4RL's medium data, capped at {MEDIUM_CAP:g} of the expert's return)")
    p.add_argument("--repick", action="store_true", help="do not train: pick the medium policy again")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = a.out or EXPERTS_DIR / f"{a.task}.npz"
    cfg = SACConfig(steps=a.steps, hidden=tuple(a.hidden), eval_every=a.eval_every, seed=a.seed)
    final: dict[str, Any] = {}
    if a.repick:
        result, settings, final = repick(a.task, out, "sac", a.medium_score)
        cfg = SACConfig(**{**settings, "hidden": tuple(settings["hidden"])})
    else:
        result = train_sac(a.task, cfg, checkpoint=a.checkpoint)
        if a.medium_score is not None:
            medium = pick_medium(a.task, result.snapshots, result.expert_return, a.medium_score)
            result.medium, result.medium_return = medium[1], medium[0]
    finish(a.task, out, result, cfg, final, a.final_episodes, a.medium_score, trainer="sac")
    if a.checkpoint is not None and not a.repick:
        log.info("checkpoint %s kept (remove it, or pass a larger --steps to go on)", a.checkpoint)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
