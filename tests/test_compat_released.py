"""The released notebooks' calls (github jadehaus/preference-flow-matching, example_mnist.ipynb and example_pbrl.ipynb)
through pfm's OptimalTransportConditionalFlowMatching: small stand-ins for their data and models, written here with
the released shapes and conventions (not copies of its code)."""

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from pfm import InvalidInputError, OptimalTransportConditionalFlowMatching
from pfm.compat import NORMS, released_items


class BasePreferenceDataset(torch.utils.data.Dataset):
    """The released class's contract: (sources, targets, contexts); items (context, target[None], source[None])."""

    def __init__(self, sources, targets, contexts=None):
        self.sources, self.targets, self.contexts = sources, targets, contexts

    def __len__(self):
        return len(self.sources)

    def __getitem__(self, i):
        source, target = self.sources[i].unsqueeze(0), self.targets[i].unsqueeze(0)
        if self.contexts is None:
            return target, source
        return self.contexts[i], target, source


# ---------------------------------------------------------------- example_mnist: images, labels, a UNet-like field
def mnist_like_builder(n=300, labels=8, seed=0):
    """As the released generate_mnist_dataset fills it: BasePreferenceDataset(positive, negative, contexts), images
    (H, W) after its squeeze, int labels. Preferred images are brighter (the score below is the mean pixel)."""
    g = torch.Generator().manual_seed(seed)
    positive, negative, contexts = [], [], []
    for i in range(n):
        label = i % labels
        base = torch.randn(6, 6, generator=g) * 0.3 + 0.1 * label
        positive.append(base + 1.0)
        negative.append(base - 1.0)
        contexts.append(label)
    return BasePreferenceDataset(positive, negative, contexts)


def brightness(y, x=None):
    return y.flatten(1).mean(1)


class Inner(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes  # where the released UNet keeps it: on its inner torchcfm UNetModel
        self.emb = nn.Embedding(num_classes, 8)
        self.conv = nn.Conv2d(2, 8, 3, padding=1)
        self.out = nn.Conv2d(8 + 8, 1, 3, padding=1)

    def forward(self, t, y, x):
        h = torch.relu(self.conv(torch.cat([y, t.view(-1, 1, 1, 1).expand_as(y)], 1)))
        e = self.emb(x).view(-1, 8, 1, 1).expand(-1, 8, *y.shape[2:])
        return self.out(torch.cat([h, e], 1))


class TinyUNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.model = Inner(num_classes)

    def forward(self, t, y, x):
        return self.model(t, y, x)


def test_mnist_notebook_calls_warn_of_the_released_order_and_the_adapter_moves_toward_the_preferred_slot():
    dataset = mnist_like_builder()
    torch.manual_seed(0)
    model = TinyUNet(num_classes=10)
    flow_matching = OptimalTransportConditionalFlowMatching(model, device="cpu")
    with pytest.warns(UserWarning, match="released_items"):
        trained_model, info = flow_matching.fit(dataset, num_epochs=20, batch_size=125, learning_rate=1e-3,
                                                conditional=True, progress=False)
    assert trained_model is model and len(info["loss"]) == 20 * 3  # ceil(300 / 125) steps an epoch
    labels = torch.arange(10).repeat(4)  # 8 and 9: labels the pairs lack, which the field was built for
    source = torch.randn(40, 1, 6, 6) * 0.3
    target = flow_matching.compute_target(source, context=labels)
    assert target.shape == source.shape and target.dtype == source.dtype
    assert float(brightness(target).mean()) < float(brightness(source).mean()) - 1.0  # toward the rejected

    fixed = OptimalTransportConditionalFlowMatching(TinyUNet(num_classes=10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the adapter's items raise no order warning
        fixed.fit(released_items(dataset, preferred="source"), num_epochs=20, batch_size=125, conditional=True,
                  progress=False, seed=0)
    better = fixed.compute_target(source, context=labels)
    assert float(brightness(better).mean()) > float(brightness(source).mean()) + 1.0
    assert released_items(dataset, preferred="target")[0][1].shape == (1, 6, 6)


def test_check_reports_a_flow_that_lowers_the_score():
    dataset = mnist_like_builder(n=200)
    fm = OptimalTransportConditionalFlowMatching(TinyUNet())
    with pytest.warns(UserWarning) as record:
        _, info = fm.fit(dataset, num_epochs=8, batch_size=64, progress=False, seed=0, check=brightness)
    messages = [str(w.message) for w in record]
    assert any("lowered the score" in m for m in messages)
    assert info["check"]["n"] == 2 * 20 and info["check"]["after"] < info["check"]["before"]
    fm2 = OptimalTransportConditionalFlowMatching(TinyUNet())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, info2 = fm2.fit(released_items(dataset, "source"), num_epochs=8, batch_size=64, progress=False, seed=0,
                           check=brightness)
    assert info2["check"]["after"] > info2["check"]["before"] and info2["check"]["fraction_up"] > 0.9
    with pytest.raises(InvalidInputError, match="one score per output"):
        fm2.fit(released_items(dataset, "source"), num_epochs=1, progress=False, check=lambda y, x: y.sum())


# ---------------------------------------------------------------- example_pbrl: flat action sequences, a state
class ReleasedStyleMLP(nn.Module):
    """The released MLP's convention: y (B, 1, D) is flattened to (B, D) and (B, D) is returned."""

    def __init__(self, input_dim, context_dim, hidden=64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_dim + 1 + context_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, input_dim))

    def forward(self, t, x, context=None):
        x = x.reshape((-1, x.shape[-1]))
        return self.net(torch.cat([x, t[:, None], context], dim=-1))


def pbrl_like_builder(n=400, seg_len=10, act_dim=4, state_dim=24, seed=0):
    """As the released generate_pbrl_dataset fills it: flat action sequences (seg_len * act_dim,), float64 start
    states made float32 tensors, BasePreferenceDataset(positive, negative, contexts). Preferred actions are higher."""
    rng = np.random.default_rng(seed)
    positive, negative, contexts = [], [], []
    for _ in range(n):
        state = rng.normal(size=state_dim)
        a = rng.normal(size=(2, seg_len, act_dim)) * 0.3
        positive.append(torch.Tensor((a[0] + 0.5).flatten()))
        negative.append(torch.Tensor((a[1] - 0.5).flatten()))
        contexts.append(torch.Tensor(state.flatten()))
    return BasePreferenceDataset(positive, negative, contexts)


def test_pbrl_notebook_calls_run_with_the_released_mlp_and_flow_policy_shapes():
    seg_len, act_dim, state_dim = 10, 4, 24
    dataset = pbrl_like_builder(seg_len=seg_len, act_dim=act_dim, state_dim=state_dim)
    flow_model = ReleasedStyleMLP(act_dim * seg_len, context_dim=state_dim)
    flow_matching = OptimalTransportConditionalFlowMatching(flow_model, device=torch.device("cpu"))
    with pytest.warns(UserWarning) as record:
        trained_model, _ = flow_matching.fit(released_items(dataset, "source"), num_epochs=10, batch_size=100,
                                             learning_rate=1e-3, conditional=True, progress=False, seed=0)
    singleton = [str(w.message) for w in record if "singleton axis" in str(w.message)]
    assert len(singleton) == 1 and "(2, 40)" in singleton[0] and "(2, 1, 40)" in singleton[0]
    # FlowPolicy: one flat action sequence and one state, with torchdyn's solver asked for, applied `iteration` times
    state = np.random.default_rng(1).normal(size=state_dim)
    start_state = torch.tensor(state).float()
    actions = torch.tensor(np.full((seg_len, act_dim), -0.5)).float().flatten()
    for _ in range(2):
        actions = flow_matching.compute_target(actions, context=start_state, use_torchdiffeq=False)
        assert actions.shape == (seg_len * act_dim,)
    actions = actions.view(-1, act_dim)
    assert actions.shape == (seg_len, act_dim) and float(actions.mean()) > 0.2
    batch = flow_matching.compute_target(torch.zeros(5, seg_len * act_dim), context=torch.zeros(5, state_dim))
    assert batch.shape == (5, seg_len * act_dim)
    with pytest.raises(InvalidInputError, match="source has shape"):
        flow_matching.compute_target(torch.zeros(7), context=start_state)


# ---------------------------------------------------------------- the released fit's keywords and info
class PointField(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 32), nn.SiLU(), nn.Linear(32, 2))

    def forward(self, t, y, x):
        return self.net(torch.cat([y, t[:, None]], 1))


def points(n=100):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(2, generator=g) + 2, torch.randn(2, generator=g)) for _ in range(n)]


