"""The offline RL experiment's settings (the ``chunk``/``replan`` protocols): :class:`Config`, its quick form, how a
cell is keyed (:data:`KEY`) and the fields renamed since results were written (:data:`RENAMED`). The ``rollout``
protocol's settings are :class:`.rollout_protocol.RolloutConfig` and its baselines'."""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA = 1
PROTOCOLS = ("replan", "chunk")
KEY = {"omit": (), "unset": {"teacher_lookahead": 0}}
"""How :func:`..runner.config_key` keys a cell (with the data's digest as context): options added later leave the
key of cells at their default unchanged."""
RENAMED = {"k": "iterations"}
"""Config fields renamed since results were written: old name -> new (for :func:`..runner.config_from_dict`)."""


@dataclass
class Config:
    horizon: int = 10
    max_segments: int = 100_000
    bc_steps: int = 4000
    bc_hidden: int = 256
    n_pairs: int = 1000
    heldout: float = 0.2
    flow_steps: int = 2000
    flow_hidden: int = 256
    flow_depth: int = 3
    validate_every: int = 50
    patience: int = 10
    iterations: int = 2  # PFM x k: how many times the flow is applied (was k)
    betas: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
    dpo_steps: int = 500
    mbc_steps: int = 500
    test_states: int = 200
    eval_episodes: int = 30
    max_episode_steps: int = 1000
    protocols: tuple[str, ...] = PROTOCOLS
    start: str = "mean"
    teacher_lookahead: int = 0  # steps the teacher goes on with pi_ref's mean after a segment (0: the paper's)
    schema: int = SCHEMA

    @classmethod
    def quick_config(cls) -> "Config":
        return cls(max_segments=5000, bc_steps=300, n_pairs=300, flow_steps=400, flow_hidden=128,
                   validate_every=25, patience=6, betas=(1.0,), dpo_steps=50, mbc_steps=50, test_states=100,
                   eval_episodes=2, max_episode_steps=100)
