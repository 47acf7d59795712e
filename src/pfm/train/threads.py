"""How many torch intra-op threads a training step runs on, and the BLAS setting that keeps matrix products
independent of that count."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence

import torch
from torch import Tensor

BLAS_REPRODUCIBILITY = "AUTO,STRICT"
"""What :func:`reproducible_blas` sets ``MKL_CBWR`` to: MKL's strict conditional numerical reproducibility, the
fastest code path for this CPU (``AUTO``) but a matrix product's result the same whatever the number of threads it
runs on (``STRICT``). Without it MKL splits a product's work by the thread count in ways that change its rounding
on some CPUs: on AVX2 machines (AMD Zen 3, or MKL_ENABLE_INSTRUCTIONS=AVX2 on an AVX-512 Xeon) pi_ref of the
control experiment trained on 1 and on 2 threads came out other weights, and the pairs drawn from it differed by a
relative 4e-6 (issue 50); a 256 x 2000 x 256 product differs between 1 and 2 threads even on the AVX-512 path. With
it both are bit-identical. The cost, an Adam step of a 105-256-256-16 MLP at batch 256 on one thread, two runs
each: 2.13-2.18 ms against 2.19-2.28 ms (about 4 %) on the AVX-512 path, 2.74 ms both on the AVX2 path (2026-12-07,
a 2-core Xeon, Sapphire Rapids)."""

SMALL_STEP = 2**24
"""Parameters x batch below which a CPU step runs on one intra-op thread by default. Measured on 2 cores (torch
2.13, Adam steps of MLP fields): below it a second thread gained 6-8% (2-D and 64-d 3x128 MLPs at batch 256), above
it 30-90%; and with another process on the cores, every op on a 2-thread team waits for its second thread to get a
core, which made the 2-D batch-256 step 3-4x slower, against none at one thread (``benchmarks/bench.py --parts
load``)."""


def reproducible_blas() -> bool:
    """Ask MKL for results that do not depend on the thread count (:data:`BLAS_REPRODUCIBILITY`), unless the user
    set ``MKL_CBWR`` already (then theirs stands). ``import pfm`` calls it. MKL reads the setting at the process's
    first matrix product, so it takes effect only when none ran before ``import pfm``; ``MKL_CBWR=AUTO,STRICT`` in
    the environment does the same for any order. Returns whether ``MKL_CBWR`` is now this setting."""
    if "MKL_CBWR" in os.environ:
        return os.environ["MKL_CBWR"] == BLAS_REPRODUCIBILITY
    os.environ["MKL_CBWR"] = BLAS_REPRODUCIBILITY
    return True


def step_threads(params: Sequence[Tensor], batch_size: int, device: torch.device) -> int:
    """The intra-op threads :func:`pfm.optimize` trains on by default: one for a small step on the CPU (see
    :data:`SMALL_STEP`), else torch's current setting."""
    current = torch.get_num_threads()
    if device.type != "cpu" or current == 1:
        return current
    work = sum(p.numel() for p in params) * int(batch_size)
    return 1 if work < SMALL_STEP else current


@contextlib.contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """Run the block on ``threads`` torch intra-op threads (a per-thread setting), restoring the old count."""
    outer = torch.get_num_threads()
    if threads != outer:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != outer:
            torch.set_num_threads(outer)
