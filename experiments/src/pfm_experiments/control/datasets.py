"""D4RL-style offline data sets in Minari's format, made here with the committed behavior policies, and read back
from Minari (ours, or a user's real ``mujoco/hopper/medium-v0``) by name or by path.

Kinds, as in D4RL: ``random`` (uniform random actions), ``medium`` (the medium policy), ``expert`` (the expert),
``medium-expert`` (the two concatenated). The medium and expert policies act with Gaussian action noise (std
``noise``), as D4RL's stochastic SAC policies did, so that the data set covers more than one trajectory.

Every step's ``infos`` hold ``qpos`` and ``qvel``, what restores the exact simulator state. Data sets without them
(D4RL's own, converted to Minari) are restored from the observation instead: for these tasks the observation is
``(qpos without the x (and y) position, qvel)``, and the dropped coordinates do not affect the dynamics or the
reward.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from pfm.errors import FileFormatError, InvalidInputError
from pfm.runtime import data_dir
from .envs import get_state, make_env, task
from .experts import load_experts

KINDS = ("random", "medium", "expert", "medium-expert")
NOISE = 0.1
"""The behavior policies' Gaussian action noise (std) in the data sets we make, unless told otherwise."""


@dataclass
class Episode:
    """One episode: ``observations (T+1, obs_dim)``, ``actions (T, act_dim)``, ``rewards (T,)``,
    ``terminations (T,)``, ``truncations (T,)`` and, when stored, ``qpos (T+1, nq)`` and ``qvel (T+1, nv)``."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    qpos: Optional[np.ndarray] = None
    qvel: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.actions)


def collect(name: str, kind: str, steps: int, *, noise: float = NOISE, seed: int = 0,
            experts_path: Optional[Path] = None, progress: bool = False) -> list[Episode]:
    """Episodes of ``kind`` on task ``name`` until ``steps`` environment steps (the last episode is cut there and
    marked truncated)."""
    from tqdm.auto import tqdm

    if kind not in KINDS:
        raise InvalidInputError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(steps, int) or steps < 1:
        raise InvalidInputError(f"steps must be a positive integer, got {steps!r}")
    if kind == "medium-expert":
        half = steps // 2
        return (collect(name, "medium", half, noise=noise, seed=seed, experts_path=experts_path, progress=progress) +
                collect(name, "expert", steps - half, noise=noise, seed=seed + 1, experts_path=experts_path,
                        progress=progress))
    env = make_env(name)
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    policy = None
    if kind != "random":
        expert, medium, _ = load_experts(task(name).name, experts_path)
        policy = expert if kind == "expert" else medium
    episodes: list[Episode] = []
    total = 0
    bar = tqdm(total=steps, desc=f"collect {name}-{kind}", disable=not progress, unit="step")
    while total < steps:
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        q, v = get_state(env)
        ep: dict[str, list] = {"obs": [obs], "act": [], "rew": [], "term": [], "trunc": [], "qpos": [q], "qvel": [v]}
        while True:
            if policy is None:
                a = rng.uniform(low, high)
            else:
                a = np.clip(policy(obs) + noise * rng.standard_normal(low.shape), low, high)
            obs, r, terminated, truncated, _ = env.step(a)
            total += 1
            cut = total >= steps
            q, v = get_state(env)
            for key, value in (("obs", obs), ("act", a), ("rew", r), ("term", terminated),
                               ("trunc", truncated or (cut and not terminated)), ("qpos", q), ("qvel", v)):
                ep[key].append(value)
            if terminated or truncated or cut:
                break
        bar.update(len(ep["act"]))
        episodes.append(Episode(np.asarray(ep["obs"], np.float64), np.asarray(ep["act"], np.float32),
                                np.asarray(ep["rew"], np.float64), np.asarray(ep["term"], bool),
                                np.asarray(ep["trunc"], bool), np.asarray(ep["qpos"]), np.asarray(ep["qvel"])))
    bar.close()
    env.close()
    return episodes


def dataset_id(name: str, kind: str) -> str:
    """Our data sets' Minari id, e.g. ``pfm/hopper/medium-v0``."""
    return f"pfm/{task(name).name}/{kind}-v0"


