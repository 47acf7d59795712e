"""What ``pfm fit``, ``pfm apply``, ``pfm info``, ``pfm demo`` and ``pfm train-decoder`` do (the text parts in
:mod:`pfm.cli.text`), once :mod:`pfm.cli` has parsed their options.

Every path written and every setting used later is checked before any data is read or a step is taken.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

from ..config import FieldConfig, FitConfig, SolverConfig
from ..errors import InvalidInputError, MissingFileError
from .options import config_from_args, dest_of, flag_of, given

log = logging.getLogger("pfm")


def _exists(path: str) -> None:
    if not Path(path).exists():
        raise MissingFileError(f"no such file: {path!r}")


def field_options(args: argparse.Namespace) -> FieldConfig:
    """The field given on the command line (settings not given keep :class:`pfm.config.FieldConfig`'s defaults); a
    setting of the other network is refused, naming its flag."""
    chosen = args.field or FieldConfig.type
    for f in dataclasses.fields(FieldConfig):
        applies = f.metadata.get("applies")
        if applies not in (None, chosen) and getattr(args, dest_of(f), None) is not None:
            takes = [flag_of(g) for g in dataclasses.fields(FieldConfig) if g.metadata.get("applies") == chosen
                     and g.metadata.get("cli", True)]
            raise InvalidInputError(f"{flag_of(f)} applies to --field {applies}; the {chosen} takes "
                                    f"{', '.join(takes)}")
    return config_from_args(FieldConfig, argparse.Namespace(**given(FieldConfig, args)))


def fit(args: argparse.Namespace) -> int:
    from ..io import check_output

    _exists(args.data)
    args.out = str(check_output(args.out, "--out", kind="flow", inputs=[(args.data, "data file")]))
    ckpt = args.checkpoint_dir
    if ckpt is None and (args.checkpoint_every or args.resume):
        ckpt = str(Path(args.out).with_name(Path(args.out).name + ".checkpoint"))
    if ckpt is not None:
        ckpt = str(check_output(ckpt, "--checkpoint-dir", kind="dir",
                                inputs=[(args.data, "data file"), (args.out, "--out flow directory")]))
        if (Path(ckpt) / "checkpoint.pt").exists() and not args.resume:
            raise InvalidInputError(f"--checkpoint-dir {ckpt!r} holds the checkpoint of an earlier run; pass "
                                    "--resume to go on from it, or choose another directory")
    held_out = args.validation is not None or bool(args.validation_fraction)
    if held_out and ckpt is not None:
        raise InvalidInputError("--validation and --validation-fraction cannot be combined with checkpoints yet "
                                "(the best weights are not part of the checkpoint)")
    if args.validation is not None and args.validation_fraction:
        raise InvalidInputError("give --validation FILE or --validation-fraction F, not both")
    if (args.validate_every is not None or args.patience is not None) and (
            ckpt is not None or args.validation_fraction == 0):
        raise InvalidInputError("--validate-every and --patience need held-out pairs: --validation FILE or "
                                "--validation-fraction F, in a run without checkpoints")
    if args.validation is not None:
        _exists(args.validation)
    if args.device is not None:
        from ..validate import check_device

        check_device(args.device, "--device")
    args.field_config = field_options(args)
    args.config = config_from_args(FitConfig, args, checkpoint_dir=ckpt, progress=not args.quiet,
                                   threads=args.threads)
    args.solver = config_from_args(SolverConfig, args)
    ds, validation = _read_pairs(args, [args.data, args.validation])
    return _distributed(args, ds, validation)


def _read_pairs(args: argparse.Namespace, paths: list[Optional[str]]) -> list:
    """The preference data sets of ``paths`` (``None`` stays ``None``). Every file is read and checked before the
    codec's model loads or any text is encoded (seconds each), so a bad row or a mismatched format in the last file
    fails before the work on the first starts."""
    from ..data import PreferenceDataset
    from ..text.pairs import read_text_pairs  # light: the codec's model is loaded below, after every file is read

    text = [path is not None and str(path).lower().endswith(".jsonl") for path in paths]
    for path, is_text in zip(paths, text):
        if is_text and not args.codec:
            raise InvalidInputError(f"{path!r} holds text: name the codec that turns it into vectors, "
                                    "e.g. --codec minilm")
        if path is not None and not is_text and args.codec:
            raise InvalidInputError(f"--codec applies to text preferences (.jsonl), not to {path!r}")
    read: list = []
    for path, is_text in zip(paths, text):
        read.append(read_text_pairs(path) if is_text else None if path is None else PreferenceDataset.load(path))
    out: list = []
    for path, is_text, got in zip(paths, text, read):
        if is_text:
            if getattr(args, "codec_object", None) is None:
                from ..text.codec import load_codec

                args.codec_object = load_codec(args.codec)
            got = PreferenceDataset.from_text_pairs(got, args.codec_object, progress=not args.quiet)
        if got is not None:
            log.info("loaded %r from %s", got, path)
        out.append(got)
    return out


def _distributed(args: argparse.Namespace, ds, validation) -> int:
    """Fit on one process, or on every rank of a ``torchrun`` launch."""
    import torch

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world == 1 or torch.distributed.is_initialized():
        return _fit_on(args, ds, validation, rank)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(args.device)
    try:
        code = _fit_on(args, ds, validation, rank)
        torch.distributed.barrier()  # nobody tears the group down while rank 0 still writes
        return code
    finally:
        torch.distributed.destroy_process_group()


def _fit_on(args: argparse.Namespace, ds, validation, rank: int) -> int:
    import dataclasses

    import torch

    from ..io import atomic_file
    from ..flow import PreferenceFlow
    from ..runtime import seed_everything

    seed_everything(args.seed)
    flow = PreferenceFlow.for_dataset(ds, field=args.field_config)
    flow.solver.update(args.solver.to_dict())
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = dataclasses.replace(args.config, device=device)
    if cfg.resume and not (Path(cfg.checkpoint_dir) / "checkpoint.pt").exists():
        log.warning("no checkpoint in %s: starting from step 0", cfg.checkpoint_dir)
    history = flow.fit(ds, cfg, validation=validation)
    if rank != 0:  # one writer
        return 0
    flow.save(args.out)
    with atomic_file(Path(args.out) / "history.json", "w") as fh:
        json.dump(history.to_dict(), fh)
    if getattr(args, "codec_object", None) is not None:  # what turned the text into vectors, to apply it again
        described = args.codec_object.describe()
        if described["spec"].lower() != "minilm":  # a directory: found again from any working directory
            described["spec"] = str(Path(described["spec"]).resolve())
        with atomic_file(Path(args.out) / "codec.json", "w") as fh:
            json.dump(described, fh)
    print(f"saved flow to {args.out} ({history.steps} steps, {history.seconds:.1f} s, "
          f"final loss {history.loss[-1]:.4g})" + (f"; {history.summary}" if history.summary else ""))
    return 0


def apply(args: argparse.Namespace) -> int:
    import numpy as np

    from ..io import atomic_file, check_output
    from ..flow import PreferenceFlow

    _exists(args.input)
    text = str(args.input).lower().endswith(".jsonl")
    _text_options(args, text)
    overrides = given(SolverConfig, args)
    from ..validate import check_device

    device = "cpu" if args.device is None else check_device(args.device, "--device")  # '' too, as pfm fit does
    flow = PreferenceFlow.load(args.flow, device=device)  # first: is FLOW a flow at all?
    args.out = str(check_output(args.out, "--out", kind="file", suffixes=(".jsonl",) if text else (".npz",),
                                inputs=[(args.input, "input file"), (args.flow, "flow directory")]))
    solver = {"solver": SolverConfig(**{**flow.solver, **overrides})}  # the flow's own, with what was given
    judge = _judge_options(args, text)
    if text:
        from .text import apply_text

        return apply_text(args, flow, solver)
    key, arrays = read_outputs(args)
    context = arrays.get(args.context_key)
    if judge is not None:
        from ..report import choose_strength

        curve = choose_strength(flow, arrays[key], judge, context, sample=args.judge_sample, **solver)
        print(curve.table())
        print(f"strength auto: {curve.best:g}, the judge's best mean score on {curve.n} rows of {args.input}")
        if args.curve is not None:
            curve.figure(args.curve)
        args.strength = curve.best
    if args.strength is not None:
        y = flow.transform(arrays[key], context, strength=args.strength, **solver)
    else:
        y = flow.iterate(arrays[key], context, iterations=args.iterations, **solver)
    out = {"y": y}
    if context is not None:
        out["context"] = context
    with atomic_file(args.out) as f:
        np.savez(f, **out)
    read = f"array {key!r}" + (f" (context {args.context_key!r})" if context is not None else "")
    print(f"read {read} of {args.input}; wrote {len(y)} transformed outputs to {args.out} (array 'y')")
    return 0


def read_outputs(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """``(the outputs' array name, {name: array})`` of ``args.input`` (.npz): ``--key``, else ``y``, ``outputs`` or
    ``rejected``, else its one array besides the contexts (``--context-key``), which are read too where present."""
    from ..data import npz_keys, read_npz
    from ..errors import FileFormatError

    names = npz_keys(args.input)
    key = args.key
    if key is None:
        others = [k for k in names if k != args.context_key]
        candidates = [k for k in ("y", "outputs", "rejected") if k in names] or (others if len(others) == 1 else [])
        if not candidates:
            raise FileFormatError(f"{args.input!r} holds {sorted(names)}; name the outputs' array with --key")
        key = candidates[0]
    if key not in names:
        raise FileFormatError(f"{args.input!r} has no array {key!r}; it holds {sorted(names)}")
    return key, read_npz(args.input, required=(key,), optional=(args.context_key,))  # nothing else is read


def report(args: argparse.Namespace) -> int:
    from ..flow import PreferenceFlow
    from ..io import check_output
    from ..report import flow_report
    from ..validate import check_device

    _exists(args.input)
    text = str(args.input).lower().endswith(".jsonl")
    if text and args.judge is not None:
        raise InvalidInputError("--judge scores arrays of outputs; for text rows, pfm report shows each row's text "
                                "before and after")
    device = "cpu" if args.device is None else check_device(args.device, "--device")
    flow = PreferenceFlow.load(args.flow, device=device)
    args.out = str(check_output(args.out, "--out", kind="dir", inputs=[(args.input, "input file"),
                                                                      (args.flow, "flow directory")]))
    judge = None
    if args.judge is not None:
        from .judge import load_judge

        judge = load_judge(args.judge)
    if text:
        from .text import text_report

        result, read = text_report(args, flow)
    else:
        key, arrays = read_outputs(args)
        result = flow_report(flow, arrays[key], arrays.get(args.context_key), judge=judge, strength=args.strength)
        read = f"array {key!r} of {args.input}"
    result.training = training_summary(Path(args.flow))
    result.save(args.out)
    print(result.table())
    print(f"read {read}; wrote report.json, report.md and report.png to {args.out}")
    return 0


def _judge_options(args: argparse.Namespace, text: bool) -> Any:
    """The judge of ``--strength auto`` (imported now, before any data is read), or None; its options are refused
    without it."""
    if args.strength != "auto":
        given_auto = [f for f, v in (("--judge", args.judge), ("--curve", args.curve)) if v is not None]
        if given_auto:
            raise InvalidInputError(f"{given_auto[0]} applies to --strength auto")
        return None
    if text:
        raise InvalidInputError("--strength auto applies to .npz outputs, not to text rows")
    if args.judge is None:
        raise InvalidInputError("--strength auto needs --judge MODULE:FUNCTION, the score it chooses by")
    if args.curve is not None:
        from ..io import check_output

        args.curve = str(check_output(args.curve, "--curve", kind="file", suffixes=(".png", ".svg", ".pdf"),
                                      inputs=[(args.input, "input file"), (args.flow, "flow directory"),
                                              (args.out, "--out file")]))
    from .judge import load_judge

    return load_judge(args.judge)


def _text_options(args: argparse.Namespace, text: bool) -> None:
    """The options of text input (``--mode``, ``--codec``, ``--decode-samples``) only with a .jsonl, and those of
    arrays (``--key``, ``--context-key``) only with a .npz."""
    if text and (args.key is not None or args.context_key != "context"):
        raise InvalidInputError(f"--key and --context-key name arrays of a .npz; {args.input!r} holds text rows")
    if not text:
        given_text = [f for f, v in (("--mode", args.mode), ("--codec", args.codec),
                                     ("--decode-samples", args.decode_samples)) if v is not None]
        if given_text:
            raise InvalidInputError(f"{given_text[0]} applies to text rows (.jsonl), not to {args.input!r}")


def train_decoder(args: argparse.Namespace) -> int:
    from .text import train_decoder as run

    return run(args)


def info(args: argparse.Namespace) -> int:
    from ..flow.files import WEIGHTS_NAME, read_config, read_weights_header

    cfg = read_config(args.flow)
    read_weights_header(Path(args.flow) / WEIGHTS_NAME)
    size = (Path(args.flow) / WEIGHTS_NAME).stat().st_size if (Path(args.flow) / WEIGHTS_NAME).exists() else 0
    cfg["weights_bytes"] = size
    cfg.update(training_summary(Path(args.flow)))
    print(json.dumps(cfg, indent=2))
    return 0


def _number(v: Any) -> Any:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def training_summary(flow_dir: Path) -> dict[str, Any]:
    """What ``history.json`` and ``codec.json`` beside a flow say about its training (``{}`` where they are
    missing): ``{"training": {pairs, held_out, steps, seconds, pairing_seconds, final_loss, held_out_loss,
    zero_field, best_step, summary}, "codec": {...}}`` (``pairing_seconds``: the steps' own pairing and their waits
    for the pairing threads). Only plain numbers and strings are taken from the files."""
    from ..errors import PFMError
    from ..io import read_json

    out: dict[str, Any] = {}
    hist_path = flow_dir / "history.json"
    if hist_path.is_file():
        try:
            h = read_json(hist_path)
        except PFMError as exc:
            out["training"] = {"error": str(exc)}
            h = None
        if isinstance(h, dict):
            loss = h.get("loss") if isinstance(h.get("loss"), list) else []
            val = [v for v in h.get("validation") or [] if isinstance(v, list) and len(v) == 2]
            zero = (h.get("extras") or {}).get("validation_zero_field") if isinstance(h.get("extras"), dict) else None
            held = h.get("held_out") if isinstance(h.get("held_out"), dict) else None
            pairing = h.get("pairing") if isinstance(h.get("pairing"), dict) else {}
            paired = [_number(pairing.get(k)) for k in ("solve_s", "wait_s")]
            out["training"] = {
                "pairs": _number(h.get("pairs")),
                "held_out": {"pairs": _number(held.get("pairs")), "of": _number(held.get("of")),
                             "from_data": held.get("from_data") is True} if held else None,
                "steps": _number(h.get("steps")), "seconds": _number(h.get("seconds")),
                "pairing_seconds": round(sum(paired), 3) if None not in paired else None,
                "final_loss": _number(loss[-1]) if loss else None,
                "held_out_loss": min((_number(v[1]) for v in val if _number(v[1]) is not None), default=None),
                "zero_field": _number(zero[0]) if isinstance(zero, list) and zero else None,
                "best_step": _number(h.get("best_step")),
                "summary": h.get("summary") if isinstance(h.get("summary"), str) else None,
            }
    codec_path = flow_dir / "codec.json"
    if codec_path.is_file():
        try:
            c = read_json(codec_path)
            out["codec"] = c if isinstance(c, dict) else None
        except PFMError as exc:
            out["codec"] = {"error": str(exc)}
    return out


def demo(args: argparse.Namespace) -> int:
    from .. import demo as the_demo

    result = the_demo.run(n_pairs=args.pairs, steps=args.steps, conditional=args.conditional, seed=args.seed,
                          progress=not args.quiet)
    print(the_demo.table(result))
    print(f"\n{result['n_pairs']} pairs; fit {result['steps']} steps in {result['fit_seconds']:.1f} s; "
          f"transform of 2,000 samples in {result['transform_seconds']:.2f} s")
    return 0
