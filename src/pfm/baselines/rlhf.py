"""RLHF's second stage: fine-tune a copy of the reference policy to maximize ``E[r(y, x)] - beta KL(pi || pi_ref)``.

The policy gradient of that objective is ``E[(r(y) - beta (log pi(y) - log pi_ref(y))) grad log pi(y)]``, estimated
by REINFORCE on fresh samples with a leave-one-out baseline (RLOO: each sample's baseline is the mean return of the
other samples for the same context). The reward is any callable ``r(y, context) -> (n,)`` (a
:class:`~pfm.baselines.RewardModel`, or a true reward in tests) and is never differentiated; the KL is the Monte
Carlo estimate ``mean(log pi(y) - log pi_ref(y))`` over the samples, recorded with the reward in the history.
Its optimum is known: ``pi*(y | x) ∝ pi_ref(y | x) exp(r(y, x) / beta)``.

With ``estimator="pathwise"`` the gradient is taken through reparameterized samples instead (the policy needs
``rsample``, the reward must be differentiable, e.g. a reward model called directly rather than through its
no-grad ``score``): the loss is ``-mean(r(y) - beta (log pi(y) - log pi_ref(y)))`` with ``y = rsample(...)``. For a
high-dimensional Gaussian policy (an image generator) this has far less variance than REINFORCE, whose score
``(y - mu) / sigma^2`` sums the noise of every pixel.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from .. import validate as V
from ..config import merge
from ..data import as_context
from ..errors import InvalidInputError, InvalidTypeError
from ..train import History, optimize
from ._common import policy_pair
from .config import RLHFConfig


def rlhf(
    policy: nn.Module,
    reward: Callable[[Tensor, Optional[Tensor]], Tensor],
    contexts: Any = None,
    config: Optional[RLHFConfig] = None,
    *,
    reference: Optional[nn.Module] = None,
    **overrides: Any,
) -> tuple[nn.Module, History]:
    """KL-regularized policy optimization by REINFORCE with a leave-one-out baseline.

    Args:
        policy: the reference policy; it is not modified, a copy is fine-tuned and returned.
        reward: ``reward(y, context) -> (n,)``; higher is better.
        contexts: ``(M,)`` labels or ``(M, *cshape)`` prompts to train on; ``None`` for an unconditional policy.
        config: a :class:`pfm.baselines.RLHFConfig` (default ``RLHFConfig()``: beta 0.1, 500 steps, each drawing
            ``batch_size`` 64 contexts and ``samples_per_context`` 4 outputs for each; unconditional: ``batch_size
            * samples_per_context`` outputs; ``estimator`` ``"reinforce"``, the score function with the RLOO
            baseline, any policy and reward, or ``"pathwise"``, reparameterized, which needs ``policy.rsample`` and
            a differentiable reward); ``overrides`` are its field names (``beta=1.0, steps=200``, ...).
        reference: pi_ref for the KL term; default a frozen copy of ``policy`` as given.

    On a CPU run of more than one thread the first batch's loss (``reward`` included) is computed twice more, on
    one thread and on the size rule's count, to check that the count does not change the run's numbers before the
    thread count is tuned (:func:`pfm.optimize`'s ``invariant_loss="check"``); a reward that must see each call
    once (one that counts or logs its calls) runs unchecked with ``threads`` set.

    Returns:
        ``(fine_tuned_policy, history)``; ``history.extras`` holds ``reward`` and ``kl`` per step.
    """
    cfg = merge(config, overrides, RLHFConfig, "rlhf")
    if not callable(reward):
        raise InvalidTypeError(f"reward must be callable as reward(y, context), got {type(reward).__name__}")
    beta, estimator = float(cfg.beta), cfg.estimator
    if estimator == "pathwise" and not callable(getattr(policy, "rsample", None)):
        raise InvalidTypeError(f"estimator='pathwise' needs a policy with rsample(context, n, generator); "
                               f"{type(policy).__name__} has none (use estimator='reinforce')")
    batch_size = int(cfg.batch_size)
    pi, ref, dev = policy_pair(policy, reference, cfg.device)
    ctx = as_context(contexts, "contexts")
    if ctx is not None:
        V.check_nonempty(ctx, "contexts")
        ctx = ctx.to(dev)
    k = int(cfg.samples_per_context)
    n_rows = batch_size if ctx is None else ctx.shape[0]

    def rewards(y: Tensor, c: Optional[Tensor], n: int) -> Tensor:
        r = torch.as_tensor(reward(y, c))
        if r.dim() == 2 and r.shape[1] == 1:
            r = r[:, 0]
        if r.shape != (n,):
            raise InvalidInputError(f"reward(y, context) must return ({n},), got {tuple(r.shape)}")
        return r

    def pathwise_loss(index: Tensor, gen: torch.Generator):
        b = index.shape[0]
        c = None if ctx is None else ctx[index].repeat_interleave(k, dim=0)
        y = pi.rsample(c, b * k, generator=gen)
        r = rewards(y, c, b * k)
        if not r.requires_grad:
            raise InvalidInputError("estimator='pathwise' needs a differentiable reward: reward(y, context) returned "
                                    "a tensor without gradient (call the reward model itself, not its .score)")
        kl = pi.log_prob(y, c) - ref.log_prob(y, c)
        return -(r - beta * kl).mean(), {"reward": r.detach().mean(), "kl": kl.detach().mean()}

    def loss_fn(index: Tensor, gen: torch.Generator):
        b = index.shape[0]
        c = None if ctx is None else ctx[index].repeat_interleave(k, dim=0)
        y = pi.sample(c, b * k, generator=gen)
        logp = pi.log_prob(y, c)
        with torch.no_grad():
            r = rewards(y, c, b * k).to(logp)
            kl = logp.detach() - ref.log_prob(y, c)
            ret = (r - beta * kl).reshape(b, k) if ctx is not None else (r - beta * kl).reshape(1, b * k)
            base = (ret.sum(1, keepdim=True) - ret) / (ret.shape[1] - 1)
            adv = (ret - base).reshape(-1)
        loss = -(adv * logp).mean()
        return loss, {"reward": r.mean(), "kl": kl.mean()}

    history = optimize(pi, pathwise_loss if estimator == "pathwise" else loss_fn, n_rows, cfg, device=dev,
                       desc=f"RLHF (beta={beta:g})", invariant_loss="check")
    return pi.eval(), history
