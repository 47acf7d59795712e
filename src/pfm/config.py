"""Settings as dataclasses, one place for every default (as TRL's ``DPOConfig``).

- :class:`TrainConfig`: the training loop's settings (:func:`pfm.optimize`, which the flows and the baselines train
  through): its length, the optimizer, checkpoints, validation, precision.
- :class:`FitConfig`: a :class:`TrainConfig` plus what a flow's fit adds: the coupling and the path
  (:meth:`pfm.PreferenceFlow.fit`).
- :class:`FieldConfig`: the vector field's network and its sizes (:class:`pfm.MLPField`, :class:`pfm.UNetField`).
- :class:`SolverConfig`: the ODE solver a flow is applied with (saved with the flow, see
  :meth:`pfm.PreferenceFlow.transform` and :func:`pfm.solve`).

Each field's help text is in its ``metadata["help"]``; the command line (``pfm fit``, ``pfm apply``) builds its
options from these fields (:mod:`pfm.cli.options`), so an option's default is written once, here.

Names: ``steps`` alone is always *training* steps; the solver's steps are ``SolverConfig.steps``, which is
``solver_steps`` wherever it stands beside other settings (``transform(solver_steps=)``, ``pfm fit
--solver-steps``, ``pfm apply --solver-steps``). Applying one trained flow k times is ``iterations``
(``flow.iterate(y, iterations=3)``, ``pfm apply --iterations 3``); ``rounds`` is the paper's iterative method,
which collects new preferences and trains a new flow each round (:func:`pfm.iterative_pfm`).

Every value is checked when a config is made (or changed with :func:`dataclasses.replace`); a wrong one raises a
:class:`pfm.PFMError` naming the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional, TypeVar

from . import validate as V
from .errors import InvalidInputError, InvalidTypeError

FIXED_STEP = ("euler", "midpoint", "rk4")
ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "tsit5")
METHODS = FIXED_STEP + ADAPTIVE


def check_solver(options: Any, name: str = "solver") -> dict[str, Any]:
    """Solver settings as :class:`SolverConfig`'s fields ``{method, steps, atol, rtol}`` (any subset, e.g. a flow's
    ``config.json``), each checked; unknown keys are refused."""
    keys = [f.name for f in dataclasses.fields(SolverConfig)]
    if not isinstance(options, dict):
        raise InvalidInputError(f"{name} must be a dict of {', '.join(keys)}, got {type(options).__name__}")
    unknown = sorted(set(options) - set(keys))
    if unknown:
        raise InvalidInputError(f"{name} has unknown setting(s) {unknown}; it takes {', '.join(keys)}")
    if "method" in options:
        V.check_choice(options["method"], f"{name} method", METHODS)
    if "steps" in options:
        V.check_int(options["steps"], f"{name} steps", low=1, high=1 << 20)
    for key in ("atol", "rtol"):
        if key in options:
            V.check_positive_float(options[key], f"{name} {key}")
    return dict(options)


PRECISIONS = ("fp32", "bf16")
COUPLINGS = ("ot", "sinkhorn", "independent", "paired")
SOURCES = ("rejected", "reference")
DEFAULT_STEPS = 2000
"""Training steps when neither ``steps`` nor ``epochs`` is given."""
DEFAULT_VALIDATION_FRACTION = 0.1
"""The share of the pairs :meth:`pfm.PreferenceFlow.fit` holds out by default (``validation_fraction=None``)."""
VALIDATION_MIN_PAIRS = 100
"""The fewest pairs from which :meth:`pfm.PreferenceFlow.fit` holds out its default validation share."""
DEFAULT_PATIENCE = 5
"""Evaluations without improvement after which a fit on its default validation share stops."""


def option(default: Any, help: str, **cli: Any) -> Any:
    """A dataclass field with its help text; ``cli`` holds how the command line shows it (see :mod:`pfm.cli.options`):
    ``flags`` (default ``--name-with-dashes``), ``metavar``, ``cli=False`` to leave it off the command line."""
    return dataclasses.field(default=default, metadata={"help": help, **cli})


def _check_bool(value: Any, name: str) -> None:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name} must be True or False, got {value!r}")


@dataclass
class TrainConfig:
    """Settings of the training loop, :func:`pfm.optimize`. The trainers' own configs extend it
    (:class:`pfm.FitConfig` here; :class:`pfm.baselines.DPOConfig` and the others in :mod:`pfm.baselines.config`)."""

    default_steps: ClassVar[int] = DEFAULT_STEPS
    """Training steps when neither ``steps`` nor ``epochs`` is given (a trainer's config sets its own)."""
    steps: Optional[int] = option(None, f"optimizer steps (default {DEFAULT_STEPS:,} when epochs is not given)",
                                  group="length", range="positive_int")
    epochs: Optional[float] = option(None, "passes over the data, instead of steps", group="length", range="positive")
    batch_size: int = option(256, "pairs (rows) a step", range="positive_int")
    lr: float = option(1e-3, "Adam learning rate", range="positive")
    weight_decay: float = option(0.0, "AdamW weight decay (0: plain Adam)", range="nonneg")
    grad_clip: Optional[float] = option(1.0, "clip the gradient's norm to this (None, 'none' on the command line: "
                                        "no clipping)", none="none", range="nonneg")
    ema_decay: Optional[float] = option(None, "keep an exponential moving average of the weights with this decay, "
                                        "e.g. 0.999, and end with it", flags=("--ema-decay", "--ema"), range="decay")
    seed: int = option(0, "seeds the batch order, times, noise and couplings (CPU runs are reproducible)", range="nonneg_int")
    device: Optional[str] = option(None, "where to train: cpu, cuda, cuda:1, ... (default: where the model is; "
                                   "on the command line cuda if available)")
    progress: bool = option(True, "show a progress bar", cli=False)
    checkpoint_dir: Optional[str] = option(None, "where the training state is written (on the command line: "
                                           "OUT.checkpoint/ when --checkpoint-every or --resume is given)")
    checkpoint_every: Optional[int] = option(None, "write the training state every N steps (default: 10 times a "
                                             "run when checkpoint_dir is set)", metavar="N", range="positive_int")
    resume: bool = option(False, "go on from the checkpoint of an interrupted run with the same data and settings; "
                          "ends with the same weights as an uninterrupted run")
    precision: str = option("fp32", "fp32, or bf16: the forward under bfloat16 autocast (GPUs with bf16 tensor "
                            "cores); weights and optimizer state stay float32", choices=PRECISIONS)
    compile: bool = option(False, "train through torch.compile (the first steps wait for it)")
    validate_every: Optional[int] = option(None, "with validation data: evaluate the held-out loss every N steps "
                                           "(default: 20 times a run)", metavar="N", range="positive_int")
    patience: Optional[int] = option(None, "with validation data: stop after this many evaluations without "
                                     "improvement", range="positive_int")
    threads: Optional[int] = option(None, "torch intra-op threads of the steps (default: one for a small step on "
                                    "the CPU; for a bigger step of an MLP, the count its timed steps show fastest, "
                                    "chosen again when the load changes; else torch's setting; see "
                                    "pfm.train.threads)", cli=False)

    def __post_init__(self) -> None:
        if self.steps is not None and self.epochs is not None:
            raise InvalidInputError("give steps or epochs, not both")
        V.check_positive_int(self.steps, "steps", allow_none=True)
        if self.epochs is not None:
            V.check_nonneg_float(self.epochs, "epochs")
            if not float(self.epochs) > 0:
                raise InvalidInputError(f"epochs must be > 0, got {self.epochs!r}")
        V.check_positive_int(self.batch_size, "batch_size")
        V.check_nonneg_float(self.lr, "lr")  # 0 is allowed here (to evaluate without moving); the CLI wants > 0
        V.check_nonneg_float(self.weight_decay, "weight_decay")
        V.check_nonneg_float(self.grad_clip, "grad_clip", allow_none=True)
        if self.ema_decay is not None:
            V.check_nonneg_float(self.ema_decay, "ema_decay")
            if not 0.0 < float(self.ema_decay) < 1.0:
                raise InvalidInputError(f"ema_decay must be in (0, 1), got {self.ema_decay!r}")
        V.check_int(self.seed, "seed", low=0)
        for name in ("progress", "resume", "compile"):
            _check_bool(getattr(self, name), name)
        V.check_positive_int(self.checkpoint_every, "checkpoint_every", allow_none=True)
        V.check_choice(self.precision, "precision", PRECISIONS)
        V.check_positive_int(self.validate_every, "validate_every", allow_none=True)
        V.check_positive_int(self.patience, "patience", allow_none=True)
        V.check_positive_int(self.threads, "threads", allow_none=True)
        if self.resume and self.checkpoint_dir is None:
            raise InvalidInputError("resume=True needs checkpoint_dir, where the checkpoint is")

    def total_steps(self, n: int) -> int:
        """Optimizer steps of a run over ``n`` rows: ``steps``, or ``epochs`` passes (one pass = ceil(n /
        batch_size) steps), or the config's :attr:`default_steps`."""
        if self.epochs is not None:
            return max(1, math.ceil(float(self.epochs) * math.ceil(n / self.batch_size)))
        return self.default_steps if self.steps is None else int(self.steps)


@dataclass
class FitConfig(TrainConfig):
    """Settings of :meth:`pfm.PreferenceFlow.fit`: the training loop's (:class:`TrainConfig`) and the flow's own."""

    coupling: str = option("ot", "how rejected and preferred outputs are paired in a batch, always within a context: "
                           "ot (exact minibatch optimal transport), sinkhorn, independent or paired",
                           choices=COUPLINGS)
    sigma: float = option(0.1, "noise of the path, in units of the data's overall standard deviation when normalize "
                          "is on, else in the data's units", range="nonneg")
    normalize: bool = option(True, "learn in standardized units (one overall scale for the outputs, so the OT "
                             "pairing keeps the data's geometry)", flags=("--no-normalize",),
                             off_help="train on the data's raw units (sigma is then in data units)")
    within_context: bool = option(True, "couple only pairs of the same context (labels), or weigh the context "
                                  "distance (float contexts); see pfm.couple", flags=("--across-contexts",),
                                  off_help="pair across the whole batch, whatever the contexts, as the paper's "
                                  "released code does")
    context_weight: float = option(10.0, "for float contexts: weight of the context distance in the OT cost", range="nonneg")
    source: str = option("rejected", "what the flow carries in training: rejected (the paper's: y- onto y+), or "
                         "reference (the reference's own samples, y- and y+ together, each with its context, onto "
                         "y+: a fresh reference output is then carried to the preferred marginal, Theorem 1's "
                         "maximizer, where the paper's flow overshoots it)", choices=SOURCES)
    recouple_every: Optional[int] = option(None, "ot/sinkhorn: epochs a set of minibatch couplings is kept before "
                                           "new ones are solved (None, 'never' on the command line: one set, solved "
                                           "in the first epoch; 1 re-solves every epoch, as the paper's code)",
                                           metavar="EPOCHS", none="never", range="positive_int")
    coupling_block: Optional[int] = option(None, "ot/sinkhorn: couple each batch in sub-blocks of this many rows, "
                                           "each on its own (cheaper: exact OT's time grows faster than the square "
                                           "of the rows; see the performance page, Pairing at scale); None, 'batch' "
                                           "on the command line: the whole batch", metavar="ROWS", none="batch",
                                           range="positive_int")
    validation_fraction: Optional[float] = option(
        None, "when no validation pairs are given, hold out this share of the pairs (at most validation_max): the "
        f"held-out loss is measured 20 times a run, the flow keeps its best weights and stops after {DEFAULT_PATIENCE} "
        "evaluations without improvement (unless patience is set); 0 trains on every pair (default: "
        f"{DEFAULT_VALIDATION_FRACTION:g} for a data set of {VALIDATION_MIN_PAIRS} pairs or more, in memory, in a run "
        "without checkpoints on one process; else 0)", range="share")
    validation_max: int = option(10_000, "the most pairs the default validation share holds out",
                                 range="positive_int")

    def __post_init__(self) -> None:
        super().__post_init__()
        V.check_nonneg_float(self.validation_fraction, "validation_fraction", allow_none=True)
        if self.validation_fraction is not None and not float(self.validation_fraction) < 1.0:
            raise InvalidInputError(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}")
        V.check_positive_int(self.validation_max, "validation_max")
        V.check_choice(self.coupling, "coupling", COUPLINGS)
        V.check_choice(self.source, "source", SOURCES)
        V.check_nonneg_float(self.sigma, "sigma")
        _check_bool(self.normalize, "normalize")
        _check_bool(self.within_context, "within_context")
        V.check_nonneg_float(self.context_weight, "context_weight")
        V.check_positive_int(self.recouple_every, "recouple_every", allow_none=True)
        V.check_positive_int(self.coupling_block, "coupling_block", allow_none=True)
        if self.coupling_block is not None and self.coupling_block > self.batch_size:
            raise InvalidInputError(f"coupling_block must be at most batch_size ({self.batch_size}), got "
                                    f"{self.coupling_block!r}")


FIELD_TYPES = ("mlp", "unet")
TIME_MAX_FREQ = 10.0
"""Highest frequency (rad per unit of t) of the time features. Flows saved before it existed used 1000, the value of
diffusion models whose t runs to 1000: over t in [0, 1] that made the field wiggle in t, fixed-step solvers converged
erratically, and dopri5 took 44 evaluations where 26 do now (see the README's Performance section)."""


@dataclass
class FieldConfig:
    """The vector field's network: its type and its sizes, the defaults of :class:`pfm.MLPField` and
    :class:`pfm.UNetField` (``PreferenceFlow(shape, field=FieldConfig(hidden=512))``; ``pfm fit --field unet
    --channels 32 64``). A setting belongs to one type (``metadata["applies"]``; :meth:`kwargs` gives those of
    :attr:`type`); on the command line a setting of the other type is refused."""

    type: str = option("mlp", "vector field network: mlp, or unet (outputs of shape (C, H, W))",
                       flags=("--field",), dest="field", choices=FIELD_TYPES)
    hidden: int = option(256, "MLP width", range="positive_int", applies="mlp")
    depth: int = option(3, "MLP hidden layers", range="nonneg_int", applies="mlp")
    time_dim: int = option(32, "MLP: size of the time embedding", range="positive_int", applies="mlp")
    context_dim: int = option(32, "MLP: size of the context embedding", range="positive_int", applies="mlp")
    channels: tuple[int, ...] = option((32, 64), "UNet widths per level (at most 8)", range="positive_int",
                                       nargs="+", applies="unet")
    emb_dim: int = option(64, "UNet: size of the time and context embedding", range="positive_int", applies="unet")
    time_max_freq: float = option(TIME_MAX_FREQ, "highest frequency of the time features, rad per unit of t (>= 1)",
                                  cli=False)

    def __post_init__(self) -> None:
        V.check_choice(self.type, "field", FIELD_TYPES)
        V.check_int(self.hidden, "hidden", low=1, high=1 << 20)
        V.check_int(self.depth, "depth", low=0, high=1024)
        for name in ("time_dim", "context_dim", "emb_dim"):
            V.check_int(getattr(self, name), name, low=1, high=1 << 16)
        V.check_shape(self.channels, "channels")
        self.channels = tuple(int(c) for c in self.channels)
        V.check_nonneg_float(self.time_max_freq, "time_max_freq")
        if not float(self.time_max_freq) >= 1.0:
            raise InvalidInputError(f"time_max_freq must be >= 1, got {self.time_max_freq!r}")

    @classmethod
    def settings_of(cls, field_type: str) -> tuple[str, ...]:
        """The settings that apply to the network ``field_type`` (``"mlp"`` or ``"unet"``)."""
        return tuple(f.name for f in dataclasses.fields(cls)
                     if f.name != "type" and f.metadata.get("applies", field_type) == field_type)

    def kwargs(self) -> dict[str, Any]:
        """The settings of :attr:`type`'s network, as its constructor takes them."""
        return {name: getattr(self, name) for name in self.settings_of(self.type)}


@dataclass
class SolverConfig:
    """The ODE solver (:func:`pfm.solve`): a fixed-step method takes ``steps`` steps, an adaptive one (dopri5, ...)
    its tolerances. A flow saves its own (``flow.solver``) and applies it unless told otherwise."""

    method: str = option("midpoint", "ODE solver: euler, midpoint, rk4 (fixed steps) or an adaptive method of "
                         "torchdiffeq (dopri5, dopri8, bosh3, fehlberg2, adaptive_heun, tsit5)", metavar="METHOD",
                         choices=METHODS)
    steps: int = option(4, "steps of a fixed-step method", flags=("--solver-steps",), dest="solver_steps",
                       range="positive_int")
    atol: float = option(1e-4, "absolute tolerance of an adaptive method", range="positive")
    rtol: float = option(1e-4, "relative tolerance of an adaptive method", range="positive")

    def __post_init__(self) -> None:
        check_solver(dataclasses.asdict(self), "solver")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


C = TypeVar("C")


def merge(config: Optional[C], overrides: Mapping[str, Any], cls: type[C], where: str,
          renamed: Optional[Mapping[str, str]] = None) -> C:
    """``config`` (default ``cls()``) with ``overrides`` applied, every value checked. An unknown name is refused
    with the closest known one; ``renamed`` maps old names to new ones (accepted, with a ``DeprecationWarning``)."""
    if config is None:
        config = cls()
    elif not isinstance(config, cls):
        raise InvalidTypeError(f"{where}: config must be a {cls.__name__}, got {type(config).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    values = dict(overrides)
    for old, new in (renamed or {}).items():
        if old in values:
            _old_name(where, old, new, given_too=new in values)
            values[new] = values.pop(old)
    unknown = [k for k in values if k not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; it takes {', '.join(names)}"
        raise InvalidInputError(f"{where} got an unknown setting {unknown[0]!r}{hint}")
    if not values:
        return config
    return dataclasses.replace(config, **values)  # type: ignore[type-var]


def renamed(where: str, new: str, new_value: Any, old: str, old_value: Any) -> Any:
    """The value of a renamed argument: ``new_value``, or ``old_value`` (given by its old name ``old``, with a
    ``DeprecationWarning``); both given is refused."""
    if old_value is None:
        return new_value
    _old_name(where, old, new, given_too=new_value is not None)
    return old_value


def _old_name(where: str, old: str, new: str, given_too: bool) -> None:
    """Warn that ``old=`` is now ``new=`` (at the line that called the caller's caller); refuse both at once."""
    import warnings

    warnings.warn(f"{where}: {old}= is now {new}=", DeprecationWarning, stacklevel=4)
    if given_too:
        raise InvalidInputError(f"{where}: give {new} or its old name {old}, not both")


def solver_options(where: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The solver settings a caller gave, as :class:`SolverConfig`'s fields, to lay over a flow's own: ``solver`` (a
    whole :class:`SolverConfig`), then the settings given beside it, named as on the command line (``method``,
    ``solver_steps``, ``atol``, ``rtol``; None ones left out). ``steps``, the old name of ``solver_steps``, is
    accepted with a ``DeprecationWarning``; any other name is refused with the closest known one."""
    fields = dataclasses.fields(SolverConfig)
    beside = {f.metadata.get("dest", f.name): f.name for f in fields}  # solver_steps -> steps
    out: dict[str, Any] = {}
    whole = options.get("solver")
    if whole is not None:
        if not isinstance(whole, SolverConfig):
            raise InvalidTypeError(f"{where}: solver must be a pfm.SolverConfig, got {type(whole).__name__}")
        out.update(whole.to_dict())
    for key, value in options.items():
        if key == "solver":
            continue
        if key == "steps":
            value = renamed(where, "solver_steps", options.get("solver_steps"), "steps", value)
            key = "solver_steps"
        elif key not in beside:
            close = difflib.get_close_matches(key, [*beside, "solver", "steps"], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; it takes solver, {', '.join(beside)}"
            raise InvalidInputError(f"{where} got an unknown solver setting {key!r}{hint}")
        if value is not None:
            out[beside[key]] = value
    return check_solver(out, "solver")
