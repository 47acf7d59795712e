"""An independent judge of sentiment: VADER's compound score (Hutto & Gilbert 2014), a lexicon-and-rules scorer
that shares nothing with the annotator (no embeddings, no training on our data). The paper used GPT-4 as its
independent judge of win rates; VADER plays that part here."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pfm.errors import InvalidInputError
from pfm.text.encoder import check_texts


class VaderJudge:
    """``score(texts) -> (N,)`` VADER compound scores in [-1, 1]; ``win_rate(a, b)`` compares two methods' texts."""

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, texts: Sequence[str]) -> np.ndarray:
        texts = check_texts(texts)
        return np.asarray([self._analyzer.polarity_scores(t)["compound"] for t in texts])

    def win_rate(self, texts: Sequence[str], against: Sequence[str]) -> float:
        """The fraction of prompts where ``texts[i]`` scores above ``against[i]`` (ties count one half)."""
        a, b = self.score(texts), self.score(against)
        if a.shape != b.shape:
            raise InvalidInputError(f"texts and against must have the same length, got {len(a)} and {len(b)}")
        return float(np.mean((a > b) + 0.5 * (a == b)))
