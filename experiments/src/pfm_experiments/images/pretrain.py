"""The image experiment's pre-trained models: the reference generator (a conditional VAE), the annotator (LeNet-5)
and the independent judge, trained once per data set and cached under the data directory.

Determinism: the three models follow from ``pretrain_seed`` alone (:class:`..config.Config`; default 0, one
set of models shared by every experiment seed, as the paper has one reference and one annotator). Each model is
built and trained in a stage of its own, seeded right before it (:func:`pfm.seed_everything` for the initial
weights and dropout, and the training loop's own generator for the row order and the noise) with
``mix_seed(pretrain_seed, stage)``, so no stage depends on the random state an earlier one, or anything before the
experiment, left behind. The cache key (:func:`models_key`) holds everything the weights depend on: the data's
bytes, the training settings, the seed, the architectures and :data:`MODELS_VERSION` (raised whenever the training
code changes what it trains), so models trained under other settings are never reused silently. What the key does
not hold but the last bits of the weights do (the torch version and the number of CPU threads, which change the
order of floating-point sums) is written in the models' ``info.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from pfm import seed_everything
from pfm.io import atomic_dir
from pfm.train import mix_seed
from pfm.runtime import data_dir
from ..runner import digest
from .data import ImageData
from .models import ConditionalVAE, JudgeCNN, LatentImagePolicy, LeNet5, fit_classifier, predict

log = logging.getLogger("pfm")

MODELS_VERSION = 2
"""Raised whenever what :func:`pretrained` trains changes for the same settings (1: before the models were seeded
stage by stage and before the key held the seed and the architectures)."""
STAGES = {"vae": 0, "annotator": 1, "judge": 2}
"""Each model's stage: its seed is ``mix_seed(pretrain_seed, stage)``."""


@dataclass
class Pretrained:
    vae: ConditionalVAE
    annotator: LeNet5
    judge: JudgeCNN
    info: dict[str, Any]

    @property
    def policy(self) -> LatentImagePolicy:
        return LatentImagePolicy(self.vae).eval()


def stage_seed(pretrain_seed: int, model: str) -> int:
    """The seed of ``model``'s stage (``vae``, ``annotator`` or ``judge``)."""
    return mix_seed(pretrain_seed, STAGES[model])


def _build(data: ImageData, model: str, seed: Optional[int] = None) -> torch.nn.Module:
    """A fresh ``model``; with ``seed``, its initial weights drawn after :func:`pfm.seed_everything` of it."""
    if seed is not None:
        seed_everything(seed)
    if model == "vae":
        return ConditionalVAE(data.image_shape, data.num_classes)
    return LeNet5(data.num_classes) if model == "annotator" else JudgeCNN(data.num_classes)


def _defaults(cls: type) -> dict[str, Any]:
    """The constructor settings a class is built with here (its defaults beyond the data's shape)."""
    import inspect

    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def models_key(data: ImageData, *, vae_epochs: float, classifier_epochs: float, pretrain_seed: int) -> str:
    """The cache key of the pre-trained models: ``<data set>-<16 hex digits>`` of the data's bytes (SHA-256), the
    training settings, the seed, the architectures (class names and constructor settings) and
    :data:`MODELS_VERSION`."""
    h = hashlib.sha256()
    for t in (data.train_x, data.train_y):
        h.update(t.numpy().tobytes())
    arch = {cls.__name__: {**_defaults(cls), "image_shape": list(data.image_shape), "num_classes": data.num_classes}
            for cls in (ConditionalVAE, LeNet5, JudgeCNN)}
    settings = {"data": h.hexdigest(), "vae_epochs": vae_epochs, "classifier_epochs": classifier_epochs,
                "pretrain_seed": pretrain_seed, "architectures": arch, "version": MODELS_VERSION}
    return f"{data.name}-{digest(settings)}"


def pretrained(data: ImageData, *, vae_epochs: float, classifier_epochs: float, pretrain_seed: int = 0,
               progress: bool = True, cache_dir: Optional[Path] = None) -> Pretrained:
    """The reference generator, annotator and judge for ``data`` (images ``(N, 1, 28, 28)``): loaded from
    ``<cache_dir>/<models_key>/`` (default ``<data dir>/images``), else trained stage by stage and cached."""
    from safetensors.torch import load_file, save_file

    key = models_key(data, vae_epochs=vae_epochs, classifier_epochs=classifier_epochs, pretrain_seed=pretrain_seed)
    where = (cache_dir or data_dir() / "images") / key
    if (where / "info.json").exists():
        models = {name: _build(data, name) for name in STAGES}
        for name, m in models.items():
            m.load_state_dict(load_file(where / f"{name}.safetensors"))
            m.eval()
        log.info("images: pre-trained models from %s", where)
        return Pretrained(models["vae"], models["annotator"], models["judge"], json.loads((where / "info.json")
                                                                                          .read_text()))
    info: dict[str, Any] = {"data": data.source, "train": len(data.train_y), "test": len(data.test_y),
                            "pretrain_seed": pretrain_seed, "key": key, "torch": torch.__version__,
                            "torch_threads": torch.get_num_threads(), "seconds": {}}
    models = {}
    for name in STAGES:
        seed = stage_seed(pretrain_seed, name)
        m = models[name] = _build(data, name, seed)
        t = time.perf_counter()
        if name == "vae":
            m.fit(data.train_x, data.train_y, epochs=vae_epochs, seed=seed, progress=progress)
        else:
            fit_classifier(m, data.train_x, data.train_y, epochs=classifier_epochs, augment=name == "judge",
                           seed=seed, progress=progress, desc="annotator (LeNet-5)" if name == "annotator" else
                           "independent judge (CNN)")
        info["seconds"][name] = time.perf_counter() - t
        m.eval()
    for name in ("annotator", "judge"):
        info[f"{name}_heldout_accuracy"] = float((predict(models[name], data.test_x).argmax(1) == data.test_y)
                                                 .float().mean())
    with torch.no_grad():
        info["vae_heldout_elbo_per_pixel"] = float(models["vae"].elbo(
            data.test_x, data.test_y, torch.Generator().manual_seed(pretrain_seed)).mean()) / \
            data.test_x[0].numel()
    with atomic_dir(where) as tmp:
        for name, m in models.items():
            save_file({k: v.contiguous() for k, v in m.state_dict().items()}, tmp / f"{name}.safetensors")
        (tmp / "info.json").write_text(json.dumps(info, indent=1))
    return Pretrained(models["vae"], models["annotator"], models["judge"], info)
