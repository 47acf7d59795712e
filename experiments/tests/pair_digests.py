"""The rollout protocol's pairs drawn through both of its paths, on 1 and on 2 torch threads: the protocol cell's
(:func:`pfm_experiments.control.rollout_protocol.prepare`) and the baselines' / DPO's
(:func:`pfm_experiments.control.rollout_baselines.segment_dpo`). ``python experiments/tests/pair_digests.py`` prints their
digests as JSON, so that a test can run it in a process whose MKL takes another code path (issue 50)."""

import json

import torch

import pfm  # noqa: F401  before any matrix product (pfm.train.threads.reproducible_blas)
from pfm_experiments.control import rollout_baselines as RB
from pfm_experiments.control import rollout_protocol as R
from pfm_experiments.control.datasets import collect


def pair_digests() -> dict[str, str]:
    """``{"<path> on <n> threads": digest}`` for both paths on 1 and 2 threads; pi_ref's step (105k parameters x
    batch 256) is above pfm's one-thread size, so it trains on torch's setting."""
    eps = collect("hopper", "medium", 2000, seed=0)
    cfg = R.RolloutConfig(**{**R.RolloutConfig.quick_config().__dict__, "bc_steps": 200, "n_pairs": 256})
    out = {}
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            prep = R.prepare("hopper", eps, cfg, 0)
            prep.sims.close()
            out[f"protocol on {threads}"] = prep.pair_stats["digest"]
            out[f"baselines on {threads}"] = RB.segment_dpo("hopper", eps, cfg, 0).prep.pair_stats["digest"]
    finally:
        torch.set_num_threads(before)
    return out


if __name__ == "__main__":
    print(json.dumps(pair_digests()))
