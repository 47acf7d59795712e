"""The API and the CLI on the device named by ``PFM_TEST_DEVICE`` (default ``cpu``; ``cuda`` on a GPU machine:
``PFM_TEST_DEVICE=cuda python -m pytest tests/test_device.py``, which benchmarks/gpu.sh runs). Each test trains,
applies, saves or scores something there and checks that the results stay on the device asked for, come back where
the caller's data was, and agree with the same computation on the CPU where they must."""

import numpy as np
import pytest
import torch

from pfm import PreferenceDataset, PreferenceFlow, collect_preferences, couple
from pfm.likelihood import log_prob
from pfm.baselines import RewardModel, dpo, rlhf
from pfm.cli import main
from pfm.pairing import PairingPlan
from pfm.policies import GaussianPolicy


def pairs(n=512, d=2, labels=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    y0 = torch.randn(n, d, generator=g)
    c = torch.randint(0, labels, (n,), generator=g) if labels else None
    shift = 1.0 if c is None else 1.0 + c.float()[:, None]
    return PreferenceDataset(y0 + shift, y0, c)


def on(module, device):
    return all(t.device.type == device.type for t in [*module.parameters(), *module.buffers()])


def test_fit_transform_save_load_on_the_device(device, tmp_path):
    ds = pairs()
    flow = PreferenceFlow.for_dataset(ds, hidden=32, depth=2)
    hist = flow.fit(ds, steps=60, batch_size=64, device=device, progress=False)
    assert on(flow, device) and np.isfinite(hist.loss).all()
    y = torch.randn(300, 2)
    out = flow.transform(y)  # a CPU tensor in, a CPU tensor out, computed on the device
    assert out.device.type == "cpu" and out.shape == y.shape
    assert (out.mean(0) - y.mean(0)).norm() > 0.3  # it moved towards y+
    dev_out = flow.transform(y.to(device))
    assert dev_out.device.type == device.type
    torch.testing.assert_close(dev_out.cpu(), out)
    arr = flow.transform(y.numpy())
    assert isinstance(arr, np.ndarray) and np.allclose(arr, out.numpy(), atol=1e-6)
    flow.save(tmp_path / "flow")
    back = PreferenceFlow.load(tmp_path / "flow", device=device)
    assert on(back, device)
    torch.testing.assert_close(back.transform(y), out)


@pytest.mark.parametrize("labels,recouple", [(3, None), (0, 1)], ids=["label-contexts", "recouple-every-epoch"])
def test_couplings_on_the_device_match_the_cpu(device, labels, recouple):
    ds = pairs(labels=labels)
    g = torch.Generator().manual_seed(0)
    y0, y1 = torch.randn(128, 2, generator=g), torch.randn(128, 2, generator=g)
    c = torch.randint(0, 3, (128,), generator=g) if labels else None
    i0, i1 = couple(y0, y1, c, "ot")
    j0, j1 = couple(y0.to(device), y1.to(device), None if c is None else c.to(device), "ot")
    assert torch.equal(i0, j0.cpu()) and torch.equal(i1, j1.cpu())  # exact OT: one assignment
    flow = PreferenceFlow.for_dataset(ds, hidden=16, depth=2)
    flow.fit(ds, steps=24, batch_size=64, device=device, recouple_every=recouple, progress=False)
    assert on(flow, device)
    ctx = None if not labels else torch.arange(10) % 3
    assert torch.isfinite(flow.transform(torch.randn(10, 2), ctx)).all()


def test_a_pairing_plan_over_device_rows(device):
    ds = pairs(n=256)
    y0, y1 = ds.rejected.to(device), ds.chosen.to(device)
    with PairingPlan(lambda i: (y0[i.to(device)], y1[i.to(device)], None), 256, 64, seed=0) as plan:
        order = plan.order(0)
        got = plan.partners(order[:64])
    assert got.device.type == "cpu" and sorted(got.tolist()) == sorted(order[:64].tolist())


def test_checkpoint_and_resume_on_the_device(device, tmp_path):
    ds = pairs()

    def run(steps, resume):
        torch.manual_seed(0)
        flow = PreferenceFlow.for_dataset(ds, hidden=16, depth=2)
        flow.fit(ds, steps=steps, batch_size=64, device=device, checkpoint_dir=tmp_path / "ck", checkpoint_every=10,
                 resume=resume, progress=False)
        return flow.state_dict()

    full = {k: v.cpu() for k, v in run(40, False).items()}
    run(20, False)
    resumed = {k: v.cpu() for k, v in run(40, True).items()}
    for k in full:  # bit for bit on the CPU; on a GPU within float tolerance (its kernels may reorder sums)
        if device.type == "cpu":
            assert torch.equal(full[k], resumed[k]), k
        else:
            torch.testing.assert_close(full[k], resumed[k], rtol=1e-4, atol=1e-5)


def test_bf16_autocast_trains_on_the_device(device):
    ds = pairs()
    flow = PreferenceFlow.for_dataset(ds, hidden=32, depth=2)
    hist = flow.fit(ds, steps=60, batch_size=64, device=device, precision="bf16", progress=False)
    assert np.isfinite(hist.loss).all() and hist.loss[-1] < hist.loss[0]
    assert all(p.dtype == torch.float32 for p in flow.parameters())  # weights stay float32


def test_log_prob_on_the_device(device):
    ds = pairs(d=2)
    flow = PreferenceFlow.for_dataset(ds, hidden=16, depth=2)
    flow.fit(ds, steps=30, batch_size=64, device=device, progress=False)
    ref = torch.distributions.MultivariateNormal(torch.zeros(2, device=device), torch.eye(2, device=device))
    y = torch.randn(50, 2, device=device)
    lp = log_prob(flow, y, reference=lambda y, c=None: ref.log_prob(y), method="rk4", solver_steps=8)
    assert lp.log_prob.shape == (50,) and torch.isfinite(lp.log_prob).all()
    assert lp.output.device.type == device.type


def test_baselines_train_on_the_device(device):
    g = torch.Generator().manual_seed(0)
    ds = collect_preferences(lambda c, m: torch.randn(m, 1, generator=g),
                             lambda a, b, c: torch.sigmoid(a - b)[:, 0], n=256, seed=1)
    rm = RewardModel((1,), hidden=16)
    rm.fit(ds, steps=30, device=device, progress=False)
    assert on(rm, device)
    pi, _ = dpo(GaussianPolicy(1), ds, steps=30, device=device, progress=False)
    assert on(pi, device)
    pi, _ = rlhf(GaussianPolicy(1), lambda y, c: y[:, 0], steps=20, batch_size=16, device=device, progress=False)
    assert on(pi, device)


def test_cli_fit_and_apply_on_the_device(device, tmp_path, capsys):
    ds = pairs()
    np.savez(tmp_path / "pairs.npz", chosen=ds.chosen.numpy(), rejected=ds.rejected.numpy())
    np.savez(tmp_path / "y.npz", y=np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32))
    dev = str(device)
    assert main(["fit", str(tmp_path / "pairs.npz"), "--out", str(tmp_path / "flow"), "--steps", "30",
                 "--hidden", "16", "--depth", "2", "--device", dev, "-q"]) == 0
    assert main(["apply", str(tmp_path / "flow"), str(tmp_path / "y.npz"), "--out", str(tmp_path / "out.npz"),
                 "--device", dev]) == 0
    out = np.load(tmp_path / "out.npz")["y"]
    assert out.shape == (100, 2) and np.isfinite(out).all()
    capsys.readouterr()


@pytest.mark.slow
def test_compiled_fit_on_the_device(device):
    ds = pairs()
    flow = PreferenceFlow.for_dataset(ds, hidden=16, depth=2)
    hist = flow.fit(ds, steps=20, batch_size=64, device=device, compile=True, progress=False)
    assert np.isfinite(hist.loss).all() and on(flow, device)
