"""The text experiment's best-of-n and PFM-select rows and the costs of its other rows, on stand-ins for pi_ref,
the encoder and the flow (the quick run in test_text.py runs them on the real models)."""

import time

import pytest
import torch

from pfm_experiments.cost import Cost
from pfm_experiments.rows import SOURCE_REFERENCE
from pfm_experiments.text.selection import draw_candidates, output_costs, selection_rows

WORDS = ["awful", "dull", "fine", "good", "great"]


def generate(prompts, seed):
    g = torch.Generator().manual_seed(seed)
    return [f"{p} {WORDS[int(torch.randint(5, (1,), generator=g))]}" for p in prompts]


def encode(texts):
    """A unit vector whose first coordinate grows with the last word's rank, the second constant. It takes 0.2 ms a
    text, as a real encoder takes time per text, so that a row's measured time grows with its candidates even on a
    loaded machine (a few microseconds of arithmetic alone are below the scheduler's noise)."""
    time.sleep(2e-4 * len(texts))
    rank = torch.tensor([float(WORDS.index(t.split()[-1])) for t in texts])
    return torch.nn.functional.normalize(torch.stack([rank, torch.ones_like(rank)], 1), dim=-1)


class Shift:
    """A flow that moves every point toward the first axis (toward 'great')."""

    def transform(self, y, context=None, **_):
        return y + torch.tensor([10.0, 0.0])


def test_draw_candidates_groups_n_samples_per_prompt():
    cands = draw_candidates(generate, ["a", "b"], 3, seed=0)
    assert len(cands) == 2 and all(len(row) == 3 for row in cands)
    assert all(t.startswith("a ") for t in cands[0]) and all(t.startswith("b ") for t in cands[1])


def test_selection_rows_pick_by_each_scorer_and_by_the_flow_with_their_costs():
    prompts = [f"p{i}" for i in range(40)]
    c = torch.zeros(40, 2)
    scorers = {"reward model": lambda txt, z, c: z[:, 0], "annotator": lambda txt, z, c: -z[:, 0]}
    rows, texts = selection_rows(generate, encode, prompts, c, scorers, Shift(), (2, 8), seed=3)
    assert set(rows) == {f"{kind} (n = {n})" if kind == "PFM-select" else f"best-of-{n} ({kind})"
                         for n in (2, 8) for kind in ("reward model", "annotator", "PFM-select")}
    rank = {name: encode(t)[:, 0].mean().item() for name, t in texts.items()}
    # the reward model here prefers later words, this 'annotator' earlier ones; the flow points at 'great'
    assert rank["best-of-8 (reward model)"] > rank["best-of-2 (reward model)"] > rank["best-of-2 (annotator)"]
    assert rank["PFM-select (n = 8)"] == pytest.approx(rank["best-of-8 (reward model)"])
    assert all(t.startswith(p + " ") for name in texts for t, p in zip(texts[name], prompts))
    for name, row in rows.items():
        cost = Cost.from_dict(row["cost"])
        assert cost.reference_calls == row["n"] and cost.solves == (name.startswith("PFM-select"))
        assert cost.seconds_per_output > 0
    assert rows["best-of-8 (annotator)"]["cost"]["seconds_per_output"] > \
        rows["best-of-2 (annotator)"]["cost"]["seconds_per_output"]  # n candidates drawn and encoded each
    assert 0 < rows["PFM-select (n = 2)"]["mean_cosine"] <= 1


def test_output_costs_count_what_each_row_calls_and_add_up_its_steps():
    k, cands = 5, 8
    steps = ["reference", "RLHF", "encode reference", "encode RLHF", "encode prompts", "PFM", f"PFM x {k}",
             "RLHF + PFM", f"RLHF + PFM x {k}"] + [f"decode {n}" for n in ("reference (codec)", "PFM", f"PFM x {k}",
                                                                          "RLHF (codec)", "RLHF + PFM",
                                                                          f"RLHF + PFM x {k}")]
    clock = {name: float(i + 1) for i, name in enumerate(steps)}
    costs = {n: Cost.from_dict(c) for n, c in output_costs(clock, 10, k, cands).items()}
    assert costs["reference"] == Cost(1, seconds_per_output=0.1)
    assert costs["RLHF"] == Cost(policy_calls=1, seconds_per_output=0.2)
    pfm = costs["PFM"]
    assert (pfm.reference_calls, pfm.solves, pfm.decoder_calls) == (1, 1, cands)
    assert pfm.seconds_per_output == pytest.approx((clock["reference"] + clock["encode reference"] +
                                                    clock["encode prompts"] + clock["PFM"] + clock["decode PFM"]) / 10)
    assert costs[f"RLHF + PFM x {k}"].solves == k and costs[f"RLHF + PFM x {k}"].policy_calls == 1
    assert costs["reference (codec)"].decoder_calls == cands and costs["reference (codec)"].solves == 0
    assert SOURCE_REFERENCE not in costs
    # the source="reference" flow's row costs what PFM's does, on its own solve and decoding
    clock.update({SOURCE_REFERENCE: 100.0, f"decode {SOURCE_REFERENCE}": 200.0})
    to_p1 = Cost.from_dict(output_costs(clock, 10, k, cands, reference_source=True)[SOURCE_REFERENCE])
    assert (to_p1.reference_calls, to_p1.solves, to_p1.decoder_calls, to_p1.policy_calls) == (1, 1, cands, 0)
    assert to_p1.seconds_per_output == pytest.approx((clock["reference"] + clock["encode reference"] +
                                                      clock["encode prompts"] + 100.0 + 200.0) / 10)
