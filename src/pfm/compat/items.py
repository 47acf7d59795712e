"""The paper's data layout: datasets of items ``(x, y+, y-)`` / ``(y+, y-)``, DataLoaders of such batches, and the
released code's ``BasePreferenceDataset``, whose builders fill it in the other order.

The released ``BasePreferenceDataset(sources, targets, contexts)`` yields ``(context, target, source)``, each output
with a leading axis of one, and its docstring says sources are the rejected outputs. Its builders
(``generate_mnist_dataset``, ``generate_pbrl_dataset``) pass ``(positive, negative, contexts)``: the preferred outputs
as the sources, so every item is ``(x, y-, y+)``. The order cannot be read from the numbers; the class can be
recognized, and :func:`released_items` names which slot is preferred.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .. import validate as V
from ..data import PreferenceDataset
from ..errors import InvalidInputError, InvalidTypeError

RELEASED_CLASS = "BasePreferenceDataset"

RELEASED_ORDER_WARNING = (
    "this is the released code's BasePreferenceDataset: its items are (x, target, source) and pfm reads them as "
    "(x, y+, y-), as its docstring says, but the released builders (generate_mnist_dataset, generate_pbrl_dataset) "
    "pass the preferred outputs as the sources, so their items are (x, y-, y+) and the flow would carry outputs "
    "toward the rejected ones (MNIST, one seed: reference 0.854 -> 0.584). Say which slot is preferred: "
    "fit(pfm.compat.released_items(dataset, preferred=\"source\"), ...) for the released builders' data, "
    "preferred=\"target\" for data filled as the docstring says")


def is_released_dataset(dataset: Any) -> bool:
    """Whether ``dataset`` is the released code's ``BasePreferenceDataset`` (or a subclass): a class of that name
    among its bases, with the ``sources`` and ``targets`` attributes it sets."""
    names = {cls.__name__ for cls in type(dataset).__mro__}
    return RELEASED_CLASS in names and hasattr(dataset, "sources") and hasattr(dataset, "targets")


class ReleasedItems(torch.utils.data.Dataset):
    """A released ``BasePreferenceDataset`` read in the documented order: items ``(x, y+, y-)`` (``(y+, y-)`` without
    contexts), shaped as the released class shapes them. Made by :func:`released_items`."""

    def __init__(self, dataset: Any, preferred: str) -> None:
        self.dataset, self.preferred = dataset, preferred

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple:
        item = tuple(self.dataset[i])
        if self.preferred == "source":  # the released class yields (..., target, source)
            return item[:-2] + (item[-1], item[-2])
        return item


def released_items(dataset: Any, preferred: str) -> ReleasedItems:
    """The released code's ``BasePreferenceDataset`` with the preferred slot named: a dataset of items
    ``(x, y+, y-)`` that :meth:`OptimalTransportConditionalFlowMatching.fit` (and the released class) read as such.

    Args:
        dataset: a ``BasePreferenceDataset(sources, targets, contexts)`` of the released code.
        preferred: ``"source"`` when the sources are the preferred outputs (what the released builders
            ``generate_mnist_dataset`` and ``generate_pbrl_dataset`` make), ``"target"`` when the targets are (what
            the class's docstring says).
    """
    if not is_released_dataset(dataset):
        raise InvalidTypeError(f"dataset must be the released code's {RELEASED_CLASS} (with sources and targets), got "
                               f"{type(dataset).__name__}")
    V.check_choice(preferred, "preferred", ("source", "target"))
    return ReleasedItems(dataset, preferred)


def _stack(items: list[Any], name: str) -> Tensor:
    try:
        return torch.stack([V.as_tensor(torch.as_tensor(x) if not isinstance(x, Tensor) else x, name)
                            for x in items])
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"the {name} of the dataset's items differ in shape or are not numbers ({exc})") \
            from None


def _from_loader(loader: Any, conditional: Optional[bool]) -> PreferenceDataset:
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


def as_preference_dataset(dataset: Any, conditional: Optional[bool] = None, *,
                          collate_fn: Optional[Callable] = None, batch_size: int = 1024) -> PreferenceDataset:
    """A :class:`PreferenceDataset` from one, from any indexable of tuples ``(x, y+, y-)`` / ``(y+, y-)``
    (the paper's layout), or from a ``DataLoader`` of such batches (all its batches are read once).

    With ``collate_fn`` (the released ``fit``'s keyword), the items are batched by a ``DataLoader`` with it, in
    order, ``batch_size`` at a time, and the batches read as above. ``conditional`` defaults to whether the items
    carry a context; ``False`` drops it."""
    if collate_fn is not None:
        if not callable(collate_fn):
            raise InvalidTypeError(f"collate_fn must be callable, got {type(collate_fn).__name__}")
        if isinstance(dataset, torch.utils.data.DataLoader):
            raise InvalidInputError("collate_fn batches a dataset; a DataLoader has its own (pass its dataset)")
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
        return _from_loader(loader, conditional)
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
