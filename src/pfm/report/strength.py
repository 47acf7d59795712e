"""Choosing how far to move: the strength dial swept with the user's own judge.

One whole application of a flow is not always the best setting on a user's data. In the committed runs
(``benchmarks/strength_default.py``, ``results/strength-default.json``) a judge's score never peaked below one
application, but on the user-like 2-d ring 1.5 applications beat one by 0.136 (95% CI 0.112-0.160, 3 seeds), and
measures of closeness peaked below it (toy2d's reward-less-KL objective at 0.25-0.5, Fashion-MNIST best-worst's
distance to real images at 0.75). :func:`choose_strength` measures the judge's mean score of a sample of outputs pushed to each strength, with the
mean shift and best-of-n by the same judge beside it at their cost, and returns the curve and the best setting.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from .. import validate as V
from ..errors import InvalidInputError, InvalidTypeError

DEFAULT_STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
"""The strengths :func:`choose_strength` sweeps by default: 0 (the outputs as they are) to two applications."""


@dataclass
class StrengthCurve:
    """The judge's mean score at each strength, and the alternatives beside it.

    ``mean[i]`` and ``stderr[i]`` are the mean score and its standard error over the ``n`` sampled outputs pushed to
    ``strengths[i]``; ``evaluations[i]`` the field evaluations per output that took (the solver's steps times the
    evaluations a step, per application). ``baselines`` maps a name (``"mean shift"``, ``"best-of-k"``) to its
    ``{"mean", "stderr", "reference_calls", "judge_calls"}`` per output (the flow itself takes one reference call
    an output, the output it moves)."""

    strengths: list[float]
    mean: list[float]
    stderr: list[float]
    evaluations: list[int]
    n: int
    best: float
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """The curve and the baselines as a Markdown table."""
        rows = ["| setting | judge's mean score (± s.e.) | cost per output |", "|---|---|---|"]
        for s, m, e, k in zip(self.strengths, self.mean, self.stderr, self.evaluations):
            mark = " **(best)**" if s == self.best else ""
            rows.append(f"| strength {s:g}{mark} | {m:.4g} ± {e:.2g} | 1 reference call, {k} field evaluations |")
        for name, b in self.baselines.items():
            cost = f"{b['reference_calls']:g} reference call(s), {b['judge_calls']:g} judge call(s)"
            rows.append(f"| {name} | {b['mean']:.4g} ± {b['stderr']:.2g} | {cost} |")
        return "\n".join(rows)

    def figure(self, path: Any = None) -> Any:
        """The curve (mean ± standard error against strength) with the baselines as horizontal lines; written to
        ``path`` (atomically, by its suffix) when given. Returns the matplotlib figure. Needs matplotlib
        (``pip install 'pfm[plot]'``)."""
        from .figures import pyplot, save_figure

        plt = pyplot("StrengthCurve.figure", headless=path is not None)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.errorbar(self.strengths, self.mean, yerr=self.stderr, marker="o", capsize=3, label="PFM at strength s")
        colors = iter(["tab:orange", "tab:green", "tab:red", "tab:purple"])
        for name, b in self.baselines.items():
            ax.axhline(b["mean"], ls="--", color=next(colors, "gray"), label=name)
        ax.axvline(self.best, color="k", lw=0.8, alpha=0.4)
        ax.set_xlabel("strength (1 = one application of the flow)")
        ax.set_ylabel(f"judge's mean score (n = {self.n})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        if path is not None:
            save_figure(fig, path)
        return fig


def check_flow(flow: Any) -> None:
    """``flow`` must be a :class:`pfm.PreferenceFlow` (something with its ``check_outputs`` and ``transform``)."""
    if not (callable(getattr(flow, "transform", None)) and callable(getattr(flow, "check_outputs", None))):
        raise InvalidTypeError(f"flow must be a pfm.PreferenceFlow, got {type(flow).__name__}")


def judge_scores(score: Callable, y: Tensor, context: Optional[Tensor], what: str) -> Tensor:
    """``score(y, context)`` (``score(y)`` without contexts) as a float64 CPU tensor ``(N,)``: one finite score per
    output, or a :class:`pfm.PFMError` naming ``what`` was scored."""
    with torch.no_grad():
        got = score(y) if context is None else score(y, context)
    s = V.as_float(got if isinstance(got, Tensor) else torch.as_tensor(got), f"the judge's scores of {what}")
    if s.numel() != y.shape[0]:
        raise InvalidInputError(f"the judge must return one score per output: {y.shape[0]} outputs gave "
                                f"{V.shape_of(s)}")
    s = s.reshape(-1).double().cpu()
    V.check_finite(s, f"the judge's scores of {what}")
    return s


def judge_change(score: Callable, before: Tensor, after: Tensor, context: Optional[Tensor]) -> dict[str, float]:
    """The judge on outputs ``before`` and on what they became, ``after`` (both ``(N, *shape)``, the same
    ``context``): ``{"before", "after", "fraction_up"}``, the mean scores and the share of outputs whose score rose."""
    s0 = judge_scores(score, before, context, "the outputs")
    s1 = judge_scores(score, after, context, "the flowed outputs")
    return {"before": float(s0.mean()), "after": float(s1.mean()), "fraction_up": float((s1 > s0).double().mean())}


def _summary(s: Tensor) -> tuple[float, float]:
    n = s.numel()
    return float(s.mean()), (float(s.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.nan)


def choose_strength(
    flow: Any,
    y: Any,
    score: Callable,
    context: Any = None,
    *,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    sample: int = 1000,
    seed: int = 0,
    pairs: Any = None,
    candidates: Any = None,
    **solver: Any,
) -> StrengthCurve:
    """Sweep the strength dial with the user's judge and return the curve and the best setting.

    Args:
        flow: a :class:`pfm.PreferenceFlow` (or anything with its ``transform(y, context, strength=...)``).
        y: the reference's outputs ``(N, *output_shape)``, the kind the flow will be applied to.
        score: the judge, ``score(y, context) -> (N,)`` (``score(y)`` for an unconditional flow); higher is better.
        context: the outputs' contexts, as :meth:`pfm.PreferenceFlow.transform` takes them.
        strengths: the settings to try (:data:`DEFAULT_STRENGTHS`: 0 to 2).
        sample: at most this many rows of ``y`` (drawn with ``seed``) are scored at each strength.
        pairs: the :class:`pfm.PreferenceDataset` the flow was trained on: adds the mean shift
            ``y + mean(y+) - mean(y-)`` (no model calls) as a baseline.
        candidates: more outputs of the reference for the same rows, ``(N, k, *output_shape)``: adds best-of-2 and
            best-of-(k+1) by the judge among ``y`` and them (k+1 reference and judge calls an output).
        **solver: solver settings for :meth:`~pfm.PreferenceFlow.transform`.

    Returns:
        a :class:`StrengthCurve`; ``curve.best`` is the strength of the highest mean score (ties: the smaller).
    """
    check_flow(flow)
    if not callable(score):
        raise InvalidTypeError(f"score must be a callable judge score(y, context), got {type(score).__name__}")
    if pairs is not None and not (hasattr(pairs, "chosen") and hasattr(pairs, "rejected")):
        raise InvalidTypeError(f"pairs must be a pfm.PreferenceDataset, got {type(pairs).__name__}")
    V.check_positive_int(sample, "sample")
    V.check_int(seed, "seed", low=0)
    if isinstance(strengths, (str, bytes)) or not hasattr(strengths, "__iter__"):
        raise InvalidTypeError(f"strengths must be a sequence of numbers, got {type(strengths).__name__}")
    strengths = [float(s) if not isinstance(s, bool) else math.nan for s in strengths]
    if not strengths or any(not (math.isfinite(s) and s >= 0) for s in strengths):
        raise InvalidInputError(f"strengths must be numbers >= 0, at least one; got {strengths}")
    strengths = sorted(set(strengths))
    y_t = flow.check_outputs(y)
    n_all = y_t.shape[0]
    c_all = None
    if context is not None:
        c_all = flow._prepare_context(context, n_all)
    index = torch.randperm(n_all, generator=torch.Generator().manual_seed(seed))[:sample].sort().values
    ys = y_t[index]
    cs = None if c_all is None else c_all[index.to(c_all.device)]
    rows = [0]  # rows the field evaluated: divided by the outputs, its evaluations per output, whatever the batching
    hook = flow.field.register_forward_hook(lambda _m, args, _o: rows.__setitem__(0, rows[0] + args[1].shape[0]))
    means, errs, evals = [], [], []
    try:
        for s in strengths:
            rows[0] = 0
            out = flow.transform(ys, cs, strength=s, **solver)
            m, e = _summary(judge_scores(score, out, cs, f"the outputs at strength {s:g}"))
            means.append(m)
            errs.append(e)
            evals.append(rows[0] // ys.shape[0])
    finally:
        hook.remove()
    best = strengths[max(range(len(strengths)), key=lambda i: (means[i], -strengths[i]))]
    curve = StrengthCurve(strengths, means, errs, evals, int(ys.shape[0]), best)
    if pairs is not None:
        shift = (pairs.chosen[:].double().mean(0) - pairs.rejected[:].double().mean(0)).to(ys.dtype)
        if tuple(shift.shape) != tuple(ys.shape[1:]):
            raise InvalidInputError(f"pairs hold outputs {tuple(shift.shape)}, the flow's are {tuple(ys.shape[1:])}")
        m, e = _summary(judge_scores(score, ys + shift.to(ys.device), cs, "the mean-shifted outputs"))
        curve.baselines["mean shift"] = {"mean": m, "stderr": e, "reference_calls": 1.0, "judge_calls": 0.0}
    if candidates is not None:
        cand = V.as_float(candidates, "candidates")
        if cand.dim() != y_t.dim() + 1 or cand.shape[0] != n_all or tuple(cand.shape[2:]) != tuple(y_t.shape[1:]):
            raise InvalidInputError(f"candidates must be (N, k, *output_shape) = ({n_all}, k, "
                                    f"{', '.join(map(str, y_t.shape[1:]))}), got {V.shape_of(cand)}")
        pool = torch.cat([ys[:, None], cand[index].to(ys.device, ys.dtype)], 1)  # (n, k+1, *shape)
        k1 = pool.shape[1]
        flat_c = None if cs is None else cs.repeat_interleave(k1, 0)
        all_scores = judge_scores(score, pool.flatten(0, 1), flat_c, "the candidates").view(-1, k1)
        for k in sorted({2, k1}) if k1 >= 2 else []:
            m, e = _summary(all_scores[:, :k].max(1).values)
            curve.baselines[f"best-of-{k}"] = {"mean": m, "stderr": e, "reference_calls": float(k),
                                               "judge_calls": float(k)}
    return curve
