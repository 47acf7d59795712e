"""The 2D task: the reference pi_ref, the true reward and the two preference models (see :mod:`.` for the whole
experiment)."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from pfm.errors import InvalidInputError
from pfm.objective import win_probability
from pfm.policies import GaussianMixturePolicy

REF_MEANS = torch.tensor([[-1.5, -1.0], [1.5, -1.0], [0.0, 1.2]])
REF_STDS = 0.7
REWARDS = {  # name -> (bump centers, heights, widths) of the true reward
    # default: every peak lies inside the reference's support; the high-value regions reach beyond it
    "inside": (torch.tensor([[1.7, 0.8], [-2.0, 0.9], [0.0, -2.0]]), torch.tensor([1.0, 0.7, 0.5]),
               torch.tensor([0.9, 0.7, 0.7])),
    # the highest peak lies just outside the reference's support (a harder case for PFM x k, see the README)
    "edge": (torch.tensor([[2.2, 1.2], [-2.2, 1.0], [0.0, -2.2]]), torch.tensor([1.0, 0.7, 0.5]),
             torch.tensor([1.0, 0.8, 0.8])),
}
BT_TEMPERATURE = 0.05
GOOD = 0.3
SUPPORT_QUANTILE = 0.01
PREFERENCES = ("bt", "threshold")
LIMITS = (-4.5, 4.5)


def reference_policy() -> GaussianMixturePolicy:
    """The pre-trained policy pi_ref (fixed parameters)."""
    return GaussianMixturePolicy(REF_MEANS, REF_STDS)


def true_reward(y: Tensor, layout: str = "inside") -> Tensor:
    """``(n, 2) -> (n,)``: a sum of Gaussian bumps (:data:`REWARDS`), in [0, ~1]."""
    if layout not in REWARDS:
        raise InvalidInputError(f"reward layout must be one of {tuple(REWARDS)}, got {layout!r}")
    centers, heights, widths = (t.to(y) for t in REWARDS[layout])
    d2 = (y[:, None, :] - centers[None]).pow(2).sum(-1)
    return (heights * torch.exp(-d2 / (2 * widths ** 2))).sum(1)


def on_rewards(kind: str) -> Callable[[Tensor, Tensor], Tensor]:
    """``P(a preferred)`` as a function of the two true rewards: both preference models depend on nothing else."""
    if kind == "bt":
        return lambda ra, rb: torch.sigmoid((ra - rb) / BT_TEMPERATURE)
    if kind == "threshold":
        return lambda ra, rb: 0.5 + 0.5 * ((ra >= GOOD).to(ra.dtype) - (rb >= GOOD).to(rb.dtype))
    raise InvalidInputError(f"preference must be one of {PREFERENCES}, got {kind!r}")


def preference_model(kind: str, layout: str = "inside") -> Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]:
    """``prefer(y_a, y_b, context) -> P(y_a preferred)``, ``(n,)``, for ``kind`` in :data:`PREFERENCES`."""
    true_reward(torch.zeros(1, 2), layout)  # checks the layout
    g = on_rewards(kind)

    def prefer(a: Tensor, b: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return g(true_reward(a, layout), true_reward(b, layout))

    return prefer


def win_rate_function(kind: str, layout: str, opponents: Tensor) -> Callable[[Tensor], Tensor]:
    """``y -> w(y)``, the chance that ``y`` beats a draw of ``opponents`` (Theorem 1's ``w`` when they are reference
    samples), computed on the rewards: one ``(N, M)`` table of probabilities instead of ``N M`` reward calls."""
    g = on_rewards(kind)
    r_opp = true_reward(opponents, layout)[:, None]

    def w(y: Tensor) -> Tensor:
        return win_probability(lambda a, b, c: g(a[:, 0], b[:, 0]), true_reward(y, layout)[:, None], r_opp)

    return w

def grid(n: int = 200) -> tuple[np.ndarray, np.ndarray, Tensor]:
    """An ``n x n`` grid over :data:`LIMITS`: its meshgrid coordinates and the points ``(n * n, 2)``."""
    g = np.linspace(*LIMITS, n)
    gx, gy = np.meshgrid(g, g)
    return gx, gy, torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float32)
