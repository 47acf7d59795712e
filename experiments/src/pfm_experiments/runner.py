"""The resumable per-seed runner every experiment uses, with one cache-key scheme.

A finished seed is a JSON record (and, for the fields named in ``arrays``, an ``.npz`` of numpy arrays beside it),
cached at::

    <root>/<config_key(cfg)>/<label>-<seed>.json     (+ <label>-<seed>.npz, + <label>-<seed>/ for models)

:func:`config_key` is the one scheme: the first 16 hex digits of the SHA-256 of the JSON (sorted keys) of the
config's fields, less ``omit`` (by default ``seeds``: which seeds run does not change what one seed computes) and
less the fields in ``unset`` that hold their value there (options added after runs were cached, so that those runs
keep their key), prefixed by ``context`` when given (what the config does not say but the numbers depend on, e.g. a
digest of the data or of pre-trained models): ``sha256(json([context, fields]))``, ``sha256(json(fields))``
without. The seed names the file. :class:`SeedRunner` loads a finished seed or runs ``fn(seed)`` and writes it in
one step (:func:`pfm.io.atomic_file`; the JSON last, so a crash leaves no half-finished seed), so a stopped run goes
on where it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import numpy as np

from pfm.errors import InvalidInputError, MissingFileError
from pfm.io import atomic_file, read_json

log = logging.getLogger("pfm")


def config_key(cfg: Any, *, omit: Iterable[str] = ("seeds",), unset: Optional[Mapping[str, Any]] = None,
               context: Any = None) -> str:
    """The cache key of ``cfg`` (a dataclass instance); see the module docstring."""
    omit, unset = set(omit), dict(unset or {})
    fields = {k: v for k, v in dataclasses.asdict(cfg).items()
              if k not in omit and not (k in unset and unset[k] == v)}
    return digest(fields if context is None else [context, fields])


def digest(payload: Any) -> str:
    """16 hex digits of the SHA-256 of ``payload``'s JSON (sorted keys; what JSON cannot hold, as ``str``)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_from_dict(cls: type, data: Mapping[str, Any], renamed: Optional[Mapping[str, str]] = None) -> Any:
    """A ``cls`` config from the ``"config"`` of a results JSON: fields renamed since (``renamed``: old -> new) get
    their new name, lists become tuples, keys the class no longer has are dropped."""
    names = {f.name for f in dataclasses.fields(cls)}
    kw: dict[str, Any] = {}
    for k, v in data.items():
        k = (renamed or {}).get(k, k)
        if k in names:
            kw[k] = tuple(v) if isinstance(v, list) else v
    return cls(**kw)


def read_results(path: str | Path, command: str) -> dict[str, Any]:
    """A results JSON for ``--report-only``, or a :class:`pfm.MissingFileError` saying which ``command`` writes it."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"no results at {str(path)!r} to report on: `{command}` writes them")
    return read_json(path)


def earlier_results(path: str | Path) -> Optional[dict[str, Any]]:
    """The results file at ``path`` that a run is about to replace (for :meth:`SeedRunner.take`), or None when there
    is none. Read before any work starts: an unreadable file, or one that is not a results file (a ``"config"`` and
    a list of ``"runs"``), is a :class:`pfm.PFMError` then, not after the pre-training."""
    path = Path(path)
    if not path.exists():
        return None
    earlier = read_json(path)
    if not isinstance(earlier, dict) or not isinstance(earlier.get("config"), dict) \
            or not isinstance(earlier.get("runs"), list):
        raise InvalidInputError(f"{str(path)!r} is not a results file (no config and runs): move it away or "
                                "choose another --out")
    return earlier


@dataclasses.dataclass
class Seed:
    """One seed's result: its JSON ``record``, where it is cached, and whether it came from the cache."""

    seed: int
    record: dict[str, Any]
    path: Path
    cached: bool
    _arrays: Optional[dict[str, Any]] = None

    @property
    def directory(self) -> Path:
        """``<label>-<seed>/`` beside the record: a place for the seed's models."""
        return self.path.with_suffix("")

    def arrays(self) -> dict[str, Any]:
        """The record's array fields (loaded from the ``.npz`` on first use when the seed came from the cache)."""
        if self._arrays is None:
            self._arrays = _load_arrays(self.path.with_suffix(".npz"))
        return self._arrays


