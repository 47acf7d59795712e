"""How many torch intra-op threads a training step (:class:`ThreadTuner`), a solve's field evaluations
(:class:`TunedCalls`) and other repeated calls (:class:`CheckedCalls`: a sentence encoder's batches, a language
model's sampling steps) run on, and the BLAS setting that keeps matrix products independent of that count."""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
from collections import deque
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

log = logging.getLogger("pfm")

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


THREAD_INVARIANT = (nn.Linear, nn.Embedding)
"""The modules with parameters whose results do not depend on the intra-op thread count (with
:func:`reproducible_blas`): fits of MLP fields on 1 and on 2 threads gave bit-identical weights (64-d, 784-d, 2-d
with labels; both MKL paths), a UNet's convolutions and group norms did not. :class:`ThreadTuner` adapts only the
runs of modules built from these, so that which count it picks never changes a result."""


SPLIT_REDUCTIONS = ("convolution_backward", "native_group_norm_backward", "native_batch_norm_backward")
"""Backward ops whose weight and bias gradients (asked for by their ``output_mask``) are sums over the batch that
torch and oneDNN split by thread: a UNet trained 12 steps on 1 and on 2 threads ended with other weights (1 x 16 x
16 at batch 64, 1 x 28 x 28 at 50, 3 x 8 x 8 at 37), after one step through its output convolution's weight and
bias gradients alone, and with those computed in a fixed order (``benchmarks/conv_threads.py``), through its group
norms' from the third step. One batch can agree by chance (that UNet's did under a squared-output loss, and not
under the flow-matching loss), so a first-batch check (``optimize(invariant_loss="check")``) that runs one of them
for a weight or bias gradient never tunes (:class:`SplitReductions`). Their input gradients are not sums over the
batch (the same on 1 and 2 threads at every shape measured): a frozen convolutional reward model that RLHF
differentiates through, or a convolutional encoder the loss never calls, does not stop the tuner."""


