"""What a results JSON says that must follow from its seeds (issue 29), and how close two runs of a seed came.

Two runs of the same seed, from empty data directories or on other machines, must agree on everything but the
measured times. On one machine they agree exactly (the tests check it); across machines the floating-point
reductions of the BLAS and of the simulator may differ in the last bits, so the numbers agree to rounding.
``python -m pfm_experiments.seeded A.json B.json [--seed S]`` compares seed ``S``'s records (default 0) of two
results files number by number and prints how many differ and the largest relative difference.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

TIMING = {"seconds", "wall_seconds", "compute_seconds", "cached", "seconds_per_output", "taken_from"}
"""The keys of measured times (and of whether a part came from the cache, or from an earlier results file): never
part of what a seed decides."""


def untimed(v: Any) -> Any:
    """``v`` without its measured times (and the comparisons matched by a measured time, which may pick another n
    in another run)."""
    if isinstance(v, dict):
        return {k: untimed(x) for k, x in v.items() if k not in TIMING}
    if isinstance(v, list):
        return [untimed(x) for x in v if not (isinstance(x, dict) and x.get("matched_by") == "wall time")]
    return v


def seeded_numbers(result: dict) -> dict:
    """A results JSON's config, summary and per-seed runs without their measured times: what two runs of the same
    seeds must agree on, whatever their data directories held."""
    return untimed({k: result[k] for k in ("config", "summary", "runs")})


def _leaves(a: Any, b: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            yield from _leaves(a.get(k), b.get(k), f"{path}/{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _leaves(x, y, f"{path}[{i}]")
    else:
        yield path, a, b


def compare(a: Any, b: Any, floor: float = 1e-3) -> dict[str, Any]:
    """Compare two records leaf by leaf. Returns ``numbers`` (float leaves in both), ``differing`` (of those),
    ``worst_relative`` (the largest ``|a - b| / max(|a|, |b|)`` over numbers of magnitude above ``floor``, with its
    path) and ``mismatched`` (paths whose non-float values differ, or that only one side has)."""
    numbers = differing = 0
    worst: tuple[float, Optional[str]] = (0.0, None)
    mismatched = []
    for path, x, y in _leaves(a, b):
        if isinstance(x, float) and isinstance(y, (int, float)) or isinstance(y, float) and isinstance(x, int):
            numbers += 1
            if x != y and not (math.isnan(x) and math.isnan(y)):
                differing += 1
                scale = max(abs(x), abs(y))
                if scale > floor and abs(x - y) / scale > worst[0]:
                    worst = (abs(x - y) / scale, path)
        elif x != y:
            mismatched.append(path)
    return {"numbers": numbers, "differing": differing, "worst_relative": worst[0], "worst_path": worst[1],
            "mismatched": mismatched}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pfm_experiments.seeded", description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="a results JSON (e.g. results/toy2d.json)")
    p.add_argument("b", type=Path, help="another run's results JSON of the same config")
    p.add_argument("--seed", type=int, default=0, help="the seed whose records are compared (default 0)")
    p.add_argument("--ignore", action="append", default=[], metavar="KEY",
                   help="a config key left out of the configs' comparison, e.g. an option added after the older "
                        "file was written (its default holding there); repeatable")
    args = p.parse_args(argv)
    records, configs = [], []
    for path in (args.a, args.b):
        try:
            result = json.loads(path.read_text())
            records.append([r for r in result["runs"] if r.get("seed") == args.seed])
            configs.append({k: v for k, v in result["config"].items() if k != "seeds" and k not in args.ignore})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            print(f"error: {path}: not a results JSON with runs ({e})", file=sys.stderr)
            return 2
        if not records[-1]:
            print(f"error: {path}: no run of seed {args.seed}", file=sys.stderr)
            return 2
    if untimed(configs[0]) != untimed(configs[1]) or len(records[0]) != len(records[1]):
        print("the two files' configs differ (beyond their seeds): not runs of the same thing", file=sys.stderr)
        return 1
    c = compare(untimed(records[0]), untimed(records[1]))
    print(f"seed {args.seed} ({len(records[0])} record(s)): {c['numbers']} numbers, {c['differing']} differ; largest "
          f"relative difference {c['worst_relative']:.2g} (numbers above 1e-3; at {c['worst_path']}); "
          f"{len(c['mismatched'])} other values differ" + (f": {c['mismatched'][:5]}" if c["mismatched"] else ""))
    return 0 if not c["mismatched"] else 1


if __name__ == "__main__":
    sys.exit(main())
