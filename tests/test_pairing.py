"""Couplings solved ahead (pfm.pairing): a plan's first epoch is minibatch OT on its own batches, later epochs keep its
partners, runs are reproducible and resume exactly whatever the thread's timing, errors reach the training loop."""

import os
import threading
import time

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from pfm import InvalidInputError, PreferenceDataset, PreferenceFlow
from pfm.coupling import couple, squared_distances
from pfm import pairing
from pfm.pairing import PairingPlan
from pfm.train import epoch_order

from pairing_timer import time_pairing_plans


def rows_of(y0, y1, c=None):
    def rows(index):
        return y0[index], y1[index], None if c is None else c[index]
    return rows


def test_the_first_epoch_of_a_plan_is_exact_ot_on_each_batch():
    g = torch.Generator().manual_seed(0)
    n, b = 200, 64  # three full blocks and a tail of 8
    y0, y1 = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g) + 1
    with PairingPlan(rows_of(y0, y1), n, b, recouple_every=2, seed=3) as plan:
        order = plan.order(0)
        assert torch.equal(order, plan.partition(0))
        for start in range(0, n, b):
            block = order[start:start + b]
            got = plan.partners(block)
            cost = squared_distances(y0[block], y1[block]).double().numpy()
            rows, cols = linear_sum_assignment(cost)
            assert np.isclose(cost[np.arange(len(block)), _positions(block, got)].sum(), cost[rows, cols].sum())
        partner = plan.partners(torch.arange(n))
        assert sorted(partner.tolist()) == list(range(n))  # a permutation of the rows: everyone is used once
        # the next epoch keeps the plan's partners in a fresh order; the epoch after it draws a new plan
        again = plan.order(1)
        assert not torch.equal(again, order) and sorted(again.tolist()) == list(range(n))
        assert torch.equal(plan.partners(torch.arange(n)), partner)
        plan.order(2)
        assert not torch.equal(plan.partners(torch.arange(n)), partner)


def _positions(block, partners):
    """Column (position within the block) of each row's partner."""
    where = {int(r): i for i, r in enumerate(block)}
    return np.array([where[int(p)] for p in partners])


def test_label_contexts_pair_within_their_label():
    g = torch.Generator().manual_seed(1)
    n = 300
    y0, y1 = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g)
    c = torch.randint(0, 4, (n,), generator=g)
    with PairingPlan(rows_of(y0, y1, c), n, 128, seed=0) as plan:
        plan.order(0)
        partner = plan.partners(torch.arange(n))
    assert torch.equal(c[partner], c)


