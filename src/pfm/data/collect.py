"""Collecting preferences: draw two outputs per context from a black-box reference model and let an annotator (a
score, or a pairwise judge) say which is preferred; the result is a :class:`pfm.data.PreferenceDataset`."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Literal, Optional

import torch
from torch import Tensor

from .. import validate as V
from .dataset import PreferenceDataset, as_context
from ..errors import InvalidInputError, InvalidTypeError

Reference = Callable[[Optional[Tensor], int], Tensor]
"""A black-box sampler: ``reference(context, n) -> (n, *shape)``, one sample per row of ``context`` (``n`` rows),
or ``n`` unconditional samples when ``context`` is None."""


def _annotator_kind(annotator: Callable) -> str:
    try:
        params = [p for p in inspect.signature(annotator).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        params = []
    if len(params) == 2:
        return "score"
    if len(params) == 3:
        return "pairwise"
    raise InvalidInputError("cannot tell whether annotator is a score function score(y, context) or a pairwise "
                            "one prefer(y_a, y_b, context); pass kind='score' or kind='pairwise'")


@torch.no_grad()
def collect_preferences(
    reference: Reference,
    annotator: Callable,
    contexts: Any = None,
    pairs_per_context: int = 1,
    *,
    n: int | None = None,
    kind: Literal["auto", "score", "pairwise"] = "auto",
    batch_size: int = 4096,
    drop_ties: bool = True,
    seed: int | None = None,
    progress: bool = False,
) -> PreferenceDataset:
    """Sample two outputs per context from ``reference`` and let ``annotator`` say which is preferred.

    Args:
        reference: black-box sampler ``reference(context, n) -> (n, *shape)`` (never differentiated).
        annotator: a score ``score(y, context) -> (n,)`` (higher preferred) or a pairwise judge
            ``prefer(y_a, y_b, context) -> (n,)`` returning booleans (True: y_a preferred) or probabilities in
            [0, 1] that y_a is preferred, which are sampled.
        contexts: ``(M,)`` labels or ``(M, *cshape)`` contexts; ``None`` for an unconditional reference (give ``n``).
        pairs_per_context: pairs drawn for each context row.
        n: number of pairs when ``contexts`` is None.
        kind: ``"score"``, ``"pairwise"`` or ``"auto"`` (decided by the annotator's number of arguments).
        batch_size: contexts handed to the reference and annotator at once.
        drop_ties: drop pairs whose scores are equal (score annotators only).
        seed: seeds the sampling of probabilistic pairwise judgements.
    """
    if not callable(reference):
        raise InvalidTypeError(f"reference must be callable as reference(context, n), got {type(reference).__name__}")
    if not callable(annotator):
        raise InvalidTypeError(f"annotator must be callable, got {type(annotator).__name__}")
    V.check_positive_int(pairs_per_context, "pairs_per_context")
    V.check_positive_int(batch_size, "batch_size")
    V.check_choice(kind, "kind", ("auto", "score", "pairwise"))
    kind = _annotator_kind(annotator) if kind == "auto" else kind
    ctx, total = _contexts(contexts, n, pairs_per_context)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None

    from tqdm.auto import tqdm

    chosen, rejected, kept_ctx = [], [], []
    with tqdm(total=total, desc="collecting preferences", unit="pair", disable=not progress) as bar:
        for start in range(0, total, batch_size):
            m = min(batch_size, total - start)
            c = None if ctx is None else ctx[start:start + m]
            y_plus, y_minus, keep = _batch(reference, annotator, c, m, kind, drop_ties, gen)
            chosen.append(y_plus)
            rejected.append(y_minus)
            if c is not None:
                kept_ctx.append(c[keep.to(c.device)])
            bar.update(m)
    chosen_t, rejected_t = torch.cat(chosen), torch.cat(rejected)
    if chosen_t.shape[0] == 0:
        raise InvalidInputError("every pair was a tie: the annotator never preferred one output to the other")
    return PreferenceDataset(chosen_t, rejected_t, None if ctx is None else torch.cat(kept_ctx))


def _contexts(contexts: Any, n: int | None, pairs_per_context: int) -> tuple[Optional[Tensor], int]:
    """The context of every pair (each row repeated ``pairs_per_context`` times; None: unconditional), and the
    number of pairs."""
    if contexts is None:
        if n is None:
            raise InvalidInputError("n (the number of pairs) is required when contexts is None")
        V.check_positive_int(n, "n")
        return None, int(n)
    ctx = as_context(contexts, "contexts")
    V.check_nonempty(ctx, "contexts")
    ctx = ctx.repeat_interleave(pairs_per_context, dim=0)
    return ctx, ctx.shape[0]


def _batch(reference: Reference, annotator: Callable, c: Optional[Tensor], m: int, kind: str, drop_ties: bool,
           gen: Optional[torch.Generator]) -> tuple[Tensor, Tensor, Tensor]:
    """Two draws for each of ``m`` contexts, judged: (the preferred, the rejected, which pairs were kept); the
    preferred and rejected hold the kept pairs only."""
    a, b = _draw(reference, c, m), _draw(reference, c, m)
    if a.shape != b.shape:
        raise InvalidInputError(f"reference returned shapes {V.shape_of(a)} and {V.shape_of(b)} for the "
                                "same contexts; it must return a fixed shape")
    if kind == "score":
        a_wins, keep = _judge_by_score(annotator, a, b, c, m, drop_ties)
    else:
        a_wins, keep = _judge_pairwise(annotator, a, b, c, m, gen)
    keep, a_wins = keep.to(a.device), a_wins.to(a.device)
    mask = a_wins.view(-1, *([1] * (a.dim() - 1)))
    return torch.where(mask, a, b)[keep], torch.where(mask, b, a)[keep], keep


def _draw(reference: Reference, c: Optional[Tensor], m: int) -> Tensor:
    y = reference(c, m)
    y = V.as_float(y, "reference(context, n)")
    if y.dim() == 0 or y.shape[0] != m:
        raise InvalidInputError(f"reference(context, n) must return n={m} rows, got shape {V.shape_of(y)}")
    V.check_finite(y, "reference(context, n)")
    return y


def _judge_by_score(annotator: Callable, a: Tensor, b: Tensor, c: Optional[Tensor], m: int,
                    drop_ties: bool) -> tuple[Tensor, Tensor]:
    """(a preferred, pair kept) by the scores of ``a`` and ``b``; ties dropped when ``drop_ties``."""
    sa, sb = _score(annotator, a, c, m), _score(annotator, b, c, m)
    a_wins = sa > sb
    keep = sa != sb if drop_ties else torch.ones_like(a_wins)
    return a_wins, keep


def _judge_pairwise(annotator: Callable, a: Tensor, b: Tensor, c: Optional[Tensor], m: int,
                    gen: Optional[torch.Generator]) -> tuple[Tensor, Tensor]:
    """(a preferred, pair kept) by a pairwise judge: its booleans, or a draw from its probabilities; every pair kept."""
    p = _as_vector(annotator(a, b, c), "annotator(y_a, y_b, context)", m)
    if p.dtype == torch.bool:
        a_wins = p
    else:
        p = p.float().cpu()
        if bool(((p < 0) | (p > 1)).any()):
            raise InvalidInputError("a pairwise annotator must return booleans or probabilities in "
                                    f"[0, 1]; got values in [{float(p.min())}, {float(p.max())}]")
        a_wins = (torch.rand(m, generator=gen) < p).to(a.device)
    return a_wins, torch.ones_like(a_wins)


def _as_vector(s: Any, name: str, m: int) -> Tensor:
    s = V.as_tensor(s, name)
    if s.dim() == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.shape != (m,):
        raise InvalidInputError(f"{name} must return shape ({m},), got {V.shape_of(s)}")
    return s


def _score(annotator: Callable, y: Tensor, c: Optional[Tensor], m: int) -> Tensor:
    s = _as_vector(annotator(y, c), "annotator(y, context)", m)
    s = V.as_float(s, "annotator(y, context)")
    V.check_finite(s, "annotator(y, context)")
    return s
