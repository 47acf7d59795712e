"""The paper's API, :class:`OptimalTransportConditionalFlowMatching`, for code written against the released
repository (github jadehaus/preference-flow-matching): its notebooks run with only the import changed.

- :mod:`pfm.compat.flow_matching`: the class (``fit``, ``compute_target``, ``plot_trajectories``).
- :mod:`pfm.compat.items`: the paper's data layout, and :func:`released_items`, which names the preferred slot of
  the released ``BasePreferenceDataset`` (its builders fill it as ``(x, y-, y+)``).
- :mod:`pfm.compat.shapes`: the released shapes pfm's flow does not take, made to fit.
- :mod:`pfm.compat.check`: ``fit(..., check=score)``, whether the flow moves outputs up a score.
"""

from .flow_matching import NORMS, PAPER_SOLVER, OptimalTransportConditionalFlowMatching
from .items import ReleasedItems, as_preference_dataset, is_released_dataset, released_items

__all__ = ["OptimalTransportConditionalFlowMatching", "released_items", "ReleasedItems", "is_released_dataset",
           "as_preference_dataset", "PAPER_SOLVER", "NORMS"]
