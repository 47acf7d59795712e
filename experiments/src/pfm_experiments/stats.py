"""Statistics over seeds: the one helper behind every experiment's "mean ± std" and paired comparisons.

- :func:`describe` ``(values)``: ``{"mean", "std", "n", "ci"}`` of one metric over seeds. ``std`` is the *sample*
  standard deviation (``ddof=1``) and ``ci`` the two-sided 95% Student-t confidence interval of the mean,
  ``mean ± t(0.975, n - 1) std / sqrt(n)``. With one seed neither is defined: both are ``None`` (JSON-safe, and a
  table then prints the mean alone), never a made-up 0.
- :func:`paired_difference` ``(a, b)``: the per-seed differences ``a[seed] - b[seed]`` over the seeds both have,
  described the same way (its CI is that of a paired t-test, :func:`scipy.stats.ttest_rel`), with the ``seeds``
  used and how many of them ``a`` is ahead on (``wins``).
- :func:`by_seed` ``(records, get)``: ``{seed: get(record)}`` of per-seed records (dicts with a ``"seed"``).
- :func:`compare` ``(records, pairs, metrics, get)``: the paired differences of several ``(method, baseline)``
  pairs on several metrics, and :func:`comparison_table`, their markdown table.
- :func:`format_mean_std` / :func:`format_difference`: the table cells, ``0.123 ± 0.045`` and
  ``+0.123 [+0.050, +0.196]``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np

LEVEL = 0.95


def _values(values: Iterable[float]) -> np.ndarray:
    v = np.asarray([float(x) for x in values], dtype=float)
    if v.size == 0:
        raise ValueError("no values to summarize (no seeds)")
    return v


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample std (``ddof=1``) of ``values``; the std of a single value is NaN."""
    v = _values(values)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def confidence_interval(values: Iterable[float], level: float = LEVEL) -> tuple[float, float]:
    """The two-sided Student-t confidence interval of the mean of ``values`` (NaN, NaN for a single value)."""
    from scipy import stats

    v = _values(values)
    if len(v) < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1)) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return float(v.mean()) - half, float(v.mean()) + half


def describe(values: Iterable[float], level: float = LEVEL) -> dict[str, Any]:
    """``{"mean", "std", "n", "ci": [low, high]}`` of ``values`` over seeds; ``std`` and ``ci`` are ``None`` with
    one value (see the module docstring)."""
    v = _values(values)
    mean, std = mean_std(v)
    low, high = confidence_interval(v, level)
    one = len(v) < 2
    return {"mean": mean, "std": None if one else std, "n": int(len(v)), "ci": None if one else [low, high]}


def paired_difference(a: Mapping[Any, float], b: Mapping[Any, float], level: float = LEVEL) -> dict[str, Any]:
    """:func:`describe` of ``a[s] - b[s]`` over the seeds ``s`` in both (matched by seed, not by position), plus
    ``seeds`` (those used, sorted) and ``wins`` (on how many of them ``a`` is above ``b``)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"no seed in common: {sorted(a)} against {sorted(b)}")
    diffs = [float(a[s]) - float(b[s]) for s in seeds]
    return {**describe(diffs, level), "seeds": seeds, "wins": int(sum(d > 0 for d in diffs))}


def by_seed(records: Iterable[Mapping[str, Any]], get: Callable[[Mapping[str, Any]], float]) -> dict[int, float]:
    """``{record["seed"]: get(record)}``: the per-seed values of one metric, for :func:`paired_difference`."""
    return {int(r["seed"]): float(get(r)) for r in records}


def best(summary: Mapping[str, Mapping[str, Any]], names: Iterable[str], higher: bool = True) -> Optional[str]:
    """Of ``names`` in ``summary`` (``{name: describe(...)}``), the one with the best mean (first on ties)."""
    present = [n for n in names if n in summary]
    if not present:
        return None
    sign = 1.0 if higher else -1.0
    return max(present, key=lambda n: (sign * summary[n]["mean"], -present.index(n)))


def compare(records: Iterable[Mapping[str, Any]], pairs: Iterable[tuple[str, str]], metrics: Iterable[str],
            get: Callable[[Mapping[str, Any], str, str], Optional[float]]) -> list[dict[str, Any]]:
    """For each ``(method, baseline)`` of ``pairs``: ``{"method", "baseline", metric: paired_difference(...)}`` of
    ``get(record, method, metric) - get(record, baseline, metric)`` over the per-seed ``records``; a metric that
    ``get`` gives as ``None`` for either is left out."""
    records, metrics = list(records), list(metrics)
    out = []
    for a, b in pairs:
        row: dict[str, Any] = {"method": a, "baseline": b}
        for m in metrics:
            va = {int(r["seed"]): get(r, a, m) for r in records}
            vb = {int(r["seed"]): get(r, b, m) for r in records}
            if any(v is None for v in (*va.values(), *vb.values())):
                continue
            row[m] = paired_difference(va, vb)
        out.append(row)
    return out


def comparison_table(rows: Iterable[Mapping[str, Any]], labels: Mapping[str, str], spec: str = ".3f",
                     specs: Optional[Mapping[str, str]] = None) -> str:
    """Markdown: one row per comparison ``method − baseline``, a column per metric of ``labels`` (``{metric:
    label}``) with the mean paired difference and its 95% CI (format ``specs[metric]``, else ``spec``), and the
    number of seeds."""
    specs = specs or {}
    lines = ["| comparison (paired over seeds) | " + " | ".join(f"Δ {v} [95% CI]" for v in labels.values())
             + " | seeds |", "|---|" + "---|" * (len(labels) + 1)]
    for row in rows:
        cells = [format_difference(row[m], specs.get(m, spec)) if m in row else "" for m in labels]
        n = next((row[m]["n"] for m in labels if m in row), 0)
        lines.append(f"| {row['method']} − {row['baseline']} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines)


def format_mean_std(entry: Mapping[str, Any], spec: str = ".3f") -> str:
    """``"mean ± std"``, or the mean alone when the std is undefined (one seed)."""
    if entry.get("std") is None:
        return f"{entry['mean']:{spec}}"
    return f"{entry['mean']:{spec}} ± {entry['std']:{spec}}"


def format_difference(entry: Mapping[str, Any], spec: str = ".3f") -> str:
    """``"+mean [+low, +high]"``: a paired difference and its confidence interval (the mean alone with one seed)."""
    cell = f"{entry['mean']:+{spec}}"
    if entry.get("ci") is not None:
        low, high = entry["ci"]
        cell += f" [{low:+{spec}}, {high:+{spec}}]"
    return cell
