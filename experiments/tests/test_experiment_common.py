"""The experiments' shared pieces: the statistics over seeds, the resumable per-seed runner and its cache key, the
beta sweep and the figure saver; and the `--report-only` path that rewrites a committed table from its JSON."""

import copy
import dataclasses
import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as st

from pfm import MissingFileError
from pfm.data import PreferenceDataset
from pfm_experiments import stats
from pfm_experiments.figures import pyplot, save_figure
from pfm_experiments.runner import SeedRunner, config_from_dict, config_key, earlier_results
from pfm_experiments.seeded import untimed
from pfm_experiments.sweeps import BetaSweep, best_beta, sweep_betas

RESULTS = Path(__file__).resolve().parents[2] / "results"


# ------------------------------------------------------------------------------------------------ statistics
def test_mean_sample_std_and_t_interval_by_hand():
    d = stats.describe([1.0, 2.0, 3.0, 4.0])
    assert d["mean"] == 2.5 and d["n"] == 4
    assert d["std"] == pytest.approx(math.sqrt(5 / 3))  # sample std: sum of squares 5 over n - 1 = 3
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2  # t(0.975, 3) s / sqrt(4)
    assert d["ci"] == pytest.approx([2.5 - half, 2.5 + half])
    x = np.random.default_rng(0).normal(size=7)
    assert stats.mean_std(x)[1] == pytest.approx(np.std(x, ddof=1))
    lo, hi = st.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=st.sem(x))
    assert stats.confidence_interval(x) == pytest.approx((lo, hi))


def test_one_seed_has_no_std_and_no_interval():
    d = stats.describe([0.25])
    assert d == {"mean": 0.25, "std": None, "n": 1, "ci": None}
    assert math.isnan(stats.mean_std([0.25])[1]) and all(map(math.isnan, stats.confidence_interval([0.25])))
    assert stats.format_mean_std(d) == "0.250"
    assert stats.format_mean_std(stats.describe([1.0, 2.0]), ".1f") == "1.5 ± 0.7"
    json.dumps(d, allow_nan=False)  # JSON-safe
    with pytest.raises(ValueError, match="no values"):
        stats.describe([])


def test_paired_difference_is_a_paired_t_test_matched_by_seed():
    a = {0: 0.91, 1: 0.93, 2: 0.90, 3: 0.95, 7: 0.5}  # seed 7 has no partner: left out
    b = {3: 0.94, 2: 0.86, 1: 0.92, 0: 0.85}
    d = stats.paired_difference(a, b)
    seeds = [0, 1, 2, 3]
    xa, xb = [a[s] for s in seeds], [b[s] for s in seeds]
    ci = st.ttest_rel(xa, xb).confidence_interval(0.95)
    assert d["seeds"] == seeds and d["n"] == 4 and d["wins"] == 4
    assert d["mean"] == pytest.approx(np.mean(np.subtract(xa, xb)))
    assert d["std"] == pytest.approx(np.std(np.subtract(xa, xb), ddof=1))
    assert d["ci"] == pytest.approx([ci.low, ci.high])
    assert stats.format_difference(d) == f"{d['mean']:+.3f} [{ci.low:+.3f}, {ci.high:+.3f}]"
    with pytest.raises(ValueError, match="no seed in common"):
        stats.paired_difference({0: 1.0}, {1: 1.0})


def test_compare_best_and_the_comparison_table():
    records = [{"seed": s, "m": {"A": 1.0 + s, "B": 0.5 + 2 * s, "C": 0.0}} for s in range(3)]
    summary = {n: stats.describe([r["m"][n] for r in records]) for n in "ABC"}
    assert stats.best(summary, ["B", "C"]) == "B" and stats.best(summary, ["C", "B"], higher=False) == "C"
    assert stats.best(summary, ["D"]) is None
    rows = stats.compare(records, [("A", "B")], ["x"], lambda r, method, metric: r["m"][method])
    assert rows[0]["method"] == "A" and rows[0]["x"]["mean"] == pytest.approx(0.5 - 1.0)
    assert rows[0]["x"] == stats.paired_difference(stats.by_seed(records, lambda r: r["m"]["A"]),
                                                   stats.by_seed(records, lambda r: r["m"]["B"]))
    md = stats.comparison_table(rows, {"x": "score"})
    assert "| A − B | -0.500 [" in md and "Δ score [95% CI]" in md and md.endswith("| 3 |")


# ------------------------------------------------------------------------------------------------ the runner
@dataclasses.dataclass
class Cfg:
    steps: int = 10
    seeds: tuple = (0, 1)
    added_later: int = 0


