"""PreferenceFlow: a vector field that carries rejected outputs onto preferred ones, with fit, transform, iterate,
save and load.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import _validate as V
from ._io import atomic_dir, check_output, read_json, recover_dir
from .coupling import COUPLINGS, couple
from .data import PreferenceDataset, as_context
from .errors import FlowFileError, InvalidInputError, InvalidTypeError, MissingFileError, NonFiniteOutputError
from .fields import FIELDS, MAX_CLASSES, check_sizes
from .pairing import PairingPlan
from .path import flow_matching_loss
from .solve import check_solver, solve
from .train import History, optimize, resolve_steps

log = logging.getLogger("pfm")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"
FORMAT = "pfm.PreferenceFlow"
FORMAT_VERSION = 1


class PreferenceFlow(nn.Module):
    """A flow ``y -> y(1)`` of ``dy/dt = v(t, y, context)`` trained to move rejected outputs onto preferred ones.

    Args:
        output_shape: shape of one output, e.g. ``(2,)`` or ``(1, 28, 28)``.
        num_classes: number of class labels, for label contexts ``(N,)``.
        context_shape: shape of one float context, for contexts ``(N, *context_shape)``.
        field: ``"mlp"``, ``"unet"`` (images ``(C, H, W)``), or any ``nn.Module`` called as
            ``field(t, y, context)`` with ``t: (B,)``.
        **field_kwargs: passed to the built-in field (e.g. ``hidden=256, depth=3``).

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
        if isinstance(field, str):
            V.check_choice(field, "field", tuple(FIELDS))
            self.field_type = field
            self.field = FIELDS[field](self.output_shape, num_classes=self.num_classes,
                                       context_shape=self.context_shape, **field_kwargs)
        elif isinstance(field, nn.Module):
            if field_kwargs:
                raise InvalidInputError(f"field_kwargs {sorted(field_kwargs)} apply to built-in fields only")
            self.field_type = "custom"
            self.field = field
        else:
            raise InvalidTypeError(f"field must be 'mlp', 'unet' or an nn.Module, got {type(field).__name__}")
        self.register_buffer("y_shift", torch.zeros(self.output_shape))
        self.register_buffer("y_scale", torch.ones(()))
        cshape = self.context_shape or (1,)
        self.register_buffer("c_shift", torch.zeros(cshape))
        self.register_buffer("c_scale", torch.ones(cshape))
        self.solver: dict[str, Any] = {"method": "midpoint", "steps": 4, "atol": 1e-4, "rtol": 1e-4}

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
        if 2 * ds.chosen.numel() <= V.CHUNK:
            ys = torch.cat([ds.chosen, ds.rejected]).double()
            shift = ys.mean(0)
            scale = (ys - shift).pow(2).mean().sqrt()
        else:  # large or memory-mapped data: two passes, chunk by chunk, never a copy of it all
            parts = [c for t in (ds.chosen, ds.rejected) for c in V.row_chunks(t)]
            count = 2 * len(ds)
            shift = sum(c.double().sum(0) for c in parts) / count
            scale = (sum(float((c.double() - shift).pow(2).sum()) for c in parts) / (count * shift.numel())) ** 0.5
            scale = torch.tensor(scale, dtype=torch.float64)
        self.y_shift.copy_(shift.to(self.y_shift))
        self.y_scale.copy_(scale.clamp_min(1e-8).to(self.y_scale))
        if ds.context_kind == "vector":
            c = ds.context.double()
            cs = c.mean(0)
            sd = c.std(0, unbiased=False) if len(c) > 1 else torch.ones_like(cs)
            sd = torch.where(sd > 1e-6 * sd.max().clamp_min(1e-12), sd, torch.ones_like(sd))
            self.c_shift.copy_(cs.to(self.c_shift))
            self.c_scale.copy_(sd.to(self.c_scale))

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

    def fit(
        self,
        dataset: PreferenceDataset,
        *,
        steps: Optional[int] = None,
        epochs: Optional[float] = None,
        batch_size: int = 256,
        lr: float = 1e-3,
        coupling: str = "ot",
        sigma: float = 0.1,
        normalize: bool = True,
        within_context: bool = True,
        context_weight: float = 10.0,
        weight_decay: float = 0.0,
        grad_clip: Optional[float] = 1.0,
        ema_decay: Optional[float] = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        progress: bool = True,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: Optional[int] = None,
        resume: bool = False,
        recouple_every: Optional[int] = None,
        precision: str = "fp32",
        compile: bool = False,
        validation: Optional[PreferenceDataset] = None,
        validate_every: Optional[int] = None,
        patience: Optional[int] = None,
        threads: Optional[int] = None,
    ) -> History:
        """Train the field by conditional flow matching from the rejected to the preferred outputs.

        Args:
            dataset: the preference triples.
            steps / epochs: length of training (default 2,000 steps).
            batch_size, lr, weight_decay, grad_clip, ema_decay: optimizer settings (Adam/AdamW).
            coupling: ``ot`` (default), ``sinkhorn``, ``independent`` or ``paired``; see :mod:`pfm.coupling`.
            sigma: noise of the path, in units of the data's overall standard deviation when ``normalize`` is on
                (the default), else in the data's units.
            normalize: learn in standardized units (see the class docstring).
            within_context, context_weight: see :func:`pfm.coupling.couple`.
            recouple_every: for ``ot`` and ``sinkhorn``, the epochs a set of minibatch couplings is kept before a
                new one is solved: ``None`` (default) solves one for the whole run, in the first epoch; ``1`` every
                epoch, as the paper's code does (there in every step). The couplings are solved in a background
                thread ahead of the steps (see :mod:`pfm.pairing`). One set for the run scored as well as re-solving
                every batch on the 2D task and takes the solver off the training step (see the README's
                Performance section). Under ``torch.distributed`` each rank couples its minibatch in every step
                instead (``recouple_every`` does not apply).
            seed: seeds batch order, times, noise and couplings (CPU runs are reproducible).
                Under ``torch.distributed`` (``torchrun``), each rank trains on its own part of every epoch and
                couples its own minibatch of ``batch_size`` pairs (exact OT within it): the optimizer step sees
                ``world_size * batch_size`` pairs, but OT pairs only within each rank's share, as it would with
                that per-rank batch on one process. See :func:`pfm.optimize`.
            device: where to train (default: where the flow is).
            precision: ``fp32`` (default) or ``bf16``: the field's forward under ``torch.autocast`` in bfloat16
                (weights and optimizer state stay float32; for GPUs with bf16 tensor cores).
            compile: run the field through ``torch.compile`` while training (the first steps wait for it).
            checkpoint_dir, checkpoint_every, resume: write the training state every ``checkpoint_every`` steps and
                resume from it (see :func:`pfm.optimize`); a checkpoint of other data or settings is refused.
            validation: held-out pairs. Every ``validate_every`` steps (default: 20 times a run) the flow-matching
                loss on them is measured (coupled once, as in training, with fixed times and noise, so the values
                are comparable), the flow ends with the weights of the lowest one, and with ``patience`` training
                stops after that many evaluations without improvement. ``history.validation`` holds the curve and
                ``history.extras["validation_zero_field"]`` the held-out loss of the zero field ``v = 0`` (a field
                above it predicts the held-out displacement worse than not moving). Small data sets overfit fast.
            threads: torch intra-op threads for the training steps; by default one for a small field on the CPU
                (parameters x batch below 2^24: a second thread gains under 10% there and, on a busy machine,
                makes every step wait for it), else torch's setting. See :func:`pfm.train.step_threads`.

        Returns:
            :class:`pfm.train.History` with the loss of every step.
        """
        ds = self._check_dataset(dataset)
        check_solver(self.solver, "flow.solver")  # saved with the flow and used by every transform: check it now
        if device is not None:
            device = V.check_device(device)
        V.check_choice(coupling, "coupling", COUPLINGS)
        V.check_positive_int(recouple_every, "recouple_every", allow_none=True)
        V.check_nonneg_float(sigma, "sigma")
        V.check_positive_int(batch_size, "batch_size")
        if device is not None:
            self.to(device)
        device = self.device
        n_steps = resolve_steps(steps, epochs, len(ds), batch_size, default=2000)
        if normalize:
            self._set_normalization(ds)
        dtype = next(self.field.parameters()).dtype
        for name, raw in (("chosen", ds.chosen), ("rejected", ds.rejected)):
            self._check_range(raw, name, "; rescale the outputs or train a float64 flow (flow.double())")
        cdtype = dtype if ds.context is not None and ds.context.is_floating_point() else torch.int64

        def read(t: Tensor, index: Optional[Tensor], kind: torch.dtype) -> Tensor:
            return t[slice(None) if index is None else index.cpu()].to(device, kind)

        def rejected_rows(index: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
            """Normalized rejected outputs and contexts of rows ``index`` (all rows: None), on the device."""
            c = None if ds.context is None else self._norm_c(read(ds.context, index, cdtype))
            return self._norm_y(read(ds.rejected, index, dtype)), c

        def chosen_rows(index: Optional[Tensor]) -> Tensor:
            return self._norm_y(read(ds.chosen, index, dtype))

        # memory-mapped data: rows are read from disk batch by batch and the data set is never copied whole; in
        # memory: normalize it once, keep it all on the device, and index that
        if not ds.memory_mapped:
            (y0_all, c_all), y1_all = rejected_rows(None), chosen_rows(None)
            if not bool(torch.isfinite(y0_all).all() and torch.isfinite(y1_all).all()):
                raise InvalidInputError("normalizing the outputs overflowed; rescale them (their spread is too large "
                                        f"for {str(dtype).replace('torch.', '')})")

            def rejected_rows(index: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
                index = index.to(y0_all.device)
                return y0_all[index], None if c_all is None else c_all[index]

            def chosen_rows(index: Optional[Tensor]) -> Tensor:
                return y1_all[index.to(y1_all.device)]

        def batch_rows(index: Tensor) -> tuple[Tensor, Tensor, Optional[Tensor]]:
            """Normalized rejected, chosen and context rows ``index``, on the device."""
            y0, c = rejected_rows(index)
            return y0, chosen_rows(index), c

        y_probe, c_probe = rejected_rows(torch.zeros(1, dtype=torch.int64))
        self._check_field(y_probe, c_probe)
        sigma = float(sigma) if normalize else float(sigma) / float(self.y_scale)
        couple_kwargs = {"within_context": within_context, "context_weight": context_weight}
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        plan = None
        if coupling in ("ot", "sinkhorn") and not distributed:
            plan = PairingPlan(batch_rows, len(ds), batch_size, method=coupling, recouple_every=recouple_every,
                               seed=seed, **couple_kwargs)

        def loss_fn(index: Tensor, gen: torch.Generator, model: nn.Module) -> Tensor:
            if plan is not None:  # the partners were solved ahead, in the plan's thread
                y0, c = rejected_rows(index)
                y1 = chosen_rows(plan.partners(index))
                return flow_matching_loss(model, y0, y1, c, sigma, gen)
            y0, y1, c = batch_rows(index)
            i0, i1 = couple(y0, y1, c, coupling, generator=gen, **couple_kwargs)
            return flow_matching_loss(model, y0[i0], y1[i1], None if c is None else c[i0], sigma, gen)

        evaluate = None
        zero_field = None
        if validation is not None:
            evaluate, zero_field = self._heldout_loss(self._check_dataset(validation), coupling, sigma, dtype,
                                                      couple_kwargs, seed)
        elif validate_every is not None or patience is not None:
            raise InvalidInputError("validate_every and patience need validation (held-out pairs)")

        fingerprint = None
        if checkpoint_dir is not None:
            fingerprint = {"data": ds.digest(), "coupling": coupling, "sigma": sigma, "normalize": bool(normalize),
                           "within_context": bool(within_context), "context_weight": float(context_weight),
                           "grad_clip": grad_clip, "flow": json.dumps(self.config()["field"], sort_keys=True),
                           "recouple_every": recouple_every if plan is not None else None,
                           "precision": precision}
        try:
            history = optimize(self.field, loss_fn, len(ds), steps=n_steps, batch_size=batch_size, lr=lr,
                               weight_decay=weight_decay, grad_clip=grad_clip, ema_decay=ema_decay, seed=seed,
                               device=device, progress=progress, desc="fitting flow", checkpoint_dir=checkpoint_dir,
                               checkpoint_every=checkpoint_every, resume=resume, fingerprint=fingerprint,
                               order=None if plan is None else plan.order, precision=precision, compile=compile,
                               evaluate=evaluate, evaluate_every=validate_every, patience=patience,
                               threads=threads)
            if zero_field is not None:
                history.extras["validation_zero_field"] = [zero_field]
                best = min((v for _, v in history.validation), default=math.inf)
                if best >= zero_field:
                    log.warning("the flow's best held-out loss (%.4g) is not below the zero field's (%.4g): it has "
                                "learned nothing from these pairs that carries over to held-out ones", best, zero_field)
            return history
        finally:
            if plan is not None:
                plan.close()

    def _heldout_loss(self, ds: PreferenceDataset, coupling: str, sigma: float, dtype: torch.dtype,
                      couple_kwargs: dict[str, Any], seed: int, repeats: int = 4, chunk: int = 4096):
        """``(evaluate(model) -> float, zero-field loss)``: the flow-matching loss on held-out pairs, normalized
        like the training data, coupled once (in chunks of ``chunk`` rows), with fixed times and noise."""
        device = self.device
        y0 = self._norm_y(ds.rejected[:].to(device, dtype))
        y1 = self._norm_y(ds.chosen[:].to(device, dtype))
        c = None
        if ds.context is not None:
            c = self._norm_c(ds.context[:].to(device, dtype if ds.context.is_floating_point() else torch.int64))
        gen = torch.Generator(device=device).manual_seed(seed + 104_729)
        parts = []
        for s in range(0, len(ds), chunk):
            a, b = y0[s:s + chunk], y1[s:s + chunk]
            cc = None if c is None else c[s:s + chunk]
            i0, i1 = couple(a, b, cc, coupling, generator=gen, **couple_kwargs)
            parts.append((a[i0], b[i1], None if cc is None else cc[i0]))
        state = gen.get_state()

        def evaluate(model: nn.Module) -> float:
            g = torch.Generator(device=device)
            g.set_state(state)  # the same times and noise at every evaluation
            total = 0.0
            for _ in range(repeats):
                for a, b, cc in parts:
                    total += float(flow_matching_loss(model, a, b, cc, sigma, g)) * a.shape[0]
            return total / (repeats * len(ds))

        zero = evaluate(lambda t, y, cc: torch.zeros_like(y))  # type: ignore[arg-type]
        return evaluate, zero

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
        method: Optional[str] = None,
        steps: Optional[int] = None,
        atol: Optional[float] = None,
        rtol: Optional[float] = None,
        batch_size: int = 8192,
        return_trajectory: bool = False,
    ) -> Any:
        """Push outputs ``y`` ``(N, *output_shape)`` through the flow from t = 0 to 1.

        Args:
            y: tensor or NumPy array; the result has its shape, dtype and device (or is an array).
            context: labels ``(N,)`` or a single label; float contexts ``(N, *context_shape)`` or one context.
            method, steps, atol, rtol: solver settings (defaults in ``self.solver``; see :func:`pfm.solve.solve`).
            batch_size: rows solved at once.
            return_trajectory: return ``(steps + 1, N, *output_shape)`` states instead of the end points.
        """
        as_numpy = isinstance(y, np.ndarray)
        y_t = self.check_outputs(y)
        V.check_positive_int(batch_size, "batch_size")
        c = self._prepare_context(context, y_t.shape[0])
        opts = dict(self.solver)
        for k, v in (("method", method), ("steps", steps), ("atol", atol), ("rtol", rtol)):
            if v is not None:
                opts[k] = v
        check_solver(opts, "solver")
        if not isinstance(return_trajectory, bool):
            raise InvalidTypeError(f"return_trajectory must be True or False, got {return_trajectory!r}")
        dev, dtype = self.device, self.y_shift.dtype
        was_training = self.training
        self.eval()
        n = y_t.shape[0]
        self._check_field(self._norm_y(y_t[:1].to(dev, dtype)), None if c is None else self._field_context(c[:1]))
        shape = ((int(opts["steps"]) + 1,) if return_trajectory else ()) + (n, *self.output_shape)
        res = None  # written batch by batch: no list of pieces to concatenate, so memory stays flat in n
        for s in range(0, n, batch_size):
            z = self._norm_y(y_t[s:s + batch_size].to(dev, dtype))
            cb = None if c is None else self._field_context(c[s:s + batch_size])
            z = self._denorm_y(solve(self.field, z, cb, return_trajectory=return_trajectory, **opts))
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
                        probes: int = 8, generator: Optional[torch.Generator] = None,
                        **solver: Any) -> tuple[Tensor, Tensor, Tensor]:
        """Solve the flow from ``y`` ``(B, *output_shape)`` (t: 0 -> 1, or 1 -> 0 when ``inverse``) with the integral
        of its divergence over t in [0, 1]: ``(end points, integral (B,), standard error (B,))``; see
        :func:`pfm.likelihood.divergence_integral`. The divergence is the same in data and normalized units (the
        normalization is one shift and one scale), so it is integrated on the normalized field."""
        from .likelihood import divergence_integral

        y = V.as_float(y, "y")
        V.check_trailing_shape(y, "y", self.output_shape, "flow's outputs")
        c = self._prepare_context(context, y.shape[0])
        opts = {**self.solver, **{k: v for k, v in solver.items() if v is not None}}
        dev, dtype = self.device, self.y_shift.dtype
        cb = self._field_context(c)
        was_training = self.training
        self.eval()
        try:
            z, integral, se = divergence_integral(self.field, self._norm_y(y.to(dev, dtype)), cb, inverse=inverse,
                                                  divergence=divergence, probes=probes, generator=generator, **opts)
        finally:
            self.train(was_training)
        return self._denorm_y(z), integral, se

    def log_prob(self, y: Any, context: Any = None, *, reference: Any, k: int = 1, **options: Any) -> Tensor:
        """Log-density ``(N,)`` of this flow's outputs (applied ``k`` times) at the aligned outputs ``y``, given
        the reference's ``log_prob``: ``y`` is solved back to t = 0 and scored there by the change of variables.
        Options (``divergence``, ``probes``, ``method``, ``steps``, ...) go to :func:`pfm.likelihood.log_prob`."""
        from .likelihood import log_prob

        return log_prob(self, y, context, reference=reference, given="output", k=k, **options).log_prob

    def iterate(self, y: Any, context: Any = None, k: int = 2, **solver: Any) -> Any:
        """Apply the flow ``k`` times ("PFM x k"): ``transform(transform(...y...))``. Keyword arguments go to
        :meth:`transform`. This re-applies one trained flow; re-collecting preferences and training a new flow
        each round is the paper's iterative method, a different thing."""
        V.check_positive_int(k, "k")
        for _ in range(k):
            y = self.transform(y, context, **solver)
        return y

    # ------------------------------------------------------------------------------------------ files
    def config(self) -> dict[str, Any]:
        from . import __version__

        field: dict[str, Any]
        if self.field_type == "custom":
            cls = type(self.field)
            field = {"type": "custom", "class": f"{cls.__module__}:{cls.__qualname__}"}
        else:
            field = {"type": self.field_type, "config": self.field.config()}
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "pfm_version": __version__,
                "output_shape": list(self.output_shape), "num_classes": self.num_classes,
                "context_shape": None if self.context_shape is None else list(self.context_shape),
                "field": field, "solver": dict(self.solver),
                "dtype": str(self.y_shift.dtype).replace("torch.", "")}

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``weights.safetensors`` into ``directory``, replaced atomically: a crash at any
        moment leaves the old flow or the new one there (see :func:`pfm._io.atomic_dir`)."""
        from safetensors.torch import save_file

        check_output(directory, "directory", kind="flow")
        config = self.config()
        check_solver(config["solver"], "flow.solver")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise NonFiniteOutputError(f"the flow's {', '.join(bad[:3])} hold NaN or infinite values; refusing to "
                                       "save a broken flow")
        with atomic_dir(directory) as tmp:
            save_file(state, str(tmp / WEIGHTS_NAME))
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, field: Optional[nn.Module] = None,
             device: torch.device | str = "cpu") -> "PreferenceFlow":
        """Rebuild a flow saved by :meth:`save`. A custom field's module must be passed as ``field``.

        Nothing is trusted before it is checked: every setting of ``config.json`` is validated by type and range,
        the weights' shapes (read from the safetensors header) are compared with those the config builds (on the
        ``meta`` device, which allocates nothing) before any memory is taken, and weights or buffers that are NaN
        or infinite, or a zero scale, are refused."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if field is not None and not isinstance(field, nn.Module):
            raise InvalidTypeError(f"field must be an nn.Module, got {type(field).__name__}")
        device = V.check_device(device)
        directory = Path(directory)
        cfg = read_config(directory)
        weights = directory / WEIGHTS_NAME
        header = read_weights_header(weights)
        fcfg = cfg["field"]
        common = dict(num_classes=cfg["num_classes"], context_shape=cfg["context_shape"])
        expected = {"y_shift": list(cfg["output_shape"]), "y_scale": [],
                    "c_shift": list(cfg["context_shape"] or [1]), "c_scale": list(cfg["context_shape"] or [1])}
        for name, shape in expected.items():
            got = header.get(name, (None, None))[1]
            if got != shape:
                raise FlowFileError(f"the weights in {str(directory)!r} do not match its config: {name} has shape "
                                    f"{got} in {WEIGHTS_NAME}, {shape} by the config")
        if fcfg["type"] == "custom":
            if field is None:
                raise FlowFileError(f"{str(directory)!r} holds a custom field ({fcfg.get('class')}); pass an "
                                    "instance of it as load(..., field=module)")

            def build() -> "PreferenceFlow":
                return cls(cfg["output_shape"], field=field, **common)
        else:
            kw = {k: v for k, v in fcfg["config"].items() if k not in ("output_shape", "num_classes",
                                                                        "context_shape")}
            kw.setdefault("time_max_freq", 1000.0)  # files written before the setting existed
            # every size the config names must appear in some weight's shape, and the layers be no more than the
            # weights: a tampered config is refused before building anything
            dims = {int(d) for _, shape in header.values() for d in shape} | {1}
            keys = ("hidden", "time_dim", "emb_dim") + (("context_dim",) if common["num_classes"] or
                                                        common["context_shape"] else ())
            for key in keys:
                if isinstance(kw.get(key), int) and kw[key] not in dims:
                    raise FlowFileError(f"the weights in {str(directory)!r} do not match its config: no weight has "
                                        f"a dimension of {key}={kw[key]}")
            if isinstance(kw.get("depth"), int) and kw["depth"] > len(header):
                raise FlowFileError(f"the weights in {str(directory)!r} do not match its config: depth="
                                    f"{kw['depth']} layers, but the file holds {len(header)} tensors")

            def build() -> "PreferenceFlow":
                return cls(cfg["output_shape"], field=fcfg["type"], **common, **kw)
        dtype = getattr(torch, cfg["dtype"])
        try:
            with torch.device("meta"):
                shell = build()
        except (TypeError, KeyError, InvalidInputError, RuntimeError, NotImplementedError) as exc:
            raise FlowFileError(f"{str(directory)!r} has a config this version cannot build: {exc}") from None
        want = {k: list(v.shape) for k, v in shell.state_dict().items()}
        del shell
        have = {k: shape for k, (_, shape) in header.items()}
        missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        if missing or unexpected:
            what = (f"missing {missing[:3]}" if missing else "") + ("; " if missing and unexpected else "") + \
                   (f"unexpected {unexpected[:3]}" if unexpected else "")
            raise FlowFileError(f"the weights in {str(directory)!r} do not match its config: {what}")
        for k in want:
            if want[k] != have[k]:
                raise FlowFileError(f"the weights in {str(directory)!r} do not match its config: size mismatch for "
                                    f"{k}: {have[k]} in {WEIGHTS_NAME}, {want[k]} by the config")
        flow = build()  # the sizes now match a file that exists: building takes what the file holds
        flow.solver.update(cfg["solver"])
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as exc:
            raise FlowFileError(f"{str(weights)!r} is not a readable safetensors file ({exc})") from None
        flow.to(dtype)
        try:
            flow.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            first = next((ln for ln in lines if "size mismatch" in ln or "Missing key" in ln or "Unexpected key" in ln),
                         lines[0] if lines else "")
            raise FlowFileError(f"the weights in {str(directory)!r} do not match its config: {first}") from None
        for name, t in flow.state_dict().items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise FlowFileError(f"{str(weights)!r} holds NaN or infinite values in {name!r}; the flow is broken")
        for name in ("y_scale", "c_scale"):
            if not bool((getattr(flow, name) > 0).all()):
                raise FlowFileError(f"{str(weights)!r} holds a {name} that is not positive; the flow is broken")
        return flow.to(device).eval()


