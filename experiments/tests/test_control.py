"""The control experiment's parts on the real simulator: data sets in Minari's format, exact state restore, segment
rollouts, the acting protocols, the behavior policies' files, and a quick end-to-end run."""

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")
minari = pytest.importorskip("minari")

from pfm import FileFormatError, InvalidInputError  # noqa: E402
from pfm_experiments.control import datasets as D  # noqa: E402
from pfm_experiments.control import envs as E  # noqa: E402
from pfm_experiments.control.experiment import episodes_score  # noqa: E402
from pfm_experiments.control.experts import (ARSConfig, ARSResult, LinearPolicy, load_experts,  # noqa: E402
                                       load_snapshots, medium_target, pick_medium, save_experts, train_ars)
from pfm_experiments.control.segments import SegmentRoller, make_segments  # noqa: E402


@pytest.fixture(scope="module")
def random_episodes():
    return D.collect("hopper", "random", 1500, seed=0)


def test_minari_round_trip_restores_states_exactly(random_episodes, tmp_path):
    eps = random_episodes
    assert sum(len(e) for e in eps) == 1500 and eps[-1].truncations[-1] | eps[-1].terminations[-1]
    path = D.write_minari(eps, "hopper", "random", tmp_path)
    assert path == tmp_path / "pfm" / "hopper" / "random-v0"
    for source in ("pfm/hopper/random-v0", str(path)):
        back = D.load_episodes(source, tmp_path)
        assert len(back) == len(eps)
        np.testing.assert_array_equal(back[2].observations, eps[2].observations)
        np.testing.assert_array_equal(back[2].actions, eps[2].actions)
        np.testing.assert_array_equal(back[2].qpos, eps[2].qpos)
    # minari's own loader finds it by id, with D4RL's reference scores for normalization
    with D._minari_root(tmp_path):
        ds = minari.load_dataset("pfm/hopper/random-v0")
        assert ds.total_steps == 1500
        assert float(minari.get_normalized_score(ds, np.array([3234.3]))[0]) == pytest.approx(1.0)
    # rewriting replaces it whole
    D.write_minari(eps[:3], "hopper", "random", tmp_path)
    assert len(D.load_episodes("pfm/hopper/random-v0", tmp_path)) == 3
    env = E.make_env("hopper")
    e = back[1]
    for t in (0, 5):
        np.testing.assert_array_equal(E.set_state(env, e.qpos[t], e.qvel[t]), e.observations[t])
        q, v = D.state_from_observation("hopper", e.observations[t], 6, 6)
        np.testing.assert_allclose(E.set_state(env, q, v), e.observations[t])
    with pytest.raises(InvalidInputError, match="qpos and qvel"):
        E.set_state(env, np.zeros(3), np.zeros(6))
    with pytest.raises(FileFormatError, match="no Minari data set"):
        D.load_episodes("pfm/hopper/nothing-v0", tmp_path)
    with pytest.raises(InvalidInputError, match="kind"):
        D.collect("hopper", "bogus", 10)
    with pytest.raises(InvalidInputError, match="unknown control task"):
        E.make_env("pong")


