"""The solver as one object: transform, iterate, a chain, log_prob and choose_strength take a SolverConfig
(``solver=``), with single settings over it; pfm apply lays its options over the flow's own the same way."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from pfm import (FlowChain, InvalidInputError, InvalidTypeError, PreferenceFlow, SolverConfig, choose_strength,
                 collect_preferences)
from pfm.likelihood import log_prob
from pfm.policies import GaussianPolicy


@pytest.fixture(scope="module")
def flow() -> PreferenceFlow:
    g = torch.Generator().manual_seed(0)
    ds = collect_preferences(lambda c, m: torch.randn(m, 2, generator=g), lambda y, c: y[:, 0], n=200, seed=1)
    f = PreferenceFlow.for_dataset(ds, hidden=16, depth=2)
    f.fit(ds, steps=30, progress=False, validation_fraction=0)
    return f


def test_a_config_and_the_single_settings_solve_alike(flow):
    y = torch.randn(20, 2, generator=torch.Generator().manual_seed(3))
    rk4 = flow.transform(y, solver=SolverConfig(method="rk4", steps=3))
    assert torch.equal(rk4, flow.transform(y, method="rk4", solver_steps=3))
    assert not torch.equal(rk4, flow.transform(y))  # the flow's own: midpoint, 4 steps
    # a single setting goes over the config's
    assert torch.equal(flow.transform(y, solver=SolverConfig(method="rk4", steps=9), solver_steps=3), rk4)
    # a whole config replaces the flow's own, its defaults included
    flow.solver = {**flow.solver, "steps": 7}
    try:
        assert torch.equal(flow.transform(y, solver=SolverConfig()), flow.transform(y, solver_steps=4))
    finally:
        flow.solver = SolverConfig().to_dict()
    cfg = SolverConfig(method="euler", steps=2)
    assert torch.equal(flow.iterate(y, iterations=2, solver=cfg),
                       flow.transform(flow.transform(y, method="euler", solver_steps=2), method="euler",
                                      solver_steps=2))
    assert torch.equal(FlowChain([flow, flow]).transform(y, solver=cfg), flow.iterate(y, iterations=2, solver=cfg))


def test_log_prob_and_choose_strength_take_the_config(flow):
    ref = GaussianPolicy(2)
    y = torch.randn(16, 2, generator=torch.Generator().manual_seed(4))
    a = log_prob(flow, y, reference=ref, divergence="exact", solver=SolverConfig(method="rk4", steps=3)).log_prob
    b = log_prob(flow, y, reference=ref, divergence="exact", method="rk4", solver_steps=3).log_prob
    c = log_prob(flow, y, reference=ref, divergence="exact").log_prob
    assert torch.equal(a, b) and not torch.equal(a, c)
    judge = lambda out: out[:, 0]  # noqa: E731
    one = choose_strength(flow, y, judge, strengths=[0.0, 1.0], solver=SolverConfig(method="euler", steps=2))
    two = choose_strength(flow, y, judge, strengths=[0.0, 1.0], method="euler", solver_steps=2)
    assert one.mean == two.mean and one.evaluations == two.evaluations == [0, 2]


def test_a_wrong_solver_is_refused(flow):
    y = torch.zeros(2, 2)
    with pytest.raises(InvalidTypeError, match="solver must be a pfm.SolverConfig"):
        flow.transform(y, solver={"method": "rk4"})
    with pytest.raises(InvalidInputError, match="did you mean 'solver_steps'"):
        log_prob(flow, y, reference=GaussianPolicy(2), solver_step=3)
    with pytest.raises(InvalidInputError, match="method"):
        SolverConfig(method="rk5")
    with pytest.deprecated_call():
        old = flow.transform(y, steps=3)
    assert torch.equal(old, flow.transform(y, solver_steps=3))


@pytest.mark.slow  # a subprocess: the fast tier leaves those to make test
def test_pfm_apply_lays_its_options_over_the_flows_solver(flow, tmp_path):
    flow.save(tmp_path / "f")
    y = np.random.default_rng(0).normal(size=(10, 2)).astype("f4")
    np.savez(tmp_path / "in.npz", y=y)
    out = subprocess.run([sys.executable, "-m", "pfm", "apply", str(tmp_path / "f"), str(tmp_path / "in.npz"),
                          "--out", str(tmp_path / "out.npz"), "--method", "rk4", "--solver-steps", "3"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = np.load(tmp_path / "out.npz")["y"]
    np.testing.assert_array_equal(got, flow.transform(y, solver=SolverConfig(method="rk4", steps=3)))