@contextlib.contextmanager
def _minari_root(root: Path) -> Iterator[None]:
    """Minari finds its data sets through ``MINARI_DATASETS_PATH``: point it at ``root`` for the duration."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def minari_root() -> Path:
    """Where our data sets are written: ``<data dir>/minari``."""
    return data_dir() / "minari"


def write_minari(episodes: list[Episode], name: str, kind: str, root: Optional[Path] = None,
                 description: str = "") -> Path:
    """Write ``episodes`` as the Minari data set :func:`dataset_id` ``(name, kind)`` under ``root``; returns its
    directory. An existing data set of that id is replaced only once the new one is complete."""
    import shutil

    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    from pfm.io import atomic_dir

    if not episodes:
        raise InvalidInputError("episodes is empty: nothing to write")
    root = Path(root) if root is not None else minari_root()
    t = task(name)
    ds_id = dataset_id(name, kind)
    env = make_env(name)
    buffers = [EpisodeBuffer(id=i, observations=e.observations.astype(np.float64), actions=e.actions,
                             rewards=list(e.rewards), terminations=list(e.terminations),
                             truncations=list(e.truncations),
                             infos={"qpos": e.qpos, "qvel": e.qvel} if e.qpos is not None else {})
               for i, e in enumerate(episodes)]
    final_dir = root / ds_id
    with atomic_dir(final_dir) as tmp:
        # Minari writes <MINARI_DATASETS_PATH>/<id>/data: let it write inside the temporary directory, then move
        # its data directory up, so the swap onto final_dir is the only step a reader can see
        with _minari_root(tmp / "minari"):
            minari.create_dataset_from_buffers(
                ds_id, buffers, env=env, eval_env=t.env_id, algorithm_name=f"pfm ARS behavior policy ({kind})",
                author="pfm", author_email="-", code_permalink="pfm_experiments.control.datasets (this package)",
                ref_min_score=t.random_return, ref_max_score=t.expert_return, description=description or
                f"D4RL-style {kind} data set on {t.env_id}, made by pfm_experiments.control.datasets")
        os.replace(tmp / "minari" / ds_id / "data", tmp / "data")
        shutil.rmtree(tmp / "minari")
    env.close()
    return final_dir


def load_episodes(dataset: str, root: Optional[Path] = None) -> list[Episode]:
    """Episodes of a Minari data set given by id (looked up under ``root``, default ours, then Minari's own
    ``MINARI_DATASETS_PATH``) or by the path of its directory."""
    import minari

    path = Path(dataset)
    candidates = [path, path / "data"] if path.exists() else []
    if not candidates:
        base = Path(root) if root is not None else minari_root()
        candidates = [base / f"{dataset}" / "data"]
    ds = None
    for c in candidates:
        if (c / "metadata.json").exists():
            ds = minari.MinariDataset(c)
            break
    if ds is None:
        try:
            ds = minari.load_dataset(dataset)
        except (FileNotFoundError, ValueError) as exc:
            raise FileFormatError(f"no Minari data set {dataset!r} (looked in {[str(c) for c in candidates]} and "
                                f"MINARI_DATASETS_PATH): {exc}") from None
    out = []
    for ep in ds.iterate_episodes():
        infos = ep.infos or {}
        out.append(Episode(np.asarray(ep.observations, np.float64), np.asarray(ep.actions, np.float32),
                           np.asarray(ep.rewards, np.float64), np.asarray(ep.terminations, bool),
                           np.asarray(ep.truncations, bool),
                           np.asarray(infos["qpos"]) if "qpos" in infos else None,
                           np.asarray(infos["qvel"]) if "qvel" in infos else None))
    if not out:
        raise FileFormatError(f"Minari data set {dataset!r} holds no episodes")
    return out


def state_from_observation(name: str, obs: np.ndarray, nq: int, nv: int) -> tuple[np.ndarray, np.ndarray]:
    """``(qpos, qvel)`` from an observation of these tasks, with the unobserved x (and y) position set to 0."""
    skip = 2 if task(name).name == "ant" else 1
    obs = np.asarray(obs, np.float64)
    if obs.shape[-1] < nq - skip + nv:
        raise InvalidInputError(f"an observation of {name} with {obs.shape[-1]} entries cannot hold qpos[{skip}:] "
                                f"and qvel ({nq - skip + nv} entries)")
    qpos = np.concatenate([np.zeros(skip), obs[:nq - skip]])
    return qpos, obs[nq - skip:nq - skip + nv].copy()


def episodes_digest(episodes: list) -> str:
    """16 hex digits of the SHA-256 of the episodes' observations and actions: what a cell's cache key holds of its
    data."""
    h = hashlib.sha256()
    for e in episodes:
        h.update(np.ascontiguousarray(e.observations).tobytes())
        h.update(np.ascontiguousarray(e.actions).tobytes())
    return h.hexdigest()[:16]
