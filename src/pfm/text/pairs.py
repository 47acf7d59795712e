"""Preference rows of text in TRL's conventions, read from JSONL or any iterable of mappings.

Each row has ``chosen`` and ``rejected`` and, optionally, ``prompt``. A field is either a string ("standard" format)
or a list of chat messages ``{"role", "content"}`` ("conversational"). Without a ``prompt``, conversational rows whose
``chosen`` and ``rejected`` open with the same messages take those as the prompt (TRL's "implicit prompt"); string
rows without one are unconditional. A message list becomes text by joining its contents with newlines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from ..errors import InvalidInputError
from .lines import read_jsonl


@dataclass(frozen=True)
class TextPair:
    """One preference: ``chosen`` was preferred to ``rejected`` given ``prompt`` (None: no prompt)."""

    chosen: str
    rejected: str
    prompt: Optional[str] = None


def _messages_text(messages: list, where: str) -> str:
    parts = []
    for k, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("content"), str):
            raise InvalidInputError(f"{where}[{k}] must be a message {{'role': ..., 'content': str}}, got {m!r:.80}")
        parts.append(m["content"])
    return "\n".join(parts)


def _field_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, list):
        text = _messages_text(value, where)
    else:
        raise InvalidInputError(f"{where} must be a string or a list of chat messages, got {type(value).__name__}")
    if not text.strip():
        raise InvalidInputError(f"{where} is empty")
    return text


def to_text_pair(row: Mapping[str, Any], where: str = "row") -> TextPair:
    """One TRL-style row as a :class:`TextPair` (see the module docstring for the accepted formats)."""
    if not isinstance(row, Mapping):
        raise InvalidInputError(f"{where} must be a mapping with 'chosen' and 'rejected', got {type(row).__name__}")
    missing = [k for k in ("chosen", "rejected") if k not in row]
    if missing:
        raise InvalidInputError(f"{where} has no {missing}; it has {sorted(row)}")
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    if prompt is None and isinstance(chosen, list) and isinstance(rejected, list):
        n = 0  # the shared opening messages are the prompt, leaving at least one message on each side
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        if n:
            prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    return TextPair(_field_text(chosen, f"{where}['chosen']"), _field_text(rejected, f"{where}['rejected']"),
                    None if prompt is None else _field_text(prompt, f"{where}['prompt']"))


def text_pairs(rows: Iterable[Mapping[str, Any]]) -> list[TextPair]:
    """Rows (mappings, a Hugging Face ``datasets.Dataset``, ...) as TextPairs; all or none must have a prompt."""
    if isinstance(rows, (str, bytes, Mapping)):
        raise InvalidInputError(f"rows must be an iterable of mappings, got a {type(rows).__name__}")
    pairs = [r if isinstance(r, TextPair) else to_text_pair(r, f"row {i}") for i, r in enumerate(rows)]
    return _all_or_no_prompts(pairs, [f"row {i}" for i in range(len(pairs))])


def _all_or_no_prompts(pairs: list[TextPair], names: list[str]) -> list[TextPair]:
    """``pairs``, checked to be some and to have a prompt in every row or in none (``names``: how to name a row)."""
    if not pairs:
        raise InvalidInputError("rows is empty: no preference pairs")
    with_prompt = [p.prompt is not None for p in pairs]
    if any(with_prompt) and not all(with_prompt):
        raise InvalidInputError(f"{names[with_prompt.index(False)]} has no prompt while "
                                f"{names[with_prompt.index(True)]} has one: give every row a prompt, or none")
    return pairs


def read_text_pairs(path: str | os.PathLike) -> list[TextPair]:
    """Read a JSONL file of TRL-style preference rows (one JSON object a line; blank lines are skipped), each line
    checked by :mod:`pfm.text.lines` (length, UTF-8, nesting, numbers) before it is parsed."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"preference file {str(path)!r} does not exist")
    names, pairs = [], []
    for line, row in read_jsonl(path, "preference file"):  # a bad row is named by the file and its line
        names.append(f"{path.name} line {line}")
        pairs.append(to_text_pair(row, names[-1]))
    return _all_or_no_prompts(pairs, names)
