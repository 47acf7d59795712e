"""One seed of the 2D experiment under one preference model: every method on the same pairs (:func:`run_one`)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Callable

import numpy as np
import torch

from pfm import FitConfig
from pfm.baselines import RewardModel, dpo, ipo, rlhf
from pfm.data import PreferenceDataset, collect_preferences
from pfm.flow import PreferenceFlow
from pfm.iterative import FlowChain, iterative_pfm
from pfm.likelihood import log_prob
from pfm.objective import preferred_log_density
from ..sweeps import sweep_betas
from .config import SOURCE_REFERENCE, Config
from .metrics import Evaluator, with_density
from .task import SUPPORT_QUANTILE, grid, preference_model, reference_policy, win_rate_function
from .selection import oracle, sampling_cost, selection_rows
from .theory import strength_dial, theorems


def sweep(name: str, train: Callable[[float], torch.nn.Module], betas: tuple[float, ...], ref, heldout,
          evaluate: Evaluator, gen: torch.Generator, n_test: int, timing: torch.Generator) -> dict[str, Any]:
    """Train one policy per beta; pick beta by held-out implicit-reward accuracy; score every beta on the test;
    time the chosen policy's sampling (one policy call per output) with the generator ``timing``."""
    s = sweep_betas(train, betas, ref, heldout, lambda p: asdict(evaluate(None, *with_density(p, n_test, gen))))
    metrics = evaluate(name, *with_density(s.policy, n_test, gen))
    cost = sampling_cost(lambda: s.policy.sample(None, n_test, generator=timing), n_test, policy_calls=1)
    return {"beta": s.beta, "metrics": asdict(metrics), "sweep": s.rows, "cost": cost}