WEIGHT_DTYPES = ("float32", "float64", "float16", "bfloat16")

_ST_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def read_weights_header(path: str | os.PathLike) -> dict[str, tuple[str, list[int]]]:
    """``{name: (dtype, shape)}`` from a safetensors file's header, checked against the file's size (every
    tensor's bytes must lie inside the file) without reading the tensors."""
    path = Path(path)
    if not path.exists():
        raise FlowFileError(f"{str(path.parent)!r} has no {path.name}")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 0 or n > min(size - 8, 100 << 20):
                raise FlowFileError(f"{str(path)!r} is not a readable safetensors file (Error while deserializing "
                                    "header: invalid header length)")
            meta = json.loads(f.read(n))
    except PermissionError:
        raise FlowFileError(f"{str(path)!r} cannot be read (permission denied)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FlowFileError(f"{str(path)!r} is not a readable safetensors file (its header is not JSON)") from None
    if not isinstance(meta, dict):
        raise FlowFileError(f"{str(path)!r} is not a readable safetensors file (its header is not a JSON object)")
    out: dict[str, tuple[str, list[int]]] = {}
    room = size - 8 - n
    for name, info in meta.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = info["dtype"], info["shape"], info["data_offsets"]
            ok = (dtype in _ST_DTYPES and isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)
                  and type(a) is int and type(b) is int and 0 <= a <= b <= room
                  and b - a == math.prod(shape) * _ST_DTYPES[dtype])
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise FlowFileError(f"{str(path)!r} is not a readable safetensors file (tensor {name!r} is described "
                                "wrongly or lies beyond the end of the file)")
        out[name] = (dtype, shape)
    return out


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The JSON config of a saved flow, checked to be one: every setting by type and range (a tampered file is a
    :class:`FlowFileError` naming the file and the setting)."""
    directory = Path(directory)
    recover_dir(directory)  # a save cut between its two renames, on systems without an atomic exchange
    if not directory.exists():
        raise MissingFileError(f"no such flow directory: {str(directory)!r}")
    if not directory.is_dir():
        raise FlowFileError(f"{str(directory)!r} is a file; a saved flow is a directory with {CONFIG_NAME} "
                            f"and {WEIGHTS_NAME}")
    path = directory / CONFIG_NAME
    if not path.exists():
        raise FlowFileError(f"{str(directory)!r} is not a saved flow: it has no {CONFIG_NAME}")
    if path.stat().st_size > 1 << 20:
        raise FlowFileError(f"{str(path)!r} is {path.stat().st_size:,} bytes; a flow's config is a few hundred")
    try:
        cfg = read_json(path)
    except PermissionError:
        raise FlowFileError(f"{str(path)!r} cannot be read (permission denied)") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        found = cfg.get("format") if isinstance(cfg, dict) else None
        raise FlowFileError(f"{str(path)!r} is not a pfm flow config (format {found!r})")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise FlowFileError(f"{str(directory)!r} was written in flow format {cfg.get('format_version')}; this "
                            f"version of pfm reads format {FORMAT_VERSION}")
    for key in ("output_shape", "field"):
        if key not in cfg:
            raise FlowFileError(f"{str(path)!r} lacks {key!r}")
    cfg.setdefault("num_classes", None)
    cfg.setdefault("context_shape", None)
    cfg.setdefault("solver", {})
    cfg.setdefault("dtype", "float32")
    try:
        check_sizes(cfg["output_shape"], cfg["num_classes"], cfg["context_shape"])
        if cfg["num_classes"] is not None and cfg["context_shape"] is not None:
            raise InvalidInputError("it gives both num_classes and context_shape")
        check_solver(cfg["solver"], "solver")
        if cfg["dtype"] not in WEIGHT_DTYPES:
            raise InvalidInputError(f"dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {cfg['dtype']!r}")
        field = cfg["field"]
        if not isinstance(field, dict) or field.get("type") not in (*FIELDS, "custom"):
            what = field.get("type") if isinstance(field, dict) else field
            raise InvalidInputError(f"field must name a type ({', '.join(FIELDS)} or custom), got {what!r}")
        if field["type"] != "custom":
            fc = field.get("config")
            if not isinstance(fc, dict):
                raise InvalidInputError(f"field config must be an object, got {type(fc).__name__}")
            known = set(inspect.signature(FIELDS[field["type"]]).parameters)
            unknown = sorted(set(fc) - known)
            if unknown:
                raise InvalidInputError(f"the {field['type']} field has no setting(s) {unknown}")
    except InvalidInputError as exc:
        raise FlowFileError(f"{str(path)!r} is not a valid flow config: {exc}") from None
    return cfg
