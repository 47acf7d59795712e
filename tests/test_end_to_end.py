"""The issue's end-to-end check: 2D Gaussians, preferred = closer to a target point."""

import pytest

from pfm import demo as gaussian


@pytest.mark.parametrize("conditional", [False, True])
def test_gaussian_flow_reaches_preferred_and_iterating_improves(conditional):
    r = gaussian.run(n_pairs=3000, steps=400, n_test=1500, conditional=conditional, iterations=3, seed=0)
    d = r["distance"]
    # fresh reference samples end up within 10% of the preferred set's distance, or closer
    assert d["PFM"] <= 1.10 * d["preferred (y+)"]
    assert d["PFM"] < d["reference"] - 0.5
    # applying the flow again (PFM x 3) moves them closer still
    assert d["PFM x 3"] < d["PFM"]
    assert r["fit_seconds"] < 60
