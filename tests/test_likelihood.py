"""The change of variables against closed forms: an affine field pushes a Gaussian onto a Gaussian."""

import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal

from pfm import FlowChain, InvalidInputError, InvalidTypeError, PreferenceFlow
from pfm.likelihood import divergence_integral, kl_to_reference, log_prob


class Affine(nn.Module):
    """v(t, y) = A y + b, time-independent."""

    def __init__(self, A: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(A.clone())
        self.b = nn.Parameter(b.clone())

    def forward(self, t, y, context=None):
        return y @ self.A.T + self.b


def affine_case(d: int, seed: int = 0, scale: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    A = scale * torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    b = torch.randn(d, generator=g, dtype=torch.float64) * 0.5
    m = torch.randn(d, generator=g, dtype=torch.float64)
    L = torch.eye(d, dtype=torch.float64) + 0.2 * torch.tril(torch.randn(d, d, generator=g, dtype=torch.float64), -1)
    ref = MultivariateNormal(m, scale_tril=L)
    aug = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    aug[:d, :d], aug[:d, d] = A, b
    E = torch.linalg.matrix_exp(aug)  # [[e^A, c], [0, 1]]: the flow map y -> e^A y + c
    M, c = E[:d, :d], E[:d, d]
    pushed = MultivariateNormal(M @ m + c, scale_tril=torch.linalg.cholesky(M @ ref.covariance_matrix @ M.T))
    flow = PreferenceFlow((d,), field=Affine(A, b)).double()
    return flow, ref, pushed


def gauss_kl(p: MultivariateNormal, q: MultivariateNormal) -> float:
    return float(torch.distributions.kl_divergence(p, q))


def ref_log_prob(ref):
    return lambda y, c=None: ref.log_prob(y)


@pytest.mark.slow  # over 5 s under load: out of the fast tier
def test_exact_divergence_matches_the_pushed_gaussian_both_ways():
    flow, ref, pushed = affine_case(3)
    y1 = pushed.sample((500,))
    lp = flow.log_prob(y1, reference=ref_log_prob(ref), method="rk4", solver_steps=32)
    true = pushed.log_prob(y1)
    assert float(((lp - true).abs() / true.abs()).max()) < 0.01
    fwd = log_prob(flow, ref.sample((500,)), reference=ref_log_prob(ref), given="reference", method="rk4", solver_steps=32)
    assert torch.allclose(fwd.log_prob, pushed.log_prob(fwd.output), rtol=1e-6, atol=1e-6)
    assert torch.equal(fwd.stderr, torch.zeros(500, dtype=torch.float64))


@pytest.mark.slow
def test_kl_to_reference_matches_the_closed_form():
    flow, ref, pushed = affine_case(3, seed=1)
    est = kl_to_reference(flow, ref_log_prob(ref), samples=ref.sample((20_000,)), method="rk4", solver_steps=32)
    true = gauss_kl(pushed, ref)
    assert abs(est.kl - true) < max(0.01 * true, 3 * est.stderr)
    assert est.n == 20_000 and est.stderr > 0


@pytest.mark.slow  # over 5 s under load: out of the fast tier
def test_k_maps_compose():
    flow, ref, _ = affine_case(2, seed=2)
    A, b = flow.field.A.detach(), flow.field.b.detach()
    aug = torch.zeros(3, 3, dtype=torch.float64)
    aug[:2, :2], aug[:2, 2] = 3 * A, 3 * b  # three applications of the time-1 map = the time-3 map
    E = torch.linalg.matrix_exp(aug)
    M, c = E[:2, :2], E[:2, 2]
    pushed3 = MultivariateNormal(M @ ref.mean + c, covariance_matrix=M @ ref.covariance_matrix @ M.T)
    y = pushed3.sample((200,))
    single = log_prob(flow, y, reference=ref_log_prob(ref), iterations=3, method="rk4", solver_steps=32).log_prob
    chain = log_prob(FlowChain([flow, flow, flow]), y, reference=ref_log_prob(ref), method="rk4", solver_steps=32).log_prob
    assert torch.allclose(single, pushed3.log_prob(y), rtol=1e-5)
    assert torch.allclose(single, chain)


@pytest.mark.slow  # over 5 s under load: out of the fast tier
def test_hutchinson_is_within_its_standard_error_in_64_dimensions():
    flow, ref, pushed = affine_case(64, seed=3, scale=0.5)
    y1 = pushed.sample((400,))
    dens = log_prob(flow, y1, reference=ref_log_prob(ref), divergence="hutchinson", probes=16, method="rk4",
                    solver_steps=8)
    err = (dens.log_prob - pushed.log_prob(y1)) / dens.stderr
    assert bool((dens.stderr > 0).all())
    # a z-score per row: about 95% within 2 standard errors if the errors are honest
    assert float((err.abs() < 2).float().mean()) > 0.85
    assert abs(float(err.mean())) < 0.3  # unbiased
    est = kl_to_reference(flow, ref_log_prob(ref), samples=ref.sample((2000,)), divergence="hutchinson", probes=4,
                          method="rk4", solver_steps=8)
    assert abs(est.kl - gauss_kl(pushed, ref)) < 3 * est.stderr


def test_hutchinson_and_exact_agree_on_a_trained_flow():
    torch.manual_seed(0)
    flow = PreferenceFlow((2,), hidden=32, depth=2)
    y = torch.randn(64, 2)
    _, exact, _ = divergence_integral(flow.field, y, divergence="exact")
    _, hutch, se = divergence_integral(flow.field, y, divergence="hutchinson", probes=64)
    assert float(((hutch - exact).abs() / se.clamp_min(1e-9) < 4).float().mean()) > 0.95


def test_conditional_flow_and_label_context():
    flow = PreferenceFlow((2,), num_classes=3, hidden=16, depth=2)
    ref = MultivariateNormal(torch.zeros(2), torch.eye(2))
    seen = []

    def lp(y, c):
        seen.append(c)
        return ref.log_prob(y)

    dens = log_prob(flow, torch.randn(10, 2), torch.arange(10) % 3, reference=lp)
    assert dens.log_prob.shape == (10,) and torch.equal(seen[0], torch.arange(10) % 3)
    assert flow.log_prob(torch.randn(5, 2), 1, reference=lp).shape == (5,)


def test_bad_input_fails_clearly():
    flow, ref, _ = affine_case(2)
    lp = ref_log_prob(ref)
    with pytest.raises(InvalidTypeError, match="log_prob"):
        flow.log_prob(torch.zeros(3, 2), reference=nn.Linear(2, 2))
    with pytest.raises(InvalidInputError, match="shape"):
        flow.log_prob(torch.zeros(3, 5), reference=lp)
    with pytest.raises(InvalidInputError, match="NaN|finite"):
        flow.log_prob(torch.tensor([[float("nan"), 0.0]]), reference=lp)
    with pytest.raises(InvalidInputError, match="one value per row"):
        flow.log_prob(torch.zeros(3, 2, dtype=torch.float64), reference=lambda y, c: torch.zeros(2))
    with pytest.raises(InvalidInputError, match="NaN"):
        flow.log_prob(torch.zeros(3, 2, dtype=torch.float64), reference=lambda y, c: torch.full((3,), float("nan")))
    with pytest.raises(InvalidInputError, match="divergence"):
        flow.log_prob(torch.zeros(3, 2), reference=lp, divergence="approx")
    with pytest.raises(InvalidInputError, match="unknown solver setting"):
        log_prob(flow, torch.zeros(3, 2), reference=lp, stepz=3)
    with pytest.raises(InvalidTypeError, match="PreferenceFlow"):
        log_prob(nn.Linear(2, 2), torch.zeros(3, 2), reference=lp)
    with pytest.raises(InvalidInputError, match="empty"):
        log_prob([], torch.zeros(3, 2), reference=lp)
    with pytest.raises(InvalidInputError, match="samples, or n"):
        kl_to_reference(flow, lp)


@pytest.mark.slow
def test_forward_and_inverse_agree_on_a_nonlinear_flow():
    torch.manual_seed(1)
    field = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))

    class Field(nn.Module):  # time-dependent and nonlinear, so the check is not trivial
        def __init__(self):
            super().__init__()
            self.net = field

        def forward(self, t, y, context=None):
            return 2.0 * self.net(y) * (1 + t[:, None])

    flow = PreferenceFlow((2,), field=Field()).double()
    ref = MultivariateNormal(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    fwd = log_prob(flow, ref.sample((300,)), reference=ref_log_prob(ref), given="reference", method="rk4", solver_steps=64)
    assert float((fwd.output - fwd.source).norm(dim=1).mean()) > 0.3
    back = log_prob(flow, fwd.output, reference=ref_log_prob(ref), method="rk4", solver_steps=64)
    assert torch.allclose(back.source, fwd.source, atol=1e-5)
    assert torch.allclose(back.log_prob, fwd.log_prob, atol=1e-5)
    # and the density integrates to one: importance sampling from a wide Gaussian
    wide = MultivariateNormal(torch.zeros(2, dtype=torch.float64), 16 * torch.eye(2, dtype=torch.float64))
    y = wide.sample((20_000,))
    lp = log_prob(flow, y, reference=ref_log_prob(ref), method="rk4", solver_steps=32).log_prob
    assert float((lp - wide.log_prob(y)).exp().mean()) == pytest.approx(1.0, abs=0.05)


def affine_time_map(flow, ref, s: float):
    """The distribution of the affine field's time-``s`` map applied to ``ref`` (the field is time-independent, so
    ``strength=s`` is that map, whole applications and a part alike)."""
    A, b = flow.field.A.detach(), flow.field.b.detach()
    d = A.shape[0]
    aug = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    aug[:d, :d], aug[:d, d] = s * A, s * b
    E = torch.linalg.matrix_exp(aug)
    M, c = E[:d, :d], E[:d, d]
    return MultivariateNormal(M @ ref.mean + c, covariance_matrix=M @ ref.covariance_matrix @ M.T)


@pytest.mark.slow  # over 5 s under load: out of the fast tier
@pytest.mark.parametrize("strength", [0.0, 0.4, 1.0, 2.5])
def test_strength_gives_the_density_of_transform_at_that_strength(strength):
    flow, ref, _ = affine_case(2, seed=3)
    y0 = ref.sample((300,))
    opts = {"method": "rk4", "solver_steps": 32}
    fwd = log_prob(flow, y0, reference=ref_log_prob(ref), given="reference", strength=strength, **opts)
    # the same solves as transform(strength=...), and the density of the time-s map
    torch.testing.assert_close(fwd.output, flow.transform(y0, strength=strength, **opts), rtol=1e-9, atol=1e-9)
    pushed = affine_time_map(flow, ref, strength)
    torch.testing.assert_close(fwd.log_prob, pushed.log_prob(fwd.output), rtol=1e-6, atol=1e-6)
    back = flow.log_prob(fwd.output, reference=ref_log_prob(ref), strength=strength, **opts)
    torch.testing.assert_close(back, fwd.log_prob, rtol=1e-6, atol=1e-6)
    kl = kl_to_reference(flow, ref_log_prob(ref), samples=y0, strength=strength, **opts)
    assert abs(kl.kl - float((fwd.log_prob - ref.log_prob(fwd.output)).mean())) < 1e-9


def test_strength_one_is_the_default_and_its_misuse_is_refused():
    flow, ref, _ = affine_case(2, seed=4)
    y = ref.sample((50,))
    lp = ref_log_prob(ref)
    torch.testing.assert_close(log_prob(flow, y, reference=lp, strength=1.0).log_prob,
                               log_prob(flow, y, reference=lp).log_prob, rtol=0, atol=0)
    torch.testing.assert_close(log_prob(flow, y, reference=lp, strength=2).log_prob,
                               log_prob(flow, y, reference=lp, iterations=2).log_prob, rtol=0, atol=0)
    with pytest.raises(InvalidInputError, match="iterations or strength"):
        log_prob(flow, y, reference=lp, strength=0.5, iterations=2)
    with pytest.raises(InvalidInputError, match="strength takes one flow"):
        log_prob(FlowChain([flow, flow]), y, reference=lp, strength=0.5)
    with pytest.raises(InvalidInputError, match="strength"):
        log_prob(flow, y, reference=lp, strength=-1.0)
