"""Training a codec's decoder on one's own corpus (``pfm train-decoder corpus.jsonl --codec SPEC --out DIR``): a
GRU language model (:class:`pfm.text.lm.ConditionalLM`) conditioned on each sentence's embedding learns to write the
sentence back, and its reconstruction is measured on held-out sentences. The text experiment trains its decoder
with :func:`fit_decoder` too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from .. import validate as V
from ..config import option
from ..errors import InvalidInputError
from .encoder import check_texts

log = logging.getLogger("pfm")
from .lm import ConditionalLM, LMConfig, TextLM, fit_lm, train_tokenizer

MIN_SENTENCES = 10


@dataclass
class DecoderConfig:
    """Settings of :func:`fit_decoder` and :func:`train_decoder` (the defaults are the text experiment's)."""

    vocab: int = option(4000, "byte-level BPE vocabulary size, trained on the corpus", range="positive_int")
    dim: int = option(128, "token embedding width", range="positive_int")
    hidden: int = option(384, "GRU width", range="positive_int")
    layers: int = option(1, "GRU layers", range="positive_int")
    max_len: int = option(64, "tokens a sentence is cut to", flags=("--max-len",), range="positive_int")
    epochs: int = option(12, "passes over the training sentences (at most: it stops after --patience epochs "
                         "without a better held-out loss)", range="positive_int")
    batch_size: int = option(64, "sentences a step", range="positive_int")
    lr: float = option(2e-3, "AdamW learning rate (one-cycle schedule)", range="positive")
    noise: float = option(0.05, "std of the Gaussian noise added to the embeddings while training, so that the "
                          "decoder also reads vectors a little off the encoder's, such as a flow's outputs",
                          range="nonneg")
    patience: int = option(3, "epochs without improvement before stopping", range="positive_int")
    heldout: float = option(0.1, "fraction of the corpus held out to measure the reconstruction", range="decay")
    eval_sentences: int = option(200, "held-out sentences the reconstruction is measured on (at most)",
                                 range="positive_int")
    seed: int = option(0, "seeds the initialization, the split and the batch order", range="nonneg_int")
    usable_margin: float = option(0.2, "the decoder is called unusable (a warning) when its held-out "
                                  "reconstructions are not at least this much closer (mean cosine) to their sentences "
                                  "than unrelated sentences are to each other (the text experiment's: 0.594 "
                                  "against 0.211)", range="nonneg")

    def __post_init__(self) -> None:
        for name in ("vocab", "dim", "hidden", "layers", "max_len", "epochs", "batch_size", "patience",
                     "eval_sentences"):
            V.check_positive_int(getattr(self, name), name)
        V.check_positive_float(self.lr, "lr")
        V.check_nonneg_float(self.noise, "noise")
        V.check_nonneg_float(self.heldout, "heldout")
        if not 0.0 < float(self.heldout) < 1.0:
            raise InvalidInputError(f"heldout must be in (0, 1), got {self.heldout!r}")
        V.check_int(self.seed, "seed", low=0)
        V.check_nonneg_float(self.usable_margin, "usable_margin")
        if self.max_len < 2:
            raise InvalidInputError(f"max_len must be at least 2, got {self.max_len!r}")


def fit_decoder(texts: Sequence[str], z: Tensor, cfg: Optional[DecoderConfig] = None, tokenizer: Any = None,
                progress: bool = True) -> tuple[TextLM, dict[str, Any]]:
    """Train a decoder: a :class:`TextLM` conditioned on ``z (N, d)``, the embeddings of ``texts`` (N strings), that
    writes each text from its embedding. ``tokenizer``: a ``tokenizers`` tokenizer to use (default: a byte-level
    BPE of ``cfg.vocab`` tokens trained on ``texts``). Returns the model (in eval mode) and :func:`fit_lm`'s report
    with ``seconds``."""
    cfg = DecoderConfig() if cfg is None else cfg
    if not isinstance(cfg, DecoderConfig):
        raise InvalidInputError(f"cfg must be a DecoderConfig, got {type(cfg).__name__}")
    texts = check_texts(texts)
    z = V.as_float(z, "z")
    if z.dim() != 2 or len(z) != len(texts):
        raise InvalidInputError(f"z must have shape ({len(texts)}, d), one embedding per text; got {V.shape_of(z)}")
    V.check_finite(z, "z")
    start = time.perf_counter()
    tok = tokenizer if tokenizer is not None else train_tokenizer(texts, vocab_size=cfg.vocab)
    torch.manual_seed(cfg.seed)
    lm = TextLM(ConditionalLM(LMConfig(tok.get_vocab_size(), dim=cfg.dim, hidden=cfg.hidden, layers=cfg.layers,
                                       cond_dim=int(z.shape[1]), max_len=cfg.max_len)), tok)
    info = fit_lm(lm.model, lm.ids(texts), cond=z, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                  cond_noise=cfg.noise, patience=cfg.patience, seed=cfg.seed, progress=progress)
    info["seconds"] = time.perf_counter() - start
    return lm, info


def reconstruction(codec: Any, texts: Sequence[str], samples: int = 1) -> dict[str, float]:
    """How well ``codec`` writes back what a vector says, on ``texts`` (N strings): each is encoded, decoded
    (greedy, or the best of ``samples``) and encoded again. Returns the mean cosine between the two embeddings,
    for scale that between unrelated sentences (each and the next), and the fraction reconstructed exactly."""
    texts = check_texts(texts)
    V.check_positive_int(samples, "samples")
    if len(texts) < 2:
        raise InvalidInputError(f"texts must hold at least 2 sentences, got {len(texts)}")
    with torch.no_grad():
        z = codec.encode(texts, cache=False)
        back = codec.decode(z, candidates=samples)
        z2 = codec.encode(back, cache=False)
    cos = torch.nn.functional.cosine_similarity
    return {"sentences": float(len(texts)), "cosine": float(cos(z, z2, dim=-1).mean()),
            "cosine_unrelated": float(cos(z, z.roll(1, 0), dim=-1).mean()),
            "exact": float(sum(a == b for a, b in zip(back, texts)) / len(texts))}


def train_decoder(texts: Sequence[str], codec: Any, cfg: Optional[DecoderConfig] = None,
                  progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """A codec with a decoder trained on ``texts`` (N strings, at least :data:`MIN_SENTENCES`): ``cfg.heldout`` of
    them (seeded) are held out, the decoder is trained on the rest with :func:`fit_decoder` on ``codec``'s
    embeddings, and :func:`reconstruction` is measured on up to ``cfg.eval_sentences`` held-out ones. Returns the
    new :class:`pfm.text.codec.TextCodec` (the same encoder and spec) and a report (settings, training,
    reconstruction); save the codec with ``codec.save(directory, info=report)``."""
    from .codec import LMDecoder, TextCodec

    cfg = DecoderConfig() if cfg is None else cfg
    texts = check_texts(texts)
    if len(texts) < MIN_SENTENCES:
        raise InvalidInputError(f"the corpus must hold at least {MIN_SENTENCES} sentences, got {len(texts)}")
    if not isinstance(codec, TextCodec):
        raise InvalidInputError(f"codec must be a pfm.text.codec.TextCodec, got {type(codec).__name__}")
    g = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(texts), generator=g).tolist()
    n_held = max(2, int(round(cfg.heldout * len(texts))))
    held, train = [texts[i] for i in perm[:n_held]], [texts[i] for i in perm[n_held:]]
    z = codec.encode(train, progress=progress)
    lm, info = fit_decoder(train, z, cfg, progress=progress)
    out = TextCodec(codec.encoder, LMDecoder(lm), spec=codec.spec)
    rec = reconstruction(out, held[:cfg.eval_sentences])
    rec["usable"] = rec["cosine"] - rec["cosine_unrelated"] >= float(cfg.usable_margin)
    if not rec["usable"]:
        log.warning(unusable_message(rec, len(train), cfg.usable_margin))
    report = {"config": asdict(cfg), "train_sentences": len(train), "heldout_sentences": len(held),
              "training": {k: v for k, v in info.items() if k != "history"}, "history": info["history"],
              "reconstruction": rec}
    return out, report


def unusable_message(rec: dict[str, Any], sentences: int, margin: float) -> str:
    """The warning of a decoder whose reconstructions are not clearly closer to their sentences than unrelated
    sentences are to each other."""
    return (f"the decoder is unusable: its reconstructions of held-out sentences are at mean cosine "
            f"{rec['cosine']:.3f} to them, unrelated sentences at {rec['cosine_unrelated']:.3f} to each other (it "
            f"needs {margin:g} more): it writes back little of what a vector says. It was trained on {sentences} "
            "sentences; the text experiment's, on 9,500, reached 0.594 against 0.211. Train it on a larger corpus, "
            "or return candidates instead (pfm apply --mode candidates)")
