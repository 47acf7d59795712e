"""The baselines PFM is compared with, on the same data and reference policies: a Bradley-Terry reward model,
RLHF (KL-regularized policy optimization on that reward), DPO and IPO. They need a policy with a density
(``sample`` and ``log_prob``, see :mod:`pfm.policies`); PFM does not.
"""

from .dpo import dpo, implicit_accuracy, ipo, preference_loss, sweep_beta
from .reward import RewardModel
from .rlhf import rlhf

__all__ = ["RewardModel", "rlhf", "dpo", "ipo", "preference_loss", "implicit_accuracy", "sweep_beta"]
