"""What a fit's pairing costs where each step sees new pairs, and what ``fit`` says about it (issue 51).

A 2-D 2 x 64 MLP flow trained 3,000 steps at batch 256 on 10^6 pairs held in memory (the rejected outputs from a
standard normal, the preferred ones shifted by 2: under one epoch, so every batch is coupled as it comes), once with
exact OT of whole batches (the default) and once with ``coupling_block=128``. For each: the fit's seconds,
``history.pairing`` (the steps' own solves and waits, the pairing threads'), the share of the fit the steps spent
pairing, and the warnings ``fit`` logged (:func:`pfm.flow.fit.pairing_note`).

    python benchmarks/pairing_note.py [--pairs 1000000] [--steps 3000] [--out results/pairing-note.json]

Prints a Markdown table and writes ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Optional

import torch

from bench import machine_info  # benchmarks/ is the script's directory
from pfm import PreferenceDataset, PreferenceFlow
from pfm.io import atomic_file


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=1_000_000)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--out", default="results/pairing-note.json")
    a = p.parse_args(argv)
    began = time.time()
    g = torch.Generator().manual_seed(0)
    ds = PreferenceDataset(torch.randn(a.pairs, 2, generator=g) + 2, torch.randn(a.pairs, 2, generator=g))
    rows = []
    for block in (None, 128):
        torch.manual_seed(0)
        flow = PreferenceFlow((2,), hidden=64, depth=2)
        warnings = _Warnings()
        logging.getLogger("pfm").addHandler(warnings)
        try:
            h = flow.fit(ds, steps=a.steps, batch_size=256, validation_fraction=0, progress=False,
                         coupling_block=block)
        finally:
            logging.getLogger("pfm").removeHandler(warnings)
        spent = h.pairing["solve_s"] + h.pairing["wait_s"]
        rows.append(dict(coupling="exact OT" if block is None else f"OT, blocks of {block}", seconds=round(h.seconds, 2),
                         pairing_seconds=round(spent, 2), share=round(spent / h.seconds, 3), pairing=h.pairing,
                         warnings=warnings.messages))
    result = dict(command="python benchmarks/pairing_note.py", pairs=a.pairs, steps=a.steps, batch_size=256,
                  rows=rows, machine=machine_info(), seconds=round(time.time() - began, 1))
    with atomic_file(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print("| coupling | fit (s) | the steps' pairing (s) | share | batches the steps solved | warned |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['coupling']} | {r['seconds']} | {r['pairing_seconds']} | {r['share']:.0%} | "
              f"{r['pairing']['blocks']} | {'yes' if r['warnings'] else 'no'} |")
    print(f"\n{result['seconds']} s; wrote {a.out}")


if __name__ == "__main__":
    main()
