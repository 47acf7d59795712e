"""The config dataclasses: one place for every default, every value checked, the CLI made from them, old names."""

import argparse
import dataclasses
import warnings

import numpy as np
import pytest
import torch

from pfm import FitConfig, PreferenceDataset, PreferenceFlow, SolverConfig, TrainConfig, optimize, solve
from pfm.cli import build_parser, main
from pfm.errors import InvalidInputError, PFMError
from pfm.cli.options import config_from_args, dest_of, flag_of


def small_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y0 = torch.randn(n, 2, generator=g)
    return PreferenceDataset(y0 + 1.0, y0)


def subparser(name):
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "steps must be a positive integer"),
    ("batch_size", -1, "batch_size must be a positive integer"),
    ("lr", float("nan"), "lr must be a finite number"),
    ("grad_clip", -1.0, "grad_clip must be a finite number >= 0"),
    ("ema_decay", 1.0, r"ema_decay must be in \(0, 1\)"),
    ("precision", "fp16", "precision must be one of"),
    ("compile", "yes", "compile must be True or False"),
    ("coupling", "greedy", "coupling must be one of"),
    ("sigma", -0.1, "sigma must be a finite number >= 0"),
    ("recouple_every", 0, "recouple_every must be a positive integer"),
    ("patience", 1.5, "patience must be a positive integer"),
])
def test_every_bad_value_is_refused_naming_the_field(field, value, message):
    with pytest.raises(PFMError, match=message):
        FitConfig(**{field: value})
    with pytest.raises(PFMError, match=message):  # and when changed later
        dataclasses.replace(FitConfig(), **{field: value})


def test_steps_and_epochs_are_exclusive_and_resume_needs_a_directory():
    with pytest.raises(InvalidInputError, match="steps or epochs"):
        TrainConfig(steps=10, epochs=1.0)
    with pytest.raises(InvalidInputError, match="resume=True needs checkpoint_dir"):
        TrainConfig(resume=True)
    assert TrainConfig().total_steps(1000) == 2000
    assert TrainConfig(epochs=2.0, batch_size=256).total_steps(1000) == 8
    with pytest.raises(PFMError, match="method"):
        SolverConfig(method="rk5")


