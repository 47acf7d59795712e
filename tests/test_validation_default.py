"""Validation by default (issue 46): a small set the field can memorize is held out of, the best held-out weights
are kept, the one-line summary says so, and pfm info shows the training."""

import json

import numpy as np
import pytest

from pfm import FitConfig, InvalidInputError, PreferenceDataset, PreferenceFlow
from pfm.cli import main
from pfm.config import DEFAULT_PATIENCE, VALIDATION_MIN_PAIRS


def memorizable(n=200, dim=8, seed=0):
    """Preferred and rejected outputs drawn independently: no move a field learns carries over to new pairs."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)).astype(np.float32), rng.normal(size=(n, dim)).astype(np.float32)


def test_fit_holds_out_a_tenth_keeps_the_best_weights_and_says_why():
    chosen, rejected = memorizable()
    ds = PreferenceDataset(chosen, rejected)
    flow = PreferenceFlow.for_dataset(ds, hidden=256, depth=3)
    hist = flow.fit(ds, steps=1500, batch_size=64, progress=False)
    assert hist.held_out == {"pairs": 20, "of": 200, "from_data": True} and hist.pairs == 180
    assert hist.best_step is not None and hist.best_step < hist.steps
    assert hist.steps < 1500  # stopped: DEFAULT_PATIENCE evaluations without improvement
    assert f"stopped after {DEFAULT_PATIENCE} evaluations" in hist.summary
    assert f"kept the weights of step {hist.best_step} of {hist.steps}" in hist.summary
    assert "20 of 200 pairs held out" in hist.summary

    off = PreferenceFlow.for_dataset(ds, hidden=32, depth=1)
    h2 = off.fit(ds, steps=50, progress=False, validation_fraction=0)
    assert h2.held_out is None and h2.summary is None and h2.steps == 50 and h2.pairs == 200
    small = PreferenceDataset(chosen[:VALIDATION_MIN_PAIRS - 1], rejected[:VALIDATION_MIN_PAIRS - 1])
    h3 = PreferenceFlow.for_dataset(small, hidden=32, depth=1).fit(small, steps=20, progress=False)
    assert h3.held_out is None  # too few pairs for the default share
    h4 = PreferenceFlow.for_dataset(small, hidden=32, depth=1).fit(small, steps=20, progress=False,
                                                                    validation_fraction=0.2)
    assert h4.held_out == {"pairs": 20, "of": 99, "from_data": True}  # asked for: taken
    with pytest.raises(InvalidInputError, match="fewer than 100"):
        PreferenceFlow.for_dataset(small, hidden=32, depth=1).fit(small, steps=20, progress=False, patience=3)
    with pytest.raises(InvalidInputError, match="validation_fraction"):
        FitConfig(validation_fraction=1.0)


@pytest.mark.slow  # a default fit through the CLI: 1.4 s
def test_pfm_fit_without_options_keeps_the_best_weights_and_pfm_info_shows_the_training(tmp_path, capsys):
    chosen, rejected = memorizable(n=300)
    data = tmp_path / "pairs.npz"
    np.savez(data, chosen=chosen, rejected=rejected)
    assert main(["fit", str(data), "--out", str(tmp_path / "flow"), "--steps", "1500", "-q"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("saved flow to") and "kept the weights of step" in line and "30 of 300 pairs" in line
    assert main(["info", str(tmp_path / "flow")]) == 0
    info = json.loads(capsys.readouterr().out)
    t = info["training"]
    assert t["pairs"] == 270 and t["held_out"] == {"pairs": 30, "of": 300, "from_data": True}
    assert t["best_step"] < t["steps"] < 1500 and t["held_out_loss"] is not None and t["zero_field"] is not None
    assert t["summary"] in line
    (tmp_path / "flow" / "history.json").write_text("{not json")
    assert main(["info", str(tmp_path / "flow")]) == 0
    assert "not valid JSON" in json.loads(capsys.readouterr().out)["training"]["error"]
