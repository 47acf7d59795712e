"""Text in, text out: `pfm apply FLOW texts.jsonl` returns text (by the codec's decoder, or the nearest of the row's
candidates) and `pfm train-decoder` trains a codec's decoder on one's own corpus, on a tiny randomly initialised BERT
(nothing is downloaded) and a toy language where more "good" words are preferred."""

import itertools
import json

import numpy as np
import pytest
import torch

from pfm.cli import main
from pfm.errors import InvalidInputError
from pfm.text.rows import read_corpus_texts, read_text_rows

WORDS = ["good", "bad", "the", "film", "was", "and", "very", "plot"]
SLOTS = ["good", "bad"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A randomly initialised 2-layer BERT with a 13-word vocabulary, saved as a Hugging Face model directory."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    d = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})  # (vocab_file= is ignored by transformers 5)
    assert tok("the film")["input_ids"] == [2, 7, 8, 3]
    tok.save_pretrained(str(d))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(str(d))
    return d


def sentence(words):
    return "the film was " + " and ".join(words)


SENTENCES = [sentence(w) for w in itertools.product(SLOTS, repeat=4)]  # 16 sentences, 0..4 "good"


def goods(text):
    return text.split().count("good")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def toy(tiny_bert, tmp_path_factory):
    """A flow fitted with `pfm fit --codec` on pairs where the sentence with more "good" words is chosen, and a
    codec with a decoder trained on the toy corpus by `pfm train-decoder`."""
    d = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    rows = []
    while len(rows) < 400:
        a, b = rng.choice(SENTENCES, 2)
        if goods(a) != goods(b):
            rows.append({"chosen": a if goods(a) > goods(b) else b, "rejected": b if goods(a) > goods(b) else a})
    write_jsonl(d / "pairs.jsonl", rows)
    mp = pytest.MonkeyPatch()
    mp.setenv("PFM_DATA_DIR", str(d / "pfm-data"))
    try:
        assert main(["fit", str(d / "pairs.jsonl"), "--codec", str(tiny_bert), "--out", str(d / "flow"),
                     "--steps", "600", "--batch-size", "128", "--hidden", "64", "--depth", "2", "-q"]) == 0
        corpus = write_jsonl(d / "corpus.jsonl", [{"text": s} for s in SENTENCES * 32])
        assert main(["train-decoder", str(corpus), "--codec", str(tiny_bert), "--out", str(d / "codec"),
                     "--vocab", "300", "--dim", "16", "--hidden", "48", "--max-len", "32", "--epochs", "15",
                     "--patience", "15", "--lr", "1e-2", "--batch-size", "32", "--noise", "0.02", "-q"]) == 0
    finally:
        mp.undo()
    return d


def test_rows_are_read_and_checked(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "id": 7}, {"text": "b", "prompt": "p", "candidates": ["x"]}])
    rows = read_text_rows(p)
    assert [r.text for r in rows] == ["a", "b"] and rows[0].fields == {"text": "a", "id": 7}
    assert rows[1].prompt == "p" and rows[1].candidates == ("x",)
    (tmp_path / "c.txt").write_text("one\n\n two \n")
    assert read_corpus_texts(tmp_path / "c.txt") == ["one", "two"]
    with pytest.raises(InvalidInputError, match=r"row 1 \(line 1\): 'candidates'\[1\] must be a non-empty string"):
        read_text_rows(write_jsonl(tmp_path / "b.jsonl", [{"text": "a", "candidates": ["x", 3]}]))
    with pytest.raises(InvalidInputError, match="already has the field 'improved'"):
        read_text_rows(write_jsonl(tmp_path / "b.jsonl", [{"text": "a", "improved": "x"}]))
    with pytest.raises(InvalidInputError, match="must be a .jsonl file"):
        read_corpus_texts(tmp_path / "c.csv")


@pytest.mark.slow  # the toy flow and decoder: 6 s on a free core
def test_apply_returns_text_by_decoder_and_by_candidates(toy, tmp_path, capsys):
    """Both ways, one output per row, in order, each with how it was made and its cosine."""
    texts = ["the film was bad and bad and bad and bad", "the film was good and bad and bad and bad",
             "the film was bad and good and bad and bad"]
    rows = [{"text": t, "id": i, "candidates": SENTENCES[i:i + 5]} for i, t in enumerate(texts)]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert main(["apply", str(toy / "flow"), str(data), "--out", str(out), "--mode", "candidates"]) == 0
    assert "3 chosen among candidates" in capsys.readouterr().out
    got = read_jsonl(out)
    assert [r["id"] for r in got] == [0, 1, 2] and [r["text"] for r in got] == texts
    for r in got:
        assert r["improved_by"] == "candidate" and r["improved"] == r["candidates"][r["improved_index"]]
        assert -1 <= r["improved_cosine"] <= 1
    assert main(["apply", str(toy / "flow"), str(data), "--out", str(out), "--mode", "decoder",
                 "--codec", str(toy / "codec"), "--iterations", "2", "--solver-steps", "2"]) == 0
    got = read_jsonl(out)
    assert [r["id"] for r in got] == [0, 1, 2] and all(r["improved_by"] == "decoder" for r in got)
    assert all(isinstance(r["improved"], str) and r["improved"] and "improved_index" not in r for r in got)
    assert np.mean([r["improved_cosine"] for r in got]) > 0.5, got  # the decoder writes what the vector says
    half = [{"text": texts[0]}, {"text": texts[1], "candidates": SENTENCES[:3]}]  # auto: each row its own way
    assert main(["apply", str(toy / "flow"), str(write_jsonl(tmp_path / "h.jsonl", half)), "--out", str(out),
                 "--codec", str(toy / "codec"), "--strength", "0.5"]) == 0
    assert [r["improved_by"] for r in read_jsonl(out)] == ["decoder", "candidate"]


