"""RLHF's second stage: fine-tune a copy of the reference policy to maximize ``E[r(y, x)] - beta KL(pi || pi_ref)``.

The policy gradient of that objective is ``E[(r(y) - beta (log pi(y) - log pi_ref(y))) grad log pi(y)]``, estimated
by REINFORCE on fresh samples with a leave-one-out baseline (RLOO: each sample's baseline is the mean return of the
other samples for the same context). The reward is any callable ``r(y, context) -> (n,)`` (a
:class:`~pfm.baselines.RewardModel`, or a true reward in tests) and is never differentiated; the KL is the Monte
Carlo estimate ``mean(log pi(y) - log pi_ref(y))`` over the samples, recorded with the reward in the history.
Its optimum is known: ``pi*(y | x) ∝ pi_ref(y | x) exp(r(y, x) / beta)``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from .. import _validate as V
from ..data import as_context
from ..errors import InvalidInputError, InvalidTypeError
from ..train import History, optimize
from ._common import check_beta, policy_pair


def rlhf(
    policy: nn.Module,
    reward: Callable[[Tensor, Optional[Tensor]], Tensor],
    contexts: Any = None,
    *,
    beta: float = 0.1,
    steps: int = 500,
    batch_size: int = 64,
    samples_per_context: int = 4,
    lr: float = 1e-3,
    grad_clip: Optional[float] = 1.0,
    reference: Optional[nn.Module] = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> tuple[nn.Module, History]:
    """KL-regularized policy optimization by REINFORCE with a leave-one-out baseline.

    Args:
        policy: the reference policy; it is not modified, a copy is fine-tuned and returned.
        reward: ``reward(y, context) -> (n,)``; higher is better.
        contexts: ``(M,)`` labels or ``(M, *cshape)`` prompts to train on; ``None`` for an unconditional policy.
        beta: KL coefficient (> 0).
        steps: optimizer steps; each draws ``batch_size`` contexts and ``samples_per_context`` outputs for each
            (unconditional: ``batch_size * samples_per_context`` outputs).
        reference: pi_ref for the KL term; default a frozen copy of ``policy`` as given.

    Returns:
        ``(fine_tuned_policy, history)``; ``history.extras`` holds ``reward`` and ``kl`` per step.
    """
    if not callable(reward):
        raise InvalidTypeError(f"reward must be callable as reward(y, context), got {type(reward).__name__}")
    beta = check_beta(beta)
    V.check_positive_int(samples_per_context, "samples_per_context")
    if samples_per_context < 2:
        raise InvalidInputError("samples_per_context must be >= 2 (the leave-one-out baseline needs two samples)")
    V.check_positive_int(batch_size, "batch_size")
    pi, ref, dev = policy_pair(policy, reference, device)
    ctx = as_context(contexts, "contexts")
    if ctx is not None:
        V.check_nonempty(ctx, "contexts")
        ctx = ctx.to(dev)
    k = int(samples_per_context)
    n_rows = batch_size if ctx is None else ctx.shape[0]

    def loss_fn(index: Tensor, gen: torch.Generator):
        b = index.shape[0]
        c = None if ctx is None else ctx[index].repeat_interleave(k, dim=0)
        y = pi.sample(c, b * k, generator=gen)
        logp = pi.log_prob(y, c)
        with torch.no_grad():
            r = torch.as_tensor(reward(y, c))
            if r.dim() == 2 and r.shape[1] == 1:
                r = r[:, 0]
            if r.shape != (b * k,):
                raise InvalidInputError(f"reward(y, context) must return ({b * k},), got {tuple(r.shape)}")
            r = r.to(logp)
            kl = logp.detach() - ref.log_prob(y, c)
            ret = (r - beta * kl).reshape(b, k) if ctx is not None else (r - beta * kl).reshape(1, b * k)
            base = (ret.sum(1, keepdim=True) - ret) / (ret.shape[1] - 1)
            adv = (ret - base).reshape(-1)
        loss = -(adv * logp).mean()
        return loss, {"reward": r.mean(), "kl": kl.mean()}

    history = optimize(pi, loss_fn, n_rows, steps=steps, batch_size=batch_size, lr=lr, grad_clip=grad_clip,
                       seed=seed, device=dev, progress=progress, desc=f"RLHF (beta={beta:g})")
    return pi.eval(), history
