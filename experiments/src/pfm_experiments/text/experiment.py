"""The controlled text generation experiment, small: pi_ref (a GRU language model trained on the corpus) continues
the first words of a sentence; the annotator (a ridge head on MiniLM embeddings, fitted to the human ratings)
prefers the more positive of two continuations; the flow acts on the MiniLM embedding of the whole sentence,
conditioned on the prompt's embedding; the codec's decoder writes the moved embedding back as a sentence that starts
with the prompt. RLHF learns a Bradley-Terry reward model on the same pairs' embeddings and fine-tunes pi_ref
against it (KL-regularized REINFORCE, beta swept and picked on the held-out pairs' prompts); RLHF + PFM applies the
same flow to the RLHF model's sentences, as a black box on top of it. Best-of-n and PFM-select choose among n of
pi_ref's own continuations (real sentences, no decoder), beside them at their inference cost.

:func:`pretrained` trains (once, then cached in the data directory) the tokenizer, pi_ref, the decoder and the
annotator; :func:`run_one` collects the pairs, fits the flow and evaluates every method on held-out prompts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from pfm.io import atomic_dir
from pfm.baselines import RewardModel
from pfm.flow import PreferenceFlow
from pfm.runtime import data_dir
from .annotator import HeadAnnotator, SentimentHead, evaluate_scores, fit_sentiment_head
from pfm.text.codec import LMDecoder, load_codec
from .corpus import Corpus, load_vader_corpus
from .hf import HFCausalLM, HFClassifier
from .judge import VaderJudge
from .memo import MemoCodec
from pfm.text.decoder import DecoderConfig, fit_decoder
from pfm.text.lm import ConditionalLM, LMConfig, TextLM, fit_lm, train_tokenizer
from .rlhf import rlhf_lm
from .metrics import annotate, codec_quality, distinct_n, perplexity  # noqa: F401 (codec_quality: API)
from .pairs import Pairs, check_pairs, make_pairs
from .selection import output_costs, selection_rows
from ..cost import at_largest_n, timed
from ..rows import SOURCE_REFERENCE, UNCONDITIONAL
from ..runner import SeedRunner, Stages, config_key, earlier_results
from ..sweeps import best_beta
from .config import Config, Pretrained, stem

log = logging.getLogger("pfm")
def corpus_split(cfg: Config) -> tuple[Corpus, Corpus]:
    corpus = load_vader_corpus()
    if cfg.sentences is not None:
        corpus = corpus.subset(np.random.default_rng(0).permutation(len(corpus))[:cfg.sentences])
    return corpus.split(cfg.test_fraction, seed=0)


def _new_lm(cfg: Config, tokenizer: Any, cond_dim: int = 0) -> TextLM:
    """An untrained language model of ``cfg``'s size (conditioned on a ``cond_dim`` vector when > 0)."""
    return TextLM(ConditionalLM(LMConfig(tokenizer.get_vocab_size(), dim=cfg.lm_dim, hidden=cfg.lm_hidden,
                                         layers=cfg.lm_layers, cond_dim=cond_dim)), tokenizer)


