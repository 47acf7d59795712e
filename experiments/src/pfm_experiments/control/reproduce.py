"""``pfm reproduce control``: data sets made once, cells (task x data set x seed) cached one by one, so a killed run
goes on where it stopped; then the tables, the bar plot and a frame strip."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from pfm.io import atomic_file
from pfm.errors import InvalidInputError
from pfm.runtime import data_dir
from . import report
from .datasets import KINDS, collect, dataset_id, load_episodes, minari_root, write_minari
from .envs import TASKS
from .experiment import PROTOCOLS, Config, run_cell

log = logging.getLogger("pfm")

DEFAULT_TASKS = ("hopper", "halfcheetah", "walker2d")
DEFAULT_KINDS = ("random", "medium", "expert")


def _source(name: str, kind: str, steps: int) -> dict[str, Any]:
    """What a data set of ours is made from: its size and the behavior policies' weights (a digest), so that a
    data set made by an earlier policy file is made again."""
    from .experts import load_experts

    h = hashlib.sha256()
    if kind != "random":
        expert, medium, _ = load_experts(name)
        for pol in ((medium,) if kind == "medium" else (expert,) if kind == "expert" else (medium, expert)):
            for v in pol.to_dict("p").values():
                h.update(np.ascontiguousarray(v, dtype=np.float64).tobytes())
    return {"task": name, "kind": kind, "steps": steps, "seed": 0, "policies": h.hexdigest()[:16]}


def ensure_dataset(name: str, kind: str, steps: int, root: Path, progress: bool = True) -> str:
    """Our Minari data set ``(name, kind)`` with ``steps`` steps under ``root``: made (seed 0) unless it is there
    and was made from the current behavior policies (recorded in ``pfm-source.json`` beside it)."""
    label = kind if steps == 100_000 else f"{kind}-{steps}"
    where = root / dataset_id(name, label)
    source = _source(name, kind, steps)
    stamp = where / "pfm-source.json"
    if (where / "data" / "metadata.json").exists() and stamp.exists() and json.loads(stamp.read_text()) == source:
        return str(where)
    t = time.perf_counter()
    episodes = collect(name, kind, steps, seed=0, progress=progress)
    path = write_minari(episodes, name, label, root)
    with atomic_file(stamp, "w") as f:
        json.dump(source, f)
    log.info("control: wrote %s (%d episodes, %d steps) in %.0f s", path, len(episodes), steps,
             time.perf_counter() - t)
    return str(path)


def cell_path(name: str, seed: int, cfg: Config, digest: str) -> Path:
    """Where cell ``(name, seed)`` is cached: ``<path>.json`` holds its record and ``<path>/`` its models. Cells are
    named by data set, seed and a key of the config and the data's ``digest`` (:func:`_digest`)."""
    return data_dir() / "control" / "cells" / f"{name.replace('/', '_')}-seed{seed}-{cfg.key(digest, seed)}"


def _digest(episodes: list) -> str:
    h = hashlib.sha256()
    for e in episodes:
        h.update(np.ascontiguousarray(e.observations).tobytes())
        h.update(np.ascontiguousarray(e.actions).tobytes())
    return h.hexdigest()[:16]


