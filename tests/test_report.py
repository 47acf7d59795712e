"""pfm.flow_report and pfm report (issue 46): what a flow does to a user's outputs, as a table and a figure."""

import json

import numpy as np
import pytest
import torch

from pfm import InvalidInputError, PreferenceDataset, PreferenceFlow, flow_report
from pfm.cli import main


def shifted(shape=(2,), n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    neg = torch.randn(n, *shape, generator=g)
    return PreferenceDataset(neg + 2.0, torch.randn(n, *shape, generator=g))


def test_flow_report_measures_the_move_the_judge_and_draws_both_kinds_of_figure(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    ds = shifted()
    flow = PreferenceFlow.for_dataset(ds, hidden=64, depth=2)
    flow.fit(ds, steps=300, progress=False, validation_fraction=0)
    y = torch.randn(300, 2, generator=torch.Generator().manual_seed(3))
    rep = flow_report(flow, y, judge=lambda y: y.sum(1))
    assert rep.n == 300 and rep.output_shape == (2,)
    assert 2.0 < rep.moved < 3.6 and rep.moved_relative > 1.0  # a shift of (2, 2) is 2.83 long
    assert rep.judge["after"] > rep.judge["before"] + 3 and rep.judge["fraction_up"] > 0.95
    assert 0.3 < rep.out_of_range <= 1.0  # shifted past the inputs' maxima, many of them
    zero = flow_report(flow, y, strength=0)
    assert zero.moved == 0 and zero.out_of_range == 0
    rep.save(tmp_path / "r")
    assert json.loads((tmp_path / "r" / "report.json").read_text())["judge"]["fraction_up"] > 0.95
    assert "| moved (mean L2) |" in (tmp_path / "r" / "report.md").read_text()
    assert (tmp_path / "r" / "report.png").stat().st_size > 1000

    images = shifted(shape=(1, 5, 5), n=200)
    iflow = PreferenceFlow.for_dataset(images, hidden=32, depth=1)
    iflow.fit(images, steps=20, progress=False, validation_fraction=0)
    fig = flow_report(iflow, torch.randn(10, 1, 5, 5)).figure(count=4)
    assert len(fig.axes) == 8  # two rows of four images
    matplotlib.pyplot.close(fig)
    with pytest.raises(InvalidInputError):
        flow_report(flow, torch.randn(3, 3))


def test_pfm_report_from_files(tmp_path, capsys):
    ds = shifted()
    np.savez(tmp_path / "pairs.npz", chosen=ds.chosen.numpy(), rejected=ds.rejected.numpy())
    assert main(["fit", str(tmp_path / "pairs.npz"), "--out", str(tmp_path / "flow"), "--steps", "200", "-q"]) == 0
    np.savez(tmp_path / "new.npz", outputs=np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32))
    (tmp_path / "judge.py").write_text("def score(y, context=None):\n    return y.sum(1)\n")
    capsys.readouterr()
    assert main(["report", str(tmp_path / "flow"), str(tmp_path / "new.npz"), "--out", str(tmp_path / "rep"),
                 "--judge", f"{tmp_path / 'judge.py'}:score"]) == 0
    out = capsys.readouterr().out
    assert "judge's mean score" in out and "trained on | 360 pairs" in out and "read array 'outputs'" in out
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["training"]["training"]["held_out"]["pairs"] == 40
    (tmp_path / "rows.jsonl").write_text('{"text": "a"}\n')
    assert main(["report", str(tmp_path / "flow"), str(tmp_path / "rows.jsonl"), "--out", str(tmp_path / "r2")]) == 2
    assert "trained without a codec" in capsys.readouterr().err  # text rows need a flow fitted with --codec
