"""One config per baseline trainer, as TRL's ``DPOConfig``: each extends :class:`pfm.TrainConfig` (the training
loop's settings: length, optimizer, clipping, EMA, checkpoints, precision, device, seed, threads) with its own, and
holds each default once.

Every trainer takes ``config=None, **overrides``: ``dpo(policy, pairs, DPOConfig(beta=0.5))``,
``dpo(policy, pairs, beta=0.5)`` and ``dpo(policy, pairs, DPOConfig(), beta=0.5)`` are the same run. A value is
checked when a config is made, so a wrong one fails before any work with a :class:`pfm.PFMError` naming it.

| config | trainer | default steps | batch | lr | weight decay | grad clip | its own |
|---|---|---|---|---|---|---|---|
| `RewardConfig` | `RewardModel.fit` | 2,000 | 256 | 1e-3 | 1e-4 | none | |
| `DPOConfig` | `dpo`, `ipo` | 1,000 | 64 | 1e-3 | 0 | 1.0 | beta 0.1, loss dpo |
| `RLHFConfig` | `rlhf` | 500 | 64 | 1e-3 | 0 | 1.0 | beta 0.1, samples_per_context 4, estimator reinforce |
| `BCConfig` | `behavior_cloning` | 2,000 | 256 | 1e-3 | 0 | 1.0 | |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from .. import validate as V
from ..config import TrainConfig, option
from ..errors import InvalidInputError

LOSSES = ("dpo", "ipo")
ESTIMATORS = ("reinforce", "pathwise")


@dataclass
class RewardConfig(TrainConfig):
    """Settings of :meth:`pfm.baselines.RewardModel.fit` (the Bradley-Terry logistic loss): the loop's, with a little weight
    decay and no clipping."""

    default_steps: ClassVar[int] = 2000
    weight_decay: float = option(1e-4, "AdamW weight decay (0: plain Adam)", range="nonneg")
    grad_clip: Optional[float] = option(None, "clip the gradient's norm to this (None: no clipping)", range="nonneg")


@dataclass
class DPOConfig(TrainConfig):
    """Settings of :func:`pfm.baselines.dpo` and :func:`pfm.baselines.ipo`: the loop's, with the KL strength and the loss."""

    default_steps: ClassVar[int] = 1000
    batch_size: int = option(64, "pairs a step", range="positive_int")
    beta: float = option(0.1, "KL strength (> 0); IPO's tau", range="positive")
    loss: str = option("dpo", "dpo (-log sigmoid(beta h)) or ipo ((h - 1 / (2 beta))^2)", choices=LOSSES)

    def __post_init__(self) -> None:
        super().__post_init__()
        V.check_beta(self.beta)
        V.check_choice(self.loss, "loss", LOSSES)


@dataclass
class RLHFConfig(TrainConfig):
    """Settings of :func:`pfm.baselines.rlhf`: the loop's (a step draws ``batch_size`` contexts, ``samples_per_context``
    outputs for each), with the KL strength and the gradient estimator."""

    default_steps: ClassVar[int] = 500
    batch_size: int = option(64, "contexts a step (unconditional: batch_size * samples_per_context outputs)",
                             range="positive_int")
    beta: float = option(0.1, "KL coefficient (> 0)", range="positive")
    samples_per_context: int = option(4, "outputs drawn for each context (>= 2: the leave-one-out baseline)",
                                      range="positive_int")
    estimator: str = option("reinforce", "reinforce (score function with the leave-one-out baseline; any policy, "
                            "any reward) or pathwise (reparameterized; a policy with rsample and a differentiable "
                            "reward)", choices=ESTIMATORS)

    def __post_init__(self) -> None:
        super().__post_init__()
        V.check_beta(self.beta)
        V.check_positive_int(self.samples_per_context, "samples_per_context")
        if self.samples_per_context < 2:
            raise InvalidInputError("samples_per_context must be >= 2 (the leave-one-out baseline needs two samples)")
        V.check_choice(self.estimator, "estimator", ESTIMATORS)


@dataclass
class BCConfig(TrainConfig):
    """Settings of :func:`pfm.baselines.behavior_cloning` (maximum likelihood): the loop's, as they are."""

    default_steps: ClassVar[int] = 2000
