"""Validation by default: the share of the pairs :meth:`pfm.PreferenceFlow.fit` holds out when it is given none,
and the one line that says what the fit kept and why.

A small data set is memorized fast: on 270 text pairs the held-out loss was lowest at step 30 and rose to the end of a
600-step run while the training loss fell to 0.0004. So unless validation pairs are given, ``fit`` holds out
``validation_fraction`` of the pairs (at most ``validation_max``), keeps the weights of the lowest held-out loss and
stops after :data:`pfm.config.DEFAULT_PATIENCE` evaluations without improvement. It does not when the data set has
fewer than :data:`pfm.config.VALIDATION_MIN_PAIRS` pairs (too few to hold any out and measure anything), is
memory-mapped (large: it is read batch by batch and a split would copy it), or when the run writes checkpoints or
runs under ``torch.distributed`` (the best weights are not part of a checkpoint, nor shared between ranks yet).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Optional

import torch

from ..config import DEFAULT_PATIENCE, DEFAULT_VALIDATION_FRACTION, VALIDATION_MIN_PAIRS, FitConfig
from ..data import PreferenceDataset
from ..errors import InvalidInputError
from ..train import History

log = logging.getLogger("pfm")


def why_not(ds: PreferenceDataset, cfg: FitConfig) -> Optional[str]:
    """Why the default validation share (``validation_fraction=None``) is not held out of ``ds`` under ``cfg``, or
    None when it is."""
    if len(ds) < VALIDATION_MIN_PAIRS:
        return f"{len(ds)} pairs, fewer than {VALIDATION_MIN_PAIRS}"
    if ds.memory_mapped:
        return "the data set is memory-mapped (pass validation pairs of your own, or validation_fraction)"
    return _run_refuses(cfg)


def _run_refuses(cfg: FitConfig) -> Optional[str]:
    if cfg.checkpoint_dir is not None:
        return "the run writes checkpoints, which do not hold the best weights yet"
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return "torch.distributed runs do not validate yet"
    return None


def hold_out(ds: PreferenceDataset, cfg: FitConfig) -> tuple[PreferenceDataset, Optional[PreferenceDataset],
                                                             FitConfig, Optional[str]]:
    """``(training pairs, held-out pairs or None, the config to train with, why none were held out)``: the
    validation share of ``ds`` (``cfg.validation_fraction``, or by default :data:`DEFAULT_VALIDATION_FRACTION`
    where :func:`why_not` allows), at most ``cfg.validation_max`` pairs drawn with ``cfg.seed``, and ``patience``
    set to :data:`DEFAULT_PATIENCE` unless given. An explicit share the run cannot take raises."""
    fraction = cfg.validation_fraction
    if fraction is None:
        reason = why_not(ds, cfg)
        if reason is not None:
            log.debug("fit: no validation share held out: %s", reason)
            return ds, None, cfg, reason
        fraction = DEFAULT_VALIDATION_FRACTION
    elif not fraction:
        return ds, None, cfg, "validation_fraction is 0"
    else:
        refused = _run_refuses(cfg)
        if refused is not None:
            raise InvalidInputError(f"validation_fraction cannot be used here: {refused}")
        if len(ds) < 2:
            raise InvalidInputError("validation_fraction needs at least 2 pairs, one to hold out and one to train on")
    n = len(ds)
    held = min(cfg.validation_max, max(1, round(n * float(fraction))), n - 1)
    if cfg.patience is None:
        cfg = dataclasses.replace(cfg, patience=DEFAULT_PATIENCE)
    return (*ds.hold_out(held, cfg.seed + 15_485_863), cfg, None)


def summary(history: History, planned: int, patience: Optional[int]) -> str:
    """One line: the weights the fit kept, the held-out loss that chose them, against the zero field's, why the run
    ended, and (from ``history.held_out``) the share held out of the data."""
    best_step, values = history.best_step, [v for _, v in history.validation]
    best = min(values) if values else math.nan
    zero = history.extras.get("validation_zero_field", [math.nan])[0]
    parts = [f"kept the weights of step {best_step} of {history.steps} (held-out loss {best:.4g}, the lowest of "
             f"{len(values)} evaluations; the zero field v = 0: {zero:.4g})"]
    if patience is not None and history.steps < planned:
        parts.append(f"stopped after {patience} evaluations without improvement")
    if best >= zero:
        parts.append("the field never beat the zero field on held-out pairs")
    last_train = history.loss[-1] if history.loss else math.nan
    if values and values[-1] > best * 1.05 and last_train < 0.5 * best:
        parts.append(f"held-out loss rose to {values[-1]:.4g} while the training loss fell to {last_train:.4g}: "
                     "the flow was memorizing its pairs")
    held = history.held_out or {}
    if held.get("from_data"):
        parts.append(f"{held['pairs']} of {held['of']} pairs held out (validation_fraction=0 trains on all)")
    return "; ".join(parts)

