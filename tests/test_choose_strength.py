"""pfm.choose_strength and pfm apply --strength auto (issue 46): the dial swept with the user's own judge."""

import math

import numpy as np
import pytest
import torch

import pfm
from pfm import InvalidInputError, PreferenceDataset, PreferenceFlow, choose_strength
from pfm.cli import main


def ring(n=1000, seed=0):
    """Reference N(0, I) in 2-d; preferred outputs on a ring of radius 2: a judge no mean shift can satisfy."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, generator=g) * 2 * math.pi
    pos = torch.stack([a.cos(), a.sin()], 1) * 2 + 0.1 * torch.randn(n, 2, generator=g)
    return PreferenceDataset(pos, torch.randn(n, 2, generator=g))


def judge(y, context=None):
    return -(y.norm(dim=1) - 2) ** 2


@pytest.fixture(scope="module")
def fitted():
    ds = ring()
    torch.manual_seed(0)
    flow = PreferenceFlow.for_dataset(ds)
    flow.fit(ds, steps=400, progress=False, validation_fraction=0)
    return flow, ds


def test_choose_strength_sweeps_the_dial_with_the_judge_and_the_alternatives(fitted):
    flow, ds = fitted
    y = torch.randn(600, 2, generator=torch.Generator().manual_seed(1))
    cand = torch.randn(600, 3, 2, generator=torch.Generator().manual_seed(2))
    curve = choose_strength(flow, y, judge, sample=400, pairs=ds, candidates=cand)
    assert curve.strengths == list(pfm.report.strength.DEFAULT_STRENGTHS) and curve.n == 400
    assert curve.best == curve.strengths[int(np.argmax(curve.mean))]
    index = torch.randperm(600, generator=torch.Generator().manual_seed(0))[:400].sort().values
    assert curve.mean[0] == pytest.approx(float(judge(y[index]).double().mean()))  # strength 0: the outputs as given
    assert curve.evaluations[0] == 0 and curve.evaluations[4] == 8 and curve.evaluations[-1] == 16  # midpoint x 4
    assert curve.mean[4] > curve.mean[0] + 0.5  # the flow moves toward the ring
    assert set(curve.baselines) == {"mean shift", "best-of-2", "best-of-4"}
    assert curve.baselines["mean shift"]["mean"] < curve.mean[curve.strengths.index(curve.best)]
    assert curve.baselines["best-of-2"]["mean"] < curve.baselines["best-of-4"]["mean"]
    assert "**(best)**" in curve.table() and curve.to_dict()["best"] == curve.best
    with pytest.raises(InvalidInputError, match="one score per output"):
        choose_strength(flow, y, lambda y: y.sum())
    with pytest.raises(InvalidInputError, match="strengths"):
        choose_strength(flow, y, judge, strengths=[0.5, -1])
    with pytest.raises(InvalidInputError, match="candidates"):
        choose_strength(flow, y, judge, candidates=torch.zeros(5, 2, 2))


def test_pfm_apply_strength_auto_with_a_judge_from_a_file(tmp_path, capsys):
    ds = ring(400)
    data = tmp_path / "pairs.npz"
    np.savez(data, chosen=ds.chosen.numpy(), rejected=ds.rejected.numpy())
    assert main(["fit", str(data), "--out", str(tmp_path / "flow"), "--steps", "200", "-q"]) == 0
    np.savez(tmp_path / "in.npz", y=np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32))
    (tmp_path / "judge.py").write_text("def score(y, context=None):\n    return -(y.norm(dim=1) - 2) ** 2\n")
    capsys.readouterr()
    code = main(["apply", str(tmp_path / "flow"), str(tmp_path / "in.npz"), "--out", str(tmp_path / "out.npz"),
                 "--strength", "auto", "--judge", f"{tmp_path / 'judge.py'}:score", "--judge-sample", "200",
                 "--curve", str(tmp_path / "curve.png")])
    out = capsys.readouterr().out
    assert code == 0 and "strength auto:" in out and "| strength 0.5 |" in out.replace(" **(best)**", "")
    assert (tmp_path / "curve.png").stat().st_size > 1000
    assert np.load(tmp_path / "out.npz")["y"].shape == (300, 2)
    for extra, message in ((["--judge", "judge.py"], "MODULE:FUNCTION"),
                           (["--judge", f"{tmp_path / 'judge.py'}:nope"], "has no 'nope'"),
                           (["--judge", "no_such_module_xyz:score"], "no module"),
                           ([], "needs --judge")):
        assert main(["apply", str(tmp_path / "flow"), str(tmp_path / "in.npz"), "--out", str(tmp_path / "o2.npz"),
                     "--strength", "auto", *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert main(["apply", str(tmp_path / "flow"), str(tmp_path / "in.npz"), "--out", str(tmp_path / "o2.npz"),
                 "--judge", f"{tmp_path / 'judge.py'}:score"]) == 2
    assert "applies to --strength auto" in capsys.readouterr().err
    assert not (tmp_path / "o2.npz").exists()
