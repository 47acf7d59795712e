"""Runs ``pfm`` commands in one process under limits that a test cannot set on itself: an address-space limit
(``ulimit -v``), so that an allocation sized by a crafted number fails fast instead of swapping the machine. Used by
tests/test_tour.py.

    python tests/tour_worker.py CASES.json OUT.json [--limit-mb N]

CASES.json holds ``[[name, argv], ...]``; OUT.json gets ``{name: {"code", "stderr", "seconds", "peak_mb"}}``.
"""

import contextlib
import io
import json
import resource
import sys
import time


def peak_mb() -> float:
    """This process's peak resident set since it started: ``VmHWM`` belongs to the address space that ``exec`` made, where
    ``ru_maxrss`` keeps the high-water mark of the process before ``exec`` (a fork of pytest, 2 GB late in a CI run)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    cases_file, out_file, *flags = sys.argv[1:]
    if "--limit-mb" in flags:
        limit = int(flags[flags.index("--limit-mb") + 1]) << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    torch.set_num_threads(1)
    from pfm.cli import main as pfm

    results = {}
    for name, argv in json.load(open(cases_file)):
        err = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = pfm(argv)
            except SystemExit as exc:  # argparse
                code = exc.code
            except MemoryError:
                code = "MemoryError"
        results[name] = {"code": code, "stderr": err.getvalue(), "seconds": time.perf_counter() - start,
                         "peak_mb": peak_mb()}
    with open(out_file, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
