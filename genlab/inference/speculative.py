"""Speculative decoding: a cheap drafter proposes k tokens, the target checks them in one forward.

Handbook VI (speculative decoding). Leviathan, Kalman & Matias 2023, "Fast Inference from
Transformers via Speculative Decoding"; Chen et al. 2023, "Accelerating Large Language Model
Decoding with Speculative Sampling"; Saxena 2023, "Prompt Lookup Decoding" (n-gram drafts).

One round: the drafter proposes x_1..x_n (a draft model sampling autoregressively from its own
distributions q_i, or prompt lookup, whose q_i is a point mass); the target runs ONE forward over
the uncached context plus the n drafts and so gets p_1..p_{n+1}. Draft i is accepted with
probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection the token is drawn from
normalize(max(0, p_i - q_i)) and the round ends; if all n pass, a bonus token is drawn from p_{n+1}.
Every emitted token is then distributed exactly as the target alone would draw it (for one
position, min(p, q) + max(0, p - q) = p), whatever the drafter: a bad drafter only costs speed.
For a point mass the rule reads: accept x with probability p(x), else draw from p with x removed.
p and q are the PROCESSED distributions (repetition penalty, temperature, top-k, top-p, min-p of
genlab.inference.sampling); greedy decoding makes both one-hot, so the rule becomes "accept while
the target's argmax agrees, then emit the target's argmax" and the output is token-for-token the
target's greedy output.

KV caches: target and draft each keep a preallocated genlab KVCache. Rejected drafts are rolled
back by lowering `cache.length` (Transformer.forward writes new keys at `length` and attends to
[:length + T]), so stale entries are simply overwritten. Each round feeds every committed token
the cache has not seen yet (the first round: the whole prompt, prefilled together with the drafts).

Stopping follows genlab.inference.generate: eos/stop_token_ids end with "stop" and are not
reported, stop strings (needs `token_bytes`) cut the text, max_tokens is clipped to the context.

    python -m pytest -q tests/inference/test_speculative.py
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from genlab.errors import ConfigError
from genlab.inference.detokenizer import IncrementalDetokenizer
from genlab.inference.generate import FinishReason, _device_of, clip_max_tokens
from genlab.inference.ngram_draft import NgramConfig, propose_ngram
from genlab.inference.sampling import (SamplingParams, TokenLogprobs, apply_repetition_penalty, logprobs_of,
                                       process_logits)
from genlab.inference.stops import StopStringMatcher


@dataclass
class SpeculativeResult:
    token_ids: list[int]
    text: str | None  # None when no token_bytes was given
    finish_reason: FinishReason
    accepted: int  # draft tokens the target accepted
    proposed: int  # draft tokens proposed
    target_forwards: int
    draft_forwards: int = 0
    prompt_tokens: int = 0
    logprobs: list[TokenLogprobs] | None = None  # the target's raw log-probabilities, as generate reports them

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_target_forward(self) -> float:
        return len(self.token_ids) / self.target_forwards if self.target_forwards else 0.0


# --- the acceptance rule (pure functions on probability vectors) -------------------------------------

def acceptance_probability(p: torch.Tensor, q: torch.Tensor | None, token: int) -> torch.Tensor:
    """min(1, p(x) / q(x)) for a draft x drawn from q; q None means a point mass at x (so: p(x))."""
    if q is None:
        return p[..., token].clamp(max=1.0)
    return (p[..., token] / q[..., token]).clamp(max=1.0)


def residual_distribution(p: torch.Tensor, q: torch.Tensor | None, token: int | None = None) -> torch.Tensor:
    """normalize(max(0, p - q)): where to draw from after rejecting a draft.

    q None: a point mass at `token`, so the residual is p with that token removed. If the residual
    is all zero (only possible through rounding when p == q) p itself is returned.
    """
    if q is None:
        residual = p.clone()
        residual[..., token] = 0.0
    else:
        residual = (p - q).clamp(min=0.0)
    total = residual.sum(-1, keepdim=True)
    return torch.where(total > 0, residual / total.clamp(min=torch.finfo(p.dtype).tiny), p)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> int:
    """One token from a probability vector [V] by inverse CDF (torch.multinomial costs ~0.25 ms at V=4096).

    A token with zero probability is never drawn: its cumulative sum equals its predecessor's.
    """
    cdf = probs.cumsum(-1)
    u = torch.rand(1, generator=generator, dtype=cdf.dtype, device=cdf.device) * cdf[-1]
    token = int(torch.searchsorted(cdf, u, right=True))
    if token >= probs.shape[-1]:  # u rounded up to the total: take the last token that has mass
        token = int(torch.nonzero(probs)[-1])
    return token


def verify_drafts(p: torch.Tensor, q: torch.Tensor | None, drafts: Sequence[int],
                  generator: torch.Generator | None = None) -> tuple[int, int]:
    """Leviathan/Chen verification of n drafts: (how many were accepted, the next token).

    p: target probabilities [n + 1, V] (row i scores position i; row n is the bonus position);
    q: draft probabilities [n, V], or None for point-mass drafts (prompt lookup).
    """
    n = len(drafts)
    assert p.shape[0] == n + 1 and (q is None or q.shape[0] == n), "need n+1 target rows and n draft rows"
    accepted = n
    if n:
        rows = torch.arange(n, device=p.device)
        ids = torch.as_tensor(list(drafts), dtype=torch.long, device=p.device)
        ratio = p[rows, ids] if q is None else p[rows, ids] / q[rows, ids]
        u = torch.rand(n, generator=generator, dtype=p.dtype, device=p.device)
        rejected = torch.nonzero(u >= ratio.clamp(max=1.0))  # u < ratio: accept; ratio 1 always passes
        if rejected.numel():
            accepted = int(rejected[0, 0])
    if accepted < n:
        dist = residual_distribution(p[accepted], None if q is None else q[accepted], int(drafts[accepted]))
    else:
        dist = p[n]
    return accepted, draw(dist, generator)


def verify_greedy(target_choices: Sequence[int], drafts: Sequence[int]) -> tuple[int, int]:
    """Greedy case of the rule (p, q one-hot): accept while the target's argmax agrees, then emit it."""
    accepted = 0
    while accepted < len(drafts) and drafts[accepted] == target_choices[accepted]:
        accepted += 1
    return accepted, int(target_choices[accepted])


