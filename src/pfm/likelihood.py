"""Log-likelihood of a flow's outputs by the instantaneous change of variables, and the KL to the reference.

For ``dy/dt = v(t, y, x)`` and ``y(0) ~ pi_ref``, the density of ``y(1)`` is

    log pi_aligned(y(1)) = log pi_ref(y(0)) - integral_0^1 div_y v(t, y(t), x) dt.

The divergence is integrated beside ``y`` on one augmented state by the project's solvers (:func:`pfm.solve.solve`),
forward (t: 0 -> 1, from reference samples) or inverse (t: 1 -> 0, to score given aligned outputs). It is either

- ``exact``: the trace of the Jacobian, one autograd pass per output dimension (for small outputs), or
- ``hutchinson``: ``eps^T (dv/dy) eps`` with ``probes`` Rademacher vectors ``eps`` drawn once per row and kept along
  the whole trajectory, so each probe gives an unbiased estimate of the integral; their spread gives a per-row
  standard error (an estimate of the integral, not of the solver's discretization error).

``divergence="auto"`` is exact up to :data:`EXACT_MAX_DIM` output dimensions. A flow chain (iterative PFM) or a flow
applied ``k`` times (PFM x k) composes: the integrals of the maps add up, and so do the variances of their estimates.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from . import validate as V
from .config import renamed, solver_options
from .errors import InvalidInputError, InvalidTypeError
from .solve import Field, solve, strength_spans
from .train.threads import TunedCalls

EXACT_MAX_DIM = 32
DIVERGENCES = ("auto", "exact", "hutchinson")
LogProbFn = Callable[[Tensor, Optional[Tensor]], Tensor]


class FlowDensity(NamedTuple):
    """The result of pushing points through a flow with their log-density.

    Attributes:
        output: ``(N, *shape)`` aligned outputs ``y(1)``.
        source: ``(N, *shape)`` the reference points ``y(0)`` they come from.
        log_prob: ``(N,)`` log-density of the aligned distribution at ``output``.
        stderr: ``(N,)`` standard error of ``log_prob`` from Hutchinson's estimator (zeros when exact; NaN with one
            probe, which gives no spread to measure).
    """

    output: Tensor
    source: Tensor
    log_prob: Tensor
    stderr: Tensor


class KLEstimate(NamedTuple):
    """A Monte Carlo estimate of ``KL(pi_aligned || pi_ref)`` in nats, its standard error, and the sample size."""

    kl: float
    stderr: float
    n: int


def divergence_integral(
    field: Field,
    y: Tensor,
    context: Optional[Tensor] = None,
    *,
    inverse: bool = False,
    end: float = 1.0,
    divergence: str = "auto",
    probes: int = 8,
    method: str = "midpoint",
    steps: int = 16,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    generator: Optional[torch.Generator] = None,
    tuners: Optional[dict] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Solve the flow of ``field`` from ``y`` and integrate its divergence along the way.

    Args:
        field: ``field(t, y, context)`` with ``t: (B,)`` and ``y: (B, *shape)``.
        y: ``(B, *shape)`` start points: ``y(0)``, or ``y(1)`` when ``inverse``.
        inverse: solve t: end -> 0.
        end: the end time of the solve, in (0, 1] (a partial solve, as ``transform(strength=end)`` takes, with as
            many solver steps as a whole one).
        divergence: ``exact``, ``hutchinson`` or ``auto`` (exact up to :data:`EXACT_MAX_DIM` dimensions).
        probes: Rademacher probes per row for Hutchinson's estimator.
        method, steps, atol, rtol: solver settings (see :func:`pfm.solve.solve`).
        generator: draws the probes.
        tuners: a dict the caller keeps across calls (a flow keeps one): the thread tuners of earlier calls of the
            same size, so a loop of calls probes the thread counts once (:class:`pfm.train.threads.TunedCalls`).

    Returns:
        ``(end points, integral, stderr)``: the end points ``(B, *shape)``, the estimate of
        ``integral_0^end div v(t, y(t)) dt`` along the trajectory ``(B,)`` (always over t from 0 to ``end``,
        whichever way it was solved), and its standard error ``(B,)``.
    """
    V.check_choice(divergence, "divergence", DIVERGENCES)
    V.check_positive_int(probes, "probes")
    if tuners is not None and not isinstance(tuners, dict):
        raise InvalidTypeError(f"tuners must be a dict the caller keeps (or None), got {type(tuners).__name__}")
    if not 0.0 < float(end) <= 1.0:
        raise InvalidInputError(f"end must be in (0, 1], got {end!r}")
    B, shape = y.shape[0], tuple(y.shape[1:])
    D = math.prod(shape)
    exact = divergence == "exact" or (divergence == "auto" and D <= EXACT_MAX_DIM)
    K = 1 if exact else int(probes)
    eps = None
    if not exact:
        eps = (torch.randint(0, 2, (K, B, D), generator=generator, device="cpu").to(y) * 2 - 1)

    def augmented(t: Tensor, state: Tensor, c: Optional[Tensor]) -> Tensor:
        with torch.enable_grad():
            z = state[:, :D].detach().requires_grad_(True)
            v = field(t, z.reshape(B, *shape), c).reshape(B, D)
            if exact:
                cols = [torch.autograd.grad(v[:, i].sum(), z, retain_graph=i < D - 1)[0][:, i] for i in range(D)]
                div = torch.stack(cols, 1).sum(1, keepdim=True)
            else:
                assert eps is not None
                div = torch.stack([(torch.autograd.grad(v, z, eps[k], retain_graph=k < K - 1)[0] * eps[k]).sum(1)
                                   for k in range(K)], 1)
        return torch.cat([v.detach(), div.detach()], 1)

    state = torch.cat([y.reshape(B, D), torch.zeros(B, K, dtype=y.dtype, device=y.device)], 1)
    t_span = (float(end), 0.0) if inverse else (0.0, float(end))
    # a field that is a module runs on the thread count its timed evaluations show fastest (pfm.train.threads)
    with TunedCalls(field if isinstance(field, torch.nn.Module) else None, B, y.device, tuners,
                    kind="divergence") as calls:
        final = solve(calls.wrap(augmented), state, context, method=method, steps=steps, atol=atol, rtol=rtol,
                      t_span=t_span)
    integrals = final[:, D:] * (-1.0 if inverse else 1.0)  # always over t from 0 to end
    estimate = integrals.mean(1)
    if exact:
        stderr = torch.zeros_like(estimate)
    elif K == 1:
        stderr = torch.full_like(estimate, float("nan"))
    else:
        stderr = integrals.std(1) / math.sqrt(K)
    return final[:, :D].reshape(B, *shape), estimate, stderr


