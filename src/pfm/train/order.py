"""The order in which a training run visits its rows: a function of the seed and the epoch alone, so that an
epoch's order can be computed ahead (to solve its couplings early, :mod:`pfm.pairing`) or again (on resume)."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from .. import validate as V
from ..errors import InvalidInputError

Order = Callable[[int], Tensor]
"""``order(epoch) -> (rows,)`` int64: the rows visited in ``epoch``, in turn."""


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (e.g. a run's seed and an epoch), decorrelated from its neighbours."""
    import numpy as np

    words = [int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def epoch_order(n: int, epoch: int, seed: int) -> Tensor:
    """The order in which one process visits the ``n`` rows in ``epoch``: a permutation ``(n,)`` that depends on
    ``(seed, epoch)`` only."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))


def resolve_steps(steps: Optional[int], epochs: Optional[float], n: int, batch_size: int, default: int) -> int:
    """Number of optimizer steps from ``steps`` or ``epochs`` (one epoch = ceil(n / batch_size) steps)."""
    if steps is not None and epochs is not None:
        raise InvalidInputError("give steps or epochs, not both")
    if epochs is not None:
        V.check_nonneg_float(epochs, "epochs")
        if epochs <= 0:
            raise InvalidInputError(f"epochs must be > 0, got {epochs!r}")
        return max(1, math.ceil(float(epochs) * math.ceil(n / batch_size)))
    if steps is None:
        return default
    V.check_positive_int(steps, "steps")
    return int(steps)


def run_order(n: int, seed: int, rank: int, world: int, order: Optional[Order]) -> tuple[Order, int]:
    """``(order, rows per epoch)`` of this process: ``order`` (default :func:`epoch_order`) on one process; under
    ``torch.distributed``, this rank's disjoint part of every epoch, from a ``DistributedSampler``."""
    if world == 1:
        return (order or (lambda e: epoch_order(n, e, seed))), n
    if order is not None:
        raise InvalidInputError("a custom order is not supported under torch.distributed")
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                 drop_last=n >= world)

    def distributed(e: int) -> Tensor:
        sampler.set_epoch(e)
        return torch.tensor(list(iter(sampler)), dtype=torch.int64)

    return distributed, len(sampler)