# --- distributions of a block of positions -----------------------------------------------------------

def _penalised(logits: torch.Tensor, params: SamplingParams, histories: list[list[int]] | None) -> torch.Tensor:
    """Repetition penalty per row (each row has its own history: context + drafts before it)."""
    if params.repetition_penalty == 1.0 or histories is None:
        return logits
    return torch.stack([apply_repetition_penalty(row, torch.tensor(h, device=row.device), params.repetition_penalty)
                        for row, h in zip(logits, histories)])


def _row_histories(params: SamplingParams, context: list[int], drafts: list[int], rows: int) -> list[list[int]] | None:
    if params.repetition_penalty == 1.0:
        return None
    return [context + drafts[:j] for j in range(rows)]


def choose_greedy(logits: torch.Tensor, params: SamplingParams, histories: list[list[int]] | None) -> list[int]:
    """Argmax per row after the repetition penalty (lowest id wins a tie), as sample_next."""
    return _penalised(logits, params, histories).argmax(dim=-1).tolist()


def sampling_probs(logits: torch.Tensor, params: SamplingParams, histories: list[list[int]] | None) -> torch.Tensor:
    """The processed sampling distribution per row [m, V] (temperature > 0)."""
    x = _penalised(logits, params, histories)
    x = process_logits(x, params)  # no prev_ids: the penalty (per-row history) is already applied
    return torch.softmax(x.float() if x.dtype != torch.float64 else x, dim=-1)


# --- drafters ----------------------------------------------------------------------------------------

def _draft_with_model(draft, cache, context: list[int], n: int, params: SamplingParams,
                      generator: torch.Generator | None, device) -> tuple[list[int], torch.Tensor | None]:
    """n tokens drawn autoregressively from the draft model (its cache catches up on `context` first)."""
    drafts: list[int] = []
    q_rows: list[torch.Tensor] = []
    feed = context[cache.length:]
    for _ in range(n):
        logits = draft(torch.tensor([feed], dtype=torch.long, device=device), cache=cache)[0, -1:]
        histories = _row_histories(params, context + drafts, [], 1)
        if params.greedy:
            token = choose_greedy(logits, params, histories)[0]
        else:
            q = sampling_probs(logits, params, histories)[0]
            token = draw(q, generator)
            q_rows.append(q)
        drafts.append(token)
        feed = [token]
    return drafts, (torch.stack(q_rows) if q_rows else None)


# --- the decoding loop -------------------------------------------------------------------------------

def _check_drafter(target, draft, ngram, num_draft_tokens: int, needed_len: int) -> None:
    if (draft is None) == (ngram is None):
        raise ConfigError("speculative decoding needs exactly one drafter: draft=<model> or ngram=NgramConfig()")
    if num_draft_tokens < 1:
        raise ConfigError(f"num_draft_tokens={num_draft_tokens}: must be >= 1")
    if draft is not None:
        if draft.config.vocab_size != target.config.vocab_size:
            raise ConfigError(f"draft vocab_size {draft.config.vocab_size} != target vocab_size "
                              f"{target.config.vocab_size}: draft and target must share the tokenizer")
        if draft.config.max_seq_len < needed_len:
            raise ConfigError(f"draft max_seq_len {draft.config.max_seq_len} is shorter than prompt + max_tokens "
                              f"({needed_len})")


