"""POST /v1/chat/completions: genlab's chat format, n choices, logprobs, response_format, tools, SSE streaming.

Handbook IV (chat models), V (structured outputs), VII (function calling). Messages are rendered
with genlab.data.chat.render_chat (`<|bos|><|system|>...<|end|>...<|assistant|>`); roles system
(and OpenAI's "developer"), user, assistant (with optional tool_calls) and tool. Tools and
response formats map onto genlab conventions as described in genlab/serve/tools.py.

Streaming (SSE): a role chunk per choice, content deltas as the engine produces them, a last
chunk per choice with its finish_reason, optionally a usage chunk, then `data: [DONE]`. A reply
that is (or may be) a tool call is held back and sent as one `tool_calls` delta when it ends.

    python -m pytest -q tests/serve/test_openai_api.py -k chat
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from genlab.errors import GenlabError
from genlab.serve.async_engine import EngineRequest
from genlab.serve.protocol import (APIError, ChatChoice, ChatCompletionChunk, ChatCompletionRequest,
                                   ChatCompletionResponse, ChunkChoice, Delta, DeltaToolCall, FunctionCall,
                                   ResponseMessage, ToolCall, Usage)
from genlab.serve.serving import (SSE_DONE, ServerState, choice_seed, collect, guarded_sse, log, sampling_params, sse,
                                  submit)
from genlab.serve.tools import JSON_OBJECT_REGEX, parse_tool_call, render_tool_calls, tool_call_schema, tools_system_prompt


def _content(message, i: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise APIError(400, f"messages[{i}]: only text content parts are supported, got {part.type!r}",
                           param=f"messages.[{i}].content")
        texts.append(part.text)
    return "".join(texts)


def chat_messages(req: ChatCompletionRequest, use_tools: bool) -> list[dict[str, str]]:
    """The request's messages as genlab chat messages (plus the tool prompt when tools are on)."""
    messages = []
    for i, m in enumerate(req.messages):
        role = "system" if m.role == "developer" else m.role
        text = _content(m, i)
        if m.content is None and not (role == "assistant" and m.tool_calls):
            raise APIError(400, f"messages[{i}] ({m.role}) needs content", param=f"messages.[{i}].content")
        if m.tool_calls:
            if role != "assistant":
                raise APIError(400, f"messages[{i}]: only assistant messages carry tool_calls",
                               param=f"messages.[{i}].tool_calls")
            try:
                calls = render_tool_calls(m.tool_calls)
            except ValueError as e:
                raise APIError(400, f"messages[{i}]: {e}", param=f"messages.[{i}].tool_calls") from None
            text = f"{text}\n{calls}" if text else calls
        messages.append({"role": role, "content": text})
    if use_tools:
        prompt = tools_system_prompt([t.function for t in req.tools])
        if messages and messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n{prompt}".strip()}
        else:
            messages.insert(0, {"role": "system", "content": prompt})
    return messages


def tool_mode(req: ChatCompletionRequest) -> tuple[str, list[Any]]:
    """("none" | "auto" | "forced", the functions a call may name)."""
    if not req.tools:
        if req.tool_choice not in (None, "none", "auto"):
            raise APIError(400, "tool_choice needs tools", param="tool_choice")
        return "none", []
    functions = [t.function for t in req.tools]
    choice = req.tool_choice or "auto"
    if choice == "none":
        return "none", []
    if choice == "auto":
        return "auto", functions
    if choice == "required":
        return "forced", functions
    named = [f for f in functions if f.name == choice.function.name]
    if not named:
        raise APIError(400, f"tool_choice names {choice.function.name!r}, which is not in tools", param="tool_choice")
    return "forced", named


async def _constraint(state: ServerState, req: ChatCompletionRequest, mode: str, functions: list[Any]):
    fmt = req.response_format
    structured = fmt is not None and fmt.type != "text"
    if mode == "forced":
        if structured:
            raise APIError(400, "response_format cannot be combined with a forced tool_choice", param="response_format")
        return await state.index_for_schema(tool_call_schema(functions), "tools")
    if not structured:
        return None
    if fmt.type == "json_object":
        return await state.index_for_regex(JSON_OBJECT_REGEX, "response_format")
    if fmt.json_schema is None or fmt.json_schema.json_schema is None:
        raise APIError(400, "response_format json_schema needs {'json_schema': {'name', 'schema'}}",
                       param="response_format")
    return await state.index_for_schema(fmt.json_schema.json_schema, "response_format")


