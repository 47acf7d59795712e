import pytest
import torch

from pfm import FlowFileError, InvalidInputError, InvalidTypeError, PreferenceFlow
from pfm.iterative import FlowChain, iterative_pfm
from pfm import demo as gaussian


@pytest.mark.slow
def test_iterative_pfm_moves_further_each_round_and_reloads(tmp_path):
    gen = torch.Generator().manual_seed(0)
    sample = gaussian.reference(gen)
    seen = []

    def on_round(r, chain, ds):
        y = chain.transform(sample(None, 1000))
        seen.append((r, len(chain), len(ds), gaussian.distance(y, None)))

    chain = iterative_pfm(sample, gaussian.score, rounds=3, n=1500, on_round=on_round,
                          flow_kwargs={"hidden": 64, "depth": 2},
                          fit_kwargs={"steps": 300, "batch_size": 128, "progress": False})
    assert [s[:3] for s in seen] == [(1, 1, 1500), (2, 2, 1500), (3, 3, 1500)]
    dists = [s[3] for s in seen]
    assert gaussian.distance(sample(None, 1000), None) > dists[0] > dists[1] > dists[2]
    assert len(chain.histories) == 3
    y = sample(None, 50)
    chain.save(tmp_path / "chain")
    back = FlowChain.load(tmp_path / "chain")
    torch.testing.assert_close(back.transform(y), chain.transform(y))
    torch.testing.assert_close(back.transform(y, rounds=1), chain.flows[0].transform(y))


def test_start_chain_is_extended_not_retrained():
    gen = torch.Generator().manual_seed(1)
    sample = gaussian.reference(gen)
    first = PreferenceFlow((2,), hidden=32, depth=1)
    before = {k: v.clone() for k, v in first.state_dict().items()}
    chain = iterative_pfm(sample, gaussian.score, rounds=2, n=200, start=FlowChain([first]),
                          flow_kwargs={"hidden": 32, "depth": 1}, fit_kwargs={"steps": 5, "progress": False})
    assert len(chain) == 2 and chain.flows[0] is first
    assert all(torch.equal(before[k], v) for k, v in first.state_dict().items())


def test_chain_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="empty"):
        FlowChain().transform(torch.zeros(2, 2))
    with pytest.raises(InvalidTypeError, match="PreferenceFlow"):
        FlowChain([torch.nn.Linear(2, 2)])
    with pytest.raises(InvalidInputError, match="same outputs"):
        FlowChain([PreferenceFlow((2,)), PreferenceFlow((3,))])
    with pytest.raises(InvalidInputError, match="rounds=3"):
        FlowChain([PreferenceFlow((2,))]).transform(torch.zeros(2, 2), rounds=3)
    (tmp_path / "x").mkdir()
    with pytest.raises(FlowFileError, match="no chain.json"):
        FlowChain.load(tmp_path / "x")
    (tmp_path / "x" / "chain.json").write_text("{\"format\": \"other\"}")
    with pytest.raises(FlowFileError, match="not a pfm flow chain"):
        FlowChain.load(tmp_path / "x")
    with pytest.raises(InvalidInputError, match="more than rounds"):
        iterative_pfm(lambda c, n: torch.zeros(n, 2), gaussian.score, rounds=1, n=10,
                      start=FlowChain([PreferenceFlow((2,)), PreferenceFlow((2,))]))


def test_rounds_fit_with_one_fit_config_and_its_overrides_checked_before_any_round():
    from pfm import FitConfig

    gen = torch.Generator().manual_seed(2)
    sample = gaussian.reference(gen)
    calls = []

    def reference(c, n):
        calls.append(n)
        return sample(c, n)

    with pytest.raises(InvalidInputError, match="unknown setting 'stpes'"):
        iterative_pfm(reference, gaussian.score, rounds=2, n=100, fit_kwargs={"stpes": 5})
    assert calls == []  # refused before the first round collected anything
    chain = iterative_pfm(reference, gaussian.score, rounds=2, n=100, flow_kwargs={"hidden": 16, "depth": 1},
                          fit_config=FitConfig(steps=7, batch_size=32, progress=False), fit_kwargs={"steps": 4})
    assert [h.steps for h in chain.histories] == [4, 4]  # the override wins, in every round
