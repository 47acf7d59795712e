"""Choosing among n reference samples on images, beside the alignment methods: best-of-n by RLHF's reward model
(learned from the same pairs) or by the annotator itself (the oracle: what labelled the pairs, which PFM never
queries; an upper bound), and PFM-select (:func:`pfm.pfm_select`: push one candidate through the flow, return the
candidate nearest the flowed image); each with its inference cost per output (:mod:`pfm_experiments.cost`).

Shapes: ``labels`` ``(B,)``; candidates are the reference's ``(B, n, *image_shape)`` images; every row holds
``B`` outputs, one per label.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from pfm import best_of_n, pfm_select
from ..cost import Cost, bon_name, measure, select_name

SCORERS = ("reward model", "annotator")
"""Best-of-n's scorers: RLHF's Bradley-Terry reward model, and the annotator (the oracle)."""


def batched(score: Callable[[Tensor, Tensor], Tensor], chunk: int = 4096) -> Callable[[Tensor, Tensor], Tensor]:
    """``score(images (M, ...), labels (M,)) -> (M,)`` evaluated ``chunk`` rows at a time (a CNN on 64,000
    images at once holds gigabytes of activations)."""
    @torch.no_grad()
    def run(x: Tensor, c: Tensor) -> Tensor:
        return torch.cat([score(x[i:i + chunk], c[i:i + chunk]) for i in range(0, len(x), chunk)])
    return run


@torch.no_grad()
def selection_rows(draw: Callable[[Tensor, int, torch.Generator], Tensor],
                   scorers: dict[str, Callable[[Tensor, Tensor], Tensor]], flow: Any,
                   evaluate: Callable[[Tensor], dict[str, float]], labels: Tensor, ns: tuple[int, ...],
                   seed: int, repeats: int = 3) -> tuple[dict[str, dict[str, Any]], dict[str, Tensor]]:
    """Best-of-n for every scorer (``{name: score(images (M, ...), labels (M,)) -> (M,)}``) and PFM-select with
    ``flow``, for every n of ``ns``. ``draw(labels (M,), M, generator)`` returns M reference images ``(M, ...)``.
    At one n every method sees the same candidates (drawn from a generator seeded by ``seed`` and n), so their
    differences are paired. A row's wall time (the fastest of ``repeats`` runs) covers drawing its candidates and
    scoring or solving, not the evaluation. Returns ``(rows, samples)``: ``{name: {"metrics", "n", "cost", ...}}`` and
    each row's ``(B, ...)`` images."""
    b = len(labels)
    rows: dict[str, dict[str, Any]] = {}
    samples: dict[str, Tensor] = {}

    def candidates(n: int) -> Tensor:
        g = torch.Generator().manual_seed(40_000 + 1000 * seed + n)
        flat = labels.repeat_interleave(n)
        x = draw(flat, b * n, g)
        return x.reshape(b, n, *x.shape[1:])

    for n in ns:
        for name, score in scorers.items():
            def pick(n: int = n, score: Callable[[Tensor, Tensor], Tensor] = score) -> Tensor:
                cands = candidates(n)
                s = score(cands.reshape(b * n, *cands.shape[2:]), labels.repeat_interleave(n)).reshape(b, n)
                return best_of_n(cands, s)[0]

            chosen, seconds = measure(pick, b, repeats)
            label = bon_name(n, name)
            samples[label] = chosen
            rows[label] = {"metrics": evaluate(chosen), "n": n, "scorer": name,
                           "cost": Cost(n, 0, 0, seconds).as_dict()}
        (chosen, _, distance), seconds = measure(lambda n=n: pfm_select(flow, candidates(n), labels), b, repeats)
        label = select_name(n)
        samples[label] = chosen
        rows[label] = {"metrics": evaluate(chosen), "n": n, "mean_distance": float(distance.mean()),
                       "cost": Cost(n, 1, 0, seconds).as_dict()}
    return rows, samples
