"""pfm against the peer pipeline (torchcfm's exact-OT matcher + Adam, torchdiffeq dopri5 at 1e-4) on one device, side
by side in one run: what ``benchmarks/gpu.sh`` runs on a GPU machine (``--device cuda``), and what runs here on the
CPU as a check of the script itself (``--device cpu --quick``).

Parts (``--parts``, all by default):
    train      training throughput (pairs a second) of ``PreferenceFlow.fit`` and of the peer at batch 256, 1024 and
               4096 for the 2D task's MLP, a 784-d MLP and the UNet on 1x28x28, the same field and steps for both,
               and the quality each reaches (2D: sliced Wasserstein distance to held-out y+ and the task's reward;
               synthetic 784-d and 1x28x28 pairs, y- ~ N(0, I), y+ ~ N(0.5, I): the error of the flowed mean and
               standard deviation). The peer's exact OT runs on the CPU in every step (POT), so at large batches
               its timed steps are capped (``--peer-seconds``) and its throughput is over the steps it ran;
    transform  ``transform`` of 10^6 2-D rows and 10^5 784-d rows and 1x28x28 images against dopri5 at 1e-4;
    precision  fp32, bf16 autocast and ``torch.compile`` (benchmarks/bench.py's precision part, on ``--device``);
    ot         where exact OT stops paying off on the device: one block's exact OT (scipy, on the CPU) against
               Sinkhorn (on the device) and independent pairing, with their transport costs, as the batch grows.

Writes ``results/bench-cuda.json`` (or ``--out``) with the device's name, and prints Markdown tables.

    python benchmarks/gpu.py --device cuda                 # on the GPU machine (benchmarks/gpu.sh)
    python benchmarks/gpu.py --device cpu --quick --out /tmp/gpu-check.json   # a check of the script, 1 minute here
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the CPU benchmark's helpers: data, the peer's settings, timers)

from pfm import PreferenceDataset, PreferenceFlow  # noqa: E402
from pfm.coupling import couple, transport_cost  # noqa: E402

SIGMA = bench.SIGMA


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads"


# ---------------------------------------------------------------------------------------------- data and quality
def make_task(kind: str, n: int, n_test: int, seed: int = 0):
    if kind == "mlp-2d":
        train, test, y_ref = bench.toy_data(seed, n=n, n_test=n_test)
        reward = bench_reward()

        def quality(out: Tensor) -> dict[str, float]:
            out = out.cpu()
            return {"swd": bench.swd(out, test.chosen), "reward": float(reward(out).mean())}
        return train, y_ref, quality, (2,)
    shape = (784,) if kind == "mlp-784" else (1, 28, 28)
    train = bench.synthetic(n, shape, 0, seed)
    y_ref = torch.randn(n_test, *shape, generator=torch.Generator().manual_seed(seed + 1))

    def quality(out: Tensor) -> dict[str, float]:
        out = out.cpu().reshape(len(out), -1).double()
        return {"mean_err": float((out.mean(0) - 0.5).abs().mean()), "std_err": float((out.std(0) - 1).abs().mean())}
    return train, y_ref, quality, shape


def bench_reward() -> Callable[[Tensor], Tensor]:
    """The 2D task's true reward (the experiment's, through bench.py's import of it)."""
    try:
        from pfm_experiments.toy2d import true_reward
    except ImportError:
        raise ImportError("the 2D task (pfm_experiments.toy2d) is not installed") from None
    return true_reward


def field_for(kind: str, train: PreferenceDataset) -> PreferenceFlow:
    if kind == "unet":
        return PreferenceFlow.for_dataset(train, field="unet", channels=(32, 64))
    return PreferenceFlow.for_dataset(train, hidden=128 if kind == "mlp-2d" else 512, depth=3)


