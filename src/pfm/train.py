"""The one training loop: minibatches of row indices, a loss, Adam, optional clipping and EMA, a progress bar,
a history. Flows and baselines all train through :func:`optimize`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import _validate as V
from .checkpoint import check_fingerprint, checkpoint_path, load_checkpoint, restore, save_checkpoint
from .errors import FlowFileError, InvalidInputError, InvalidTypeError

log = logging.getLogger("pfm")

PRECISIONS = ("fp32", "bf16")
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

    def to_dict(self) -> dict:
        return {"loss": self.loss, "steps": self.steps, "epochs": self.epochs, "seconds": self.seconds,
                "extras": self.extras, "validation": [list(v) for v in self.validation], "best_step": self.best_step}


class NonFiniteLossError(InvalidInputError):
    """The loss became NaN or infinite."""


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


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (e.g. a run's seed and an epoch), decorrelated from its neighbours."""
    import numpy as np

    words = [int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def epoch_order(n: int, epoch: int, seed: int) -> Tensor:
    """The order in which one process visits the ``n`` rows in ``epoch``: a permutation ``(n,)`` that depends on
    ``(seed, epoch)`` only, so an epoch's order can be computed ahead (e.g. to solve couplings early) or again (on
    resume)."""
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


SMALL_STEP = 2**24
"""Parameters x batch below which a CPU step runs on one intra-op thread by default. Measured on 2 cores (torch
2.13, Adam steps of MLP fields): below it a second thread gained 6-8% (2-D and 64-d 3x128 MLPs at batch 256), above
it 30-90%; and with another process on the cores, every op on a 2-thread team waits for its second thread to get a
core, which made the 2-D batch-256 step 3-4x slower, against none at one thread (``benchmarks/bench.py --parts
load``)."""


def step_threads(params: Sequence[Tensor], batch_size: int, device: torch.device) -> int:
    """The intra-op threads :func:`optimize` trains on by default: one for a small step on the CPU (see
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


def optimize(
    module: nn.Module,
    loss_fn: LossFn,
    n: int,
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    grad_clip: Optional[float] = None,
    ema_decay: Optional[float] = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "training",
    sync_every: int = 25,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: Optional[int] = None,
    resume: bool = False,
    fingerprint: Optional[dict[str, Any]] = None,
    order: Optional[Callable[[int], Tensor]] = None,
    precision: str = "fp32",
    compile: bool = False,
    evaluate: Optional[Callable[[nn.Module], float]] = None,
    evaluate_every: Optional[int] = None,
    patience: Optional[int] = None,
    threads: Optional[int] = None,
) -> History:
    """Minimize ``loss_fn`` over the parameters of ``module`` with Adam (AdamW if ``weight_decay``).

    Each epoch visits the ``n`` rows in a fresh random order, ``batch_size`` at a time. With ``ema_decay``, an
    exponential moving average of the weights is kept and copied into ``module`` at the end. The loss is read back
    every ``sync_every`` steps (not every step, which would stall a GPU); a NaN or infinite loss stops the run with
    :class:`NonFiniteLossError` naming the step.

    Under ``torch.distributed`` (e.g. launched by ``torchrun``, with the process group initialized), every rank
    trains the same module wrapped in DistributedDataParallel (gradients averaged across ranks), draws its own
    disjoint part of each epoch from a ``DistributedSampler`` (so the effective batch is ``world_size *
    batch_size``), its own noise (seed + rank), records the loss averaged over ranks, and only rank 0 shows progress
    and writes checkpoints (holding every rank's generator state). ``loss_fn`` must take the ``model`` argument.

    With ``checkpoint_dir``, the whole training state is written there (see :mod:`pfm.checkpoint`) every
    ``checkpoint_every`` steps (default: 10 times a run) and at the end; with ``resume``, a run starts from the
    checkpoint found there, and ends with the same weights as an uninterrupted run (bit for bit on CPU). ``steps``
    may be raised on resume to train longer. ``fingerprint`` adds facts (e.g. a digest of the data) that must match
    for a checkpoint to be resumed. A checkpoint is only written after the losses since the last one were checked
    finite, so a run stopped by a non-finite loss keeps its last good checkpoint.

    ``order(epoch)`` (one process only) gives the rows to visit in an epoch, a permutation of ``range(n)`` that must
    depend on the epoch alone (default :func:`epoch_order`); each epoch takes ``n // batch_size`` full batches
    from it in turn. :class:`pfm.pairing.PairingPlan` uses it to solve couplings ahead of the steps that need them.

    With ``evaluate`` (``evaluate(model) -> float``, e.g. a held-out loss; lower is better), the model (its EMA
    when there is one) is evaluated every ``evaluate_every`` steps (default: 20 times a run) and at the end, in eval
    mode without gradients; the weights of the best evaluation are the ones ``module`` ends with
    (``history.best_step``), and with ``patience`` the run stops after that many evaluations without improvement.
    One process only, and not with ``checkpoint_dir`` (the best weights are not checkpointed).

    ``threads`` is the number of torch intra-op threads the steps run on (restored afterwards). By default
    (:func:`step_threads`) a CPU run whose step is small (parameters x batch below :data:`SMALL_STEP`) runs on one, and
    any other run on torch's current setting.
    """
    V.check_positive_int(n, "n")
    V.check_positive_int(steps, "steps")
    V.check_positive_int(batch_size, "batch_size")
    V.check_nonneg_float(lr, "lr")
    V.check_nonneg_float(weight_decay, "weight_decay")
    V.check_nonneg_float(grad_clip, "grad_clip", allow_none=True)
    if ema_decay is not None and not 0.0 < float(ema_decay) < 1.0:
        raise InvalidInputError(f"ema_decay must be in (0, 1), got {ema_decay!r}")
    V.check_positive_int(checkpoint_every, "checkpoint_every", allow_none=True)
    V.check_choice(precision, "precision", PRECISIONS)
    if not isinstance(compile, bool):
        raise InvalidInputError(f"compile must be True or False, got {compile!r}")
    if resume and checkpoint_dir is None:
        raise InvalidInputError("resume=True needs checkpoint_dir, where the checkpoint is")
    if checkpoint_dir is not None:  # now, not when the first checkpoint is due
        from ._io import check_output

        check_output(checkpoint_dir, "checkpoint_dir", kind="dir")
    V.check_positive_int(evaluate_every, "evaluate_every", allow_none=True)
    V.check_positive_int(patience, "patience", allow_none=True)
    V.check_positive_int(threads, "threads", allow_none=True)
    if evaluate is not None:
        if not callable(evaluate):
            raise InvalidTypeError(f"evaluate must be a callable evaluate(model) -> float, got "
                                   f"{type(evaluate).__name__}")
        if checkpoint_dir is not None:
            raise InvalidInputError("evaluate (validation) cannot be combined with checkpoint_dir yet: the best "
                                    "weights are not part of the checkpoint")
        if _rank_and_world()[1] > 1:
            raise InvalidInputError("evaluate (validation) is not supported under torch.distributed")
    elif evaluate_every is not None or patience is not None:
        raise InvalidInputError("evaluate_every and patience need evaluate")
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise InvalidInputError("the module has no trainable parameters")
    if device is None:
        device = params[0].device
    device = V.check_device(device)
    batch_size = min(batch_size, n)
    if threads is None:
        threads = step_threads(params, batch_size, device)

    opt_cls = torch.optim.AdamW if weight_decay else torch.optim.Adam
    opt = _adam(opt_cls, params, lr=lr, weight_decay=weight_decay)
    ema = None
    if ema_decay is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(float(ema_decay)))
    rank, world = _rank_and_world()
    takes_model = _takes_model(loss_fn)
    model: nn.Module = module
    if world > 1:
        if not takes_model:
            raise InvalidInputError("training under torch.distributed needs loss_fn(index, generator, model), which "
                                    "calls the DistributedDataParallel-wrapped model")
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        if not takes_model:
            raise InvalidInputError("compile=True needs loss_fn(index, generator, model), which calls the compiled "
                                    "model")
        model = torch.compile(model)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    gen = torch.Generator(device=device).manual_seed(seed + 7919 * rank)
    if world > 1:
        if order is not None:
            raise InvalidInputError("a custom order is not supported under torch.distributed")
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                     drop_last=n >= world)

        def order(e: int) -> Tensor:
            sampler.set_epoch(e)
            return torch.tensor(list(iter(sampler)), dtype=torch.int64)

        rows_per_epoch = len(sampler)
    else:
        rows_per_epoch = n
        if order is None:
            def order(e: int) -> Tensor:
                return epoch_order(n, e, seed)
    batch_size = min(batch_size, max(1, rows_per_epoch))
    steps_per_epoch = max(1, rows_per_epoch // batch_size)
    progress = progress and rank == 0

    from tqdm.auto import tqdm

    history = History()
    pending: list[Tensor] = []
    pending_extras: dict[str, list[Tensor]] = {}
    first_step = 0
    elapsed = 0.0
    run_id = {"n": int(n), "batch_size": int(batch_size), "seed": int(seed), "lr": float(lr),
              "weight_decay": float(weight_decay), "ema_decay": ema_decay, "optimizer": opt_cls.__name__,
              "parameters": [list(p.shape) for p in params], "world_size": world, "schedule": 2,
              **(fingerprint or {})}
    every = None
    if checkpoint_dir is not None:
        every = int(checkpoint_every) if checkpoint_every else max(1, steps // 10)
        state = load_checkpoint(checkpoint_dir) if resume else None
        if state is not None:
            where = checkpoint_path(checkpoint_dir)
            check_fingerprint(where, state["run"], run_id)
            restore(where, module, state["module"])
            restore(where, opt, state["optimizer"], "optimizer")
            if ema is not None:
                restore(where, ema, state["ema"], "EMA")
            try:
                gen.set_state(state["gen"][rank])
            except (RuntimeError, IndexError, TypeError) as exc:
                raise FlowFileError(f"the generator state in {str(where)!r} does not fit this run ({exc})") from None
            first_step = int(state["step"])
            history.loss = list(state["loss"])
            history.extras = {k: list(v) for k, v in state["extras"].items()}
            elapsed = float(state["seconds"])
            log.info("%s: resuming at step %d from %s", desc, first_step, checkpoint_dir)
            if first_step > steps:
                raise InvalidInputError(f"the checkpoint in {str(checkpoint_dir)!r} is at step {first_step}, past "
                                        f"steps={steps}; pass steps >= {first_step}")

    def flush(step: int) -> None:
        """Check and record the losses since the last flush; ``step`` is the 0-based index of the last one."""
        stacked = torch.stack(pending).float()
        if world > 1:  # every rank sees the same mean loss, so a non-finite one stops them all
            torch.distributed.all_reduce(stacked)
            stacked /= world
        values = stacked.cpu().tolist()
        first = step + 1 - len(values)
        for j, v in enumerate(values):
            if not math.isfinite(v):
                raise NonFiniteLossError(
                    f"the loss became {v} at step {first + j + 1}; lower lr, set grad_clip, "
                    "or check the data's scale (normalize=True)"
                    + (f"; the last good checkpoint is in {str(checkpoint_dir)!r}" if checkpoint_dir else ""))
        history.loss.extend(values)
        shown = {"loss": f"{values[-1]:.4g}"}
        for name, vals in pending_extras.items():
            got = torch.stack(vals).cpu().tolist()
            history.extras.setdefault(name, []).extend(got)
            shown[name] = f"{got[-1]:.4g}"
        bar.update(len(values))
        bar.set_postfix(shown)
        pending.clear()
        pending_extras.clear()

    def save(step: int) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise NonFiniteLossError(f"the weights became non-finite by step {step}; the last good checkpoint is in "
                                     f"{str(checkpoint_dir)!r}")
        assert checkpoint_dir is not None
        gens = [gen.get_state()]
        if world > 1:  # every rank's own generator, gathered to rank 0
            gens = [None] * world
            torch.distributed.all_gather_object(gens, gen.get_state())
        if rank != 0:
            return
        save_checkpoint(checkpoint_dir, {  # the batch order needs no saving: it is a function of the step
            "run": run_id, "step": step, "module": module.state_dict(), "optimizer": opt.state_dict(),
            "ema": ema.state_dict() if ema is not None else {}, "gen": gens, "loss": list(history.loss),
            "extras": {k: list(v) for k, v in history.extras.items()},
            "seconds": elapsed + time.perf_counter() - start})

    eval_every = (int(evaluate_every) if evaluate_every else max(1, steps // 20)) if evaluate is not None else None
    best: dict[str, Any] = {"value": math.inf, "state": None, "bad": 0}

    def validate(done: int) -> bool:
        """Evaluate, keep the best weights; True when patience has run out."""
        target = ema.module if ema is not None else module
        target.eval()
        with torch.no_grad():
            value = float(evaluate(target))  # type: ignore[misc]
        target.train()
        if not math.isfinite(value):
            raise NonFiniteLossError(f"evaluate returned {value} at step {done}")
        history.validation.append((done, value))
        if value < best["value"]:
            best.update(value=value, bad=0, step=done,
                        state={k: v.detach().clone() for k, v in target.state_dict().items()})
        else:
            best["bad"] += 1
        log.debug("%s: step %d, held-out %.4g (best %.4g)", desc, done, value, best["value"])
        return patience is not None and best["bad"] >= patience

    start = time.perf_counter()
    module.train()
    with intra_op_threads(threads), tqdm(total=steps, initial=first_step, desc=desc, unit="step",
                                         disable=not progress, dynamic_ncols=True) as bar:
        epoch, rows = -1, torch.empty(0, dtype=torch.int64)
        for step in range(first_step, steps):
            if step // steps_per_epoch != epoch:
                epoch = step // steps_per_epoch
                rows = order(epoch)
            pos = (step % steps_per_epoch) * batch_size
            index = rows[pos:pos + batch_size].to(device)
            with autocast:
                out = loss_fn(index, gen, model) if takes_model else loss_fn(index, gen)
            loss, extras = out if isinstance(out, tuple) else (out, {})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            if ema is not None:
                ema.update_parameters(module)
            pending.append(loss.detach())
            for name, value in extras.items():
                pending_extras.setdefault(name, []).append(torch.as_tensor(value).detach().float().reshape(()))
            done = step + 1
            at_checkpoint = every is not None and (done % every == 0 or done == steps)
            if len(pending) == sync_every or done == steps or (at_checkpoint and pending):
                flush(step)
            if at_checkpoint:
                save(done)
            if eval_every is not None and (done % eval_every == 0 or done == steps):
                if pending:
                    flush(step)
                if validate(done):
                    log.info("%s: stopping at step %d, %d evaluations without improvement", desc, done, patience)
                    break
    if ema is not None:
        with torch.no_grad():
            for p, q in zip(module.parameters(), ema.module.parameters()):
                p.copy_(q)
    if best["state"] is not None:
        module.load_state_dict(best["state"])
        history.best_step = best["step"]
    module.eval()
    steps = len(history.loss) if evaluate is not None else steps
    history.steps = steps
    history.epochs = steps * batch_size * world / n  # every rank takes its own batch a step
    history.seconds = elapsed + time.perf_counter() - start
    log.info("%s: %d steps in %.1f s, final loss %.4g", desc, steps, history.seconds, history.loss[-1])
    return history
