"""A user's own Hugging Face models in the text experiment: a causal LM as pi_ref (generation, perplexity, RLHF on a
copy) and a sequence classifier as the annotator, each from a local directory the tests write."""

import numpy as np
import pytest
import torch

from pfm.cli import main
from pfm.errors import InvalidInputError, InvalidTypeError
from pfm_experiments.text.hf import HFCausalLM, HFClassifier
from pfm_experiments.text.rlhf import continuation_logprob, rlhf_lm

GOOD, BAD = ["good", "great", "fun"], ["bad", "awful", "dull"]


def _sentences(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return [f"the {rng.choice(['movie', 'film', 'plot'])} was {rng.choice(GOOD if rng.random() < 0.5 else BAD)}"
            for _ in range(n)]


def _fast_tokenizer(texts):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, min_frequency=1, special_tokens=["<pad>", "<bos>", "<eos>"],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>")


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A 1-layer GPT-2 trained for a few seconds on "the movie was good/bad" sentences, saved with its tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path_factory.mktemp("tiny-gpt2")
    texts = _sentences()
    tok = _fast_tokenizer(texts)
    tok.save_pretrained(str(d))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=1, n_head=2,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.pad_token_id))
    model.save_pretrained(str(d))
    lm = HFCausalLM(d)
    lm.model.train()
    opt = torch.optim.Adam(lm.model.parameters(), lr=3e-3)
    seqs = lm.ids(texts)
    for step in range(150):
        idx = np.random.default_rng(step).choice(len(seqs), 32)
        loss = -continuation_logprob(lm, [seqs[i] for i in idx], [0] * 32).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    lm.model.eval().save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A 1-layer BERT sentiment classifier (NEGATIVE/POSITIVE) on a word vocabulary, saved with its tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    d = tmp_path_factory.mktemp("tiny-classifier")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "film", "plot", "was", *GOOD, *BAD]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(d / "vocab.txt")).save_pretrained(str(d))
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                                             num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"},
                                             label2id={"NEGATIVE": 0, "POSITIVE": 1})).save_pretrained(str(d))
    return d


def test_a_sentence_longer_than_the_encoders_positions_is_truncated_to_them(tiny_classifier):
    """Issue 52: a row of 100 words against an encoder of 64 positions was RuntimeError (tensor 105 vs 64)."""
    from pfm.text.encoder import SentenceEncoder

    enc = SentenceEncoder(tiny_classifier, max_length=256)
    assert enc.max_length == 64
    out = enc.encode([" ".join(["the movie was good"] * 25), "bad plot"])
    assert out.shape == (2, 16) and torch.isfinite(out).all()


@pytest.mark.slow
def test_hugging_face_reference_generates_scores_and_is_consistent(tiny_gpt2):
    lm = HFCausalLM(tiny_gpt2, max_new_tokens=8)
    prompts = ["the movie", "the plot was", "the film was", ""]
    a, b = lm.generate(prompts, seed=3), lm.generate(prompts, seed=3)
    assert a == b and len(a) == 4 and all(t.startswith(p) for t, p in zip(a, prompts))
    assert lm.generate(prompts * 5, seed=4) != lm.generate(prompts * 5, seed=5)
    # it learned the sentences: most greedy continuations of "the movie was" are one of the six words
    words = [t.split()[-1] for t in lm.generate(["the movie was"] * 20, seed=0)]
    assert sum(w in GOOD + BAD for w in words) >= 15, words
    # perplexity's NLL and RLHF's log-probability are the same quantity
    texts = ["the film was good", "the plot was dull"]
    nll, count = lm.nll(texts, prompts=["the film", "the plot"])
    skip = [len(p) for p in lm.prefix_ids(["the film", "the plot"])]
    with torch.no_grad():
        lp = continuation_logprob(lm, lm.ids(texts), skip)
    assert np.allclose(-lp.numpy(), nll, atol=1e-4)
    assert list(count) == [len(s) + 1 - k for s, k in zip(lm.ids(texts), skip)]
    full, _ = lm.nll(texts)
    assert (full > nll).all()  # the whole sentence is less likely than its continuation alone
    with pytest.raises(InvalidInputError, match="skip must have one entry per sequence"):
        lm.continuation_logprob(lm.ids(texts), [0])
    with pytest.raises(InvalidInputError, match="takes no cond"):
        lm.generate(["the"], cond=torch.zeros(1, 2))
    with pytest.raises(InvalidInputError, match="one string"):
        lm.generate("the movie")
    with pytest.raises(InvalidInputError, match="not a Hugging Face model directory"):
        HFCausalLM(tiny_gpt2 / "nowhere")


