"""Keeping the best weights of a run: evaluate now and then (e.g. a held-out loss, lower is better), remember the
weights of the best evaluation, and tell when patience has run out."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

from ..errors import InvalidTypeError, NonFiniteLossError

Evaluate = Callable[[nn.Module], float]


class BestWeights:
    """The weights of ``target``'s lowest ``evaluate(target)`` so far; ``patience`` evaluations without
    improvement end the run (``None``: never)."""

    def __init__(self, evaluate: Evaluate, patience: Optional[int] = None) -> None:
        self.evaluate = evaluate
        self.patience = patience
        self.value = math.inf
        self.step: Optional[int] = None
        self.state: Optional[dict[str, torch.Tensor]] = None
        self.bad = 0

    def __call__(self, target: nn.Module, step: int) -> tuple[float, bool]:
        """Evaluate ``target`` (in eval mode, without gradients) at ``step``: ``(value, out of patience)``."""
        target.eval()
        with torch.no_grad():
            value = float(self.evaluate(target))
        target.train()
        if not math.isfinite(value):
            raise NonFiniteLossError(f"evaluate returned {value} at step {step}")
        if value < self.value:
            self.value, self.step, self.bad = value, step, 0
            self.state = {k: v.detach().clone() for k, v in target.state_dict().items()}
        else:
            self.bad += 1
        return value, self.patience is not None and self.bad >= self.patience

    def restore(self, module: nn.Module) -> Optional[int]:
        """Load the best weights into ``module``; the step they are from (None if nothing was evaluated)."""
        if self.state is None:
            return None
        module.load_state_dict(self.state)
        return self.step


def check_evaluate(evaluate: object) -> None:
    if not callable(evaluate):
        raise InvalidTypeError(f"evaluate must be a callable evaluate(model) -> float, got "
                                f"{type(evaluate).__name__}")
