"""Behavior policies for the data sets: linear policies trained by Augmented Random Search (ARS V2-t, Mania et al.
2018), fast on a CPU, and saved as small ``.npz`` files so that the experiment never retrains them.

A :class:`LinearPolicy` acts ``a = clip(W (s - mu) / sigma)``. ARS perturbs ``W`` in ``directions`` random directions,
rolls out ``W +- nu delta``, keeps the ``top`` best directions and steps along them, scaled by the reward's std; the
state statistics ``mu, sigma`` are running averages over every visited state. While training, the per-step
survival bonus is removed from the reward (as in the ARS paper), else the hopper learns to stand still.

``python -m pfm_experiments.control.experts hopper`` trains and writes ``experts/hopper.npz`` beside this file: the
expert (the best evaluated iterate), a "medium" snapshot (see :func:`medium_target`) and every evaluated snapshot, so
that ``--repick`` can choose another medium policy without training again.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from pfm.io import atomic_file
from pfm.errors import FileFormatError, InvalidInputError
from .envs import make_env, normalized_score, task

log = logging.getLogger("pfm")
EXPERTS_DIR = Path(__file__).parent / "experts"


@dataclass
class LinearPolicy:
    """``a = clip(W (s - mu) / sigma, low, high)``; ``W: (act_dim, obs_dim)``."""

    W: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return np.clip(self.W @ ((obs - self.mu) / self.sigma), self.low, self.high)

    def to_dict(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}/{k}": np.asarray(getattr(self, k)) for k in ("W", "mu", "sigma", "low", "high")}

    @classmethod
    def from_dict(cls, d: Any, prefix: str) -> "LinearPolicy":
        return cls(*(np.asarray(d[f"{prefix}/{k}"], dtype=np.float64) for k in ("W", "mu", "sigma", "low", "high")))


@dataclass
class MLPPolicy:
    """A deterministic MLP actor (as SAC's, acting with the mean of its squashed Gaussian):
    ``a = low + (tanh(L(relu(... relu(W_1 s + b_1)))) + 1) (high - low) / 2``; ``weights[i]: (out, in)``."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    low: np.ndarray
    high: np.ndarray

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, dtype=np.float64)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = w @ x + b
            if i < len(self.weights) - 1:
                x = np.maximum(x, 0.0)
        return self.low + (np.tanh(x) + 1.0) * 0.5 * (self.high - self.low)

    def to_dict(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}/layers": np.asarray(len(self.weights)), f"{prefix}/low": self.low,
               f"{prefix}/high": self.high}
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):  # float32: what the networks were trained in
            out[f"{prefix}/w{i}"], out[f"{prefix}/b{i}"] = w.astype(np.float32), b.astype(np.float32)
        return out

    @classmethod
    def from_dict(cls, d: Any, prefix: str) -> "MLPPolicy":
        n = int(d[f"{prefix}/layers"])
        f = lambda k: np.asarray(d[f"{prefix}/{k}"], dtype=np.float64)  # noqa: E731
        return cls([f(f"w{i}") for i in range(n)], [f(f"b{i}") for i in range(n)], f("low"), f("high"))


def policy_from_dict(d: Any, prefix: str) -> LinearPolicy | MLPPolicy:
    """The policy stored under ``prefix`` by ``to_dict``: an :class:`MLPPolicy` or a :class:`LinearPolicy`."""
    keys = d.files if hasattr(d, "files") else list(d)
    return MLPPolicy.from_dict(d, prefix) if f"{prefix}/layers" in keys else LinearPolicy.from_dict(d, prefix)


@dataclass
class ARSConfig:
    directions: int = 8
    top: int = 4
    step_size: float = 0.02
    noise: float = 0.03
    iterations: int = 300
    horizon: int = 1000
    eval_every: int = 10
    eval_episodes: int = 5
    seed: int = 0


# Per-task settings: the ARS paper's (Mania et al. 2018, Table 9) as rl-baselines3-zoo uses them; iterations x
# 2 x directions x 1,000 is the budget of environment steps (hopper about 7M, as the zoo's)
ARS_SETTINGS = {
    "hopper": ARSConfig(directions=8, top=4, step_size=0.01, noise=0.025, iterations=450),
    "halfcheetah": ARSConfig(directions=32, top=4, step_size=0.02, noise=0.03, iterations=200),
    "walker2d": ARSConfig(directions=40, top=30, step_size=0.03, noise=0.025, iterations=200),
    "ant": ARSConfig(directions=60, top=20, step_size=0.015, noise=0.025, iterations=200),
}