class SeedRunner:
    """Runs, or loads, one experiment's seeds under ``root`` for ``cfg`` (see the module docstring).

    Args:
        root: the experiment's cache root (e.g. ``data_dir() / "toy2d"``).
        cfg: its config dataclass; ``omit``, ``unset`` and ``context`` go to :func:`config_key`.
        label: the files' prefix (``seed``; toy2d names the preference model).
        arrays: fields of a record that hold numpy arrays, or dicts of them, kept in the ``.npz`` instead.
        name: the experiment's name in the log.
    """

    def __init__(self, root: str | Path, cfg: Any, *, label: str = "seed", arrays: Iterable[str] = (),
                 omit: Iterable[str] = ("seeds",), unset: Optional[Mapping[str, Any]] = None, context: Any = None,
                 name: str = "experiment") -> None:
        self._key_options = {"omit": tuple(omit), "unset": dict(unset or {}), "context": context}
        self.key = config_key(cfg, **self._key_options)
        self.directory = Path(root) / self.key
        self.label, self.array_fields, self.name = label, tuple(arrays), name

    def path(self, seed: int) -> Path:
        """Where seed ``seed``'s record is (or will be) cached."""
        return self.directory / f"{self.label}-{seed}.json"

    def done(self, seed: int) -> bool:
        path = self.path(seed)
        return path.exists() and (not self.array_fields or path.with_suffix(".npz").exists())

    def take(self, earlier: Optional[Mapping[str, Any]], cls: type, *, source: str, models: Any = None,
             models_field: str = "models", renamed: Optional[Mapping[str, str]] = None,
             tolerance: float = 1e-3) -> list[int]:
        """Cache the finished seeds of ``earlier`` (the results file this run replaces, read by
        :func:`earlier_results` before any work; ``source`` its name) as if they had run here, so that a run on an
        empty data directory goes on where that file stopped (e.g. seed 0 in one session, seeds 1 and 2 in the
        next) instead of starting over.

        Only when that file was made with this runner's key (its ``"config"`` read as ``cls``, through
        ``config_from_dict`` with ``renamed``) and, given ``models`` (this run's pre-trained models' record), its
        ``models_field`` agrees with them to ``tolerance`` relative (rounding across machines, not other models);
        otherwise nothing is taken and the log says why. Seeds cached here already are kept. A taken record gets
        ``"taken_from"`` (``source``): provenance, not a number, like the measured times
        (:data:`pfm_experiments.seeded.TIMING`). A runner with array fields takes nothing (a results file holds no
        arrays). Returns the seeds taken."""
        from .seeded import compare, untimed

        if earlier is None or self.array_fields:
            return []
        try:
            key = config_key(config_from_dict(cls, earlier["config"], renamed), **self._key_options)
        except (TypeError, ValueError):
            key = None
        if key != self.key:
            log.info("%s: %s was made with another config; its seeds are not taken", self.name, source)
            return []
        if models is not None:
            c = compare(untimed(earlier.get(models_field)), untimed(json.loads(json.dumps(models))))
            if c["mismatched"] or c["worst_relative"] > tolerance:
                log.warning("%s: the pre-trained models of %s differ from this run's (%s); its seeds are not taken",
                            self.name, source, f"at {c['mismatched'][:3]}" if c["mismatched"] else
                            f"relative difference {c['worst_relative']:.2g} at {c['worst_path']}")
                return []
        taken = []
        for record in earlier["runs"]:
            seed = record.get("seed") if isinstance(record, dict) else None
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0 or self.done(seed):
                continue
            with atomic_file(self.path(seed), "w") as f:
                json.dump({**record, "taken_from": source}, f)
            taken.append(seed)
        if taken:
            log.info("%s: took seed(s) %s from %s", self.name, ", ".join(map(str, taken)), source)
        return taken

    def run(self, seeds: Iterable[int], fn: Callable[[int], dict[str, Any]]) -> Iterator[Seed]:
        """Yield each seed in order: loaded when finished before, else ``fn(seed)`` run (when the seed's turn comes,
        so ``fn`` may use the seeds yielded before it) and cached, with its ``wall_seconds`` added."""
        for seed in seeds:
            path = self.path(seed)
            if self.done(seed):
                log.info("%s: reusing %s", self.name, path)
                yield Seed(seed, json.loads(path.read_text()), path, cached=True)
                continue
            log.info("%s: %s %d", self.name, self.label, seed)
            t = time.perf_counter()
            record = fn(seed)
            record["wall_seconds"] = time.perf_counter() - t
            arrays = {k: record.pop(k) for k in self.array_fields}
            if arrays:
                _save_arrays(path.with_suffix(".npz"), arrays)
            with atomic_file(path, "w") as f:
                json.dump(record, f)
            yield Seed(seed, record, path, cached=False, _arrays=arrays)


def _save_arrays(path: Path, arrays: Mapping[str, Any]) -> None:
    flat: dict[str, np.ndarray] = {}
    for k, v in arrays.items():
        if isinstance(v, Mapping):
            flat.update({f"{k}/{sub}": np.asarray(a) for sub, a in v.items()})
        else:
            flat[k] = np.asarray(v)
    with atomic_file(path, "wb") as f:
        np.savez_compressed(f, **flat)


def _load_arrays(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with np.load(path) as z:
        for name in z.files:
            if "/" in name:
                k, sub = name.split("/", 1)
                out.setdefault(k, {})[sub] = z[name]
            else:
                out[name] = z[name]
    return out


class Stages:
    """One seed's run as named stages: a subclass lists ``STAGES``, ``(name, method)`` pairs, and :meth:`run` calls
    each method in order, timing it into ``seconds[name]`` (a name of ``None``: not timed) and logging it. The
    stages share the instance: what one makes (pairs, a flow, a reward model) is an attribute the next reads.
    Seeding is the experiment's: each stage draws from what its method seeds (e.g. a generator per stage name)."""

    STAGES: tuple[tuple[Optional[str], str], ...] = ()

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.seconds: dict[str, float] = {}

    def run(self) -> dict[str, Any]:
        """Every stage in order, then :meth:`record`."""
        for name, method in self.STAGES:
            start = time.perf_counter()
            getattr(self, method)()
            spent = time.perf_counter() - start
            if name is not None:
                self.seconds[name] = self.seconds.get(name, 0.0) + spent
            log.debug("seed %d: %s done (%.1f s)", self.seed, method, spent)
        return self.record()

    def record(self) -> dict[str, Any]:
        """The seed's JSON record (with its array fields), from what the stages left."""
        raise NotImplementedError
