"""A default fit beside other jobs: the size rule's thread count against the tuner's (issue 51).

For each workload (the default 256 x 3 MLP field on 64-d and on 784-d outputs, the 2-D task, a UNet on 1 x 16 x 16
at batch 64), each machine state (idle, beside one and beside two busy-loop processes at normal priority:
``bench.Competitors``) and each rule, ``--seeds`` fits of ``--steps`` steps, timed:

- ``rule``: the size rule alone (pfm before the tuner: one thread below ``SMALL_STEP`` parameters x batch, else
  torch's setting), i.e. ``fit(threads=step_threads(...))``;
- ``tuned``: the default now (``fit()``: the rule, then :class:`pfm.train.threads.ThreadTuner` for a big step of a
  thread-invariant module).

The two fits of a seed start from the same weights and must end bit-identical (checked; a UNet's convolutions are
not thread-invariant, so its default stays the rule). Prints a Markdown table (median seconds over the seeds, the
ratio to the idle time, the counts the tuner chose) and writes ``results/contention.json``.

    python benchmarks/contention.py [--steps 300] [--seeds 3] [--out results/contention.json]

Before each workload, one short untimed fit (its kernels' first calls); the two rules alternate which goes first.
With ``--workloads``, the other workloads' rows of an existing ``--out`` are kept.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from bench import Competitors, machine_info, medians_by_load, save_result  # benchmarks/ is the script's directory
from pfm import PreferenceDataset, PreferenceFlow
from pfm.train import step_threads

WORKLOADS = {
    "MLP 256x3, 64-d": dict(shape=(64,), n=4000, field={}),
    "MLP 256x3, 784-d": dict(shape=(784,), n=4000, field={}),
    "2-D task": dict(shape=(2,), n=4000, field={}),
    "UNet, 1x16x16, batch 64": dict(shape=(1, 16, 16), n=1000, field={"field": "unet"}, batch=64, steps=40),
}
"""Each workload's data and field; ``steps`` (the UNet's, whose steps are ~25x the MLP's) overrides ``--steps``."""


def data(shape: tuple[int, ...], n: int) -> PreferenceDataset:
    g = torch.Generator().manual_seed(0)
    y0 = torch.randn(n, *shape, generator=g)
    return PreferenceDataset(y0 + 0.5, y0)


def fit_once(ds: PreferenceDataset, spec: dict[str, Any], rule: str, steps: int, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    flow = PreferenceFlow.for_dataset(ds, **spec["field"])
    batch = spec.get("batch", 256)
    threads = None
    if rule == "rule":
        threads = step_threads(list(flow.parameters()), min(batch, len(ds)), torch.device("cpu"))
    start = time.perf_counter()
    h = flow.fit(ds, steps=steps, batch_size=batch, seed=seed, threads=threads, validation_fraction=0,
                 progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "threads": [list(t) for t in h.threads],
            "weights": [p.detach().clone() for p in flow.parameters()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--competitors", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--out", default="results/contention.json")
    args = ap.parse_args()
    began = time.perf_counter()
    rows = []
    for name in args.workloads:
        spec = WORKLOADS[name]
        ds = data(spec["shape"], spec["n"])
        steps = spec.get("steps", args.steps)
        fit_once(ds, spec, "tuned", 5, 0)  # untimed: the first calls of this field's kernels
        for k in args.competitors:
            for seed in range(args.seeds):
                order = ("rule", "tuned") if seed % 2 == 0 else ("tuned", "rule")  # neither always first
                with Competitors(k) as load:
                    got = {rule: fit_once(ds, spec, rule, steps, seed) for rule in order}
                same = all(torch.equal(a, b) for a, b in zip(got["rule"]["weights"], got["tuned"]["weights"]))
                row = {"workload": name, "steps": steps, "competitors": k, "seed": seed, "busy_cores": load.busy,
                       "other_cores": load.others, "identical": same,
                       **{f"{r}_seconds": got[r]["seconds"] for r in got},
                       **{f"{r}_threads": got[r]["threads"] for r in got}}
                rows.append(row)
                print(f"{name}, {k} busy, seed {seed}: rule {row['rule_seconds']:.2f} s, tuned "
                      f"{row['tuned_seconds']:.2f} s, identical {same}", flush=True)
    result = {"steps": args.steps, "seeds": args.seeds, "rows": rows, "seconds": time.perf_counter() - began,
              "machine": machine_info()}
    # the rows of workloads not run now stay as they were (with the run that made them)
    save_result(args.out, result, args.workloads, list(WORKLOADS), earlier="the runs before seconds_per_run")
    print(table(result))


def table(result: dict[str, Any]) -> str:
    """Median seconds over the seeds per workload and machine state; each rule's time over its own idle time."""
    rows = result["rows"]
    out = [f"Median seconds of a fit over {result['seeds']} seeds:", "",
           "| workload | steps | busy processes | rule | tuned | rule / its idle | tuned / its idle | tuned / rule idle | "
           "tuner's choices | bit-identical |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, k, these, med, idle in medians_by_load(rows, ("rule", "tuned")):
        ratio = (lambda rule, base: f"{med[rule] / idle[base]:.2f}x") if idle else (lambda *_: "-")
        chosen = sorted({t[1] for r in these for t in r["tuned_threads"]})
        out.append(f"| {name} | {these[0]['steps']} | {k} | {med['rule']:.2f} s | {med['tuned']:.2f} s | "
                   f"{ratio('rule', 'rule')} | {ratio('tuned', 'tuned')} | {ratio('tuned', 'rule')} | "
                   f"{', '.join(map(str, chosen))} | {sum(r['identical'] for r in these)} of {len(these)} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
