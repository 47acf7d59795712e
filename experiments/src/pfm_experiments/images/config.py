"""The image experiment's settings: :class:`Config`, its quick form, and how its runs are keyed (:data:`KEY`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..runner import config_key
from .data import ImageData
from .pretrain import models_key

SCHEMA = 2
"""2: each seed also has the best-of-n and PFM-select rows and every row its inference cost (issue 27)."""
KEY = {"omit": ("seeds", "path"), "unset": {"flow_field": "mlp", "flow_batch": 256, "pretrain_seed": 0,
                                           "pairs": "random", "pairs_k": 10, "timing_repeats": 3}}
"""How :func:`..runner.config_key` keys a run: the seeds and the data's path do not count (the data's bytes do,
through :meth:`Config.models_key`); options added later leave the key of runs at their default unchanged, so those
runs stay cached."""


@dataclass
class Config:
    dataset: str = "mnist"
    path: Optional[str] = None
    max_train: Optional[int] = 20_000
    test_per_class: int = 100
    vae_epochs: float = 60
    classifier_epochs: float = 15
    pretrain_seed: int = 0
    """Seeds the reference generator, the annotator and the judge (:mod:`.pretrain`): one set of models for every
    experiment seed, part of their cache key."""
    seeds: tuple[int, ...] = (0, 1, 2)
    n_pairs: int = 10_000
    pairs: str = "random"
    """How a pair is made (:mod:`.pairs`): ``random`` (two samples of a label) or ``best-worst`` (of ``pairs_k``)."""
    pairs_k: int = 10
    heldout: float = 0.1
    flow_steps: int = 3000
    flow_hidden: int = 512
    flow_depth: int = 3
    flow_ema: Optional[float] = 0.999
    flow_field: str = "mlp"
    flow_batch: int = 256
    eval_per_class: int = 100
    betas: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 10.0)
    validation_per_class: int = 50
    reward_model: str = "cnn"
    reward_steps: int = 400
    rlhf_estimator: str = "pathwise"
    rlhf_steps: int = 400
    dpo_steps: int = 600
    curve_points: int = 10
    best_of_n: tuple[int, ...] = (2, 4, 16, 64)
    """The n of the best-of-n and PFM-select rows (:mod:`.selection`)."""
    strengths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0)
    """The strength dial (issue 27): PFM's one flow applied with ``transform(..., strength=s)`` at each s (1 is PFM,
    2 is PFM x 2), scored like every method, against its distance from the reference."""
    reference_source: bool = True
    """Also a flow ``fit(source="reference")`` (issue 27): from every pair's y- and y+ (pi_ref's samples) onto y+,
    so that a fresh reference sample is carried to the preferred marginal p1 (Theorem 1's maximizer); row
    :data:`pfm_experiments.rows.SOURCE_REFERENCE`."""
    timing_repeats: int = 3
    """A row's wall time per output is the fastest of this many runs (:func:`..cost.measure`); 1 in the quick run,
    whose times only show that each row is timed."""
    schema: int = SCHEMA
    quick: bool = False

    @classmethod
    def quick_config(cls, dataset: str = "mnist") -> "Config":
        return cls(dataset=dataset, max_train=2000, vae_epochs=8, classifier_epochs=3, seeds=(0,), n_pairs=1000,
                   flow_steps=400, flow_hidden=256, flow_ema=0.99, eval_per_class=20, betas=(0.1, 10.0),
                   validation_per_class=10, reward_steps=50, rlhf_steps=20, dpo_steps=40, curve_points=2,
                   best_of_n=(2, 4), strengths=(0.0, 0.5, 1.0, 2.0), timing_repeats=1, quick=True)

    def models_key(self, data: ImageData) -> str:
        """The pre-trained models' cache key (:func:`.pretrain.models_key`): the data's bytes, their training
        settings and seed, their architectures."""
        return models_key(data, vae_epochs=self.vae_epochs, classifier_epochs=self.classifier_epochs,
                          pretrain_seed=self.pretrain_seed)

    def key(self, models_key: str) -> str:
        """The key of this config's runs on the models of ``models_key`` (see :data:`KEY`)."""
        return config_key(self, **KEY, context=models_key)
