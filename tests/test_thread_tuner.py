"""The thread tuner (issue 51): its choices from step times, and that the counts it runs a fit on never change the
result. Timing itself is the benchmark's (benchmarks/contention.py), not a test's."""

import pytest
import torch

from pfm import PreferenceDataset, PreferenceFlow
from pfm.train import loop
from pfm.train.threads import ThreadTuner, thread_invariant


def feed(tuner: ThreadTuner, step: int, ms: dict[int, float], n: int) -> int:
    """Run ``n`` steps, each taking ``ms[count]`` milliseconds at the count the tuner asks for; the next step."""
    for _ in range(n):
        tuner.record(step, ms[tuner.threads()] / 1e3)
        step += 1
    return step


def test_it_keeps_the_fastest_count_and_the_fewest_threads_when_close():
    t = ThreadTuner([1, 2])
    assert t.probing and t.threads() == 1
    feed(t, 0, {1: 4.0, 2: 3.0}, 7)  # one untimed step, then 3 at each count
    assert not t.probing and t.chosen == 2 and t.decisions[0][:2] == (7, 2)
    t = ThreadTuner([1, 2])
    feed(t, 0, {1: 3.2, 2: 3.0}, 7)  # within 10%: the fewer threads, which other jobs stall less
    assert t.chosen == 1


def test_a_slow_count_is_dropped_after_one_step():
    t = ThreadTuner([1, 2])
    step = feed(t, 0, {1: 4.0, 2: 100.0}, 5)  # untimed, 3 at one thread, 1 at two: over 2x, dropped
    assert not t.probing and t.chosen == 1 and step == 5


def test_when_another_job_arrives_it_probes_again_and_moves():
    t = ThreadTuner([1, 2])
    step = feed(t, 0, {1: 4.0, 2: 2.0}, 7)
    assert t.chosen == 2
    step = feed(t, step, {1: 4.0, 2: 30.0}, 8)  # 8 steps at 15x: the mean is past 2x what the choice measured
    assert t.probing and t.threads() == 1
    step = feed(t, step, {1: 4.0, 2: 30.0}, 3)
    assert t.chosen == 1 and [d[1] for d in t.decisions] == [2, 1] and t.decisions[1][2].startswith("slower")


def test_it_rechecks_after_a_while_and_waits_longer_while_the_choice_holds():
    t = ThreadTuner([1, 2], recheck_seconds=1.0, recheck_steps=10_000)
    step = feed(t, 0, {1: 4.0, 2: 100.0}, 5)
    assert t.chosen == 1
    step = feed(t, step, {1: 4.0, 2: 100.0}, 250)  # 1 s of steps at the chosen count: recheck the other
    assert t.probing and t.threads() == 2
    step = feed(t, step, {1: 4.0, 2: 100.0}, 1)
    assert t.chosen == 1 and t.recheck == 2.0 and len(t.decisions) == 1
    step = feed(t, step, {1: 4.0, 2: 2.0}, 503)  # the other job left: two threads win at the next recheck (2 s)
    assert t.chosen == 2 and t.recheck == 1.0 and t.decisions[-1][2].startswith("recheck")


def test_which_modules_it_adapts():
    assert thread_invariant(PreferenceFlow((64,)).field)  # Linear layers: MLPField
    labels = PreferenceDataset(torch.ones(9, 2), torch.zeros(9, 2), torch.arange(9) % 3)
    assert thread_invariant(PreferenceFlow.for_dataset(labels).field)  # and the labels' Embedding
    assert not thread_invariant(PreferenceFlow((1, 16, 16), field="unet").field)  # convolutions, group norms
    with pytest.raises(ValueError):
        ThreadTuner([0])


class Alternating:
    """A stand-in tuner that switches the count every step: the strongest test that the count does not matter."""

    def __init__(self, candidates):
        self.decisions, self.n = [], 0

    def threads(self) -> int:
        return 1 + self.n % 2

    def record(self, step, seconds) -> None:
        self.n += 1
        self.decisions.append((step + 1, self.threads(), "alternating"))


