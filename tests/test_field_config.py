"""FieldConfig (pfm.config): the one place of the fields' sizes, which the flow, a saved flow's check and the
`pfm fit` options are built from."""

import dataclasses
import inspect
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pfm import FlowFileError, InvalidInputError, PFMError, PreferenceFlow
from pfm.config import FieldConfig
from pfm.fields import FIELDS


def test_the_fields_defaults_are_the_configs():
    cfg = FieldConfig()
    for kind, cls in FIELDS.items():
        params = inspect.signature(cls).parameters
        names = [n for n in params if n not in ("output_shape", "num_classes", "context_shape")]
        assert tuple(names) == FieldConfig.settings_of(kind), kind
        for name in names:
            assert params[name].default == getattr(cfg, name), (kind, name)


def test_a_config_builds_the_same_flow_as_the_keywords():
    torch.manual_seed(0)
    a = PreferenceFlow(3, field=FieldConfig(hidden=16, depth=2, time_dim=8))
    torch.manual_seed(0)
    b = PreferenceFlow(3, field="mlp", hidden=16, depth=2, time_dim=8)
    assert a.field._config == b.field._config
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = PreferenceFlow(3, field=FieldConfig(hidden=16), depth=1)  # keywords override a config's
    assert (c.field._config["hidden"], c.field._config["depth"]) == (16, 1)
    u = PreferenceFlow((1, 8, 8), field=FieldConfig(type="unet", channels=[8, 16]))
    assert u.field_type == "unet" and u.field._config["channels"] == [8, 16]


@pytest.mark.parametrize("kwargs, match", [
    (dict(field="unet", hidden=8), "hidden is a setting of the mlp field, not of the unet"),
    (dict(field=FieldConfig(type="unet"), depth=2), "depth is a setting of the mlp field"),
    (dict(field="mlp", channels=[8]), "channels is a setting of the unet field"),
    (dict(field="mlp", hiden=8), "did you mean 'hidden'"),
    (dict(field="mlp", type="unet"), "field=..."),
])
def test_a_setting_of_the_other_network_or_an_unknown_one_is_refused(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        PreferenceFlow((1, 8, 8), **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(type="cnn"), "field must be one of"), (dict(hidden=0), "hidden"), (dict(depth=-1), "depth"),
    (dict(channels=[]), "channels"), (dict(time_max_freq=0.5), "time_max_freq"), (dict(emb_dim=1.5), "emb_dim"),
])
def test_a_wrong_size_is_refused_when_the_config_is_made(kwargs, match):
    with pytest.raises(PFMError, match=match):
        FieldConfig(**kwargs)
    with pytest.raises(PFMError, match=match):
        dataclasses.replace(FieldConfig(), **kwargs)


def test_a_saved_flow_naming_a_setting_of_the_other_network_is_refused(tmp_path):
    flow = PreferenceFlow(3, hidden=8, depth=1)
    flow.save(tmp_path / "f")
    path = tmp_path / "f" / "config.json"
    cfg = json.loads(path.read_text())
    cfg["field"]["config"]["channels"] = [8]
    path.write_text(json.dumps(cfg))
    with pytest.raises(FlowFileError, match=r"no setting\(s\) \['channels'\]"):
        PreferenceFlow.load(tmp_path / "f")


@pytest.mark.slow  # a subprocess: the fast tier leaves those to make test
def test_pfm_fit_takes_every_size_of_the_config(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "p.npz", chosen=rng.normal(size=(40, 3)).astype("f4"),
             rejected=rng.normal(size=(40, 3)).astype("f4"))
    run = [sys.executable, "-m", "pfm", "fit", str(tmp_path / "p.npz"), "--steps", "2", "-q"]
    out = subprocess.run(run + ["--out", str(tmp_path / "f"), "--hidden", "8", "--depth", "1", "--time-dim", "4",
                                "--context-dim", "4"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    field = json.loads((tmp_path / "f" / "config.json").read_text())["field"]["config"]
    assert (field["hidden"], field["depth"], field["time_dim"], field["context_dim"]) == (8, 1, 4, 4)
    bad = subprocess.run(run + ["--out", str(tmp_path / "g"), "--emb-dim", "8"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "pfm: error: --emb-dim applies to --field unet; the mlp takes --hidden, --depth, --time-dim, --context-dim")
    assert not (tmp_path / "g").exists()
