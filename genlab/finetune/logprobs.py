"""Sequence log-probabilities over completion tokens only: the input of every preference and RL loss.

Handbook IV (reward models and RLHF, direct preference optimization). Rafailov et al. 2023 (DPO uses the sum
over completion tokens), Meng et al. 2024 / Hong et al. 2024 (SimPO / ORPO use the average).
Token t is scored by the logits at position t−1 (next-token prediction); prompt and padding are masked out.

    python -m pytest -q tests/finetune/test_preference.py -k logprob
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genlab.errors import GenlabError

Tensor = torch.Tensor


@dataclass
class SequenceLogprobs:
    summed: Tensor  # [B] sum of log p over completion tokens
    averaged: Tensor  # [B] summed / n_tokens
    n_tokens: Tensor  # [B] number of completion tokens (float)
    per_token: Tensor  # [B, T-1] log p(token t | < t) at index t-1, zero where masked


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """[B, T-1]: log p(tokens[:, t] | tokens[:, :t]) for t = 1..T-1, from logits [B, T, V] (fp32 softmax)."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)


def sequence_logprobs(model, tokens: Tensor, completion_mask: Tensor, **model_kwargs) -> SequenceLogprobs:
    """Completion log-probabilities of `tokens` [B, T] under `model` (`model(idx) -> logits [B, T, V]`).

    completion_mask [B, T]: 1 where the token belongs to the completion (scored), 0 for prompt and padding.
    The first token can never be scored (nothing predicts it), so completion_mask[:, 0] must be 0.
    """
    if tokens.shape != completion_mask.shape:
        raise GenlabError(f"tokens {tuple(tokens.shape)} and completion_mask {tuple(completion_mask.shape)} differ")
    if bool(completion_mask[:, 0].any()):
        raise GenlabError("completion_mask marks position 0, which no logit predicts; start the completion later")
    logits = model(tokens, **model_kwargs)
    return logprobs_from_logits(logits, tokens, completion_mask)


def logprobs_from_logits(logits: Tensor, tokens: Tensor, completion_mask: Tensor) -> SequenceLogprobs:
    """As sequence_logprobs, for logits already computed (e.g. one forward for policy and value heads)."""
    mask = completion_mask[:, 1:].to(torch.float32)
    per_token = token_logprobs(logits, tokens) * mask
    n_tokens = mask.sum(-1)
    summed = per_token.sum(-1)
    return SequenceLogprobs(summed, summed / n_tokens.clamp(min=1), n_tokens, per_token)
