import math

import pytest
import torch

from pfm import InvalidInputError, solve

FIXED = ["euler", "midpoint", "rk4"]


@pytest.mark.parametrize("method", FIXED + ["dopri5"])
def test_exact_on_constant_field(method):
    y = torch.randn(7, 3)
    c = torch.tensor([1.0, -2.0, 0.5])
    out = solve(lambda t, y, ctx: c.expand_as(y), y, method=method, steps=3)
    torch.testing.assert_close(out, y + c)


@pytest.mark.parametrize("method", ["midpoint", "rk4", "dopri5"])
def test_exact_on_field_linear_in_time(method):
    # dy/dt = t  ->  y(1) = y(0) + 1/2; midpoint and rk4 integrate this exactly, euler does not
    y = torch.randn(4, 2, dtype=torch.float64)
    out = solve(lambda t, y, ctx: t[:, None].expand_as(y), y, method=method, steps=2)
    torch.testing.assert_close(out, y + 0.5)
    euler = solve(lambda t, y, ctx: t[:, None].expand_as(y), y, method="euler", steps=2)
    assert (euler - (y + 0.5)).abs().max() > 0.1


def test_order_of_accuracy_on_linear_field():
    # dy/dt = -y  ->  y(1) = y(0) / e
    y = torch.randn(16, 2, dtype=torch.float64)
    exact = y * math.exp(-1)
    err = {m: float((solve(lambda t, y, c: -y, y, method=m, steps=8) - exact).abs().max()) for m in FIXED}
    assert err["rk4"] < err["midpoint"] < err["euler"]
    assert err["rk4"] < 1e-5
    ad = solve(lambda t, y, c: -y, y, method="dopri5", atol=1e-8, rtol=1e-8)
    assert float((ad - exact).abs().max()) < 1e-6


def test_field_sees_batched_time_and_context():
    seen = []

    def field(t, y, ctx):
        seen.append((tuple(t.shape), ctx))
        return torch.zeros_like(y)

    ctx = torch.arange(5)
    for m in ["euler", "rk4", "dopri5"]:
        solve(field, torch.randn(5, 2), ctx, method=m, steps=2)
    assert all(shape == (5,) and c is ctx for shape, c in seen)


def test_trajectory_and_errors():
    y = torch.randn(3, 2, 2)
    traj = solve(lambda t, y, c: torch.ones_like(y), y, method="euler", steps=4, return_trajectory=True)
    assert traj.shape == (5, 3, 2, 2)
    torch.testing.assert_close(traj[2], y + 0.5)
    traj = solve(lambda t, y, c: torch.ones_like(y), y, method="dopri5", steps=4, return_trajectory=True)
    assert traj.shape == (5, 3, 2, 2)
    with pytest.raises(InvalidInputError, match="method"):
        solve(lambda t, y, c: y, y, method="leapfrog")
    with pytest.raises(InvalidInputError, match="steps"):
        solve(lambda t, y, c: y, y, steps=0)
