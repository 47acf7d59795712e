"""What a flow does to a user's own outputs: a before/after summary, a table, a figure.

:func:`flow_report` pushes outputs through a flow and measures what moved: how far (against the outputs' own
spread), how many left the range the outputs span, and, with a judge, the mean score before and after and the share
that rose. :meth:`FlowReport.save` writes ``report.json``, ``report.md`` and ``report.png`` (image grids for
image-shaped outputs, a 2D projection otherwise); ``pfm report FLOW DATA --out DIR`` does it from files.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from .. import validate as V
from ..errors import InvalidTypeError, MissingDependencyError


@dataclass
class FlowReport:
    """What a flow did to ``n`` outputs.

    ``moved``: the mean L2 distance between an output and its flowed version; ``moved_relative``: that over the
    outputs' own spread (the root mean squared distance to their mean). ``out_of_range``: the share of flowed
    outputs with a coordinate outside the per-coordinate [min, max] of the outputs given. ``judge``: with a judge,
    ``{"before", "after", "fraction_up"}`` (mean scores, share of outputs whose score rose). ``training``: what the
    flow's ``history.json`` says (:func:`pfm.cli.commands.training_summary`), when it was loaded from a directory."""

    n: int
    strength: float
    output_shape: tuple[int, ...]
    moved: float
    moved_relative: float
    out_of_range: float
    judge: Optional[dict[str, float]] = None
    training: dict[str, Any] = field(default_factory=dict)
    texts: Optional[list[dict[str, Any]]] = None
    """For text rows (``pfm report FLOW rows.jsonl``): each row's ``text`` and its ``improved`` text, with how it
    was made and its cosine to the flowed vector (as ``pfm apply`` writes them); the outputs are the codec's
    vectors."""
    before: Optional[Tensor] = field(default=None, repr=False)
    after: Optional[Tensor] = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("before")
        d.pop("after")
        d["output_shape"] = list(self.output_shape)
        return d

    def table(self) -> str:
        """The summary as a Markdown table."""
        rows = ["| | |", "|---|---|", f"| outputs | {self.n}, shape {self.output_shape} |",
                f"| strength | {self.strength:g} |",
                f"| moved (mean L2) | {self.moved:.4g} ({self.moved_relative:.2f} x the outputs' spread) |",
                f"| out of the outputs' range after | {self.out_of_range:.1%} |"]
        if self.judge is not None:
            j = self.judge
            rows.append(f"| judge's mean score | {j['before']:.4g} -> {j['after']:.4g} ({j['fraction_up']:.0%} rose) |")
        t = self.training.get("training") if isinstance(self.training.get("training"), dict) else None
        if t:
            rows.append(f"| trained on | {t.get('pairs')} pairs, {t.get('steps')} steps, final loss "
                        f"{_fmt(t.get('final_loss'))}; held-out loss {_fmt(t.get('held_out_loss'))} (zero field "
                        f"{_fmt(t.get('zero_field'))}), kept step {t.get('best_step')} |")
        if self.texts:
            shown = self.texts[:TEXTS_SHOWN]
            mean = sum(r["improved_cosine"] for r in self.texts) / len(self.texts)
            rows += ["", f"Texts, before and after ({len(shown)} of {len(self.texts)}; mean cosine of the returned "
                     f"text to its flowed vector {mean:.3f}):", "", "| text | improved | by | cosine |",
                     "|---|---|---|---|"]
            rows += [f"| {_cell(r['text'])} | {_cell(r['improved'])} | {r['improved_by']} | "
                     f"{r['improved_cosine']:.3f} |" for r in shown]
        return "\n".join(rows)

    def figure(self, path: Any = None, count: int = 8) -> Any:
        """Before and after: for image-shaped outputs ``(C, H, W)`` (C 1 or 3) or ``(H, W)``, the first ``count`` as
        two rows of a grid; otherwise up to 2,000 of them projected on the inputs' first two principal axes, with a
        line from each of the first 100 to where it moved. Written to ``path`` (atomically, by suffix) when given;
        returns the figure. Needs matplotlib (``pip install 'pfm[plot]'``)."""
        if self.before is None or self.after is None:
            raise InvalidTypeError("this report holds no outputs to draw (made with keep=False)")
        from .figures import pyplot, save_figure

        plt = pyplot("FlowReport.figure", headless=path is not None)
        b, a = self.before.double().cpu(), self.after.double().cpu()
        shape = self.output_shape
        image = len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3))
        if image:
            k = min(count, self.n)
            fig, axes = plt.subplots(2, k, figsize=(1.3 * k, 2.8), squeeze=False)
            lo, hi = float(b.min()), float(b.max())
            for i in range(k):
                for row, src, label in ((0, b, "before"), (1, a, "after")):
                    img = src[i].numpy()
                    if img.ndim == 3:
                        img = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
                    ax = axes[row][i]
                    ax.imshow(np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1), cmap="gray")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if i == 0:
                        ax.set_ylabel(label)
        else:
            flat_b, flat_a = b.reshape(self.n, -1), a.reshape(self.n, -1)
            mean = flat_b.mean(0)
            if flat_b.shape[1] >= 2:
                _, _, vt = torch.linalg.svd(flat_b - mean, full_matrices=False)
                axes2 = vt[:2].T
            else:
                axes2 = torch.tensor([[1.0, 0.0]], dtype=flat_b.dtype)
            pb, pa = (flat_b - mean) @ axes2, (flat_a - mean) @ axes2
            m = min(2000, self.n)
            fig, ax = plt.subplots(figsize=(5, 5))
            ax.scatter(pb[:m, 0], pb[:m, 1], s=4, alpha=0.5, label="before")
            ax.scatter(pa[:m, 0], pa[:m, 1], s=4, alpha=0.5, label="after")
            for i in range(min(100, m)):
                ax.plot([pb[i, 0], pa[i, 0]], [pb[i, 1], pa[i, 1]], lw=0.4, color="gray", alpha=0.5)
            ax.set_xlabel("first principal axis of the outputs" if flat_b.shape[1] > 2 else "y[0]")
            ax.set_ylabel("second principal axis" if flat_b.shape[1] > 2 else "y[1]")
            ax.legend()
        fig.tight_layout()
        if path is not None:
            save_figure(fig, path)
        return fig

    def save(self, directory: Any) -> Path:
        """Write ``report.json``, ``report.md`` and ``report.png`` (when matplotlib is installed) into ``directory``
        (created; each file replaced atomically)."""
        from ..io import atomic_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with atomic_file(d / "report.json", "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        with atomic_file(d / "report.md", "w") as f:
            f.write(self.table() + "\n")
        try:
            self.figure(d / "report.png")
        except MissingDependencyError:
            pass
        return d


TEXTS_SHOWN = 20
"""Text rows a report's Markdown shows before and after (``report.json`` holds all of them)."""


def _cell(text: str) -> str:
    """A text as one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def flow_report(flow: Any, y: Any, context: Any = None, *, judge: Optional[Callable] = None, strength: float = 1.0,
                keep: bool = True, **solver: Any) -> FlowReport:
    """Push ``y`` ``(N, *output_shape)`` through ``flow`` (to ``strength``) and measure what moved.

    Args:
        flow: a :class:`pfm.PreferenceFlow`.
        y: the outputs, e.g. fresh ones of the reference model.
        context: their contexts, as :meth:`pfm.PreferenceFlow.transform` takes them.
        judge: optional ``score(y, context) -> (N,)`` (``score(y)`` for an unconditional flow), higher is better.
        strength: how far to move (1: one application).
        keep: keep the outputs before and after in the report, for :meth:`FlowReport.figure`.
        **solver: solver settings for the transform.
    """
    from .strength import check_flow

    check_flow(flow)
    y_t = flow.check_outputs(y)
    V.check_nonneg_float(strength, "strength")
    if judge is not None and not callable(judge):
        raise InvalidTypeError(f"judge must be a callable score(y, context), got {type(judge).__name__}")
    c = None if context is None else flow._prepare_context(context, y_t.shape[0])
    after = flow.transform(y_t, c, strength=strength, **solver)
    b, a = y_t.double(), after.double()
    n = b.shape[0]
    moved = float((a - b).reshape(n, -1).norm(dim=1).mean())
    spread = float((b - b.mean(0)).reshape(n, -1).pow(2).sum(1).mean().sqrt())
    lo, hi = b.min(0).values, b.max(0).values
    outside = ((a < lo) | (a > hi)).reshape(n, -1).any(1)
    report = FlowReport(n=n, strength=float(strength), output_shape=tuple(flow.output_shape), moved=moved,
                        moved_relative=moved / spread if spread > 0 else math.inf,
                        out_of_range=float(outside.double().mean()),
                        before=y_t.detach() if keep else None, after=after.detach() if keep else None)
    if judge is not None:
        from .strength import judge_change

        report.judge = judge_change(judge, y_t, after, c)
    return report
