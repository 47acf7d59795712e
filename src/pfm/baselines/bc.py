"""Behavior cloning: fit a policy to outputs by maximum likelihood, ``max E[log pi(y | x)]``.

It makes pi_ref from an offline data set (the control experiment's BC policy) and, on the preferred outputs of the
pairs only, the "Marginal BC" baseline, which imitates y+ and ignores y-.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from .. import validate as V
from ..data import as_context
from ..errors import InvalidInputError
from ..config import merge
from ..train import History, optimize
from ._common import check_policy, trainable_copy
from .config import BCConfig


def behavior_cloning(
    policy: nn.Module,
    outputs: Any,
    contexts: Any = None,
    config: Optional[BCConfig] = None,
    *,
    validation: Optional[tuple[Any, Any]] = None,
    **overrides: Any,
) -> tuple[nn.Module, History]:
    """Fit a copy of ``policy`` to ``outputs (N, *output_shape)`` given ``contexts`` by maximum likelihood.

    Args:
        policy: the policy to start from (``log_prob(y, context)``); not modified, a copy is trained.
        outputs, contexts: the demonstrations; contexts ``(N,)`` labels or ``(N, *cshape)`` vectors, or None.
        config: a :class:`pfm.baselines.BCConfig` (default ``BCConfig()``: 2,000 steps of 256 rows); ``overrides``
            are its field names (``steps=500, lr=1e-4``, ...).
        validation: optional held-out ``(outputs, contexts)``; their mean negative log-likelihood is measured
            every ``validate_every`` steps and the best weights are kept (see :func:`pfm.optimize`).

    Returns:
        ``(fitted_policy, history)``; the loss is the mean negative log-likelihood per output.
    """
    cfg = merge(config, overrides, BCConfig, "behavior_cloning")
    check_policy(policy)
    y = V.as_float(outputs, "outputs")
    V.check_nonempty(y, "outputs")
    V.check_finite(y, "outputs")
    c = as_context(contexts, "contexts", n=y.shape[0])
    pi = trainable_copy(policy)
    if cfg.device is not None:
        pi.to(cfg.device)
    dev = next(pi.parameters()).device
    y = y.to(dev)
    c = None if c is None else c.to(dev)

    def loss_fn(index: Tensor, gen: torch.Generator) -> Tensor:
        return -pi.log_prob(y[index], None if c is None else c[index]).mean()

    evaluate = None
    if validation is not None:
        if not isinstance(validation, (tuple, list)) or len(validation) != 2:
            raise InvalidInputError("validation must be a pair (outputs, contexts)")
        vy = V.as_float(validation[0], "validation outputs").to(dev)
        V.check_nonempty(vy, "validation outputs")
        if vy.shape[1:] != y.shape[1:]:
            raise InvalidInputError(f"validation outputs have shape {tuple(vy.shape[1:])}, the outputs "
                                    f"{tuple(y.shape[1:])}")
        vc = as_context(validation[1], "validation contexts", n=vy.shape[0])
        vc = None if vc is None else vc.to(dev)

        def evaluate(model: nn.Module) -> float:
            return float(-model.log_prob(vy, vc).mean())

    history = optimize(pi, loss_fn, y.shape[0], cfg, device=dev, desc="behavior cloning", evaluate=evaluate,
                       invariant_loss="check")
    return pi.eval(), history
