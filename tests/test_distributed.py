"""Two CPU processes with gloo, launched by torchrun: both ranks end with identical weights (gradients averaged), the
flow is as good as one process's, and `pfm fit` runs under torchrun with one writer."""

import json
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pfm import PreferenceFlow

pytestmark = [pytest.mark.integration]

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file
    from pfm import PreferenceDataset, PreferenceFlow

    torch.set_num_threads(1)
    distributed = len(sys.argv) > 2
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4000, 2, generator=g), torch.randn(4000, 2, generator=g)
    target = torch.tensor([2.0, 2.0])
    closer = (a - target).norm(dim=1) < (b - target).norm(dim=1)
    chosen = torch.where(closer[:, None], a, b)
    rejected = torch.where(closer[:, None], b, a)
    data = PreferenceDataset(chosen, rejected)
    torch.manual_seed(1)
    flow = PreferenceFlow.for_dataset(data, hidden=64, depth=2)
    flow.fit(data, steps=400, batch_size=128, seed=3, progress=False)
    out = sys.argv[1]
    save_file({k: v.contiguous() for k, v in flow.state_dict().items()}, f"{out}/rank{rank}.safetensors")
    if rank == 0:
        y = flow.transform(torch.randn(4000, 2, generator=torch.Generator().manual_seed(9)))
        json.dump({"distance": float((y - target).norm(dim=1).mean()),
                   "world": dist.get_world_size() if distributed else 1}, open(f"{out}/quality.json", "w"))
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(free_port()), *args]


def test_two_gloo_ranks_average_gradients_and_match_one_process(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    subprocess.run([sys.executable, str(script), str(tmp_path / "one")], check=True, timeout=300)
    subprocess.run(torchrun(str(script), str(tmp_path / "two"), "ddp"), check=True, timeout=300)
    r0 = load_file(tmp_path / "two" / "rank0.safetensors")
    r1 = load_file(tmp_path / "two" / "rank1.safetensors")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # one model: every step averaged the same gradients
    one = load_file(tmp_path / "one" / "rank0.safetensors")
    assert not all(torch.equal(r0[k], one[k]) for k in r0 if k.startswith("field."))  # and it really trained apart
    q1 = json.loads((tmp_path / "one" / "quality.json").read_text())
    q2 = json.loads((tmp_path / "two" / "quality.json").read_text())
    assert q2["world"] == 2
    # the reference's mean distance to the target is about 3.0, the preferred outputs' about 2.5
    assert q1["distance"] < 2.2 and abs(q2["distance"] - q1["distance"]) < 0.1 * q1["distance"]


def test_pfm_fit_under_torchrun_writes_once(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.normal(size=(1000, 2)).astype(np.float32)
    np.savez(tmp_path / "prefs.npz", chosen=y + 1.0, rejected=y, context=np.arange(1000) % 2)
    proc = subprocess.run(torchrun("-m", "pfm", "--threads", "1", "fit", str(tmp_path / "prefs.npz"), "--out",
                                   str(tmp_path / "flow"), "--steps", "60", "--hidden", "16", "--checkpoint-every",
                                   "30", "-q"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("saved flow to") == 1
    flow = PreferenceFlow.load(tmp_path / "flow")
    assert flow.num_classes == 2
    out = flow.transform(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]))
    assert torch.isfinite(out).all()
    assert (tmp_path / "flow.checkpoint" / "checkpoint.pt").exists()
