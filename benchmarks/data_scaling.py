"""Training on data sets larger than memory, and pairing that keeps up: memory-mapped .npy directories of 10^3 to 10^7
pairs.

Parts (``--parts``, both by default):
    scaling  for each size: write the data set to disk chunk by chunk (never whole in memory), load it memory-mapped,
             and fit a small flow (2x64 MLP, batch 256) for ``--steps`` steps under each pairing: none (the pairs as
             given: the bare step), exact OT of the whole batch, and exact OT in sub-blocks (``coupling_block``).
             Records the time to load and validate, the time per step, and the peak growth of the process's anonymous
             memory while training under exact OT (RssAnon, sampled every 5 ms: what the process itself allocated;
             pages of the memory-mapped files are the kernel's page cache, shared and reclaimable, not counted there).
             From 10^5 pairs on every step of such a run lies in the first epoch, where each step's batch is coupled
             as it comes: the regime of a run that sees each pair once or twice.
    quality  at ``--quality-pairs`` pairs (memory-mapped), ``--seeds`` seeds: half an epoch under each pairing, then
             the squared 2-Wasserstein distance (exact, POT) between 2,000 held-out rejected outputs carried by the
             flow and 2,000 held-out preferred ones, the coupling's transport cost against exact OT's on the same
             batches, one batch's solve time on one thread, and the time per step. Paired per seed against exact OT
             with 95% CIs.

The data: rejected outputs from a standard normal in 2-D, preferred ones (drawn independently, as two answers to a
prompt are) from eight Gaussians on a ring of radius 2, so the pairing matters. Each pair of threads: the training loop
solves blocks itself when it gets ahead of the pairing threads (``pfm.pairing``), one thread per core but one.

    python benchmarks/data_scaling.py                      # both parts, about 6 minutes on 2 cores
    python benchmarks/data_scaling.py --parts scaling --sizes 1000 100000 --steps 100   # a quick look

Prints Markdown tables; writes ``results/data_scaling.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from bench import PeakMemory, machine_info, rss_anon_mb  # benchmarks/ is the script's directory
from pfm import PreferenceDataset, PreferenceFlow
from pfm.coupling import couple, transport_cost
from pfm.io import atomic_file
from pfm.pairing import pairing_workers
from pfm_experiments.stats import describe, format_difference, format_mean_std, paired_difference

BATCH = 256
FIELD = {"hidden": 64, "depth": 2}
PAIRINGS: dict[str, dict[str, Any]] = {
    "none": {"coupling": "paired"},
    "exact OT": {"coupling": "ot"},
    "OT, blocks of 128": {"coupling": "ot", "coupling_block": 128},
    "OT, blocks of 64": {"coupling": "ot", "coupling_block": 64},
    "OT, blocks of 32": {"coupling": "ot", "coupling_block": 32},
}
SCALING_PAIRINGS = ("none", "exact OT", "OT, blocks of 64")
HELD_OUT = 2_000


def draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(chosen, rejected)``, ``(n, 2)`` float32 each: a ring of eight Gaussians against a standard normal."""
    angle = rng.integers(0, 8, size=n) * (2 * math.pi / 8)
    chosen = 2.0 * np.stack([np.cos(angle), np.sin(angle)], 1) + 0.25 * rng.normal(size=(n, 2))
    return chosen.astype(np.float32), rng.normal(size=(n, 2)).astype(np.float32)


def write(directory: Path, n: int, chunk: int = 1_000_000) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    chosen = np.lib.format.open_memmap(directory / "chosen.npy", mode="w+", dtype=np.float32, shape=(n, 2))
    rejected = np.lib.format.open_memmap(directory / "rejected.npy", mode="w+", dtype=np.float32, shape=(n, 2))
    for s in range(0, n, chunk):
        c, r = draw(rng, min(chunk, n - s))
        chosen[s:s + len(c)], rejected[s:s + len(r)] = c, r
    chosen.flush()
    rejected.flush()
    del chosen, rejected