def test_rolling_out_the_data_sets_own_actions_replays_its_rewards(random_episodes):
    segs = make_segments(random_episodes, "hopper", 5)
    assert segs.actions.shape[1:] == (5, 3) and len(segs) == sum(max(0, len(e) - 4) for e in random_episodes)
    roller = SegmentRoller("hopper")
    idx = np.arange(0, len(segs), 37)
    got = roller.returns(segs.qpos[idx], segs.qvel[idx], segs.actions[idx])
    # the same windows' rewards in the data (each window lies inside one episode, before any termination)
    starts = [(i, t) for i, e in enumerate(random_episodes) for t in range(len(e) - 4)]
    want = np.array([random_episodes[i].rewards[t:t + 5].sum() for i, t in (starts[j] for j in idx)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(InvalidInputError, match="NaN"):
        roller.returns(segs.qpos[:1], segs.qvel[:1], np.full((1, 5, 3), np.nan))
    with pytest.raises(InvalidInputError, match="segments must be"):
        roller.returns(segs.qpos[:2], segs.qvel[:2], segs.actions[:1])
    roller.close()
    sub = make_segments(random_episodes, "hopper", 5, max_segments=50, seed=1)
    assert len(sub) == 50
    with pytest.raises(InvalidInputError, match="no episode has"):
        make_segments(random_episodes[:1], "hopper", 10_000)


def test_protocols_agree_on_a_constant_plan_and_differ_on_a_state_feedback_one():
    zero = lambda obs: np.zeros((len(obs), 4, 3))  # noqa: E731
    a = episodes_score("hopper", zero, "replan", 3, seed=0, horizon=4, max_steps=200)
    b = episodes_score("hopper", zero, "chunk", 3, seed=0, horizon=4, max_steps=200)
    np.testing.assert_allclose(a, b)

    def feedback(obs):  # acts on the observation: executing a stale plan differs from replanning
        return np.repeat(np.tanh(obs[:, None, 5:8] * 3), 4, axis=1)

    c = episodes_score("hopper", feedback, "replan", 2, seed=0, horizon=4, max_steps=200)
    d = episodes_score("hopper", feedback, "chunk", 2, seed=0, horizon=4, max_steps=200)
    assert not np.allclose(c, d)
    with pytest.raises(InvalidInputError, match="protocol"):
        episodes_score("hopper", zero, "mpc", 1, seed=0, horizon=4, max_steps=10)


def test_the_teachers_lookahead_adds_the_steps_after_the_segment(random_episodes):
    segs = make_segments(random_episodes, "hopper", 3, max_segments=5, seed=0)
    roller = SegmentRoller("hopper")
    zeros = lambda obs: np.zeros((len(obs), 4, 3))  # noqa: E731
    action = np.full((5, 3, 3), 0.3)
    longer = np.concatenate([action, np.zeros((5, 7, 3))], axis=1)
    plain = roller.returns(segs.qpos, segs.qvel, action)
    looked = roller.returns(segs.qpos, segs.qvel, action, lookahead=7, then=zeros)
    # the segment, then two of then's segments of 4, the last cut to 3 steps: ten steps in all
    np.testing.assert_allclose(looked, roller.returns(segs.qpos, segs.qvel, longer))
    assert not np.allclose(looked, plain)
    np.testing.assert_allclose(roller.returns(segs.qpos, segs.qvel, action, lookahead=0), plain)
    with pytest.raises(InvalidInputError, match="then"):
        roller.returns(segs.qpos, segs.qvel, action, lookahead=5)
    with pytest.raises(InvalidInputError, match="lookahead"):
        roller.returns(segs.qpos, segs.qvel, action, lookahead=-1, then=zeros)
    with pytest.raises(InvalidInputError, match="then must return"):  # an empty plan would never end
        roller.returns(segs.qpos, segs.qvel, action, lookahead=5, then=lambda obs: np.zeros((1, 0, 3)))
    roller.close()


@pytest.mark.slow
def test_ars_runs_and_the_policy_file_round_trips(tmp_path):
    result = train_ars("hopper", ARSConfig(directions=2, top=1, iterations=4, eval_every=2, eval_episodes=1,
                                            horizon=100), progress=False)
    assert [h["iteration"] for h in result.history] == [2, 4] and result.env_steps > 0
    assert result.expert_return == max(h["return"] for h in result.history)
    path = tmp_path / "hopper.npz"
    save_experts(path, "hopper", result, ARSConfig())
    expert, medium, meta = load_experts("hopper", path)
    obs = np.ones(11)
    np.testing.assert_allclose(expert(obs), result.expert(obs))
    assert meta["expert_return"] == result.expert_return and len(meta["history"]) == 2
    assert np.all(np.abs(expert(obs * 1e6)) <= 1)  # actions stay in the action space
    with pytest.raises(FileFormatError, match="not 'walker2d'"):
        load_experts("walker2d", path)
    with pytest.raises(FileFormatError, match="python -m pfm_experiments.control.experts"):
        load_experts("hopper", tmp_path / "none.npz")
    with pytest.raises(InvalidInputError, match="top"):
        train_ars("hopper", ARSConfig(directions=2, top=3), progress=False)
    assert isinstance(expert, LinearPolicy) and isinstance(result, ARSResult)
    snaps = load_snapshots("hopper", path)
    assert [r for r, _ in snaps] == [r for r, _ in result.snapshots] and len(snaps) == 2
    np.testing.assert_allclose(snaps[1][1](obs), result.snapshots[1][1](obs))
    # rollouts in worker processes give the same run
    two = train_ars("hopper", ARSConfig(directions=2, top=1, iterations=4, eval_every=2, eval_episodes=1,
                                         horizon=100), progress=False, workers=2)
    np.testing.assert_array_equal(two.expert.W, result.expert.W)
    assert two.history[-1]["return"] == result.history[-1]["return"]


def test_mlp_policy_files_round_trip_beside_linear_ones(tmp_path):
    """SAC's actors are stored as numpy MLPs in the same file layout, so the data sets need no sbx to act."""
    from pfm_experiments.control.experts import MLPPolicy, policy_from_dict

    rng = np.random.default_rng(0)
    low, high = -np.ones(6), np.ones(6) * 2
    pol = MLPPolicy([rng.normal(size=(8, 17)), rng.normal(size=(6, 8))], [rng.normal(size=8), rng.normal(size=6)],
                    low, high)
    obs = rng.normal(size=17)
    h = np.maximum(pol.weights[0] @ obs + pol.biases[0], 0)
    want = low + (np.tanh(pol.weights[1] @ h + pol.biases[1]) + 1) / 2 * (high - low)
    np.testing.assert_allclose(pol(obs), want)
    assert np.all((pol(obs * 1e3) >= low) & (pol(obs * 1e3) <= high))
    back = policy_from_dict(pol.to_dict("x"), "x")
    assert isinstance(back, MLPPolicy) and np.allclose(back(obs), pol(obs))
    lin = LinearPolicy(np.zeros((6, 17)), np.zeros(17), np.ones(17), low, high)
    assert isinstance(policy_from_dict(lin.to_dict("y"), "y"), LinearPolicy)
    result = ARSResult(pol, pol, 3000.0, 1500.0, [{"env_steps": 1, "return": 3000.0}], 1.0, 1,
                       [(1500.0, pol), (3000.0, pol)])
    path = tmp_path / "walker2d.npz"
    save_experts(path, "walker2d", result, ARSConfig(), trainer="sac")
    expert, medium, meta = load_experts("walker2d", path)
    assert isinstance(expert, MLPPolicy) and meta["trainer"] == "sac" and np.allclose(expert(obs), pol(obs))
    assert len(load_snapshots("walker2d", path)) == 2
    committed, _, meta = load_experts("walker2d")  # the committed SAC policies act in the simulator
    assert isinstance(committed, MLPPolicy) and meta["trainer"] == "sac"
    env = E.make_env("walker2d")
    a = committed(env.reset(seed=0)[0])
    assert a.shape == env.action_space.shape and np.all(np.abs(a) <= 1)


def test_sac_actor_becomes_the_numpy_policy(tmp_path):
    """The numpy MLP acts as sbx's deterministic SAC actor does (sbx is needed only to train, so this is skipped
    where it is not installed)."""
    pytest.importorskip("sbx")
    from pfm_experiments.control.sac_experts import SACConfig, actor_policy, train_sac

    cfg = SACConfig(steps=600, hidden=(16, 16), learning_starts=200, eval_every=300, eval_episodes=1)
    result = train_sac("hopper", cfg, checkpoint=tmp_path / "ck", progress=False)
    assert [h["env_steps"] for h in result.history] == [300, 600] and len(result.snapshots) == 2
    from sbx import SAC

    env = E.make_env("hopper")
    model = SAC.load(str(tmp_path / "ck" / "model.zip"), env=env)
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(actor_policy(model, env)(obs), model.predict(obs, deterministic=True)[0], atol=1e-5)
    more = train_sac("hopper", SACConfig(**{**cfg.__dict__, "steps": 900}), checkpoint=tmp_path / "ck",
                     progress=False)  # goes on from the checkpoint
    assert [h["env_steps"] for h in more.history] == [300, 600, 900]


def test_medium_policy_aims_at_d4rl_medium_level_capped_below_the_expert():
    # hopper: D4RL's medium level (52.83) is a return of about 1,700; a strong expert does not cap it
    assert E.normalized_score("hopper", medium_target("hopper", 3000.0)) == pytest.approx(52.83)
    assert medium_target("hopper", 2000.0) == pytest.approx(1200.0)  # capped at 0.6 of a weak expert
    assert E.normalized_score("hopper", medium_target("hopper", 3000.0, score=20)) == pytest.approx(20)
    pol = LinearPolicy(np.zeros((3, 11)), np.zeros(11), np.ones(11), -np.ones(3), np.ones(3))
    snaps = [(100.0, pol), (1150.0, pol), (1900.0, pol)]
    assert pick_medium("hopper", snaps, 2000.0)[0] == 1150.0
    assert pick_medium("hopper", snaps, 3500.0)[0] == 1900.0
    with pytest.raises(InvalidInputError, match="snapshots"):
        pick_medium("hopper", [], 2000.0)
    with pytest.raises(InvalidInputError, match="score"):
        medium_target("hopper", 2000.0, score=float("nan"))


def test_normalized_score_uses_d4rl_references():
    assert E.normalized_score("hopper", -20.272305) == pytest.approx(0.0)
    assert E.normalized_score("walker2d", 4592.3) == pytest.approx(100.0)
    np.testing.assert_allclose(E.normalized_score("halfcheetah", [-280.178953, 12135.0]), [0.0, 100.0])


@pytest.mark.integration
@pytest.mark.slow
def test_quick_reproduction_end_to_end(tmp_path, monkeypatch):
    from pfm.cli import main

    load_experts("hopper")  # the committed behavior policies
    monkeypatch.setenv("PFM_DATA_DIR", str(tmp_path / "data"))
    assert main(["reproduce", "control", "--quick", "--out", str(tmp_path / "out"), "-q"]) == 0
    result = json.loads((tmp_path / "out" / "control-quick.json").read_text())
    (cell,) = result["cells"]["hopper-medium"]
    seg = cell["segment_returns"]
    # on held-out start states the flow's segments earn more in the simulator than pi_ref's own
    assert seg["PFM from a sample"] > seg["BC sample"]
    assert seg["PFM"] > seg["BC"]
    assert cell["pairs"]["chosen_return"] > cell["pairs"]["rejected_return"]
    assert set(cell["scores"]) == {"replan", "chunk"}
    assert set(cell["scores"]["chunk"]) == {"BC", "DPO", "Marginal BC", "PFM", "PFM x 2"}
    assert cell["flow"]["best_step"] is not None and cell["flow"]["validation"]
    assert (tmp_path / "out" / "control-quick-bars.png").stat().st_size > 1000
    assert "Segment test" in (tmp_path / "out" / "control-quick.md").read_text()
    # a second run reuses the cached cell
    assert main(["reproduce", "control", "--quick", "--out", str(tmp_path / "out2"), "-q"]) == 0
    again = json.loads((tmp_path / "out2" / "control-quick.json").read_text())
    assert again["cells"] == result["cells"]
    # the analysis reads the cached cell's models
    from pfm_experiments.control.analysis import analyse, table
    from pfm_experiments.control.config import Config

    found = analyse("hopper", "medium", 1, Config.quick_config(), steps=10_000, progress=False)
    (run,) = found["runs"]
    assert 0 <= run["shift_share"] <= 1 and run["size"] > 0 and np.array(run["shift"]).shape == (10, 3)
    assert set(run["scores"]["chunk"]) == {"BC", "PFM", "BC + PFM's shift", "BC + random, PFM's size"}
    assert run["scores"]["chunk"]["PFM"] == pytest.approx(cell["scores"]["chunk"]["PFM"]["score"])
    assert "explains" in table(found)
    with pytest.raises(InvalidInputError, match="no cached cell"):
        analyse("hopper", "medium", 2, Config.quick_config(), steps=10_000, progress=False)


@pytest.mark.integration
@pytest.mark.slow
def test_quick_ant_reproduction_has_the_ant_rows(tmp_path, monkeypatch):
    """Issue 48: ``--tasks ant`` makes the ant data set from the committed ant policies and gives its rows."""
    from pfm.cli import main

    expert, medium, meta = load_experts("ant")  # the committed behavior policies
    assert meta["expert_return"] > meta["medium_return"] and expert.W.shape == medium.W.shape == (8, 105)
    monkeypatch.setenv("PFM_DATA_DIR", str(tmp_path / "data"))
    assert main(["reproduce", "control", "--quick", "--tasks", "ant", "--out", str(tmp_path / "out"), "-q"]) == 0
    result = json.loads((tmp_path / "out" / "control-quick.json").read_text())
    assert list(result["cells"]) == ["ant-medium"] and result["sources"]["ant-medium"][0] == "ant"
    (cell,) = result["cells"]["ant-medium"]
    assert set(cell["scores"]) == {"replan", "chunk"}
    assert set(cell["scores"]["chunk"]) == {"BC", "DPO", "Marginal BC", "PFM", "PFM x 2"}
    assert all(np.isfinite(v["score"]) for p in cell["scores"].values() for v in p.values())
    assert "| ant-medium | 1 |" in (tmp_path / "out" / "control-quick.md").read_text()


def test_a_data_set_is_made_again_when_its_source_changes(tmp_path):
    from pfm_experiments.control.reproduce import ensure_dataset

    path = Path(ensure_dataset("hopper", "random", 300, tmp_path, progress=False))
    stamp = path / "pfm-source.json"
    data = path / "data" / "metadata.json"
    made = data.stat().st_mtime_ns
    assert ensure_dataset("hopper", "random", 300, tmp_path, progress=False) == str(path)
    assert data.stat().st_mtime_ns == made  # reused
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "policies": "another"}))
    ensure_dataset("hopper", "random", 300, tmp_path, progress=False)
    assert json.loads(stamp.read_text())["policies"] != "another"
    assert len(D.load_episodes(str(path))) > 0
    assert "noise" not in json.loads(stamp.read_text())  # the default noise: the stamps made before it stay valid


