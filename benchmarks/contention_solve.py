"""Applying a flow beside other jobs: torch's thread setting against the tuned count (issue 51).

``transform`` and ``divergence_pass`` (``log_prob``'s solve) evaluate the field a few times per batch (midpoint, 4
steps: 8 evaluations of up to 8,192 rows). Before, they ran on torch's setting (2 threads here), and beside a busy
process every evaluation's 2-thread team waited for its second thread. Now :class:`pfm.train.threads.TunedCalls`
runs a small evaluation on one thread and times a big one at each count (one timed call each), keeping the fastest.

For each workload (the default 256 x 3 MLP flow: ``transform`` of 20,000 64-d and 784-d rows and of 2,000 64-d
rows, and ``divergence_pass`` of 2,000 64-d rows, Hutchinson's 8 probes), each machine state (idle, beside one and
two busy-loop processes: ``bench.Competitors``) and ``--seeds`` seeds, both are timed on the same flow and inputs:

- ``before``: torch's setting (``TunedCalls`` told that no module is thread-invariant, as before it existed);
- ``tuned``: the default now.

Outputs must be bit-identical (checked). Prints a Markdown table (median seconds over the seeds, each over its own
idle time) and writes ``results/contention-solve.json``.

    python benchmarks/contention_solve.py [--seeds 3] [--out results/contention-solve.json] [--workloads NAME ...]

The ``sweep`` workload (12 transforms of one flow at strengths 0.25-3, as ``choose_strength`` makes them) measures
what keeping the tuners with the flow buys: ``before`` is torch's setting on every call.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from bench import Competitors, machine_info, medians_by_load, save_result  # benchmarks/ is the script's directory
from pfm import PreferenceFlow
from pfm.train import threads as T

WORKLOADS = {
    "transform, 64-d, 20,000 rows": dict(shape=(64,), n=20_000, op="transform"),
    "transform, 784-d, 20,000 rows": dict(shape=(784,), n=20_000, op="transform"),
    "transform, 64-d, 2,000 rows": dict(shape=(64,), n=2_000, op="transform"),
    "divergence_pass, 64-d, 2,000 rows": dict(shape=(64,), n=2_000, op="divergence_pass"),
    "sweep: 12 transforms, 64-d, 2,000 rows": dict(shape=(64,), n=2_000, op="sweep"),
}
SWEEP = [0.25 * k for k in range(1, 13)]
"""The ``sweep`` workload's strengths, as :func:`pfm.choose_strength` solves a flow at one after another: the flow
keeps its solves' tuners by size, so the first call probes and the others go on from its choice."""


def run_once(flow: PreferenceFlow, y: torch.Tensor, op: str, mode: str) -> tuple[float, list[torch.Tensor]]:
    real = T.thread_invariant
    if mode == "before":  # TunedCalls adapts no module then: torch's setting, as before it existed
        T.thread_invariant = lambda module: False  # type: ignore[assignment]
    try:
        flow.__dict__.pop("_solve_tuners", None)  # each timed run starts from no earlier measurement
        start = time.perf_counter()
        if op == "transform":
            out = [flow.transform(y)]
        elif op == "sweep":
            out = [flow.transform(y, strength=s) for s in SWEEP]
        else:
            out = list(flow.divergence_pass(y, generator=torch.Generator().manual_seed(1)))
        return time.perf_counter() - start, out
    finally:
        T.thread_invariant = real  # type: ignore[assignment]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--competitors", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="results/contention-solve.json")
    ap.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS),
                    help="run these; the other workloads' rows of an existing --out are kept")
    args = ap.parse_args()
    began = time.perf_counter()
    rows = []
    for name in args.workloads:
        spec = WORKLOADS[name]
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            flow = PreferenceFlow(spec["shape"])
            y = torch.randn(spec["n"], *spec["shape"])
            run_once(flow, y[:256], spec["op"], "tuned")  # untimed: the kernels' first calls
            for k in args.competitors:
                order = ("before", "tuned") if seed % 2 == 0 else ("tuned", "before")  # neither always first
                with Competitors(k) as load:
                    got = {mode: run_once(flow, y, spec["op"], mode) for mode in order}
                same = all(torch.equal(a, b) for a, b in zip(got["before"][1], got["tuned"][1]))
                row = {"workload": name, "competitors": k, "seed": seed, "busy_cores": load.busy,
                       "other_cores": load.others, "identical": same,
                       **{f"{m}_seconds": got[m][0] for m in got}}
                rows.append(row)
                print(f"{name}, {k} busy, seed {seed}: before {row['before_seconds']:.2f} s, tuned "
                      f"{row['tuned_seconds']:.2f} s, identical {same}", flush=True)
    result = {"seeds": args.seeds, "rows": rows, "seconds": time.perf_counter() - began,
              "machine": machine_info()}
    save_result(args.out, result, args.workloads, list(WORKLOADS), "earlier workloads")
    print(table(result))


def table(result: dict[str, Any]) -> str:
    """Median seconds over the seeds per workload and machine state, and each over its own idle time."""
    rows = result["rows"]
    out = [f"Median seconds over {result['seeds']} seeds:", "",
           "| workload | busy processes | before | tuned | before / its idle | tuned / its idle | tuned / before | "
           "bit-identical |", "|---|---|---|---|---|---|---|---|"]
    for name, k, these, med, idle in medians_by_load(rows, ("before", "tuned")):
        ratio = (lambda m: f"{med[m] / idle[m]:.2f}x") if idle else (lambda m: "-")
        out.append(f"| {name} | {k} | {med['before']:.2f} s | {med['tuned']:.2f} s | {ratio('before')} | "
                   f"{ratio('tuned')} | {med['tuned'] / med['before']:.2f}x | "
                   f"{sum(r['identical'] for r in these)} of {len(these)} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
