"""The paper's illustrative 2D experiment: PFM against a reward model + RLHF, DPO and IPO on the same pairs.

- Reference pi_ref: a fixed mixture of three Gaussians (a ``GaussianMixturePolicy``, so the baselines can fine-tune a
  copy of it through its ``log_prob``).
- True reward: a sum of three Gaussian bumps whose high-value regions the reference covers only partly: by default
  ("inside") every peak lies in the reference's support and the bumps reach beyond it; in the "edge" layout the
  highest peak lies just outside the support.
- Preferences, two models: ``bt`` (Bradley-Terry on the true reward at temperature 0.05) and ``threshold`` (the
  annotator only tells "good" outputs, reward >= 0.3, from the rest, and flips a coin between two of a kind: no
  finite Bradley-Terry reward gives those probabilities).
- Metrics on fresh test samples: mean true reward; win rate against the reference under the preference model
  (exact probabilities, ties half); sliced Wasserstein distance to held-out preferred samples (the y+ marginal); and
  the mass outside the reference's support, i.e. below the 1% quantile of log pi_ref over reference samples
  (over-optimization).
- Beside them, choosing among n reference samples (:mod:`.selection`): best-of-n by the RLHF reward model or by
  the oracle (the true reward), and PFM-select; every method's inference cost per output (reference calls, flow
  solves, measured wall time; :mod:`pfm_experiments.cost`), and PFM's strength dial and reference-source variant.
- Beta for RLHF, DPO and IPO is picked from a sweep by the held-out pairwise accuracy of the fine-tuned policy's
  implicit reward log pi/pi_ref (ties go to the larger beta): held-out pairs only, never the test metrics.

Entry point: :func:`reproduce` (``pfm reproduce toy2d``; :func:`report_only` for ``--report-only``). The modules:
:mod:`.task` (pi_ref, the reward, the preference models), :mod:`.config`, :mod:`.metrics`, :mod:`.methods` (one seed:
every method), :mod:`.theory` (what the theorems predict), :mod:`.selection`, :mod:`.report` (tables), :mod:`.plots` (figures) and
:mod:`.run`; their public names are importable from here.
"""


from __future__ import annotations

import logging

from .config import RENAMED, Config
from .methods import run_one, sweep
from .metrics import Evaluator, Metrics, with_density
from .plots import cost_figure, figure, theory_figure
from .report import BASELINES, METRIC_NAMES, THEORY_NAMES, comparisons, summarize, sweep_table, table, theory_table
from .run import report_only, reproduce, write_report
from .task import (BT_TEMPERATURE, GOOD, LIMITS, PREFERENCES, REF_MEANS, REF_STDS, REWARDS, SUPPORT_QUANTILE, grid,
                   on_rewards, preference_model, reference_policy, true_reward, win_rate_function)
from .selection import SCORERS, bon_name, selection_rows, select_name
from .theory import TEMPER_POWERS, strength_dial, theorems

log = logging.getLogger("pfm")

__all__ = ["BASELINES", "BT_TEMPERATURE", "Config", "Evaluator", "GOOD", "LIMITS", "METRIC_NAMES", "Metrics",
           "PREFERENCES", "REF_MEANS", "REF_STDS", "RENAMED", "REWARDS", "SCORERS", "SUPPORT_QUANTILE", "TEMPER_POWERS",
           "THEORY_NAMES", "bon_name", "comparisons", "cost_figure", "figure", "grid", "on_rewards", "preference_model", "reference_policy",
           "report_only", "reproduce", "run_one", "select_name", "selection_rows", "summarize", "sweep", "strength_dial", "sweep_table", "table", "theorems",
           "theory_figure", "theory_table", "true_reward", "win_rate_function", "with_density", "write_report"]
