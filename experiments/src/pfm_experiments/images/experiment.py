"""The conditional image generation experiment: PFM against RLHF, DPO and a trivial shift on real digits.

Per data set, once (cached under the data directory, :mod:`.pretrain`): the reference generator (a conditional
VAE, see :mod:`.models`), the annotator (LeNet-5) and the independent judge. Per seed: ``n_pairs`` preference pairs
(:mod:`.pairs`: two reference samples of the same label, the one the annotator gives the higher label probability
preferred, as the paper's text says; or the best and the worst of ``pairs_k``, as its released code does); then
every method on the same pairs, scored on fresh samples (see :mod:`.metrics`). Every number follows from the seeds.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from pfm.io import atomic_file
from pfm.baselines import RewardModel, dpo, rlhf
from pfm.baselines.dpo import implicit_accuracy
from pfm import seed_everything
from pfm import validate as V
from pfm.data import PreferenceDataset
from pfm.errors import InvalidInputError
from pfm.flow import PreferenceFlow
from pfm.train import mix_seed
from pfm.runtime import data_dir
from ..cost import Cost, at_largest_n, measure
from ..rows import SOURCE_REFERENCE
from ..runner import SeedRunner, Stages, read_results
from ..sweeps import sweep_betas
from .config import KEY, SCHEMA, Config  # noqa: F401  (SCHEMA, as before, from here too)
from .data import ImageData, load_images
from .dial import dial_figure, dial_table
from .metrics import ImageEvaluator
from .models import LatentImagePolicy, RewardEncoder, label_probability
from .pairs import check_pairing, make_pairs
from .pretrain import Pretrained, pretrained
from .selection import batched, selection_rows

log = logging.getLogger("pfm")


def _sample_images(policy: LatentImagePolicy, labels: Tensor, gen: torch.Generator) -> Tensor:
    return policy.images(policy.sample(labels, len(labels), generator=gen))


STAGES = ("pairs", "evaluation samples", "test pairs", "flow", "reward model", "RLHF", "DPO", "policy samples",
          "best-of-n", "another reference draw", "reference-source flow")
"""The stages of one seed's run: each is seeded on its own (:func:`stage`), so none depends on the random state
another left behind (the reference samples and the test pairs are the same whichever pairs are made). A stage
added later goes at the end, so that the others keep their seeds."""


def stage(seed: int, name: str) -> torch.Generator:
    """Seed the global generators for stage ``name`` of seed ``seed`` (:func:`pfm.seed_everything`: new networks'
    initial weights) and return a generator of its own for the stage's samples, both from
    ``mix_seed(seed, 1 + STAGES.index(name))``."""
    s = mix_seed(seed, 1 + STAGES.index(name))
    seed_everything(s)
    return torch.Generator().manual_seed(s)


class ImageSeed(Stages):
    """Every method on one seed's preference pairs, stage by stage (see :func:`run_one`). Each stage seeds itself
    (:func:`stage`); RLHF's and DPO's test samples come in turn from one generator (``policy samples``)."""

    STAGES = (("data", "pairs"), ("PFM", "pfm"), (None, "trivial_shift"), ("reward model", "reward_model"),
              ("RLHF", "rlhf"), ("DPO", "dpo"), ("best-of-n", "selection"))

    def __init__(self, cfg: Config, data: ImageData, models: Pretrained, seed: int, progress: bool = False) -> None:
        super().__init__(seed)
        self.cfg, self.data, self.models, self.progress = cfg, data, models, progress
        self.ref, self.k = models.policy, data.num_classes
        self.M: dict[str, Any] = {}
        self.samples: dict[str, Tensor] = {}
        self.order = ["reference", "rejected (y-)", "preferred (y+)", "PFM", "PFM x 2"]

    def score(self, y: Tensor, c: Tensor) -> Tensor:
        """The annotator on the (clipped) image part of latent-and-image outputs."""
        return label_probability(self.models.annotator, self.ref.images(y).clamp(0, 1), c)

    def add(self, name: str, x: Tensor, **more: Any) -> None:
        """A method's test samples and their metrics."""
        self.samples[name] = x
        self.M[name] = {"metrics": self.ev.as_dict(x, self.eval_labels), **more}

    def pairs(self) -> None:
        """The preference pairs (train and held-out), pi_ref's test samples, the test pairs and the evaluator."""
        cfg, ref, k, seed = self.cfg, self.ref, self.k, self.seed
        self.labels = torch.arange(k).repeat(math.ceil(cfg.n_pairs / k))[:cfg.n_pairs]
        g_pairs = stage(seed, "pairs")
        full = make_pairs(cfg.pairs, cfg.pairs_k, lambda c, n: ref.sample(c, n, generator=g_pairs), self.score,
                          self.labels, seed=10_000 + seed)
        perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
        n_held = max(k, int(round(cfg.heldout * len(full))))
        self.full_train, self.full_held = full.subset(perm[n_held:]), full.subset(perm[:n_held])

        def as_images(ds: PreferenceDataset) -> PreferenceDataset:
            return PreferenceDataset(ref.images(ds.chosen), ref.images(ds.rejected), ds.context)

        self.train, self.held = as_images(self.full_train), as_images(self.full_held)
        self.eval_labels = torch.arange(k).repeat_interleave(cfg.eval_per_class)
        self.x_ref = _sample_images(ref, self.eval_labels, stage(seed, "evaluation samples"))
        g_test = stage(seed, "test pairs")
        test_pairs = as_images(make_pairs(cfg.pairs, cfg.pairs_k, lambda c, n: ref.sample(c, n, generator=g_test),
                                          self.score, self.eval_labels, seed=20_000 + seed))
        self.ev = ImageEvaluator(self.models.annotator, self.models.judge, self.data.test_x, self.data.test_y,
                                 self.x_ref, self.eval_labels)
        self.add("reference", self.x_ref)
        self.add("rejected (y-)", test_pairs.rejected)
        self.add("preferred (y+)", test_pairs.chosen)

    def pfm(self) -> None:
        """PFM's flow (and the reference-source variant's), applied once, twice and along the strength dial."""
        cfg, seed, train, labels = self.cfg, self.seed, self.train, self.eval_labels
        stage(seed, "flow")
        self.flow = _new_flow(cfg, train)
        # validation_fraction=0: the paper's protocol trains on every pair (pfm's default holds a tenth out)
        self.hist = self.flow.fit(train, steps=cfg.flow_steps, batch_size=cfg.flow_batch, ema_decay=cfg.flow_ema,
                                  seed=seed, progress=self.progress, validation_fraction=0)
        self.seconds["PFM fit"] = self.hist.seconds
        self.to_p1: Optional[PreferenceFlow] = None
        if cfg.reference_source:  # the same field and training, from pi_ref's samples (y- and y+) onto y+
            stage(seed, "reference-source flow")
            self.to_p1 = _new_flow(cfg, train)
            self.seconds[f"{SOURCE_REFERENCE} fit"] = self.to_p1.fit(
                train, steps=cfg.flow_steps, batch_size=cfg.flow_batch, ema_decay=cfg.flow_ema, seed=seed,
                source="reference", progress=self.progress, validation_fraction=0).seconds
        x_pfm = self.flow.transform(self.x_ref, labels)
        self.add("PFM", x_pfm)
        self.add("PFM x 2", self.flow.transform(x_pfm, labels))
        self.M["PFM"]["strength"] = [
            {"strength": float(s), **self.ev.as_dict(self.flow.transform(self.x_ref, labels, strength=s), labels)}
            for s in cfg.strengths]
        # the divergence axis's floor: a second draw of pi_ref's test samples is not at distance 0 from the first
        x_again = _sample_images(self.ref, labels, stage(seed, "another reference draw"))
        self.M["reference"]["another_draw"] = self.ev.as_dict(x_again, labels)
        if self.to_p1 is not None:
            self.add(SOURCE_REFERENCE, self.to_p1.transform(self.x_ref, labels))
            self.order.append(SOURCE_REFERENCE)

    def trivial_shift(self) -> None:
        """Each label's mean move from y- to y+, added to pi_ref's test samples."""
        train = self.train
        shift = torch.stack([(train.chosen - train.rejected)[train.context == c].mean(0) for c in range(self.k)])
        self.add("trivial shift", self.x_ref + shift[self.eval_labels])
        self.order.append("trivial shift")

    def reward_model(self) -> None:
        """The Bradley-Terry reward model RLHF optimizes and best-of-n picks by."""
        cfg, train = self.cfg, self.train
        stage(self.seed, "reward model")
        if cfg.reward_model == "cnn":
            rm = RewardModel.for_dataset(train, hidden=128, depth=1, encoder=RewardEncoder(self.data.image_shape))
        elif cfg.reward_model == "mlp":
            rm = RewardModel.for_dataset(train, hidden=256, depth=2)
        else:
            raise InvalidInputError(f"reward_model must be 'cnn' or 'mlp', got {cfg.reward_model!r}")
        rm.fit(train, steps=cfg.reward_steps, seed=self.seed, progress=self.progress)
        self.rm = rm.eval().requires_grad_(False)
        self.reward_info = {"model": cfg.reward_model, "heldout_accuracy": rm.accuracy(self.held),
                            "train_accuracy": rm.accuracy(train)}

    def reward(self, y: Tensor, c: Tensor) -> Tensor:
        """RLHF's reward: differentiable for the pathwise estimator."""
        images = self.ref.images(y)
        return self.rm(images, c) if self.cfg.rlhf_estimator == "pathwise" else self.rm.score(images, c)

    def validate(self, policy: nn.Module) -> float:
        """The annotator's mean score of fresh samples (new queries to the labeler, on noise that neither the pairs
        nor the test samples use). It picks beta for RLHF and DPO; PFM has no beta to pick."""
        val_labels = torch.arange(self.k).repeat_interleave(self.cfg.validation_per_class)
        g = torch.Generator().manual_seed(30_000 + self.seed)
        return float(self.score(policy.sample(val_labels, len(val_labels), generator=g), val_labels).mean())

    def evaluate_policy(self, policy: nn.Module, learned_reward: bool = False) -> dict[str, float]:
        x = _sample_images(policy, self.eval_labels, self.gen)
        extra = {"learned_reward": float(self.rm.score(x, self.eval_labels).mean())} if learned_reward else {}
        return {**self.ev.as_dict(x, self.eval_labels), **extra}

    def rlhf(self) -> None:
        """RLHF over the betas (picked by validation and by implicit accuracy), and its over-optimization curve."""
        cfg, seed, ref = self.cfg, self.seed, self.ref
        self.gen = stage(seed, "policy samples")  # the test samples of every tuned policy, drawn in turn
        stage(seed, "RLHF")
        train_labels = self.labels[:len(self.full_train)]
        fit: Callable[[float], nn.Module] = lambda b: rlhf(  # noqa: E731
            ref, self.reward, train_labels, beta=b, steps=cfg.rlhf_steps, batch_size=64, lr=1e-4, seed=seed,
            estimator=cfg.rlhf_estimator, progress=self.progress)[0]
        _sweep("RLHF", cfg.betas, fit, ref, self.full_held, lambda p: self.evaluate_policy(p, True), self.validate,
               self.M, self.samples, self.eval_labels, self.gen, self.ev)
        self.M["RLHF"]["reward_model"] = self.reward_info
        self.M["RLHF"]["curve"] = _overoptimization(cfg, ref, self.reward, train_labels, self.M["RLHF"]["beta"],
                                                    self.ev, self.eval_labels, self.rm, self.gen, seed, self.progress)
        self.order += ["RLHF", "RLHF, beta by implicit acc."]

    def dpo(self) -> None:
        """DPO over the betas, and at a tenth of the smallest."""
        cfg, seed, ref = self.cfg, self.seed, self.ref
        stage(seed, "DPO")
        fit: Callable[[float], nn.Module] = lambda b: dpo(ref, self.full_train, beta=b, steps=cfg.dpo_steps,  # noqa: E731
                                                          batch_size=128, lr=1e-4, seed=seed,
                                                          progress=self.progress)[0]
        _sweep("DPO", cfg.betas, fit, ref, self.full_held, self.evaluate_policy, self.validate, self.M, self.samples,
               self.eval_labels, self.gen, self.ev)
        small = min(cfg.betas) / 10
        policy = fit(small)
        self.samples["DPO, small beta"] = _sample_images(policy, self.eval_labels, self.gen)
        self.M["DPO, small beta"] = {"beta": small, "heldout_accuracy": implicit_accuracy(policy, ref, self.full_held),
                                     "validation": self.validate(policy),
                                     "metrics": self.ev.as_dict(self.samples["DPO, small beta"], self.eval_labels)}
        self.order += ["DPO", "DPO, beta by implicit acc.", "DPO, small beta"]

    def selection(self) -> None:
        """Best-of-n by the reward model and by the annotator, PFM-select, and every method's inference cost."""
        ref, labels = self.ref, self.eval_labels
        stage(self.seed, "best-of-n")
        annotator = batched(lambda x, c: label_probability(self.models.annotator, x.clamp(0, 1), c))
        picked, picked_samples = selection_rows(
            lambda c, n, g: ref.images(ref.sample(c, n, generator=g)),
            {"reward model": batched(self.rm.score), "annotator": annotator}, self.flow,
            lambda x: self.ev.as_dict(x, labels), labels, self.cfg.best_of_n, self.seed,
            repeats=self.cfg.timing_repeats)
        _costs(self.M, ref, self.flow, self.x_ref, labels, self.cfg.timing_repeats, self.to_p1)
        self.M.update(picked)
        self.samples.update(picked_samples)
        self.order += list(picked)

    def record(self) -> dict[str, Any]:
        order, hist = self.order, self.hist
        return {"seed": self.seed, "n_train": len(self.train), "n_heldout": len(self.held),
                "methods": {m: self.M[m] for m in order}, "flow_loss": hist.loss[::max(1, len(hist.loss) // 200)],
                "seconds": self.seconds, "samples": {m: self.samples[m].numpy() for m in order},
                "labels": self.eval_labels.numpy()}


def run_one(cfg: Config, data: ImageData, models: Pretrained, seed: int, progress: bool = False) -> dict[str, Any]:
    """Every method on one seed's preference pairs (:class:`ImageSeed`'s stages: pairs, PFM, the trivial shift, the
    reward model, RLHF, DPO, best-of-n). Returns metrics, sweeps, curves, times and the samples."""
    return ImageSeed(cfg, data, models, seed, progress).run()


def _costs(M: dict[str, Any], ref: LatentImagePolicy, flow: PreferenceFlow, x_ref: Tensor, labels: Tensor,
           repeats: int = 3, to_p1: Optional[PreferenceFlow] = None) -> None:
    """Each method's inference cost per output (:class:`..cost.Cost`), measured on the test outputs (the fastest of
    ``repeats`` runs): a reference sample; PFM adds one solve of the flow (PFM x 2 two; ``to_p1``, the
    reference-source flow, one of its own); RLHF and DPO sample their fine-tuned copy of the reference, which costs
    what a reference sample does (the same network, timed once)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        _, sample_s = measure(lambda: _sample_images(ref, labels, g), len(labels), repeats)
        _, solve_s = measure(lambda: flow.transform(x_ref, labels), len(labels), repeats)
    for name in ("reference", "trivial shift"):
        M[name]["cost"] = Cost(1, 0, 0, sample_s).as_dict()
    for name, solves in (("PFM", 1), ("PFM x 2", 2)):
        M[name]["cost"] = Cost(1, solves, 0, sample_s + solves * solve_s).as_dict()
    for name in ("RLHF", "RLHF, beta by implicit acc.", "DPO", "DPO, beta by implicit acc.", "DPO, small beta"):
        M[name]["cost"] = Cost(0, 0, 1, sample_s).as_dict()
    if to_p1 is not None:
        with torch.no_grad():
            _, p1_s = measure(lambda: to_p1.transform(x_ref, labels), len(labels), repeats)
        M[SOURCE_REFERENCE]["cost"] = Cost(1, 1, 0, sample_s + p1_s).as_dict()


def _new_flow(cfg: Config, train: PreferenceDataset) -> PreferenceFlow:
    """An untrained flow of ``cfg.flow_field``: the MLP on the flattened image, or the UNet on its shape."""
    if cfg.flow_field == "mlp":
        return PreferenceFlow.for_dataset(train, hidden=cfg.flow_hidden, depth=cfg.flow_depth)
    if cfg.flow_field == "unet":
        return PreferenceFlow.for_dataset(train, field="unet")
    raise InvalidInputError(f"flow_field must be 'mlp' or 'unet', got {cfg.flow_field!r}")


def _sweep(name: str, betas: tuple[float, ...], train: Callable[[float], nn.Module], ref: nn.Module,
           heldout: PreferenceDataset, evaluate: Callable[[nn.Module], dict[str, float]],
           validate: Callable[[nn.Module], float], M: dict[str, Any], samples: dict[str, Tensor],
           eval_labels: Tensor, gen: torch.Generator, ev: ImageEvaluator) -> None:
    """Sweep beta; record ``name`` (beta picked by ``validate``) and ``name, beta by implicit acc.`` (the label-free
    pick: held-out implicit accuracy) in ``M`` with their test samples in ``samples``."""
    s = sweep_betas(train, betas, ref, heldout, evaluate, validate)
    for label, b in ((name, s.beta), (f"{name}, beta by implicit acc.", s.pick("heldout_accuracy"))):
        samples[label] = _sample_images(s.policies[b], eval_labels, gen)
        row = next(r for r in s.rows if r["beta"] == b)
        M[label] = {"beta": b, "heldout_accuracy": row["heldout_accuracy"], "validation": row["validation"],
                    "metrics": ev.as_dict(samples[label], eval_labels)}
    M[name]["sweep"] = s.rows


def _overoptimization(cfg: Config, ref: LatentImagePolicy, reward: Callable, contexts: Tensor, beta: float,
                      ev: ImageEvaluator, eval_labels: Tensor, rm: RewardModel, gen: torch.Generator, seed: int,
                      progress: bool) -> list[dict[str, float]]:
    """RLHF at ``beta`` for twice its steps, scored every ``2 * rlhf_steps / curve_points`` steps: the learned
    reward of its samples beside the annotator's and the judge's scores (reward over-optimization)."""
    chunk = max(1, 2 * cfg.rlhf_steps // cfg.curve_points)
    policy: nn.Module = ref
    curve = []
    for i in range(cfg.curve_points + 1):
        if i:
            policy = rlhf(policy, reward, contexts, beta=beta, steps=chunk, batch_size=64, lr=1e-4, reference=ref,
                          seed=seed + 100 * i, estimator=cfg.rlhf_estimator, progress=progress)[0]
        x = _sample_images(policy, eval_labels, gen)
        m = ev(x, eval_labels)
        curve.append({"step": i * chunk, "learned_reward": float(rm.score(x, eval_labels).mean()),
                      "annotator": m.annotator, "judge_probability": m.judge_probability, "frechet": m.frechet})
    return curve


def reproduce(out_dir: str | Path = "results", *, dataset: str = "mnist", path: Optional[str] = None,
              quick: bool = False, seeds: Optional[int] = None, cache_dir: Optional[str | Path] = None,
              field: str = "mlp", flow_steps: Optional[int] = None, flow_batch: Optional[int] = None,
              pairs: str = "random", pairs_k: Optional[int] = None, progress: bool = True) -> dict[str, Any]:
    """Run every method on every seed; write ``{stem}.json``, ``{stem}.md``, ``{stem}-grids.png``,
    ``{stem}-rlhf.png``, ``{stem}-cost.png`` (quality against inference cost), ``{stem}-dial.png`` (the strength
    dial beside the other knobs, :mod:`.dial`) and ``{stem}-samples.npz`` (every method's samples, one array each,
    and ``labels``), where
    ``stem`` is :func:`stem` (``mnist``, ``mnist-unet``, ``mnist-best-worst``, ...).

    The pre-trained models and each finished seed are cached under ``cache_dir`` (default: the data directory),
    the seeds in ``runs/<key>/seed-<seed>.json`` (:class:`pfm_experiments.runner.SeedRunner`, :data:`KEY`), so a
    stopped run goes on where it was. ``field="unet"`` trains PFM's field as the library's UNet on the
    ``(1, 28, 28)`` images (batch 64) instead of the MLP on the flattened vector; the files are then named
    ``{dataset}-unet.*``. ``flow_steps`` and ``flow_batch`` override the flow's training steps and batch size (the
    paper's UNet: 8,000 steps of 125 pairs, 100 epochs of 10,000). ``pairs`` is how the preference pairs
    are made (:mod:`.pairs`): ``random`` (default) or ``best-worst`` of ``pairs_k`` samples (default 10; an error
    with ``random``). Every number follows from the seeds (the pre-trained models from ``Config.pretrain_seed``,
    see :mod:`.pretrain`; each seed's stages from :func:`stage`), whatever the cache held.
    """
    from . import report

    cfg = Config.quick_config(dataset) if quick else Config(dataset=dataset)
    cfg.path = path
    if field not in ("mlp", "unet"):
        raise InvalidInputError(f"field must be 'mlp' or 'unet', got {field!r}")
    if field == "unet":
        cfg.flow_field, cfg.flow_batch = "unet", 64
    V.check_positive_int(flow_steps, "flow_steps", allow_none=True)
    V.check_int(flow_batch, "flow_batch", low=1, high=cfg.n_pairs, allow_none=True)  # at most the pairs
    cfg.flow_steps = cfg.flow_steps if flow_steps is None else flow_steps
    cfg.flow_batch = cfg.flow_batch if flow_batch is None else flow_batch
    if pairs_k is not None and pairs != "best-worst":
        raise InvalidInputError(f"pairs_k applies to pairs='best-worst' only, not to pairs={pairs!r}")
    cfg.pairs, cfg.pairs_k = pairs, cfg.pairs_k if pairs_k is None else pairs_k
    check_pairing(cfg.pairs, cfg.pairs_k)
    if seeds is not None:
        if not isinstance(seeds, int) or seeds < 1:
            raise InvalidInputError(f"seeds must be a positive integer, got {seeds!r}")
        cfg.seeds = tuple(range(seeds))
    start = time.perf_counter()
    data = load_images(dataset, path, max_train=cfg.max_train, test_per_class=cfg.test_per_class)
    root = Path(cache_dir) if cache_dir is not None else data_dir() / "images"
    models = pretrained(data, vae_epochs=cfg.vae_epochs, classifier_epochs=cfg.classifier_epochs,
                        pretrain_seed=cfg.pretrain_seed, progress=progress, cache_dir=root)
    runner = SeedRunner(root / "runs", cfg, arrays=("samples", "labels"), **KEY, context=cfg.models_key(data),
                        name="images")
    parts, first = [], None
    for s in runner.run(cfg.seeds, lambda seed: run_one(cfg, data, models, seed, progress=progress)):
        parts.append(s.record)
        first = first or s.arrays()
    assert first is not None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = stem(dataset, field, pairs)
    with atomic_file(out / f"{name}-samples.npz", "wb") as f:  # seed 0's samples: score them with your own judge
        np.savez_compressed(f, labels=first["labels"], **{k: v.astype(np.float16)
                                                          for k, v in first["samples"].items()})
    shown = at_largest_n(list(first["samples"]), max(cfg.best_of_n))
    report.grids({m: first["samples"][m] for m in shown}, first["labels"], data.classes, out / f"{name}-grids.png",
                 f"{dataset}: 10 samples per label (rows) of every method, seed {cfg.seeds[0]}")
    summary = report.summarize(parts)
    record_figures(parts, summary, out / name, dataset, pairs)
    result = {"config": asdict(cfg), "pretrained": models.info, "summary": summary, "runs": parts,
              "seconds": time.perf_counter() - start, "compute_seconds": float(sum(p["wall_seconds"] for p in parts)),
              "torch_threads": torch.get_num_threads()}
    write_report(result, out / name)
    return result


def record_figures(parts: list[dict[str, Any]], summary: dict[str, Any], base: Path, dataset: str,
                   pairs: str) -> None:
    """The figures that follow from the per-seed records alone (a run's, or a results JSON's with
    ``--report-only``): ``<base>-cost.png``, ``<base>-rlhf.png`` and ``<base>-dial.png``. (The sample grids need
    the samples, which only a run has.)"""
    from . import report

    seeds = f"mean ± sample std over {len(parts)} seed(s)"
    report.cost_figure(summary, base.with_name(f"{base.name}-cost.png"),
                       f"{dataset} ({pairs} pairs): quality against inference cost per output, {seeds}")
    report.curve_figure(parts, base.with_name(f"{base.name}-rlhf.png"), f"{dataset}: RLHF's learned reward against "
                        "the annotator and the independent judge along its training")
    dial_figure(parts, base.with_name(f"{base.name}-dial.png"), f"{dataset} ({pairs} pairs): how far to align, every "
                f"knob against its distance from pi_ref, {seeds}")


def stem(dataset: str, field: str = "mlp", pairs: str = "random") -> str:
    """The results' file stem: ``mnist``, ``fashion``, ``mnist-unet``, ``mnist-best-worst``, ..."""
    return dataset + ("" if field == "mlp" else f"-{field}") + ("" if pairs == "random" else f"-{pairs}")


def write_report(result: dict[str, Any], base: Path) -> None:
    """``<base>.json`` (the result) and ``<base>.md`` (the tables: every method, the paired comparisons, quality
    against cost, every beta of the sweeps and, for runs with it, the strength dial beside the other knobs)."""
    from . import report

    summary, info, cfg = result["summary"], result["pretrained"], result["config"]
    with atomic_file(base.with_suffix(".json"), "w") as f:
        json.dump(result, f, indent=1)
    tables = [report.table(summary, cfg["dataset"]),
              "**Paired per-seed differences** (mean of the per-seed differences and its 95% Student-t confidence "
              "interval; the baseline is the one with the best mean annotator probability)",
              report.comparisons_table(summary), report.selection_table(summary), report.sweep_table(result["runs"]),
              dial_table(result["runs"])]
    md = ("\n\n".join(t for t in tables if t) +
          f"\n\nPre-trained models: annotator held-out accuracy {info['annotator_heldout_accuracy']:.3f}, "
          f"judge {info['judge_heldout_accuracy']:.3f} ({info['train']} training images, "
          f"{info['test']} held out). Computing the seeds took {result['compute_seconds']:.0f} s with "
          f"{result['torch_threads']} torch threads (this invocation: {result['seconds']:.0f} s).\n")
    with atomic_file(base.with_suffix(".md"), "w") as f:
        f.write(md)


def report_only(out_dir: str | Path = "results", *, dataset: str = "mnist", field: str = "mlp",
                pairs: str = "random") -> dict[str, Any]:
    """Recompute the summary of ``<out_dir>/<stem>.json`` (:func:`stem`) from its per-seed runs and rewrite that
    JSON's ``summary``, the ``.md`` and the figures that follow from the records (:func:`record_figures`; the
    sample grids are left as they are) (``pfm reproduce mnist --report-only``)."""
    from . import report

    check_pairing(pairs, 10)
    name = Path(out_dir) / stem(dataset, field, pairs)
    command = f"pfm reproduce mnist --dataset {dataset}" + (f" --field {field}" if field != "mlp" else "") + \
        (f" --pairs {pairs}" if pairs != "random" else "")
    result = read_results(name.with_suffix(".json"), command)
    result["summary"] = report.summarize(result["runs"])
    write_report(result, name)
    record_figures(result["runs"], result["summary"], name, dataset, pairs)
    return result
