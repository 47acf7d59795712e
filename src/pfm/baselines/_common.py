"""What the policy baselines share: checking a policy, freezing a reference copy, log-probs in batches."""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..errors import InvalidInputError, InvalidTypeError


def check_policy(policy: Any, name: str = "policy", trainable: bool = True) -> nn.Module:
    """An ``nn.Module`` with ``sample`` and ``log_prob``; with ``trainable``, one that has parameters to train."""
    if not isinstance(policy, nn.Module):
        raise InvalidTypeError(f"{name} must be an nn.Module with sample(context, n) and log_prob(y, context), "
                               f"got {type(policy).__name__}")
    for method in ("sample", "log_prob"):
        if not callable(getattr(policy, method, None)):
            raise InvalidTypeError(f"{name} must have a {method}() method (see pfm.policies)")
    if trainable and not any(p.requires_grad for p in policy.parameters()):
        raise InvalidInputError(f"{name} has no trainable parameters to fine-tune")
    return policy


def frozen_copy(policy: nn.Module) -> nn.Module:
    """A deep copy with gradients off, in eval mode: the fixed pi_ref of the KL term."""
    ref = copy.deepcopy(policy)
    ref.requires_grad_(False)
    return ref.eval()


@torch.no_grad()
def log_probs(policy: nn.Module, y: Tensor, context: Optional[Tensor], batch_size: int = 8192) -> Tensor:
    """``policy.log_prob`` over ``y`` in batches, without gradient: ``(n,)``."""
    out = []
    for s in range(0, y.shape[0], batch_size):
        c = None if context is None else context[s:s + batch_size]
        out.append(policy.log_prob(y[s:s + batch_size], c).reshape(-1))
    return torch.cat(out)


def trainable_copy(policy: nn.Module) -> nn.Module:
    """A deep copy in train mode that keeps which parameters are trainable: the policy a baseline fine-tunes."""
    return copy.deepcopy(policy).train()


def policy_pair(policy: nn.Module, reference: Optional[nn.Module],
                device: torch.device | str | None) -> tuple[nn.Module, nn.Module, torch.device]:
    """The copy to fine-tune and the frozen pi_ref (a copy of ``policy`` unless given), both on ``device``."""
    check_policy(policy)
    ref = frozen_copy(policy) if reference is None else check_policy(reference, "reference", trainable=False)
    pi = trainable_copy(policy)
    if device is not None:
        pi.to(device)
        ref.to(device)
    return pi, ref, next(pi.parameters()).device