def test_fits_are_reproducible_and_leave_threads_and_settings_as_they_were():
    g = torch.Generator().manual_seed(2)
    y0 = torch.randn(700, 2, generator=g)
    ds = PreferenceDataset(y0 + 1.5, y0)
    threads = torch.get_num_threads()
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        flow = PreferenceFlow.for_dataset(ds, hidden=16, depth=2)
        flow.fit(ds, steps=120, batch_size=64, seed=4, progress=False, recouple_every=3)
        weights.append(flow.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert torch.get_num_threads() == threads
    assert not [t for t in threading.enumerate() if t.name.startswith("pfm-pairing")]


@pytest.mark.parametrize("every,coupling", [(1, "ot"), (3, "ot"), (None, "ot"),
                                            pytest.param(2, "sinkhorn", marks=pytest.mark.slow)])
def test_resume_in_the_middle_of_a_plan_is_bit_identical(tmp_path, every, coupling):
    g = torch.Generator().manual_seed(3)
    y0 = torch.randn(400, 2, generator=g)
    ds = PreferenceDataset(y0 + 1.0, y0)

    def run(steps, **kw):
        torch.manual_seed(0)
        flow = PreferenceFlow.for_dataset(ds, hidden=16, depth=2)
        flow.fit(ds, steps=steps, batch_size=64, seed=1, progress=False, coupling=coupling, recouple_every=every,
                 validation_fraction=0, **kw)
        return flow.state_dict()

    full = run(100)
    run(40, checkpoint_dir=tmp_path, checkpoint_every=40)  # 6 steps an epoch: stops in epoch 6, mid-plan for 3
    resumed = run(100, checkpoint_dir=tmp_path, checkpoint_every=40, resume=True)
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_recoupling_every_epoch_differs_from_keeping_one_plan():
    g = torch.Generator().manual_seed(4)
    y0 = torch.randn(256, 2, generator=g)
    ds = PreferenceDataset(y0 + 1.0, y0)
    out = []
    for every in (1, None):
        torch.manual_seed(0)
        flow = PreferenceFlow.for_dataset(ds, hidden=16, depth=2)
        flow.fit(ds, steps=40, batch_size=64, seed=0, progress=False, recouple_every=every)
        out.append(flow.state_dict())
    assert not all(torch.equal(out[0][k], out[1][k]) for k in out[0])


def test_an_error_in_the_solver_thread_reaches_the_training_loop():
    def rows(index):
        raise ValueError("disk gone")

    with PairingPlan(rows, 100, 32, seed=0) as plan:
        plan.order(0)
        with pytest.raises(ValueError, match="disk gone"):
            plan.partners(torch.arange(32))


@pytest.mark.parametrize("bad", [0, -2, 1.5, "3", True])
def test_recouple_every_is_checked(bad):
    ds = PreferenceDataset(torch.randn(64, 2) + 1, torch.randn(64, 2))
    with pytest.raises(InvalidInputError, match="recouple_every"):
        PreferenceFlow.for_dataset(ds, hidden=8, depth=1).fit(ds, steps=2, recouple_every=bad, progress=False)


def test_epoch_orders_depend_on_seed_and_epoch_only():
    assert torch.equal(epoch_order(50, 3, 7), epoch_order(50, 3, 7))
    assert not torch.equal(epoch_order(50, 3, 7), epoch_order(50, 4, 7))
    assert not torch.equal(epoch_order(50, 1, 0), epoch_order(50, 0, 1))  # neighbouring seeds are not shifted epochs


# ---------------------------------------------------------------------------------------------- a starved thread
def join_workers(plan):
    """Wait for the plan's threads (a plan kept for the run: they end once every block is solved)."""
    for thread in plan._threads:
        thread.join()


def _blocked_thread_rows(y0, y1, gate):
    """``rows`` that holds the pairing thread (a thread starved of CPU, at its worst) until ``gate`` is set."""
    def rows(index):
        if threading.current_thread().name.startswith("pfm-pairing"):
            gate.wait(60)
        return y0[index], y1[index], None
    return rows


@pytest.mark.parametrize("method", ["ot", "sinkhorn"])
@pytest.mark.parametrize("n", [200, 64])  # four blocks (the last one partial), one block
def test_a_stalled_thread_does_not_stall_the_training_loop(n, method):
    g = torch.Generator().manual_seed(5)
    y0, y1 = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g) + 1
    b = 64
    gate = threading.Event()
    try:
        with PairingPlan(_blocked_thread_rows(y0, y1, gate), n, b, method=method, seed=3, workers=1) as plan:
            order = plan.order(0)
            t = time.perf_counter()
            # the first epoch, block by block, then every row (a later epoch's random batches reach the last block)
            got = [plan.partners(order[s:s + b]) for s in range(0, n - b + 1, b)] + [plan.partners(torch.arange(n))]
            took = time.perf_counter() - t
            stats = dict(plan.stats)
            gate.set()
    finally:
        gate.set()
    assert took < 10, f"partners() waited {took:.1f} s for a stalled thread"
    assert stats["taken_over"] == 1 and stats["wait_s"] < 2 and stats["thread_blocks"] == 0
    # the same partners as a plan whose thread solved every block itself
    with PairingPlan(rows_of(y0, y1), n, b, method=method, seed=3) as free:
        free.order(0)
        join_workers(free)  # a plan kept for the run: the thread ends once it has solved every block
        assert free.stats["thread_blocks"] == -(-n // b) and free.stats["blocks"] == 0
        want = free.partners(torch.arange(n))
    assert torch.equal(got[-1], want)
    assert all(torch.equal(p, want[order[s:s + b]]) for p, s in zip(got, range(0, n - b + 1, b)))


def test_the_loop_solves_ahead_while_the_thread_is_busy_and_keeps_the_first_result():
    """While the thread holds the block a step needs, the loop solves the next free one, not wait; a block solved
    twice (the loop took it over) keeps one result, the same either way."""
    g = torch.Generator().manual_seed(6)
    n, b = 256, 64
    y0, y1 = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)
    gate = threading.Event()
    try:
        with PairingPlan(_blocked_thread_rows(y0, y1, gate), n, b, seed=0, workers=1) as plan:
            order = plan.order(0)
            first = plan.partners(order[:b])  # held by the thread: the loop solves blocks 1-3, then takes block 0 over
            assert plan.stats["blocks"] == 4 and plan.stats["taken_over"] == 1
            gate.set()
            join_workers(plan)  # the thread finishes block 0 too; its (equal) result is not written over the loop's
            assert plan.stats["thread_blocks"] == 1
            assert torch.equal(plan.partners(order[:b]), first)
    finally:
        gate.set()