@pytest.mark.parametrize("shape, extra", [((64,), {}), ((784,), {}), ((2,), {"context": "labels"})])
def test_a_fit_on_changing_counts_ends_bit_identical_to_one_on_one_thread(monkeypatch, shape, extra):
    g = torch.Generator().manual_seed(0)
    y0 = torch.randn(600, *shape, generator=g)
    ctx = torch.arange(600) % 3 if extra.get("context") == "labels" else None
    ds = PreferenceDataset(y0 + 0.5, y0, ctx)

    def fit(**kw):
        torch.manual_seed(1)
        flow = PreferenceFlow.for_dataset(ds)
        h = flow.fit(ds, steps=12, batch_size=256, validation_fraction=0.2, validate_every=3, progress=False, **kw)
        return h, [p.detach().clone() for p in flow.parameters()]

    assert torch.get_num_threads() == 2  # conftest: the tuner is on only above one thread
    h1, one = fit(threads=1)
    assert h1.threads == [(0, 1, "set")]
    monkeypatch.setattr(loop, "ThreadTuner", Alternating)
    h, mixed = fit()
    assert {d[1] for d in h.threads} == {1, 2}, h.threads  # it did run on both counts
    assert all(torch.equal(a, b) for a, b in zip(one, mixed))
    # the recorded losses too: a 256 x 784 mean differs between counts about half the time (count_invariant_mean)
    assert h.loss == h1.loss and h.validation == h1.validation and h.best_step == h1.best_step


def test_a_unet_keeps_the_size_rule_and_says_so():
    ds = PreferenceDataset(torch.randn(64, 1, 8, 8) + 0.5, torch.randn(64, 1, 8, 8))
    h = PreferenceFlow.for_dataset(ds, field="unet").fit(ds, steps=2, batch_size=64, validation_fraction=0,
                                                          progress=False)
    assert len(h.threads) == 1 and h.threads[0][2] == "rule" and h.to_dict()["threads"] == [list(h.threads[0])]


def test_a_short_run_rechecks_by_steps_too():
    """The first epoch's pairing thread holds a core, so two threads may lose the first probe of a short run; a
    recheck after recheck_steps steps (here long before recheck_seconds) finds them faster once it is done."""
    t = ThreadTuner([1, 2], recheck_seconds=1e9, recheck_steps=50)
    step = feed(t, 0, {1: 3.0, 2: 60.0}, 5)
    assert t.chosen == 1
    step = feed(t, step, {1: 3.0, 2: 2.0}, 50)
    assert t.probing
    feed(t, step, {1: 3.0, 2: 2.0}, 3)
    assert t.chosen == 2 and t.decisions[-1][2].startswith("recheck")


# ------------------------------------------------------------------ solves: transform, log_prob (TunedCalls)
from pfm.train import threads as T  # noqa: E402


def test_a_solve_picks_its_count_by_size_and_module_and_restores_torchs():
    mlp, unet = PreferenceFlow((64,)).field, PreferenceFlow((1, 16, 16), field="unet").field
    assert torch.get_num_threads() == 2
    with T.TunedCalls(mlp, 4, torch.device("cpu")) as calls:  # a small evaluation: one thread, no timing
        assert torch.get_num_threads() == 1 and calls.tuner is None and calls.wrap(mlp) is mlp
    assert torch.get_num_threads() == 2
    with T.TunedCalls(mlp, 8192, torch.device("cpu")) as calls:  # a big one: timed
        assert calls.tuner is not None and calls.tuner.threads() == 2  # first (untimed) on torch's setting
        f = calls.wrap(mlp)
        for _ in range(3):
            f(torch.zeros(8192), torch.zeros(8192, 64), None)
        assert not calls.tuner.probing and calls.tuner.chosen in (1, 2)
    assert torch.get_num_threads() == 2
    for module in (unet, None):  # not thread-invariant, or not a module: torch's setting, untouched
        with T.TunedCalls(module, 8192, torch.device("cpu")) as calls:
            assert torch.get_num_threads() == 2 and calls.tuner is None
    torch.set_num_threads(1)
    try:  # the user's (or pfm --threads') single thread stands
        with T.TunedCalls(mlp, 8192, torch.device("cpu")) as calls:
            assert calls.tuner is None and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(2)


class AlternatingCalls(Alternating):
    def __init__(self, candidates, **kw):
        super().__init__(candidates)
        self.probing = True


