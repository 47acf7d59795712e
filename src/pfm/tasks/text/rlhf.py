"""RLHF on the small language model: fine-tune a copy of pi_ref to maximize ``E[r(y, x)] - beta KL(pi || pi_ref)``
over whole sentences, ``r`` a reward model learned from the preference pairs.

The policy gradient is REINFORCE with a leave-one-out baseline (RLOO, as :func:`pfm.baselines.rlhf` for tensor
outputs): for each prompt, ``samples_per_prompt`` continuations are drawn from the current policy at temperature 1;
each one's return is ``r(y, x) - beta (log pi(y|x) - log pi_ref(y|x))`` (the sequence log-probabilities of the
continuation's tokens and its end, prompt tokens excluded), its baseline the mean return of the other samples of
its prompt. The reward is any callable on texts and is never differentiated.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ... import _validate as V
from ...baselines._common import check_beta
from ...errors import InvalidInputError, InvalidTypeError
from ...train import optimize
from .encoder import check_texts
from .lm import PAD, TextLM, _batch

Reward = Callable[[list[str], list[str]], Tensor]
"""``reward(texts, prompts) -> (n,)``: higher is better; ``prompts[i]`` is the prompt ``texts[i]`` continues."""


def continuation_logprob(lm: TextLM, seqs: list[list[int]], skip: Sequence[int]) -> Tensor:
    """``log p(s[skip:] + EOS | s[:skip])`` of each token sequence ``s`` (ids without BOS/EOS), differentiable in
    the model's parameters: ``(B,)``. The model's mode is left as it is (call ``eval()`` for no dropout)."""
    model = lm.model
    device = model.out.weight.device
    inp, tgt = _batch(seqs, model.cfg.max_len, device)
    pos = torch.arange(tgt.shape[1], device=device)[None]
    mask = (tgt != PAD) & (pos >= torch.as_tensor(list(skip), device=device)[:, None])
    # project only the counted positions onto the vocabulary (prompts and padding are most of the batch)
    logits = model.out(model.features(inp)[mask]).float()
    nll = torch.nn.functional.cross_entropy(logits, tgt[mask], reduction="none")
    rows = torch.arange(len(seqs), device=device)[:, None].expand_as(mask)[mask]
    return torch.zeros(len(seqs), device=device, dtype=nll.dtype).index_add(0, rows, -nll)


def rlhf_lm(reference: TextLM, reward: Reward, prompts: Sequence[str], *, beta: float, steps: int = 200,
            prompts_per_step: int = 32, samples_per_prompt: int = 4, lr: float = 1e-4,
            grad_clip: float = 1.0, seed: int = 0, progress: bool = True) -> tuple[TextLM, dict[str, Any]]:
    """KL-regularized REINFORCE (RLOO) of a copy of ``reference`` on ``reward``.

    Args:
        reference: pi_ref, an unconditional :class:`TextLM`; it is not modified.
        reward: ``reward(texts, prompts) -> (n,)``.
        prompts: the training prompts (M strings); each step draws ``prompts_per_step`` of them and
            ``samples_per_prompt`` continuations of each.
        beta: KL coefficient (> 0).

    Returns:
        ``(fine_tuned, history)``; the history holds per step the mean ``reward`` and ``kl`` (nats per sentence,
        the Monte Carlo estimate over the step's samples) and ``seconds``.
    """
    if not isinstance(reference, TextLM):
        raise InvalidTypeError(f"reference must be a TextLM, got {type(reference).__name__}")
    if reference.model.cfg.cond_dim:
        raise InvalidInputError("reference must be an unconditional language model (cond_dim == 0)")
    if not callable(reward):
        raise InvalidTypeError(f"reward must be callable as reward(texts, prompts), got {type(reward).__name__}")
    beta = check_beta(beta)
    prompts = check_texts(prompts, "prompts")
    V.check_positive_int(steps, "steps")
    V.check_positive_int(prompts_per_step, "prompts_per_step")
    V.check_positive_int(samples_per_prompt, "samples_per_prompt")
    if samples_per_prompt < 2:
        raise InvalidInputError("samples_per_prompt must be >= 2 (the leave-one-out baseline needs two samples)")
    k = int(samples_per_prompt)
    ref = reference.model.eval()
    pi = TextLM(copy.deepcopy(ref), reference.tokenizer)
    prefix = [reference.tokenizer.encode(p).ids if p else [] for p in prompts]

    def loss_fn(index: Tensor, gen: torch.Generator, model: torch.nn.Module):
        model.eval()  # no dropout: the sampled sequence and its log-probability come from the same policy
        rows = [int(i) for i in index.repeat_interleave(k)]
        seqs = pi.model.sample([prefix[i] for i in rows], temperature=1.0, generator=gen)
        seqs = [s[:pi.model.cfg.max_len - 1] for s in seqs]
        skip = [len(prefix[i]) for i in rows]
        logp = continuation_logprob(pi, seqs, skip)
        with torch.no_grad():
            ref_logp = continuation_logprob(reference, seqs, skip)
            r = torch.as_tensor(reward(pi.text(seqs), [prompts[i] for i in rows]), dtype=torch.float32)
            if r.shape != (len(rows),):
                raise InvalidInputError(f"reward(texts, prompts) must return ({len(rows)},), got {tuple(r.shape)}")
            if not bool(torch.isfinite(r).all()):
                raise InvalidInputError("reward(texts, prompts) returned NaN or infinite values")
            kl = logp.detach() - ref_logp
            ret = (r.to(logp) - beta * kl).reshape(-1, k)
            adv = (ret - (ret.sum(1, keepdim=True) - ret) / (k - 1)).reshape(-1)
        return -(adv * logp).mean(), {"reward": r.mean(), "kl": kl.mean()}

    history = optimize(pi.model, loss_fn, len(prompts), steps=steps, batch_size=min(prompts_per_step, len(prompts)),
                       lr=lr, grad_clip=grad_clip, seed=seed, progress=progress, desc=f"RLHF (beta={beta:g})",
                       sync_every=1)
    pi.model.eval()  # a non-finite KL or reward makes the loss non-finite, which optimize stops on
    return pi, {"beta": beta, "steps": history.steps, "seconds": history.seconds,
                "reward": history.extras.get("reward", []), "kl": history.extras.get("kl", [])}
