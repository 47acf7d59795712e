"""What the text experiment measures of a method's texts: distinct n-grams, perplexity under pi_ref, the
annotator's scores (from the vectors when it reads vectors), and how faithfully the codec writes a vector back
(:func:`codec_quality`)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from pfm.text.lm import TextLM
from .annotator import HeadAnnotator
from .config import Config, Pretrained
from .hf import HFCausalLM, HFClassifier


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams of ``texts`` (words): 1.0 when nothing repeats, low for degenerate text."""
    grams = [tuple(ws[i:i + n]) for t in texts for ws in [t.split()] for i in range(len(ws) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def perplexity(lm: TextLM | HFCausalLM, texts: Sequence[str], prompts: Sequence[str]) -> float:
    """Perplexity per token of the continuations of ``prompts`` in ``texts`` under ``lm``."""
    nll, count = lm.nll(texts, prompts=prompts)
    return float(np.exp(nll.sum() / max(count.sum(), 1)))


def annotate(annotator: HeadAnnotator | HFClassifier, texts: Sequence[str], z: Optional[Tensor] = None) -> Tensor:
    """The annotator's scores ``(N,)`` of ``texts``; from their vectors ``z`` when given and the annotator reads
    vectors (the same numbers, without encoding the texts again)."""
    if z is not None and isinstance(annotator, HeadAnnotator):
        return annotator.score_vectors(z)
    return annotator.score(texts)


def codec_quality(models: Pretrained, cfg: Config, n: int = 200) -> dict[str, float]:
    """How well the codec writes back what a vector says, on ``n`` held-out sentences: each is encoded, decoded
    (from its prompt, greedy and with ``cfg.candidates`` candidates) and encoded again. Reports the mean cosine
    between the two vectors (with, for scale, that of unrelated sentences and of the prompt alone), the
    correlation of the annotator's scores of the sentence and of its reconstruction, and exact reconstructions."""
    texts = [t for t in models.test.texts if len(t.split()) >= cfg.prompt_words + 2][:n]
    prompts = [" ".join(t.split()[:cfg.prompt_words]) for t in texts]
    z = models.codec.encode(texts)
    out: dict[str, float] = {"sentences": float(len(texts))}
    with torch.no_grad():
        s = annotate(models.annotator, texts, z).numpy()
        for label, cands in (("greedy", 1), (f"best_of_{cfg.candidates}", cfg.candidates)):
            back = models.codec.decode(z, prompts, candidates=cands)
            z2 = models.codec.encode(back, cache=False)
            out[f"cosine_{label}"] = float((z * z2).sum(-1).mean())
            out[f"score_correlation_{label}"] = float(np.corrcoef(s, annotate(models.annotator, back, z2).numpy())[0, 1])
            out[f"exact_{label}"] = float(np.mean([a == b for a, b in zip(back, texts)]))
        out["cosine_unrelated"] = float((z * z.roll(1, 0)).sum(-1).mean())
        out["cosine_prompt_only"] = float((z * models.codec.encode(prompts)).sum(-1).mean())
    return out
