"""Text in, text out: move texts with a flow trained on their embeddings (``pfm fit pairs.jsonl --codec ...``) and
return text, written by the codec's decoder or chosen as the nearest of the row's candidates
(:func:`pfm.selection.nearest_candidate`, cosine). ``pfm apply FLOW texts.jsonl --out improved.jsonl`` runs
:func:`improve_texts`; the rows are those of :mod:`pfm.text.rows`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from .. import validate as V
from ..errors import InvalidInputError
from .rows import TextRow

MODES = ("auto", "decoder", "candidates")
"""How text comes back: ``decoder`` (the codec writes it), ``candidates`` (the nearest of the row's), ``auto``
(the candidates where a row has them, else the decoder)."""


def plan(rows: Sequence[TextRow], mode: str, can_decode: bool, codec_name: str = "the codec") -> list[str]:
    """How each row's text comes back, ``"decoder"`` or ``"candidate"``, checked before any work: a row that needs
    candidates without them, or the decoder of a codec without one, raises naming the row and the fix."""
    V.check_choice(mode, "mode", MODES)
    if not rows:
        raise InvalidInputError("rows is empty")
    ways = []
    for i, r in enumerate(rows, 1):
        if mode == "candidates" and r.candidates is None:
            raise InvalidInputError(f"row {i} has no 'candidates', which --mode candidates needs in every row")
        ways.append("candidate" if mode == "candidates" or (mode == "auto" and r.candidates) else "decoder")
    if "decoder" in ways and not can_decode:
        i = ways.index("decoder") + 1
        why = "--mode decoder was asked for" if mode == "decoder" else "it has no 'candidates'"
        raise InvalidInputError(f"row {i} needs the decoder ({why}), but {codec_name} has no decoder: give every "
                                "row 'candidates', or train one with 'pfm train-decoder CORPUS --codec SPEC --out "
                                "DIR' and pass --codec DIR")
    return ways


def move(flow: Any, z: Tensor, context: Optional[Tensor], iterations: int = 1, strength: Optional[float] = None,
         **solver: Any) -> Tensor:
    """``z (N, d)`` through ``flow``: ``iterations`` applications, or to ``strength`` (see
    :meth:`pfm.PreferenceFlow.transform`); ``context`` is ``(N, d_c)`` or None. Returns ``(N, d)``."""
    if strength is not None:
        if iterations != 1:
            raise InvalidInputError("give iterations or strength, not both")
        return flow.transform(z, context, strength=strength, **solver)
    return flow.iterate(z, context, iterations=iterations, **solver)


def improve_texts(flow: Any, codec: Any, rows: Sequence[TextRow], *, mode: str = "auto", iterations: int = 1,
                  strength: Optional[float] = None, decode_samples: int = 1, seed: int = 0, batch_size: int = 64,
                  progress: bool = False, **solver: Any) -> list[dict[str, Any]]:
    """Move each row's text with ``flow`` and return text: one dict per row, in order, holding the row's own fields
    and ``improved`` (the text), ``improved_by`` (``"decoder"`` or ``"candidate"``), ``improved_cosine`` (between
    the flowed vector and the returned text's embedding) and, for candidates, ``improved_index``.

    Args:
        flow: a :class:`pfm.PreferenceFlow` on the codec's vectors ``(N, d)``; conditional on the prompts'
            vectors ``(N, d)`` if it was trained with prompts (then every row needs one).
        codec: a :class:`pfm.text.codec.TextCodec` (the one the flow was trained with, or one of the same encoder).
        mode: see :data:`MODES`.
        iterations, strength: how far to move (:func:`move`); solver settings go to the flow's ``transform``.
        decode_samples: the decoder writes the greedy text and ``decode_samples - 1`` samples and keeps the one
            whose embedding is nearest the flowed vector (see :meth:`TextCodec.decode`).
    """
    V.check_positive_int(iterations, "iterations")
    rows, ways = check_rows(flow, codec, rows, mode, decode_samples)
    conditional = flow.context_kind is not None
    z = codec.encode([r.text for r in rows], batch_size=batch_size, progress=progress)
    context = codec.encode([r.prompt for r in rows], batch_size=batch_size) if conditional else None
    with torch.no_grad():
        moved = move(flow, z, context, iterations=iterations, strength=strength, **solver)
    return texts_of(codec, rows, ways, z, moved, decode_samples=decode_samples, seed=seed, batch_size=batch_size)


def check_rows(flow: Any, codec: Any, rows: Sequence[TextRow], mode: str = "auto",
               decode_samples: int = 1) -> tuple[list[TextRow], list[str]]:
    """What :func:`improve_texts` checks before any text is encoded: the rows, ``mode`` (each row's way, as
    :func:`plan` gives it), the codec's width against the flow's and, for a conditional flow, every row's prompt.
    Returns the rows as a list and their ways."""
    rows = list(rows)
    if not all(isinstance(r, TextRow) for r in rows):
        raise InvalidInputError("rows must be TextRow objects (see pfm.text.rows.read_text_rows)")
    V.check_positive_int(decode_samples, "decode_samples")
    ways = plan(rows, mode, getattr(codec, "decoder", None) is not None, f"codec {getattr(codec, 'spec', '')!r}")
    if tuple(flow.output_shape) != (codec.dim,):
        raise InvalidInputError(f"the flow moves outputs of shape {tuple(flow.output_shape)} but the codec's "
                                f"vectors are ({codec.dim},): apply it with the codec it was trained with")
    conditional = flow.context_kind is not None
    if conditional:
        missing = next((i for i, r in enumerate(rows, 1) if r.prompt is None), None)
        if missing is not None:
            raise InvalidInputError(f"row {missing} has no 'prompt': the flow was trained with prompts as its "
                                    "contexts, so every row needs one")
    return rows, ways


def texts_of(codec: Any, rows: list[TextRow], ways: list[str], z: Tensor, moved: Tensor, *, decode_samples: int = 1,
             seed: int = 0, batch_size: int = 64) -> list[dict[str, Any]]:
    """The text of each row's flowed vector: ``z`` ``(N, d)`` the rows' vectors, ``moved`` ``(N, d)`` where the flow
    took them, ``ways`` from :func:`check_rows`. Returns :func:`improve_texts`' dicts."""
    n = len(rows)
    if len(ways) != n or tuple(z.shape) != (n, codec.dim) or tuple(moved.shape) != (n, codec.dim):
        raise InvalidInputError(f"texts_of needs a way, a vector and a flowed vector ({codec.dim},) for each of the "
                                f"{n} rows, got {len(ways)} ways, z {tuple(z.shape)} and moved {tuple(moved.shape)}")
    moved = moved.float()
    V.check_finite(moved, "the flowed vectors")
    if bool(torch.allclose(z.norm(dim=1), torch.ones(len(z)), atol=1e-3)):
        moved = torch.nn.functional.normalize(moved, dim=-1)  # back on the sphere where the encoder's vectors live
    out: list[Optional[dict[str, Any]]] = [None] * len(rows)
    dec = [i for i, w in enumerate(ways) if w == "decoder"]
    if dec:
        prompts = [rows[i].prompt if rows[i].prompt and rows[i].text.startswith(rows[i].prompt) else ""
                   for i in dec]
        texts = codec.decode(moved[dec], prompts, candidates=decode_samples, seed=seed)
        cos = torch.nn.functional.cosine_similarity(codec.encode(texts, cache=False), moved[dec], dim=-1)
        for j, i in enumerate(dec):
            out[i] = {**rows[i].fields, "improved": texts[j], "improved_by": "decoder",
                      "improved_cosine": round(float(cos[j]), 6)}
    cand = [i for i, w in enumerate(ways) if w == "candidate"]
    if cand:
        from ..selection import nearest_candidate

        flat = [c for i in cand for c in rows[i].candidates]  # type: ignore[union-attr]
        vecs = codec.encode(flat, batch_size=batch_size)
        start = 0
        for i in cand:
            n = len(rows[i].candidates)  # type: ignore[arg-type]
            _, index, cos = nearest_candidate(moved[i:i + 1], vecs[start:start + n][None], metric="cosine")
            k = int(index[0])
            out[i] = {**rows[i].fields, "improved": rows[i].candidates[k], "improved_by": "candidate",  # type: ignore
                      "improved_cosine": round(float(cos[0]), 6), "improved_index": k}
            start += n
    return [o for o in out if o is not None]
