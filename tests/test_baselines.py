"""Each baseline on a 1D Gaussian problem whose answer is known in closed form."""

import pytest
import torch
from torch import nn

from pfm import InvalidInputError, InvalidTypeError, PreferenceDataset, collect_preferences
from pfm.baselines import RewardModel, dpo, implicit_accuracy, ipo, preference_loss, rlhf
from pfm.policies import GaussianPolicy

A = 1.0  # true reward r(y) = A * y; reference N(0, 1)


def bt_pairs(n: int, seed: int = 0) -> PreferenceDataset:
    g = torch.Generator().manual_seed(seed)
    return collect_preferences(lambda c, m: torch.randn(m, 1, generator=g),
                               lambda ya, yb, c: torch.sigmoid(A * (ya - yb))[:, 0], n=n, seed=seed + 1000)
    # (not the reference's seed: the same stream would correlate the outputs with the coin flips)


@pytest.mark.slow  # 1.4 s
def test_rlhf_reaches_the_kl_regularized_optimum():
    # pi* ∝ N(0, 1) exp(A y / beta) = N(A / beta, 1)
    for beta in (0.5, 2.0):
        pi, hist = rlhf(GaussianPolicy(1), lambda y, c: A * y[:, 0], beta=beta, steps=800, batch_size=32,
                        samples_per_context=8, lr=2e-2, progress=False)
        assert abs(pi.mean0.item() - A / beta) < 0.05, beta
        assert abs(pi.log_std0.exp().item() - 1.0) < 0.05, beta
        assert set(hist.extras) == {"reward", "kl"} and len(hist.extras["kl"]) == 800
        # KL(N(m, 1) || N(0, 1)) = m^2 / 2
        assert abs(sum(hist.extras["kl"][-100:]) / 100 - (A / beta) ** 2 / 2) < 0.1


def test_pathwise_rlhf_reaches_the_same_optimum_and_refuses_what_it_cannot_differentiate():
    beta = 0.5
    pi, hist = rlhf(GaussianPolicy(1), lambda y, c: A * y[:, 0], beta=beta, steps=600, batch_size=32,
                    samples_per_context=8, lr=2e-2, estimator="pathwise", progress=False)
    assert abs(pi.mean0.item() - A / beta) < 0.05
    assert abs(pi.log_std0.exp().item() - 1.0) < 0.05
    assert abs(sum(hist.extras["kl"][-100:]) / 100 - (A / beta) ** 2 / 2) < 0.15
    with pytest.raises(InvalidInputError, match="differentiable reward"):
        rlhf(GaussianPolicy(1), lambda y, c: A * y[:, 0].detach(), steps=2, estimator="pathwise", progress=False)
    from pfm.policies import GaussianMixturePolicy
    with pytest.raises(InvalidTypeError, match="rsample"):
        rlhf(GaussianMixturePolicy([[0.0]]), lambda y, c: y[:, 0], steps=2, estimator="pathwise", progress=False)
    with pytest.raises(InvalidInputError, match="estimator"):
        rlhf(GaussianPolicy(1), lambda y, c: y[:, 0], steps=2, estimator="ppo", progress=False)


def test_rlhf_with_contexts_learns_per_label_shifts():
    pol = GaussianPolicy(1, num_classes=2, hidden=32)
    labels = torch.arange(2).repeat(32)
    sign = torch.tensor([1.0, -1.0])
    pi, _ = rlhf(pol, lambda y, c: sign[c] * y[:, 0], labels, beta=1.0, steps=600, batch_size=16, lr=1e-2,
                 progress=False)
    means = pi.distribution(torch.tensor([0, 1]), 2)[0][:, 0]
    torch.testing.assert_close(means, torch.tensor([1.0, -1.0]), atol=0.15, rtol=0)
    # the policy handed in is untouched
    assert pol.distribution(torch.tensor([0, 1]), 2)[0].abs().max().item() == 0.0


def logistic_mle(d: torch.Tensor, beta: float) -> float:
    """argmin_m mean(-log sigmoid(beta m d)) by Newton's method (the finite-sample DPO optimum)."""
    m = torch.zeros((), dtype=torch.float64)
    d = d.double()
    for _ in range(50):
        s = torch.sigmoid(beta * m * d)
        grad = -(beta * d * (1 - s)).mean()
        hess = (beta ** 2 * d * d * s * (1 - s)).mean()
        m = m - grad / hess
    return float(m)