def fit(ds: PreferenceDataset, steps: int, seed: int = 0, **pairing: Any) -> tuple[PreferenceFlow, float]:
    """A flow fitted for ``steps`` steps, and its milliseconds a step."""
    torch.manual_seed(seed)
    flow = PreferenceFlow.for_dataset(ds, **FIELD)
    t = time.perf_counter()
    flow.fit(ds, steps=steps, batch_size=BATCH, seed=seed, progress=False, validation_fraction=0, **pairing)
    return flow, 1000 * (time.perf_counter() - t) / steps


def scaling(sizes: list[int], steps: int, tmp: Path) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        d = tmp / f"n{n}"
        write(d, n)
        gc.collect()
        base = rss_anon_mb()
        t = time.perf_counter()
        ds = PreferenceDataset.load(d)
        PreferenceFlow.for_dataset(ds, **FIELD)._set_normalization(ds)
        row: dict[str, Any] = {"pairs": n, "file_mb": 2 * n * 2 * 4 / 2**20,
                               "load_and_validate_s": time.perf_counter() - t, "epoch_steps": -(-n // BATCH),
                               "ms_per_step": {}}
        for name in SCALING_PAIRINGS:
            if name == "exact OT":
                with PeakMemory(base) as memory:  # the peak while training, over the memory before loading
                    row["ms_per_step"][name] = fit(ds, steps, **PAIRINGS[name])[1]
                row["anon_mb_growth"] = memory.growth
            else:
                row["ms_per_step"][name] = fit(ds, steps, **PAIRINGS[name])[1]
        rows.append(row)
        print(f"{n:>10} pairs: load+validate {row['load_and_validate_s']:6.2f} s, "
              + ", ".join(f"{k} {v:5.2f} ms/step" for k, v in row["ms_per_step"].items())
              + f", anonymous memory +{row['anon_mb_growth']:.0f} MB", flush=True)
        del ds
        gc.collect()
    return rows


def w2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Squared 2-Wasserstein distance between two equal-sized samples (exact OT, POT)."""
    import ot

    a64, b64 = a.double().numpy(), b.double().numpy()
    w = np.full(len(a64), 1.0 / len(a64))
    return float(ot.emd2(w, w, ot.dist(a64, b64), numItermax=10**7))


def solve_ms(y0: torch.Tensor, y1: torch.Tensor, block: Optional[int], repeats: int = 30) -> float:
    """Median milliseconds to couple one batch (exact OT), on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            couple(y0, y1, block=block)
            times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return 1000 * statistics.median(times)


def quality(n: int, seeds: int, tmp: Path) -> dict[str, Any]:
    d = tmp / f"q{n}"
    write(d, n)
    ds = PreferenceDataset.load(d)
    steps = n // BATCH // 2  # half an epoch: every step's batch is new and coupled as it comes
    held_chosen, held_rejected = (torch.from_numpy(a) for a in draw(np.random.default_rng(10_000), HELD_OUT))
    floor = w2(held_chosen, torch.from_numpy(draw(np.random.default_rng(20_000), HELD_OUT)[0]))
    # the couplings on 20 batches of the data: solve time and transport cost against exact OT's
    batches = [(ds.rejected[s:s + BATCH].clone(), ds.chosen[s:s + BATCH].clone()) for s in range(0, 20 * BATCH, BATCH)]
    couplings = {}
    for name, pairing in PAIRINGS.items():
        block = pairing.get("coupling_block")
        cost = [transport_cost(y0, y1, *couple(y0, y1, method=pairing["coupling"], block=block)) for y0, y1 in batches]
        couplings[name] = {"cost": statistics.fmean(cost),
                           "solve_ms": solve_ms(*batches[0], block) if pairing["coupling"] == "ot" else None}
    records = []
    for seed in range(seeds):
        for name, pairing in PAIRINGS.items():
            flow, ms = fit(ds, steps, seed=seed, **pairing)
            with torch.no_grad():
                moved = flow.transform(held_rejected)
            records.append({"seed": seed, "pairing": name, "ms_per_step": ms, "w2": w2(moved, held_chosen)})
            print(f"seed {seed} {name:>18}: {ms:5.2f} ms/step, W2^2 {records[-1]['w2']:.4f}", flush=True)
    rows = []
    exact = {r["seed"]: r["w2"] for r in records if r["pairing"] == "exact OT"}
    for name in PAIRINGS:
        these = [r for r in records if r["pairing"] == name]
        w = {r["seed"]: r["w2"] for r in these}
        rows.append({"pairing": name, **couplings[name],
                     "cost_vs_exact": couplings[name]["cost"] / couplings["exact OT"]["cost"],
                     "ms_per_step": describe(r["ms_per_step"] for r in these), "w2": describe(w.values()),
                     "w2_minus_exact": None if name == "exact OT" else paired_difference(w, exact),
                     "w2_vs_exact": statistics.fmean(w.values()) / statistics.fmean(exact.values())})
    return {"pairs": n, "steps": steps, "seeds": seeds, "held_out": HELD_OUT, "w2_floor": floor,
            "w2_untouched": w2(held_rejected, held_chosen), "rows": rows, "records": records}


def tables(result: dict[str, Any]) -> str:
    out = []
    if "scaling" in result:
        names = list(result["scaling"][0]["ms_per_step"])
        out += ["| pairs | data on disk | load + validate | " + " | ".join(f"ms / step, {k}" for k in names)
                + " | peak anonymous memory growth |", "|---|---|---|" + "---|" * len(names) + "---|"]
        for r in result["scaling"]:
            bare = r["ms_per_step"]["none"]
            cells = [f"{v:.2f}" + ("" if k == "none" else f" ({v / bare:.1f}x)") for k, v in r["ms_per_step"].items()]
            out.append(f"| {r['pairs']:,} | {r['file_mb']:.0f} MB | {r['load_and_validate_s']:.2f} s | "
                       + " | ".join(cells) + f" | {r['anon_mb_growth']:.0f} MB |")
    if "quality" in result:
        q = result["quality"]
        bare = next(r for r in q["rows"] if r["pairing"] == "none")["ms_per_step"]["mean"]
        out += ["", f"{q['pairs']:,} pairs, {q['steps']:,} steps (half an epoch), {q['seeds']} seeds; W2^2 to the "
                f"preferred outputs: {q['w2_untouched']:.3f} untouched, {q['w2_floor']:.3f} between two samples of "
                "them (the floor)", "",
                "| pairing | one batch's solve, 1 thread | transport cost / exact OT's | ms / step | vs the bare step "
                "| W2^2 after the flow | − exact OT's (95% CI) | / exact OT's |",
                "|---|---|---|---|---|---|---|---|"]
        for r in q["rows"]:
            solve = "" if r["solve_ms"] is None else f"{r['solve_ms']:.2f} ms"
            diff = "" if r["w2_minus_exact"] is None else format_difference(r["w2_minus_exact"], ".4f")
            out.append(f"| {r['pairing']} | {solve} | {r['cost_vs_exact']:.2f} | "
                       f"{format_mean_std(r['ms_per_step'], '.2f')} | {r['ms_per_step']['mean'] / bare:.2f}x | "
                       f"{format_mean_std(r['w2'], '.4f')} | {diff} | {r['w2_vs_exact']:.3f} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=("scaling", "quality"), default=["scaling", "quality"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000, 10_000_000])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--quality-pairs", type=int, default=1_000_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="results/data_scaling.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    warm = PreferenceDataset(torch.randn(512, 2) + 1, torch.randn(512, 2))  # imports, allocator, kernels
    PreferenceFlow.for_dataset(warm, **FIELD).fit(warm, steps=50, progress=False, validation_fraction=0)
    started = time.perf_counter()
    result: dict[str, Any] = {"machine": {**machine_info(), "pairing_threads": pairing_workers(),
                                          "solvers": pairing_workers() + 1},
                              "batch": BATCH, "field": FIELD, "steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        if "scaling" in args.parts:
            result["scaling"] = scaling(args.sizes, args.steps, Path(tmp))
        if "quality" in args.parts:
            result["quality"] = quality(args.quality_pairs, args.seeds, Path(tmp))
    result["seconds"] = time.perf_counter() - started
    with atomic_file(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print()
    print(tables(result))


if __name__ == "__main__":
    main()
