"""The quick benchmark runs end to end and writes its JSON, tables and figure (its speed is not tested: timings on a
shared 2-core machine are noisy; the numbers are in the README)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_quick_benchmark_writes_json_tables_and_figure(tmp_path):
    try:
        import torchcfm  # noqa: F401

        parts = ["overhead", "peer", "inference", "batch", "precision"]
    except ImportError:  # installed by `make`; without it the peer part cannot run
        parts = ["overhead", "inference", "batch", "precision"]
    out = tmp_path / "bench.json"
    env = {**os.environ, "PFM_DATA_DIR": str(tmp_path / "data")}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--out", str(out),
                          "--parts", *parts], capture_output=True, text=True, env=env, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"] is True and set(parts) <= set(result)
    for row in result["overhead"]:
        assert row["bare_ms"] > 0 and row["pfm_ms"] > 0
    solvers = {r["solver"]: r for r in result["inference"]["rows"]}
    assert solvers["dopri5 tol 0.0001"]["distance_to_dopri5_1e-4"] == 0.0
    assert solvers["rk4 8 steps"]["nfe"] == 32 and solvers["euler 4 steps"]["nfe"] == 4
    # a converging solver: more steps, smaller error against the exact end points
    assert solvers["rk4 8 steps"]["error_vs_exact"] < solvers["rk4 1 steps"]["error_vs_exact"]
    assert all(r["ot_cost"] <= r["independent_cost"] for r in result["batch"])
    settings = {(r["precision"], r["compile"]): r for r in result["precision"]}
    assert set(settings) == {("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)}
    for r in settings.values():  # bf16 autocast trains the same flow: its loss within 2% of float32's
        assert r["step_ms"] > 0 and abs(r["final_loss"] / settings["fp32", False]["final_loss"] - 1) < 0.02
    if "peer" in parts:
        assert {"64", "256"} == set(result["peer"]["summary"])
    assert "| solver | NFE |" in run.stdout
    assert out.with_suffix(".png").stat().st_size > 10_000
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--report", "--out", str(out)],
                           capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0 and "| solver | NFE |" in again.stdout


def test_quick_load_case_reports_the_ratios_idle_and_beside_a_competitor(tmp_path):
    pytest.importorskip("torchcfm")
    out = tmp_path / "load.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--out", str(out),
                          "--parts", "load", "--competitors", "1"], capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    load = json.loads(out.read_text())["load"]
    assert {th: set(by_k) for th, by_k in load["summary"].items()} == {"2": {"0", "1"}, "1": {"0", "1"}}
    for r in load["rows"]:
        assert r["speedup"] > 0 and r["pfm_train_s"] > 0 and r["peer_ot_s"] > 0
        assert r["pfm_wait_s"] >= 0 and r["pfm_blocks"] + r["pfm_thread_blocks"] >= 12  # 3,000 rows: 12 blocks
        assert r["competitors_cores"] > 0.05 if r["competitors"] else r["competitors_cores"] == 0
    assert "Throughput ratio pfm / peer at 2 torch thread(s), median of the seeds: idle" in run.stdout
    assert not out.with_suffix(".png").exists()  # nothing to draw


def test_the_gpu_benchmark_runs_here_on_the_cpu_and_reports(tmp_path):
    """benchmarks/gpu.py is what benchmarks/gpu.sh runs on a GPU machine; its coupling part runs here on the CPU, and
    --report prints the tables of what it wrote."""
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--quick",
                          "--parts", "ot", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and "CPU" in result["device_name"]
    assert [r["batch"] for r in result["ot"]] == [256, 1024]
    assert all(r["ot_cost"] <= r["sinkhorn_cost"] + 1e-6 and r["ot_cost"] < r["independent_cost"]
               for r in result["ot"])
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--report", "--out", str(out)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "One block's coupling on the device" in again.stdout
