"""RLHF on the small language model: fine-tune a copy of pi_ref to maximize ``E[r(y, x)] - beta KL(pi || pi_ref)``
over whole sentences, ``r`` a reward model learned from the preference pairs.

The policy gradient is REINFORCE with a leave-one-out baseline (RLOO, as :func:`pfm.baselines.rlhf` for tensor
outputs): for each prompt, ``samples_per_prompt`` continuations are drawn from the current policy at temperature 1;
each one's return is ``r(y, x) - beta (log pi(y|x) - log pi_ref(y|x))`` (the sequence log-probabilities of the
continuation's tokens and its end, prompt tokens excluded), its baseline the mean return of the other samples of
its prompt. The reward is any callable on texts and is never differentiated.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from pfm import validate as V
from pfm.validate import check_beta
from pfm.errors import InvalidInputError, InvalidTypeError
from pfm.train import optimize
from pfm.text.encoder import check_texts
from pfm.text.lm import TextLM

Reward = Callable[[list[str], list[str]], Tensor]
"""``reward(texts, prompts) -> (n,)``: higher is better; ``prompts[i]`` is the prompt ``texts[i]`` continues."""


POLICY_METHODS = ("module", "clone", "prefix_ids", "sample_ids", "continuation_logprob", "text")
"""What :func:`rlhf_lm` needs of a language model: :class:`~.lm.TextLM` and :class:`~.hf.HFCausalLM` have it."""


def continuation_logprob(lm: Any, seqs: list[list[int]], skip: Sequence[int]) -> Tensor:
    """``log p(s[skip:] + EOS | s[:skip])`` of each token sequence under ``lm`` (a :class:`~.lm.TextLM` or
    :class:`~.hf.HFCausalLM`), differentiable: ``(B,)``."""
    return lm.continuation_logprob(seqs, skip)


def rlhf_lm(reference: Any, reward: Reward, prompts: Sequence[str], *, beta: float, steps: int = 200,
            prompts_per_step: int = 32, samples_per_prompt: int = 4, lr: float = 1e-4,
            grad_clip: float = 1.0, seed: int = 0, progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """KL-regularized REINFORCE (RLOO) of a copy of ``reference`` on ``reward``.

    Args:
        reference: pi_ref, an unconditional :class:`~.lm.TextLM` or a user's :class:`~.hf.HFCausalLM` (anything
            with the methods of :data:`POLICY_METHODS`); it is not modified.
        reward: ``reward(texts, prompts) -> (n,)``.
        prompts: the training prompts (M strings); each step draws ``prompts_per_step`` of them and
            ``samples_per_prompt`` continuations of each.
        beta: KL coefficient (> 0).

    Returns:
        ``(fine_tuned, history)``: the fine-tuned copy is of ``reference``'s class; the history holds per step the mean ``reward`` and ``kl`` (nats per sentence,
        the Monte Carlo estimate over the step's samples) and ``seconds``.
    """
    missing = [m for m in POLICY_METHODS if not hasattr(reference, m)]
    if missing:
        raise InvalidTypeError(f"reference must be a TextLM or HFCausalLM, got {type(reference).__name__} "
                               f"(it lacks {', '.join(missing)})")
    if isinstance(reference, TextLM) and reference.model.cfg.cond_dim:
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
    reference.module.eval()
    pi = reference.clone()
    prefix = reference.prefix_ids(prompts)

    def loss_fn(index: Tensor, gen: torch.Generator, model: torch.nn.Module):
        model.eval()  # no dropout: the sampled sequence and its log-probability come from the same policy
        rows = [int(i) for i in index.repeat_interleave(k)]
        seqs = pi.sample_ids([prefix[i] for i in rows], temperature=1.0, generator=gen)
        skip = [len(prefix[i]) for i in rows]
        logp = pi.continuation_logprob(seqs, skip)
        with torch.no_grad():
            ref_logp = reference.continuation_logprob(seqs, skip)
            r = torch.as_tensor(reward(pi.text(seqs), [prompts[i] for i in rows]), dtype=torch.float32)
            if r.shape != (len(rows),):
                raise InvalidInputError(f"reward(texts, prompts) must return ({len(rows)},), got {tuple(r.shape)}")
            if not bool(torch.isfinite(r).all()):
                raise InvalidInputError("reward(texts, prompts) returned NaN or infinite values")
            kl = logp.detach() - ref_logp
            ret = (r.to(logp) - beta * kl).reshape(-1, k)
            adv = (ret - (ret.sum(1, keepdim=True) - ret) / (k - 1)).reshape(-1)
        return -(adv * logp).mean(), {"reward": r.mean(), "kl": kl.mean()}

    history = optimize(pi.module, loss_fn, len(prompts), steps=steps, batch_size=min(prompts_per_step, len(prompts)),
                       lr=lr, grad_clip=grad_clip, seed=seed, progress=progress, desc=f"RLHF (beta={beta:g})",
                       sync_every=1)
    pi.module.eval()  # a non-finite KL or reward makes the loss non-finite, which optimize stops on
    return pi, {"beta": beta, "steps": history.steps, "seconds": history.seconds,
                "reward": history.extras.get("reward", []), "kl": history.extras.get("kl", [])}
