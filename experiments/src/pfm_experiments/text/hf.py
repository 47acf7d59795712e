"""A user's own Hugging Face models, from local directories, in the text experiment's roles.

- :class:`HFCausalLM` is pi_ref: any causal language model (a GPT-2 checkpoint, ...) that continues prompts, scores
  continuations (perplexity) and is what RLHF fine-tunes a copy of. It has the interface of :class:`~.lm.TextLM`
  that :func:`~.rlhf.rlhf_lm` and the experiment use.
- :class:`HFClassifier` is the annotator: any sequence classifier (a DistilBERT sentiment model, ...) whose logits
  become one score per text, higher meaning preferred.

Nothing is downloaded: a path that is not a model directory is an error, and ``local_files_only`` is always set.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from pfm import validate as V
from pfm.errors import InvalidInputError
from pfm.text.encoder import check_texts
from pfm.text.lm import check_skip


def model_dir(path: str | Path, name: str) -> Path:
    """``path`` as a Hugging Face model directory (one with a ``config.json``), else an error naming ``name``."""
    if not isinstance(path, (str, Path)) or not str(path):
        raise InvalidInputError(f"{name} must be the path of a Hugging Face model directory, got {path!r}")
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise InvalidInputError(f"{name} {str(p)!r} is not a Hugging Face model directory (no config.json); "
                                "nothing is downloaded, so save the model there first (save_pretrained)")
    return p


class HFCausalLM:
    """pi_ref from a local Hugging Face causal LM directory (model and tokenizer).

    Sentences are ``[start] + tokens + [eos]`` where ``start`` is the tokenizer's BOS token (its EOS token when it
    has none, as GPT-2 does); a continuation ends at EOS or after ``max_new_tokens`` tokens.

    Args:
        path: the model directory.
        max_new_tokens: the longest continuation sampled (default 48 tokens).
        device: where the model runs (default cpu).
    """

    def __init__(self, path: str | Path, max_new_tokens: int = 48, device: str | torch.device = "cpu") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = model_dir(path, "reference")
        V.check_positive_int(max_new_tokens, "max_new_tokens")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(str(self.path), local_files_only=True).to(device).eval()
        tok = self.tokenizer
        if tok.eos_token_id is None:
            raise InvalidInputError(f"reference {str(self.path)!r}: its tokenizer has no EOS token, so a sentence "
                                    "cannot end")
        self.eos_id = int(tok.eos_token_id)
        self.start_id = int(tok.bos_token_id) if tok.bos_token_id is not None else self.eos_id
        self.pad_id = int(tok.pad_token_id) if tok.pad_token_id is not None else self.eos_id
        self.max_new_tokens = int(max_new_tokens)
        cfg = self.model.config
        self.max_positions = int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 0)
                                 or 1024)

    @property
    def module(self) -> torch.nn.Module:
        """The parameters RLHF trains."""
        return self.model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def clone(self) -> "HFCausalLM":
        """A copy with its own weights (the tokenizer is shared)."""
        out = copy.copy(self)
        out.model = copy.deepcopy(self.model)
        return out

    def prefix_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        return [self.tokenizer(p, add_special_tokens=False)["input_ids"] if p else [] for p in prompts]

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        return self.prefix_ids(check_texts(texts))

    def text(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return [s.strip() for s in self.tokenizer.batch_decode([list(i) for i in ids], skip_special_tokens=True)]

    def _fit(self, seq: list[int]) -> list[int]:
        return seq[:max(1, self.max_positions - 2)]

    @torch.no_grad()
    def sample_ids(self, prefixes: list[list[int]], temperature: float = 1.0,
                   generator: Optional[torch.Generator] = None) -> list[list[int]]:
        """Continue each prefix (``temperature == 0``: greedy; else plain sampling, no top-k or top-p, so that
        the samples follow the model's own distribution). Prefixes of one length are generated together (no
        padding, which not every model handles); returns the whole sequences without start and EOS tokens."""
        prefixes = [list(p)[:max(0, self.max_positions - 2)] for p in prefixes]  # room for start and one token
        out: list[Optional[list[int]]] = [None] * len(prefixes)
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(prefixes):
            by_len.setdefault(len(p), []).append(i)
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator).item()) if generator is not None else 0
        dev = self.device
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            for n, rows in sorted(by_len.items()):
                inp = torch.tensor([[self.start_id, *prefixes[i]] for i in rows], dtype=torch.long, device=dev)
                room = max(1, min(self.max_new_tokens, self.max_positions - inp.shape[1] - 1))
                kw: dict[str, Any] = {"do_sample": False} if temperature == 0 else \
                    {"do_sample": True, "temperature": float(temperature), "top_k": 0, "top_p": 1.0}
                gen = self.model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=room,
                                          eos_token_id=self.eos_id, pad_token_id=self.pad_id, **kw)
                for row, seq in zip(rows, gen[:, inp.shape[1]:].tolist()):
                    cut = seq.index(self.eos_id) if self.eos_id in seq else len(seq)
                    out[row] = list(prefixes[row]) + seq[:cut]
        return [o for o in out if o is not None]

    def generate(self, prompts: Sequence[str], cond: Optional[Tensor] = None, temperature: float = 1.0,
                 top_k: int = 0, seed: int = 0, batch_size: int = 64) -> list[str]:
        """Each prompt continued to a whole sentence (prompt included), reproducibly for one ``seed``."""
        prompts = check_texts(prompts, "prompts")
        if cond is not None:
            raise InvalidInputError("a Hugging Face reference takes no cond")
        if top_k:
            raise InvalidInputError("top_k is not supported for a Hugging Face reference (plain sampling only)")
        g = torch.Generator().manual_seed(seed)
        pre = self.prefix_ids(prompts)
        out: list[str] = []
        for s in range(0, len(pre), batch_size):
            out += self.text(self.sample_ids(pre[s:s + batch_size], temperature, g))
        return out

    def continuation_logprob(self, seqs: list[list[int]], skip: Sequence[int]) -> Tensor:
        """``log p(s[skip:] + EOS | start + s[:skip])`` of each sequence, differentiable: ``(B,)``."""
        check_skip(seqs, skip)
        dev = self.device
        seqs = [self._fit(list(s)) for s in seqs]
        width = max(len(s) for s in seqs) + 2
        full = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            full[i, :len(s) + 2] = torch.tensor([self.start_id, *s, self.eos_id])
            mask[i, :len(s) + 2] = 1
        full, mask = full.to(dev), mask.to(dev)
        logits = self.model(input_ids=full[:, :-1], attention_mask=mask[:, :-1]).logits.float()
        tgt = full[:, 1:]
        lp = torch.log_softmax(logits, -1).gather(-1, tgt[..., None]).squeeze(-1)
        pos = torch.arange(tgt.shape[1], device=dev)[None]
        counted = (mask[:, 1:] > 0) & (pos >= torch.as_tensor(list(skip), device=dev)[:, None])
        return (lp * counted).sum(1)

    def nll(self, texts: Sequence[str], prompts: Optional[Sequence[str]] = None,
            cond: Optional[Tensor] = None, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Summed NLL and token counts of ``texts`` (of the part after ``prompts``, when given; EOS counted)."""
        if cond is not None:
            raise InvalidInputError("a Hugging Face reference takes no cond")
        seqs = [self._fit(s) for s in self.ids(texts)]
        if prompts is not None and len(prompts) != len(seqs):
            raise InvalidInputError(f"prompts must have one entry per text ({len(seqs)}), got {len(prompts)}")
        skip = [0] * len(seqs) if prompts is None else [min(len(p), len(s)) for p, s in
                                                         zip(self.prefix_ids(prompts), seqs)]
        nll, count = np.zeros(len(seqs)), np.array([len(s) + 1 - k for s, k in zip(seqs, skip)], dtype=float)
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            for s in range(0, len(seqs), batch_size):
                nll[s:s + batch_size] = -self.continuation_logprob(seqs[s:s + batch_size],
                                                                   skip[s:s + batch_size]).cpu().numpy()
        self.model.train(was)
        return nll, count


