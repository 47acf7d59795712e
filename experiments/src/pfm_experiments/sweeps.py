"""Beta sweeps of the baselines (RLHF, DPO, IPO), one way for every experiment.

:func:`sweep_betas` wraps :func:`pfm.baselines.sweep_beta` (one policy trained per beta, the pick by held-out
implicit accuracy or by ``validate``) and keeps every policy, so an experiment can also score a second pick
(:meth:`BetaSweep.pick`) without training it again. :func:`best_beta` is the pick of a row list by any key, ties
going to the larger beta (the policy closer to the reference), as :func:`pfm.baselines.sweep_beta` breaks them; the
text experiment, whose language-model policies have no implicit accuracy, sweeps with it directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from pfm.baselines import sweep_beta


@dataclass
class BetaSweep:
    beta: float  # the pick
    policy: Any  # its policy
    rows: list[dict[str, Any]]  # one per beta, increasing: beta, heldout_accuracy, [validation], evaluate(policy)
    policies: dict[float, Any]  # every beta's policy

    def pick(self, key: str) -> float:
        """The beta whose row has the largest ``key`` (ties: the larger beta)."""
        return best_beta(self.rows, key)


def best_beta(rows: Iterable[dict[str, Any]], key: str) -> float:
    """The ``beta`` of the row with the largest ``row[key]``; ties go to the larger beta."""
    return max(rows, key=lambda r: (r[key], r["beta"]))["beta"]


def sweep_betas(train: Callable[[float], Any], betas: Iterable[float], reference: Any, heldout: Any,
                evaluate: Optional[Callable[[Any], dict[str, Any]]] = None,
                validate: Optional[Callable[[Any], float]] = None) -> BetaSweep:
    """``train(beta)`` for every beta, picked as :func:`pfm.baselines.sweep_beta` picks (``evaluate(policy)``'s
    numbers go into each row); every policy is kept."""
    policies: dict[float, Any] = {}

    def keep(beta: float) -> Any:
        policies[beta] = train(beta)
        return policies[beta]

    beta, policy, rows = sweep_beta(keep, tuple(betas), reference, heldout, evaluate or (lambda p: {}), validate)
    return BetaSweep(beta, policy, rows, policies)
