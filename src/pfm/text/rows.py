"""Rows of text to improve (``pfm apply FLOW texts.jsonl``) and corpora to train a decoder on (``pfm
train-decoder``), read from JSONL and checked row by row.

A row to improve is one JSON object a line::

    {"text": "The movie was dull.", "prompt": "The movie was", "candidates": ["The movie was fine.", "..."]}

- ``text`` (required, a non-empty string): the output to move, encoded as the flow's training outputs were.
- ``prompt`` (a non-empty string; required when the flow was trained with prompts, which became its contexts): the
  flow's context, encoded as at training; the decoder starts its sentence with it when ``text`` does.
- ``candidates`` (optional, a non-empty list of non-empty strings): texts to choose from; the one whose embedding is
  nearest (cosine) the flowed vector is returned.

Other fields are kept as they are and written back. Blank lines are skipped; rows are numbered from 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import InvalidInputError, MissingFileError
from .lines import read_jsonl, read_lines

OUTPUT_FIELDS = ("improved", "improved_by", "improved_cosine", "improved_index")
"""The fields ``pfm apply`` adds to every row: the returned text, how it was made (``"decoder"`` or
``"candidate"``), the cosine between the flowed vector and the returned text's embedding, and (candidates only) the
chosen candidate's index."""


@dataclass(frozen=True)
class TextRow:
    """One row of :func:`read_text_rows`: its fields as read (``fields``) and the checked ``text``, ``prompt`` and
    ``candidates``."""

    text: str
    prompt: Optional[str] = None
    candidates: Optional[tuple[str, ...]] = None
    fields: dict[str, Any] = field(default_factory=dict)


def _jsonl(path: str | os.PathLike, what: str) -> list[tuple[int, Any]]:
    """``(line number, parsed JSON)`` of every non-blank line, read by :func:`pfm.text.lines.read_jsonl`; a missing
    file raises naming ``what``."""
    if not Path(path).exists():
        raise MissingFileError(f"{what} {str(path)!r} does not exist")
    return read_jsonl(path, what)


def _string(row: dict, key: str, where: str) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise InvalidInputError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInputError(f"{where}: {key!r} is empty")
    return value


def text_row(row: Any, where: str = "row") -> TextRow:
    """One mapping as a :class:`TextRow` (see the module docstring); a wrong field raises naming ``where`` and it."""
    if not isinstance(row, dict):
        raise InvalidInputError(f"{where} must be a JSON object with a 'text' field, got {type(row).__name__}")
    if "text" not in row:
        raise InvalidInputError(f"{where} has no 'text' field (the text to improve); it has {sorted(row)}")
    taken = [k for k in OUTPUT_FIELDS if k in row]
    if taken:
        raise InvalidInputError(f"{where} already has the field {taken[0]!r}, which pfm apply writes; rename it")
    text = _string(row, "text", where)
    prompt = None if row.get("prompt") is None else _string(row, "prompt", where)
    candidates = row.get("candidates")
    if candidates is not None:
        if not isinstance(candidates, list):
            raise InvalidInputError(f"{where}: 'candidates' must be a list of strings, got "
                                    f"{type(candidates).__name__}")
        if not candidates:
            raise InvalidInputError(f"{where}: 'candidates' is an empty list")
        for i, c in enumerate(candidates):
            if not isinstance(c, str) or not c.strip():
                got = "an empty string" if isinstance(c, str) else type(c).__name__
                raise InvalidInputError(f"{where}: 'candidates'[{i}] must be a non-empty string, got {got}")
        candidates = tuple(candidates)
    return TextRow(text, prompt, candidates, dict(row))


def read_text_rows(path: str | os.PathLike) -> list[TextRow]:
    """The rows of a JSONL file of texts to improve, each checked (an error names the row, its line and the
    field)."""
    return [text_row(r, f"row {i} (line {k})") for i, (k, r) in enumerate(_jsonl(path, "input file"), 1)]


def read_corpus_texts(path: str | os.PathLike) -> list[str]:
    """The sentences of a corpus: a ``.jsonl`` file of rows with a ``text`` field (as :func:`read_text_rows`
    reads; other fields are ignored), or a ``.txt`` file of one sentence a line (blank lines skipped)."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        if not path.exists():
            raise MissingFileError(f"corpus {str(path)!r} does not exist")
        texts = [t.strip() for _, t in read_lines(path, "corpus")]
        if not texts:
            raise InvalidInputError(f"{path.name} holds no sentences")
        return texts
    if path.suffix.lower() != ".jsonl":
        raise InvalidInputError(f"corpus must be a .jsonl file of {{'text': ...}} rows or a .txt file of one "
                                f"sentence a line, got {str(path)!r}")
    out = []
    for i, (k, r) in enumerate(_jsonl(path, "corpus"), 1):
        where = f"row {i} (line {k})"
        if not isinstance(r, dict) or "text" not in r:
            raise InvalidInputError(f"{where} must be a JSON object with a 'text' field")
        out.append(_string(r, "text", where))
    return out