@pytest.mark.slow  # two fits, one with its pairing thread held back: 2.3 s
def test_a_fit_whose_thread_is_slowed_matches_one_whose_thread_is_not(monkeypatch):
    g = torch.Generator().manual_seed(7)
    y0 = torch.randn(400, 2, generator=g)
    ds = PreferenceDataset(y0 + 1.0, y0)
    timed = time_pairing_plans(monkeypatch)

    def run(**kw):
        torch.manual_seed(0)
        flow = PreferenceFlow.for_dataset(ds, hidden=16, depth=2)
        flow.fit(ds, steps=60, batch_size=64, seed=2, progress=False, **kw)
        return flow.state_dict()

    real = pairing.couple

    def slow(*a, **k):  # a thread starved by other processes: every coupling it solves takes a second
        if threading.current_thread().name.startswith("pfm-pairing"):
            time.sleep(1.0)
        return real(*a, **k)

    for every in (2, None):  # 7 blocks a plan (the last one partial); 10 epochs: 5 plans, or 1
        free = run(recouple_every=every)
        monkeypatch.setattr(pairing, "couple", slow)
        timed.update(partners_s=0.0, solve_s=0.0)
        slowed = run(recouple_every=every)
        monkeypatch.setattr(pairing, "couple", real)
        assert all(torch.equal(free[k], slowed[k]) for k in free)
        waited = timed["partners_s"] - timed["solve_s"]  # in partners() but not solving: waiting for the thread
        assert waited < 0.5, f"the training loop waited {waited:.2f} s for the slowed thread"


def _priorities_seen():
    seen = []

    def rows(index):
        if threading.current_thread().name.startswith("pfm-pairing"):
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return torch.zeros(len(index), 2), torch.ones(len(index), 2), None
    return seen, rows


def test_the_thread_solves_the_current_plan_at_the_process_priority():
    """At the lowest priority a thread starves under load (and it holds the GIL at times)."""
    seen, rows = _priorities_seen()
    with PairingPlan(rows, 128, 64, seed=0, workers=1) as plan:
        plan.order(0)
        join_workers(plan)
    assert seen and set(seen) == {os.getpriority(os.PRIO_PROCESS, 0)}


def test_the_thread_works_ahead_at_the_lowest_priority():
    seen, rows = _priorities_seen()
    with PairingPlan(rows, 128, 64, recouple_every=1, seed=0, workers=1) as plan:
        plan.order(0)
        deadline = time.monotonic() + 30
        while plan.stats["thread_blocks"] < 4 and time.monotonic() < deadline:  # plans 0 and 1: two blocks each
            time.sleep(0.01)
        assert plan.stats["thread_blocks"] == 4
    assert seen[:2] == [os.getpriority(os.PRIO_PROCESS, 0)] * 2 and seen[2:] == [19, 19]


def test_partners_do_not_depend_on_the_number_of_threads():
    g = torch.Generator().manual_seed(8)
    n, b = 1000, 64
    y0, y1 = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)
    got = []
    for workers in (1, 3):
        with PairingPlan(rows_of(y0, y1), n, b, seed=2, workers=workers, block=16) as plan:
            plan.order(0)
            assert len(plan._threads) == workers
            join_workers(plan)
            assert plan.stats["thread_blocks"] == -(-n // b)
            got.append(plan.partners(torch.arange(n)))
    assert torch.equal(got[0], got[1])
    assert plan._group > 1  # exact OT in sub-blocks: the threads solve several blocks a call, with the same partners
    perm, want = plan.partition(0), torch.empty(n, dtype=torch.int64)
    for s in range(0, n, b):
        block = perm[s:s + b]
        i0, i1 = couple(y0[block], y1[block], block=16)
        want[block[i0]] = block[i1]
    assert torch.equal(got[0], want)
    with pytest.raises(InvalidInputError, match="workers"):
        PairingPlan(rows_of(y0, y1), n, b, workers=0)


def test_the_default_threads_are_the_cores_less_one(monkeypatch):
    from pfm.pairing import pairing_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert pairing_workers() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5})
    assert pairing_workers() == 1