def test_dpo_and_ipo_reach_their_finite_sample_optima():
    ds = bt_pairs(4000)
    d = (ds.chosen - ds.rejected)[:, 0]
    beta = 0.5
    pol = GaussianPolicy(1, learn_std=False)  # log pi/pi_ref = m y - m^2/2, so the margin is h = m d
    pi, hist = dpo(pol, ds, beta=beta, steps=400, batch_size=len(ds), lr=5e-2, progress=False)
    expect = logistic_mle(d, beta)
    assert abs(expect - A / beta) < 0.25            # and the population optimum is A / beta
    assert abs(pi.mean0.item() - expect) < 0.01 * expect
    assert "acc" in hist.extras
    pi, _ = ipo(pol, ds, beta=beta, steps=400, batch_size=len(ds), lr=5e-2, progress=False)
    expect = float(d.sum() / (2 * beta * (d * d).sum()))  # least squares of m d on 1 / (2 beta)
    assert abs(pi.mean0.item() - expect) < 0.01 * expect
    assert implicit_accuracy(pi, pol, ds) == pytest.approx(float((d > 0).float().mean()))
    assert pol.mean0.item() == 0.0


def test_preference_losses_by_hand():
    h = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(preference_loss(h, 2.0, "dpo"), -torch.nn.functional.logsigmoid(2 * h).mean())
    torch.testing.assert_close(preference_loss(h, 2.0, "ipo"), ((h - 0.25) ** 2).mean())
    with pytest.raises(InvalidInputError, match="kind"):
        preference_loss(h, 1.0, "kto")


def test_reward_model_recovers_a_linear_reward_and_reports_accuracy():
    train, test = bt_pairs(6000, seed=1).split(0.2, seed=0)
    rm = RewardModel.for_dataset(train, hidden=32)
    hist = rm.fit(train, steps=800, progress=False)
    y = torch.linspace(-2, 2, 5)[:, None]
    r = rm.score(y)
    slope = (r[-1] - r[0]) / 4
    assert abs(float(slope) - A) < 0.2
    # Bayes accuracy on BT(A y) pairs of N(0,1) draws is E[sigmoid(A |d|)] with d ~ N(0, 2): about 0.74
    assert 0.70 < rm.accuracy(test) < 0.78
    assert len(hist.extras["acc"]) == 800


def test_reward_model_with_an_encoder_standardizes_globally_and_learns_through_it():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(3000, 2, 4, 4, generator=g) * 3 + 5
    mean = y.mean(dim=(1, 2, 3))
    better = mean[:1500] > mean[1500:]  # preferred: the larger mean pixel
    ds = PreferenceDataset(torch.where(better[:, None, None, None], y[:1500], y[1500:]),
                           torch.where(better[:, None, None, None], y[1500:], y[:1500]))
    train, test = ds.split(0.2, seed=0)
    enc = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.SiLU(), nn.Flatten())
    rm = RewardModel.for_dataset(train, hidden=16, depth=1, encoder=enc)
    rm.fit(train, steps=300, lr=3e-3, progress=False)
    assert rm.y_shift.unique().numel() == 1 and abs(float(rm.y_shift[0]) - 5) < 0.1  # one scale for all pixels
    assert abs(float(rm.y_scale[0]) - float(torch.cat([train.chosen, train.rejected]).std())) < 0.05
    assert rm.accuracy(test) > 0.9
    with pytest.raises(InvalidInputError, match=r"features \(n, F\)"):
        RewardModel((2, 4, 4), encoder=nn.Identity())
    with pytest.raises(InvalidTypeError, match="encoder must be an nn.Module"):
        RewardModel((2, 4, 4), encoder=lambda x: x)


def test_baselines_refuse_bad_input():
    ds = bt_pairs(50)
    with pytest.raises(InvalidTypeError, match="nn.Module"):
        dpo(lambda c, n: torch.zeros(n, 1), ds)
    with pytest.raises(InvalidInputError, match="beta"):
        dpo(GaussianPolicy(1), ds, beta=0.0)
    with pytest.raises(InvalidTypeError, match="PreferenceDataset"):
        ipo(GaussianPolicy(1), {"chosen": ds.chosen})
    with pytest.raises(InvalidInputError, match="samples_per_context"):
        rlhf(GaussianPolicy(1), lambda y, c: y[:, 0], samples_per_context=1)
    with pytest.raises(InvalidInputError, match=r"must return \(256,\)"):
        rlhf(GaussianPolicy(1), lambda y, c: y.repeat(1, 2), steps=1, progress=False)
    with pytest.raises(InvalidInputError, match="shape"):
        RewardModel(3).fit(ds, steps=1, progress=False)
    with pytest.raises(InvalidInputError, match="conditional"):
        RewardModel(1, num_classes=2).fit(ds, steps=1, progress=False)


