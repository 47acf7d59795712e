"""Fitting a :class:`pfm.PreferenceFlow`: conditional flow matching from the rejected to the preferred outputs,
through the training loop :func:`pfm.optimize`. :meth:`pfm.PreferenceFlow.fit` is the way in; its settings are a
:class:`pfm.FitConfig`. The flow comes in as an argument (an ``nn.Module``): this module never imports its class, which
imports this one."""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from .. import validate as V
from ..config import FitConfig, check_solver
from ..coupling import couple
from ..data import PreferenceDataset
from ..errors import InvalidInputError
from ..pairing import PairingPlan
from ..path import flow_matching_loss
from ..train import History, optimize
from .validation import hold_out, summary

log = logging.getLogger("pfm")


class Rows:
    """The normalized rows of a data set, on the flow's device, read by index.

    In memory: normalized once, kept on the device whole and indexed. Memory-mapped: read from disk batch by batch,
    never copied whole."""

    def __init__(self, flow: nn.Module, ds: PreferenceDataset) -> None:
        self.flow, self.ds = flow, ds
        self.device = flow.device
        self.dtype = next(flow.field.parameters()).dtype
        floating = ds.context is not None and ds.context.is_floating_point()
        self.cdtype = self.dtype if floating else torch.int64
        self.whole: Optional[tuple[Tensor, Tensor, Optional[Tensor]]] = None
        if not ds.memory_mapped:
            y0, c = self._read_rejected(None)
            y1 = self._read_chosen(None)
            if not bool(torch.isfinite(y0).all() and torch.isfinite(y1).all()):
                raise InvalidInputError("normalizing the outputs overflowed; rescale them (their spread is too large "
                                        f"for {str(self.dtype).replace('torch.', '')})")
            self.whole = (y0, y1, c)

    def _read(self, t: Tensor, index: Optional[Tensor], kind: torch.dtype) -> Tensor:
        return t[slice(None) if index is None else index.cpu()].to(self.device, kind)

    def _read_rejected(self, index: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        ds, flow = self.ds, self.flow
        c = None if ds.context is None else flow._norm_c(self._read(ds.context, index, self.cdtype))
        return flow._norm_y(self._read(ds.rejected, index, self.dtype)), c

    def _read_chosen(self, index: Optional[Tensor]) -> Tensor:
        return self.flow._norm_y(self._read(self.ds.chosen, index, self.dtype))

    def rejected(self, index: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """Normalized rejected outputs and contexts of rows ``index``."""
        if self.whole is None:
            return self._read_rejected(index)
        y0, _, c = self.whole
        index = index.to(y0.device)
        return y0[index], None if c is None else c[index]

    def chosen(self, index: Tensor) -> Tensor:
        """Normalized preferred outputs of rows ``index``."""
        if self.whole is None:
            return self._read_chosen(index)
        y1 = self.whole[1]
        return y1[index.to(y1.device)]

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """Normalized rejected, preferred and context rows ``index``."""
        y0, c = self.rejected(index)
        return y0, self.chosen(index), c


def fit_flow(flow: nn.Module, dataset: Any, cfg: FitConfig,
             validation: Optional[PreferenceDataset] = None) -> History:
    """Train ``flow``'s field on ``dataset`` with the settings ``cfg``; see :meth:`pfm.PreferenceFlow.fit`."""
    ds = flow._check_dataset(dataset)
    check_solver(flow.solver, "flow.solver")  # saved with the flow and used by every transform: check it now
    if cfg.device is not None:
        flow.to(V.check_device(cfg.device))
    total, from_data, no_share = len(ds), validation is None, None
    if from_data:
        ds, validation, cfg, no_share = hold_out(ds, cfg)
    if cfg.normalize:
        flow._set_normalization(ds)
    for name, raw in (("chosen", ds.chosen), ("rejected", ds.rejected)):
        flow._check_range(raw, name, "; rescale the outputs or train a float64 flow (flow.double())")
    if cfg.source == "reference":
        ds = reference_source(ds)
    rows = Rows(flow, ds)
    flow._check_field(*rows.rejected(torch.zeros(1, dtype=torch.int64)))
    sigma = float(cfg.sigma) if cfg.normalize else float(cfg.sigma) / float(flow.y_scale)
    couple_kwargs = {"within_context": cfg.within_context, "context_weight": cfg.context_weight}
    batch_kwargs = {**couple_kwargs, "block": cfg.coupling_block}  # the held-out pairs are coupled whole, in chunks
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    plan = None
    if cfg.coupling in ("ot", "sinkhorn") and not distributed:
        plan = PairingPlan(rows.batch, len(ds), cfg.batch_size, method=cfg.coupling,
                           recouple_every=cfg.recouple_every, seed=cfg.seed, **batch_kwargs)

    def loss_fn(index: Tensor, gen: torch.Generator, model: nn.Module) -> Tensor:
        if plan is not None:  # the partners were solved ahead, in the plan's thread
            y0, c = rows.rejected(index)
            return flow_matching_loss(model, y0, rows.chosen(plan.partners(index)), c, sigma, gen)
        y0, y1, c = rows.batch(index)
        i0, i1 = couple(y0, y1, c, cfg.coupling, generator=gen, **batch_kwargs)
        return flow_matching_loss(model, y0[i0], y1[i1], None if c is None else c[i0], sigma, gen)

    evaluate = zero_field = None
    if validation is not None:
        held_out = flow._check_dataset(validation)
        if cfg.source == "reference":
            held_out = reference_source(held_out)
        evaluate, zero_field = heldout_loss(flow, held_out, cfg.coupling, sigma, rows.dtype, couple_kwargs,
                                            cfg.seed)
    elif cfg.validate_every is not None or cfg.patience is not None:
        raise InvalidInputError("validate_every and patience need validation (held-out pairs)"
                                + (f"; none were held out: {no_share}" if no_share else ""))
    fingerprint = None
    if cfg.checkpoint_dir is not None:
        fingerprint = {"data": ds.digest(), "coupling": cfg.coupling, "sigma": sigma, "normalize": cfg.normalize,
                       "within_context": cfg.within_context, "context_weight": float(cfg.context_weight),
                       "grad_clip": cfg.grad_clip, "flow": json.dumps(flow.config()["field"], sort_keys=True),
                       "recouple_every": cfg.recouple_every if plan is not None else None,
                       "precision": cfg.precision, **({"source": cfg.source} if cfg.source != "rejected" else {}),
                       **({"coupling_block": cfg.coupling_block} if cfg.coupling_block is not None else {})}
    try:
        history = optimize(flow.field, loss_fn, len(ds), cfg, device=flow.device, desc="fitting flow",
                           fingerprint=fingerprint, order=None if plan is None else plan.order, evaluate=evaluate,
                           invariant_loss=True)  # the field and a squared error: the tuner may pick the threads
    finally:
        if plan is not None:
            plan.close()
    history.pairs = len(ds)
    if plan is not None:
        history.pairing = {**{k: round(v, 4) if isinstance(v, float) else v for k, v in plan.stats.items()},
                           "workers": plan.workers}
        pairing_note(history, cfg)
    if zero_field is not None:
        _compare_with_zero_field(history, zero_field)
        history.held_out = {"pairs": len(held_out), "of": total, "from_data": from_data}
        history.summary = summary(history, cfg.total_steps(len(ds)), cfg.patience)
        log.info("fit: %s", history.summary)
    return history


PAIRING_SHARE = 0.3
"""The share of a fit's time that its steps spend pairing (solving batches themselves, or waiting for the pairing
threads) above which :func:`pairing_note` warns. Exact OT of a 256-row batch takes 5.8 ms on one thread, a 2 x 64
MLP's step 1.5 ms: in a run that sees each pair once or twice the steps then pair 60% of the time
(``benchmarks/data_scaling.py``: 2.45x the bare step), while sub-blocks of 128 rows gave 1.23x and the same flow."""

PAIRING_NOTE_SECONDS = 5.0
"""The least pairing time (s) :func:`pairing_note` warns about: a fit of seconds is not worth a warning."""


def pairing_note(history: History, cfg: FitConfig) -> None:
    """Say how much of the fit went to pairing (debug log), and warn when it was over :data:`PAIRING_SHARE` of the
    fit (and at least :data:`PAIRING_NOTE_SECONDS`) with exact OT of whole batches, naming the option that makes it
    cheaper."""
    stats = history.pairing or {}
    spent = float(stats.get("solve_s", 0.0)) + float(stats.get("wait_s", 0.0))
    share = spent / history.seconds if history.seconds > 0 else 0.0
    log.debug("fit: pairing %.1f of %.1f s (%.0f%%): %s", spent, history.seconds, 100 * share, stats)
    if share > PAIRING_SHARE and spent >= PAIRING_NOTE_SECONDS and cfg.coupling == "ot" and cfg.coupling_block is None:
        block = 128 if cfg.batch_size > 128 else max(1, cfg.batch_size // 2)
        log.warning("pairing took %.0f%% of the fit (%.1f of %.1f s: the steps solved exact OT of %d batches "
                    "themselves and waited %.1f s for %d pairing thread%s): each step saw new pairs, as in a run "
                    "over each pair once or twice; coupling_block=%d (--coupling-block %d) couples each batch in "
                    "sub-blocks of %d rows, several times cheaper, with the same flow on the benchmark of "
                    "docs/performance.md (Data size and pairing at scale)", 100 * share, spent, history.seconds,
                    int(stats.get("blocks", 0)), float(stats.get("wait_s", 0.0)), int(stats.get("workers", 0)),
                    "" if stats.get("workers") == 1 else "s", block, block, block)


def reference_source(ds: PreferenceDataset) -> PreferenceDataset:
    """The pairs of the ``source="reference"`` variant: the reference's samples (every y- and every y+, each with
    its context) as the start, ``(2N, *shape)``, and the preferred outputs as the end (each y+ twice, so the end
    marginal is still the preferred one). The coupling then pairs starts and ends as it pairs y- and y+."""
    chosen, rejected = ds.chosen[:], ds.rejected[:]
    context = None if ds.context is None else torch.cat([ds.context[:], ds.context[:]])
    return PreferenceDataset(torch.cat([chosen, chosen]), torch.cat([rejected, chosen]), context)


def _compare_with_zero_field(history: History, zero_field: float) -> None:
    history.extras["validation_zero_field"] = [zero_field]
    best = min((v for _, v in history.validation), default=math.inf)
    if best >= zero_field:
        # not "it learned nothing": this loss is mostly the pairs' individual moves, and a direction they share can
        # still carry over (the text experiment's flows never beat the zero field and move held-out outputs the
        # preferred way: docs/experiments/text.md, pair_signal)
        log.warning("the flow's best held-out loss (%.4g) is not below the zero field's (%.4g): it predicts the "
                    "held-out pairs' individual moves no better than v = 0; check what it does to held-out outputs "
                    "(a direction the pairs share can still carry over) before relying on it", best, zero_field)


def heldout_loss(flow: nn.Module, ds: PreferenceDataset, coupling: str, sigma: float, dtype: torch.dtype,
                 couple_kwargs: dict[str, Any], seed: int, repeats: int = 4,
                 chunk: int = 4096) -> tuple[Callable[[nn.Module], float], float]:
    """``(evaluate(model) -> float, zero-field loss)``: the flow-matching loss on held-out pairs, normalized
    like the training data, coupled once (in chunks of ``chunk`` rows), with fixed times and noise."""
    device = flow.device
    y0 = flow._norm_y(ds.rejected[:].to(device, dtype))
    y1 = flow._norm_y(ds.chosen[:].to(device, dtype))
    c = None
    if ds.context is not None:
        c = flow._norm_c(ds.context[:].to(device, dtype if ds.context.is_floating_point() else torch.int64))
    gen = torch.Generator(device=device).manual_seed(seed + 104_729)
    parts = []
    for s in range(0, len(ds), chunk):
        a, b = y0[s:s + chunk], y1[s:s + chunk]
        cc = None if c is None else c[s:s + chunk]
        i0, i1 = couple(a, b, cc, coupling, generator=gen, **couple_kwargs)
        parts.append((a[i0], b[i1], None if cc is None else cc[i0]))
    state = gen.get_state()

    def evaluate(model: nn.Module) -> float:
        g = torch.Generator(device=device)
        g.set_state(state)  # the same times and noise at every evaluation
        total = 0.0
        for _ in range(repeats):
            for a, b, cc in parts:
                total += float(flow_matching_loss(model, a, b, cc, sigma, g)) * a.shape[0]
        return total / (repeats * len(ds))

    zero = evaluate(lambda t, y, cc: torch.zeros_like(y))  # type: ignore[arg-type]
    return evaluate, zero
