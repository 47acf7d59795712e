"""The smallest end-to-end example: a 2D Gaussian reference, preferred = closer to a target point.

The reference draws ``y ~ N(mean_k, I)`` for a label k (or k = 0 when unconditional); of two draws the one closer to
the label's target point is preferred. A good flow moves fresh reference draws toward the target, about as close as
the preferred draws are; applying it again moves them closer still.
"""

from __future__ import annotations

import time
from typing import Optional

import torch
from torch import Tensor

from .data import PreferenceDataset, collect_preferences
from .flow import PreferenceFlow

MEANS = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
TARGETS = torch.tensor([[2.0, 2.0], [-2.0, 2.0]])


def reference(generator: torch.Generator):
    """``sample(context, n) -> (n, 2)``: N(MEANS[label], I) per row (label 0 when ``context`` is None)."""

    def sample(context: Optional[Tensor], n: int) -> Tensor:
        labels = torch.zeros(n, dtype=torch.int64) if context is None else context
        return MEANS[labels] + torch.randn(n, 2, generator=generator)

    return sample


def score(y: Tensor, context: Optional[Tensor]) -> Tensor:
    """Minus the distance to the label's target: higher is preferred."""
    labels = torch.zeros(len(y), dtype=torch.int64) if context is None else context
    return -(y - TARGETS[labels]).norm(dim=1)


def distance(y: Tensor, context: Optional[Tensor]) -> float:
    """Mean distance to the target (the metric; lower is better)."""
    return float(-score(y, context).mean())


def run(
    n_pairs: int = 4000,
    steps: int = 1500,
    n_test: int = 2000,
    conditional: bool = False,
    iterations: int = 3,
    coupling: str = "ot",
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Collect pairs, fit a flow, and measure mean distance to the target of each set of outputs."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    sample = reference(gen)
    labels = torch.randint(0, 2, (n_pairs,), generator=gen) if conditional else None
    t0 = time.perf_counter()
    ds: PreferenceDataset = collect_preferences(sample, score, labels, n=None if conditional else n_pairs)
    flow = PreferenceFlow.for_dataset(ds, hidden=128, depth=3)
    history = flow.fit(ds, steps=steps, batch_size=256, coupling=coupling, seed=seed, progress=progress)
    fit_s = time.perf_counter() - t0
    test_c = torch.randint(0, 2, (n_test,), generator=gen) if conditional else None
    y_ref = sample(test_c, n_test)
    t1 = time.perf_counter()
    y_pfm = flow.transform(y_ref, test_c)
    infer_s = time.perf_counter() - t1
    y_iter = flow.iterate(y_pfm, test_c, iterations=iterations - 1) if iterations > 1 else y_pfm
    rows = {
        "reference": distance(y_ref, test_c),
        "rejected (y-)": distance(ds.rejected, ds.context),
        "preferred (y+)": distance(ds.chosen, ds.context),
        "PFM": distance(y_pfm, test_c),
        f"PFM x {iterations}": distance(y_iter, test_c),
    }
    return {"distance": rows, "final_loss": history.loss[-1], "fit_seconds": fit_s, "transform_seconds": infer_s,
            "n_pairs": len(ds), "steps": steps, "conditional": conditional, "coupling": coupling}


def table(result: dict) -> str:
    """A Markdown table of :func:`run`'s result."""
    lines = ["| outputs | mean distance to target |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in result["distance"].items()]
    return "\n".join(lines)
