"""One request inside the engine: its tokens, cache bookkeeping, and streaming output state.

Handbook V (sampling, streaming) and VI (continuous batching). The token list is prompt + output;
`num_computed` of them have keys/values in the paged cache. A step computes tokens[num_computed:]
(or a chunk of them); when the chunk reaches the end, the last row's logits pick the next token.
That one rule covers prefill, chunked prefill, decode, and re-prefill after a recompute preemption.

Per-token output follows genlab.inference.generate exactly: an end id (engine stop ids or
params.stop_token_ids) ends with "stop" and is not reported; a stop string ends with "stop" and
cuts the text before it (held-back text is never retracted); max_tokens (clipped to the context)
gives "length"; bytes of an unfinished UTF-8 character are held until complete.

    python -m pytest -q tests/inference/test_engine.py
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from genlab.inference.detokenizer import IncrementalDetokenizer
from genlab.inference.sampling import SamplingParams, TokenLogprobs
from genlab.inference.stops import StopStringMatcher


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    max_new: int  # max_tokens clipped to the context window
    end_ids: frozenset[int]
    detok: IncrementalDetokenizer
    generator: torch.Generator | None = None
    decoder: object | None = None  # a ConstrainedDecoder when the request has a constraint
    prompt_logprobs_k: int | None = None
    arrival_time: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.tokens: list[int] = list(self.prompt_ids)  # prompt + output
        self.num_computed = 0
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []
        self.status = Status.WAITING
        self.matcher = StopStringMatcher(self.params.stop)
        self.finish_reason: str | None = None
        self.first_token_time: float | None = None
        self.finish_time: float | None = None
        self.prompt_logprobs: list[TokenLogprobs | None] | None = [None] if self.prompt_logprobs_k is not None else None
        self.prompt_logprobs_sent = False
        self.history = torch.tensor(self.prompt_ids, dtype=torch.long) if self.params.repetition_penalty != 1.0 else None

    # --- bookkeeping ---------------------------------------------------------------------------
    @property
    def num_prompt(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_output(self) -> int:
        return len(self.tokens) - len(self.prompt_ids)

    @property
    def num_uncomputed(self) -> int:
        return len(self.tokens) - self.num_computed

    @property
    def needs_prompt_logprobs(self) -> bool:
        """Still collecting prompt logprobs (only on the first pass over the prompt, not a re-prefill)."""
        return self.prompt_logprobs is not None and len(self.prompt_logprobs) < self.num_prompt

    def reset_for_recompute(self) -> None:
        """After preemption: nothing is cached any more; prompt + output will be prefilled again."""
        self.num_computed = 0
        self.status = Status.WAITING

    # --- output --------------------------------------------------------------------------------
    def accept_token(self, token: int) -> tuple[str, bool]:
        """Record a sampled token; return (final new text, finished). Sets finish_reason when done."""
        now = time.perf_counter()
        if self.first_token_time is None:
            self.first_token_time = now
        if token in self.end_ids:
            return self.finish("stop", now), True
        self.tokens.append(token)
        if self.history is not None:
            self.history = torch.cat([self.history, torch.tensor([token])])
        text, stopped = self.matcher.feed(self.detok.push(token))
        if stopped:
            return text + self.finish("stop", now), True
        if self.num_output >= self.max_new:
            return text + self.finish("length", now), True
        return text, False

    def finish(self, reason: str, now: float | None = None) -> str:
        """Mark finished; return the remaining held-back text (none for an abort)."""
        self.status = Status.FINISHED
        self.finish_reason = reason
        self.finish_time = now if now is not None else time.perf_counter()
        if reason == "abort":
            return ""
        tail = ""
        if not self.matcher.stopped:
            tail, stopped = self.matcher.feed(self.detok.flush())  # held bytes may complete a stop string
            if stopped:
                self.finish_reason = "stop"
            tail += self.matcher.flush()
        return tail