def reproduce(out_dir: str | Path = "results", *, tasks: Optional[Sequence[str]] = None,
              kinds: Optional[Sequence[str]] = None, dataset: Optional[str] = None, seeds: Optional[int] = None,
              quick: bool = False, protocols: Optional[Sequence[str]] = None, start: Optional[str] = None,
              dataset_steps: Optional[int] = None, teacher_lookahead: Optional[int] = None,
              progress: bool = True) -> dict[str, Any]:
    """Run every cell and write ``control.json``, ``control.md`` and ``control-bars.png`` to ``out_dir``.

    Args:
        tasks, kinds: which of our data sets (default hopper, halfcheetah, walker2d x random, medium, expert).
        dataset: instead, one Minari data set by id or path (e.g. a real ``mujoco/hopper/medium-v0``); its task is
            taken from ``tasks`` (give exactly one).
        seeds: number of seeds (default 5; 1 with ``quick``).
        quick: hopper-medium, small data and models, 2 short episodes per method (for the tests).
        protocols, start: see :class:`.experiment.Config`.
        dataset_steps: size of the data sets we make (default 100,000 steps; 10,000 with ``quick``).
        teacher_lookahead: steps the teacher goes on with pi_ref's mean after each segment before it compares
            returns (default 0: the segment's own return, the paper's teacher).
    """
    from tqdm.auto import tqdm

    start_time = time.perf_counter()
    cfg = Config.quick_config() if quick else Config()
    if protocols is not None:
        bad = [p for p in protocols if p not in PROTOCOLS]
        if bad or not protocols:
            raise InvalidInputError(f"protocols must be a non-empty subset of {PROTOCOLS}, got {list(protocols)}")
        cfg = replace(cfg, protocols=tuple(protocols))
    if start is not None:
        if start not in ("mean", "sample"):
            raise InvalidInputError(f"start must be 'mean' or 'sample', got {start!r}")
        cfg = replace(cfg, start=start)
    if teacher_lookahead is not None:
        if not isinstance(teacher_lookahead, int) or teacher_lookahead < 0:
            raise InvalidInputError(f"teacher_lookahead must be a non-negative integer, got {teacher_lookahead!r}")
        cfg = replace(cfg, teacher_lookahead=teacher_lookahead)
    n_seeds = seeds if seeds is not None else (1 if quick else 5)
    if not isinstance(n_seeds, int) or n_seeds < 1:
        raise InvalidInputError(f"seeds must be a positive integer, got {seeds!r}")
    tasks = list(tasks) if tasks else (["hopper"] if quick else list(DEFAULT_TASKS))
    kinds = list(kinds) if kinds else (["medium"] if quick else list(DEFAULT_KINDS))
    for t in tasks:
        if t not in TASKS:
            raise InvalidInputError(f"unknown task {t!r}; choose from {sorted(TASKS)}")
    for k in kinds:
        if k not in KINDS:
            raise InvalidInputError(f"unknown data set kind {k!r}; choose from {list(KINDS)}")
    steps = dataset_steps if dataset_steps is not None else (10_000 if quick else 100_000)
    root = minari_root()
    if dataset is not None:
        if len(tasks) != 1:
            raise InvalidInputError("with dataset, give exactly one task (the environment the data set is of)")
        sources = {f"{tasks[0]}-{Path(dataset).name if Path(dataset).exists() else dataset}": (tasks[0], dataset)}
    else:
        sources = {f"{t}-{k}": (t, ensure_dataset(t, k, steps, root, progress)) for t in tasks for k in kinds}
    cells: dict[str, list[dict[str, Any]]] = {}
    jobs = [(name, s) for name in sources for s in range(n_seeds)]
    episodes_cache: dict[str, tuple[list, str]] = {}
    with tqdm(total=len(jobs), desc="control cells", disable=not progress, unit="cell") as bar:
        for name, seed in jobs:
            task_name, source = sources[name]
            if name not in episodes_cache:
                eps = load_episodes(source)
                episodes_cache = {name: (eps, _digest(eps))}  # one data set in memory at a time
            eps, digest = episodes_cache[name]
            path = cell_path(name, seed, cfg, digest).with_suffix(".json")
            if path.exists():
                record = json.loads(path.read_text())
                log.info("control: reusing %s", path)
            else:
                t = time.perf_counter()
                record = run_cell(task_name, eps, cfg, seed, progress=False, save_dir=path.with_suffix(""))
                record["wall_seconds"] = time.perf_counter() - t
                record["torch_threads"] = torch.get_num_threads()
                with atomic_file(path, "w") as f:
                    json.dump(record, f)
            cells.setdefault(name, []).append(record)
            bar.set_postfix_str(f"{name} seed {seed}")
            bar.update(1)
    summary = report.summarize(cells)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "control-quick" if quick else "control"
    result = {"config": asdict(cfg), "sources": sources, "summary": summary, "cells": cells,
              "seconds": time.perf_counter() - start_time,
              "compute_seconds": float(sum(r["wall_seconds"] for rs in cells.values() for r in rs))}
    with atomic_file(out / f"{stem}.json", "w") as f:
        json.dump(result, f, indent=1)
    md = []
    for p in cfg.protocols:
        md.append(f"**Protocol `{p}`** (PFM starts from pi_ref's {cfg.start}), D4RL-style normalized return, "
                  f"{cfg.eval_episodes} episodes per seed:\n\n" + report.table(summary, p))
    md.append("**Segment test**: mean simulated return of one segment of "
              f"{cfg.horizon} actions from held-out data-set start states:\n\n" + report.segment_table(summary))
    if cfg.teacher_lookahead:
        md.append(f"**The teacher's measure**: the segment's return plus that of the next {cfg.teacher_lookahead} "
                  "steps acted by pi_ref's mean:\n\n" + report.segment_table(summary, "teacher_returns"))
    md.append(f"Computing the cells took {result['compute_seconds']:.0f} s with {torch.get_num_threads()} torch "
              f"threads (this invocation: {result['seconds']:.0f} s).")
    strip = "" if quick else _frame_strip(cfg, sources, episodes_cache, out / f"{stem}-frames.png")
    if strip:
        md.append(f"Frame strip (`{stem}-frames.png`): {strip}.")
    with atomic_file(out / f"{stem}.md", "w") as f:
        f.write("\n\n".join(md) + "\n")
    report.bars(summary, out / f"{stem}-bars.png", "D4RL-style normalized return (mean ± std over seeds); "
                f"PFM starts from pi_ref's {cfg.start}")
    return result


