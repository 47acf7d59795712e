"""The text experiment's settings (:class:`Config`, one place for each default), the pre-trained models a run
starts from (:class:`Pretrained`), and the name of its results files (:func:`stem`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pfm.text.codec import TextCodec
from pfm.text.lm import TextLM
from ..runner import digest
from .annotator import HeadAnnotator
from .corpus import Corpus
from .hf import HFCausalLM, HFClassifier

SCHEMA = 1


@dataclass
class Config:
    sentences: Optional[int] = None  # the first N sentences of the shuffled corpus (None: all 10,605)
    test_fraction: float = 0.1
    prompt_words: int = 4
    vocab: int = 4000
    lm_dim: int = 128
    lm_hidden: int = 384
    lm_layers: int = 1
    lm_epochs: int = 12
    decoder_epochs: int = 12
    decoder_noise: float = 0.05
    seeds: tuple[int, ...] = (0, 1, 2)
    n_pairs: int = 3000
    heldout: float = 0.1
    temperature: float = 1.0
    flow_steps: int = 3000
    flow_hidden: int = 512
    flow_depth: int = 3
    patience: Optional[int] = 5
    eval_prompts: int = 200
    iterations: int = 5
    project: bool = True  # put moved embeddings back on the unit sphere, where the encoder's live
    candidates: int = 8  # decoded texts per vector; the one nearest the vector (re-encoded) is kept
    best_of_n: tuple[int, ...] = (2, 4, 16, 64)  # best-of-n and PFM-select among n of pi_ref's continuations
    reference_source: bool = True  # also a flow fit(source="reference"): pi_ref's samples onto y+ (Theorem 1's p1)
    pairs: str = "samples"  # how the pairs are made (.pairs.PAIRS): pi_ref's samples, or the corpus's sentences
    unconditional: bool = False  # also a flow without the prompt (the released code's), rows "PFM, unconditional"
    reward_steps: int = 1000
    betas: tuple[float, ...] = (0.01, 0.1, 1.0)  # swept on the first seed, whose pick the other seeds use
    rlhf_steps: int = 150
    rlhf_prompts: int = 32  # prompts a step, 4 samples each
    rlhf_lr: float = 3e-4
    validation_prompts: int = 100  # of the held-out pairs, to pick RLHF's beta by the annotator's mean score
    reference: Optional[str] = None  # a Hugging Face causal LM directory as pi_ref (None: the GRU trained here)
    annotator: Optional[str] = None  # a Hugging Face sequence classifier directory (None: the ridge head)
    schema: int = SCHEMA
    quick: bool = False

    @classmethod
    def quick_config(cls) -> "Config":
        return cls(sentences=2000, vocab=1500, lm_dim=64, lm_hidden=128, lm_epochs=4, decoder_epochs=4,
                   seeds=(0,), n_pairs=600, flow_steps=600, flow_hidden=256, eval_prompts=60, reward_steps=300,
                   betas=(0.1,), rlhf_steps=10, rlhf_prompts=8, validation_prompts=20, best_of_n=(2, 4), candidates=8,
                   quick=True)

    def models_key(self) -> str:
        """What pi_ref, the tokenizer and the annotator depend on."""
        keys = ("sentences", "test_fraction", "vocab", "lm_dim", "lm_hidden", "lm_layers", "lm_epochs", "schema")
        fields_ = {k: getattr(self, k) for k in keys}
        if self.reference is not None:  # only then, so that the keys of runs with our own pi_ref stay as they were
            fields_["reference"] = str(Path(self.reference).expanduser().resolve())
        return digest(fields_)

    def decoder_key(self) -> str:
        """What the codec's decoder depends on beyond :meth:`models_key`."""
        return digest({k: getattr(self, k) for k in ("decoder_epochs", "decoder_noise")})


@dataclass
class Pretrained:
    train: Corpus
    test: Corpus
    codec: TextCodec
    reference: TextLM | HFCausalLM
    annotator: HeadAnnotator | HFClassifier  # score(texts) -> (N,); the head also scores vectors
    info: dict[str, Any]


def stem(pairs: str = "samples", quick: bool = False) -> str:
    """The results' file stem: ``text``, ``text-corpus-human``, ... (``-quick`` for the quick run's)."""
    return "text" + ("" if pairs == "samples" else f"-{pairs}") + ("-quick" if quick else "")
