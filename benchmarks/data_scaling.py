"""Training on data sets larger than memory: memory-mapped .npy directories from 10^3 to 10^7 pairs.

For each size: write the data set to disk chunk by chunk (never whole in memory), load it memory-mapped, fit a small
flow for a fixed number of steps, and record the time to load and validate it, the time per training step, and the
peak growth of the process's anonymous memory while training (RssAnon, sampled every 5 ms: what the process itself
allocated; pages of the memory-mapped files are the kernel's page cache, shared and reclaimable, not counted there).
Flat time per step and flat memory across sizes is the claim. Prints a Markdown table; writes
results/data_scaling.json.

    python benchmarks/data_scaling.py [--sizes 1000 100000 10000000] [--steps 300] [--out results/data_scaling.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pfm import PreferenceDataset, PreferenceFlow
from bench import PeakMemory, rss_anon_mb  # benchmarks/ is the script's directory
from pfm.io import atomic_file


def write(directory: Path, n: int, chunk: int = 1_000_000) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    chosen = np.lib.format.open_memmap(directory / "chosen.npy", mode="w+", dtype=np.float32, shape=(n, 2))
    rejected = np.lib.format.open_memmap(directory / "rejected.npy", mode="w+", dtype=np.float32, shape=(n, 2))
    for s in range(0, n, chunk):
        y = rng.normal(size=(min(chunk, n - s), 2)).astype(np.float32)
        rejected[s:s + len(y)] = y
        chosen[s:s + len(y)] = y + 1.0
    chosen.flush()
    rejected.flush()
    del chosen, rejected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000, 10_000_000])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="results/data_scaling.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    warm = PreferenceDataset(torch.randn(512, 2) + 1, torch.randn(512, 2))  # imports, allocator, kernels
    PreferenceFlow.for_dataset(warm, hidden=64, depth=2).fit(warm, steps=50, progress=False, validation_fraction=0)
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            d = Path(tmp) / f"n{n}"
            write(d, n)
            gc.collect()
            base = rss_anon_mb()
            t = time.perf_counter()
            ds = PreferenceDataset.load(d)
            flow = PreferenceFlow.for_dataset(ds, hidden=64, depth=2)
            flow._set_normalization(ds)
            load_s = time.perf_counter() - t
            with PeakMemory(base) as memory:  # the peak while training, over the memory before loading
                t = time.perf_counter()
                flow.fit(ds, steps=args.steps, batch_size=256, progress=False, validation_fraction=0)
                step_ms = 1000 * (time.perf_counter() - t) / args.steps
            rows.append({"pairs": n, "file_mb": 2 * n * 2 * 4 / 2**20, "load_and_validate_s": load_s,
                         "ms_per_step": step_ms, "anon_mb_growth": memory.growth,
                         "epoch_steps": -(-n // 256)})
            print(f"{n:>10} pairs: load+validate {load_s:6.2f} s, {step_ms:5.2f} ms/step, "
                  f"anonymous memory +{rows[-1]['anon_mb_growth']:.0f} MB", flush=True)
            del ds, flow
            gc.collect()
    result = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads", "steps": args.steps,
              "rows": rows}
    with atomic_file(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print("\n| pairs | data on disk | load + validate | ms / step | peak anonymous memory growth |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pairs']:,} | {r['file_mb']:.0f} MB | {r['load_and_validate_s']:.2f} s | {r['ms_per_step']:.2f} | "
              f"{r['anon_mb_growth']:.0f} MB |")


if __name__ == "__main__":
    main()
