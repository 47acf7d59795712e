"""The API printed in the paper and released with it, on top of :class:`pfm.PreferenceFlow`.

>>> flow_matching = OptimalTransportConditionalFlowMatching(flow_model)   # flow_model(t, y, x) -> v
>>> flow_matching.fit(dataset, num_epochs=100, batch_size=64, learning_rate=1e-3, conditional=True)
>>> improved = flow_matching.compute_target(reference_policy(context), context=context)

The released notebooks run with only the import changed. What differs, on purpose (docs/differences.md has the
table): the flow runs from rejected to preferred outputs; exact OT pairs outputs only within a context; the field
is called as ``model(t, y, x)`` with ``t`` of shape ``(B,)`` in training and at inference alike; a field's velocity
that drops ``y``'s singleton axis is reshaped, not broadcast; and it trains with pfm's loop.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from .. import validate as V
from ..config import COUPLINGS, SolverConfig, TrainConfig
from ..coupling import couple
from ..data import PreferenceDataset
from ..errors import InvalidInputError, InvalidTypeError
from ..flow import PreferenceFlow
from ..io import atomic_file, check_output
from ..path import field_and_target
from ..train import optimize
from .check import score_check
from .items import RELEASED_ORDER_WARNING, as_preference_dataset, is_released_dataset
from .shapes import as_batch, fit_field, single_context

log = logging.getLogger("pfm")

PAPER_SOLVER = SolverConfig(method="dopri5", atol=1e-4, rtol=1e-4)
"""The solver the paper's code applies its flows with (torchdiffeq's dopri5 at atol = rtol = 1e-4)."""

NORMS = ("||u_t||_2", "||v_t||_2", "||u_t||_inf", "||v_t||_inf")
"""The per-step quantities the released ``fit`` returns in ``info`` besides the loss."""


def _field_num_classes(model: nn.Module) -> Optional[int]:
    """The number of labels a field says it embeds: the first integer ``num_classes`` attribute of the module or of
    one of its submodules (the released UNet keeps it on its inner torchcfm ``UNetModel``)."""
    for m in model.modules():
        k = getattr(m, "num_classes", None)
        if isinstance(k, int) and not isinstance(k, bool) and k > 0:
            return k
    return None


class OptimalTransportConditionalFlowMatching:
    """Learns a flow from rejected to preferred outputs with minibatch OT-CFM (Tong et al. 2023).

    Args:
        model: an ``nn.Module`` called as ``model(t, y, x)`` with ``t: (B,)``, returning ``v`` shaped like ``y``
            (or the same numbers without ``y``'s singleton axis, as the released ``MLP`` returns them: reshaped,
            with a warning).
        device: where to train and infer.
    """

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu") -> None:
        if not isinstance(model, nn.Module):
            raise InvalidTypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.device = V.check_device(device)
        self.model = model.to(self.device)
        self.flow: Optional[PreferenceFlow] = None

    def __call__(self, source: Any, context: Any = None, **kwargs: Any) -> Any:
        return self.compute_target(source, context=context, **kwargs)

    # ------------------------------------------------------------------------------------------ training
    def fit(
        self,
        dataset: Any,
        num_epochs: int = 100,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        sigma: float = 0.1,
        conditional: Optional[bool] = None,
        loss_scale: Any = 1,
        collate_fn: Optional[Callable] = None,
        save_path: Optional[str | os.PathLike] = None,
        save_losses_path: Optional[str | os.PathLike] = None,
        save_interval: int = 10,
        *,
        coupling: str = "ot",
        seed: Optional[int] = None,
        progress: bool = True,
        check: Optional[Callable] = None,
        check_size: int = 256,
    ) -> tuple[nn.Module, dict[str, Any]]:
        """Train for ``num_epochs`` epochs of ``ceil(N / batch_size)`` steps; returns ``(model, info)`` like the
        released code, ``info`` holding per step the loss and the norms of the target ``u_t`` and the velocity
        ``v_t`` (each output's L2 and max norm over all its elements, averaged over the batch).

        Args:
            dataset: items ``(x, y+, y-)`` or ``(y+, y-)`` (an indexable, a ``DataLoader`` of such batches or a
                :class:`pfm.PreferenceDataset`). The released ``BasePreferenceDataset`` is read in its documented
                order with a warning: its builders fill it the other way (see
                :func:`pfm.compat.released_items`).
            sigma: the path's noise, in the data's units (no normalization, as in the paper's code).
            conditional: whether to pass the context to the field; default: whether the items carry one.
            loss_scale: multiplies the squared error (a number, or a tensor that broadcasts against ``(B, *shape)``:
                per-element weights), as the released ``fit`` does.
            collate_fn: batches the items (a ``DataLoader`` with it reads them once, in order).
            save_path: a directory: the model is saved there after every epoch as ``ckpt_epoch_{epoch}.pth``
                (``torch.save(model)``, the whole module, as the released code does).
            save_losses_path: a directory: the losses so far are saved there as ``loss.npy`` every
                ``save_interval`` steps of an epoch and at its end.
            coupling: ``"ot"`` (exact minibatch OT within each context), ``"sinkhorn"``, ``"independent"`` or
                ``"paired"`` (see :func:`pfm.couple`).
            seed: seeds the batch order, times, noise and couplings. Default: a seed drawn from torch's global
                generator, so ``torch.manual_seed(s)`` before ``fit`` (as a notebook does) makes the fit
                reproducible.
            check: ``score(y, x) -> (N,)`` (``score(y)`` without contexts), higher is better. ``check_size`` pairs
                (at most a tenth) are held out of training; after it, their outputs are flowed and scored before
                and after (``info["check"]``), with a warning when the flowed outputs score lower.
        """
        V.check_positive_int(num_epochs, "num_epochs")
        V.check_positive_int(batch_size, "batch_size")
        V.check_positive_float(learning_rate, "learning_rate")
        V.check_nonneg_float(sigma, "sigma")
        V.check_positive_int(save_interval, "save_interval")
        V.check_positive_int(check_size, "check_size")
        V.check_choice(coupling, "coupling", COUPLINGS)
        if conditional is not None and not isinstance(conditional, bool):
            raise InvalidTypeError(f"conditional must be True, False or None, got {conditional!r}")
        scale = self._loss_scale(loss_scale)
        if check is not None and not callable(check):
            raise InvalidTypeError(f"check must be a callable score(y, x), got {type(check).__name__}")
        saves = {name: None if p is None else check_output(p, name, kind="dir")
                 for name, p in (("save_path", save_path), ("save_losses_path", save_losses_path))}
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())  # torch's global generator: a notebook's seed
        V.check_int(seed, "seed", low=0)
        if is_released_dataset(dataset):
            warnings.warn(RELEASED_ORDER_WARNING, UserWarning, stacklevel=2)
        ds = as_preference_dataset(dataset, conditional, collate_fn=collate_fn, batch_size=batch_size)
        held = None
        if check is not None:
            if len(ds) < 10:
                raise InvalidInputError(f"check needs at least 10 pairs (a tenth is held out), the dataset has "
                                        f"{len(ds)}")
            ds, held = ds.hold_out(min(check_size, len(ds) // 10), seed + 7919)
        num_classes = ds.num_classes
        said = _field_num_classes(self.model)
        if num_classes is not None and said is not None and said > num_classes:
            num_classes = said  # labels the pairs lack but the field was built for are allowed at inference
        first = ds.subset(torch.arange(min(2, len(ds))))
        y_probe = first.rejected[:].to(self.device, torch.float32)
        c_probe = None if first.context is None else first.context[:].to(self.device)
        if c_probe is not None and c_probe.is_floating_point():
            c_probe = c_probe.float()
        field = fit_field(self.model, y_probe, c_probe) if len(first) >= 2 else self.model
        self.flow = PreferenceFlow(ds.output_shape, num_classes=num_classes, context_shape=ds.context_shape,
                                   field=field).to(self.device)
        history = self._train(ds, num_epochs, batch_size, learning_rate, float(sigma), scale, coupling, seed,
                              progress, saves, save_interval)
        info: dict[str, Any] = {"loss": history.loss, **{k: history.extras.get(k, []) for k in NORMS}}
        if held is not None:
            info["check"] = score_check(self, held, check)
        return self.model, info

    def _loss_scale(self, loss_scale: Any) -> Any:
        if isinstance(loss_scale, (Tensor, np.ndarray)):
            s = V.as_float(loss_scale, "loss_scale")
            V.check_finite(s, "loss_scale")
            if bool((s < 0).any()):
                raise InvalidInputError("loss_scale must be >= 0 everywhere")
            return s.to(self.device)
        V.check_positive_float(loss_scale, "loss_scale")
        return float(loss_scale)

    def _train(self, ds: PreferenceDataset, num_epochs: int, batch_size: int, lr: float, sigma: float, scale: Any,
               coupling: str, seed: int, progress: bool, saves: dict[str, Optional[Path]],
               save_interval: int) -> Any:
        flow = self.flow
        assert flow is not None
        dev, n = self.device, len(ds)
        y0_all = ds.rejected[:].to(dev, torch.float32)
        y1_all = ds.chosen[:].to(dev, torch.float32)
        c_all = None if ds.context is None else ds.context[:].to(dev)
        if c_all is not None and c_all.is_floating_point():
            c_all = c_all.float()
        per_epoch = math.ceil(n / batch_size)  # the released DataLoader's batches, the last one partial
        losses: list[Tensor] = []

        def loss_fn(index: Tensor, gen: torch.Generator, model: nn.Module) -> tuple[Tensor, dict[str, Tensor]]:
            step = len(losses)
            if step and step % per_epoch == 0:  # the previous epoch's steps are all taken
                self._save_epoch(saves["save_path"], step // per_epoch - 1)
            y0, y1 = y0_all[index], y1_all[index]
            c = None if c_all is None else c_all[index]
            i0, i1 = couple(y0, y1, c, coupling, generator=gen)
            y0, y1, c = y0[i0], y1[i1], None if c is None else c[i0]
            try:
                v, u = field_and_target(model, y0, y1, c, sigma, gen)
            except ValueError as exc:
                raise InvalidInputError(str(exc)) from None
            try:
                loss = ((v - u) ** 2 * scale).mean()
            except RuntimeError as exc:
                raise InvalidInputError(f"loss_scale does not broadcast against the outputs {V.shape_of(u)} "
                                        f"({exc})") from None
            losses.append(loss.detach())
            if saves["save_losses_path"] is not None and (step % per_epoch % save_interval == 0
                                                          or (step + 1) % per_epoch == 0):
                self._save_losses(saves["save_losses_path"], losses)
            flat_u, flat_v = u.detach().flatten(1), v.detach().flatten(1)
            return loss, {"||u_t||_2": flat_u.norm(dim=1).mean(), "||v_t||_2": flat_v.norm(dim=1).mean(),
                          "||u_t||_inf": flat_u.abs().amax(dim=1).mean(),
                          "||v_t||_inf": flat_v.abs().amax(dim=1).mean()}

        cfg = TrainConfig(steps=num_epochs * per_epoch, batch_size=min(batch_size, n), lr=lr, grad_clip=None,
                          seed=seed, progress=progress)
        history = optimize(flow.field, loss_fn, n, cfg, desc="fitting flow")
        self._save_epoch(saves["save_path"], num_epochs - 1)
        return history

    def _save_epoch(self, where: Optional[Path], epoch: int) -> None:
        if where is None:
            return
        with atomic_file(where / f"ckpt_epoch_{epoch}.pth") as f:
            torch.save(self.model, f)

    @staticmethod
    def _save_losses(where: Path, losses: list[Tensor]) -> None:
        with atomic_file(where / "loss.npy") as f:
            np.save(f, torch.stack(losses).float().cpu().numpy())

    # ------------------------------------------------------------------------------------------ inference
    def _solver(self, use_torchdiffeq: Any, solver: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(use_torchdiffeq, bool):
            raise InvalidTypeError(f"use_torchdiffeq must be True or False, got {use_torchdiffeq!r}")
        opts: dict[str, Any] = {"method": PAPER_SOLVER.method, "atol": PAPER_SOLVER.atol, "rtol": PAPER_SOLVER.rtol}
        opts.update(solver)
        return opts

    def _inputs(self, source: Any, context: Any) -> tuple[Tensor, Any, tuple[int, ...], bool]:
        if self.flow is None:
            raise InvalidInputError("call fit(...) before compute_target(...)")
        as_numpy = isinstance(source, np.ndarray)
        y = V.as_tensor(torch.as_tensor(source) if as_numpy else source, "source")
        yb, shape = as_batch(y, self.flow.output_shape)
        if context is not None and self.flow.context_kind == "vector":
            c = V.as_tensor(torch.as_tensor(context) if isinstance(context, np.ndarray) else context, "context")
            context = single_context(c, yb.shape[0], self.flow.context_shape)
        return yb, context, shape, as_numpy

    def compute_target(self, source: Any, context: Any = None, timesteps: int = 10, use_torchdiffeq: bool = True,
                       **solver: Any) -> Any:
        """Solve the flow from ``source`` with dopri5 (atol = rtol = 1e-4, as the paper) unless ``method`` etc.
        are given. ``source`` is ``(N, *shape)``, one output ``shape``, or either without the outputs' axes of size
        one (the released ``FlowPolicy`` passes one flat action sequence and one state); the result has its shape.
        ``timesteps`` (the released trajectory's length) does not change the end point; ``use_torchdiffeq=False``
        (the released code's torchdyn solver) solves with the same dopri5 here."""
        V.check_int(timesteps, "timesteps", low=2)
        opts = self._solver(use_torchdiffeq, solver)
        yb, context, shape, as_numpy = self._inputs(source, context)
        assert self.flow is not None
        out = self.flow.transform(yb, context, **opts).reshape(shape)
        return out.cpu().numpy() if as_numpy else out

    def trajectory(self, source: Any, context: Any = None, timesteps: int = 10, use_torchdiffeq: bool = True,
                   **solver: Any) -> Tensor:
        """The states at ``timesteps`` evenly spaced times from 0 to 1: ``(timesteps, N, *shape)`` (the released
        ``_compute_trajectory``), ``source`` a batch ``(N, *shape)``."""
        V.check_int(timesteps, "timesteps", low=2)
        opts = self._solver(use_torchdiffeq, solver)
        yb, context, _, _ = self._inputs(source, context)
        assert self.flow is not None
        return self.flow.transform(yb, context, return_trajectory=True, solver_steps=timesteps - 1, **opts)

    def plot_trajectories(self, source: Any, context: Any = None, timesteps: int = 10, use_torchdiffeq: bool = True,
                          n: int = 2000) -> Any:
        """Scatter the first two output coordinates of up to ``n`` trajectories: the sources (black), the path
        (olive) and the end points (blue), as the released method does. Returns the matplotlib figure (a notebook
        shows it; a script calls ``plt.show()`` or ``fig.savefig(...)``). Needs ``pip install 'pfm[plot]'``."""
        V.check_positive_int(n, "n")
        from ..report.figures import pyplot

        plt = pyplot("plot_trajectories")
        traj = self.trajectory(source, context, timesteps, use_torchdiffeq)
        pts = traj[:, :n].reshape(traj.shape[0], min(n, traj.shape[1]), -1).cpu().numpy()
        if pts.shape[-1] < 2:
            raise InvalidInputError(f"plot_trajectories plots two coordinates; the outputs have {pts.shape[-1]}")
        fig = plt.figure(figsize=(6, 6))
        ax = fig.gca()
        ax.scatter(pts[0, :, 0], pts[0, :, 1], s=10, alpha=0.8, c="black")
        ax.scatter(pts[:, :, 0], pts[:, :, 1], s=0.2, alpha=0.2, c="olive")
        ax.scatter(pts[-1, :, 0], pts[-1, :, 1], s=4, alpha=1, c="blue")
        ax.legend(["Source p0", "Flow", "Target p1"])
        ax.set_xticks([])
        ax.set_yticks([])
        return fig