class SplitReductions(TorchDispatchMode):
    """Records the ops of :data:`SPLIT_REDUCTIONS` that compute a weight or bias gradient while the ``with`` block
    runs (a ``TorchDispatchMode``, this thread's backward included): ``found`` lists their names."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in SPLIT_REDUCTIONS and name not in self.found:
            mask = kwargs.get("output_mask", args[-1] if args else None)
            if isinstance(mask, (list, tuple)) and any(mask[1:]):
                self.found.append(name)
        return func(*args, **kwargs)


VECTOR_SPLIT = 32
"""A hidden Linear layer's width must be a multiple of this for :func:`thread_invariant`. torch splits an
elementwise op of ``N`` values into ``ceil(N / threads)``-value chunks and computes each chunk's tail past a
multiple of the vector width with scalar code, whose ``exp`` (SiLU's) may round the last bit otherwise; with rows x
width a multiple of 32, every chunk edge of 2 threads falls on a whole vector (16 floats with AVX-512)."""


def thread_invariant(module: nn.Module) -> bool:
    """Whether every submodule of ``module`` that holds parameters of its own is one of :data:`THREAD_INVARIANT`,
    and every Linear layer but the last is :data:`VECTOR_SPLIT`-aligned (the activations act on their outputs)."""
    if not all(isinstance(m, THREAD_INVARIANT) for m in module.modules() if any(True for _ in m.parameters(False))):
        return False
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return all(m.out_features % VECTOR_SPLIT == 0 for m in linears[:-1])


def same_on_counts(compute: Callable[[], Sequence[Tensor]], threads: int,
                   generators: Sequence[torch.Generator] = ()) -> bool:
    """Whether ``compute()`` (e.g. a batch's loss and gradients) gives bit-identical tensors on one intra-op thread and
    on ``threads``, each run from the same state of torch's global generator and of ``generators`` (restored
    afterwards). How a training loop whose module or loss may depend on the count finds out, before it lets a
    :class:`ThreadTuner` switch counts (``optimize(invariant_loss="check")``; the text decoder's GRU language model)."""
    states = [g.get_state() for g in generators]
    global_state = torch.get_rng_state()
    try:
        return run_on_both(lambda: [t.detach() for t in compute()], threads, generators)[0]
    finally:
        for g, state in zip(generators, states):
            g.set_state(state)
        torch.set_rng_state(global_state)


def _tensors(result: Any) -> list[Any]:
    """The tensors (and other leaves) of a call's result, nested tuples, lists and dicts flattened in order."""
    if isinstance(result, (tuple, list)):
        return [x for r in result for x in _tensors(r)]
    if isinstance(result, dict):
        return [x for k in sorted(result, key=str) for x in _tensors(result[k])]
    return [result]


def _identical(a: Any, b: Any) -> bool:
    ta, tb = _tensors(a), _tensors(b)
    if len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb):
        if isinstance(x, Tensor) or isinstance(y, Tensor):
            if not (isinstance(x, Tensor) and isinstance(y, Tensor) and x.shape == y.shape and torch.equal(x, y)):
                return False
        elif x != y:
            return False
    return True


def run_on_both(fn: Callable[[], Any], threads: int, generators: Sequence[torch.Generator] = ()) -> tuple[bool, Any]:
    """Run ``fn()`` on one intra-op thread and then on ``threads``, each from the same state of torch's global
    generator and of ``generators``; returns whether the two results are bit-identical (every tensor in them,
    nested in tuples, lists or dicts; other leaves equal) and the second result. The generators are left as one
    run of ``fn`` leaves them, so the caller goes on as if it had called ``fn`` once."""
    states = [g.get_state() for g in generators]
    global_state = torch.get_rng_state()
    with intra_op_threads(1):
        first = fn()
    for g, state in zip(generators, states):
        g.set_state(state)
    torch.set_rng_state(global_state)
    with intra_op_threads(threads):
        second = fn()
    return _identical(first, second), second


class CheckedCalls:
    """The calls of one computation outside training (a sentence encoder's batches, a sampler's token steps), run
    on the intra-op thread count that is fastest now once a call has shown that the count does not change the
    result.

    ``with calls.session(device) as run: out = run(fn, per=rows)``. On the CPU with torch set to more than one
    thread, the first call of a size runs on one thread and on torch's count from the same random state
    (:func:`run_on_both`); when the results are bit-identical, that size's later calls go through a
    :class:`ThreadTuner` (timed per ``per``, e.g. a batch's tokens), else they run on torch's count, as before.
    Sizes are kept apart by ``key`` (a batch of 16 rows is fastest on one thread where one of 256 gains from two).
    Elsewhere (a GPU, one thread) calls run as they are. The session restores torch's count on exit, so a caller's
    own setting (an :func:`pfm.optimize` step that samples) is never changed. ``decisions`` lists each size's
    verdict and the tuner's choices, for a debug log or a record."""

    def __init__(self, name: str, probe_steps: int = 2) -> None:
        self.name, self.probe_steps = name, int(probe_steps)
        self._tuners: dict[Any, Optional[ThreadTuner]] = {}
        self._calls = 0

    @property
    def decisions(self) -> dict[str, Any]:
        return {str(k): ("not identical on 1 thread: torch's count" if t is None else list(t.decisions))
                for k, t in self._tuners.items()}

    @contextlib.contextmanager
    def session(self, device: torch.device | str) -> Iterator[Callable[..., Any]]:
        outer = torch.get_num_threads()
        active = torch.device(device).type == "cpu" and outer > 1

        def run(fn: Callable[[], Any], per: int = 1, key: Any = None,
                generators: Sequence[torch.Generator] = ()) -> Any:
            if not active:
                return fn()
            full = (outer, key)
            if full not in self._tuners:
                same, out = run_on_both(fn, outer, generators)
                self._tuners[full] = (ThreadTuner(candidate_counts(outer), probe_steps=self.probe_steps, first=outer)
                                      if same else None)
                log.debug("%s (%s): a call on 1 and %d threads is %s", self.name, key, outer,
                          "bit-identical: tuning the count" if same else "not identical: torch's count")
                return out
            tuner = self._tuners[full]
            if tuner is None:
                if torch.get_num_threads() != outer:
                    torch.set_num_threads(outer)
                return fn()
            self._calls += 1
            return timed_on(tuner, self._calls, fn, per=max(1, int(per)))

        try:
            yield run
        finally:
            if torch.get_num_threads() != outer:
                torch.set_num_threads(outer)


def candidate_counts(threads: int) -> list[int]:
    """The counts a :class:`ThreadTuner` tries up to ``threads``: the powers of two below it, and it."""
    return [*(2 ** i for i in range(threads.bit_length())), threads]


class ThreadTuner:
    """Chooses a CPU run's intra-op thread count by timing its own steps, and chooses again when the machine changes.

    On a machine that other processes share, a step on a team of 2 OpenMP threads waits whenever the second thread
    has no core (10-20x slower beside one busy process); idle, a big step gains 30-90% from it. No size rule is
    right for both, so the tuner measures: ``probe_steps`` timed steps at each count of ``candidates`` (after one
    untimed first step), then keeps the fewest threads within ``margin`` of the fastest mean (a mean, not a median:
    a team that waits for a core stalls now and then, and the stalls are the cost). It probes the other counts
    again when the recent step time exceeds ``drift`` times what the choice measured (another job arrived), and
    after ``recheck_seconds`` of the run's time or ``recheck_steps`` steps, whichever comes first (another job left,
    or the run's own pairing thread, which holds a core in the first epoch, finished; both intervals double while
    the choice holds, up to 16x). A count whose first timed step is over ``drift`` times the best mean so far is
    dropped at once, so a probe under load costs one slow step. The means are over a few steps, so on a machine
    whose load comes and goes the choice may flip; each flip is recorded.

    Use it only where the thread count does not change the results (:func:`thread_invariant`): the steps it runs at
    different counts must be the same steps. ``decisions`` lists ``(step, threads, why)``.
    """

    def __init__(self, candidates: Sequence[int], probe_steps: int = 3, recheck_seconds: float = 5.0,
                 recheck_steps: int = 100, drift: float = 2.0, margin: float = 0.1,
                 first: Optional[int] = None) -> None:
        self.candidates = sorted({int(c) for c in candidates if int(c) >= 1})
        if not self.candidates:
            raise ValueError("candidates must hold a thread count >= 1")
        self.first = self.candidates[0] if first is None else int(first)
        self.probe_steps, self.drift, self.margin = int(probe_steps), float(drift), float(margin)
        self.base_recheck = self.recheck = float(recheck_seconds)
        self.base_recheck_steps = self.recheck_steps = int(recheck_steps)
        self._steps_since = 0
        self.decisions: list[tuple[int, int, str]] = []
        self.chosen: Optional[int] = None
        self.reference = 0.0
        self._recent: deque[float] = deque(maxlen=8)
        self._since = 0.0
        self._start_probe("start")

    def _start_probe(self, why: str) -> None:
        """Plan the probe's steps as ``(threads, timed)``: at the start one untimed step (the run's first calls;
        on ``first`` threads, default the fewest) and ``probe_steps`` at each count; later ``probe_steps`` at each other count, the chosen one's being its
        recent steps."""
        self._why = why
        self._times: dict[int, list[float]] = {k: [] for k in self.candidates}
        if self.chosen is None:
            others = self.candidates
            self._plan = [(self.first, False)]
        else:
            others = [k for k in self.candidates if k != self.chosen]
            self._times[self.chosen] = list(self._recent)
            self._plan = []
        self._plan += [(k, True) for k in others for _ in range(self.probe_steps)]

    @property
    def probing(self) -> bool:
        return bool(self._plan)

    def threads(self) -> int:
        """The count the next step runs on."""
        return self._plan[0][0] if self._plan else self.chosen  # type: ignore[return-value]

    def record(self, step: int, seconds: float) -> None:
        """The 0-based ``step`` just took ``seconds``."""
        if self._plan:
            k, timed = self._plan.pop(0)
            if timed:
                first = not self._times[k]
                self._times[k].append(seconds)
                best = min(statistics.fmean(v) for v in self._times.values() if v)
                if first and seconds > self.drift * best:  # clearly slower: no more of it
                    self._plan = [(j, t) for j, t in self._plan if j != k]
            if not self._plan:
                self._choose(step)
            return
        self._recent.append(seconds)
        self._since += seconds
        self._steps_since += 1
        slow = len(self._recent) == self._recent.maxlen and statistics.fmean(self._recent) > self.drift * self.reference
        if slow or self._since >= self.recheck or self._steps_since >= self.recheck_steps:
            self._start_probe("slower" if slow else "recheck")

    def _choose(self, step: int) -> None:
        means = {k: statistics.fmean(v) for k, v in self._times.items() if v}
        best = min(means.values())
        choice = min(k for k, m in means.items() if m <= best * (1 + self.margin))
        if choice == self.chosen and self._why == "recheck":
            self.recheck = min(self.recheck * 2, 16 * self.base_recheck)
            self.recheck_steps = min(self.recheck_steps * 2, 16 * self.base_recheck_steps)
        else:
            self.recheck, self.recheck_steps = self.base_recheck, self.base_recheck_steps
        why = f"{self._why}: " + ", ".join(f"{k} thread{'s' * (k > 1)} {1e3 * m:.2f} ms" for k, m in means.items())
        if choice != self.chosen:
            self.decisions.append((step + 1, choice, why))
        log.debug("threads from step %d: %d (%s)", step + 1, choice, why)
        self.chosen, self.reference = choice, means[choice]
        self._recent.clear()
        self._since, self._steps_since = 0.0, 0


def timed_on(tuner: ThreadTuner, step: int, fn: Callable[[], Any], per: int = 1) -> Any:
    """Run ``fn()`` on the intra-op thread count ``tuner`` asks for now and record its time (divided by ``per``, e.g.
    an evaluation's rows) as ``step``; returns what ``fn`` returns. The one way a training step or an evaluation is
    run under a tuner (:func:`pfm.optimize`, :class:`TunedCalls`, the text decoder's language model)."""
    k = tuner.threads()
    if k != torch.get_num_threads():
        torch.set_num_threads(k)
    began = time.perf_counter()
    out = fn()
    tuner.record(step, (time.perf_counter() - began) / per)
    return out


CALL_PROBES = 1
"""Timed evaluations at each count in a :class:`TunedCalls` probe. A solve's evaluation is a big batch (8,192 rows
by default), steadier than a training step, and a default solve makes only 8 per batch (midpoint, 4 steps), so a
longer probe would cost more than it saves."""


class TunedCalls:
    """Runs the evaluations of a module in a loop of calls (a solve's field evaluations) on the intra-op thread
    count that is fastest now, as :class:`ThreadTuner` measures it for training steps.

    ``with TunedCalls(module, rows, device) as calls: solve(calls.wrap(field), ...)``. For a CPU run of a module
    made of :data:`THREAD_INVARIANT` layers (so the count never changes a result), with torch set to more than one
    thread: a small evaluation (:func:`step_threads`' rule, parameters x ``rows`` below :data:`SMALL_STEP`) runs on
    one thread, a bigger one on the count its timed calls show fastest (per row, so a last, smaller batch compares
    fairly). Anything else (``module`` None too) runs on torch's setting, as before. The count is restored on
    exit.

    ``tuners``, a dict the caller keeps (a flow keeps one), holds the tuners of earlier calls by ``(kind, rows,
    device, threads)``: a later call of the same size goes on from the earlier choice (and its rechecks) instead of
    probing again, so a sweep of many small solves (``choose_strength``) probes once. ``kind`` keeps calls of
    different cost apart (``"solve"``: field evaluations; ``"divergence"``: evaluations with their divergence, a
    backward pass or more each), whose times one tuner must not compare."""

    def __init__(self, module: Optional[nn.Module], rows: int, device: torch.device,
                 tuners: Optional[dict[Any, ThreadTuner]] = None, kind: str = "solve") -> None:
        self.outer = torch.get_num_threads()
        self.threads = self.outer
        self.tuner: Optional[ThreadTuner] = None
        if module is not None and thread_invariant(module):
            self.threads = step_threads(list(module.parameters()), rows, device)
            if self.threads > 1:
                key = (kind, int(rows), str(device), self.threads)
                self.tuner = None if tuners is None else tuners.get(key)
                if self.tuner is None:
                    self.tuner = ThreadTuner(candidate_counts(self.threads), probe_steps=CALL_PROBES,
                                             first=self.threads)
                    if tuners is not None:
                        tuners[key] = self.tuner
                elif not self.tuner.probing:
                    self.threads = self.tuner.threads()  # start on the earlier choice
        self._calls = 0

    def __enter__(self) -> "TunedCalls":
        if self.threads != self.outer:
            torch.set_num_threads(self.threads)
        return self

    def __exit__(self, *exc: object) -> None:
        if torch.get_num_threads() != self.outer:
            torch.set_num_threads(self.outer)

    def wrap(self, field: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """``field(t, y, *rest)`` run on the tuner's count where there is one, each call timed per row of ``y``."""
        if self.tuner is None:
            return field
        tuner = self.tuner

        def call(t: Tensor, y: Tensor, *rest: Any) -> Tensor:
            out = timed_on(tuner, self._calls, lambda: field(t, y, *rest), per=max(1, y.shape[0]))
            self._calls += 1
            return out

        return call