@pytest.mark.parametrize("shape, labels", [((64,), False), pytest.param((784,), False, marks=pytest.mark.slow),  # 2.1 s
                                          ((2,), True)])
def test_transform_and_log_prob_on_changing_counts_equal_one_thread(monkeypatch, shape, labels):
    torch.manual_seed(0)
    ctx = torch.arange(3000) % 3 if labels else None
    flow = PreferenceFlow(shape, num_classes=3) if labels else PreferenceFlow(shape)
    y = torch.randn(3000, *shape)

    def run():
        g = torch.Generator().manual_seed(1)
        return [flow.transform(y, ctx, batch_size=1024), flow.transform(y, ctx, strength=1.5),
                *flow.divergence_pass(y[:500], ctx if ctx is None else ctx[:500], generator=g)]

    torch.set_num_threads(1)
    try:
        one = run()
    finally:
        torch.set_num_threads(2)
    made = []
    monkeypatch.setattr(T, "ThreadTuner", lambda c, **kw: made.append(AlternatingCalls(c)) or made[-1])
    monkeypatch.setattr(T, "SMALL_STEP", 1)  # every solve timed, even the small log_prob
    mixed = run()
    assert made and all({d[1] for d in t.decisions} == {1, 2} for t in made)  # each ran on both counts
    assert all(torch.equal(a, b) for a, b in zip(one, mixed))
    assert torch.get_num_threads() == 2


def test_a_hidden_width_off_the_vector_split_is_not_adapted():
    """An activation over rows x width values splits at ceil(N / 2) on 2 threads: a width that is not a multiple of
    32 can put a chunk's edge inside a vector, computed by scalar code that may round exp otherwise."""
    assert thread_invariant(PreferenceFlow((784,), hidden=96).field)  # the output layer (784) may be any width
    assert not thread_invariant(PreferenceFlow((64,), hidden=100).field)


def test_which_losses_are_tuned(monkeypatch):
    """A flow's and a reward model's fit are tuned; BC, DPO and RLHF are checked first (their first batch's
    gradients on 1 and on 2 threads)."""
    from pfm.baselines import RewardModel, behavior_cloning, dpo, rlhf
    from pfm.policies import GaussianPolicy

    g = torch.Generator().manual_seed(0)
    y0 = torch.randn(600, 64, generator=g)
    labels = torch.arange(600) % 3
    ds = PreferenceDataset(y0 + 0.5, y0, labels)
    rm_history = RewardModel.for_dataset(ds, hidden=256, depth=2).fit(ds, steps=8, batch_size=256, progress=False)
    assert rm_history.threads[0][2] != "rule"
    policy = GaussianPolicy(64, num_classes=3, hidden=256, depth=2)
    checked = []
    real = loop._Loop._count_dependence
    monkeypatch.setattr(loop._Loop, "_count_dependence", lambda self, index: checked.append(self.desc) or
                        real(self, index))
    behavior_cloning(policy, y0, labels, steps=3, batch_size=256, progress=False)
    dpo(policy, ds, steps=3, batch_size=256, progress=False)
    rlhf(policy, lambda y, c: -y.pow(2).sum(1), labels, steps=3, batch_size=256, progress=False)
    assert checked == ["behavior cloning", "DPO (beta=0.1)", "RLHF (beta=0.1)"]


def test_invariant_loss_must_be_a_bool():
    from pfm.errors import InvalidInputError
    from pfm.train import optimize

    m = torch.nn.Linear(2, 2)
    with pytest.raises(InvalidInputError, match="invariant_loss must be True or False"):  # or "check"
        optimize(m, lambda i, g: (m(torch.ones(1, 2)).sum(), {}), 4, steps=1, invariant_loss="yes", progress=False)


