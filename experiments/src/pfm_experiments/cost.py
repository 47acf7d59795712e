"""Inference cost per output, one way for every experiment: how many model calls and flow solves an output takes,
and the wall time it measured.

- :class:`Cost`: ``reference_calls`` (samples drawn from the reference model per output: 1 for the reference, PFM
  and PFM x k, n for best-of-n and PFM-select), ``solves`` (whole ODE solves of a flow per output), ``policy_calls``
  (calls of a fine-tuned policy, as RLHF, DPO and IPO make), ``seconds_per_output`` (measured, or None) and
  ``decoder_calls`` (samples of a decoder that writes a vector back as an output: text's codec, a language model of
  pi_ref's size; in the record only when not 0). :meth:`Cost.as_dict` is its JSON record; :meth:`Cost.model_calls`
  counts a policy call and a decoder call as one reference call each (networks of the reference's size), for a
  cost axis shared by every method.
- :class:`Stopwatch` / :func:`timed`: ``with timed(n) as clock: ...`` measures the block's wall time
  (``time.perf_counter``) and gives it per output as ``clock.per_output``.
- :func:`measure` ``(make, outputs, repeats)``: call ``make()`` ``repeats`` times under :func:`timed` and keep
  the first result and the fastest time per output (the minimum is the least disturbed by other processes on a
  shared machine, and leaves out one-off warm-up costs).
- :func:`nearest` ``(value, candidates)``: the candidate nearest ``value`` on a log scale (ties to the larger):
  which n of best-of-n costs about as much as a method; :func:`nearest_key` the same over a ``{n: value}`` map
  (the n whose measured time is nearest), and :func:`calls_per_output` the calls a cost record matches by.
- :func:`bon_name` / :func:`select_name`: the names of the rows that choose among n reference samples, alike in
  every experiment; :func:`at_largest_n` keeps of a list of rows every other row and those at the largest n only
  (what sample grids and example tables show).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


@dataclass
class Cost:
    """What one output costs at inference (see the module docstring)."""

    reference_calls: float = 0.0
    solves: float = 0.0
    policy_calls: float = 0.0
    seconds_per_output: Optional[float] = None
    decoder_calls: float = 0.0

    def __post_init__(self) -> None:
        for name in ("reference_calls", "solves", "policy_calls", "decoder_calls"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.seconds_per_output is not None and not self.seconds_per_output >= 0:
            raise ValueError(f"seconds_per_output must be >= 0 or None, got {self.seconds_per_output!r}")

    @property
    def model_calls(self) -> float:
        """Reference, fine-tuned policy and decoder calls: the network calls an output takes."""
        return float(self.reference_calls + self.policy_calls + self.decoder_calls)

    def as_dict(self) -> dict[str, Any]:
        record = asdict(self)
        if not self.decoder_calls:  # the records of the experiments without a decoder stay as they were
            del record["decoder_calls"]
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Cost":
        return cls(**{k: record[k] for k in ("reference_calls", "solves", "policy_calls", "seconds_per_output",
                                             "decoder_calls") if k in record})

    def label(self) -> str:
        """``"64 ref"``, ``"1 ref + 1 solve"``, ``"1 policy"``, ``"1 ref + 1 solve + 8 decoder"``: the counts, for
        a table cell."""
        parts = []
        for value, unit in ((self.reference_calls, "ref"), (self.policy_calls, "policy"), (self.solves, "solve"),
                            (self.decoder_calls, "decoder")):
            if value:
                parts.append(f"{value:g} {unit}" + ("s" if unit == "solve" and value != 1 else ""))
        return " + ".join(parts) or "0"


@dataclass
class Stopwatch:
    """The wall time of a :func:`timed` block, total and per output (None until the block ends)."""

    outputs: int
    seconds: Optional[float] = None

    @property
    def per_output(self) -> Optional[float]:
        return None if self.seconds is None else self.seconds / self.outputs


@contextmanager
def timed(outputs: int) -> Iterator[Stopwatch]:
    """Measure the wall time of the block that makes ``outputs`` outputs: ``with timed(4000) as clock: ...``, then
    ``clock.seconds`` and ``clock.per_output``."""
    if not (isinstance(outputs, int) and outputs > 0):
        raise ValueError(f"outputs must be a positive int, got {outputs!r}")
    clock = Stopwatch(outputs)
    start = time.perf_counter()
    try:
        yield clock
    finally:
        clock.seconds = time.perf_counter() - start


def measure(make: Callable[[], T], outputs: int, repeats: int = 3) -> tuple[T, float]:
    """``(make()'s first result, the fastest of repeats wall times per output)``; ``make`` makes ``outputs``
    outputs each call."""
    if not (isinstance(repeats, int) and repeats > 0):
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    result: Any = None
    fastest = math.inf
    for i in range(repeats):
        with timed(outputs) as clock:
            value = make()
        if i == 0:
            result = value
        fastest = min(fastest, clock.per_output or 0.0)
    return result, fastest


def nearest(value: float, candidates: Iterable[float]) -> float:
    """The candidate nearest ``value`` on a log scale (all positive); ties go to the larger one."""
    options = sorted(float(c) for c in candidates)
    if not options or value <= 0 or options[0] <= 0:
        raise ValueError(f"nearest needs a positive value and positive candidates, got {value!r}, {options}")
    return min(options, key=lambda c: (round(abs(math.log(c) - math.log(value)), 9), -c))


def nearest_key(value: float, by_key: dict[int, float]) -> int:
    """The key of ``by_key`` whose value is nearest ``value`` on a log scale (:func:`nearest`); among keys with that
    value, the largest."""
    closest = nearest(value, by_key.values())
    return next(k for k in sorted(by_key, reverse=True) if by_key[k] == closest)


def calls_per_output(cost: dict[str, Any]) -> float:
    """Network calls per output of a :meth:`Cost.as_dict` record, a flow solve counted as one reference call: what
    a method is matched to best-of-n's n by."""
    c = Cost.from_dict(cost)
    return c.model_calls + c.solves


def bon_name(n: int, scorer: str) -> str:
    """The best-of-n row of ``n`` candidates ranked by ``scorer``."""
    return f"best-of-{n} ({scorer})"


def select_name(n: int) -> str:
    """The PFM-select row of ``n`` candidates."""
    return f"PFM-select (n = {n})"


def at_largest_n(names: list[str], n_max: int) -> list[str]:
    """``names`` without the best-of-n and PFM-select rows (:func:`bon_name`, :func:`select_name`) of an n other
    than ``n_max``, in their order."""
    return [m for m in names if not (m.startswith("best-of-") or m.startswith("PFM-select"))
            or m.startswith(f"best-of-{n_max} ") or m == select_name(n_max)]


def matched_best_of_n(methods: dict[str, Any], name: str, scorer: str = "reward model",
                      by_time: bool = True) -> list[tuple[str, str]]:
    """The best-of-n rows (by ``scorer``) to compare method ``name`` with at equal cost, from a summary's
    ``methods`` (each with ``cost``, ``seconds_per_output`` and, for best-of-n, ``n`` and ``scorer``): the n nearest
    in calls per output (:func:`calls_per_output`; ties to the larger n) and, with ``by_time``, the n nearest in
    mean measured wall time per output. ``[(best-of-n row, "calls" | "wall time"), ...]``; empty when either side
    has no cost."""
    bon = {e["n"]: n for n, e in methods.items() if e.get("scorer") == scorer and "n" in e and "cost" in e}
    if not bon or "cost" not in methods.get(name, {}):
        return []
    out = [(bon[int(nearest(calls_per_output(methods[name]["cost"]), bon))], "calls")]
    if by_time and "seconds_per_output" in methods[name]:
        seconds = {k: methods[row]["seconds_per_output"]["mean"] for k, row in bon.items()}
        out.append((bon[nearest_key(methods[name]["seconds_per_output"]["mean"], seconds)], "wall time"))
    return out
