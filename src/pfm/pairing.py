"""Couplings solved ahead of training, in background threads, and kept for the run or for a few epochs.

Exact OT of a 256 x 256 batch of 2-d points takes about 12 ms on one CPU core (scipy), several times a small field's
training step. A coupling depends on the data only, never on the network, so it need not sit on the step's path:

* a *plan* gives every row ``i`` of the data set a partner ``partner[i]``: the rows are split, in a random order,
  into blocks of ``batch_size`` (the last one smaller), and each block is coupled on its own with
  :func:`pfm.coupling.couple`, exactly as minibatch OT couples a batch;
* the first epoch of a plan visits the rows in the plan's own order, so its step ``j`` trains on block ``j`` with that
  block's coupling: minibatch OT as usual. With ``recouple_every = K`` the next ``K - 1`` epochs visit the rows in
  fresh random orders but keep the plan's partners; then a new plan is drawn. ``K = 1`` is minibatch OT on a fresh
  partition every epoch (the paper's and torchcfm's scheme); ``K = None`` keeps one plan for the whole run;
* background threads solve the blocks ahead of the steps that need them, at most one plan ahead, so the solves run
  beside the optimizer step instead of before it (scipy's solver releases the GIL). There is one thread for each core
  the process may run on but one (the training loop's), at least one: a 2-core machine has one, a 16-core GPU host
  fifteen (:func:`pairing_workers`);
* the training loop never waits long for those threads. When it needs a block nobody has started, it solves it
  itself; when the threads hold every block it needs, it first solves the next block nobody has started (it will need
  that one soon), and a block a thread has held for longer than twice a block's solve time (a thread starved of CPU by
  other processes) it solves itself as well, whatever the thread is doing with it. The first result is kept. A
  thread runs at the process's priority while it solves the plan the loop is on, and at the lowest once it works
  ahead on the next one.

Every block is coupled from its own seed (:func:`pfm.train.order.mix_seed` of the seed, the plan and the block), with one
torch thread whoever solves it, so who solves it, and when, changes nothing: a run is reproducible bit for bit and
resumes exactly, whatever the thread's timing or the machine's load.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from . import validate as V
from .coupling import couple
from .train.order import epoch_order, mix_seed

Rows = Callable[[Tensor], tuple[Tensor, Tensor, Optional[Tensor]]]
"""``rows(index) -> (y0, y1, context)``: the rejected outputs, preferred outputs and contexts of rows ``index``."""

GRACE_S = 0.002
"""Least time the training loop waits for a block a thread is solving, before solving it itself."""
FIRST_WAIT_S = 0.05
"""How long the loop waits for a thread's block before any block's solve time is known."""
GROUP = 8
"""Blocks a thread solves in one call where that gives the same partners (exact OT in sub-blocks)."""


def _lower_priority() -> bool:
    """Give the calling thread the lowest CPU priority (nice 19), for good (an unprivileged process cannot raise it
    again). The thread does so once it solves a plan ahead, which the loop needs only epochs later: then the training
    steps, which a thread solving beside them slows (their OpenMP team has to share the cores), go first. Not before:
    under load a thread at the lowest priority hardly runs, and while it holds the GIL (between scipy calls) neither
    does the training loop."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass
    return True


