"""The text experiment's memo of generated texts' vectors: each text encoded once, the same vectors back."""

import pytest
import torch

from pfm.errors import InvalidInputError
from pfm_experiments.text.memo import MemoCodec


class CountingEncoder:
    """A stand-in sentence encoder: a text's vector is a function of the text; every text encoded is recorded."""

    dim = 3

    def __init__(self):
        self.seen = []

    def encode(self, texts, batch_size=64, progress=False):
        self.seen += list(texts)
        return torch.tensor([[len(t), t.count("a"), sum(map(ord, t)) % 7] for t in texts], dtype=torch.float32)


def test_memo_encodes_each_generated_text_once_and_returns_what_the_encoder_would():
    enc = CountingEncoder()
    codec = MemoCodec(enc, limit=3)
    first = codec.encode(["ab", "a", "ab"], cache=False)
    assert enc.seen == ["ab", "a"]  # a repeat within one call is encoded once
    assert torch.equal(first, CountingEncoder().encode(["ab", "a", "ab"]))
    again = codec.encode(["a", "ccc"], cache=False)
    assert enc.seen == ["ab", "a", "ccc"] and torch.equal(again, CountingEncoder().encode(["a", "ccc"]))
    again[:] = 0  # the caller's tensor is its own: the memo keeps its vectors
    assert torch.equal(codec.encode(["a"], cache=False), CountingEncoder().encode(["a"]))
    codec.encode(["dddd"], cache=False)  # the limit: the oldest ("ab") goes
    codec.encode(["ab"], cache=False)
    assert enc.seen[-1] == "ab" and len(enc.seen) == 5
    # more new texts in one call than the memo holds: all still come back, in order
    big = [f"t{i}" for i in range(5)]
    assert torch.equal(codec.encode(big, cache=False), CountingEncoder().encode(big))
    codec.encode(["ab"])  # cache=True: the encoder's own path (the disk cache, when it has one), no memo
    assert enc.seen[-1] == "ab"


def test_memo_checks_its_input_as_the_encoder_does():
    codec = MemoCodec(CountingEncoder())
    with pytest.raises(InvalidInputError, match="texts is empty"):
        codec.encode([], cache=False)
    with pytest.raises(InvalidInputError, match="one string"):
        codec.encode("abc", cache=False)
    with pytest.raises(InvalidInputError, match="limit must be a positive integer"):
        MemoCodec(CountingEncoder(), limit=0)
