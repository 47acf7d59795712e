"""The statistics a flow standardizes its data with: the outputs' per-feature mean and one overall scale (one scale
keeps the data's geometry, and so the OT pairing), and the float contexts' per-feature mean and scale."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .. import validate as V

if TYPE_CHECKING:
    from ..data import PreferenceDataset


def output_statistics(ds: "PreferenceDataset") -> tuple[Tensor, Tensor]:
    """``(shift, scale)`` in float64 of the chosen and rejected outputs together: their per-feature mean ``(*shape)``
    and the root mean square of the centred values ``()``. Large or memory-mapped data is read chunk by chunk, never
    copied whole."""
    if 2 * ds.chosen.numel() <= V.CHUNK:
        ys = torch.cat([ds.chosen, ds.rejected]).double()
        shift = ys.mean(0)
        return shift, (ys - shift).pow(2).mean().sqrt()
    parts = [c for t in (ds.chosen, ds.rejected) for c in V.row_chunks(t)]
    count = 2 * len(ds)
    shift = sum(c.double().sum(0) for c in parts) / count
    scale = (sum(float((c.double() - shift).pow(2).sum()) for c in parts) / (count * shift.numel())) ** 0.5
    return shift, torch.tensor(scale, dtype=torch.float64)


def context_statistics(context: Tensor) -> tuple[Tensor, Tensor]:
    """``(shift, scale)`` in float64 of float contexts ``(N, *cshape)``: per-feature mean and standard deviation, a
    constant feature (or a single row) getting scale 1."""
    c = context.double()
    shift = c.mean(0)
    sd = c.std(0, unbiased=False) if len(c) > 1 else torch.ones_like(shift)
    return shift, torch.where(sd > 1e-6 * sd.max().clamp_min(1e-12), sd, torch.ones_like(sd))