def test_fit_keywords_save_norms_loss_scale_collate_and_the_global_seed(tmp_path):
    calls = []

    def collate(batch):
        calls.append(len(batch))
        return torch.utils.data.default_collate(batch)

    torch.manual_seed(5)
    model = PointField()
    start = copy.deepcopy(model.state_dict())
    fm = OptimalTransportConditionalFlowMatching(model)
    _, info = fm.fit(points(), 2, 32, 1e-3, 0.1, False, 1, collate, tmp_path / "ckpt", tmp_path / "losses", 2,
                     progress=False)
    steps = 2 * 4  # ceil(100 / 32)
    assert calls == [32, 32, 32, 4]
    assert list(info) == ["loss", *NORMS] and all(len(info[k]) == steps for k in info)
    assert all(info["||u_t||_inf"][i] <= info["||u_t||_2"][i] + 1e-6 for i in range(steps))
    saved = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert saved == ["ckpt_epoch_0.pth", "ckpt_epoch_1.pth"]
    last = torch.load(tmp_path / "ckpt" / "ckpt_epoch_1.pth", weights_only=False)
    assert all(torch.equal(a, b) for a, b in zip(last.state_dict().values(), model.state_dict().values()))
    first = torch.load(tmp_path / "ckpt" / "ckpt_epoch_0.pth", weights_only=False)
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), model.state_dict().values()))
    assert np.allclose(np.load(tmp_path / "losses" / "loss.npy"), info["loss"])

    def run(scale, global_seed):
        m = PointField()
        m.load_state_dict(start)
        torch.manual_seed(global_seed)
        return OptimalTransportConditionalFlowMatching(m).fit(points(), 1, 32, loss_scale=scale, progress=False)[1]

    a, b, c = run(1, 11), run(1, 11), run(1, 12)
    assert a["loss"] == b["loss"] and a["loss"] != c["loss"]  # the global seed reaches the fit
    assert run(2.0, 11)["loss"][0] == pytest.approx(2 * a["loss"][0], rel=1e-6)
    weights = torch.tensor([1.0, 0.0])  # a per-element scale, as the released code broadcasts it
    assert run(weights, 11)["loss"][0] < a["loss"][0]
    with pytest.raises(InvalidInputError, match="loss_scale"):
        run(-1.0, 11)


def test_plot_trajectories_and_trajectory():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    fm = OptimalTransportConditionalFlowMatching(PointField())
    fm.fit(points(), num_epochs=1, progress=False, seed=0)
    traj = fm.trajectory(torch.randn(50, 2), timesteps=6)
    assert traj.shape == (6, 50, 2)
    fig = fm.plot_trajectories(torch.randn(50, 2), timesteps=6)
    assert len(fig.axes[0].collections) == 3
    matplotlib.pyplot.close(fig)
