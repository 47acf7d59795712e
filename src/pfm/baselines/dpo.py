"""Direct preference optimization on the pairs themselves: DPO (Rafailov et al. 2023) and IPO (Azar et al. 2023).

With ``h = [log pi(y+) - log pi_ref(y+)] - [log pi(y-) - log pi_ref(y-)]``:

- DPO minimizes ``-log sigmoid(beta h)``; under Bradley-Terry preferences with reward r its optimum is
  ``pi ∝ pi_ref exp(r / beta)``.
- IPO minimizes ``(h - 1 / (2 beta))^2`` (Azar et al.'s tau is our beta): a regression of the log-ratio margin on a
  fixed target, which does not drive ``h`` to infinity on deterministic preferences the way DPO can.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import validate as V
from ..data import PreferenceDataset
from ..errors import InvalidInputError, InvalidTypeError
from ..config import merge
from ..train import History, optimize
from ._common import check_policy, log_probs, policy_pair
from .config import LOSSES, DPOConfig


def preference_loss(margin: Tensor, beta: float, kind: Literal["dpo", "ipo"] = "dpo") -> Tensor:
    """Mean DPO or IPO loss of log-ratio margins ``h: (n,)`` (see the module's docstring)."""
    V.check_choice(kind, "kind", LOSSES)
    if kind == "dpo":
        return -F.logsigmoid(beta * margin).mean()
    return (margin - 1.0 / (2.0 * beta)).pow(2).mean()


def dpo(
    policy: nn.Module,
    dataset: PreferenceDataset,
    config: Optional[DPOConfig] = None,
    *,
    reference: Optional[nn.Module] = None,
    **overrides: Any,
) -> tuple[nn.Module, History]:
    """Fine-tune a copy of ``policy`` on ``dataset``'s pairs with the DPO (or IPO) loss.

    Args:
        policy: the reference policy; not modified, a copy is trained and returned.
        dataset: the preference pairs (and contexts the policy is conditioned on).
        config: a :class:`pfm.baselines.DPOConfig` (default ``DPOConfig()``: beta 0.1, the DPO loss, 1,000 steps
            of 64 pairs); ``overrides`` are its field names (``beta=0.5, steps=200, loss="ipo"``, ...).
        reference: pi_ref; default a frozen copy of ``policy``.

    Returns:
        ``(fine_tuned_policy, history)``; ``history.extras["acc"]`` is the fraction of the batch with ``h > 0``.
    """
    cfg = merge(config, overrides, DPOConfig, "dpo")
    if not isinstance(dataset, PreferenceDataset):
        raise InvalidTypeError(f"dataset must be a PreferenceDataset, got {type(dataset).__name__}")
    beta, loss = float(cfg.beta), cfg.loss
    pi, ref, dev = policy_pair(policy, reference, cfg.device)
    ds = dataset.to(dev)
    ref_chosen = log_probs(ref, ds.chosen, ds.context)
    ref_rejected = log_probs(ref, ds.rejected, ds.context)

    def loss_fn(index: Tensor, gen: torch.Generator):
        c = None if ds.context is None else ds.context[index]
        margin = (pi.log_prob(ds.chosen[index], c) - ref_chosen[index]) \
            - (pi.log_prob(ds.rejected[index], c) - ref_rejected[index])
        return preference_loss(margin, beta, loss), {"acc": (margin > 0).float().mean()}  # type: ignore[arg-type]

    history = optimize(pi, loss_fn, len(ds), cfg, device=dev, desc=f"{loss.upper()} (beta={beta:g})",
                       invariant_loss="check")
    return pi.eval(), history


def ipo(policy: nn.Module, dataset: PreferenceDataset, config: Optional[DPOConfig] = None, **kwargs: Any,
        ) -> tuple[nn.Module, History]:
    """:func:`dpo` with the IPO loss."""
    if "loss" in kwargs:
        raise InvalidInputError("ipo() sets loss='ipo' itself")
    return dpo(policy, dataset, config, loss="ipo", **kwargs)


@torch.no_grad()
def implicit_accuracy(policy: nn.Module, reference: nn.Module, dataset: PreferenceDataset) -> float:
    """Fraction of pairs whose implicit reward ``log pi / pi_ref`` ranks y+ above y- (ties count half).

    A criterion that needs only held-out pairs, usable to pick beta for any fine-tuned policy (DPO, IPO, RLHF).
    """
    check_policy(policy, trainable=False)
    check_policy(reference, "reference", trainable=False)
    if not isinstance(dataset, PreferenceDataset):
        raise InvalidTypeError(f"dataset must be a PreferenceDataset, got {type(dataset).__name__}")
    dev = next(policy.parameters()).device
    ds = dataset.to(dev)
    h = (log_probs(policy, ds.chosen, ds.context) - log_probs(reference, ds.chosen, ds.context)) \
        - (log_probs(policy, ds.rejected, ds.context) - log_probs(reference, ds.rejected, ds.context))
    return float((h > 0).float().mean() + 0.5 * (h == 0).float().mean())


def sweep_beta(train: Callable[[float], nn.Module], betas: Sequence[float], reference: nn.Module,
               heldout: PreferenceDataset, evaluate: Callable[[nn.Module], dict[str, Any]],
               validate: Optional[Callable[[nn.Module], float]] = None,
               ) -> tuple[float, nn.Module, list[dict[str, Any]]]:
    """Train one policy per beta with ``train(beta)`` and pick beta on held-out data.

    By default the pick is the best :func:`implicit_accuracy` on the held-out pairs. With ``validate`` (a score of
    a policy, higher is better, e.g. the annotator's mean score of fresh samples on validation contexts) the pick
    is the best ``validate(policy)``; implicit accuracy is still recorded. Betas are tried from the largest down, so
    a tie keeps the larger beta (the policy closer to ``reference``).

    Returns ``(best_beta, best_policy, rows)``: a row per beta, in increasing beta, with ``beta``,
    ``heldout_accuracy``, ``validation`` (with ``validate``) and what ``evaluate(policy)`` returned.
    """
    if not callable(train) or not callable(evaluate):
        raise InvalidTypeError("train and evaluate must be callables: train(beta) -> policy, evaluate(policy) -> dict")
    if validate is not None and not callable(validate):
        raise InvalidTypeError(f"validate must be a callable validate(policy) -> float, got {type(validate).__name__}")
    if len(betas) == 0:
        raise InvalidInputError("betas is empty: give at least one beta to try")
    key = "heldout_accuracy" if validate is None else "validation"
    rows: list[dict[str, Any]] = []
    best: Optional[dict[str, Any]] = None
    best_policy: Optional[nn.Module] = None
    for beta in sorted((V.check_beta(b) for b in betas), reverse=True):
        policy = train(beta)
        row: dict[str, Any] = {"beta": beta, "heldout_accuracy": implicit_accuracy(policy, reference, heldout)}
        if validate is not None:
            row["validation"] = float(validate(policy))
            if not math.isfinite(row["validation"]):
                raise InvalidInputError(f"validate(policy) returned {row['validation']} for beta {beta:g}")
        rows.append({**row, **evaluate(policy)})
        if best is None or rows[-1][key] > best[key] + 1e-12:
            best, best_policy = rows[-1], policy
    assert best is not None and best_policy is not None
    return best["beta"], best_policy, sorted(rows, key=lambda r: r["beta"])
