"""The quick reproductions beside another job (issue 51): each ``pfm reproduce NAME --quick`` idle and beside one
busy process, from a fresh data directory, as a test run on a fresh clone meets them.

For each run of ``--runs`` (``text``, ``control``, ``rollout`` = control's ``--protocols rollout``, ``images``) and
each machine state (idle; beside one busy-loop process at normal priority: ``bench.Competitors``), the command runs
in a subprocess on torch's default threads, from a copy of a template data directory that holds only downloads
(the ``models`` directory, MiniLM's, and ``text/downloads``, taken from ``--data`` when there), so every run trains
its own cached models (pi_ref, decoders, classifiers, policies) as a first run does. Its wall time is measured;
its output JSON must hold the same numbers idle and busy (every key that does not name a time or a thread count).

With ``--baseline REV`` each run is made twice more with the library and experiments of git revision ``REV``
(a worktree in a temporary directory, put first on ``PYTHONPATH``): the same command before a change.

    python benchmarks/contention_runs.py [--runs text control rollout images] [--baseline REV]
        [--out results/contention-runs.json]

Prints a Markdown table and writes ``--out``; with ``--runs``, the other runs' rows of an existing ``--out`` are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from bench import Competitors, machine_info, save_result  # benchmarks/ is the script's directory
from pfm.runtime import data_dir

ROOT = Path(__file__).resolve().parent.parent
RUNS = {
    "text": ["reproduce", "text", "--quick"],
    "control": ["reproduce", "control", "--quick"],
    "rollout": ["reproduce", "control", "--quick", "--protocols", "rollout"],
    "images": ["reproduce", "mnist", "--quick"],
}
"""Each run's ``pfm`` arguments (``--out`` and ``-q`` are added)."""

DOWNLOADS = ("models", "text/downloads")
"""What a template data directory copies from ``--data``: fetched files, never anything a run computes."""

VOLATILE = ("second", "thread", "wall", "elapsed", "paused")
"""A JSON key holding one of these (or one of :data:`VOLATILE_KEYS`) is a measurement of the run, not one of its
numbers: left out of the comparison."""
VOLATILE_KEYS = {"costs", "machine", "out", "path", "data_dir"}


def numbers(obj: Any, places: dict[str, str]) -> Any:
    """``obj`` without the keys of :data:`VOLATILE` (at any depth), each path of ``places`` in its strings replaced
    by its name (a run's data directory is its own): what must be equal idle and busy."""
    if isinstance(obj, dict):
        return {k: numbers(v, places) for k, v in obj.items()
                if str(k).lower() not in VOLATILE_KEYS and not any(w in str(k).lower() for w in VOLATILE)}
    if isinstance(obj, list):
        return [numbers(v, places) for v in obj]
    if isinstance(obj, str):
        for path, name in places.items():
            obj = obj.replace(path, name)
    return obj


def outputs(out: Path, data: Path) -> dict[str, Any]:
    """The numbers of every JSON file a run wrote to ``out`` from the data directory ``data``, by file name."""
    places = {str(out): "<out>", str(data): "<data>"}
    return {p.name: numbers(json.loads(p.read_text()), places) for p in sorted(out.glob("*.json"))}


def template(source: Path, where: Path) -> Path:
    """A data directory holding only :data:`DOWNLOADS` from ``source`` (those present)."""
    where.mkdir(parents=True)
    for rel in DOWNLOADS:
        if (source / rel).is_dir():
            shutil.copytree(source / rel, where / rel)
    return where


def run_once(name: str, data: Path, out: Path, pythonpath: Optional[str]) -> float:
    """``pfm <RUNS[name]> --out out -q`` with ``PFM_DATA_DIR=data``; its wall seconds (a failure is an error)."""
    env = {**os.environ, "PFM_DATA_DIR": str(data)}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = [sys.executable, "-c", "import sys; from pfm.cli import main; sys.exit(main(sys.argv[1:]))",
            *RUNS[name], "--out", str(out), "-q"]
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def worktree(rev: str, where: Path) -> str:
    """A worktree of ``rev`` at ``where``; the ``PYTHONPATH`` that runs its library and experiments."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(where), rev], check=True)
    return os.pathsep.join([str(where / "src"), str(where / "experiments" / "src")])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    ap.add_argument("--competitors", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--baseline", metavar="REV", help="also run git revision REV's code (before a change)")
    ap.add_argument("--data", type=Path, default=None, help="where the downloads are (default: pfm's data directory)")
    ap.add_argument("--out", default="results/contention-runs.json")
    args = ap.parse_args()
    began = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pfm-contention-runs-") as tmp:
        work = Path(tmp)
        base = template(args.data or data_dir(), work / "template")
        codes: dict[str, Optional[str]] = {"now": None}
        if args.baseline:
            codes = {f"at {args.baseline}": worktree(args.baseline, work / "baseline"), **codes}
        try:
            for name in args.runs:
                seen: dict[str, Any] = {}
                for code, pythonpath in codes.items():
                    for k in args.competitors:
                        tag = f"{name}-{code.replace(' ', '_')}-{k}"
                        data, out = work / tag / "data", work / tag / "out"
                        shutil.copytree(base, data)
                        with Competitors(k) as load:
                            seconds = run_once(name, data, out, pythonpath)
                        got = outputs(out, data)
                        first = seen.setdefault("numbers", got)
                        row = {"workload": name, "code": code, "competitors": k, "seconds": seconds,
                               "busy_cores": load.busy, "same_numbers": got == first}
                        rows.append(row)
                        print(f"{name}, {code}, {k} busy: {seconds:.1f} s, same numbers {row['same_numbers']}",
                              flush=True)
                        shutil.rmtree(work / tag)
        finally:
            if args.baseline:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "baseline")])
    result = {"rows": rows, "seconds": time.perf_counter() - began, "machine": machine_info()}
    save_result(args.out, result, args.runs, list(RUNS), "earlier runs")
    print(table(result))


def table(result: dict[str, Any]) -> str:
    """Seconds per run, code and machine state, and each over the same code's idle time."""
    rows = result["rows"]
    idle = {(r["workload"], r["code"]): r["seconds"] for r in rows if r["competitors"] == 0}
    out = ["| run | code | busy processes | seconds | over its idle | same numbers as the first |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        base = idle.get((r["workload"], r["code"]))
        ratio = f"{r['seconds'] / base:.2f}x" if base else "-"
        out.append(f"| {r['workload']} | {r['code']} | {r['competitors']} | {r['seconds']:.1f} s | {ratio} | "
                   f"{'yes' if r['same_numbers'] else 'no'} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