def test_behavior_noise_makes_data_sets_of_their_own(tmp_path):
    from pfm_experiments.control.reproduce import dataset_label, ensure_dataset, reproduce

    plain = Path(ensure_dataset("hopper", "medium", 300, tmp_path, progress=False))
    noisy = Path(ensure_dataset("hopper", "medium", 300, tmp_path, progress=False, noise=0.3))
    assert noisy != plain and noisy.name == "medium-300-noise0p3-v0"
    assert json.loads((noisy / "pfm-source.json").read_text())["noise"] == 0.3
    a, b = D.load_episodes(str(plain)), D.load_episodes(str(noisy))
    # the same policy and resets, more noise: the actions differ from the first step on
    assert not np.allclose(a[0].actions[:5], b[0].actions[:5])
    assert dataset_label("medium") == "medium" and dataset_label("expert", 300, 0.3) == "expert-300-noise0p3"
    for bad, match in ((-0.1, "non-negative"), (float("nan"), "non-negative")):
        with pytest.raises(InvalidInputError, match=match):
            reproduce(tmp_path / "o", kinds=["medium"], behavior_noise=bad, progress=False)
    with pytest.raises(InvalidInputError, match="not to random"):
        reproduce(tmp_path / "o", kinds=["random"], behavior_noise=0.3, progress=False)
    assert not (tmp_path / "o").exists()


