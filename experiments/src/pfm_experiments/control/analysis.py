"""What PFM changes in the control experiment, and whether that change is what lowers the episode return.

For the cached cells of one data set (made by ``pfm reproduce control``), at data-set start states:

- the flow's displacement ``T(mu) - mu`` of pi_ref's mean segment ``mu``, split into its average over states (a
  constant shift, per step and action dimension) and the rest; ``shift_share`` is the fraction of the displacement's
  mean square that the constant shift explains;
- episodes (both protocols, the cell's evaluation seeds) of BC, PFM, BC plus the flow's constant shift, and BC plus a
  random displacement of the same size as the flow's, drawn anew at every proposal.

If the shift alone lowers the return as much as PFM and a random displacement of the same size does not, what the
flow learned from the teacher's preferences (not the flow's error) is what costs return.

    python -m pfm_experiments.control.analysis --task hopper --kind medium --seeds 5 --out results
    python -m pfm_experiments.control.analysis --task hopper --kind medium --out results --report-only

(the second rewrites the ``.md`` from the ``.json`` the first wrote, running nothing).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from pfm.io import atomic_file
from pfm.errors import InvalidInputError
from ..runner import read_results
from ..stats import compare, comparison_table, describe, format_mean_std
from .datasets import load_episodes, minari_root
from .envs import make_env, normalized_score
from .config import PROTOCOLS, Config
from .experiment import Propose, _mean, episodes_score, load_models, proposer
from .datasets import episodes_digest
from .reproduce import cell_path, ensure_dataset
from .segments import make_segments

log = logging.getLogger("pfm")


@dataclass
class Displacement:
    """The flow's displacement of pi_ref's mean at ``N`` states: ``shift (H, A)`` its average, ``size`` the mean
    norm of a displacement, ``shift_share`` the fraction of its mean square explained by the shift."""

    shift: np.ndarray
    size: float
    shift_share: float


def displacement(bc: Any, flow: Any, ctx: torch.Tensor) -> Displacement:
    """:class:`Displacement` of ``flow`` at the standardized observations ``ctx (N, obs_dim)``."""
    if ctx.ndim != 2 or len(ctx) < 2:
        raise InvalidInputError(f"ctx must be (N >= 2, obs_dim), got {tuple(ctx.shape)}")
    with torch.no_grad():
        mu = _mean(bc, ctx)
        d = (flow.transform(mu, ctx) - mu).reshape(len(ctx), -1).double().numpy()
    shift = d.mean(0)
    total = float((d ** 2).sum(1).mean())
    rest = float(((d - shift) ** 2).sum(1).mean())
    return Displacement(shift.reshape(mu.shape[1:]), float(np.linalg.norm(d, axis=1).mean()),
                        1.0 - rest / total if total > 0 else 0.0)


def shifted(propose: Propose, shift: np.ndarray) -> Propose:
    """``propose`` plus a constant ``shift (H, A)``."""
    return lambda obs: propose(obs) + shift[None]


def jittered(propose: Propose, size: float, seed: int) -> Propose:
    """``propose`` plus a random direction of norm ``size``, drawn anew for every proposed segment."""
    rng = np.random.default_rng(seed)

    def p(obs: np.ndarray) -> np.ndarray:
        y = propose(obs)
        d = rng.standard_normal(y.shape)
        d *= size / np.linalg.norm(d.reshape(len(d), -1), axis=1).reshape(-1, *([1] * (y.ndim - 1)))
        return y + d
    return p


def cell_models(task: str, kind: str, seed: int, cfg: Config, steps: int = 100_000) -> tuple[Path, list]:
    """The directory of a cached cell's models (see :func:`.reproduce.reproduce`; cells are named by task, kind,
    seed and a key of the config and the data) and the data set's episodes."""
    episodes = load_episodes(ensure_dataset(task, kind, steps, minari_root(), progress=False))
    path = cell_path(f"{task}-{kind}", seed, cfg, episodes_digest(episodes))
    if not (path / "bc.safetensors").exists():
        raise InvalidInputError(f"no cached cell at {str(path)!r}: run `pfm reproduce control --tasks {task} "
                                f"--kinds {kind} --seeds {seed + 1}` first")
    return path, episodes


