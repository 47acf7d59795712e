"""Sentences, with human sentiment ratings where there are any.

The default corpus is the movie-review set of Hutto & Gilbert's VADER study (ICWSM 2014): 10,605 Rotten Tomatoes
review sentences, each with the mean rating of about 20 people from -4 (most negative) to +4 (most positive). It comes
in the source archive of ``vaderSentiment==3.3.2`` on PyPI, which :func:`load_vader_corpus` fetches with pip once and
caches in the data directory. :func:`read_corpus` reads a corpus of one's own from a text, CSV, TSV or JSONL file.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pfm.io import atomic_file
from pfm.errors import InvalidInputError
from pfm.runtime import data_dir
from pfm.text.fetch import pip_download

VADER_REQUIREMENT = "vaderSentiment==3.3.2"
VADER_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"


@dataclass(frozen=True)
class Corpus:
    """``texts`` (N sentences) and, if the corpus has them, ``ratings`` ``(N,)`` (float, higher = more positive)."""

    texts: tuple[str, ...]
    ratings: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if len(self.texts) == 0:
            raise InvalidInputError("texts is empty: a corpus needs at least one sentence")
        bad = [i for i, t in enumerate(self.texts) if not isinstance(t, str) or not t.strip()]
        if bad:
            raise InvalidInputError(f"texts must be non-empty strings; entry {bad[0]} is {self.texts[bad[0]]!r}")
        if self.ratings is not None:
            r = np.asarray(self.ratings, dtype=np.float64)
            if r.shape != (len(self.texts),):
                raise InvalidInputError(f"ratings must have shape ({len(self.texts)},) like texts, got {r.shape}")
            if not np.isfinite(r).all():
                raise InvalidInputError("ratings holds NaN or inf")
            object.__setattr__(self, "ratings", r)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: Sequence[int] | np.ndarray) -> "Corpus":
        idx = np.asarray(index, dtype=np.int64)
        return Corpus(tuple(self.texts[i] for i in idx), None if self.ratings is None else self.ratings[idx])

    def split(self, test_fraction: float, seed: int = 0) -> tuple["Corpus", "Corpus"]:
        """A random ``(train, test)`` split; the test part holds ``round(test_fraction * N)`` sentences."""
        if not 0 < test_fraction < 1:
            raise InvalidInputError(f"test_fraction must be in (0, 1), got {test_fraction}")
        n_test = int(round(test_fraction * len(self)))
        if not 0 < n_test < len(self):
            raise InvalidInputError(f"test_fraction {test_fraction} leaves an empty part of {len(self)} sentences")
        perm = np.random.default_rng(seed).permutation(len(self))
        return self.subset(perm[n_test:]), self.subset(perm[:n_test])


def parse_vader_ground_truth(text: str) -> Corpus:
    """Parse a VADER ``*_GroundTruth.txt`` file: ``id <TAB> mean rating <TAB> sentence`` per line (CRLF)."""
    texts, ratings = [], []
    for k, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise InvalidInputError(f"line {k} has {len(parts)} tab-separated fields, expected 3 (id, rating, text)")
        try:
            ratings.append(float(parts[1]))
        except ValueError:
            raise InvalidInputError(f"line {k}: rating {parts[1]!r} is not a number") from None
        texts.append(parts[2].strip())
    return Corpus(tuple(texts), np.asarray(ratings))


def load_vader_corpus(cache: Optional[Path] = None) -> Corpus:
    """The 10,605 rated movie-review sentences; fetched with pip into ``cache`` (default: the data directory's
    ``text/``) on first use, then read from there."""
    cache = Path(cache) if cache is not None else data_dir() / "text"
    out = cache / "movieReviewSnippets_GroundTruth.txt"
    if not out.exists():
        archive = pip_download(VADER_REQUIREMENT, cache / "downloads", sdist=True)
        with tarfile.open(archive) as outer:
            inner_name = next((m for m in outer.getnames() if m.endswith("hutto_ICWSM_2014.tar.gz")), None)
            if inner_name is None:
                raise InvalidInputError(f"{archive} holds no hutto_ICWSM_2014.tar.gz")
            inner = outer.extractfile(inner_name)
            assert inner is not None
            with tarfile.open(fileobj=io.BytesIO(inner.read())) as tar:
                member = tar.extractfile(VADER_MEMBER)
                if member is None:
                    raise InvalidInputError(f"{inner_name} holds no {VADER_MEMBER}")
                data = member.read()
        with atomic_file(out, "wb") as f:
            f.write(data)
    return parse_vader_ground_truth(out.read_text(encoding="utf-8"))


def read_corpus(path: str | Path, text_column: str = "text", rating_column: Optional[str] = "rating") -> Corpus:
    """A corpus from a file: ``.txt`` (one sentence a line), ``.csv``/``.tsv`` (a header naming ``text_column`` and,
    optionally, ``rating_column``), ``.jsonl`` (one object a line with those keys), or a VADER ground-truth file
    (``*_GroundTruth.txt``). Ratings are kept only when every row has one."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"corpus file {str(path)!r} does not exist")
    raw = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if path.name.endswith("_GroundTruth.txt"):
        return parse_vader_ground_truth(raw)
    if suffix == ".txt":
        return Corpus(tuple(line.strip() for line in raw.splitlines() if line.strip()))
    if suffix in (".csv", ".tsv"):
        rows = list(csv.DictReader(io.StringIO(raw), delimiter="\t" if suffix == ".tsv" else ","))
    elif suffix == ".jsonl":
        rows = []
        for k, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InvalidInputError(f"{path.name} line {k} is not JSON ({exc})") from None
    else:
        raise InvalidInputError(f"corpus file {path.name!r}: expected .txt, .csv, .tsv or .jsonl")
    if not rows:
        raise InvalidInputError(f"corpus file {path.name!r} has no rows")
    if text_column not in rows[0]:
        raise InvalidInputError(f"corpus file {path.name!r} has no column {text_column!r}; it has {list(rows[0])}")
    texts = tuple(str(r.get(text_column) or "").strip() for r in rows)
    ratings = None
    if rating_column and all(r.get(rating_column) not in (None, "") for r in rows):
        try:
            ratings = np.asarray([float(r[rating_column]) for r in rows])
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"column {rating_column!r} of {path.name!r} is not numeric ({exc})") from None
    return Corpus(texts, ratings)