@dataclass
class _RunningStat:
    n: int = 0
    mean: Optional[np.ndarray] = None
    m2: Optional[np.ndarray] = None

    def push(self, xs: np.ndarray) -> None:
        k = len(xs)
        if k == 0:
            return
        mean_b, var_b = xs.mean(0), xs.var(0)
        if self.mean is None:
            self.n, self.mean, self.m2 = k, mean_b, var_b * k
            return
        delta = mean_b - self.mean
        tot = self.n + k
        self.mean = self.mean + delta * k / tot
        self.m2 = self.m2 + var_b * k + delta ** 2 * self.n * k / tot
        self.n = tot

    def std(self) -> np.ndarray:
        assert self.m2 is not None
        return np.sqrt(self.m2 / max(self.n, 1)).clip(1e-2, None)


def rollout(env: Any, policy: Any, horizon: int = 1000, seed: Optional[int] = None, shift: float = 0.0,
            states: Optional[list] = None) -> tuple[float, int]:
    """One episode of ``policy`` (``obs -> action``); returns (return minus ``shift`` per step, steps)."""
    obs, _ = env.reset(seed=seed)
    total, steps = 0.0, 0
    for _ in range(horizon):
        if states is not None:
            states.append(obs)
        obs, r, terminated, truncated, _ = env.step(policy(obs))
        total += float(r) - shift
        steps += 1
        if terminated or truncated:
            break
    return total, steps


_WORKER_ENV: dict[str, Any] = {}


def _worker_rollout(args: tuple) -> tuple[float, int, np.ndarray]:
    """One ARS rollout in a worker process (its own environment, made once)."""
    name, policy, horizon, seed, shift = args
    if name not in _WORKER_ENV:
        _WORKER_ENV[name] = make_env(name)
    states: list = []
    ret, n = rollout(_WORKER_ENV[name], policy, horizon, seed=seed, shift=shift, states=states)
    return ret, n, np.asarray(states)


@dataclass
class ARSResult:
    expert: LinearPolicy
    medium: LinearPolicy
    expert_return: float
    medium_return: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    env_steps: int = 0
    snapshots: list[tuple[float, LinearPolicy]] = field(default_factory=list)


MEDIUM_CAP = 0.6  # the medium policy's return is at most this fraction of the expert's


def medium_target(name: str, expert_return: float, score: Optional[float] = None) -> float:
    """The return the medium policy should have: that of normalized score ``score`` (default: the level of D4RL's
    medium data, the paper's BC score on it), but at most ``MEDIUM_CAP`` of our expert's return, so that medium and
    expert data stay distinct when our linear expert is weaker than D4RL's.

    D4RL trained its medium policies "to about a third of the expert", yet its hopper-medium data scores about 45-55
    while a third of D4RL's expert is 33; a third of our weaker expert gave 24 and a much harder data set than the
    paper's, so the target is the level of D4RL's data, not the fraction."""
    t = task(name)
    score = t.medium_score if score is None else float(score)
    if not np.isfinite(score):
        raise InvalidInputError(f"score must be finite, got {score}")
    target = t.random_return + score / 100.0 * (t.expert_return - t.random_return)
    return float(min(target, MEDIUM_CAP * expert_return))


def pick_medium(name: str, snapshots: list[tuple[float, LinearPolicy]], expert_return: float,
                score: Optional[float] = None) -> tuple[float, LinearPolicy]:
    """The snapshot ``(return, policy)`` whose evaluated return is nearest :func:`medium_target`."""
    if not snapshots:
        raise InvalidInputError("snapshots is empty: nothing to pick a medium policy from")
    target = medium_target(name, expert_return, score)
    return min(snapshots, key=lambda s: abs(s[0] - target))


def _save_checkpoint(path: Path, name: str, cfg: ARSConfig, it: int, W: np.ndarray, stat: _RunningStat,
                     rng: np.random.Generator, snapshots: list[tuple[float, LinearPolicy]],
                     history: list[dict[str, float]], env_steps: int, seconds: float) -> None:
    """The whole ARS state after iteration ``it`` (written atomically), so that a killed run goes on from there."""
    import json

    assert stat.mean is not None and stat.m2 is not None
    meta = {"task": name, "ars": cfg.__dict__, "iteration": it, "env_steps": env_steps, "seconds": seconds,
            "stat_n": stat.n, "rng": rng.bit_generator.state, "history": history,
            "snapshot_returns": [r for r, _ in snapshots]}
    snaps = {k: v for i, (_, pol) in enumerate(snapshots) for k, v in pol.to_dict(f"snapshot{i}").items()}
    with atomic_file(path, "wb") as f:
        np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), W=W, stat_mean=stat.mean,
                 stat_m2=stat.m2, **snaps)


def _load_checkpoint(path: Path, name: str, cfg: ARSConfig) -> Optional[dict[str, Any]]:
    """The state saved by :func:`_save_checkpoint`, or None when ``path`` does not exist. A checkpoint of another
    task or other ARS settings (the iteration count aside) is an error, not silently restarted."""
    import json

    if not path.exists():
        return None
    with np.load(path) as d:
        meta = json.loads(bytes(d["meta"]).decode())
        mine = {k: v for k, v in cfg.__dict__.items() if k != "iterations"}
        theirs = {k: v for k, v in meta["ars"].items() if k != "iterations"}
        if meta["task"] != name or mine != theirs:
            raise FileFormatError(f"checkpoint {str(path)!r} is of task {meta['task']!r} with ARS settings {theirs}, "
                                f"not {name!r} with {mine}: remove it or pass another --checkpoint")
        snaps = [(float(r), LinearPolicy.from_dict(d, f"snapshot{i}")) for i, r in enumerate(meta["snapshot_returns"])]
        return {"meta": meta, "W": d["W"].copy(), "stat": _RunningStat(meta["stat_n"], d["stat_mean"].copy(),
                                                                       d["stat_m2"].copy()), "snapshots": snaps}


def train_ars(name: str, cfg: Optional[ARSConfig] = None, progress: bool = True, workers: int = 1,
              checkpoint: Optional[Path] = None) -> ARSResult:
    """Train a linear policy on task ``name`` by ARS; keep the best evaluated iterate (the expert) and the snapshot
    picked by :func:`pick_medium` (the medium policy). ``workers > 1`` runs the
    ``2 * directions`` rollouts of an iteration in that many processes (the result is the same as with one).
    With ``checkpoint``, the state is saved there at every evaluation and a run finding one goes on from it (with
    the same result as an unbroken run); a finished run leaves it in place, so that more iterations can follow."""
    from tqdm.auto import tqdm

    t = task(name)
    cfg = cfg or ARS_SETTINGS.get(name, ARSConfig())
    if not 0 < cfg.top <= cfg.directions:
        raise InvalidInputError(f"top must be in 1..directions ({cfg.directions}), got {cfg.top}")
    env = make_env(name)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)
    rng = np.random.default_rng(cfg.seed)
    W = np.zeros((act_dim, obs_dim))
    stat = _RunningStat()
    stat.push(np.zeros((1, obs_dim)))
    snapshots: list[tuple[float, LinearPolicy]] = []
    history: list[dict[str, float]] = []
    start, env_steps, first = time.perf_counter(), 0, 0
    if not isinstance(workers, int) or workers < 1:
        raise InvalidInputError(f"workers must be a positive integer, got {workers!r}")
    saved = _load_checkpoint(Path(checkpoint), name, cfg) if checkpoint is not None else None
    if saved is not None:
        meta = saved["meta"]
        W, stat, snapshots, history = saved["W"], saved["stat"], saved["snapshots"], meta["history"]
        rng.bit_generator.state = meta["rng"]
        first, env_steps, start = meta["iteration"], meta["env_steps"], start - meta["seconds"]
        log.info("ARS %s: going on from iteration %d of checkpoint %s", name, first, checkpoint)
    pool = None
    if workers > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(workers)
    bar = tqdm(range(first, cfg.iterations), desc=f"ARS {name}", disable=not progress, unit="it",
               initial=first, total=cfg.iterations)
    for it in bar:
        mu, sigma = stat.mean.copy(), stat.std()
        deltas = rng.standard_normal((cfg.directions, act_dim, obs_dim))
        jobs = [(name, LinearPolicy(W + sign * cfg.noise * deltas[k], mu, sigma, low, high), cfg.horizon,
                 int(rng.integers(2**31)), t.healthy_reward) for k in range(cfg.directions) for sign in (1.0, -1.0)]
        done = pool.map(_worker_rollout, jobs) if pool is not None else [_worker_rollout(j) for j in jobs]
        returns = np.array([r for r, _, _ in done]).reshape(cfg.directions, 2)
        env_steps += sum(n for _, n, _ in done)
        stat.push(np.concatenate([s for _, _, s in done]))
        order = np.argsort(-returns.max(1))[:cfg.top]
        r_std = returns[order].std()
        if r_std > 0:
            W = W + cfg.step_size / (cfg.top * r_std) * np.einsum("k,kij->ij", returns[order, 0] - returns[order, 1],
                                                                   deltas[order])
        if (it + 1) % cfg.eval_every == 0 or it + 1 == cfg.iterations:
            pol = LinearPolicy(W.copy(), stat.mean.copy(), stat.std(), low, high)
            rets = [rollout(env, pol, cfg.horizon, seed=10**6 + 97 * it + e)[0] for e in range(cfg.eval_episodes)]
            mean = float(np.mean(rets))
            snapshots.append((mean, pol))
            history.append({"iteration": it + 1, "env_steps": env_steps, "return": mean,
                            "score": float(normalized_score(name, mean)), "seconds": time.perf_counter() - start})
            bar.set_postfix(ret=f"{mean:.0f}", steps=env_steps)
            log.info("ARS %s: iteration %d, %d env steps, return %.0f", name, it + 1, env_steps, mean)
            if checkpoint is not None:
                _save_checkpoint(Path(checkpoint), name, cfg, it + 1, W, stat, rng, snapshots, history, env_steps,
                                 time.perf_counter() - start)
    env.close()
    if pool is not None:
        pool.close()
        pool.join()
    if not snapshots:
        raise InvalidInputError(f"no evaluated iterate: the run already has {first} of {cfg.iterations} iterations")
    best = max(snapshots, key=lambda s: s[0])
    medium = pick_medium(name, snapshots, best[0])
    return ARSResult(best[1], medium[1], best[0], medium[0], history, time.perf_counter() - start, env_steps,
                     snapshots)