# ------------------------------------------------------------------ BC and DPO: checked, then tuned
@pytest.mark.parametrize("trainer", ["bc", "dpo"])
@pytest.mark.parametrize("rows", [600, 517])
def test_bc_and_dpo_check_the_counts_then_end_bit_identical_to_one_thread(monkeypatch, trainer, rows):
    """A Gaussian policy's log-density (a control task's shapes: 11-d observations, 3-d actions): the first batch
    matches on 1 and 2 threads, so the run is tuned, and a run switching the count every step equals one on one."""
    from pfm.baselines import behavior_cloning, dpo
    from pfm.policies import GaussianPolicy

    g = torch.Generator().manual_seed(2)
    obs, act = torch.randn(rows, 11, generator=g), torch.randn(rows, 3, generator=g)

    def run(**kw):
        torch.manual_seed(3)
        policy = GaussianPolicy(3, context_shape=(11,))
        if trainer == "bc":
            pi, h = behavior_cloning(policy, act, obs, steps=8, batch_size=256, progress=False, **kw)
        else:
            pi, h = dpo(policy, PreferenceDataset(act + 0.3, act, obs), steps=8, batch_size=256, progress=False, **kw)
        return h, [p.detach().clone() for p in pi.parameters()]

    h1, one = run(threads=1)
    monkeypatch.setattr(loop, "ThreadTuner", Alternating)
    h, mixed = run()
    assert {d[1] for d in h.threads} == {1, 2}, h.threads  # checked, tuned, and run on both counts
    assert all(torch.equal(a, b) for a, b in zip(one, mixed))


def test_a_checked_loss_that_differs_between_counts_keeps_the_rule(monkeypatch):
    """A loss whose gradients change with the count (here made to) is not tuned, and the history says why."""
    from pfm import optimize

    net = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.SiLU(), torch.nn.Linear(512, 64))
    data = torch.randn(512, 64)

    def loss_fn(index, gen):
        return (net(data[index]) * torch.get_num_threads()).pow(2).mean()

    calls = []
    monkeypatch.setattr(loop, "ThreadTuner", lambda c: calls.append(c))
    h = optimize(net, loss_fn, 512, steps=2, batch_size=256, progress=False, invariant_loss="check")
    assert not calls and h.threads == [(0, 2, "rule: the first batch's gradients differ on 1 thread and on more")]
    with pytest.raises(Exception, match="invariant_loss"):
        optimize(net, loss_fn, 512, steps=2, progress=False, invariant_loss="maybe")


def test_a_checked_run_that_trains_a_convolution_keeps_the_rule_even_when_one_batch_agrees(monkeypatch):
    """A convolution's (or group norm's) weight gradient differs between counts on some batches and not on others:
    no first-batch check can clear it, so a check that runs one keeps the rule even when the batch agrees; a
    convolution the loss differentiates only through (a frozen reward model's) or never calls does not."""
    from pfm import optimize

    monkeypatch.setattr(T, "SMALL_STEP", 1)  # the rule's count is torch's 2
    monkeypatch.setattr(T, "_identical", lambda a, b: True)  # every first batch agrees
    made = []
    monkeypatch.setattr(loop, "ThreadTuner", lambda c: made.append(c))
    data = torch.randn(128, 1, 8, 8)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.SiLU(), torch.nn.Flatten(),
                               torch.nn.Linear(32 * 64, 8))
    norm = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.Unflatten(1, (16, 4)),
                               torch.nn.GroupNorm(4, 16), torch.nn.Flatten())
    for net, op in ((conv, "convolution_backward"), (norm, "native_group_norm_backward")):
        h = optimize(net, lambda index, gen: net(data[index]).pow(2).mean(), 128, steps=2, batch_size=64,
                     progress=False, invariant_loss="check")
        assert not made and h.threads[0][:2] == (0, 2) and op in h.threads[0][2]

    frozen = torch.nn.Conv2d(1, 4, 3, padding=1).requires_grad_(False)  # a reward model: input gradients only
    unused = torch.nn.Conv2d(1, 4, 3)  # e.g. a VAE's encoder, which a decoder's loss never calls
    policy = torch.nn.ModuleDict({"decoder": torch.nn.Linear(64, 64), "encoder": unused})

    def loss_fn(index, gen):
        y = policy["decoder"](data[index].flatten(1)).reshape(-1, 1, 8, 8)
        return -frozen(y).mean()

    optimize(policy, loss_fn, 128, steps=2, batch_size=64, progress=False, invariant_loss="check")
    assert made


