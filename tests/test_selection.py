"""pfm.selection: best-of-n by a score and PFM-select (nearest candidate to a flowed point)."""

import pytest
import torch

from pfm import PFMError, PreferenceDataset, PreferenceFlow
from pfm.selection import best_of_n, nearest_candidate, pfm_select


def test_best_of_n_picks_the_highest_score_per_row():
    cands = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    scores = torch.tensor([[0.1, 0.9, 0.5], [2.0, -1.0, 2.0]])
    chosen, index = best_of_n(cands, scores)
    assert index.tolist() == [1, 0]  # a tie goes to the first
    assert torch.equal(chosen, torch.stack([cands[0, 1], cands[1, 0]]))


def test_best_of_n_keeps_trailing_shape():
    cands = torch.randn(4, 5, 3, 2, 2)
    chosen, _ = best_of_n(cands, torch.randn(4, 5))
    assert chosen.shape == (4, 3, 2, 2)


@pytest.mark.parametrize("scores, match", [(torch.zeros(2, 4), "shape"), (torch.full((2, 3), float("nan")), "NaN")])
def test_best_of_n_refuses_bad_scores(scores, match):
    with pytest.raises(PFMError, match=match):
        best_of_n(torch.zeros(2, 3, 1), scores)


def test_nearest_candidate_both_metrics():
    cands = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [5.0, 5.0]]])
    target = torch.tensor([[0.0, 1.0]])
    chosen, index, dist = nearest_candidate(target, cands)
    assert index.tolist() == [0] and torch.allclose(dist, torch.tensor([2 ** 0.5]))
    chosen, index, cos = nearest_candidate(target, cands, metric="cosine")
    assert index.tolist() == [1] and torch.allclose(cos, torch.tensor([1.0]))
    assert torch.equal(chosen, cands[:, 1])


def test_nearest_candidate_refuses_mismatched_target_and_metric():
    with pytest.raises(PFMError, match="target must have shape"):
        nearest_candidate(torch.zeros(2, 3), torch.zeros(2, 4, 2))
    with pytest.raises(PFMError, match="metric"):
        nearest_candidate(torch.zeros(2, 2), torch.zeros(2, 4, 2), metric="manhattan")
    with pytest.raises(PFMError, match="candidates"):
        nearest_candidate(torch.zeros(2), torch.zeros(2))


def test_pfm_select_returns_candidates_moved_toward_preferred():
    torch.manual_seed(0)
    y_minus = torch.randn(512, 1) - 1.0
    y_plus = torch.randn(512, 1) + 1.0
    flow = PreferenceFlow((1,), hidden=32)
    flow.fit(PreferenceDataset(y_plus, y_minus), steps=300, batch_size=128, progress=False)
    cands = torch.randn(256, 8, 1)
    chosen, index, _ = pfm_select(flow, cands)
    assert ((chosen.unsqueeze(1) == cands).all(-1).any(1)).all()  # always one of the candidates
    assert chosen.mean() > cands[:, 0].mean() + 0.5  # the flow says "larger": the choice is larger
    with pytest.raises(PFMError, match="anchor"):
        pfm_select(flow, cands, anchor=8)
    with pytest.raises(PFMError, match="transform"):
        pfm_select(object(), cands)
    with pytest.raises(PFMError, match="not both"):
        pfm_select(flow, cands, iterations=2, strength=0.5)
