"""Small language models trained here: the reference policy pi_ref (continues a prompt) and the codec's decoder
(writes a sentence from its embedding). Both are one class, :class:`ConditionalLM`: a GRU language model over a
byte-level BPE vocabulary trained on the corpus, optionally conditioned on a vector (the sentence embedding), which
sets the initial hidden state and is fed beside every token.

:class:`TextLM` bundles a model with its tokenizer: ``generate(prompts)`` continues prompts, ``nll(texts)`` scores
texts, ``save``/``load`` keep both in a directory (safetensors weights, the tokenizer's JSON, the configuration).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..io import atomic_dir
from ..train.threads import CheckedCalls, ThreadTuner, candidate_counts, same_on_counts, step_threads, timed_on
from ..errors import FileFormatError, InvalidInputError
from .encoder import check_texts

log = logging.getLogger("pfm")
PAD, BOS, EOS = 0, 1, 2
SPECIALS = ["<pad>", "<bos>", "<eos>"]


def train_tokenizer(texts: Sequence[str], vocab_size: int = 4000) -> Any:
    """A byte-level BPE tokenizer (``tokenizers``) trained on ``texts``: exact round trips, no unknown tokens."""
    from tokenizers import ByteLevelBPETokenizer

    texts = check_texts(texts)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS,
                            show_progress=False)
    return tok


@dataclass
class LMConfig:
    vocab_size: int
    dim: int = 256
    hidden: int = 512
    layers: int = 2
    cond_dim: int = 0
    dropout: float = 0.1
    max_len: int = 64


class ConditionalLM(nn.Module):
    """``p(w_t | w_<t, c)``: token ids ``(B, T)`` (and conditions ``(B, cond_dim)``) -> next-token logits
    ``(B, T, vocab)``. With ``cond_dim == 0`` it is a plain language model."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=PAD)
        c = cfg.cond_dim
        self.cond_in = nn.Linear(c, cfg.dim) if c else None
        self.cond_h0 = nn.Linear(c, cfg.layers * cfg.hidden) if c else None
        self.gru = nn.GRU(cfg.dim * (2 if c else 1), cfg.hidden, cfg.layers, batch_first=True,
                          dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden, cfg.vocab_size)
        self.thread_calls = CheckedCalls("sample")  # the intra-op count sampling's token steps run on

    def _check_cond(self, cond: Optional[Tensor], b: int) -> None:
        if self.cfg.cond_dim and (cond is None or cond.shape != (b, self.cfg.cond_dim)):
            got = None if cond is None else tuple(cond.shape)
            raise InvalidInputError(f"cond must have shape ({b}, {self.cfg.cond_dim}), got {got}")
        if not self.cfg.cond_dim and cond is not None:
            raise InvalidInputError("this language model takes no cond")

    def initial_state(self, cond: Optional[Tensor], b: int, device: torch.device) -> Tensor:
        if self.cond_h0 is None or cond is None:
            return torch.zeros(self.cfg.layers, b, self.cfg.hidden, device=device)
        return torch.tanh(self.cond_h0(cond)).view(b, self.cfg.layers, self.cfg.hidden).transpose(0, 1).contiguous()

    def _features(self, tokens: Tensor, cond: Optional[Tensor], h: Tensor) -> tuple[Tensor, Tensor]:
        x = self.drop(self.embed(tokens))
        if self.cond_in is not None and cond is not None:
            x = torch.cat([x, self.cond_in(cond)[:, None].expand(-1, x.shape[1], -1)], -1)
        y, h = self.gru(x, h)
        return self.drop(y), h

    def step(self, tokens: Tensor, cond: Optional[Tensor], h: Tensor) -> tuple[Tensor, Tensor]:
        """Run ``tokens (B, T)`` from state ``h``; returns logits ``(B, T, vocab)`` and the new state."""
        y, h = self._features(tokens, cond, h)
        return self.out(y), h

    def features(self, tokens: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """The states ``(B, T, hidden)`` from which :attr:`out` gives the next-token logits (so that a caller can
        project only the positions it needs)."""
        if tokens.dim() != 2:
            raise InvalidInputError(f"tokens must have shape (B, T), got {tuple(tokens.shape)}")
        self._check_cond(cond, tokens.shape[0])
        return self._features(tokens, cond, self.initial_state(cond, tokens.shape[0], tokens.device))[0]

    def forward(self, tokens: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        return self.out(self.features(tokens, cond))

    @torch.no_grad()
    def sample(self, prefixes: list[list[int]], cond: Optional[Tensor] = None, temperature: float = 1.0,
               top_k: int = 0, generator: Optional[torch.Generator] = None) -> list[list[int]]:
        """Continue each prefix (token ids, BOS not included) until EOS or ``max_len`` tokens; the prefix tokens are
        forced, the rest drawn (``temperature == 0``: greedy). Returns the whole sequences without BOS/EOS."""
        b = len(prefixes)
        self._check_cond(cond, b)
        device = self.out.weight.device
        h = self.initial_state(cond, b, device)
        tok = torch.full((b, 1), BOS, dtype=torch.long, device=device)
        width = max(1, max(len(p) for p in prefixes))
        forced = torch.full((b, width), -1, dtype=torch.long)
        for i, p in enumerate(prefixes):
            forced[i, :len(p)] = torch.as_tensor(p, dtype=torch.long)
        forced = forced.to(device)
        out = torch.full((b, self.cfg.max_len), EOS, dtype=torch.long, device=device)
        done = torch.zeros(b, dtype=torch.bool, device=device)

        def next_token(tok: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
            logits, h = self.step(tok, cond, h)
            logits = logits[:, -1].float()
            logits[:, PAD] = -math.inf
            logits[:, BOS] = -math.inf
            if temperature == 0:
                return logits.argmax(-1), h
            logits = logits / temperature
            if top_k:
                kth = logits.topk(top_k, -1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, -math.inf)
            # inverse CDF: torch.multinomial is ~10x slower on the CPU for a vocabulary this size
            cdf = logits.softmax(-1).cumsum(-1)
            u = torch.rand(b, 1, generator=generator, device=device) * cdf[:, -1:]
            return torch.searchsorted(cdf, u).squeeze(1).clamp_max(logits.shape[-1] - 1), h

        gens = () if generator is None else (generator,)
        # each token step on the fastest intra-op count once one showed the same result on 1 thread (CheckedCalls)
        with self.thread_calls.session(device) as run:
            for t in range(self.cfg.max_len):
                nxt, h = run(lambda: next_token(tok, h), per=b, key=b.bit_length(), generators=gens)
                if t < width:
                    nxt = torch.where(forced[:, t] >= 0, forced[:, t], nxt)
                nxt = nxt.masked_fill(done, EOS)
                out[:, t] = nxt
                done |= nxt == EOS
                if bool(done.all()):
                    break
                tok = nxt[:, None]
        lengths = (out != EOS).int().cumprod(1).sum(1).tolist()
        return [row[:n] for row, n in zip(out.tolist(), lengths)]


def check_skip(seqs: Sequence[Sequence[int]], skip: Sequence[int]) -> None:
    """``seqs`` non-empty with one ``skip`` (tokens left out at the start) per sequence, else a clear error."""
    if len(seqs) == 0:
        raise InvalidInputError("seqs is empty")
    if len(skip) != len(seqs):
        raise InvalidInputError(f"skip must have one entry per sequence ({len(seqs)}), got {len(skip)}")


def _batch(seqs: list[list[int]], max_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Input ``[BOS] + s`` and target ``s + [EOS]``, padded with PAD (ignored by the loss), each ``(B, T)``."""
    seqs = [s[:max_len - 1] for s in seqs]
    t = max(len(s) for s in seqs) + 1
    inp = torch.full((len(seqs), t), PAD, dtype=torch.long)
    tgt = torch.full((len(seqs), t), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        inp[i, :len(s) + 1] = torch.tensor([BOS, *s])
        tgt[i, :len(s) + 1] = torch.tensor([*s, EOS])
    return inp.to(device), tgt.to(device)


def sequence_nll(model: ConditionalLM, seqs: list[list[int]], cond: Optional[Tensor] = None,
                 skip: Optional[Sequence[int]] = None, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence: summed negative log-likelihood of its tokens and EOS, and how many were counted. ``skip[i]``
    leaves the first tokens out (a prompt's, when scoring a continuation)."""
    device = model.out.weight.device
    nll, count = np.zeros(len(seqs)), np.zeros(len(seqs))
    was = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(seqs), batch_size):
            part = seqs[s:s + batch_size]
            inp, tgt = _batch(part, model.cfg.max_len, device)
            c = None if cond is None else cond[s:s + batch_size].to(device)
            lp = torch.log_softmax(model(inp, c).float(), -1).gather(-1, tgt[..., None]).squeeze(-1)
            mask = tgt != PAD
            if skip is not None:
                pos = torch.arange(tgt.shape[1], device=device)[None]
                mask &= pos >= torch.as_tensor(skip[s:s + batch_size], device=device)[:, None]
            nll[s:s + len(part)] = (-(lp * mask).sum(1)).cpu().numpy()
            count[s:s + len(part)] = mask.sum(1).cpu().numpy()
    model.train(was)
    return nll, count


def fit_lm(model: ConditionalLM, seqs: list[list[int]], cond: Optional[Tensor] = None, epochs: int = 20,
           batch_size: int = 64, lr: float = 2e-3, val_fraction: float = 0.05, cond_noise: float = 0.0,
           patience: int = 3, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Train by next-token cross-entropy; keep the weights of the epoch with the lowest held-out loss (per token)
    and stop after ``patience`` epochs without improvement. ``cond_noise`` adds Gaussian noise of that std to the
    conditions while training (then renormalises them if they were unit vectors), so that a decoder also reads
    vectors a little off the encoder's manifold, such as a flow's outputs. On the CPU the steps run on the thread
    count a :class:`pfm.train.threads.ThreadTuner` measures fastest when the first batch's loss and gradients are
    bit-identical on 1 thread and on more (a GRU's were), else on :func:`pfm.train.threads.step_threads`' count
    (``threads`` in the result says which)."""
    from tqdm.auto import tqdm

    if not seqs:
        raise InvalidInputError("seqs is empty")
    if cond is not None and len(cond) != len(seqs):
        raise InvalidInputError(f"cond must have {len(seqs)} rows like seqs, got {len(cond)}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(seqs), generator=g).tolist()
    n_val = max(1, int(val_fraction * len(seqs)))
    val, train = perm[:n_val], perm[n_val:]
    unit = cond is not None and bool(torch.allclose(cond.norm(dim=1), torch.ones(len(cond)), atol=1e-3))
    device = model.out.weight.device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(len(train) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    best, best_state, history, bad = math.inf, None, [], 0
    params = [p for p in model.parameters() if p.requires_grad]
    rule = step_threads(params, batch_size, device)  # as pfm.optimize: then tuned, if the first batch allows
    tuner: Optional[ThreadTuner] = None
    check, step, outer = rule > 1 and device.type == "cpu", 0, torch.get_num_threads()
    if rule != outer:
        torch.set_num_threads(rule)
    start = time.perf_counter()
    bar = tqdm(total=steps, desc="train LM", disable=not progress, unit="step")
    for ep in range(epochs):
        model.train()
        order = [train[i] for i in torch.randperm(len(train), generator=g).tolist()]
        losses = []
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            inp, tgt = _batch([seqs[i] for i in idx], model.cfg.max_len, device)
            c = None
            if cond is not None:
                c = cond[idx].to(device)
                if cond_noise > 0:
                    c = c + cond_noise * torch.randn(c.shape, generator=g).to(device)
                    if unit:
                        c = nn.functional.normalize(c, dim=-1)

            def loss_of(inp: Tensor = inp, tgt: Tensor = tgt, c: Optional[Tensor] = c) -> Tensor:
                logits = model(inp, c)
                return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                                   ignore_index=PAD)

            if check:  # the first batch's loss and gradients on 1 thread and on the rule's: tune only if identical
                check = False
                if same_on_counts(lambda: [(lo := loss_of()), *torch.autograd.grad(lo, params)], rule):
                    tuner = ThreadTuner(candidate_counts(rule))

            def train_step(loss_of: Callable[[], Tensor] = loss_of) -> float:
                loss = loss_of()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                return loss.item()

            losses.append(train_step() if tuner is None else timed_on(tuner, step, train_step))
            step += 1
            bar.update(1)
        if torch.get_num_threads() != rule:
            torch.set_num_threads(rule)  # held-out loss on the rule's count, whatever the steps ran on
        nll, count = sequence_nll(model, [seqs[i] for i in val], None if cond is None else cond[val])
        val_loss = float(nll.sum() / count.sum())
        history.append({"epoch": ep + 1, "train_loss": float(np.mean(losses)), "val_loss": val_loss})
        bar.set_postfix(val=f"{val_loss:.3f}")
        if val_loss < best - 1e-4:
            best, bad = val_loss, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    bar.close()
    if torch.get_num_threads() != outer:
        torch.set_num_threads(outer)
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return {"history": history, "val_loss": best, "val_perplexity": math.exp(best),
            "seconds": time.perf_counter() - start, "epochs": len(history),
            "threads": list(tuner.decisions) if tuner is not None else [(0, rule, "rule")]}


class TextLM:
    """A :class:`ConditionalLM` with its tokenizer: text in, text out."""

    def __init__(self, model: ConditionalLM, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    @property
    def module(self) -> nn.Module:
        """The parameters RLHF trains."""
        return self.model

    def clone(self) -> "TextLM":
        """A copy with its own weights (the tokenizer is shared)."""
        return TextLM(copy.deepcopy(self.model), self.tokenizer)

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(check_texts(texts))]

    def prefix_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of each prompt (``""``: none)."""
        return [self.tokenizer.encode(p).ids if p else [] for p in prompts]

    def sample_ids(self, prefixes: list[list[int]], temperature: float = 1.0,
                   generator: Optional[torch.Generator] = None) -> list[list[int]]:
        """Unconditional :meth:`ConditionalLM.sample`, cut to what :meth:`continuation_logprob` scores."""
        return [s[:self.model.cfg.max_len - 1] for s in
                self.model.sample(prefixes, temperature=temperature, generator=generator)]

    def continuation_logprob(self, seqs: list[list[int]], skip: Sequence[int]) -> Tensor:
        """``log p(s[skip:] + EOS | s[:skip])`` of each token sequence ``s`` (ids without BOS/EOS), differentiable
        in the model's parameters: ``(B,)``. The model's mode is left as it is (call ``eval()`` for no dropout)."""
        check_skip(seqs, skip)
        model = self.model
        device = model.out.weight.device
        inp, tgt = _batch(seqs, model.cfg.max_len, device)
        pos = torch.arange(tgt.shape[1], device=device)[None]
        mask = (tgt != PAD) & (pos >= torch.as_tensor(list(skip), device=device)[:, None])
        # project only the counted positions onto the vocabulary (prompts and padding are most of the batch)
        logits = model.out(model.features(inp)[mask]).float()
        nll = nn.functional.cross_entropy(logits, tgt[mask], reduction="none")
        rows = torch.arange(len(seqs), device=device)[:, None].expand_as(mask)[mask]
        return torch.zeros(len(seqs), device=device, dtype=nll.dtype).index_add(0, rows, -nll)

    def text(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return [s.strip() for s in self.tokenizer.decode_batch([list(i) for i in ids])]

    def generate(self, prompts: Sequence[str], cond: Optional[Tensor] = None, temperature: float = 1.0,
                 top_k: int = 0, seed: int = 0, batch_size: int = 256) -> list[str]:
        """Each prompt continued to a whole sentence (prompt included); ``""`` prompts start from scratch."""
        prompts = list(prompts)
        if not prompts:
            raise InvalidInputError("prompts is empty")
        g = torch.Generator(device=self.model.out.weight.device).manual_seed(seed)
        pre = self.prefix_ids(prompts)
        out: list[str] = []
        for s in range(0, len(pre), batch_size):
            c = None if cond is None else cond[s:s + batch_size].to(self.model.out.weight.device)
            out += self.text(self.model.sample(pre[s:s + batch_size], c, temperature, top_k, g))
        return out

    def nll(self, texts: Sequence[str], prompts: Optional[Sequence[str]] = None,
            cond: Optional[Tensor] = None) -> tuple[np.ndarray, np.ndarray]:
        """Summed NLL and token counts of ``texts`` (of the part after ``prompts``, when given)."""
        seqs = self.ids(texts)
        skip = None if prompts is None else [len(p) for p in self.prefix_ids(prompts)]
        return sequence_nll(self.model, seqs, cond, skip)

    def save(self, directory: str | Path, extra: Optional[dict[str, Any]] = None) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(tmp / "weights.safetensors"))
            self.tokenizer.save(str(tmp / "tokenizer.json"))
            (tmp / "config.json").write_text(json.dumps({"kind": "pfm-text-lm", "lm": asdict(self.model.cfg),
                                                         **(extra or {})}, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "TextLM":
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        directory = Path(directory)
        cfg_path = directory / "config.json"
        if not cfg_path.is_file():
            raise FileFormatError(f"{str(directory)!r} holds no language model (no config.json)")
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("kind") != "pfm-text-lm":
            raise FileFormatError(f"{str(directory)!r} is not a pfm language model (kind {cfg.get('kind')!r})")
        model = ConditionalLM(LMConfig(**cfg["lm"]))
        model.load_state_dict(load_file(str(directory / "weights.safetensors")))
        return cls(model.to(device).eval(), Tokenizer.from_file(str(directory / "tokenizer.json")))