def test_the_analysis_splits_a_displacement_into_a_shift_and_the_rest():
    import torch

    from pfm.policies import GaussianPolicy
    from pfm_experiments.control.analysis import displacement, jittered, shifted

    bc = GaussianPolicy((4, 3), context_shape=(5,), hidden=16, depth=1)
    ctx = torch.randn(400, 5)
    const = torch.full((4, 3), 0.5)

    class Shift:  # a "flow" that adds a constant
        def transform(self, y, c):
            return y + const

    class Noise:  # a "flow" that adds independent noise
        def transform(self, y, c):
            return y + torch.randn(y.shape, generator=torch.Generator().manual_seed(0))

    d = displacement(bc, Shift(), ctx)
    np.testing.assert_allclose(d.shift, const.numpy(), atol=1e-6)
    assert d.shift_share == pytest.approx(1.0) and d.size == pytest.approx(float(const.norm()), rel=1e-5)
    assert displacement(bc, Noise(), ctx).shift_share < 0.05
    base = lambda obs: np.zeros((len(obs), 4, 3))  # noqa: E731
    y = jittered(base, 0.7, seed=0)(np.zeros((6, 5)))
    np.testing.assert_allclose(np.linalg.norm(y.reshape(6, -1), axis=1), 0.7)
    assert not np.allclose(y[0], y[1])
    moved = shifted(base, const.numpy())(np.zeros((2, 5)))
    np.testing.assert_allclose(moved, np.broadcast_to(const.numpy(), (2, 4, 3)))
    with pytest.raises(InvalidInputError, match="ctx"):
        displacement(bc, Shift(), ctx[:1])


