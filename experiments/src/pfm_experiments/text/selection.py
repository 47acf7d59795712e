"""Choosing among n continuations of pi_ref, beside the alignment methods: best-of-n by RLHF's reward model
(learned from the same pairs' embeddings) or by the annotator itself (the oracle: what labelled the pairs, which PFM
never queries; an upper bound), and PFM-select (:func:`pfm.pfm_select`: push the first candidate's embedding
through the flow and keep the candidate whose own embedding is nearest the flowed point, by cosine): real sentences
of pi_ref, no decoder. Each row has its inference cost per output (:mod:`pfm_experiments.cost`), and
:func:`output_costs` gives the other rows theirs.

Shapes: ``B`` prompts; the candidates are ``B`` lists of ``n`` texts, their embeddings ``(B, n, D)``; the prompts'
embeddings ``c`` are ``(B, D)``. Every n uses the first n of the same ``max(ns)`` candidates of each prompt, so
the rows at every n, and all scorers at one n, are paired.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from pfm import best_of_n, pfm_select
from ..cost import Cost, bon_name, select_name, timed
from ..rows import SOURCE_REFERENCE, UNCONDITIONAL

Scorer = Callable[[list[str], Tensor, Tensor], Tensor]
"""``score(texts (M,), their embeddings (M, D), the prompts' embeddings (M, D)) -> (M,)``."""


def draw_candidates(generate: Callable[[list[str], int], list[str]], prompts: Sequence[str], n: int,
                    seed: int) -> list[list[str]]:
    """``n`` continuations of every prompt: ``generate(prompts, seed) -> texts``, called once on each prompt
    repeated ``n`` times; returns ``B`` lists of ``n`` texts."""
    flat = generate([p for p in prompts for _ in range(n)], seed)
    return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]


@torch.no_grad()
def selection_rows(generate: Callable[[list[str], int], list[str]], encode: Callable[[list[str]], Tensor],
                   prompts: Sequence[str], c: Tensor, scorers: dict[str, Scorer], flow: Any,
                   ns: Sequence[int], seed: int) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """Best-of-n for every scorer and PFM-select with ``flow``, for every n of ``ns``, on ``prompts`` (B) whose
    embeddings are ``c (B, D)``. ``generate(prompts, seed)`` samples pi_ref; ``encode(texts) -> (M, D)`` embeds.

    A row's wall time per output is n times the measured time of drawing and embedding one candidate (the
    ``max(ns)`` candidates of every prompt are drawn at once) plus its own measured time of scoring or solving.
    Returns ``(rows, texts)``: ``{name: {"n", "scorer" (best-of-n), "mean_cosine" (PFM-select), "cost"}}`` and
    each row's ``B`` texts."""
    b, n_max = len(prompts), max(ns)
    with timed(b * n_max) as clock:
        cands = draw_candidates(generate, prompts, n_max, seed)
        z = encode([t for row in cands for t in row]).reshape(b, n_max, -1)
    per_candidate = clock.per_output or 0.0
    rows: dict[str, dict[str, Any]] = {}
    texts: dict[str, list[str]] = {}
    for n in sorted(ns):
        sub, flat = z[:, :n], [t for row in cands for t in row[:n]]
        for name, score in scorers.items():
            with timed(b) as t:
                s = score(flat, sub.reshape(b * n, -1), c.repeat_interleave(n, 0)).reshape(b, n)
                index = best_of_n(sub, s)[1]
            label = bon_name(n, name)
            texts[label] = [cands[i][j] for i, j in enumerate(index.tolist())]
            rows[label] = {"n": n, "scorer": name,
                           "cost": Cost(n, 0, 0, n * per_candidate + (t.per_output or 0.0)).as_dict()}
        with timed(b) as t:
            _, index, cosine = pfm_select(flow, sub, c, metric="cosine")
        label = select_name(n)
        texts[label] = [cands[i][j] for i, j in enumerate(index.tolist())]
        rows[label] = {"n": n, "mean_cosine": float(cosine.mean()),
                       "cost": Cost(n, 1, 0, n * per_candidate + (t.per_output or 0.0)).as_dict()}
    return rows, texts


def output_costs(clock: dict[str, float], b: int, k: int, candidates: int, reference_source: bool = False,
                 unconditional: bool = False) -> dict[str, dict[str, Any]]:
    """The inference cost per output (:class:`pfm_experiments.cost.Cost`) of the table's rows, from the wall times
    of the steps that made their ``b`` outputs (``clock``): the reference one sample; through the codec, plus the
    encoding and ``candidates`` decoder samples (each re-encoded); PFM (x k) plus the prompts' encoding and 1 (k)
    solves; RLHF's rows the same on the fine-tuned policy's sample; with ``reference_source``, the
    ``source="reference"`` flow's row (:data:`SOURCE_REFERENCE`) as PFM's; with ``unconditional``, the flow
    without the prompt (:data:`UNCONDITIONAL` and its x k row) as PFM's, less the prompts' encoding."""
    costs: dict[str, dict[str, Any]] = {}
    for base, calls in (("reference", {"reference_calls": 1}), ("RLHF", {"policy_calls": 1})):
        costs[base] = Cost(**calls, seconds_per_output=clock[base] / b).as_dict()
        coded = clock[base] + clock[f"encode {base}"]
        codec_name = f"{base} (codec)"
        costs[codec_name] = Cost(**calls, decoder_calls=candidates,
                                 seconds_per_output=(coded + clock[f"decode {codec_name}"]) / b).as_dict()
        for solves, suffix in ((1, ""), (k, f" x {k}")):
            name = ("PFM" if base == "reference" else "RLHF + PFM") + suffix
            seconds = coded + clock["encode prompts"] + clock[name] + clock[f"decode {name}"]
            costs[name] = Cost(**calls, solves=solves, decoder_calls=candidates,
                               seconds_per_output=seconds / b).as_dict()
    if reference_source:
        seconds = (clock["reference"] + clock["encode reference"] + clock["encode prompts"] + clock[SOURCE_REFERENCE]
                   + clock[f"decode {SOURCE_REFERENCE}"])
        costs[SOURCE_REFERENCE] = Cost(reference_calls=1, solves=1, decoder_calls=candidates,
                                       seconds_per_output=seconds / b).as_dict()
    if unconditional:
        for solves, name in ((1, UNCONDITIONAL), (k, f"{UNCONDITIONAL} x {k}")):
            seconds = clock["reference"] + clock["encode reference"] + clock[name] + clock[f"decode {name}"]
            costs[name] = Cost(reference_calls=1, solves=solves, decoder_calls=candidates,
                               seconds_per_output=seconds / b).as_dict()
    return costs