def _frame_strip(cfg: Config, sources: dict[str, tuple[str, str]], episodes_cache: dict[str, tuple[list, str]],
                 path: Path) -> str:
    """One episode of BC and of PFM on the first medium data set (else the first), cell seed 0, rendered; a line
    saying what it shows, or "" when it could not be made (no saved models, or no offscreen OpenGL). The episode's
    start is the one of ten whose BC return is the median, so the strip shows BC's typical episode, not one that
    falls at once. Not in quick runs: the tests do not depend on OpenGL."""
    from .experiment import episodes_score, load_models, proposer

    name = next((n for n in sources if n.endswith("-medium")), next(iter(sources)))
    task_name, source = sources[name]
    digest = episodes_cache[name][1] if name in episodes_cache else _digest(load_episodes(source))
    models = cell_path(name, 0, cfg, digest)
    if not (models / "bc.safetensors").exists():
        return ""
    try:
        from .envs import make_env

        env = make_env(task_name)
        obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        env.close()
        bc, flow, norm = load_models(models, cfg, obs_dim, act_dim)
        proposes = {"BC (pi_ref's mean)": proposer(bc, norm),
                    "PFM": proposer(bc, norm, flow, 1, cfg.start), f"PFM x {cfg.k}": proposer(bc, norm, flow, cfg.k,
                                                                                              cfg.start)}
        bc_returns = episodes_score(task_name, proposes["BC (pi_ref's mean)"], "chunk", 10, 0, cfg.horizon,
                                    cfg.max_episode_steps)  # reset seeds 0..9
        start = int(np.argsort(bc_returns)[len(bc_returns) // 2])
        returns = report.frame_strip(task_name, proposes, path, horizon=cfg.horizon, seed=start,
                                     title=f"{name}, cell seed 0, reset seed {start}: one episode per method "
                                     "(chunk protocol)")
    except Exception as exc:  # rendering needs an OpenGL the machine may lack: the results stand without it
        log.warning("control: no frame strip (%s: %s)", type(exc).__name__, exc)
        return ""
    shown = ", ".join(f"{m} {r:.0f}" for m, r in returns.items())
    return f"{name}, cell seed 0, reset seed {start} (BC's median of ten), one episode each (chunk protocol), " \
        f"returns {shown}"