def evaluate(name: str, policy: Any, episodes: int = 10, seed: int = 0, noise: float = 0.0) -> np.ndarray:
    """Returns of ``episodes`` episodes of ``policy`` (with Gaussian action noise of std ``noise``)."""
    env = make_env(name)
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high

    def act(obs: np.ndarray) -> np.ndarray:
        a = policy(obs)
        return np.clip(a + noise * rng.standard_normal(a.shape), low, high) if noise > 0 else a

    out = np.array([rollout(env, act, seed=seed * 1000 + e)[0] for e in range(episodes)])
    env.close()
    return out


def save_experts(path: Path, name: str, result: ARSResult, cfg: Any,
                 final: Optional[dict[str, Any]] = None, trainer: str = "ars") -> None:
    """Write the expert, the medium policy and every snapshot of ``result`` to ``path`` (atomically), with the
    settings ``cfg`` of the ``trainer`` (``"ars"`` or ``"sac"``) that made them."""
    import json

    meta = {"task": name, "expert_return": result.expert_return, "medium_return": result.medium_return,
            "final_evaluation": final or {}, "trainer": trainer,
            trainer: cfg.__dict__, "seconds": result.seconds, "env_steps": result.env_steps,
            "history": result.history, "snapshot_returns": [r for r, _ in result.snapshots]}
    snaps = {k: v for i, (_, pol) in enumerate(result.snapshots) for k, v in pol.to_dict(f"snapshot{i}").items()}
    with atomic_file(path, "wb") as f:
        np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                 **result.expert.to_dict("expert"), **result.medium.to_dict("medium"), **snaps)


def load_snapshots(name: str, path: Optional[Path] = None) -> list[tuple[float, Any]]:
    """The evaluated ARS snapshots ``(return, policy)`` stored in task ``name``'s policy file (empty for a file
    written before snapshots were stored)."""
    import json

    path = Path(path) if path is not None else EXPERTS_DIR / f"{task(name).name}.npz"
    load_experts(name, path)  # checks the file and its task
    with np.load(path) as d:
        meta = json.loads(bytes(d["meta"]).decode())
        return [(float(r), policy_from_dict(d, f"snapshot{i}"))
                for i, r in enumerate(meta.get("snapshot_returns", []))]


def load_experts(name: str, path: Optional[Path] = None) -> tuple[Any, Any, dict[str, Any]]:
    """The committed (or given) ``(expert, medium, meta)`` of task ``name``."""
    import json

    path = Path(path) if path is not None else EXPERTS_DIR / f"{task(name).name}.npz"
    if not path.exists():
        raise FileFormatError(f"no trained behavior policies for {name!r} at {str(path)!r}; train them with "
                            f"`python -m pfm_experiments.control.experts {name}`")
    with np.load(path) as d:
        meta = json.loads(bytes(d["meta"]).decode())
        if meta.get("task") != name:
            raise FileFormatError(f"{str(path)!r} holds policies for {meta.get('task')!r}, not {name!r}")
        return policy_from_dict(d, "expert"), policy_from_dict(d, "medium"), meta


