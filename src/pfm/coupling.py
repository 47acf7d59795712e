"""Couplings: which rejected output y0 is paired with which preferred output y1 in a minibatch.

A batch holds B triples ``(context[i], y1[i], y0[i])``. A coupling returns index tensors ``(i0, i1)`` of length B:
the k-th training pair is ``y0[i0[k]] -> y1[i1[k]]`` under ``context[i0[k]]``.

Methods:
    ``paired``       the pairs as given (i0 = i1 = arange(B)).
    ``independent``  a random permutation of y1 (within each context group).
    ``ot``           exact minibatch optimal transport with squared Euclidean cost (scipy's linear_sum_assignment).
    ``sinkhorn``     entropic OT (POT, on the tensors' device); each y0 draws its partner from its row of the plan.

Contexts: the paper's released code re-pairs across the whole batch and so can pair a rejected output of one context
with a preferred output of another. Here, with ``within_context=True`` (the default):
    * class labels ``(B,)``: every method pairs only outputs with the same label (one problem per label);
    * float contexts ``(B, *cshape)``: ``independent`` permutes only among rows with identical contexts; ``ot`` and
      ``sinkhorn`` add a context term to the cost, ``cost_ij = |y0_i - y1_j|^2 / mean_y + context_weight *
      |c_i - c_j|^2 / mean_c`` (each term divided by its batch mean, so the weight is free of units). The default
      weight 10 makes pairing across contexts ten times as costly as a typical output distance: pairs cross to
      another context only where it is nearly identical.

Sub-blocks: ``block=b`` couples rows ``[0, b)``, ``[b, 2b)``, ... of the batch each on its own (the batch's rows come
in a random order, so a sub-block is a random minibatch of ``b``). Exact OT's time grows faster than the square of the
rows while its coupling's cost grows slowly as a block shrinks: measured in ``benchmarks/data_scaling.py`` (the
performance page, "Pairing at scale").
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
from torch import Tensor

from . import validate as V
from .errors import InvalidInputError

Coupling = Literal["paired", "independent", "ot", "sinkhorn"]
COUPLINGS: tuple[str, ...] = ("paired", "independent", "ot", "sinkhorn")


def context_groups(context: Optional[Tensor]) -> Optional[Tensor]:
    """Group ids ``(B,)``: the label itself for labels, one id per distinct row for float contexts."""
    if context is None:
        return None
    if not context.is_floating_point():
        return context
    return torch.unique(context.reshape(context.shape[0], -1), dim=0, return_inverse=True)[1]


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """``(B, B)`` squared Euclidean distances between the flattened rows of ``a`` and ``b``."""
    a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    return torch.cdist(a2, b2).pow(2)


def couple(
    y0: Tensor,
    y1: Tensor,
    context: Optional[Tensor] = None,
    method: Coupling = "ot",
    *,
    within_context: bool = True,
    context_weight: float = 10.0,
    reg: float = 0.05,
    block: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> tuple[Tensor, Tensor]:
    """Pair the rows of ``y0`` (rejected, ``(B, *shape)``) with those of ``y1`` (preferred, ``(B, *shape)``).

    Args:
        context: ``None``, labels ``(B,)`` or float contexts ``(B, *cshape)``; row i is the context of both y0[i]
            and y1[i].
        method: ``paired``, ``independent``, ``ot`` or ``sinkhorn``.
        within_context: pair only within a context (see the module docstring); ``False`` reproduces the released
            code, which ignores the context when it re-pairs.
        context_weight: weight of the context term of the OT cost for float contexts.
        reg: entropic regularization of ``sinkhorn``, relative to the mean cost.
        block: couple consecutive sub-blocks of this many rows each on its own (the last one smaller); ``None``:
            the whole batch.
        generator: torch generator for the random draws (``independent``, ``sinkhorn``); on y0's device.

    Returns:
        ``(i0, i1)``, two int64 tensors of shape ``(B,)`` on y0's device.
    """
    V.check_choice(method, "method", COUPLINGS)
    for t, name in ((y0, "y0"), (y1, "y1"), (context, "context")):
        if t is not None and not isinstance(t, Tensor):
            raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if y0.shape != y1.shape:
        raise InvalidInputError(f"y0 and y1 must have the same shape, got {V.shape_of(y0)} and {V.shape_of(y1)}")
    V.check_nonempty(y0, "y0")
    for t, name in ((y0, "y0"), (y1, "y1"), (context, "context")):
        if t is not None:
            V.check_finite(t, name)  # a NaN makes every cost NaN: scipy's solver then fails with its own error
    B, device = y0.shape[0], y0.device
    if context is not None and context.shape[0] != B:
        raise InvalidInputError(f"context has {context.shape[0]} rows but y0 has {B}")
    V.check_positive_int(block, "block", allow_none=True)
    if method == "paired":
        ar = torch.arange(B, device=device)
        return ar, ar.clone()
    if not within_context:
        context = None
    if block is None or block >= B:
        return _couple(y0, y1, context, method, context_weight, reg, generator)
    if method == "ot" and (context is None or not context.is_floating_point()):
        return torch.arange(B, device=device), _exact_ot_blocks(y0, y1, block, context)
    parts = []
    for s in range(0, B, block):
        i0, i1 = _couple(y0[s:s + block], y1[s:s + block], None if context is None else context[s:s + block],
                         method, context_weight, reg, generator)
        parts.append((i0 + s, i1 + s))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _couple(y0: Tensor, y1: Tensor, context: Optional[Tensor], method: str, context_weight: float, reg: float,
            generator: Optional[torch.Generator]) -> tuple[Tensor, Tensor]:
    """:func:`couple` of checked inputs, whole (``context`` is ``None`` when pairing ignores it)."""
    B, device = y0.shape[0], y0.device
    ar = torch.arange(B, device=device)
    if method == "independent":
        groups = context_groups(context)
        if groups is None:
            return ar, torch.randperm(B, generator=generator, device=device)
        # shuffle within each group: sort by (group, random key), then map sorted positions back
        key = torch.rand(B, generator=generator, device=device)
        order = torch.argsort(groups.double() * 2.0 + key)  # random order within each group
        by_group = torch.argsort(groups, stable=True)  # positions of each group, in index order
        i1 = torch.empty_like(ar)
        i1[by_group] = order
        return ar, i1

    cost = squared_distances(y0, y1).double()
    cost = cost / cost.mean().clamp_min(1e-12)
    penalty = None
    if context is not None:
        if context.is_floating_point():
            cc = squared_distances(context, context).double()
            cost = cost + float(context_weight) * cc / cc.mean().clamp_min(1e-12)
        else:
            penalty = context[:, None] != context[None, :]

    if method == "ot":
        return ar, _exact_ot(cost, None if penalty is None else context)
    return ar, _sinkhorn(cost, penalty, reg, generator)


def _exact_ot(cost: Tensor, labels: Optional[Tensor]) -> Tensor:
    c = cost.detach().cpu().numpy()
    i1 = np.empty(c.shape[0], dtype=np.int64)
    _assign(c, 0, None if labels is None else labels.detach().cpu().numpy(), i1)
    return torch.from_numpy(i1).to(cost.device)


def _exact_ot_blocks(y0: Tensor, y1: Tensor, block: int, labels: Optional[Tensor] = None) -> Tensor:
    """Partners ``i1`` of exact OT within each sub-block of ``block`` rows (and within each label of ``labels``
    ``(B,)``, integer, when given): the full sub-blocks' costs in one batched call and a bare loop of assignments,
    where a call of :func:`_couple` per sub-block made a dozen small torch calls each (each takes the GIL, which the
    training loop's steps wait for when a pairing thread holds it). A sub-block's partners do not depend on the
    others in the call, so :class:`pfm.pairing.PairingPlan` solves several batches in one call. (Scaling a block's
    cost, as the whole batch's is scaled, changes no assignment: it is left out.)"""
    B = y0.shape[0]
    k = B // block
    full = k * block
    i1 = np.empty(B, dtype=np.int64)
    lab = None if labels is None else labels.detach().cpu().numpy()
    exact = "donot_use_mm_for_euclid_dist"  # each distance summed alone: the same however many sub-blocks a call has
    cost = torch.cdist(y0[:full].reshape(k, block, -1), y1[:full].reshape(k, block, -1), compute_mode=exact).pow(2)
    c = cost.double().cpu().numpy()
    for j in range(k):
        _assign(c[j], j * block, None if lab is None else lab[j * block:(j + 1) * block], i1)
    if full < B:  # the last, smaller sub-block
        rest = torch.cdist(y0[full:].reshape(B - full, -1), y1[full:].reshape(B - full, -1), compute_mode=exact).pow(2)
        _assign(rest.double().cpu().numpy(), full, None if lab is None else lab[full:], i1)
    return torch.from_numpy(i1).to(y0.device)


def _assign(c: np.ndarray, offset: int, labels: Optional[np.ndarray], i1: np.ndarray) -> None:
    """Exact OT of the cost ``c`` of a batch or a sub-block (its rows start at ``offset``), within each label when
    given: the partners go into ``i1``."""
    from scipy.optimize import linear_sum_assignment

    if labels is None:
        rows, cols = linear_sum_assignment(c)
        i1[offset + rows] = offset + cols
        return
    for g in np.unique(labels):
        idx = np.flatnonzero(labels == g)
        rows, cols = linear_sum_assignment(c[np.ix_(idx, idx)])
        i1[offset + idx[rows]] = offset + idx[cols]


def _sinkhorn(cost: Tensor, penalty: Optional[Tensor], reg: float, generator: Optional[torch.Generator]) -> Tensor:
    import ot  # POT; imported here because it loads its backends at import time

    V.check_nonneg_float(reg, "reg")
    if reg <= 0:
        raise InvalidInputError(f"reg must be > 0 for sinkhorn, got {reg!r}")
    cost = cost.float()
    if penalty is not None:
        cost = cost + penalty.float() * (cost.max() + 1.0) * 100.0
    B = cost.shape[0]
    w = torch.full((B,), 1.0 / B, dtype=cost.dtype, device=cost.device)
    # an unconverged plan is still a good coupling: no warning every step (and warnings.catch_warnings is not
    # thread-safe, while couplings are solved in a background thread)
    plan = ot.sinkhorn(w, w, cost, reg, method="sinkhorn_log", numItermax=1000, stopThr=1e-6, warn=False)
    plan = torch.nan_to_num(plan, nan=0.0).clamp_min(0)
    # rows with no mass left (numerical underflow) fall back to their given partner
    empty = plan.sum(1) <= 0
    plan[empty, torch.nonzero(empty).flatten()] = 1.0
    return torch.multinomial(plan, 1, generator=generator).flatten()


def transport_cost(y0: Tensor, y1: Tensor, i0: Tensor, i1: Tensor) -> float:
    """Mean squared distance of a coupling: ``mean_k |y0[i0[k]] - y1[i1[k]]|^2``."""
    d = (y0[i0] - y1[i1]).reshape(len(i0), -1)
    return float(d.pow(2).sum(1).mean())
