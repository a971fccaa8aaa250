"""Streaming text generation over a model with a KV cache: sample, detokenize, stop.

Handbook V (sampling, decoding loop) and VI (KV caching). The prompt is prefilled in one forward
pass; each further step feeds only the newest token, the cache holding the keys/values of the rest.
Each step's token goes through the UTF-8-safe detokenizer and the stop-string matcher, so every
event's text is final (never retracted) and never holds a broken character.

Model interface (genlab.models.transformer): `model(idx [B, T], cache=cache) -> logits [B, T, V]`,
`model.new_cache(batch_size, max_len)` (the cache advances by itself on each forward) and
`model.config.max_seq_len`. One sequence at a time (batch size 1); put the model in eval mode
first (dropout), generation does not change it. A seeded run draws from its own torch.Generator
on the model's device, so it is reproducible and leaves the global RNG alone.

Context limit (a choice): if len(prompt) + max_tokens exceeds max_seq_len, max_tokens is clipped
to what fits and the generation ends with finish_reason "length" there, as a chat server would
rather return a shorter answer than fail; a prompt that leaves no room at all raises ConfigError.

End of generation: an eos id or one of params.stop_token_ids ends it with "stop"; that token is
not reported (no event, not in token_ids, no text). A stop string ends it with "stop" and its text
is cut before the stop string. Reaching max_tokens gives "length".

    python -m pytest -q tests/inference/test_generate.py
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Literal, Sequence

import torch

from genlab.errors import ConfigError
from genlab.inference.detokenizer import IncrementalDetokenizer
from genlab.inference.sampling import SamplingParams, TokenLogprobs, logprobs_of, sample_next
from genlab.inference.stops import StopStringMatcher

FinishReason = Literal["stop", "length"]


@dataclass
class GenerationEvent:
    """One streamed step: new final text and the token that produced it.

    The last event has token_id None, the remaining text (held-back bytes/stop-prefix) and a
    finish_reason; all earlier events have finish_reason None.
    """

    text: str
    token_id: int | None
    logprobs: TokenLogprobs | None = None
    finish_reason: FinishReason | None = None


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    logprobs: list[TokenLogprobs] | None = None
    prompt_tokens: int = 0
    events: list[GenerationEvent] = field(default_factory=list, repr=False)


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def length_groups(prompts: Sequence[Sequence[int]], batch_size: int, *,
                  shortest_first: bool = False) -> Iterator[list[int]]:
    """Indices of equal-length prompts (equal lengths batch without padding), at most `batch_size` at a time.

    Lengths come in order of first appearance, or shortest first; both orders are fixed by the prompts."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, prompt in enumerate(prompts):
        by_length[len(prompt)].append(index)
    for length in sorted(by_length) if shortest_first else by_length:
        indices = by_length[length]
        for start in range(0, len(indices), batch_size):
            yield indices[start:start + batch_size]


def clip_max_tokens(prompt_len: int, max_tokens: int, max_seq_len: int) -> int:
    """How many new tokens fit: prompt + output may fill the context window, no more."""
    if prompt_len < 1:
        raise ConfigError("prompt is empty: generation needs at least one prompt token (e.g. BOS)")
    room = max_seq_len - prompt_len
    if room < 1:
        raise ConfigError(f"prompt has {prompt_len} tokens but the model's max_seq_len is {max_seq_len}: "
                          "no room to generate; shorten the prompt")
    return min(max_tokens, room)


def generate_stream(model, prompt_ids: list[int], params: SamplingParams, token_bytes: Callable[[int], bytes],
                    eos_ids: Iterable[int] = frozenset()) -> Iterator[GenerationEvent]:
    """Yield one GenerationEvent per generated token, then a final event with finish_reason."""
    prompt = [int(t) for t in prompt_ids]
    vocab_size = getattr(model.config, "vocab_size", None)
    if vocab_size is not None and any(not 0 <= t < vocab_size for t in prompt):
        raise ConfigError(f"prompt holds token ids outside the model's vocabulary [0, {vocab_size})")
    max_new = clip_max_tokens(len(prompt), params.max_tokens, model.config.max_seq_len)
    end_ids = set(int(t) for t in eos_ids) | set(params.stop_token_ids)
    device = _device_of(model)
    generator = None
    if params.seed is not None and not params.greedy:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    detok = IncrementalDetokenizer(token_bytes)
    matcher = StopStringMatcher(params.stop)
    use_penalty = params.repetition_penalty != 1.0
    history = list(prompt)  # the repetition penalty looks at prompt and output, as in HF

    with torch.no_grad():  # per step, not around the yields: the consumer's code must not run in it
        cache = model.new_cache(1, len(prompt) + max_new)
        logits = model(torch.tensor([prompt], dtype=torch.long, device=device), cache=cache)[0, -1]
    n_generated = 0
    finish: FinishReason = "length"
    while True:
        prev = torch.tensor(history, dtype=torch.long, device=device) if use_penalty else None
        token = int(sample_next(logits, params, generator, prev))
        if token in end_ids:
            finish = "stop"
            break
        lp = logprobs_of(logits, token, params.logprobs) if params.logprobs is not None else None
        text, stopped = matcher.feed(detok.push(token))
        n_generated += 1
        history.append(token)
        yield GenerationEvent(text=text, token_id=token, logprobs=lp)
        if stopped:
            finish = "stop"
            break
        if n_generated >= max_new:
            break
        with torch.no_grad():
            logits = model(torch.tensor([[token]], dtype=torch.long, device=device), cache=cache)[0, -1]

    tail = ""
    if not matcher.stopped:
        tail, stopped = matcher.feed(detok.flush())  # held bytes may finish a stop string (rare)
        if stopped:
            finish = "stop"
        tail += matcher.flush()
    yield GenerationEvent(text=tail, token_id=None, finish_reason=finish)


def generate(model, prompt_ids: list[int], params: SamplingParams, token_bytes: Callable[[int], bytes],
             eos_ids: Iterable[int] = frozenset()) -> GenerationResult:
    """Run `generate_stream` to the end and gather its events."""
    events = list(generate_stream(model, prompt_ids, params, token_bytes, eos_ids))
    steps = [e for e in events if e.token_id is not None]
    return GenerationResult(
        text="".join(e.text for e in events),
        token_ids=[e.token_id for e in steps],
        finish_reason=events[-1].finish_reason,
        logprobs=[e.logprobs for e in steps] if params.logprobs is not None else None,
        prompt_tokens=len(prompt_ids),
        events=events,
    )