def test_a_fit_in_sub_blocks():
    g = torch.Generator().manual_seed(9)
    ds = PreferenceDataset(torch.randn(600, 2, generator=g) + 1, torch.randn(600, 2, generator=g))

    def weights(**kw):
        torch.manual_seed(0)
        flow = PreferenceFlow.for_dataset(ds, hidden=16, depth=2)
        flow.fit(ds, steps=20, batch_size=64, progress=False, validation_fraction=0, **kw)
        return flow.state_dict()

    whole, same, sub = weights(), weights(coupling_block=64), weights(coupling_block=16)
    assert all(torch.equal(whole[k], same[k]) for k in whole)  # a block of the batch's size is the batch
    assert not all(torch.equal(whole[k], sub[k]) for k in whole)
    assert all(torch.equal(sub[k], v) for k, v in weights(coupling_block=16).items())  # reproducible
    for bad, match in ((0, "coupling_block"), (65, "at most batch_size"), ("8", "coupling_block")):
        with pytest.raises(InvalidInputError, match=match):
            PreferenceFlow.for_dataset(ds).fit(ds, steps=2, batch_size=64, coupling_block=bad, progress=False)


def test_a_fit_says_how_much_of_its_time_went_to_pairing(tmp_path, caplog, capsys):
    """history.pairing holds where the pairing time went (kept in history.json, summed by pfm info); a fit whose
    steps spent over PAIRING_SHARE of its time pairing whole batches by exact OT warns, naming --coupling-block."""
    import json
    import logging

    from pfm.cli import main
    from pfm.config import FitConfig
    from pfm.flow.fit import PAIRING_SHARE, pairing_note
    from pfm.train import History

    g = torch.Generator().manual_seed(0)
    ds = PreferenceDataset(torch.randn(2048, 2, generator=g) + 2, torch.randn(2048, 2, generator=g))
    ds.save(tmp_path / "pairs.npz")
    assert main(["fit", str(tmp_path / "pairs.npz"), "--steps", "4", "--hidden", "32", "--depth", "2",
                 "--validation-fraction", "0", "--out", str(tmp_path / "f"), "-q"]) == 0
    h = json.loads((tmp_path / "f" / "history.json").read_text())["pairing"]
    assert set(h) == {"wait_s", "solve_s", "blocks", "thread_solve_s", "thread_blocks", "taken_over", "workers"}
    assert h["blocks"] + h["thread_blocks"] >= 4 and h["workers"] == pairing.pairing_workers()
    capsys.readouterr()
    assert main(["info", str(tmp_path / "f")]) == 0
    seconds = json.loads(capsys.readouterr().out)["training"]["pairing_seconds"]
    assert seconds == pytest.approx(h["solve_s"] + h["wait_s"], abs=1e-3)

    busy = History(seconds=20.0, pairing={"solve_s": 8.0, "wait_s": 2.0, "blocks": 90, "workers": 1})
    idle = History(seconds=20.0, pairing={"solve_s": 20 * PAIRING_SHARE - 1, "wait_s": 0.5, "blocks": 9,
                                          "workers": 1})
    short = History(seconds=2.0, pairing={"solve_s": 1.9, "wait_s": 0.0, "blocks": 9, "workers": 1})
    with caplog.at_level(logging.WARNING, logger="pfm"):
        pairing_note(idle, FitConfig())
        pairing_note(busy, FitConfig(coupling_block=128))
        pairing_note(busy, FitConfig(coupling="sinkhorn"))
        pairing_note(short, FitConfig())  # a fit of seconds: not worth a warning
        assert not caplog.records
        pairing_note(busy, FitConfig())
    assert len(caplog.records) == 1
    assert ("pairing took 50% of the fit (10.0 of 20.0 s: the steps solved exact OT of 90 batches themselves and "
            "waited 2.0 s for 1 pairing thread)") in caplog.text and "--coupling-block 128" in caplog.text
