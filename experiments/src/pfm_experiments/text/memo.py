"""A codec that remembers the vectors of the generated texts it encoded, so that a text is encoded once per run.

The experiment encodes the same generated sentences several times: the codec's decoder re-encodes its candidates
to keep the nearest, then the annotator encodes the kept ones again to score them, and the rounds of PFM x k
decode the same greedy texts anew. :class:`MemoCodec` is a :class:`pfm.text.codec.TextCodec` whose ``encode(texts,
cache=False)`` (the call for generated text) looks each text up first; the corpus's own sentences still go through
the disk cache (``cache=True``) as before. The memo holds at most ``limit`` texts (the oldest are dropped first);
a vector from the memo equals the encoder's to float rounding (the batch it was padded in may differ).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import Tensor

from pfm.errors import InvalidInputError
from pfm.text.codec import TextCodec
from pfm.text.encoder import check_texts


class MemoCodec(TextCodec):
    """``TextCodec(encoder, decoder, spec)`` with a memo of at most ``limit`` generated texts' vectors."""

    def __init__(self, *args, limit: int = 100_000, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(limit, int) or limit < 1:
            raise InvalidInputError(f"limit must be a positive integer, got {limit!r}")
        self.limit = limit
        self._memo: OrderedDict[str, Tensor] = OrderedDict()

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False, cache: bool = True) -> Tensor:
        """As :meth:`TextCodec.encode`; with ``cache=False`` only the texts not in the memo are encoded."""
        if cache:
            return super().encode(texts, batch_size=batch_size, progress=progress, cache=True)
        texts = check_texts(texts)
        new = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if new:
            z = super().encode(new, batch_size=batch_size, progress=progress, cache=False)
            for t, v in zip(new, z):
                self._memo[t] = v
            while len(self._memo) > self.limit:
                self._memo.popitem(last=False)
        found = {t: self._memo[t] for t in texts if t in self._memo}
        missing = [t for t in texts if t not in found]  # only when one call holds more new texts than the limit
        if missing:
            z = super().encode(list(dict.fromkeys(missing)), batch_size=batch_size, cache=False)
            found.update(zip(dict.fromkeys(missing), z))
        return torch.stack([found[t] for t in texts])