@pytest.mark.slow  # the toy flow and decoder: 6 s on a free core
def test_the_chosen_candidates_are_preferred(toy, tmp_path):
    """On the toy language, the candidate nearest the flowed vector has more "good" words than a random one."""
    rng = np.random.default_rng(1)
    rows = [{"text": str(rng.choice(SENTENCES)), "candidates": [str(s) for s in rng.choice(SENTENCES, 4)]}
            for _ in range(60)]
    out = tmp_path / "out.jsonl"
    assert main(["apply", str(toy / "flow"), str(write_jsonl(tmp_path / "in.jsonl", rows)), "--out", str(out)]) == 0
    got = read_jsonl(out)
    chosen = np.mean([goods(r["improved"]) for r in got])
    random = np.mean([np.mean([goods(c) for c in r["candidates"]]) for r in got])
    assert chosen > random + 0.5, (chosen, random)


@pytest.mark.slow  # the toy flow and decoder: 6 s on a free core
def test_train_decoder_records_its_reconstruction_and_fit_loads_it(toy, tmp_path, capsys):
    meta = json.loads((toy / "codec" / "codec.json").read_text())
    rec = meta["training"]["reconstruction"]
    assert meta["kind"] == "pfm-codec" and rec["sentences"] >= 2
    assert rec["cosine"] > rec["cosine_unrelated"], rec
    assert rec["usable"] is (rec["cosine"] - rec["cosine_unrelated"] >= 0.2)
    rows = [{"chosen": sentence(["good"] * 4), "rejected": sentence(["bad"] * 4)}] * 8
    pairs = write_jsonl(tmp_path / "p.jsonl", rows)
    assert main(["fit", str(pairs), "--codec", str(toy / "codec"), "--out", str(tmp_path / "f"), "--steps", "3",
                 "-q"]) == 0
    assert json.loads((tmp_path / "f" / "codec.json").read_text())["decoder"] is True
    data = write_jsonl(tmp_path / "in.jsonl", [{"text": sentence(["bad"] * 4)}])
    assert main(["apply", str(tmp_path / "f"), str(data), "--out", str(tmp_path / "o.jsonl")]) == 0
    assert read_jsonl(tmp_path / "o.jsonl")[0]["improved_by"] == "decoder"