def test_ars_checkpoint_resumes_to_the_same_run(tmp_path):
    cfg = dict(directions=2, top=1, eval_every=2, eval_episodes=1, horizon=100)
    whole = train_ars("hopper", ARSConfig(iterations=6, **cfg), progress=False)
    ckpt = tmp_path / "ars.npz"
    train_ars("hopper", ARSConfig(iterations=4, **cfg), progress=False, checkpoint=ckpt)  # "killed" after 4
    resumed = train_ars("hopper", ARSConfig(iterations=6, **cfg), progress=False, checkpoint=ckpt)
    np.testing.assert_array_equal(resumed.expert.W, whole.expert.W)
    assert [h["return"] for h in resumed.history] == [h["return"] for h in whole.history]
    assert resumed.env_steps == whole.env_steps and len(resumed.snapshots) == 3
    again = train_ars("hopper", ARSConfig(iterations=6, **cfg), progress=False, checkpoint=ckpt)  # nothing to do
    np.testing.assert_array_equal(again.expert.W, whole.expert.W)
    with pytest.raises(FileFormatError, match="ARS settings"):
        train_ars("hopper", ARSConfig(iterations=6, **{**cfg, "noise": 0.5}), progress=False, checkpoint=ckpt)
    with pytest.raises(FileFormatError, match="of task 'hopper'"):
        train_ars("walker2d", ARSConfig(iterations=6, **cfg), progress=False, checkpoint=ckpt)


def test_batched_simulators_replay_the_data_and_roll_a_policy_out_closed_loop(random_episodes):
    from pfm_experiments.control.rollout import Simulators, rollout

    segs = make_segments(random_episodes, "hopper", 5, max_segments=6, seed=0)
    sims = Simulators("hopper", 6)
    ro = rollout(sims, segs.qpos, segs.qvel, lambda obs: np.zeros((len(obs), 3)), 5, prefix=segs.actions)
    roller = SegmentRoller("hopper")
    np.testing.assert_allclose(ro.returns, roller.returns(segs.qpos, segs.qvel, segs.actions), rtol=1e-9)
    np.testing.assert_allclose(ro.actions, np.clip(segs.actions, -1, 1))
    np.testing.assert_array_equal(ro.obs, segs.obs)
    # closed loop: the policy sees each step's observation (one call per step for all copies)
    seen = []
    longer = rollout(sims, segs.qpos, segs.qvel, lambda obs: seen.append(obs.copy()) or np.tanh(obs[:, 5:8]), 8,
                     prefix=segs.actions[:, :2])
    assert len(seen) == 6 and seen[0].shape == (6, 11) and longer.actions.shape == (6, 8, 3)
    np.testing.assert_allclose(longer.actions[:, 2], np.clip(np.tanh(seen[0][:, 5:8]), -1, 1))
    np.testing.assert_allclose(longer.returns, longer.rewards.sum(1))
    with pytest.raises(InvalidInputError, match="copies"):
        rollout(sims, np.repeat(segs.qpos, 2, 0), np.repeat(segs.qvel, 2, 0), lambda o: np.zeros((len(o), 3)), 2)
    sims.close()
    roller.close()


