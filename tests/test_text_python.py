"""The Python text path of docs/text-python.md: a Hugging Face datasets.Dataset (or JSONL) of TRL-style rows to
improved texts, on a tiny randomly initialised BERT (nothing is downloaded) and the toy language of
test_text_apply.py, where more "good" words are preferred."""

import numpy as np
import pytest

from test_text_apply import SENTENCES, goods, tiny_bert  # noqa: F401 (the fixture)

datasets = pytest.importorskip("datasets")


def test_from_a_dataset_to_improved_texts(tiny_bert, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("PFM_DATA_DIR", str(tmp_path / "pfm-data"))
    from pfm import PreferenceDataset, PreferenceFlow
    from pfm.text.apply import improve_texts
    from pfm.text.codec import load_codec
    from pfm.text.rows import TextRow

    rng = np.random.default_rng(0)
    rows = {"chosen": [], "rejected": []}
    while len(rows["chosen"]) < 300:
        a, b = rng.choice(SENTENCES, 2)
        if goods(a) != goods(b):
            rows["chosen"].append(a if goods(a) > goods(b) else b)
            rows["rejected"].append(b if goods(a) > goods(b) else a)
    codec = load_codec(str(tiny_bert))
    data = PreferenceDataset.from_text_pairs(datasets.Dataset.from_dict(rows), codec)
    assert len(data) == 300 and data.output_shape == (codec.dim,) and data.context is None
    flow = PreferenceFlow.for_dataset(data, hidden=64, depth=2)
    history = flow.fit(data, steps=600, batch_size=128, progress=False)
    assert history.held_out["pairs"] == 30
    worst = [s for s in SENTENCES if goods(s) == 0][0]
    out = improve_texts(flow, codec, [TextRow(text=worst, candidates=tuple(s for s in SENTENCES if s != worst))])
    assert out[0]["improved_by"] == "candidate" and goods(out[0]["improved"]) >= 2


def test_loading_an_encoder_shows_no_progress_bar_of_transformers(tiny_bert, capfd):  # noqa: F811
    from transformers.utils import logging as hf_logging

    from pfm.text.encoder import SentenceEncoder

    capfd.readouterr()
    SentenceEncoder(tiny_bert)
    err = capfd.readouterr().err
    assert "Loading" not in err and "%|" not in err, err
    assert hf_logging.is_progress_bar_enabled()  # restored for the user's own transformers calls