def test_train_decoder_says_when_the_decoder_is_unusable(tiny_bert, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setenv("PFM_DATA_DIR", str(tmp_path / "pfm-data"))
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": s} for s in SENTENCES * 4])
    assert main(["train-decoder", str(corpus), "--codec", str(tiny_bert), "--out", str(tmp_path / "codec"),
                 "--vocab", "300", "--dim", "8", "--hidden", "16", "--max-len", "32", "--epochs", "1",
                 "--usable-margin", "1.9", "-q"]) == 0  # a margin no decoder reaches
    assert "UNUSABLE" in capsys.readouterr().out and "the decoder is unusable" in caplog.text
    rec = json.loads((tmp_path / "codec" / "codec.json").read_text())["training"]["reconstruction"]
    assert rec["usable"] is False


def _error(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pfm: error: "), err
    return err


@pytest.mark.slow  # the toy flow and decoder: 6 s on a free core
def test_bad_text_input_is_one_line_and_exit_2(toy, tiny_bert, tmp_path, capsys):
    flow = str(toy / "flow")
    out = tmp_path / "out.jsonl"

    def apply(rows, *extra, raw=None):
        data = tmp_path / "in.jsonl"
        if raw is not None:
            data.write_text(raw)
        else:
            write_jsonl(data, rows)
        return _error(["apply", flow, str(data), "--out", str(out), *extra], capsys)

    assert "row 2 (line 2) has no 'text' field" in apply([{"text": "a"}, {"txt": "b"}])
    assert "row 1 (line 1): 'candidates' must be a list of strings, got str" in apply([{"text": "a",
                                                                                        "candidates": "b"}])
    assert "in.jsonl holds no rows" in apply(None, raw="\n\n")
    assert "line 1 is not JSON" in apply(None, raw="{oops\n")
    assert "row 1 (line 1): 'text' must be a string, got int" in apply([{"text": 3}])
    err = apply([{"text": "the film was good", "candidates": ["a"]}, {"text": "b"}])
    assert "row 2 needs the decoder" in err and "pfm train-decoder" in err and "--codec DIR" in err
    assert "row 1 has no 'candidates'" in apply([{"text": "a"}], "--mode", "candidates")
    assert "--key and --context-key name arrays" in apply([{"text": "a"}], "--key", "y")
    assert "was trained on the vectors of" in apply([{"text": "a"}], "--codec", "minilm")
    assert "--out must end in .jsonl" in _error(["apply", flow, str(tmp_path / "in.jsonl"), "--out",
                                                 str(tmp_path / "o.npz")], capsys)
    assert not out.exists(), "a failed apply writes nothing"
    np.savez(tmp_path / "v.npz", chosen=np.ones((8, 16)), rejected=np.zeros((8, 16)), y=np.zeros((2, 16)))
    assert main(["fit", str(tmp_path / "v.npz"), "--out", str(tmp_path / "plain"), "--steps", "2", "-q"]) == 0
    assert "trained without a codec" in _error(["apply", str(tmp_path / "plain"), str(tmp_path / "in.jsonl"),
                                                "--out", str(out)], capsys)
    assert "--mode applies to text rows" in _error(["apply", str(tmp_path / "plain"), str(tmp_path / "v.npz"),
                                                    "--out", str(tmp_path / "o.npz"), "--mode", "decoder"], capsys)
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "a b"}] * 3)
    assert "at least 10 sentences" in _error(["train-decoder", str(corpus), "--codec", str(tiny_bert), "--out",
                                              str(tmp_path / "codec"), "-q"], capsys)
    with pytest.raises(SystemExit) as exit_:  # argparse's own checks exit from parse_args
        main(["train-decoder", str(corpus), "--codec", str(tiny_bert), "--out", str(tmp_path / "codec"),
              "--heldout", "1.5"])
    assert exit_.value.code == 2 and "--heldout: expected a number in (0, 1)" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert "holds no codec; refusing" in _error(["train-decoder", str(corpus), "--codec", str(tiny_bert), "--out",
                                                 str(tmp_path / "full")], capsys)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert "is the corpus" in _error(["train-decoder", str(corpus), "--codec", str(tiny_bert), "--out",
                                      str(corpus)], capsys)


def test_a_sentence_longer_than_the_encoders_positions_is_truncated_to_them(tiny_bert):
    """Issue 52: a row of 100 words against an encoder of 64 positions was `RuntimeError: The size of tensor a (105)
    must match the size of tensor b (64)`; the encoder keeps at most its positions' tokens (its max_length)."""
    from pfm.text.encoder import SentenceEncoder

    enc = SentenceEncoder(tiny_bert)
    assert enc.max_length == 64
    long = " ".join(itertools.islice(itertools.cycle(WORDS), 100))
    first = " ".join(enc.tokenizer.tokenize(long)[:62])  # the 62 words that fit beside [CLS] and [SEP]
    out = enc.encode([long, first])
    assert out.shape == (2, 16) and torch.isfinite(out).all()
    assert torch.allclose(out[0], out[1], atol=1e-5)  # the words past the positions are dropped, nothing else


@pytest.mark.slow  # the toy flow: 6 s on a free core
def test_report_on_text_rows_shows_each_text_before_and_after(toy, tmp_path, capsys, monkeypatch):
    """pfm report FLOW rows.jsonl: the vectors' summary (moved, out of range, what it was trained on) and each row's
    text before and after, as pfm apply returns it, from one solve (it solved twice: once for the texts, once for
    the summary)."""
    from pfm import PreferenceFlow
    from pfm.text.apply import improve_texts
    from pfm.cli.text import flow_codec_spec
    from pfm.text.codec import load_codec
    from pfm.text.rows import read_text_rows

    rows = [{"text": t, "candidates": SENTENCES[i:i + 4]} for i, t in enumerate(SENTENCES[:6])]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    solves, transform = [], PreferenceFlow.transform
    monkeypatch.setattr(PreferenceFlow, "transform", lambda self, *a, **k: solves.append(1) or transform(self, *a, **k))
    assert main(["report", str(toy / "flow"), str(data), "--out", str(tmp_path / "r")]) == 0
    assert len(solves) == 1
    flow = PreferenceFlow.load(toy / "flow")
    direct = improve_texts(flow, load_codec(flow_codec_spec(str(toy / "flow"))), read_text_rows(data), strength=1.0)
    assert "6 text rows of" in capsys.readouterr().out
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["n"] == 6 and rep["moved"] > 0 and rep["training"]
    assert [r["text"] for r in rep["texts"]] == SENTENCES[:6]
    assert [r["improved"] for r in rep["texts"]] == [r["improved"] for r in direct]
    assert all(r["improved"] in rows[i]["candidates"] and r["improved_by"] == "candidate"
               for i, r in enumerate(rep["texts"]))
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Texts, before and after (6 of 6" in md and f"| {SENTENCES[0]} |" in md
    assert "--judge scores arrays" in _error(["report", str(toy / "flow"), str(data), "--out", str(tmp_path / "j"),
                                              "--judge", "x:y"], capsys)
    assert not (tmp_path / "j").exists()