def test_split_reductions_sees_weight_gradients_not_input_gradients():
    """The audit behind the check: a convolution's backward for its weight is recorded, for its input alone not."""
    conv = torch.nn.Conv2d(1, 2, 3)
    x = torch.randn(4, 1, 6, 6, requires_grad=True)
    with T.SplitReductions() as split:
        torch.autograd.grad(conv(x).sum(), [x])
    assert split.found == []
    with T.SplitReductions() as split:
        torch.autograd.grad(conv(x).sum(), [conv.weight])
    assert split.found == ["convolution_backward"]


def test_a_flows_solves_of_one_size_share_one_tuner(monkeypatch):
    """A sweep (choose_strength) makes many solves of one size: the first probes, the next go on from its choice."""
    made = []

    class Counted(T.ThreadTuner):
        def __init__(self, *a, **k):
            made.append(1)
            super().__init__(*a, **k)

    monkeypatch.setattr(T, "ThreadTuner", Counted)
    flow = PreferenceFlow((64,))
    y = torch.randn(8192, 64)
    first = flow.transform(y)
    assert len(made) == 1 and not flow._call_tuners()[("solve", 8192, "cpu", 2)].probing
    again = flow.transform(y, strength=0.5)
    assert len(made) == 1 and torch.equal(flow.transform(y), first) and again.shape == y.shape
    flow.transform(y[:4096])  # another size: its own tuner
    assert len(made) == 2 and "_solve_tuners" not in flow.state_dict()
    # log_prob's solves with their divergence: one tuner of their own for the size, kept across calls (it was one
    # per call, each probing again)
    from pfm.likelihood import flow_divergence_pass

    def divergence():
        return flow_divergence_pass(flow, y[:4096], None, inverse=True, divergence="hutchinson", probes=1,
                                    generator=torch.Generator().manual_seed(0), solver={"steps": 2})[1]

    lp = divergence()
    assert len(made) == 3 and ("divergence", 4096, "cpu", 2) in flow._call_tuners()
    assert torch.equal(divergence(), lp) and len(made) == 3


@pytest.mark.slow  # a GRU language model trained three times: 2.3 s
def test_the_text_decoders_language_model_is_checked_then_tuned_and_ends_as_on_one_thread(monkeypatch):
    from pfm.text import lm as L

    g = torch.Generator().manual_seed(4)
    seqs = [torch.randint(3, 2000, (int(n),), generator=g).tolist() for n in torch.randint(3, 12, (140,), generator=g)]
    cond = torch.nn.functional.normalize(torch.randn(140, 16, generator=g), dim=-1)

    def fit(threads):
        torch.manual_seed(0)
        model = L.ConditionalLM(L.LMConfig(2000, dim=256, hidden=512, layers=2, cond_dim=16, max_len=16))
        with T.intra_op_threads(threads):
            info = L.fit_lm(model, seqs, cond, epochs=2, batch_size=64, cond_noise=0.1, progress=False)
        return info, [p.detach().clone() for p in model.parameters()]

    info1, one = fit(1)
    assert info1["threads"] == [(0, 1, "rule")]
    monkeypatch.setattr(L, "ThreadTuner", Alternating)
    info, mixed = fit(2)
    assert {d[1] for d in info["threads"]} == {1, 2}, info["threads"]
    assert all(torch.equal(a, b) for a, b in zip(one, mixed)) and info["val_loss"] == info1["val_loss"]


# ------------------------------------------------------------------ calls outside training (CheckedCalls)
def test_run_on_both_compares_and_leaves_the_generators_as_after_one_run():
    def draw(g):
        return [torch.rand(5, generator=g), torch.randn(3)]

    torch.manual_seed(7)
    g = torch.Generator().manual_seed(3)
    same, out = T.run_on_both(lambda: draw(g), 2, [g])
    after = (torch.rand(1, generator=g), torch.randn(1))
    torch.manual_seed(7)
    g = torch.Generator().manual_seed(3)
    once = draw(g)
    assert same and all(torch.equal(a, b) for a, b in zip(out, once))
    assert torch.equal(after[0], torch.rand(1, generator=g)) and torch.equal(after[1], torch.randn(1))
    differs, on_two = T.run_on_both(lambda: torch.tensor(float(torch.get_num_threads())), 2)
    assert not differs and on_two.item() == 2.0


