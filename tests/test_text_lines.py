"""The one reader of text rows and corpora (pfm.text.lines, issue 52): every bad line is one InvalidInputError
naming the file and the line, before Python's decoders or the tokenizer see it."""

import pytest

from pfm.errors import InvalidInputError
from pfm.text.pairs import read_text_pairs


@pytest.mark.parametrize("name, line, words", [
    ("invalid UTF-8", b'{"prompt": "a", "chosen": "b\xff", "rejected": "c"}', "not UTF-8 (byte 0xff"),
    ("100,000 nested arrays", b'{"prompt": "a", "chosen": ' + b"[" * 100_000 + b"]" * 100_000 + b', "rejected": "c"}',
     "nests 100001 arrays or objects deep"),
    ("a 5,000-digit integer", b'{"prompt": "a", "chosen": "b", "rejected": "c", "n": ' + b"9" * 5000 + b"}",
     "integer of more than 100 digits"),
    ("a lone surrogate in chosen", b'{"prompt": "a", "chosen": "b\\ud800", "rejected": "c"}', "unpaired surrogate"),
    ("a lone surrogate in an extra field", b'{"prompt": "a", "chosen": "b", "rejected": "c", "x": ["\\udc00"]}',
     "unpaired surrogate"),
    ("a 2 MB line", b'{"prompt": "' + b"a" * (2 << 20) + b'", "chosen": "b", "rejected": "c"}', "longer than 1,048,576"),
])
def test_a_bad_line_is_one_error_naming_the_file_and_line(tmp_path, name, line, words):
    """Issue 52: these reached Python's decoders raw (UnicodeDecodeError, RecursionError, ValueError,
    UnicodeEncodeError later, or gigabytes of memory); each is now an InvalidInputError naming the line, for every
    reader of text rows (pairs, rows to improve, corpora)."""
    from pfm.text.rows import read_corpus_texts, read_text_rows

    good = b'{"prompt": "a", "chosen": "b", "rejected": "c", "text": "d"}'
    (tmp_path / "rows.jsonl").write_bytes(good + b"\n" + line + b"\n")
    with pytest.raises(InvalidInputError, match="rows.jsonl line 2") as err:
        read_text_pairs(tmp_path / "rows.jsonl")
    assert words in str(err.value)
    for reader in (read_text_rows, read_corpus_texts):
        with pytest.raises(InvalidInputError, match="rows.jsonl line 2"):
            reader(tmp_path / "rows.jsonl")


def test_a_plain_text_corpus_with_a_line_that_is_not_utf8_names_it(tmp_path):
    from pfm.text.rows import read_corpus_texts

    (tmp_path / "corpus.txt").write_bytes("first sentence\nsecond \xe9t\xe9\n".encode("latin-1"))
    with pytest.raises(InvalidInputError, match=r"corpus.txt line 2 is not UTF-8 \(byte 0xe9 at offset 7\)"):
        read_corpus_texts(tmp_path / "corpus.txt")
    (tmp_path / "ok.txt").write_text("first sentence\r\n\r\nsecond one\n", encoding="utf-8")
    assert read_corpus_texts(tmp_path / "ok.txt") == ["first sentence", "second one"]


def test_codec_specs_are_checked_before_any_model_loads(tmp_path):
    """Issue 52: a codec.json that is not JSON or not an object, or a --codec naming a pfm flow, reached json and
    transformers raw (internal errors); each is now a PFMError naming the file or the spec."""
    from pfm import PreferenceFlow
    from pfm.errors import FileFormatError
    from pfm.text.codec import load_codec

    for name, text, words in [("notjson", "{nope", "is not valid JSON"),
                              ("alist", "[1, 2]", "is not a pfm codec (a JSON object with kind 'pfm-codec')"),
                              ("noenc", '{"kind": "pfm-codec"}', "names no encoder")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "codec.json").write_text(text)
        with pytest.raises(FileFormatError, match=f"{name}/codec.json' {words}".replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[")):
            load_codec(str(tmp_path / name))
    PreferenceFlow((2,), hidden=8, depth=1).save(tmp_path / "aflow")
    with pytest.raises(InvalidInputError, match="is a pfm flow, not a text encoder"):
        load_codec(str(tmp_path / "aflow"))


def test_fit_reads_every_file_before_the_codec_loads(tmp_path, monkeypatch, capsys):
    """A bad row of --validation text rows, or a --validation file of another format, failed only after the codec
    had loaded and every training row was encoded (seconds to minutes); every file is now read first."""
    import pfm.text.codec as codec
    from pfm.cli import main

    def no_model(*a, **k):
        raise AssertionError("the codec loaded before the files were read")

    monkeypatch.setattr(codec, "load_codec", no_model)
    good = b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
    (tmp_path / "train.jsonl").write_bytes(good * 3)
    (tmp_path / "val.jsonl").write_bytes(good + b'{"prompt": "a", "chosen": "b\xff", "rejected": "c"}\n')
    (tmp_path / "val.pt").write_bytes(b"")
    base = ["fit", str(tmp_path / "train.jsonl"), "--codec", "minilm", "--out", str(tmp_path / "f"), "-q"]
    assert main(base + ["--validation", str(tmp_path / "val.jsonl")]) == 2
    assert "val.jsonl line 2 is not UTF-8" in capsys.readouterr().err
    assert main(base + ["--validation", str(tmp_path / "val.pt")]) == 2
    assert "--codec applies to text preferences (.jsonl), not to" in capsys.readouterr().err


def test_texts_of_needs_one_way_and_vector_per_row():
    import torch

    from pfm.text.apply import texts_of
    from pfm.text.rows import TextRow

    class Codec:
        dim = 4

    rows = [TextRow(text="a", fields={"text": "a"}), TextRow(text="b", fields={"text": "b"})]
    with pytest.raises(InvalidInputError, match=r"for each of the 2 rows, got 2 ways, z \(2, 4\) and moved \(1, 4\)"):
        texts_of(Codec(), rows, ["decoder", "decoder"], torch.zeros(2, 4), torch.zeros(1, 4))