def analyse(task: str, kind: str, seeds: int, cfg: Optional[Config] = None, states: int = 500,
            steps: int = 100_000, progress: bool = True) -> dict[str, Any]:
    """The displacement and the four acting variants' normalized returns, per seed, from the cached cells of
    ``cfg`` (default :class:`.config.Config`) on our data set ``(task, kind)`` of ``steps`` steps; see the
    module docstring."""
    from tqdm.auto import tqdm

    cfg = cfg or Config()
    if not isinstance(seeds, int) or seeds < 1:
        raise InvalidInputError(f"seeds must be a positive integer, got {seeds!r}")
    env = make_env(task)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    runs = []
    for seed in tqdm(range(seeds), desc=f"analysis {task}-{kind}", disable=not progress, unit="seed"):
        path, episodes = cell_models(task, kind, seed, cfg, steps)
        bc, flow, norm = load_models(path, cfg, obs_dim, act_dim)
        segs = make_segments(episodes, task, cfg.horizon, max_segments=states, seed=seed + 100)
        disp = displacement(bc, flow, norm(segs.obs))
        base = proposer(bc, norm)
        variants = {"BC": base, "PFM": proposer(bc, norm, flow, 1, cfg.start, seed + 7),
                    "BC + PFM's shift": shifted(base, disp.shift),
                    "BC + random, PFM's size": jittered(base, disp.size, seed + 13)}
        scores = {p: {m: float(normalized_score(task, episodes_score(task, f, p, cfg.eval_episodes, 1000 + seed,
                                                                     cfg.horizon, cfg.max_episode_steps)).mean())
                      for m, f in variants.items()} for p in cfg.protocols}
        runs.append({"seed": seed, "shift": disp.shift.tolist(), "size": disp.size,
                     "shift_norm": float(np.linalg.norm(disp.shift)), "shift_share": disp.shift_share,
                     "scores": scores})
    return {"task": task, "kind": kind, "runs": runs}


def table(result: dict[str, Any]) -> str:
    """Markdown: each variant's normalized return per protocol (mean ± sample std over seeds), each paired per
    seed against BC (mean difference and 95% CI), and the displacement's size and shift share."""
    runs = result["runs"]
    methods = list(runs[0]["scores"][PROTOCOLS[0]])
    protocols = list(runs[0]["scores"])
    lines = ["| protocol | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for p in protocols:
        lines.append(f"| {p} | " + " | ".join(format_mean_std(describe([r["scores"][p][m] for r in runs]), ".1f")
                                             for m in methods) + " |")
    rows = compare(runs, [(m, "BC") for m in methods if m != "BC"], protocols,
                   lambda r, method, protocol: r["scores"][protocol][method])
    size = np.mean([r["size"] for r in runs])
    lines += ["", "Each variant against BC, paired per seed (mean difference and its 95% Student-t confidence "
              "interval):", "", comparison_table(rows, {p: f"`{p}`" for p in protocols}, ".1f"), ""]
    lines.append(f"{result['task']}-{result['kind']}, {len(runs)} seeds: the flow moves pi_ref's mean segment by "
                 f"{size:.3f} on average (norm over the whole segment); a constant shift of norm "
                 f"{np.mean([r['shift_norm'] for r in runs]):.3f} explains "
                 f"{100 * np.mean([r['shift_share'] for r in runs]):.0f}% of its mean square.")
    return "\n".join(lines)


def write_report(result: dict[str, Any], base: Path) -> str:
    """``<base>.md``: :func:`table` and the run's time; returns its text."""
    threads = f" on {result['torch_threads']} torch threads" if result.get("torch_threads") else ""
    text = table(result) + f"\n\n({result['seconds']:.0f} s{threads})\n"
    with atomic_file(base.with_suffix(".md"), "w") as f:
        f.write(text)
    return text


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description="What the flow changes in the control experiment (cached cells).")
    p.add_argument("--task", default="hopper")
    p.add_argument("--kind", default="medium")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the .md from the .json in --out, running nothing")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    base = a.out / f"control-analysis-{a.task}-{a.kind}"
    if a.report_only:
        result = read_results(base.with_suffix(".json"), f"python -m pfm_experiments.control.analysis --task "
                              f"{a.task} --kind {a.kind}")
        md = base.with_suffix(".md")
        if "torch_threads" not in result and md.exists():  # a JSON written before it kept its thread count
            found = re.search(r"on (\d+) torch threads\)", md.read_text())
            result["torch_threads"] = int(found.group(1)) if found else None
        print(write_report(result, base))
        return 0
    t = time.perf_counter()
    result = analyse(a.task, a.kind, a.seeds)
    result["seconds"] = time.perf_counter() - t
    result["torch_threads"] = torch.get_num_threads()
    a.out.mkdir(parents=True, exist_ok=True)
    with atomic_file(base.with_suffix(".json"), "w") as f:
        json.dump(result, f, indent=1)
    print(write_report(result, base))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