def test_checked_calls_tune_only_what_a_call_showed_the_same_and_restore_torchs_count(monkeypatch):
    monkeypatch.setattr(T, "ThreadTuner", lambda c, **kw: AlternatingCalls(c))
    calls, seen = T.CheckedCalls("test"), []

    def same():
        seen.append(torch.get_num_threads())
        return torch.ones(3)

    with calls.session("cpu") as run:
        for _ in range(6):
            run(same, per=3)
        counts = [run(lambda: torch.tensor(float(torch.get_num_threads())), key="differs").item()
                  for _ in range(4)]
    assert seen[:2] == [1, 2] and set(seen[2:]) == {1, 2}  # the check on both counts, then the tuner's
    assert counts == [2.0] * 4  # not identical on one thread: always torch's count
    assert "not identical" in calls.decisions["(2, 'differs')"] and torch.get_num_threads() == 2
    torch.set_num_threads(1)
    try:  # the user's (or pfm --threads') single thread stands: no check, no tuning
        with calls.session("cpu") as run:
            assert run(lambda: torch.get_num_threads()) == 1
        assert len(calls.decisions) == 2
    finally:
        torch.set_num_threads(2)


def test_sampling_the_language_model_on_changing_counts_equals_one_thread(monkeypatch):
    from pfm.text import lm as L

    torch.manual_seed(0)
    model = L.ConditionalLM(L.LMConfig(300, dim=32, hidden=64, layers=1, cond_dim=8, max_len=12)).eval()
    prefixes = [[5, 6][:i % 3] for i in range(40)]
    cond = torch.randn(40, 8)

    def draw(temperature):
        return model.sample(prefixes, cond, temperature=temperature, generator=torch.Generator().manual_seed(1))

    with T.intra_op_threads(1):
        one = [draw(1.0), draw(0.0)]
    made = []
    monkeypatch.setattr(T, "ThreadTuner", lambda c, **kw: made.append(AlternatingCalls(c)) or made[-1])
    assert [draw(1.0), draw(0.0)] == one and torch.get_num_threads() == 2
    assert made and {d[1] for d in made[0].decisions} == {1, 2}


def test_a_sentence_encoder_on_changing_counts_equals_one_thread(monkeypatch, tiny_bert):  # noqa: F811
    from pfm.text.encoder import SentenceEncoder

    texts = [" ".join(["the", "film", "was"] + ["good"] * (i % 5)) for i in range(50)]
    with T.intra_op_threads(1):
        one = SentenceEncoder(tiny_bert).encode(texts, batch_size=4)
    made = []
    monkeypatch.setattr(T, "ThreadTuner", lambda c, **kw: made.append(AlternatingCalls(c)) or made[-1])
    enc = SentenceEncoder(tiny_bert)
    assert torch.equal(enc.encode(texts, batch_size=4), one) and torch.get_num_threads() == 2
    assert made and {d[1] for d in made[0].decisions} == {1, 2}


from test_text_apply import tiny_bert  # noqa: E402,F401 (the fixture)


def test_a_mean_loss_has_the_same_value_on_any_count_and_means_gradient():
    from pfm.path import count_invariant_mean

    plain_differs = 0
    for seed in range(6):
        x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
        values, grads, plain = [], [], []
        for k in (1, 2):
            with T.intra_op_threads(k):
                a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
                m = count_invariant_mean(a.pow(2))
                m.backward()
                b.pow(2).mean().backward()
                values.append(m.detach())
                plain.append(b.pow(2).mean().detach())
                grads.append((a.grad, b.grad))
                assert torch.equal(m, x.pow(2).flatten(1).mean(1).mean())
        plain_differs += not torch.equal(*plain)
        assert torch.equal(*values) and all(torch.equal(ga, gb) for ga, gb in grads)
    assert plain_differs  # what it is for: torch's own mean changed with the count on some of these


def test_divergence_integral_refuses_tuners_that_are_not_a_dict():
    from pfm.errors import InvalidTypeError
    from pfm.likelihood import divergence_integral

    with pytest.raises(InvalidTypeError, match="tuners must be a dict the caller keeps"):
        divergence_integral(lambda t, y, c: y, torch.zeros(2, 2), tuners=[])
