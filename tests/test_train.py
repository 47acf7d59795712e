import pytest
import torch
from torch import nn

from pfm import InvalidInputError, optimize
from pfm.train import NonFiniteLossError, resolve_steps


def test_optimize_fits_a_line_and_records_history():
    x = torch.linspace(-1, 1, 100)[:, None]
    y = 3 * x + 1
    model = nn.Linear(1, 1)
    hist = optimize(model, lambda idx, g: (model(x[idx]) - y[idx]).pow(2).mean(), 100, steps=400, batch_size=32,
                    lr=0.05, progress=False)
    assert len(hist.loss) == 400 and hist.steps == 400 and hist.seconds > 0
    assert hist.loss[-1] < 1e-3
    assert abs(hist.epochs - 400 * 32 / 100) < 1e-9


def test_ema_and_steps_from_epochs():
    model = nn.Linear(1, 1)
    x = torch.randn(50, 1)
    optimize(model, lambda idx, g: model(x[idx]).pow(2).mean(), 50, steps=10, ema_decay=0.9, progress=False)
    assert resolve_steps(None, 2, n=100, batch_size=32, default=5) == 8
    assert resolve_steps(None, None, n=100, batch_size=32, default=5) == 5
    with pytest.raises(InvalidInputError, match="not both"):
        resolve_steps(3, 2, n=100, batch_size=32, default=5)


def test_non_finite_loss_names_the_step():
    model = nn.Linear(1, 1)
    calls = []

    def loss(idx, g):
        calls.append(1)
        out = model(torch.ones(1, 1)).sum() * 0
        return out + (float("nan") if len(calls) == 7 else 1.0)

    with pytest.raises(NonFiniteLossError, match="step 7"):
        optimize(model, loss, 10, steps=30, progress=False, sync_every=5)


def test_optimize_bad_args():
    model = nn.Linear(1, 1)
    with pytest.raises(InvalidInputError, match="ema_decay"):
        optimize(model, lambda i, g: model.weight.sum(), 5, steps=1, ema_decay=1.5, progress=False)
    with pytest.raises(InvalidInputError, match="steps"):
        optimize(model, lambda i, g: model.weight.sum(), 5, steps=0, progress=False)


def test_optimize_keeps_the_best_evaluated_weights_and_stops_on_patience():
    # the training loss pulls w to 1; the "held-out" score is best at w = 0.5, passed on the way
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    hist = optimize(model, lambda i, g: (model.weight - 1).pow(2).sum(), 4, steps=200, lr=0.01, progress=False,
                    evaluate=lambda m: float((m.weight - 0.5).abs()), validate_every=5, patience=3)
    steps = [s for s, _ in hist.validation]
    assert steps == list(range(5, 5 * (len(steps) + 1), 5)) and hist.steps == steps[-1] < 200
    assert hist.best_step == steps[-4]  # three evaluations without improvement after the best
    assert abs(float(model.weight) - 0.5) == min(v for _, v in hist.validation) < 0.03
    assert len(hist.loss) == hist.steps
    with pytest.raises(InvalidInputError, match="need evaluate"):
        optimize(model, lambda i, g: model.weight.sum(), 5, steps=1, patience=2, progress=False)
    with pytest.raises(InvalidInputError, match="checkpoint_dir"):
        optimize(model, lambda i, g: model.weight.sum(), 5, steps=1, evaluate=lambda m: 0.0, checkpoint_dir="x",
                 progress=False)


def test_small_cpu_steps_run_on_one_thread_and_the_setting_is_restored():
    from pfm.train import SMALL_STEP, step_threads

    outer = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        small = [torch.zeros(1000)]
        big = [torch.zeros(SMALL_STEP)]
        cpu = torch.device("cpu")
        assert step_threads(small, 256, cpu) == 1
        assert step_threads(big, 1, cpu) == 2
        assert step_threads(small, 256, torch.device("meta")) == 2  # not the CPU: torch's setting
        seen = []
        w = nn.Parameter(torch.zeros(3))

        def loss_fn(index, gen):
            seen.append(torch.get_num_threads())
            return (w - 1).pow(2).sum()

        optimize(nn.ParameterList([w]), loss_fn, 8, steps=3, batch_size=4, progress=False)
        assert seen == [1, 1, 1] and torch.get_num_threads() == 2
        seen.clear()
        optimize(nn.ParameterList([w]), loss_fn, 8, steps=2, batch_size=4, progress=False, threads=2)
        assert seen == [2, 2] and torch.get_num_threads() == 2
        with pytest.raises(InvalidInputError, match="threads"):
            optimize(nn.ParameterList([w]), loss_fn, 8, steps=2, threads=0, progress=False)
    finally:
        torch.set_num_threads(outer)
