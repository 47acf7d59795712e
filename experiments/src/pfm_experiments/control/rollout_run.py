"""``pfm reproduce control --protocols rollout``: the ``rollout`` protocol's run (:mod:`.rollout_protocol`), its
baselines' parts (:mod:`.rollout_baselines`, :mod:`.rollout_dpo`) in cells of their own, the results file that runs
on other data sets add up to, and its report."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from pfm.errors import InvalidInputError
from pfm.io import atomic_file
from pfm.runtime import data_dir
from ..runner import SeedRunner, config_from_dict, read_results
from . import report
from . import rollout_baselines as RB
from . import rollout_dpo as RD
from . import rollout_protocol as R
from .datasets import KINDS, episodes_digest, load_episodes
from .envs import DEFAULT_TASKS, TASKS

log = logging.getLogger("pfm")


def rollout_cells_of(name: str, cfg: "R.RolloutConfig", digest: str) -> SeedRunner:
    """The runner of data set ``name``'s ``rollout``-protocol cells: ``control/rollout-cells/<name>/<key>/
    seed-<seed>.json`` in the data directory, keyed like :func:`.reproduce.cells_of` (its own config and the data's digest)."""
    return SeedRunner(data_dir() / "control" / "rollout-cells" / name.replace("/", "_"), cfg, **R.KEY,
                      context=digest, name="control rollout")


def reproduce_rollout(out_dir: str | Path, sources: dict[str, tuple[str, str]], cfg: "R.RolloutConfig",
                      n_seeds: int, quick: bool, progress: bool, baselines: bool = True) -> dict[str, Any]:
    """The ``rollout`` protocol's cells (cached one by one), with the baselines' parts with ``baselines``
    (:func:`_parts`), and ``control-rollout[-quick].json`` / ``.md``.

    A record of the results file this run replaces is taken as it is, instead of running or loading its cell, when
    that file has this run's config and the record's keys (:func:`_keys`: the data's digest and each part's cache
    key) are this run's; only the parts it lacks then run. So a run with an empty data directory goes on from the
    results file (adds a row to its table) without computing its cells again. A part that runs checks that it drew
    the record's pairs again; where it did not (the same data on another machine can drift: float rounding in
    the simulated closed loop grows over the 100-199 steps to a start state), that seed's protocol cell runs
    again here and its parts with it, so no row is paired with another's data."""
    from tqdm.auto import tqdm

    start_time = time.perf_counter()
    out = Path(out_dir)
    base = out / ("control-rollout-quick" if quick else "control-rollout")
    earlier = _earlier_rollout(base.with_suffix(".json"), cfg)  # read before the work
    kept = {n: rs for n, rs in earlier.cells.items() if n not in sources}
    if kept:
        log.info("control: keeping %s from %s (the same config)", ", ".join(kept), base.with_suffix(".json"))
    cells: dict[str, list[dict[str, Any]]] = {}
    keys: dict[str, dict[str, str]] = {n: earlier.keys[n] for n in kept if n in earlier.keys}
    versions = {n: earlier.versions[n] for n in kept if n in earlier.versions}
    with tqdm(total=len(sources) * n_seeds, desc="control rollout cells", disable=not progress, unit="cell") as bar:
        for name, (task_name, source) in sources.items():
            eps = load_episodes(source)
            digest = episodes_digest(eps)
            runner = rollout_cells_of(name, cfg, digest)
            parts = _parts(name, task_name, eps, digest, cfg, runner.key, quick)
            keys[name] = _keys(digest, parts)
            reuse = earlier.reusable(name, keys[name])

            def cell(seed: int, task_name: str = task_name, eps: list = eps) -> dict[str, Any]:
                return _with_threads(R.run_rollout_cell(task_name, eps, cfg, seed, progress=False))

            done = {s: reuse[s] for s in range(n_seeds) if s in reuse}
            if done:
                log.info("control: %s seeds %s taken from %s", name, sorted(done), base.with_suffix(".json"))
                bar.update(len(done))
            for s in runner.run([s for s in range(n_seeds) if s not in done], cell):
                done[s.seed] = s.record
                bar.set_postfix_str(f"{name} seed {s.seed}")
                bar.update(1)
            records = [done[s] for s in range(n_seeds)]
            if baselines:
                records = _with_parts(records, parts)
                stale = [r["seed"] for r in records if r["seed"] in reuse and not _same_pairs(r)]
                if stale:  # taken records whose data drew other pairs here: this machine's cells instead
                    log.warning("control: %s seeds %s of %s drew other pairs here than its records hold; their "
                                "cells run again", name, stale, base.with_suffix(".json"))
                    again = {s.seed: s.record for s in runner.run(stale, cell)}
                    records = _with_parts([again.get(r["seed"], r) for r in records], parts)
                    reuse = {s: r for s, r in reuse.items() if s not in again}
            cells[name] = records
            # the versions its protocol cells were made with: the earlier file's when every one was taken from it
            taken = all(s in reuse for s in range(n_seeds)) and name in earlier.versions
            versions[name] = earlier.versions[name] if taken else _versions()
    out.mkdir(parents=True, exist_ok=True)
    merged, merged_cells = {**{n: earlier.sources[n] for n in kept}, **sources}, {**kept, **cells}
    order = table_order(merged)
    sources, cells = {n: merged[n] for n in order}, {n: merged_cells[n] for n in order}
    result = {"protocol": "rollout", "config": asdict(cfg), "sources": sources, "keys": keys, "versions": versions,
              "summary": report.rollout_summary(cells), "cells": cells,
              "seconds": time.perf_counter() - start_time,
              "compute_seconds": float(sum(r["wall_seconds"] + sum(r.get(p, {}).get("wall_seconds", 0.0)
                                                                   for p in PARTS)
                                           for rs in cells.values() for r in rs))}
    if kept:
        result["kept_from_earlier_run"] = sorted(kept)
    write_rollout_report(result, base)
    return result


def _versions() -> dict[str, str]:
    """The versions of what a cell's numbers depend on beyond its config and data (the simulator's rounding differs
    between builds and machines; the same seeds then give slightly other closed loops), recorded per data set."""
    import gymnasium
    import mujoco

    return {"mujoco": mujoco.__version__, "gymnasium": gymnasium.__version__, "torch": torch.__version__,
            "numpy": np.__version__}


def _with_parts(records: list[dict[str, Any]], parts: list["_Part"]) -> list[dict[str, Any]]:
    for part in parts:
        records = part.add_to(records)
    return records


def _same_pairs(record: dict[str, Any]) -> bool:
    """Whether every part of ``record`` drew the protocol cell's pairs again."""
    return all(record[p]["same_pairs"] for p in PARTS if p in record)


PARTS = ("baselines", "dpo_return")
"""The parts a rollout record may carry beside the protocol's rows, each from cells of its own (:func:`_parts`)."""


@dataclass
class _Part:
    """Rows added to the protocol's records from cells of their own, cached under ``root`` (keyed by ``cfg``,
    the protocol's key and the data's digest): ``run(seed)`` makes a cell's record (``pairs``, ``scores`` and what
    ``extract`` keeps under ``field``)."""

    field: str
    runner: SeedRunner
    run: Callable[[int], dict[str, Any]]
    extract: Callable[[dict[str, Any]], dict[str, Any]]

    def add_to(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``records`` with this part's rows and ``field`` added to those that lack them (their cells run or
        loaded); whether a cell's pairs were the protocol cell's (drawn again from the same seeds) is kept as
        ``field.same_pairs`` (:func:`pairs_match`)."""
        todo = [r["seed"] for r in records if self.field not in r]
        made = {s.seed: s.record for s in self.runner.run(todo, self.run)}
        out = []
        for rec in records:
            b = made.get(rec["seed"])
            if b is None:
                out.append(rec)
                continue
            same = pairs_match(rec["pairs"], b["pairs"])
            if not same:
                log.warning("control: %s seed %d: the %s cell's pairs differ from the protocol cell's (%s vs %s)",
                            self.runner.name, rec["seed"], self.field, b["pairs"], rec["pairs"])
            out.append({**rec, "scores": {"rollout": {**rec["scores"]["rollout"], **b["scores"]["rollout"]}},
                        self.field: {**self.extract(b), "wall_seconds": b["wall_seconds"],
                                     "same_pairs": bool(same)}})
        return out


def pairs_match(protocol: dict[str, Any], part: dict[str, Any]) -> bool:
    """Whether a part's cell drew the protocol cell's pairs, from the two records' ``pairs``: their digests
    (:meth:`pfm.PreferenceDataset.digest`, bit for bit) are equal. Within a machine they are, on any number of
    threads (``import pfm`` puts MKL in its thread-count-independent mode, :func:`pfm.train.threads.reproducible_blas`);
    across machines the simulated closed loop may round otherwise, and then that seed's protocol cell runs again
    here. A protocol record made before records carried a digest is compared by its stats, equal to a relative
    1e-6, as then (cells recomputed on another machine had agreed with the committed ones to ~1e-8 where the closed
    loop did not diverge)."""
    if "digest" in protocol:
        return protocol["digest"] == part.get("digest")
    return all(np.isclose(protocol[k], part[k], rtol=1e-6, atol=1e-9) for k in protocol)


def _with_threads(record: dict[str, Any]) -> dict[str, Any]:
    """A cell's record stamped with the torch threads it was computed with (the report states them)."""
    record["torch_threads"] = torch.get_num_threads()
    return record


def _parts(name: str, task_name: str, eps: list, digest: str, cfg: "R.RolloutConfig", protocol_key: str,
           quick: bool) -> list[_Part]:
    """The baselines' parts of data set ``name``: the baselines of :mod:`.rollout_baselines` (``baselines``,
    cached as ``control/rollout-baselines/<name>/<key>/seed-<seed>.json``) and DPO with beta by return
    (:mod:`.rollout_dpo`, ``dpo_return``, under ``control/rollout-dpo/``)."""
    bcfg = (RB.BaselinesConfig.quick_config() if quick else RB.BaselinesConfig()).check()
    dcfg = (RD.DPOReturnConfig.quick_config() if quick else RD.DPOReturnConfig()).check()
    where = name.replace("/", "_")

    return [
        _Part("baselines",
              SeedRunner(data_dir() / "control" / "rollout-baselines" / where, bcfg, **RB.KEY,
                         context=[protocol_key, digest], name=f"control rollout baselines {name}"),
              lambda seed: _with_threads(RB.run_baselines_cell(task_name, eps, cfg, bcfg, seed, progress=False)),
              lambda b: {k: b[k] for k in ("reward_model", "dpo", "marginal_bc", "seconds")}),
        _Part("dpo_return",
              SeedRunner(data_dir() / "control" / "rollout-dpo" / where, dcfg, **RD.KEY,
                         context=[protocol_key, digest], name=f"control rollout DPO by return {name}"),
              lambda seed: _with_threads(RD.run_dpo_return_cell(task_name, eps, cfg, dcfg, seed, progress=False)),
              lambda b: {**b["dpo_return"], "seconds": b["seconds"]}),
    ]


def _keys(digest: str, parts: list[_Part]) -> dict[str, str]:
    """What a data set's records were made from: ``{"data": digest, <part field>: its cells' key, ...}``."""
    return {"data": digest, **{p.field: p.runner.key for p in parts}}


@dataclass
class _Earlier:
    """The rows of an earlier ``rollout`` results file made with this run's config (empty otherwise), and the keys
    it recorded per data set (:func:`_keys`; none for data sets it has from before results recorded them)."""

    sources: dict[str, tuple[str, str]] = field(default_factory=dict)
    cells: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    keys: dict[str, dict[str, str]] = field(default_factory=dict)
    versions: dict[str, dict[str, str]] = field(default_factory=dict)

    def reusable(self, name: str, keys: dict[str, str]) -> dict[int, dict[str, Any]]:
        """Data set ``name``'s records by seed that were made from what this run's would be: the same data
        (``keys["data"]``, the digest of its bytes) and, for each part a record carries, the same part config.
        Records of a data set with no recorded keys (made before results recorded them) are never taken: a data
        set made again on another machine need not be the same (hopper-medium made here gave other pairs than
        the committed cells', 48.68 against 48.53 for seed 0: float rounding in 1,000-step simulated episodes
        grows), and a part run on other data would be paired with rows it does not share its data with."""
        had = self.keys.get(name)
        if name not in self.cells or had is None:
            return {}
        if had.get("data") != keys["data"]:
            log.info("control: %s in the earlier results was made from other data; its cells run again", name)
            return {}
        return {r["seed"]: r for r in self.cells[name]
                if all(had.get(p) == keys.get(p) for p in PARTS if p in r)}


def _earlier_rollout(path: Path, cfg: "R.RolloutConfig") -> _Earlier:
    """The rows of an earlier ``rollout`` results file at ``path`` when that file's config is this run's, so that
    runs on other data sets (e.g. the medium sets with 5 seeds, then random and expert with 3) add up to one table,
    and a run on a data set it holds takes its records (:meth:`_Earlier.reusable`); empty when there is no such
    file or its config differs (its rows are then replaced, with a warning). An unreadable file is an error before
    any work starts: it is the file this run replaces."""
    if not path.exists():
        return _Earlier()
    earlier = read_results(path, "pfm reproduce control --protocols rollout")
    if not isinstance(earlier.get("cells"), dict) or not isinstance(earlier.get("sources"), dict):
        raise InvalidInputError(f"{str(path)!r} is not a rollout results file (no cells or sources): move it away "
                                "or choose another --out")
    if any(n not in earlier["sources"] for n in earlier["cells"]):
        raise InvalidInputError(f"{str(path)!r} has cells of data sets it names no source for: move it away or "
                                "choose another --out")
    if earlier.get("config") != json.loads(json.dumps(asdict(cfg))):
        if earlier["cells"]:
            log.warning("control: %s was made with another rollout config; its rows %s are not kept", path,
                        ", ".join(earlier["cells"]))
        return _Earlier()
    versions = earlier.get("versions") or {}
    return _Earlier({n: tuple(earlier["sources"][n]) for n in earlier["cells"]}, dict(earlier["cells"]),
                    dict(earlier.get("keys") or {}),
                    {n: v for n, v in versions.items() if isinstance(v, dict) and n in earlier["cells"]})


def table_order(sources: dict[str, tuple[str, str]]) -> list[str]:
    """Data set names by task (hopper, halfcheetah, walker2d, then the others) and kind (random, medium, expert,
    ...); names that are not ``<task>-<kind>`` of ours after them, in their order."""
    tasks = list(DEFAULT_TASKS) + sorted(t for t in TASKS if t not in DEFAULT_TASKS)

    def rank(item: tuple[int, str]) -> tuple[int, int, int]:
        i, name = item
        task = sources[name][0]
        kind = name[len(task) + 1:] if name.startswith(task + "-") else None
        if task in tasks and kind in KINDS:
            return (0, tasks.index(task) * len(KINDS) + KINDS.index(kind), i)
        return (1, 0, i)

    return [name for _, name in sorted(enumerate(sources), key=rank)]


def write_rollout_report(result: dict[str, Any], base: Path) -> None:
    """``<base>.json`` (the result) and ``<base>.md``: the rows' normalized returns, PFM paired against each
    baseline row, and the segment test."""
    cfg, summary = config_from_dict(R.RolloutConfig, result["config"]), result["summary"]
    with atomic_file(base.with_suffix(".json"), "w") as f:
        json.dump(result, f, indent=1)
    md = [f"**Protocol `rollout`** (the released code's PbRL design, its bugs fixed: pi_ref a per-step Gaussian BC "
          f"policy; pairs from two closed-loop {cfg.pair_horizon}-step pi_ref rollouts from on-policy start states, "
          f"the first {cfg.horizon} actions kept; acting rolls pi_ref out for {cfg.horizon} steps in a restored "
          f"copy of the simulator at every step, flows that segment and executes {cfg.rollout_frequency} of its "
          f"actions), D4RL-style normalized return, {cfg.eval_episodes} episodes of at most "
          f"{cfg.max_episode_steps} steps per seed, mean ± sample std over seeds:\n\n" + report.rollout_table(summary),
          "PFM against each baseline row, paired per seed: the mean difference and its 95% Student-t confidence "
          "interval:\n\n" + report.rollout_comparisons_table(summary),
          f"**Segment test** on held-out on-policy start states: mean simulated {cfg.pair_horizon}-step return of "
          f"each method's {cfg.horizon} actions followed by pi_ref (sampled, the same noise for every method) to "
          f"{cfg.pair_horizon} steps:\n\n" + report.segment_table(summary),
          f"The same segments' own {cfg.horizon}-step return:\n\n"
          + report.segment_table(summary, "segment_returns_10")]
    fitted = {name: rs for name, rs in result["cells"].items() if all("baselines" in r for r in rs)}
    if fitted:
        by_return = any("dpo_return" in r for rs in fitted.values() for r in rs)
        md.append("**Baselines** on the same pairs (`rollout_baselines.py`): best-of-n by a Bradley-Terry reward "
                  f"model on the segment given the observation ({cfg.horizon}-step pi_ref segments rolled out in the "
                  "restored copy, the best one's first action executed), DPO of pi_ref (a segment's log-likelihood "
                  "the sum of its steps', beta by held-out implicit accuracy), Marginal BC fine-tuned from pi_ref "
                  "and from scratch on the preferred steps; DPO and Marginal BC act with their mean."
                  + (" `DPO (beta by return)` (`rollout_dpo.py`): the same DPO fits, beta picked by the mean "
                     "policy's normalized return on validation episodes that are not scored." if by_return else "")
                  + " Per data set, the reward model's held-out pair accuracy (mean over seeds) and DPO's betas:\n\n"
                  + _baselines_table(fitted, by_return))
    threads = next(r["torch_threads"] for rs in result["cells"].values() for r in rs)
    md.append(f"Computing the cells took {result['compute_seconds']:.0f} s with {threads} torch "
              f"threads (this invocation: {result['seconds']:.0f} s).")
    with atomic_file(base.with_suffix(".md"), "w") as f:
        f.write("\n\n".join(md) + "\n")


def _baselines_table(fitted: dict[str, list[dict[str, Any]]], by_return: bool) -> str:
    """Per data set: the reward model's held-out accuracy, DPO's betas (and DPO by return's) per seed, and how
    many of the baselines' cells drew the protocol cell's pairs again."""
    def betas(rs: list[dict[str, Any]], get: Callable[[dict[str, Any]], Optional[float]]) -> str:
        return ", ".join("-" if get(r) is None else format(get(r), "g") for r in rs)

    head = ["data set", "reward model held-out accuracy", "DPO beta per seed"] \
        + (["DPO (beta by return): beta per seed"] if by_return else []) + ["pairs as the protocol's"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rs in fitted.items():
        same = [r[p]["same_pairs"] for r in rs for p in PARTS if p in r]
        row = [name, f"{np.mean([r['baselines']['reward_model']['heldout'] for r in rs]):.3f}",
               betas(rs, lambda r: r["baselines"]["dpo"]["beta"])] \
            + ([betas(rs, lambda r: r.get("dpo_return", {}).get("beta"))] if by_return else []) \
            + [f"{sum(same)} of {len(same)}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)



def report_only(out_dir: str | Path = "results", *, quick: bool = False) -> dict[str, Any]:
    """Recompute the summary of ``<out_dir>/control-rollout[-quick].json`` from its cells and rewrite it and its
    ``.md`` (``pfm reproduce control --protocols rollout --report-only``)."""
    base = Path(out_dir) / ("control-rollout-quick" if quick else "control-rollout")
    result = read_results(base.with_suffix(".json"), "pfm reproduce control --protocols rollout"
                          + (" --quick" if quick else ""))
    result["summary"] = report.rollout_summary(result["cells"])
    write_rollout_report(result, base)
    return result