def test_fit_takes_a_config_and_keyword_overrides_alike():
    ds = small_data()
    runs = []
    for call in (lambda f: f.fit(ds, steps=30, lr=3e-3, progress=False),
                 lambda f: f.fit(ds, FitConfig(steps=30, lr=3e-3, progress=False)),
                 lambda f: f.fit(ds, FitConfig(steps=30, progress=False), lr=3e-3)):
        torch.manual_seed(0)
        flow = PreferenceFlow((2,), hidden=16, depth=1)
        history = call(flow)
        runs.append((history.loss, [p.detach().clone() for p in flow.parameters()]))
    for loss, params in runs[1:]:
        assert loss == runs[0][0]
        for a, b in zip(params, runs[0][1]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_an_unknown_setting_names_the_closest_one():
    flow = PreferenceFlow((2,), hidden=8, depth=1)
    with pytest.raises(InvalidInputError, match="unknown setting 'batchsize'; did you mean 'batch_size'"):
        flow.fit(small_data(), batchsize=32)
    with pytest.raises(PFMError, match="config must be a FitConfig"):
        flow.fit(small_data(), {"steps": 3})
    with pytest.raises(InvalidInputError, match="unknown setting 'coupling'"):
        optimize(torch.nn.Linear(2, 2), lambda i, g: torch.zeros(()), 4, coupling="ot")  # a flow's, not the loop's


def test_optimize_defaults_come_from_train_config():
    lin = torch.nn.Linear(2, 1)
    x = torch.randn(40, 2)

    def loss_fn(index, gen):
        return lin(x[index]).pow(2).mean()

    history = optimize(lin, loss_fn, 40, steps=3, progress=False)
    assert history.steps == 3
    with pytest.warns(DeprecationWarning, match="evaluate_every= is now validate_every="):
        optimize(lin, loss_fn, 40, steps=4, progress=False, evaluate=lambda m: 0.0, evaluate_every=2)


def test_the_cli_offers_every_setting_and_takes_its_defaults_from_the_dataclasses():
    fit = subparser("fit")
    dests = {a.dest: a for a in fit._actions}
    for cls in (FitConfig, SolverConfig):
        for f in dataclasses.fields(cls):
            if f.metadata.get("cli", True) is False:
                continue
            assert dest_of(f) in dests, f"pfm fit has no option for {cls.__name__}.{f.name}"
            assert flag_of(f) in dests[dest_of(f)].option_strings
    args = build_parser().parse_args(["fit", "data.npz", "--out", "flow"])
    assert config_from_args(FitConfig, args, progress=True, threads=None) == FitConfig()
    assert config_from_args(SolverConfig, args) == SolverConfig()
    apply = {a.dest for a in subparser("apply")._actions}
    assert {dest_of(f) for f in dataclasses.fields(SolverConfig)} <= apply


def test_the_cli_parses_none_words_and_negations():
    args = build_parser().parse_args(["fit", "d.npz", "--out", "f", "--grad-clip", "none", "--recouple-every",
                                      "never", "--no-normalize", "--across-contexts", "--ema", "0.99",
                                      "--solver-steps", "8", "--steps", "12"])
    cfg = config_from_args(FitConfig, args)
    assert (cfg.grad_clip, cfg.recouple_every, cfg.normalize, cfg.within_context, cfg.ema_decay, cfg.steps) == \
        (None, None, False, False, 0.99, 12)
    assert config_from_args(SolverConfig, args).steps == 8


def test_fit_and_apply_from_the_cli_with_new_options(tmp_path, capsys):
    ds = small_data(200)
    data = tmp_path / "pairs.npz"
    ds.save(data)
    out = tmp_path / "flow"
    assert main(["fit", str(data), "--out", str(out), "--steps", "40", "--hidden", "8", "--depth", "1",
                 "--validation-fraction", "0.25", "--validate-every", "10", "--grad-clip", "none",
                 "--solver-steps", "2", "--method", "euler", "-q"]) == 0
    assert "weights of step" in capsys.readouterr().out
    flow = PreferenceFlow.load(out)
    assert flow.solver["steps"] == 2 and flow.solver["method"] == "euler"
    np.savez(tmp_path / "y.npz", y=np.zeros((5, 2), np.float32))
    assert main(["apply", str(out), str(tmp_path / "y.npz"), "--out", str(tmp_path / "a.npz"),
                 "--solver-steps", "3", "--iterations", "2"]) == 0
    expected = flow.iterate(np.zeros((5, 2), np.float32), iterations=2, solver_steps=3)
    np.testing.assert_allclose(np.load(tmp_path / "a.npz")["y"], expected)
    assert main(["apply", str(out), str(tmp_path / "y.npz"), "--out", str(tmp_path / "b.npz"),  # the old name
                 "--steps", "3", "--iterations", "2"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "b.npz")["y"], expected)
    assert main(["fit", str(data), "--out", str(tmp_path / "f2"), "--patience", "2", "--validation-fraction", "0"]) == 2
    assert "--patience need held-out pairs" in capsys.readouterr().err


def test_old_names_still_work_with_a_warning():
    flow = PreferenceFlow((2,), hidden=8, depth=1)
    y = torch.randn(6, 2)
    with pytest.warns(DeprecationWarning, match="steps= is now solver_steps="):
        old = flow.transform(y, steps=3)
    torch.testing.assert_close(old, flow.transform(y, solver_steps=3))
    with pytest.warns(DeprecationWarning, match="k= is now iterations="):
        old = flow.iterate(y, k=3)
    torch.testing.assert_close(old, flow.iterate(y, iterations=3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(InvalidInputError, match="not both"):
            flow.transform(y, steps=3, solver_steps=4)


def test_solve_defaults_are_the_solver_configs():
    field = PreferenceFlow((2,), hidden=8, depth=1).field
    y = torch.randn(4, 2)
    d = SolverConfig()
    torch.testing.assert_close(solve(field, y), solve(field, y, method=d.method, steps=d.steps))
    assert PreferenceFlow((2,)).solver == d.to_dict()
