import json

import numpy as np
import pytest
import torch
from torch import nn

from pfm import FlowFileError, InvalidInputError, InvalidTypeError, PreferenceDataset, PreferenceFlow, seed_everything
from pfm.errors import MissingFileError


def shifted(n=600, shape=(2,), context=None, seed=0):
    """Rejected ~ N(0, I), preferred ~ N(+3, I) (label 1: N(-3, I))."""
    g = torch.Generator().manual_seed(seed)
    sign = torch.ones(n) if context is None else 1 - 2 * context.float()
    shift = 3 * sign.view(-1, *([1] * len(shape)))
    return PreferenceDataset(torch.randn(n, *shape, generator=g) + shift, torch.randn(n, *shape, generator=g), context)


def test_moves_rejected_toward_preferred_never_back():
    ds = shifted()
    flow = PreferenceFlow.for_dataset(ds, hidden=64, depth=2)
    flow.fit(ds, steps=300, progress=False)
    y = torch.randn(500, 2)
    out = flow.transform(y)
    # preferred side is +3 in both coordinates: mean moves from 0 to about +3, never toward -3
    assert torch.all(out.mean(0) > 2.4) and torch.all(out.mean(0) < 3.6)
    assert float(((out - y).sum(1) > 0).float().mean()) > 0.97


def test_label_context_moves_each_label_its_own_way():
    labels = torch.randint(0, 2, (800,))
    ds = shifted(800, context=labels)
    flow = PreferenceFlow.for_dataset(ds, hidden=64, depth=2)
    flow.fit(ds, steps=400, progress=False)
    y = torch.randn(400, 2)
    c = torch.tensor([0, 1]).repeat(200)
    out = flow.transform(y, c)
    assert torch.all(out[c == 0].mean(0) > 2.3) and torch.all(out[c == 1].mean(0) < -2.3)
    # a single label is broadcast to every row
    torch.testing.assert_close(flow.transform(y[:5], 1), flow.transform(y[:5], torch.ones(5, dtype=torch.long)))


def test_within_context_pairing_beats_the_released_codes_pairing():
    # both labels draw from the same reference, but prefer opposite directions: a context-blind OT coupling pairs a
    # rejected output of one label with a nearby preferred output of the other, and the flow barely moves.
    labels = torch.randint(0, 2, (1000,))
    ds = shifted(1000, context=labels)
    moved = {}
    for within in (True, False):
        flow = PreferenceFlow.for_dataset(ds, hidden=64, depth=2)
        flow.fit(ds, steps=400, within_context=within, progress=False, seed=1)
        out = flow.transform(torch.randn(400, 2), torch.zeros(400, dtype=torch.long))
        moved[within] = float(out.mean())
    assert moved[True] > 2.3
    assert moved[True] - moved[False] > 1.0


def test_transform_keeps_shape_dtype_and_batches():
    ds = shifted(200, shape=(2, 3))
    flow = PreferenceFlow.for_dataset(ds, hidden=32, depth=2)
    flow.fit(ds, steps=50, progress=False)
    y = torch.randn(37, 2, 3, dtype=torch.float64)
    out = flow.transform(y)
    assert out.shape == y.shape and out.dtype == torch.float64
    torch.testing.assert_close(flow.transform(y, batch_size=5), out, rtol=1e-5, atol=1e-5)  # float32 inside
    arr = flow.transform(y.numpy().astype(np.float32))
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.shape == (37, 2, 3)
    traj = flow.transform(y, return_trajectory=True, solver_steps=4)
    assert traj.shape == (5, 37, 2, 3)
    torch.testing.assert_close(flow.iterate(y, iterations=2), flow.transform(flow.transform(y)))


