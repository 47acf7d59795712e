"""A Bradley-Terry reward model ``r_phi(y, x)`` learned from preference pairs: RLHF's first stage.

Trained by the logistic loss ``-log sigmoid(r(y+) - r(y-))`` on the same :class:`~pfm.PreferenceDataset` a flow
uses; ``accuracy`` reports how often it ranks held-out pairs the way the annotator did.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import validate as V
from ..data import PreferenceDataset, as_context
from ..errors import InvalidInputError, InvalidTypeError
from ..fields import ContextEmbedding
from ..config import merge
from ..train import History, optimize
from .config import RewardConfig


def _check_dataset(dataset: Any) -> PreferenceDataset:
    if not isinstance(dataset, PreferenceDataset):
        raise InvalidTypeError(f"dataset must be a PreferenceDataset, got {type(dataset).__name__}")
    return dataset


class RewardModel(nn.Module):
    """An MLP ``r(y, x) -> (n,)`` on the flattened output (or an encoder's features of it) and the context embedding.

    Inputs are standardized with the statistics of the data it is fitted on (stored as buffers, so a loaded
    model scores raw outputs): per coordinate for the MLP, by one mean and std over all coordinates when an
    ``encoder`` is given (so an image stays an image: a per-pixel scale would blow up near-constant pixels).

    Args:
        output_shape: shape of one output.
        num_classes / context_shape: label or float contexts.
        hidden, depth: the MLP (the head, with an encoder).
        encoder: optional module mapping standardized outputs ``(n, *output_shape)`` to features ``(n, F)``, e.g.
            a CNN for images; its feature size is found by one forward pass at construction.
    """

    def __init__(
        self,
        output_shape: Sequence[int] | int,
        *,
        num_classes: Optional[int] = None,
        context_shape: Optional[Sequence[int]] = None,
        hidden: int = 128,
        depth: int = 2,
        context_dim: int = 32,
        encoder: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        if isinstance(output_shape, int):
            output_shape = (output_shape,)
        self.output_shape = tuple(int(s) for s in output_shape)
        V.check_positive_int(hidden, "hidden")
        V.check_positive_int(depth, "depth")
        d = features = math.prod(self.output_shape)
        self.context = ContextEmbedding(context_dim, num_classes, context_shape)
        self.encoder = encoder
        if encoder is not None:
            if not isinstance(encoder, nn.Module):
                raise InvalidTypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}")
            with torch.no_grad():
                was = encoder.training
                probe = encoder.eval()(torch.zeros(2, *self.output_shape))
                encoder.train(was)
            if probe.dim() != 2 or probe.shape[0] != 2:
                raise InvalidInputError(f"encoder must map (n, *{self.output_shape}) to features (n, F), got "
                                        f"{tuple(probe.shape)} for n = 2")
            features = probe.shape[1]
        layers: list[nn.Module] = []
        width = features + self.context.dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.register_buffer("y_shift", torch.zeros(d))
        self.register_buffer("y_scale", torch.ones(d))
        cd = math.prod(context_shape) if context_shape is not None else 1
        self.register_buffer("c_shift", torch.zeros(cd))
        self.register_buffer("c_scale", torch.ones(cd))

    @classmethod
    def for_dataset(cls, dataset: PreferenceDataset, **kwargs: Any) -> "RewardModel":
        ds = _check_dataset(dataset)
        return cls(ds.output_shape, num_classes=ds.num_classes, context_shape=ds.context_shape, **kwargs)

    def forward(self, y: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """Rewards ``(n,)`` of outputs ``y: (n, *output_shape)``."""
        n = y.shape[0]
        z = (y.reshape(n, -1) - self.y_shift) / self.y_scale
        parts = [z if self.encoder is None else self.encoder(z.reshape(y.shape))]
        if self.context.conditional:
            c = context
            if c is not None and c.is_floating_point():
                c = ((c.reshape(n, -1) - self.c_shift) / self.c_scale).reshape(c.shape)
            parts.append(self.context(c, n))
        return self.net(torch.cat(parts, dim=1)).squeeze(1)

    @torch.no_grad()
    def _set_normalization(self, ds: PreferenceDataset) -> None:
        ys = torch.cat([ds.chosen, ds.rejected]).reshape(2 * len(ds), -1).double()
        if self.encoder is not None:  # one scale for every coordinate
            ys = ys.reshape(-1, 1)
        self.y_shift.copy_(ys.mean(0).expand_as(self.y_shift).to(self.y_shift))
        self.y_scale.copy_(ys.std(0, unbiased=False).clamp_min(1e-6).expand_as(self.y_scale).to(self.y_scale))
        if ds.context_kind == "vector":
            c = ds.context.reshape(len(ds), -1).double()
            self.c_shift.copy_(c.mean(0).to(self.c_shift))
            self.c_scale.copy_(c.std(0, unbiased=False).clamp_min(1e-6).to(self.c_scale))

    def _check_shapes(self, ds: PreferenceDataset) -> None:
        if ds.output_shape != self.output_shape:
            raise InvalidInputError(f"dataset outputs have shape {ds.output_shape}; this reward model takes "
                                    f"{self.output_shape}")
        if self.context.conditional and ds.context is None:
            raise InvalidInputError("this reward model is conditional but the dataset has no context")

    def fit(self, dataset: PreferenceDataset, config: Optional[RewardConfig] = None, **overrides: Any) -> History:
        """Fit by the Bradley-Terry logistic loss on ``r(y+) - r(y-)``, with a :class:`pfm.baselines.RewardConfig`
        (default ``RewardConfig()``: 2,000 steps of 256 pairs, weight decay 1e-4, no clipping) and ``overrides``
        (its field names: ``steps=500, seed=1``, ...)."""
        cfg = merge(config, overrides, RewardConfig, "RewardModel.fit")
        ds = _check_dataset(dataset)
        self._check_shapes(ds)
        n = len(ds)
        device = torch.device(cfg.device) if cfg.device is not None else self.y_shift.device
        self.to(device)
        self._set_normalization(ds)
        ds = ds.to(device)

        def loss_fn(index: Tensor, gen: torch.Generator):
            c = None if ds.context is None else ds.context[index]
            margin = self(ds.chosen[index], c) - self(ds.rejected[index], c)
            return -F.logsigmoid(margin).mean(), {"acc": (margin > 0).float().mean()}

        # the model alone and a log-sigmoid of one margin per pair (a batch, never split inside a vector)
        return optimize(self, loss_fn, n, cfg, device=device, desc="reward model", invariant_loss=True)

    @torch.no_grad()
    def accuracy(self, dataset: PreferenceDataset, batch_size: int = 8192) -> float:
        """Fraction of pairs with ``r(y+) > r(y-)`` (ties count half)."""
        ds = _check_dataset(dataset)
        self._check_shapes(ds)
        was = self.training
        self.eval()
        total = 0.0
        dev = self.y_shift.device
        for s in range(0, len(ds), batch_size):
            c = None if ds.context is None else ds.context[s:s + batch_size].to(dev)
            m = self(ds.chosen[s:s + batch_size].to(dev), c) - self(ds.rejected[s:s + batch_size].to(dev), c)
            total += float((m > 0).float().sum() + 0.5 * (m == 0).float().sum())
        self.train(was)
        return total / len(ds)

    @torch.no_grad()
    def score(self, y: Any, context: Any = None) -> Tensor:
        """Rewards of raw outputs (validated, no gradient): usable as an annotator ``score(y, context)``."""
        y = V.as_float(y, "y")
        V.check_trailing_shape(y, "y", self.output_shape, "reward model's outputs")
        V.check_finite(y, "y")
        c = as_context(context, "context", n=y.shape[0])
        dev = self.y_shift.device
        return self(y.to(dev), None if c is None else c.to(dev))
