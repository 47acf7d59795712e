"""The text parts of the command line, once :mod:`pfm.cli` has parsed the options: ``pfm apply FLOW texts.jsonl``
(text in, text out, :func:`pfm.text.apply.improve_texts`) and ``pfm train-decoder`` (a codec with a decoder of
one's own corpus, :func:`pfm.text.decoder.train_decoder`).

Every path written and every setting is checked before a model is loaded or a step is taken.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ..errors import FileFormatError, InvalidInputError, MissingFileError

log = logging.getLogger("pfm")


def flow_codec_spec(flow_dir: str) -> str:
    """The spec of the codec a flow was trained with (its ``codec.json``, written by ``pfm fit --codec``); a flow
    without one raises saying what it applies to."""
    from ..io import read_json

    path = Path(flow_dir) / "codec.json"
    if not path.is_file():
        raise InvalidInputError(f"flow {flow_dir!r} was trained without a codec (it has no codec.json): it moves "
                                "vectors, given as a .npz; for text, fit a flow on text rows with --codec")
    meta = read_json(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("spec"), str) or not meta["spec"]:
        raise FileFormatError(f"{str(path)!r} does not name a codec (no 'spec')")
    return meta["spec"]


def apply_text(args: argparse.Namespace, flow: Any, solver: dict[str, Any]) -> int:
    """``pfm apply FLOW texts.jsonl --out improved.jsonl``: ``args.out`` is checked already; ``solver`` holds the
    solver settings given on the command line."""
    from ..io import atomic_file
    from ..text.apply import improve_texts, plan
    from ..text.codec import encoder_spec, load_codec
    from ..text.rows import read_text_rows

    spec = flow_codec_spec(args.flow)
    if args.codec is not None:
        if not (Path(args.codec) / "codec.json").is_file() and args.codec.lower() != "minilm" \
                and not Path(args.codec).is_dir():
            raise MissingFileError(f"--codec {args.codec!r} is neither 'minilm' nor an existing directory")
        if encoder_spec(args.codec) != encoder_spec(spec):
            raise InvalidInputError(f"--codec {args.codec!r} encodes with {encoder_spec(args.codec)!r}, but the flow "
                                    f"was trained on the vectors of {encoder_spec(spec)!r}: give a codec of that "
                                    "encoder (e.g. from 'pfm train-decoder CORPUS --codec "
                                    f"{encoder_spec(spec)} --out DIR')")
        spec = args.codec
    mode = args.mode or "auto"
    rows = read_text_rows(args.input)
    can_decode = (Path(spec) / "codec.json").is_file()  # a codec saved with its decoder (pfm train-decoder)
    ways = plan(rows, mode, can_decode, f"the codec {spec!r}")
    codec = load_codec(spec)
    out = improve_texts(flow, codec, rows, mode=mode, iterations=args.iterations, strength=args.strength,
                        decode_samples=args.decode_samples or 1, **solver)
    with atomic_file(args.out, "w") as f:
        for row in out:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    mean = sum(r["improved_cosine"] for r in out) / len(out)
    print(f"wrote {len(out)} rows to {args.out} (field 'improved': {ways.count('decoder')} by the decoder, "
          f"{ways.count('candidate')} chosen among candidates; mean cosine to the flowed vectors {mean:.3f})")
    return 0


def text_report(args: argparse.Namespace, flow: Any) -> tuple[Any, str]:
    """``pfm report FLOW rows.jsonl --out DIR``: the report of the rows' vectors under the flow's codec (how far the
    flow moves them), with each row's text before and after as ``pfm apply`` returns it (by the codec's decoder,
    or the nearest of the row's candidates). Returns the report and what was read."""
    from ..report import flow_report
    from ..text.apply import check_rows, plan, texts_of
    from ..text.codec import load_codec
    from ..text.rows import read_text_rows

    spec = flow_codec_spec(args.flow)
    rows = read_text_rows(args.input)
    plan(rows, "auto", (Path(spec) / "codec.json").is_file(), f"the codec {spec!r}")  # before loading the codec
    codec = load_codec(spec)
    rows, ways = check_rows(flow, codec, rows)  # the codec's width and the prompts
    z = codec.encode([r.text for r in rows])
    context = codec.encode([r.prompt for r in rows]) if flow.context_kind is not None else None  # type: ignore[misc]
    result = flow_report(flow, z, context, strength=args.strength)  # one solve: its outputs give the texts too
    out = texts_of(codec, rows, ways, z, result.after)
    result.texts = [{"text": r["text"], "improved": r["improved"], "improved_by": r["improved_by"],
                     "improved_cosine": r["improved_cosine"]} for r in out]
    return result, f"{len(rows)} text rows of {args.input} (codec {spec!r})"


def train_decoder(args: argparse.Namespace) -> int:
    """``pfm train-decoder CORPUS --codec SPEC --out DIR``."""
    from ..io import check_output
    from .options import config_from_args
    from ..text.codec import encoder_spec, load_codec
    from ..text.decoder import MIN_SENTENCES, DecoderConfig, train_decoder as train
    from ..text.rows import read_corpus_texts

    if not Path(args.corpus).exists():
        raise MissingFileError(f"no such file: {args.corpus!r}")
    if args.codec.lower() != "minilm" and not Path(args.codec).is_dir():
        raise MissingFileError(f"--codec {args.codec!r} is neither 'minilm' nor an existing directory")
    enc = encoder_spec(args.codec)  # a saved codec's encoder: the new decoder replaces its old one
    inputs = [(args.corpus, "corpus"), (None if enc == "minilm" else enc, "--codec encoder directory"),
              (None if args.codec.lower() == "minilm" else args.codec, "--codec directory")]
    out = check_output(args.out, "--out", kind="dir", inputs=inputs)
    if out.is_dir() and any(out.iterdir()) and not (out / "codec.json").is_file():
        raise InvalidInputError(f"--out {args.out!r} is a non-empty directory that holds no codec; refusing to "
                                "replace it")
    cfg = config_from_args(DecoderConfig, args)
    texts = read_corpus_texts(args.corpus)
    if len(texts) < MIN_SENTENCES:  # before the encoder is loaded
        raise InvalidInputError(f"the corpus must hold at least {MIN_SENTENCES} sentences, got {len(texts)}")
    codec, report = train(texts, load_codec(enc), cfg, progress=not args.quiet)
    report["corpus"] = str(Path(args.corpus).resolve())
    codec.save(out, info=report)
    rec = report["reconstruction"]
    print(f"saved codec to {args.out}: decoder trained on {report['train_sentences']} sentences "
          f"({report['training']['epochs']} epochs, {report['training']['seconds']:.1f} s); reconstruction of "
          f"{int(rec['sentences'])} held-out sentences: mean cosine {rec['cosine']:.3f} (unrelated sentences "
          f"{rec['cosine_unrelated']:.3f}), {rec['exact']:.0%} exact"
          + ("" if rec.get("usable", True) else "; UNUSABLE (see the warning)"))
    return 0
