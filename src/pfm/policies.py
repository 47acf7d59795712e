"""Policies with a density: what the baselines (RLHF, DPO, IPO) fine-tune.

PFM only ever *samples* a reference model. The baselines need more: a policy is an ``nn.Module`` with

- ``sample(context, n, generator=None) -> (n, *output_shape)``: one draw per context row (``n`` draws when
  ``context`` is None); no gradient flows through a sample;
- ``log_prob(y, context) -> (n,)``: the log-density of each row, differentiable in the policy's parameters.

Calling a policy, ``policy(context, n)``, samples; so every policy is also a black-box reference for
:func:`pfm.collect_preferences` and a flow's input. Any module with these two methods works with
:mod:`pfm.baselines`; the two here are the ones the experiments use.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from . import validate as V
from .data import as_context
from .errors import InvalidInputError
from .fields import ContextEmbedding

LOG_2PI = math.log(2.0 * math.pi)


def diagonal_gaussian_log_prob(x: Tensor, mu: Tensor, std: Tensor) -> Tensor:
    """``log N(x; mu, diag(std^2))`` of each row: ``x`` and ``mu`` ``(n, d)``, ``std`` ``(n, d)`` or ``(d,)``;
    returns ``(n,)``."""
    return (-0.5 * (((x - mu) / std).pow(2) + LOG_2PI) - std.log()).sum(-1)


class Policy(nn.Module):
    """Base class: ``forward(context, n)`` samples. Subclasses implement ``sample`` and ``log_prob``."""

    output_shape: tuple[int, ...]

    def forward(self, context: Optional[Tensor], n: int) -> Tensor:
        return self.sample(context, n)

    def sample(self, context: Optional[Tensor], n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        raise NotImplementedError

    def log_prob(self, y: Tensor, context: Optional[Tensor] = None) -> Tensor:
        raise NotImplementedError

    # helpers for subclasses --------------------------------------------------------------------------------
    def _param_device(self) -> torch.device:
        return next(self.parameters()).device

    def _check_y(self, y: Any, context: Optional[Tensor]) -> Tensor:
        y = V.as_float(y, "y")
        V.check_min_dim(y, "y", 1, "(N, *output_shape)")
        V.check_trailing_shape(y, "y", self.output_shape, "policy's outputs")
        V.check_finite(y, "y")
        if context is not None and context.shape[0] != y.shape[0]:
            raise InvalidInputError(f"context has {context.shape[0]} rows but y has {y.shape[0]}; they must match")
        return y.to(self._param_device())

    def _rows(self, context: Any, n: int) -> tuple[Optional[Tensor], int]:
        V.check_positive_int(n, "n")
        if context is None:
            return None, int(n)
        c = as_context(context, "context")
        if c.shape[0] != n:
            raise InvalidInputError(f"sample(context, n) draws one output per context row: context has "
                                    f"{c.shape[0]} rows but n={n}")
        return c.to(self._param_device()), int(n)


class GaussianPolicy(Policy):
    """A diagonal Gaussian ``N(mu(x), diag(sigma(x)^2))`` over outputs of any shape.

    Unconditional: ``mu`` and ``log sigma`` are free parameters. Conditional (``num_classes`` or
    ``context_shape``): an MLP on the context embedding gives them; its last layer starts at zero, so the policy
    starts at ``N(mean, std^2)`` for every context.

    Args:
        output_shape: shape of one output.
        num_classes / context_shape: label or float contexts, as for :class:`pfm.PreferenceFlow`.
        mean, std: initial mean and standard deviation (scalars or tensors of ``output_shape``).
        learn_std: whether sigma is trained (False: fixed at ``std``).
        hidden, depth: the conditional MLP.
        min_std: floor on sigma, which keeps log-probs finite.
    """

    def __init__(
        self,
        output_shape: Sequence[int] | int,
        *,
        num_classes: Optional[int] = None,
        context_shape: Optional[Sequence[int]] = None,
        mean: float | Tensor = 0.0,
        std: float | Tensor = 1.0,
        learn_std: bool = True,
        hidden: int = 256,
        depth: int = 2,
        min_std: float = 1e-3,
    ) -> None:
        super().__init__()
        if isinstance(output_shape, int):
            output_shape = (output_shape,)
        self.output_shape = tuple(int(s) for s in output_shape)
        d = math.prod(self.output_shape)
        mean_t = torch.as_tensor(mean, dtype=torch.float32).expand(self.output_shape).reshape(d).clone()
        std_t = torch.as_tensor(std, dtype=torch.float32).expand(self.output_shape).reshape(d).clone()
        if not bool(torch.isfinite(mean_t).all()) or not bool((std_t > 0).all()):
            raise InvalidInputError("mean must be finite and std > 0")
        self.learn_std = bool(learn_std)
        self.min_std = float(min_std)
        self.context = ContextEmbedding(hidden, num_classes, context_shape)
        self.mean0 = nn.Parameter(mean_t)
        log_std = std_t.log()
        self.log_std0 = nn.Parameter(log_std) if self.learn_std else None
        if not self.learn_std:
            self.register_buffer("log_std_fixed", log_std)
        self.head: Optional[nn.Module] = None
        if self.context.conditional:
            layers: list[nn.Module] = [nn.SiLU()]
            for _ in range(max(depth - 1, 0)):
                layers += [nn.Linear(hidden, hidden), nn.SiLU()]
            out = nn.Linear(hidden, 2 * d if self.learn_std else d)
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
            self.head = nn.Sequential(*layers, out)

    def distribution(self, context: Optional[Tensor], n: int) -> tuple[Tensor, Tensor]:
        """Mean and std, each ``(n, d)`` with ``d`` the flattened output size."""
        d = self.mean0.numel()
        mu = self.mean0.expand(n, d)
        log_std = (self.log_std0 if self.learn_std else self.log_std_fixed).expand(n, d)
        if self.head is not None:
            h = self.head(self.context(context, n))
            mu = mu + h[:, :d]
            if self.learn_std:
                log_std = log_std + h[:, d:]
        return mu, log_std.exp().clamp_min(self.min_std)

    def sample(self, context: Optional[Tensor], n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        with torch.no_grad():
            return self.rsample(context, n, generator)

    def rsample(self, context: Optional[Tensor], n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """Like :meth:`sample`, reparameterized (``mu + std * eps``): gradients flow to the weights."""
        c, n = self._rows(context, n)
        mu, std = self.distribution(c, n)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return (mu + std * eps).reshape(n, *self.output_shape)

    def log_prob(self, y: Tensor, context: Optional[Tensor] = None) -> Tensor:
        c = as_context(context, "context")
        y = self._check_y(y, c)
        n = y.shape[0]
        mu, std = self.distribution(None if c is None else c.to(y.device), n)
        return diagonal_gaussian_log_prob(y.reshape(n, -1).to(mu.dtype), mu, std)


class GaussianMixturePolicy(Policy):
    """An unconditional mixture of K diagonal Gaussians over ``(d,)`` outputs; weights, means and stds trainable.

    Args:
        means: ``(K, d)`` component means.
        stds: ``(K, d)``, ``(K,)`` or a scalar: component standard deviations.
        weights: ``(K,)`` mixture weights (normalized here); uniform by default.
    """

    def __init__(self, means: Any, stds: Any = 1.0, weights: Any = None) -> None:
        super().__init__()
        means_t = V.as_float(means, "means").float()
        if means_t.dim() != 2 or means_t.shape[0] == 0:
            raise InvalidInputError(f"means must have shape (K, d), got {V.shape_of(means_t)}")
        K, d = means_t.shape
        stds_t = V.as_float(torch.as_tensor(stds) if isinstance(stds, (int, float)) else stds, "stds").float()
        if stds_t.dim() == 1:
            stds_t = stds_t[:, None]
        stds_t = stds_t.expand(K, d).clone()
        w = torch.full((K,), 1.0 / K) if weights is None else V.as_float(weights, "weights").float()
        if w.shape != (K,):
            raise InvalidInputError(f"weights must have shape ({K},), got {V.shape_of(w)}")
        for t, name in ((means_t, "means"), (stds_t, "stds"), (w, "weights")):
            V.check_finite(t, name)
        if not bool((stds_t > 0).all()) or not bool((w > 0).all()):
            raise InvalidInputError("stds and weights must be > 0")
        self.output_shape = (int(d),)
        self.logits = nn.Parameter((w / w.sum()).log())
        self.means = nn.Parameter(means_t.clone())
        self.log_stds = nn.Parameter(stds_t.log())

    def sample(self, context: Optional[Tensor], n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        if context is not None:
            raise InvalidInputError("GaussianMixturePolicy is unconditional: pass context=None")
        V.check_positive_int(n, "n")
        with torch.no_grad():
            probs = self.logits.softmax(0)
            k = torch.multinomial(probs, int(n), replacement=True, generator=generator)
            eps = torch.randn((int(n), self.output_shape[0]), generator=generator, device=probs.device)
            return self.means[k] + self.log_stds[k].exp() * eps

    def log_prob(self, y: Tensor, context: Optional[Tensor] = None) -> Tensor:
        if context is not None:
            raise InvalidInputError("GaussianMixturePolicy is unconditional: pass context=None")
        y = self._check_y(y, None)
        z = (y[:, None, :] - self.means[None]) / self.log_stds.exp()[None]     # (n, K, d)
        comp = -0.5 * (z.pow(2) + LOG_2PI).sum(2) - self.log_stds.sum(1)[None]  # (n, K)
        return torch.logsumexp(comp + self.logits.log_softmax(0)[None], dim=1)
