"""Vector-field networks ``v(t, y, context) -> (B, *shape)``.

Every field here, and any user ``nn.Module`` used with pfm, is called as ``field(t, y, context)`` with
``t: (B,)`` times in [0, 1], ``y: (B, *shape)`` and ``context`` either ``None``, labels ``(B,)`` (int64) or a
float tensor ``(B, *cshape)``. Built-in fields expose ``config()``, the JSON-able keyword arguments that rebuild them.
Their output layer starts at zero, so an untrained flow is the identity map.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import validate as V
from .config import TIME_MAX_FREQ, FieldConfig
from .errors import InvalidInputError

MAX_CLASSES = 1 << 20
"""The most class labels a label-conditional field embeds (an ``nn.Embedding`` of ``num_classes x dim`` weights):
a stray label such as 10^9 would otherwise size a table of hundreds of GB."""

MAX_PARAMETERS = 1 << 31
"""The most parameters a built-in field may have (8 GiB in float32): more is a mistyped size, refused before any
layer is built."""


def check_sizes(output_shape: Any, num_classes: Any, context_shape: Any) -> None:
    """The shapes every field takes: positive sizes, at most :data:`MAX_CLASSES` labels."""
    V.check_shape(output_shape, "output_shape", max_elements=1 << 31)
    V.check_int(num_classes, "num_classes", low=1, high=MAX_CLASSES, allow_none=True)
    V.check_shape(context_shape, "context_shape", allow_none=True, max_elements=1 << 31)


def _check_parameters(count: int, what: str) -> None:
    if count > MAX_PARAMETERS:
        raise InvalidInputError(f"{what} make a field of {count:,} parameters, more than the {MAX_PARAMETERS:,} "
                                "pfm builds; choose smaller sizes")


def _as_time(t: Tensor, batch: int, like: Tensor) -> Tensor:
    """Times as ``(B,)``; a scalar is broadcast (what an ODE solver passes)."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        return t.expand(batch)
    return t.reshape(batch)