def test_transform_errors():
    flow = PreferenceFlow((2,), num_classes=3, hidden=8)
    y = torch.randn(4, 2)
    with pytest.raises(InvalidInputError, match="context is required"):
        flow.transform(y)
    with pytest.raises(InvalidInputError, match="num_classes=3"):
        flow.transform(y, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(InvalidInputError, match="\\(N, 2\\)"):
        flow.transform(torch.randn(4, 3), 0)
    with pytest.raises(InvalidInputError, match="NaN"):
        flow.transform(torch.tensor([[np.nan, 0.0]]), 0)
    with pytest.raises(InvalidInputError, match="outputs have 4"):
        flow.transform(y, torch.tensor([0, 1]))
    with pytest.raises(InvalidTypeError, match="integer"):
        flow.transform(y, torch.zeros(4))
    with pytest.raises(InvalidInputError, match="unconditional"):
        PreferenceFlow((2,), hidden=8).transform(y, 0)
    with pytest.raises(InvalidInputError, match="method"):
        flow.transform(y, 0, method="nope")


def test_fit_rejects_mismatched_dataset():
    flow = PreferenceFlow((3,), hidden=8)
    with pytest.raises(InvalidInputError, match="shape"):
        flow.fit(shifted(10), steps=1, progress=False)
    with pytest.raises(InvalidInputError, match="context"):
        PreferenceFlow((2,), hidden=8).fit(shifted(10, context=torch.zeros(10, dtype=torch.long)), steps=1)
    with pytest.raises(InvalidTypeError):
        flow.fit((torch.zeros(3, 3), torch.zeros(3, 3)), steps=1)
    with pytest.raises(InvalidInputError, match="coupling"):
        PreferenceFlow((2,), hidden=8).fit(shifted(10), coupling="greedy")


def test_seeded_runs_are_reproducible():
    ds = shifted(300)

    def run():
        seed_everything(7)
        flow = PreferenceFlow.for_dataset(ds, hidden=32, depth=2)
        hist = flow.fit(ds, steps=40, seed=3, progress=False)
        return flow, hist

    (f1, h1), (f2, h2) = run(), run()
    assert h1.loss == h2.loss
    for a, b in zip(f1.state_dict().values(), f2.state_dict().values()):
        assert torch.equal(a, b)
    seed_everything(7)
    f3 = PreferenceFlow.for_dataset(ds, hidden=32, depth=2)
    h3 = f3.fit(ds, steps=40, seed=4, progress=False)
    assert h3.loss != h1.loss


@pytest.mark.parametrize("field,shape,ctx", [("mlp", (2,), "vector"), ("unet", (1, 6, 6), "label")])
def test_save_load_round_trip(tmp_path, field, shape, ctx):
    n = 64
    c = torch.randn(n, 3) if ctx == "vector" else torch.randint(0, 4, (n,))
    ds = PreferenceDataset(torch.randn(n, *shape) + 1, torch.randn(n, *shape), c)
    kw = dict(hidden=16, depth=2) if field == "mlp" else dict(channels=(8,), emb_dim=8)
    flow = PreferenceFlow.for_dataset(ds, field=field, **kw)
    flow.fit(ds, steps=20, progress=False)
    flow.solver["steps"] = 5
    flow.save(tmp_path / "f")
    back = PreferenceFlow.load(tmp_path / "f")
    assert back.solver["steps"] == 5
    y = torch.randn(9, *shape)
    torch.testing.assert_close(back.transform(y, c[:9]), flow.transform(y, c[:9]), rtol=0, atol=0)
    flow.save(tmp_path / "f")  # overwriting a flow is allowed


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, t, y, context):
        return self.lin(torch.cat([y, t[:, None]], 1))


def test_custom_field_save_load(tmp_path):
    ds = shifted(100)
    flow = PreferenceFlow((2,), field=Custom())
    flow.fit(ds, steps=20, progress=False)
    flow.save(tmp_path / "c")
    with pytest.raises(FlowFileError, match="custom field"):
        PreferenceFlow.load(tmp_path / "c")
    back = PreferenceFlow.load(tmp_path / "c", field=Custom())
    y = torch.randn(5, 2)
    torch.testing.assert_close(back.transform(y), flow.transform(y))


