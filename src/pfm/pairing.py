"""Couplings solved ahead of training, in a background thread, and kept for the run or for a few epochs.

Exact OT of a 256 x 256 batch of 2-d points takes about 12 ms on one CPU core (scipy), several times a small field's
training step. A coupling depends on the data only, never on the network, so it need not sit on the step's path:

* a *plan* gives every row ``i`` of the data set a partner ``partner[i]``: the rows are split, in a random order,
  into blocks of ``batch_size`` (the last one smaller), and each block is coupled on its own with
  :func:`pfm.coupling.couple`, exactly as minibatch OT couples a batch;
* the first epoch of a plan visits the rows in the plan's own order, so its step ``j`` trains on block ``j`` with that
  block's coupling: minibatch OT as usual. With ``recouple_every = K`` the next ``K - 1`` epochs visit the rows in
  fresh random orders but keep the plan's partners; then a new plan is drawn. ``K = 1`` is minibatch OT on a fresh
  partition every epoch (the paper's and torchcfm's scheme); ``K = None`` keeps one plan for the whole run;
* a background thread solves the blocks ahead of the steps that need them, at most one plan ahead, so on two cores
  the solve runs beside the optimizer step instead of before it (scipy's solver releases the GIL).

Every plan is a function of the seed and its number, so a run is reproducible and resumes exactly, whatever the
thread's timing.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from . import _validate as V
from .coupling import couple
from .train import epoch_order, mix_seed

Rows = Callable[[Tensor], tuple[Tensor, Tensor, Optional[Tensor]]]
"""``rows(index) -> (y0, y1, context)``: the rejected outputs, preferred outputs and contexts of rows ``index``."""


@dataclass
class _Plan:
    perm: Tensor  # (n,) the partition's row order
    partner: Tensor  # (n,) partner of each row, -1 until its block is solved
    claimed: set[int] = field(default_factory=set)  # blocks being solved or solved
    starts: dict[int, int] = field(default_factory=dict)  # first row of a block -> the block's number


class PairingPlan:
    """Partners for every row, solved block by block in a background thread, ahead of the training steps.

    Args:
        rows: ``rows(index)`` returns ``(y0, y1, context)`` for the int64 rows ``index`` (on any device).
        n: number of rows.
        batch_size: block size, the training batch size (``min(batch_size, n)``).
        method: the coupling, ``ot`` or ``sinkhorn`` (see :func:`pfm.coupling.couple`).
        recouple_every: epochs a plan is kept (``None``: the whole run).
        seed: seeds the plans' partitions and the couplings' random draws.
        **couple_kwargs: passed to :func:`pfm.coupling.couple` (``within_context``, ``context_weight``, ``reg``).

    Use as a context manager (the thread stops on exit). :meth:`order` is the ``order`` argument of
    :func:`pfm.optimize`; :meth:`partners` gives the partners of a batch's rows. When the training loop gets ahead of
    the thread (a plan's first epoch, when a block's solve takes longer than a step), it solves the block it needs
    itself rather than wait, so both cores solve. Every block has its own seed, so who solves it changes nothing.
    """

    def __init__(self, rows: Rows, n: int, batch_size: int, *, method: str = "ot",
                 recouple_every: Optional[int] = None, seed: int = 0, **couple_kwargs: Any) -> None:
        V.check_positive_int(n, "n")
        V.check_positive_int(batch_size, "batch_size")
        V.check_positive_int(recouple_every, "recouple_every", allow_none=True)
        V.check_choice(method, "method", ("ot", "sinkhorn"))
        self._rows, self.n, self.batch_size = rows, int(n), min(int(batch_size), int(n))
        self.method, self.every, self.seed, self._kwargs = method, recouple_every, int(seed), couple_kwargs
        self._cond = threading.Condition()
        self._plans: dict[int, _Plan] = {}
        self._current = 0  # the plan the training loop is on
        self._error: Optional[BaseException] = None
        self._stop = False
        self._thread: Optional[threading.Thread] = None
        # int32 partners below 2^31 rows: half the memory (10^7 rows: 40 MB a plan, two plans at most)
        self._dtype = torch.int32 if self.n < 2**31 else torch.int64

    # ------------------------------------------------------------------------------------------ training side
    def plan_of(self, epoch: int) -> int:
        return 0 if self.every is None else epoch // self.every

    def partition(self, plan: int) -> Tensor:
        """The row order of ``plan``, whose consecutive ``batch_size`` blocks are coupled; ``(n,)``."""
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(mix_seed(self.seed, plan, 0x9A1)))

    def order(self, epoch: int) -> Tensor:
        """Rows to visit in ``epoch``: the plan's partition in its first epoch, else a fresh random order."""
        number = self.plan_of(epoch)
        with self._cond:
            self._current = number
            for p in [p for p in self._plans if p < number]:
                del self._plans[p]
            plan = self._plan(number)
            self._cond.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, args=(number,), name="pfm-pairing", daemon=True)
            self._thread.start()
        first = epoch == 0 if self.every is None else epoch % self.every == 0
        return plan.perm if first else epoch_order(self.n, epoch, mix_seed(self.seed, 0x0D3))

    def partners(self, index: Tensor) -> Tensor:
        """Partners ``(B,)`` (int64, on the CPU) of the rows ``index`` under the current plan; solves the block they
        form (in a plan's first epoch) if the thread has not started it, else waits for it."""
        index = index.cpu()
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                number = self._current
                plan = self._plan(number)
                got = plan.partner[index]
                if bool((got >= 0).all()):
                    return got.long()
                j = plan.starts.get(int(index[0]))
                if j is not None and j not in plan.claimed:
                    plan.claimed.add(j)
                    break
                if self._thread is None or not self._thread.is_alive():
                    raise RuntimeError("the pairing thread stopped before solving the plan")
                self._cond.wait(timeout=1.0)
        self._solve_block(number, plan, j)
        return self.partners(index)

    # ------------------------------------------------------------------------------------------ solving
    def _plan(self, number: int) -> _Plan:
        """The plan ``number``, created if need be (call with the lock held)."""
        plan = self._plans.get(number)
        if plan is None:
            perm = self.partition(number)
            plan = _Plan(perm, torch.full((self.n,), -1, dtype=self._dtype))
            plan.starts = {int(r): j for j, r in enumerate(perm[::self.batch_size].tolist())}
            self._plans[number] = plan
        return plan

    def _solve_block(self, number: int, plan: _Plan, j: int) -> None:
        block = plan.perm[j * self.batch_size:(j + 1) * self.batch_size]
        y0, y1, c = self._rows(block)
        gen = torch.Generator(device=y0.device).manual_seed(mix_seed(self.seed, number, j, 0x5EED))
        i0, i1 = couple(y0, y1, c, self.method, generator=gen, **self._kwargs)
        i0, i1 = i0.cpu(), i1.cpu()
        with self._cond:
            plan.partner[block[i0]] = block[i1].to(self._dtype)
            self._cond.notify_all()

    def _run(self, number: int) -> None:
        # One intra-op thread here: a second thread whose torch ops open their own OpenMP team slowed the training
        # thread's steps threefold on 2 cores, even while this one sat idle. (The setting is per thread.) And a low
        # priority, so that the training loop's threads go first when both want a core.
        torch.set_num_threads(1)
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        blocks = -(-self.n // self.batch_size)
        try:
            while True:
                with self._cond:
                    while not self._stop and number > self._current + 1:  # at most one plan ahead
                        self._cond.wait()
                    if self._stop or (self.every is None and number > 0):
                        return
                    number = max(number, self._current)
                    plan = self._plan(number)
                for j in range(blocks):
                    with self._cond:
                        if self._stop or number < self._current:  # stopped, or the loop moved past this plan
                            break
                        if j in plan.claimed:
                            continue
                        plan.claimed.add(j)
                    self._solve_block(number, plan, j)
                number += 1
        except BaseException as exc:  # handed to the training loop, which raises it
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    # ------------------------------------------------------------------------------------------ lifetime
    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> "PairingPlan":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

