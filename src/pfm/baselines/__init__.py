"""The baselines PFM is compared with, on the same data and reference policies: a Bradley-Terry reward model,
RLHF (KL-regularized policy optimization on that reward), DPO and IPO; and behavior cloning (pi_ref from offline
data, and Marginal BC on the preferred outputs). They need a policy with a density
(``sample`` and ``log_prob``, see :mod:`pfm.policies`); PFM does not. Each trainer takes its config (
:mod:`pfm.baselines.config`: ``RewardConfig``, ``DPOConfig``, ``RLHFConfig``, ``BCConfig``, each a
:class:`pfm.TrainConfig`) and overrides by field name.
"""

from .bc import behavior_cloning
from .config import BCConfig, DPOConfig, RewardConfig, RLHFConfig
from .dpo import dpo, implicit_accuracy, ipo, preference_loss, sweep_beta
from .reward import RewardModel
from .rlhf import rlhf

__all__ = ["RewardModel", "rlhf", "dpo", "ipo", "preference_loss", "implicit_accuracy", "sweep_beta",
           "behavior_cloning", "RewardConfig", "DPOConfig", "RLHFConfig", "BCConfig"]
