"""The API printed in the paper, on top of :class:`pfm.PreferenceFlow`.

>>> flow_matching = OptimalTransportConditionalFlowMatching(flow_model)   # flow_model(t, y, x) -> v
>>> flow_matching.fit(dataset, num_epochs=100, batch_size=64, learning_rate=1e-3, conditional=True)
>>> improved = flow_matching.compute_target(reference_policy(context), context=context)

Differences from the released code, on purpose: the flow runs from rejected to preferred outputs; exact OT pairs
outputs only within a context; the model is called as ``model(t, y, x)`` with ``t`` of shape ``(B,)`` in training
and at inference alike (``x`` is ``None`` when ``conditional=False``); it trains with pfm's loop.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from . import validate as V
from .config import SolverConfig
from .data import PreferenceDataset
from .errors import InvalidInputError, InvalidTypeError
from .flow import PreferenceFlow


PAPER_SOLVER = SolverConfig(method="dopri5", atol=1e-4, rtol=1e-4)
"""The solver the paper's code applies its flows with (torchdiffeq's dopri5 at atol = rtol = 1e-4)."""


def _stack(items: list[Any], name: str) -> Tensor:
    try:
        return torch.stack([V.as_tensor(torch.as_tensor(x) if not isinstance(x, Tensor) else x, name)
                            for x in items])
    except RuntimeError as exc:
        raise InvalidInputError(f"the {name} of the dataset's items differ in shape ({exc})") from None


def _from_loader(loader: torch.utils.data.DataLoader, conditional: Optional[bool]) -> PreferenceDataset:
    columns: list[list[Tensor]] = []
    for b, batch in enumerate(loader):
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise InvalidInputError("each batch of the DataLoader must be a tuple (x, y+, y-) or (y+, y-); batch "
                                    f"{b} is {type(batch).__name__}" + (f" of length {len(batch)}" if
                                                                       isinstance(batch, (tuple, list)) else ""))
        if columns and len(batch) != len(columns):
            raise InvalidInputError(f"the DataLoader's batches change length (batch {b}: {len(batch)} items)")
        if not columns:
            columns = [[] for _ in batch]
        for col, part in zip(columns, batch):
            col.append(V.as_tensor(part, "a DataLoader batch"))
    if not columns:
        raise InvalidInputError("the DataLoader gave no batches")
    k = len(columns)
    if conditional and k != 3:
        raise InvalidInputError("conditional=True needs batches (x, y+, y-); the DataLoader's are (y+, y-)")
    try:
        joined = [torch.cat(col) for col in columns]
    except RuntimeError as exc:
        raise InvalidInputError(f"the DataLoader's batches differ in shape ({exc})") from None
    use_context = k == 3 and conditional is not False
    return PreferenceDataset(joined[-2], joined[-1], joined[0] if use_context else None)


def as_preference_dataset(dataset: Any, conditional: Optional[bool] = None) -> PreferenceDataset:
    """A :class:`PreferenceDataset` from one, from any indexable of tuples ``(x, y+, y-)`` / ``(y+, y-)``
    (the paper's layout), or from a ``DataLoader`` of such batches (all its batches are read once)."""
    if isinstance(dataset, torch.utils.data.DataLoader):  # what the paper's code passes: its batches, joined
        return _from_loader(dataset, conditional)
    if isinstance(dataset, PreferenceDataset):
        if conditional and dataset.context is None:
            raise InvalidInputError("conditional=True but the dataset has no context")
        if conditional is False and dataset.context is not None:
            return PreferenceDataset._new(dataset.chosen, dataset.rejected, None)
        return dataset
    try:
        n = len(dataset)
    except TypeError:
        raise InvalidTypeError(f"dataset must be a PreferenceDataset or an indexable of (x, y+, y-) tuples, got "
                               f"{type(dataset).__name__}") from None
    if n == 0:
        raise InvalidInputError("dataset is empty")
    items = [dataset[i] for i in range(n)]
    width = {len(it) if isinstance(it, (tuple, list)) else -1 for it in items}
    if width not in ({2}, {3}):
        raise InvalidInputError("each item of dataset must be a tuple (x, y+, y-) or (y+, y-); got items of "
                                f"length(s) {sorted(width)}")
    k = width.pop()
    if conditional is None:
        conditional = k == 3
    if conditional and k != 3:
        raise InvalidInputError("conditional=True needs items (x, y+, y-); the dataset's items are (y+, y-)")
    cols = list(zip(*items))
    chosen, rejected = _stack(list(cols[-2]), "y+"), _stack(list(cols[-1]), "y-")
    context = _stack(list(cols[0]), "x") if (conditional and k == 3) else None
    return PreferenceDataset(chosen, rejected, context)


class OptimalTransportConditionalFlowMatching:
    """Learns a flow from rejected to preferred outputs with minibatch OT-CFM (Tong et al. 2023).

    Args:
        model: an ``nn.Module`` called as ``model(t, y, x)`` with ``t: (B,)``, returning ``v`` shaped like ``y``.
        device: where to train and infer.
    """

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu") -> None:
        if not isinstance(model, nn.Module):
            raise InvalidTypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model.to(device)
        self.device = torch.device(device)
        self.flow: Optional[PreferenceFlow] = None

    def __call__(self, source: Any, context: Any = None, **kwargs: Any) -> Any:
        return self.compute_target(source, context=context, **kwargs)

    def fit(
        self,
        dataset: Any,
        num_epochs: int = 100,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        sigma: float = 0.1,
        conditional: Optional[bool] = None,
        *,
        coupling: str = "ot",
        seed: int = 0,
        progress: bool = True,
    ) -> tuple[nn.Module, dict[str, list[float]]]:
        """Train for ``num_epochs`` epochs; returns ``(model, {"loss": [...]})`` like the released code.

        ``sigma`` is in the data's units (no normalization, as in the paper's code). ``conditional`` defaults to
        whether the items carry a context."""
        V.check_positive_int(num_epochs, "num_epochs")
        ds = as_preference_dataset(dataset, conditional)
        self.flow = PreferenceFlow(ds.output_shape, num_classes=ds.num_classes, context_shape=ds.context_shape,
                                   field=self.model).to(self.device)
        history = self.flow.fit(ds, epochs=num_epochs, batch_size=batch_size, lr=learning_rate, sigma=sigma,
                                coupling=coupling, normalize=False, grad_clip=None, seed=seed, progress=progress)
        return self.model, {"loss": history.loss}

    def compute_target(self, source: Any, context: Any = None, timesteps: int = 10, **solver: Any) -> Any:
        """Solve the flow from ``source`` with dopri5 (atol = rtol = 1e-4, as the paper) unless ``method`` etc.
        are given; ``timesteps`` is accepted for compatibility and ignored (only the end point is returned)."""
        if self.flow is None:
            raise InvalidInputError("call fit(...) before compute_target(...)")
        opts = {"method": PAPER_SOLVER.method, "atol": PAPER_SOLVER.atol, "rtol": PAPER_SOLVER.rtol}
        opts.update(solver)
        return self.flow.transform(source, context, **opts)
