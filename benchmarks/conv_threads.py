"""Why a convolutional net keeps the size rule's thread count (issue 51): what a count-invariant convolution
backward would cost.

A ``ThreadTuner`` may switch a training run between 1 and k intra-op threads only when the results are the same on
both. For a convolution, torch 2.13's oneDNN kernels give the same output and input gradient on 1 and 2 threads but
not the same weight and bias gradients (sums over the batch and the pixels, split by thread): part 1 measures this
per layer shape. The one way around it that keeps oneDNN's kernels: compute each fixed slice of the batch's weight
gradient on one thread (slices in a thread pool), and add the slices in a fixed order, which is the same on any
count ("pooled"; a ``TorchDispatchMode`` around ``backward`` routes ``aten.convolution_backward`` through it). Part
2 trains pfm's ``UNetField`` and a small classifier CNN a few Adam steps each way, on 1 and 2 threads, idle and
beside one busy process (``bench.Competitors``), and records the median step time and whether the weights after the
steps are bit-identical on 1 and 2 threads. Part 3 repeats part 2's idle runs in a child process with
``GOMP_SPINCOUNT=0`` (libgomp's idle team threads then sleep at once instead of spinning on the core the pool's
worker needs). The pooled UNet still differs between counts through its group norms' weight and bias
gradients (from the third step).

    python benchmarks/conv_threads.py [--steps 12] [--out results/conv-threads.json]

Prints a Markdown table and writes ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from bench import Competitors, machine_info  # benchmarks/ is the script's directory
from pfm.fields import UNetField
from pfm.path import count_invariant_mean
from pfm.io import atomic_file

aten = torch.ops.aten
SLICES = 4
"""Fixed batch slices of the pooled weight gradient (the same on any thread count)."""


class PooledWeightGradients(TorchDispatchMode):
    """Inside the block, every CPU ``aten.convolution_backward`` that asks for a weight or bias gradient computes
    it per :data:`SLICES` slice of the batch on one thread each (a pool of ``torch.get_num_threads()`` workers) and
    adds the slices in order; the input gradient is oneDNN's on the full batch (already count-invariant)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool: Optional[ThreadPoolExecutor] = None
        self.workers = 0

    def _pool(self, k: int) -> ThreadPoolExecutor:
        if self.pool is None or self.workers != k:
            if self.pool is not None:
                self.pool.shutdown()
            self.pool = ThreadPoolExecutor(k, initializer=torch.set_num_threads, initargs=(1,))
            self.workers = k
        return self.pool

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is not aten.convolution_backward.default:
            return func(*args, **kwargs)
        go, x, w, bias_sizes, stride, padding, dilation, transposed, out_pad, groups, mask = args
        if not (mask[1] or mask[2]) or go.device.type != "cpu":
            return func(*args, **kwargs)
        rest = (bias_sizes, stride, padding, dilation, transposed, out_pad, groups)
        gi = func(go, x, w, *rest, [mask[0], False, False])[0] if mask[0] else None
        size = -(-go.shape[0] // SLICES)
        parts = [(go[i:i + size], x[i:i + size]) for i in range(0, go.shape[0], size)]

        def one(part: tuple[Tensor, Tensor]) -> Any:
            with torch.no_grad():
                return func(part[0], part[1], w, *rest, [False, mask[1], mask[2]])

        k = torch.get_num_threads()
        res = [one(p) for p in parts] if k == 1 else list(self._pool(k).map(one, parts))
        grads = [None, None]
        for j in (1, 2):
            if mask[j]:
                total = res[0][j]
                for r in res[1:]:
                    total = total + r[j]
                grads[j - 1] = total
        return gi, grads[0], grads[1]


def per_layer(shapes: list[tuple[int, ...]]) -> list[dict[str, Any]]:
    """For each (N, C_in, C_out, H, k): whether conv2d's output and its three gradients are bit-identical on 1 and 2
    threads."""
    rows = []
    g = torch.Generator().manual_seed(0)
    for n, c, o, h, k in shapes:
        x = torch.randn(n, c, h, h, generator=g, requires_grad=True)
        w = torch.randn(o, c, k, k, generator=g, requires_grad=True)
        b = torch.randn(o, generator=g, requires_grad=True)
        go = torch.randn(n, o, h, h, generator=g)
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            y = F.conv2d(x, w, b, padding=k // 2)
            outs.append([y.detach(), *torch.autograd.grad(y, (x, w, b), go)])
        same = [torch.equal(a, b_) for a, b_ in zip(*outs)]
        rows.append(dict(shape=[n, c, o, h, k], output=same[0], grad_input=same[1], grad_weight=same[2],
                         grad_bias=same[3]))
    return rows


class SmallCNN(nn.Module):
    """A classifier of 28 x 28 images, the size of the images experiment's reward encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(32 * 7 * 7, 128), nn.SiLU(), nn.Linear(128, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], str]] = {
    "unet 1x28x28 b64": (lambda: UNetField((1, 28, 28)), (64, 1, 28, 28), "flow"),
    "cnn 1x28x28 b128": (SmallCNN, (128, 1, 28, 28), "classify"),
}


def train(name: str, steps: int, threads: int, pooled: bool) -> tuple[list[Tensor], float]:
    """``steps`` Adam steps of model ``name`` on ``threads`` threads: its weights and the median step seconds
    (the first two steps left out)."""
    make, shape, kind = MODELS[name]
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(1)
    mode = PooledWeightGradients() if pooled else None
    torch.set_num_threads(threads)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        x = torch.randn(*shape, generator=g)
        if kind == "flow":
            loss = count_invariant_mean((model(torch.rand(shape[0], generator=g), x) - x) ** 2)
        else:
            loss = F.cross_entropy(model(x), torch.randint(0, 10, (shape[0],), generator=g))
        opt.zero_grad()
        if mode is not None:
            with mode:
                loss.backward()
        else:
            loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    if mode is not None and mode.pool is not None:
        mode.pool.shutdown()
    return [p.detach().clone() for p in model.parameters()], statistics.median(times[2:])


def steps_table(steps: int, busy: bool) -> list[dict[str, Any]]:
    rows = []
    for name in MODELS:
        for pooled in (False, True):
            weights, row = {}, dict(model=name, backward="pooled" if pooled else "oneDNN")
            for threads in (1, 2):
                weights[threads], row[f"idle_ms_{threads}"] = train(name, steps, threads, pooled)
                if busy:
                    with Competitors(1):
                        _, row[f"busy_ms_{threads}"] = train(name, steps, threads, pooled)
            row["same_weights_1_2"] = all(torch.equal(a, b) for a, b in zip(weights[1], weights[2]))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    for row in rows:
        for k in list(row):
            if k.endswith(("_1", "_2")) and "ms" in k:
                row[k] = round(row[k] * 1e3, 1)
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--out", default="results/conv-threads.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:  # part 3: idle steps under the child's environment
        json.dump(steps_table(a.steps, busy=False), sys.stdout)
        return
    t0 = time.time()
    layers = per_layer([(64, 1, 32, 28, 3), (64, 32, 32, 28, 3), (128, 32, 64, 14, 3), (64, 32, 1, 28, 3),
                        (64, 64, 64, 7, 3)])
    table = steps_table(a.steps, busy=True)
    env = dict(os.environ, GOMP_SPINCOUNT="0")
    child = subprocess.run([sys.executable, __file__, "--child", "--steps", str(a.steps)], env=env, check=True,
                           capture_output=True, text=True)
    spin0 = json.loads(child.stdout)
    result = dict(command="python benchmarks/conv_threads.py" + (f" --steps {a.steps}" if a.steps != 12 else ""),
                  machine=machine_info(), torch=torch.__version__, steps=a.steps, slices=SLICES,
                  per_layer=layers, steps_table=table, idle_gomp_spincount_0=spin0,
                  seconds=round(time.time() - t0, 1))
    with atomic_file(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print("| layer (N, C_in, C_out, H, k) | output | grad input | grad weight | grad bias |\n|---|---|---|---|---|")
    for r in layers:
        print(f"| {tuple(r['shape'])} | {r['output']} | {r['grad_input']} | {r['grad_weight']} | {r['grad_bias']} |")
    print("\n| model | weight gradients | idle 1 / 2 threads (ms) | busy 1 / 2 threads (ms) | same weights 1, 2 "
          "| idle, GOMP_SPINCOUNT=0: 1 / 2 |\n|---|---|---|---|---|---|")
    for r, s in zip(table, spin0):
        print(f"| {r['model']} | {r['backward']} | {r['idle_ms_1']} / {r['idle_ms_2']} | {r['busy_ms_1']} / "
              f"{r['busy_ms_2']} | {r['same_weights_1_2']} | {s['idle_ms_1']} / {s['idle_ms_2']} |")
    print(f"\n{result['seconds']} s; wrote {a.out}")


if __name__ == "__main__":
    main()