def pretrained(cfg: Config, progress: bool = True, cache_dir: Optional[Path] = None) -> Pretrained:
    """pi_ref, the codec (MiniLM + a decoder) and the annotator for ``cfg``: loaded from the cache, else trained
    and cached (the corpus split is fixed, seed 0; the experiment's seeds vary pairs, flows and samples). The
    decoder is cached apart, under pi_ref's directory, so that changing how it is trained keeps pi_ref.

    ``cfg.reference`` / ``cfg.annotator`` name a user's Hugging Face models (local directories) to use instead of
    the GRU pi_ref and the ridge head; the decoder is still trained here (with its own tokenizer when pi_ref is a
    user's model), and a user's annotator is scored against the human ratings of the test sentences."""
    from safetensors.torch import load_file, save_file

    train, test = corpus_split(cfg)
    assert train.ratings is not None
    encoder = load_codec("minilm")
    where = (cache_dir or data_dir() / "text" / "models") / cfg.models_key()
    head = SentimentHead(encoder.dim)
    z: Optional[Tensor] = None
    user_ref = HFCausalLM(cfg.reference) if cfg.reference is not None else None
    if (where / "info.json").exists():
        reference = user_ref if user_ref is not None else TextLM.load(where / "reference")
        head.load_state_dict(load_file(str(where / "annotator.safetensors")))
        info = json.loads((where / "info.json").read_text())
        log.info("text: pi_ref and the annotator from %s", where)
    else:
        torch.manual_seed(0)
        info = {"train": len(train), "test": len(test), "seconds": {}}
        t = time.perf_counter()
        z = encoder.encode(list(train.texts), progress=progress)
        info["seconds"]["embed"] = time.perf_counter() - t
        head, report = fit_sentiment_head(z, train.ratings)
        info["annotator"] = report.__dict__
        if user_ref is not None:
            reference = user_ref
            info["reference"] = {"path": str(user_ref.path)}
        else:
            tok = train_tokenizer(list(train.texts), vocab_size=cfg.vocab)
            t = time.perf_counter()
            reference = _new_lm(cfg, tok)
            info["reference"] = fit_lm(reference.model, reference.ids(train.texts), epochs=cfg.lm_epochs,
                                       progress=progress)
            info["seconds"]["reference"] = time.perf_counter() - t
        with atomic_dir(where) as tmp:
            if isinstance(reference, TextLM):
                reference.save(tmp / "reference")
            save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp / "annotator.safetensors"))
            (tmp / "info.json").write_text(json.dumps(info, indent=1))
    dec_dir = where / f"decoder-{cfg.decoder_key()}"
    if (dec_dir / "info.json").exists():
        decoder = TextLM.load(dec_dir / "lm")
        dec_info = json.loads((dec_dir / "info.json").read_text())
    else:
        if z is None:
            z = encoder.encode(list(train.texts), progress=progress)
        tok = reference.tokenizer if isinstance(reference, TextLM) else \
            train_tokenizer(list(train.texts), vocab_size=cfg.vocab)
        dcfg = DecoderConfig(vocab=cfg.vocab, dim=cfg.lm_dim, hidden=cfg.lm_hidden, layers=cfg.lm_layers,
                             epochs=cfg.decoder_epochs, noise=cfg.decoder_noise)  # pi_ref's size
        decoder, dec_info = fit_decoder(list(train.texts), z, dcfg, tokenizer=tok, progress=progress)
        with atomic_dir(dec_dir) as tmp:
            decoder.save(tmp / "lm")
            (tmp / "info.json").write_text(json.dumps(dec_info, indent=1))
    info = {**info, "decoder": dec_info}
    codec = MemoCodec(encoder.encoder, LMDecoder(decoder), spec="minilm")
    annotator: HeadAnnotator | HFClassifier = HeadAnnotator(head, codec)
    if cfg.annotator is not None:
        annotator = HFClassifier(cfg.annotator)
        assert test.ratings is not None
        r, rho, acc = evaluate_scores(annotator.score(list(test.texts)).numpy(), test.ratings)
        info = {**info, "user_annotator": {"path": str(annotator.path), "pearson": r, "spearman": rho,
                                           "sign_accuracy": acc, "n_test": len(test)}}
    return Pretrained(train, test, codec, reference, annotator, info)


def prompts_of(corpus: Corpus, words: int, n: Optional[int] = None, seed: int = 0) -> list[str]:
    """The first ``words`` words of sentences with at least ``words + 2`` words (``n`` of them, drawn with
    ``seed``; all in corpus order when ``n`` is None)."""
    ok = [t for t in corpus.texts if len(t.split()) >= words + 2]
    if n is not None:
        idx = np.random.default_rng(seed).choice(len(ok), size=n, replace=n > len(ok))
        ok = [ok[i] for i in idx]
    return [" ".join(t.split()[:words]) for t in ok]


