"""PreferenceFlow: a vector field that carries rejected outputs onto preferred ones, with fit, transform, iterate,
save and load.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .. import validate as V
from ..config import FieldConfig, FitConfig, SolverConfig, check_solver, merge, renamed, solver_options
from ..data import PreferenceDataset, as_context
from ..errors import InvalidInputError, InvalidTypeError, NonFiniteOutputError
from ..fields import FIELDS, MAX_CLASSES, check_sizes
from .fit import fit_flow
from .files import (CONFIG_NAME, FORMAT, FORMAT_VERSION, WEIGHT_DTYPES, WEIGHTS_NAME,  # noqa: F401
                         flow_config, load_flow, read_config, read_weights_header, save_flow)
from .normalization import context_statistics, output_statistics
from ..solve import solve, strength_spans
from ..train import History
from ..train.threads import TunedCalls

log = logging.getLogger("pfm")

class PreferenceFlow(nn.Module):
    """A flow ``y -> y(1)`` of ``dy/dt = v(t, y, context)`` trained to move rejected outputs onto preferred ones.

    Args:
        output_shape: shape of one output, e.g. ``(2,)`` or ``(1, 28, 28)``.
        num_classes: number of class labels, for label contexts ``(N,)``.
        context_shape: shape of one float context, for contexts ``(N, *context_shape)``.
        field: ``"mlp"``, ``"unet"`` (images ``(C, H, W)``), a :class:`pfm.config.FieldConfig` (the network and
            its sizes), or any ``nn.Module`` called as ``field(t, y, context)`` with ``t: (B,)``.
        **field_kwargs: settings of the built-in field, :class:`~pfm.config.FieldConfig`'s names (e.g.
            ``hidden=512, depth=4``; they override a ``FieldConfig``'s).

    The field works in normalized units: ``fit(normalize=True)`` stores the outputs' per-feature mean and one
    overall scale (which keeps the geometry, and so the OT pairing, of the data) and the float contexts' per-feature
    mean and scale; ``forward`` and ``transform`` take and return data in the user's units.
    """

    def __init__(
        self,
        output_shape: Sequence[int],
        *,
        num_classes: Optional[int] = None,
        context_shape: Optional[Sequence[int]] = None,
        field: str | nn.Module = "mlp",
        **field_kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(output_shape, (int, np.integer)) and not isinstance(output_shape, bool):
            output_shape = (output_shape,)
        check_sizes(output_shape, num_classes, context_shape)
        self.output_shape = tuple(int(s) for s in output_shape)
        if num_classes is not None and context_shape is not None:
            raise InvalidInputError("give num_classes (label contexts) or context_shape (float contexts), not both")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.context_shape = None if context_shape is None else tuple(int(s) for s in context_shape)
        if isinstance(field, (str, FieldConfig)):
            cfg = field_config(field, field_kwargs)
            self.field_type = cfg.type
            self.field = FIELDS[cfg.type](self.output_shape, num_classes=self.num_classes,
                                          context_shape=self.context_shape, **cfg.kwargs())
        elif isinstance(field, nn.Module):
            if field_kwargs:
                raise InvalidInputError(f"field_kwargs {sorted(field_kwargs)} apply to built-in fields only")
            self.field_type = "custom"
            self.field = field
        else:
            raise InvalidTypeError(f"field must be 'mlp', 'unet', a FieldConfig or an nn.Module, got "
                                   f"{type(field).__name__}")
        self.register_buffer("y_shift", torch.zeros(self.output_shape))
        self.register_buffer("y_scale", torch.ones(()))
        cshape = self.context_shape or (1,)
        self.register_buffer("c_shift", torch.zeros(cshape))
        self.register_buffer("c_scale", torch.ones(cshape))
        self.solver: dict[str, Any] = SolverConfig().to_dict()  # method, steps, atol, rtol

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def for_dataset(cls, dataset: PreferenceDataset, field: str | nn.Module = "mlp", **field_kwargs: Any):
        """A flow whose output and context shapes are those of ``dataset``."""
        if not isinstance(dataset, PreferenceDataset):
            raise InvalidTypeError(f"dataset must be a PreferenceDataset, got {type(dataset).__name__}")
        if dataset.num_classes is not None and dataset.num_classes > MAX_CLASSES:
            raise InvalidInputError(f"the contexts' largest label is {dataset.num_classes - 1:,}, which would make "
                                    f"num_classes={dataset.num_classes:,}, beyond the {MAX_CLASSES:,} a flow embeds; "
                                    "number the labels 0..K-1")
        return cls(dataset.output_shape, num_classes=dataset.num_classes, context_shape=dataset.context_shape,
                   field=field, **field_kwargs)

    @property
    def context_kind(self) -> Optional[str]:
        if self.num_classes is not None:
            return "label"
        return "vector" if self.context_shape is not None else None

    @property
    def device(self) -> torch.device:
        return self.y_scale.device

    # ------------------------------------------------------------------------------------------ normalization
    def _norm_y(self, y: Tensor) -> Tensor:
        return (y - self.y_shift.to(y.dtype)) / self.y_scale.to(y.dtype)

    def _denorm_y(self, z: Tensor) -> Tensor:
        return z * self.y_scale.to(z.dtype) + self.y_shift.to(z.dtype)

    def _field_context(self, c: Optional[Tensor]) -> Optional[Tensor]:
        """Contexts as the field takes them: on the flow's device, float ones normalized in the flow's dtype."""
        if c is None:
            return None
        c = self._norm_c(c.to(self.device))
        return c.to(self.y_shift.dtype) if c.is_floating_point() else c

    def _norm_c(self, c: Optional[Tensor]) -> Optional[Tensor]:
        if c is None or not c.is_floating_point():
            return c
        return (c - self.c_shift.to(c.dtype)) / self.c_scale.to(c.dtype)

    @torch.no_grad()
    def _set_normalization(self, ds: PreferenceDataset) -> None:
        shift, scale = output_statistics(ds)
        self.y_shift.copy_(shift.to(self.y_shift))
        self.y_scale.copy_(scale.clamp_min(1e-8).to(self.y_scale))
        if ds.context_kind == "vector":
            shift, scale = context_statistics(ds.context)
            self.c_shift.copy_(shift.to(self.c_shift))
            self.c_scale.copy_(scale.to(self.c_scale))

    def forward(self, t: Tensor, y: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """The velocity ``dy/dt`` at ``(t, y)`` in data units; ``t: (B,)``, ``y: (B, *output_shape)``."""
        return self.field(t, self._norm_y(y), self._norm_c(context)) * self.y_scale.to(y.dtype)

    # ------------------------------------------------------------------------------------------ training
    def _check_dataset(self, ds: Any) -> PreferenceDataset:
        if not isinstance(ds, PreferenceDataset):
            raise InvalidTypeError(f"dataset must be a PreferenceDataset, got {type(ds).__name__}")
        if ds.output_shape != self.output_shape:
            raise InvalidInputError(f"dataset outputs have shape {ds.output_shape}, this flow's are "
                                    f"{self.output_shape}")
        if ds.context_kind != self.context_kind:
            raise InvalidInputError(f"dataset has context {ds.context_kind or 'none'}, this flow expects "
                                    f"{self.context_kind or 'none'}")
        if ds.context_kind == "label" and ds.num_classes > self.num_classes:
            raise InvalidInputError(f"dataset has label {ds.num_classes - 1}, this flow has num_classes="
                                    f"{self.num_classes}")
        if ds.context_kind == "vector" and ds.context_shape != self.context_shape:
            raise InvalidInputError(f"dataset contexts have shape {ds.context_shape}, this flow's are "
                                    f"{self.context_shape}")
        return ds

    def fit(self, dataset: PreferenceDataset, config: Optional[FitConfig] = None, *,
            validation: Optional[PreferenceDataset] = None, **overrides: Any) -> History:
        """Train the field by conditional flow matching from the rejected to the preferred outputs.

        Args:
            dataset: the preference triples.
            config: a :class:`pfm.FitConfig` (default ``FitConfig()``): the length of training (default 2,000
                steps), the optimizer, the coupling (exact minibatch OT within each context by default), the path's
                ``sigma``, normalization, checkpoints, precision, threads; each setting is documented there.
            validation: held-out pairs. Every ``validate_every`` steps (default: 20 times a run) the flow-matching
                loss on them is measured (coupled once, as in training, with fixed times and noise, so the values
                are comparable), the flow ends with the weights of the lowest one, and with ``patience`` training
                stops after that many evaluations without improvement. ``history.validation`` holds the curve and
                ``history.extras["validation_zero_field"]`` the held-out loss of the zero field ``v = 0`` (a field
                above it predicts the held-out displacement worse than not moving). Small data sets overfit fast.
            **overrides: any field of :class:`pfm.FitConfig` by name, applied to ``config``
                (``flow.fit(ds, steps=500, lr=3e-4)``).

        Under ``torch.distributed`` (``torchrun``), each rank trains on its own part of every epoch and couples its
        own minibatch of ``batch_size`` pairs (exact OT within it): the optimizer step sees ``world_size *
        batch_size`` pairs, but OT pairs only within each rank's share. See :func:`pfm.optimize`.

        Returns:
            :class:`pfm.train.History` with the loss of every step.
        """
        return fit_flow(self, dataset, merge(config, overrides, FitConfig, "fit"), validation)

    # ------------------------------------------------------------------------------------------ inference
    def _prepare_context(self, context: Any, n: int) -> Optional[Tensor]:
        if self.context_kind is None:
            if context is not None:
                raise InvalidInputError("this flow is unconditional; context must be None")
            return None
        if context is None:
            raise InvalidInputError(f"this flow is conditional ({self.context_kind} contexts): context is required")
        if self.context_kind == "label" and isinstance(context, (int, np.integer)) and not isinstance(context, bool):
            context = torch.tensor(int(context))  # broadcast below, like a 0-dim tensor
        c = V.as_tensor(context, "context")
        if self.context_kind == "vector" and tuple(c.shape) == self.context_shape:
            c = c.unsqueeze(0).expand(n, *self.context_shape)  # one context for every row
        if self.context_kind == "label" and c.dim() == 0:
            c = c.reshape(1).expand(n)
        c = as_context(c, "context", n=n)
        if self.context_kind == "label":
            if c.is_floating_point():
                raise InvalidTypeError("this flow takes integer class labels as context, got a float tensor")
            if int(c.max()) >= self.num_classes:
                raise InvalidInputError(f"context holds label {int(c.max())}, but num_classes={self.num_classes}")
        else:
            if not c.is_floating_point():
                c = c.float()
            V.check_trailing_shape(c, "context", self.context_shape, "flow's contexts")
        return c

    def _check_range(self, t: Tensor, name: str, hint: str = "") -> None:
        """Refuse values that the flow's dtype cannot hold (they would turn into inf, then NaN, silently)."""
        limit, top = torch.finfo(self.y_shift.dtype).max, V.abs_max(t)
        if top > limit:
            raise InvalidInputError(f"{name} holds values up to {top:.3g}, beyond the range of this flow's "
                                    f"{str(self.y_shift.dtype).replace('torch.', '')} ({limit:.3g}){hint}")

    def _call_tuners(self) -> dict:
        """The thread tuners of this flow's solves, by size (:class:`pfm.train.threads.TunedCalls`): kept with the
        flow, not saved, so that its next solve of the same size goes on from the count measured before."""
        tuners = self.__dict__.get("_solve_tuners")
        if tuners is None:
            tuners = self.__dict__["_solve_tuners"] = {}
        return tuners

    @torch.no_grad()
    def _check_field(self, y: Tensor, c: Optional[Tensor]) -> None:
        """Call a custom field once on one row: it must return a velocity shaped like ``y`` (one that does not
        would be broadcast into a wrong answer). Built-in fields are right by construction and are not called."""
        if self.field_type != "custom":
            return
        t = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        try:
            v = self.field(t, y, c)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise InvalidInputError(f"the custom field failed when called as field(t, y, context) with t {V.shape_of(t)}, "
                                    f"y {V.shape_of(y)}: {type(exc).__name__}: {exc}") from None
        if not isinstance(v, Tensor) or v.shape != y.shape:
            got = V.shape_of(v) if isinstance(v, Tensor) else type(v).__name__
            raise InvalidInputError(f"the field returned {got} for y of shape {V.shape_of(y)}; field(t, y, context) "
                                    "must return a velocity shaped like y")

    def check_outputs(self, y: Any, name: str = "y") -> Tensor:
        """``y`` as a float tensor ``(N, *output_shape)``, checked: shape, rows, finite, within the flow's dtype."""
        y_t = V.as_float(y, name)
        V.check_min_dim(y_t, name, 1 + len(self.output_shape),
                        "(N, " + ", ".join(map(str, self.output_shape)) + ")")
        V.check_trailing_shape(y_t, name, self.output_shape, "flow's outputs")
        V.check_nonempty(y_t, name)
        V.check_finite(y_t, name)
        self._check_range(y_t, name)
        return y_t

    @torch.no_grad()
    def transform(
        self,
        y: Any,
        context: Any = None,
        *,
        solver: Optional[SolverConfig] = None,
        method: Optional[str] = None,
        solver_steps: Optional[int] = None,
        atol: Optional[float] = None,
        rtol: Optional[float] = None,
        batch_size: int = 8192,
        return_trajectory: bool = False,
        strength: float = 1.0,
        steps: Optional[int] = None,
    ) -> Any:
        """Push outputs ``y`` ``(N, *output_shape)`` through the flow from t = 0 to 1 (or to ``strength``).

        Args:
            y: tensor or NumPy array; the result has its shape, dtype and device (or is an array).
            context: labels ``(N,)`` or a single label; float contexts ``(N, *context_shape)`` or one context.
            solver: a :class:`pfm.SolverConfig` to solve with instead of the flow's own (``self.solver``, the
                config as a dict, saved with the flow); see :func:`pfm.solve`.
            method, solver_steps, atol, rtol: single settings over those (``solver_steps`` is
                ``SolverConfig.steps``; ``steps`` is its old name, deprecated).
            batch_size: rows solved at once.
            return_trajectory: return ``(solver_steps + 1, N, *output_shape)`` states instead of the end points.
            strength: how far to move, a dial for how far to align: the field is integrated from t = 0 to
                ``strength`` when it is in [0, 1] (part of the way; 0 returns ``y`` unchanged, 1 is the default),
                and above 1 the flow is applied ``floor(strength)`` whole times, then once more up to the fraction
                left (``strength=2`` is ``iterate(y, iterations=2)``). A partial solve takes as many solver steps
                as a whole one.
        """
        as_numpy = isinstance(y, np.ndarray)
        y_t = self.check_outputs(y)
        V.check_positive_int(batch_size, "batch_size")
        spans = strength_spans(strength)
        if return_trajectory and spans != [1.0]:
            raise InvalidInputError("return_trajectory=True needs strength=1 (one whole application)")
        if not spans:  # strength 0: nothing moves (the context is still checked)
            self._prepare_context(context, y_t.shape[0])
            return y.copy() if as_numpy else y_t.clone()
        c = self._prepare_context(context, y_t.shape[0])
        given = {"solver": solver, "method": method, "solver_steps": solver_steps, "atol": atol, "rtol": rtol,
                 "steps": steps}
        opts = check_solver({**self.solver, **solver_options("transform", given)}, "solver")
        if not isinstance(return_trajectory, bool):
            raise InvalidTypeError(f"return_trajectory must be True or False, got {return_trajectory!r}")
        dev, dtype = self.device, self.y_shift.dtype
        was_training = self.training
        self.eval()
        n = y_t.shape[0]
        self._check_field(self._norm_y(y_t[:1].to(dev, dtype)), None if c is None else self._field_context(c[:1]))
        shape = ((int(opts["steps"]) + 1,) if return_trajectory else ()) + (n, *self.output_shape)
        res = None  # written batch by batch: no list of pieces to concatenate, so memory stays flat in n
        with TunedCalls(self.field, min(n, batch_size), dev, self._call_tuners()) as calls:  # pfm.train.threads
            field = calls.wrap(self.field)
            for s in range(0, n, batch_size):
                z = self._norm_y(y_t[s:s + batch_size].to(dev, dtype))
                cb = None if c is None else self._field_context(c[s:s + batch_size])
                for end in spans:  # one whole application is spans == [1.0]
                    z = solve(field, z, cb, t_span=(0.0, end), return_trajectory=return_trajectory, **opts)
                z = self._denorm_y(z)
                if res is None:
                    res = torch.empty(shape, dtype=z.dtype, device=z.device)
                if return_trajectory:
                    res[:, s:s + z.shape[1]] = z
                else:
                    res[s:s + z.shape[0]] = z
        self.train(was_training)
        bad = sum(int((~torch.isfinite(part)).sum()) for part in V.row_chunks(res))
        if bad:
            raise NonFiniteOutputError(f"the flow's outputs hold {bad} NaN or infinite value(s): the solve diverged "
                                       "(try a smaller step: more steps or an adaptive method) or the field is broken")
        if as_numpy:
            return res.cpu().numpy().astype(y.dtype if y.dtype.kind == "f" else np.float32, copy=False)
        return res.to(device=y_t.device, dtype=y_t.dtype)

    @torch.no_grad()
    def divergence_pass(self, y: Tensor, context: Any = None, *, inverse: bool = False, divergence: str = "auto",
                        probes: int = 8, generator: Optional[torch.Generator] = None, end: float = 1.0,
                        **solver: Any) -> tuple[Tensor, Tensor, Tensor]:
        """Solve the flow from ``y`` ``(B, *output_shape)`` (t: 0 -> end, or end -> 0 when ``inverse``) with the
        integral of its divergence over t in [0, end]: ``(end points, integral (B,), standard error (B,))``; see
        :func:`pfm.likelihood.divergence_integral`. The divergence is the same in data and normalized units (the
        normalization is one shift and one scale), so it is integrated on the normalized field."""
        from ..likelihood import flow_divergence_pass

        return flow_divergence_pass(self, y, context, inverse=inverse, divergence=divergence, probes=probes,
                                    generator=generator, end=end, solver=solver_options("divergence_pass", solver))

    def log_prob(self, y: Any, context: Any = None, *, reference: Any, iterations: Optional[int] = None,
                 k: Optional[int] = None, **options: Any) -> Tensor:
        """Log-density ``(N,)`` of this flow's outputs (applied ``iterations`` times) at the aligned outputs ``y``,
        given the reference's ``log_prob``: ``y`` is solved back to t = 0 and scored there by the change of
        variables. Options (``divergence``, ``probes``, ``method``, ``solver_steps``, ...) go to
        :func:`pfm.likelihood.log_prob`. ``k`` is the old name of ``iterations`` (deprecated)."""
        from ..likelihood import log_prob

        iterations = renamed("log_prob", "iterations", iterations, "k", k)
        return log_prob(self, y, context, reference=reference, given="output", iterations=iterations,
                        **options).log_prob

    def iterate(self, y: Any, context: Any = None, iterations: Optional[int] = None, *, k: Optional[int] = None,
                **solver: Any) -> Any:
        """Apply the flow ``iterations`` times (default 2; "PFM x k"): ``transform(transform(...y...))``. Keyword arguments go
        to :meth:`transform` (``solver=SolverConfig(...)``, ``solver_steps=8``, ...). This re-applies one trained flow; re-collecting preferences and training a new flow
        each round is the paper's iterative method (:func:`pfm.iterative_pfm`), a different thing. ``k`` is the
        old name of ``iterations`` (deprecated)."""
        iterations = renamed("iterate", "iterations", iterations, "k", k)
        iterations = 2 if iterations is None else iterations
        V.check_positive_int(iterations, "iterations")
        for _ in range(iterations):
            y = self.transform(y, context, **solver)
        return y

    # ------------------------------------------------------------------------------------------ files
    def config(self) -> dict[str, Any]:
        """What ``config.json`` holds: the format, the shapes, the field's type and sizes, the solver, the dtype
        (:func:`pfm.flow.files.flow_config`, beside the reader of the file)."""
        return flow_config(self)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``weights.safetensors`` into ``directory``, replaced atomically: a crash at any
        moment leaves the old flow or the new one there (see :func:`pfm.io.atomic_dir`)."""
        return save_flow(self, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, field: Optional[nn.Module] = None,
             device: torch.device | str = "cpu") -> "PreferenceFlow":
        """Rebuild a flow saved by :meth:`save`. A custom field's module must be passed as ``field``.

        Nothing is trusted before it is checked: every setting of ``config.json`` is validated by type and range,
        the weights' shapes (read from the safetensors header) are compared with those the config builds (on the
        ``meta`` device, which allocates nothing) before any memory is taken, and weights or buffers that are NaN
        or infinite, or a zero scale, are refused."""
        return load_flow(cls, directory, field=field, device=device)


def field_config(field: "str | FieldConfig", overrides: dict[str, Any]) -> FieldConfig:
    """The :class:`FieldConfig` of ``field`` (a type name or a config) with ``overrides``, each checked; a setting
    of the other network is refused, naming the network it belongs to."""
    base = field if isinstance(field, FieldConfig) else FieldConfig(type=field)
    if "type" in overrides:
        raise InvalidInputError("give the network as field=..., not as a field setting 'type'")
    cfg = merge(base, overrides, FieldConfig, "the field")
    other = [k for k in overrides if k not in FieldConfig.settings_of(cfg.type)]
    if other:
        raise InvalidInputError(f"{other[0]} is a setting of the "
                                f"{FieldConfig.__dataclass_fields__[other[0]].metadata['applies']} field, not of "
                                f"the {cfg.type} field (it takes {', '.join(FieldConfig.settings_of(cfg.type))})")
    return cfg