# ------------------------------------------------------------------------------------------------ flows
def flow_divergence_pass(flow: Any, y: Any, context: Any, *, inverse: bool, divergence: str, probes: int,
                         generator: Optional[torch.Generator], end: float = 1.0,
                         solver: Optional[dict[str, Any]] = None) -> tuple[Tensor, Tensor, Tensor]:
    """:meth:`pfm.PreferenceFlow.divergence_pass`: ``solver`` holds settings as :class:`pfm.SolverConfig`'s fields
    (:func:`pfm.config.solver_options`), each overriding the flow's own."""
    y = V.as_float(y, "y")
    V.check_trailing_shape(y, "y", flow.output_shape, "flow's outputs")
    c = flow._prepare_context(context, y.shape[0])
    opts = {**flow.solver, **(solver or {})}
    cb = flow._field_context(c)
    was_training = flow.training
    flow.eval()
    try:
        z, integral, se = divergence_integral(flow.field, flow._norm_y(y.to(flow.device, flow.y_shift.dtype)), cb,
                                              inverse=inverse, end=end, divergence=divergence, probes=probes,
                                              generator=generator, tuners=flow._call_tuners(), **opts)
    finally:
        flow.train(was_training)
    return flow._denorm_y(z), integral, se


def _as_flows(flows: Any, k: int) -> list[Any]:
    """A PreferenceFlow, a FlowChain or a sequence of flows -> the list of maps, applied first to last, ``k`` times."""
    V.check_positive_int(k, "iterations")
    if hasattr(flows, "flows") and not hasattr(flows, "divergence_pass"):  # a FlowChain
        flows = list(flows.flows)
    elif hasattr(flows, "divergence_pass"):
        flows = [flows]
    elif isinstance(flows, Sequence) and not isinstance(flows, (str, bytes)):
        flows = list(flows)
    else:
        raise InvalidTypeError(f"flows must be a PreferenceFlow, a FlowChain or a list of flows, got "
                               f"{type(flows).__name__}")
    if not flows:
        raise InvalidInputError("flows is empty")
    for f in flows:
        if not hasattr(f, "divergence_pass"):
            raise InvalidTypeError(f"flows must hold PreferenceFlows, got {type(f).__name__}")
    shapes = {(f.output_shape, f.context_kind) for f in flows}
    if len(shapes) > 1:
        raise InvalidInputError("every flow must take the same outputs and contexts")
    return flows * k