def test_a_frozen_reference_is_accepted_and_checked():
    ds = bt_pairs(200)
    ref = GaussianPolicy(1).requires_grad_(False)
    pi, _ = dpo(GaussianPolicy(1), ds, beta=1.0, steps=5, reference=ref, progress=False)
    assert 0.0 <= implicit_accuracy(pi, ref, ds) <= 1.0
    with pytest.raises(InvalidTypeError, match="reference must be an nn.Module"):
        implicit_accuracy(pi, lambda y, c: y, ds)


def test_sweep_beta_picks_the_best_heldout_accuracy_and_keeps_the_larger_beta_on_ties():
    from pfm.baselines import sweep_beta

    class Fixed(nn.Module):  # a policy whose implicit reward is its log-density: prefers larger y[:, 0] by `slope`
        def __init__(self, slope):
            super().__init__()
            self.slope = nn.Parameter(torch.tensor(float(slope)))

        def sample(self, context, n, generator=None):
            return torch.zeros(n, 1)

        def log_prob(self, y, context=None):
            return self.slope * y[:, 0]

    ref = Fixed(0.0)
    up = torch.linspace(1, 2, 20)[:, None]
    heldout = PreferenceDataset(up, -up)  # y+ > y-: a positive slope ranks every pair right
    slopes = {0.1: -1.0, 1.0: 1.0, 10.0: 1.0}
    beta, policy, rows = sweep_beta(lambda b: Fixed(slopes[b]), [0.1, 1.0, 10.0], ref, heldout,
                                    lambda p: {"slope": float(p.slope)})
    assert beta == 10.0 and float(policy.slope) == 1.0
    assert [r["beta"] for r in rows] == [0.1, 1.0, 10.0] and [r["heldout_accuracy"] for r in rows] == [0.0, 1.0, 1.0]
    # with validate, the pick follows it and implicit accuracy is only recorded
    beta, policy, rows = sweep_beta(lambda b: Fixed(slopes[b]), [0.1, 1.0, 10.0], ref, heldout,
                                    lambda p: {}, validate=lambda p: -float(p.slope))
    assert beta == 0.1 and [r["validation"] for r in rows] == [1.0, -1.0, -1.0]
    assert [r["heldout_accuracy"] for r in rows] == [0.0, 1.0, 1.0]
    with pytest.raises(InvalidInputError, match="validate"):
        sweep_beta(lambda b: ref, [1.0], ref, heldout, lambda p: {}, validate=lambda p: float("nan"))
    with pytest.raises(InvalidTypeError, match="validate"):
        sweep_beta(lambda b: ref, [1.0], ref, heldout, lambda p: {}, validate=3)
    with pytest.raises(InvalidInputError, match="betas is empty"):
        sweep_beta(lambda b: ref, [], ref, heldout, lambda p: {})
    with pytest.raises(InvalidInputError, match="beta must be > 0"):
        sweep_beta(lambda b: ref, [0.0], ref, heldout, lambda p: {})


def test_behavior_cloning_fits_the_conditional_mean_and_keeps_the_best_heldout_weights():
    from pfm.baselines import behavior_cloning

    g = torch.Generator().manual_seed(0)
    c = torch.randn(2000, 2, generator=g)
    y = (c @ torch.tensor([[1.0], [-2.0]])) + 0.1 * torch.randn(2000, 1, generator=g)
    pol = GaussianPolicy(1, context_shape=(2,), hidden=32)
    pi, hist = behavior_cloning(pol, y[:1600], c[:1600], steps=800, lr=3e-3, validation=(y[1600:], c[1600:]),
                                validate_every=100, progress=False)
    mu, std = pi.distribution(torch.tensor([[1.0, 1.0]]), 1)
    assert abs(float(mu) + 1.0) < 0.15 and float(std) < 0.3
    assert hist.best_step is not None and len(hist.validation) == 8
    assert pol.mean0.item() == 0.0  # the policy handed in is untouched
    with pytest.raises(InvalidInputError, match="contexts has 3 rows"):
        behavior_cloning(pol, y[:5], c[:3], steps=1, progress=False)
    with pytest.raises(InvalidInputError, match="validation must be a pair"):
        behavior_cloning(pol, y[:5], c[:5], steps=1, validation=y[:2], progress=False)
