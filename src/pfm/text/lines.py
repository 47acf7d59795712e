"""The one reader of the text files pfm takes: JSONL rows (preference pairs, texts to improve, corpora) and plain
text corpora of one sentence a line. Every line is checked before Python's decoders see it, so a bad file is one
:class:`pfm.errors.InvalidInputError` naming the file, the line and what was expected, never a decoder's internal
error or a process that runs out of memory:

- the file is a regular file (:func:`pfm.io.check_regular_file`: a named pipe would block the reader);
- a line is at most :data:`MAX_LINE_BYTES` long (read in bounded pieces, never whole);
- a line is UTF-8, strictly (an invalid byte is named with its offset);
- a JSON line nests at most :data:`MAX_DEPTH` arrays or objects deep, and its integers have at most
  :data:`MAX_INT_DIGITS` digits, both checked before or while parsing;
- no string holds an unpaired surrogate (a ``\\ud800`` escape), which no encoder can write back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import InvalidInputError
from ..io import check_regular_file

MAX_LINE_BYTES = 1 << 20
"""The longest line read (1 MiB): a row of a prompt and two answers is a few kB; a longer line is refused before it
is decoded (a 25 MB line had aborted the tokenizer, a 50 MB one taken 7 GB)."""

MAX_DEPTH = 64
"""The deepest nesting of arrays and objects in a JSON line (chat messages need 3); deeper is refused before parsing
(100,000 nested arrays had been a RecursionError)."""

MAX_INT_DIGITS = 100
"""The most digits of an integer in a JSON line (a 5,000-digit integer had been a ValueError from int())."""


def read_lines(path: str | os.PathLike, what: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every non-blank line of ``path`` (the ``what`` the messages name), each checked
    for its length and its UTF-8; line ends are removed."""
    path = check_regular_file(path, what)
    with open(path, "rb") as f:
        k = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            k += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise InvalidInputError(f"{path.name} line {k} is longer than {MAX_LINE_BYTES:,} bytes; a row is "
                                        "a few kB")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInputError(f"{path.name} line {k} is not UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
                                        f"{exc.start})") from None
            text = text.rstrip("\r\n")
            if text.strip():
                yield k, text


def parse_json_line(line: str, where: str) -> Any:
    """One JSON value, with :data:`MAX_DEPTH`, :data:`MAX_INT_DIGITS` and no unpaired surrogate checked; an error
    names ``where``."""
    depth = _depth(line)
    if depth > MAX_DEPTH:
        raise InvalidInputError(f"{where} nests {depth} arrays or objects deep; at most {MAX_DEPTH} are read")
    try:
        value = json.loads(line, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{where} is not JSON ({exc.msg})") from None
    except _TooLong:
        raise InvalidInputError(f"{where} holds an integer of more than {MAX_INT_DIGITS} digits") from None
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{where} holds an unpaired surrogate (a \\ud800-\\udfff escape alone), which is "
                                "not text") from None
    return value


def read_jsonl(path: str | os.PathLike, what: str) -> list[tuple[int, Any]]:
    """``(line number, parsed JSON)`` of every non-blank line (:func:`read_lines`, :func:`parse_json_line`); a file
    with no rows raises naming it."""
    rows = [(k, parse_json_line(line, f"{Path(path).name} line {k}")) for k, line in read_lines(path, what)]
    if not rows:
        raise InvalidInputError(f"{Path(path).name} holds no rows")
    return rows


class _TooLong(ValueError):
    pass


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise _TooLong()
    return int(digits)


def _depth(line: str) -> int:
    """The deepest nesting of ``[``/``{`` outside strings (the parser finds any other fault)."""
    if line.count("[") + line.count("{") <= MAX_DEPTH:  # cannot nest deeper: no need to scan
        return 0
    deepest = depth = 0
    in_string = escaped = False
    for ch in line:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest
