"""Integrate ``dy/dt = v(t, y, context)`` from t = 0 to t = 1.

Fixed-step ``euler``, ``midpoint`` and ``rk4`` take ``steps`` steps (1, 2 and 4 evaluations of the field a step);
any adaptive method of torchdiffeq (``dopri5``, ``dopri8``, ``bosh3``, ``adaptive_heun``, ...) takes ``atol`` and
``rtol``. The field is always called with ``t`` of shape ``(B,)``, whatever the solver passes.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from . import validate as V
from .config import FIXED_STEP, METHODS, SolverConfig
from .errors import InvalidInputError

Field = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]

def _step(f: Callable[[Tensor, Tensor], Tensor], method: str, t: Tensor, y: Tensor, h: Tensor) -> Tensor:
    if method == "euler":
        return y + h * f(t, y)
    if method == "midpoint":
        return y + h * f(t + h / 2, y + (h / 2) * f(t, y))
    k1 = f(t, y)
    k2 = f(t + h / 2, y + (h / 2) * k1)
    k3 = f(t + h / 2, y + (h / 2) * k2)
    k4 = f(t + h, y + h * k3)
    return y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


def solve(
    field: Field,
    y: Tensor,
    context: Optional[Tensor] = None,
    *,
    method: Optional[str] = None,
    steps: Optional[int] = None,
    atol: Optional[float] = None,
    rtol: Optional[float] = None,
    t_span: tuple[float, float] = (0.0, 1.0),
    return_trajectory: bool = False,
) -> Tensor:
    """Push ``y`` ``(B, *shape)`` through the flow of ``field``.

    Args:
        field: ``field(t, y, context)`` with ``t: (B,)``.
        context: passed to the field unchanged.
        method, steps, atol, rtol: default to :class:`pfm.SolverConfig`'s (midpoint, 4 steps, 1e-4).
        method: ``euler``, ``midpoint``, ``rk4`` (fixed ``steps``) or an adaptive torchdiffeq method.
        steps: steps of a fixed-step method; for an adaptive one, the number of intervals of the returned
            trajectory (it picks its own steps).
        atol, rtol: tolerances of an adaptive method.
        t_span: start and end time.
        return_trajectory: return ``(steps + 1, B, *shape)`` states at evenly spaced times instead of the end point.

    Returns:
        ``(B, *shape)`` end points, or the trajectory.
    """
    default = SolverConfig()
    method = default.method if method is None else method
    steps = default.steps if steps is None else steps
    atol = default.atol if atol is None else atol
    rtol = default.rtol if rtol is None else rtol
    V.check_choice(method, "method", METHODS)
    V.check_int(steps, "steps", low=1, high=1 << 20)
    V.check_positive_float(atol, "atol")
    V.check_positive_float(rtol, "rtol")
    B = y.shape[0]

    def f(t: Tensor, state: Tensor) -> Tensor:
        return field(t.to(state.dtype).expand(B), state, context)

    t0, t1 = float(t_span[0]), float(t_span[1])
    if method in FIXED_STEP:
        h = torch.tensor((t1 - t0) / steps, dtype=y.dtype, device=y.device)
        t = torch.tensor(t0, dtype=y.dtype, device=y.device)
        states = [y] if return_trajectory else None
        for i in range(steps):
            y = _step(f, method, t, y, h)
            t = torch.tensor(t0 + (i + 1) * (t1 - t0) / steps, dtype=y.dtype, device=y.device)
            if states is not None:
                states.append(y)
        return torch.stack(states) if states is not None else y

    import torchdiffeq

    n_times = steps + 1 if return_trajectory else 2
    times = torch.linspace(t0, t1, n_times, dtype=y.dtype, device=y.device)
    try:
        traj = torchdiffeq.odeint(f, y, times, method=method, atol=atol, rtol=rtol)
    except AssertionError as exc:  # torchdiffeq reports an underflowing step size this way
        raise InvalidInputError(f"the {method} solver failed ({exc}); try a fixed-step method") from None
    return traj if return_trajectory else traj[-1]


def strength_spans(strength: Any) -> list[float]:
    """The end times of the solves that move an output by ``strength`` (see :meth:`pfm.PreferenceFlow.transform`):
    ``floor(strength)`` whole ones (t: 0 -> 1), then one to the fraction left; ``[]`` for 0."""
    V.check_nonneg_float(strength, "strength")
    whole, part = divmod(float(strength), 1.0)
    if whole > 1 << 16:
        raise InvalidInputError(f"strength must be at most {1 << 16:,} whole applications, got {strength!r}")
    return [1.0] * int(whole) + ([part] if part > 1e-9 else [])