async def create_chat_completion(state: ServerState, req: ChatCompletionRequest, http_request) -> Any:
    state.check_model(req.model)
    mode, functions = tool_mode(req)
    try:
        prompt, _ = state.render_chat(chat_messages(req, mode != "none"))
    except GenlabError as e:
        raise APIError(400, str(e), param="messages") from None
    limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    budget = state.max_tokens_for(len(prompt), limit, param, "messages")
    constraint = await _constraint(state, req, mode, functions)
    if constraint is not None:
        need = int(constraint.steps_to_accept[constraint.start])
        if need > budget:
            raise APIError(400, f"the structured output needs at least {need} tokens but {param} allows {budget}",
                           param=param)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    if req.top_logprobs and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
    rid = state.new_id("chatcmpl")
    requests = [EngineRequest(f"{rid}-{i}", prompt, sampling_params(req, budget, logprobs, choice_seed(req.seed, i)),
                              constraint=constraint) for i in range(req.n)]
    names = [f.name for f in functions]
    state.counters["chat_stream" if req.stream else "chat"] += 1
    started = time.perf_counter()
    stream = await submit(state, requests)
    if req.stream:
        log.info("chat.completions %s stream=True n=%d prompt_tokens=%d", rid, req.n, len(prompt))
        events = _stream_events(state, req, rid, stream, len(prompt), mode, names)
        return StreamingResponse(guarded_sse(events, stream, lambda: _log(rid, req, started, True, len(prompt))),
                                 media_type="text/event-stream")
    outputs = await collect(stream, http_request)
    choices, completion_tokens = [], 0
    for i in range(req.n):
        outs = [o for o in outputs if o.request_id == f"{rid}-{i}"]
        text = "".join(o.text for o in outs)
        completion_tokens += sum(len(o.token_ids) for o in outs)
        finish = outs[-1].finish_reason if outs else "abort"
        message = ResponseMessage(content=text)
        call = parse_tool_call(text, names) if mode != "none" else None
        if call is not None:
            message = ResponseMessage(content=None, tool_calls=[_tool_call(*call)])
            finish = "tool_calls"
        entries = [e for o in outs for e in (o.logprobs or [])]
        choices.append(ChatChoice(index=i, message=message, finish_reason=finish,
                                  logprobs=state.chat_logprobs(entries) if logprobs is not None else None))
    usage = Usage(prompt_tokens=len(prompt), completion_tokens=completion_tokens,
                  total_tokens=len(prompt) + completion_tokens)
    _log(rid, req, started, False, len(prompt), completion_tokens)
    return JSONResponse(ChatCompletionResponse(id=rid, model=state.model_name, choices=choices,
                                               usage=usage).model_dump())


def _tool_call(name: str, arguments: str) -> ToolCall:
    return ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", function=FunctionCall(name=name, arguments=arguments))


async def _stream_events(state: ServerState, req: ChatCompletionRequest, rid: str, stream, prompt_tokens: int,
                         mode: str, names: list[str]):
    created = int(time.time())

    def chunk(index: int, delta: Delta, finish: str | None = None, logprobs=None) -> str:
        return sse(ChatCompletionChunk(id=rid, created=created, model=state.model_name, choices=[
            ChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish)]))

    for i in range(req.n):
        yield chunk(i, Delta(role="assistant", content=""))
    # Per choice: "text" streams as it comes; "undecided" (tool_choice auto) holds text while it may
    # still be a tool-call object (blank or starting with "{"); "tool" (forced) holds it to the end.
    phase = {i: {"none": "text", "auto": "undecided", "forced": "tool"}[mode] for i in range(req.n)}
    held_text = {i: "" for i in range(req.n)}
    held_logprobs: dict[int, list] = {i: [] for i in range(req.n)}
    completion_tokens = 0
    async for out in stream:
        i = int(out.request_id.rsplit("-", 1)[1])
        completion_tokens += len(out.token_ids)
        if phase[i] != "text":
            held_text[i] += out.text
            held_logprobs[i] += out.logprobs or []
            start = held_text[i].lstrip()
            if phase[i] == "undecided" and start and not start.startswith("{"):
                phase[i] = "text"  # not a tool call: release what was held, stream the rest
            elif not out.finished:
                continue
            text, entries = held_text[i], held_logprobs[i]
            logprobs = state.chat_logprobs(entries) if req.logprobs and entries else None
            call = parse_tool_call(text, names) if phase[i] != "text" else None
            if call is not None:
                tc = _tool_call(*call)
                yield chunk(i, Delta(tool_calls=[DeltaToolCall(index=0, id=tc.id, type="function",
                                                              function=tc.function)]), logprobs=logprobs)
                yield chunk(i, Delta(), "tool_calls")
                continue
            if text or logprobs:
                yield chunk(i, Delta(content=text), logprobs=logprobs)
            phase[i] = "text"
        else:
            logprobs = state.chat_logprobs(out.logprobs) if req.logprobs and out.logprobs else None
            if out.text or logprobs:
                yield chunk(i, Delta(content=out.text), logprobs=logprobs)
        if out.finished:
            yield chunk(i, Delta(), out.finish_reason)
    if req.stream_options is not None and req.stream_options.include_usage:
        yield sse(ChatCompletionChunk(id=rid, created=created, model=state.model_name, choices=[], usage=Usage(
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens)))
    yield SSE_DONE


def _log(rid: str, req: ChatCompletionRequest, started: float, stream: bool, prompt_tokens: int,
         completion_tokens: int | None = None) -> None:
    done = "" if completion_tokens is None else f" completion_tokens={completion_tokens}"
    log.info("chat.completions %s done stream=%s n=%d prompt_tokens=%d%s %.3fs", rid, stream, req.n, prompt_tokens,
             done, time.perf_counter() - started)