def reference_log_prob(reference: Any) -> LogProbFn:
    """``reference.log_prob`` if it has one; a plain function ``log_prob(y, context)`` is taken as it is."""
    fn = getattr(reference, "log_prob", None)
    if callable(fn):
        return fn
    if callable(reference) and not isinstance(reference, torch.nn.Module):
        return reference
    raise InvalidTypeError(f"reference must expose log_prob(y, context) (or be that function); "
                           f"{type(reference).__name__} has no log_prob")


def _call_log_prob(fn: LogProbFn, y: Tensor, context: Any) -> Tensor:
    out = fn(y, context)
    if not isinstance(out, Tensor) or out.shape != (y.shape[0],):
        got = V.shape_of(out) if isinstance(out, Tensor) else type(out).__name__
        raise InvalidInputError(f"reference log_prob must return one value per row, shape ({y.shape[0]},); got {got}")
    bad = torch.isnan(out) | (out == float("inf"))
    if bool(bad.any()):
        raise InvalidInputError(f"reference log_prob returned NaN or +inf at {int(bad.sum())} of {len(out)} points")
    return out


def log_prob(
    flows: Any,
    y: Any,
    context: Any = None,
    *,
    reference: Any,
    given: str = "output",
    iterations: Optional[int] = None,
    k: Optional[int] = None,
    strength: Optional[float] = None,
    divergence: str = "auto",
    probes: int = 8,
    batch_size: int = 4096,
    seed: int = 0,
    **solver: Any,
) -> FlowDensity:
    """Log-density of the aligned distribution, by the change of variables through one or more flows.

    Args:
        flows: a :class:`pfm.PreferenceFlow`, a :class:`pfm.FlowChain` or a list of flows (applied in order).
        y: ``(N, *output_shape)``: aligned outputs to score (``given="output"``, solved back to t = 0), or reference
            samples to push forward (``given="reference"``).
        context: as for :meth:`pfm.PreferenceFlow.transform`; passed to ``reference``'s ``log_prob`` as given.
        reference: pi_ref: an object with ``log_prob(y, context) -> (N,)`` or that function.
        iterations: apply the maps this many times (PFM x k); ``k=`` is its old name (deprecated).
        strength: instead of ``iterations``, for one flow: the density of ``flow.transform(y, strength=strength)``
            (the same solves, :func:`pfm.solve.strength_spans`: ``floor(strength)`` whole ones, then one to the
            fraction left; 0 is the reference itself).
        divergence, probes: see :func:`divergence_integral`.
        batch_size: rows solved at once.
        seed: seeds Hutchinson's probes.
        **solver: ``solver`` (a :class:`pfm.SolverConfig`) and single settings ``method``, ``solver_steps``,
            ``atol``, ``rtol`` over it (default: each flow's own ``solver``).

    Returns:
        :class:`FlowDensity` with the outputs, the reference points and the log-density at the outputs.
    """
    V.check_choice(given, "given", ("output", "reference"))
    iterations = renamed("log_prob", "iterations", iterations, "k", k)
    maps = _as_flows(flows, 1 if iterations is None else iterations)
    ends = [1.0] * len(maps)
    if strength is not None:
        if iterations is not None:
            raise InvalidInputError("give iterations or strength, not both")
        if len(maps) != 1:
            raise InvalidInputError("strength takes one flow (a PreferenceFlow), not a chain or a list")
        ends = strength_spans(strength)
        maps = maps * len(ends)
    log_ref = reference_log_prob(reference)
    y_t = _as_flows(flows, 1)[0].check_outputs(y)
    V.check_positive_int(batch_size, "batch_size")
    overrides = solver_options("log_prob", solver)
    gen = torch.Generator().manual_seed(int(seed))
    order = list(zip(maps, ends))
    order = order if given == "reference" else order[::-1]
    with torch.no_grad():
        return _log_prob(order, y_t, context, log_ref, given, divergence, probes, batch_size, gen, overrides)


