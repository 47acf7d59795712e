"""Theorem 1 and 2 quantities against closed forms (Theorem 1 on the toy2d task: experiments/tests/test_toy2d.py).

Closed form used: pi_ref = N(0, 1) and "the larger output wins", so w(y) = Phi(y) and the k-th iterated marginal
has Phi(Y) ~ Beta(2^k, 1): KL(p_k || pi_ref) = k log 2 - (2^k - 1) / 2^k.
"""

import math

import pytest
import torch
from torch.distributions import Normal

from pfm import InvalidInputError, InvalidTypeError
from pfm.objective import (BOUND, iterate_marginals, preference_objective, preferred_log_density,
                           rejected_log_density, tempered_objective, win_probability)


def larger_wins(a, b, context=None):
    return (a[:, 0] > b[:, 0]).double() + 0.5 * (a[:, 0] == b[:, 0]).double()


STD = Normal(0.0, 1.0)


def test_win_probability_is_the_normal_cdf():
    g = torch.Generator().manual_seed(0)
    opp = torch.randn(20_000, 1, generator=g, dtype=torch.float64)
    y = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    w = win_probability(larger_wins, y, opp, chunk=50_000)  # several chunks
    assert torch.allclose(w, STD.cdf(y[:, 0]).double(), atol=0.01)


def test_preferred_marginal_objective_and_bound_closed_form():
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(20_000, 1, generator=g, dtype=torch.float64)
    w = STD.cdf(ref[:, 0]).double()
    rows = {r["power"]: r for r in tempered_objective(w, [0.0, 0.5, 1.0, 2.0])}
    assert rows[1.0]["kl"] == pytest.approx(math.log(2) - 0.5, abs=0.01)
    assert rows[1.0]["J"] == pytest.approx(BOUND, abs=0.01)
    assert rows[0.0]["kl"] == pytest.approx(0.0, abs=1e-9)
    assert max(rows[a]["J"] for a in (0.0, 0.5, 2.0)) < rows[1.0]["J"] - 0.02
    # samples of p1 = 2 phi Phi: the max of two reference draws (the y+ of each pair)
    pair = torch.randn(20_000, 2, generator=g, dtype=torch.float64)
    yplus = pair.max(1).values
    log_ref = STD.log_prob(yplus).double()
    wp = STD.cdf(yplus).double()
    est = preference_objective(wp, preferred_log_density(log_ref, wp), log_ref)
    assert est.kl == pytest.approx(math.log(2) - 0.5, abs=3 * est.kl_stderr)
    assert est.J == pytest.approx(BOUND, abs=1e-9)  # exact per sample at p1
    other = preference_objective(STD.cdf(pair[:, 0]).double(), STD.log_prob(pair[:, 0]).double(),
                                 STD.log_prob(pair[:, 0]).double())  # pi = pi_ref: J = E[log U], U ~ U(0, 1)
    assert other.J == pytest.approx(-1.0, abs=3 * other.stderr) and other.kl == 0
    yminus = pair.min(1).values
    assert torch.allclose(rejected_log_density(STD.log_prob(yminus), STD.cdf(yminus)).exp(),
                          2 * STD.log_prob(yminus).exp() * (1 - STD.cdf(yminus)), rtol=1e-5)


def test_iterated_marginals_closed_form():
    g = torch.Generator().manual_seed(2)
    ys = torch.randn(5000, 1, generator=g, dtype=torch.float64)
    it = iterate_marginals(larger_wins, ys, STD.log_prob(ys[:, 0]), rounds=3)
    for k in range(4):
        assert float(it.kl[k]) == pytest.approx(k * math.log(2) - (2 ** k - 1) / 2 ** k, abs=0.03)
    assert torch.allclose(it.normalizer, torch.full((3,), 0.5, dtype=torch.float64), atol=1e-3)
    assert bool((it.entropy[1:] < it.entropy[:-1]).all()) and bool((it.ess[1:] < it.ess[:-1]).all())
    assert it.entropy[0] == pytest.approx(0.5 * math.log(2 * math.pi * math.e), abs=0.03)


def test_bad_input():
    y = torch.zeros(3, 2)
    with pytest.raises(InvalidTypeError, match="prefer"):
        win_probability("bt", y, y)
    with pytest.raises(InvalidInputError, match="must match"):
        win_probability(larger_wins, y, torch.zeros(3, 1))
    with pytest.raises(InvalidInputError, match="one probability per pair"):
        win_probability(lambda a, b, c: torch.zeros(1), y, y)
    with pytest.raises(InvalidInputError, match=r"outside \[0, 1\]"):
        win_probability(lambda a, b, c: torch.full((len(a),), 2.0), y, y)
    with pytest.raises(InvalidInputError, match="same length"):
        preference_objective(torch.ones(3), torch.zeros(2), torch.zeros(3))
    with pytest.raises(InvalidInputError, match="log_ref"):
        iterate_marginals(larger_wins, torch.zeros(4, 1), torch.zeros(3), rounds=1)
    with pytest.raises(InvalidInputError, match="NaN|finite"):
        win_probability(larger_wins, torch.tensor([[float("nan")]]), torch.zeros(2, 1))
