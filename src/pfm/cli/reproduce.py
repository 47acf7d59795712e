"""``pfm reproduce NAME``: the paper's experiments, a package of their own (``pfm-experiments``), found by the entry
points of the group ``pfm.experiments``; without them, one line saying how to install them."""

from __future__ import annotations

import argparse
import logging

from ..errors import InvalidInputError
from .options import POSITIVE_INT

log = logging.getLogger("pfm")

ENTRY_POINTS = "pfm.experiments"
INSTALL = "pip install -e experiments (from a clone of the repository) or pip install pfm-experiments"


def experiments() -> dict[str, object]:
    """The experiments ``pfm reproduce`` can run: ``{name: experiment}`` from the entry points of the group
    ``pfm.experiments`` (the package ``pfm-experiments`` declares them), in their ``order``.

    An experiment is an object with ``help`` (one line), ``add_arguments(parser)`` (adds its options to the
    ``reproduce`` parser, which resolves an option two experiments both add), ``run(args) -> int``, and optionally
    ``order`` (an int) and ``exclusive`` (options of its own that are an error with any experiment whose
    ``exclusive`` does not list them too). One
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
    from ..errors import ExperimentsNotInstalledError

    found = args.experiments
    if args.task not in found:
        raise ExperimentsNotInstalledError(f"pfm reproduce {args.task} needs the experiments, which are not "
                                           f"installed: {INSTALL}")
    experiment = found[args.task]
    if isinstance(experiment, ModuleNotFoundError) and (experiment.name or "").split(".")[0] == experiment.package:
        raise ExperimentsNotInstalledError(f"pfm reproduce {args.task} needs the experiments, whose entry points are "
                                           f"declared but whose package cannot be imported ({one_line(experiment)})"
                                           f": reinstall them: {INSTALL}")
    if isinstance(experiment, BaseException):
        raise experiment
    from ..io import check_output

    check_output(args.out, "--out", kind="dir")  # a directory of results, writable, before any work
    owners: dict[str, list[str]] = {}  # an experiment's own option, and every experiment that has it
    for name, e in found.items():
        for flag in getattr(e, "exclusive", ()):
            owners.setdefault(flag, []).append(name)
    groups: dict[tuple[str, ...], list[str]] = {}  # the options of the same experiments, named together
    for flag, names in owners.items():
        groups.setdefault(tuple(names), []).append(flag)
    for names, flags in groups.items():
        if args.task not in names and any(getattr(args, f.lstrip("-").replace("-", "_"), None) is not None
                                          for f in flags):
            raise InvalidInputError(f"{' and '.join(flags)} appl{'ies' if len(flags) == 1 else 'y'} to "
                                    f"`pfm reproduce {' and '.join(names)}` only")
    return experiment.run(args)


def add_parser(sub, load: bool = True) -> None:
    """The ``reproduce`` command; with ``load``, the experiments found by :func:`experiments` and their options,
    else only its line in ``pfm --help``."""
    if not load:
        sub.add_parser("reproduce", help="run one of the paper's experiments with its baselines")
        return
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


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