def test_runner_caches_each_seed_and_resumes(tmp_path):
    calls = []

    def fn(seed):
        calls.append(seed)
        return {"seed": seed, "value": seed * 2.0, "samples": {"a": np.arange(3.0) + seed}, "grid": np.eye(2)}

    runner = SeedRunner(tmp_path, Cfg(), arrays=("samples", "grid"), name="test")
    first = list(runner.run([0, 1], fn))
    assert calls == [0, 1] and not any(s.cached for s in first)
    assert first[0].record["wall_seconds"] >= 0 and "samples" not in first[0].record
    assert (tmp_path / runner.key / "seed-1.json").exists() and (tmp_path / runner.key / "seed-1.npz").exists()
    assert not list(tmp_path.rglob("*.tmp"))
    # a second run (e.g. after a crash) loads what is finished and runs only what is not
    again = list(SeedRunner(tmp_path, Cfg(seeds=(0, 1, 2)), arrays=("samples", "grid")).run([0, 1, 2], fn))
    assert calls == [0, 1, 2] and [s.cached for s in again] == [True, True, False]
    assert again[1].record == json.loads(json.dumps(first[1].record))
    np.testing.assert_array_equal(again[1].arrays()["samples"]["a"], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(again[0].arrays()["grid"], np.eye(2))
    assert again[0].directory == tmp_path / runner.key / "seed-0"
    # a seed whose arrays are missing is not finished
    (tmp_path / runner.key / "seed-0.npz").unlink()
    assert not runner.done(0) and runner.done(1)


def test_the_runner_yields_before_running_the_next_seed(tmp_path):
    seen = []
    runner = SeedRunner(tmp_path, Cfg())
    for s in runner.run([0, 1], lambda seed: {"seed": seed, "earlier": list(seen)}):
        seen.append(s.seed)
    assert json.loads(runner.path(1).read_text())["earlier"] == [0]  # seed 1 saw seed 0's result


def test_a_runner_takes_the_finished_seeds_of_the_results_file_it_replaces(tmp_path, caplog):
    """A fresh data directory (another session, another machine) goes on where a committed results file stopped:
    its seeds are taken when its config is this run's and its pre-trained models agree to rounding, else run."""
    from pfm import PFMError

    calls = []

    def fn(seed):
        calls.append(seed)
        return {"seed": seed, "value": seed * 2.0 + len(calls)}

    models = {"loss": 0.5, "seconds": 3.0}
    first = [s.record for s in SeedRunner(tmp_path / "a", Cfg(seeds=(0,))).run([0], fn)]
    results = tmp_path / "out.json"
    results.write_text(json.dumps({"config": dataclasses.asdict(Cfg(seeds=(0,))), "models": models, "runs": first}))
    # another machine's models: the same to rounding, measured times aside
    earlier = earlier_results(results)
    fresh = SeedRunner(tmp_path / "b", Cfg(seeds=(0, 1)))
    assert fresh.take(earlier, Cfg, source="out.json", models={"loss": 0.5 * (1 + 1e-7), "seconds": 9.0}) == [0]
    calls.clear()
    got = list(fresh.run([0, 1], fn))
    assert calls == [1] and got[0].cached and got[0].record["taken_from"] == "out.json"
    assert untimed(got[0].record) == untimed(first[0])  # provenance, like the times, is not a number of the seed
    assert fresh.take(earlier, Cfg, source="out.json", models=models) == []  # already cached here: kept
    # another config, other models, or a runner with arrays (not in a results file): nothing taken
    assert SeedRunner(tmp_path / "c", Cfg(steps=11)).take(earlier, Cfg, source="out.json", models=models) == []
    with caplog.at_level("WARNING", logger="pfm"):
        assert SeedRunner(tmp_path / "c", Cfg()).take(earlier, Cfg, source="out.json", models={"loss": 0.7}) == []
    assert "pre-trained models" in caplog.text and "differ" in caplog.text
    assert SeedRunner(tmp_path / "c", Cfg(), arrays=("x",)).take(earlier, Cfg, source="out.json") == []
    assert earlier_results(tmp_path / "none.json") is None
    assert SeedRunner(tmp_path / "c", Cfg()).take(None, Cfg, source="none.json") == []
    assert not (tmp_path / "c").exists()
    # a file that is not a results file is the user's to move: an error before any work
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(PFMError, match="is not a results file"):
        earlier_results(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PFMError, match="not valid JSON"):
        earlier_results(tmp_path / "bad.json")


def test_one_cache_key_scheme():
    base = Cfg()
    fields = {"steps": 10, "added_later": 0}  # seeds left out
    assert config_key(base) == hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    assert config_key(base, context="data") == hashlib.sha256(
        json.dumps(["data", fields], sort_keys=True).encode()).hexdigest()[:16]
    assert config_key(Cfg(seeds=(0, 1, 2, 3))) == config_key(base)  # which seeds run does not count
    assert config_key(Cfg(steps=11)) != config_key(base)  # another config, another key
    assert config_key(base, context="a") != config_key(base, context="b")
    # an option added later, at its default, leaves the key of the runs cached before it as it was
    assert config_key(base, unset={"added_later": 0}) == hashlib.sha256(
        json.dumps({"steps": 10}, sort_keys=True).encode()).hexdigest()[:16]
    assert config_key(Cfg(added_later=1), unset={"added_later": 0}) != config_key(base, unset={"added_later": 0})
    assert SeedRunner("/x", base).directory == Path("/x") / config_key(base)


def test_config_from_a_results_json_takes_renamed_fields():
    cfg = config_from_dict(Cfg, {"old_steps": 5, "seeds": [0, 1, 2], "gone": 1}, renamed={"old_steps": "steps"})
    assert cfg == Cfg(steps=5, seeds=(0, 1, 2))


def test_the_experiments_keep_their_cache_keys():
    from pfm_experiments.images.config import Config as ImageConfig
    from pfm_experiments.text.experiment import Config as TextConfig, run_key

    # the scheme the image and text experiments keyed their cached seeds with before the shared runner
    later = {"flow_field": "mlp", "flow_batch": 256, "pretrain_seed": 0, "pairs": "random", "pairs_k": 10,
             "timing_repeats": 3}
    old = {k: v for k, v in dataclasses.asdict(ImageConfig()).items() if k not in ("seeds", "path") and
           later.get(k, k) != v}
    assert ImageConfig().key("m") == hashlib.sha256(json.dumps(["m", old], sort_keys=True,
                                                               default=str).encode()).hexdigest()[:16]
    # (the corpus pairs and the unconditional flow, added later, count only when set)
    old = {k: v for k, v in dataclasses.asdict(TextConfig()).items()
           if k not in ("seeds", "reference", "annotator", "pairs", "unconditional")}
    assert run_key(TextConfig()) == hashlib.sha256(json.dumps(old, sort_keys=True,
                                                              default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ beta sweeps
def test_best_beta_breaks_ties_toward_the_larger_beta():
    rows = [{"beta": 0.1, "s": 0.5}, {"beta": 1.0, "s": 0.7}, {"beta": 10.0, "s": 0.7}]
    assert best_beta(rows, "s") == 10.0 and best_beta(list(reversed(rows)), "s") == 10.0
    assert BetaSweep(1.0, None, rows, {}).pick("s") == 10.0


def test_sweep_betas_keeps_every_policy():
    from pfm_experiments.toy2d import reference_policy

    ref = reference_policy()
    held = PreferenceDataset(torch.randn(16, 2), torch.randn(16, 2))
    s = sweep_betas(lambda b: copy.deepcopy(ref), (10.0, 0.1, 1.0), ref, held, lambda p: {"extra": 1.0})
    assert [r["beta"] for r in s.rows] == [0.1, 1.0, 10.0] and all(r["extra"] == 1.0 for r in s.rows)
    assert s.beta == 10.0 and s.policy is s.policies[10.0]  # equal implicit accuracy: the larger beta
    assert set(s.policies) == {0.1, 1.0, 10.0} and s.pick("heldout_accuracy") == 10.0


# ------------------------------------------------------------------------------------------------ figures
def test_save_figure_writes_atomically_and_closes(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "new" / "dir" / "f.png", dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not plt.fignum_exists(fig.number)
    assert [p.name for p in path.parent.iterdir()] == ["f.png"]  # no temporary file left
    fig = plt.figure()
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        save_figure(fig, tmp_path / "file" / "f.png")  # its directory cannot be made
    assert not plt.fignum_exists(fig.number)


# ------------------------------------------------------------------------------------------------ --report-only
def _copy(tmp_path, *names):
    for name in names:
        if not (RESULTS / name).exists():
            pytest.skip(f"results/{name} is not in this checkout")
        shutil.copy(RESULTS / name, tmp_path / name)


def test_report_only_rewrites_the_toy2d_tables_from_the_json(tmp_path, capsys):
    from pfm.cli import main

    _copy(tmp_path, "toy2d.json", "toy2d.md")
    before = json.loads((tmp_path / "toy2d.json").read_text())
    assert main(["reproduce", "toy2d", "--report-only", "--out", str(tmp_path)]) == 0
    after = json.loads((tmp_path / "toy2d.json").read_text())
    assert after["runs"] == before["runs"] and after["config"] == before["config"]
    pfm = after["summary"]["bt"]["methods"]["PFM"]["reward"]
    values = [r["methods"]["PFM"]["metrics"]["reward"] for r in before["runs"] if r["preference"] == "bt"]
    assert pfm["std"] == pytest.approx(np.std(values, ddof=1)) and pfm["n"] == len(values)
    md = (tmp_path / "toy2d.md").read_text()
    assert "| PFM − reference |" in md and "mean ± sample std" in md and "rewrote" in capsys.readouterr().out
    assert (tmp_path / "toy2d.md").read_text() == md  # the same JSON gives the same tables
    with pytest.raises(MissingFileError, match="pfm reproduce toy2d --reward edge"):
        from pfm_experiments.toy2d import report_only

        report_only(tmp_path, reward="edge")


@pytest.mark.slow  # three reports with their figures: 3.3 s
def test_report_only_for_images_text_and_control(tmp_path):
    from pfm.cli import main

    _copy(tmp_path, "mnist.json", "text.json", "control.json", "control.md")
    for argv in (["mnist"], ["text"], ["control"]):
        assert main(["reproduce", *argv, "--report-only", "--out", str(tmp_path), "-q"]) == 0
    mnist = json.loads((tmp_path / "mnist.json").read_text())["summary"]
    vals = [r["methods"]["PFM"]["metrics"]["annotator"] for r in json.loads((RESULTS / "mnist.json").read_text())
            ["runs"]]
    assert mnist["methods"]["PFM"]["annotator"]["std"] == pytest.approx(np.std(vals, ddof=1))
    assert "Paired per-seed differences" in (tmp_path / "mnist.md").read_text()
    assert "| PFM x 5 − RLHF |" in (tmp_path / "text.md").read_text()
    control = (tmp_path / "control.md").read_text()
    assert "best baseline" in control and "Frame strip (`control-frames.png`)" in control  # kept from the old .md
    assert (tmp_path / "control-bars.png").stat().st_size > 1000


def test_seeded_compare_counts_differences_and_the_cli_names_bad_files(tmp_path, capsys):
    """pfm_experiments.seeded: times never count; a number off in the 7th digit is counted and measured; a value
    that is not a number and differs is a mismatch; a file that is not a results JSON is an error (exit 2)."""
    from pfm_experiments.seeded import compare, main, seeded_numbers, untimed

    run = {"seed": 0, "seconds": 3.0, "m": {"score": 0.5, "n": 3, "name": "PFM", "cost": [
        {"matched_by": "wall time", "d": 1.0}, {"matched_by": "calls", "d": 2.0}]}}
    other = copy.deepcopy(run)
    other["seconds"], other["m"]["cost"][0]["d"] = 9.0, 7.0  # times, and a comparison matched by time
    assert untimed(run) == untimed(other)
    other["m"]["score"] = 0.5 * (1 + 1e-7)
    c = compare(untimed(run), untimed(other))
    assert c["numbers"] == 2 and c["differing"] == 1 and c["mismatched"] == []
    assert c["worst_relative"] == pytest.approx(1e-7, rel=1e-3) and c["worst_path"] == "/m/score"
    other["m"]["name"] = "DPO"
    assert compare(untimed(run), untimed(other))["mismatched"] == ["/m/name"]
    result = {"config": {"seeds": [0], "lr": 0.1}, "summary": {}, "runs": [run]}
    assert seeded_numbers(result)["runs"] == [untimed(run)]
    (tmp_path / "a.json").write_text(json.dumps(result))
    (tmp_path / "b.json").write_text(json.dumps({**result, "runs": [other]}))
    assert main([str(tmp_path / "a.json"), str(tmp_path / "a.json")]) == 0
    assert "0 differ" in capsys.readouterr().out
    assert main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 1  # a non-number differs
    (tmp_path / "c.json").write_text(json.dumps({**result, "config": {"seeds": [0], "lr": 0.2}}))
    assert main([str(tmp_path / "a.json"), str(tmp_path / "c.json")]) == 1
    assert "configs differ" in capsys.readouterr().err
    # a setting added after the older file was written: --ignore leaves it out of the configs' comparison
    (tmp_path / "e.json").write_text(json.dumps({**result, "config": {"seeds": [0], "lr": 0.1, "pairs": "x"}}))
    assert main([str(tmp_path / "a.json"), str(tmp_path / "e.json")]) == 1
    assert main([str(tmp_path / "a.json"), str(tmp_path / "e.json"), "--ignore", "pairs"]) == 0
    assert "0 differ" in capsys.readouterr().out
    (tmp_path / "d.json").write_text("[1, 2]")
    assert main([str(tmp_path / "a.json"), str(tmp_path / "d.json")]) == 2
    assert main([str(tmp_path / "a.json"), str(tmp_path / "a.json"), "--seed", "5"]) == 2
    assert "no run of seed 5" in capsys.readouterr().err
