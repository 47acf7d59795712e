"""pfm: Preference Flow Matching (Kim et al., NeurIPS 2024).

Learn a flow that carries a black-box model's rejected outputs onto its preferred ones, then push fresh outputs
through it. The public API, nothing else (the baselines live in :mod:`pfm.baselines`, policies with a density in
:mod:`pfm.policies`, the text codec in :mod:`pfm.text`, safe file writing in :mod:`pfm.io`, argument checks in
:mod:`pfm.validate`, the change of variables in :mod:`pfm.likelihood`, the theorems' quantities in
:mod:`pfm.objective`; the paper's experiments are a package of their own, ``pfm-experiments``):
"""

from ._version import __version__
from .train.threads import reproducible_blas as _reproducible_blas

_reproducible_blas()  # before any matrix product: products the same on any number of threads (pfm.train.threads)

from .compat import OptimalTransportConditionalFlowMatching
from .config import FitConfig, SolverConfig, TrainConfig
from .coupling import couple
from .data import PreferenceDataset, collect_preferences
from .errors import FileFormatError, FlowFileError, InvalidInputError, InvalidTypeError, MissingFileError, PFMError
from .fields import MLPField, UNetField
from .flow import PreferenceFlow
from .iterative import FlowChain, iterative_pfm
from .likelihood import FlowDensity, KLEstimate, kl_to_reference
from .path import flow_matching_loss, sample_path
from .runtime import data_dir, seed_everything
from .selection import best_of_n, nearest_candidate, pfm_select
from .solve import solve
from .report import FlowReport, StrengthCurve, choose_strength, flow_report
from .train import History, optimize

__all__ = [
    "__version__",
    "OptimalTransportConditionalFlowMatching",
    "PreferenceDataset",
    "PreferenceFlow",
    "FitConfig",
    "TrainConfig",
    "SolverConfig",
    "FlowChain",
    "iterative_pfm",
    "kl_to_reference",
    "FlowDensity",
    "KLEstimate",
    "MLPField",
    "UNetField",
    "History",
    "collect_preferences",
    "couple",
    "sample_path",
    "flow_matching_loss",
    "solve",
    "choose_strength",
    "StrengthCurve",
    "flow_report",
    "FlowReport",
    "best_of_n",
    "nearest_candidate",
    "pfm_select",
    "optimize",
    "seed_everything",
    "data_dir",
    "PFMError",
    "InvalidInputError",
    "InvalidTypeError",
    "FileFormatError",
    "FlowFileError",
    "MissingFileError",
]
