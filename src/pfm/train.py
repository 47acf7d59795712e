"""The one training loop: minibatches of row indices, a loss, Adam, optional clipping and EMA, a progress bar,
a history. Flows and baselines all train through :func:`optimize`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from . import _validate as V
from .errors import InvalidInputError

log = logging.getLogger("pfm")

LossFn = Callable[[Tensor, torch.Generator], Union[Tensor, tuple[Tensor, dict[str, Tensor]]]]
"""``loss_fn(index, generator) -> scalar``: the loss of the rows ``index`` (int64 ``(batch,)``); or
``(loss, {name: scalar})`` to also record other quantities (e.g. RLHF's reward and KL) in ``History.extras``."""


@dataclass
class History:
    """What a training run did: the loss of every step, other recorded quantities per step, and the time it took."""

    loss: list[float] = field(default_factory=list)
    steps: int = 0
    epochs: float = 0.0
    seconds: float = 0.0
    extras: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"loss": self.loss, "steps": self.steps, "epochs": self.epochs, "seconds": self.seconds,
                "extras": self.extras}


class NonFiniteLossError(InvalidInputError):
    """The loss became NaN or infinite."""


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
) -> History:
    """Minimize ``loss_fn`` over the parameters of ``module`` with Adam (AdamW if ``weight_decay``).

    Each epoch visits the ``n`` rows in a fresh random order, ``batch_size`` at a time. With ``ema_decay``, an
    exponential moving average of the weights is kept and copied into ``module`` at the end. The loss is read back
    every ``sync_every`` steps (not every step, which would stall a GPU); a NaN or infinite loss stops the run with
    :class:`NonFiniteLossError` naming the step.
    """
    V.check_positive_int(n, "n")
    V.check_positive_int(steps, "steps")
    V.check_positive_int(batch_size, "batch_size")
    V.check_nonneg_float(lr, "lr")
    V.check_nonneg_float(weight_decay, "weight_decay")
    V.check_nonneg_float(grad_clip, "grad_clip", allow_none=True)
    if ema_decay is not None and not 0.0 < float(ema_decay) < 1.0:
        raise InvalidInputError(f"ema_decay must be in (0, 1), got {ema_decay!r}")
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise InvalidInputError("the module has no trainable parameters")
    if device is None:
        device = params[0].device
    device = torch.device(device)
    batch_size = min(batch_size, n)

    opt_cls = torch.optim.AdamW if weight_decay else torch.optim.Adam
    opt = opt_cls(params, lr=lr, weight_decay=weight_decay)
    ema = None
    if ema_decay is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(float(ema_decay)))
    gen = torch.Generator(device=device).manual_seed(seed)
    order_gen = torch.Generator().manual_seed(seed + 1)

    from tqdm.auto import tqdm

    history = History()
    pending: list[Tensor] = []
    pending_extras: dict[str, list[Tensor]] = {}
    order = torch.empty(0, dtype=torch.int64)
    pos = 0
    start = time.perf_counter()
    module.train()
    with tqdm(total=steps, desc=desc, unit="step", disable=not progress, dynamic_ncols=True) as bar:
        for step in range(steps):
            if pos + batch_size > len(order):
                order = torch.randperm(n, generator=order_gen)
                pos = 0
            index = order[pos:pos + batch_size].to(device)
            pos += batch_size
            out = loss_fn(index, gen)
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
            if len(pending) == sync_every or step == steps - 1:
                values = torch.stack(pending).float().cpu().tolist()
                first = len(history.loss)
                for j, v in enumerate(values):
                    if not math.isfinite(v):
                        raise NonFiniteLossError(
                            f"the loss became {v} at step {first + j + 1}; lower lr, set grad_clip, "
                            "or check the data's scale (normalize=True)")
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
    if ema is not None:
        with torch.no_grad():
            for p, q in zip(module.parameters(), ema.module.parameters()):
                p.copy_(q)
    module.eval()
    history.steps = steps
    history.epochs = steps * batch_size / n
    history.seconds = time.perf_counter() - start
    log.info("%s: %d steps in %.1f s, final loss %.4g", desc, steps, history.seconds, history.loss[-1])
    return history