class HFClassifier:
    """The annotator from a local Hugging Face sequence classifier: ``score(texts) -> (N,)``, higher = preferred.

    With one output the score is that logit; with two, the positive class's logit minus the other's (the positive
    class is the label named like ``positive``, else label 1); with K > 2 ordered classes (star ratings), the
    expected class index under the softmax minus ``(K - 1) / 2``.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", max_length: int = 128) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = model_dir(path, "annotator")
        V.check_positive_int(max_length, "max_length")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(str(self.path),
                                                                        local_files_only=True).to(device).eval()
        self.max_length = int(max_length)
        self.labels = int(self.model.config.num_labels)
        names = {int(k): str(v).lower() for k, v in (self.model.config.id2label or {}).items()}
        self.positive = next((k for k, v in names.items() if v.startswith("pos")), 1)
        if self.tokenizer.pad_token_id is None:  # GPT-2 style classifiers: pad with EOS, the model finds the end
            self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    @torch.inference_mode()
    def score(self, texts: Sequence[str], batch_size: int = 64) -> Tensor:
        """``texts`` (N strings) -> ``(N,)`` float32 scores on the CPU."""
        texts = check_texts(texts)
        dev = next(self.model.parameters()).device
        out = []
        for s in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[s:s + batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(dev)
            logits = self.model(**enc).logits.float()
            if self.labels == 1:
                out.append(logits[:, 0])
            elif self.labels == 2:
                out.append(logits[:, self.positive] - logits[:, 1 - self.positive])
            else:
                k = torch.arange(self.labels, device=dev, dtype=torch.float32)
                out.append(logits.softmax(-1) @ k - (self.labels - 1) / 2)
        return torch.cat(out).cpu()
