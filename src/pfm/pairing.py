"""Couplings solved ahead of training, in a background thread, and reused for a few epochs.

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
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from . import _validate as V
from .coupling import couple
from .train import epoch_order, mix_seed

Rows = Callable[[Tensor], tuple[Tensor, Tensor, Optional[Tensor]]]
"""``rows(index) -> (y0, y1, context)``: the rejected outputs, preferred outputs and contexts of rows ``index``."""


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
    :func:`pfm.optimize`; :meth:`partners` gives the partners of a batch's rows, waiting for them if need be.
    """

    def __init__(self, rows: Rows, n: int, batch_size: int, *, method: str = "ot",
                 recouple_every: Optional[int] = 1, seed: int = 0, **couple_kwargs: Any) -> None:
        V.check_positive_int(n, "n")
        V.check_positive_int(batch_size, "batch_size")
        V.check_positive_int(recouple_every, "recouple_every", allow_none=True)
        V.check_choice(method, "method", ("ot", "sinkhorn"))
        self._rows, self.n, self.batch_size = rows, int(n), min(int(batch_size), int(n))
        self.method, self.every, self.seed, self._kwargs = method, recouple_every, int(seed), couple_kwargs
        self._cond = threading.Condition()
        self._plans: dict[int, Tensor] = {}  # plan number -> partner (n,), -1 where not solved yet
        self._current = 0  # the plan the training loop is on
        self._error: Optional[BaseException] = None
        self._stop = False
        self._thread: Optional[threading.Thread] = None
        self.blocks_solved = 0

    # ------------------------------------------------------------------------------------------ training side
    def plan_of(self, epoch: int) -> int:
        return 0 if self.every is None else epoch // self.every

    def partition(self, plan: int) -> Tensor:
        """The row order of ``plan``, whose consecutive ``batch_size`` blocks are coupled; ``(n,)``."""
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(mix_seed(self.seed, plan, 0x9A1)))

    def order(self, epoch: int) -> Tensor:
        """Rows to visit in ``epoch``: the plan's partition in its first epoch, else a fresh random order."""
        plan = self.plan_of(epoch)
        with self._cond:
            self._current = plan
            for p in [p for p in self._plans if p < plan]:
                del self._plans[p]
            self._cond.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._solve, args=(plan,), name="pfm-pairing", daemon=True)
            self._thread.start()
        first = epoch == 0 if self.every is None else epoch % self.every == 0
        return self.partition(plan) if first else epoch_order(self.n, epoch, mix_seed(self.seed, 0x0D3))

    def partners(self, index: Tensor) -> Tensor:
        """Partners ``(B,)`` (int64, on the CPU) of the rows ``index`` under the current plan; blocks until solved."""
        index = index.cpu()
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                partner = self._plans.get(self._current)
                if partner is not None:
                    got = partner[index]
                    if bool((got >= 0).all()):
                        return got
                if self._thread is None or not self._thread.is_alive():
                    raise RuntimeError("the pairing thread stopped before solving the plan")
                self._cond.wait(timeout=1.0)

    # ------------------------------------------------------------------------------------------ solver thread
    def _solve(self, plan: int) -> None:
        # One intra-op thread here: a second thread whose torch ops open their own OpenMP team slowed the training
        # thread's steps threefold on 2 cores, even while this one sat idle. (The setting is per thread.)
        torch.set_num_threads(1)
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        try:
            while True:
                with self._cond:
                    while not self._stop and plan > self._current + 1:  # at most one plan ahead
                        self._cond.wait()
                    if self._stop or (self.every is None and plan > 0):
                        return
                    plan = max(plan, self._current)
                    partner = torch.full((self.n,), -1, dtype=torch.int64)
                    self._plans[plan] = partner
                perm = self.partition(plan)
                gen = None
                for start in range(0, self.n, self.batch_size):
                    with self._cond:
                        if self._stop or plan < self._current:  # stopped, or the loop moved past this plan
                            break
                    block = perm[start:start + self.batch_size]
                    y0, y1, c = self._rows(block)
                    if gen is None:
                        gen = torch.Generator(device=y0.device).manual_seed(mix_seed(self.seed, plan, 0x5EED))
                    i0, i1 = couple(y0, y1, c, self.method, generator=gen, **self._kwargs)
                    i0, i1 = i0.cpu(), i1.cpu()
                    with self._cond:
                        partner[block[i0]] = block[i1]
                        self.blocks_solved += 1
                        self._cond.notify_all()
                plan += 1
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

