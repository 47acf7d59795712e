"""The text experiment's figure and its table of PFM applied k times, on records the test writes (issue 29)."""

import numpy as np
import pytest

from pfm_experiments.text.figure import rounds_curve, scores_figure, shown_methods
from pfm_experiments.text.report import rounds_table


def record(seed, rounds=True):
    r = {"seed": seed}
    if rounds:
        r["rounds"] = [{"k": k, "score": 0.1 * k + seed, "vader": 0.05 * k, "score_of_vector": 0.3 * k}
                       for k in range(4)]
    return r


def summary():
    def m(score, vader, **extra):
        return {"score": {"mean": score, "std": 0.1}, "vader": {"mean": vader, "std": None}, **extra}
    return {"methods": {"reference": m(-0.1, 0.2), "PFM": m(0.5, 0.3), "best-of-2 (annotator)": m(0.3, 0.2, n=2),
                        "best-of-4 (annotator)": m(0.6, 0.3, n=4), "PFM-select (n = 2)": m(0.0, 0.1, n=2),
                        "PFM-select (n = 4)": m(0.0, 0.1, n=4)}}


def test_the_rounds_curve_is_mean_and_sample_std_over_seeds():
    k, mean, std = rounds_curve([record(0), record(1), record(2)], "score")
    assert k.tolist() == [0, 1, 2, 3]
    assert mean == pytest.approx([1.0, 1.1, 1.2, 1.3])
    assert std == pytest.approx(np.full(4, 1.0))  # seeds 0, 1, 2: sample std 1
    assert rounds_curve([record(0)], "vader")[2].tolist() == [0.0] * 4  # one seed: no spread
    # a seed without rounds (a run made before they were recorded), or a metric a seed lacks: no curve
    assert rounds_curve([record(0), record(1, rounds=False)], "score") is None
    assert rounds_curve([record(0)], "perplexity") is None
    assert rounds_curve([], "score") is None


def test_the_figure_draws_the_largest_n_and_is_written_with_or_without_rounds(tmp_path):
    assert shown_methods(summary()["methods"]) == ["reference", "PFM", "best-of-4 (annotator)",
                                                   "PFM-select (n = 4)"]
    for name, runs in (("with.png", [record(0), record(1)]), ("without.png", [record(0, rounds=False)])):
        scores_figure(runs, summary(), tmp_path / name, "test")
        assert (tmp_path / name).stat().st_size > 5_000
    lines = rounds_table([record(0), record(1)])
    assert lines[1] == "## PFM applied k times" and len(lines) == 5 + 4  # blank, title, blank, head, rule
    assert "| 3 | 0.800 ± 0.707 | 0.900 ± 0.000 | 0.150 ± 0.000 |" in lines
    assert rounds_table([record(0, rounds=False)]) == []
