"""Speed of pfm against a bare training step and against the peer pipeline (torchcfm + torchdiffeq), side by side.

Parts (``--parts``, all but ``load`` by default):
    overhead   time per step of ``PreferenceFlow.fit`` against a bare forward + backward + Adam step of the same field
               on batches that are already paired, for several batch and output sizes (MLP and UNet fields);
    peer       the paper's pipeline (torchcfm's ExactOptimalTransportConditionalFlowMatcher + Adam, dopri5 at
               atol = rtol = 1e-4) and pfm on the same 2D preference data, field and number of steps: training
               throughput and the final flow's quality;
    inference  end-point error, number of field evaluations (NFE) and wall time per 10,000 samples for fixed-step
               and adaptive solvers, and memory while transforming 10^5 to 10^6 rows;
    batch      where exact OT stops paying off: the solve time of one block and the transport cost of exact OT,
               Sinkhorn and independent pairing as the batch grows;
    precision  ``fit`` in float32, under bfloat16 autocast and through ``torch.compile``, on the fastest device here
               (CUDA when there is one): time per step, compilation time and the final loss;
    load       the peer part's training side-by-side at batch 256, idle and while 1 or 2 busy-loop processes
               (``--competitors``) run beside it, at ``--threads`` and at 1 torch thread: both throughput ratios and
               where pfm's time went (waiting for the pairing thread, solving couplings, stepping).

Writes ``results/bench.json`` (or ``--out``), prints Markdown tables and draws ``results/bench.png``.

    python benchmarks/bench.py            # the full run (8 minutes on 2 cores)
    python benchmarks/bench.py --quick    # a small run (under 2 minutes), what the tests run
    python benchmarks/bench.py --parts load --out results/bench-load.json   # 20 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from pfm import PreferenceDataset, PreferenceFlow
from pfm.io import atomic_file
from pfm.coupling import couple, transport_cost
from pfm.train.loop import _adam

SIGMA = 0.1


# ---------------------------------------------------------------------------------------------- helpers
def rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PeakMemory:
    """Peak growth of the process's anonymous memory (MB) while the ``with`` block runs, sampled every 5 ms, over
    ``base`` (default: the memory when the block starts)."""

    def __init__(self, base: Optional[float] = None) -> None:
        self._base = base

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        self.peak = rss_anon_mb()
        self.base = self.peak if self._base is None else self._base
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, rss_anon_mb())

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon_mb())

    @property
    def growth(self) -> float:
        return self.peak - self.base


def synthetic(n: int, shape: tuple[int, ...], labels: int = 0, seed: int = 0) -> PreferenceDataset:
    """``n`` pairs: rejected ~ N(0, I), preferred ~ N(0.5, I) (per label shifted by the label when labelled)."""
    g = torch.Generator().manual_seed(seed)
    y0 = torch.randn(n, *shape, generator=g)
    y1 = torch.randn(n, *shape, generator=g) + 0.5
    c = None
    if labels:
        c = torch.randint(0, labels, (n,), generator=g)
        shift = c.float().view(-1, *([1] * len(shape))) / labels
        y0, y1 = y0 + shift, y1 + shift
    return PreferenceDataset(y1, y0, c)


def field_kwargs(kind: str) -> dict[str, Any]:
    return {"hidden": 128, "depth": 3} if kind == "mlp" else {"channels": (16, 32)}


class StepClock:
    """Times between consecutive forward calls of a module: with one forward a training step, the step times."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.stamps: list[float] = []
        # run eagerly under torch.compile: traced, the hook's side effect would make it recompile every step
        stamp = torch.compiler.disable(lambda *a: self.stamps.append(time.perf_counter()))
        self._hook = module.register_forward_pre_hook(stamp)

    def steady(self) -> float:
        """Median seconds per step over the second half of the run (robust to the machine's hiccups)."""
        self._hook.remove()
        d = np.diff(self.stamps)
        return float(np.median(d[len(d) // 2:]))


def time_fit(ds: PreferenceDataset, kind: str, batch: int, steps: int, **fit: Any) -> tuple[float, float]:
    """``(seconds per step in steady state, seconds of the whole call)`` of ``PreferenceFlow.fit``: the median step
    of the second half, and everything (checks, normalization, every coupling the run waited for)."""
    flow = PreferenceFlow.for_dataset(ds, field=kind, **field_kwargs(kind))
    clock = StepClock(flow.field)
    t = time.perf_counter()
    flow.fit(ds, steps=steps, batch_size=batch, progress=False, validation_fraction=0, **fit)
    total = time.perf_counter() - t
    return clock.steady(), total


def time_bare(ds: PreferenceDataset, kind: str, batch: int, steps: int) -> float:
    """Median seconds per step (second half) of the same field trained on pairs given in advance: sample t and the
    path point, forward, loss, backward, Adam (the same fused Adam as fit). No coupling, clipping, checks or
    bookkeeping."""
    field = PreferenceFlow.for_dataset(ds, field=kind, **field_kwargs(kind)).field
    opt = _adam(torch.optim.Adam, list(field.parameters()), lr=1e-3)
    y0, y1, c = ds.rejected, ds.chosen, ds.context
    n = len(ds)
    clock = StepClock(field)
    order = torch.randperm(n)
    for s in range(steps + 1):
        i = order[(s * batch) % (n - batch + 1):][:batch]
        t = torch.rand(batch)
        tb = t.view(-1, *([1] * (y0.dim() - 1)))
        yt = (1 - tb) * y0[i] + tb * y1[i] + SIGMA * torch.randn_like(y0[i])
        loss = (field(t, yt, None if c is None else c[i]) - (y1[i] - y0[i])).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return clock.steady()


# ---------------------------------------------------------------------------------------------- overhead
def overhead(quick: bool) -> list[dict[str, Any]]:
    """Every case at 1 torch thread and at the process's count (2 here): pfm's fit and the bare step run at the same
    count, so the difference is the pipeline's, not the thread setting's."""
    n = 4096 if quick else 10_000
    steps = 60 if quick else 600
    cases: list[tuple[str, tuple[int, ...], int, int]] = []  # field, output shape, labels, batch
    for d in ((2,), (64,)) if quick else ((2,), (64,), (784,)):
        for b in (64, 256) if quick else (64, 256, 1024):
            cases.append(("mlp", d, 0, b))
    cases.append(("mlp", (784,), 10, 256))
    if not quick:
        cases += [("unet", (1, 28, 28), 10, 64)]
    threads = torch.get_num_threads()
    rows = []
    for k in (threads,) if quick else sorted({1, threads}, reverse=True):
        torch.set_num_threads(k)
        for kind, shape, labels, b in cases:
            ds = synthetic(n, shape, labels)
            s = max(8, steps // 20) if kind == "unet" else steps
            time_bare(ds, kind, b, 3)  # warm-up: imports, allocator, kernels
            time_fit(ds, kind, b, 3)
            bare = time_bare(ds, kind, b, s)  # a median: its mean is within a few % (no start-up)
            row: dict[str, Any] = {"threads": k, "field": kind, "shape": list(shape), "labels": labels, "batch": b,
                                   "pairs": n, "steps": s, "bare_ms": 1e3 * bare}
            step, total = time_fit(ds, kind, b, s)
            row["pfm_ms"], row["pfm_mean_ms"] = 1e3 * step, 1e3 * total / s
            row["pfm_startup_s"] = max(0.0, total - s * step)
            if kind == "mlp":
                row["pfm_recouple10_ms"] = 1e3 * time_fit(ds, kind, b, s, recouple_every=10)[1] / s
            if b <= 256 and kind == "mlp":  # every epoch at 1024 in 2-d would take minutes: see the batch part
                row["pfm_recouple1_ms"] = 1e3 * time_fit(ds, kind, b, s, recouple_every=1)[1] / s
            row["overhead"] = row["pfm_ms"] / row["bare_ms"] - 1
            default_steps = 2000
            row["overhead_2000_steps"] = (row["pfm_ms"] * default_steps + 1e3 * row["pfm_startup_s"]) / (
                row["bare_ms"] * default_steps) - 1
            rows.append(row)
            print(f"  {k} thread(s), {kind} {tuple(shape)} labels={labels} batch {b}: bare {row['bare_ms']:.2f} ms, "
                  f"pfm {row['pfm_ms']:.2f} ms ({100 * row['overhead']:+.0f}%) + {row['pfm_startup_s']:.2f} s start-up"
                  + (f"; recoupling every 10 epochs {row['pfm_recouple10_ms']:.2f} ms" if "pfm_recouple10_ms" in row
                     else "") + (f", every epoch {row['pfm_recouple1_ms']:.2f} ms" if "pfm_recouple1_ms" in row
                                 else ""), flush=True)
    torch.set_num_threads(threads)
    return rows


# ---------------------------------------------------------------------------------------------- precision
def precision(quick: bool, device: Optional[str] = None) -> list[dict[str, Any]]:
    """``fit`` of the 784-d labelled MLP (batch 256) and the UNet (batch 64) in the four settings of ``precision``
    and ``compile``, on CUDA when available: the mean step over the second half (the loss is read back every 25
    steps, so on a GPU the queue drains within the mean), the start-up (compilation), and the mean loss of the
    last quarter, which shows whether bf16 trains as well."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cases = [("mlp", (784,), 256, 100 if quick else 800)]
    if not quick:
        cases.append(("unet", (1, 28, 28), 64, 100 if device == "cpu" else 800))
    rows = []
    for kind, shape, b, steps in cases:
        ds = synthetic(4096 if quick else 10_000, shape, 10)
        for prec, comp in (("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)):
            torch.manual_seed(0)
            flow = PreferenceFlow.for_dataset(ds, field=kind, **field_kwargs(kind))
            clock = StepClock(flow.field)
            t = time.perf_counter()
            hist = flow.fit(ds, steps=steps, batch_size=b, progress=False, validation_fraction=0, device=device, precision=prec,
                            compile=comp)
            total = time.perf_counter() - t
            clock.steady()
            stamps = np.asarray(clock.stamps)
            half = len(stamps) // 2
            step = (stamps[-1] - stamps[half]) / (len(stamps) - 1 - half)
            row = {"device": device, "field": kind, "shape": list(shape), "batch": b, "steps": steps,
                   "precision": prec, "compile": comp, "step_ms": 1e3 * step,
                   "startup_s": max(0.0, total - steps * step),
                   "final_loss": float(np.mean(hist.loss[-max(1, steps // 4):]))}
            rows.append(row)
            print(f"  {device} {kind} batch {b} {prec}{' compiled' if comp else ''}: {row['step_ms']:.2f} ms a step, "
                  f"start-up {row['startup_s']:.1f} s, final loss {row['final_loss']:.4f}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- peer
def toy_data(seed: int, n: int = 3000, n_test: int = 10_000) -> tuple[PreferenceDataset, PreferenceDataset, Tensor]:
    """The 2D task's preference pairs (Bradley-Terry), test pairs, and fresh reference outputs."""
    from pfm import collect_preferences
    from pfm_experiments import toy2d

    gen = torch.Generator().manual_seed(seed)
    ref, prefer = toy2d.reference_policy(), toy2d.preference_model("bt")
    train = collect_preferences(lambda c, k: ref.sample(c, k, generator=gen), prefer, n=n, kind="pairwise",
                                seed=10_000 + seed)
    test = collect_preferences(lambda c, k: ref.sample(c, k, generator=gen), prefer, n=n_test, kind="pairwise",
                               seed=20_000 + seed)
    return train, test, ref.sample(None, n_test, generator=gen)


def swd(a: Tensor, b: Tensor) -> float:
    import ot

    return float(ot.sliced_wasserstein_distance(a.double().numpy(), b.double().numpy(), n_projections=256, seed=0))


def peer_fit(field: torch.nn.Module, train: PreferenceDataset, batch: int, steps: int, *, seed: int = 0,
             device: torch.device | str = "cpu", seconds: Optional[float] = None) -> dict[str, float]:
    """The paper's pipeline: torchcfm's exact-OT matcher (sigma 0.1) + Adam (lr 1e-3) on random batches of the raw
    pairs, training ``field`` in place on ``device`` for ``steps`` steps, or until ``seconds`` have passed (at least
    3 steps; None: no time limit). Returns the steps it ran, the seconds they took and the seconds in the matcher
    (the batch's exact OT, on the CPU, and the draw of its pairs). One implementation for this benchmark and
    ``gpu.py``."""
    from torchcfm.conditional_flow_matching import ExactOptimalTransportConditionalFlowMatcher

    device = torch.device(device)
    torch.manual_seed(seed)
    np.random.seed(seed)  # torchcfm draws the pairs from the plan with numpy
    field.to(device).train()
    opt = torch.optim.Adam(field.parameters(), lr=1e-3)
    matcher = ExactOptimalTransportConditionalFlowMatcher(sigma=SIGMA)
    x0_all, x1_all = train.rejected.to(device), train.chosen.to(device)
    ot_s, done = 0.0, 0
    sync(device)
    t0 = time.perf_counter()
    while done < steps:
        i = torch.randint(0, len(train), (batch,), device=device)
        m = time.perf_counter()
        t, xt, ut = matcher.sample_location_and_conditional_flow(x0_all[i], x1_all[i])
        ot_s += time.perf_counter() - m
        loss = (field(t, xt, None) - ut).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        done += 1
        if seconds is not None and done >= 3 and time.perf_counter() - t0 > seconds:
            break
    sync(device)
    field.eval()
    return {"steps": done, "seconds": time.perf_counter() - t0, "ot_s": ot_s}


def train_peer(train: PreferenceDataset, batch: int, steps: int, seed: int,
               timing: Optional[dict[str, float]] = None) -> tuple[torch.nn.Module, float]:
    """:func:`peer_fit` on a fresh copy of the flows' field (3 x 128) on the CPU. Returns the field and the seconds
    it took; ``timing["ot_s"]`` (when given) gets the seconds spent in the matcher."""
    field = PreferenceFlow.for_dataset(train, hidden=128, depth=3).field
    run = peer_fit(field, train, batch, steps, seed=seed)
    if timing is not None:
        timing["ot_s"] = run["ot_s"]
    return field, run["seconds"]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer reads what the work took."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def peer_transform(field: torch.nn.Module, y: Tensor, chunk: Optional[int] = None) -> Tensor:
    """The paper's inference: torchdiffeq dopri5, atol = rtol = 1e-4, from t = 0 to 1, ``chunk`` rows at a time
    (None: all at once)."""
    import torchdiffeq

    def f(t: Tensor, x: Tensor) -> Tensor:
        return field(t.expand(len(x)), x, None)

    ts = torch.tensor([0.0, 1.0], device=y.device)
    parts = [y] if chunk is None else y.split(chunk)
    return torch.cat([torchdiffeq.odeint(f, part, ts, method="dopri5", atol=1e-4, rtol=1e-4)[-1] for part in parts])


def peer(quick: bool) -> dict[str, Any]:
    from pfm_experiments import toy2d

    steps = 150 if quick else 1000
    seeds = (0,) if quick else (0, 1, 2)
    rows = []
    flows = {}
    warm, _, _ = toy_data(0, n=512, n_test=10)  # first calls: imports, kernels, allocator
    PreferenceFlow.for_dataset(warm, hidden=128, depth=3).fit(warm, steps=20, batch_size=64, progress=False, validation_fraction=0)
    train_peer(warm, 64, 20, 0)
    for batch in (64, 256):
        for seed in seeds:
            train, test, y_ref = toy_data(seed)
            flow = PreferenceFlow.for_dataset(train, hidden=128, depth=3)
            t = time.perf_counter()
            flow.fit(train, steps=steps, batch_size=batch, seed=seed, progress=False, validation_fraction=0)
            ours_s = time.perf_counter() - t
            t = time.perf_counter()
            ours_out = flow.transform(y_ref)
            ours_inf = time.perf_counter() - t
            field, peer_s = train_peer(train, batch, steps, seed)
            t = time.perf_counter()
            peer_out = peer_transform(field, y_ref)
            peer_inf = time.perf_counter() - t
            row = {"batch": batch, "seed": seed, "steps": steps,
                   "pfm_train_s": ours_s, "peer_train_s": peer_s, "speedup": peer_s / ours_s,
                   "pfm_infer_s": ours_inf, "peer_infer_s": peer_inf,
                   # quality: the flow applied to fresh reference outputs, scored against the preferred marginal
                   # (sliced Wasserstein to test y+, lower is better) and by the task's true reward
                   "pfm_swd": swd(ours_out, test.chosen), "peer_swd": swd(peer_out, test.chosen),
                   "pfm_reward": float(toy2d.true_reward(ours_out).mean()),
                   "peer_reward": float(toy2d.true_reward(peer_out).mean()),
                   "reference_swd": swd(y_ref, test.chosen), "reference_reward": float(toy2d.true_reward(y_ref).mean())}
            rows.append(row)
            flows[(batch, seed)] = flow
            print(f"  batch {batch} seed {seed}: train {ours_s:.1f} s vs peer {peer_s:.1f} s ({row['speedup']:.2f}x); "
                  f"SWD to y+ {row['pfm_swd']:.3f} vs {row['peer_swd']:.3f}; reward {row['pfm_reward']:.3f} vs "
                  f"{row['peer_reward']:.3f}; inference {ours_inf:.2f} s vs {peer_inf:.2f} s", flush=True)
    summary = {}
    for batch in (64, 256):
        rs = [r for r in rows if r["batch"] == batch]
        summary[str(batch)] = {k: float(np.mean([r[k] for r in rs])) for k in rs[0] if k not in ("batch", "seed")}
        summary[str(batch)].update({k + "_std": float(np.std([r[k] for r in rs])) for k in ("pfm_swd", "peer_swd")})
    _PEER_FLOWS[:] = [(seed, flows[(256, seed)]) for seed in seeds]
    return {"rows": rows, "summary": summary}


_PEER_FLOWS: list[tuple[int, PreferenceFlow]] = []  # the peer part's flows at batch 256, reused by the inference part


# ---------------------------------------------------------------------------------------------- load
COMPETITORS = (1, 2)
"""Busy-loop processes run beside the timings of the ``load`` part (``--competitors``)."""


def machine_info() -> dict[str, Any]:
    """The CPU, the torch version and its intra-op threads, as the contention benchmarks record them."""
    return {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def medians_by_load(rows: list[dict[str, Any]], modes: tuple[str, ...]) -> Any:
    """For each workload and count of busy processes (``rows``' ``workload`` and ``competitors``, in their order):
    ``(workload, competitors, its rows, {mode: median of <mode>_seconds}, {mode: the idle median} or None)``."""
    for name in dict.fromkeys(r["workload"] for r in rows):
        of = [r for r in rows if r["workload"] == name]
        idle = {m: statistics.median(r[f"{m}_seconds"] for r in of if r["competitors"] == 0)
                for m in modes} if any(r["competitors"] == 0 for r in of) else None
        for k in dict.fromkeys(r["competitors"] for r in of):
            these = [r for r in of if r["competitors"] == k]
            yield name, k, these, {m: statistics.median(r[f"{m}_seconds"] for r in these) for m in modes}, idle


def keep_other_rows(out: str, rows: list[dict[str, Any]], ran: list[str], order: list[str]
                    ) -> tuple[list[dict[str, Any]], Optional[dict[str, Any]]]:
    """``rows`` (of the workloads ``ran``) with the other workloads' rows of an existing result file ``out``, sorted
    by ``order`` (unknown workloads last); and that earlier result (``None`` when there was none). How a contention
    benchmark run with ``--workloads`` keeps what the runs before it measured."""
    path = Path(out)
    if not path.exists():
        return rows, None
    earlier = json.loads(path.read_text())
    rows = [r for r in earlier.get("rows", []) if r["workload"] not in ran] + rows
    rows.sort(key=lambda r: order.index(r["workload"]) if r["workload"] in order else len(order))
    return rows, earlier


def save_result(out: str, result: dict[str, Any], ran: list[str], order: list[str], earlier: str) -> None:
    """Write ``result`` (its ``rows`` those of the workloads ``ran``, its ``seconds`` this run's) to ``out``
    atomically. When ``ran`` is not every workload of ``order``, the other workloads' rows of an existing ``out``
    are kept (:func:`keep_other_rows`) and ``seconds_per_run`` records each run's seconds (``earlier`` names the
    runs of a file that had none)."""
    if set(ran) != set(order):
        result["rows"], kept = keep_other_rows(out, result["rows"], ran, order)
        if kept:
            result["seconds_per_run"] = {**kept.get("seconds_per_run", {earlier: kept["seconds"]}),
                                         ", ".join(ran): result["seconds"]}
    with atomic_file(out, "w") as f:
        json.dump(result, f, indent=1)


class Competitors:
    """``k`` separate busy-loop processes (``while True: pass``) at the normal priority, for the ``with`` block:
    other jobs on the machine's cores. On exit, ``busy``: the CPU they got, in cores (their CPU seconds over the
    block's wall seconds); ``others``: what the rest of the machine used beside this process and them, in cores
    (what else ran: "idle" is only as idle as that)."""

    def __init__(self, k: int) -> None:
        self.k, self.busy, self.others = k, 0.0, float("nan")

    def __enter__(self) -> "Competitors":
        self._procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.k)]
        time.sleep(0.3 if self.k else 0.0)  # started and spinning
        self._t0, self._cpu0 = time.perf_counter(), self._cpu()
        return self

    def _cpu(self) -> tuple[float, float, float]:
        """CPU seconds so far: the competitors', this process's, and the whole machine's (busy, all cores)."""
        def of(pid: Any) -> float:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        try:
            ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            machine = (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
            return sum(of(p.pid) for p in self._procs), of("self"), machine
        except (OSError, IndexError, ValueError):
            return float("nan"), float("nan"), float("nan")

    def __exit__(self, *exc: Any) -> None:
        wall = max(time.perf_counter() - self._t0, 1e-9)
        (c1, s1, m1), (c0, s0, m0) = self._cpu(), self._cpu0
        self.busy = (c1 - c0) / wall if self._procs else 0.0
        self.others = max(0.0, (m1 - m0) - (c1 - c0) - (s1 - s0)) / wall
        for p in self._procs:
            p.kill()
            p.wait()


def time_pfm_parts(train: PreferenceDataset, batch: int, steps: int, seed: int) -> dict[str, float]:
    """``fit`` as in the peer part, timed, and where its time went: ``wait_s`` (the training loop waiting for the
    pairing thread), ``solve_s`` (couplings the loop solved itself), ``thread_solve_s`` (the thread's), the blocks
    the loop ``taken_over`` from the thread, ``startup_s`` (before the first step), ``steps_s`` (from the first
    step to the end, the couplings it waited for or solved included) and the median step."""
    import pfm.flow.fit as flow_module  # where fit makes its PairingPlan
    from pfm.pairing import PairingPlan

    plans: list[PairingPlan] = []

    class Recorded(PairingPlan):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            plans.append(self)

    flow = PreferenceFlow.for_dataset(train, hidden=128, depth=3)
    clock = StepClock(flow.field)
    flow_module.PairingPlan = Recorded
    try:
        t = time.perf_counter()
        flow.fit(train, steps=steps, batch_size=batch, seed=seed, progress=False, validation_fraction=0)
        end = time.perf_counter()
    finally:
        flow_module.PairingPlan = PairingPlan
    median = clock.steady()
    stats = dict(plans[-1].stats) if plans else {}
    return {"train_s": end - t, "startup_s": clock.stamps[0] - t, "steps_s": end - clock.stamps[0],
            "median_step_ms": 1e3 * median, **{k: float(v) for k, v in stats.items()}}


def load_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per torch thread count and number of competitors: the seeds' mean of every timing, and the throughput ratio's
    median, min and max over the seeds (one seed whose timing met a burst of other work moves a mean a lot) and the
    ratio of the summed times."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for th in sorted({r["threads"] for r in rows}, reverse=True):
        for k in sorted({r["competitors"] for r in rows}):
            rs = [r for r in rows if r["competitors"] == k and r["threads"] == th]
            if not rs:
                continue
            mean = {name: float(np.mean([r[name] for r in rs])) for name in rs[0] if name not in ("batch", "seed")}
            ratios = [r["speedup"] for r in rs]
            mean.update(speedup_median=float(np.median(ratios)), speedup_min=float(np.min(ratios)),
                        speedup_max=float(np.max(ratios)),
                        speedup_of_totals=float(np.sum([r["peer_train_s"] for r in rs])
                                                / np.sum([r["pfm_train_s"] for r in rs])))
            summary.setdefault(str(th), {})[str(k)] = mean
    return summary


def load(quick: bool, competitors: tuple[int, ...] = COMPETITORS) -> dict[str, Any]:
    """The peer part's side-by-side at batch 256 (2D task, the same field, data and steps; training only) on the
    machine as it is and while ``k`` busy-loop processes run beside it, at the benchmark's torch thread count and at
    one thread. For each seed and thread count: idle, then each ``k``, pfm and then the peer each time. Every row
    keeps the CPU the rest of the machine used meanwhile: "idle" is only as idle as that."""
    steps = 20 if quick else 1000
    seeds = (0,) if quick else (0, 1, 2)
    batch = 256
    threads = torch.get_num_threads()
    warm, _, _ = toy_data(0, n=512, n_test=10)  # first calls: imports, kernels, allocator
    PreferenceFlow.for_dataset(warm, hidden=128, depth=3).fit(warm, steps=20, batch_size=64, progress=False, validation_fraction=0)
    train_peer(warm, 64, 20, 0)
    rows = []
    try:
        for seed in seeds:
            train, _, _ = toy_data(seed, n_test=10)
            for th in sorted({threads, 1}, reverse=True):
                torch.set_num_threads(th)
                for k in (0, *competitors):
                    with Competitors(k) as comp:
                        ours = time_pfm_parts(train, batch, steps, seed)
                        timing: dict[str, float] = {}
                        _, peer_s = train_peer(train, batch, steps, seed, timing)
                    row = {"batch": batch, "seed": seed, "steps": steps, "threads": th, "competitors": k,
                           "competitors_cores": comp.busy, "others_cores": comp.others,
                           **{f"pfm_{name}": v for name, v in ours.items()},
                           "peer_train_s": peer_s, "peer_ot_s": timing["ot_s"], "speedup": peer_s / ours["train_s"]}
                    rows.append(row)
                    print(f"  seed {seed}, {th} thread(s), {k} competitor(s) (they got {comp.busy:.2f} cores, the "
                          f"rest of the machine {comp.others:.2f}): pfm {ours['train_s']:.2f} s (waiting "
                          f"{ours['wait_s']:.2f} s, solving {ours['solve_s']:.2f} s, median step "
                          f"{ours['median_step_ms']:.2f} ms) vs peer {peer_s:.2f} s (OT {timing['ot_s']:.2f} s): "
                          f"{row['speedup']:.2f}x", flush=True)
    finally:
        torch.set_num_threads(threads)
    summary = load_summary(rows)
    return {"rows": rows, "summary": summary, "seeds": len(seeds), "threads": threads}


# ---------------------------------------------------------------------------------------------- inference
SOLVERS: list[tuple[str, dict[str, Any]]] = (
    [("dopri5", {"atol": tol, "rtol": tol}) for tol in (1e-3, 1e-4, 1e-5)]
    + [("euler", {"steps": k}) for k in (4, 8, 16, 32, 64)]
    + [("midpoint", {"steps": k}) for k in (2, 3, 4, 8, 16, 32)]
    + [("rk4", {"steps": k}) for k in (1, 2, 4, 8)])


def solver_name(method: str, kw: dict[str, Any]) -> str:
    return f"{method} " + (f"tol {kw['atol']:g}" if "atol" in kw else f"{kw['steps']} steps")


def inference(quick: bool) -> dict[str, Any]:
    """Every solver on each peer-part flow (batch 256, one per seed), pushing 10,000 fresh reference outputs."""
    flows = list(_PEER_FLOWS)
    if not flows:
        train, _, _ = toy_data(0)
        flow = PreferenceFlow.for_dataset(train, hidden=128, depth=3)
        flow.fit(train, steps=150 if quick else 1000, batch_size=256, progress=False, validation_fraction=0)
        flows = [(0, flow)]
    per_flow = []
    for seed, flow in flows:
        _, _, y_ref = toy_data(seed)
        calls = [0]
        hook = flow.field.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
        scale = float(flow.y_scale)
        exact = flow.double().transform(y_ref.double(), method="dopri5", atol=1e-9, rtol=1e-9, batch_size=len(y_ref))
        flow.float()
        ends, rows = {}, []
        for method, kw in SOLVERS:
            calls[0] = 0
            t = time.perf_counter()
            out = flow.transform(y_ref, method=method, batch_size=len(y_ref), **kw)
            wall = time.perf_counter() - t
            name = solver_name(method, kw)
            ends[name] = out
            rows.append({"solver": name, "nfe": calls[0], "seconds_per_10k": wall * 1e4 / len(y_ref),
                         "error_vs_exact": float((out.double() - exact).norm(dim=1).mean()) / scale})
        hook.remove()
        ref = ends["dopri5 tol 0.0001"]
        for r in rows:
            r["distance_to_dopri5_1e-4"] = float((ends[r["solver"]] - ref).norm(dim=1).mean()) / scale
        per_flow.append(rows)
    rows = []
    for i, (method, kw) in enumerate(SOLVERS):
        rs = [f[i] for f in per_flow]
        row = {"solver": rs[0]["solver"], "method": method, **kw}
        for k in ("nfe", "seconds_per_10k", "error_vs_exact", "distance_to_dopri5_1e-4"):
            row[k] = float(np.mean([r[k] for r in rs]))
            row[k + "_max"] = float(np.max([r[k] for r in rs]))
        rows.append(row)
        print(f"  {row['solver']:>18}: NFE {row['nfe']:5.1f}, {1e3 * row['seconds_per_10k']:7.1f} ms per 10k, error "
              f"{row['error_vs_exact']:.2e}, distance to dopri5(1e-4) {row['distance_to_dopri5_1e-4']:.2e} "
              "(x data scale)", flush=True)
    flow = flows[0][1]
    default = {"method": flow.solver["method"], "steps": flow.solver["steps"]}
    # memory while transforming many rows: transform solves batch_size rows at a time
    memory = []
    for n in (10**5,) if quick else (10**5, 10**6):
        y = torch.randn(n, 2) * float(flow.y_scale)
        with PeakMemory() as m:
            out = flow.transform(y)
        io_mb = 2 * y.numel() * 4 / 2**20
        memory.append({"rows": n, "anon_mb_growth": m.growth, "input_output_mb": io_mb})
        print(f"  transform of {n:,} rows: anonymous memory +{m.growth:.0f} MB (input + output {io_mb:.0f} MB)",
              flush=True)
        del y, out
    return {"rows": rows, "memory": memory, "flows": len(flows), "samples": 10_000, "default": default}


# ---------------------------------------------------------------------------------------------- batch
def batch_scaling(quick: bool) -> list[dict[str, Any]]:
    train, _, _ = toy_data(0, n=4096, n_test=10)
    flow = PreferenceFlow.for_dataset(train)
    flow._set_normalization(train)
    y0, y1 = flow._norm_y(train.rejected), flow._norm_y(train.chosen)
    rows = []
    for b in (64, 256, 1024) if quick else (64, 128, 256, 512, 1024, 2048):
        i = torch.randperm(len(train), generator=torch.Generator().manual_seed(b))[:b]
        row: dict[str, Any] = {"batch": b}
        for method in ("independent", "ot", "sinkhorn"):
            reps = 1 if b >= 1024 else 3
            t = time.perf_counter()
            for _ in range(reps):
                i0, i1 = couple(y0[i], y1[i], None, method, generator=torch.Generator().manual_seed(0))
            row[f"{method}_ms"] = 1e3 * (time.perf_counter() - t) / reps
            row[f"{method}_cost"] = transport_cost(y0[i], y1[i], i0, i1)
        ds = PreferenceDataset(train.chosen[:b], train.rejected[:b])
        row["bare_step_ms"] = 1e3 * float(np.median([time_bare(ds, "mlp", b, 20) for _ in range(3)]))
        rows.append(row)
        print(f"  batch {b}: exact OT {row['ot_ms']:.1f} ms, sinkhorn {row['sinkhorn_ms']:.1f} ms, bare step "
              f"{row['bare_step_ms']:.1f} ms; transport cost independent {row['independent_cost']:.3f}, OT "
              f"{row['ot_cost']:.3f}, sinkhorn {row['sinkhorn_cost']:.3f}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- report
def tables(result: dict[str, Any]) -> str:
    out = [f"Machine: {result['machine']}; torch {result['torch']}; {result['date']}"
           + (" (quick run)" if result.get("quick") else "") + "."]
    if "overhead" in result:
        out += ["", "**Training step: pfm's fit against a bare step of the same field on pairs given in advance** "
                "(median ms per step over the second half of a run; start-up: what the run took beyond that many "
                "median steps: checks, normalization, the first epoch's couplings; the last two columns: the mean "
                "step of a whole run that re-solves the couplings every 10 epochs or every epoch)", "",
                "| threads | field | output | labels | batch | bare step | pfm fit | overhead | start-up | overhead, "
                "2,000-step run | mean step, re-coupling every 10 epochs | every epoch |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["overhead"]:
            k1 = f"{r['pfm_recouple1_ms']:.2f} ms" if "pfm_recouple1_ms" in r else "-"
            kn = f"{r['pfm_recouple10_ms']:.2f} ms" if "pfm_recouple10_ms" in r else "-"
            out.append(f"| {r.get('threads', '')} | {r['field']} | {'x'.join(map(str, r['shape']))} | "
                       f"{r['labels'] or '-'} | {r['batch']} | {r['bare_ms']:.2f} ms | {r['pfm_ms']:.2f} ms | "
                       f"{100 * r['overhead']:+.0f}% | {r['pfm_startup_s']:.2f} s | "
                       f"{100 * r['overhead_2000_steps']:+.0f}% | {kn} | {k1} |")
    if "peer" in result:
        p = result["peer"]["summary"]
        steps = result["peer"]["rows"][0]["steps"]
        seeds = len({r["seed"] for r in result["peer"]["rows"]})
        out += ["", f"**Against the peer pipeline** (torchcfm exact-OT matcher + Adam, dopri5 1e-4; the same field, "
                f"data and {steps} steps; 2D task, mean of {seeds} seed(s); SWD: sliced Wasserstein distance of "
                "the flow's outputs on 10,000 fresh reference samples to the preferred marginal, lower is better)", "",
                "| batch | pfm train | peer train | throughput ratio | pfm SWD | peer SWD | pfm reward | peer reward | "
                "pfm inference | peer inference |", "|---|---|---|---|---|---|---|---|---|---|"]
        for b, r in p.items():
            out.append(f"| {b} | {r['pfm_train_s']:.2f} s | {r['peer_train_s']:.2f} s | {r['speedup']:.2f}x | "
                       f"{r['pfm_swd']:.3f} ± {r['pfm_swd_std']:.3f} | {r['peer_swd']:.3f} ± {r['peer_swd_std']:.3f} | "
                       f"{r['pfm_reward']:.3f} | {r['peer_reward']:.3f} | {r['pfm_infer_s']:.2f} s | "
                       f"{r['peer_infer_s']:.2f} s |")
        r0 = next(iter(p.values()))
        out.append(f"\nReference outputs before the flow: SWD {r0['reference_swd']:.3f}, reward "
                   f"{r0['reference_reward']:.3f}.")
    if "load" in result:
        ld = result["load"]
        r0 = ld["rows"][0]
        out += ["", f"**Under load: the peer part's side-by-side at batch {r0['batch']}** (2D task, the same field, "
                f"data and {r0['steps']} steps, training only; mean of {ld['seeds']} seed(s); competitors: separate "
                "busy-loop processes at normal priority during both timings, and the cores they got; others: the "
                "cores the rest of the machine used meanwhile; times are the seeds' means; pfm's time in the "
                "training loop's waits for the pairing thread, in couplings the loop solved itself, and its median "
                "step; the peer's time in torchcfm's OT matcher)", "",
                "| torch threads | competitors | they got | others | pfm train | peer train | throughput ratio: "
                "median (min-max) | of the totals | pfm waiting | pfm solving | pfm median step | peer in OT |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        summary = load_summary(ld["rows"])
        for th, by_k in summary.items():
            for k, r in by_k.items():
                got = f"{r['competitors_cores']:.2f} cores" if int(k) else "-"
                out.append(f"| {th} | {k} | {got} | {r['others_cores']:.2f} cores | {r['pfm_train_s']:.2f} s | "
                           f"{r['peer_train_s']:.2f} s | {r['speedup_median']:.2f}x ({r['speedup_min']:.2f}-"
                           f"{r['speedup_max']:.2f}x) | {r['speedup_of_totals']:.2f}x | {r['pfm_wait_s']:.3f} s | "
                           f"{r['pfm_solve_s']:.3f} s | {r['pfm_median_step_ms']:.2f} ms | {r['peer_ot_s']:.2f} s |")
        for th, by_k in summary.items():
            ratios = ", ".join(f"{k} competitor(s) {r['speedup_median']:.2f}x" for k, r in by_k.items() if int(k))
            out.append(f"\nThroughput ratio pfm / peer at {th} torch thread(s), median of the seeds: idle "
                       f"{by_k['0']['speedup_median']:.2f}x; {ratios}.")
    if "inference" in result:
        inf = result["inference"]
        out += ["", f"**Solvers** (10,000 fresh reference outputs, mean over {inf['flows']} flow(s); errors are mean "
                "end-point distances divided by the data's scale; exact = dopri5 at 1e-9 in float64)", "",
                "| solver | NFE | ms per 10k | error vs exact | distance to dopri5(1e-4) |", "|---|---|---|---|---|"]
        default = f"{inf['default']['method']} {inf['default']['steps']} steps"
        for r in inf["rows"]:
            name = f"**{r['solver']} (default)**" if r["solver"] == default else r["solver"]
            out.append(f"| {name} | {r['nfe']:.0f} | {1e3 * r['seconds_per_10k']:.0f} | {r['error_vs_exact']:.1e} | "
                       f"{r['distance_to_dopri5_1e-4']:.1e} (max {r['distance_to_dopri5_1e-4_max']:.1e}) |")
        out += ["", "| rows transformed | input + output | peak memory growth |", "|---|---|---|"]
        for m in inf["memory"]:
            out.append(f"| {m['rows']:,} | {m['input_output_mb']:.0f} MB | {m['anon_mb_growth']:.0f} MB |")
    if "batch" in result:
        out += ["", "**Where exact OT stops paying off** (one block of the 2D task's pairs; transport cost = mean "
                "squared distance of the pairs, normalized units)", "",
                "| batch | exact OT | Sinkhorn | bare step | cost: independent | cost: exact OT | cost: Sinkhorn |",
                "|---|---|---|---|---|---|---|"]
        for r in result["batch"]:
            out.append(f"| {r['batch']} | {r['ot_ms']:.1f} ms | {r['sinkhorn_ms']:.1f} ms | {r['bare_step_ms']:.1f} ms "
                       f"| {r['independent_cost']:.2f} | {r['ot_cost']:.2f} | {r['sinkhorn_cost']:.2f} |")
    if "precision" in result:
        out += ["", "**Precision and compilation** (`fit`, 784-d MLP with 10 labels at batch 256, UNet at batch 64; "
                "mean step over the second half; start-up = compilation and the first epoch's couplings)", "",
                "| device | field | setting | ms / step | vs fp32 | start-up | final loss |",
                "|---|---|---|---|---|---|---|"]
        for r in result["precision"]:
            base = next(q for q in result["precision"] if q["field"] == r["field"] and q["device"] == r["device"]
                        and q["precision"] == "fp32" and not q["compile"])
            name = r["precision"] + (" + compile" if r["compile"] else "")
            out.append(f"| {r['device']} | {r['field']} | {name} | {r['step_ms']:.2f} | "
                       f"{base['step_ms'] / r['step_ms']:.2f}x | {r['startup_s']:.1f} s | {r['final_loss']:.5f} |")
    return "\n".join(out)


def figure(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    if "overhead" in result:
        top = max(r.get("threads", 0) for r in result["overhead"])
        rows = [r for r in result["overhead"] if r.get("threads", 0) == top]
        labels = [f"{r['field']} {'x'.join(map(str, r['shape']))}{' lab' if r['labels'] else ''}\nB={r['batch']}"
                  for r in rows]
        x = np.arange(len(rows))
        ax.bar(x - 0.27, [r["bare_ms"] for r in rows], 0.27, label="bare step")
        ax.bar(x, [r["pfm_ms"] for r in rows], 0.27, label="pfm fit")
        ax.bar(x + 0.27, [r.get("pfm_recouple10_ms", np.nan) for r in rows], 0.27,
               label="pfm, re-coupling every 10 epochs")
        ax.set_xticks(x, labels, fontsize=6.5, rotation=45, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("ms per step")
        ax.set_title(f"training step ({top} torch threads)")
        ax.legend(fontsize=7)
    ax = axes[1]
    if "inference" in result:
        rows = result["inference"]["rows"]
        for method in ("euler", "midpoint", "rk4", "dopri5"):
            rs = [r for r in rows if r["method"] == method]
            ax.loglog([r["nfe"] for r in rs], [r["error_vs_exact"] for r in rs], "o-", label=method)
        d = result["inference"]["default"]
        dr = next(r for r in rows if r["solver"] == f"{d['method']} {d['steps']} steps")
        ax.loglog([dr["nfe"]], [dr["error_vs_exact"]], "k*", ms=14, label="default")
        ax.axhline(0.01, color="grey", ls=":", lw=1)
        ax.set_xlabel("field evaluations (NFE)")
        ax.set_ylabel("mean end-point error / data scale")
        ax.set_title("inference")
        ax.legend(fontsize=7)
    ax = axes[2]
    if "batch" in result:
        rows = result["batch"]
        b = [r["batch"] for r in rows]
        ax.loglog(b, [r["ot_ms"] for r in rows], "o-", label="exact OT (scipy)")
        ax.loglog(b, [r["sinkhorn_ms"] for r in rows], "s-", label="Sinkhorn (POT)")
        ax.loglog(b, [r["bare_step_ms"] for r in rows], "k--", label="bare training step")
        ax.set_xlabel("batch")
        ax.set_ylabel("ms per batch")
        ax.set_title("coupling one batch (2D)")
        ax.legend(fontsize=7)
    fig.suptitle(f"pfm benchmarks: {result['machine']}, {result['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PARTS: dict[str, Callable[..., Any]] = {"overhead": overhead, "peer": peer, "inference": inference,
                                       "batch": batch_scaling, "precision": precision, "load": load}
DEFAULT_PARTS = [name for name in PARTS if name != "load"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", nargs="+", default=DEFAULT_PARTS, choices=list(PARTS),
                        help=f"default: {' '.join(DEFAULT_PARTS)} (load only when asked: 20 minutes on 2 cores)")
    parser.add_argument("--out", default="results/bench.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--competitors", type=int, nargs="+", default=list(COMPETITORS),
                        help="busy-loop processes beside the load part's timings, one case per count")
    parser.add_argument("--report", action="store_true", help="only print the tables and draw the figure of --out")
    args = parser.parse_args()
    out = Path(args.out)
    if args.report:
        result = json.loads(out.read_text())
    else:
        torch.set_num_threads(args.threads)
        result = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                             f"{'cuda' if torch.cuda.is_available() else 'cpu'}",
                  "torch": torch.__version__, "date": datetime.date.today().isoformat(), "quick": args.quick}
        parts = PARTS
        for name in args.parts:
            print(f"{name}:", flush=True)
            t = time.perf_counter()
            kwargs = {"competitors": tuple(args.competitors)} if name == "load" else {}
            result[name] = parts[name](args.quick, **kwargs)
            result.setdefault("seconds", {})[name] = time.perf_counter() - t
        if out.exists():  # a run of some parts keeps the others' results
            kept = json.loads(out.read_text())
            if kept.get("quick") == args.quick:
                for name in set(parts) - set(args.parts):
                    if name in kept:
                        result[name] = kept[name]
                        result.setdefault("seconds", {})[name] = kept.get("seconds", {}).get(name)
                        result.setdefault("dates", {})[name] = kept.get("dates", {}).get(name, kept.get("date"))
        for name in args.parts:
            result.setdefault("dates", {})[name] = result["date"]
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(out, "w") as f:
            json.dump(result, f, indent=1)
    print()
    print(tables(result))
    if {"overhead", "inference", "batch"} & set(result):
        figure(result, out.with_suffix(".png"))
        print(f"\nwrote {out} and {out.with_suffix('.png')}")
    else:  # nothing to draw
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
