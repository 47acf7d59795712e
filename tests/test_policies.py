import math

import pytest
import torch

from pfm import InvalidInputError, collect_preferences
from pfm.policies import GaussianMixturePolicy, GaussianPolicy


def test_gaussian_policy_log_prob_matches_torch_distributions():
    pol = GaussianPolicy((2, 3), mean=torch.arange(6.0).reshape(2, 3), std=0.5)
    y = pol.sample(None, 7)
    assert y.shape == (7, 2, 3)
    ref = torch.distributions.Normal(torch.arange(6.0).reshape(2, 3), 0.5).log_prob(y).sum((1, 2))
    torch.testing.assert_close(pol.log_prob(y), ref)


def test_conditional_gaussian_policy_starts_at_its_prior_and_checks_shapes():
    pol = GaussianPolicy(2, num_classes=3, mean=1.0)
    labels = torch.tensor([0, 1, 2, 2])
    y = pol.sample(labels, 4)
    lp = pol.log_prob(y, labels)
    torch.testing.assert_close(lp, torch.distributions.Normal(1.0, 1.0).log_prob(y).sum(1))
    with pytest.raises(InvalidInputError, match="one output per context row"):
        pol.sample(labels, 5)
    with pytest.raises(InvalidInputError, match=r"\(N, 2\)"):
        pol.log_prob(torch.zeros(4, 3), labels)
    with pytest.raises(InvalidInputError, match="NaN"):
        pol.log_prob(torch.full((4, 2), float("nan")), labels)
    vec = GaussianPolicy((5, 2), context_shape=(4,), learn_std=False)
    assert vec.sample(torch.randn(3, 4), 3).shape == (3, 5, 2)
    # a policy is a black-box reference too
    ds = collect_preferences(pol, lambda y, c: y.sum(1), labels)
    assert len(ds) == 4


def test_mixture_log_prob_integrates_to_one_and_samples_its_modes():
    pol = GaussianMixturePolicy([[-2.0, 0.0], [2.0, 0.0]], stds=[0.5, 1.0], weights=[1.0, 3.0])
    g = torch.linspace(-8, 8, 401)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = pol.log_prob(grid).exp().sum() * (g[1] - g[0]) ** 2
    assert abs(float(mass) - 1.0) < 1e-3
    y = pol.sample(None, 20000, generator=torch.Generator().manual_seed(0))
    frac_left = float((y[:, 0] < -1).float().mean())
    assert abs(frac_left - 0.25 * 0.977) < 0.02  # weight 1/4, and P(N(-2, .5) < -1) = 0.977 (+ a sliver of mode 2)
    with pytest.raises(InvalidInputError, match="weights must have shape"):
        GaussianMixturePolicy([[0.0, 0.0]], weights=[1.0, 2.0])
    with pytest.raises(InvalidInputError, match="unconditional"):
        pol.sample(torch.zeros(3, dtype=torch.int64), 3)
    with torch.no_grad():
        assert math.isfinite(float(pol.log_prob(torch.tensor([[100.0, 100.0]]))))
