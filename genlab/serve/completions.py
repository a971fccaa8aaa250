"""POST /v1/completions: prompts as text or token ids, n choices, stop, seed, logprobs, echo, streaming.

Handbook VI (serving) and the evaluation chapter: lm-evaluation-harness scores a continuation by
sending context + continuation with `echo=True, logprobs=k, max_tokens=0` (or 1) and reading the
prompt's `token_logprobs` (first entry null: nothing predicts the first token), `tokens`,
`top_logprobs` and `text_offset` (character offsets into the returned text).

Prompt text is encoded as is, special-token text included (write `<|bos|>` yourself for models
trained with it), the same ids the Hugging Face tokenizer in the model directory gives, so an
evaluator that tokenizes locally and one that sends text agree.
Echo with max_tokens=0 runs the prompt through the engine for one token and drops that token.

    python -m pytest -q tests/serve/test_openai_api.py -k completion
"""

from __future__ import annotations

import time
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from genlab.errors import GenlabError
from genlab.serve.async_engine import EngineRequest
from genlab.serve.protocol import (APIError, CompletionChoice, CompletionLogprobs, CompletionRequest,
                                   CompletionResponse, Usage)
from genlab.serve.serving import (MAX_SEQUENCES_PER_REQUEST, SSE_DONE, OffsetTracker, ServerState, choice_seed,
                                  collect, completion_logprobs, guarded_sse, log, sampling_params, sse, submit)


