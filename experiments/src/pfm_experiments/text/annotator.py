"""The annotator: a sentiment scorer trained on the corpus's human ratings, on top of sentence embeddings.

The paper's annotator was a DistilBERT sentiment classifier; ours is a ridge regression (the penalty chosen on a
held-out part) from an embedding ``(N, d)`` to the mean human rating (-4..4), so "preferred" means "rated more
positive". :func:`fit_sentiment_head` reports its held-out Pearson and Spearman correlations with the human ratings
and its sign accuracy, so that the annotator's own quality is on record beside every result scored by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from torch import Tensor, nn

from pfm import validate as V
from pfm.errors import InvalidInputError


class SentimentHead(nn.Module):
    """``score(z) = w . z + b``: ``(N, d)`` embeddings -> ``(N,)`` predicted human rating."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.linear.in_features:
            raise InvalidInputError(f"z must have shape (N, {self.linear.in_features}), got {tuple(z.shape)}")
        return self.linear(z).squeeze(-1)


class HeadAnnotator:
    """The annotator as the experiment uses it: ``score(texts) -> (N,)``, and ``score_vectors(z)`` for vectors the
    head reads directly (a flow's outputs before they are decoded). ``encoder`` is anything with
    ``encode(texts, cache=False) -> (N, d)``, such as a :class:`~.codec.TextCodec`."""

    def __init__(self, head: SentimentHead, encoder: object) -> None:
        if not callable(getattr(encoder, "encode", None)):
            raise InvalidInputError(f"encoder must have an encode(texts) method, got {type(encoder).__name__}")
        self.head, self.encoder = head.eval(), encoder

    @torch.no_grad()
    def score_vectors(self, z: Tensor) -> Tensor:
        return self.head(z)

    def score(self, texts: Sequence[str]) -> Tensor:
        return self.score_vectors(self.encoder.encode(texts, cache=False))  # type: ignore[attr-defined]


@dataclass
class HeadReport:
    """Held-out quality of the head: correlations with the human ratings and sign accuracy (ratings != 0)."""

    alpha: float
    pearson: float
    spearman: float
    sign_accuracy: float
    n_train: int
    n_test: int
    alphas: dict[str, float] = field(default_factory=dict)  # alpha -> validation Pearson r


def _ridge(z: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    mz, my = z.mean(0), y.mean()
    zc = z - mz
    w = np.linalg.solve(zc.T @ zc + alpha * np.eye(z.shape[1]), zc.T @ (y - my))
    return w, float(my - mz @ w)


def evaluate_scores(pred: np.ndarray, ratings: np.ndarray) -> tuple[float, float, float]:
    """Pearson r, Spearman rho and sign accuracy (over nonzero ratings) of ``pred`` against ``ratings``."""
    nz = ratings != 0
    return (float(pearsonr(pred, ratings)[0]), float(spearmanr(pred, ratings)[0]),
            float(np.mean(np.sign(pred[nz]) == np.sign(ratings[nz]))))


def fit_sentiment_head(z: Tensor, ratings: Sequence[float] | np.ndarray, test_fraction: float = 0.2,
                       alphas: Sequence[float] = (0.1, 0.3, 1, 3, 10, 30, 100), seed: int = 0
                       ) -> tuple[SentimentHead, HeadReport]:
    """Fit a ridge head ``(N, d) -> rating``: the penalty is chosen on a validation fifth of the training part,
    the head refitted on the whole training part and scored on the held-out ``test_fraction``."""
    z_t = V.as_float(z, "z")
    if z_t.dim() != 2:
        raise InvalidInputError(f"z must have shape (N, d), got {V.shape_of(z_t)}")
    V.check_finite(z_t, "z")
    y = np.asarray(ratings, dtype=np.float64)
    if y.shape != (len(z_t),):
        raise InvalidInputError(f"ratings must have shape ({len(z_t)},) like z, got {y.shape}")
    if not np.isfinite(y).all():
        raise InvalidInputError("ratings holds NaN or inf")
    if len(y) < 20:
        raise InvalidInputError(f"need at least 20 rated sentences to fit and test a head, got {len(y)}")
    zn = z_t.double().numpy()
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = max(1, int(round(test_fraction * len(y))))
    test, train = perm[:n_test], perm[n_test:]
    n_val = max(1, len(train) // 5)
    val, fit = train[:n_val], train[n_val:]
    scores = {}
    for a in alphas:
        w, b = _ridge(zn[fit], y[fit], float(a))
        scores[str(a)] = float(pearsonr(zn[val] @ w + b, y[val])[0])
    best = float(max(alphas, key=lambda a: scores[str(a)]))
    w, b = _ridge(zn[train], y[train], best)
    head = SentimentHead(zn.shape[1])
    with torch.no_grad():
        head.linear.weight.copy_(torch.from_numpy(w).float()[None])
        head.linear.bias.fill_(b)
    r, rho, acc = evaluate_scores(zn[test] @ w + b, y[test])
    return head, HeadReport(best, r, rho, acc, len(train), len(test), scores)


def main(argv: Optional[list[str]] = None) -> int:
    """Fit the annotator on the VADER movie-review corpus and write how well it and VADER agree with the humans."""
    import argparse
    import json
    import logging
    import time
    from pathlib import Path

    from pfm.io import atomic_file
    from pfm.text.codec import load_codec
    from .corpus import load_vader_corpus
    from .judge import VaderJudge

    p = argparse.ArgumentParser(description="Fit the sentiment annotator on the human ratings and report its "
                                "held-out agreement with them, beside VADER's.")
    p.add_argument("--out", type=Path, default=Path("results"), help="directory for text-annotator.json")
    p.add_argument("--codec", default="minilm", help="encoder spec (default minilm)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    corpus = load_vader_corpus()
    assert corpus.ratings is not None
    start = time.perf_counter()
    z = load_codec(a.codec).encode(list(corpus.texts), progress=True)
    encode_s = time.perf_counter() - start
    _, rep = fit_sentiment_head(z, corpus.ratings, seed=a.seed)
    vader = evaluate_scores(VaderJudge().score(list(corpus.texts)), corpus.ratings)
    out = {"corpus": len(corpus), "codec": a.codec, "encode_seconds": encode_s, "head": rep.__dict__,
           "vader_vs_human": dict(zip(("pearson", "spearman", "sign_accuracy"), vader))}
    with atomic_file(a.out / "text-annotator.json", "w") as f:
        json.dump(out, f, indent=1)
    print(f"annotator (ridge on {a.codec}, alpha {rep.alpha:g}), {rep.n_test} held-out sentences: Pearson "
          f"{rep.pearson:.3f}, Spearman {rep.spearman:.3f}, sign accuracy {rep.sign_accuracy:.3f}\n"
          f"VADER on all {len(corpus)}: Pearson {vader[0]:.3f}, Spearman {vader[1]:.3f}, sign accuracy {vader[2]:.3f}"
          f"\nembedding took {encode_s:.1f} s (cached vectors are reused) -> {a.out / 'text-annotator.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
