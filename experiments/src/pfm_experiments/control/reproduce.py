"""``pfm reproduce control``: data sets made once, cells (task x data set x seed) cached one by one, so a killed run
goes on where it stopped; then the tables, the bar plot and a frame strip."""

from __future__ import annotations

import functools
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
from ..runner import SeedRunner, config_from_dict, read_results
from . import report
from .datasets import KINDS, NOISE, collect, dataset_id, episodes_digest, load_episodes, minari_root, write_minari
from .envs import DEFAULT_TASKS, TASKS
from .config import KEY, PROTOCOLS, RENAMED, Config
from .experiment import run_cell
from . import rollout_run as RR
from . import rollout_protocol as R

log = logging.getLogger("pfm")

DEFAULT_KINDS = ("random", "medium", "expert")


def _source(name: str, kind: str, steps: int, noise: float = NOISE) -> dict[str, Any]:
    """What a data set of ours is made from: its size, the behavior policies' weights (a digest), so that a
    data set made by an earlier policy file is made again, and their action noise when it is not the default."""
    from .experts import load_experts

    h = hashlib.sha256()
    if kind != "random":
        expert, medium, _ = load_experts(name)
        for pol in ((medium,) if kind == "medium" else (expert,) if kind == "expert" else (medium, expert)):
            for v in pol.to_dict("p").values():
                h.update(np.ascontiguousarray(v, dtype=np.float64).tobytes())
    return {"task": name, "kind": kind, "steps": steps, "seed": 0, "policies": h.hexdigest()[:16],
            **({"noise": noise} if noise != NOISE else {})}


def dataset_label(kind: str, steps: int = 100_000, noise: float = NOISE) -> str:
    """The name of our data set of ``kind``: ``medium``, ``medium-10000`` (another size), ``medium-noise0p3``
    (another behavior noise; Minari's ids allow no ".")."""
    return kind + ("" if steps == 100_000 else f"-{steps}") + ("" if noise == NOISE else
                                                               "-noise" + f"{noise:g}".replace(".", "p"))


def ensure_dataset(name: str, kind: str, steps: int, root: Path, progress: bool = True, noise: float = NOISE) -> str:
    """Our Minari data set ``(name, kind)`` with ``steps`` steps under ``root``, the behavior policies acting with
    Gaussian action noise of std ``noise``: made (seed 0) unless it is there and was made from the current behavior
    policies (recorded in ``pfm-source.json`` beside it)."""
    label = dataset_label(kind, steps, noise)
    where = root / dataset_id(name, label)
    source = _source(name, kind, steps, noise)
    stamp = where / "pfm-source.json"
    if (where / "data" / "metadata.json").exists() and stamp.exists() and json.loads(stamp.read_text()) == source:
        return str(where)
    t = time.perf_counter()
    episodes = collect(name, kind, steps, noise=noise, seed=0, progress=progress)
    path = write_minari(episodes, name, label, root)
    with atomic_file(stamp, "w") as f:
        json.dump(source, f)
    log.info("control: wrote %s (%d episodes, %d steps) in %.0f s", path, len(episodes), steps,
             time.perf_counter() - t)
    return str(path)


def cells_of(name: str, cfg: Config, digest: str) -> SeedRunner:
    """The runner of data set ``name``'s cells: ``control/cells/<name>/<key>/seed-<seed>.json`` in the data
    directory, the key of the config and the data's ``digest`` (:func:`_digest`; :class:`..runner.SeedRunner`)."""
    return SeedRunner(data_dir() / "control" / "cells" / name.replace("/", "_"), cfg, **KEY, context=digest,
                      name="control")


def cell_path(name: str, seed: int, cfg: Config, digest: str) -> Path:
    """Where cell ``(name, seed)`` is cached: ``<path>.json`` holds its record and ``<path>/`` its models."""
    return cells_of(name, cfg, digest).path(seed).with_suffix("")