def speculative_generate(target, prompt_ids: Sequence[int], params: SamplingParams,
                         token_bytes: Callable[[int], bytes] | None = None, eos_ids: Iterable[int] = frozenset(), *,
                         draft=None, ngram: NgramConfig | None = None, num_draft_tokens: int = 4,
                         generator: torch.Generator | None = None) -> SpeculativeResult:
    """Generate from `target` with drafts from `draft` (a smaller model, same vocabulary) or `ngram`.

    The output follows the target's own sampling distribution (greedy: identical tokens to
    genlab.inference.generate.generate). `generator` (optional) overrides params.seed; without
    either, draws come from torch's global generator. Models must be in eval mode.
    """
    prompt = [int(t) for t in prompt_ids]
    vocab_size = target.config.vocab_size
    if any(not 0 <= t < vocab_size for t in prompt):
        raise ConfigError(f"prompt holds token ids outside the model's vocabulary [0, {vocab_size})")
    max_new = clip_max_tokens(len(prompt), params.max_tokens, target.config.max_seq_len)
    _check_drafter(target, draft, ngram, num_draft_tokens, len(prompt) + max_new)
    if params.stop and token_bytes is None:
        raise ConfigError("stop strings need token_bytes (to see the text)")
    device = _device_of(target)
    if generator is None and params.seed is not None and not params.greedy:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    end_ids = set(int(t) for t in eos_ids) | set(params.stop_token_ids)
    detok = IncrementalDetokenizer(token_bytes) if token_bytes is not None else None
    matcher = StopStringMatcher(params.stop)
    texts: list[str] = []
    logprobs: list[TokenLogprobs] | None = [] if params.logprobs is not None else None

    context = list(prompt)  # prompt + committed output
    output: list[int] = []
    accepted_total = proposed_total = target_forwards = draft_forwards = 0
    finish: FinishReason | None = None
    with torch.no_grad():
        target_cache = target.new_cache(1, len(prompt) + max_new)
        draft_cache = draft.new_cache(1, len(prompt) + max_new) if draft is not None else None
        while finish is None:
            # Each round emits at most n + 1 tokens, so never draft past max_tokens.
            n = min(num_draft_tokens, max_new - len(output) - 1)
            q = None
            if draft is not None:
                drafts, q = _draft_with_model(draft, draft_cache, context, n, params, generator, device)
                draft_forwards += n
            else:
                drafts = propose_ngram(context, n, ngram.max_ngram, ngram.min_ngram)
            feed = context[target_cache.length:] + drafts
            logits = target(torch.tensor([feed], dtype=torch.long, device=device), cache=target_cache)
            logits = logits[0, -(len(drafts) + 1):]
            target_forwards += 1
            histories = _row_histories(params, context, drafts, len(drafts) + 1)
            if params.greedy:
                accepted, token = verify_greedy(choose_greedy(logits, params, histories), drafts)
            else:
                p = sampling_probs(logits, params, histories)
                accepted, token = verify_drafts(p, q, drafts, generator)
            proposed_total += len(drafts)
            accepted_total += accepted
            # Roll back: keep the context and the accepted drafts; the new token is fed next round.
            target_cache.length = len(context) + accepted
            if draft_cache is not None:
                draft_cache.length = min(draft_cache.length, len(context) + accepted)

            for j, new in enumerate(drafts[:accepted] + [token]):
                if new in end_ids:
                    finish = "stop"
                    break
                output.append(new)
                context.append(new)
                if logprobs is not None:
                    logprobs.append(logprobs_of(logits[j], new, params.logprobs))
                if detok is not None:
                    text, stopped = matcher.feed(detok.push(new))
                    texts.append(text)
                    if stopped:
                        finish = "stop"
                        break
                if len(output) >= max_new:
                    finish = "length"
                    break

    if detok is not None and not matcher.stopped:
        tail, stopped = matcher.feed(detok.flush())  # held bytes may finish a stop string (rare)
        if stopped:
            finish = "stop"
        texts.append(tail + matcher.flush())
    return SpeculativeResult(
        token_ids=output, text="".join(texts) if detok is not None else None, finish_reason=finish,
        accepted=accepted_total, proposed=proposed_total, target_forwards=target_forwards,
        draft_forwards=draft_forwards, prompt_tokens=len(prompt), logprobs=logprobs,
    )
