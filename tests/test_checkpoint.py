"""Checkpoints: a resumed run ends bit-identical to an uninterrupted one, even after SIGKILL; a failed save or a
non-finite loss keeps the last good checkpoint; a checkpoint of another run is refused."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import pfm.train.checkpoint as ckpt_mod
from pfm import FileFormatError, InvalidInputError, PreferenceDataset, PreferenceFlow, optimize
from pfm.train.checkpoint import load_checkpoint
from pfm.train import NonFiniteLossError


def data(n=512, seed=0, labels=False):
    g = torch.Generator().manual_seed(seed)
    y0 = torch.randn(n, 2, generator=g)
    c = torch.randint(0, 3, (n,), generator=g) if labels else None
    return PreferenceDataset(y0 + 2.0, y0, c)


def fitted(ds, steps, **kw):
    torch.manual_seed(0)
    flow = PreferenceFlow.for_dataset(ds, hidden=32, depth=2)
    flow.fit(ds, steps=steps, batch_size=64, seed=5, progress=False, validation_fraction=0, **kw)
    return flow


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("ema", [None, 0.99])
def test_resume_is_bit_identical(tmp_path, ema):
    ds = data(labels=True)
    full = fitted(ds, 300, ema_decay=ema)
    fitted(ds, 200, ema_decay=ema, checkpoint_dir=tmp_path, checkpoint_every=100)  # "interrupted" at step 200
    assert load_checkpoint(tmp_path)["step"] == 200
    resumed = PreferenceFlow.for_dataset(ds, hidden=32, depth=2)  # fresh weights: all state comes from the file
    hist = resumed.fit(ds, steps=300, batch_size=64, seed=5, progress=False, ema_decay=ema, checkpoint_dir=tmp_path,
                       checkpoint_every=100, resume=True)
    assert same_weights(full, resumed)
    assert len(hist.loss) == 300 and hist.steps == 300
    assert not same_weights(full, fitted(ds, 299, ema_decay=ema))  # the comparison can fail


@pytest.mark.integration
@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    rng = np.random.default_rng(0)
    y0 = rng.normal(size=(2000, 2)).astype(np.float32)
    np.savez(tmp_path / "prefs.npz", chosen=y0 + 1.5, rejected=y0)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, "-m", "pfm", "--threads", "1", "fit", str(tmp_path / "prefs.npz"), "--steps", "1500",
            "--hidden", "32", "--depth", "2", "--batch-size", "64", "--seed", "3", "-q", "--validation-fraction", "0"]
    subprocess.run(base + ["--out", str(tmp_path / "full")], check=True, env=env, timeout=300)

    out = tmp_path / "killed"
    ckpt = tmp_path / "killed.checkpoint" / "checkpoint.pt"
    proc = subprocess.Popen(base + ["--out", str(out), "--checkpoint-every", "100"], env=env)
    try:
        deadline = time.time() + 120
        while not ckpt.exists() and time.time() < deadline:
            time.sleep(0.02)
        first = ckpt.stat().st_mtime_ns
        while ckpt.stat().st_mtime_ns == first and time.time() < deadline:  # wait for a second checkpoint
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists()
    step = load_checkpoint(ckpt.parent)["step"]
    assert 0 < step < 1500

    subprocess.run(base + ["--out", str(out), "--checkpoint-every", "100", "--resume"], check=True, env=env,
                   timeout=300)
    a = load_file(tmp_path / "full" / "weights.safetensors")
    b = load_file(out / "weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_failed_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    ds = data()
    fitted(ds, 100, checkpoint_dir=tmp_path, checkpoint_every=100)
    real_save = torch.save

    def broken(obj, f):
        real_save(obj, f)
        f.truncate(100)  # half a file on disk, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        fitted(ds, 300, checkpoint_dir=tmp_path, checkpoint_every=100, resume=True)
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert load_checkpoint(tmp_path)["step"] == 100
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left behind


def test_a_non_finite_loss_names_the_step_and_keeps_the_last_checkpoint(tmp_path):
    w = torch.nn.Parameter(torch.ones(3))
    module = torch.nn.Module()
    module.w = w

    def loss_fn(index, gen):
        step = loss_fn.calls = getattr(loss_fn, "calls", 0) + 1
        return (w ** 2).sum() * (float("nan") if step == 130 else 1.0)

    with pytest.raises(NonFiniteLossError, match="step 130") as err:
        optimize(module, loss_fn, 10, steps=300, batch_size=5, progress=False, checkpoint_dir=tmp_path,
                 checkpoint_every=50)
    assert str(tmp_path) in str(err.value)
    state = load_checkpoint(tmp_path)
    assert state["step"] == 100 and bool(torch.isfinite(state["module"]["w"]).all())


def test_a_checkpoint_of_another_run_or_a_corrupt_one_is_refused(tmp_path):
    fitted(data(), 100, checkpoint_dir=tmp_path, checkpoint_every=50)
    with pytest.raises(InvalidInputError, match="another run"):
        fitted(data(seed=1), 200, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(InvalidInputError, match="another run"):
        fitted(data(), 200, checkpoint_dir=tmp_path, resume=True, lr=1e-2)
    with pytest.raises(InvalidInputError, match="past steps"):
        fitted(data(), 50, checkpoint_dir=tmp_path, resume=True)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FileFormatError, match="not a readable checkpoint"):
        fitted(data(), 200, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(InvalidInputError, match="needs checkpoint_dir"):
        fitted(data(), 10, resume=True)


def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    a = fitted(data(), 120)
    b = fitted(data(), 120, checkpoint_dir=tmp_path / "new", resume=True)
    assert same_weights(a, b) and load_checkpoint(tmp_path / "new")["step"] == 120
