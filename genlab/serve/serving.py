"""What both OpenAI endpoints share: the server state, sampling parameters, budgets, logprob formats, SSE.

Handbook VI (serving). `ServerState` holds the AsyncEngine, the tokenizer, the served model's name
and limits, request counters for /metrics, and the structured-output index builder (built off the
event loop, cached per pattern by genlab.inference.structured).

Context budget (a choice, as vLLM): a request whose prompt + max_tokens exceeds the model's
context is rejected with 400 rather than silently shortened; with max_tokens omitted, a reply may
fill the rest of the context.

    python -m pytest -q tests/serve/test_openai_api.py
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Sequence

from pydantic import BaseModel

from genlab.errors import GenlabError
from genlab.inference.detokenizer import IncrementalDetokenizer
from genlab.inference.sampling import SamplingParams
from genlab.serve.async_engine import AsyncEngine, EngineUnavailable, RequestStream
from genlab.serve.protocol import (APIError, ChoiceLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob)

if TYPE_CHECKING:
    from genlab.serve.engine_process import EngineProcess

log = logging.getLogger("genlab.serve")
MAX_SEQUENCES_PER_REQUEST = 64  # prompts x n


@dataclass
class ServerState:
    engine: AsyncEngine | EngineProcess  # the same interface
    tokenizer: Any
    model_name: str
    max_seq_len: int
    vocab_size: int
    api_key: str | None = None
    counters: Counter = field(default_factory=Counter)
    started_at: float = field(default_factory=time.monotonic)
    _vocabulary: Any = None
    _index_lock: threading.Lock = field(default_factory=threading.Lock)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:24]}"

    # --- model / budget -----------------------------------------------------------------------------
    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(404, f"The model `{name}` does not exist; this server serves `{self.model_name}`.",
                           param="model", code="model_not_found")

    def max_tokens_for(self, prompt_len: int, max_tokens: int | None, param: str, prompt_param: str) -> int:
        """The completion budget: `max_tokens` if it fits the context, else a 400 naming the numbers."""
        if prompt_len < 1:
            raise APIError(400, "The prompt is empty: give at least one token.", param=prompt_param)
        room = self.max_seq_len - prompt_len
        if room < 1:
            raise APIError(400, f"This model's maximum context length is {self.max_seq_len} tokens, but the prompt "
                           f"has {prompt_len} tokens: no room to generate. Shorten the prompt.",
                           param=prompt_param, code="context_length_exceeded")
        if max_tokens is None:
            return room
        if max_tokens > room:
            raise APIError(400, f"This model's maximum context length is {self.max_seq_len} tokens. However, you "
                           f"requested {prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} "
                           "for the completion). Reduce the prompt or the completion length.",
                           param=param, code="context_length_exceeded")
        return max_tokens

    def check_token_ids(self, ids: Sequence[int], param: str) -> list[int]:
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is outside the vocabulary [0, {self.vocab_size})", param=param)
        return list(ids)

    def render_chat(self, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
        """Token ids (and loss mask) of a conversation plus the assistant prompt; GenlabError if unusable."""
        from genlab.data.chat import render_chat

        return render_chat(messages, self.tokenizer, add_generation_prompt=True)

    # --- structured outputs ---------------------------------------------------------------------------
    async def index_for_regex(self, pattern: str, param: str):
        """The TokenIndex of a regex over this tokenizer (built in a worker thread, then cached)."""
        from genlab.inference.structured import Vocabulary, index_for_regex

        def build():
            with self._index_lock:  # the structured-output cache is not thread-safe
                if self._vocabulary is None:
                    self._vocabulary = Vocabulary.from_tokenizer(self.tokenizer)
                return index_for_regex(pattern, self._vocabulary)

        try:
            return await asyncio.to_thread(build)
        except GenlabError as e:
            raise APIError(400, f"unsupported structured output: {e}", param=param) from None

    async def index_for_schema(self, schema: Any, param: str):
        from genlab.inference.structured import schema_to_regex

        try:
            pattern = schema_to_regex(schema)
        except (GenlabError, RecursionError) as e:
            raise APIError(400, f"unsupported JSON schema for structured output: {e}", param=param) from None
        return await self.index_for_regex(pattern, param)

    # --- token text ---------------------------------------------------------------------------------------
    def token_bytes(self, token_id: int) -> bytes:
        try:
            return self.tokenizer.token_bytes(token_id)
        except GenlabError:
            return b""

    def token_text(self, token_id: int) -> str:
        """A token as text; bytes that are not whole UTF-8 characters appear as \\xNN (distinct keys)."""
        return self.token_bytes(token_id).decode("utf-8", errors="backslashreplace")

    # --- logprobs in OpenAI's two formats -------------------------------------------------------------------
    def chat_logprobs(self, entries: Sequence[Any]) -> ChoiceLogprobs:
        def top(token_id: int, logprob: float) -> TopLogprob:
            return TopLogprob(token=self.token_text(token_id), logprob=logprob, bytes=list(self.token_bytes(token_id)))

        return ChoiceLogprobs(content=[
            TokenLogprob(**top(e.token_id, e.logprob).model_dump(), top_logprobs=[top(i, lp) for i, lp in e.top])
            for e in entries])


def sampling_params(req, max_tokens: int, logprobs: int | None, seed: int | None) -> SamplingParams:
    try:
        return SamplingParams(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p,
                              repetition_penalty=req.repetition_penalty, max_tokens=max_tokens,
                              stop=list(req.stop or []), seed=seed, logprobs=logprobs)
    except GenlabError as e:
        raise APIError(400, str(e)) from None


def choice_seed(seed: int | None, i: int) -> int | None:
    """Choice i of a seeded request draws with seed + i: reproducible, yet the n choices differ."""
    return None if seed is None else seed + i


class OffsetTracker:
    """Character offsets of successive tokens in their decoded text (legacy `text_offset`)."""

    def __init__(self, token_bytes) -> None:
        self._detok = IncrementalDetokenizer(token_bytes)
        self.chars = 0

    def push(self, token_id: int) -> int:
        """The offset where `token_id` starts (counting only characters completed before it)."""
        offset = self.chars
        self.chars += len(self._detok.push(token_id))
        return offset


def completion_logprobs(state: ServerState, token_ids: Sequence[int], entries: Sequence[Any],
                        offsets: OffsetTracker, into: CompletionLogprobs | None = None) -> CompletionLogprobs:
    """Append tokens to a legacy logprobs object; entries[i] None (the first prompt token) -> null."""
    out = into or CompletionLogprobs()
    for token_id, entry in zip(token_ids, entries):
        out.text_offset.append(offsets.push(token_id))
        out.tokens.append(state.token_text(token_id))
        if entry is None:
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            continue
        out.token_logprobs.append(entry.logprob)
        top = {state.token_text(i): lp for i, lp in entry.top}
        top.setdefault(state.token_text(entry.token_id), entry.logprob)  # as vLLM: the chosen token is listed too
        out.top_logprobs.append(top)
    return out


# --- streams ------------------------------------------------------------------------------------------------
def sse(payload: BaseModel | dict) -> str:
    data = payload.model_dump_json(exclude_none=False) if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n"


SSE_DONE = "data: [DONE]\n\n"


async def submit(state: ServerState, requests) -> RequestStream:
    try:
        return await state.engine.submit(requests)
    except EngineUnavailable as e:
        raise APIError(503, str(e), type="server_error", code="engine_unavailable") from None
    except GenlabError as e:
        raise APIError(400, str(e)) from None


class ClientDisconnected(Exception):
    """The HTTP client went away before its reply was ready."""


async def collect(stream: RequestStream, request) -> list[Any]:
    """All outputs of a stream; if the HTTP client disconnects meanwhile, the stream is aborted.

    A watcher task waits on the ASGI `receive` channel, which (the body being read) yields only
    `http.disconnect`; so a disconnect costs nothing until it happens.
    """
    async def watch() -> None:
        while True:
            message = await request.receive()
            if message.get("type") == "http.disconnect":
                log.info("client disconnected; aborting %s", ",".join(sorted(stream.unfinished)))
                stream._put(ClientDisconnected())
                return

    watcher = asyncio.ensure_future(watch()) if request is not None else None
    try:
        return [output async for output in stream]
    except ClientDisconnected:
        raise APIError(499, "client disconnected") from None
    except EngineUnavailable as e:
        raise APIError(503, str(e), type="server_error", code="engine_unavailable") from None
    finally:
        if watcher is not None:
            watcher.cancel()
        stream.close()


async def guarded_sse(events: AsyncIterator[str], stream: RequestStream, on_close) -> AsyncIterator[str]:
    """SSE events; on a disconnect (task cancelled) or failure the stream's requests are aborted."""
    try:
        async for event in events:
            yield event
    except EngineUnavailable as e:
        yield sse(APIError(503, str(e), type="server_error", code="engine_unavailable").body())
        yield SSE_DONE
    finally:
        if stream.unfinished:
            log.info("stream closed early; aborting %s", ",".join(sorted(stream.unfinished)))
        stream.close()
        on_close()


def percentiles(values: Sequence[float], scale: float = 1000.0) -> dict[str, float | None]:
    """p50/p90/p99 (nearest-rank on the sorted values) times `scale` (seconds -> ms by default)."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * scale

    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "mean": sum(ordered) / len(ordered) * scale}
