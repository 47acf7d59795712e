"""Choosing one output among n candidates: best-of-n by a score, and PFM-select (the candidate nearest a flowed
point).

Best-of-n is the practitioner's alternative to any alignment method for a black-box model: sample n outputs from
the reference and keep the one a scorer (a reward model, or the annotator itself) rates highest. PFM-select uses a
trained flow instead of a scorer: push one candidate through the flow and return the candidate nearest the flowed
point, so the output is always one of the reference's own (for text: a real sentence, no decoder needed).

Shapes: ``candidates`` is ``(B, n, *shape)`` (n candidates for each of B inputs), ``scores`` ``(B, n)``, a target
``(B, *shape)``; every function returns the chosen ``(B, *shape)`` and, where said, the chosen index ``(B,)``.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from . import validate as V
from .errors import InvalidInputError

METRICS = ("euclidean", "cosine")


def _candidates(candidates: Any) -> Tensor:
    candidates = V.as_float(candidates, "candidates")
    V.check_min_dim(candidates, "candidates", 2, "(B, n, *shape): n candidates for each of B inputs")
    V.check_nonempty(candidates, "candidates")
    V.check_finite(candidates, "candidates")
    return candidates


def _pick(candidates: Tensor, index: Tensor) -> Tensor:
    return candidates[torch.arange(candidates.shape[0], device=candidates.device), index]


def best_of_n(candidates: Any, scores: Any) -> tuple[Tensor, Tensor]:
    """The highest-scoring candidate of each row: ``candidates (B, n, *shape)``, ``scores (B, n)`` ->
    ``(chosen (B, *shape), index (B,))``. Ties go to the first candidate."""
    candidates = _candidates(candidates)
    scores = V.as_float(scores, "scores").to(candidates.device)
    if tuple(scores.shape) != tuple(candidates.shape[:2]):
        raise InvalidInputError(f"scores must have shape (B, n) = {tuple(candidates.shape[:2])}, one score per "
                                f"candidate; got {V.shape_of(scores)}")
    if torch.isnan(scores).any():
        raise InvalidInputError("scores holds NaN: a scorer must rate every candidate")
    index = scores.argmax(dim=1)
    return _pick(candidates, index), index


def nearest_candidate(target: Any, candidates: Any, metric: str = "euclidean") -> tuple[Tensor, Tensor, Tensor]:
    """The candidate of each row nearest ``target (B, *shape)`` among ``candidates (B, n, *shape)``:
    returns ``(chosen (B, *shape), index (B,), closeness (B,))`` where closeness is the Euclidean distance
    (``metric="euclidean"``) or the cosine similarity (``metric="cosine"``) between the target and the chosen."""
    V.check_choice(metric, "metric", METRICS)
    candidates = _candidates(candidates)
    target = V.as_float(target, "target").to(candidates.device)
    V.check_finite(target, "target")
    expected = (candidates.shape[0], *candidates.shape[2:])
    if tuple(target.shape) != expected:
        raise InvalidInputError(f"target must have shape {expected} (one point per row of candidates "
                                f"{tuple(candidates.shape)}); got {V.shape_of(target)}")
    flat = candidates.reshape(candidates.shape[0], candidates.shape[1], -1)
    point = target.reshape(target.shape[0], 1, -1)
    if metric == "euclidean":
        closeness = (flat - point).pow(2).sum(-1).sqrt()
        index = closeness.argmin(dim=1)
    else:
        closeness = torch.nn.functional.cosine_similarity(flat, point.expand_as(flat), dim=-1)
        index = closeness.argmax(dim=1)
    chosen_closeness = closeness.gather(1, index[:, None])[:, 0]
    return _pick(candidates, index), index, chosen_closeness


def pfm_select(flow: Any, candidates: Any, context: Any = None, *, metric: str = "euclidean",
               anchor: int = 0, iterations: int = 1, strength: Optional[float] = None,
               **solver: Any) -> tuple[Tensor, Tensor, Tensor]:
    """PFM-select: push candidate ``anchor`` of each row through ``flow`` (``iterations`` applications, or one
    at ``strength``) and return the candidate nearest the flowed point, as :func:`nearest_candidate` does.
    ``flow`` is anything with ``transform(y, context, **solver)`` (a :class:`pfm.PreferenceFlow`, a
    :class:`pfm.FlowChain`); ``context`` is ``(B, *context_shape)`` or None. Keyword arguments go to ``transform``.
    Cost: n reference samples and one solve per output."""
    if not callable(getattr(flow, "transform", None)):
        raise InvalidInputError(f"flow must have a transform method (a PreferenceFlow); got {type(flow).__name__}")
    candidates = _candidates(candidates)
    V.check_int(anchor, "anchor", low=0, high=candidates.shape[1] - 1)
    V.check_positive_int(iterations, "iterations")
    if strength is not None and iterations != 1:
        raise InvalidInputError("give iterations or strength, not both")
    point = candidates[:, anchor]
    if strength is not None:
        point = flow.transform(point, context, strength=strength, **solver)
    else:
        for _ in range(iterations):
            point = flow.transform(point, context, **solver)
    return nearest_candidate(point, candidates, metric=metric)
