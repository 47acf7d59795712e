"""One seed of the 2D experiment under one preference model: every method on the same pairs (:func:`run_one`)."""

from __future__ import annotations

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
from ..runner import Stages
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


class Toy2dSeed(Stages):
    """One seed under one preference model, stage by stage (see :func:`run_one`). Unlike the image experiment's,
    the stages share one generator (``gen``) and torch's global one in turn, as they always did, so that the
    committed numbers stay as they are: a stage's draws depend on the stages before it."""

    STAGES = (("data", "data"), ("reward model", "reward_model"), ("RLHF", "rlhf"), ("DPO", "dpo"), ("IPO", "ipo"),
              ("PFM fit", "pfm_fit"), ("PFM", "pfm"), (None, "trajectory"), ("iterative PFM", "iterative"),
              ("PFM, source = reference", "reference_source"), ("best-of-n, PFM-select", "selection"),
              ("theorems", "theorems"))

    def __init__(self, cfg: Config, preference: str, seed: int, progress: bool = False) -> None:
        super().__init__(seed)
        self.cfg, self.preference, self.progress = cfg, preference, progress
        torch.manual_seed(seed)
        self.gen = torch.Generator().manual_seed(seed)
        # the timed draws: a generator apart from gen, so timing changes nothing
        self.timing = torch.Generator().manual_seed(50_000 + seed)
        self.ref = reference_policy()
        self.prefer = preference_model(preference, cfg.reward)

    def sample(self, c: Any, n: int) -> torch.Tensor:
        """pi_ref's samples from the shared generator."""
        return self.ref.sample(c, n, generator=self.gen)

    def draw(self) -> torch.Tensor:
        """pi_ref's samples for timing a method (their own generator)."""
        return self.ref.sample(None, self.cfg.n_test, generator=self.timing)

    def data(self) -> None:
        """Train, held-out and test pairs, pi_ref's test samples, the support threshold, the win rate w and the
        evaluator; the reference's and y+'s rows."""
        cfg, ref, gen, seed = self.cfg, self.ref, self.gen, self.seed
        data = collect_preferences(self.sample, self.prefer, n=cfg.n_pairs, kind="pairwise", seed=10_000 + seed)
        self.train, self.heldout = data.split(cfg.heldout, seed=seed)
        self.test_pairs = collect_preferences(self.sample, self.prefer, n=cfg.n_test, kind="pairwise",
                                              seed=20_000 + seed)
        self.y_ref = ref.sample(None, cfg.n_test, generator=gen)
        with torch.no_grad():
            threshold = float(torch.quantile(ref.log_prob(ref.sample(None, 100_000, generator=gen)),
                                             SUPPORT_QUANTILE))
        self.w = w = win_rate_function(self.preference, cfg.reward, ref.sample(None, cfg.w_samples, generator=gen))
        self.ys = ref.sample(None, cfg.w_samples, generator=gen)  # independent of the opponents behind w
        z = float(w(self.ys).mean())  # E_ref[w]: 1/2 exactly, here its estimate for this w
        self.ev = Evaluator(self.prefer, cfg.reward, self.y_ref, self.test_pairs.chosen, threshold, ref, w,
                            float(np.log(z)), seed=seed)
        self.out: dict[str, Any] = {"preference": self.preference, "reward": cfg.reward, "seed": seed,
                                    "n_train": len(self.train), "n_heldout": len(self.heldout),
                                    "support_threshold": threshold, "methods": {}}
        self.M = M = self.out["methods"]
        M["reference"] = {"metrics": asdict(self.ev("reference", *with_density(ref, cfg.n_test, gen))),
                          "cost": sampling_cost(self.draw, cfg.n_test, reference_calls=1)}
        with torch.no_grad():  # y+ has the closed-form density p1 = 2 pi_ref w (Theorem 1)
            log_p1 = preferred_log_density(ref.log_prob(self.train.chosen), w(self.train.chosen), z)
        M["preferred (y+)"] = {"metrics": asdict(self.ev("preferred (y+)", self.train.chosen, log_p1))}

    def reward_model(self) -> None:
        """The Bradley-Terry reward model (RLHF's reward, best-of-n's pick), and its scores on a grid."""
        self.rm = rm = RewardModel.for_dataset(self.train, hidden=128, depth=2)
        rm.fit(self.train, steps=self.cfg.reward_steps, seed=self.seed, progress=self.progress)
        self.M["reward model"] = {"heldout_accuracy": rm.accuracy(self.heldout),
                                  "train_accuracy": rm.accuracy(self.train)}
        gx, _, points = grid()
        self.out["learned_reward_grid"] = rm.score(points).numpy().reshape(gx.shape)

    def _sweep(self, name: str, fit: Callable[[float], torch.nn.Module]) -> None:
        self.M[name] = sweep(name, fit, self.cfg.betas, self.ref, self.heldout, self.ev, self.gen, self.cfg.n_test,
                             self.timing)

    def rlhf(self) -> None:
        cfg, seed = self.cfg, self.seed
        self._sweep("RLHF", lambda b: rlhf(self.ref, self.rm.score, beta=b, steps=cfg.rlhf_steps, batch_size=64,
                                           lr=1e-2, seed=seed, progress=self.progress)[0])

    def dpo(self) -> None:
        self._sweep("DPO", lambda b: dpo(self.ref, self.train, beta=b, steps=self.cfg.dpo_steps, batch_size=256,
                                         lr=1e-2, seed=self.seed, progress=self.progress)[0])

    def ipo(self) -> None:
        self._sweep("IPO", lambda b: ipo(self.ref, self.train, beta=b, steps=self.cfg.dpo_steps, batch_size=256,
                                         lr=1e-2, seed=self.seed, progress=self.progress)[0])

    def pfm_fit(self) -> None:
        self.flow = PreferenceFlow.for_dataset(self.train, hidden=self.cfg.flow_hidden, depth=3)
        # validation_fraction=0 here and below: the paper's protocol trains on every pair (pfm's default holds a
        # tenth out)
        self.flow.fit(self.train, steps=self.cfg.flow_steps, batch_size=256, seed=self.seed, progress=self.progress,
                      validation_fraction=0)

    def pfm(self) -> None:
        """PFM and PFM x k: outputs and their log-density (the change of variables), and their cost."""
        flow, ref, y_ref, n_test = self.flow, self.ref, self.y_ref, self.cfg.n_test
        pfm = log_prob(flow, y_ref, reference=ref, given="reference")
        self.M["PFM"] = {"metrics": asdict(self.ev("PFM", pfm.output, pfm.log_prob)),
                         "cost": sampling_cost(lambda: flow.transform(self.draw()), n_test, reference_calls=1,
                                               solves=1)}
        for k in dict.fromkeys((2, self.cfg.iterations)):
            pfm_k = log_prob(flow, y_ref, reference=ref, given="reference", iterations=k)
            self.M[f"PFM x {k}"] = {"metrics": asdict(self.ev(f"PFM x {k}", pfm_k.output, pfm_k.log_prob)),
                                    "cost": sampling_cost(lambda k=k: flow.iterate(self.draw(), iterations=k), n_test,
                                                          reference_calls=1, solves=k)}

    def trajectory(self) -> None:
        self.out["trajectory"] = self.flow.transform(self.y_ref[:150], return_trajectory=True).numpy()

    def iterative(self) -> None:
        """Iterative PFM: new preferences on the improved outputs each round, a new flow on them."""
        cfg, ref, y_ref = self.cfg, self.ref, self.y_ref
        rounds: list[dict[str, Any]] = [self.M["PFM"]["metrics"]]
        last: list[Any] = []

        def on_round(r: int, chain: FlowChain, ds: PreferenceDataset) -> None:
            if r > 1:
                last[:] = [log_prob(chain, y_ref, reference=ref, given="reference")]
                rounds.append(asdict(self.ev(None, last[0].output, last[0].log_prob)))

        chain = iterative_pfm(self.sample, self.prefer, rounds=cfg.rounds, n=len(self.train),
                              start=FlowChain([self.flow]), on_round=on_round, seed=30_000 + self.seed,
                              collect_kwargs={"kind": "pairwise"},
                              flow_kwargs={"hidden": cfg.flow_hidden, "depth": 3},
                              fit_config=FitConfig(steps=cfg.flow_steps, batch_size=256, progress=self.progress,
                                                   validation_fraction=0))
        name = f"iterative PFM ({cfg.rounds} rounds)"
        final = last[0] if last else log_prob(chain, y_ref, reference=ref, given="reference")
        self.M[name] = {"metrics": asdict(self.ev(name, final.output, final.log_prob)), "rounds": rounds,
                        "cost": sampling_cost(lambda: chain.transform(self.draw()), cfg.n_test, reference_calls=1,
                                              solves=len(chain))}

    def reference_source(self) -> None:
        """The library's reference-source variant: fresh reference samples onto p1."""
        cfg = self.cfg
        to_p1 = PreferenceFlow.for_dataset(self.train, hidden=cfg.flow_hidden, depth=3)
        to_p1.fit(self.train, steps=cfg.flow_steps, batch_size=256, seed=self.seed, source="reference",
                  progress=self.progress, validation_fraction=0)
        d1 = log_prob(to_p1, self.y_ref, reference=self.ref, given="reference")
        self.M[SOURCE_REFERENCE] = {"metrics": asdict(self.ev(SOURCE_REFERENCE, d1.output, d1.log_prob)),
                                    "cost": sampling_cost(lambda: to_p1.transform(self.draw()), cfg.n_test,
                                                          reference_calls=1, solves=1)}

    def selection(self) -> None:
        cfg = self.cfg
        self.M.update(selection_rows(self.ref, {"reward model": self.rm.score, "oracle": oracle(cfg.reward)},
                                     self.flow, self.ev, cfg.ns, cfg.n_test, cfg.cdf_samples, self.seed))

    def theorems(self) -> None:
        self.out["theorems"] = theorems(self.cfg, self.preference, self.flow, self.test_pairs.rejected, self.w,
                                        self.ys, self.gen)
        self.out["theorems"]["strength"] = strength_dial(self.flow, self.y_ref, self.ref, self.ev, self.cfg.strengths)

    def record(self) -> dict[str, Any]:
        self.out["seconds"] = self.seconds
        self.out["samples"] = self.ev.samples
        return self.out


def run_one(cfg: Config, preference: str, seed: int, progress: bool = False) -> dict[str, Any]:
    """One seed under one preference model: every method on the same data (:class:`Toy2dSeed`'s stages). Returns
    metrics, times, samples."""
    return Toy2dSeed(cfg, preference, seed, progress).run()
