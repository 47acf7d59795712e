"""The text experiment's preference pairs, made two ways (``Config.pairs``):

- ``"samples"`` (ours, the default): two continuations of each training prompt sampled from pi_ref, the one the
  annotator scores higher preferred; both share the prompt, which is the pair's context (:func:`sample_pairs`).
- ``"corpus-human"`` / ``"corpus-annotator"`` (the released code's protocol, ``dataset/imdb_dataset.py``): the
  corpus's own sentences, each scored for *its own label* (the sign of its mean human rating: positive or not) by
  the human ratings or by the annotator, sorted within each label, split at the median and paired rank by rank, the
  i-th of the upper half preferred to the i-th of the lower half (:func:`own_label_median_pairs`,
  :func:`corpus_pairs`). Scored for its own label, a negative sentence scores higher the more negative it is, so
  within the negative label the more negative sentence is preferred, as in the released code: its pairs prefer the
  more extreme sentence of either label, not the more positive one. The two sentences of a pair have different
  prompts; the rejected one's is the pair's context (a conditional flow's; the paper's flow has none).

Shapes: ``N`` pairs; embeddings ``(N, D)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from pfm.data import PreferenceDataset
from pfm.errors import InvalidInputError
from .corpus import Corpus

PAIRS = ("samples", "corpus-human", "corpus-annotator")


def check_pairs(kind: str) -> None:
    """Refuse a ``kind`` of pairs not in :data:`PAIRS` (:class:`pfm.InvalidInputError` naming the option)."""
    if kind not in PAIRS:
        raise InvalidInputError(f"pairs must be one of {', '.join(map(repr, PAIRS))}, got {kind!r}")


@dataclass
class Pairs:
    """``N`` preference pairs: the texts, each pair's prompt (its context), their embeddings ``(N, D)`` and what
    the making measured (``info``: ``n``, ``score_gap``, the annotator's mean |score(y+) - score(y-)|, and for
    corpus pairs ``rank_gap``, the same gap in the ranking's own-label score, and ``annotator_agrees``, the share of
    pairs whose y+ the annotator scores higher)."""

    chosen: list[str]
    rejected: list[str]
    prompts: list[str]
    z_chosen: Tensor
    z_rejected: Tensor
    z_prompts: Tensor
    info: dict[str, Any]

    def __len__(self) -> int:
        return len(self.chosen)

    def dataset(self, conditional: bool = True) -> PreferenceDataset:
        """The pairs as a :class:`pfm.PreferenceDataset`: with the prompts' embeddings as contexts, or none."""
        return PreferenceDataset(self.z_chosen, self.z_rejected, self.z_prompts if conditional else None)


def sample_pairs(generate: Callable[[list[str], int], list[str]], encode: Callable[[list[str]], Tensor],
                 score: Callable[[list[str], Tensor], Tensor], prompts: list[str], seed: int) -> Pairs:
    """Two samples of pi_ref (``generate(prompts, seed) -> texts``) for each prompt, seeded ``2 seed + 1`` and
    ``2 seed + 2``; the one ``score(texts, embeddings) -> (N,)`` rates higher (the first on a tie) preferred."""
    a, b = generate(prompts, 2 * seed + 1), generate(prompts, 2 * seed + 2)
    za, zb, zc = encode(a), encode(b), encode(prompts)
    sa, sb = score(a, za), score(b, zb)
    prefer_a = sa >= sb
    pick = prefer_a[:, None]
    return Pairs([x if p else y for x, y, p in zip(a, b, prefer_a.tolist())],
                 [y if p else x for x, y, p in zip(a, b, prefer_a.tolist())], list(prompts),
                 torch.where(pick, za, zb), torch.where(pick, zb, za), zc,
                 {"n": len(prompts), "score_gap": (sa - sb).abs().mean().item()})


