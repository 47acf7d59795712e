"""``pfm reproduce toy2d``: every method for every preference model and seed (finished parts cached), then the
tables and figures; :func:`report_only` rewrites the tables from a results JSON without running anything."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch

from pfm.errors import InvalidInputError
from pfm.io import atomic_file
from ..runner import SeedRunner, read_results
from .config import Config
from .methods import run_one
from .plots import cost_figure, figure, theory_figure
from .report import summarize, sweep_table, table, theory_table
from .task import PREFERENCES, true_reward

ARRAYS = ("samples", "learned_reward_grid", "trajectory")  # a part's arrays, cached in its .npz


def _suffix(reward: str) -> str:
    true_reward(torch.zeros(1, 2), reward)  # checks the layout
    return "" if reward == "inside" else f"-{reward}"


def reproduce(
    out_dir: str | Path = "results",
    *,
    quick: bool = False,
    seeds: Optional[int] = None,
    preferences: Optional[tuple[str, ...]] = None,
    reward: str = "inside",
    cache_dir: Optional[str | Path] = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every method for every preference model and seed; write ``toy2d.json``, ``toy2d.md`` and the figures
    (``toy2d-edge.*`` with ``reward="edge"``).

    Finished (preference, seed) parts are cached under ``cache_dir`` (default: the data directory's ``toy2d/``), in
    ``<config key>/<preference>-<seed>.json`` (:class:`pfm_experiments.runner.SeedRunner`; the key leaves out the
    seeds and the preference models), so a run that was stopped goes on where it was.
    """
    from pfm.runtime import data_dir

    cfg = Config.quick_config() if quick else Config()
    if seeds is not None:
        cfg.seeds = tuple(range(seeds))
    if preferences is not None:
        for p in preferences:
            if p not in PREFERENCES:
                raise InvalidInputError(f"preferences must be among {PREFERENCES}, got {p!r}")
        cfg.preferences = tuple(preferences)
    suffix = _suffix(reward)
    cfg.reward = reward
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runner = SeedRunner(Path(cache_dir) if cache_dir is not None else data_dir() / "toy2d", cfg, arrays=ARRAYS,
                        omit=("seeds", "preferences"), name="toy2d")
    start = time.perf_counter()
    parts: list[dict[str, Any]] = []
    figures: dict[str, dict[str, Any]] = {}
    for pref in cfg.preferences:
        runner.label = pref
        for s in runner.run(cfg.seeds, functools.partial(run_one, cfg, pref, progress=progress)):
            parts.append(s.record)
            if s.seed == cfg.seeds[0]:
                figures[pref] = {**s.record, **s.arrays()}
    for pref, part in figures.items():
        label = {"bt": "Bradley-Terry", "threshold": "threshold (non-BT)"}[pref]
        figure(part, out_dir / f"toy2d{suffix}-{pref}.png", f"2D preference alignment, {label} preferences, seed "
               f"{part['seed']}: same {part['n_train']} training pairs for every method")
        theory_figure(part, out_dir / f"toy2d{suffix}-{pref}-theory.png", f"What the theorems predict, measured: "
                      f"{label} preferences, seed {part['seed']}")
    result = {"config": asdict(cfg), "summary": summarize(parts), "runs": parts,
              "seconds": time.perf_counter() - start, "torch_threads": torch.get_num_threads(),
              "compute_seconds": float(sum(p["wall_seconds"] for p in parts))}
    cost_figure(result["summary"], out_dir / f"toy2d{suffix}-cost.png", "2D experiment: true reward against "
                f"inference cost per output (mean ± sample std over seeds {', '.join(map(str, cfg.seeds))})")
    write_report(result, out_dir / f"toy2d{suffix}")
    return result


def write_report(result: dict[str, Any], stem: Path) -> None:
    """``<stem>.json`` (the result) and ``<stem>.md`` (its tables)."""
    parts, summary = result["runs"], result["summary"]
    with atomic_file(stem.with_suffix(".json"), "w") as f:
        json.dump(result, f, indent=1)
    md = table(summary) + "\n" + sweep_table(parts) + "\n" + theory_table(summary, parts)
    with atomic_file(stem.with_suffix(".md"), "w") as f:
        f.write(md + f"\nComputing every part took {result['compute_seconds']:.0f} s with {result['torch_threads']} "
                f"torch threads (this invocation: {result['seconds']:.0f} s; finished parts are cached).\n")


def report_only(out_dir: str | Path = "results", *, reward: str = "inside") -> dict[str, Any]:
    """Recompute the summary of ``<out_dir>/toy2d[-edge].json`` from its per-seed runs, and rewrite that JSON's
    ``summary`` and the ``.md`` (``pfm reproduce toy2d --report-only``); the figures are left as they are."""
    stem = Path(out_dir) / f"toy2d{_suffix(reward)}"
    command = "pfm reproduce toy2d" + (f" --reward {reward}" if reward != "inside" else "")
    result = read_results(stem.with_suffix(".json"), command)
    result["summary"] = summarize(result["runs"])
    write_report(result, stem)
    return result
