import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pfm import PreferenceDataset, PreferenceFlow
from pfm.cli import main


@pytest.fixture
def data(tmp_path):
    n = 400
    labels = torch.randint(0, 2, (n,))
    sign = (1 - 2 * labels.float())[:, None]
    ds = PreferenceDataset(torch.randn(n, 2) + 3 * sign, torch.randn(n, 2), labels)
    return ds.save(tmp_path / "prefs.npz")


def test_fit_apply_info(tmp_path, data, capsys):
    out = tmp_path / "flow"
    assert main(["fit", str(data), "--out", str(out), "--steps", "300", "--hidden", "64", "--depth", "2", "-q",
                 "--validation-fraction", "0"]) == 0
    assert (out / "weights.safetensors").exists() and len(json.loads((out / "history.json").read_text())["loss"]) == 300
    y = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    np.savez(tmp_path / "in.npz", y=y, context=np.zeros(50, dtype=np.int64))
    assert main(["apply", str(out), str(tmp_path / "in.npz"), "--out", str(tmp_path / "o.npz"),
                 "--iterations", "2"]) == 0
    with np.load(tmp_path / "o.npz") as z:
        moved = z["y"]
    assert moved.shape == (50, 2) and moved.mean() > 3.0  # two applications go past +3
    said = capsys.readouterr().out  # which arrays it read, so a user sees when it guessed
    assert f"read array 'y' (context 'context') of {tmp_path / 'in.npz'}" in said


def test_info_prints_config(tmp_path, data, capsys):
    out = tmp_path / "flow"
    main(["fit", str(data), "--out", str(out), "--steps", "5", "-q"])
    capsys.readouterr()
    main(["info", str(out)])
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["output_shape"] == [2] and cfg["num_classes"] == 2 and cfg["weights_bytes"] > 0


@pytest.mark.parametrize("make_bad, words", [
    (lambda p: p / "missing.npz", "no such file"),
    (lambda p: (p / "bad.npz").write_bytes(b"junk") and p / "bad.npz", "not a readable .npz"),
    (lambda p: np.savez(p / "nan.npz", chosen=np.full((3, 2), np.nan), rejected=np.zeros((3, 2))) or p / "nan.npz",
     "NaN"),
    (lambda p: np.savez(p / "len.npz", chosen=np.zeros((3, 2)), rejected=np.zeros((4, 2))) or p / "len.npz",
     "same shape"),
])
def test_fit_bad_files_give_one_line(tmp_path, capsys, make_bad, words):
    path = make_bad(tmp_path)
    assert main(["fit", str(path), "--out", str(tmp_path / "f"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pfm: error:") and words in err and err.count("\n") == 1


def test_apply_bad_inputs(tmp_path, data, capsys):
    out = tmp_path / "flow"
    main(["fit", str(data), "--out", str(out), "--steps", "5", "-q"])
    np.savez(tmp_path / "wrong.npz", y=np.zeros((4, 3), dtype=np.float32), context=np.zeros(4, dtype=np.int64))
    assert main(["apply", str(out), str(tmp_path / "wrong.npz"), "--out", str(tmp_path / "o.npz")]) == 2
    assert "(N, 2)" in capsys.readouterr().err
    assert main(["apply", str(tmp_path), str(tmp_path / "wrong.npz"), "--out", str(tmp_path / "o.npz")]) == 2
    assert "not a saved flow" in capsys.readouterr().err
    np.savez(tmp_path / "noctx.npz", y=np.zeros((4, 2), dtype=np.float32))
    assert main(["apply", str(out), str(tmp_path / "noctx.npz"), "--out", str(tmp_path / "o.npz")]) == 2
    assert "context is required" in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.integration
def test_module_entry_point_help():
    res = subprocess.run([sys.executable, "-m", "pfm", "fit", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--coupling" in res.stdout and "within a context" in res.stdout


@pytest.mark.parametrize("every", ["1", "never"])
def test_fit_recouple_every(tmp_path, data, every, capsys):
    out = tmp_path / "flow"
    assert main(["fit", str(data), "--out", str(out), "--steps", "20", "--hidden", "8", "--recouple-every", every,
                 "-q"]) == 0
    with pytest.raises(SystemExit):
        main(["fit", str(data), "--out", str(out), "--recouple-every", "often"])
    assert "'never'" in capsys.readouterr().err


def test_fit_bf16(tmp_path, data):
    out = tmp_path / "flow"
    assert main(["fit", str(data), "--out", str(out), "--steps", "20", "--hidden", "8", "--precision", "bf16",
                 "-q"]) == 0
    assert PreferenceFlow.load(out).transform(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long)).shape == (3, 2)


def test_apply_refuses_an_empty_device_and_reproduce_an_out_that_is_a_file(tmp_path, data, capsys):
    """Issue 52: `pfm apply --device ''` ran on the CPU where `pfm fit` refuses it; `pfm reproduce NAME --out FILE`
    was an internal FileExistsError after the experiment had started."""
    out = tmp_path / "flow"
    assert main(["fit", str(data), "--out", str(out), "--steps", "2", "-q"]) == 0
    np.savez(tmp_path / "in.npz", y=np.zeros((4, 2), np.float32), context=np.zeros(4, np.int64))
    capsys.readouterr()
    assert main(["apply", str(out), str(tmp_path / "in.npz"), "--out", str(tmp_path / "o.npz"), "--device", ""]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device must be" in err and not (tmp_path / "o.npz").exists()
    (tmp_path / "results").write_text("mine")
    assert main(["reproduce", "toy2d", "--quick", "-q", "--out", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err == f"pfm: error: --out {str(tmp_path / 'results')!r} exists and is not a directory\n"
    assert (tmp_path / "results").read_text() == "mine"