@pytest.mark.slow
@pytest.mark.parametrize("mkl_path", ["this machine's", "AVX2"])
def test_the_rollout_pairs_are_bit_identical_through_both_paths_on_1_and_2_threads(mkl_path):
    """Issue 50: the protocol cell and the baselines' / DPO's cells draw the same pairs, bit for bit, whatever the
    torch thread count. On MKL's AVX2 path (AMD Zen 3, or an AVX-512 Xeon told MKL_ENABLE_INSTRUCTIONS=AVX2) pi_ref
    trained on 2 threads came out other weights than on 1 until ``import pfm`` put MKL in its thread-count-independent
    mode; that path runs in a process of its own (MKL reads both settings at its first product)."""
    import os
    import subprocess
    import sys

    if mkl_path == "AVX2":
        here = Path(__file__).parent
        env = {**os.environ, "MKL_ENABLE_INSTRUCTIONS": "AVX2", "PYTHONPATH": str(here)}
        env.pop("MKL_CBWR", None)
        run = subprocess.run([sys.executable, str(here / "pair_digests.py")], env=env, capture_output=True,
                             text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        digests = json.loads(run.stdout.strip().splitlines()[-1])
    else:
        from pair_digests import pair_digests

        digests = pair_digests()
    assert len(digests) == 4 and len(set(digests.values())) == 1, digests


@pytest.mark.integration
@pytest.mark.slow
def test_quick_rollout_protocol_end_to_end(tmp_path, monkeypatch):
    """``--protocols rollout --quick``: on held-out on-policy start states (drawn with other seeds than the pairs'),
    the flow's improved segments earn a higher simulated 20-step return (their 10 actions, then pi_ref sampled to
    20 steps, the same noise for both) than pi_ref's own sampled segments from the same states."""
    import torch

    from pfm.cli import main

    monkeypatch.setenv("PFM_DATA_DIR", str(tmp_path / "data"))
    args = ["reproduce", "control", "--quick", "--protocols", "rollout", "-q"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one small network call per simulator step: a second thread only contends
    try:
        assert main(args + ["--out", str(tmp_path / "out")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert not (tmp_path / "out" / "control-quick.json").exists()  # rollout alone: only its results
    result = json.loads((tmp_path / "out" / "control-rollout-quick.json").read_text())
    (cell,) = result["cells"]["hopper-medium"]
    seg = cell["segment_returns"]
    assert seg["PFM"] > seg["BC sampled"], seg
    assert cell["pfm_ahead"] > 0.5
    assert cell["pairs"]["chosen_return"] > cell["pairs"]["rejected_return"]
    assert cell["start_states"]["fallbacks"] == 0
    assert set(cell["scores"]["rollout"]) == {"BC mean", "BC sampled", "simulated best-of-2", "PFM", "PFM x 2",
                                              "best-of-2 (reward model)", "DPO", "Marginal BC (fine-tuned)",
                                              "Marginal BC (from scratch)", "DPO (beta by return)"}
    assert all(np.isfinite(v["score"]) for v in cell["scores"]["rollout"].values())
    # the baselines (issue 26) start from the protocol cell's own pairs, drawn again from its seeds
    b = cell["baselines"]
    assert b["same_pairs"] and b["reward_model"]["train"] > 0.5 and b["dpo"]["beta"] == 1.0
    # DPO with beta by return: every beta's validation return recorded, the pick is their best
    d = cell["dpo_return"]
    assert d["same_pairs"] and [r["beta"] for r in d["sweep"]] == [1.0, 100.0]
    assert d["beta"] == max(d["sweep"], key=lambda r: (r["validation"], r["beta"]))["beta"]
    assert d["accuracy_pick"] == max(d["sweep"], key=lambda r: (r["heldout_accuracy"], r["beta"]))["beta"]
    assert result["keys"]["hopper-medium"].keys() == {"data", "baselines", "dpo_return"}
    assert set(result["versions"]["hopper-medium"]) == {"mujoco", "gymnasium", "torch", "numpy"}
    assert {(c["method"], c["baseline"]) for c in result["summary"]["hopper-medium"]["comparisons"]} >= {
        ("PFM", "DPO"), ("PFM", "best-of-2 (reward model)"), ("PFM", "Marginal BC (from scratch)")}
    md = (tmp_path / "out" / "control-rollout-quick.md").read_text()
    assert "Protocol `rollout`" in md and "PFM − simulated best-of-2" in md and "Segment test" in md
    assert "| Marginal BC (from scratch) | paper:" in md and "| hopper-medium | PFM − DPO |" in md
    assert "| DPO | DPO (beta by return) | Marginal BC" in md and "| hopper-medium | PFM − DPO (beta by return) |" in md
    # a second run reuses the cached cell
    assert main(args + ["--out", str(tmp_path / "out2")]) == 0
    again = json.loads((tmp_path / "out2" / "control-rollout-quick.json").read_text())
    assert again["cells"] == result["cells"]
    md2 = (tmp_path / "out2" / "control-rollout-quick.md").read_text()
    (tmp_path / "out2" / "control-rollout-quick.md").unlink()
    assert main(["reproduce", "control", "--quick", "--protocols", "rollout", "--report-only", "-q", "--out",
                 str(tmp_path / "out2")]) == 0
    assert (tmp_path / "out2" / "control-rollout-quick.md").read_text() == md2
    # a fresh machine (an empty data directory) takes the records of the results file it replaces, made from the
    # same data and configs, instead of computing them again ...
    monkeypatch.setenv("PFM_DATA_DIR", str(tmp_path / "fresh"))
    made_by = {"hopper-medium": {**result["versions"]["hopper-medium"], "mujoco": "another"}}
    (tmp_path / "out2" / "control-rollout-quick.json").write_text(json.dumps({**again, "versions": made_by}))
    assert main(args + ["--out", str(tmp_path / "out2")]) == 0
    taken = json.loads((tmp_path / "out2" / "control-rollout-quick.json").read_text())
    assert taken["cells"] == result["cells"] and taken["keys"] == result["keys"]
    assert taken["versions"] == made_by  # the versions its records were made with
    assert not list((tmp_path / "fresh").glob("control/rollout-*/**/seed-*.json"))
    # ... and runs only the part a record lacks
    stripped = {**taken, "cells": {"hopper-medium": [{k: v for k, v in cell.items() if k != "dpo_return"}]}}
    (tmp_path / "out2" / "control-rollout-quick.json").write_text(json.dumps(stripped))
    assert main(args + ["--out", str(tmp_path / "out2")]) == 0
    again = json.loads((tmp_path / "out2" / "control-rollout-quick.json").read_text())
    assert again["cells"]["hopper-medium"][0]["dpo_return"]["beta"] == d["beta"]
    made = list((tmp_path / "fresh").glob("control/rollout-*/**/seed-*.json"))
    assert [p.relative_to(tmp_path / "fresh").parts[1] for p in made] == ["rollout-dpo"]
    # a taken record whose pairs a part does not draw again (another machine's drift, here a tampered record):
    # its protocol cell runs again here (from the first data directory's cache), and its parts with it
    monkeypatch.setenv("PFM_DATA_DIR", str(tmp_path / "data"))
    tampered = {**cell, "pairs": {**cell["pairs"], "digest": "0" * 40}}
    tampered = {k: v for k, v in tampered.items() if k != "dpo_return"}
    (tmp_path / "out2" / "control-rollout-quick.json").write_text(
        json.dumps({**taken, "cells": {"hopper-medium": [tampered]}}))
    assert main(args + ["--out", str(tmp_path / "out2")]) == 0
    final = json.loads((tmp_path / "out2" / "control-rollout-quick.json").read_text())
    assert final["cells"]["hopper-medium"][0] == cell and final["versions"] == result["versions"]
    with pytest.raises(InvalidInputError, match="protocols"):
        from pfm_experiments.control.reproduce import reproduce

        reproduce(tmp_path / "out3", quick=True, protocols=["mpc"], progress=False)
    with pytest.raises(InvalidInputError, match="rollout_frequency applies to the 'rollout' protocol only"):
        reproduce(tmp_path / "out3", quick=True, protocols=["replan"], rollout_frequency=2, progress=False)
    with pytest.raises(InvalidInputError, match="rollout_frequency applies"):
        reproduce(tmp_path / "out3", quick=True, rollout_frequency=2, progress=False)
    assert not (tmp_path / "out3").exists()


def test_a_rollout_run_keeps_the_other_data_sets_of_an_earlier_run_with_its_config(tmp_path, caplog):
    from dataclasses import asdict, replace

    from pfm.errors import PFMError
    from pfm_experiments.control import rollout_protocol as R
    from pfm_experiments.control.rollout_run import _earlier_rollout, table_order

    cfg = R.RolloutConfig.quick_config()
    path = tmp_path / "control-rollout.json"
    assert _earlier_rollout(path, cfg).cells == {}  # no earlier file
    cells = {"walker2d-expert": [{"seed": 0}], "hopper-medium": [{"seed": 0}, {"seed": 1, "baselines": {}}]}
    sources = {"walker2d-expert": ["walker2d", "/d/w"], "hopper-medium": ["hopper", "/d/h"]}
    keys = {"hopper-medium": {"data": "d1", "baselines": "b1", "dpo_return": "r1"}}
    path.write_text(json.dumps({"config": asdict(cfg), "cells": cells, "sources": sources, "keys": keys}))
    earlier = _earlier_rollout(path, cfg)
    assert earlier.sources == {"walker2d-expert": ("walker2d", "/d/w"), "hopper-medium": ("hopper", "/d/h")}
    assert earlier.cells == cells and earlier.keys == keys
    # a record is taken when made from the same data and, for each part it carries, the same part config
    now = {"data": "d1", "baselines": "b1", "dpo_return": "r1"}
    assert earlier.reusable("hopper-medium", now) == {0: {"seed": 0}, 1: {"seed": 1, "baselines": {}}}
    assert earlier.reusable("hopper-medium", {**now, "dpo_return": "r2"}) == {0: {"seed": 0},
                                                                              1: {"seed": 1, "baselines": {}}}
    assert earlier.reusable("hopper-medium", {**now, "baselines": "b2"}) == {0: {"seed": 0}}
    assert earlier.reusable("hopper-medium", {**now, "data": "d2"}) == {}
    assert earlier.reusable("hopper-random", now) == {}
    # a data set with no recorded keys (from before results recorded them) is kept as rows, never reused
    assert earlier.reusable("walker2d-expert", now) == {}
    with caplog.at_level("WARNING", logger="pfm"):  # another config: not one table
        assert _earlier_rollout(path, replace(cfg, eval_episodes=3)).cells == {}
    assert "walker2d-expert, hopper-medium are not kept" in caplog.text
    path.write_text("{not json")
    with pytest.raises(PFMError):
        _earlier_rollout(path, cfg)
    path.write_text(json.dumps({"config": asdict(cfg)}))
    with pytest.raises(PFMError, match="not a rollout results file"):
        _earlier_rollout(path, cfg)
    path.write_text(json.dumps({"config": asdict(cfg), "cells": cells, "sources": {}}))
    with pytest.raises(PFMError, match="names no source for"):
        _earlier_rollout(path, cfg)
    # the table: by task, then kind; a user's Minari data set after ours
    order = table_order({"walker2d-expert": ("walker2d", "w"), "hopper-expert": ("hopper", "h"),
                          "hopper-mujoco/hopper/medium-v0": ("hopper", "m"), "hopper-random": ("hopper", "r"),
                          "halfcheetah-medium": ("halfcheetah", "c")})
    assert order == ["hopper-random", "hopper-expert", "halfcheetah-medium", "walker2d-expert",
                     "hopper-mujoco/hopper/medium-v0"]


def test_segment_likelihood_sums_the_step_policy_over_the_observations_its_actions_were_taken_in():
    import torch

    from pfm.policies import GaussianPolicy
    from pfm_experiments.control.rollout_baselines import BaselinesConfig, SegmentLikelihood, preferred_steps
    from pfm.data import PreferenceDataset

    torch.manual_seed(0)
    step = GaussianPolicy((2,), context_shape=(3,), hidden=8)
    with torch.no_grad():
        for p in step.parameters():
            p.add_(0.1 * torch.randn_like(p))  # a head that reads the observation
    seg = SegmentLikelihood(step, horizon=4, obs_dim=3)
    a, o = torch.randn(5, 4, 2), torch.randn(5, 4, 3)
    y = torch.cat([a.reshape(5, -1), o.reshape(5, -1)], 1)
    want = torch.stack([sum(step.log_prob(a[i, t:t + 1], o[i, t:t + 1])[0] for t in range(4)) for i in range(5)])
    assert torch.allclose(seg.log_prob(y), want, atol=1e-5)
    assert seg.output_shape == (20,)
    got_a, got_o = preferred_steps(PreferenceDataset(y, y.flip(0)), obs_dim=3, act_dim=2)
    assert torch.equal(got_a, a.reshape(20, 2)) and torch.equal(got_o, o.reshape(20, 3))
    with pytest.raises(InvalidInputError, match="best_of_n"):
        BaselinesConfig(best_of_n=(1,)).check()
    with pytest.raises(InvalidInputError, match="dpo_steps"):
        BaselinesConfig(dpo_steps=0).check()
    from pfm_experiments.control.rollout_dpo import DPOReturnConfig

    with pytest.raises(InvalidInputError, match="validation_episodes"):
        DPOReturnConfig(validation_episodes=0).check()
    with pytest.raises(InvalidInputError, match="betas"):
        DPOReturnConfig(betas=()).check()
    with pytest.raises(InvalidInputError, match="dpo_lr"):
        DPOReturnConfig(dpo_lr=0.0).check()


@pytest.mark.parametrize("flag", [["--behavior-noise", "0.3"], ["--no-rollout-baselines"], ["--tasks", "hopper"]])
def test_the_control_options_are_an_error_with_another_experiment(flag, tmp_path, capsys):
    from pfm.cli import main

    assert main(["reproduce", "toy2d", *flag, "--out", str(tmp_path / "o")]) == 2
    assert "apply to `pfm reproduce control` only" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_run_on_other_data_sets_keeps_the_earlier_rows_of_the_same_config(tmp_path, caplog):
    import json
    from dataclasses import asdict, replace

    from pfm_experiments.control import reproduce as CR
    from pfm_experiments.control.config import Config
    from pfm_experiments.control.rollout_run import table_order

    cfg = Config.quick_config()
    path = tmp_path / "control-quick.json"
    earlier = {"config": asdict(cfg), "sources": {"hopper-medium": ["hopper", "/d/h"], "ant-medium": ["ant", "/d/a"]},
               "cells": {"hopper-medium": [{"seed": 0}], "ant-medium": [{"seed": 0}]},
               "frame_strip": "Frame strip (`control-frames.png`): hopper-medium ..."}
    path.write_text(json.dumps(earlier))
    sources, cells, strip = CR._earlier_classic(path, cfg, {"ant-medium": ("ant", "/d/a2")})
    assert sources == {"hopper-medium": ("hopper", "/d/h")} and list(cells) == ["hopper-medium"]  # ant is re-run
    assert strip.startswith("Frame strip")
    other = replace(cfg, horizon=cfg.horizon + 1)
    assert CR._earlier_classic(path, other, {"ant-medium": ("ant", "/d/a2")}) == ({}, {}, None)
    assert "another config" in caplog.text
    path.write_text(json.dumps({"config": asdict(cfg), "cells": {"x": []}, "sources": {}}))
    with pytest.raises(InvalidInputError, match="not a control results file"):
        CR._earlier_classic(path, cfg, {})
    names = ["ant-expert", "hopper-medium", "walker2d-random", "ant-random", "hopper-random"]
    srcs = {n: (n.split("-")[0], "") for n in names}
    assert table_order(srcs) == ["hopper-random", "hopper-medium", "walker2d-random", "ant-random", "ant-expert"]


def test_merge_results_adds_the_rows_of_another_directory(tmp_path, monkeypatch):
    from dataclasses import asdict, replace

    from pfm_experiments.control import reproduce as CR
    from pfm_experiments.control.config import Config

    cfg = asdict(Config())
    written = {}
    monkeypatch.setattr(CR.report, "summarize", lambda cells: {"n": sorted(cells)})
    monkeypatch.setattr(CR, "write_report", lambda result, base: written.update(result=result, base=base))
    for d, name in (("a", "hopper-medium"), ("b", "walker2d-medium")):
        (tmp_path / d).mkdir()
        (tmp_path / d / "control.json").write_text(json.dumps(
            {"config": cfg, "sources": {name: [name.split("-")[0], "/x"]},
             "cells": {name: [{"seed": 0, "wall_seconds": 2.0}]}}))
    out = CR.merge_results(tmp_path / "a", [tmp_path / "b"])
    assert list(out["cells"]) == ["hopper-medium", "walker2d-medium"] and out["summary"] == {"n": list(out["cells"])}
    assert out["compute_seconds"] == 4.0 and written["base"] == tmp_path / "a" / "control"
    (tmp_path / "b" / "control.json").write_text(json.dumps(
        {"config": asdict(replace(Config(), horizon=3)), "sources": {}, "cells": {}}))
    with pytest.raises(InvalidInputError, match="another config"):
        CR.merge_results(tmp_path / "a", [tmp_path / "b"])
