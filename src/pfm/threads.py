"""How many torch intra-op threads a training step runs on."""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import Tensor

SMALL_STEP = 2**24
"""Parameters x batch below which a CPU step runs on one intra-op thread by default. Measured on 2 cores (torch
2.13, Adam steps of MLP fields): below it a second thread gained 6-8% (2-D and 64-d 3x128 MLPs at batch 256), above
it 30-90%; and with another process on the cores, every op on a 2-thread team waits for its second thread to get a
core, which made the 2-D batch-256 step 3-4x slower, against none at one thread (``benchmarks/bench.py --parts
load``)."""


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