def _log_prob(order: list[tuple[Any, float]], y_t: Tensor, context: Any, log_ref: LogProbFn, given: str, divergence: str,
              probes: int, batch_size: int, gen: torch.Generator, solver: dict[str, Any]) -> FlowDensity:
    outs, srcs, lps, ses = [], [], [], []
    for s in range(0, y_t.shape[0], batch_size):
        z = y_t[s:s + batch_size]
        c = None if context is None else _rows(context, s, batch_size, y_t.shape[0])
        total = torch.zeros(z.shape[0], dtype=torch.float64)
        var = torch.zeros(z.shape[0], dtype=torch.float64)
        start = z
        for f, end in order:
            z, integral, se = flow_divergence_pass(f, z, c, inverse=given == "output", end=end, divergence=divergence,
                                                   probes=probes, generator=gen, solver=solver)
            total += integral.double().cpu()
            var += se.double().cpu().pow(2)
        y0, y1 = (start, z) if given == "reference" else (z, start)
        lp0 = _call_log_prob(log_ref, y0.to(y_t), c).double().cpu()
        outs.append(y1.to(y_t))
        srcs.append(y0.to(y_t))
        lps.append(lp0 - total)
        ses.append(var.sqrt())
    return FlowDensity(torch.cat(outs), torch.cat(srcs), torch.cat(lps), torch.cat(ses))


def _rows(context: Any, start: int, size: int, n: int) -> Any:
    """The rows of a per-row context for one batch; a single context (a label or one vector) is passed whole."""
    c = context if isinstance(context, Tensor) else torch.as_tensor(context)
    if c.dim() >= 1 and c.shape[0] == n and n > 1:
        return c[start:start + size]
    return c


def kl_to_reference(
    flows: Any,
    reference: Any,
    context: Any = None,
    *,
    n: Optional[int] = None,
    samples: Any = None,
    iterations: Optional[int] = None,
    k: Optional[int] = None,
    strength: Optional[float] = None,
    divergence: str = "auto",
    probes: int = 8,
    seed: int = 0,
    **solver: Any,
) -> KLEstimate:
    """Monte Carlo ``KL(pi_aligned || pi_ref) = E_{y ~ pi_aligned}[log pi_aligned(y) - log pi_ref(y)]``.

    Reference samples (``samples``, or ``n`` drawn with ``reference.sample(context, n, generator)`` or
    ``reference(context, n)``) are pushed through the maps; the standard error is that of the mean over samples
    (Hutchinson's noise is part of each sample's value, so it is included).

    Args:
        flows: a flow, a chain or a list of flows; ``iterations`` applies them that many times (PFM x k; ``k=`` is
            its old name, deprecated); or ``strength`` for one flow (see :func:`log_prob`).
        reference: pi_ref with ``log_prob`` (and ``sample`` or ``__call__`` when ``samples`` is not given).
        context: contexts of the samples (one row each), or None.
    """
    iterations = renamed("kl_to_reference", "iterations", iterations, "k", k)
    log_ref = reference_log_prob(reference)
    if samples is None:
        if n is None:
            if context is None:
                raise InvalidInputError("give samples, or n (the number of reference samples to draw)")
            n = len(context)
        V.check_positive_int(n, "n")
        gen = torch.Generator().manual_seed(int(seed))
        sample = getattr(reference, "sample", None)
        with torch.no_grad():
            if callable(sample):
                samples = sample(context, n, generator=gen)
            elif callable(reference) and isinstance(reference, torch.nn.Module):
                samples = reference(context, n)
            else:
                raise InvalidTypeError("reference cannot be sampled (no sample() or __call__); pass samples")
    dens = log_prob(flows, samples, context, reference=log_ref, given="reference", iterations=iterations,
                    strength=strength, divergence=divergence, probes=probes, seed=seed, **solver)
    with torch.no_grad():
        lr = _call_log_prob(log_ref, dens.output, context).double().cpu()
    ratio = dens.log_prob - lr
    if not bool(torch.isfinite(ratio).all()):
        return KLEstimate(float("inf"), float("nan"), len(ratio))
    se = float(ratio.std() / math.sqrt(len(ratio))) if len(ratio) > 1 else float("nan")
    return KLEstimate(float(ratio.mean()), se, len(ratio))
