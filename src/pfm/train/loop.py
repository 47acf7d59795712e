"""The one training loop: minibatches of row indices, a loss, Adam, optional clipping and EMA, a progress bar,
a history. Flows and baselines all train through :func:`optimize`; its settings are a :class:`pfm.TrainConfig`.

The pieces it is made of live beside it: the row order (:mod:`pfm.train.order`), the threads (:mod:`pfm.train.threads`),
checkpoints (:mod:`pfm.train.checkpoint`) and the best weights (:mod:`pfm.train.best_weights`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from .. import validate as V
from .best_weights import BestWeights, check_evaluate
from .checkpoint import check_fingerprint, checkpoint_path, load_checkpoint, restore, save_checkpoint
from ..config import PRECISIONS, TrainConfig, _check_bool, merge
from ..errors import FileFormatError, InvalidInputError, NonFiniteLossError
from .order import Order, epoch_order, mix_seed, resolve_steps, run_order
from .threads import (SMALL_STEP, SplitReductions, ThreadTuner, candidate_counts, intra_op_threads, same_on_counts,
                      step_threads, thread_invariant, timed_on)

__all__ = ["History", "NonFiniteLossError", "LossFn", "optimize", "PRECISIONS", "SMALL_STEP", "step_threads",
           "intra_op_threads", "epoch_order", "mix_seed", "resolve_steps"]

log = logging.getLogger("pfm")

LossFn = Callable[..., Union[Tensor, tuple[Tensor, dict[str, Tensor]]]]
"""``loss_fn(index, generator) -> scalar``: the loss of the rows ``index`` (int64 ``(batch,)``); or
``(loss, {name: scalar})`` to also record other quantities (e.g. RLHF's reward and KL) in ``History.extras``.
A loss that takes a third argument, ``loss_fn(index, generator, model)``, gets the module to call: under
``torch.distributed`` that is the module wrapped in DistributedDataParallel, whose backward averages gradients."""


@dataclass
class History:
    """What a training run did: the loss of every step, other recorded quantities per step, and the time it took."""

    loss: list[float] = field(default_factory=list)
    steps: int = 0
    epochs: float = 0.0
    seconds: float = 0.0
    extras: dict[str, list[float]] = field(default_factory=dict)
    validation: list[tuple[int, float]] = field(default_factory=list)
    """``(step, held-out loss)`` at every evaluation (runs with ``evaluate``)."""
    best_step: Optional[int] = None
    """The step whose weights were kept: the lowest held-out loss (runs with ``evaluate``)."""
    summary: Optional[str] = None
    """One line on what a validated fit kept and why (:mod:`pfm.flow.validation`)."""
    held_out: Optional[dict] = None
    """The validation pairs of a fit: ``{"pairs", "of", "from_data"}``."""
    pairs: Optional[int] = None
    """The pairs (rows) a fit trained on."""
    threads: list[tuple[int, int, str]] = field(default_factory=list)
    """``(step, intra-op threads, why)`` from each step on which the run's thread count changed: chosen by timing
    (:class:`pfm.train.threads.ThreadTuner`, why: the mean step times it measured), given (``set``), or by the size rule
    (``rule``)."""
    pairing: Optional[dict] = None
    """Where a fit's pairing time went (fits whose batches a :class:`pfm.pairing.PairingPlan` coupled): the steps'
    own solves (``solve_s``, ``blocks``), their waits for the pairing threads (``wait_s``), the threads' solves
    (``thread_solve_s``, ``thread_blocks``), the blocks the steps took over (``taken_over``) and the threads
    (``workers``)."""

    def to_dict(self) -> dict:
        return {"loss": self.loss, "steps": self.steps, "epochs": self.epochs, "seconds": self.seconds,
                "extras": self.extras, "validation": [list(v) for v in self.validation], "best_step": self.best_step,
                "summary": self.summary, "held_out": self.held_out, "pairs": self.pairs,
                "threads": [list(t) for t in self.threads], "pairing": self.pairing}


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size under an initialized ``torch.distributed`` process group, else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _takes_model(loss_fn: Callable) -> bool:
    import inspect

    try:
        params = inspect.signature(loss_fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _adam(opt_cls: type, params: list[Tensor], **kwargs: Any) -> torch.optim.Optimizer:
    """Adam/AdamW with the fused kernel where this torch has one for these parameters (CPU since torch 2.4, CUDA):
    on a small field it takes 0.09 ms a step on CPU against 0.33 ms for the default per-tensor loop."""
    try:
        return opt_cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return opt_cls(params, **kwargs)


def optimize(
    module: nn.Module,
    loss_fn: LossFn,
    n: int,
    config: Optional[TrainConfig] = None,
    *,
    desc: str = "training",
    sync_every: int = 25,
    fingerprint: Optional[dict[str, Any]] = None,
    order: Optional[Order] = None,
    evaluate: Optional[Callable[[nn.Module], float]] = None,
    invariant_loss: Union[bool, str] = False,
    **overrides: Any,
) -> History:
    """Minimize ``loss_fn`` over the parameters of ``module`` with Adam (AdamW if ``weight_decay``).

    Settings come from ``config`` (a :class:`pfm.TrainConfig`, default ``TrainConfig()``) with ``overrides``
    (its field names, e.g. ``steps=500, lr=3e-4``) applied. Each epoch visits the ``n`` rows in a fresh random
    order, ``batch_size`` at a time. With ``ema_decay``, an exponential moving average of the weights is kept and
    copied into ``module`` at the end. The loss is read back every ``sync_every`` steps (not every step, which would
    stall a GPU); a NaN or infinite loss stops the run with :class:`NonFiniteLossError` naming the step.

    Under ``torch.distributed`` (e.g. launched by ``torchrun``, with the process group initialized), every rank
    trains the same module wrapped in DistributedDataParallel (gradients averaged across ranks), draws its own
    disjoint part of each epoch from a ``DistributedSampler`` (so the effective batch is ``world_size *
    batch_size``), its own noise (seed + rank), records the loss averaged over ranks, and only rank 0 shows progress
    and writes checkpoints (holding every rank's generator state). ``loss_fn`` must take the ``model`` argument.

    With ``checkpoint_dir``, the whole training state is written there (see :mod:`pfm.train.checkpoint`) every
    ``checkpoint_every`` steps (default: 10 times a run) and at the end; with ``resume``, a run starts from the
    checkpoint found there, and ends with the same weights as an uninterrupted run (bit for bit on CPU). ``steps``
    may be raised on resume to train longer. ``fingerprint`` adds facts (e.g. a digest of the data) that must match
    for a checkpoint to be resumed. A checkpoint is only written after the losses since the last one were checked
    finite, so a run stopped by a non-finite loss keeps its last good checkpoint.

    ``order(epoch)`` (one process only) gives the rows to visit in an epoch, a permutation of ``range(n)`` that must
    depend on the epoch alone (default :func:`pfm.train.order.epoch_order`); each epoch takes ``n // batch_size`` full
    batches from it in turn. :class:`pfm.pairing.PairingPlan` uses it to solve couplings ahead of the steps.

    With ``evaluate`` (``evaluate(model) -> float``, e.g. a held-out loss; lower is better), the model (its EMA
    when there is one) is evaluated every ``validate_every`` steps (default: 20 times a run) and at the end, in eval
    mode without gradients; the weights of the best evaluation are the ones ``module`` ends with
    (``history.best_step``), and with ``patience`` the run stops after that many evaluations without improvement.
    One process only, and not with ``checkpoint_dir`` (the best weights are not checkpointed).

    ``threads`` is the number of torch intra-op threads the steps run on (restored afterwards). By default
    (:func:`pfm.train.threads.step_threads`) a CPU run whose step is small (parameters x batch below
    :data:`pfm.train.threads.SMALL_STEP`) runs on one; a bigger one, of a module whose results do not depend on the
    count (:func:`pfm.train.threads.thread_invariant`: Linear and Embedding layers, e.g. an MLP field) and whose
    loss the caller vouches for with ``invariant_loss`` (it runs no other module, and no transcendental function
    over a tensor whose split between threads could fall inside a vector: a flow's and a reward model's loss), on
    the count its own timed steps show fastest, chosen again when the machine's load changes
    (:class:`pfm.train.threads.ThreadTuner`); any other on torch's current setting. ``history.threads`` records
    the counts and why. ``invariant_loss="check"`` asks the loop to find out instead (for a ``loss_fn`` without side
    effects: it runs twice more for the first batch): before the first step it computes the first batch's loss and
    gradients on one thread and on the rule's count, from the same random state, and tunes only if they are
    bit-identical (a Gaussian policy's log-density's were) and no op of them took a weight or bias gradient that
    torch splits by thread (:data:`pfm.train.threads.SPLIT_REDUCTIONS`: a trained convolution or group norm, which
    one batch cannot clear), else keeps the rule; the history's ``threads`` says which. BC, DPO/IPO and RLHF pass
    it, so a run's numbers do not depend on what the machine was doing.
    """
    cfg = merge(config, overrides, TrainConfig, "optimize", renamed={"evaluate_every": "validate_every"})
    V.check_positive_int(n, "n")
    V.check_positive_int(sync_every, "sync_every")
    if invariant_loss != "check":
        _check_bool(invariant_loss, "invariant_loss")
    if cfg.checkpoint_dir is not None:  # now, not when the first checkpoint is due
        from ..io import check_output

        check_output(cfg.checkpoint_dir, "checkpoint_dir", kind="dir")
    if evaluate is not None:
        check_evaluate(evaluate)
        if cfg.checkpoint_dir is not None:
            raise InvalidInputError("evaluate (validation) cannot be combined with checkpoint_dir yet: the best "
                                    "weights are not part of the checkpoint")
        if _rank_and_world()[1] > 1:
            raise InvalidInputError("evaluate (validation) is not supported under torch.distributed")
    elif cfg.validate_every is not None or cfg.patience is not None:
        raise InvalidInputError("validate_every and patience need evaluate (held-out data)")
    return _Loop(module, loss_fn, n, cfg, desc, sync_every, fingerprint, order, evaluate, invariant_loss).run()


class _Loop:
    """One run of :func:`optimize`: set up in ``__init__``, trained by :meth:`run`."""

    def __init__(self, module: nn.Module, loss_fn: LossFn, n: int, cfg: TrainConfig, desc: str, sync_every: int,
                 fingerprint: Optional[dict[str, Any]], order: Optional[Order],
                 evaluate: Optional[Callable[[nn.Module], float]], invariant_loss: Union[bool, str] = False) -> None:
        self.module, self.loss_fn, self.n, self.cfg, self.desc = module, loss_fn, n, cfg, desc
        self.sync_every = sync_every
        self.params = [p for p in module.parameters() if p.requires_grad]
        if not self.params:
            raise InvalidInputError("the module has no trainable parameters")
        self.device = V.check_device(cfg.device if cfg.device is not None else self.params[0].device)
        self.steps = cfg.total_steps(n)
        batch_size = min(cfg.batch_size, n)
        self.threads = cfg.threads or step_threads(self.params, batch_size, self.device)
        self.tuner: Optional[ThreadTuner] = None
        self.check_counts = False  # compare the first batch at 1 and at self.threads before tuning
        self.rule_why = "rule"
        if cfg.threads is None and self.threads > 1 and self.device.type == "cpu" and _rank_and_world()[1] == 1:
            if invariant_loss is True and thread_invariant(module):
                self.tuner = ThreadTuner(candidate_counts(self.threads))
            self.check_counts = invariant_loss == "check" and not cfg.compile
        opt_cls = torch.optim.AdamW if cfg.weight_decay else torch.optim.Adam
        self.opt = _adam(opt_cls, self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = None
        if cfg.ema_decay is not None:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(float(cfg.ema_decay)))
        self.rank, self.world = _rank_and_world()
        self.takes_model = _takes_model(loss_fn)
        self.model = self._wrap(module)
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.precision == "bf16"
                         else contextlib.nullcontext())
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 7919 * self.rank)
        self.order, rows_per_epoch = run_order(n, cfg.seed, self.rank, self.world, order)
        self.batch_size = min(batch_size, max(1, rows_per_epoch))
        self.steps_per_epoch = max(1, rows_per_epoch // self.batch_size)
        self.progress = cfg.progress and self.rank == 0
        self.history = History()
        self.pending: list[Tensor] = []
        self.pending_extras: dict[str, list[Tensor]] = {}
        self.first_step, self.elapsed = 0, 0.0
        self.run_id = {"n": int(n), "batch_size": int(self.batch_size), "seed": int(cfg.seed), "lr": float(cfg.lr),
                       "weight_decay": float(cfg.weight_decay), "ema_decay": cfg.ema_decay,
                       "optimizer": opt_cls.__name__, "parameters": [list(p.shape) for p in self.params],
                       "world_size": self.world, "schedule": 2, **(fingerprint or {})}
        self.every = None
        if cfg.checkpoint_dir is not None:
            self.every = int(cfg.checkpoint_every) if cfg.checkpoint_every else max(1, self.steps // 10)
            if cfg.resume:
                self._resume()
        self.best = None if evaluate is None else BestWeights(evaluate, cfg.patience)
        self.eval_every = None
        if evaluate is not None:
            self.eval_every = int(cfg.validate_every) if cfg.validate_every else max(1, self.steps // 20)

    def _wrap(self, module: nn.Module) -> nn.Module:
        """The module the loss calls: wrapped in DistributedDataParallel under torch.distributed, compiled."""
        model = module
        if self.world > 1:
            if not self.takes_model:
                raise InvalidInputError("training under torch.distributed needs loss_fn(index, generator, model), "
                                        "which calls the DistributedDataParallel-wrapped model")
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(module, device_ids=ids)
        if self.cfg.compile:
            if not self.takes_model:
                raise InvalidInputError("compile=True needs loss_fn(index, generator, model), which calls the "
                                        "compiled model")
            model = torch.compile(model)
        return model

    def _resume(self) -> None:
        directory = self.cfg.checkpoint_dir
        state = load_checkpoint(directory)
        if state is None:
            return
        where = checkpoint_path(directory)
        check_fingerprint(where, state["run"], self.run_id)
        restore(where, self.module, state["module"])
        restore(where, self.opt, state["optimizer"], "optimizer")
        if self.ema is not None:
            restore(where, self.ema, state["ema"], "EMA")
        try:
            self.gen.set_state(state["gen"][self.rank])
        except (RuntimeError, IndexError, TypeError) as exc:
            raise FileFormatError(f"the generator state in {str(where)!r} does not fit this run ({exc})") from None
        self.first_step = int(state["step"])
        self.history.loss = list(state["loss"])
        self.history.extras = {k: list(v) for k, v in state["extras"].items()}
        self.elapsed = float(state["seconds"])
        log.info("%s: resuming at step %d from %s", self.desc, self.first_step, directory)
        if self.first_step > self.steps:
            raise InvalidInputError(f"the checkpoint in {str(directory)!r} is at step {self.first_step}, past "
                                    f"steps={self.steps}; pass steps >= {self.first_step}")

    def run(self) -> History:
        from tqdm.auto import tqdm

        self.start = time.perf_counter()
        self.module.train()
        with intra_op_threads(self.threads), tqdm(total=self.steps, initial=self.first_step, desc=self.desc,
                                                  unit="step", disable=not self.progress,
                                                  dynamic_ncols=True) as self.bar:
            epoch, rows = -1, torch.empty(0, dtype=torch.int64)
            if self.check_counts and self.first_step < self.steps:
                first = self.order(self.first_step // self.steps_per_epoch)
                pos = (self.first_step % self.steps_per_epoch) * self.batch_size
                why = self._count_dependence(first[pos:pos + self.batch_size].to(self.device))
                if why is None:
                    self.tuner = ThreadTuner(candidate_counts(self.threads))
                else:
                    self.rule_why = f"rule: {why}"
            for step in range(self.first_step, self.steps):
                if step // self.steps_per_epoch != epoch:
                    epoch = step // self.steps_per_epoch
                    rows = self.order(epoch)
                pos = (step % self.steps_per_epoch) * self.batch_size
                index = rows[pos:pos + self.batch_size].to(self.device)
                if self.tuner is None:
                    self._step(index)
                else:  # timed, on the count the tuner picks (the same step on any count: thread_invariant)
                    timed_on(self.tuner, step, lambda: self._step(index))
                if self._after_step(step):
                    break
        return self._finish()

    def _count_dependence(self, index: Tensor) -> Optional[str]:
        """Why the run's numbers could depend on the count, or None: the loss and gradients of the batch ``index``
        must be bit-identical on one thread and on ``self.threads``, computed from the same random state
        (:func:`pfm.train.threads.same_on_counts`), and their computation must run no op of
        :data:`pfm.train.threads.SPLIT_REDUCTIONS` for a weight or bias gradient (one batch can agree by chance)."""
        def compute() -> list[Tensor]:
            with self.autocast:
                out = self._loss(index)
                loss = out[0] if isinstance(out, tuple) else out
                grads = torch.autograd.grad(loss, self.params, allow_unused=True)
            return [loss, *(g for g in grads if g is not None)]

        with SplitReductions() as split:
            same = same_on_counts(compute, self.threads, [self.gen])
        why = None
        if split.found:
            why = (f"the gradients take {', '.join(split.found)}'s weight or bias sums, which depend on the count "
                   "(pfm.train.threads.SPLIT_REDUCTIONS)")
        elif not same:
            why = "the first batch's gradients differ on 1 thread and on more"
        log.debug("%s: the first batch on 1 and %d threads: %s", self.desc, self.threads,
                  why or "bit-identical: tuning the count")
        return why

    def _loss(self, index: Tensor) -> Any:
        """``loss_fn``'s result for the batch ``index`` (with the model when it takes one)."""
        return self.loss_fn(index, self.gen, self.model) if self.takes_model else self.loss_fn(index, self.gen)

    def _step(self, index: Tensor) -> None:
        with self.autocast:
            out = self._loss(index)
        loss, extras = out if isinstance(out, tuple) else (out, {})
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        if self.ema is not None:
            self.ema.update_parameters(self.module)
        self.pending.append(loss.detach())
        for name, value in extras.items():
            self.pending_extras.setdefault(name, []).append(torch.as_tensor(value).detach().float().reshape(()))

    def _after_step(self, step: int) -> bool:
        """Flush, checkpoint and evaluate as due after 0-based ``step``; True when the run stops early."""
        done = step + 1
        at_checkpoint = self.every is not None and (done % self.every == 0 or done == self.steps)
        if len(self.pending) == self.sync_every or done == self.steps or (at_checkpoint and self.pending):
            self._flush(step)
        if at_checkpoint:
            self._save(done)
        if self.eval_every is not None and (done % self.eval_every == 0 or done == self.steps):
            if self.pending:
                self._flush(step)
            target = self.ema.module if self.ema is not None else self.module
            value, out_of_patience = self.best(target, done)  # type: ignore[misc]
            self.history.validation.append((done, value))
            log.debug("%s: step %d, held-out %.4g (best %.4g)", self.desc, done, value, self.best.value)
            if out_of_patience:
                log.info("%s: stopping at step %d, %d evaluations without improvement", self.desc, done,
                         self.cfg.patience)
                return True
        return False

    def _flush(self, step: int) -> None:
        """Check and record the losses since the last flush; ``step`` is the 0-based index of the last one."""
        stacked = torch.stack(self.pending).float()
        if self.world > 1:  # every rank sees the same mean loss, so a non-finite one stops them all
            torch.distributed.all_reduce(stacked)
            stacked /= self.world
        values = stacked.cpu().tolist()
        first = step + 1 - len(values)
        where = self.cfg.checkpoint_dir
        for j, v in enumerate(values):
            if not math.isfinite(v):
                raise NonFiniteLossError(
                    f"the loss became {v} at step {first + j + 1}; lower lr, set grad_clip, "
                    "or check the data's scale (normalize=True)"
                    + (f"; the last good checkpoint is in {str(where)!r}" if where else ""))
        self.history.loss.extend(values)
        shown = {"loss": f"{values[-1]:.4g}"}
        for name, vals in self.pending_extras.items():
            got = torch.stack(vals).cpu().tolist()
            self.history.extras.setdefault(name, []).extend(got)
            shown[name] = f"{got[-1]:.4g}"
        self.bar.update(len(values))
        self.bar.set_postfix(shown)
        self.pending.clear()
        self.pending_extras.clear()

    def _save(self, step: int) -> None:
        where = self.cfg.checkpoint_dir
        if not all(bool(torch.isfinite(p).all()) for p in self.params):
            raise NonFiniteLossError(f"the weights became non-finite by step {step}; the last good checkpoint is in "
                                     f"{str(where)!r}")
        gens = [self.gen.get_state()]
        if self.world > 1:  # every rank's own generator, gathered to rank 0
            gens = [None] * self.world
            torch.distributed.all_gather_object(gens, self.gen.get_state())
        if self.rank != 0:
            return
        h = self.history
        save_checkpoint(where, {  # the batch order needs no saving: it is a function of the step
            "run": self.run_id, "step": step, "module": self.module.state_dict(),
            "optimizer": self.opt.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else {},
            "gen": gens, "loss": list(h.loss), "extras": {k: list(v) for k, v in h.extras.items()},
            "seconds": self.elapsed + time.perf_counter() - self.start})

    def _finish(self) -> History:
        if self.ema is not None:
            with torch.no_grad():
                for p, q in zip(self.module.parameters(), self.ema.module.parameters()):
                    p.copy_(q)
        h = self.history
        if self.best is not None:
            h.best_step = self.best.restore(self.module)
        self.module.eval()
        steps = len(h.loss) if self.best is not None else self.steps
        h.steps = steps
        h.epochs = steps * self.batch_size * self.world / self.n  # every rank takes its own batch a step
        h.seconds = self.elapsed + time.perf_counter() - self.start
        h.threads = (list(self.tuner.decisions) if self.tuner is not None
                     else [(self.first_step, self.threads, "set" if self.cfg.threads else self.rule_why)])
        log.info("%s: %d steps in %.1f s, final loss %.4g", self.desc, steps, h.seconds, h.loss[-1])
        return h