class TimeEmbedding(nn.Module):
    """Sinusoidal features of t in [0, 1] at log-spaced frequencies (1 to ``max_freq`` rad), followed by an MLP."""

    def __init__(self, dim: int, max_freq: float = TIME_MAX_FREQ) -> None:
        super().__init__()
        V.check_int(dim, "time_dim", low=1, high=1 << 16)
        V.check_nonneg_float(max_freq, "time_max_freq")
        if not float(max_freq) >= 1.0:
            raise InvalidInputError(f"time_max_freq must be >= 1, got {max_freq!r}")
        half = max(dim // 2, 1)
        # made on the CPU, whatever the default device: on the meta device (a saved flow's shape check) linspace
        # goes through torch._compile and imports torch._dynamo, 0.9 s of a `pfm apply`
        freqs = torch.exp(torch.linspace(0.0, math.log(float(max_freq)), half, device="cpu"))
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:  # (B,) -> (B, dim)
        args = t[:, None] * self.freqs[None, :].to(device=t.device, dtype=t.dtype)
        return self.mlp(torch.cat([torch.sin(args), torch.cos(args)], dim=1))


class ContextEmbedding(nn.Module):
    """Labels -> ``nn.Embedding``; float contexts ``(B, *cshape)`` -> flattened, then a two-layer MLP."""

    def __init__(self, dim: int, num_classes: Optional[int] = None, context_shape: Optional[Sequence[int]] = None):
        super().__init__()
        if num_classes is not None and context_shape is not None:
            raise InvalidInputError("give num_classes (label contexts) or context_shape (vector contexts), not both")
        V.check_int(dim, "context_dim", low=1, high=1 << 16)
        V.check_int(num_classes, "num_classes", low=1, high=MAX_CLASSES, allow_none=True)
        V.check_shape(context_shape, "context_shape", allow_none=True, max_elements=1 << 31)
        self.num_classes = num_classes
        self.context_shape = tuple(context_shape) if context_shape is not None else None
        if num_classes is not None:
            self.net: nn.Module = nn.Embedding(int(num_classes), dim)
        elif self.context_shape is not None:
            d = math.prod(self.context_shape)
            self.net = nn.Sequential(nn.Linear(d, dim), nn.SiLU(), nn.Linear(dim, dim))
        else:
            self.net = nn.Identity()
        self.dim = dim if (num_classes is not None or context_shape is not None) else 0

    @property
    def conditional(self) -> bool:
        return self.dim > 0

    def forward(self, context: Optional[Tensor], batch: int) -> Optional[Tensor]:
        if not self.conditional:
            return None
        if context is None:
            raise InvalidInputError("this field is conditional: context is required")
        if self.num_classes is not None:
            if context.is_floating_point() or context.shape != (batch,):
                raise InvalidInputError(f"context must be int64 labels of shape ({batch},), got "
                                        f"{context.dtype} {tuple(context.shape)}")
            return self.net(context)
        if tuple(context.shape[1:]) != self.context_shape or context.shape[0] != batch:
            raise InvalidInputError(f"context must have shape ({batch}, {', '.join(map(str, self.context_shape))}), "
                                    f"got {tuple(context.shape)}")
        return self.net(context.reshape(batch, -1).to(self.net[0].weight.dtype))


class MLPField(nn.Module):
    """An MLP on the flattened output, the time embedding and the context embedding; any output shape.

    Args:
        output_shape: shape of one output, e.g. ``(2,)`` or ``(1, 28, 28)``.
        num_classes: number of labels for label contexts; or
        context_shape: shape of one float context.
        hidden, depth: width and number of hidden layers.
        time_dim, context_dim: embedding widths.
        time_max_freq: highest frequency of the time features (see :data:`TIME_MAX_FREQ`).
    """

    def __init__(
        self,
        output_shape: Sequence[int],
        num_classes: Optional[int] = None,
        context_shape: Optional[Sequence[int]] = None,
        hidden: int = FieldConfig.hidden,
        depth: int = FieldConfig.depth,
        time_dim: int = FieldConfig.time_dim,
        context_dim: int = FieldConfig.context_dim,
        time_max_freq: float = FieldConfig.time_max_freq,
    ) -> None:
        super().__init__()
        check_sizes(output_shape, num_classes, context_shape)
        V.check_nonneg_float(time_max_freq, "time_max_freq")
        V.check_int(hidden, "hidden", low=1, high=1 << 20)
        V.check_int(depth, "depth", low=0, high=1024)
        V.check_int(time_dim, "time_dim", low=1, high=1 << 16)
        V.check_int(context_dim, "context_dim", low=1, high=1 << 16)
        d_in = math.prod(output_shape)
        c_in = (num_classes or 0) + (math.prod(context_shape) if context_shape is not None else 0)
        width_in = d_in + time_dim + (context_dim if c_in else 0)
        _check_parameters((width_in + 1) * hidden * (depth > 0) + max(depth - 1, 0) * (hidden + 1) * hidden
                          + ((hidden if depth else width_in) + 1) * d_in + c_in * context_dim + 4 * time_dim ** 2,
                          f"hidden={hidden}, depth={depth} and output_shape={list(output_shape)}")
        self.output_shape = tuple(int(s) for s in output_shape)
        self._config = dict(output_shape=list(self.output_shape), num_classes=num_classes,
                            context_shape=None if context_shape is None else list(context_shape),
                            hidden=hidden, depth=depth, time_dim=time_dim, context_dim=context_dim,
                            time_max_freq=float(time_max_freq))
        d = math.prod(self.output_shape)
        self.time = TimeEmbedding(time_dim, time_max_freq)
        self.context = ContextEmbedding(context_dim, num_classes, context_shape)
        layers: list[nn.Module] = []
        width = d + time_dim + self.context.dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        out = nn.Linear(width, d)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out)

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def forward(self, t: Tensor, y: Tensor, context: Optional[Tensor] = None) -> Tensor:
        B = y.shape[0]
        parts = [y.reshape(B, -1), self.time(_as_time(t, B, y))]
        c = self.context(context, B)
        if c is not None:
            parts.append(c.to(y.dtype))
        return self.net(torch.cat(parts, dim=1)).reshape(y.shape)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, c_out)
        self.norm2 = nn.GroupNorm(min(8, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(e)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class UNetField(nn.Module):
    """A small UNet for images ``(C, H, W)``: residual blocks, one level per entry of ``channels``, with the time
    and context embeddings added in every block. H and W need not be powers of two (inputs are padded).
    """

    def __init__(
        self,
        output_shape: Sequence[int],
        num_classes: Optional[int] = None,
        context_shape: Optional[Sequence[int]] = None,
        channels: Sequence[int] = FieldConfig.channels,
        emb_dim: int = FieldConfig.emb_dim,
        time_max_freq: float = FieldConfig.time_max_freq,
    ) -> None:
        super().__init__()
        check_sizes(output_shape, num_classes, context_shape)
        self.output_shape = tuple(int(s) for s in output_shape)
        if len(self.output_shape) != 3:
            raise InvalidInputError(f"UNetField needs output_shape (C, H, W), got {self.output_shape}")
        V.check_shape(channels, "channels")
        if len(channels) > 8 or max(channels) > 1 << 14:
            raise InvalidInputError(f"channels must list at most 8 widths of at most {1 << 14}, got {list(channels)}")
        V.check_int(emb_dim, "emb_dim", low=1, high=1 << 16)
        V.check_nonneg_float(time_max_freq, "time_max_freq")
        channels = [int(c) for c in channels]
        _check_parameters(sum(40 * c * c + 8 * c * emb_dim for c in channels) + (num_classes or 0) * emb_dim,
                          f"channels={channels} and emb_dim={emb_dim}")
        self._config = dict(output_shape=list(self.output_shape), num_classes=num_classes,
                            context_shape=None if context_shape is None else list(context_shape),
                            channels=channels, emb_dim=emb_dim, time_max_freq=float(time_max_freq))
        C = self.output_shape[0]
        self.time = TimeEmbedding(emb_dim, time_max_freq)
        self.context = ContextEmbedding(emb_dim, num_classes, context_shape)
        self.inp = nn.Conv2d(C, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        for i, ch in enumerate(channels):
            prev = channels[max(i - 1, 0)]
            self.down.append(_ResBlock(prev, ch, emb_dim))
            if i < len(channels) - 1:
                self.pool.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = _ResBlock(channels[-1], channels[-1], emb_dim)
        self.up = nn.ModuleList()
        for i in reversed(range(len(channels))):
            nxt = channels[max(i - 1, 0)]
            self.up.append(_ResBlock(channels[i] * 2, nxt, emb_dim))
        self.out_norm = nn.GroupNorm(min(8, channels[0]), channels[0])
        self.out = nn.Conv2d(channels[0], C, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self._mult = 2 ** (len(channels) - 1)

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def forward(self, t: Tensor, y: Tensor, context: Optional[Tensor] = None) -> Tensor:
        B, _, H, W = y.shape
        e = self.time(_as_time(t, B, y))
        c = self.context(context, B)
        if c is not None:
            e = e + c.to(e.dtype)
        ph, pw = (-H) % self._mult, (-W) % self._mult
        x = F.pad(y, (0, pw, 0, ph)) if ph or pw else y
        h = self.inp(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, e)
            skips.append(h)
            if i < len(self.pool):
                h = self.pool[i](h)
        h = self.mid(h, e)
        for block in self.up:
            s = skips.pop()
            if h.shape[-2:] != s.shape[-2:]:
                h = F.interpolate(h, size=s.shape[-2:], mode="nearest")
            h = block(torch.cat([h, s], dim=1), e)
        h = self.out(F.silu(self.out_norm(h)))
        return h[:, :, :H, :W]


FIELDS: dict[str, type[nn.Module]] = {"mlp": MLPField, "unet": UNetField}