def repick(name: str, path: Path, trainer: str = "ars",
           score: Optional[float] = None) -> tuple[ARSResult, dict[str, Any], dict[str, Any]]:
    """The result stored in the policy file ``path`` with the medium policy picked again among its snapshots (no
    training): ``(result, the trainer's settings, the final evaluation kept, the expert's)``. A file made by
    another ``trainer`` (``"ars"`` or ``"sac"``) is an error naming the command that repicks it."""
    expert, _, meta = load_experts(name, path)
    made_by = meta.get("trainer", "ars")
    if made_by != trainer:
        module = "experts" if made_by == "ars" else f"{made_by}_experts"
        raise InvalidInputError(f"{str(path)!r} was trained by {made_by}: repick with "
                                f"`python -m pfm_experiments.control.{module} {name} --repick`")
    snapshots = load_snapshots(name, path)
    if not snapshots:
        raise InvalidInputError(f"{str(path)!r} stores no snapshots (written by an older version): train again")
    medium = pick_medium(name, snapshots, meta["expert_return"], score)
    result = ARSResult(expert, medium[1], meta["expert_return"], medium[0], meta["history"], meta["seconds"],
                       meta["env_steps"], snapshots)
    return result, meta[trainer], {"expert": meta["final_evaluation"]["expert"]}


def finish(name: str, path: Path, result: ARSResult, cfg: Any, final: dict[str, Any], episodes: int,
           score: Optional[float] = None, trainer: str = "ars") -> None:
    """Evaluate the expert and the medium policy again on ``episodes`` fresh episodes (those not in ``final``
    already: the picks were the best of noisy 5-episode evaluations), then write the policy file and log it."""
    for which, policy in (("expert", result.expert), ("medium", result.medium)):
        if which not in final:
            rets = evaluate(name, policy, episodes=episodes, seed=12_345)
            final[which] = {"return": float(rets.mean()), "return_std": float(rets.std()),
                            "score": float(normalized_score(name, rets.mean())), "episodes": episodes}
    final["medium"]["target_return"] = medium_target(name, result.expert_return, score)
    save_experts(path, name, result, cfg, final, trainer=trainer)
    log.info("%s: expert return %.0f (%.1f D4RL-style), medium %.0f (%.1f, target %.0f) on %d fresh episodes; "
             "%d env steps, %.0f s -> %s", name, final["expert"]["return"], final["expert"]["score"],
             final["medium"]["return"], final["medium"]["score"], final["medium"]["target_return"], episodes,
             result.env_steps, result.seconds, path)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Train the ARS behavior policies of a control task and save them.")
    p.add_argument("task", choices=sorted(ARS_SETTINGS))
    p.add_argument("--iterations", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="default: experts/<task>.npz beside this module")
    p.add_argument("--workers", type=int, default=1, help="processes for the rollouts (default 1)")
    p.add_argument("--final-episodes", type=int, default=20, help="episodes of the final evaluation (default 20)")
    p.add_argument("--medium-score", type=float, help="D4RL-style score the medium policy aims at (default: the "
                   f"level of D4RL's medium data, capped at {MEDIUM_CAP:g} of the expert's return)")
    p.add_argument("--checkpoint", type=Path, help="save the ARS state here at every evaluation and go on from it "
                   "if it exists (a killed run resumes; a finished one continues with a larger --iterations)")
    p.add_argument("--repick", action="store_true", help="do not train: pick the medium policy again among the "
                   "snapshots stored in the file")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = a.out or EXPERTS_DIR / f"{a.task}.npz"
    final: dict[str, Any] = {}
    if a.repick:
        result, settings, final = repick(a.task, out, "ars", a.medium_score)
        cfg = ARSConfig(**settings)
    else:
        cfg = ARSConfig(**{**ARS_SETTINGS[a.task].__dict__, "seed": a.seed})
        if a.iterations:
            cfg.iterations = a.iterations
        result = train_ars(a.task, cfg, workers=a.workers, checkpoint=a.checkpoint)
        if a.medium_score is not None:
            medium = pick_medium(a.task, result.snapshots, result.expert_return, a.medium_score)
            result.medium, result.medium_return = medium[1], medium[0]
    finish(a.task, out, result, cfg, final, a.final_episodes, a.medium_score)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