def own_label_median_pairs(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The released code's pairing: within each label (in sorted order of the labels), the items sorted by
    ``scores (N,)`` ascending (ties in index order) and split at the median, the i-th of the upper half paired with
    the i-th of the lower half (an odd label's last item is left out, as there). Returns ``(chosen, rejected)``,
    index arrays of equal length."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise InvalidInputError(f"scores and labels must be (N,) alike, got {scores.shape} and {labels.shape}")
    chosen, rejected = [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        idx = idx[np.argsort(scores[idx], kind="stable")]
        mid = len(idx) // 2
        rejected.append(idx[:mid])
        chosen.append(idx[mid:2 * mid])
    if not chosen:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(chosen).astype(np.int64), np.concatenate(rejected).astype(np.int64)


def corpus_pairs(corpus: Corpus, words: int, by: str, encode: Callable[[list[str]], Tensor],
                 score: Callable[[list[str], Tensor], Tensor], n: int, seed: int) -> Pairs:
    """Pairs of the corpus's own sentences (those of at least ``words + 2`` words), the released code's way
    (:func:`own_label_median_pairs`): the label is the sign of the sentence's mean human rating (positive, or not),
    the score its own label's, by ``by`` = ``"human"`` (the rating, negated for the non-positive label) or
    ``"annotator"`` (``score(texts, embeddings)``, likewise); ``n`` of the pairs drawn with ``seed`` (all when there
    are fewer). Each pair's prompt is the first ``words`` words of its rejected sentence."""
    if by not in ("human", "annotator"):
        raise InvalidInputError(f"by must be 'human' or 'annotator', got {by!r}")
    if corpus.ratings is None:
        raise InvalidInputError("corpus pairs need the corpus's human ratings (their sign is each sentence's "
                                "label), and this corpus has none")
    keep = [i for i, t in enumerate(corpus.texts) if len(t.split()) >= words + 2]
    texts = [corpus.texts[i] for i in keep]
    ratings = corpus.ratings[keep]
    z = encode(texts)
    annotator = score(texts, z).double().numpy()
    positive = ratings > 0
    raw = ratings if by == "human" else annotator
    own = np.where(positive, raw, -raw)  # the score of the sentence's own label, as the released code's logit
    chosen, rejected = own_label_median_pairs(own, positive)
    if len(chosen) == 0:
        raise InvalidInputError(f"the corpus has no two sentences of one label with at least {words + 2} words")
    if n < len(chosen):
        pick = np.sort(np.random.default_rng(seed).choice(len(chosen), size=n, replace=False))
        chosen, rejected = chosen[pick], rejected[pick]
    prompts = [" ".join(texts[i].split()[:words]) for i in rejected]
    ci, ri = torch.as_tensor(chosen), torch.as_tensor(rejected)
    return Pairs([texts[i] for i in chosen], [texts[i] for i in rejected], prompts, z[ci], z[ri], encode(prompts),
                 {"n": len(chosen), "score_gap": float(np.abs(annotator[chosen] - annotator[rejected]).mean()),
                  "rank_gap": float((own[chosen] - own[rejected]).mean()),
                  "annotator_agrees": float((annotator[chosen] > annotator[rejected]).mean()),
                  "chosen_rating": float(ratings[chosen].mean()), "rejected_rating": float(ratings[rejected].mean()),
                  "by": by})


def make_pairs(kind: str, *, generate: Callable[[list[str], int], list[str]], encode: Callable[[list[str]], Tensor],
               score: Callable[[list[str], Tensor], Tensor], prompts: Sequence[str], corpus: Corpus, words: int,
               n: int, seed: int) -> Pairs:
    """The pairs of ``kind`` (one of :data:`PAIRS`): :func:`sample_pairs` on ``prompts``, or :func:`corpus_pairs`
    on ``corpus``."""
    check_pairs(kind)
    if kind == "samples":
        return sample_pairs(generate, encode, score, list(prompts), seed)
    return corpus_pairs(corpus, words, kind.split("-", 1)[1], encode, score, n, seed)
