"""What the paper's theorems are about: the win probability ``w``, the preferred marginal, and Theorem 1's objective.

With pairs drawn independently from pi_ref and ``y+`` picked with probability ``P(y > y')``,

- the preferred marginal is ``p1(y) = 2 pi_ref(y) w(y)`` and the rejected one ``p0(y) = 2 pi_ref(y) (1 - w(y))``,
  with ``w(y) = E_{y' ~ pi_ref} P(y > y')`` (the chance that ``y`` beats a fresh reference sample);
- Theorem 1: ``J(pi) = E_{y ~ pi}[log w(y)] - KL(pi || pi_ref)`` is at most ``log E_ref[w] = -log 2``
  (:data:`BOUND`), reached at ``p1`` (Gibbs' inequality; ``E_ref[w] = 1/2`` whenever
  ``P(a > b) + P(b > a) = 1``). Gibbs' inequality holds for any ``w > 0``, so with a Monte Carlo estimate of ``w``
  the exact bound of the estimated ``J`` is ``log`` of that estimate's mean under pi_ref (the plug-in bound): compare
  against it, and the estimate's common error cancels to first order;
- Theorem 2: iterating ``p_{k+1} = 2 p_k w_{p_k}`` (collect preferences on ``p_k``'s outputs, move to their preferred
  marginal) concentrates the mass on the maximizers of ``w``.

Everything here is estimated by Monte Carlo from samples; :func:`iterate_marginals` represents each ``p_k`` by
importance weights on reference samples, so it needs nothing but the preference model.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from . import validate as V
from .errors import InvalidInputError, InvalidTypeError

BOUND = -math.log(2.0)
Prefer = Callable[..., Tensor]


def win_probability(prefer: Prefer, y: Any, opponents: Any, context: Any = None, *,
                    chunk: int = 1 << 22) -> Tensor:
    """``w(y) = mean_j P(y > opponents_j)``, ``(N,)``, for a preference model ``prefer(a, b, context) -> (n,)``.

    Args:
        prefer: returns ``P(a preferred to b)`` per row, values in [0, 1].
        y: ``(N, *shape)`` points to score.
        opponents: ``(M, *shape)`` samples of the distribution to beat (pi_ref for Theorem 1's ``w``).
        context: one context for every comparison (None for unconditional models).
        chunk: at most this many comparisons in memory at once.
    """
    if not callable(prefer):
        raise InvalidTypeError(f"prefer must be a function prefer(a, b, context), got {type(prefer).__name__}")
    y, opp = V.as_float(y, "y"), V.as_float(opponents, "opponents")
    for t, name in ((y, "y"), (opp, "opponents")):
        V.check_min_dim(t, name, 2, "(N, *output_shape)")
        V.check_nonempty(t, name)
        V.check_finite(t, name)
    if y.shape[1:] != opp.shape[1:]:
        raise InvalidInputError(f"y rows have shape {tuple(y.shape[1:])} but opponents rows "
                                f"{tuple(opp.shape[1:])}; they must match")
    w = torch.cat([p.mean(1) for p in _pair_tables(prefer, y, opp, context, chunk)])
    if bool(((w < 0) | (w > 1) | torch.isnan(w)).any()):
        raise InvalidInputError("prefer returned values outside [0, 1]")
    return w


def preferred_log_density(log_ref: Tensor, w: Tensor, normalizer: float = 0.5) -> Tensor:
    """``log p1 = log pi_ref + log w - log E_ref[w]``: the density of ``y+`` when pairs come independently from
    pi_ref (``E_ref[w] = 1/2`` exactly, so ``p1 = 2 pi_ref w``). Pass the Monte Carlo ``normalizer`` of an estimated
    ``w`` to keep the density normalized for that estimate."""
    _check_normalizer(normalizer)
    return log_ref.double() + w.double().log() - math.log(normalizer)


def rejected_log_density(log_ref: Tensor, w: Tensor, normalizer: float = 0.5) -> Tensor:
    """``log p0 = log pi_ref + log(1 - w) - log(1 - E_ref[w])``: the density of ``y-`` (``2 pi_ref (1 - w)``)."""
    _check_normalizer(normalizer)
    return log_ref.double() + torch.log1p(-w.double()) - math.log1p(-normalizer)


def _check_normalizer(z: float) -> None:
    if not 0.0 < float(z) < 1.0:
        raise InvalidInputError(f"normalizer is E_ref[w], in (0, 1); got {z!r}")


class ObjectiveEstimate(NamedTuple):
    """Theorem 1's ``J(pi) = E_pi[log w] - KL(pi || pi_ref)`` from samples of pi, with standard errors."""

    J: float
    stderr: float
    expected_log_w: float
    kl: float
    kl_stderr: float
    n: int


def preference_objective(w: Tensor, log_pi: Tensor, log_ref: Tensor) -> ObjectiveEstimate:
    """Estimate ``J(pi)`` from ``y_i ~ pi``: ``w(y_i)``, ``log pi(y_i)`` and ``log pi_ref(y_i)``, each ``(n,)``."""
    vals = []
    for t, name in ((w, "w"), (log_pi, "log_pi"), (log_ref, "log_ref")):
        t = V.as_float(t, name).double().cpu()
        if t.dim() != 1 or t.shape[0] == 0:
            raise InvalidInputError(f"{name} must have shape (n,) with n > 0, got {V.shape_of(t)}")
        vals.append(t)
    w, log_pi, log_ref = vals
    if not (w.shape == log_pi.shape == log_ref.shape):
        raise InvalidInputError(f"w, log_pi and log_ref must have the same length, got {len(w)}, {len(log_pi)}, "
                                f"{len(log_ref)}")
    ratio = log_pi - log_ref
    per = w.log() - ratio
    n = len(per)

    def se(x: Tensor) -> float:
        return float(x.std() / math.sqrt(n)) if n > 1 and bool(torch.isfinite(x).all()) else float("nan")

    return ObjectiveEstimate(float(per.mean()), se(per), float(w.log().mean()), float(ratio.mean()), se(ratio), n)


class IteratedMarginals(NamedTuple):
    """Theorem 2's sequence ``p_0 = pi_ref, p_{k+1} = 2 p_k w_{p_k}`` as importance weights on reference samples.

    Attributes:
        weights: ``(rounds + 1, M)`` weights ``p_k / pi_ref`` at the samples (mean 1 each row).
        entropy: ``(rounds + 1,)`` ``-E_{p_k}[log p_k]`` (needs the reference's log-density at the samples).
        kl: ``(rounds + 1,)`` ``KL(p_k || pi_ref)``.
        ess: ``(rounds + 1,)`` effective sample size of each row's weights (how far to trust it).
        normalizer: ``(rounds,)`` ``E_{p_k}[w_{p_k}]`` before normalizing; 1/2 when ``P(a>b) + P(b>a) = 1``.
    """

    weights: Tensor
    entropy: Tensor
    kl: Tensor
    ess: Tensor
    normalizer: Tensor


def iterate_marginals(prefer: Prefer, samples: Any, log_ref: Any, rounds: int, context: Any = None,
                      *, chunk: int = 1 << 22) -> IteratedMarginals:
    """The marginals Theorem 2 iterates, on ``M`` reference samples ``(M, *shape)`` with their ``log pi_ref``.

    ``w_{p_k}(y) = E_{y' ~ p_k} P(y > y')`` is the weighted mean over the same samples, so one ``M x M`` matrix of
    preference probabilities serves every round.
    """
    V.check_positive_int(rounds, "rounds")
    ys = V.as_float(samples, "samples")
    lr = V.as_float(log_ref, "log_ref").double().cpu()
    if lr.shape != (ys.shape[0],):
        raise InvalidInputError(f"log_ref must have shape ({ys.shape[0]},), one value per sample; got "
                                f"{V.shape_of(lr)}")
    V.check_finite(lr, "log_ref")
    M = ys.shape[0]
    P = torch.cat(list(_pair_tables(prefer, ys, ys, context, chunk)))  # (M, M)
    u = torch.ones(M, dtype=torch.float64)
    weights, norms = [u], []
    for _ in range(int(rounds)):
        w = P @ u / M
        z = float((u * w).mean())
        norms.append(z)
        u = u * w / z
        weights.append(u)
    W = torch.stack(weights)
    logW = torch.where(W > 0, W.log(), torch.zeros_like(W))
    kl = (W * logW).mean(1)
    entropy = -(W * (lr[None] + logW)).mean(1)
    ess = effective_sample_size(W)
    return IteratedMarginals(W, entropy, kl, ess, torch.tensor(norms, dtype=torch.float64))


def _pair_tables(prefer: Prefer, a: Tensor, b: Tensor, context: Any, chunk: int) -> Iterator[Tensor]:
    """``P(a_i > b_j)`` in row blocks ``(rows, M)`` of at most ``chunk`` comparisons each."""
    rows = max(1, int(chunk) // b.shape[0])
    for s in range(0, a.shape[0], rows):
        yield _pairs(prefer, a[s:s + rows], b, context)


def _pairs(prefer: Prefer, a: Tensor, b: Tensor, context: Any) -> Tensor:
    n, M = a.shape[0], b.shape[0]
    p = torch.as_tensor(prefer(a.repeat_interleave(M, 0), b.repeat(n, *([1] * (b.dim() - 1))), context),
                        dtype=torch.float64)
    if p.shape != (n * M,):
        raise InvalidInputError(f"prefer must return one probability per pair, shape ({n * M},); got "
                                f"{V.shape_of(p)}")
    return p.view(n, M)


def tempered_objective(w: Tensor, powers: Sequence[float],
                       values: Optional[Mapping[str, Tensor]] = None) -> list[dict[str, float]]:
    """``J`` of ``p_a ∝ pi_ref w^a`` for each power ``a``, from ``w`` at reference samples ``(M,)``.

    ``a = 0`` is pi_ref, ``a = 1`` is ``p1`` (Theorem 1's maximizer), ``a > 1`` sharpens toward the maximizers of
    ``w``. Self-normalized importance weights; each row has ``power``, ``J``, ``kl``, ``expected_log_w``, ``ess``,
    and ``mean_<name>`` for each of ``values`` (``(M,)`` quantities at the same samples, e.g. a reward).
    """
    w = V.as_float(w, "w").double().cpu()
    if w.dim() != 1 or not len(w) or bool((w <= 0).any()):
        raise InvalidInputError("w must have shape (M,) with values in (0, 1]")
    vals = {}
    for name, v in (values or {}).items():
        v = V.as_float(v, f"values[{name!r}]").double().cpu()
        if v.shape != w.shape:
            raise InvalidInputError(f"values[{name!r}] must have shape {tuple(w.shape)} like w, got {V.shape_of(v)}")
        vals[name] = v
    out = []
    for a in powers:
        log_u = normalized_log_weights(float(a) * w.log())
        u = log_u.exp()
        e_log_w = float((u * w.log()).mean())
        kl = float((u * log_u).mean())
        row = {"power": float(a), "J": e_log_w - kl, "kl": kl, "expected_log_w": e_log_w,
               "ess": float(effective_sample_size(u))}
        row.update({f"mean_{name}": float((u * v).mean()) for name, v in vals.items()})
        out.append(row)
    return out


def normalized_log_weights(log_u: Tensor) -> Tensor:
    """Self-normalized importance weights in log space: ``log u`` shifted so that ``mean(u) = 1``. With ``u`` the
    ratio ``p / pi_ref`` at reference samples, ``mean(u * f)`` estimates ``E_p[f]`` and ``mean(u * log u)`` the KL."""
    return log_u - torch.logsumexp(log_u, -1, keepdim=log_u.dim() > 1) + math.log(log_u.shape[-1])


def effective_sample_size(u: Tensor) -> Tensor:
    """Kish's effective sample size ``(sum u)^2 / sum u^2`` of weights ``(..., M)``: how many samples they are worth."""
    return u.sum(-1).pow(2) / u.pow(2).sum(-1)