def pairing_workers() -> int:
    """Background threads that solve couplings: one for each core this process may run on (its CPU affinity, so
    ``taskset`` counts), less the training loop's, at least one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


@dataclass
class _Plan:
    perm: Tensor  # (n,) the partition's row order
    partner: Tensor  # (n,) partner of each row, -1 until its block is solved
    claimed: dict[int, float] = field(default_factory=dict)  # block -> when its first solver started it
    by_loop: set[int] = field(default_factory=set)  # blocks the training loop solves (or solved) itself
    done: set[int] = field(default_factory=set)  # blocks whose partners are in ``partner``
    starts: dict[int, int] = field(default_factory=dict)  # first row of a block -> the block's number
    block_of: Optional[Tensor] = None  # (n,) block of each row, made when first needed


class PairingPlan:
    """Partners for every row, solved block by block in background threads, ahead of the training steps.

    Args:
        rows: ``rows(index)`` returns ``(y0, y1, context)`` for the int64 rows ``index`` (on any device).
        n: number of rows.
        batch_size: block size, the training batch size (``min(batch_size, n)``).
        method: the coupling, ``ot`` or ``sinkhorn`` (see :func:`pfm.coupling.couple`).
        recouple_every: epochs a plan is kept (``None``: the whole run).
        seed: seeds the plans' partitions and the couplings' random draws.
        workers: background threads that solve blocks (default :func:`pairing_workers`: the cores less one).
        **couple_kwargs: passed to :func:`pfm.coupling.couple` (``within_context``, ``context_weight``, ``reg``,
            ``block``).

    Use as a context manager (the threads stop on exit). :meth:`order` is the ``order`` argument of
    :func:`pfm.optimize`; :meth:`partners` gives the partners of a batch's rows. When the training loop gets ahead of
    the threads (a plan's first epoch, when a block's solve takes longer than a step), it solves blocks itself rather
    than wait, so every core solves, and it does not wait long for a block a thread is slow to finish (see the
    module docstring). Every block has its own seed, so who solves it changes nothing.

    ``stats`` counts where the time went: ``wait_s`` (the loop waiting for the threads), ``solve_s`` and ``blocks``
    (the loop's own solves), ``thread_solve_s`` and ``thread_blocks`` (the threads'), and ``taken_over`` (blocks the
    loop solved while a thread held them).
    """

    def __init__(self, rows: Rows, n: int, batch_size: int, *, method: str = "ot",
                 recouple_every: Optional[int] = None, seed: int = 0, workers: Optional[int] = None,
                 **couple_kwargs: Any) -> None:
        V.check_positive_int(n, "n")
        V.check_positive_int(batch_size, "batch_size")
        V.check_positive_int(recouple_every, "recouple_every", allow_none=True)
        V.check_positive_int(workers, "workers", allow_none=True)
        V.check_choice(method, "method", ("ot", "sinkhorn"))
        self.workers = pairing_workers() if workers is None else int(workers)
        sub = couple_kwargs.get("block")
        # Exact OT in sub-blocks draws nothing at random and couples each sub-block alone, so consecutive blocks can
        # be solved in one call, with the same partners: a thread then takes the GIL a few times for GROUP blocks
        # instead of a few dozen times for each (every small torch call takes it; the training loop's steps, made of
        # small calls too, wait for it: one busy pairing thread slowed a small field's step 1.5-2x on 2 cores).
        self._group = GROUP if method == "ot" and sub is not None and batch_size % int(sub) == 0 else 1
        self._rows, self.n, self.batch_size = rows, int(n), min(int(batch_size), int(n))
        self.method, self.every, self.seed, self._kwargs = method, recouple_every, int(seed), couple_kwargs
        self._blocks = -(-self.n // self.batch_size)
        self._cond = threading.Condition()
        self._plans: dict[int, _Plan] = {}
        self._current = 0  # the plan the training loop is on
        self._error: Optional[BaseException] = None
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._solve_time: Optional[float] = None  # shortest solve of a full block so far (s), by anyone
        self.stats = {"wait_s": 0.0, "solve_s": 0.0, "blocks": 0, "thread_solve_s": 0.0, "thread_blocks": 0,
                      "taken_over": 0}
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
        if not self._threads:
            self._threads = [threading.Thread(target=self._run, args=(number,), name=f"pfm-pairing-{k}", daemon=True)
                             for k in range(self.workers)]
            for thread in self._threads:
                thread.start()
        first = epoch == 0 if self.every is None else epoch % self.every == 0
        return plan.perm if first else epoch_order(self.n, epoch, mix_seed(self.seed, 0x0D3))

    def partners(self, index: Tensor) -> Tensor:
        """Partners ``(B,)`` (int64, on the CPU) of the rows ``index`` under the current plan. Missing ones are solved
        here (blocks nobody has started, blocks a thread has held too long) or waited for (briefly)."""
        index = index.cpu()
        while True:
            with self._cond:
                if self._error is not None:
                    raise self._error
                number = self._current
                plan = self._plan(number)
                got = plan.partner[index]
                missing = got < 0
                if not bool(missing.any()):
                    return got.long()
                need = self._blocks_of(plan, index, missing)
                j = next((j for j in need if j not in plan.claimed), None)  # nobody has started it
                if j is None:  # the threads hold them all: solve one it will need soon meanwhile
                    j = self._next_unclaimed(plan, after=need[0])
                if j is None:  # wait for the threads, not long
                    now = time.perf_counter()
                    held = [k for k in need if k not in plan.by_loop]
                    alive = any(thread.is_alive() for thread in self._threads)
                    late = [k for k in held if not alive or now >= plan.claimed[k] + self._patience(self._group)]
                    if late:
                        j = late[0]
                        self.stats["taken_over"] += 1
                    else:
                        deadline = min(plan.claimed[k] for k in held) + self._patience(self._group)
                        self._cond.wait(timeout=max(deadline - now, 1e-4))
                        self.stats["wait_s"] += time.perf_counter() - now
                        continue
                plan.claimed.setdefault(j, time.perf_counter())
                plan.by_loop.add(j)
            self._solve_blocks(number, plan, [j], here=True)

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

    def _block(self, plan: _Plan, j: int) -> Tensor:
        return plan.perm[j * self.batch_size:(j + 1) * self.batch_size]

    def _blocks_of(self, plan: _Plan, index: Tensor, missing: Tensor) -> list[int]:
        """The blocks of the rows ``index[missing]``, in increasing order (call with the lock held)."""
        j = plan.starts.get(int(index[0]))
        if j is not None and torch.equal(index, self._block(plan, j)):  # a plan's first epoch: a batch is a block
            return [j]
        if plan.block_of is None:
            plan.block_of = torch.empty(self.n, dtype=self._dtype)
            plan.block_of[plan.perm] = (torch.arange(self.n) // self.batch_size).to(self._dtype)
        return torch.unique(plan.block_of[index[missing]]).tolist()

    def _next_unclaimed(self, plan: _Plan, after: int) -> Optional[int]:
        """The first block after ``after`` (in the plan's order, wrapping round) that nobody has started and that the
        loop will need under this plan: a plan kept one epoch never visits the rows of its last, partial block."""
        full = self.n // self.batch_size if self.every == 1 else self._blocks
        for k in range(1, full + 1):
            j = (after + k) % self._blocks
            if j < full and j not in plan.claimed:
                return j
        return None

    def _patience(self, blocks: int = 1) -> float:
        """How long after a thread started ``blocks`` blocks the loop waits for them (call with the lock held)."""
        if self._solve_time is None:
            return FIRST_WAIT_S
        return 2.0 * self._solve_time * blocks + GRACE_S

    def _solve_blocks(self, number: int, plan: _Plan, js: list[int], here: bool = False) -> None:
        """Solve the consecutive blocks ``js`` (more than one only when ``self._group`` allows) and keep their
        partners."""
        rows = plan.perm[js[0] * self.batch_size:(js[-1] + 1) * self.batch_size]
        start = time.perf_counter()
        threads = torch.get_num_threads()
        try:
            if here and threads != 1:  # as in the thread: the same float sums, so the same partners
                torch.set_num_threads(1)
            y0, y1, c = self._rows(rows)
            gen = torch.Generator(device=y0.device).manual_seed(mix_seed(self.seed, number, js[0], 0x5EED))
            i0, i1 = couple(y0, y1, c, self.method, generator=gen, **self._kwargs)
            i0, i1 = i0.cpu(), i1.cpu()
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        took = time.perf_counter() - start
        with self._cond:
            if len(rows) == self.batch_size * len(js):
                each = took / len(js)
                self._solve_time = each if self._solve_time is None else min(self._solve_time, each)
            self.stats["solve_s" if here else "thread_solve_s"] += took
            self.stats["blocks" if here else "thread_blocks"] += len(js)
            partner = rows[i1].to(self._dtype)
            for k, j in enumerate(js):
                if j not in plan.done:  # the first result is kept (a second one, of the same seed, is the same)
                    part = slice(k * self.batch_size, (k + 1) * self.batch_size)
                    plan.partner[rows[i0[part]]] = partner[part]
                    plan.done.add(j)
            self._cond.notify_all()

    def _run(self, number: int) -> None:
        # One intra-op thread here: a second thread whose torch ops open their own OpenMP team slowed the training
        # thread's steps threefold on 2 cores, even while this one sat idle. (The setting is per thread.) The
        # process's priority while it solves the plan the loop is on, the lowest once it works ahead (see
        # _lower_priority).
        torch.set_num_threads(1)
        ahead = False
        try:
            while True:
                with self._cond:
                    while not self._stop and number > self._current + 1:  # at most one plan ahead
                        self._cond.wait()
                    if self._stop or (self.every is None and number > 0):
                        return
                    number = max(number, self._current)
                    plan = self._plan(number)
                j = 0
                while j < self._blocks:
                    with self._cond:
                        if self._stop or number < self._current:  # stopped, or the loop moved past this plan
                            break
                        if j in plan.claimed:
                            j += 1
                            continue
                        js = [j]  # and the unclaimed blocks after it, up to a group
                        while len(js) < self._group and js[-1] + 1 < self._blocks and js[-1] + 1 not in plan.claimed:
                            js.append(js[-1] + 1)
                        now = time.perf_counter()
                        for k in js:
                            plan.claimed[k] = now
                        if not ahead and number > self._current:
                            ahead = _lower_priority()
                    self._solve_blocks(number, plan, js)
                    j = js[-1] + 1
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
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> "PairingPlan":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