def test_load_refuses_what_is_not_a_flow(tmp_path):
    with pytest.raises(MissingFileError):
        PreferenceFlow.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlowFileError, match="not a saved flow"):
        PreferenceFlow.load(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FlowFileError, match="is a file"):
        PreferenceFlow.load(tmp_path / "file")

    flow = PreferenceFlow((2,), hidden=8, depth=1)
    d = flow.save(tmp_path / "f")
    cfg = json.loads((d / "config.json").read_text())

    (d / "config.json").write_text("{not json")
    with pytest.raises(FlowFileError, match="JSON"):
        PreferenceFlow.load(d)
    (d / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(FlowFileError, match="format 99"):
        PreferenceFlow.load(d)
    (d / "config.json").write_text(json.dumps({**cfg, "format": "something.else"}))
    with pytest.raises(FlowFileError, match="not a pfm flow"):
        PreferenceFlow.load(d)
    # weights of another output shape
    (d / "config.json").write_text(json.dumps({**cfg, "output_shape": [3],
                                               "field": {**cfg["field"], "config": {**cfg["field"]["config"],
                                                                                    "output_shape": [3]}}}))
    with pytest.raises(FlowFileError, match="do not match"):
        PreferenceFlow.load(d)
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "weights.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(FlowFileError, match="safetensors"):
        PreferenceFlow.load(d)
    (tmp_path / "notflow").mkdir()
    (tmp_path / "notflow" / "precious.txt").write_text("keep me")
    with pytest.raises(InvalidInputError, match="refusing"):
        flow.save(tmp_path / "notflow")
    assert (tmp_path / "notflow" / "precious.txt").read_text() == "keep me"


def test_failed_save_keeps_previous_flow(tmp_path, monkeypatch):
    flow = PreferenceFlow((2,), hidden=8, depth=1)
    d = flow.save(tmp_path / "f")
    before = (d / "weights.safetensors").read_bytes()
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        PreferenceFlow((2,), hidden=16, depth=1).save(d)
    assert (d / "weights.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_a_flow_saved_before_time_max_freq_existed_loads_with_its_1000_rad_features(tmp_path):
    import json

    flow = PreferenceFlow((2,), hidden=8, depth=1)
    assert float(flow.field.time.freqs.max()) == pytest.approx(10.0)
    flow.save(tmp_path / "f")
    cfg_path = tmp_path / "f" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["field"]["config"]["time_max_freq"]  # what an older version wrote
    cfg_path.write_text(json.dumps(cfg))
    old = PreferenceFlow.load(tmp_path / "f")
    assert float(old.field.time.freqs.max()) == pytest.approx(1000.0)
    assert float(PreferenceFlow.load(tmp_path / "f").field.time.freqs.min()) == pytest.approx(1.0)


@pytest.mark.parametrize("precision, compile", [("bf16", False), pytest.param("fp32", True, marks=pytest.mark.slow)])
def test_bf16_autocast_and_compile_train_the_same_float32_flow(precision, compile, tmp_path):
    ds = shifted()
    flow = PreferenceFlow.for_dataset(ds, hidden=64, depth=2)
    flow.fit(ds, steps=300, progress=False, precision=precision, compile=compile)
    assert all(p.dtype == torch.float32 for p in flow.field.parameters())
    out = flow.transform(torch.randn(500, 2))
    assert torch.all(out.mean(0) > 2.4) and torch.all(out.mean(0) < 3.6)
    flow.save(tmp_path / "f")  # the field, not a compiled wrapper, is what is saved
    torch.testing.assert_close(PreferenceFlow.load(tmp_path / "f").transform(out[:5]), flow.transform(out[:5]))


def test_precision_and_compile_are_checked_and_precision_is_part_of_a_checkpoint(tmp_path):
    ds = shifted(100)
    flow = PreferenceFlow.for_dataset(ds, hidden=8, depth=1)
    with pytest.raises(InvalidInputError, match="precision must be one of 'fp32', 'bf16'"):
        flow.fit(ds, steps=2, progress=False, precision="fp16")
    with pytest.raises(InvalidInputError, match="compile must be True or False"):
        flow.fit(ds, steps=2, progress=False, compile="yes")
    flow.fit(ds, steps=4, progress=False, checkpoint_dir=tmp_path, checkpoint_every=2)
    with pytest.raises(InvalidInputError, match="precision"):
        flow.fit(ds, steps=6, progress=False, checkpoint_dir=tmp_path, resume=True, precision="bf16")


def test_fit_with_validation_reports_the_heldout_curve_and_keeps_the_best_weights():
    from pfm import PreferenceDataset, PreferenceFlow

    g = torch.Generator().manual_seed(0)
    y0 = torch.randn(120, 2, generator=g)
    ds = PreferenceDataset(y0 + torch.tensor([2.0, 0.0]), y0)
    train, held = ds.split(0.25, seed=0)
    flow = PreferenceFlow.for_dataset(train, hidden=32, depth=2)
    hist = flow.fit(train, steps=300, batch_size=30, validation=held, validate_every=20, progress=False, seed=0)
    values = [v for _, v in hist.validation]
    assert [s for s, _ in hist.validation] == list(range(20, 301, 20))
    zero = hist.extras["validation_zero_field"][0]
    assert min(values) < 0.5 * zero  # a constant shift is learned: far below the zero field
    assert hist.best_step == hist.validation[values.index(min(values))][0]
    # the weights kept are the best evaluation's: evaluating again gives that value
    again = PreferenceFlow.for_dataset(train, hidden=32, depth=2)
    again.load_state_dict(flow.state_dict())
    h2 = again.fit(train, steps=1, lr=0.0, batch_size=30, validation=held, validate_every=1, progress=False, seed=0)
    assert abs(h2.validation[0][1] - min(values)) < 1e-5
    with pytest.raises(InvalidInputError, match="need validation"):
        flow.fit(train, steps=1, patience=2, progress=False)


def test_fit_warns_when_the_flow_never_beats_the_zero_field_on_heldout_pairs(caplog):
    from pfm import PreferenceDataset, PreferenceFlow

    g = torch.Generator().manual_seed(0)
    y = torch.randn(80, 3, generator=g)
    ds = PreferenceDataset(y, y.clone())  # chosen = rejected: nothing to learn, the zero field is exact
    train, held = ds.split(0.5, seed=0)
    flow = PreferenceFlow.for_dataset(train, hidden=64, depth=2)
    with caplog.at_level("WARNING", logger="pfm"):
        hist = flow.fit(train, steps=100, batch_size=40, validation=held, validate_every=50, progress=False, seed=0)
    assert min(v for _, v in hist.validation) >= hist.extras["validation_zero_field"][0]
    assert "not below the zero field" in caplog.text
