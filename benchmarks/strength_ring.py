"""``pfm.choose_strength`` on a user-like problem: which strength a judge picks, against the mean shift and best-of-n.

The reference is N(0, I) in 2-d; the judge scores an output by how close it lies to the ring of radius 2,
``-(|y| - 2)^2``, a function the mean shift cannot serve (the preferred outputs' mean is the rejected ones': both
are centred). Each pair is two reference samples, the judge's higher one preferred (as a user's annotators would
label them). PFM (the default MLP, 2,000 steps, validation by default) is fit on 2,000 pairs; the dial is swept on
1,000 fresh reference outputs with 3 more per output for best-of-n. 3 seeds. Writes
``results/strength-ring.json``, ``results/strength-ring.png`` (seed 0's curve) and prints the tables.

    python benchmarks/strength_ring.py     # about a minute on one core
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

from pfm import PreferenceDataset, PreferenceFlow, choose_strength
from pfm.io import atomic_file


def judge(y: torch.Tensor, context=None) -> torch.Tensor:
    return -(y.norm(dim=1) - 2.0) ** 2


def pairs(n: int, g: torch.Generator) -> PreferenceDataset:
    a, b = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)
    first = (judge(a) >= judge(b))[:, None]
    return PreferenceDataset(torch.where(first, a, b), torch.where(first, b, a))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    runs = []
    for seed in range(args.seeds):
        g = torch.Generator().manual_seed(seed)
        ds = pairs(2000, g)
        torch.manual_seed(seed)
        flow = PreferenceFlow.for_dataset(ds)
        hist = flow.fit(ds, steps=2000, seed=seed, progress=False)
        y, cand = torch.randn(1000, 2, generator=g), torch.randn(1000, 3, 2, generator=g)
        curve = choose_strength(flow, y, judge, pairs=ds, candidates=cand, seed=seed)
        runs.append({"seed": seed, "fit_summary": hist.summary, "curve": curve.to_dict()})
        if seed == 0:
            curve.figure(args.out / "strength-ring.png")
            print(curve.table())
    strengths = runs[0]["curve"]["strengths"]
    means = np.array([r["curve"]["mean"] for r in runs])
    record = {"machine": platform.processor() or platform.machine(), "torch_threads": 1,
              "date": datetime.date.today().isoformat(), "seconds": time.perf_counter() - started, "runs": runs}
    with atomic_file(args.out / "strength-ring.json", "w") as f:
        json.dump(record, f, indent=1)
    sd = means.std(0, ddof=1) if len(runs) > 1 else np.full(len(strengths), math.nan)
    print(f"\n| strength | judge's mean score, mean ± sample std over {len(runs)} seeds |\n|---|---|")
    for i, s in enumerate(strengths):
        print(f"| {s:g} | {means[:, i].mean():.3f} ± {sd[i]:.3f} |")
    for name in runs[0]["curve"]["baselines"]:
        v = np.array([r["curve"]["baselines"][name]["mean"] for r in runs])
        print(f"| {name} | {v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else math.nan:.3f} |")
    print(f"\nbest strength per seed: {[r['curve']['best'] for r in runs]}; {record['seconds']:.0f} s")


if __name__ == "__main__":
    main()