def seed_pairs(cfg: Config, models: Pretrained, seed: int) -> Pairs:
    """Seed ``seed``'s preference pairs of kind ``cfg.pairs`` (:mod:`.pairs`): two of pi_ref's continuations of
    ``cfg.n_pairs`` training prompts scored by the annotator, or the corpus's own sentences paired the released
    code's way. Embeddings ``(N, D)``; the corpus's are cached on disk, generated text's are not."""
    ref, codec, annotator = models.reference, models.codec, models.annotator
    return make_pairs(cfg.pairs, generate=lambda ps, s: ref.generate(ps, temperature=cfg.temperature, seed=s),
                      encode=lambda txt: codec.encode(txt, cache=cfg.pairs != "samples"),
                      score=lambda txt, z: annotate(annotator, txt, z),
                      prompts=prompts_of(models.train, cfg.prompt_words, cfg.n_pairs, seed=seed)
                      if cfg.pairs == "samples" else [],
                      corpus=models.train, words=cfg.prompt_words, n=cfg.n_pairs, seed=seed)


def split_pairs(cfg: Config, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Indices ``(train, held)`` of ``n`` pairs: a ``cfg.heldout`` share (at least 2) held out for early stopping
    and RLHF's validation prompts, drawn with ``seed``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_held = max(2, int(round(cfg.heldout * n)))
    return perm[n_held:], perm[:n_held]


class TextSeed(Stages):
    """One seed, stage by stage (see :func:`run_one`): the pairs, the flows, RLHF, the test outputs and their
    decoding, best-of-n, the metrics and the rounds of PFM x k. Each stage seeds what it draws from the seed, as
    before (``seed_pairs``, ``_fit_flow``, ``torch.manual_seed`` before the reward model, the generation seeds)."""

    STAGES = (("pairs", "pairs"), ("PFM fit", "fit"), (None, "fit_variants"), ("RLHF", "rlhf"),
              ("decode", "decode"), ("best-of-n", "selection"), ("metrics", "metrics"), ("rounds", "rounds"))

    def __init__(self, cfg: Config, models: Pretrained, seed: int, progress: bool = False,
                 betas: Optional[Sequence[float]] = None) -> None:
        super().__init__(seed)
        self.cfg, self.models, self.progress = cfg, models, progress
        self.betas = cfg.betas if betas is None else tuple(betas)
        self.codec, self.ref, self.annotator = models.codec, models.reference, models.annotator
        self.to_p1: Optional[PreferenceFlow] = None
        self.free: Optional[PreferenceFlow] = None

    def pairs(self) -> None:
        self.made = seed_pairs(self.cfg, self.models, self.seed)
        self.dataset, self.prompts = self.made.dataset(), self.made.prompts

    def fit(self) -> None:
        """The train/held-out split and PFM's flow, early-stopped on the held-out pairs."""
        cfg, prompts = self.cfg, self.prompts
        self.train_idx, self.held_idx = split_pairs(cfg, len(self.dataset), self.seed)
        self.train, self.held = self.dataset.subset(self.train_idx), self.dataset.subset(self.held_idx)
        self.train_prompts = [prompts[i] for i in self.train_idx.tolist()]
        self.val_prompts = [prompts[i] for i in self.held_idx.tolist()][:cfg.validation_prompts]
        self.flow, self.fhist = _fit_flow(cfg, self.train, self.held, self.seed, self.progress)

    def fit_variants(self) -> None:
        """The reference-source flow and the released code's unconditional one, where the config asks."""
        cfg, seed, progress = self.cfg, self.seed, self.progress
        if cfg.reference_source:  # the same pairs, from every y- and y+ (pi_ref's samples) onto y+: Theorem 1's p1
            t = time.perf_counter()
            self.to_p1, _ = _fit_flow(cfg, self.train, self.held, seed, progress, source="reference")
            self.seconds[f"{SOURCE_REFERENCE} fit"] = time.perf_counter() - t
        if cfg.unconditional:  # the released code's flow: the same pairs without their prompts
            t = time.perf_counter()
            no_context = self.made.dataset(conditional=False)
            self.free, _ = _fit_flow(cfg, no_context.subset(self.train_idx), no_context.subset(self.held_idx), seed,
                                     progress)
            self.seconds[f"{UNCONDITIONAL} fit"] = time.perf_counter() - t

    def reward(self, texts: list[str], ps: list[str]) -> Tensor:
        """RLHF's reward: the reward model on the texts' and the prompts' embeddings."""
        return self.rm.score(self.codec.encode(texts, cache=False), self.codec.encode(ps))

    def rlhf(self) -> None:
        """A Bradley-Terry reward model on the same pairs (the embeddings, given the prompt's), then pi_ref
        fine-tuned against it for each beta; the beta whose policy the annotator scores best on held-out pairs'
        prompts is kept (the strongest RLHF this sweep finds, by the metric of the table)."""
        cfg, seed, train = self.cfg, self.seed, self.train
        torch.manual_seed(seed)
        self.rm = rm = RewardModel.for_dataset(train, hidden=256)
        rm.fit(train, steps=cfg.reward_steps, batch_size=min(256, len(train)), seed=seed, progress=self.progress)
        self.rm_acc = {"train": rm.accuracy(train), "heldout": rm.accuracy(self.held)}
        self.sweep, policies = [], {}
        for beta in self.betas:
            policy, hist = rlhf_lm(self.ref, self.reward, self.train_prompts, beta=beta, steps=cfg.rlhf_steps,
                                   prompts_per_step=cfg.rlhf_prompts, lr=cfg.rlhf_lr, seed=seed,
                                   progress=self.progress)
            y_val = policy.generate(self.val_prompts, temperature=cfg.temperature, seed=20_000 + seed)
            self.sweep.append({"beta": beta, "validation_score": annotate(self.annotator, y_val).mean().item(),
                               "validation_perplexity": perplexity(self.ref, y_val, self.val_prompts),
                               "validation_distinct_2": distinct_n(y_val, 2),
                               "final_reward": float(np.mean(hist["reward"][-10:])),
                               "final_kl": float(np.mean(hist["kl"][-10:])), "reward_curve": hist["reward"],
                               "kl_curve": hist["kl"], "seconds": hist["seconds"]})
            policies[beta] = policy
        self.picked = best_beta(self.sweep, "validation_score")  # ties: the larger beta
        self.rlhf_policy = policies[self.picked]

    def decode(self) -> None:
        """The held-out prompts' outputs of pi_ref and RLHF, their vectors moved by each flow, decoded back to text;
        the wall time of each step, for the costs."""
        cfg, seed, codec, ref = self.cfg, self.seed, self.codec, self.ref
        flow, to_p1, free = self.flow, self.to_p1, self.free
        self.test_prompts = test_prompts = prompts_of(self.models.test, cfg.prompt_words)[:cfg.eval_prompts]
        k, b = cfg.iterations, len(test_prompts)
        clock: dict[str, float] = {}  # the wall time of each step of making the test outputs, for their costs

        def step(name: str, make: Any) -> Any:
            with timed(b) as c:
                out = make()
            clock[name] = c.seconds or 0.0
            return out

        def moved(z: Tensor) -> Tensor:
            return torch.nn.functional.normalize(z, dim=-1) if cfg.project else z

        self.y_ref = y_ref = step("reference", lambda: ref.generate(test_prompts, temperature=cfg.temperature,
                                                                    seed=10_000 + seed))
        self.y_rlhf = y_rlhf = step("RLHF", lambda: self.rlhf_policy.generate(test_prompts,
                                                                              temperature=cfg.temperature,
                                                                              seed=10_000 + seed))
        self.z_ref = z_ref = step("encode reference", lambda: codec.encode(y_ref, cache=False))
        z_rlhf = step("encode RLHF", lambda: codec.encode(y_rlhf, cache=False))
        self.c_test = c_test = step("encode prompts", lambda: codec.encode(test_prompts))
        vectors = {"reference (codec)": z_ref, "PFM": step("PFM", lambda: moved(flow.transform(z_ref, c_test))),
                   f"PFM x {k}": step(f"PFM x {k}", lambda: moved(flow.iterate(z_ref, c_test, iterations=k))),
                   "RLHF (codec)": z_rlhf,
                   "RLHF + PFM": step("RLHF + PFM", lambda: moved(flow.transform(z_rlhf, c_test))),
                   f"RLHF + PFM x {k}": step(f"RLHF + PFM x {k}",
                                             lambda: moved(flow.iterate(z_rlhf, c_test, iterations=k)))}
        if to_p1 is not None:
            vectors[SOURCE_REFERENCE] = step(SOURCE_REFERENCE, lambda: moved(to_p1.transform(z_ref, c_test)))
        if free is not None:
            vectors[UNCONDITIONAL] = step(UNCONDITIONAL, lambda: moved(free.transform(z_ref)))
            vectors[f"{UNCONDITIONAL} x {k}"] = step(f"{UNCONDITIONAL} x {k}",
                                                    lambda: moved(free.iterate(z_ref, iterations=k)))
        self.vectors = vectors
        decoded = {name: step(f"decode {name}", lambda v=v: codec.decode(v, test_prompts, candidates=cfg.candidates,
                                                                         seed=seed)) for name, v in vectors.items()}
        order = ["reference", "reference (codec)", "PFM", f"PFM x {k}", *([SOURCE_REFERENCE] if to_p1 else []),
                 *([UNCONDITIONAL, f"{UNCONDITIONAL} x {k}"] if free else []), "RLHF", "RLHF (codec)", "RLHF + PFM",
                 f"RLHF + PFM x {k}"]
        self.texts = {name: ({"reference": y_ref, "RLHF": y_rlhf}.get(name) or decoded[name]) for name in order}
        self.costs = output_costs(clock, b, k, cfg.candidates, reference_source=to_p1 is not None,
                                  unconditional=free is not None)

    def selection(self) -> None:
        """Best-of-n (by RLHF's reward model, and by the annotator: the oracle) and PFM-select among pi_ref's
        samples."""
        cfg, rm, annotator = self.cfg, self.rm, self.annotator
        scorers = {"reward model": lambda txt, z, c: rm.score(z, c),
                   "annotator": lambda txt, z, c: annotate(annotator, txt, z)}
        self.picked_rows, picked_texts = selection_rows(
            lambda ps, s: self.ref.generate(ps, temperature=cfg.temperature, seed=s),
            lambda txt: self.codec.encode(txt, cache=False), self.test_prompts, self.c_test, scorers, self.flow,
            cfg.best_of_n, seed=30_000 + self.seed)
        self.texts.update(picked_texts)
        self.costs.update({name: row["cost"] for name, row in self.picked_rows.items()})

    def metrics(self) -> None:
        """Every row's annotator score, VADER score and win rates, perplexity under pi_ref, diversity, length."""
        self.judge = judge = VaderJudge()
        self.methods: dict[str, dict[str, float]] = {}
        for name, txt in self.texts.items():
            m = {"score": annotate(self.annotator, txt).mean().item(), "vader": float(judge.score(txt).mean()),
                 "vader_win_rate_vs_rlhf": judge.win_rate(txt, self.y_rlhf),
                 "vader_win_rate_vs_reference": judge.win_rate(txt, self.y_ref),
                 "perplexity": perplexity(self.ref, txt, self.test_prompts), "distinct_1": distinct_n(txt, 1),
                 "distinct_2": distinct_n(txt, 2), "words": float(np.mean([len(s.split()) for s in txt]))}
            if name in self.vectors and isinstance(self.annotator, HeadAnnotator):
                m["score_of_vector"] = self.annotator.score_vectors(self.vectors[name]).mean().item()
            self.methods[name] = m
        self.shown = at_largest_n(list(self.texts), max(self.cfg.best_of_n))

    def rounds(self) -> None:
        """PFM applied 0 to k times: the scores after each round."""
        k = self.cfg.iterations
        self.round_rows = _rounds(self.cfg, self.flow, self.z_ref, self.c_test, self.test_prompts, self.seed,
                                  self.codec, self.annotator, self.judge,
                                  {0: "reference (codec)", 1: "PFM", k: f"PFM x {k}"}, self.texts)

    def record(self) -> dict[str, Any]:
        fhist, texts = self.fhist, self.texts
        return {"seed": self.seed, "methods": self.methods, "pairs": self.made.info,
                "flow": {"steps": fhist.steps, "validation": fhist.validation,
                         "zero_field": fhist.extras.get("validation_zero_field")},
                "reward_model": self.rm_acc, "rlhf": {"beta": self.picked, "sweep": self.sweep}, "costs": self.costs,
                "rounds": self.round_rows,
                "selection": {name: {k_: v for k_, v in row.items() if k_ != "cost"}
                              for name, row in self.picked_rows.items()},
                "examples": [{"prompt": p, **{name: texts[name][i] for name in self.shown}} for i, p in
                             enumerate(self.test_prompts[:10])], "seconds": self.seconds}


def run_one(cfg: Config, models: Pretrained, seed: int, progress: bool = False,
            betas: Optional[Sequence[float]] = None) -> dict[str, Any]:
    """One seed: pairs from pi_ref, the flow, RLHF (each of ``betas``, default ``cfg.betas``, the best kept), and
    every method's texts and scores on held-out prompts: the alignment methods, and best-of-n (by RLHF's reward
    model and by the annotator) and PFM-select among n of pi_ref's samples for each n of ``cfg.best_of_n``
    (:mod:`.selection`); each row's inference cost per output under ``"costs"`` (:class:`TextSeed`'s stages)."""
    return TextSeed(cfg, models, seed, progress, betas).run()


def _fit_flow(cfg: Config, train: Any, held: Any, seed: int, progress: bool, **fit: Any) -> tuple[PreferenceFlow, Any]:
    """A flow of ``cfg``'s size, its initial weights drawn from ``seed``, fitted on ``train`` and early-stopped on
    ``held``'s loss (``fit``: more options of :meth:`pfm.PreferenceFlow.fit`, e.g. ``source``); with its history."""
    torch.manual_seed(seed)
    flow = PreferenceFlow.for_dataset(train, hidden=cfg.flow_hidden, depth=cfg.flow_depth)
    history = flow.fit(train, steps=cfg.flow_steps, batch_size=min(256, len(train)), validation=held,
                       patience=cfg.patience, seed=seed, progress=progress, **fit)
    return flow, history


def _rounds(cfg: Config, flow: Any, z_ref: Tensor, c: Tensor, prompts: list[str], seed: int, codec: Any,
            annotator: Any, judge: Any, known: dict[int, str],
            texts: dict[str, list[str]]) -> list[dict[str, float]]:
    """PFM applied k = 0 .. ``cfg.iterations`` times to the reference's vectors ``z_ref (B, D)`` (prompts' ``c (B,
    D)``), each round's vectors decoded and scored as the table's rows are: ``[{"k", "score", "vader",
    "score_of_vector" (the annotator's head on the vector, where it has one)}]``. The rounds that are rows of the
    table (``known``: k -> its row's name) reuse their texts; the others are decoded here."""
    rows, z = [], z_ref
    for j in range(cfg.iterations + 1):
        if j:
            z = flow.transform(z, c)  # k applications, projected once at the end as the rows' are
        v = torch.nn.functional.normalize(z, dim=-1) if cfg.project else z
        name = known.get(j)
        txt = texts[name] if name else codec.decode(v, prompts, candidates=cfg.candidates, seed=seed)
        row = {"k": j, "score": annotate(annotator, txt).mean().item(), "vader": float(judge.score(txt).mean())}
        if isinstance(annotator, HeadAnnotator):
            row["score_of_vector"] = annotator.score_vectors(v).mean().item()
        rows.append(row)
    return rows


KEY = {"omit": ("seeds",), "unset": {"reference": None, "annotator": None, "pairs": "samples", "unconditional": False}}
"""How :func:`..runner.config_key` keys a run: the seeds do not count, and the user's model paths, the corpus pairs
and the unconditional flow only when set (so that the keys of the runs made before them stay as they were)."""


def _resolved(cfg: Config) -> Config:
    """``cfg`` with the user's model paths made absolute, so that a path and its alias give one key."""
    paths = {k: str(Path(v).expanduser().resolve()) for k in ("reference", "annotator")
             if (v := getattr(cfg, k)) is not None}
    return dataclasses.replace(cfg, **paths)


def run_key(cfg: Config) -> str:
    """The key of ``cfg``'s runs (see :data:`KEY`)."""
    return config_key(_resolved(cfg), **KEY)


def reproduce(out_dir: str | Path = "results", *, quick: bool = False, seeds: Optional[int] = None,
              reference: Optional[str] = None, annotator: Optional[str] = None, pairs: str = "samples",
              progress: bool = True) -> dict[str, Any]:
    """Every seed of the text experiment (each finished seed cached in the data directory, under
    ``text/runs/<key>/seed-<seed>.json``: :class:`pfm_experiments.runner.SeedRunner`, :data:`KEY`, so a stopped run
    goes on where it was); writes ``text.json`` and ``text.md`` (the tables and ten example prompts) to
    ``out_dir``. ``reference`` / ``annotator``: a user's Hugging Face causal LM / sequence classifier directory
    instead of the models trained here (see :func:`pretrained`). ``pairs``: how the preference pairs are made
    (:mod:`.pairs`); the corpus pairs also train the flow without the prompt (the released code's), and write
    ``text-<pairs>.json`` and ``.md`` (:func:`stem`). The finished seeds of the results file this run replaces
    are taken when it was made with this config and these pre-trained models (to rounding):
    :meth:`pfm_experiments.runner.SeedRunner.take`, so that a run can be finished seed by seed on fresh machines."""
    from pfm import validate as V
    from pfm.io import atomic_file

    from . import report

    V.check_positive_int(seeds, "seeds", allow_none=True)
    check_pairs(pairs)
    cfg = Config.quick_config() if quick else Config()
    cfg.pairs, cfg.unconditional = pairs, pairs != "samples"
    if seeds is not None:
        cfg.seeds = tuple(range(seeds))
    from .hf import model_dir

    cfg.reference = None if reference is None else str(model_dir(reference, "reference"))
    cfg.annotator = None if annotator is None else str(model_dir(annotator, "annotator"))
    base = Path(out_dir) / stem(pairs, quick)  # write_report writes <base>.json, <base>.md, ...
    earlier = earlier_results(f"{base}.json")  # the file this run replaces, checked before any work
    start = time.perf_counter()
    models = pretrained(cfg, progress=progress)
    runner = SeedRunner(data_dir() / "text" / "runs", _resolved(cfg), **KEY, name="text")
    # a fresh data directory goes on where that file stopped (when its config and models are this run's)
    runner.take(earlier, Config, source=f"{base.name}.json", models=models.info)
    codec_file = runner.directory / "codec.json"
    if codec_file.exists():
        codec_report = json.loads(codec_file.read_text())
    else:
        codec_report = codec_quality(models, cfg, n=50 if quick else 200)
        with atomic_file(codec_file, "w") as f:
            json.dump(codec_report, f)
    runs: list[dict[str, Any]] = []
    # RLHF's beta is swept on the first seed; the later seeds train RLHF at the beta it picked
    for s in runner.run(cfg.seeds, lambda seed: run_one(cfg, models, seed, progress=progress,
                                                        betas=None if not runs else (runs[0]["rlhf"]["beta"],))):
        runs.append(s.record)
    result = {"config": asdict(cfg), "models": models.info, "codec": codec_report,
              "summary": report.summarize(runs), "runs": runs, "seconds": time.perf_counter() - start}
    report.write_report(result, base)
    return result
