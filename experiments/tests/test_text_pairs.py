"""The text experiment's pairs (issue 29): pi_ref's samples ranked by the annotator, and the corpus's own sentences
paired as the released code pairs IMDB's reviews (scored for their own label, sorted within it, split at the
median, paired rank by rank)."""

import numpy as np
import pytest
import torch

from pfm.cli import main
from pfm.errors import PFMError
from pfm_experiments.text.corpus import Corpus
from pfm_experiments.text.pairs import corpus_pairs, make_pairs, own_label_median_pairs, sample_pairs


def test_the_median_pairing_pairs_rank_by_rank_within_each_label():
    scores = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 30.0, 20.0, 40.0])
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    chosen, rejected = own_label_median_pairs(scores, labels)
    # label 0 sorted: 1 (1), 3 (2), 2 (3), 4 (4), 0 (5); an odd count leaves its last (the top) out, as the
    # released code's range(len // 2) does: lower half 1, 3; upper half 2, 4; label 1: 5, 7 below 6, 8
    assert chosen.tolist() == [2, 4, 6, 8] and rejected.tolist() == [1, 3, 5, 7]
    assert (scores[chosen] > scores[rejected]).all()
    with pytest.raises(PFMError, match="scores and labels"):
        own_label_median_pairs(scores, labels[:3])
    assert own_label_median_pairs(np.zeros(0), np.zeros(0))[0].tolist() == []


def number(word):
    try:
        return float(word)
    except ValueError:
        return 0.0


def encode(texts):  # a stand-in codec: a sentence's "embedding" is its last word's number (or 0) and its length
    return torch.tensor([[number(t.split()[-1]), float(len(t))] for t in texts])


def test_corpus_pairs_prefer_the_more_extreme_sentence_of_its_own_label():
    ratings = np.array([-3.0, -1.0, -2.0, -0.5, 0.5, 1.0, 3.0, 2.0, 1.5, 2.5])
    texts = tuple(f"w1 w2 w3 w4 w5 {r}" for r in ratings)
    corpus = Corpus(texts + ("too short",), np.append(ratings, 9.0))
    for by in ("human", "annotator"):
        p = corpus_pairs(corpus, 4, by, encode, lambda txt, z: z[:, 0], n=100, seed=0)
        assert len(p) == 5 and p.info["n"] == 5 and p.info["by"] == by  # 4 non-positive: 2 pairs, 6 positive: 3
        got = {(float(c.split()[-1]), float(r.split()[-1])) for c, r in zip(p.chosen, p.rejected)}
        # within the non-positive label the more negative sentence is preferred, as the released code's
        # own-label logit ranks it; within the positive one the more positive
        assert got == {(-3.0, -1.0), (-2.0, -0.5), (2.0, 0.5), (2.5, 1.0), (3.0, 1.5)}
        assert p.prompts == ["w1 w2 w3 w4"] * 5  # the rejected sentence's first words
        assert torch.equal(p.z_chosen[:, 0], torch.tensor([float(c.split()[-1]) for c in p.chosen]))
        assert p.dataset().context is not None and p.dataset(conditional=False).context is None
        assert p.info["rank_gap"] > 0 and p.info["annotator_agrees"] == pytest.approx(3 / 5)
    few = corpus_pairs(corpus, 4, "human", encode, lambda txt, z: z[:, 0], n=2, seed=1)
    assert len(few) == 2 and set(zip(few.chosen, few.rejected)) <= set(zip(p.chosen, p.rejected))
    with pytest.raises(PFMError, match="human ratings"):
        corpus_pairs(Corpus(texts), 4, "human", encode, lambda txt, z: z[:, 0], n=10, seed=0)
    with pytest.raises(PFMError, match="'human' or 'annotator'"):
        corpus_pairs(corpus, 4, "crowd", encode, lambda txt, z: z[:, 0], n=10, seed=0)
    with pytest.raises(PFMError, match="pairs must be one of"):
        make_pairs("random", generate=None, encode=encode, score=None, prompts=[], corpus=corpus, words=4, n=1,
                   seed=0)


def test_sample_pairs_prefer_the_sample_the_annotator_scores_higher():
    def generate(prompts, seed):
        return [f"{p} {seed * (1 if i % 2 else -1)}" for i, p in enumerate(prompts)]
    p = sample_pairs(generate, encode, lambda txt, z: z[:, 0], ["a", "b", "c"], seed=1)
    # seeds 3 and 4: the even rows score -3 / -4 (the first preferred), the odd ones 3 / 4 (the second)
    assert p.chosen == ["a -3", "b 4", "c -3"] and p.rejected == ["a -4", "b 3", "c -4"]
    assert p.prompts == ["a", "b", "c"] and p.info == {"n": 3, "score_gap": pytest.approx(1.0)}
    assert p.z_prompts.shape == (3, 2)


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "text", "--pairs", "random"], "--pairs for text must be"),
    (["reproduce", "mnist", "--pairs", "corpus-human"], "--pairs for mnist must be"),
    (["reproduce", "toy2d", "--pairs", "samples"], "--pairs applies to `pfm reproduce mnist and text` only"),
])
def test_each_experiment_takes_its_own_pairs(argv, message, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_pair_signal_measures_the_shared_direction_and_the_gain_by_label():
    from pfm_experiments.text.pair_signal import displacement

    g = torch.Generator().manual_seed(0)
    rejected = torch.randn(400, 8, generator=g)
    up = torch.zeros(8)
    up[0] = 1.0
    # every pair moves the same way: all of the displacement is shared
    same = displacement(rejected + up, rejected)
    assert same["n"] == 400 and same["shared"] == pytest.approx(1.0)
    # positive pairs move up, negative ones down (the released code's pairs: the more extreme sentence of either
    # label): no shared direction, no mean gain, and the gain within each label has its sign
    labels = np.arange(400) % 2 == 0
    sign = torch.where(torch.as_tensor(labels), 1.0, -1.0)[:, None]
    head = lambda z: z[:, 0]  # noqa: E731 (a linear annotator reading the first coordinate)
    opposite = displacement(rejected + sign * up, rejected, head, labels)
    assert opposite["shared"] == pytest.approx(0.0, abs=1e-12) and opposite["gain"] == pytest.approx(0.0, abs=1e-6)
    assert opposite["gain_positive"] == pytest.approx(1.0) and opposite["gain_negative"] == pytest.approx(-1.0)
    assert opposite["share_positive"] == pytest.approx(0.5)
    # moves with no common direction: about 1 / N of it is shared by chance
    noise = displacement(rejected + torch.randn(400, 8, generator=g), rejected)
    assert noise["shared"] < 5 / 400
    with pytest.raises(PFMError, match="chosen and rejected"):
        displacement(rejected, rejected[:3])
    with pytest.raises(PFMError, match="labels must have shape"):
        displacement(rejected + up, rejected, head, labels[:3])


def test_pair_signal_command_checks_its_settings_before_any_work(tmp_path, capsys):
    from pfm_experiments.text.pair_signal import main as signal_main

    (tmp_path / "text-pair-signal.json").mkdir()  # a directory where the results file goes
    for argv, message in ((["--pairs", "nope"], "pairs must be one of"), (["--seeds", "0"], "seeds"),
                          ([], "is a directory")):
        assert signal_main([*argv, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err