def reproduce(out_dir: str | Path = "results", *, tasks: Optional[Sequence[str]] = None,
              kinds: Optional[Sequence[str]] = None, dataset: Optional[str] = None, seeds: Optional[int] = None,
              quick: bool = False, protocols: Optional[Sequence[str]] = None, start: Optional[str] = None,
              dataset_steps: Optional[int] = None, teacher_lookahead: Optional[int] = None,
              rollout_frequency: Optional[int] = None, rollout_baselines: bool = True,
              behavior_noise: Optional[float] = None, progress: bool = True) -> dict[str, Any]:
    """Run every cell and write ``control.json``, ``control.md`` and ``control-bars.png`` to ``out_dir``.

    Args:
        tasks, kinds: which of our data sets (default hopper, halfcheetah, walker2d x random, medium, expert).
        dataset: instead, one Minari data set by id or path (e.g. a real ``mujoco/hopper/medium-v0``); its task is
            taken from ``tasks`` (give exactly one).
        seeds: number of seeds (default 5; 1 with ``quick``).
        quick: hopper-medium, small data and models, 2 short episodes per method (for the tests).
        protocols, start: see :class:`.config.Config`; ``"rollout"`` among the protocols also runs the
            ``rollout`` protocol (:mod:`.rollout_protocol`), whose cells are cached on their own and whose results
            go to ``control-rollout[-quick].json`` and ``.md``. With ``rollout`` alone only it runs, and its result
            is returned; with others too, theirs is returned with the rollout result under ``"rollout"``. The
            rows of other data sets already in that file are kept when it was made with the same rollout config
            (a run on the random and expert sets adds them to the medium sets' table), and its records of this
            run's data sets are taken instead of computed when they were made from the same data and part configs
            (a run with an empty data directory adds a row to the table without computing its cells again).
        dataset_steps: size of the data sets we make (default 100,000 steps; 10,000 with ``quick``).
        teacher_lookahead: steps the teacher goes on with pi_ref's mean after each segment before it compares
            returns (default 0: the segment's own return, the paper's teacher).
        rollout_frequency: ``rollout`` protocol: actions of a plan executed before the next one (default 1).
        behavior_noise: the behavior policies' action noise (std) in the medium and expert data sets we make
            (default 0.1); another value makes data sets of their own, named e.g. ``hopper-medium-noise0p3``.
        rollout_baselines: ``rollout`` protocol: also the baselines' rows (:mod:`.rollout_baselines`: best-of-n by
            a reward model, DPO, Marginal BC fine-tuned and from scratch; :mod:`.rollout_dpo`: DPO with beta picked
            by return on validation episodes), in cells of their own.
    """
    from tqdm.auto import tqdm

    start_time = time.perf_counter()
    cfg = Config.quick_config() if quick else Config()
    with_rollout = False
    if protocols is not None:
        bad = [p for p in protocols if p not in PROTOCOLS + ("rollout",)]
        if bad or not protocols:
            raise InvalidInputError(f"protocols must be a non-empty subset of {PROTOCOLS + ('rollout',)}, got "
                                    f"{list(protocols)}")
        with_rollout = "rollout" in protocols
        classic = tuple(dict.fromkeys(p for p in protocols if p != "rollout"))
        if classic:
            cfg = replace(cfg, protocols=classic)
    else:
        classic = PROTOCOLS
    rcfg = R.RolloutConfig.quick_config() if quick else R.RolloutConfig()
    if rollout_frequency is not None and not with_rollout:
        raise InvalidInputError("rollout_frequency applies to the 'rollout' protocol only: add it to protocols")
    if rollout_frequency is not None:
        rcfg = replace(rcfg, rollout_frequency=rollout_frequency)
    rcfg.check()
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
    noise = NOISE if behavior_noise is None else behavior_noise
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not 0 <= noise < float("inf"):
        raise InvalidInputError(f"behavior_noise must be a non-negative number, got {behavior_noise!r}")
    if behavior_noise is not None and (dataset is not None or "random" in kinds):
        raise InvalidInputError("behavior_noise applies to the medium and expert data sets we make, not to random "
                                "data or a given dataset")
    root = minari_root()
    if dataset is not None:
        if len(tasks) != 1:
            raise InvalidInputError("with dataset, give exactly one task (the environment the data set is of)")
        sources = {f"{tasks[0]}-{Path(dataset).name if Path(dataset).exists() else dataset}": (tasks[0], dataset)}
    else:
        sources = {f"{t}-{dataset_label(k, noise=noise)}": (t, ensure_dataset(t, k, steps, root, progress, noise))
                   for t in tasks for k in kinds}
    rollout_result = RR.reproduce_rollout(out_dir, sources, rcfg, n_seeds, quick, progress,
                                        baselines=rollout_baselines) if with_rollout else None
    if not classic:
        assert rollout_result is not None
        return rollout_result
    stem = "control-quick" if quick else "control"
    kept_sources, kept, earlier_strip = _earlier_classic(Path(out_dir) / f"{stem}.json", cfg, sources)
    cells: dict[str, list[dict[str, Any]]] = {}
    episodes_cache: dict[str, tuple[list, str]] = {}
    with tqdm(total=len(sources) * n_seeds, desc="control cells", disable=not progress, unit="cell") as bar:
        for name, (task_name, source) in sources.items():
            eps = load_episodes(source)
            episodes_cache = {name: (eps, episodes_digest(eps))}  # one data set in memory at a time
            runner = cells_of(name, cfg, episodes_cache[name][1])
            for s in runner.run(range(n_seeds), functools.partial(_cell, task_name, eps, cfg, runner)):
                cells.setdefault(name, []).append(s.record)
                bar.set_postfix_str(f"{name} seed {s.seed}")
                bar.update(1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ran = sources
    merged = {**kept_sources, **sources}
    order = RR.table_order(merged)
    sources = {n: merged[n] for n in order}
    cells = {n: ({**kept, **cells})[n] for n in order}
    result = {"config": asdict(cfg), "sources": sources, "summary": report.summarize(cells), "cells": cells,
              "seconds": time.perf_counter() - start_time,
              "compute_seconds": float(sum(r["wall_seconds"] for rs in cells.values() for r in rs))}
    if kept:
        result["kept_from_earlier_run"] = sorted(kept)
    strip_of = next((n for n in sources if n.endswith("-medium")), next(iter(sources)))
    if quick:
        strip = ""
    elif strip_of in kept:  # the strip shows a data set of the earlier run: its figure and line stay
        strip = earlier_strip or ""
    else:
        strip = _frame_strip(cfg, ran, episodes_cache, out / f"{stem}-frames.png")
        strip = f"Frame strip (`{stem}-frames.png`): {strip}." if strip else ""
    if strip:
        result["frame_strip"] = strip
    write_report(result, out / stem)
    if rollout_result is not None:
        result["rollout"] = rollout_result
    return result


def _read_classic(path: Path) -> dict[str, Any]:
    """A control results file, checked to hold cells and a source for each (an error naming it otherwise)."""
    earlier = read_results(path, "pfm reproduce control")
    if not isinstance(earlier.get("cells"), dict) or not isinstance(earlier.get("sources"), dict) or \
            any(n not in earlier["sources"] for n in earlier["cells"]):
        raise InvalidInputError(f"{str(path)!r} is not a control results file (cells and their sources): move it "
                                "away or choose another --out")
    return earlier


def _same_config(earlier: dict[str, Any], cfg: Config) -> bool:
    """Whether a results file was made with ``cfg`` (its config read with the renamed fields' old names)."""
    try:
        return asdict(config_from_dict(Config, earlier.get("config") or {}, RENAMED)) == asdict(cfg)
    except (InvalidInputError, TypeError, ValueError):
        return False


def _earlier_classic(path: Path, cfg: Config, sources: dict[str, tuple[str, str]]
                     ) -> tuple[dict[str, tuple[str, str]], dict[str, list], Optional[str]]:
    """The sources and cells of the data sets an earlier results file at ``path`` holds and this run does not, and
    its frame strip line, when that file was made with this run's config, so that runs on other data sets (the
    medium sets, then random and expert, then another task) add up to one table; nothing when there is no such file
    or its config differs (its rows are then replaced, with a warning). An unreadable file is an error before any
    work starts: it is the file this run replaces."""
    if not path.exists():
        return {}, {}, None
    earlier = _read_classic(path)
    kept = {n: rs for n, rs in earlier["cells"].items() if n not in sources}
    if not _same_config(earlier, cfg):
        if kept:
            log.warning("control: %s was made with another config; its rows %s are not kept", path, ", ".join(kept))
        return {}, {}, None
    if kept:
        log.info("control: keeping %s from %s (the same config)", ", ".join(kept), path)
    strip = earlier.get("frame_strip") if isinstance(earlier.get("frame_strip"), str) else None
    return {n: tuple(earlier["sources"][n]) for n in kept}, kept, strip


def _cell(task_name: str, episodes: list, cfg: Config, runner: SeedRunner, seed: int) -> dict[str, Any]:
    """One cell's record, its models saved beside it (``seed-<seed>/``)."""
    record = run_cell(task_name, episodes, cfg, seed, progress=False, save_dir=runner.path(seed).with_suffix(""))
    record["torch_threads"] = torch.get_num_threads()
    return record


def write_report(result: dict[str, Any], base: Path) -> None:
    """``<base>.json`` (the result), ``<base>.md`` (the tables, per protocol: every method, then PFM against the
    best baseline paired over seeds; the segment test) and ``<base>-bars.png``."""
    cfg, summary = config_from_dict(Config, result["config"], RENAMED), result["summary"]
    with atomic_file(base.with_suffix(".json"), "w") as f:
        json.dump(result, f, indent=1)
    md = []
    for p in cfg.protocols:
        md.append(f"**Protocol `{p}`** (PFM starts from pi_ref's {cfg.start}), D4RL-style normalized return, "
                  f"{cfg.eval_episodes} episodes per seed, mean ± sample std over seeds:\n\n" + report.table(summary, p))
        md.append(f"PFM against the best baseline under `{p}` (its mean), paired per seed: the mean difference and "
                  "its 95% Student-t confidence interval:\n\n" + report.comparisons_table(summary, p))
    md.append("**Segment test**: mean simulated return of one segment of "
              f"{cfg.horizon} actions from held-out data-set start states:\n\n" + report.segment_table(summary))
    if cfg.teacher_lookahead:
        md.append(f"**The teacher's measure**: the segment's return plus that of the next {cfg.teacher_lookahead} "
                  "steps acted by pi_ref's mean:\n\n" + report.segment_table(summary, "teacher_returns"))
    threads = next(r["torch_threads"] for rs in result["cells"].values() for r in rs)
    md.append(f"Computing the cells took {result['compute_seconds']:.0f} s with {threads} torch "
              f"threads (this invocation: {result['seconds']:.0f} s).")
    if result.get("frame_strip"):
        md.append(result["frame_strip"])
    with atomic_file(base.with_suffix(".md"), "w") as f:
        f.write("\n\n".join(md) + "\n")
    report.bars(summary, base.parent / f"{base.name}-bars.png", "D4RL-style normalized return (mean ± sample std "
                f"over seeds); PFM starts from pi_ref's {cfg.start}")


def report_only(out_dir: str | Path = "results", *, quick: bool = False) -> dict[str, Any]:
    """Recompute the summary of ``<out_dir>/control[-quick].json`` from its cells and rewrite that JSON's
    ``summary``, the ``.md`` and the bar plot (``pfm reproduce control --report-only``); the frame strip is not
    rendered again. A JSON written before it kept the frame strip's line takes it from the ``.md`` beside it."""
    base = Path(out_dir) / ("control-quick" if quick else "control")
    result = read_results(base.with_suffix(".json"), "pfm reproduce control" + (" --quick" if quick else ""))
    result["summary"] = report.summarize(result["cells"])
    md = base.with_suffix(".md")
    if "frame_strip" not in result and md.exists():
        result.update({"frame_strip": line for line in md.read_text().splitlines()
                       if line.startswith("Frame strip (")})
    write_report(result, base)
    return result


def merge_results(out_dir: str | Path, others: Sequence[str | Path]) -> dict[str, Any]:
    """Add to ``<out_dir>/control.json`` the data sets of the ``control.json`` in each of ``others`` that it lacks
    (each made with its config; one that was not is refused), recompute the summary and rewrite the JSON, the ``.md``
    and the bar plot (``python -m pfm_experiments.control.merge results results/walker2d``). Its frame strip stays."""
    base = Path(out_dir) / "control"
    result = read_results(base.with_suffix(".json"), "pfm reproduce control")
    cfg = config_from_dict(Config, result["config"], RENAMED)
    sources = {n: tuple(s) for n, s in result["sources"].items()}
    cells = dict(result["cells"])
    for other in others:
        path = Path(other) / "control.json"
        if not path.exists():
            raise InvalidInputError(f"no control.json in {str(other)!r}")
        earlier = _read_classic(path)
        if not _same_config(earlier, cfg):
            raise InvalidInputError(f"{str(path)!r} was made with another config than {str(base)}.json: its rows "
                                    "cannot share a table")
        for n in earlier["cells"]:
            if n not in sources:
                sources[n], cells[n] = tuple(earlier["sources"][n]), earlier["cells"][n]
    order = RR.table_order(sources)
    result["sources"] = {n: sources[n] for n in order}
    result["cells"] = {n: cells[n] for n in order}
    result["summary"] = report.summarize(result["cells"])
    result["compute_seconds"] = float(sum(r["wall_seconds"] for rs in result["cells"].values() for r in rs))
    result["merged_from"] = sorted({*result.get("merged_from", []), *(str(o) for o in others)})
    write_report(result, base)
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
    digest = episodes_cache[name][1] if name in episodes_cache else episodes_digest(load_episodes(source))
    models = cell_path(name, 0, cfg, digest)
    if not (models / "bc.safetensors").exists():
        return ""
    try:
        from .envs import make_env

        env = make_env(task_name)
        obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        env.close()
        bc, flow, norm = load_models(models, cfg, obs_dim, act_dim)
        proposes = {"BC (pi_ref's mean)": proposer(bc, norm), "PFM": proposer(bc, norm, flow, 1, cfg.start),
                    f"PFM x {cfg.iterations}": proposer(bc, norm, flow, cfg.iterations, cfg.start)}
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
