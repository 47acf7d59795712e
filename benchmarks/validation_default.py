"""What validation by default (``FitConfig.validation_fraction``, issue 46) does to a fit's quality, against training
on every pair, on problems a user might bring:

    memorize   preferred and rejected outputs drawn independently (8-d standard normals): nothing carries over, the
               best flow barely moves fresh outputs;
    shift      the preferred outputs are the rejected ones' distribution shifted by 1 in every coordinate (8-d);
    ring       2-d: rejected on a unit circle, preferred on a circle of radius 2 (a move the mean shift cannot make).

Each at 300 and 3,000 pairs, 3 seeds, the default MLP and 2,000 steps. Quality: the sliced Wasserstein distance between
2,000 fresh rejected outputs pushed through the flow and 2,000 fresh preferred ones (lower is better; for
``memorize``, the preferred distribution is the rejected one). Writes ``results/validation_default.json`` (or
``--out``) and prints a Markdown table with the paired per-seed difference and its 95% CI.

    python benchmarks/validation_default.py           # ~10 minutes on one core
    python benchmarks/validation_default.py --quick   # one seed, 300 pairs, 300 steps
    python benchmarks/validation_default.py --patience 10 --out /tmp/patience10.json   # another patience
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from pfm import PreferenceDataset, PreferenceFlow
from pfm.io import atomic_file


def sample(task: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(preferred, rejected)`` outputs ``(n, d)`` of ``task``, drawn independently."""
    if task == "memorize":
        return rng.normal(size=(n, 8)), rng.normal(size=(n, 8))
    if task == "shift":
        return rng.normal(size=(n, 8)) + 1.0, rng.normal(size=(n, 8))
    angle = rng.uniform(0, 2 * math.pi, size=(2, n))
    circle = np.stack([np.cos(angle), np.sin(angle)], -1)
    return 2.0 * circle[0] + 0.05 * rng.normal(size=(n, 2)), circle[1] + 0.05 * rng.normal(size=(n, 2))


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, projections: int = 256, seed: int = 0) -> float:
    """The sliced 1-Wasserstein distance of two equal-size samples (mean over random directions)."""
    dirs = np.random.default_rng(seed).normal(size=(a.shape[1], projections))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    return float(np.abs(np.sort(a @ dirs, 0) - np.sort(b @ dirs, 0)).mean())


def run_one(task: str, n: int, seed: int, steps: int, validation_fraction: float | None,
            patience: int | None = None) -> dict:
    rng = np.random.default_rng(seed)
    chosen, rejected = sample(task, n, rng)
    ds = PreferenceDataset(chosen.astype(np.float32), rejected.astype(np.float32))
    torch.manual_seed(seed)
    flow = PreferenceFlow.for_dataset(ds)
    t = time.perf_counter()
    extra = {"patience": patience} if patience is not None and validation_fraction is None else {}
    hist = flow.fit(ds, steps=steps, seed=seed, progress=False, validation_fraction=validation_fraction, **extra)
    seconds = time.perf_counter() - t
    test_pos, test_neg = sample(task, 2000, np.random.default_rng(10_000 + seed))
    target = test_neg if task == "memorize" else test_pos
    moved = flow.transform(test_neg.astype(np.float32))
    return {"swd": sliced_wasserstein(moved, target, seed=seed), "steps": hist.steps, "best_step": hist.best_step,
            "seconds": seconds, "summary": hist.summary}


def ci(diff: list[float]) -> tuple[float, float, float]:
    d = np.asarray(diff)
    if len(d) < 2:
        return float(d.mean()), math.nan, math.nan
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=Path("results/validation_default.json"))
    p.add_argument("--patience", type=int, default=None, help="the default share's patience (default: pfm's, 5)")
    args = p.parse_args()
    torch.set_num_threads(1)
    seeds, sizes, steps = ([0], [300], 300) if args.quick else ([0, 1, 2], [300, 3000], 2000)
    started = time.perf_counter()
    rows = []
    for task in ("memorize", "shift", "ring"):
        for n in sizes:
            runs = {name: [run_one(task, n, s, steps, vf, args.patience) for s in seeds]
                    for name, vf in (("default", None), ("all pairs", 0.0))}
            rows.append({"task": task, "pairs": n, "runs": runs})
    record = {"machine": platform.processor() or platform.machine(), "torch_threads": 1, "steps": steps,
              "seeds": seeds, "date": datetime.date.today().isoformat(),
              "seconds": time.perf_counter() - started, "rows": rows}
    with atomic_file(args.out, "w") as f:
        json.dump(record, f, indent=1)
    print("| task | pairs | default: SWD (steps run) | every pair: SWD | default - every pair [95% CI] |")
    print("|---|---|---|---|---|")
    for r in rows:
        a = [x["swd"] for x in r["runs"]["default"]]
        b = [x["swd"] for x in r["runs"]["all pairs"]]
        m, lo, hi = ci([x - y for x, y in zip(a, b)])
        steps_run = "/".join(str(x["steps"]) for x in r["runs"]["default"])
        sd = (lambda v: f" ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else "")
        print(f"| {r['task']} | {r['pairs']} | {np.mean(a):.3f}{sd(a)} ({steps_run}) | {np.mean(b):.3f}{sd(b)} | "
              f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}] |")
    print(f"\n{len(seeds)} seeds, {steps} steps, one torch thread, {record['seconds']:.0f} s")


if __name__ == "__main__":
    main()