def run_one(cfg: Config, preference: str, seed: int, progress: bool = False) -> dict[str, Any]:
    """One seed under one preference model: every method on the same data. Returns metrics, times, samples."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    ref = reference_policy()
    prefer = preference_model(preference, cfg.reward)
    times: dict[str, float] = {}
    t = time.perf_counter()

    data = collect_preferences(lambda c, n: ref.sample(c, n, generator=gen), prefer, n=cfg.n_pairs,
                               kind="pairwise", seed=10_000 + seed)
    train, heldout = data.split(cfg.heldout, seed=seed)
    test_pairs = collect_preferences(lambda c, n: ref.sample(c, n, generator=gen), prefer, n=cfg.n_test,
                                     kind="pairwise", seed=20_000 + seed)
    y_ref = ref.sample(None, cfg.n_test, generator=gen)
    with torch.no_grad():
        threshold = float(torch.quantile(ref.log_prob(ref.sample(None, 100_000, generator=gen)), SUPPORT_QUANTILE))
    w = win_rate_function(preference, cfg.reward, ref.sample(None, cfg.w_samples, generator=gen))
    ys = ref.sample(None, cfg.w_samples, generator=gen)  # independent of the opponents behind w
    z = float(w(ys).mean())  # E_ref[w]: 1/2 exactly, here its estimate for this w
    ev = Evaluator(prefer, cfg.reward, y_ref, test_pairs.chosen, threshold, ref, w, float(np.log(z)), seed=seed)
    out: dict[str, Any] = {"preference": preference, "reward": cfg.reward, "seed": seed, "n_train": len(train),
                           "n_heldout": len(heldout), "support_threshold": threshold, "methods": {}}
    M = out["methods"]
    timing = torch.Generator().manual_seed(50_000 + seed)  # the timed draws: apart from gen, so they change nothing
    n_test = cfg.n_test

    def draw() -> torch.Tensor:
        return ref.sample(None, n_test, generator=timing)

    M["reference"] = {"metrics": asdict(ev("reference", *with_density(ref, cfg.n_test, gen))),
                      "cost": sampling_cost(draw, n_test, reference_calls=1)}
    with torch.no_grad():  # y+ has the closed-form density p1 = 2 pi_ref w (Theorem 1)
        log_p1 = preferred_log_density(ref.log_prob(train.chosen), w(train.chosen), z)
    M["preferred (y+)"] = {"metrics": asdict(ev("preferred (y+)", train.chosen, log_p1))}
    times["data"] = time.perf_counter() - t

    t = time.perf_counter()
    rm = RewardModel.for_dataset(train, hidden=128, depth=2)
    rm.fit(train, steps=cfg.reward_steps, seed=seed, progress=progress)
    M["reward model"] = {"heldout_accuracy": rm.accuracy(heldout), "train_accuracy": rm.accuracy(train)}
    gx, _, points = grid()
    out["learned_reward_grid"] = rm.score(points).numpy().reshape(gx.shape)
    times["reward model"] = time.perf_counter() - t

    t = time.perf_counter()
    M["RLHF"] = sweep("RLHF", lambda b: rlhf(ref, rm.score, beta=b, steps=cfg.rlhf_steps, batch_size=64, lr=1e-2,
                                             seed=seed, progress=progress)[0], cfg.betas, ref, heldout, ev, gen,
                      cfg.n_test, timing)
    times["RLHF"] = time.perf_counter() - t
    for name, fn in (("DPO", dpo), ("IPO", ipo)):
        t = time.perf_counter()
        M[name] = sweep(name, lambda b, fn=fn: fn(ref, train, beta=b, steps=cfg.dpo_steps, batch_size=256,
                                                  lr=1e-2, seed=seed, progress=progress)[0],
                        cfg.betas, ref, heldout, ev, gen, cfg.n_test, timing)
        times[name] = time.perf_counter() - t

    t = time.perf_counter()
    flow = PreferenceFlow.for_dataset(train, hidden=cfg.flow_hidden, depth=3)
    # validation_fraction=0 here and below: the paper's protocol trains on every pair (pfm's default holds a tenth out)
    flow.fit(train, steps=cfg.flow_steps, batch_size=256, seed=seed, progress=progress, validation_fraction=0)
    times["PFM fit"] = time.perf_counter() - t
    t = time.perf_counter()
    pfm = log_prob(flow, y_ref, reference=ref, given="reference")  # outputs and their log-density
    M["PFM"] = {"metrics": asdict(ev("PFM", pfm.output, pfm.log_prob)),
                "cost": sampling_cost(lambda: flow.transform(draw()), n_test, reference_calls=1, solves=1)}
    for k in dict.fromkeys((2, cfg.iterations)):
        pfm_k = log_prob(flow, y_ref, reference=ref, given="reference", iterations=k)
        M[f"PFM x {k}"] = {"metrics": asdict(ev(f"PFM x {k}", pfm_k.output, pfm_k.log_prob)),
                           "cost": sampling_cost(lambda k=k: flow.iterate(draw(), iterations=k), n_test,
                                                 reference_calls=1, solves=k)}
    times["PFM"] = time.perf_counter() - t

    out["trajectory"] = flow.transform(y_ref[:150], return_trajectory=True).numpy()

    t = time.perf_counter()
    rounds: list[dict[str, Any]] = [M["PFM"]["metrics"]]

    last: list[Any] = []

    def on_round(r: int, chain: FlowChain, ds: PreferenceDataset) -> None:
        if r > 1:
            last[:] = [log_prob(chain, y_ref, reference=ref, given="reference")]
            rounds.append(asdict(ev(None, last[0].output, last[0].log_prob)))

    chain = iterative_pfm(lambda c, n: ref.sample(c, n, generator=gen), prefer, rounds=cfg.rounds,
                          n=len(train), start=FlowChain([flow]), on_round=on_round, seed=30_000 + seed,
                          collect_kwargs={"kind": "pairwise"},
                          flow_kwargs={"hidden": cfg.flow_hidden, "depth": 3},
                          fit_config=FitConfig(steps=cfg.flow_steps, batch_size=256, progress=progress,
                                               validation_fraction=0))
    name = f"iterative PFM ({cfg.rounds} rounds)"
    final = last[0] if last else log_prob(chain, y_ref, reference=ref, given="reference")
    M[name] = {"metrics": asdict(ev(name, final.output, final.log_prob)), "rounds": rounds,
               "cost": sampling_cost(lambda: chain.transform(draw()), n_test, reference_calls=1,
                                     solves=len(chain))}
    times["iterative PFM"] = time.perf_counter() - t

    t = time.perf_counter()  # the library's reference-source variant: fresh reference samples onto p1
    to_p1 = PreferenceFlow.for_dataset(train, hidden=cfg.flow_hidden, depth=3)
    to_p1.fit(train, steps=cfg.flow_steps, batch_size=256, seed=seed, source="reference", progress=progress,
              validation_fraction=0)
    d1 = log_prob(to_p1, y_ref, reference=ref, given="reference")
    M[SOURCE_REFERENCE] = {"metrics": asdict(ev(SOURCE_REFERENCE, d1.output, d1.log_prob)),
                           "cost": sampling_cost(lambda: to_p1.transform(draw()), n_test, reference_calls=1,
                                                 solves=1)}
    times["PFM, source = reference"] = time.perf_counter() - t

    t = time.perf_counter()
    M.update(selection_rows(ref, {"reward model": rm.score, "oracle": oracle(cfg.reward)}, flow, ev, cfg.ns,
                            n_test, cfg.cdf_samples, seed))
    times["best-of-n, PFM-select"] = time.perf_counter() - t

    t = time.perf_counter()
    out["theorems"] = theorems(cfg, preference, flow, test_pairs.rejected, w, ys, gen)
    out["theorems"]["strength"] = strength_dial(flow, y_ref, ref, ev, cfg.strengths)
    times["theorems"] = time.perf_counter() - t
    out["seconds"] = times
    out["samples"] = ev.samples
    return out
