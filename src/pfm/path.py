"""The probability path between a coupled pair and the flow matching loss.

``y_t = (1 - t) y0 + t y1 + sigma * eps``, ``eps ~ N(0, I)``; the regression target is ``u = y1 - y0``
(the conditional field of OT-CFM, Tong et al. 2023, which the paper uses).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor


def _bcast(t: Tensor, like: Tensor) -> Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


def sample_path(
    y0: Tensor, y1: Tensor, t: Tensor, sigma: float = 0.0, generator: Optional[torch.Generator] = None
) -> tuple[Tensor, Tensor]:
    """A point on the path and its target.

    Args:
        y0, y1: ``(B, *shape)`` coupled rejected and preferred outputs.
        t: ``(B,)`` times in [0, 1].
        sigma: standard deviation of the Gaussian around the straight line.

    Returns:
        ``(y_t, u)``, both ``(B, *shape)``.
    """
    tb = _bcast(t, y0)
    yt = (1 - tb) * y0 + tb * y1
    if sigma > 0:
        yt = yt + sigma * torch.randn(y0.shape, generator=generator, device=y0.device, dtype=y0.dtype)
    return yt, y1 - y0


def field_and_target(
    field: Callable[[Tensor, Tensor, Optional[Tensor]], Tensor],
    y0: Tensor,
    y1: Tensor,
    context: Optional[Tensor] = None,
    sigma: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> tuple[Tensor, Tensor]:
    """``(v, u)``, both ``(B, *shape)``: ``field(t, y_t, context)`` and its target ``y1 - y0`` at ``t ~ U[0, 1]``."""
    t = torch.rand(y0.shape[0], generator=generator, device=y0.device, dtype=y0.dtype)
    yt, u = sample_path(y0, y1, t, sigma, generator)
    v = field(t, yt, context)
    if v.shape != u.shape:
        raise ValueError(f"the vector field returned shape {tuple(v.shape)} for inputs of shape {tuple(u.shape)}; "
                         "it must return the shape of y")
    return v, u


def flow_matching_loss(
    field: Callable[[Tensor, Tensor, Optional[Tensor]], Tensor],
    y0: Tensor,
    y1: Tensor,
    context: Optional[Tensor] = None,
    sigma: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Mean squared error between ``field(t, y_t, context)`` and ``y1 - y0`` for ``t ~ U[0, 1]``."""
    v, u = field_and_target(field, y0, y1, context, sigma, generator)
    return count_invariant_mean((v - u).pow(2))


PARALLEL_REDUCTION = 32768
"""torch's grain size: a CPU reduction of more values than this may be split among the intra-op threads."""


def count_invariant_mean(x: Tensor) -> Tensor:
    """``x.mean()`` whose value does not depend on torch's intra-op thread count, with ``x.mean()``'s gradient.

    A CPU ``mean()`` of more than :data:`PARALLEL_REDUCTION` values sums them in one part per thread, so its last
    bits change with the count (about half of random ``(256, 784)`` or ``(64, 1, 28, 28)`` tensors, 1 against 2
    threads, torch 2.13): a loss recorded, or a held-out loss that picks the best step, would then depend on the
    count a :class:`pfm.train.threads.ThreadTuner` picked. The mean of the rows' means is computed one row per
    thread (the same on any count, whenever ``x`` has more than one row: 20 of 20 seeds for each of those shapes) and
    returned as the value; the gradient is still ``mean()``'s (``mean + (value - mean)``, exact for two numbers this
    close), so training is bit-for-bit what it was."""
    mean = x.mean()
    if x.dim() < 2 or x.shape[0] < 2 or x.numel() <= PARALLEL_REDUCTION:
        return mean
    with torch.no_grad():
        value = x.flatten(1).mean(1).mean()
    return mean + (value - mean.detach())