def prompt_token_lists(state: ServerState, prompt: Any) -> list[tuple[list[int], str | None]]:
    """Each prompt as (token ids, original text or None for id prompts)."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt is empty", param="prompt")
    out = []
    for p in prompt:
        if isinstance(p, str):
            try:
                out.append((state.tokenizer.encode(p, allowed_special="all"), p))
            except GenlabError as e:
                raise APIError(400, str(e), param="prompt") from None
        elif isinstance(p, int):  # a single list of token ids
            return [(state.check_token_ids(prompt, "prompt"), None)]
        else:
            out.append((state.check_token_ids(p, "prompt"), None))
    return out


async def create_completion(state: ServerState, req: CompletionRequest, http_request) -> Any:
    state.check_model(req.model)
    if req.best_of not in (None, req.n):
        raise APIError(400, "best_of different from n is not supported", param="best_of")
    prompts = prompt_token_lists(state, req.prompt)
    if len(prompts) * req.n > MAX_SEQUENCES_PER_REQUEST:
        raise APIError(400, f"prompts x n = {len(prompts) * req.n} exceeds {MAX_SEQUENCES_PER_REQUEST}", param="n")
    score_only = req.max_tokens == 0
    if score_only and req.stream:
        raise APIError(400, "max_tokens=0 cannot be streamed", param="max_tokens")
    rid = state.new_id("cmpl")
    started = time.perf_counter()
    requests, plans = [], []  # plans[choice index] = (prompt ids, prompt text)
    for p, (ids, text) in enumerate(prompts):
        budget = state.max_tokens_for(len(ids), 1 if score_only else req.max_tokens, "max_tokens", "prompt")
        for i in range(req.n):
            index = p * req.n + i
            if score_only and not (req.echo and req.logprobs is not None):
                plans.append((ids, text))
                continue  # nothing to compute: the answer is the (echoed) prompt
            params = sampling_params(req, budget, req.logprobs, choice_seed(req.seed, i))
            requests.append(EngineRequest(f"{rid}-{index}", ids, params,
                                          prompt_logprobs=req.logprobs if req.echo else None))
            plans.append((ids, text))
    state.counters["completions_stream" if req.stream else "completions"] += 1
    if req.stream:
        stream = await submit(state, requests)
        events = _stream_events(state, req, rid, stream, plans)
        return StreamingResponse(guarded_sse(events, stream, lambda: _log(rid, req, started, True)),
                                 media_type="text/event-stream")
    outputs = await collect(await submit(state, requests), http_request) if requests else []
    response = _build_response(state, req, rid, outputs, plans, score_only)
    _log(rid, req, started, False, response.usage)
    return JSONResponse(response.model_dump())


def _prompt_text(state: ServerState, ids: list[int], text: str | None) -> str:
    return text if text is not None else state.tokenizer.decode(ids)


def _build_response(state: ServerState, req: CompletionRequest, rid: str, outputs: list[Any],
                    plans: list[tuple[list[int], str | None]], score_only: bool) -> CompletionResponse:
    by_choice: dict[int, list[Any]] = {}
    for out in outputs:
        by_choice.setdefault(int(out.request_id.rsplit("-", 1)[1]), []).append(out)
    choices, completion_tokens = [], 0
    for index, (ids, text) in enumerate(plans):
        outs = by_choice.get(index, [])
        generated = [] if score_only else [t for o in outs for t in o.token_ids]
        completion = "" if score_only else "".join(o.text for o in outs)
        finish = "length" if score_only or not outs else outs[-1].finish_reason
        completion_tokens += len(generated)
        logprobs = None
        if req.logprobs is not None:
            logprobs, offsets = CompletionLogprobs(), OffsetTracker(state.token_bytes)
            if req.echo:
                prompt_entries = next((o.prompt_logprobs for o in outs if o.prompt_logprobs is not None), None)
                completion_logprobs(state, ids, prompt_entries or [None] * len(ids), offsets, logprobs)
            if not score_only:
                entries = [e for o in outs for e in (o.logprobs or [])]
                completion_logprobs(state, generated, entries, offsets, logprobs)
        prefix = _prompt_text(state, ids, text) if req.echo else ""
        choices.append(CompletionChoice(index=index, text=prefix + completion, logprobs=logprobs, finish_reason=finish))
    prompt_tokens = sum(len(ids) for ids, _ in plans[::req.n])
    return CompletionResponse(id=rid, model=state.model_name, choices=choices,
                              usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                          total_tokens=prompt_tokens + completion_tokens))


async def _stream_events(state: ServerState, req: CompletionRequest, rid: str, stream,
                         plans: list[tuple[list[int], str | None]]):
    trackers: dict[int, OffsetTracker] = {}
    completion_tokens = 0
    created = int(time.time())
    async for out in stream:
        index = int(out.request_id.rsplit("-", 1)[1])
        ids, text = plans[index]
        piece, logprobs = out.text, None
        first = index not in trackers
        tracker = trackers.setdefault(index, OffsetTracker(state.token_bytes))
        if req.logprobs is not None:
            logprobs = CompletionLogprobs()
            if first and req.echo:
                completion_logprobs(state, ids, out.prompt_logprobs or [None] * len(ids), tracker, logprobs)
            completion_logprobs(state, out.token_ids, out.logprobs or [], tracker, logprobs)
        if first and req.echo:
            piece = _prompt_text(state, ids, text) + piece
        completion_tokens += len(out.token_ids)
        choice = CompletionChoice(index=index, text=piece, logprobs=logprobs, finish_reason=out.finish_reason)
        yield sse({"id": rid, "object": "text_completion", "created": created, "model": state.model_name,
                   "choices": [choice.model_dump()]})
    if req.stream_options is not None and req.stream_options.include_usage:
        prompt_tokens = sum(len(ids) for ids, _ in plans[::req.n])
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                      total_tokens=prompt_tokens + completion_tokens)
        yield sse({"id": rid, "object": "text_completion", "created": created, "model": state.model_name,
                   "choices": [], "usage": usage.model_dump()})
    yield SSE_DONE


def _log(rid: str, req: CompletionRequest, started: float, stream: bool, usage: Usage | None = None) -> None:
    tokens = f" prompt_tokens={usage.prompt_tokens} completion_tokens={usage.completion_tokens}" if usage else ""
    log.info("completions %s stream=%s n=%d%s %.3fs", rid, stream, req.n, tokens, time.perf_counter() - started)