# ---------------------------------------------------------------------------------------------- parts
def train_part(device: torch.device, quick: bool, peer_seconds: float) -> list[dict[str, Any]]:
    kinds = ("mlp-2d", "mlp-784") if quick else ("mlp-2d", "mlp-784", "unet")
    batches = (256, 1024) if quick else (256, 1024, 4096)
    rows = []
    for kind in kinds:
        n = 4096 if quick else 16_384  # 4 blocks at batch 4096: the first epoch's exact OT stays under a minute
        train, y_ref, quality, shape = make_task(kind, n, 2000 if quick else 10_000)
        for b in batches:
            steps = (30 if quick else {256: 300, 1024: 150}.get(b, 60))
            if kind == "unet":
                steps = max(10, steps // 3)
            flow = field_for(kind, train)
            peer_field = field_for(kind, train).field  # the same architecture, its own initial weights
            torch.manual_seed(0)
            bench.sync(device)
            t = time.perf_counter()
            flow.fit(train, steps=steps, batch_size=b, device=device, progress=False, validation_fraction=0)
            bench.sync(device)
            ours = time.perf_counter() - t
            peer = bench.peer_fit(peer_field, train, b, steps, device=device, seconds=peer_seconds)
            y = y_ref.to(device)
            q_ours = quality(flow.transform(y))
            q_peer = quality(bench.peer_transform(peer_field, y, chunk=4096))
            row = {"field": kind, "shape": list(shape), "batch": b, "pairs": n, "steps": steps,
                   "pfm_s": ours, "pfm_pairs_per_s": steps * b / ours,
                   "peer_steps": peer["steps"], "peer_s": peer["seconds"], "peer_ot_s": peer["ot_s"],
                   "peer_pairs_per_s": peer["steps"] * b / peer["seconds"],
                   **{f"pfm_{k}": v for k, v in q_ours.items()}, **{f"peer_{k}": v for k, v in q_peer.items()}}
            row["speedup"] = row["pfm_pairs_per_s"] / row["peer_pairs_per_s"]
            rows.append(row)
            print(f"  {kind} batch {b}: pfm {row['pfm_pairs_per_s']:.0f} pairs/s ({steps} steps, {ours:.1f} s), peer "
                  f"{row['peer_pairs_per_s']:.0f} pairs/s ({peer['steps']} steps, {peer['seconds']:.1f} s, OT "
                  f"{peer['ot_s']:.1f} s): {row['speedup']:.2f}x; quality pfm {q_ours} peer {q_peer}", flush=True)
    return rows


def transform_part(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    cases = [("mlp-2d", 10**4 if quick else 10**6), ("mlp-784", 10**3 if quick else 10**5)]
    if not quick:
        cases.append(("unet", 10**5))
    rows = []
    for kind, m in cases:
        train, _, _, shape = make_task(kind, 2048, 10)
        flow = field_for(kind, train)
        flow.fit(train, steps=20, batch_size=256, device=device, progress=False, validation_fraction=0)
        y = torch.randn(m, *shape, device=device)
        flow.transform(y[:256])  # warm-up
        bench.sync(device)
        t = time.perf_counter()
        out = flow.transform(y)
        bench.sync(device)
        ours = time.perf_counter() - t
        field = flow.field
        sub = y[: min(m, 10**5 if kind == "mlp-2d" else 10**4)]  # dopri5 on a part: its time scales with the rows
        bench.sync(device)
        t = time.perf_counter()
        bench.peer_transform(field, sub, chunk=65_536 if kind == "mlp-2d" else 8192)  # the same network, in its units
        bench.sync(device)
        peer = (time.perf_counter() - t) * m / len(sub)
        row = {"field": kind, "rows": m, "pfm_s": ours, "pfm_rows_per_s": m / ours, "peer_s": peer,
               "peer_rows_timed": len(sub), "peer_rows_per_s": m / peer, "speedup": peer / ours,
               "finite": bool(torch.isfinite(out).all())}
        rows.append(row)
        print(f"  transform {kind} x {m}: pfm {ours:.2f} s, dopri5 1e-4 {peer:.2f} s (timed on {len(sub)} rows): "
              f"{row['speedup']:.2f}x", flush=True)
    return rows


def ot_part(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    train, _, _ = bench.toy_data(0, n=8192, n_test=10)
    flow = PreferenceFlow.for_dataset(train)
    flow._set_normalization(train)
    y0, y1 = flow._norm_y(train.rejected).to(device), flow._norm_y(train.chosen).to(device)
    rows = []
    for b in (256, 1024) if quick else (256, 1024, 2048, 4096, 8192):
        i = torch.randperm(len(train), generator=torch.Generator().manual_seed(b))[:b].to(device)
        row: dict[str, Any] = {"batch": b}
        for method in ("independent", "ot", "sinkhorn"):
            couple(y0[i[:64]], y1[i[:64]], None, method)  # warm-up
            bench.sync(device)
            t = time.perf_counter()
            i0, i1 = couple(y0[i], y1[i], None, method, generator=torch.Generator(device=device).manual_seed(0))
            bench.sync(device)
            row[f"{method}_ms"] = 1e3 * (time.perf_counter() - t)
            row[f"{method}_cost"] = transport_cost(y0[i], y1[i], i0, i1)
        rows.append(row)
        print(f"  batch {b}: exact OT {row['ot_ms']:.1f} ms (cost {row['ot_cost']:.3f}), sinkhorn "
              f"{row['sinkhorn_ms']:.1f} ms ({row['sinkhorn_cost']:.3f}), independent {row['independent_cost']:.3f}",
              flush=True)
    return rows


def precision_part(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    return bench.precision(quick, device=str(device))


PARTS: dict[str, Callable[[torch.device, bool, argparse.Namespace], Any]] = {
    "train": lambda device, quick, args: train_part(device, quick, args.peer_seconds),
    "transform": lambda device, quick, args: transform_part(device, quick),
    "precision": lambda device, quick, args: precision_part(device, quick),
    "ot": lambda device, quick, args: ot_part(device, quick),
}


# ---------------------------------------------------------------------------------------------- report
def tables(result: dict[str, Any]) -> str:
    out = [f"Device: {result['device_name']} ({result['device']}); torch {result['torch']}; {result['date']}"
           + (" (quick run)" if result.get("quick") else "") + f"; {result['seconds_total']:.0f} s in all."]
    if "train" in result:
        out += ["", "**Training throughput, pfm against the peer on the same device** (pairs a second; the peer's "
                "steps were capped by time at large batches: its throughput is over the steps it ran)", "",
                "| field | batch | steps | pfm pairs/s | peer pairs/s (steps) | speedup | peer in OT | quality pfm | "
                "quality peer |", "|---|---|---|---|---|---|---|---|---|"]
        for r in result["train"]:
            keys = ("swd", "reward") if r["field"] == "mlp-2d" else ("mean_err", "std_err")
            q = lambda who: ", ".join(f"{k} {r[f'{who}_{k}']:.3f}" for k in keys)  # noqa: E731
            out.append(f"| {r['field']} | {r['batch']} | {r['steps']} | {r['pfm_pairs_per_s']:,.0f} | "
                       f"{r['peer_pairs_per_s']:,.0f} ({r['peer_steps']}) | {r['speedup']:.2f}x | "
                       f"{r['peer_ot_s']:.1f} s of {r['peer_s']:.1f} s | {q('pfm')} | {q('peer')} |")
    if "transform" in result:
        out += ["", "**transform against dopri5 at 1e-4**", "", "| field | rows | pfm | dopri5 (rows timed) | "
                "speedup |", "|---|---|---|---|---|"]
        for r in result["transform"]:
            out.append(f"| {r['field']} | {r['rows']:,} | {r['pfm_s']:.2f} s | {r['peer_s']:.2f} s "
                       f"({r['peer_rows_timed']:,}) | {r['speedup']:.2f}x |")
    if "precision" in result:
        out += ["", "**Precision and compile** (ms per step, mean of the second half)", "",
                "| field | batch | setting | ms / step | start-up | final loss |", "|---|---|---|---|---|---|"]
        for r in result["precision"]:
            name = r["precision"] + (" + compile" if r["compile"] else "")
            out.append(f"| {r['field']} | {r['batch']} | {name} | {r['step_ms']:.2f} | {r['startup_s']:.1f} s | "
                       f"{r['final_loss']:.4f} |")
    if "ot" in result:
        out += ["", "**One block's coupling on the device**", "", "| batch | exact OT | Sinkhorn | cost: independent "
                "| OT | Sinkhorn |", "|---|---|---|---|---|---|"]
        for r in result["ot"]:
            out.append(f"| {r['batch']} | {r['ot_ms']:.1f} ms | {r['sinkhorn_ms']:.1f} ms | "
                       f"{r['independent_cost']:.3f} | {r['ot_cost']:.3f} | {r['sinkhorn_cost']:.3f} |")
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--out", default="results/bench-cuda.json")
    parser.add_argument("--peer-seconds", type=float, default=30.0,
                        help="most seconds the peer trains in one case (default 30)")
    parser.add_argument("--report", action="store_true", help="only print the tables of --out")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.report:
        print(tables(json.loads(out.read_text())))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
                              "date": datetime.date.today().isoformat(), "quick": args.quick, "seconds": {}}
    start = time.perf_counter()
    for name in args.parts:
        print(f"{name}:", flush=True)
        t = time.perf_counter()
        result[name] = PARTS[name](device, args.quick, args)
        result["seconds"][name] = time.perf_counter() - t
        result["seconds_total"] = time.perf_counter() - start
        out.write_text(json.dumps(result, indent=1))  # after every part: a run cut short keeps what it measured
    print()
    print(tables(result))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
