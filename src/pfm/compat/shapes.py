"""Shapes the released code accepts and pfm's :class:`pfm.PreferenceFlow` does not, made to fit.

- A field that drops the outputs' singleton axis: the released ``MLP`` flattens ``y`` ``(B, 1, D)`` to ``(B, D)`` and
  returns that. :class:`ReshapedField` reshapes its velocity back to ``y``'s shape.
- Outputs and contexts without the batch axis or the singleton axis, as the released ``FlowPolicy`` passes them to
  ``compute_target`` (actions ``(seg_len * action_dim,)``, one state ``(state_dim,)``): :func:`as_batch` gives the
  flow ``(N, *output_shape)`` and the shape to return.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from .. import validate as V
from ..errors import InvalidInputError

DROPPED_AXIS_WARNING = (
    "the field returned {got} for y of shape {want}: the same numbers without the singleton axis, as the released "
    "MLP returns them. pfm reshapes the velocity to y's shape. (The released fit subtracted it from the target "
    "{want} as it came, which broadcasts to {bcast}: every row's velocity was trained toward every target of its "
    "batch.)")


class ReshapedField(nn.Module):
    """``field(t, y, x)``, its velocity reshaped to ``y``'s shape (same number of elements)."""

    def __init__(self, field: nn.Module) -> None:
        super().__init__()
        self.field = field

    def forward(self, t: Tensor, y: Tensor, x: Optional[Tensor] = None) -> Tensor:
        return self.field(t, y, x).reshape(y.shape)


@torch.no_grad()
def fit_field(field: nn.Module, y: Tensor, x: Optional[Tensor]) -> nn.Module:
    """``field``, or :class:`ReshapedField` around it (with one warning) when it returns ``y``'s numbers in another
    shape. ``y`` ``(B, *shape)`` with ``B >= 2`` (a batch of one could not tell ``(B, D)`` from ``(1, D)``), ``x``
    the matching contexts. A field that fails or returns anything else is left for the flow's own check to report."""
    t = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
    was_training = field.training
    field.eval()
    try:
        v = field(t, y, x)
    except Exception:  # noqa: BLE001 - reported, with the call, by PreferenceFlow's own check
        return field
    finally:
        field.train(was_training)
    if not isinstance(v, Tensor) or v.shape == y.shape or v.numel() != y.numel() or v.shape[0] != y.shape[0]:
        return field
    bcast = tuple(torch.broadcast_shapes(v.shape, y.shape)) if _broadcastable(v.shape, y.shape) else None
    warnings.warn(DROPPED_AXIS_WARNING.format(got=V.shape_of(v), want=V.shape_of(y),
                                              bcast=bcast if bcast is not None else "an error"),
                  UserWarning, stacklevel=3)
    return ReshapedField(field)


def _broadcastable(a: torch.Size, b: torch.Size) -> bool:
    try:
        torch.broadcast_shapes(a, b)
    except RuntimeError:
        return False
    return True


def as_batch(y: Tensor, output_shape: tuple[int, ...], name: str = "source") -> tuple[Tensor, tuple[int, ...]]:
    """``(y as (N, *output_shape), the shape to give the result back in)``.

    ``y`` may be a batch ``(N, *output_shape)``, one output ``output_shape``, or either without the output's
    singleton axes (``(N, D)`` or ``(D,)`` for outputs ``(1, D)``)."""
    shape = tuple(y.shape)
    core = tuple(d for d in output_shape if d != 1)
    if len(shape) >= 1 and shape[1:] == output_shape:
        return y, shape
    if shape in (output_shape, core):
        return y.reshape(1, *output_shape), shape
    if len(shape) >= 1 and shape[1:] == core and core != output_shape:
        return y.reshape(shape[0], *output_shape), shape
    want = ", ".join(map(str, output_shape))
    raise InvalidInputError(f"{name} has shape {V.shape_of(y)}; this flow's outputs are ({want}): pass (N, {want}), "
                            f"one output ({want}){'' if core == output_shape else ' or either without the axes of size 1'}")


def single_context(x: Optional[Tensor], n: int, context_shape: Optional[tuple[int, ...]]) -> Optional[Tensor]:
    """One float context for a single output, given without its batch axis (``(state_dim,)`` for one state), as
    ``(1, *context_shape)``; anything else unchanged (the flow checks it)."""
    if x is None or context_shape is None or n != 1:
        return x
    if tuple(x.shape) == tuple(context_shape) or (x.dim() == 1 and x.numel() == math.prod(context_shape)):
        return x.reshape(1, *context_shape)
    return x
