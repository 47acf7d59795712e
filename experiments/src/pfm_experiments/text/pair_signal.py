"""What the text experiment's preference pairs give a flow to learn, for each kind of pairs and seed.

For the ``N`` pairs a seed of ``pfm reproduce text --pairs KIND`` trains on (the same pairs, the same held-out
split, the same flows: :func:`.experiment.seed_pairs`, :func:`.experiment.split_pairs`), it measures

- **shared**: ``|mean(d)|^2 / mean(|d|^2)`` with ``d = y+ - y-`` ``(N, D)``, the share of the pairs' squared
  displacement that is one common direction (1 when every pair moves the same way; about ``1 / N`` for moves with
  no common direction);
- **gain**: the annotator's mean score of ``y+`` less that of ``y-`` (its head is linear, so this is the gain of
  the mean move), overall and, for the corpus's pairs, within each label (the sign of the sentence's mean human
  rating): the released code's pairs prefer the more extreme sentence of either label, so the two labels pull
  opposite ways;
- **flows**: for the flow with the prompt (PFM) and without it (the released code's), the best held-out
  flow-matching loss against the zero field's (``v = 0``), both as :meth:`pfm.PreferenceFlow.fit` measures them (a
  ratio at or above 1: the field predicts the held-out pairs' individual moves no better than ``v = 0``), and the
  **held-out gain**: the annotator's mean gain when the flow moves the held-out pairs' ``y-`` (whether the
  direction it learned carries over to pairs it was not trained on), by label for the corpus's pairs.

Command (after the experiment's pre-training is cached; a few minutes a seed on one core)::

    python -m pfm_experiments.text.pair_signal --out results

writes ``text-pair-signal.json`` and ``text-pair-signal.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from pfm import validate as V
from pfm.errors import InvalidInputError, PFMError
from ..rows import UNCONDITIONAL

log = logging.getLogger("pfm")


def displacement(chosen: Tensor, rejected: Tensor, score: Optional[Any] = None,
                 labels: Optional[np.ndarray] = None) -> dict[str, Any]:
    """``shared`` and ``gain`` (module docstring) of pairs ``chosen``, ``rejected`` ``(N, D)``; ``score`` maps
    ``(M, D)`` to ``(M,)`` (the annotator's head); ``labels`` ``(N,)`` (bool, True = positive) splits the gain."""
    if chosen.ndim != 2 or chosen.shape != rejected.shape or len(chosen) < 1:
        raise InvalidInputError(f"chosen and rejected must be (N, D) of one shape, got {tuple(chosen.shape)} and "
                                f"{tuple(rejected.shape)}")
    d = chosen.double() - rejected.double()
    energy = float(d.pow(2).sum(1).mean())
    out: dict[str, Any] = {"n": len(d), "shared": float(d.mean(0).pow(2).sum()) / energy if energy > 0 else 0.0}
    if score is not None:
        with torch.no_grad():
            g = (score(chosen) - score(rejected)).double().reshape(-1).numpy()
        out["gain"] = float(g.mean())
        if labels is not None:
            labels = np.asarray(labels, dtype=bool)
            if labels.shape != (len(d),):
                raise InvalidInputError(f"labels must have shape ({len(d)},), got {labels.shape}")
            for name, mask in (("positive", labels), ("negative", ~labels)):
                out[f"gain_{name}"] = float(g[mask].mean()) if mask.any() else float("nan")
                out[f"share_{name}"] = float(mask.mean())
    return out


def flow_fit(history: Any) -> dict[str, Any]:
    """The best held-out loss of a fit, the step it came at and the zero field's, from its history."""
    val = history.validation
    step, best = min(val, key=lambda sv: sv[1])
    zero = history.extras["validation_zero_field"][0]
    return {"best": float(best), "best_step": int(step), "zero_field": float(zero), "ratio": float(best) / zero}


def measure(cfg: Any, models: Any, seed: int) -> dict[str, Any]:
    """One seed of ``cfg.pairs``: :func:`displacement` of its pairs and the fits of both flows on its split."""
    from . import experiment as E

    made = E.seed_pairs(cfg, models, seed)
    labels = None
    if cfg.pairs != "samples":
        rating = dict(zip(models.train.texts, models.train.ratings))
        labels = np.array([rating[t] > 0 for t in made.chosen])
    head = getattr(models.annotator, "score_vectors", None)
    out = displacement(made.z_chosen, made.z_rejected, head, labels)
    train_idx, held_idx = E.split_pairs(cfg, len(made), seed)
    for name, conditional in (("PFM", True), (UNCONDITIONAL, False)):
        data = made.dataset(conditional=conditional)
        held = data.subset(held_idx)
        flow, hist = E._fit_flow(cfg, data.subset(train_idx), held, seed, progress=False)
        out[name] = flow_fit(hist)
        if head is not None:  # what the flow does to the held-out pairs' y-, by the annotator: y- -> flow(y-)
            y0 = held.rejected[:]
            with torch.no_grad():
                y1 = flow.transform(y0, None if held.context is None else held.context[:])
                if cfg.project:  # as the experiment's rows are
                    y1 = torch.nn.functional.normalize(y1, dim=-1)
            moved = displacement(y1, y0, head, None if labels is None else labels[held_idx.numpy()])
            out[name].update({f"heldout_{k}": v for k, v in moved.items() if k.startswith("gain")})
    return {"seed": seed, **out}


def table(result: dict[str, Any]) -> str:
    """The markdown table of :func:`main`'s result: mean ± sample std over seeds, one row per kind of pairs."""
    def cell(rows: Sequence[dict[str, Any]], get: Any, fmt: str = "{:.3f}") -> str:
        v = np.array([get(r) for r in rows], dtype=float)
        if np.isnan(v).all():
            return ""
        s = fmt.format(v.mean())
        return s + (" ± " + fmt.format(v.std(ddof=1)) if len(v) > 1 else "")

    lines = ["| pairs | seeds | shared | annotator gain | gain, positive label | gain, negative label | "
             "PFM held-out / zero field | best step | unconditional held-out / zero field | best step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    moves = ["| pairs | flow | held-out gain | positive label | negative label |", "|---|---|---|---|---|"]
    for kind, rows in result["kinds"].items():
        for name in ("PFM", UNCONDITIONAL):
            if "heldout_gain" in rows[0][name]:
                moves.append("| " + " | ".join([
                    kind, name, cell(rows, lambda r: r[name]["heldout_gain"]),
                    cell(rows, lambda r: r[name].get("heldout_gain_positive", float("nan"))),
                    cell(rows, lambda r: r[name].get("heldout_gain_negative", float("nan")))]) + " |")
    for kind, rows in result["kinds"].items():
        lines.append("| " + " | ".join([
            kind, str(len(rows)), cell(rows, lambda r: r["shared"], "{:.4f}"), cell(rows, lambda r: r["gain"]),
            cell(rows, lambda r: r.get("gain_positive", float("nan"))),
            cell(rows, lambda r: r.get("gain_negative", float("nan"))),
            cell(rows, lambda r: r["PFM"]["ratio"]), cell(rows, lambda r: r["PFM"]["best_step"], "{:.0f}"),
            cell(rows, lambda r: r[UNCONDITIONAL]["ratio"]),
            cell(rows, lambda r: r[UNCONDITIONAL]["best_step"], "{:.0f}")]) + " |")
    return "\n".join(lines) + "\n\nThe annotator's mean gain when each flow moves the held-out pairs' y-:\n\n" + \
        "\n".join(moves) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    from pfm.io import atomic_file, check_output
    from . import experiment as E
    from .pairs import PAIRS, check_pairs

    p = argparse.ArgumentParser(description="What the text experiment's preference pairs give a flow to learn "
                                "(shared direction, annotator gain by label, held-out loss against the zero field).")
    p.add_argument("--pairs", nargs="+", default=list(PAIRS), help="kinds of pairs (default: all)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 (default 3)")
    p.add_argument("--quick", action="store_true", help="the quick run's tiny models")
    p.add_argument("--out", type=Path, default=Path("results"), help="directory for text-pair-signal.json and .md")
    a = p.parse_args(argv)
    stem = a.out / ("text-pair-signal-quick" if a.quick else "text-pair-signal")
    try:  # every setting checked before the work: one line and exit 2, as the pfm command does
        for kind in a.pairs:
            check_pairs(kind)
        V.check_positive_int(a.seeds, "seeds")
        for suffix in (".json", ".md"):
            check_output(stem.with_suffix(suffix), "out", kind="file")
    except PFMError as e:
        sys.stderr.write(f"pair_signal: {e}\n")
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    result: dict[str, Any] = {"kinds": {}}
    models = None
    for kind in a.pairs:
        cfg = E.Config.quick_config() if a.quick else E.Config()
        cfg.pairs, cfg.unconditional = kind, kind != "samples"
        if models is None:  # the pre-trained models do not depend on the pairs
            models = E.pretrained(cfg, progress=False)
        result["kinds"][kind] = []
        for seed in range(a.seeds):
            t = time.perf_counter()
            row = measure(cfg, models, seed)
            row["seconds"] = time.perf_counter() - t
            log.info("%s seed %d: %s", kind, seed, json.dumps(row))
            result["kinds"][kind].append(row)
    result["seconds"] = time.perf_counter() - start
    with atomic_file(stem.with_suffix(".json"), "w") as f:
        json.dump(result, f, indent=1)
    text = table(result)
    with atomic_file(stem.with_suffix(".md"), "w") as f:
        f.write(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
