"""Choosing among n reference samples, beside the alignment methods: best-of-n by the RLHF reward model or by the
oracle, and PFM-select (:mod:`pfm.selection`), each with its inference cost (:mod:`pfm_experiments.cost`); and the
timing of every other method's outputs.

The oracle scores a candidate by its true reward r(y): what the Bradley-Terry annotator compares (its P(a > b) is
increasing in r(a) - r(b)) and what the threshold annotator thresholds (r >= 0.3). An upper bound: PFM and the
baselines only ever see pairs.

Best-of-n by a score s with a continuous distribution under pi_ref has the density
``pi_n(y) = n pi_ref(y) F(s(y))^(n-1)``, F the CDF of s(Y), Y ~ pi_ref, here the empirical CDF of ``cdf_samples``
fresh reference samples; so its KL and Theorem 1's J are measured like every other method's (for the oracle the
KL is also known exactly: log n - (n - 1)/n). PFM-select's output distribution has no density we can compute.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from pfm import best_of_n, pfm_select
from ..cost import Cost, bon_name, measure, select_name
from .metrics import Evaluator
from .task import true_reward

SCORERS = ("reward model", "oracle")


def sampling_cost(sample: Callable[[], Any], n: int, reference_calls: float = 0.0, solves: float = 0.0,
                  policy_calls: float = 0.0) -> dict[str, Any]:
    """Time ``sample()`` (which makes ``n`` outputs; the fastest of 3 runs, :func:`..cost.measure`): the
    :class:`Cost` record of one output."""
    with torch.no_grad():
        _, seconds = measure(sample, n)
    return Cost(reference_calls, solves, policy_calls, seconds).as_dict()


@torch.no_grad()
def bon_log_density(y: Tensor, score: Callable[[Tensor], Tensor], n: int, log_ref: Tensor,
                    sorted_ref_scores: Tensor) -> Tensor:
    """``(N,)`` log-density of best-of-``n`` by ``score`` at its outputs ``y`` ``(N, 2)`` (``log_ref`` = log pi_ref
    there, ``(N,)``): log n + log pi_ref(y) + (n - 1) log F(s(y)), F the empirical CDF of ``sorted_ref_scores``."""
    m = len(sorted_ref_scores)
    rank = torch.searchsorted(sorted_ref_scores, score(y).to(sorted_ref_scores).contiguous(), right=True)
    cdf = rank.double().clamp_min(0.5) / m
    return float(np.log(n)) + log_ref.double() + (n - 1) * torch.log(cdf)


@torch.no_grad()
def selection_rows(ref: Any, scorers: dict[str, Callable[[Tensor], Tensor]], flow: Any, evaluate: Evaluator,
                   ns: tuple[int, ...], n_test: int, cdf_samples: int, seed: int) -> dict[str, dict[str, Any]]:
    """Best-of-n for every scorer of ``scorers`` (``{name: score (M, 2) -> (M,)}``) and PFM-select with ``flow``,
    for every n of ``ns``, on ``n_test`` outputs each. At one n every method sees the same candidates (one
    generator seeded by seed and n), so their differences are paired; each row's wall time (the fastest of 3 runs)
    covers drawing its candidates and scoring or solving, not the evaluation."""
    gen = torch.Generator().manual_seed(60_000 + seed)
    y_cdf = ref.sample(None, cdf_samples, generator=gen)
    sorted_scores = {name: torch.sort(score(y_cdf).double())[0] for name, score in scorers.items()}
    rows: dict[str, dict[str, Any]] = {}

    def candidates(n: int) -> Tensor:
        g = torch.Generator().manual_seed(40_000 + 1000 * seed + n)
        return ref.sample(None, n_test * n, generator=g).reshape(n_test, n, -1)

    for n in ns:
        for name, score in scorers.items():
            def pick(n: int = n, score: Callable[[Tensor], Tensor] = score) -> Tensor:
                cands = candidates(n)
                return best_of_n(cands, score(cands.reshape(n_test * n, -1)).reshape(n_test, n))[0]

            chosen, seconds = measure(pick, n_test)
            log_pi = bon_log_density(chosen, score, n, ref.log_prob(chosen), sorted_scores[name])
            label = bon_name(n, name)
            rows[label] = {"metrics": asdict(evaluate(label, chosen, log_pi)), "n": n, "scorer": name,
                           "cost": Cost(n, 0, 0, seconds).as_dict()}
        (chosen, _, distance), seconds = measure(lambda n=n: pfm_select(flow, candidates(n)), n_test)
        label = select_name(n)
        rows[label] = {"metrics": asdict(evaluate(label, chosen)), "n": n, "mean_distance": float(distance.mean()),
                       "cost": Cost(n, 1, 0, seconds).as_dict()}
    return rows


def oracle(layout: str) -> Callable[[Tensor], Tensor]:
    """The oracle scorer: the true reward of the layout, ``(M, 2) -> (M,)``."""
    return lambda y: true_reward(y, layout)