@pytest.mark.slow
def test_rlhf_fine_tunes_a_copy_of_a_hugging_face_reference(tiny_gpt2):
    lm = HFCausalLM(tiny_gpt2, max_new_tokens=6)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}

    def reward(ts, ps):
        return torch.tensor([1.0 if t.split()[-1] in GOOD else -1.0 for t in ts])

    prompts = ["the movie was", "the plot was", "the film was"]
    good = lambda m: reward(m.generate(prompts * 20, seed=5), None).mean().item()  # noqa: E731
    tuned, hist = rlhf_lm(lm, reward, prompts, beta=0.05, steps=25, prompts_per_step=3, samples_per_prompt=8,
                          lr=1e-2, progress=False)
    assert good(tuned) > good(lm) + 0.4, (good(lm), good(tuned))
    assert len(hist["kl"]) == 25 and np.isfinite(hist["kl"]).all()
    assert all(torch.equal(v, lm.model.state_dict()[k]) for k, v in before.items())  # pi_ref untouched
    with pytest.raises(InvalidTypeError, match="TextLM or HFCausalLM"):
        rlhf_lm(object(), reward, prompts, beta=0.1)


def test_hugging_face_annotator_scores_by_its_labels(tiny_classifier):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    ann = HFClassifier(tiny_classifier)
    texts = ["the movie was good", "the plot was dull", "the film was"]
    s = ann.score(texts)
    tok = AutoTokenizer.from_pretrained(str(tiny_classifier))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_classifier)).eval()
    with torch.no_grad():
        logits = model(**tok(texts, padding=True, return_tensors="pt")).logits
    assert s.shape == (3,) and torch.allclose(s, logits[:, 1] - logits[:, 0], atol=1e-5)
    assert torch.allclose(ann.score(texts[:1]), s[:1], atol=1e-5)  # padding does not change a score
    with pytest.raises(InvalidInputError, match="texts is empty"):
        ann.score([])
    with pytest.raises(InvalidInputError, match="annotator .* not a Hugging Face model directory"):
        HFClassifier(tiny_classifier / "nowhere")


@pytest.mark.integration
@pytest.mark.slow
def test_text_experiment_runs_on_a_users_models(tiny_gpt2, tiny_classifier):
    """pi_ref and the annotator from Hugging Face directories through the whole pipeline (pairs, flow, RLHF on a
    copy of the user's LM, decoding, metrics), on a tiny configuration."""
    from pfm_experiments.text.experiment import Config, codec_quality, pretrained, run_key, run_one

    cfg = Config(sentences=300, vocab=300, lm_dim=16, lm_hidden=32, decoder_epochs=1, n_pairs=24, flow_steps=20,
                 flow_hidden=32, eval_prompts=4, reward_steps=10, betas=(0.1,), rlhf_steps=2, rlhf_prompts=4,
                 validation_prompts=4, candidates=1, iterations=2, best_of_n=(2,), seeds=(0,),
                 reference=str(tiny_gpt2),
                 annotator=str(tiny_classifier), quick=True)
    assert run_key(cfg) != run_key(Config(**{**cfg.__dict__, "annotator": None}))
    models = pretrained(cfg, progress=False)
    assert isinstance(models.reference, HFCausalLM) and isinstance(models.annotator, HFClassifier)
    assert -1 <= models.info["user_annotator"]["pearson"] <= 1
    rec = run_one(cfg, models, seed=0)
    for name, m in rec["methods"].items():
        assert np.isfinite(m["score"]) and np.isfinite(m["perplexity"]) and "score_of_vector" not in m, name
    assert all(ex["PFM"].startswith(ex["prompt"]) for ex in rec["examples"])
    assert {"best-of-2 (annotator)", "best-of-2 (reward model)", "PFM-select (n = 2)"} <= set(rec["methods"])
    assert rec["costs"]["best-of-2 (annotator)"]["reference_calls"] == 2  # the user's classifier scored them
    assert rec["rlhf"]["beta"] == 0.1
    q = codec_quality(models, cfg, n=8)
    assert -1 <= q["cosine_greedy"] <= 1


def test_cli_names_bad_user_model_paths(tmp_path, capsys):
    assert main(["reproduce", "toy2d", "--quick", "--reference", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "apply to `pfm reproduce text` only" in capsys.readouterr().err
    assert main(["reproduce", "text", "--quick", "--annotator", str(tmp_path), "--out", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err
    assert "annotator" in err and "not a Hugging Face model directory" in err
