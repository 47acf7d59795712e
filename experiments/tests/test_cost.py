"""pfm_experiments.cost: the inference-cost record, its stopwatch and the cost matching."""

import math
import time

import pytest

from pfm_experiments.cost import Cost, measure, nearest, timed


def test_cost_counts_its_calls_and_round_trips_through_json():
    c = Cost(reference_calls=16, solves=1, seconds_per_output=2e-6)
    assert c.model_calls == 16 and c.label() == "16 ref + 1 solve"
    assert Cost.from_dict(c.as_dict()) == c
    assert Cost(policy_calls=1).label() == "1 policy" and Cost(policy_calls=1).model_calls == 1
    assert Cost(1, 5).label() == "1 ref + 5 solves"
    text = Cost(1, 1, decoder_calls=8, seconds_per_output=0.1)  # text's PFM: a sample, a solve, 8 decoded candidates
    assert text.model_calls == 9 and text.label() == "1 ref + 1 solve + 8 decoder"
    assert Cost.from_dict(text.as_dict()) == text and "decoder_calls" not in c.as_dict()
    for bad in ({"reference_calls": -1}, {"solves": math.nan}, {"seconds_per_output": -1.0},
                {"decoder_calls": -2}):
        with pytest.raises(ValueError):
            Cost(**bad)


def test_timed_and_measure_give_the_time_per_output():
    with timed(4) as clock:
        assert clock.per_output is None
        time.sleep(0.02)
    assert clock.seconds >= 0.02 and clock.per_output == pytest.approx(clock.seconds / 4)
    calls = []

    def make():
        calls.append(1)
        time.sleep(0.01 if len(calls) == 1 else 0.0)  # a slow first call (warm-up) is not the one kept
        return len(calls)

    result, seconds = measure(make, 10, repeats=3)
    assert result == 1 and len(calls) == 3 and seconds < 0.001
    with pytest.raises(ValueError):
        timed(0).__enter__()
    with pytest.raises(ValueError):
        measure(make, 10, repeats=0)


def test_nearest_is_on_a_log_scale_with_ties_to_the_larger():
    assert nearest(2, [2, 4, 16, 64]) == 2
    assert nearest(6, [2, 4, 16, 64]) == 4
    assert nearest(8, [2, 4, 16, 64]) == 16  # log-midway between 4 and 16: the larger
    assert nearest(1000, [2, 4, 16, 64]) == 64
    with pytest.raises(ValueError):
        nearest(0, [1, 2])
