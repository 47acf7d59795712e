"""``fit(..., check=score)``: whether the flow moves held-out outputs up or down a user's score.

The order of a preference data set cannot be read from its numbers; a score can tell. The held-out pairs' outputs
(both of each pair: samples of the reference) are scored before and after the flow; a flow trained on swapped pairs
lowers the score.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Callable

import torch

from ..data import PreferenceDataset
from ..report.strength import judge_change

log = logging.getLogger("pfm")

LOWER_WARNING = (
    "the flow lowered the score of held-out outputs ({before:.4g} -> {after:.4g} on average over {n}; {up:.0%} "
    "went up): it carries outputs toward the items' second slot. If the data are the released builders' "
    "(items (x, y-, y+)), fit pfm.compat.released_items(dataset, preferred=\"source\") instead")


def score_check(fm: Any, held: PreferenceDataset, score: Callable) -> dict[str, Any]:
    """Flow the held-out pairs' outputs with ``fm.compute_target`` and score them before and after with
    ``score(y, x)``: ``{"n", "before", "after", "fraction_up"}`` (mean scores), with a warning when ``after`` is
    below ``before``."""
    y = torch.cat([held.chosen[:], held.rejected[:]]).to(fm.device, torch.float32)
    c = None
    if held.context is not None:
        c = torch.cat([held.context[:], held.context[:]]).to(fm.device)
        if c.is_floating_point():
            c = c.float()
    out = fm.compute_target(y, context=c)
    report = {"n": int(y.shape[0]), **judge_change(score, y, out, c)}
    log.info("check: held-out outputs score %.4g before the flow, %.4g after (n=%d, %.0f%% up)", report["before"],
             report["after"], report["n"], 100 * report["fraction_up"])
    if report["after"] < report["before"]:
        warnings.warn(LOWER_WARNING.format(before=report["before"], after=report["after"], n=report["n"],
                                           up=report["fraction_up"]), UserWarning, stacklevel=3)
    return report
