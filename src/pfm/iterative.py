"""Iterative PFM (the paper's section 3.3): re-collect preferences on the improved outputs, train a new flow on them,
and compose; each round moves the outputs further toward what the annotator prefers.

This differs from :meth:`PreferenceFlow.iterate` ("PFM x k"), which re-applies one trained flow k times without
asking the annotator again.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from . import validate as V
from .config import FitConfig, merge
from .io import atomic_dir, read_json
from .data import PreferenceDataset, collect_preferences
from .errors import FlowFileError, InvalidInputError, InvalidTypeError, MissingFileError
from .flow import PreferenceFlow
from .train import History

CHAIN_NAME = "chain.json"
FORMAT = "pfm.FlowChain"
FORMAT_VERSION = 1


class FlowChain(nn.Module):
    """Flows applied one after another: ``transform(y) = flows[-1](... flows[0](y))``."""

    def __init__(self, flows: Sequence[PreferenceFlow] = ()) -> None:
        super().__init__()
        self.flows = nn.ModuleList()
        for f in flows:
            self.append(f)
        self.histories: list[History] = []

    def append(self, flow: PreferenceFlow) -> None:
        if not isinstance(flow, PreferenceFlow):
            raise InvalidTypeError(f"a FlowChain holds PreferenceFlows, got {type(flow).__name__}")
        if len(self.flows) and (flow.output_shape, flow.context_kind) != (self.flows[0].output_shape,
                                                                         self.flows[0].context_kind):
            raise InvalidInputError("every flow of a chain must take the same outputs and contexts")
        self.flows.append(flow)

    def __len__(self) -> int:
        return len(self.flows)

    def transform(self, y: Any, context: Any = None, *, rounds: Optional[int] = None, **solver: Any) -> Any:
        """Push ``y`` through the first ``rounds`` flows (all by default); solver options go to each flow."""
        if not len(self.flows):
            raise InvalidInputError("this FlowChain is empty")
        rounds = len(self.flows) if rounds is None else rounds
        V.check_positive_int(rounds, "rounds")
        if rounds > len(self.flows):
            raise InvalidInputError(f"rounds={rounds} but the chain holds {len(self.flows)} flows")
        for flow in self.flows[:rounds]:
            y = flow.transform(y, context, **solver)
        return y

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``chain.json`` and one flow directory per round (``round-01``, ...), replaced atomically."""
        directory = Path(directory)
        if directory.exists() and any(directory.iterdir()) and not (directory / CHAIN_NAME).exists():
            raise InvalidInputError(f"{str(directory)!r} is a non-empty directory that holds no flow chain; "
                                    "refusing to replace it")
        names = [f"round-{i + 1:02d}" for i in range(len(self.flows))]
        with atomic_dir(directory) as tmp:
            for name, flow in zip(names, self.flows):
                flow.save(tmp / name)
            (tmp / CHAIN_NAME).write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                                                      "flows": names}, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, *, device: torch.device | str = "cpu") -> "FlowChain":
        directory = Path(directory)
        path = directory / CHAIN_NAME
        if not directory.exists():
            raise MissingFileError(f"no such flow chain directory: {str(directory)!r}")
        if not path.exists():
            raise FlowFileError(f"{str(directory)!r} is not a saved flow chain: it has no {CHAIN_NAME}")
        cfg = read_json(path, FlowFileError)
        if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or cfg.get("format_version") != FORMAT_VERSION:
            raise FlowFileError(f"{str(path)!r} is not a pfm flow chain of format version {FORMAT_VERSION}")
        return cls([PreferenceFlow.load(directory / name, device=device) for name in cfg["flows"]])


def iterative_pfm(
    reference: Callable[[Optional[Tensor], int], Tensor],
    annotator: Callable,
    contexts: Any = None,
    *,
    rounds: int = 3,
    n: Optional[int] = None,
    pairs_per_context: int = 1,
    start: Optional[FlowChain] = None,
    flow_kwargs: Optional[dict[str, Any]] = None,
    fit_config: Optional[FitConfig] = None,
    fit_kwargs: Optional[dict[str, Any]] = None,
    collect_kwargs: Optional[dict[str, Any]] = None,
    on_round: Optional[Callable[[int, FlowChain, PreferenceDataset], None]] = None,
    seed: int = 0,
) -> FlowChain:
    """Train ``rounds`` flows, each on preferences collected from the outputs of the chain so far.

    Round 1 collects pairs from ``reference``; round r > 1 collects them from ``chain.transform(reference(context,
    n))`` with the same annotator and contexts. Give ``start`` (e.g. ``FlowChain([flow])`` for a plain PFM already
    trained on the reference's pairs) to go on from its rounds; its flows are not retrained.

    Args:
        reference: black-box sampler ``reference(context, n) -> (n, *shape)``.
        annotator: score or pairwise judge, as for :func:`pfm.collect_preferences`.
        contexts, n, pairs_per_context: what to collect each round (see :func:`pfm.collect_preferences`).
        start: a chain whose flows are the first rounds (``len(start) <= rounds``); it is extended in place.
        flow_kwargs: passed to :meth:`PreferenceFlow.for_dataset` (e.g. ``hidden``, ``depth``).
        fit_config: every round's :class:`pfm.FitConfig` (default ``FitConfig()``); its ``seed`` is set per round.
        fit_kwargs: settings of :class:`pfm.FitConfig` that override ``fit_config``'s (e.g. ``steps``,
            ``coupling``), checked before the first round.
        collect_kwargs: passed to :func:`pfm.collect_preferences`.
        on_round: called as ``on_round(r, chain, dataset)`` after round r (1-based) is trained.
        seed: round r uses ``seed + r`` for its collection and its fit.

    Returns:
        the :class:`FlowChain`; ``chain.histories`` holds each round's training history.
    """
    if not callable(reference):
        raise InvalidTypeError(f"reference must be callable as reference(context, n), got {type(reference).__name__}")
    V.check_positive_int(rounds, "rounds")
    if start is not None and not isinstance(start, FlowChain):
        raise InvalidTypeError(f"start must be a FlowChain, got {type(start).__name__}")
    if start is not None and len(start) > rounds:
        raise InvalidInputError(f"start already holds {len(start)} rounds, more than rounds={rounds}")
    flow_kwargs = dict(flow_kwargs or {})
    fit_cfg = merge(fit_config, fit_kwargs or {}, FitConfig, "iterative_pfm fit")
    collect_kwargs = dict(collect_kwargs or {})
    chain = FlowChain() if start is None else start

    def improved(c: Optional[Tensor], m: int) -> Tensor:
        y = reference(c, m)
        return chain.transform(y, c) if len(chain) else y

    for r in range(len(chain) + 1, rounds + 1):
        ds = collect_preferences(improved, annotator, contexts, pairs_per_context, n=n,
                                 **{"seed": seed + r, **collect_kwargs})
        flow = PreferenceFlow.for_dataset(ds, **flow_kwargs)
        chain.histories.append(flow.fit(ds, dataclasses.replace(fit_cfg, seed=seed + r)))
        chain.append(flow)
        if on_round is not None:
            on_round(r, chain, ds)
    return chain
