"""How the image experiment makes its preference pairs from reference samples and the annotator's score.

- ``random`` (default): two reference samples of the same label, the one the annotator scores higher preferred
  (:func:`pfm.collect_preferences`), as the paper's text describes.
- ``best-worst``: ``k`` reference samples of the same label, y+ the best and y- the worst of them under the
  annotator, as the released code does (``dataset/mnist_dataset.py`` 77-101 draws batches of 100 samples with random
  labels and pairs the best and the worst of each label's ~10; here every pair has exactly ``k``).

Either way one pair per label given, so the number of pairs is the same (less ties, which are dropped).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from pfm.data import PreferenceDataset, collect_preferences
from pfm.errors import InvalidInputError
from pfm.selection import best_of_n

PAIRINGS = ("random", "best-worst")


def check_pairing(pairs: str, k: int) -> None:
    """Refuse an unknown pairing or a ``k`` below 2 (:class:`pfm.InvalidInputError` naming the option)."""
    if pairs not in PAIRINGS:
        raise InvalidInputError(f"pairs must be one of {', '.join(map(repr, PAIRINGS))}, got {pairs!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise InvalidInputError(f"pairs_k must be an integer >= 2 (the samples a best-worst pair is chosen from), "
                                f"got {k!r}")


def best_worst_pairs(sample: Callable[[Tensor, int], Tensor], score: Callable[[Tensor, Tensor], Tensor],
                     labels: Tensor, k: int, batch_size: int = 4096) -> PreferenceDataset:
    """One pair per label: the best (chosen) and the worst (rejected) of ``k`` samples of that label.

    Args:
        sample: ``sample(labels (m,), m) -> (m, *shape)`` reference outputs.
        score: ``score(y (m, *shape), labels (m,)) -> (m,)``, higher preferred.
        labels: ``(M,)`` integer labels, one per pair.
        k: samples per pair (>= 2).
        batch_size: samples drawn and scored at once (a multiple of ``k`` is used).

    Returns a :class:`pfm.PreferenceDataset` of ``chosen``/``rejected`` ``(M', *shape)`` and ``context`` ``(M',)``,
    where pairs whose ``k`` scores are all equal are dropped (``M' <= M``).
    """
    check_pairing("best-worst", k)
    per = max(1, batch_size // k)
    chosen, rejected, kept = [], [], []
    for start in range(0, len(labels), per):
        c = labels[start:start + per]
        y = sample(c.repeat_interleave(k), len(c) * k)
        s = score(y, c.repeat_interleave(k)).reshape(len(c), k)
        cand = y.reshape(len(c), k, *y.shape[1:])
        best, _ = best_of_n(cand, s)
        worst, _ = best_of_n(cand, -s)
        keep = s.max(1).values > s.min(1).values
        chosen.append(best[keep])
        rejected.append(worst[keep])
        kept.append(c[keep])
    if not sum(len(c) for c in kept):
        raise InvalidInputError("every best-worst pair was a tie: the annotator scored all k samples alike")
    return PreferenceDataset(torch.cat(chosen), torch.cat(rejected), torch.cat(kept))


def make_pairs(pairs: str, k: int, sample: Callable[[Tensor, int], Tensor],
               score: Callable[[Tensor, Tensor], Tensor], labels: Tensor, seed: int) -> PreferenceDataset:
    """The pairs of ``pairs`` (``random`` or ``best-worst`` of ``k``), one per label of ``labels`` ``(M,)``;
    ``sample`` draws its noise from a generator of the caller's, ``seed`` seeds any other randomness."""
    check_pairing(pairs, k)
    if pairs == "random":
        return collect_preferences(sample, score, labels, kind="score", seed=seed)
    return best_worst_pairs(sample, score, labels, k)
