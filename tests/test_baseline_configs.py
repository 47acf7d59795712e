"""One config per baseline trainer (pfm.baselines.config): a config, overrides by field name and the two together
give the same run; each default is the config's; a wrong value fails before any work, naming the field."""

import dataclasses

import pytest
import torch

from pfm import InvalidInputError, InvalidTypeError, PFMError, PreferenceDataset, TrainConfig, collect_preferences
from pfm.baselines import (BCConfig, DPOConfig, RewardConfig, RewardModel, RLHFConfig, behavior_cloning, dpo, ipo,
                           rlhf)
from pfm.policies import GaussianPolicy


def pairs(n: int = 64) -> PreferenceDataset:
    g = torch.Generator().manual_seed(0)
    return collect_preferences(lambda c, m: torch.randn(m, 2, generator=g), lambda y, c: y[:, 0], n=n, seed=1)


def weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(weights(a), weights(b)))


def test_every_config_is_a_train_config_with_its_own_default_length():
    for cls, steps in ((RewardConfig, 2000), (DPOConfig, 1000), (RLHFConfig, 500), (BCConfig, 2000)):
        assert issubclass(cls, TrainConfig)
        assert cls().total_steps(10_000) == steps, cls
        assert cls(epochs=2, batch_size=100).total_steps(1000) == 20, cls
    assert (DPOConfig().batch_size, RLHFConfig().batch_size, RewardConfig().batch_size) == (64, 64, 256)
    assert (RewardConfig().weight_decay, RewardConfig().grad_clip) == (1e-4, None)


def test_a_config_overrides_and_both_give_the_same_dpo_run():
    ds, pol = pairs(), GaussianPolicy(2)
    a, ha = dpo(pol, ds, DPOConfig(beta=0.5, steps=15, lr=1e-2, progress=False))
    b, hb = dpo(pol, ds, beta=0.5, steps=15, lr=1e-2, progress=False)
    c, hc = dpo(pol, ds, DPOConfig(beta=3.0, steps=15, lr=1e-2), beta=0.5, progress=False)
    assert len(ha.loss) == 15 and ha.loss == hb.loss == hc.loss
    assert same(a, b) and same(a, c)
    d, _ = dpo(pol, ds, DPOConfig(beta=0.5, steps=15, lr=1e-2, progress=False, loss="ipo"))
    e, _ = ipo(pol, ds, DPOConfig(beta=0.5, steps=15, lr=1e-2, progress=False))  # ipo sets the loss itself
    assert same(d, e) and not same(a, d)


def test_rlhf_bc_and_the_reward_model_take_their_configs():
    pol = GaussianPolicy(1)
    reward = lambda y, c: y[:, 0]  # noqa: E731
    a, ha = rlhf(pol, reward, None, RLHFConfig(beta=1.0, steps=10, samples_per_context=3, progress=False))
    b, hb = rlhf(pol, reward, beta=1.0, steps=10, samples_per_context=3, progress=False)
    assert len(ha.loss) == 10 and ha.loss == hb.loss and same(a, b)

    y = torch.randn(50, 1) + 2.0
    a, ha = behavior_cloning(pol, y, None, BCConfig(steps=12, lr=1e-2, progress=False))
    b, hb = behavior_cloning(pol, y, steps=12, lr=1e-2, progress=False)
    assert len(ha.loss) == 12 and ha.loss == hb.loss and same(a, b)

    ds = pairs()
    rm1, rm2 = RewardModel(2, hidden=8), RewardModel(2, hidden=8)
    rm2.load_state_dict(rm1.state_dict())
    h1 = rm1.fit(ds, RewardConfig(steps=7, progress=False))
    h2 = rm2.fit(ds, steps=7, progress=False)
    assert len(h1.loss) == 7 and h1.loss == h2.loss and same(rm1, rm2)


@pytest.mark.parametrize("call, match", [
    (lambda: DPOConfig(beta=0), "beta"),
    (lambda: DPOConfig(loss="kto"), "loss"),
    (lambda: RLHFConfig(samples_per_context=1), "samples_per_context"),
    (lambda: RLHFConfig(estimator="ppo"), "estimator"),
    (lambda: RewardConfig(steps=0), "steps"),
    (lambda: BCConfig(steps=10, epochs=1), "steps or epochs"),
    (lambda: dataclasses.replace(DPOConfig(), batch_size=-1), "batch_size"),
])
def test_a_wrong_value_is_refused_when_the_config_is_made(call, match):
    with pytest.raises(PFMError, match=match):
        call()


def test_an_unknown_override_or_a_config_of_another_trainer_is_refused_before_any_work():
    ds, pol = pairs(), GaussianPolicy(2)
    calls = []
    with pytest.raises(InvalidInputError, match="did you mean 'beta'"):
        dpo(pol, ds, betta=0.5)
    with pytest.raises(InvalidTypeError, match="DPOConfig"):
        dpo(pol, ds, RLHFConfig())
    with pytest.raises(InvalidInputError, match="samples_per_context"):
        rlhf(pol, lambda y, c: calls.append(1) or y[:, 0], samples_per_context=1)
    with pytest.raises(InvalidInputError, match="unknown setting 'coupling'"):
        behavior_cloning(pol, torch.randn(5, 2), coupling="ot")
    assert not calls
